"""Command line: ``dbproxy run``, ``dbproxy fingerprint`` …

Errors the user can fix are one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from dbproxy import __version__
from dbproxy.config import ConfigSource, cli_settings, environment
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
    run.add_argument("--config", metavar="FILE", help="TOML configuration file (DBPROXY_CONFIG)")
    for setting in cli_settings():
        if setting.const is not None:
            run.add_argument(
                setting.flag,
                dest=setting.name,
                action="store_const",
                const=setting.const,
                help=setting.help,
            )
        else:
            run.add_argument(
                setting.flag, dest=setting.name, metavar=setting.metavar, help=setting.help
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
    from dbproxy.logsafe import setup_logging

    setup_logging(level)


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

    cli_values = {setting.name: getattr(args, setting.name) for setting in cli_settings()}
    source = ConfigSource(cli_values, dict(environment()), args.config)
    config = source.load()
    _setup_logging(config.log_level)
    app.run(config, source)
    return 0
