"""The auth_file format (PgBouncer's userlist.txt) of proxy-side SCRAM."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from dbproxy.protocol import scram
from dbproxy.proxy.auth import AuthFile, parse_auth_file


def test_parse_auth_file() -> None:
    text = '; comment\n\n"alice" "SCRAM-SHA-256$4096:c2FsdA==$a:b"\n"o""brien"  "x"\n'
    assert parse_auth_file(text) == {
        "alice": "SCRAM-SHA-256$4096:c2FsdA==$a:b",
        'o"brien': "x",
    }
    with pytest.raises(ValueError, match="line 1"):
        parse_auth_file('"unterminated')


def test_auth_file_lookup_reads_the_file_each_time(tmp_path: Path) -> None:
    path = tmp_path / "userlist.txt"
    secret_text, secret = scram.make_secret("pw", b"0123456789abcdef")
    path.write_text(f'"app" "{secret_text}"\n"md5user" "md5abcdef"\n')
    source = AuthFile(str(path))
    assert asyncio.run(source.lookup("app")) == secret
    assert asyncio.run(source.lookup("md5user")) is None  # not a SCRAM secret
    assert asyncio.run(source.lookup("nobody")) is None
    path.write_text("")
    assert asyncio.run(source.lookup("app")) is None
