"""A representative part of the suite against PostgreSQL 18 (the embedded wheel) and 15
(Debian): clients (psycopg simple/extended/pipeline/COPY/named cursor, asyncpg, psql,
pgbench) get the results they get directly, /api/queries counts calls and rows exactly,
and the bytes each side sent are the bytes the other received.  Then protocol 3.2
(PostgreSQL 18, libpq 18's ``max_protocol_version=3.2``): the longer cancel key crosses
the proxy both ways and cancels a running query; against PostgreSQL 15 the
NegotiateProtocolVersion answer is relayed and the session speaks 3.0.

The whole suite runs against the session's server (18); this module is what runs against
both (see README, "PostgreSQL versions").
"""

from __future__ import annotations

import asyncio
import json
import re
import struct
import subprocess
import urllib.request
from collections.abc import Iterator
from typing import Any

import asyncpg
import psycopg
import pytest

from dbproxy.pgcluster import PgServer
from dbproxy.protocol import codes
from dbproxy.protocol.events import SessionOpened
from dbproxy.sql.fingerprint import fingerprint
from tests.fixtures.fix_proxy import RunningProxy, start_proxy
from tests.fixtures.tap import Tap


@pytest.fixture
def v_table(pg_versions: PgServer) -> PgServer:
    with psycopg.connect(pg_versions.admin_dsn(dbname=pg_versions.database)) as conn:
        conn.execute("DROP TABLE IF EXISTS v_items")
        conn.execute("CREATE TABLE v_items (id int PRIMARY KEY, name text, qty int)")
        conn.execute("GRANT ALL ON v_items TO app")
    return pg_versions


@pytest.fixture
def vproxy(v_table: PgServer) -> Iterator[RunningProxy]:
    proxy = start_proxy(v_table)
    try:
        yield proxy
    finally:
        proxy.stop()


def _row(proxy: RunningProxy, sql: str) -> dict[str, Any]:
    proxy.drain_now()
    fp = fingerprint(sql).id
    with urllib.request.urlopen(f"{proxy.http_url}/api/queries/{fp}", timeout=10) as resp:
        rows: list[dict[str, Any]] = json.loads(resp.read())["queries"]
    return {"calls": sum(r["calls"] for r in rows), "rows": sum(r["rows"] for r in rows)}


def _psycopg_workload(dsn: str) -> list[object]:
    """The same statements, run directly and through the proxy; what the client saw."""
    seen: list[object] = []
    with psycopg.connect(dsn) as conn:
        conn.execute("TRUNCATE v_items")
        for i in range(1, 21):  # extended protocol, one fingerprint
            conn.execute("INSERT INTO v_items VALUES (%s, %s, %s)", (i, f"n{i}", i * 2))
        with conn.pipeline():
            for i in range(21, 31):
                conn.execute("INSERT INTO v_items VALUES (%s, %s, %s)", (i, f"p{i}", i))
        with conn.cursor() as cur, cur.copy("COPY v_items FROM STDIN") as copy:
            for i in range(31, 41):
                copy.write_row((i, f"c{i}", 1))
        conn.commit()
        seen.append(conn.execute("SELECT id, name, qty FROM v_items ORDER BY id").fetchall())
        with (
            conn.cursor() as cur,
            cur.copy("COPY (SELECT id FROM v_items ORDER BY id) TO STDOUT") as copy,
        ):
            seen.append(b"".join(bytes(chunk) for chunk in copy))
        with conn.cursor(name="named") as named:  # a server-side cursor, fetched in chunks
            named.execute("SELECT id FROM v_items WHERE qty > %s ORDER BY id", (5,))
            while chunk := named.fetchmany(7):
                seen.append(chunk)
        conn.commit()
        seen.append(conn.execute("SHOW server_version_num").fetchone())
    return seen


def test_psycopg_results_and_exact_counts(pg_versions: PgServer, vproxy: RunningProxy) -> None:
    through = _psycopg_workload(vproxy.dsn())
    direct = _psycopg_workload(pg_versions.dsn())
    assert through == direct
    version = through[-1]
    assert isinstance(version, tuple) and int(version[0]) // 10000 == pg_versions.version
    assert _row(vproxy, "INSERT INTO v_items VALUES ($1, $2, $3)") == {"calls": 30, "rows": 30}
    assert _row(vproxy, "COPY v_items FROM STDIN") == {"calls": 1, "rows": 10}
    assert _row(vproxy, "SELECT id, name, qty FROM v_items ORDER BY id") == {
        "calls": 1,
        "rows": 40,
    }


async def test_asyncpg_and_bytes_equal_on_both_sides(
    pg_versions: PgServer, v_table: PgServer
) -> None:
    # client → front tap → proxy → back tap → PostgreSQL
    back = Tap(pg_versions.host, pg_versions.port)
    back_port = await back.start()
    proxy = start_proxy(PgServer(**{**pg_versions.__dict__, "port": back_port}))
    front = Tap(proxy.host, proxy.port)
    front_port = await front.start()
    try:
        conn = await asyncpg.connect(pg_versions.dsn(port=front_port), ssl=False)
        await conn.execute("TRUNCATE v_items")
        await conn.executemany(
            "INSERT INTO v_items VALUES ($1, $2, $3)", [(i, "x" * i, i) for i in range(50)]
        )
        stmt = await conn.prepare("SELECT id, name FROM v_items WHERE qty >= $1 ORDER BY id")
        rows = await stmt.fetch(40)
        assert [r["id"] for r in rows] == list(range(40, 50))
        for _ in range(4):
            await stmt.fetch(45)
        await conn.close()
        await proxy.async_wait_closed(1)
        select = "SELECT id, name FROM v_items WHERE qty >= $1 ORDER BY id"
        counts = await asyncio.to_thread(_row, proxy, select)
        assert counts == {"calls": 5, "rows": 10 + 4 * 5}
    finally:
        await front.stop()
        await back.stop()
        proxy.stop()
    assert front.upstream_bytes == back.upstream_bytes
    assert front.downstream_bytes == back.downstream_bytes
    assert len(front.downstream_bytes) > 1000


def test_psql_and_pgbench(pg_versions: PgServer, vproxy: RunningProxy) -> None:
    env = vproxy.env()
    psql = subprocess.run(
        [
            pg_versions.tool("psql"),
            "-X",
            "-At",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            "INSERT INTO v_items VALUES (1, 'a', 1); INSERT INTO v_items VALUES (2, 'b', 2); "
            "SELECT count(*) FROM v_items",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert psql.returncode == 0, psql.stderr
    assert psql.stdout.split() == ["INSERT", "0", "1", "INSERT", "0", "1", "2"]
    script = "\\set id random(1, 2)\nSELECT name FROM v_items WHERE id = :id;\n"
    bench = subprocess.run(
        [pg_versions.tool("pgbench"), "-n", "-M", "extended", "-c", "2", "-t", "25", "-f", "-"],
        input=script,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert bench.returncode == 0, bench.stderr
    assert re.search(r"number of failed transactions: 0 ", bench.stdout), bench.stdout
    vproxy.wait_closed(4)  # psql, pgbench's setup connection and its 2 clients
    assert _row(vproxy, "SELECT name FROM v_items WHERE id = $1") == {"calls": 50, "rows": 50}
    assert _row(vproxy, "INSERT INTO v_items VALUES (1, 'a', 1)") == {"calls": 2, "rows": 2}


# ---------------------------------------------------------------------- protocol 3.2
def _messages(data: bytes) -> list[tuple[int, bytes]]:
    """(type, body) of the messages of a backend stream."""
    out: list[tuple[int, bytes]] = []
    pos = 0
    while pos + 5 <= len(data):
        kind = data[pos]
        (length,) = struct.unpack_from("!I", data, pos + 1)
        out.append((kind, bytes(data[pos + 5 : pos + 1 + length])))
        pos += 1 + length
    return out


async def test_protocol_32_longer_cancel_key_cancels_a_running_query(
    pg_versions: PgServer,
) -> None:
    if psycopg.pq.version() < 180000:
        pytest.fail(f"protocol 3.2 needs libpq 18 (psycopg-binary); got {psycopg.pq.version()}")
    back = Tap(pg_versions.host, pg_versions.port)
    back_port = await back.start()
    proxy = start_proxy(PgServer(**{**pg_versions.__dict__, "port": back_port}))
    try:
        dsn = proxy.dsn(params={"max_protocol_version": "3.2", "sslmode": "disable"})
        conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
        try:
            expected = (3, 2) if pg_versions.version >= 18 else (3, 0)
            assert conn.pgconn.full_protocol_version == expected[0] * 10000 + expected[1]
            sleeper = asyncio.create_task(conn.execute("SELECT pg_sleep(30)"))
            await asyncio.sleep(0.5)
            await conn.cancel_safe(timeout=10)
            with pytest.raises(psycopg.errors.QueryCanceled):
                await asyncio.wait_for(sleeper, 15)
            cur = await conn.execute("SELECT 1")  # the session goes on
            assert await cur.fetchone() == (1,)
        finally:
            await conn.close()
        events = await proxy.async_wait_closed(1)  # (a cancel connection emits no event)
        cancels, errors = (
            proxy.app.proxy.stats.cancel_requests,
            proxy.app.proxy.stats.observer_errors,
        )
    finally:
        await back.stop()
        proxy.stop()
    backend = _messages(bytes(back.downstream_bytes))
    keys = [body for kind, body in backend if kind == codes.BACKEND_KEY_DATA]
    assert len(keys) == 1
    pid, key = struct.unpack_from("!I", keys[0])[0], keys[0][4:]
    negotiated = [body for kind, body in backend if kind == codes.NEGOTIATE_PROTOCOL_VERSION]
    if pg_versions.version >= 18:
        assert len(key) == 32 and not negotiated  # 3.2: a 256-bit key
    else:
        assert len(key) == 4  # 3.0's 32-bit key, after the server's NegotiateProtocolVersion
        assert len(negotiated) == 1
        assert struct.unpack_from("!I", negotiated[0])[0] == 3 << 16  # newest it speaks: 3.0
    # the CancelRequest crossed the proxy with the whole key
    cancel = struct.pack("!III", 12 + len(key), codes.CANCEL_REQUEST_CODE, pid) + key
    assert cancel in bytes(back.upstream_bytes)
    assert (cancels, errors) == (1, 0)
    opened = [e for e in events if isinstance(e, SessionOpened)]
    assert [e.protocol_version for e in opened] == [(3, 2) if pg_versions.version >= 18 else (3, 0)]


def test_min_protocol_32_against_15_gets_the_servers_refusal(pg15_server: PgServer) -> None:
    proxy = start_proxy(pg15_server)
    try:
        dsn = proxy.dsn(params={"min_protocol_version": "3.2", "sslmode": "disable"})
        with pytest.raises(psycopg.OperationalError, match="protocol"):
            psycopg.connect(dsn).close()
    finally:
        proxy.stop()
