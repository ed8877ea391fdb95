"""Settings (secrets above all) from files: ``DBPROXY_X_FILE``, ``x_file`` in the TOML
file, ``--x-file`` for secrets; and the SIGHUP reloader's diff."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import pytest

from dbproxy.config import Address, ConfigSource, ProxyConfig, cli_settings, load_config
from dbproxy.errors import ConfigError
from dbproxy.reload import LIVE_SETTINGS, Reloader, changed_settings

TOKEN = "s3cret-token-from-a-file-0123"


def secret_file(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    path.chmod(0o600)
    return str(path)


def test_token_from_file_at_every_level(tmp_path: Path) -> None:
    path = secret_file(tmp_path, "token", TOKEN + "\n")  # the final newline is dropped
    assert load_config({}, {"DBPROXY_API_TOKEN_FILE": path}).api_token == TOKEN
    assert load_config({"api_token_file": path}, {}).api_token == TOKEN
    toml = tmp_path / "c.toml"
    toml.write_text(f'api_token_file = "{path}"\n')
    assert load_config({}, {}, str(toml)).api_token == TOKEN
    # the flag wins over the environment, as for any setting
    other = secret_file(tmp_path, "other", "another-token-0123456789")
    config = load_config({"api_token_file": other}, {"DBPROXY_API_TOKEN_FILE": path})
    assert config.api_token == "another-token-0123456789"
    assert "--api-token-file" in {s.flag for s in cli_settings()}


def test_any_setting_and_every_secret_can_come_from_a_file(tmp_path: Path) -> None:
    dsn = secret_file(tmp_path, "dsn", "postgresql://insp:pw-in-file@db/postgres\n")
    hook = secret_file(tmp_path, "hook", "https://hooks.slack.example/T0/B0/xyz\n")
    headers = secret_file(tmp_path, "headers", "authorization=Bearer otlp-secret\n")
    config = load_config(
        {"inspect_dsn_file": dsn},
        {
            "DBPROXY_SLACK_WEBHOOK_URL_FILE": hook,
            "DBPROXY_WEBHOOK_URL_FILE": hook,
            "DBPROXY_LOG_LEVEL_FILE": secret_file(tmp_path, "level", "debug"),
            "OTEL_EXPORTER_OTLP_HEADERS_FILE": headers,
            "PYROSCOPE_AUTH_TOKEN_FILE": secret_file(tmp_path, "pyro", "pyro-secret"),
        },
    )
    assert config.inspect_dsn == "postgresql://insp:pw-in-file@db/postgres"
    assert config.slack_webhook_url == config.webhook_url == "https://hooks.slack.example/T0/B0/xyz"
    assert config.log_level == "debug"
    assert config.otel_env["OTEL_EXPORTER_OTLP_HEADERS"] == "authorization=Bearer otlp-secret"
    assert "OTEL_EXPORTER_OTLP_HEADERS_FILE" not in config.otel_env
    assert config.pyroscope_env["PYROSCOPE_AUTH_TOKEN"] == "pyro-secret"
    for secret in ("pw-in-file", "xyz", "otlp-secret", "pyro-secret"):
        assert secret not in repr(config)


def test_file_errors_name_the_setting_and_hide_the_secret(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"DBPROXY_API_TOKEN_FILE .*/missing"):
        load_config({}, {"DBPROXY_API_TOKEN_FILE": str(tmp_path / "missing")})
    short = secret_file(tmp_path, "short", "tiny-secret")
    with pytest.raises(ConfigError, match="DBPROXY_API_TOKEN_FILE") as info:
        load_config({}, {"DBPROXY_API_TOKEN_FILE": short})
    assert "tiny-secret" not in str(info.value)
    with pytest.raises(ConfigError, match="both set"):
        load_config({}, {"DBPROXY_API_TOKEN": TOKEN, "DBPROXY_API_TOKEN_FILE": short})
    with pytest.raises(ConfigError, match="both set"):
        load_config(
            {}, {"OTEL_EXPORTER_OTLP_HEADERS": "a=b", "OTEL_EXPORTER_OTLP_HEADERS_FILE": short}
        )
    toml = tmp_path / "c.toml"
    toml.write_text('nonsense_file = "/x"\n')
    with pytest.raises(ConfigError, match="unknown setting"):
        load_config({}, {}, str(toml))


def test_http_exposure_settings(tmp_path: Path) -> None:
    config = load_config(
        {"http_allowed_hosts": "DBProxy.internal, .corp.example", "metrics_auth": "on"},
        {"DBPROXY_API_TOKEN": TOKEN},
    )
    assert config.http_allowed_hosts == ("dbproxy.internal", ".corp.example")
    assert config.metrics_auth
    with pytest.raises(ConfigError, match="--metrics-auth needs the HTTP token"):
        load_config({"metrics_auth": "on"}, {})
    with pytest.raises(ConfigError, match="--http-allowed-hosts"):
        load_config({"http_allowed_hosts": "a/b"}, {})
    toml = tmp_path / "c.toml"
    toml.write_text('http_allowed_hosts = ["a.example", "b.example"]\n')
    assert load_config({}, {}, str(toml)).http_allowed_hosts == ("a.example", "b.example")
    assert ProxyConfig().http_listen == Address("127.0.0.1", 9391)  # loopback by default


class Applied:
    def __init__(self, config: ProxyConfig) -> None:
        self.config = config
        self.calls: list[tuple[str, ...]] = []

    def __call__(self, config: ProxyConfig, changed: Sequence[str]) -> None:
        self.config = config
        self.calls.append(tuple(changed))


def test_reloader_applies_live_settings_and_reports_the_rest(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    toml = tmp_path / "dbproxy.toml"
    toml.write_text('log_level = "info"\nlisten = "127.0.0.1:7000"\nlog_slow_ms = 100\n')
    token = secret_file(tmp_path, "token", TOKEN)
    source = ConfigSource({"upstream": "db:5432"}, {"DBPROXY_API_TOKEN_FILE": token}, str(toml))
    loaded = source.load()
    # the running copy has its port resolved: not a change
    running = Applied(replace(loaded, listen=Address("127.0.0.1", 7000)))
    reloader = Reloader(source, loaded, lambda: running.config, running)

    caplog.set_level(logging.INFO, logger="dbproxy.reload")
    nothing = reloader()
    assert nothing.applied == () and nothing.needs_restart == () and running.calls == []

    toml.write_text(
        'log_level = "debug"\nlisten = "127.0.0.1:7001"\nlog_slow_ms = 5\nworkers = 2\n'
        'http_allowed_hosts = ["dbproxy.internal"]\n'
    )
    Path(token).write_text("a-rotated-token-0123456789")
    result = reloader()
    assert result.applied == ("log_level", "api_token", "http_allowed_hosts", "log_slow_ms")
    assert result.needs_restart == ("listen", "workers")
    assert running.config.log_level == "debug" and running.config.log_slow_ms == 5
    assert running.config.api_token == "a-rotated-token-0123456789"
    assert running.config.listen == Address("127.0.0.1", 7000)  # not applied
    assert running.config.upstream == Address("db", 5432)  # the command line still counts
    assert "only applied after a restart: listen, workers" in caplog.text
    assert "a-rotated-token" not in caplog.text
    # what needs a restart keeps being reported; what was applied is no longer a change
    again = reloader()
    assert again.applied == () and again.needs_restart == ("listen", "workers")

    toml.write_text('log_level = "loud"\n')
    broken = reloader()
    assert broken.error is not None and "log_level" in broken.error
    assert running.config.log_level == "debug" and reloader.failures == 1
    assert "configuration not reloaded" in caplog.text


def test_live_settings_are_settings() -> None:
    from dataclasses import fields

    names = {f.name for f in fields(ProxyConfig)}
    assert names >= LIVE_SETTINGS
    a = ProxyConfig()
    assert changed_settings(a, replace(a, otel_env={"OTEL_X": "1"})) == []
    assert changed_settings(a, replace(a, metrics_tags=("route",))) == ["metrics_tags"]
