"""``dbproxy fingerprint``: print the fingerprint of SQL given as arguments or on stdin.

    dbproxy fingerprint "SELECT * FROM users WHERE id = 1"
    echo "SELECT 1; SELECT 2" | dbproxy fingerprint --json

Each argument may hold several ``;``-separated statements.  Without arguments, stdin is
read: split on ``;`` the way PostgreSQL splits a simple Query when it holds any ``;``,
otherwise one statement per non-empty line.
"""

from __future__ import annotations

import json
import sys
from typing import TextIO

from dbproxy.sql.cache import Fingerprinter
from dbproxy.sql.fingerprint import Fingerprint

__all__ = ["main"]

USAGE = """\
usage: dbproxy fingerprint [--json] [SQL ...]

Print id, kind, operation, tables, summary and normalized text of each statement.
SQL comes from the arguments (each may hold ';'-separated statements) or, without
arguments, from stdin (';'-separated, or one statement per line).

options:
  --json      one JSON object per statement (JSON Lines)
  -h, --help  show this help and exit
"""


def _as_dict(fp: Fingerprint) -> dict[str, object]:
    return {
        "id": fp.id,
        "kind": fp.kind.value,
        "operation": fp.operation,
        "tables": list(fp.tables),
        "summary": fp.summary,
        "text": fp.text,
        "tags": dict(fp.tags),
        "parse_ok": fp.parse_ok,
    }


def _format(fp: Fingerprint) -> str:
    tables = ",".join(fp.tables) or "-"
    flag = "" if fp.parse_ok else "  (not parsed)"
    lines = [
        f"{fp.id}  {fp.kind.value:<5}  {fp.operation:<8}  tables={tables}  {fp.summary}{flag}",
        f"    {fp.text}",
    ]
    if fp.tags:
        lines.append("    tags: " + ", ".join(f"{k}={v}" for k, v in fp.tags.items()))
    return "\n".join(lines)


def _statements(fingerprinter: Fingerprinter, chunks: list[str]) -> list[Fingerprint]:
    result: list[Fingerprint] = []
    for chunk in chunks:
        result.extend(fingerprinter.fingerprint_many(chunk))
    return result


def main(argv: list[str], stdin: TextIO, stdout: TextIO) -> int:
    """Run the command; ``argv`` excludes the program and subcommand names."""
    as_json = False
    sql_args: list[str] = []
    only_sql = False
    for arg in argv:
        if only_sql:
            sql_args.append(arg)
        elif arg == "--":
            only_sql = True
        elif arg == "--json":
            as_json = True
        elif arg in ("-h", "--help"):
            stdout.write(USAGE)
            return 0
        elif arg.startswith("-") and len(arg) > 1 and not arg.startswith("--"):
            sql_args.append(arg)  # e.g. "-- comment" style SQL is passed after `--`
        elif arg.startswith("--"):
            sys.stderr.write(f"dbproxy fingerprint: unknown option {arg}\n{USAGE}")
            return 2
        else:
            sql_args.append(arg)

    if sql_args:
        chunks = sql_args
    else:
        text = stdin.read()
        chunks = [text] if ";" in text else [ln for ln in text.splitlines() if ln.strip()]

    fingerprinter = Fingerprinter()
    for fp in _statements(fingerprinter, chunks):
        if as_json:
            stdout.write(json.dumps(_as_dict(fp), ensure_ascii=False) + "\n")
        else:
            stdout.write(_format(fp) + "\n")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main(sys.argv[1:], sys.stdin, sys.stdout))
