"""Framing limits and streaming, independent of the session machine."""

from __future__ import annotations

import struct

import pytest

from dbproxy.errors import BackendProtocolError, FrontendProtocolError
from dbproxy.protocol import codes
from dbproxy.protocol.framing import STARTUP, FrameReader
from dbproxy.protocol.startup import RequestKind, read_startup_request
from tests.unit.protocol import wire as w


def test_startup_then_regular_messages_in_one_read() -> None:
    reader = FrameReader.for_frontend()
    frames = reader.feed(w.startup() + w.query("select 1") + w.sync())
    assert [f[0] for f in frames] == [STARTUP, codes.QUERY, codes.SYNC]
    assert not reader.in_startup


def test_ssl_request_keeps_startup_mode() -> None:
    reader = FrameReader.for_frontend()
    (frame,) = reader.feed(w.ssl_request())
    assert frame[0] == STARTUP and reader.in_startup


def test_datarow_body_is_not_kept_and_1gb_message_streams() -> None:
    reader = FrameReader.for_backend()
    length = codes.MAX_MESSAGE_LENGTH  # the largest message the server accepts
    header = b"D" + struct.pack("!I", length)
    assert reader.feed(header) == []
    chunk = b"\x00" * (1 << 20)
    remaining = length - 4
    while remaining > len(chunk):
        assert reader.feed(chunk) == []
        remaining -= len(chunk)
        assert reader.mid_frame
    frames = reader.feed(chunk[:remaining] + w.ready())
    assert frames == [(codes.DATA_ROW, length - 4, b""), (codes.READY_FOR_QUERY, 1, b"I")]


def test_message_over_the_limit_names_the_side() -> None:
    with pytest.raises(BackendProtocolError, match="invalid message length"):
        FrameReader.for_backend().feed(b"D" + struct.pack("!I", codes.MAX_MESSAGE_LENGTH + 1))
    reader = FrameReader.for_frontend()
    reader.feed(w.startup())
    with pytest.raises(FrontendProtocolError):
        reader.feed(b"Q\x00\x00\x00\x03")


def test_startup_packet_body_over_10000_bytes_is_refused() -> None:
    big = struct.pack("!II", 10_005, 196608) + b"\x00" * 9_997
    with pytest.raises(FrontendProtocolError, match="startup packet"):
        FrameReader.for_frontend().feed(big)
    with pytest.raises(FrontendProtocolError):
        read_startup_request(big)
    ok = struct.pack("!II", 10_004, 196608) + b"\x00" * 9_996
    request = read_startup_request(ok)
    assert request is not None and request.kind is RequestKind.STARTUP


def test_long_query_is_cut_at_the_capture_limit() -> None:
    reader = FrameReader.for_frontend(text_limit=10)
    reader.feed(w.startup())
    msg = w.query("select " + "x" * 100)
    frames = []
    for i in range(0, len(msg), 7):
        frames += reader.feed(msg[i : i + 7])
    ((msg_type, length, body),) = frames
    assert (msg_type, length, body) == (codes.QUERY, len(msg) - 5, b"select xxx")


@pytest.mark.parametrize(
    ("packet", "kind"),
    [
        (w.ssl_request(), RequestKind.SSL),
        (struct.pack("!II", 8, 80877104), RequestKind.GSSENC),
        (w.cancel_request(1), RequestKind.CANCEL),
        (w.startup(), RequestKind.STARTUP),
        (struct.pack("!II", 8, 2 << 16), RequestKind.UNKNOWN),
        (b"\x16\x03\x01\x02\x00", RequestKind.DIRECT_TLS),
    ],
)
def test_startup_request_kinds(packet: bytes, kind: RequestKind) -> None:
    for cut in range(1, min(len(packet), 8)):
        partial = read_startup_request(packet[:cut])
        assert partial is None or partial.kind is RequestKind.DIRECT_TLS
    request = read_startup_request(packet + b"trailing")
    assert request is not None and request.kind is kind
    if kind is not RequestKind.DIRECT_TLS:
        assert request.size == len(packet)
