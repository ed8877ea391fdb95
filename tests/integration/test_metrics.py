"""Per-fingerprint statistics through a real scrape of /metrics and the JSON API.

Everything runs through the real proxy (the whole App: sink → aggregator → collector →
HTTP server) against the real server, with real clients.
"""

from __future__ import annotations

import json
import re
import subprocess
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import Iterator

import asyncpg
import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from dbproxy.pgcluster import PgServer
from dbproxy.sql.fingerprint import fingerprint
from tests.fixtures.fix_proxy import RunningProxy, start_proxy

TOKEN = "test-token-0123456789abcdef"


def scrape(proxy: RunningProxy, accept: str | None = None) -> str:
    proxy.drain_now()
    request = urllib.request.Request(f"{proxy.http_url}/metrics")
    if accept:
        request.add_header("Accept", accept)
    with urllib.request.urlopen(request, timeout=10) as response:
        body: str = response.read().decode()
    return body


def api(proxy: RunningProxy, path: str, method: str = "GET", token: str | None = None) -> object:
    proxy.drain_now()
    request = urllib.request.Request(f"{proxy.http_url}{path}", method=method)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


Samples = dict[str, list[tuple[dict[str, str], float]]]


def samples(text: str) -> Samples:
    out: Samples = defaultdict(list)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[sample.name].append((dict(sample.labels), sample.value))
    return out


def value_for(s: Samples, name: str, **labels: str) -> float:
    total = 0.0
    for got, value in s.get(name, []):
        if all(got.get(k) == v for k, v in labels.items()):
            total += value
    return total


@pytest.fixture
def metrics_proxy(pg_server: PgServer) -> Iterator[RunningProxy]:
    running = start_proxy(pg_server, api_token=TOKEN)
    try:
        yield running
    finally:
        running.stop()


# --- pgbench: counts per statement equal the transactions pgbench reports ----------------
TPCB = {
    "BEGIN": "BEGIN",
    "UPDATE_ACCOUNTS": "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = 1",
    "SELECT": "SELECT abalance FROM pgbench_accounts WHERE aid = 1",
    "UPDATE_TELLERS": "UPDATE pgbench_tellers SET tbalance = tbalance + 1 WHERE tid = 1",
    "UPDATE_BRANCHES": "UPDATE pgbench_branches SET bbalance = bbalance + 1 WHERE bid = 1",
    "INSERT": "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) "
    "VALUES (1, 1, 1, 1, CURRENT_TIMESTAMP)",
    "END": "END",
}


def _pgbench(pg: PgServer, proxy: RunningProxy, *args: str, timeout: float = 60) -> str:
    result = subprocess.run(
        [pg.tool("pgbench"), *args],
        env=proxy.env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture(scope="module")
def pgbench_schema(pg_server: PgServer) -> Iterator[str]:
    env = pg_server.env()
    env["PGOPTIONS"] = "-c search_path=bench_metrics"
    subprocess.run(
        [pg_server.tool("psql"), "-q", "-c", "create schema if not exists bench_metrics"],
        env=pg_server.env(),
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [pg_server.tool("pgbench"), "-i", "-s", "1", "-q"],
        env=env,
        check=True,
        capture_output=True,
    )
    yield "bench_metrics"
    subprocess.run(
        [pg_server.tool("psql"), "-q", "-c", "drop schema bench_metrics cascade"],
        env=pg_server.env(),
        check=True,
        capture_output=True,
    )


@pytest.mark.parametrize(("mode", "seconds"), [("extended", 10), ("simple", 5), ("prepared", 5)])
def test_pgbench_counts_per_statement_equal_transactions(
    metrics_proxy: RunningProxy, pg_server: PgServer, pgbench_schema: str, mode: str, seconds: int
) -> None:
    proxy = metrics_proxy
    env_options = {"PGOPTIONS": f"-c search_path={pgbench_schema}"}
    result = subprocess.run(
        [pg_server.tool("pgbench"), "-n", "-M", mode, "-c", "8", "-T", str(seconds)],
        env={**proxy.env(), **env_options},
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    processed = int(re.search(r"actually processed: (\d+)", result.stdout).group(1))  # type: ignore[union-attr]
    failed = int(re.search(r"number of failed transactions: (\d+)", result.stdout).group(1))  # type: ignore[union-attr]
    assert failed == 0 and processed > 100
    proxy.wait_closed(9)  # 8 clients + pgbench's own setup connection

    s = samples(scrape(proxy))
    db, user = pg_server.database, pg_server.app_user
    for name, sql in TPCB.items():
        fp = fingerprint(sql).id
        count = value_for(s, "dbproxy_query_duration_seconds_count", fingerprint=fp, database=db)
        assert count == processed, f"{name} ({fp}): {count} calls, pgbench says {processed}"
        if name.startswith(("UPDATE", "SELECT", "INSERT")):
            rows = value_for(s, "dbproxy_query_rows_total", fingerprint=fp, user=user)
            assert rows == processed, f"{name}: {rows} rows for {processed} transactions"
    assert value_for(s, "dbproxy_events_dropped_total") == 0
    assert value_for(s, "dbproxy_query_errors_total") == 0
    # the histogram's +Inf bucket equals its count
    fp = fingerprint(TPCB["SELECT"]).id
    inf = value_for(s, "dbproxy_query_duration_seconds_bucket", fingerprint=fp, le="+Inf")
    assert inf == processed
    commits = value_for(s, "dbproxy_transactions_total", outcome="commit", database=db)
    assert commits == processed

    # the API agrees with the scrape
    detail = api(proxy, f"/api/queries/{fingerprint(TPCB['SELECT']).id}")
    assert isinstance(detail, dict)
    assert sum(r["calls"] for r in detail["queries"]) == processed
    assert sum(r["rows"] for r in detail["queries"]) == processed
    listing = api(proxy, "/api/queries?sort=calls&limit=7")
    assert isinstance(listing, dict)
    by_fp = {r["fingerprint"]: r for r in listing["queries"]}
    for sql in TPCB.values():
        assert by_fp[fingerprint(sql).id]["calls"] == processed


def test_tiny_sink_counts_drops_and_clients_are_unaffected(pg_server: PgServer) -> None:
    proxy = start_proxy(pg_server, sink_capacity=3)
    try:
        with psycopg.connect(proxy.dsn(), sslmode="disable", autocommit=True) as conn:
            for i in range(3000):  # far more than 3 statements per drain interval
                assert conn.execute("select %s::int", (i,)).fetchone() == (i,)
        s = samples(scrape(proxy))
        dropped = value_for(s, "dbproxy_events_dropped_total")
        assert dropped > 0
        assert dropped == proxy.sink.dropped
        # what was not dropped was counted, and nothing more
        fp = fingerprint("select $1::int").id
        counted = value_for(s, "dbproxy_query_duration_seconds_count", fingerprint=fp)
        assert 0 < counted < 3000
    finally:
        proxy.stop()


# --- known workloads: calls, rows and errors by SQLSTATE ---------------------------------
def test_psycopg_workload_counts_by_sqlstate(metrics_proxy: RunningProxy) -> None:
    proxy = metrics_proxy
    with psycopg.connect(proxy.dsn(), sslmode="disable", autocommit=True) as conn:
        conn.execute("drop table if exists m_items")
        conn.execute("create table m_items (id int primary key, name text)")
        for i in range(20):
            conn.execute("insert into m_items values (%s, %s)", (i, f"n{i}"))
        for i in range(5):  # 5 unique violations
            with pytest.raises(psycopg.errors.UniqueViolation):
                conn.execute("insert into m_items values (%s, %s)", (i, "dup"))
        for _ in range(3):  # 3 divisions by zero
            with pytest.raises(psycopg.errors.DivisionByZero):
                conn.execute("select 1 / (id - id) from m_items where id = %s", (1,))
        for _ in range(2):  # 2 syntax errors
            with pytest.raises(psycopg.errors.SyntaxError):
                conn.execute("selec 1")
        conn.execute("set statement_timeout = '100ms'")
        with pytest.raises(psycopg.errors.QueryCanceled):
            conn.execute("select pg_sleep(2)")
        conn.execute("reset statement_timeout")
        rows = conn.execute("select * from m_items where id < %s", (7,)).fetchall()
        assert len(rows) == 7
    proxy.wait_closed()
    s = samples(scrape(proxy))

    insert = fingerprint("insert into m_items values ($1, $2)").id
    assert value_for(s, "dbproxy_query_duration_seconds_count", fingerprint=insert) == 25
    assert value_for(s, "dbproxy_query_rows_total", fingerprint=insert) == 20
    assert (
        value_for(
            s,
            "dbproxy_query_errors_total",
            fingerprint=insert,
            sqlstate="23505",
            error_class="integrity_constraint_violation",
        )
        == 5
    )
    div = fingerprint("select 1 / (id - id) from m_items where id = $1").id
    assert value_for(s, "dbproxy_query_errors_total", fingerprint=div, sqlstate="22012") == 3
    syntax = fingerprint("selec 1").id
    assert value_for(s, "dbproxy_query_errors_total", fingerprint=syntax, sqlstate="42601") == 2
    sleep = fingerprint("select pg_sleep(2)").id
    assert value_for(s, "dbproxy_query_errors_total", fingerprint=sleep, sqlstate="57014") == 1
    select = fingerprint("select * from m_items where id < $1").id
    assert value_for(s, "dbproxy_query_rows_total", fingerprint=select) == 7
    assert value_for(s, "dbproxy_query_errors_total") == 11
    # no literal from the workload leaks into any label
    text = scrape(proxy)
    assert "n19" not in text and "dup" not in text


def test_pipeline_error_is_attributed_and_skipped_are_not_successes(
    metrics_proxy: RunningProxy,
) -> None:
    proxy = metrics_proxy
    with psycopg.connect(proxy.dsn(), sslmode="disable") as conn:
        conn.execute("drop table if exists m_pipe")
        conn.execute("create table m_pipe (id int primary key)")
        conn.commit()
        with pytest.raises(psycopg.errors.UniqueViolation), conn.pipeline():
            conn.execute("insert into m_pipe values (%s)", (1,))
            conn.execute("insert into m_pipe values (%s)", (1,))
            conn.execute("select count(*) from m_pipe where id > %s", (0,))
        conn.rollback()
    proxy.wait_closed()
    s = samples(scrape(proxy))
    insert = fingerprint("insert into m_pipe values ($1)").id
    assert value_for(s, "dbproxy_query_duration_seconds_count", fingerprint=insert) == 2
    assert value_for(s, "dbproxy_query_errors_total", fingerprint=insert, sqlstate="23505") == 1
    skipped = fingerprint("select count(*) from m_pipe where id > $1").id
    assert value_for(s, "dbproxy_query_duration_seconds_count", fingerprint=skipped) == 0


async def test_asyncpg_in_lists_and_literals_are_one_fingerprint(
    metrics_proxy: RunningProxy,
) -> None:
    proxy = metrics_proxy
    conn = await asyncpg.connect(proxy.dsn(), ssl=False)
    try:
        for n in (1, 10, 1000):
            ids = ", ".join(str(i) for i in range(n))
            await conn.fetch(f"select g from generate_series(1, 5) g where g in ({ids})")
        for value in range(50):
            await conn.fetch(f"select g from generate_series(1, 5) g where g in ({value})")
    finally:
        await conn.close()
    await proxy.async_wait_closed()
    s = samples(scrape(proxy))
    fp = fingerprint("select g from generate_series(1, 5) g where g in (1)").id
    assert value_for(s, "dbproxy_query_duration_seconds_count", fingerprint=fp) == 53
    infos = [lab for lab, _ in s["dbproxy_query_info"] if "generate_series" in lab["query"]]
    assert [i["fingerprint"] for i in infos] == [fp]


async def test_cardinality_guard_keeps_scrape_bounded_and_sums_exact(pg_server: PgServer) -> None:
    proxy = start_proxy(pg_server, metrics_max_fingerprints=50)
    try:
        conn = await asyncpg.connect(proxy.dsn(), ssl=False)
        try:
            for i in range(10_000):
                await conn.execute(f"select 1 as c{i}")
        finally:
            await conn.close()
        await proxy.async_wait_closed()
        s = samples(scrape(proxy))
        counts = s["dbproxy_query_duration_seconds_count"]
        fingerprints = {labels["fingerprint"] for labels, _ in counts}
        assert "__other__" in fingerprints
        assert len(fingerprints) <= 51
        assert sum(value for _, value in counts) == 10_000
        # the API keeps them all (up to --max-fingerprints)
        listing = api(proxy, "/api/queries?limit=10000")
        assert isinstance(listing, dict)
        assert sum(r["calls"] for r in listing["queries"]) == 10_000
        assert not any(r["fingerprint"] == "__other__" for r in listing["queries"])
    finally:
        proxy.stop()


def test_promtool_accepts_the_scrape_and_openmetrics_is_negotiated(
    metrics_proxy: RunningProxy,
) -> None:
    proxy = metrics_proxy
    with psycopg.connect(proxy.dsn(), sslmode="disable", autocommit=True) as conn:
        conn.execute("select 1")
        with pytest.raises(psycopg.errors.DivisionByZero):
            conn.execute("select 1/0")
    proxy.wait_closed()
    text = scrape(proxy)
    check = subprocess.run(
        ["promtool", "check", "metrics"], input=text, capture_output=True, text=True, check=False
    )
    assert check.returncode == 0, check.stdout + check.stderr
    om = scrape(proxy, accept="application/openmetrics-text; version=1.0.0")
    assert om.rstrip().endswith("# EOF")


def test_reset_needs_the_token(metrics_proxy: RunningProxy) -> None:
    proxy = metrics_proxy
    with psycopg.connect(proxy.dsn(), sslmode="disable", autocommit=True) as conn:
        conn.execute("select 42")
    proxy.wait_closed()
    fp = fingerprint("select 42").id
    calls = "dbproxy_query_duration_seconds_count"
    assert value_for(samples(scrape(proxy)), calls, fingerprint=fp) == 1
    with pytest.raises(urllib.error.HTTPError) as info:
        api(proxy, "/api/reset", method="POST")
    assert info.value.code == 403
    api(proxy, "/api/reset", method="POST", token=TOKEN)
    assert value_for(samples(scrape(proxy)), calls, fingerprint=fp) == 0


def test_health_and_readiness(metrics_proxy: RunningProxy) -> None:
    with urllib.request.urlopen(f"{metrics_proxy.http_url}/healthz", timeout=5) as r:
        assert r.status == 200
    with urllib.request.urlopen(f"{metrics_proxy.http_url}/readyz", timeout=5) as r:
        assert r.status == 200
