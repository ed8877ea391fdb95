"""TLS and proxy-authentication settings (issue 11)."""

from __future__ import annotations

import pytest

from dbproxy.config import load_config
from dbproxy.errors import ConfigError


def test_tls_settings_parse_and_default_off() -> None:
    config = load_config({}, {})
    assert (config.client_tls, config.upstream_tls) == ("disable", "disable")
    config = load_config(
        {"client_tls": "REQUIRE", "client_tls_cert": "c.pem", "client_tls_key": "k.pem"},
        {"DBPROXY_UPSTREAM_TLS": "verify-full", "DBPROXY_UPSTREAM_TLS_CA": "ca.pem"},
    )
    assert config.client_tls == "require" and config.upstream_tls == "verify-full"
    assert config.upstream_tls_ca == "ca.pem"


@pytest.mark.parametrize(
    ("cli", "message"),
    [
        ({"client_tls": "allow"}, "needs --client-tls-cert"),
        ({"client_tls": "require", "client_tls_cert": "c.pem"}, "needs --client-tls-cert"),
        ({"upstream_tls": "verify-ca"}, "needs --upstream-tls-ca"),
        ({"upstream_tls": "sometimes"}, "must be one of"),
        ({"client_tls": "prefer"}, "must be one of"),
    ],
)
def test_tls_settings_refuse_incomplete_setups(cli: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(cli, {})


def test_auth_dsn_is_a_secret() -> None:
    config = load_config({}, {"DBPROXY_AUTH_DSN": "postgresql://u:topsecret@h/db"})
    assert "topsecret" not in repr(config)
    with pytest.raises(ConfigError) as info:
        load_config({}, {"DBPROXY_AUTH_DSN": "mysql://u:topsecret@h/db"})
    assert "topsecret" not in str(info.value)
