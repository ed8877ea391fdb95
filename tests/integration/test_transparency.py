"""The proxy relays every byte unchanged, and tells the client when it cannot."""

from __future__ import annotations

import asyncio
import socket
import struct

import asyncpg
import psycopg
import pytest

from dbproxy.pgcluster import PgServer, free_port
from dbproxy.protocol.events import SessionRejected
from tests.fixtures.fix_proxy import RunningProxy, start_proxy
from tests.fixtures.tap import Tap


async def test_bytes_each_side_sent_equal_bytes_the_other_received(pg_server: PgServer) -> None:
    # client → front tap → proxy → back tap → PostgreSQL
    back = Tap(pg_server.host, pg_server.port)
    back_port = await back.start()
    running = start_proxy(
        PgServer(**{**pg_server.__dict__, "port": back_port}),  # proxy forwards to the back tap
    )
    front = Tap(running.host, running.port)
    front_port = await front.start()
    try:
        conn = await asyncpg.connect(pg_server.dsn(port=front_port), ssl=False)
        await conn.execute("create temporary table tt (id int primary key, payload text)")
        await conn.executemany(
            "insert into tt values ($1, $2)", [(i, "x" * (i % 50)) for i in range(500)]
        )
        await conn.copy_records_to_table("tt", records=[(1000 + i, "c") for i in range(2000)])
        # a result of ~8 MB crosses the proxy in many reads, with backpressure
        big = await conn.fetch("select g, repeat('y', 4000) from generate_series(1, 2000) g")
        assert len(big) == 2000
        with pytest.raises(asyncpg.UniqueViolationError):
            await conn.execute("insert into tt values (1, 'dup')")
        async with conn.transaction():
            rows = [r async for r in conn.cursor("select * from tt order by id", prefetch=100)]
        assert len(rows) == 2500
        await conn.close()
        running.wait_closed()
        await asyncio.sleep(0.2)  # let the taps see the final bytes
        assert back.connections == 1 and front.connections == 1
        assert len(front.downstream_bytes) > 8_000_000
        # what the client sent is exactly what PostgreSQL received, and vice versa
        assert bytes(front.upstream_bytes) == bytes(back.upstream_bytes)
        assert bytes(back.downstream_bytes) == bytes(front.downstream_bytes)
        assert running.server.stats.observer_errors == 0
    finally:
        running.stop()
        await front.stop()
        await back.stop()


async def test_wrong_password_gets_postgresqls_own_28P01(proxy: RunningProxy) -> None:
    with pytest.raises(asyncpg.InvalidPasswordError) as info:
        await asyncpg.connect(proxy.dsn(password="not-the-password"), ssl=False)
    assert info.value.sqlstate == "28P01"
    # libpq (psycopg) sees the server's own message
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        await psycopg.AsyncConnection.connect(proxy.dsn(password="nope"), sslmode="disable")
    events = await asyncio.to_thread(proxy.wait_closed, 2)
    rejected = [e for e in events if isinstance(e, SessionRejected)]
    assert [e.error.sqlstate for e in rejected] == ["28P01", "28P01"]


def test_upstream_down_gets_fatal_08006_naming_the_upstream(pg_server: PgServer) -> None:
    dead = free_port()
    running = start_proxy(PgServer(**{**pg_server.__dict__, "port": dead}))
    try:
        with pytest.raises(psycopg.OperationalError) as info:
            psycopg.connect(running.dsn(), sslmode="prefer", connect_timeout=5)
        assert "could not connect to the upstream server" in str(info.value)
        assert f"127.0.0.1:{dead}" in str(info.value)
        assert running.server.stats.upstream_connect_failures == 1
    finally:
        running.stop()


async def test_upstream_down_asyncpg_sees_08006(pg_server: PgServer) -> None:
    dead = free_port()
    running = start_proxy(PgServer(**{**pg_server.__dict__, "port": dead}))
    try:
        with pytest.raises(asyncpg.PostgresError) as info:
            await asyncpg.connect(running.dsn(), ssl=False)
        assert info.value.sqlstate == "08006"
        assert f"127.0.0.1:{dead}" in str(info.value)
    finally:
        running.stop()


def test_sslmode_prefer_falls_back_to_plaintext(proxy: RunningProxy) -> None:
    with psycopg.connect(proxy.dsn(), sslmode="prefer") as conn:
        assert conn.execute("select 1").fetchone() == (1,)
        assert conn.pgconn.ssl_in_use is False


def test_sslmode_require_is_refused_until_tls_lands(proxy: RunningProxy) -> None:
    with pytest.raises(psycopg.OperationalError, match=r"(?i)ssl"):
        psycopg.connect(proxy.dsn(), sslmode="require")


async def test_cancel_request_sent_then_closed_reaches_the_server(pg_server: PgServer) -> None:
    # Some clients (tokio-postgres) write the CancelRequest and close at once, before the
    # proxy's upstream connection is even up: the bytes must still reach the server.
    tap = Tap(pg_server.host, pg_server.port)
    tap_port = await tap.start()
    running = start_proxy(PgServer(**{**pg_server.__dict__, "port": tap_port}))
    try:
        cancel = struct.pack("!IIiI", 16, 80877102, 4242, 1)  # pid 4242, key 1
        loop = asyncio.get_running_loop()
        for _ in range(20):  # the race is won by the client nearly every time
            sock = socket.create_connection((running.host, running.port))
            await loop.sock_sendall(sock, cancel)
            sock.close()
        for _ in range(100):
            if len(tap.upstream_bytes) >= 20 * len(cancel):
                break
            await asyncio.sleep(0.05)
        assert bytes(tap.upstream_bytes) == cancel * 20
        assert running.server.stats.cancel_requests == 20
    finally:
        running.stop()
        await tap.stop()
