"""Configuration: built once, frozen, validated; the only module that reads the environment.

Precedence, highest first: command-line options, ``DBPROXY_*`` environment variables,
the TOML file (``--config`` / ``DBPROXY_CONFIG``), built-in defaults.  Every problem is
a :class:`~dbproxy.errors.ConfigError` with a one-line message naming the setting and
where it came from.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from dbproxy.errors import ConfigError


@dataclass(frozen=True, slots=True)
class Address:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_address(text: str, *, default_host: str = "127.0.0.1") -> Address:
    """``HOST:PORT``, ``[v6]:PORT``, ``:PORT`` or ``PORT``; port 0 asks for any free port
    (the start-up log says which one)."""
    value = text.strip()
    if value.startswith("["):
        host, sep, rest = value[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"not HOST:PORT: {text!r}")
        port_text = rest[1:]
    elif value.count(":") == 1:
        host, _, port_text = value.partition(":")
    elif value.isdigit():
        host, port_text = "", value
    else:
        raise ValueError(f"not HOST:PORT: {text!r}")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"port must be 0-65535 (0: any free port) in {text!r}")
    return Address(host or default_host, int(port_text))


def parse_listen(text: str) -> tuple[Address, ...]:
    """``--listen``: one or more TCP addresses, comma-separated (``127.0.0.1:6432,[::1]:6432``);
    a later port 0 takes the first address's port."""
    addresses = tuple(parse_address(part) for part in text.split(",") if part.strip())
    if not addresses:
        raise ValueError("needs at least one HOST:PORT")
    for address in addresses:
        if address.host.startswith("/"):
            raise ValueError("a Unix-socket directory goes in --listen-unix DIR")
    return addresses


def parse_upstream(text: str) -> Address:
    """``HOST:PORT``, ``[v6]:PORT``, or a Unix-socket directory ``/dir[:PORT]`` (as libpq's
    ``host=/dir``: the socket is ``/dir/.s.PGSQL.PORT``, PORT 5432 when not given)."""
    value = text.strip()
    if value.startswith("/"):
        directory, sep, port_text = value.rpartition(":")
        if not sep or not port_text.isdigit():
            directory, port_text = value, "5432"
        if not 1 <= int(port_text) <= 65535:
            raise ValueError(f"port must be 1-65535 in {text!r}")
        return Address(directory.rstrip("/") or "/", int(port_text))
    return parse_address(value)


def _socket_dir(text: str) -> str:
    value = text.strip()
    if not value.startswith("/"):
        raise ValueError("must be an absolute directory path")
    if not Path(value).is_dir():
        raise ValueError("no such directory")
    return value.rstrip("/") or "/"


def _file_mode(text: str) -> int:
    value = int(text.strip(), 8)
    if not 0 <= value <= 0o777:
        raise ValueError("must be an octal mode from 000 to 777, e.g. 0770")
    return value


@dataclass(frozen=True, slots=True, kw_only=True)
class ProxyConfig:
    #: where clients connect
    listen: Address = field(default_factory=lambda: Address("127.0.0.1", 6432))
    #: more TCP addresses (``--listen A,B,…``: ``listen`` is A); port 0: ``listen``'s port
    listen_also: tuple[Address, ...] = ()
    #: a directory for the Unix socket ``.s.PGSQL.<listen port>`` (``psql -h DIR``)
    listen_unix: str | None = None
    #: permissions of that socket (PostgreSQL's unix_socket_permissions default)
    listen_unix_mode: int = 0o777
    #: the PostgreSQL server (or pooler) the proxy forwards to; a host that is an absolute
    #: path is a Unix-socket directory
    upstream: Address = field(default_factory=lambda: Address("127.0.0.1", 5432))
    #: processes accepting on the listen address (SO_REUSEPORT); worker 0 serves HTTP
    workers: int = 1
    #: seconds to let sessions finish on SIGTERM/SIGINT before closing them
    shutdown_timeout: float = 30.0
    #: seconds to wait for the upstream TCP connection
    connect_timeout: float = 5.0
    #: TLS towards clients: disable (answer SSLRequest N), allow, require (issue 11)
    client_tls: str = "disable"
    client_tls_cert: str | None = None
    client_tls_key: str | None = None
    #: TLS towards the server: disable, prefer, require, verify-ca, verify-full
    upstream_tls: str = "disable"
    upstream_tls_ca: str | None = None
    #: proxy-side SCRAM when both legs are TLS: a file of "user" "SCRAM-SHA-256$…" lines …
    auth_file: str | None = None
    #: … or a query run on a side connection (auth_dsn) returning (user, secret)
    auth_query: str = "SELECT usename, passwd FROM pgbouncer.get_auth($1)"
    auth_dsn: str | None = field(default=None, repr=False)
    #: client sessions at once; one more gets FATAL 53300 from the proxy (0: no limit)
    max_client_connections: int = 10_000
    #: seconds a new client has to send its startup packet (slowloris): 08P01, close
    startup_timeout: float = 10.0
    #: seconds a session may sit idle outside a transaction (57P05, close); 0: off
    client_idle_timeout: float = 0.0
    #: seconds a session may sit idle inside a transaction block (25P03, close); 0: off
    idle_in_transaction_timeout: float = 0.0
    #: events buffered between the proxy and its consumers; more are dropped and counted
    sink_capacity: int = 65_536
    #: bytes of statement text kept per Query/Parse (longer statements are cut)
    max_statement_bytes: int = 1 << 20
    log_level: str = "info"
    #: the one HTTP server: /metrics, /api/…, /healthz, /readyz
    http_listen: Address = field(default_factory=lambda: Address("127.0.0.1", 9391))
    #: fingerprints exported as metric series; the rest fold into fingerprint="__other__"
    metrics_max_fingerprints: int = 500
    #: fingerprints the aggregator and API keep; the rest fold into "__other__"
    max_fingerprints: int = 10_000
    #: attribution tags (application, route, …) exported as metric labels
    metrics_tags: tuple[str, ...] = ()
    #: the HTTP token (secret: environment, config file or a file, never a flag): bearer
    #: token for POST endpoints, and for /api and the UI when HTTP is not on loopback
    api_token: str | None = field(default=None, repr=False)
    #: Host header names accepted besides localhost, IP literals and the bound address
    #: (DNS rebinding); "*" accepts any, ".example.com" a domain and its subdomains
    http_allowed_hosts: tuple[str, ...] = ()
    #: /metrics needs the HTTP token too (Prometheus: authorization.credentials_file)
    metrics_auth: bool = False
    #: JSON query log: "off", "-" (standard output) or a file path (appended, reopened on SIGHUP)
    query_log: str = "off"
    #: statements at least this slow (milliseconds) get a slow_query line; None: off
    log_slow_ms: float | None = None
    #: every failed statement gets a query_error line
    log_errors: bool = True
    #: session_opened / session_closed / session_rejected lines
    log_sessions: bool = True
    #: tracing: on with --trace, an endpoint, or OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT
    trace: bool = False
    otlp_endpoint: str | None = None
    otlp_protocol: str | None = None  # http/protobuf | grpc (else OTEL_*_PROTOCOL)
    service_name: str | None = None  # else OTEL_SERVICE_NAME, else "dbproxy"
    #: fraction of statements without trace context that get a root span (default 0)
    trace_untraced_ratio: float | None = None
    #: statements at least this slow get a span even under an unsampled parent
    trace_slow_ms: float | None = None
    #: a SERVER span for the hop through the proxy, parent of the database span
    trace_proxy_span: bool = False
    #: opt-in db.response.returned_rows
    trace_rows: bool = False
    #: bounded span export queue (else OTEL_BSP_MAX_QUEUE_SIZE, else 2048)
    trace_queue_size: int | None = None
    #: the web UI at / of the HTTP server
    ui: bool = True
    #: trace UI link template for the web UI ({trace_id}, {span_id})
    ui_trace_url: str | None = None
    #: side connection (asyncpg) template: plans, rows scanned, pg_stat_statements; None: off
    inspect_dsn: str | None = field(default=None, repr=False)
    #: statements at least this slow get their generic plan taken; None: only the top ones
    explain_slow_ms: float | None = 1000.0
    #: fraction of read-only statements sampled with EXPLAIN ANALYZE (rows scanned); 0: off
    sample_analyze: float = 0.0
    #: at most this many sampled EXPLAIN ANALYZE per minute (all fingerprints)
    sample_analyze_per_minute: int = 60
    #: seconds between plans of the same fingerprint (slow or top)
    inspect_plan_interval: float = 300.0
    #: at most this many generic plans per minute (all fingerprints)
    inspect_plans_per_minute: int = 60
    #: seconds between planning the top fingerprints and reading pg_stat_statements
    inspect_interval: float = 60.0
    #: fingerprints planned periodically (the top ones by total time)
    inspect_top: int = 20
    #: statement_timeout of the side connection (milliseconds)
    inspect_statement_timeout_ms: int = 5000
    #: fingerprint ids or table names never sampled with EXPLAIN ANALYZE
    inspect_exclude: tuple[str, ...] = ()
    #: seconds between two pg_stat_activity samples (load, blocking); None: off
    sample_activity_interval: float | None = 1.0
    #: a lock wait at least this long is a blocking event (milliseconds)
    blocked_ms: float = 500.0
    #: regression detection (history, findings, N+1, notifications)
    detect: bool = True
    #: directory for the history file (history.sqlite); None: memory only (no day-ago
    #: baseline, nothing survives a restart)
    state_dir: str | None = None
    detect_window: float = 900.0
    detect_baseline: tuple[str, ...] = ("day", "trailing")
    detect_min_calls: int = 30
    detect_min_latency_ms: float = 5.0
    detect_latency_ratio: float = 2.0
    n_plus_one_min: int = 10
    #: base URL of this proxy's web UI as people reach it (links in notifications)
    public_url: str | None = None
    #: base URL of the runbooks (deploy/runbooks/ as published), linked in notifications
    runbook_url: str | None = None
    #: notification targets (secrets: environment or config file only)
    slack_webhook_url: str | None = field(default=None, repr=False)
    webhook_url: str | None = field(default=None, repr=False)
    #: one notification per fingerprint and finding type per this many seconds
    notify_cooldown: float = 3600.0
    #: the standard OTEL_* variables, handed to the exporter explicitly
    otel_env: Mapping[str, str] = field(default_factory=dict, repr=False)
    #: Pyroscope server for the proxy's own CPU profiles (the `profiling` extra)
    pyroscope_server_address: str | None = None
    #: the other PYROSCOPE_* variables (auth, tenant), handed to the agent explicitly
    pyroscope_env: Mapping[str, str] = field(default_factory=dict, repr=False)


@dataclass(frozen=True, slots=True)
class _Setting:
    name: str
    env: str
    parse: Any  # Callable[[str], object]; Any keeps the table readable
    #: the command-line flag (None: environment/file only, e.g. secrets)
    flag: str | None = None
    metavar: str | None = None
    help: str = ""
    #: for a flag that takes no value: the string it stands for ("true"/"false")
    const: str | None = None


@dataclass(frozen=True, slots=True)
class CliSetting:
    """What ``cli.py`` needs to declare a ``dbproxy run`` flag for a setting."""

    name: str
    flag: str
    metavar: str | None
    help: str
    const: str | None


def _positive_float(text: str) -> float:
    value = float(text)
    if value < 0:
        raise ValueError("must be >= 0")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError("must be >= 1")
    return value


def _workers(text: str) -> int:
    if text.strip().lower() == "auto":
        return os.cpu_count() or 1
    value = int(text)
    if not 1 <= value <= 256:
        raise ValueError("must be auto or a number of processes from 1 to 256")
    return value


def _above_zero(text: str) -> float:
    value = float(text)
    if not value > 0:  # also refuses nan
        raise ValueError("must be > 0")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError("must be >= 0")
    return value


def _seconds_or_off(text: str) -> float:
    if text.strip().lower() in ("off", "none", ""):
        return 0.0
    value = float(text)
    if not value >= 0:  # also refuses nan
        raise ValueError("must be >= 0 seconds (0 or off: no limit)")
    return value


def _log_level(text: str) -> str:
    value = text.lower()
    if value not in ("debug", "info", "warning", "error"):
        raise ValueError("must be debug, info, warning or error")
    return value


def _tag_list(text: str) -> tuple[str, ...]:
    tags = tuple(t.strip() for t in text.split(",") if t.strip())
    for tag in tags:
        if not tag.replace("_", "").isalnum():
            raise ValueError(f"not a tag name: {tag!r}")
    return tags


def _token(text: str) -> str:
    if len(text) < 16:
        raise ValueError("must be at least 16 characters")
    return text


def _query_log(text: str) -> str:
    value = text.strip()
    if not value:
        raise ValueError('must be "off", "-" (standard output) or a file path')
    return "off" if value.lower() == "off" else value


def _optional_ms(text: str) -> float | None:
    if text.strip().lower() in ("off", "none", ""):
        return None
    value = float(text)
    if not value >= 0:  # also refuses nan
        raise ValueError("must be >= 0 milliseconds, or off")
    return value


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError("must be on or off (true/false)")


def _endpoint(text: str) -> str:
    value = text.strip()
    if not value.startswith(("http://", "https://")):
        raise ValueError("must be an http:// or https:// URL")
    return value


def _otlp_protocol(text: str) -> str:
    value = text.strip()
    if value not in ("http/protobuf", "grpc"):
        raise ValueError("must be http/protobuf or grpc")
    return value


def _nonempty(text: str) -> str:
    if not text.strip():
        raise ValueError("must not be empty")
    return text.strip()


def _inspect_dsn(text: str) -> str:
    value = text.strip()
    if not value.startswith(("postgres://", "postgresql://")):
        raise ValueError("must be a postgresql:// URI (its database is replaced per database)")
    return value


def _choice(*allowed: str) -> Any:
    def parse(text: str) -> str:
        value = text.strip().lower()
        if value not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}")
        return value

    return parse


def _path(text: str) -> str:
    if not text.strip():
        raise ValueError("must be a file path")
    return text.strip()


def _has_password(dsn: str) -> bool:
    from urllib.parse import parse_qs, urlsplit

    parts = urlsplit(dsn)
    return bool(parts.password) or "password" in parse_qs(parts.query)


def _name_list(text: str) -> tuple[str, ...]:
    return tuple(t.strip() for t in text.split(",") if t.strip())


def _host_list(text: str) -> tuple[str, ...]:
    names = tuple(t.strip().lower() for t in text.split(",") if t.strip())
    for name in names:
        if name != "*" and not all(c.isalnum() or c in ".-_:[]" for c in name):
            raise ValueError(f"not a host name: {name!r}")
    return names


def _ratio(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise ValueError("must be between 0 and 1")
    return value


_SETTINGS: tuple[_Setting, ...] = (
    _Setting(
        "listen",
        "DBPROXY_LISTEN",
        parse_listen,
        "--listen",
        "HOST:PORT[,…]",
        "where clients connect, comma-separated, IPv6 as [::1]:6432 (127.0.0.1:6432)",
    ),
    _Setting(
        "listen_unix",
        "DBPROXY_LISTEN_UNIX",
        _socket_dir,
        "--listen-unix",
        "DIR",
        "also listen on the Unix socket DIR/.s.PGSQL.<listen port> (psql -h DIR)",
    ),
    _Setting(
        "listen_unix_mode",
        "DBPROXY_LISTEN_UNIX_MODE",
        _file_mode,
        "--listen-unix-mode",
        "MODE",
        "permissions of that socket, octal (0777; the directory's decide who gets in)",
    ),
    _Setting(
        "upstream",
        "DBPROXY_UPSTREAM",
        parse_upstream,
        "--upstream",
        "HOST:PORT|DIR[:PORT]",
        "the PostgreSQL server, or its Unix-socket directory (127.0.0.1:5432)",
    ),
    _Setting(
        "workers",
        "DBPROXY_WORKERS",
        _workers,
        "--workers",
        "N",
        "processes sharing the listen port (SO_REUSEPORT), or auto = one per core (1)",
    ),
    _Setting(
        "shutdown_timeout",
        "DBPROXY_SHUTDOWN_TIMEOUT",
        _positive_float,
        "--shutdown-timeout",
        "SECONDS",
        "let sessions finish on SIGTERM (30)",
    ),
    _Setting(
        "client_tls",
        "DBPROXY_CLIENT_TLS",
        _choice("disable", "allow", "require"),
        "--client-tls",
        "MODE",
        "TLS towards clients: disable, allow or require (disable)",
    ),
    _Setting(
        "client_tls_cert",
        "DBPROXY_CLIENT_TLS_CERT",
        _path,
        "--client-tls-cert",
        "FILE",
        "PEM certificate (chain) the proxy presents to clients",
    ),
    _Setting(
        "client_tls_key",
        "DBPROXY_CLIENT_TLS_KEY",
        _path,
        "--client-tls-key",
        "FILE",
        "PEM private key of --client-tls-cert",
    ),
    _Setting(
        "upstream_tls",
        "DBPROXY_UPSTREAM_TLS",
        _choice("disable", "prefer", "require", "verify-ca", "verify-full"),
        "--upstream-tls",
        "MODE",
        "TLS towards the server: disable, prefer, require, verify-ca, verify-full (disable)",
    ),
    _Setting(
        "upstream_tls_ca",
        "DBPROXY_UPSTREAM_TLS_CA",
        _path,
        "--upstream-tls-ca",
        "FILE",
        "CA bundle that verifies the server's certificate (verify-ca, verify-full)",
    ),
    _Setting(
        "auth_file",
        "DBPROXY_AUTH_FILE",
        _path,
        "--auth-file",
        "FILE",
        'proxy-side SCRAM (TLS on both legs): lines of "user" "SCRAM-SHA-256$..." secrets',
    ),
    _Setting(
        "auth_query",
        "DBPROXY_AUTH_QUERY",
        _nonempty,
        "--auth-query",
        "SQL",
        "query ($1: user) returning (user, SCRAM secret), run over DBPROXY_AUTH_DSN",
    ),
    _Setting("auth_dsn", "DBPROXY_AUTH_DSN", _inspect_dsn),  # secret: env or file only
    _Setting(
        "connect_timeout",
        "DBPROXY_CONNECT_TIMEOUT",
        _positive_float,
        "--connect-timeout",
        "SECONDS",
        "upstream connect timeout (5)",
    ),
    _Setting(
        "max_client_connections",
        "DBPROXY_MAX_CLIENT_CONNECTIONS",
        _non_negative_int,
        "--max-client-connections",
        "N",
        "client sessions at once; more get FATAL 53300 (10000; 0: no limit)",
    ),
    _Setting(
        "startup_timeout",
        "DBPROXY_STARTUP_TIMEOUT",
        _above_zero,
        "--startup-timeout",
        "SECONDS",
        "time a client has to send its startup packet (10)",
    ),
    _Setting(
        "client_idle_timeout",
        "DBPROXY_CLIENT_IDLE_TIMEOUT",
        _seconds_or_off,
        "--client-idle-timeout",
        "SECONDS",
        "close sessions idle outside a transaction this long, 57P05 (off)",
    ),
    _Setting(
        "idle_in_transaction_timeout",
        "DBPROXY_IDLE_IN_TRANSACTION_TIMEOUT",
        _seconds_or_off,
        "--idle-in-transaction-timeout",
        "SECONDS",
        "close sessions idle inside a transaction this long, 25P03 (off)",
    ),
    _Setting(
        "sink_capacity",
        "DBPROXY_SINK_CAPACITY",
        _positive_int,
        "--sink-capacity",
        "N",
        "events buffered before drops (65536)",
    ),
    _Setting(
        "max_statement_bytes",
        "DBPROXY_MAX_STATEMENT_BYTES",
        _positive_int,
        "--max-statement-bytes",
        "N",
        "statement text kept per message (1048576)",
    ),
    _Setting(
        "log_level",
        "DBPROXY_LOG_LEVEL",
        _log_level,
        "--log-level",
        "LEVEL",
        "debug, info, warning, error (info)",
    ),
    _Setting(
        "http_listen",
        "DBPROXY_HTTP_LISTEN",
        parse_address,
        "--http-listen",
        "HOST:PORT",
        "web UI, /metrics, /api, /healthz, /readyz (127.0.0.1:9391)",
    ),
    _Setting(
        "metrics_max_fingerprints",
        "DBPROXY_METRICS_MAX_FINGERPRINTS",
        _positive_int,
        "--metrics-max-fingerprints",
        "N",
        "fingerprints exported as series; the rest fold into __other__ (500)",
    ),
    _Setting(
        "max_fingerprints",
        "DBPROXY_MAX_FINGERPRINTS",
        _positive_int,
        "--max-fingerprints",
        "N",
        "fingerprints the aggregator keeps (10000)",
    ),
    _Setting(
        "metrics_tags",
        "DBPROXY_METRICS_TAGS",
        _tag_list,
        "--metrics-tags",
        "TAGS",
        "attribution tags exported per fingerprint, e.g. application,route (none)",
    ),
    _Setting("api_token", "DBPROXY_API_TOKEN", _token),  # a secret: --api-token-file only
    _Setting(
        "http_allowed_hosts",
        "DBPROXY_HTTP_ALLOWED_HOSTS",
        _host_list,
        "--http-allowed-hosts",
        "NAMES",
        "Host header names accepted besides localhost, IP literals and the listen address "
        "(DNS rebinding), e.g. dbproxy.internal,.example.com (none)",
    ),
    _Setting(
        "metrics_auth",
        "DBPROXY_METRICS_AUTH",
        _bool,
        "--metrics-auth",
        "on|off",
        "/metrics needs the HTTP token as a bearer token (off)",
    ),
    _Setting(
        "query_log",
        "DBPROXY_QUERY_LOG",
        _query_log,
        "--query-log",
        "TARGET",
        "JSON query log: off, - (stdout) or a file path, reopened on SIGHUP (off)",
    ),
    _Setting(
        "log_slow_ms",
        "DBPROXY_LOG_SLOW_MS",
        _optional_ms,
        "--log-slow-ms",
        "MS",
        "log statements at least this slow, or off (off)",
    ),
    _Setting(
        "log_errors",
        "DBPROXY_LOG_ERRORS",
        _bool,
        "--log-errors",
        "on|off",
        "log failed statements (on)",
    ),
    _Setting(
        "log_sessions",
        "DBPROXY_LOG_SESSIONS",
        _bool,
        "--log-sessions",
        "on|off",
        "log session open/close/rejection (on)",
    ),
    _Setting(
        "trace",
        "DBPROXY_TRACE",
        _bool,
        "--trace",
        None,
        "export statement spans over OTLP (also on with an endpoint or OTEL_EXPORTER_OTLP_*)",
        "true",
    ),
    _Setting(
        "otlp_endpoint",
        "DBPROXY_OTLP_ENDPOINT",
        _endpoint,
        "--otlp-endpoint",
        "URL",
        "OTLP endpoint for spans",
    ),
    _Setting(
        "otlp_protocol",
        "DBPROXY_OTLP_PROTOCOL",
        _otlp_protocol,
        "--otlp-protocol",
        "P",
        "http/protobuf (default) or grpc",
    ),
    _Setting("service_name", "DBPROXY_SERVICE_NAME", _nonempty),
    _Setting(
        "trace_untraced_ratio",
        "DBPROXY_TRACE_UNTRACED_RATIO",
        _ratio,
        "--trace-untraced-ratio",
        "R",
        "fraction of statements without trace context that get a root span (0)",
    ),
    _Setting(
        "trace_slow_ms",
        "DBPROXY_TRACE_SLOW_MS",
        _optional_ms,
        "--trace-slow-ms",
        "MS",
        "always trace statements this slow (off)",
    ),
    _Setting(
        "trace_proxy_span",
        "DBPROXY_TRACE_PROXY_SPAN",
        _bool,
        "--proxy-span",
        None,
        "add a SERVER span for the hop through the proxy",
        "true",
    ),
    _Setting(
        "trace_rows",
        "DBPROXY_TRACE_ROWS",
        _bool,
        "--trace-rows",
        None,
        "record db.response.returned_rows on spans",
        "true",
    ),
    _Setting("trace_queue_size", "DBPROXY_TRACE_QUEUE_SIZE", _positive_int),
    _Setting("ui", "DBPROXY_UI", _bool, "--no-ui", None, "no web UI at /", "false"),
    _Setting(
        "inspect_dsn",
        "DBPROXY_INSPECT_DSN",
        _inspect_dsn,
        "--inspect-dsn",
        "URI",
        "side connection for plans, rows scanned and pg_stat_statements, as a "
        "postgresql:// template (no password here: DBPROXY_INSPECT_DSN, the file or .pgpass)",
    ),
    _Setting(
        "explain_slow_ms",
        "DBPROXY_EXPLAIN_SLOW_MS",
        _optional_ms,
        "--explain-slow-ms",
        "MS",
        "take the generic plan of statements this slow, or off (1000)",
    ),
    _Setting(
        "sample_analyze",
        "DBPROXY_SAMPLE_ANALYZE",
        _ratio,
        "--sample-analyze",
        "RATE",
        "fraction of read-only statements re-run with EXPLAIN ANALYZE for rows scanned (0)",
    ),
    _Setting(
        "sample_analyze_per_minute",
        "DBPROXY_SAMPLE_ANALYZE_PER_MINUTE",
        _positive_int,
        "--sample-analyze-per-minute",
        "N",
        "at most N sampled EXPLAIN ANALYZE per minute (60)",
    ),
    _Setting("inspect_plan_interval", "DBPROXY_INSPECT_PLAN_INTERVAL", _positive_float),
    _Setting("inspect_interval", "DBPROXY_INSPECT_INTERVAL", _positive_float),
    _Setting("inspect_plans_per_minute", "DBPROXY_INSPECT_PLANS_PER_MINUTE", _positive_int),
    _Setting("inspect_top", "DBPROXY_INSPECT_TOP", _positive_int),
    _Setting("inspect_statement_timeout_ms", "DBPROXY_INSPECT_STATEMENT_TIMEOUT_MS", _positive_int),
    _Setting(
        "inspect_exclude",
        "DBPROXY_INSPECT_EXCLUDE",
        _name_list,
        "--inspect-exclude",
        "LIST",
        "fingerprint ids or table names never sampled with EXPLAIN ANALYZE",
    ),
    _Setting(
        "sample_activity_interval",
        "DBPROXY_SAMPLE_ACTIVITY_INTERVAL",
        _optional_ms,
        "--sample-activity-interval",
        "S",
        "seconds between pg_stat_activity samples (database load, blocking), or off (1)",
    ),
    _Setting(
        "blocked_ms",
        "DBPROXY_BLOCKED_MS",
        _positive_float,
        "--blocked-ms",
        "MS",
        "a lock wait this long is recorded as a blocking event (500)",
    ),
    _Setting(
        "ui_trace_url",
        "DBPROXY_UI_TRACE_URL",
        _endpoint,
        "--ui-trace-url",
        "TEMPLATE",
        "trace UI link for the web UI, with {trace_id} and {span_id}",
    ),
    # Pyroscope's own variable name, as its SDKs read it.
    _Setting("pyroscope_server_address", "PYROSCOPE_SERVER_ADDRESS", _endpoint),
)


def _baselines(text: str) -> tuple[str, ...]:
    values = tuple(v.strip().lower() for v in text.split(",") if v.strip())
    if not values or not set(values) <= {"day", "trailing"}:
        raise ValueError("must be day, trailing or day,trailing")
    return values


def _window(text: str) -> float:
    value = float(text)
    if not value >= 60:
        raise ValueError("must be at least 60 seconds (history has 1-minute buckets)")
    return value


def _ratio_above_one(text: str) -> float:
    value = float(text)
    if not value > 1:
        raise ValueError("must be greater than 1")
    return value


_DETECTION_SETTINGS = (
    _Setting(
        "detect",
        "DBPROXY_DETECT",
        _bool,
        "--no-detect",
        None,
        "no regression detection, history or N+1 findings",
        "false",
    ),
    _Setting(
        "state_dir",
        "DBPROXY_STATE_DIR",
        _nonempty,
        "--state-dir",
        "DIR",
        "keep history (26 h of minutes, 14 days of hours) in DIR/history.sqlite "
        "(default: memory only, no day-ago baseline, lost on restart)",
    ),
    _Setting(
        "detect_window",
        "DBPROXY_DETECT_WINDOW",
        _window,
        "--detect-window",
        "SECONDS",
        "recent window compared with the baseline (900)",
    ),
    _Setting(
        "detect_baseline",
        "DBPROXY_BASELINE",
        _baselines,
        "--baseline",
        "B",
        "day (same window a day ago), trailing (median of earlier windows) or both",
    ),
    _Setting(
        "detect_min_calls",
        "DBPROXY_DETECT_MIN_CALLS",
        _positive_int,
        "--detect-min-calls",
        "N",
        "calls needed on both sides of a comparison (30)",
    ),
    _Setting(
        "detect_min_latency_ms",
        "DBPROXY_DETECT_MIN_LATENCY_MS",
        _positive_float,
        "--detect-min-latency-ms",
        "MS",
        "ignore latency regressions below this p95 (5)",
    ),
    _Setting(
        "detect_latency_ratio",
        "DBPROXY_DETECT_LATENCY_RATIO",
        _ratio_above_one,
        "--detect-latency-ratio",
        "R",
        "p95 ratio that is a latency regression (2)",
    ),
    _Setting(
        "n_plus_one_min",
        "DBPROXY_N_PLUS_ONE_MIN",
        _positive_int,
        "--n-plus-one-min",
        "N",
        "executions of one fingerprint per request that make an N+1 (10)",
    ),
    _Setting(
        "public_url",
        "DBPROXY_PUBLIC_URL",
        _endpoint,
        "--public-url",
        "URL",
        "base URL of this web UI, for links in notifications",
    ),
    _Setting(
        "runbook_url",
        "DBPROXY_RUNBOOK_URL",
        _endpoint,
        "--runbook-url",
        "URL",
        "base URL of the runbooks (deploy/runbooks), for links in notifications",
    ),
    _Setting("slack_webhook_url", "DBPROXY_SLACK_WEBHOOK_URL", _endpoint),  # secret
    _Setting("webhook_url", "DBPROXY_WEBHOOK_URL", _endpoint),  # secret
    _Setting(
        "notify_cooldown",
        "DBPROXY_NOTIFY_COOLDOWN",
        _positive_float,
        "--notify-cooldown",
        "SECONDS",
        "at most one notification per fingerprint and type in this time (3600)",
    ),
)
_SETTINGS = (*_SETTINGS, *_DETECTION_SETTINGS)
_SECRETS = frozenset(["api_token", "auth_dsn", "inspect_dsn", "slack_webhook_url", "webhook_url"])


#: A setting's value read from a file: ``NAME_file`` in the TOML file, ``DBPROXY_NAME_FILE``
#: in the environment, and for secrets ``--name-file`` on the command line (systemd
#: credentials, Docker/Kubernetes secrets).  The file's content, without its final newline.
FILE_SUFFIX = "_file"
#: the standard variables that may hold credentials and can come from ``NAME_FILE`` too
_ENV_SECRETS = (
    "OTEL_EXPORTER_OTLP_HEADERS",
    "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
    "PYROSCOPE_AUTH_TOKEN",
    "PYROSCOPE_BASIC_AUTH_PASSWORD",
)


def cli_settings() -> tuple[CliSetting, ...]:
    """The settings that have a ``dbproxy run`` flag, in declaration order; then the
    ``--SECRET-file`` flags (a secret's value never goes on the command line)."""
    flags = [
        CliSetting(name=s.name, flag=s.flag, metavar=s.metavar, help=s.help, const=s.const)
        for s in _SETTINGS
        if s.flag is not None
    ]
    for s in _SETTINGS:
        if s.name in _SECRETS:
            flags.append(
                CliSetting(
                    name=s.name + FILE_SUFFIX,
                    flag="--" + s.name.replace("_", "-") + "-file",
                    metavar="FILE",
                    help=f"read {s.name} ({s.env}) from FILE",
                    const=None,
                )
            )
    return tuple(flags)


def _read_secret_file(path: str, origin: str) -> str:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(f"cannot read {origin} {path}: {reason}") from None
    return text.removesuffix("\n").removesuffix("\r")


@dataclass(frozen=True, slots=True)
class ConfigSource:
    """Where a configuration came from, so SIGHUP can build it again (picklable: workers
    get it too).  ``env`` is a copy of the environment at start."""

    cli: Mapping[str, str | None]
    env: Mapping[str, str]
    config_file: str | None = None

    def load(self) -> ProxyConfig:
        return load_config(self.cli, self.env, self.config_file)

    @property
    def path(self) -> str | None:
        return self.config_file or self.env.get(CONFIG_ENV)


CONFIG_ENV = "DBPROXY_CONFIG"


def environment() -> Mapping[str, str]:
    """The process environment; the one read of ``os.environ`` in dbproxy."""
    return os.environ


def load_config(
    cli: Mapping[str, str | None],
    env: Mapping[str, str],
    config_file: str | None = None,
) -> ProxyConfig:
    """Build the configuration from CLI values (strings, None when not given), the
    environment and the TOML file named by ``config_file`` or ``DBPROXY_CONFIG``."""
    file_values: dict[str, object] = {}
    path = config_file or env.get(CONFIG_ENV)
    if path:
        file_values = _read_toml(path)
    known = {s.name for s in _SETTINGS}
    unknown = sorted(set(file_values) - known - {n + FILE_SUFFIX for n in known})
    if unknown:
        raise ConfigError(f"{path}: unknown setting(s): {', '.join(unknown)}")

    values: dict[str, object] = {}
    for setting in _SETTINGS:
        found = _raw_value(setting, cli, env, file_values, path)
        if found is None:
            continue
        raw, origin = found
        if setting.name == "inspect_dsn" and origin == setting.flag and _has_password(str(raw)):
            raise ConfigError(
                "--inspect-dsn must not hold a password (the command line is visible to "
                "other users): set DBPROXY_INSPECT_DSN, inspect_dsn in the config file, "
                "or use a .pgpass file"
            )
        if isinstance(raw, list) and setting.name in (
            "listen",
            "metrics_tags",
            "http_allowed_hosts",
            "inspect_exclude",
            "detect_baseline",
        ):
            raw = ",".join(str(item) for item in raw)
        if setting.name == "listen_unix_mode" and isinstance(raw, int):
            raw = oct(raw)  # a TOML integer (0o770): its value, not its decimal digits
        try:
            values[setting.name] = setting.parse(str(raw))
        except ValueError as exc:
            shown = "(hidden)" if setting.name in _SECRETS else repr(raw)
            raise ConfigError(f"invalid {origin} {shown}: {exc}") from None
    if "listen" in values:  # parse_listen: the first address, and the others
        listen = values["listen"]
        assert isinstance(listen, tuple)
        values["listen"], values["listen_also"] = listen[0], listen[1:]
    assert {f.name for f in fields(ProxyConfig)} >= set(values)
    values["otel_env"] = _env_group(env, "OTEL_")
    values["pyroscope_env"] = _env_group(env, "PYROSCOPE_")
    if values.get("metrics_auth") and not values.get("api_token"):
        raise ConfigError(
            "--metrics-auth needs the HTTP token: set DBPROXY_API_TOKEN or --api-token-file"
        )
    if values.get("sample_analyze") and not values.get("inspect_dsn"):
        raise ConfigError(
            "--sample-analyze needs the side connection: set DBPROXY_INSPECT_DSN "
            "(or inspect_dsn in the config file, or --inspect-dsn without a password)"
        )
    _check_tls(values)
    return ProxyConfig(**values)  # type: ignore[arg-type]


def _check_tls(values: Mapping[str, object]) -> None:
    if values.get("client_tls", "disable") != "disable" and not (
        values.get("client_tls_cert") and values.get("client_tls_key")
    ):
        raise ConfigError("--client-tls allow/require needs --client-tls-cert and --client-tls-key")
    if values.get("upstream_tls") in ("verify-ca", "verify-full") and not values.get(
        "upstream_tls_ca"
    ):
        raise ConfigError("--upstream-tls verify-ca/verify-full needs --upstream-tls-ca")


def _raw_value(
    setting: _Setting,
    cli: Mapping[str, str | None],
    env: Mapping[str, str],
    file_values: Mapping[str, object],
    path: str | None,
) -> tuple[object, str] | None:
    """A setting's raw value and where it came from, highest precedence first; at each
    level the value itself or ``…_file`` naming a file that holds it, not both."""
    file_flag = "--" + setting.name.replace("_", "-") + "-file"
    levels: tuple[tuple[object, object, str, str], ...] = (
        (
            cli.get(setting.name),
            cli.get(setting.name + FILE_SUFFIX),
            setting.flag or setting.name,
            file_flag,
        ),
        (
            env.get(setting.env),
            env.get(setting.env + "_FILE"),
            setting.env,
            setting.env + "_FILE",
        ),
        (
            file_values.get(setting.name),
            file_values.get(setting.name + FILE_SUFFIX),
            f"{path}: {setting.name}",
            f"{path}: {setting.name}{FILE_SUFFIX}",
        ),
    )
    for direct, from_file, origin, file_origin in levels:
        if direct is not None and from_file is not None:
            raise ConfigError(f"{origin} and {file_origin} are both set: keep one")
        if direct is not None:
            return direct, origin
        if from_file is not None:
            return _read_secret_file(str(from_file), file_origin), file_origin
    return None


def _env_group(env: Mapping[str, str], prefix: str) -> dict[str, str]:
    """The ``prefix*`` variables, with ``NAME_FILE`` read into ``NAME`` for the ones that
    hold credentials (``_ENV_SECRETS``)."""
    group = {k: v for k, v in env.items() if k.startswith(prefix)}
    for name in _ENV_SECRETS:
        file_var = name + "_FILE"
        if name.startswith(prefix) and file_var in group:
            if name in group:
                raise ConfigError(f"{name} and {file_var} are both set: keep one")
            group[name] = _read_secret_file(group.pop(file_var), file_var)
    return group


def _read_toml(path: str) -> dict[str, object]:
    try:
        with Path(path).open("rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    # Accept settings at top level or under a [proxy] table.
    section = data.get("proxy", data)
    if not isinstance(section, dict):
        raise ConfigError(f"config file {path}: [proxy] must be a table")
    return {k: v for k, v in section.items() if k != "proxy"}
