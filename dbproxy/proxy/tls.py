"""TLS on both legs: contexts (reloadable), the client-side handshake, the upstream
SSLRequest negotiation.

Client leg (``--client-tls``): an SSLRequest is answered ``S`` and the connection's
transport is upgraded with ``loop.start_tls`` (uvloop's own implementation); a direct TLS
ClientHello (PostgreSQL 17 ``sslnegotiation=direct``) — whose first bytes the proxy has
already read — goes through the standard library's ``SSLProtocol`` fed those bytes, and
is kept only when ALPN chose ``postgresql``.  Plaintext connections never touch this
module: their data path is the one in ``pipe.py``.

Upstream leg (``--upstream-tls``): an SSLRequest on a fresh TCP connection; ``S`` →
``start_tls`` with SNI = the upstream host; ``N`` → plaintext for ``prefer``, an error
otherwise.  Bytes after the ``S`` before the handshake (CVE-2021-23222) are refused, as
are client bytes after an SSLRequest (CVE-2021-23214) — see ``pipe.py``.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import struct
from asyncio import sslproto
from collections.abc import Callable
from typing import Any, TypeVar, cast

from dbproxy.config import ProxyConfig
from dbproxy.protocol import codes
from dbproxy.protocol.scram import tls_server_end_point
from dbproxy.proxy.listeners import open_upstream

log = logging.getLogger(__name__)

ALPN = "postgresql"
#: a client's TLS handshake may take this long at least (else --connect-timeout)
MIN_HANDSHAKE_S = 10.0
_SSL_REQUEST = struct.pack("!II", 8, codes.SSL_REQUEST_CODE)
P = TypeVar("P", bound=asyncio.BaseProtocol)


class TlsSettings:
    """The TLS contexts of one proxy; :meth:`reload` swaps them for fresh ones."""

    def __init__(self, config: ProxyConfig) -> None:
        self.config = config
        self.client: ssl.SSLContext | None = None
        #: tls-server-end-point of the proxy's own certificate (SCRAM-SHA-256-PLUS)
        self.client_cbind: bytes | None = None
        self.upstream: ssl.SSLContext | None = None
        if config.client_tls != "disable":
            self.client, self.client_cbind = self._client_context()
        if config.upstream_tls != "disable":
            self.upstream = self._upstream_context()

    def _client_context(self) -> tuple[ssl.SSLContext, bytes | None]:
        cert, key = self.config.client_tls_cert, self.config.client_tls_key
        assert cert is not None and key is not None  # config.py checks
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(cert, key)
        ctx.set_alpn_protocols([ALPN])
        with open(cert, encoding="ascii") as fh:
            pem = fh.read()
        end = pem.find("-----END CERTIFICATE-----")
        cbind: bytes | None = None
        if end >= 0:
            der = ssl.PEM_cert_to_DER_cert(pem[: end + len("-----END CERTIFICATE-----")])
            try:
                cbind = tls_server_end_point(der)
            except ValueError as exc:
                log.warning("no SCRAM-SHA-256-PLUS with %s: %s", cert, exc)
        return ctx, cbind

    def _upstream_context(self) -> ssl.SSLContext:
        mode = self.config.upstream_tls
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.set_alpn_protocols([ALPN])
        if mode in ("verify-ca", "verify-full"):
            ctx.load_verify_locations(cafile=self.config.upstream_tls_ca)
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.check_hostname = mode == "verify-full"
        else:  # prefer / require: encrypted, not verified (libpq without a root cert)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx

    def reload(self, config: ProxyConfig | None = None) -> bool:
        """Re-read certificate, key and CA (the files ``config`` names, when given); on any
        error keep the old contexts (and say why).  New connections use the new contexts;
        open ones keep theirs."""
        previous = self.config
        if config is not None:
            self.config = config
        try:
            client = self._client_context() if self.config.client_tls != "disable" else None
            upstream = self._upstream_context() if self.config.upstream_tls != "disable" else None
        except (OSError, ssl.SSLError, ValueError) as exc:
            self.config = previous
            log.error("TLS reload failed, keeping the previous certificates: %s", exc)
            return False
        if client is not None:
            self.client, self.client_cbind = client
        self.upstream = upstream
        log.info("TLS certificates reloaded")
        return True


# --------------------------------------------------------------------- client leg
async def start_client_tls(
    transport: asyncio.Transport,
    protocol: asyncio.Protocol,
    ctx: ssl.SSLContext,
    handshake_s: float,
) -> asyncio.Transport:
    """Upgrade after an ``S`` answer (the transport's reading is paused by the caller)."""
    loop = asyncio.get_running_loop()
    new = await loop.start_tls(
        transport, protocol, ctx, server_side=True, ssl_handshake_timeout=handshake_s
    )
    assert new is not None
    return new


class _Attach(asyncio.Protocol):
    """Receives the TLS transport when the direct handshake is done, then hands the
    connection to the real protocol (no per-read indirection afterwards)."""

    def __init__(self, protocol: asyncio.Protocol, done: asyncio.Future[asyncio.Transport]):
        self._protocol = protocol
        self._done = done

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.set_protocol(self._protocol)
        if not self._done.done():
            self._done.set_result(transport)  # type: ignore[arg-type]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._done.done():
            self._done.set_exception(ConnectionError("closed during the TLS handshake"))
        self._protocol.connection_lost(exc)


async def start_direct_tls(
    transport: asyncio.Transport,
    protocol: asyncio.Protocol,
    ctx: ssl.SSLContext,
    first: bytes,
    handshake_s: float,
) -> asyncio.Transport:
    """Direct TLS: ``first`` holds the ClientHello bytes already read.  Raises
    ConnectionError unless ALPN chose ``postgresql`` (as the server requires)."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[asyncio.Transport] = loop.create_future()
    waiter: asyncio.Future[Any] = loop.create_future()
    ssl_protocol = sslproto.SSLProtocol(
        loop, _Attach(protocol, done), ctx, waiter, server_side=True, call_connection_made=True
    )
    transport.set_protocol(ssl_protocol)
    ssl_protocol.connection_made(transport)
    buf = ssl_protocol.get_buffer(len(first))
    buf[: len(first)] = first
    ssl_protocol.buffer_updated(len(first))
    # the waiter fails when the handshake does; ``done`` is set just before it succeeds
    await asyncio.wait_for(waiter, handshake_s)
    tls = done.result()
    ssl_object = tls.get_extra_info("ssl_object")
    if ssl_object is None or ssl_object.selected_alpn_protocol() != ALPN:
        tls.abort()
        raise ConnectionError("direct TLS without ALPN 'postgresql'")
    return tls


# --------------------------------------------------------------------- upstream leg
class _SslAnswer(asyncio.Protocol):
    def __init__(self, answer: asyncio.Future[bytes]) -> None:
        self._answer = answer
        self.extra = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        cast(asyncio.Transport, transport).write(_SSL_REQUEST)

    def data_received(self, data: bytes) -> None:
        if not self._answer.done():
            self._answer.set_result(data)
        else:
            self.extra += data

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._answer.done():
            self._answer.set_exception(
                ConnectionError("the server closed the connection after SSLRequest")
            )


async def connect_upstream(
    factory: Callable[[], P], config: ProxyConfig, ctx: ssl.SSLContext
) -> tuple[asyncio.Transport, P]:
    """A TCP connection to the upstream, TLS per ``--upstream-tls``, handed to the
    protocol ``factory`` makes.  Raises OSError subclasses (as create_connection does)."""
    loop = asyncio.get_running_loop()
    answer: asyncio.Future[bytes] = loop.create_future()
    negotiation = _SslAnswer(answer)
    host = config.upstream.host
    raw, _ = await open_upstream(loop, lambda: negotiation, config.upstream)  # TCP or Unix
    transport = raw
    try:
        reply = await answer
        if reply[:1] == b"S":
            if len(reply) > 1 or negotiation.extra:
                # CVE-2021-23222: nothing may come before the handshake
                raise ConnectionError("the server sent unencrypted data after its SSL response")
            tls = await loop.start_tls(transport, negotiation, ctx, server_hostname=host)
            assert tls is not None
            transport = tls
        elif reply[:1] == b"N" and len(reply) == 1:
            if config.upstream_tls != "prefer":
                raise ConnectionError(
                    f"the server does not support TLS (--upstream-tls {config.upstream_tls})"
                )
        else:
            raise ConnectionError("unexpected answer to SSLRequest from the server")
    except BaseException:
        transport.abort()
        raise
    protocol = factory()
    transport.set_protocol(protocol)
    protocol.connection_made(transport)
    return transport, protocol


def peer_cbind(transport: asyncio.BaseTransport) -> bytes | None:
    """tls-server-end-point of the certificate the peer (the upstream server) sent."""
    ssl_object = transport.get_extra_info("ssl_object")
    if ssl_object is None:
        return None
    der = ssl_object.getpeercert(binary_form=True)
    if not der:
        return None
    try:
        return tls_server_end_point(der)
    except ValueError:
        return None
