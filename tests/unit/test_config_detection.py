"""The regression-detection settings: flags, environment, secrets kept off the CLI."""

from __future__ import annotations

import pytest

from dbproxy.config import cli_settings, load_config
from dbproxy.errors import ConfigError


def test_defaults_and_overrides() -> None:
    config = load_config({}, {})
    assert config.detect and config.state_dir is None
    assert config.detect_window == 900 and config.detect_baseline == ("day", "trailing")
    assert config.n_plus_one_min == 10 and config.slack_webhook_url is None
    config = load_config(
        {"detect_window": "120", "detect_baseline": "trailing", "state_dir": "/tmp/x"},
        {"DBPROXY_SLACK_WEBHOOK_URL": "https://hooks.slack.example/T/B/x"},
    )
    assert config.detect_window == 120 and config.detect_baseline == ("trailing",)
    assert config.state_dir == "/tmp/x"
    assert config.slack_webhook_url == "https://hooks.slack.example/T/B/x"
    assert "hooks.slack" not in repr(config)


def test_webhook_urls_are_not_flags_and_errors_hide_them() -> None:
    flags = {s.name for s in cli_settings()}
    assert {"state_dir", "detect_window", "n_plus_one_min", "public_url"} <= flags
    assert not {"slack_webhook_url", "webhook_url", "api_token"} & flags
    with pytest.raises(ConfigError) as err:
        load_config({}, {"DBPROXY_WEBHOOK_URL": "ftp://secret-host/x"})
    assert "secret-host" not in str(err.value) and "(hidden)" in str(err.value)


@pytest.mark.parametrize(
    ("name", "value"),
    [("detect_window", "30"), ("detect_baseline", "weekly"), ("detect_latency_ratio", "1")],
)
def test_invalid_values(name: str, value: str) -> None:
    with pytest.raises(ConfigError):
        load_config({name: value}, {})
