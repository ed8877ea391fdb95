"""psycopg2 through the proxy: ``execute_values`` and named (server-side) cursors.

psycopg2 interpolates parameters client-side and sends simple Queries; outside autocommit it
opens each transaction with BEGIN.  Each test runs the same steps directly and through the
proxy, compares the results, and checks the events and the counts on ``/api/queries``.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg2  # type: ignore[import-untyped]  # no stubs installed (types-psycopg2)
import psycopg2.extensions  # type: ignore[import-untyped]
import psycopg2.extras  # type: ignore[import-untyped]

from dbproxy.pgcluster import PgServer
from dbproxy.protocol.events import StatementEvent, StatementFailed, StatementFinished
from tests.fixtures.fix_proxy import RunningProxy
from tests.fixtures.query_counts import Counts, counts_of

T = TypeVar("T")


def _finished(events: list[StatementEvent]) -> list[StatementFinished]:
    failed = [e for e in events if isinstance(e, StatementFailed)]
    assert not failed, failed
    return [e for e in events if isinstance(e, StatementFinished)]


def _both(
    pg: PgServer, proxy: RunningProxy, steps: Callable[[psycopg2.extensions.connection, str], T]
) -> T:
    """Run ``steps`` directly and then through the proxy (each on its own table); the results
    must be equal.  Returns the proxied result."""
    results = []
    for dsn in (pg.dsn(), proxy.dsn()):
        conn = psycopg2.connect(dsn)
        try:
            results.append(steps(conn, f"pg2_{uuid.uuid4().hex[:10]}"))
        finally:
            conn.close()
    assert results[1] == results[0]
    return results[1]


def test_execute_values(proxy: RunningProxy, pg_server: PgServer) -> None:
    rows = [(i, f"it's {i}", None if i % 9 == 0 else i * 0.5) for i in range(1, 251)]

    def steps(conn: psycopg2.extensions.connection, table: str) -> Any:
        with conn.cursor() as cur:
            cur.execute(f"create table {table} (id int primary key, v text, x float8)")
            # 250 rows in pages of 100: three INSERTs, each one VALUES list of literals
            psycopg2.extras.execute_values(
                cur, f"insert into {table} (id, v, x) values %s", rows, page_size=100
            )
            # RETURNING with fetch=True: the rows of every page come back
            returned = psycopg2.extras.execute_values(
                cur,
                f"update {table} set x = data.x from (values %s) as data (id, x)"
                f" where {table}.id = data.id returning {table}.id, {table}.x",
                [(i, float(i)) for i in range(1, 31)],
                template="(%s, %s::float8)",
                page_size=20,
                fetch=True,
            )
            cur.execute(f"select id, v, x from {table} order by id")
            back = cur.fetchall()
            cur.execute(f"drop table {table}")
        conn.commit()
        return sorted(returned), back

    returned, back = _both(pg_server, proxy, steps)
    assert returned == [(i, float(i)) for i in range(1, 31)]
    assert back == [(i, v, float(i) if i <= 30 else x) for i, v, x in rows]

    proxy.wait_closed(1)
    done = _finished(proxy.statements())
    inserts = [e for e in done if e.command == "INSERT"]
    updates = [e for e in done if e.command == "UPDATE"]
    assert [(e.rows, e.protocol, e.in_transaction) for e in inserts] == [
        (100, "simple", True),
        (100, "simple", True),
        (50, "simple", True),
    ]
    assert [e.rows for e in updates] == [20, 10]
    # Pages of different lengths are one fingerprint (a VALUES list collapses).
    insert, update = inserts[0].text, updates[0].text
    assert counts_of(proxy, [insert, update]) == {
        insert: Counts(3, 250),
        update: Counts(2, 30),
    }


def test_named_cursor(proxy: RunningProxy, pg_server: PgServer) -> None:
    total = 100
    sql = "select g, md5(g::text) from generate_series(1, %s) g order by g"

    def steps(conn: psycopg2.extensions.connection, table: str) -> Any:
        with conn.cursor(name=f"{table}_iter") as cur:
            cur.itersize = 30
            cur.execute(sql, [total])
            iterated = list(cur)
        with conn.cursor(name=f"{table}_many") as cur:
            cur.execute(sql, [total])
            first = cur.fetchmany(7)
            one = cur.fetchone()
            rest = cur.fetchall()
        conn.commit()
        return iterated, first, one, rest

    iterated, first, one, rest = _both(pg_server, proxy, steps)
    assert [r[0] for r in iterated] == list(range(1, total + 1))
    assert [r[0] for r in [*first, one, *rest]] == list(range(1, total + 1))

    proxy.wait_closed(1)
    done = _finished(proxy.statements())
    # BEGIN, DECLARE, FETCH FORWARD 30 until a short batch (30+30+30+10, then an empty
    # one ends the iteration), CLOSE; DECLARE, FETCH FORWARD 7, FETCH NEXT, FETCH ALL, CLOSE.
    assert [(e.command, e.rows) for e in done] == [
        ("BEGIN", 0),
        ("DECLARE CURSOR", 0),
        ("FETCH", 30),
        ("FETCH", 30),
        ("FETCH", 30),
        ("FETCH", 10),
        ("FETCH", 0),
        ("CLOSE CURSOR", 0),
        ("DECLARE CURSOR", 0),
        ("FETCH", 7),
        ("FETCH", 1),
        ("FETCH", 92),
        ("CLOSE CURSOR", 0),
        ("COMMIT", 0),
    ]
    assert all(e.in_transaction for e in done[1:-1])
    declare, forward, fetch_all = done[1].text, done[2].text, done[11].text
    assert forward.startswith("FETCH FORWARD 30 FROM ")
    assert fetch_all.startswith("FETCH FORWARD ALL FROM ")
    # The cursor name is not part of the fingerprint; a FETCH count is a constant.
    assert counts_of(proxy, [declare, forward, fetch_all]) == {
        declare: Counts(2, 0),
        forward: Counts(7, 30 + 30 + 30 + 10 + 0 + 7 + 1),
        fetch_all: Counts(1, 92),
    }
