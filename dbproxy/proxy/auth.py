"""Proxy-side SCRAM: the proxy authenticates a TLS client itself and logs in upstream
on its behalf (TLS on both legs, with ``--auth-file`` or ``DBPROXY_AUTH_DSN``).

Why: with TLS on both legs a client that supports channel binding binds to the proxy's
certificate while the server checks its own, and the proof covers that binding — a
relayed exchange cannot succeed.  So the proxy plays the server towards the client
(``SCRAM-SHA-256-PLUS`` bound to its own certificate, or plain ``SCRAM-SHA-256``), with
the user's SCRAM secret from the auth file or the auth query; from the client's proof it
recovers the ``ClientKey`` and plays the client towards the server with it (binding to
the server's certificate when the server offers ``-PLUS``).  No plaintext password is
ever known to the proxy.  The secret must be the server's own (same salt, iterations).

Afterwards the connection is relayed byte for byte as any other: the server's
AuthenticationOk and everything after it go to the client unchanged (after the proxy's
own SASLFinal), and the session state machine sees the client's StartupMessage and the
server's bytes from AuthenticationOk on — what it needs to follow the statements.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast

from dbproxy.config import ProxyConfig
from dbproxy.protocol import codes, messages, scram
from dbproxy.proxy.tls import peer_cbind

if TYPE_CHECKING:
    from dbproxy.proxy.pipe import ClientConnection

log = logging.getLogger(__name__)

#: as the server's authentication_timeout default
AUTH_TIMEOUT_S = 60.0


class SecretSource(Protocol):
    async def lookup(self, user: str) -> scram.ScramSecret | None: ...

    async def close(self) -> None: ...


def secret_source(config: ProxyConfig) -> SecretSource | None:
    """The configured source, when proxy-side authentication can happen at all."""
    if config.client_tls == "disable" or config.upstream_tls == "disable":
        return None
    if config.auth_file:
        return AuthFile(config.auth_file)
    if config.auth_dsn:
        return AuthQuery(config.auth_dsn, config.auth_query)
    return None


def _unquote(text: str) -> tuple[str, str]:
    """One ``"quoted"`` field (``""`` escapes a quote) and the rest of the line."""
    text = text.lstrip()
    if not text.startswith('"'):
        raise ValueError("expected a quoted field")
    out, i = [], 1
    while i < len(text):
        ch = text[i]
        if ch == '"':
            if text[i + 1 : i + 2] == '"':
                out.append('"')
                i += 2
                continue
            return "".join(out), text[i + 1 :]
        out.append(ch)
        i += 1
    raise ValueError("unterminated quoted field")


def parse_auth_file(text: str) -> dict[str, str]:
    """PgBouncer's ``userlist.txt`` format: ``"user" "secret"`` per line, ``;`` comments."""
    users: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith((";", "#")):
            continue
        try:
            user, rest = _unquote(stripped)
            secret, _ = _unquote(rest)
        except ValueError as exc:
            raise ValueError(f"line {number}: {exc}") from None
        users[user] = secret
    return users


class AuthFile:
    """Secrets read from the file at each login (so an edited file applies at once)."""

    def __init__(self, path: str) -> None:
        self.path = path

    async def lookup(self, user: str) -> scram.ScramSecret | None:
        try:
            text = await asyncio.to_thread(Path(self.path).read_text, encoding="utf-8")
            users = parse_auth_file(text)
        except (OSError, ValueError) as exc:
            log.error("cannot read auth_file %s: %s", self.path, exc)
            return None
        return _secret(user, users.get(user))

    async def close(self) -> None:
        return None


def _secret(user: str, text: str | None) -> scram.ScramSecret | None:
    if not text:
        return None
    try:
        return scram.parse_secret(text)
    except scram.ScramError:
        log.warning("the secret of user %r is not a SCRAM-SHA-256 secret", user)
        return None


class AuthQuery:
    """``auth_query`` over one side connection (asyncpg), opened on first use and
    reopened after a failure — as PgBouncer's auth_user, through a SECURITY DEFINER
    function over ``pg_authid`` so the side connection's user needs no superuser."""

    def __init__(self, dsn: str, query: str) -> None:
        self._dsn = dsn
        self._query = query
        self._conn: Any = None
        self._lock = asyncio.Lock()

    async def lookup(self, user: str) -> scram.ScramSecret | None:
        import asyncpg  # type: ignore[import-untyped]

        async with self._lock:
            for attempt in (1, 2):
                try:
                    if self._conn is None or self._conn.is_closed():
                        self._conn = await asyncpg.connect(self._dsn, timeout=10)
                    row = await self._conn.fetchrow(self._query, user, timeout=10)
                    break
                except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
                    await self._drop()
                    if attempt == 2:
                        log.error("auth_query failed: %s", type(exc).__name__)
                        return None
        if row is None:
            return None
        return _secret(user, row[1])

    async def _drop(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.close(timeout=2)
            self._conn = None

    async def close(self) -> None:
        async with self._lock:
            await self._drop()


class _Inbox:
    """Bytes of one side during authentication, read a message at a time."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.closed = False
        self._wake: asyncio.Future[None] | None = None

    def feed(self, data: bytes) -> None:
        self.buf += data
        self._notify()

    def close(self) -> None:
        self.closed = True
        self._notify()

    def _notify(self) -> None:
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    async def read(self) -> tuple[int, bytes]:
        while True:
            msg = scram.split_message(self.buf)
            if msg is not None:
                del self.buf[: len(msg[1]) + 5]
                return msg
            if self.closed:
                raise ConnectionError("connection closed during authentication")
            self._wake = asyncio.get_running_loop().create_future()
            await self._wake


class _UpstreamDuringAuth(asyncio.Protocol):
    def __init__(self, inbox: _Inbox) -> None:
        self._inbox = inbox

    def data_received(self, data: bytes) -> None:
        self._inbox.feed(data)

    def eof_received(self) -> bool | None:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._inbox.close()


class _AuthFailed(Exception):
    def __init__(self, sqlstate: str, message: str) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


class ProxyAuth:
    """One client's authentication by the proxy; see the module docstring."""

    def __init__(
        self,
        conn: ClientConnection,
        startup: bytes,
        source: SecretSource,
        *,
        random_bytes: Callable[[int], bytes] = secrets.token_bytes,
    ) -> None:
        self._conn = conn
        self._startup = startup
        self._source = source
        self._random = random_bytes
        self._client = _Inbox()
        self._server = _Inbox()
        self._task: asyncio.Task[None] | None = None

    def client_data(self, data: bytes) -> None:
        self._client.feed(data)

    def start(self, rest: bytes) -> None:
        self._client.feed(rest)
        self._task = asyncio.get_running_loop().create_task(self._run())

    def cancel(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()

    async def _run(self) -> None:
        conn = self._conn
        try:
            await asyncio.wait_for(self._authenticate(), AUTH_TIMEOUT_S)
        except asyncio.CancelledError:
            raise
        except (_AuthFailed, scram.ScramError) as exc:
            # messages name users and mechanisms, never secrets
            sqlstate = exc.sqlstate if isinstance(exc, _AuthFailed) else "08P01"
            message = str(exc) if isinstance(exc, _AuthFailed) else f"malformed SCRAM: {exc}"
            conn._server.stats.rejected_startups += 1
            log.info("client %s: proxy authentication failed: %s", conn.peer, message)
            if conn.transport is not None and not conn._closed:
                conn.transport.write(
                    messages.encode_error_response(
                        severity="FATAL", sqlstate=sqlstate, message=message
                    )
                )
            conn._shutdown()
        except (OSError, TimeoutError) as exc:
            log.info("client %s: authentication ended: %s", conn.peer, exc)
            conn._shutdown()

    async def _authenticate(self) -> None:
        conn = self._conn
        assert conn._connect_task is not None and conn.transport is not None
        await asyncio.shield(conn._connect_task)
        upstream = conn._upstream_transport
        if upstream is None or conn.upstream is None:
            raise _AuthFailed(
                codes.SQLSTATE_CONNECTION_FAILURE,
                f"dbproxy could not connect to the upstream server {conn._server.config.upstream}"
                f": {conn._upstream_failed}",
            )
        if upstream.get_extra_info("ssl_object") is None:
            # upstream fell back to plaintext (prefer): plain SCRAM passes through
            conn._auth = None
            conn.auth_finished(self._startup + bytes(self._client.buf))
            return
        packet = messages.decode_startup(self._startup[4:])
        user = packet.params.get("user", "")
        conn._observe(conn.session.client_data, self._startup, _now())
        secret = await self._source.lookup(user)
        tls_settings = conn._server.tls
        own_cbind = tls_settings.client_cbind if tls_settings is not None else None
        if secret is None:
            # As the server: a full exchange with a made-up secret, failing at the proof,
            # so that a client cannot tell an unknown user from a wrong password.
            mock = scram.ScramSecret(4096, self._random(16), self._random(32), self._random(32))
            await self._client_exchange(mock, own_cbind, user)
            raise _AuthFailed(
                codes.SQLSTATE_INVALID_PASSWORD, f'password authentication failed for user "{user}"'
            )
        client_key, server_final = await self._client_exchange(secret, own_cbind, user)
        # upstream: replay the StartupMessage and log in with the recovered key
        upstream.set_protocol(_UpstreamDuringAuth(self._server))
        upstream.write(self._startup)
        conn._server.stats.bytes_from_client += len(self._startup)
        rest = await self._server_exchange(upstream, client_key, secret)
        upstream.set_protocol(cast(asyncio.BaseProtocol, conn.upstream))  # compiled: no subclass
        if rest[:1] != b"E":
            conn.transport.write(scram.encode_auth(scram.AUTH_SASL_FINAL, server_final))
        if rest:
            conn.upstream.data_received(rest)  # AuthenticationOk… relayed and observed
        if self._server.closed:
            conn.upstream.connection_lost(None)
            return
        conn.auth_finished(bytes(self._client.buf))

    async def _client_exchange(
        self, secret: scram.ScramSecret, own_cbind: bytes | None, user: str
    ) -> tuple[bytes, bytes]:
        conn = self._conn
        assert conn.transport is not None
        mechanisms = [scram.MECHANISM]
        if own_cbind is not None:
            mechanisms.insert(0, scram.MECHANISM_PLUS)
        conn.transport.write(scram.encode_sasl_mechanisms(mechanisms))
        msg_type, body = await self._client.read()
        if msg_type != codes.PASSWORD:
            raise scram.ScramError("expected a SASLInitialResponse")
        mechanism, data = scram.decode_sasl_initial_response(body)
        if mechanism not in mechanisms:
            raise _AuthFailed(
                codes.SQLSTATE_PROTOCOL_VIOLATION,
                "client selected an invalid SASL authentication mechanism",
            )
        first = scram.parse_client_first(data)
        if (mechanism == scram.MECHANISM_PLUS) != (first.cbind_flag == "p"):
            raise _AuthFailed(
                codes.SQLSTATE_PROTOCOL_VIOLATION, "SCRAM channel binding negotiation error"
            )
        if first.cbind_flag == "y" and own_cbind is not None:
            # the client thinks we cannot bind, but we offered -PLUS: a downgrade
            raise _AuthFailed(
                codes.SQLSTATE_PROTOCOL_VIOLATION, "SCRAM channel binding negotiation error"
            )
        server_nonce = base64.b64encode(self._random(18)).decode("ascii")
        server_first = scram.server_first(first.nonce, server_nonce, secret)
        conn.transport.write(
            scram.encode_auth(scram.AUTH_SASL_CONTINUE, server_first.encode("ascii"))
        )
        msg_type, body = await self._client.read()
        if msg_type != codes.PASSWORD:
            raise scram.ScramError("expected a SASLResponse")
        final = scram.parse_client_final(body)
        expected = scram.expected_channel_binding(first.gs2_header, own_cbind or b"")
        if final.channel_binding != expected:
            raise _AuthFailed(
                codes.SQLSTATE_INVALID_AUTHORIZATION,
                "SCRAM channel binding check failed",
            )
        if final.nonce != first.nonce + server_nonce:
            raise _AuthFailed(codes.SQLSTATE_PROTOCOL_VIOLATION, "SCRAM nonce mismatch")
        auth_message = f"{first.bare},{server_first},{final.without_proof}"
        client_key = scram.verify_client_proof(secret, auth_message, final.proof)
        if client_key is None:
            raise _AuthFailed(
                codes.SQLSTATE_INVALID_PASSWORD, f'password authentication failed for user "{user}"'
            )
        return client_key, scram.server_final(secret, auth_message).encode("ascii")

    def _relay_from(self, msg_type: int, body: bytes) -> bytes:
        rest = _reframe(msg_type, body) + bytes(self._server.buf)
        self._server.buf.clear()
        return rest

    async def _server_exchange(
        self, upstream: asyncio.Transport, client_key: bytes, secret: scram.ScramSecret
    ) -> bytes:
        """Log in upstream; returns the server's bytes from its answer to the login on
        (AuthenticationOk… or an ErrorResponse), to relay."""
        msg_type, body = await self._server.read()
        before = b""
        while msg_type == codes.NEGOTIATE_PROTOCOL_VERSION:  # relayed, in order
            before += _reframe(msg_type, body)
            msg_type, body = await self._server.read()
        if before:
            self._conn.transport.write(before)  # type: ignore[union-attr]
            self._conn._observe(self._conn.session.server_data, before, _now())
        if msg_type == ord("R") and _code(body) == scram.AUTH_OK:
            return self._relay_from(msg_type, body)
        if msg_type == ord("E"):
            return self._relay_from(msg_type, body)
        if msg_type != ord("R") or _code(body) != scram.AUTH_SASL:
            raise _AuthFailed(
                codes.SQLSTATE_INVALID_AUTHORIZATION,
                "the upstream server asked for an authentication method other than SCRAM, "
                "which dbproxy cannot answer on the client's behalf",
            )
        offered = scram.decode_sasl_mechanisms(body[4:])
        cbind = peer_cbind(upstream) if scram.MECHANISM_PLUS in offered else None
        client = scram.ScramClient(
            client_key,
            base64.b64encode(self._random(18)).decode("ascii"),
            cbind_data=cbind,
            server_key=secret.server_key,
        )
        if client.mechanism not in offered:
            raise _AuthFailed(
                codes.SQLSTATE_INVALID_AUTHORIZATION, "the upstream server does not offer SCRAM"
            )
        upstream.write(scram.encode_sasl_initial_response(client.mechanism, client.first()))
        msg_type, body = await self._server.read()
        if msg_type == ord("E"):
            return self._relay_from(msg_type, body)
        if msg_type != ord("R") or _code(body) != scram.AUTH_SASL_CONTINUE:
            raise scram.ScramError("unexpected message from the upstream during SCRAM")
        try:
            final = client.final(body[4:], salt=secret.salt, iterations=secret.iterations)
        except scram.ScramError as exc:
            log.error("upstream login for client %s: %s", self._conn.peer, exc)
            raise _AuthFailed(codes.SQLSTATE_INVALID_AUTHORIZATION, str(exc)) from None
        upstream.write(scram.encode_sasl_response(final))
        msg_type, body = await self._server.read()
        if msg_type == ord("E"):
            return self._relay_from(msg_type, body)
        if msg_type != ord("R") or _code(body) != scram.AUTH_SASL_FINAL:
            raise scram.ScramError("unexpected message from the upstream during SCRAM")
        client.check_final(body[4:])
        rest = bytes(self._server.buf)
        self._server.buf.clear()
        return rest


def _code(body: bytes) -> int:
    return messages.decode_authentication(body)


def _reframe(msg_type: int, body: bytes) -> bytes:
    return messages.encode_message(msg_type, body)


def _now() -> int:
    return time.monotonic_ns()


class PlusStripper(asyncio.Protocol):
    """Relayed SCRAM with the upstream leg on TLS and the client's in plaintext: the
    server offers ``SCRAM-SHA-256-PLUS``, which libpq refuses to see on a plaintext
    connection ("server offered SCRAM-SHA-256-PLUS authentication over a non-SSL
    connection").  This reads the server's first message, drops ``-PLUS`` from the
    mechanism list when the client leg is plaintext (the client then answers with the
    ``n`` flag, which the server accepts: the list is not covered by the proof), and
    hands the connection back to the relay for good."""

    def __init__(self, conn: ClientConnection, inner: asyncio.Protocol) -> None:
        self._conn = conn
        self._inner = inner
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray()

    def attach(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        transport.set_protocol(self)

    def data_received(self, data: bytes) -> None:
        self._buf += data
        try:
            msg = scram.split_message(self._buf)
        except scram.ScramError:
            msg = (0, b"")  # not ours to judge: relay as it is
        if msg is None:
            return
        out = bytes(self._buf)
        msg_type, body = msg
        if (
            msg_type == ord("R")
            and _code(body) == scram.AUTH_SASL
            and not self._conn.tls
            and scram.MECHANISM_PLUS in scram.decode_sasl_mechanisms(body[4:])
        ):
            offered = scram.decode_sasl_mechanisms(body[4:])
            kept = [m for m in offered if m != scram.MECHANISM_PLUS]
            out = scram.encode_sasl_mechanisms(kept) + out[len(body) + 5 :]
        self._buf.clear()
        assert self._transport is not None
        if self._transport.get_protocol() is self:
            self._transport.set_protocol(self._inner)
        self._inner.data_received(out)

    def eof_received(self) -> bool | None:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()
