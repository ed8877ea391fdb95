"""One proxied connection: a client-side and a server-side ``asyncio.Protocol``.

Forward first, observe second: ``data_received`` writes the bytes to the peer before
anything else happens, then hands the same bytes to the session state machine.  An
exception raised while observing is counted, logged once and turns observation off for
the connection; it never reaches the client.

Before the first packet is forwarded the client side reads it whole: GSSENCRequest is
answered ``N``, SSLRequest ``N`` or — with ``--client-tls`` — ``S`` and the connection
is upgraded (``proxy/tls.py``); a CancelRequest or StartupMessage is forwarded as it is,
unless the proxy authenticates the client itself (TLS on both legs, ``proxy/auth.py``).
The upstream connection is opened as soon as the client connects; client bytes that
arrive before it is up are held, in order, and written when it is.  If it cannot be
opened the client gets a FATAL ErrorResponse with SQLSTATE 08006 naming the upstream.

Backpressure is cross-wired: when one side's transport cannot keep up
(``pause_writing``), the proxy stops reading from the other side until it drains.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from typing import TYPE_CHECKING, cast

from dbproxy.errors import FrontendProtocolError
from dbproxy.protocol import codes, messages
from dbproxy.protocol.boundary import BoundaryFinder
from dbproxy.protocol.emit import Emitter
from dbproxy.protocol.session import Session
from dbproxy.protocol.startup import RequestKind, read_startup_request, replication_mode
from dbproxy.proxy import limits, tls
from dbproxy.proxy.auth import PlusStripper, ProxyAuth
from dbproxy.proxy.forward import ClientForward, ServerConnection
from dbproxy.proxy.listeners import open_upstream

if TYPE_CHECKING:
    from dbproxy.proxy.server import ProxyServer

log = logging.getLogger(__name__)

_monotonic_ns = time.monotonic_ns
#: Client bytes held while the upstream connection opens before reading pauses.
_MAX_HELD_BYTES = 256 * 1024
#: Seconds a closing client connection has to take what was written to it.
_FLUSH_ON_CLOSE_S = 5.0


class ClientConnection(asyncio.Protocol):
    """The client's side of one proxied connection; owns the session."""

    def __init__(self, server: ProxyServer, session_id: int) -> None:
        self._server = server
        self.session_id = session_id
        self.transport: asyncio.Transport | None = None
        self.upstream: ServerConnection | None = None
        self._upstream_transport: asyncio.Transport | None = None
        self._startup_buf = b""
        self._forwarding = False  # past the startup negotiation
        self._held: list[bytes] = []  # forwarded bytes waiting for the upstream
        self._held_bytes = 0
        self._reading_paused = False
        # the client left after sending bytes (a CancelRequest) before the upstream was up
        self._deliver_then_close = False
        self._upstream_failed: str | None = None
        self._closed = False
        self._connect_task: asyncio.Task[None] | None = None
        self.tls = False  # the client leg is encrypted
        self._tls_pending = False  # handshake running: bytes wait in _startup_buf
        self._auth: ProxyAuth | None = None  # the proxy authenticates the client
        # over --max-client-connections: answered 53300 at its startup packet
        self._over_limit = False
        self._startup_timer: asyncio.TimerHandle | None = None
        self._client_eof = False  # the client half-closed; the server's close is expected
        self.session = Session(
            session_id=session_id,
            # a native call into the proxy's QueueSink; any other sink through its put
            emit=server.sink if isinstance(server.sink, Emitter) else server.sink.put,
            epoch_offset_ns=time.time_ns() - _monotonic_ns(),
            text_limit=server.config.max_statement_bytes,
            # the opt-in sampler re-runs statements with their values (memory only)
            keep_bind_values=server.config.sample_analyze > 0
            and server.config.inspect_dsn is not None,
        )
        self.peer = ""
        self._stats = server.stats
        self._client_data = self.session.client_data

    # ------------------------------------------------------------------ lifecycle
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        peer = self.transport.get_extra_info("peername")
        if isinstance(peer, tuple):
            self.peer = f"[{peer[0]}]:{peer[1]}" if ":" in peer[0] else f"{peer[0]}:{peer[1]}"
        else:  # a Unix-socket client: PostgreSQL's name for it
            self.peer = "[local]"
        self.session.client_address = self.peer
        loop = asyncio.get_running_loop()
        config = self._server.config  # read now: a reload replaces it
        limit = config.max_client_connections
        if limit and len(self._server.connections) >= limit:
            self._over_limit = True  # no upstream, not counted; a CancelRequest still passes
        else:
            self._server.connections.add(self)
            self._connect_task = loop.create_task(self._connect_upstream())
        self._startup_timer = loop.call_later(config.startup_timeout, self._startup_timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        self._client_gone()

    def eof_received(self) -> bool | None:
        upstream = self._upstream_transport
        if (
            not self._closed
            and upstream is not None
            and not self._statement_running()
            and upstream.can_write_eof()
        ):
            # Half-close, passed on: the server answers what it got, sees EOF, ends the
            # session and closes; its answer still reaches the client.
            self._client_eof = True
            upstream.write_eof()
            return True
        # Gone mid-statement (or before the upstream was up): act now, since
        # connection_lost waits for our write buffer, which a dead client never drains.
        self._client_gone()
        return False

    def _client_gone(self) -> None:
        if not self._closed and self._upstream_transport is not None and self._statement_running():
            self._cancel_then_close()
        else:
            self._shutdown()

    def _shutdown(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._server.connection_closed(self)
        if self._auth is not None:
            self._auth.cancel()
        if self._startup_timer is not None:
            self._startup_timer.cancel()
        if self._connect_task is not None and not self._connect_task.done():
            if self._held and self._upstream_failed is None:
                # Deliver what the client sent (e.g. a CancelRequest from a client that
                # writes it and closes at once), then close.
                self._deliver_then_close = True
            else:
                self._connect_task.cancel()
        if self._upstream_transport is not None:
            self._upstream_transport.close()
        if self.transport is not None:
            self.transport.close()  # flushes what the client has not read yet…
            if self.transport.get_write_buffer_size():
                # … for a while: a client that never reads again is cut
                asyncio.get_running_loop().call_later(_FLUSH_ON_CLOSE_S, self.transport.abort)
        self._observe(self.session.close, _monotonic_ns())

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()
        if self._upstream_transport is not None:
            self._upstream_transport.abort()
        self._shutdown()

    # ------------------------------------------------------------------ limits and faults
    def close_with_error(
        self, sqlstate: str, message: str, *, finish_message: bool = False
    ) -> bool:
        """Say FATAL ``sqlstate`` to the client and close both sides.  The error is written
        only at a message boundary of the server→client stream (else the client would read
        it inside a message).  Mid-message, with ``finish_message`` and a live upstream,
        the rest of that message is relayed first (the connection closes when it has);
        otherwise the connection just closes.  True when the error is (or will be) said."""
        if self._closed or self.transport is None:
            return False
        error = limits.fatal(sqlstate, message)
        if self.session.server_at_message_boundary():
            self.transport.write(error)
            self._shutdown()
            return True
        rest = self.session.server_rest_of_frame() if finish_message else None
        upstream = self._upstream_transport
        if rest is not None and upstream is not None and not upstream.is_closing():
            self.transport.pause_reading()  # what the client sends now would go nowhere
            upstream.set_protocol(
                limits.FinishMessage(
                    self.transport.write, BoundaryFinder(*rest), error, self._shutdown
                )
            )
            return True
        self._server.limit_stats.errors_withheld += 1
        self._shutdown()
        return False

    def _startup_timed_out(self) -> None:
        self._startup_timer = None
        if self._forwarding or self._closed:
            return
        self._server.limit_stats.startup_timeouts += 1
        log.debug("client %s sent no startup packet in time", self.peer)
        self.close_with_error(codes.SQLSTATE_PROTOCOL_VIOLATION, limits.STARTUP_TIMEOUT)

    def _statement_running(self) -> bool:
        """A statement may be running on the backend (unknown counts as yes)."""
        session = self.session
        if session.is_cancel_request or not session.ready or not session.backend_pid:
            return False
        if not session.observing:
            return True
        current = session.current_statement()
        return current is not None and current.active

    def _cancel_then_close(self) -> None:
        """The client vanished mid-statement: cancel it, then close the upstream, so the
        backend ends now rather than when it next writes."""
        upstream = self._upstream_transport
        assert upstream is not None
        self._upstream_transport = None  # _shutdown leaves it to the task below
        upstream.pause_reading()  # the rest of the result has nowhere to go
        self._server.limit_stats.cancels_on_client_loss += 1
        self._shutdown()
        config, stats = self._server.config, self._server.limit_stats
        pid, key = self.session.backend_pid, self.session.backend_key

        async def cancel_and_close() -> None:
            try:
                if not await limits.send_cancel_request(config, pid, key):
                    stats.cancels_failed += 1
            finally:
                upstream.close()

        self._server.spawn(cancel_and_close())

    async def _connect_upstream(self) -> None:
        config = self._server.config
        loop = asyncio.get_running_loop()

        def server_side() -> asyncio.Protocol:
            # compiled, it is no asyncio.Protocol subclass: uvloop needs none
            return cast(asyncio.Protocol, ServerConnection(self, self.session, self._stats))

        try:
            upstream_ctx = self._server.tls.upstream if self._server.tls else None
            transport, created = await asyncio.wait_for(
                open_upstream(loop, server_side, config.upstream)
                if upstream_ctx is None
                else tls.connect_upstream(server_side, config, upstream_ctx),
                timeout=config.connect_timeout,
            )
            protocol = cast(ServerConnection, created)
        except asyncio.CancelledError:
            raise
        except (OSError, TimeoutError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            self._upstream_failed = reason or type(exc).__name__
            self._server.stats.upstream_connect_failures += 1
            log.warning("cannot connect to upstream %s: %s", config.upstream, self._upstream_failed)
            self._maybe_report_upstream_failure()
            return
        if self._closed:
            if self._deliver_then_close:
                for chunk in self._held:
                    transport.write(chunk)
                    self._server.stats.bytes_from_client += len(chunk)
                self._held = []
            transport.close()  # flushes what was written
            return
        self._upstream_transport = transport
        self.upstream = protocol
        protocol.bind_client()  # the client's transport may have become TLS meanwhile
        if upstream_ctx is not None and transport.get_extra_info("ssl_object") is not None:
            PlusStripper(self, cast(asyncio.Protocol, protocol)).attach(transport)
        held, self._held = self._held, []
        for chunk in held:
            transport.write(chunk)
            self._server.stats.bytes_from_client += len(chunk)
            self._observe(self.session.client_data, chunk, _monotonic_ns())
        if self._reading_paused and self.transport is not None:
            self._reading_paused = False
            self.transport.resume_reading()

    def _maybe_report_upstream_failure(self) -> None:
        """Tell the client, once it has sent the packet that expects an answer."""
        if self._upstream_failed is None or self.transport is None or self._closed:
            return
        if not self._held:
            return  # still negotiating SSL/GSSENC, or nothing sent yet
        if not self.session.is_cancel_request:
            upstream = self._server.config.upstream
            self.transport.write(
                messages.encode_error_response(
                    severity="FATAL",
                    sqlstate=codes.SQLSTATE_CONNECTION_FAILURE,
                    message=(
                        f"dbproxy could not connect to the upstream server {upstream}: "
                        f"{self._upstream_failed}"
                    ),
                )
            )
        self._shutdown()

    # ------------------------------------------------------------------ data path
    def data_received(self, data: bytes) -> None:
        # Forward, count, then observe; from the next read on, the compiled
        # ClientForward does this (forward_directly).
        upstream = self._upstream_transport
        if upstream is not None and self._forwarding:
            upstream.write(data)
            self._stats.bytes_from_client += len(data)
            try:
                self._client_data(data, _monotonic_ns())
            except Exception:
                self.observer_failed()
            self.forward_directly()
        elif self._forwarding:
            self._hold(data)
        else:
            self._negotiate(data)

    def forward_directly(self) -> None:
        """Hand the client transport to :class:`ClientForward` (``proxy/forward.py``): the
        startup is over and the upstream connected, so every later read is the hot path.
        EOF, loss and backpressure still come back here."""
        upstream = self._upstream_transport
        if self._closed or upstream is None or self.transport is None or self._auth is not None:
            return
        self.transport.set_protocol(
            cast(asyncio.BaseProtocol, ClientForward(self, upstream, self.session, self._stats))
        )

    def _hold(self, data: bytes) -> None:
        """Keep bytes until the upstream is up; stop reading past a bound."""
        self._held.append(data)
        self._held_bytes += len(data)
        if self._held_bytes > _MAX_HELD_BYTES and not self._reading_paused and self.transport:
            self._reading_paused = True
            self.transport.pause_reading()

    def _negotiate(self, data: bytes) -> None:
        if self._auth is not None:
            self._auth.client_data(data)
            return
        if self._tls_pending:
            self._startup_buf += data
            return
        buf = self._startup_buf + data
        assert self.transport is not None
        while not self._forwarding:
            try:
                request = read_startup_request(buf)
            except FrontendProtocolError as exc:
                self._server.stats.rejected_startups += 1
                self.transport.write(
                    messages.encode_error_response(
                        severity="FATAL",
                        sqlstate=codes.SQLSTATE_PROTOCOL_VIOLATION,
                        message=str(exc),
                    )
                )
                self._shutdown()
                return
            if request is None:
                self._startup_buf = buf
                return
            client_ctx = self._server.tls.client if self._server.tls else None
            if request.kind is RequestKind.DIRECT_TLS and client_ctx is not None and not self.tls:
                self._begin_tls(client_ctx, buf)
                return
            if request.kind is RequestKind.SSL and client_ctx is not None and not self.tls:
                if len(buf) > request.size:  # CVE-2021-23214: nothing before the handshake
                    self._reject(
                        codes.SQLSTATE_PROTOCOL_VIOLATION,
                        "received unencrypted data after SSL request",
                    )
                    return
                self.transport.write(b"S")
                self._begin_tls(client_ctx, None)
                return
            if request.kind is RequestKind.DIRECT_TLS:
                # A TLS ClientHello cannot be answered with a PostgreSQL error.
                self._server.stats.rejected_startups += 1
                log.info("client %s tried direct TLS, which is not supported yet", self.peer)
                self._shutdown()
                return
            if request.kind in (RequestKind.SSL, RequestKind.GSSENC):
                self.transport.write(b"N")
                buf = buf[request.size :]
                continue
            if (
                not self.tls
                and request.kind is not RequestKind.CANCEL
                and self._server.config.client_tls == "require"
            ):
                self._reject(
                    codes.SQLSTATE_INVALID_AUTHORIZATION,
                    "TLS is required: dbproxy refuses unencrypted connections "
                    "(connect with sslmode=require)",
                )
                return
            self._startup_buf = b""
            if self._startup_timer is not None:
                self._startup_timer.cancel()
                self._startup_timer = None
            if self._over_limit:
                if request.kind is not RequestKind.CANCEL:
                    self._server.limit_stats.too_many_connections += 1
                    self.transport.write(
                        limits.fatal(codes.SQLSTATE_TOO_MANY_CONNECTIONS, limits.TOO_MANY_CLIENTS)
                    )
                    self._shutdown()
                    return
                loop = asyncio.get_running_loop()
                self._connect_task = loop.create_task(self._connect_upstream())
            if (
                self.tls
                and request.kind is RequestKind.STARTUP
                and self._server.auth_source is not None
            ):
                self._auth = ProxyAuth(self, buf[: request.size], self._server.auth_source)
                self._auth.start(buf[request.size :])
                return
            self._forwarding = True
            if request.kind is RequestKind.CANCEL:
                self._server.stats.cancel_requests += 1
            elif request.kind is RequestKind.STARTUP:
                # walsender connections are relayed without interpretation, counted here
                mode = replication_mode(buf[: request.size])
                if mode is not None:
                    self._server.stats.count_replication(mode)
            if buf:
                self.data_received(buf)
            self._maybe_report_upstream_failure()
            return

    # ------------------------------------------------------------------ TLS (proxy/tls.py)
    def _reject(self, sqlstate: str, message: str) -> None:
        assert self.transport is not None
        self._server.stats.rejected_startups += 1
        self.transport.write(
            messages.encode_error_response(severity="FATAL", sqlstate=sqlstate, message=message)
        )
        self._shutdown()

    def _begin_tls(self, ctx: ssl.SSLContext, direct_first: bytes | None) -> None:
        assert self.transport is not None
        self._tls_pending = True
        self._startup_buf = b""
        if direct_first is None:
            self.transport.pause_reading()  # the ClientHello waits for start_tls
        asyncio.get_running_loop().create_task(self._run_tls(ctx, direct_first))

    async def _run_tls(self, ctx: ssl.SSLContext, direct_first: bytes | None) -> None:
        assert self.transport is not None
        handshake_s = max(self._server.config.connect_timeout, tls.MIN_HANDSHAKE_S)
        try:
            if direct_first is None:
                transport = await tls.start_client_tls(self.transport, self, ctx, handshake_s)
            else:
                transport = await tls.start_direct_tls(
                    self.transport, self, ctx, direct_first, handshake_s
                )
        except (OSError, TimeoutError) as exc:
            self._server.stats.rejected_startups += 1
            log.info("TLS handshake with client %s failed: %s", self.peer, exc)
            self.abort()
            return
        if self._closed:
            transport.abort()
            return
        self.transport = transport
        self.tls = True
        self._tls_pending = False
        if self.upstream is not None:
            self.upstream.bind_client()
        pending, self._startup_buf = self._startup_buf, b""
        if pending:
            self._negotiate(pending)

    def auth_finished(self, client_bytes: bytes) -> None:
        """The proxy authenticated the client: relay from now on (``proxy/auth.py``
        already switched the upstream transport back to :class:`ServerConnection`)."""
        self._auth = None
        self._forwarding = True
        if client_bytes:
            self.data_received(client_bytes)

    def _observe(self, fn: object, *args: object) -> None:
        try:
            fn(*args)  # type: ignore[operator]
        except Exception:
            self.observer_failed()

    def observer_failed(self) -> None:
        """Called from an ``except`` block: count, log once, stop observing."""
        self._stats.observer_errors += 1
        if self.session.observing:
            log.exception("observer error in session %d; observation stops", self.session_id)
            self.session.lose("observer error")

    # ------------------------------------------------------------------ backpressure
    def pause_writing(self) -> None:
        if self._upstream_transport is not None:
            self._upstream_transport.pause_reading()

    def resume_writing(self) -> None:
        if self._upstream_transport is not None and not self._closed:
            self._upstream_transport.resume_reading()

    # called by the server side
    def server_closed(self) -> None:
        """The upstream connection ended.  Unless the server said FATAL itself (admin
        shutdown, terminate, auth failure), the client gets 08006 from the proxy."""
        if self._closed:
            return
        session = self.session
        if (
            session.is_cancel_request
            or session.fatal_received
            or session.terminated
            or self._client_eof
            or not self._forwarding
        ):
            self._shutdown()
            return
        self._server.limit_stats.upstream_lost += 1
        self.close_with_error(codes.SQLSTATE_CONNECTION_FAILURE, limits.UPSTREAM_LOST)
