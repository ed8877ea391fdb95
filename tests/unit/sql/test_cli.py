from __future__ import annotations

import io
import json

from dbproxy.fingerprint_cmd import main


def _run(argv: list[str], stdin: str = "") -> tuple[int, str]:
    out = io.StringIO()
    code = main(argv, io.StringIO(stdin), out)
    return code, out.getvalue()


def test_arguments_human_output() -> None:
    code, out = _run(["SELECT * FROM users WHERE id = 1; DELETE FROM t WHERE a IN (1,2)"])
    assert code == 0
    lines = out.splitlines()
    assert "read" in lines[0] and "tables=users" in lines[0] and "SELECT users" in lines[0]
    assert lines[1].strip() == "SELECT * FROM users WHERE id = $1"
    assert "write" in lines[2] and lines[3].strip() == "DELETE FROM t WHERE a IN ($1)"


def test_stdin_lines_json() -> None:
    code, out = _run(["--json"], "SELECT 1\n\nUPDATE t SET a = 2 /*route='x'*/\n")
    assert code == 0
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["operation"] for r in rows] == ["SELECT", "UPDATE"]
    assert rows[1]["kind"] == "write" and rows[1]["tables"] == ["t"]
    assert rows[1]["tags"] == {"route": "x"} and len(rows[0]["id"]) == 16


def test_stdin_semicolon_separated_multiline() -> None:
    code, out = _run(["--json"], "SELECT a\nFROM t;\nINSERT INTO t\nVALUES (1);\n")
    assert code == 0
    assert [json.loads(x)["operation"] for x in out.splitlines()] == ["SELECT", "INSERT"]


def test_help_and_bad_option() -> None:
    assert _run(["--help"])[0] == 0
    assert _run(["--nope"])[0] == 2
