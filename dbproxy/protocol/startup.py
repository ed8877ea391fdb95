"""The first packet of a client connection, before anything is forwarded (sans-I/O).

The proxy answers SSLRequest and GSSENCRequest itself (``N``: TLS is not offered yet)
and forwards everything else.  :func:`read_startup_request` tells which packet is at
the start of a buffer, once it is complete.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import Enum

from dbproxy.errors import FrontendProtocolError
from dbproxy.protocol import codes

_HEADER = struct.Struct("!II")


class RequestKind(Enum):
    STARTUP = "startup"
    SSL = "ssl"
    GSSENC = "gssenc"
    CANCEL = "cancel"
    DIRECT_TLS = "direct_tls"  # a TLS ClientHello: PostgreSQL 17 sslnegotiation=direct
    UNKNOWN = "unknown"  # e.g. protocol 2.0: forwarded, the server answers it


@dataclass(frozen=True, slots=True)
class StartupRequest:
    kind: RequestKind
    #: bytes of the packet (the whole packet, header included)
    size: int
    code: int


def read_startup_request(buf: bytes) -> StartupRequest | None:
    """The packet at the start of ``buf``, or None until it is complete.

    Raises :class:`FrontendProtocolError` for a length the server would refuse.
    """
    if buf[:1] == bytes((codes.TLS_HANDSHAKE_BYTE,)):
        return StartupRequest(RequestKind.DIRECT_TLS, 0, 0)
    if len(buf) < 8:
        return None
    length, code = _HEADER.unpack_from(buf, 0)
    if length < 8 or length - 4 > codes.MAX_STARTUP_PACKET_LENGTH:
        raise FrontendProtocolError(f"invalid length of startup packet: {length}")
    if len(buf) < length:
        return None
    if code == codes.SSL_REQUEST_CODE:
        kind = RequestKind.SSL
    elif code == codes.GSSENC_REQUEST_CODE:
        kind = RequestKind.GSSENC
    elif code == codes.CANCEL_REQUEST_CODE:
        kind = RequestKind.CANCEL
    elif code >> 16 == 3:
        kind = RequestKind.STARTUP
    else:
        kind = RequestKind.UNKNOWN
    return StartupRequest(kind, length, code)


#: values of the ``replication`` startup parameter that ask for a physical walsender
_TRUE = frozenset(("true", "on", "yes", "1", "t", "y"))


def replication_mode(packet: bytes) -> str | None:
    """``"physical"`` (``replication=true``: pg_basebackup, pg_receivewal, a standby) or
    ``"database"`` (``replication=database``: logical decoding, pg_recvlogical,
    subscriptions) for a StartupMessage that opens a walsender; None for a regular one.

    ``packet`` is the whole StartupMessage (header included)."""
    if b"replication\x00" not in packet:
        return None
    parts = packet[8:].split(b"\x00")
    for i in range(0, len(parts) - 1, 2):
        if parts[i] == b"replication":
            value = parts[i + 1].decode("ascii", "replace").strip().lower()
            if value == "database":
                return "database"
            return "physical" if value in _TRUE else None
    return None
