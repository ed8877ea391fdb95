"""psycopg 3 through the proxy: pipelines, server-side cursors, COPY, binary, cancel.

Sync psycopg is fine here: the proxy runs on its own thread and event loop.
"""

from __future__ import annotations

import threading
import time
import uuid

import psycopg
import pytest
from psycopg import errors

from dbproxy.protocol.events import StatementEvent, StatementFailed, StatementFinished
from tests.fixtures.fix_proxy import RunningProxy
from tests.fixtures.query_counts import Counts, counts_of


def _table() -> str:
    return f"pg3_{uuid.uuid4().hex[:10]}"


def _finished(events: list[StatementEvent]) -> list[StatementFinished]:
    failed = [e for e in events if isinstance(e, StatementFailed)]
    assert not failed, failed
    return [e for e in events if isinstance(e, StatementFinished)]


def test_pipeline_mode(proxy: RunningProxy) -> None:
    table = _table()
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        conn.execute(f"create table {table} (id int, v text)")
        proxy.clear()
        with conn.pipeline():
            insert = conn.execute(
                f"insert into {table} select g, 'v' || g from generate_series(1, %s) g", [6]
            )
            update = conn.execute(f"update {table} set v = 'odd' where id % 2 = 1")
            select = conn.execute(f"select id, v from {table} where id > %s order by id", [2])
            count = conn.execute("select count(*) from generate_series(1, 50)")
        assert insert.rowcount == 6 and update.rowcount == 3
        assert select.fetchall() == [(3, "odd"), (4, "v4"), (5, "odd"), (6, "v6")]
        assert count.fetchone() == (50,)
        conn.execute(f"drop table {table}")
    proxy.wait_closed(1)

    done = _finished(proxy.statements())
    assert [(e.command, e.rows, e.protocol) for e in done] == [
        ("INSERT", 6, "extended"),
        ("UPDATE", 3, "extended"),
        ("SELECT", 4, "extended"),
        ("SELECT", 1, "extended"),
        ("DROP TABLE", 0, "simple"),
    ]
    assert done[0].text == f"insert into {table} select g, 'v' || g from generate_series(1, $1) g"
    assert done[2].text == f"select id, v from {table} where id > $1 order by id"
    assert not any(e.rolled_back for e in done)
    assert counts_of(proxy, [e.text for e in done[:4]]) == {
        done[0].text: Counts(1, 6),
        done[1].text: Counts(1, 3),
        done[2].text: Counts(1, 4),
        done[3].text: Counts(1, 1),
    }


def test_named_cursor_fetched_in_batches(proxy: RunningProxy) -> None:
    total, batch = 10, 4
    with psycopg.connect(proxy.dsn()) as conn:
        with conn.cursor(name="batches") as cur:
            cur.itersize = batch
            cur.execute("select g from generate_series(1, %s) g", [total])
            assert [row[0] for row in cur] == list(range(1, total + 1))
        conn.commit()
    proxy.wait_closed(1)

    done = _finished(proxy.statements())
    fetches = [e for e in done if e.command == "FETCH"]
    # DECLARE, then FETCH FORWARD itersize until a short batch: 4 + 4 + 2 rows.
    assert [e.rows for e in fetches] == [4, 4, 2]
    assert sum(e.rows for e in fetches) == total
    assert {(e.text, e.protocol, e.in_transaction) for e in fetches} == {
        ('FETCH FORWARD 4 FROM "batches"', "simple", True)
    }
    assert [e.command for e in done] == [
        "BEGIN",
        "DECLARE CURSOR",
        "FETCH",
        "FETCH",
        "FETCH",
        "CLOSE CURSOR",
        "COMMIT",
    ]
    assert (done[1].text, done[1].protocol) == (
        'DECLARE "batches" CURSOR FOR select g from generate_series(1, $1) g',
        "extended",
    )
    assert counts_of(proxy, [done[1].text, fetches[0].text]) == {
        done[1].text: Counts(1, 0),
        fetches[0].text: Counts(3, total),
    }


def test_pipeline_error_rolls_back_earlier_statements(proxy: RunningProxy) -> None:
    table = _table()
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        conn.execute(f"create table {table} (id int)")
        proxy.clear()
        # No Sync between the statements: one implicit transaction, undone by the error.
        with pytest.raises(errors.DivisionByZero), conn.pipeline():
            conn.execute(f"insert into {table} values (%s), (%s)", [1, 2])
            conn.execute("select 1 / %s", [0])
            conn.execute(f"insert into {table} values (%s)", [3])
        assert conn.execute(f"select count(*) from {table}").fetchone() == (0,)
        conn.execute(f"drop table {table}")
    proxy.wait_closed(1)

    statements = proxy.statements()
    assert [(type(e).__name__, e.rows, e.rolled_back) for e in statements[:2]] == [
        ("StatementFinished", 2, True),
        ("StatementFailed", 0, False),
    ]
    failed = statements[1]
    assert isinstance(failed, StatementFailed)
    assert (failed.text, failed.error.sqlstate) == ("select 1 / $1", "22012")
    # The third statement was skipped by the server: no event for it.
    assert [e.text for e in statements[2:]] == [
        f"select count(*) from {table}",
        f"drop table {table}",
    ]


def test_copy_in_and_out(proxy: RunningProxy) -> None:
    table = _table()
    rows = [(i, f"row {i}\twith tab", None if i % 5 == 0 else i / 3) for i in range(777)]
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        conn.execute(f"create table {table} (id int, t text, x float8)")
        with conn.cursor() as cur:
            with cur.copy(f"COPY {table} (id, t, x) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
            assert cur.rowcount == len(rows)
            with cur.copy(f"COPY (select * from {table} order by id) TO STDOUT") as copy:
                copy.set_types(["int4", "text", "float8"])
                back = list(copy.rows())
        assert back == rows
        conn.execute(f"drop table {table}")
    proxy.wait_closed(1)

    copies = [e for e in _finished(proxy.statements()) if e.command == "COPY"]
    assert [(e.text, e.rows) for e in copies] == [
        (f"COPY {table} (id, t, x) FROM STDIN", len(rows)),
        (f"COPY (select * from {table} order by id) TO STDOUT", len(rows)),
    ]
    assert counts_of(proxy, [e.text for e in copies]) == {
        e.text: Counts(1, len(rows)) for e in copies
    }


def test_binary_parameters_and_results(proxy: RunningProxy) -> None:
    blob = bytes(range(256)) * 3
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        cur = conn.cursor()
        cur.execute(
            "select %b::bytea, %b::int8 + 1, %s::text, %b::float8[]",
            [blob, 41, "text ✓", [1.5, -2.25]],
            binary=True,
        )
        assert cur.fetchall() == [(blob, 42, "text ✓", [1.5, -2.25])]
    proxy.wait_closed(1)

    done = _finished(proxy.statements())
    assert [(e.text, e.command, e.rows, e.protocol) for e in done] == [
        ("select $1::bytea, $2::int8 + 1, $3::text, $4::float8[]", "SELECT", 1, "extended")
    ]
    assert len(done[0].param_type_oids) == 4


def test_cancel_from_another_thread(proxy: RunningProxy) -> None:
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        timer = threading.Timer(0.5, conn.cancel_safe)
        timer.start()
        started = time.monotonic()
        try:
            with pytest.raises(errors.QueryCanceled):
                conn.execute("select pg_sleep(10)")
        finally:
            timer.join()
        assert time.monotonic() - started < 5
        # the connection survives the cancel
        assert conn.execute("select 'alive'").fetchone() == ("alive",)
    proxy.wait_closed(1)

    statements = proxy.statements()
    assert [type(e).__name__ for e in statements] == ["StatementFailed", "StatementFinished"]
    failed = statements[0]
    assert isinstance(failed, StatementFailed)
    assert (failed.text, failed.error.sqlstate, failed.phase) == (
        "select pg_sleep(10)",
        "57014",
        "execute",
    )
    assert 0.3e9 < failed.duration_ns < 5e9
