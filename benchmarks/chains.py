"""TPS of dbproxy chained with PgBouncer (transaction mode) against PgBouncer alone.

    uv run --frozen --no-sync python -m benchmarks.chains [SECONDS] [ROUNDS]

``pgbench -M extended -c 8 -j 2 -T SECONDS`` (TPC-B, scale 1) against a throwaway
PostgreSQL through: PgBouncer alone; app → dbproxy → PgBouncer; app → PgBouncer →
dbproxy (a ``dbproxy run`` process, default settings).  Targets rotate per round; the
median TPS per target is printed with the failed-transaction count (must be 0).  Numbers
from a shared machine are indicative only.
"""

from __future__ import annotations

import dataclasses
import re
import statistics
import subprocess
import sys
from contextlib import ExitStack

import psycopg

from benchmarks.workers import start_dbproxy
from dbproxy.pgcluster import PgServer, acquire_server
from tests.fixtures.pgbouncer import PgBouncer

DB = "chain_bench"


def _pgbench(pg: PgServer, port: int, seconds: int) -> tuple[float, int]:
    env = pg.env(dbname=DB)
    env.update(PGHOST="127.0.0.1", PGPORT=str(port))
    out = subprocess.run(
        [pg.tool("pgbench"), "-n", "-M", "extended", "-c", "8", "-j", "2", "-T", str(seconds)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    tps = re.search(r"tps = ([\d.]+)", out)
    failed = re.search(r"number of failed transactions: (\d+)", out)
    assert tps and failed, out
    return float(tps.group(1)), int(failed.group(1))


def main() -> None:
    seconds = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    with acquire_server() as pg, ExitStack() as stack:
        with psycopg.connect(pg.admin_dsn(), autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {DB}")
            conn.execute(f"CREATE DATABASE {DB} OWNER {pg.app_user}")
        subprocess.run(
            [pg.tool("pgbench"), "-i", "-s", "1", "-q"],
            env=pg.env(dbname=DB),
            check=True,
            capture_output=True,
        )
        users = {pg.app_user: pg.app_password}
        alone = stack.enter_context(PgBouncer(pg.host, pg.port, users))
        front_proc, front_port, _ = start_dbproxy(dataclasses.replace(pg, port=alone.port))
        stack.callback(front_proc.terminate)
        back_proc, back_port, _ = start_dbproxy(pg)
        stack.callback(back_proc.terminate)
        behind = stack.enter_context(PgBouncer("127.0.0.1", back_port, users))
        targets = {
            "pgbouncer": alone.port,
            "dbproxy->pgbouncer": front_port,
            "pgbouncer->dbproxy": behind.port,
        }
        results: dict[str, list[tuple[float, int]]] = {name: [] for name in targets}
        names = list(targets)
        for r in range(rounds):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                results[name].append(_pgbench(pg, targets[name], seconds))
        base = statistics.median(t for t, _ in results["pgbouncer"])
        print(f"pgbench -M extended -c 8 -j 2 -T {seconds}, {rounds} round(s), PG {pg.version}")
        for name, runs in results.items():
            tps = statistics.median(t for t, _ in runs)
            failed = sum(f for _, f in runs)
            print(f"{name:20s} {tps:9.1f} tps  {tps / base:6.1%} of PgBouncer  failed={failed}")


if __name__ == "__main__":
    main()
