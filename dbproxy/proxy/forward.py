"""The data path of a forwarding connection, compiled with mypyc (see :mod:`dbproxy.speedups`).

Two small protocol classes do what happens on every read once a connection forwards:
write the bytes to the other side, count them, then hand them to the session machine
(forward first, observe second):

* :class:`ServerConnection` is the upstream transport's protocol for the whole life of
  the connection;
* :class:`ClientForward` replaces :class:`dbproxy.proxy.pipe.ClientConnection` as the
  client transport's protocol once the startup negotiation is over and the upstream is
  connected (``ClientConnection.forward_directly``).  What is not a read (EOF, the
  connection lost, backpressure) it hands back to the ``ClientConnection``, which keeps
  the connection's lifecycle.

Compiled, these calls are native: the session machine is called directly (no argument
parsing, no boxed clock), and no interpreter frame runs per read; pure Python, they are
the same code.  ``uvloop`` accepts any object with the protocol's methods (it binds
``data_received`` once, when the protocol is set), so they do not derive from
``asyncio.Protocol``, which compiled classes cannot; nor are uvloop's transports
``asyncio.Transport`` subclasses, so transports are typed structurally (a compiled
function checks the class of an argument typed with a class).

An exception raised while observing is counted, logged once and turns observation off
for the connection (``ClientConnection.observer_failed``); it never reaches the client.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

from dbproxy.protocol.session import Session


class ProxyStats:
    """Plain counters of the proxy itself (observation problems included)."""

    __slots__ = (
        "bytes_from_client",
        "bytes_from_server",
        "cancel_requests",
        "connections_accepted",
        "observer_errors",
        "rejected_startups",
        "replication_database",
        "replication_physical",
        "upstream_connect_failures",
    )

    def __init__(self) -> None:
        self.connections_accepted = 0
        self.upstream_connect_failures = 0
        self.observer_errors = 0
        self.rejected_startups = 0
        self.cancel_requests = 0
        self.bytes_from_client = 0
        self.bytes_from_server = 0
        # walsender connections (relayed, not observed), by replication mode
        self.replication_physical = 0
        self.replication_database = 0

    def count_replication(self, mode: str) -> None:
        if mode == "database":
            self.replication_database += 1
        else:
            self.replication_physical += 1


class Transport(Protocol):
    """What the forwarding protocols use of a transport (asyncio's or uvloop's)."""

    def write(self, data: bytes) -> None: ...

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def is_closing(self) -> bool: ...


class Owner(Protocol):
    """What the forwarding protocols call back on the client connection (off the hot
    path): ``proxy/pipe.py``'s ``ClientConnection``."""

    @property
    def transport(self) -> Transport | None: ...

    def observer_failed(self) -> None: ...

    def server_closed(self) -> None: ...

    def eof_received(self) -> bool | None: ...

    def connection_lost(self, exc: Exception | None) -> None: ...

    def pause_writing(self) -> None: ...

    def resume_writing(self) -> None: ...


class ServerConnection:
    """The upstream side: forwards to the client, reports to it, is paused by it."""

    def __init__(self, client: Owner, session: Session, stats: ProxyStats) -> None:
        self._client = client
        self._session = session
        self._stats = stats
        self.transport: Transport | None = None
        transport = client.transport
        assert transport is not None  # the client side is connected first
        self._client_write: Callable[[bytes], object] = transport.write
        self._clock: Callable[[], int] = time.monotonic_ns  # bound once: no lookup per read

    def connection_made(self, transport: Transport) -> None:
        self.transport = transport

    def bind_client(self) -> None:
        """Write to the client's current transport (it changes once, when TLS starts)."""
        transport = self._client.transport
        assert transport is not None
        self._client_write = transport.write

    def data_received(self, data: bytes) -> None:
        # forward first, count, then observe
        self._client_write(data)
        self._stats.bytes_from_server += len(data)
        session = self._session
        if session.observing:
            try:
                session.server_data(data, self._clock())
            except Exception:
                self._client.observer_failed()

    def eof_received(self) -> bool | None:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._client.server_closed()

    def pause_writing(self) -> None:
        transport = self._client.transport
        if transport is not None:
            transport.pause_reading()

    def resume_writing(self) -> None:
        transport = self._client.transport
        if transport is not None and not transport.is_closing():
            transport.resume_reading()


class ClientForward:
    """The client transport's protocol once the connection forwards (see the module)."""

    def __init__(
        self,
        owner: Owner,
        upstream: Transport,
        session: Session,
        stats: ProxyStats,
    ) -> None:
        self._owner = owner
        self._upstream_write: Callable[[bytes], object] = upstream.write
        self._clock: Callable[[], int] = time.monotonic_ns
        self._session = session
        self._stats = stats

    def data_received(self, data: bytes) -> None:
        # forward first, count, then observe
        self._upstream_write(data)
        self._stats.bytes_from_client += len(data)
        session = self._session
        if session.observing:
            try:
                session.client_data(data, self._clock())
            except Exception:
                self._owner.observer_failed()

    def eof_received(self) -> bool | None:
        return self._owner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._owner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._owner.pause_writing()

    def resume_writing(self) -> None:
        self._owner.resume_writing()
