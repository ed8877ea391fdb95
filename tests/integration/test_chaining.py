"""dbproxy chained with PgBouncer (Debian's 1.18), both ways, under pgbench.

* app → dbproxy → PgBouncer (transaction or session mode) → PostgreSQL: the proxy sees
  every client connection as it is; counts per statement are exact.
* app → PgBouncer (transaction mode) → dbproxy → PostgreSQL: the proxy sees PgBouncer's
  few server connections, each carrying many clients' transactions; counts per statement
  are still exact, and per-client attribution comes from ``application_name`` (PgBouncer
  sets it on the server connection it lends, and the server reports it) and sqlcommenter
  tags, not from the connection.

``pgbench -M extended -c 8 -T 10``: 0 failed transactions through both transaction-mode
chains (the issue's acceptance).
"""

from __future__ import annotations

import json
import re
import subprocess
import urllib.request
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from dbproxy.config import Address
from dbproxy.pgcluster import PgServer
from dbproxy.protocol.events import SessionOpened
from dbproxy.sql.fingerprint import fingerprint
from tests.fixtures.fix_proxy import RunningProxy, start_proxy
from tests.fixtures.pgbouncer import PgBouncer
from tests.integration.test_metrics import TPCB

DB = "chain"


@pytest.fixture(scope="module")
def chain_db(pg_server: PgServer) -> Iterator[PgServer]:
    """A database of its own with pgbench's tables, owned by ``app``."""
    with psycopg.connect(pg_server.admin_dsn(), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {DB}")
        conn.execute(f"CREATE DATABASE {DB} OWNER {pg_server.app_user}")
    subprocess.run(
        [pg_server.tool("pgbench"), "-i", "-s", "1", "-q"],
        env=pg_server.env(dbname=DB),
        check=True,
        capture_output=True,
    )
    yield pg_server
    with psycopg.connect(pg_server.admin_dsn(), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")


def _bouncer(pg: PgServer, host: str, port: int, **kwargs: Any) -> PgBouncer:
    return PgBouncer(host, port, {pg.app_user: pg.app_password}, **kwargs)


def pgbench(pg: PgServer, host: str, port: int, seconds: int) -> tuple[int, float]:
    """``pgbench -M extended -c 8 -T seconds``: (transactions processed, tps); asserts
    that none failed."""
    env = pg.env(dbname=DB)
    env.update(PGHOST=host, PGPORT=str(port))
    result = subprocess.run(
        [pg.tool("pgbench"), "-n", "-M", "extended", "-c", "8", "-j", "2", "-T", str(seconds)],
        env=env,
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    processed = re.search(r"actually processed: (\d+)", result.stdout)
    failed = re.search(r"number of failed transactions: (\d+)", result.stdout)
    tps = re.search(r"tps = ([\d.]+)", result.stdout)
    assert processed and failed and tps, result.stdout
    assert int(failed.group(1)) == 0, result.stdout
    assert int(processed.group(1)) > 50, result.stdout
    return int(processed.group(1)), float(tps.group(1))


def _row(proxy: RunningProxy, sql: str) -> dict[str, Any]:
    proxy.drain_now()
    url = f"{proxy.http_url}/api/queries/{fingerprint(sql).id}"
    with urllib.request.urlopen(url, timeout=10) as resp:
        rows: list[dict[str, Any]] = json.loads(resp.read())["queries"]
    assert len(rows) == 1, rows
    return rows[0]


def _assert_tpcb_counts(proxy: RunningProxy, processed: int) -> None:
    for name, sql in TPCB.items():
        row = _row(proxy, sql)
        assert row["calls"] == processed, f"{name}: {row['calls']} calls for {processed}"
        assert row["error_count"] == 0
        if name.startswith(("UPDATE", "SELECT", "INSERT")):
            assert row["rows"] == processed, name


def _sessions(proxy: RunningProxy) -> list[SessionOpened]:
    return [e for e in proxy.collect() if isinstance(e, SessionOpened)]


@pytest.mark.parametrize(("pool_mode", "seconds"), [("transaction", 10), ("session", 3)])
def test_dbproxy_in_front_of_pgbouncer(chain_db: PgServer, pool_mode: str, seconds: int) -> None:
    pg = chain_db
    with _bouncer(pg, pg.host, pg.port, pool_mode=pool_mode) as bouncer:
        proxy = start_proxy(pg, upstream=Address(bouncer.host, bouncer.port))
        try:
            processed, _tps = pgbench(pg, proxy.host, proxy.port, seconds)
            proxy.wait_closed(9)  # 8 clients and pgbench's setup connection
            _assert_tpcb_counts(proxy, processed)
            # the proxy is in front: it sees each client connection, one session each
            assert len(_sessions(proxy)) == 9
            assert proxy.app.proxy.stats.observer_errors == 0
        finally:
            proxy.stop()


def test_pgbouncer_in_front_of_dbproxy(chain_db: PgServer) -> None:
    pg = chain_db
    proxy = start_proxy(pg)
    try:
        with _bouncer(pg, proxy.host, proxy.port, pool_size=4) as bouncer:
            processed, _tps = pgbench(pg, bouncer.host, bouncer.port, 10)
            _assert_tpcb_counts(proxy, processed)
            # behind PgBouncer the proxy sees its pooled server connections only
            sessions = _sessions(proxy)
            assert 1 <= len(sessions) <= 4, sessions
            assert {s.database for s in sessions} == {DB}

            # attribution per client: application_name and sqlcommenter, not the connection
            probe = "SELECT count(*) FROM pgbench_branches WHERE bid > %s"
            tagged = "SELECT count(*) FROM pgbench_tellers WHERE tid > %s /*route='%%2Forders'*/"
            clients = {
                name: psycopg.connect(
                    pg.dsn(host=bouncer.host, port=bouncer.port, dbname=DB),
                    application_name=name,
                    autocommit=True,
                    prepare_threshold=None,  # no named statements through transaction mode
                )
                for name in ("svc-a", "svc-b")
            }
            try:
                for i in range(8):
                    name = "svc-a" if i % 4 else "svc-b"  # 6 and 2, interleaved
                    clients[name].execute(probe, (i,))
                for _ in range(3):
                    clients["svc-b"].execute(tagged, (0,))
            finally:
                for conn in clients.values():
                    conn.close()
            row = _row(proxy, "SELECT count(*) FROM pgbench_branches WHERE bid > $1")
            apps = {a["value"]: a["calls"] for a in row["applications"]}
            assert apps == {"svc-a": 6, "svc-b": 2}
            row = _row(proxy, "SELECT count(*) FROM pgbench_tellers WHERE tid > $1")
            assert row["calls"] == 3
            assert {a["value"]: a["calls"] for a in row["tags"]["route"]} == {"/orders": 3}
            assert len(_sessions(proxy)) <= 4
        assert proxy.app.proxy.stats.observer_errors == 0
    finally:
        proxy.stop()


def test_protocol_32_through_pgbouncer_118_gets_its_own_refusal(chain_db: PgServer) -> None:
    # PgBouncer 1.18 predates protocol 3.2: the client sees PgBouncer's error, as directly
    pg = chain_db
    params = {"max_protocol_version": "3.2", "sslmode": "disable"}
    with _bouncer(pg, pg.host, pg.port) as bouncer:
        proxy = start_proxy(pg, upstream=Address(bouncer.host, bouncer.port))
        try:
            errors = []
            for host, port in ((bouncer.host, bouncer.port), (proxy.host, proxy.port)):
                with pytest.raises(psycopg.OperationalError) as caught:
                    psycopg.connect(pg.dsn(host=host, port=port, dbname=DB, params=params))
                errors.append(str(caught.value).rsplit("failed: ", 1)[-1])
            assert errors[0] == errors[1]
            assert "bad packet header" in errors[0]
            # libpq's default (3.0) goes through the same chain
            with psycopg.connect(proxy.dsn(dbname=DB)) as conn:
                assert conn.execute("SELECT 1").fetchone() == (1,)
        finally:
            proxy.stop()
