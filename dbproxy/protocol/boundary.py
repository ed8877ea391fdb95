"""Where the server's message in progress ends (sans-I/O).

The proxy may only put a message of its own (57P01 at shutdown) between two server
messages.  When it has to say one while the server's stream is inside a message, it
relays up to that message's end first: :class:`BoundaryFinder` starts from the framing
state (:meth:`FrameReader.rest_of_frame`) and tells, read by read, where the end is.
"""

from __future__ import annotations

_HEADER = 5  # type byte + int32 length


class BoundaryFinder:
    __slots__ = ("_header", "_remaining")

    def __init__(self, remaining: int, header: bytes = b"") -> None:
        self._remaining = remaining  # body bytes of the current message still to come
        self._header = header  # the start of a header split across reads

    def feed(self, data: bytes) -> int | None:
        """The offset in ``data`` just past the end of the message in progress, or None
        when it goes on past ``data``."""
        pos = 0
        if self._header:
            take = data[: _HEADER - len(self._header)]
            self._header += take
            pos = len(take)
            if len(self._header) < _HEADER:
                return None
            length = int.from_bytes(self._header[1:_HEADER], "big")
            self._remaining = max(length - 4, 0)
            self._header = b""
        left = len(data) - pos
        if left >= self._remaining:
            return pos + self._remaining
        self._remaining -= left
        return None
