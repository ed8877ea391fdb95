"""Proxy instructions per pgbench transaction, counted by callgrind: a figure that does not
drift with the load of a shared machine (valgrind counts instructions, not seconds).

    .venv/bin/python -m benchmarks.instructions                    # relay and dbproxy, 3 modes
    .venv/bin/python -m benchmarks.instructions --targets dbproxy --modes simple -t 3000

Each target (``relay``: ``shared/bench/relay.py``; ``dbproxy``: ``dbproxy run`` in its
default configuration with tracing configured, as ``benchmarks.perf`` runs it;
``dbproxy_bare``: without tracing) runs under ``valgrind --tool=callgrind`` in front of a throwaway
PostgreSQL 15 (``shared/bench/pgenv.sh``).  pgbench warms it up (``-c 1 -t 300``), the
counters are zeroed (``callgrind_control -z``), ``pgbench -b select-only -M MODE -c 1 -t N``
runs, and the counters are dumped: everything the proxy process executed (event loop,
syscalls' user side, relaying, observing, the periodic drain into the statistics) divided
by N.  Wall-clock TPS still needs ``benchmarks.perf`` on a quiet machine; this is the
figure to compare code changes by.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.callgrind import total_of
from benchmarks.perf import ROOT, clean_env
from benchmarks.tracing_e2e import port_free, wait_listening

BENCH = ROOT.parent / "shared" / "bench"


def _pgbench(port: int, mode: str, tx: int) -> None:
    subprocess.run(
        ["pgbench", "-n", "-b", "select-only", "-M", mode, "-c", "1", "-t", str(tx),
         "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "postgres"],
        check=True, capture_output=True, timeout=900, env=clean_env(),
    )  # fmt: skip


def _dump_total(pid: int, out: Path) -> int:
    before = set(out.parent.glob(out.name + "*"))
    subprocess.run(["callgrind_control", "-d", str(pid)], check=True, capture_output=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        fresh = set(out.parent.glob(out.name + "*")) - before
        for path in fresh:
            total = total_of(path.read_bytes())
            if total is not None:
                return total
        time.sleep(0.5)
    raise SystemExit("callgrind did not write a dump")


def measure(target: str, pg_port: int, mode: str, tx: int, work: Path) -> float:
    port = pg_port + 1
    out = work / f"{target}-{mode}.cg"
    if target == "relay":
        cmd = [sys.executable, str(BENCH / "relay.py"), "--listen", f"127.0.0.1:{port}",
               "--upstream", f"127.0.0.1:{pg_port}", "--max-seconds", "1800"]  # fmt: skip
    else:
        dbproxy = str(Path(sys.executable).with_name("dbproxy"))
        cmd = [dbproxy, "run", "--listen", f"127.0.0.1:{port}", "--upstream",
               f"127.0.0.1:{pg_port}", "--http-listen", f"127.0.0.1:{port + 100}"]  # fmt: skip
        if target == "dbproxy":
            # benchmarks.perf's default configuration: tracing configured (nothing is
            # sampled, so nothing is sent: no receiver needed), untraced statements unsampled
            cmd += ["--otlp-endpoint", f"http://127.0.0.1:{port + 200}/v1/traces"]
    proc = subprocess.Popen(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *cmd],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT,
        env={**clean_env(), "PYTHONHASHSEED": "0"},  # string hashing seeded: see callgrind.py
    )  # fmt: skip
    try:
        wait_listening(port, proc, 600)
        _pgbench(port, mode, 300)
        time.sleep(2)  # the drain (every 0.1 s) analyzes the warm-up's statements first
        subprocess.run(["callgrind_control", "-z", str(proc.pid)], check=True, capture_output=True)
        _pgbench(port, mode, tx)
        total = _dump_total(proc.pid, out)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=300)
        except subprocess.TimeoutExpired:
            proc.kill()
    return total / tx


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", default="relay dbproxy")
    parser.add_argument("--modes", default="extended prepared simple")
    parser.add_argument("-t", "--transactions", type=int, default=2000)
    parser.add_argument("--base-port", type=int, default=47800)
    parser.add_argument(
        "--keep", metavar="DIR", help="keep the callgrind dumps here (for callgrind_annotate)"
    )
    args = parser.parse_args(argv)
    for tool in ("valgrind", "callgrind_control", "pgbench"):
        if shutil.which(tool) is None:
            raise SystemExit(f"instructions: {tool} is not installed")
    pg_port = args.base_port
    if not all(port_free(p) for p in (pg_port, pg_port + 1, pg_port + 101)):
        raise SystemExit(f"instructions: ports near {pg_port} are busy; pick --base-port")
    env = clean_env()
    print(subprocess.run([str(BENCH / "pgenv.sh"), "start", str(pg_port)], env=env,
                         capture_output=True, text=True, check=True).stdout.strip())  # fmt: skip
    try:
        subprocess.run(
            ["pgbench", "-i", "-q", "-s", "1", "-h", "127.0.0.1", "-p", str(pg_port),
             "-U", "postgres", "postgres"],
            check=True, capture_output=True, env=env,
        )  # fmt: skip
        rows: list[tuple[str, str, float]] = []
        with tempfile.TemporaryDirectory(prefix="dbproxy-instr-") as tmp:
            work = Path(args.keep or tmp)
            work.mkdir(parents=True, exist_ok=True)
            for mode in args.modes.split():
                for target in args.targets.split():
                    per_tx = measure(target, pg_port, mode, args.transactions, work)
                    rows.append((target, mode, per_tx))
                    print(f"{target:8s} -M {mode:9s} {per_tx:10,.0f} instructions/tx", flush=True)
        print(f"\n| target | mode | instructions per transaction (pgbench -c 1 -t "
              f"{args.transactions}, callgrind) |\n|---|---|---:|")  # fmt: skip
        for target, mode, per_tx in rows:
            print(f"| {target} | {mode} | {per_tx:,.0f} |")
    finally:
        subprocess.run([str(BENCH / "pgenv.sh"), "stop", str(pg_port)], env=env,
                       capture_output=True, check=False)  # fmt: skip
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
