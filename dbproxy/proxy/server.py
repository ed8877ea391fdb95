"""Listening socket, connection bookkeeping and graceful shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Coroutine

from dbproxy.config import Address, ProxyConfig
from dbproxy.errors import ConfigError
from dbproxy.observe.sink import EventSink
from dbproxy.protocol import codes
from dbproxy.proxy import limits
from dbproxy.proxy.auth import SecretSource, secret_source
from dbproxy.proxy.forward import ProxyStats
from dbproxy.proxy.listeners import Listeners, probe
from dbproxy.proxy.pipe import ClientConnection
from dbproxy.proxy.tls import TlsSettings

__all__ = ["ProxyServer", "ProxyStats"]

log = logging.getLogger(__name__)

#: At shutdown, seconds a session inside a server message has to finish it before its 57P01.
_FINISH_MESSAGE_S = 5.0


class ProxyServer:
    def __init__(self, config: ProxyConfig, sink: EventSink, *, worker_index: int = 0) -> None:
        self.config = config
        self.sink = sink
        self.stats = ProxyStats()
        self.limit_stats = limits.LimitStats()
        self.connections: set[ClientConnection] = set()
        self._tasks: set[asyncio.Task[None]] = set()  # cancels in flight, the idle reaper
        self.reaper = limits.IdleReaper(
            lambda: self.config, lambda: self.connections, self.limit_stats
        )
        # session ids unique across worker processes (worker i: i+1, i+1+N, …)
        self._ids = itertools.count(worker_index + 1, config.workers)
        self.listeners = Listeners(config)
        self._all_closed = asyncio.Event()
        try:
            self.tls = (
                TlsSettings(config)
                if config.client_tls != "disable" or config.upstream_tls != "disable"
                else None
            )
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            raise ConfigError(f"cannot load TLS certificates: {exc}") from None
        #: where proxy-side SCRAM finds secrets (TLS on both legs), else None: passthrough
        self.auth_source: SecretSource | None = secret_source(config)

    def reload_tls(self) -> bool:
        """SIGHUP: re-read certificates, key and CA (a bad file keeps the old ones)."""
        if self.tls is None:
            return True
        return self.tls.reload(self.config)  # a reloaded config may name other files

    @property
    def address(self) -> Address:
        """Where it listens (with the real port when 0 was asked for)."""
        assert self.listeners.addresses
        return self.listeners.addresses[0]

    def _new_connection(self) -> ClientConnection:
        self.stats.connections_accepted += 1
        return ClientConnection(self, next(self._ids))

    async def start(self) -> None:
        await self.listeners.start(self._new_connection)
        self.spawn(self.reaper.run())
        log.info(
            "dbproxy listening on %s, forwarding to %s",
            self.listeners.describe(),
            self.config.upstream,
        )

    def spawn(self, coro: Coroutine[object, object, None]) -> None:
        """Run a background task of the proxy, keeping a reference until it ends."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def shutdown(self, grace_s: float | None = None) -> None:
        """Stop accepting, let sessions finish for ``grace_s`` seconds, then close them."""
        if grace_s is None:
            grace_s = self.config.shutdown_timeout
        self.listeners.close()
        if self.connections:
            log.info(
                "shutting down: waiting up to %.1fs for %d session(s)",
                grace_s,
                len(self.connections),
            )
            self._all_closed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._all_closed.wait(), grace_s)
        if self.connections:
            log.info("closing %d session(s) still open", len(self.connections))
            closing = list(self.connections)
            deadline = asyncio.get_running_loop().time() + _FINISH_MESSAGE_S
            for conn in closing:
                # 57P01 as the server says it, at a message boundary: mid-message, after
                # the rest of that message (for at most _FINISH_MESSAGE_S)
                conn.close_with_error(
                    codes.SQLSTATE_ADMIN_SHUTDOWN, limits.ADMIN_SHUTDOWN, finish_message=True
                )
            if self.connections:
                self._all_closed.clear()
                with contextlib.suppress(TimeoutError):
                    left = deadline - asyncio.get_running_loop().time()
                    await asyncio.wait_for(self._all_closed.wait(), max(left, 0.0))
            for conn in list(self.connections):
                self.limit_stats.errors_withheld += 1
                conn.abort()
            # let the last bytes and the 57P01 reach clients that read them
            while asyncio.get_running_loop().time() < deadline and any(  # noqa: ASYNC110
                c.transport is not None and c.transport.get_write_buffer_size() for c in closing
            ):
                await asyncio.sleep(0.02)  # transports signal no "flushed" event to wait on
        for task in list(self._tasks):
            task.cancel()
        await self.listeners.wait_closed()
        if self.auth_source is not None:
            await self.auth_source.close()

    @property
    def listening(self) -> bool:
        return self.listeners.serving

    async def check_upstream(self, timeout_s: float = 1.0) -> tuple[bool, str]:
        """Readiness: listening, and a connection to the upstream (TCP or Unix) opens."""
        if not self.listening:
            return False, "not listening"
        upstream = self.config.upstream
        reason = await probe(upstream, timeout_s)
        if reason is not None:
            return False, f"upstream {upstream} unreachable: {reason}"
        return True, f"listening on {self.listeners.describe()}, upstream {upstream} reachable"

    def connection_closed(self, conn: ClientConnection) -> None:
        self.connections.discard(conn)
        if not self.connections:
            self._all_closed.set()
