"""``--listen`` lists, ``--listen-unix`` and an upstream given as a Unix-socket directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from dbproxy.config import Address, load_config, parse_listen, parse_upstream
from dbproxy.errors import ConfigError


def test_listen_takes_several_addresses_ipv6_included() -> None:
    assert parse_listen("127.0.0.1:6432, [::1]:0") == (
        Address("127.0.0.1", 6432),
        Address("::1", 0),
    )
    config = load_config({"listen": "0.0.0.0:6000,[::]:6000"}, {})
    assert config.listen == Address("0.0.0.0", 6000)
    assert config.listen_also == (Address("::", 6000),)
    assert str(config.listen_also[0]) == "[::]:6000"


def test_listen_list_from_the_config_file(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('listen = ["127.0.0.1:1", "[::1]:2"]\nlisten_unix = "/tmp"\n')
    config = load_config({}, {}, str(path))
    assert (config.listen, config.listen_also) == (Address("127.0.0.1", 1), (Address("::1", 2),))
    assert config.listen_unix == "/tmp" and config.listen_unix_mode == 0o777


@pytest.mark.parametrize("text", ["", ",", "/var/run/postgresql:5432", "::1:5432"])
def test_listen_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_listen(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("/var/run/postgresql:5433", Address("/var/run/postgresql", 5433)),
        ("/var/run/postgresql", Address("/var/run/postgresql", 5432)),
        ("/var/run/postgresql/", Address("/var/run/postgresql", 5432)),
        ("db:5432", Address("db", 5432)),
        ("[::1]:5432", Address("::1", 5432)),
    ],
)
def test_upstream_may_be_a_socket_directory(text: str, expected: Address) -> None:
    assert parse_upstream(text) == expected


def test_listen_unix_needs_an_existing_directory_and_an_octal_mode(tmp_path: Path) -> None:
    config = load_config({"listen_unix": str(tmp_path), "listen_unix_mode": "0770"}, {})
    assert config.listen_unix == str(tmp_path) and config.listen_unix_mode == 0o770
    with pytest.raises(ConfigError, match="--listen-unix"):
        load_config({"listen_unix": str(tmp_path / "missing")}, {})
    with pytest.raises(ConfigError, match="--listen-unix"):
        load_config({"listen_unix": "relative/dir"}, {})
    with pytest.raises(ConfigError, match="DBPROXY_LISTEN_UNIX_MODE"):
        load_config({}, {"DBPROXY_LISTEN_UNIX_MODE": "999"})


def test_listen_unix_mode_as_a_toml_integer_or_string(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("listen_unix_mode = 0o770\n")
    assert load_config({}, {}, str(path)).listen_unix_mode == 0o770
    path.write_text('listen_unix_mode = "0750"\n')
    assert load_config({}, {}, str(path)).listen_unix_mode == 0o750
