"""Incremental framing of a PostgreSQL byte stream (sans-I/O).

``FrameReader.feed(data)`` takes whatever bytes arrived and returns the messages that
became complete, as ``(type, length, body)`` tuples; the session machine reads them one at
a time without building those (``start(data)``, then ``next_frame()`` until it returns -1,
with the frame's ``body`` and ``length`` in attributes):

* ``type`` is the message-type byte as an int, or ``STARTUP`` (0) for the untyped
  packets of the startup phase (StartupMessage, SSLRequest, GSSENCRequest,
  CancelRequest; their request code is the first four bytes of ``body``);
* ``length`` is the length of the body (the wire length minus its own four bytes);
* ``body`` holds at most the first ``capture[type]`` bytes of the body.  Messages the
  observer does not read (DataRow, CopyData) keep nothing, so a 1 GB message streams
  through in O(1) memory; ``len(body) < length`` tells that a body was cut.

Limits are the server's: a startup packet over 10,000 bytes or a message over
``MAX_MESSAGE_LENGTH`` raises the reader's protocol error, naming the guilty side.
A header split across reads is kept (at most 4 bytes) and joined with the next read;
no other bytes are copied except the captured prefixes.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import TYPE_CHECKING, Final

from dbproxy.errors import BackendProtocolError, FrontendProtocolError, ProtocolError
from dbproxy.protocol import codes

if TYPE_CHECKING:
    from mypy_extensions import i64  # compiled: a machine integer; pure Python: an int

STARTUP: Final = 0
Frame = tuple[int, int, bytes]

_TYPED_HEADER = struct.Struct("!BI")
_UNTYPED_HEADER = struct.Struct("!I")
_INT32 = struct.Struct("!I")

#: Default capture for fully-read message types.  Everything else keeps 0 bytes.
DEFAULT_TEXT_LIMIT: Final = 1 << 20


def capture_table(limits: dict[int, int]) -> list[int]:
    """A 256-entry table: how many body bytes to keep for each message type."""
    table = [0] * 256
    for msg_type, limit in limits.items():
        table[msg_type] = limit
    return table


def frontend_capture(text_limit: int = DEFAULT_TEXT_LIMIT) -> list[int]:
    """What an observer keeps of client messages: statement text, names, never data."""
    return capture_table(
        {
            STARTUP: codes.MAX_STARTUP_PACKET_LENGTH,
            codes.QUERY: text_limit,
            codes.PARSE: text_limit,
            codes.BIND: 512,  # portal and statement names (NAMEDATALEN is 64)
            codes.EXECUTE: 512,
            codes.DESCRIBE: 0,  # only its answer is paired; the name is not needed
            codes.CLOSE: 512,
            codes.FUNCTION_CALL: 4,
        }
    )


def backend_capture() -> list[int]:
    """What an observer keeps of server messages: statuses and errors, never rows."""
    return capture_table(
        {
            codes.AUTHENTICATION: 4,
            codes.BACKEND_KEY_DATA: 4 + 256,
            codes.COMMAND_COMPLETE: 256,
            codes.ERROR_RESPONSE: 8192,
            codes.PARAMETER_STATUS: 1024,
            codes.READY_FOR_QUERY: 1,
            codes.NEGOTIATE_PROTOCOL_VERSION: 1024,
        }
    )


class FrameReader:
    """Splits one direction of a connection into frames; see the module docstring."""

    __slots__ = (
        "_body",
        "_cap_left",
        "_capture",
        "_data",
        "_error",
        "_length",
        "_max_length",
        "_n",
        "_pending",
        "_pos",
        "_ready",
        "_remaining",
        "_startup",
        "_type",
        "body",
        "length",
    )

    def __init__(
        self,
        *,
        capture: Sequence[int],
        startup: bool,
        error: type[ProtocolError],
        max_length: int = codes.MAX_MESSAGE_LENGTH,
    ) -> None:
        if len(capture) != 256:
            raise ValueError("capture must have 256 entries")
        self._capture: list[int] = list(capture)
        self._startup = startup
        self._error = error
        self._max_length: i64 = max_length
        self._pending = b""  # an incomplete header, at most 4 bytes
        self._remaining = 0  # body bytes still to come for the current frame
        self._type = 0
        self._length = 0
        self._cap_left = 0
        self._body = bytearray()
        # the read being taken apart (start / next_frame) and the frame just returned
        self._data = b""
        self._pos: i64 = 0
        self._n: i64 = 0
        self._ready: i64 = -1  # a frame completed by start(), returned first
        self.body = b""
        self.length: i64 = 0

    @classmethod
    def for_frontend(cls, text_limit: int = DEFAULT_TEXT_LIMIT) -> FrameReader:
        return cls(capture=frontend_capture(text_limit), startup=True, error=FrontendProtocolError)

    @classmethod
    def for_backend(cls) -> FrameReader:
        return cls(capture=backend_capture(), startup=False, error=BackendProtocolError)

    @property
    def in_startup(self) -> bool:
        return self._startup

    @property
    def mid_frame(self) -> bool:
        """True while a frame has started but not completed."""
        return bool(self._pending) or self._remaining > 0

    def rest_of_frame(self) -> tuple[int, bytes]:
        """The frame in progress: (body bytes still to come, header bytes held so far);
        ``(0, b"")`` at a message boundary."""
        return self._remaining, self._pending

    def feed(self, data: bytes) -> list[Frame]:
        """Every frame completed by ``data``, as tuples (the convenient form; the session
        machine reads frames one by one with :meth:`start` / :meth:`next_frame`)."""
        out: list[Frame] = []
        self.start(data)
        while True:
            msg_type = self.next_frame()
            if msg_type < 0:
                return out
            out.append((msg_type, self.length, self.body))

    def start(self, data: bytes) -> None:
        """Take the next read; :meth:`next_frame` then returns the frames it completes.
        Any frames of the previous read not taken yet are dropped."""
        n = len(data)
        pos = 0
        self._ready = -1
        if self._remaining:
            take = self._remaining if self._remaining < n else n
            if self._cap_left:
                keep = self._cap_left if self._cap_left < take else take
                self._body += data[:keep]
                self._cap_left -= keep
            self._remaining -= take
            pos = take
            if not self._remaining:
                # the frame begun in an earlier read is complete: it comes first
                body = bytes(self._body)
                self._body = bytearray()
                if self._type == STARTUP:
                    self._after_startup_packet(body)
                self._ready = self._type
                self.length = self._length
                self.body = body
        elif self._pending:
            data = self._pending + data
            n = len(data)
            self._pending = b""
        self._data = data
        self._pos = pos
        self._n = n

    def next_frame(self) -> i64:
        """The type of the next complete frame of the current read (its body in
        :attr:`body`, its body length in :attr:`length`), or -1 when there is none: the
        rest of the read, if any, is kept for the next one."""
        ready = self._ready
        if ready >= 0:
            self._ready = -1
            return ready
        pos: i64 = self._pos
        n: i64 = self._n
        if pos >= n:
            self._data = b""  # the read is taken: do not keep it alive
            return -1
        data = self._data
        if self._startup:
            return self._next_startup(data, pos, n)
        # Typed messages: the hot path (compiled, every name below is a native local).
        if n - pos < 5:
            return self._keep_header(data, pos)
        # indexing, not struct: compiled, it is a few native operations
        msg_type: i64 = data[pos]
        # each byte into a machine integer first: shifts and ors of those are plain C
        b1: i64 = data[pos + 1]
        b2: i64 = data[pos + 2]
        b3: i64 = data[pos + 3]
        b4: i64 = data[pos + 4]
        length: i64 = (b1 << 24) | (b2 << 16) | (b3 << 8) | b4
        if length < 4 or length > self._max_length:
            raise self._error(f"invalid message length {length} for message type {chr(msg_type)!r}")
        body_len: i64 = length - 4
        body_start: i64 = pos + 5
        end: i64 = body_start + body_len
        limit: i64 = self._capture[msg_type]
        keep: i64 = limit if limit < body_len else body_len
        if end <= n:
            self.body = data[body_start : body_start + keep] if keep else b""
            self.length = body_len
            self._pos = end
            return msg_type
        self._start_partial(data, msg_type, body_len, body_start, keep)
        return -1

    def _next_startup(self, data: bytes, pos: int, n: int) -> int:
        """One untyped startup packet from ``pos`` (``_startup`` turns False once a
        StartupMessage went by)."""
        if n - pos < 4:
            return self._keep_header(data, pos)
        (length,) = _UNTYPED_HEADER.unpack_from(data, pos)
        if length < 8 or length - 4 > codes.MAX_STARTUP_PACKET_LENGTH:
            raise self._error(f"invalid length of startup packet: {length}")
        body_len = length - 4
        body_start = pos + 4
        limit = self._capture[STARTUP]
        keep = limit if limit < body_len else body_len
        end = body_start + body_len
        if end > n:
            self._start_partial(data, STARTUP, body_len, body_start, keep)
            return -1
        body = data[body_start : body_start + keep]
        self._after_startup_packet(body)
        self.body = body
        self.length = body_len
        self._pos = end
        return STARTUP

    def _start_partial(
        self, data: bytes, msg_type: int, body_len: int, body_start: int, keep: int
    ) -> None:
        """The frame's body continues in later reads (this one ends here)."""
        avail = len(data) - body_start
        self._type = msg_type
        self._length = body_len
        self._remaining = body_len - avail
        first = keep if keep < avail else avail
        self._body = bytearray(data[body_start : body_start + first])
        self._cap_left = keep - first
        self._end_read()

    def _keep_header(self, data: bytes, pos: int) -> int:
        """An incomplete header ends the read: kept (at most 4 bytes) for the next one."""
        self._pending = data[pos:]
        self._end_read()
        return -1

    def _end_read(self) -> None:
        self._pos = self._n
        self._data = b""  # do not keep a large read alive

    def _after_startup_packet(self, body: bytes) -> None:
        # SSLRequest / GSSENCRequest are followed by another startup packet; a
        # StartupMessage by regular messages; a CancelRequest by nothing.
        if len(body) >= 4:
            (code,) = _INT32.unpack_from(body, 0)
            if code >> 16 == 3:
                self._startup = False
