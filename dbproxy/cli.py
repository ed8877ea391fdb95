"""Command line: ``dbproxy run``, ``dbproxy fingerprint`` …

Errors the user can fix are one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from dbproxy import __version__
from dbproxy.config import environment, load_config
from dbproxy.errors import ConfigError

EXIT_USAGE = 2


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dbproxy",
        description="Query-observability proxy for PostgreSQL.",
    )
    parser.add_argument("--version", action="version", version=f"dbproxy {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser(
        "run",
        help="run the proxy",
        description=(
            "Relay PostgreSQL connections from --listen to --upstream, unchanged, and observe "
            "every statement. Settings may also come from DBPROXY_* environment variables "
            "and a TOML file; the command line wins."
        ),
    )
    run.add_argument("--listen", metavar="HOST:PORT", help="where clients connect (127.0.0.1:6432)")
    run.add_argument(
        "--upstream", metavar="HOST:PORT", help="the PostgreSQL server (127.0.0.1:5432)"
    )
    run.add_argument("--config", metavar="FILE", help="TOML configuration file (DBPROXY_CONFIG)")
    run.add_argument(
        "--shutdown-timeout", metavar="SECONDS", help="let sessions finish on SIGTERM (30)"
    )
    run.add_argument("--connect-timeout", metavar="SECONDS", help="upstream connect timeout (5)")
    run.add_argument("--sink-capacity", metavar="N", help="events buffered before drops (65536)")
    run.add_argument(
        "--max-statement-bytes", metavar="N", help="statement text kept per message (1048576)"
    )
    run.add_argument("--log-level", metavar="LEVEL", help="debug, info, warning, error (info)")
    run.add_argument(
        "--http-listen",
        metavar="HOST:PORT",
        help="/metrics, /api, /healthz, /readyz (127.0.0.1:9391)",
    )
    run.add_argument(
        "--metrics-max-fingerprints",
        metavar="N",
        help="fingerprints exported as series; the rest fold into __other__ (500)",
    )
    run.add_argument(
        "--max-fingerprints", metavar="N", help="fingerprints the aggregator keeps (10000)"
    )
    run.add_argument(
        "--query-log",
        metavar="TARGET",
        help="JSON query log: off, - (stdout) or a file path, reopened on SIGHUP (off)",
    )
    run.add_argument(
        "--log-slow-ms", metavar="MS", help="log statements at least this slow, or off (off)"
    )
    run.add_argument("--log-errors", metavar="on|off", help="log failed statements (on)")
    run.add_argument(
        "--log-sessions", metavar="on|off", help="log session open/close/rejection (on)"
    )
    run.add_argument(
        "--trace",
        action="store_const",
        const="true",
        help="export statement spans over OTLP (also on with an endpoint or OTEL_EXPORTER_OTLP_*)",
    )
    run.add_argument("--otlp-endpoint", metavar="URL", help="OTLP endpoint for spans")
    run.add_argument("--otlp-protocol", metavar="P", help="http/protobuf (default) or grpc")
    run.add_argument(
        "--trace-untraced-ratio",
        metavar="R",
        help="fraction of statements without trace context that get a root span (0)",
    )
    run.add_argument(
        "--trace-slow-ms", metavar="MS", help="always trace statements this slow (off)"
    )
    run.add_argument(
        "--proxy-span",
        action="store_const",
        const="true",
        help="add a SERVER span for the hop through the proxy",
    )
    run.add_argument(
        "--trace-rows",
        action="store_const",
        const="true",
        help="record db.response.returned_rows on spans",
    )
    run.add_argument(
        "--no-ui", dest="ui", action="store_const", const="false", help="no web UI at /"
    )
    run.add_argument(
        "--ui-trace-url",
        metavar="TEMPLATE",
        help="trace UI link for the web UI, with {trace_id} and {span_id}",
    )
    run.add_argument(
        "--metrics-tags",
        metavar="TAGS",
        help="attribution tags exported per fingerprint, e.g. application,route (none)",
    )

    sub.add_parser(
        "demo",
        help="try it: throwaway PostgreSQL + proxy + workload + web UI",
        add_help=False,
        prefix_chars="\0",
    )
    sub.add_parser(
        "top",
        help="terminal view of a running proxy's top queries",
        add_help=False,
        prefix_chars="\0",
    )
    sub.add_parser(
        "fingerprint",
        help="print the fingerprint of SQL statements",
        add_help=False,
        prefix_chars="\0",  # everything after the command goes to the fingerprint tool
    )
    return parser


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["fingerprint"]:
        from dbproxy.fingerprint_cmd import main as fingerprint_main

        return fingerprint_main(args_list[1:], sys.stdin, sys.stdout)
    if args_list[:1] == ["demo"]:
        from dbproxy.demo import main as demo_main

        return demo_main(args_list[1:])
    if args_list[:1] == ["top"]:
        from dbproxy.top import main as top_main

        return top_main(args_list[1:])

    parser = _build_parser()
    args = parser.parse_args(args_list)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        if args.command == "run":
            return _run(args)
    except ConfigError as exc:
        print(f"dbproxy: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 0
    parser.error(f"unknown command {args.command}")
    return EXIT_USAGE  # pragma: no cover - parser.error exits


def _run(args: argparse.Namespace) -> int:
    from dbproxy import app

    cli_values = {
        "listen": args.listen,
        "upstream": args.upstream,
        "shutdown_timeout": args.shutdown_timeout,
        "connect_timeout": args.connect_timeout,
        "sink_capacity": args.sink_capacity,
        "max_statement_bytes": args.max_statement_bytes,
        "log_level": args.log_level,
        "http_listen": args.http_listen,
        "metrics_max_fingerprints": args.metrics_max_fingerprints,
        "max_fingerprints": args.max_fingerprints,
        "metrics_tags": args.metrics_tags,
        "query_log": args.query_log,
        "log_slow_ms": args.log_slow_ms,
        "log_errors": args.log_errors,
        "log_sessions": args.log_sessions,
        "trace": args.trace,
        "otlp_endpoint": args.otlp_endpoint,
        "otlp_protocol": args.otlp_protocol,
        "trace_untraced_ratio": args.trace_untraced_ratio,
        "trace_slow_ms": args.trace_slow_ms,
        "trace_proxy_span": args.proxy_span,
        "trace_rows": args.trace_rows,
        "ui": args.ui,
        "ui_trace_url": args.ui_trace_url,
    }
    config = load_config(cli_values, environment(), args.config)
    _setup_logging(config.log_level)
    app.run(config)
    return 0
