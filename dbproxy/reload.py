"""SIGHUP: read the configuration again and apply what can change without a restart.

:class:`Reloader` builds a new :class:`~dbproxy.config.ProxyConfig` from the same
:class:`~dbproxy.config.ConfigSource` (command line, environment at start, the config
file — re-read, as are ``…_file`` secrets), compares it with the configuration it loaded
last, hands the live-changeable differences to the app (``apply(config, changed)``: the
running configuration with those fields replaced) and logs the rest as needing a
restart.  A file that no longer loads is logged and changes nothing.  Sessions are never
touched: the proxy reads its configuration per new connection.

The diff compares *loaded* configurations, not the running one, so a resolved port
(``--listen :0``, workers' copy of worker 0's port) never reads as a change.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from dbproxy.config import ConfigSource, ProxyConfig
from dbproxy.errors import ConfigError

log = logging.getLogger(__name__)

#: settings applied on SIGHUP; every other one is reported as needing a restart
LIVE_SETTINGS = frozenset(
    [
        "log_level",
        # read by the proxy per new connection
        "connect_timeout",
        "shutdown_timeout",
        "max_statement_bytes",
        # HTTP access (export/access.py)
        "api_token",
        "http_allowed_hosts",
        "metrics_auth",
        # metrics series
        "metrics_max_fingerprints",
        "metrics_tags",
        # query log lines
        "log_slow_ms",
        "log_errors",
        "log_sessions",
        # limits (proxy/limits.py reads server.config when it applies them)
        "max_client_connections",
        "startup_timeout",
        "client_idle_timeout",
        "idle_in_transaction_timeout",
        # TLS files, re-read after the reload (ProxyServer.reload_tls)
        "client_tls_cert",
        "client_tls_key",
        "upstream_tls_ca",
    ]
)
#: fields that are not settings of their own (derived from the environment at start)
_NOT_COMPARED = frozenset(["otel_env", "pyroscope_env"])


@dataclass(frozen=True, slots=True)
class ReloadResult:
    applied: tuple[str, ...] = ()
    needs_restart: tuple[str, ...] = ()
    error: str | None = None


def changed_settings(old: ProxyConfig, new: ProxyConfig) -> list[str]:
    """Names of the fields that differ, in declaration order."""
    return [
        f.name
        for f in dataclasses.fields(ProxyConfig)
        if f.name not in _NOT_COMPARED and getattr(old, f.name) != getattr(new, f.name)
    ]


Apply = Callable[[ProxyConfig, Sequence[str]], None]


class Reloader:
    def __init__(
        self,
        source: ConfigSource,
        loaded: ProxyConfig,
        running: Callable[[], ProxyConfig],
        apply: Apply,
        *,
        who: str = "",
    ) -> None:
        self.source = source
        #: what the source gave last (live changes included)
        self.loaded = loaded
        self.running = running
        self.apply = apply
        self.who = who
        self.reloads = 0
        self.failures = 0
        #: settings the last reload found changed but could not apply (restart pending)
        self.pending: tuple[str, ...] = ()

    def __call__(self) -> ReloadResult:
        try:
            new = self.source.load()
        except ConfigError as exc:
            self.failures += 1
            log.error(
                "%sSIGHUP: configuration not reloaded, keeping the running one: %s", self.who, exc
            )
            return ReloadResult(error=str(exc))
        changed = changed_settings(self.loaded, new)
        live = tuple(n for n in changed if n in LIVE_SETTINGS)
        restart = tuple(n for n in changed if n not in LIVE_SETTINGS)
        self.pending = restart
        values = {name: getattr(new, name) for name in live}
        # logged before applying: a new log level may hide it afterwards
        log.info(
            "%sSIGHUP: configuration reloaded from %s; applied: %s",
            self.who,
            self.source.path or "the command line and environment",
            ", ".join(live) or "nothing changed",
        )
        if restart:
            log.warning(
                "%sSIGHUP: changed but only applied after a restart: %s",
                self.who,
                ", ".join(restart),
            )
        if live:
            try:
                self.apply(dataclasses.replace(self.running(), **values), live)
            except Exception:
                self.failures += 1
                log.exception("%sSIGHUP: applying %s failed", self.who, ", ".join(live))
                return ReloadResult(needs_restart=restart, error="apply failed")
            self.loaded = dataclasses.replace(self.loaded, **values)
        self.reloads += 1
        return ReloadResult(applied=live, needs_restart=restart)
