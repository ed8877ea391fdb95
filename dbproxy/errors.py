"""One exception hierarchy for dbproxy.

Protocol errors name the guilty side, as h11 does with Local/RemoteProtocolError:
a :class:`FrontendProtocolError` means the client sent something PostgreSQL would
reject; a :class:`BackendProtocolError` means the server (or whatever sits upstream)
did.
"""

from __future__ import annotations


class DbproxyError(Exception):
    """Base class of every error dbproxy raises on purpose."""


class ConfigError(DbproxyError):
    """Configuration that cannot work: reported as one line, exit status 2."""


class ProtocolError(DbproxyError):
    """Bytes that do not follow the PostgreSQL wire protocol."""

    #: SQLSTATE a server would answer with (protocol_violation).
    sqlstate = "08P01"


class FrontendProtocolError(ProtocolError):
    """The client broke the protocol."""


class BackendProtocolError(ProtocolError):
    """The server broke the protocol."""
