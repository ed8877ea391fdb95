"""asyncpg through the proxy: the extended protocol as a real driver uses it."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from dbproxy.protocol.events import (
    StatementEvent,
    StatementFailed,
    StatementFinished,
    TransactionFinished,
)
from tests.fixtures.fix_proxy import RunningProxy
from tests.fixtures.query_counts import Counts, counts_of


@pytest.fixture
async def conn(proxy: RunningProxy) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(proxy.dsn())
    try:
        yield connection
    finally:
        await connection.close()


def _table() -> str:
    return f"apg_{uuid.uuid4().hex[:10]}"


def _finished(events: list[StatementEvent]) -> list[StatementFinished]:
    failed = [e for e in events if isinstance(e, StatementFailed)]
    assert not failed, failed
    return [e for e in events if isinstance(e, StatementFinished)]


async def _closed(proxy: RunningProxy, conn: asyncpg.Connection, sessions: int = 1) -> None:
    await conn.close()
    await asyncio.to_thread(proxy.wait_closed, sessions)


async def test_fetch(proxy: RunningProxy, conn: asyncpg.Connection) -> None:
    # asyncpg's Parse declares no parameter types (the server infers them): no OIDs.
    rows = await conn.fetch("select g, g * 2 as twice from generate_series(1, $1) g", 7)
    assert [tuple(r) for r in rows] == [(g, g * 2) for g in range(1, 8)]
    await _closed(proxy, conn)
    done = _finished(proxy.statements())
    assert [(e.text, e.command, e.rows, e.protocol, e.param_type_oids) for e in done] == [
        ("select g, g * 2 as twice from generate_series(1, $1) g", "SELECT", 7, "extended", ())
    ]


async def test_executemany_one_event_per_row(proxy: RunningProxy, conn: asyncpg.Connection) -> None:
    table = _table()
    await conn.execute(f"create table {table} (id int primary key, v text)")
    records = [(i, f"v{i}") for i in range(25)]
    proxy.clear()
    await conn.executemany(f"insert into {table} values ($1, $2)", records)
    assert await conn.fetchval(f"select count(*) from {table}") == len(records)
    await conn.execute(f"drop table {table}")
    await _closed(proxy, conn)

    inserts = [e for e in _finished(proxy.statements()) if e.command == "INSERT"]
    assert len(inserts) == len(records)
    assert {(e.text, e.rows, e.protocol) for e in inserts} == {
        (f"insert into {table} values ($1, $2)", 1, "extended")
    }
    # asyncpg binds the one prepared statement for every row.
    assert len({e.statement_name for e in inserts}) == 1
    assert not any(e.rolled_back for e in inserts)
    assert counts_of(proxy, [inserts[0].text]) == {inserts[0].text: Counts(25, 25)}


async def test_prepared_statement_reused(proxy: RunningProxy, conn: asyncpg.Connection) -> None:
    stmt = await conn.prepare("select $1::int * 2 as doubled")
    assert [await stmt.fetchval(i) for i in (1, 2, 3)] == [2, 4, 6]
    await _closed(proxy, conn)

    done = _finished(proxy.statements())
    assert [(e.text, e.rows, e.command) for e in done] == [
        ("select $1::int * 2 as doubled", 1, "SELECT")
    ] * 3
    names = {e.statement_name for e in done}
    assert len(names) == 1 and names not in ({""}, {None}), names


async def test_transaction(proxy: RunningProxy, conn: asyncpg.Connection) -> None:
    table = _table()
    await conn.execute(f"create table {table} (id int)")
    proxy.clear()
    async with conn.transaction():
        await conn.execute(f"insert into {table} values ($1), ($2)", 1, 2)
        # fetch() runs the portal to completion (fetchval: see the next test)
        assert [tuple(r) for r in await conn.fetch(f"select id from {table} order by id")] == [
            (1,),
            (2,),
        ]
    await conn.execute(f"drop table {table}")
    await _closed(proxy, conn)

    done = _finished(proxy.statements())
    assert [(e.command, e.rows, e.in_transaction) for e in done] == [
        ("BEGIN", 0, True),
        ("INSERT", 2, True),
        ("SELECT", 2, True),
        ("COMMIT", 0, True),
        ("DROP TABLE", 0, False),
    ]
    assert [e.protocol for e in done] == ["simple", "extended", "extended", "simple", "simple"]
    finished = [e for e in proxy.events if isinstance(e, TransactionFinished)]
    assert [(e.committed, e.statements) for e in finished] == [(True, 4)]


async def test_fetchval_in_transaction_ends_before_commit(
    proxy: RunningProxy, conn: asyncpg.Connection
) -> None:
    # fetchval/fetchrow Execute with a row limit of 1: a one-row result leaves the
    # portal suspended (PortalSuspended, not CommandComplete).  The unnamed portal is
    # dropped by the next Query (here COMMIT), so the statement ended before COMMIT ran.
    async with conn.transaction():
        assert await conn.fetchval("select 41 + 1") == 42
    await _closed(proxy, conn)

    done = _finished(proxy.statements())
    assert [(e.command, e.rows, e.in_transaction) for e in done] == [
        ("BEGIN", 0, True),
        ("SELECT", 1, True),
        ("COMMIT", 0, True),
    ]
    assert done[1].end_ns <= done[2].start_ns
    finished = [e for e in proxy.events if isinstance(e, TransactionFinished)]
    assert [(e.committed, e.statements) for e in finished] == [(True, 3)]


async def test_copy_records_to_table(proxy: RunningProxy, conn: asyncpg.Connection) -> None:
    table = _table()
    await conn.execute(f"create table {table} (id int, name text, score float8)")
    records = [(i, f"name {i}", i / 4) for i in range(1234)]
    proxy.clear()
    result = await conn.copy_records_to_table(table, records=records)
    assert result == f"COPY {len(records)}"
    assert await conn.fetchval(f"select sum(id) from {table}") == sum(r[0] for r in records)
    await conn.execute(f"drop table {table}")
    await _closed(proxy, conn)

    copies = [e for e in _finished(proxy.statements()) if e.command == "COPY"]
    assert [(e.rows, e.protocol) for e in copies] == [(len(records), "simple")]
    assert table in copies[0].text and "FROM STDIN" in copies[0].text.upper()


async def test_listen_notify(proxy: RunningProxy, conn: asyncpg.Connection) -> None:
    channel = f"chan_{uuid.uuid4().hex[:8]}"
    received: asyncio.Future[tuple[str, str]] = asyncio.get_running_loop().create_future()

    def on_notify(_conn: object, _pid: int, chan: str, payload: str) -> None:
        if not received.done():
            received.set_result((chan, payload))

    await conn.add_listener(channel, on_notify)
    sender = await asyncpg.connect(proxy.dsn())
    try:
        await sender.execute("select pg_notify($1, $2)", channel, "hello through the proxy")
        assert await asyncio.wait_for(received, 5) == (channel, "hello through the proxy")
    finally:
        await sender.close()
    await conn.remove_listener(channel, on_notify)
    await _closed(proxy, conn, 2)

    done = _finished(proxy.statements())
    assert [e.command for e in done] == ["LISTEN", "SELECT", "UNLISTEN"]


async def test_timeout_cancels_query(proxy: RunningProxy, conn: asyncpg.Connection) -> None:
    started = time.monotonic()
    with pytest.raises(asyncio.TimeoutError):
        await conn.fetch("select pg_sleep(10)", timeout=0.5)
    # The cancel went through the proxy to the right backend: no 10 s wait.
    assert await conn.fetchval("select 'still usable'") == "still usable"
    assert time.monotonic() - started < 5
    await _closed(proxy, conn)

    statements = proxy.statements()
    assert [type(e).__name__ for e in statements] == ["StatementFailed", "StatementFinished"]
    failed = statements[0]
    assert isinstance(failed, StatementFailed)
    assert (failed.text, failed.error.sqlstate, failed.protocol) == (
        "select pg_sleep(10)",
        "57014",
        "extended",
    )
    assert 0.3e9 < failed.duration_ns < 5e9
    assert (statements[1].text, statements[1].rows) == ("select 'still usable'", 1)


async def test_cursor_prefetch_is_one_statement(
    proxy: RunningProxy, conn: asyncpg.Connection
) -> None:
    async with conn.transaction():
        seen = [
            r["g"] async for r in conn.cursor("select g from generate_series(1, 10) g", prefetch=3)
        ]
    assert seen == list(range(1, 11))
    await _closed(proxy, conn)

    done = _finished(proxy.statements())
    assert [(e.command, e.rows) for e in done] == [("BEGIN", 0), ("SELECT", 10), ("COMMIT", 0)]
    select = done[1]
    assert select.text == "select g from generate_series(1, 10) g"
    assert select.protocol == "extended" and select.in_transaction
    assert select.portal_name  # a named portal, executed 3 rows at a time
    assert counts_of(proxy, [select.text]) == {select.text: Counts(1, 10)}
