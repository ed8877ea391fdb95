"""The inspector's side connection against real PostgreSQL 18 (wheel) and 15 (Debian):
generic plans and plan changes, sampled EXPLAIN ANALYZE (rows scanned) with no side
effect, pg_stat_statements enrichment, and no literal anywhere it keeps or serves."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from dbproxy.pgcluster import PgServer
from tests.fixtures.fix_proxy import RunningProxy, start_proxy

INSPECT_PASSWORD = "inspect-pw-123456"
SENTINEL = "zqxsentinel"

# The role the README documents (plus what the test server needs).
INSPECT_ROLE_SQL = f"""
DO $$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'dbproxy_inspect') THEN
    CREATE ROLE dbproxy_inspect LOGIN PASSWORD '{INSPECT_PASSWORD}';
  END IF;
END $$;
GRANT pg_read_all_stats, pg_read_all_data TO dbproxy_inspect;
"""


def _admin(pg: PgServer, sql: str, dbname: str | None = None) -> None:
    with psycopg.connect(pg.admin_dsn(dbname=dbname or pg.database), autocommit=True) as conn:
        conn.execute(sql)


def _prepare(pg: PgServer) -> None:
    _admin(pg, INSPECT_ROLE_SQL)
    _admin(pg, "CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
    _admin(pg, "CREATE EXTENSION IF NOT EXISTS dblink")
    _admin(pg, "GRANT EXECUTE ON FUNCTION dblink_exec(text, text) TO app")


def _inspect_dsn(pg: PgServer) -> str:
    return pg.dsn(user="dbproxy_inspect", password=INSPECT_PASSWORD, dbname="postgres")


def _start(pg: PgServer, **overrides: Any) -> RunningProxy:
    settings: dict[str, Any] = {
        "inspect_dsn": _inspect_dsn(pg),
        "explain_slow_ms": None,
        "inspect_interval": 0.3,
        "inspect_plan_interval": 0.3,
        "inspect_top": 50,
        "inspect_plans_per_minute": 100_000,
    }
    settings.update(overrides)
    return start_proxy(pg, **settings)


def _get(proxy: RunningProxy, path: str) -> Any:
    with urllib.request.urlopen(proxy.http_url + path, timeout=10) as resp:
        return json.loads(resp.read())


def _get_status(proxy: RunningProxy, path: str) -> int:
    try:
        with urllib.request.urlopen(proxy.http_url + path, timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def _wait(predicate: Callable[[], Any], timeout: float = 30.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _fingerprint_of(proxy: RunningProxy, needle: str) -> str:
    def find() -> str | None:
        proxy.drain_now()
        rows = _get(proxy, "/api/queries?limit=1000")["queries"]
        for row in rows:
            if needle in row["query"]:
                return str(row["fingerprint"])
        return None

    return str(_wait(find, 10, f"a fingerprint with {needle!r}"))


def _row(proxy: RunningProxy, fingerprint: str) -> dict[str, Any]:
    proxy.drain_now()
    rows: list[dict[str, Any]] = _get(proxy, f"/api/queries/{fingerprint}")["queries"]
    return rows[0]


@pytest.fixture
def pg15(pg15_server: PgServer) -> PgServer:
    return pg15_server  # the session's PostgreSQL 15 (tests/fixtures/fix_pg.py)


@pytest.fixture(params=["18", "15"])
def pg_any(request: pytest.FixtureRequest, pg_server: PgServer) -> PgServer:
    if request.param == "15":
        server: PgServer = request.getfixturevalue("pg15")
    else:
        server = pg_server
    _prepare(server)
    return server


def _workload_tables(pg: PgServer, table: str) -> None:
    _admin(
        pg,
        f"""
        DROP TABLE IF EXISTS {table}_items, {table};
        CREATE TABLE {table} (id int PRIMARY KEY, name text NOT NULL, grp int NOT NULL);
        INSERT INTO {table} SELECT g, 'name' || g, g % 10 FROM generate_series(1, 20000) g;
        CREATE INDEX {table}_name ON {table} (name);
        CREATE TABLE {table}_items (id int PRIMARY KEY, parent int NOT NULL, qty int);
        INSERT INTO {table}_items SELECT g, g % 50 + 1, g FROM generate_series(1, 500) g;
        GRANT SELECT, INSERT, UPDATE, DELETE ON {table}, {table}_items TO app;
        ANALYZE {table}; ANALYZE {table}_items;
        """,
    )


def test_plan_change_after_drop_index_and_rows_scanned(pg_any: PgServer) -> None:
    table = f"insp_drop{pg_any.version}"
    _workload_tables(pg_any, table)
    proxy = _start(pg_any, sample_analyze=1.0, sample_analyze_per_minute=100_000)
    try:
        with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
            cur = psycopg.ClientCursor(conn)  # literals in the text: simple protocol

            def work(rounds: int) -> None:
                for i in range(rounds):
                    cur.execute(f"SELECT id, grp FROM {table} WHERE id = %s", (i % 1000 + 1,))
                    cur.execute(f"SELECT count(*) FROM {table}_items WHERE qty > %s", (i % 7,))

            work(20)
            by_id = _fingerprint_of(proxy, f"FROM {table} WHERE id")
            other = _fingerprint_of(proxy, f"FROM {table}_items WHERE qty")

            def sampled() -> bool:
                work(5)
                return (_row(proxy, by_id).get("rows_scanned_samples") or 0) >= 3

            _wait(sampled, 30, "rows-scanned samples before the drop")
            before = _row(proxy, by_id)
            assert before["plan"]["summary"] == f"Index Scan using {table}_pkey on {table}"
            assert before["rows_scanned_per_call"] == 1
            returned_before = before["rows_per_call"]

            _admin(pg_any, f"ALTER TABLE {table} DROP CONSTRAINT {table}_pkey")

            def changed() -> bool:
                work(5)
                return _row(proxy, by_id)["plan_changes"] >= 1

            _wait(changed, 30, "a plan change after dropping the index")

            def scanned_rise() -> bool:
                work(5)
                return (_row(proxy, by_id)["rows_scanned_per_call"] or 0) > 1000

            _wait(scanned_rise, 60, "rows scanned per call to rise")
            after = _row(proxy, by_id)
            assert after["rows_per_call"] == returned_before == 1
            assert after["rows_scanned_per_returned"] > 1000

            plans = _get(proxy, f"/api/queries/{by_id}/plans")["databases"][0]
            summaries = [p["summary"] for p in plans["plans"]]
            assert f"Index Scan using {table}_pkey on {table}" in summaries
            assert any(s.startswith("Seq Scan on") or "Seq Scan" in s for s in summaries)
            assert plans["current"] != plans["plans"][0]["id"]
            # the other fingerprint kept its plan
            assert _row(proxy, other)["plan_changes"] == 0
            metrics = urllib.request.urlopen(proxy.http_url + "/metrics", timeout=10).read()
            text = metrics.decode()
            assert f'dbproxy_query_plan_changes_total{{database="app",fingerprint="{by_id}"}}' in (
                text
            )
            assert f'dbproxy_query_rows_scanned{{database="app",fingerprint="{by_id}"}}' in text
    finally:
        proxy.stop()


def test_nested_loop_rows_scanned_matches_hand_count(pg_any: PgServer) -> None:
    pg = pg_any
    _admin(
        pg,
        """
        DROP TABLE IF EXISTS insp_nl_items, insp_nl;
        CREATE TABLE insp_nl (id int PRIMARY KEY, name text);
        INSERT INTO insp_nl SELECT g, 'p' || g FROM generate_series(1, 5000) g;
        CREATE TABLE insp_nl_items (id int PRIMARY KEY, parent int NOT NULL, qty int NOT NULL);
        INSERT INTO insp_nl_items SELECT g, g % 5000 + 1, g FROM generate_series(1, 50000) g;
        CREATE INDEX insp_nl_items_parent ON insp_nl_items (parent);
        GRANT SELECT ON insp_nl, insp_nl_items TO app;
        ANALYZE insp_nl; ANALYZE insp_nl_items;
        """,
    )
    proxy = _start(pg, sample_analyze=1.0, sample_analyze_per_minute=100_000)
    try:
        with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
            cur = psycopg.ClientCursor(conn)
            sql = (
                "SELECT p.id, i.qty FROM insp_nl p JOIN insp_nl_items i ON i.parent = p.id "
                "WHERE p.id <= %s AND i.qty %% 2 = %s"
            )
            cur.execute(sql, (10, 0))
            fp = _fingerprint_of(proxy, "FROM insp_nl p JOIN")

            def sampled() -> bool:
                cur.execute(sql, (10, 0))
                return (_row(proxy, fp).get("rows_scanned_samples") or 0) >= 1

            _wait(sampled, 30, "a sample of the nested loop")
            row = _row(proxy, fp)
        # hand count: 10 parents read by the outer index scan; then 10 loops of the inner
        # scan, each reading the parent's 10 items (5 returned, 5 removed by the filter)
        assert row["rows_per_call"] == 50
        assert row["rows_scanned_per_call"] == 10 + 10 * 10, row
        assert row["rows_scanned_per_returned"] == 2.2
        _wait(lambda: _get_status(proxy, f"/api/queries/{fp}/plans") == 200, 10, "a plan")
        if pg.version >= 18:  # the UI once is enough
            _check_query_page(proxy, fp, "110")
    finally:
        proxy.stop()


def _stat(pg: PgServer, sql: str, *args: Any) -> Any:
    with psycopg.connect(pg.admin_dsn(dbname=pg.database), autocommit=True) as conn:
        conn.execute("SELECT pg_stat_clear_snapshot()")
        row = conn.execute(sql, args).fetchone()
        return row[0] if row else None


def _check_query_page(proxy: RunningProxy, fp: str, scanned: str) -> None:
    """The UI's query page shows rows scanned, the plans and the slow samples."""
    import playwright.sync_api as playwright_sync

    from tests.integration.test_ui_browser import CHROMIUM, CHROMIUM_ARGS

    problems: list[str] = []
    with playwright_sync.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.on("pageerror", lambda e: problems.append(f"pageerror: {e}"))
            page.on(
                "console",
                lambda m: problems.append(m.text) if m.type in ("error", "warning") else None,
            )
            page.goto(f"{proxy.http_url}/#/query/{fp}")
            page.wait_for_selector("#inspect tbody tr")
            page.wait_for_selector("table.plans tbody tr")
            page.wait_for_selector("#slow tbody tr")
            cells = page.eval_on_selector_all(
                "#inspect tbody tr:first-child td", "els => els.map(e => e.textContent)"
            )
            assert cells[2] == scanned, cells
            assert "current" in page.inner_text("table.plans")
        finally:
            browser.close()
    assert not problems, problems


def test_sampling_has_no_side_effect(pg_server: PgServer) -> None:
    pg = pg_server
    _prepare(pg)
    _admin(
        pg,
        """
        DROP TABLE IF EXISTS insp_fx, insp_fx_log;
        CREATE TABLE insp_fx (id int PRIMARY KEY, qty int NOT NULL);
        INSERT INTO insp_fx SELECT g, 0 FROM generate_series(1, 100) g;
        CREATE TABLE insp_fx_log (id serial PRIMARY KEY, v int);
        GRANT SELECT, INSERT, UPDATE, DELETE ON insp_fx, insp_fx_log TO app;
        GRANT USAGE ON SEQUENCE insp_fx_log_id_seq TO app;
        CREATE OR REPLACE FUNCTION insp_bump() RETURNS int LANGUAGE sql VOLATILE
          AS $$ INSERT INTO insp_fx_log (v) VALUES (1) RETURNING v $$;
        GRANT EXECUTE ON FUNCTION insp_bump() TO app;
        """,
    )
    ins0 = _stat(pg, "SELECT n_tup_ins FROM pg_stat_user_tables WHERE relname = 'insp_fx_log'")
    upd0 = _stat(pg, "SELECT n_tup_upd FROM pg_stat_user_tables WHERE relname = 'insp_fx'")
    proxy = _start(pg, sample_analyze=1.0, sample_analyze_per_minute=100_000, explain_slow_ms=0.0)
    remote = pg.dsn(host="127.0.0.1")
    rounds = 6
    try:
        with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
            cur = psycopg.ClientCursor(conn)
            for i in range(rounds):
                cur.execute("UPDATE insp_fx SET qty = qty + 1 WHERE id = %s RETURNING qty", (1,))
                cur.execute("DELETE FROM insp_fx WHERE id = %s RETURNING id", (1000 + i,))
                cur.execute("INSERT INTO insp_fx_log (v) VALUES (%s) RETURNING id", (i,))
                cur.execute("SELECT insp_bump()")
                cur.execute("SELECT pg_advisory_lock(%s)", (4242,))
                cur.execute("SELECT pg_advisory_unlock(%s)", (4242,))
                conn.execute(
                    "SELECT dblink_exec(%s, 'INSERT INTO insp_fx_log (v) VALUES (7)')", (remote,)
                )
                cur.execute("SELECT qty FROM insp_fx WHERE id = %s", (1,))
                time.sleep(0.3)  # one sample per fingerprint and second
            proxy.drain_now()
            time.sleep(2.0)  # let queued samples run
        jobs = proxy.call(lambda: dict(proxy.app.inspector.counts.jobs))  # type: ignore[union-attr]
        assert jobs.get(("sample", "ok"), 0) >= 1, jobs  # the plain SELECT was sampled
        assert jobs.get(("sample", "unsafe"), 0) >= 3, jobs  # bump, advisory lock, dblink
        # table contents: exactly the client's writes
        assert _stat(pg, "SELECT qty FROM insp_fx WHERE id = 1") == rounds
        assert _stat(pg, "SELECT count(*) FROM insp_fx_log") == rounds * 3
        # the server's own counters agree (stats are flushed within a second or so)
        _wait(
            lambda: (
                _stat(pg, "SELECT n_tup_ins FROM pg_stat_user_tables WHERE relname = 'insp_fx_log'")
                - ins0
                == rounds * 3
            ),
            10,
            "insert statistics",
        )
        assert (
            _stat(pg, "SELECT n_tup_upd FROM pg_stat_user_tables WHERE relname = 'insp_fx'") - upd0
            == rounds
        )
        assert _stat(pg, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'") == 0
    finally:
        proxy.stop()


def test_sampler_safety_net_read_only_and_unlock(pg_server: PgServer) -> None:
    """Even a statement the pg_proc check would refuse leaves nothing behind."""
    import asyncio

    from dbproxy.inspect.side import SidePools

    pg = pg_server
    _prepare(pg)
    _admin(
        pg,
        """
        DROP TABLE IF EXISTS insp_net_log;
        CREATE TABLE insp_net_log (v int);
        CREATE OR REPLACE FUNCTION insp_net_bump() RETURNS int LANGUAGE sql VOLATILE
          AS $$ INSERT INTO insp_net_log (v) VALUES (1) RETURNING v $$;
        """,
    )

    async def run() -> list[str]:
        pools = SidePools(_inspect_dsn(pg))
        outcomes = []
        try:
            for sql in ("SELECT pg_advisory_lock(777)", "SELECT insp_net_bump()"):
                try:
                    await pools.sample_analyze(pg.database, "public", sql, [])
                    outcomes.append("ran")
                except Exception as exc:
                    outcomes.append(type(exc).__name__)
            pool = await pools.pool(pg.database)
            async with pool.acquire() as conn:
                held = await conn.fetchval(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
                )
                outcomes.append(f"locks={held}")
        finally:
            await pools.close()
        return outcomes

    outcomes = asyncio.run(run())
    assert outcomes[0] == "ran"  # the lock was taken inside EXPLAIN ANALYZE …
    assert outcomes[1] == "ReadOnlySQLTransactionError"  # … the write refused by READ ONLY
    assert outcomes[2] == "locks=0"  # … and pg_advisory_unlock_all released the lock
    assert _stat(pg, "SELECT count(*) FROM insp_net_log") == 0


def test_no_literal_anywhere(pg_any: PgServer, caplog: pytest.LogCaptureFixture) -> None:
    pg = pg_any
    caplog.set_level("DEBUG", logger="dbproxy")
    table = f"insp_lit{pg.version}"
    _workload_tables(pg, table)
    proxy = _start(pg, sample_analyze=1.0, sample_analyze_per_minute=100_000, explain_slow_ms=0.0)
    try:
        with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
            cur = psycopg.ClientCursor(conn)
            statements = [
                (f"SELECT id FROM {table} WHERE name LIKE %s", (SENTINEL + "%",)),
                (f"SELECT id FROM {table} WHERE name = %s", (SENTINEL + "-42",)),
                (f"SELECT count(*) FROM {table} WHERE id > %s", (987654321,)),
                (f"SELECT id FROM {table} WHERE name = 'n' || %s", (SENTINEL,)),
            ]
            for _ in range(8):
                for sql, args in statements:
                    cur.execute(sql, args)
                # extended protocol too (Parse text with $n; the sentinel only in Bind)
                conn.execute(f"SELECT id FROM {table} WHERE name = %s", (SENTINEL + "-x",))
                time.sleep(0.3)
            fps = [_fingerprint_of(proxy, f"FROM {table} WHERE name LIKE")]
            _wait(
                lambda: (
                    _row(proxy, fps[0]).get("rows_scanned_samples", 0) >= 1
                    and _row(proxy, fps[0])["plan"] is not None
                ),
                30,
                "a sample and a plan of the LIKE query",
            )
            proxy.drain_now()
            _wait(
                lambda: proxy.call(lambda: bool(proxy.app.inspector.store.server)),  # type: ignore[union-attr]
                30,
                "pg_stat_statements read",
            )
        everything = [json.dumps(_get(proxy, "/api/queries?limit=1000"))]
        for row in _get(proxy, "/api/queries?limit=1000")["queries"]:
            everything.append(json.dumps(_get(proxy, f"/api/queries/{row['fingerprint']}")))
            if _get_status(proxy, f"/api/queries/{row['fingerprint']}/plans") == 200:
                everything.append(
                    json.dumps(_get(proxy, f"/api/queries/{row['fingerprint']}/plans"))
                )
        with urllib.request.urlopen(proxy.http_url + "/metrics", timeout=10) as resp:
            everything.append(resp.read().decode())
        store = proxy.call(lambda: proxy.app.inspector.store)  # type: ignore[union-attr]
        everything.append(repr(store.__dict__))
        everything.append(json.dumps([[p.plan for p in ps] for ps in store._plans.values()]))
        everything.append(caplog.text)
        joined = "\n".join(everything)
        assert "LIKE" in joined and "Index" in joined  # the searched texts are not empty
        for needle in (SENTINEL, "987654321"):
            assert needle not in joined
        # the server's own pg_stat_statements holds no literal of the workload either
        with psycopg.connect(pg.admin_dsn(dbname=pg.database), autocommit=True) as admin:
            leaked = admin.execute(
                "SELECT count(*) FROM pg_stat_statements WHERE strpos(query, %s) > 0"
                " OR strpos(query, %s) > 0",
                (SENTINEL, "987654321"),
            ).fetchone()
        assert leaked == (0,)
    finally:
        proxy.stop()


def test_pg_stat_statements_matched_to_pgbench_fingerprints(pg_any: PgServer) -> None:
    import os
    import subprocess

    pg = pg_any
    db = "insp_pgss"
    _admin(pg, f"DROP DATABASE IF EXISTS {db}", dbname="postgres")
    _admin(pg, f"CREATE DATABASE {db} OWNER app", dbname="postgres")
    _admin(pg, "CREATE EXTENSION IF NOT EXISTS pg_stat_statements", dbname=db)

    def pgbench(env: dict[str, str], *args: str) -> str:
        done = subprocess.run(
            [pg.tool("pgbench"), *args],
            check=False,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    pgbench(pg.env(base=os.environ, dbname=db), "-i", "-q", "-s", "1")
    proxy = _start(pg, inspect_interval=0.5)
    try:
        # literals (simple protocol) and $n (extended): one fingerprint, two queryids
        pgbench(proxy.env(dbname=db), "-n", "-c", "2", "-t", "50", "-M", "simple")
        pgbench(proxy.env(dbname=db), "-n", "-c", "2", "-t", "50", "-M", "extended")
        update = _fingerprint_of(proxy, "UPDATE pgbench_accounts")

        def matched() -> dict[str, Any] | None:
            row = next(r for r in _get(proxy, f"/api/queries/{update}")["queries"])
            server = row.get("server")
            return row if server and server["calls"] >= row["calls"] else None

        row = _wait(matched, 30, "pg_stat_statements numbers for pgbench's UPDATE")
        server = row["server"]
        assert row["database"] == db
        assert server["calls"] == row["calls"] == 200  # only the proxied runs made them
        assert len(server["queryids"]) == 2
        assert server["shared_blks_hit"] + server["shared_blks_read"] > 0
        assert server["mean_exec_time_ms"] > 0
        assert server["wal_bytes"] > 0  # an UPDATE writes WAL
        select = _fingerprint_of(proxy, "SELECT abalance FROM pgbench_accounts")
        sel_server = _row(proxy, select)["server"]
        assert sel_server["calls"] == 200
        # EXPLAIN (VERBOSE) of the $n text gave the extended-protocol form's queryid (the
        # UPDATE is not explained: the read-only role may not UPDATE pgbench_accounts)
        explained = _wait(
            lambda: proxy.call(
                lambda: set(proxy.app.inspector.store.queryids.get((select, db), ()))  # type: ignore[union-attr]
            ),
            10,
            "the SELECT's queryid from EXPLAIN (VERBOSE)",
        )
        assert {str(q) for q in explained} < set(sel_server["queryids"])
        assert sel_server["queryids"] != server["queryids"]
    finally:
        proxy.stop()
        _admin(pg, f"DROP DATABASE IF EXISTS {db} WITH (FORCE)", dbname="postgres")


def test_extended_protocol_statements_are_sampled_with_their_bind_values(
    pg_server: PgServer,
) -> None:
    import asyncio

    import asyncpg

    pg = pg_server
    _prepare(pg)
    table = "insp_ext"
    _workload_tables(pg, table)
    proxy = _start(pg, sample_analyze=1.0, sample_analyze_per_minute=100_000)
    try:
        with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
            sql = f"SELECT id FROM {table} WHERE name = %s AND grp >= %s"
            conn.execute(sql, ("name77", 0))  # Parse with $1, $2; text values in the Bind
            fp = _fingerprint_of(proxy, f"FROM {table} WHERE name")

            def sampled() -> bool:
                conn.execute(sql, ("name77", 0))
                return (_row(proxy, fp).get("rows_scanned_samples") or 0) >= 2

            _wait(sampled, 30, "samples of an extended-protocol statement")
        row = _row(proxy, fp)
        assert row["rows_scanned_per_call"] == 1  # the name index found the one row

        async def binary() -> None:  # asyncpg sends binary values: not sampled, counted
            conn = await asyncpg.connect(proxy.dsn())
            try:
                for _ in range(3):
                    await conn.fetch(f"SELECT id FROM {table} WHERE id = $1", 5)
                    await asyncio.sleep(0.3)
            finally:
                await conn.close()

        asyncio.run(binary())
        proxy.drain_now()
        jobs = proxy.call(lambda: dict(proxy.app.inspector.counts.jobs))  # type: ignore[union-attr]
        assert jobs.get(("sample", "skipped"), 0) >= 1, jobs
    finally:
        proxy.stop()


def test_plans_use_the_clients_search_path(pg_any: PgServer) -> None:
    """PostgreSQL 18 reports search_path to the client (and so to the proxy): the plan is
    taken in the client's schema.  15 does not: the default ``"$user", public`` is used."""
    pg = pg_any
    _admin(
        pg,
        """
        DROP SCHEMA IF EXISTS insp_sp CASCADE;
        CREATE SCHEMA insp_sp;
        CREATE TABLE insp_sp.only_here (id int PRIMARY KEY);
        GRANT USAGE ON SCHEMA insp_sp TO app;
        GRANT SELECT ON insp_sp.only_here TO app;
        """,
    )
    proxy = _start(pg)
    try:
        with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
            conn.execute("SET search_path = insp_sp, public")
            for _ in range(3):
                conn.execute("SELECT id FROM only_here WHERE id = 1")
                time.sleep(0.4)
            fp = _fingerprint_of(proxy, "FROM only_here")
            if pg.version >= 18:
                _wait(lambda: _row(proxy, fp)["plan"], 10, "a plan in the client's schema")
                assert _row(proxy, fp)["plan"]["summary"] == (
                    "Index Only Scan using only_here_pkey on only_here"
                )
            else:
                jobs = _wait(
                    lambda: proxy.call(
                        lambda: dict(proxy.app.inspector.counts.jobs)  # type: ignore[union-attr]
                    ).get(("plan", "failed")),
                    10,
                    "the plan to fail (relation not found in the default search_path)",
                )
                assert jobs >= 1 and _row(proxy, fp)["plan"] is None
    finally:
        proxy.stop()


def test_unreachable_side_connection_is_counted_never_seen_by_clients(
    pg_server: PgServer,
) -> None:
    from dbproxy.pgcluster import free_port

    dead = f"postgresql://dbproxy_inspect@127.0.0.1:{free_port()}/postgres"
    proxy = _start(pg_server, inspect_dsn=dead, explain_slow_ms=0.0, sample_analyze=1.0)
    try:
        with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
            for i in range(5):
                assert conn.execute("SELECT %s::int + 1", (i,)).fetchone() == (i + 1,)
                time.sleep(0.2)
        proxy.drain_now()
        failed = _wait(
            lambda: proxy.call(
                lambda: dict(proxy.app.inspector.counts.jobs)  # type: ignore[union-attr]
            ).get(("plan", "failed")),
            15,
            "failed plan jobs to be counted",
        )
        assert failed >= 1
        metrics = urllib.request.urlopen(proxy.http_url + "/metrics", timeout=10).read().decode()
        assert 'dbproxy_inspect_jobs_total{job="plan",outcome="failed"}' in metrics
    finally:
        proxy.stop()


def test_a_failed_plan_leaves_the_side_connection_usable(pg_any: PgServer) -> None:
    """PostgreSQL 15's path PREPAREs: a failed EXPLAIN must not leave the statement behind."""
    import asyncio

    from dbproxy.inspect.side import SidePools

    pg = pg_any
    _workload_tables(pg, "insp_fail")

    async def run() -> list[str]:
        pools = SidePools(_inspect_dsn(pg), max_size=1)
        outcomes: list[str] = []
        try:
            for _ in range(3):  # the role may not UPDATE: EXPLAIN fails (privileges)
                for text, params in (
                    ("UPDATE insp_fail SET grp = $1 WHERE id = $2", 2),
                    ("SELECT id, grp FROM insp_fail WHERE id = $1", 1),
                ):
                    try:
                        plan, _ = await pools.generic_plan(pg.database, "public", text, params)
                        outcomes.append(plan[0]["Plan"]["Node Type"])
                    except Exception as exc:
                        outcomes.append(type(exc).__name__)
        finally:
            await pools.close()
        return outcomes

    outcomes = asyncio.run(run())
    assert outcomes == ["InsufficientPrivilegeError", "Index Scan"] * 3, outcomes
