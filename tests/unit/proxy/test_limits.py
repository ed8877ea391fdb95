"""proxy/limits.py without sockets: the CancelRequest bytes, the idle reaper's rules, the
settings."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field, replace

import pytest

from dbproxy.config import ProxyConfig, load_config
from dbproxy.errors import ConfigError
from dbproxy.protocol import codes
from dbproxy.protocol.session import Session
from dbproxy.proxy.limits import IdleReaper, LimitStats, encode_cancel_request, fatal
from tests.unit.protocol import wire


def test_cancel_request_carries_a_key_of_any_length() -> None:
    assert encode_cancel_request(7, b"\x00\x00\x00\x09") == struct.pack("!IIiI", 16, 80877102, 7, 9)
    long_key = bytes(range(32))  # protocol 3.2
    packet = encode_cancel_request(7, long_key)
    assert struct.unpack_from("!II", packet) == (12 + 32, codes.CANCEL_REQUEST_CODE)
    assert packet.endswith(long_key)


def test_fatal_is_an_error_response() -> None:
    data = fatal("53300", "sorry, too many clients already")
    assert data[:1] == b"E"
    assert struct.unpack_from("!I", data, 1)[0] == len(data) - 1
    assert b"SFATAL\x00" in data and b"C53300\x00" in data


@dataclass
class _Conn:
    session: Session
    said: list[str] = field(default_factory=list)

    def close_with_error(self, sqlstate: str, message: str) -> bool:
        self.said.append(sqlstate)
        return True


def _session(*replies: bytes) -> Session:
    session = Session(session_id=1, emit=lambda e: None, epoch_offset_ns=0)
    session.client_data(wire.startup(), 0)
    session.server_data(wire.auth_ok() + wire.ready(), 1_000_000_000)  # idle since t = 1 s
    for reply in replies:
        session.server_data(reply, 1_000_000_000)
    return session


def test_reaper_closes_idle_and_idle_in_transaction_by_their_own_limits() -> None:
    now = [0]
    config = ProxyConfig(client_idle_timeout=10, idle_in_transaction_timeout=2)
    idle = _Conn(_session())
    in_tx = _Conn(_session())
    in_tx.session.client_data(wire.query("begin"), 1_000_000_000)
    in_tx.session.server_data(wire.command_complete("BEGIN") + wire.ready("T"), 1_000_000_000)
    busy = _Conn(_session())
    busy.session.client_data(wire.query("select pg_sleep(100)"), 1_000_000_000)
    stats = LimitStats()
    reaper = IdleReaper(lambda: config, lambda: [idle, in_tx, busy], stats, clock_ns=lambda: now[0])
    assert reaper.interval() == 0.5  # a quarter of the smallest limit
    now[0] = 2_500_000_000
    assert reaper.sweep() == 0
    now[0] = 3_100_000_000
    assert reaper.sweep() == 1
    assert in_tx.said == [codes.SQLSTATE_IDLE_IN_TRANSACTION_TIMEOUT]
    now[0] = 11_100_000_000
    reaper.sweep()
    assert idle.said == [codes.SQLSTATE_IDLE_SESSION_TIMEOUT]
    assert busy.said == []  # a running statement is never idle
    assert (stats.idle_timeouts, stats.idle_in_transaction_timeouts) == (1, 2)


def test_reaper_reads_the_config_at_every_sweep() -> None:
    config = [ProxyConfig()]
    conn = _Conn(_session())
    reaper = IdleReaper(lambda: config[0], lambda: [conn], LimitStats(), clock_ns=lambda: 10**12)
    assert reaper.interval() == 1.0 and reaper.sweep() == 0  # off by default
    config[0] = replace(config[0], client_idle_timeout=1.0)
    assert reaper.sweep() == 1


def test_settings() -> None:
    config = load_config(
        {"max_client_connections": "5", "startup_timeout": "2.5", "client_idle_timeout": "off"},
        {"DBPROXY_IDLE_IN_TRANSACTION_TIMEOUT": "30"},
    )
    assert config.max_client_connections == 5
    assert config.startup_timeout == 2.5
    assert config.client_idle_timeout == 0.0
    assert config.idle_in_transaction_timeout == 30.0
    defaults = ProxyConfig()
    assert (defaults.max_client_connections, defaults.startup_timeout) == (10_000, 10.0)
    with pytest.raises(ConfigError, match="DBPROXY_MAX_CLIENT_CONNECTIONS"):
        load_config({}, {"DBPROXY_MAX_CLIENT_CONNECTIONS": "-1"})
    with pytest.raises(ConfigError, match="startup-timeout"):
        load_config({"startup_timeout": "0"}, {})
