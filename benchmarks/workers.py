"""``dbproxy run --workers N``: pgbench throughput per worker count, interleaved.

    python -m benchmarks.workers                       # --workers 1 vs 2, 2 rounds of 10 s
    python -m benchmarks.workers --workers "1 2 4" --rounds 3 --duration 15 --clients 32

A throwaway PostgreSQL (``pgcluster.acquire_server``: the embedded wheel, or
``--source local`` for Debian's), pgbench tables at scale 1, then for each round and
each worker count: a fresh ``dbproxy run --workers N`` in its default configuration,
``pgbench -S -M <mode> -c C -j 2 -T D`` through it, TPS, and the proxy's CPU per
transaction (user + system time of worker 0 and its workers, from /proc).  Prints a
Markdown table with the ratio to ``--workers 1`` (median over rounds).

PostgreSQL, pgbench and the proxy share the machine's cores: on a 2-core machine a
second worker competes with them, so the ratio says little about a bigger host.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import cast

from dbproxy.pgcluster import PgServer, Source, acquire_server, free_port

_TICKS = os.sysconf("SC_CLK_TCK")


def _tree_cpu_s(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its live children."""
    total = 0.0
    pids = [pid]
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rpartition(")")[2].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                pids.append(int(entry))
    for p in pids:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / _TICKS
    return total


def start_dbproxy(pg: PgServer, workers: int = 1) -> tuple[subprocess.Popen[bytes], int, int]:
    """``dbproxy run`` in its default configuration (no DBPROXY_*/OTEL_* from the
    environment) in front of ``pg``, once every worker answers: (process, port, HTTP port)."""
    port, http_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DBPROXY_", "OTEL_"))}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dbproxy",
            "run",
            "--workers",
            str(workers),
            "--listen",
            f"127.0.0.1:{port}",
            "--upstream",
            f"{pg.host}:{pg.port}",
            "--http-listen",
            f"127.0.0.1:{http_port}",
            "--log-level",
            "warning",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=2) as r:
                text = r.read().decode()
            if workers == 1 or f"dbproxy_workers {float(workers)}" in text:
                # every worker answered: each one listens (it serves its channel after that)
                return proc, port, http_port
        except OSError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"dbproxy --workers {workers} did not start")


def _pgbench(pg: PgServer, port: int, args: list[str]) -> float:
    env = pg.env(base=os.environ)
    env["PGPORT"] = str(port)
    done = subprocess.run(
        [pg.tool("pgbench"), *args], env=env, capture_output=True, text=True, check=True
    )
    match = re.search(r"^tps = ([\d.]+)", done.stdout, re.M)
    if not match:
        raise SystemExit(f"no tps in pgbench output:\n{done.stdout}\n{done.stderr}")
    return float(match.group(1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--workers", default="1 2", help="worker counts to compare")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--duration", type=int, default=10, help="seconds per pgbench run")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--mode", default="extended", choices=["simple", "extended", "prepared"])
    parser.add_argument("--source", default=None, help="PostgreSQL source (embedded, local)")
    args = parser.parse_args(argv)
    counts = [int(n) for n in args.workers.split()]
    bench = ["-n", "-S", "-M", args.mode, "-c", str(args.clients), "-j", "2"]
    bench += ["-T", str(args.duration)]
    results: dict[int, list[tuple[float, float]]] = {n: [] for n in counts}
    with acquire_server(source=cast(Source | None, args.source)) as pg:
        env = pg.env(base=os.environ)
        subprocess.run(
            [pg.tool("pgbench"), "-i", "-q", "-s", "1"], env=env, check=True, capture_output=True
        )
        for round_no in range(1, args.rounds + 1):
            for n in counts:
                proc, port, _ = start_dbproxy(pg, n)
                try:
                    cpu0 = _tree_cpu_s(proc.pid)
                    tps = _pgbench(pg, port, bench)
                    cpu = _tree_cpu_s(proc.pid) - cpu0
                finally:
                    proc.send_signal(signal.SIGTERM)
                    proc.wait(60)
                us_per_tx = cpu / (tps * args.duration) * 1e6
                results[n].append((tps, us_per_tx))
                print(
                    f"round {round_no} --workers {n}: {tps:,.0f} TPS, {us_per_tx:.1f} µs CPU/tx",
                    file=sys.stderr,
                )
    base = statistics.median(t for t, _ in results[counts[0]])
    print(f"pgbench {' '.join(bench)}; {args.rounds} rounds, interleaved; median per count")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {platform.platform()}")
    print()
    print(f"| workers | TPS | ratio to --workers {counts[0]} | proxy CPU µs/tx |")
    print("|---|---|---|---|")
    for n in counts:
        tps = statistics.median(t for t, _ in results[n])
        cpu = statistics.median(c for _, c in results[n])
        print(f"| {n} | {tps:,.0f} | {tps / base:.2f} | {cpu:.1f} |")
    print()
    for n in counts[1:]:
        # runs next to each other in a round saw the same background load
        ratios = [a[0] / b[0] for a, b in zip(results[n], results[counts[0]], strict=True)]
        shown = ", ".join(f"{r:.2f}" for r in ratios)
        print(f"--workers {n} / --workers {counts[0]} per round: {shown}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
