"""Limits, timeouts and the proxy's own goodbyes (issue 11).

What lives here, so ``pipe.py`` keeps only the hooks:

* :class:`LimitStats` — counters of what the limits did (exported by
  ``export/limits.py``);
* :func:`fatal` — the FATAL ErrorResponse the proxy writes itself (53300, 08P01, 57P01,
  57P05, 25P03, 08006); ``ClientConnection.close_with_error`` writes it only when the
  server→client stream is at a message boundary;
* :func:`send_cancel_request` — a CancelRequest on a fresh upstream connection for a client
  that vanished mid-statement (protocol 3.2 keys may be longer than 4 bytes);
* :class:`IdleReaper` — one task per proxy that closes sessions idle past
  ``client_idle_timeout`` / ``idle_in_transaction_timeout``; it reads the session state on
  demand, so the data path pays nothing.

Every limit is read from ``server.config`` when it is used (accept, startup packet, each
sweep), so a configuration replaced at run time (SIGHUP) applies to what comes next.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from dbproxy.protocol import codes, messages
from dbproxy.protocol.boundary import BoundaryFinder
from dbproxy.proxy.listeners import open_stream

if TYPE_CHECKING:
    from dbproxy.config import ProxyConfig
    from dbproxy.proxy.pipe import ClientConnection

log = logging.getLogger(__name__)

_CANCEL_HEADER = struct.Struct("!IIi")

#: the server's own wording, so clients and people recognise them
TOO_MANY_CLIENTS = "sorry, too many clients already"
STARTUP_TIMEOUT = "timeout while reading the startup packet"
ADMIN_SHUTDOWN = "terminating connection due to administrator command"
IDLE_SESSION = "terminating connection due to idle-session timeout"
IDLE_IN_TRANSACTION = "terminating connection due to idle-in-transaction timeout"
UPSTREAM_LOST = "dbproxy lost the connection to the upstream server"


class LimitStats:
    """Plain counters; the proxy's loop is the only writer."""

    __slots__ = (
        "cancels_failed",
        "cancels_on_client_loss",
        "errors_withheld",
        "idle_in_transaction_timeouts",
        "idle_timeouts",
        "startup_timeouts",
        "too_many_connections",
        "upstream_lost",
    )

    def __init__(self) -> None:
        self.too_many_connections = 0
        self.startup_timeouts = 0
        self.idle_timeouts = 0
        self.idle_in_transaction_timeouts = 0
        self.cancels_on_client_loss = 0
        self.cancels_failed = 0
        self.upstream_lost = 0  # 08006 written after the upstream connection ended
        # an error the proxy had to say mid-message: the connection was closed without it
        self.errors_withheld = 0


def fatal(sqlstate: str, message: str) -> bytes:
    return messages.encode_error_response(severity="FATAL", sqlstate=sqlstate, message=message)


def encode_cancel_request(pid: int, key: bytes) -> bytes:
    """CancelRequest: length, 80877102, process id, then the key (4 bytes, or up to 256
    in protocol 3.2)."""
    return _CANCEL_HEADER.pack(12 + len(key), codes.CANCEL_REQUEST_CODE, pid) + key


async def send_cancel_request(
    config: ProxyConfig, pid: int, key: bytes, *, wait_s: float = 2.0
) -> bool:
    """Open a connection to the upstream, send the CancelRequest, wait for the server to
    close it (it answers nothing), up to ``wait_s``.  True when it was delivered."""
    upstream = config.upstream
    try:
        reader, writer = await asyncio.wait_for(open_stream(upstream), config.connect_timeout)
    except (OSError, TimeoutError) as exc:
        log.warning("cannot send a CancelRequest to %s: %s", upstream, exc)
        return False
    try:
        writer.write(encode_cancel_request(pid, key))
        await writer.drain()
        with contextlib.suppress(TimeoutError, OSError):
            await asyncio.wait_for(reader.read(), wait_s)  # the server closes it when done
        return True
    except OSError as exc:
        log.warning("cannot send a CancelRequest to %s: %s", upstream, exc)
        return False
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


class FinishMessage(asyncio.Protocol):
    """Replaces the upstream connection's protocol when the proxy must say ``then`` while
    the server is inside a message: relays up to that message's end, writes ``then``, and
    calls ``done`` (which closes both sides)."""

    def __init__(
        self,
        client_write: Callable[[bytes], object],
        finder: BoundaryFinder,
        then: bytes,
        done: Callable[[], None],
    ) -> None:
        self._write = client_write
        self._finder = finder
        self._then = then
        self._done = done
        self._finished = False

    def data_received(self, data: bytes) -> None:
        if self._finished:
            return
        end = self._finder.feed(data)
        if end is None:
            self._write(data)
            return
        self._write(data[:end])
        self._write(self._then)
        self._finished = True
        self._done()

    def eof_received(self) -> bool | None:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._finished = True
        self._done()


class IdleReaper:
    """Closes sessions idle past the configured limits; one sweep every ``interval``.

    ``config`` is a callable so each sweep sees the current configuration.
    """

    def __init__(
        self,
        config: Callable[[], ProxyConfig],
        connections: Callable[[], Iterable[ClientConnection]],
        stats: LimitStats,
        *,
        clock_ns: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        self._config = config
        self._connections = connections
        self._stats = stats
        self._clock_ns = clock_ns

    def interval(self) -> float:
        """Sweep often enough to close within ~25 % of the smallest limit, at most 1 s."""
        cfg = self._config()
        limits = [t for t in (cfg.client_idle_timeout, cfg.idle_in_transaction_timeout) if t]
        return min([1.0, *(t / 4 for t in limits)])

    def sweep(self) -> int:
        """Close what is over its limit now; returns how many were closed."""
        cfg = self._config()
        idle_s, in_tx_s = cfg.client_idle_timeout, cfg.idle_in_transaction_timeout
        if not idle_s and not in_tx_s:
            return 0
        now = self._clock_ns()
        closed = 0
        for conn in list(self._connections()):
            idle = conn.session.idle_since()
            if idle is None:
                continue
            since_ns, in_transaction = idle
            limit = in_tx_s if in_transaction else idle_s
            if not limit or now - since_ns < limit * 1e9:
                continue
            if in_transaction:
                self._stats.idle_in_transaction_timeouts += 1
                conn.close_with_error(
                    codes.SQLSTATE_IDLE_IN_TRANSACTION_TIMEOUT, IDLE_IN_TRANSACTION
                )
            else:
                self._stats.idle_timeouts += 1
                conn.close_with_error(codes.SQLSTATE_IDLE_SESSION_TIMEOUT, IDLE_SESSION)
            closed += 1
        return closed

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval())
            try:
                self.sweep()
            except Exception:  # a bug here must not stop the reaper or reach a client
                log.exception("idle sweep failed")
