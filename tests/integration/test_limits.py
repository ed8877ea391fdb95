"""Limits and timeouts of the proxy itself (issue 11): --max-client-connections,
the startup-packet timeout (slowloris), idle limits, and the errors the proxy says itself
(53300, 08P01, 57P05, 25P03, 57P01), each at a message boundary."""

from __future__ import annotations

import asyncio
import socket
import struct
import time
import urllib.request
from dataclasses import replace

import asyncpg
import psycopg
import pytest

from dbproxy.pgcluster import PgServer
from tests.fixtures.fix_proxy import start_proxy


def _read_until_close(sock: socket.socket, timeout: float) -> bytes:
    sock.settimeout(timeout)
    chunks = []
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def _error_fields(data: bytes) -> dict[str, str]:
    """The fields of the first ErrorResponse in ``data``."""
    assert data[:1] == b"E", data[:40]
    (length,) = struct.unpack("!I", data[1:5])
    body = data[5 : 1 + length]
    fields = {}
    for part in body.split(b"\x00"):
        if part:
            fields[chr(part[0])] = part[1:].decode()
    return fields


def test_max_client_connections_answers_53300_and_frees_a_slot(pg_server: PgServer) -> None:
    proxy = start_proxy(pg_server, max_client_connections=3)
    conns = []
    try:
        conns = [psycopg.connect(proxy.dsn(), sslmode="disable") for _ in range(3)]
        with pytest.raises(psycopg.OperationalError) as info:
            psycopg.connect(proxy.dsn(), sslmode="disable")
        assert "sorry, too many clients already" in str(info.value)
        assert proxy.server.limit_stats.too_many_connections == 1
        with urllib.request.urlopen(f"{proxy.http_url}/metrics", timeout=10) as r:
            scrape = r.read().decode()
        assert 'dbproxy_connections_closed_by_limit_total{limit="too_many"} 1.0' in scrape
        # the three still work; closing one lets a new client in
        for conn in conns:
            assert conn.execute("select 1").fetchone() == (1,)
        conns.pop().close()
        deadline = time.monotonic() + 5
        while len(proxy.server.connections) > 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        conns.append(psycopg.connect(proxy.dsn(), sslmode="disable"))
        assert conns[-1].execute("select 2").fetchone() == (2,)
    finally:
        for conn in conns:
            conn.close()
        proxy.stop()


def test_the_limit_is_read_from_the_current_config(pg_server: PgServer) -> None:
    """A reload (issue-expo's SIGHUP) replaces server.config; the next accept obeys it."""
    proxy = start_proxy(pg_server, max_client_connections=100)
    try:
        first = psycopg.connect(proxy.dsn(), sslmode="disable")
        proxy.call(
            lambda: setattr(
                proxy.server, "config", replace(proxy.server.config, max_client_connections=1)
            )
        )
        with pytest.raises(psycopg.OperationalError, match="too many clients"):
            psycopg.connect(proxy.dsn(), sslmode="disable")
        assert first.execute("select 1").fetchone() == (1,)  # nobody dropped
        first.close()
    finally:
        proxy.stop()


def test_a_cancel_request_passes_when_the_proxy_is_full(pg_server: PgServer) -> None:
    """PostgreSQL serves CancelRequests before its connection limit; so does the proxy."""
    proxy = start_proxy(pg_server, max_client_connections=1)

    async def run() -> None:
        conn = await asyncpg.connect(proxy.dsn(), ssl=False)
        try:
            started = time.monotonic()
            # asyncpg cancels on timeout with a CancelRequest over a new connection
            with pytest.raises(TimeoutError):
                await conn.execute("select pg_sleep(30)", timeout=0.5)
            assert await conn.fetchval("select 3") == 3  # the statement was cancelled
            assert time.monotonic() - started < 10
        finally:
            await conn.close()

    try:
        asyncio.run(run())
        assert proxy.server.stats.cancel_requests == 1
        assert proxy.server.limit_stats.too_many_connections == 0
    finally:
        proxy.stop()


def test_slowloris_clients_are_cut_at_the_startup_timeout(pg_server: PgServer) -> None:
    proxy = start_proxy(pg_server, startup_timeout=0.5)
    slow: list[socket.socket] = []
    try:
        started = time.monotonic()
        for i in range(50):
            sock = socket.create_connection((proxy.host, proxy.port))
            if i % 2:
                sock.sendall(struct.pack("!I", 80)[:3])  # a few bytes of a startup packet
            slow.append(sock)
        # a well-behaved client is served meanwhile
        with psycopg.connect(proxy.dsn(), sslmode="disable") as conn:
            assert conn.execute("select 1").fetchone() == (1,)
        for sock in slow:
            data = _read_until_close(sock, timeout=5)
            fields = _error_fields(data)
            assert fields["C"] == "08P01"
            assert fields["S"] == "FATAL"
            assert "startup packet" in fields["M"]
        elapsed = time.monotonic() - started
        assert 0.5 <= elapsed < 5
        assert proxy.server.limit_stats.startup_timeouts == 50
    finally:
        for sock in slow:
            sock.close()
        proxy.stop()


def test_idle_session_timeout(pg_server: PgServer) -> None:
    proxy = start_proxy(pg_server, client_idle_timeout=0.4)
    try:
        conn = psycopg.connect(proxy.dsn(), sslmode="disable", autocommit=True)
        busy = psycopg.connect(proxy.dsn(), sslmode="disable", autocommit=True)
        # a session that runs a long statement is not idle
        busy.execute("select pg_sleep(1.2)")
        time.sleep(0.1)
        with pytest.raises(psycopg.OperationalError, match="idle-session timeout") as info:
            conn.execute("select 1")
        assert info.value.sqlstate == "57P05"
        conn.close()
        assert busy.execute("select 1").fetchone() == (1,)
        busy.close()
        assert proxy.server.limit_stats.idle_timeouts >= 1
    finally:
        proxy.stop()


def test_idle_in_transaction_timeout(pg_server: PgServer) -> None:
    proxy = start_proxy(pg_server, idle_in_transaction_timeout=0.4)
    try:
        idle = psycopg.connect(proxy.dsn(), sslmode="disable", autocommit=True)
        conn = psycopg.connect(proxy.dsn(), sslmode="disable")  # transaction per statement
        conn.execute("select 1")
        time.sleep(1.2)
        with pytest.raises(psycopg.Error, match="idle-in-transaction timeout") as info:
            conn.execute("select 2")
        assert info.value.sqlstate == "25P03"
        conn.close()
        # idle outside a transaction is not limited by this setting
        assert idle.execute("select 1").fetchone() == (1,)
        idle.close()
        assert proxy.server.limit_stats.idle_in_transaction_timeouts == 1
        assert proxy.server.limit_stats.idle_timeouts == 0
    finally:
        proxy.stop()


def test_shutdown_says_57p01_to_sessions_still_open(pg_server: PgServer) -> None:
    proxy = start_proxy(pg_server)
    sock = socket.create_connection((proxy.host, proxy.port))
    conn = psycopg.connect(proxy.dsn(), sslmode="disable", autocommit=True)
    try:
        assert conn.execute("select 1").fetchone() == (1,)
        proxy.stop(grace_s=0.2)
        with pytest.raises(psycopg.OperationalError, match="administrator command"):
            conn.execute("select 1")
    finally:
        conn.close()
        sock.close()
