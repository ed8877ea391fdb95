"""What the inspector costs on pgbench TPS: dbproxy without it, with a side connection
(plans, pg_stat_statements, slow samples), with and without the activity sampler
(pg_stat_activity once a second: database load, blocking), and with
``--sample-analyze 0.01`` on top (``--only NAME`` keeps dbproxy and NAME).

    uv run --frozen --no-sync python -m benchmarks.inspect_overhead --rounds 2 --duration 10

Starts a throwaway PostgreSQL (the embedded wheel, pg_stat_statements loaded), a
non-superuser inspect role, and one ``dbproxy run`` process per configuration; then runs
pgbench (select-only, simple protocol: literals the sampler re-binds) against each, the
order rotated per round.  The machine is shared and noisy: compare within one run only.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time
import urllib.request

import psycopg

from dbproxy.pgcluster import PgServer, acquire_server, free_port

CONFIGS: dict[str, list[str]] = {
    "dbproxy": [],
    "inspect, no activity": ["--explain-slow-ms", "off", "--sample-activity-interval", "off"],
    "inspect": ["--explain-slow-ms", "off"],
    "inspect+sample 0.01": ["--explain-slow-ms", "off", "--sample-analyze", "0.01"],
}


def _pgbench(pg: PgServer, env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [pg.tool("pgbench"), *args], env=env, capture_output=True, text=True, check=False
    )
    if done.returncode:
        sys.exit(f"pgbench failed: {done.stderr}")
    return done.stdout


def _start(pg: PgServer, name: str, inspect_dsn: str) -> tuple[subprocess.Popen[bytes], int, int]:
    port, http = free_port(), free_port()
    env = dict(os.environ)
    if name != "dbproxy":
        env["DBPROXY_INSPECT_DSN"] = inspect_dsn
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "dbproxy", "run",
            "--listen", f"127.0.0.1:{port}", "--upstream", f"{pg.host}:{pg.port}",
            "--http-listen", f"127.0.0.1:{http}", "--log-level", "warning",
            *CONFIGS[name],
        ],
        env=env,
    )  # fmt: skip
    deadline = time.monotonic() + 20
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{http}/healthz", timeout=1).read()
            return proc, port, http
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                sys.exit(f"{name}: dbproxy did not start")
            time.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--only", action="append", choices=list(CONFIGS), help="repeatable")
    args = parser.parse_args()
    for name in list(CONFIGS):
        if args.only and name not in args.only and name != "dbproxy":
            del CONFIGS[name]
    with acquire_server(source="embedded") as pg:
        with psycopg.connect(pg.admin_dsn(dbname=pg.database), autocommit=True) as conn:
            conn.execute("CREATE ROLE dbproxy_inspect LOGIN PASSWORD 'bench-inspect-pw'")
            conn.execute("GRANT pg_read_all_stats, pg_read_all_data TO dbproxy_inspect")
        inspect_dsn = pg.dsn(user="dbproxy_inspect", password="bench-inspect-pw")
        _pgbench(pg, pg.env(base=os.environ), "-i", "-q", "-s", "10")
        procs = {name: _start(pg, name, inspect_dsn) for name in CONFIGS}
        tps: dict[str, list[float]] = {name: [] for name in CONFIGS}
        try:
            names = list(CONFIGS)
            for r in range(args.rounds):
                order = names[r % len(names) :] + names[: r % len(names)]
                for name in order:
                    env = pg.env(base=os.environ)
                    env["PGPORT"] = str(procs[name][1])
                    env["PGHOST"] = "127.0.0.1"
                    out = _pgbench(
                        pg, env, "-n", "-S", "-M", "simple", "-c", str(args.clients),
                        "-j", "2", "-T", str(args.duration),
                    )  # fmt: skip
                    match = re.search(r"tps = ([\d.]+)", out)
                    assert match, out
                    tps[name].append(float(match.group(1)))
                    print(f"round {r + 1} {name:22s} {float(match.group(1)):9.1f} tps", flush=True)
            for name, (_, _, http) in procs.items():
                if name == "dbproxy":
                    continue
                text = urllib.request.urlopen(f"http://127.0.0.1:{http}/metrics").read().decode()
                jobs = [
                    ln
                    for ln in text.splitlines()
                    if ln.startswith(("dbproxy_inspect_jobs", "dbproxy_activity_samples_total"))
                ]
                print(name, "jobs:", "; ".join(jobs))
        finally:
            for proc, _, _ in procs.values():
                proc.terminate()
                proc.wait(10)
        base = statistics.mean(tps["dbproxy"])
        print("\n| configuration | mean TPS | vs dbproxy |\n|---|---|---|")
        for name, values in tps.items():
            mean = statistics.mean(values)
            print(f"| {name} | {mean:.0f} ({', '.join(f'{v:.0f}' for v in values)}) | "
                  f"{mean / base:.3f} |")  # fmt: skip


if __name__ == "__main__":
    main()
