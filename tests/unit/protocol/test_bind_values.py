"""Bind parameter values for the opt-in sampler: text, NULL, binary of common types."""

from __future__ import annotations

import struct
import uuid

from dbproxy.protocol import codes
from dbproxy.protocol.events import StatementFinished
from dbproxy.protocol.messages import decode_bind_values


def _bind(formats: list[int], values: list[bytes | None], names: bytes = b"\0\0") -> bytes:
    body = names + struct.pack("!h", len(formats)) + b"".join(struct.pack("!h", f) for f in formats)
    body += struct.pack("!h", len(values))
    for v in values:
        body += struct.pack("!i", -1) if v is None else struct.pack("!i", len(v)) + v
    return body + struct.pack("!h", 0)


def test_text_values_and_nulls() -> None:
    assert decode_bind_values(_bind([], [b"abc", None, b"42"]), "utf-8") == ("abc", None, "42")


def test_binary_values_of_known_types() -> None:
    u = uuid.uuid4()
    body = _bind(
        [1],
        [struct.pack("!h", -3), struct.pack("!q", 2**40), b"\x01", u.bytes, struct.pack("!i", 1)],
    )
    assert decode_bind_values(body, "utf-8", (21, 20, 16, 2950, 1082)) == (
        "-3",
        str(2**40),
        "t",
        str(u),
        "2000-01-02",
    )


def test_unknown_binary_type_or_truncated_body_gives_nothing() -> None:
    assert decode_bind_values(_bind([1], [b"\x00\x01"]), "utf-8", (0,)) is None
    assert decode_bind_values(_bind([1], [b"\x00\x01"]), "utf-8", (1700,)) is None
    whole = _bind([0], [b"x" * 100])
    assert decode_bind_values(whole[:50], "utf-8") is None


def test_bind_capture_is_only_raised_when_asked() -> None:
    from dbproxy.protocol.session import BIND_VALUES_CAPTURE, _bind_capture

    assert _bind_capture(1 << 20)[codes.BIND] == BIND_VALUES_CAPTURE
    field = StatementFinished.__dataclass_fields__["param_values"]
    assert field.repr is False and field.default is None
