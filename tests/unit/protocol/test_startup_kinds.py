"""Startup packets the proxy reads before forwarding: replication connections and
protocol 3.2's longer CancelRequest."""

from __future__ import annotations

import struct

import pytest

from dbproxy.protocol import codes
from dbproxy.protocol.startup import RequestKind, read_startup_request, replication_mode


def _startup(**params: str) -> bytes:
    body = struct.pack("!I", 3 << 16 | 2)
    for key, value in params.items():
        body += key.encode() + b"\0" + value.encode() + b"\0"
    body += b"\0"
    return struct.pack("!I", len(body) + 4) + body


@pytest.mark.parametrize(
    ("value", "mode"),
    [
        ("database", "database"),
        ("true", "physical"),
        ("on", "physical"),
        ("1", "physical"),
        ("YES", "physical"),
        ("false", None),
        ("0", None),
    ],
)
def test_replication_mode(value: str, mode: str | None) -> None:
    assert replication_mode(_startup(user="u", replication=value)) == mode


def test_no_replication_parameter() -> None:
    # "replication" as a value of another parameter is not a walsender
    assert replication_mode(_startup(user="replication", database="replication")) is None
    assert replication_mode(_startup(user="u", application_name="x")) is None


@pytest.mark.parametrize("key_len", [4, 32, 256])
def test_cancel_request_with_a_longer_key_is_one_packet(key_len: int) -> None:
    # protocol 3.2: BackendKeyData's key may be up to 256 bytes, and so is the CancelRequest's
    packet = struct.pack("!III", 12 + key_len, codes.CANCEL_REQUEST_CODE, 4242) + bytes(key_len)
    request = read_startup_request(packet + b"next")
    assert request is not None
    assert request.kind is RequestKind.CANCEL and request.size == 12 + key_len
    assert read_startup_request(packet[:-1]) is None  # incomplete: wait for the rest
