"""Profiling settings: PYROSCOPE_SERVER_ADDRESS is read by config.py only, and a missing
`profiling` extra is said clearly (the real agent's push is tests/integration/test_profiling.py)."""

from __future__ import annotations

import logging
from types import ModuleType

import pytest

from dbproxy.config import load_config
from dbproxy.errors import ConfigError
from dbproxy.export.profiling import ProfilingSettings, start_profiling


def test_pyroscope_address_comes_from_its_own_variable() -> None:
    config = load_config(
        cli={},
        env={
            "PYROSCOPE_SERVER_ADDRESS": "http://pyroscope:4040",
            "PYROSCOPE_TENANT_ID": "team-a",
            "HOME": "/root",
        },
    )
    assert config.pyroscope_server_address == "http://pyroscope:4040"
    assert config.pyroscope_env == {
        "PYROSCOPE_SERVER_ADDRESS": "http://pyroscope:4040",
        "PYROSCOPE_TENANT_ID": "team-a",
    }
    assert load_config(cli={}, env={}).pyroscope_server_address is None


def test_a_bad_pyroscope_address_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="PYROSCOPE_SERVER_ADDRESS 'pyroscope:4040'"):
        load_config(cli={}, env={"PYROSCOPE_SERVER_ADDRESS": "pyroscope:4040"})


def test_without_the_extra_it_says_so_and_carries_on(caplog: pytest.LogCaptureFixture) -> None:
    def missing() -> ModuleType:
        raise ImportError("No module named 'pyroscope'")

    caplog.set_level(logging.INFO, logger="dbproxy.export.profiling")
    profiler = start_profiling(
        ProfilingSettings(server_address="http://pyroscope:4040"), import_agent=missing
    )
    assert profiler is None
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    assert record.getMessage() == (
        "PYROSCOPE_SERVER_ADDRESS is set (http://pyroscope:4040) but the profiling extra is not "
        "installed, so no CPU profiles are pushed: pip install 'dbproxy[profiling]'"
    )
