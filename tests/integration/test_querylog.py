"""The JSON query log through the real proxy (the whole App) with real clients.

The log is a file written by its writer thread, as in production; the test drains the
proxy's events, waits for the writer, and reads the file.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import pytest

from dbproxy.export.querylog import KEY_ORDER, QueryLog
from dbproxy.pgcluster import PgServer
from dbproxy.sql.fingerprint import fingerprint
from tests.fixtures.fix_proxy import RunningProxy, start_proxy

SENTINEL = "s3cr3t-sentinel"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
COMMENT = f"/*traceparent='00-{TRACE_ID}-{PARENT_ID}-01',route='%2Freports'*/"


class Logged:
    def __init__(self, proxy: RunningProxy, qlog: QueryLog, path: Path) -> None:
        self.proxy, self.qlog, self.path = proxy, qlog, path

    def lines(self) -> list[dict[str, Any]]:
        self.proxy.collect()  # drain: the App hands the batch to the query log
        assert self.qlog.flush(10)
        text = self.path.read_text(encoding="utf-8")
        records = [json.loads(line) for line in text.splitlines()]
        for record in records:
            assert list(record) == [k for k in KEY_ORDER if k in record]
        return records


@pytest.fixture
def logged(pg_server: PgServer, tmp_path: Path) -> Iterator[Logged]:
    path = tmp_path / "queries.log"
    # configured as a user would (--query-log PATH --log-slow-ms 100): the App's wiring
    proxy = start_proxy(pg_server, query_log=str(path), log_slow_ms=100.0)
    qlog = proxy.app.query_log
    assert qlog is not None
    try:
        yield Logged(proxy, qlog, path)
    finally:
        proxy.stop()  # the App closes the log
    assert (qlog.write_errors, qlog.lines_dropped, qlog.format_errors) == (0, 0, 0)


def test_query_log_counters_are_exported(logged: Logged) -> None:
    import urllib.request

    with (
        psycopg.connect(logged.proxy.dsn(), sslmode="disable", autocommit=True) as conn,
        pytest.raises(psycopg.errors.DivisionByZero),
    ):
        conn.execute("select 1/0")
    lines = logged.lines()
    assert any(r["event"] == "query_error" for r in lines)
    with urllib.request.urlopen(f"{logged.proxy.http_url}/metrics", timeout=10) as r:
        text = r.read().decode()
    written = [ln for ln in text.splitlines() if ln.startswith("dbproxy_query_log_lines_total ")]
    assert written and float(written[0].split()[1]) == len(lines)


def test_psycopg_slow_query_sessions_and_rejection(logged: Logged) -> None:
    proxy = logged.proxy
    with psycopg.connect(proxy.dsn(), autocommit=True, application_name="ql-psycopg") as conn:
        pid, user, database = conn.execute(
            "select pg_backend_pid(), current_user, current_database()"
        ).fetchone()  # type: ignore[misc]
        conn.execute(f"select pg_sleep(0.3), 'not-logged-literal' {COMMENT}")
        conn.execute("select pg_sleep(%s)", [0.01])  # fast: not logged
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(proxy.dsn(dbname="no_such_db_ql")).close()
    proxy.wait_closed(2)

    records = logged.lines()
    assert [r["event"] for r in records] == [
        "session_opened",
        "slow_query",
        "session_closed",
        "session_rejected",
    ]
    opened, slow, closed, rejected = records
    assert (opened["backend_pid"], opened["user"], opened["database"]) == (pid, user, database)
    assert opened["client_addr"].startswith("127.0.0.1:")
    assert opened["application_name"] == "ql-psycopg"

    assert slow["level"] == "warning"
    assert (slow["trace_id"], slow["span_id"]) == (TRACE_ID, PARENT_ID)
    assert slow["backend_pid"] == pid and slow["session_id"] == opened["session_id"]
    assert slow["client_addr"] == opened["client_addr"]
    assert 300 <= slow["duration_ms"] < 5_000
    assert slow["query"] == "SELECT pg_sleep($1), $2"
    assert slow["fingerprint"] == fingerprint("select pg_sleep(1), 'x'").id
    assert slow["tags"] == {"route": "/reports"}
    assert (slow["rows"], slow["command"], slow["application_name"]) == (1, "SELECT", "ql-psycopg")
    assert opened["ts"] <= slow["ts"] <= closed["ts"]
    assert slow["ts"].endswith("Z") and len(slow["ts"]) == len("2024-01-01T00:00:00.000Z")

    assert closed["backend_pid"] == pid and closed["duration_ms"] >= slow["duration_ms"]
    assert (rejected["sqlstate"], rejected["error_class"]) == ("3D000", "invalid_catalog_name")
    assert rejected["database"] == "no_such_db_ql"
    text = logged.path.read_text(encoding="utf-8")
    assert "not-logged-literal" not in text and "does not exist" not in text


async def test_asyncpg_unique_violation_and_slow_extended_query(logged: Logged) -> None:
    proxy = logged.proxy
    table = f"ql_{uuid.uuid4().hex[:10]}"
    conn = await asyncpg.connect(proxy.dsn())
    try:
        await conn.execute(f"create table {table} (id serial, email text unique)")
        await conn.execute(f"insert into {table} (email) values ('{SENTINEL}')")
        # simple protocol: the literal is in the text; the server's DETAIL echoes it
        with pytest.raises(asyncpg.UniqueViolationError):
            await conn.execute(f"insert into {table} (email) values ('{SENTINEL}') {COMMENT}")
        # extended protocol: the value is a parameter
        with pytest.raises(asyncpg.UniqueViolationError):
            await conn.execute(f"insert into {table} (email) values ($1)", SENTINEL)
        slept = await conn.fetchval(f"select pg_sleep(0.3)::text || $1 {COMMENT}", "-done")
        assert slept == "-done"
        pid = conn.get_server_pid()
    finally:
        await conn.close()
    await proxy.async_wait_closed(1)

    records = await asyncio.to_thread(logged.lines)
    events = [r["event"] for r in records]
    assert events == [
        "session_opened",
        "query_error",
        "query_error",
        "slow_query",
        "session_closed",
    ], events
    simple_error, extended_error, slow = records[1], records[2], records[3]
    for error in (simple_error, extended_error):
        assert error["level"] == "error"
        assert (error["sqlstate"], error["error_class"]) == (
            "23505",
            "integrity_constraint_violation",
        )
        assert error["query"] == f"INSERT INTO {table}(email) VALUES ($1)"
        assert error["backend_pid"] == pid
    assert simple_error["protocol"] == "simple"
    assert (simple_error["trace_id"], simple_error["span_id"]) == (TRACE_ID, PARENT_ID)
    assert extended_error["protocol"] == "extended" and "trace_id" not in extended_error
    assert simple_error["fingerprint"] == extended_error["fingerprint"]

    assert slow["protocol"] == "extended" and slow["duration_ms"] >= 300
    assert (slow["trace_id"], slow["span_id"]) == (TRACE_ID, PARENT_ID)
    assert slow["query"] == "SELECT pg_sleep($1)::text || $2"

    text = logged.path.read_text(encoding="utf-8")
    assert SENTINEL not in text
    assert "duplicate key" not in text and "already exists" not in text
