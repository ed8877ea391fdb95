"""Configuration precedence and validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from dbproxy.config import Address, ProxyConfig, load_config, parse_address
from dbproxy.errors import ConfigError


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:6432", Address("127.0.0.1", 6432)),
        ("db.internal:5432", Address("db.internal", 5432)),
        ("[::1]:5433", Address("::1", 5433)),
        (":7000", Address("127.0.0.1", 7000)),
        ("7000", Address("127.0.0.1", 7000)),
    ],
)
def test_parse_address(text: str, expected: Address) -> None:
    assert parse_address(text) == expected


@pytest.mark.parametrize("text", ["", "host", "host:", "host:-1", "host:65536", "::1:5432", "[::1"])
def test_parse_address_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_address(text)


def test_defaults() -> None:
    config = load_config({}, {})
    assert config == ProxyConfig()
    assert str(config.listen) == "127.0.0.1:6432" and str(config.upstream) == "127.0.0.1:5432"


def test_precedence_cli_over_env_over_file(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[proxy]\nlisten = "1.1.1.1:1"\nupstream = "2.2.2.2:2"\nshutdown_timeout = 3\n')
    env = {"DBPROXY_CONFIG": str(path), "DBPROXY_UPSTREAM": "3.3.3.3:3"}
    config = load_config({"listen": "4.4.4.4:4", "upstream": None}, env)
    assert str(config.listen) == "4.4.4.4:4"
    assert str(config.upstream) == "3.3.3.3:3"
    assert config.shutdown_timeout == 3.0


def test_errors_name_the_origin(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="DBPROXY_SINK_CAPACITY"):
        load_config({}, {"DBPROXY_SINK_CAPACITY": "0"})
    path = tmp_path / "c.toml"
    path.write_text('log_level = "loud"\n')
    with pytest.raises(ConfigError, match=r"c.toml: log_level"):
        load_config({}, {}, str(path))


def test_every_flag_is_a_setting_and_names_itself_in_errors() -> None:
    from dataclasses import fields

    from dbproxy.config import cli_settings

    names = {f.name for f in fields(ProxyConfig)}
    flags = cli_settings()
    assert len({s.flag for s in flags}) == len(flags)
    for setting in flags:  # a setting, or --NAME-file for a setting NAME (a secret)
        assert setting.name in names or setting.name.removesuffix("_file") in names
    # a secret has no flag, only --NAME-file
    assert "api_token" not in {s.name for s in flags}
    assert "api_token_file" in {s.name for s in flags}
    with pytest.raises(ConfigError, match="--proxy-span"):
        load_config({"trace_proxy_span": "maybe"}, {})


def test_inspect_dsn_password_never_only_on_the_command_line() -> None:
    with pytest.raises(ConfigError, match="must not hold a password") as info:
        load_config({"inspect_dsn": "postgresql://insp:s3cret@db/postgres"}, {})
    assert "s3cret" not in str(info.value)
    with pytest.raises(ConfigError, match="must not hold a password"):
        load_config({"inspect_dsn": "postgresql://insp@db/postgres?password=s3cret"}, {})
    flag_only = load_config({"inspect_dsn": "postgresql://insp@db/postgres"}, {})
    assert flag_only.inspect_dsn == "postgresql://insp@db/postgres"
    from_env = load_config({}, {"DBPROXY_INSPECT_DSN": "postgresql://insp:s3cret@db/postgres"})
    assert from_env.inspect_dsn == "postgresql://insp:s3cret@db/postgres"
    assert "s3cret" not in repr(from_env)
    with pytest.raises(ConfigError) as bad:
        load_config({}, {"DBPROXY_INSPECT_DSN": "host=db password=s3cret"})
    assert "s3cret" not in str(bad.value)


def test_inspect_settings() -> None:
    config = load_config(
        {"sample_analyze": "0.01", "explain_slow_ms": "off", "inspect_exclude": "users, a1b2"},
        {"DBPROXY_INSPECT_TOP": "5", "DBPROXY_INSPECT_DSN": "postgresql://i:pw@db/postgres"},
    )
    assert config.sample_analyze == 0.01 and config.explain_slow_ms is None
    assert config.inspect_exclude == ("users", "a1b2") and config.inspect_top == 5
    with pytest.raises(ConfigError, match="--sample-analyze"):
        load_config({"sample_analyze": "2"}, {})
    with pytest.raises(ConfigError, match="needs the side connection"):
        load_config({"sample_analyze": "0.5"}, {})
