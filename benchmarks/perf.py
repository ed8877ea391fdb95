"""The performance table: dbproxy's configurations against direct, PgBouncer, a bare relay
and pgpool-II, interleaved in one run (``./dev bench`` runs this).

    .venv/bin/python -m benchmarks.perf                  # the full table (~20 min)
    .venv/bin/python -m benchmarks.perf --quick          # select-only -M extended, -c 16
    .venv/bin/python -m benchmarks.perf --targets "direct pgb_session relay dbproxy" \\
        --cases "select:extended:16 select:simple:16 large:simple:1" --rounds 3

Targets (all on 127.0.0.1, started here, stopped on exit, bounded in time):

* ``direct``: a throwaway PostgreSQL 15 (``shared/bench/pgenv.sh``, fsync off);
* ``pgb_session``: PgBouncer in session mode (``shared/bench/pgbouncer.sh``);
* ``relay``: the bare uvloop byte relay (``shared/bench/relay.py``), the floor of a
  Python proxy;
* ``pgpool``: pgpool-II in raw mode (``shared/bench/pgpool.sh``; Debian ``pgpool2``);
* ``dbproxy``: ``dbproxy run`` in its default configuration (metrics and fingerprinting
  on, tracing configured with an OTLP endpoint but untraced statements not sampled);
* ``dbproxy_trace``: every statement traced (``--trace-untraced-ratio 1``) to a local
  OTLP/HTTP sink (``benchmarks.tracing_e2e --sink``);
* ``dbproxy_w2``: ``--workers 2`` (when this build has the option).

Each case (pgbench builtin script, protocol, clients, and the 100,000-row result) is
run against every target back to back, the order rotated per case and per round, by
``shared/bench/run.sh``, which records TPS, latency and the CPU of each process group
(the proxy's includes its worker processes).  Ratios are taken per round, then averaged
(min-max shown).  Proxy CPU per transaction = proxy cores * 1e6 / TPS.  The machine is
small and shared: compare ratios within one run, never absolute numbers across runs.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from benchmarks.tracing_e2e import Interrupted, _on_signal, port_free, wait_listening

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TARGETS = "direct pgb_session relay pgpool dbproxy dbproxy_trace dbproxy_w2"
DEFAULT_CASES = (
    "select:extended:16 select:extended:1 select:prepared:16 select:simple:16 "
    "tpcb:extended:16 large:simple:1"
)
QUICK_CASES = "select:extended:16"
LARGE_BYTES = 11_499_500  # server->client bytes of the large query (shared/bench/run.sh)


def bench_dir() -> Path:
    override = os.environ.get("DBPROXY_BENCH_DIR")
    candidates = [Path(override)] if override else []
    candidates += [ROOT.parent / "shared" / "bench", ROOT / "shared" / "bench"]
    for path in candidates:
        if (path / "run.sh").exists():
            return path
    sys.exit("perf: shared/bench not found; set DBPROXY_BENCH_DIR")


def ensure_debian_packages(targets: list[str]) -> None:
    need = []
    if not Path("/usr/lib/postgresql/15/bin/postgres").exists():
        need.append("postgresql-15")
    for target, binary, package in (
        ("pgb_session", "pgbouncer", "pgbouncer"),
        ("pgpool", "pgpool", "pgpool2"),
    ):
        installed = shutil.which(binary) or Path(f"/usr/sbin/{binary}").exists()
        if target in targets and not installed:
            need.append(package)
    if not need:
        return
    if os.geteuid() != 0:
        sys.exit(f"perf: please install {' '.join(need)} (apt-get install)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *need], check=True, env=env
    )
    # Debian starts what it installs; the benchmark starts its own.
    subprocess.run(["pkill", "-x", "pgpool"], check=False)
    subprocess.run(["pkill", "-x", "pgbouncer"], check=False)


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("DBPROXY_", "OTEL_"))}


@dataclass
class Stack:
    out: Path
    bench: Path
    base_port: int
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    logs: list[IO[bytes]] = field(default_factory=list)
    started: list[tuple[str, str]] = field(default_factory=list)  # (script, port) to stop

    @property
    def pg_port(self) -> int:
        return self.base_port

    def script(self, name: str, *args: str, timeout: float = 180) -> str:
        res = subprocess.run(
            [str(self.bench / name), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        return (res.stdout + res.stderr).strip()

    def spawn(self, name: str, cmd: list[str]) -> subprocess.Popen[bytes]:
        log = open(self.out / f"{name}.log", "wb")  # noqa: SIM115 (closed in stop)
        self.logs.append(log)
        env = clean_env() | {"PYTHONUNBUFFERED": "1"}
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        self.procs[name] = proc
        return proc

    def pid(self, target: str) -> str:
        if target == "direct":
            return ""
        if target == "pgb_session":
            return self.script("pgbouncer.sh", "pid", str(self.ports[target]))
        if target == "pgpool":
            return self.script("pgpool.sh", "pid", str(self.ports[target]))
        return str(self.procs[target].pid)

    def stop(self) -> None:
        for name, proc in list(self.procs.items()):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=40)
                except subprocess.TimeoutExpired:
                    print(f"# {name} did not stop on SIGTERM; killing it")
                    proc.kill()
                    proc.wait(timeout=5)
        for log in self.logs:
            log.close()
        for script, port in reversed(self.started):
            self.script(script, "stop", port)


def has_workers_option() -> bool:
    dbproxy = str(Path(sys.executable).with_name("dbproxy"))
    res = subprocess.run([dbproxy, "run", "--help"], capture_output=True, text=True, check=False)
    return "--workers" in res.stdout


def start(stack: Stack, targets: list[str], budget_s: float) -> None:
    pg = stack.pg_port
    ports = {
        name: stack.base_port + i + 1 for i, name in enumerate(t for t in targets if t != "direct")
    }
    stack.ports = {"direct": pg, **ports}
    http_ports = {name: port + 100 for name, port in ports.items() if name.startswith("dbproxy")}
    sink_port = stack.base_port + 99
    busy = [p for p in [pg, sink_port, *ports.values(), *http_ports.values()] if not port_free(p)]
    if busy:
        sys.exit(f"perf: ports in use on 127.0.0.1: {busy}; pick another --base-port")

    stack.started.append(("pgenv.sh", str(pg)))
    print(stack.script("pgenv.sh", "start", str(pg)))
    for name in targets:
        if name == "pgb_session":
            stack.started.append(("pgbouncer.sh", str(ports[name])))
            print(stack.script("pgbouncer.sh", "start", str(ports[name]), str(pg), "session"))
        elif name == "pgpool":
            stack.started.append(("pgpool.sh", str(ports[name])))
            print(stack.script("pgpool.sh", "start", str(ports[name]), str(pg)))
        elif name == "relay":
            proc = stack.spawn(
                name,
                [
                    sys.executable,
                    str(stack.bench / "relay.py"),
                    "--listen",
                    f"127.0.0.1:{ports[name]}",
                    "--upstream",
                    f"127.0.0.1:{pg}",
                    "--max-seconds",
                    str(int(budget_s)),
                ],
            )
            wait_listening(ports[name], proc, 20)
    if "dbproxy_trace" in targets:
        sink = stack.spawn(
            "otlp_sink",
            [
                sys.executable,
                "-m",
                "benchmarks.tracing_e2e",
                "--sink",
                str(sink_port),
                "--sink-max-seconds",
                str(int(budget_s)),
            ],
        )
        wait_listening(sink_port, sink, 20)
    endpoint = f"http://127.0.0.1:{sink_port}/v1/traces"
    variants = {
        # default configuration, with tracing configured (untraced statements unsampled)
        "dbproxy": ["--otlp-endpoint", endpoint],
        "dbproxy_trace": ["--otlp-endpoint", endpoint, "--trace-untraced-ratio", "1"],
        "dbproxy_w2": ["--otlp-endpoint", endpoint, "--workers", "2"],
    }
    dbproxy = str(Path(sys.executable).with_name("dbproxy"))
    for name in targets:
        if name not in variants:
            continue
        cmd = [
            dbproxy,
            "run",
            "--listen",
            f"127.0.0.1:{ports[name]}",
            "--upstream",
            f"127.0.0.1:{pg}",
            "--http-listen",
            f"127.0.0.1:{http_ports[name]}",
            *variants[name],
        ]
        print("# " + shlex.join(cmd))
        proc = stack.spawn(name, cmd)
        wait_listening(ports[name], proc, 60)
    # pgbench data, once, directly
    env = clean_env() | {"DIRECT_PORT": str(pg), "RESULTS": str(stack.out / "results.tsv")}
    env |= {"LOGDIR": str(stack.out / "logs"), "INIT_ONLY": "1"}
    subprocess.run([str(stack.bench / "run.sh"), str(pg), "init"], env=env, check=True)


def run_case(stack: Stack, target: str, rnd: int, case: str, duration: int) -> None:
    script, mode, clients = case.split(":")
    env = clean_env() | {
        "DIRECT_PORT": str(stack.pg_port),
        "RESULTS": str(stack.out / "results.tsv"),
        "LOGDIR": str(stack.out / "logs"),
        "DURATION": str(duration),
        "ROUND": str(rnd),
        "PROXY_PID": stack.pid(target),
    }
    if script == "large":
        env |= {"LARGE_ONLY": "1", "LARGE_CLIENTS": clients}
    else:
        env |= {"SCRIPTS": script, "MODES": mode, "CLIENTS": clients, "LARGE": "0"}
    proc = stack.procs.get(target)
    if proc is not None and proc.poll() is not None:
        raise RuntimeError(f"{target} exited with {proc.returncode}; see {stack.out}")
    res = subprocess.run(
        [str(stack.bench / "run.sh"), str(stack.ports[target]), target],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=duration + 180,
    )
    lines = [x for x in res.stdout.splitlines()[1:] if x.strip()]
    print("\n".join(lines) or res.stderr.strip(), flush=True)


# --------------------------------------------------------------------------- summary


def _f(x: str | None) -> float | None:
    try:
        return float(x) if x not in (None, "") else None
    except ValueError:
        return None


def _ratio(values: list[float]) -> str:
    if not values:
        return "-"
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.2f}"
    return f"{mean:.2f} ({min(values):.2f}-{max(values):.2f})"


def summarize(results: Path, targets: list[str]) -> str:
    rows = list(csv.DictReader(results.open(), delimiter="\t"))
    by: dict[tuple[str, str, str], dict[str, dict[str, dict[str, str]]]] = defaultdict(
        lambda: defaultdict(dict)
    )
    cases: list[tuple[str, str, str]] = []
    for r in rows:
        if r["label"] == "init":
            continue
        key = (r["script"], r["mode"], r["clients"])
        if key not in cases:
            cases.append(key)
        by[key][r["round"]][r["label"]] = r
    proxies = [t for t in targets if t != "direct"]
    dbproxies = [t for t in targets if t.startswith("dbproxy")]
    out = []
    for key in cases:
        script, mode, clients = key
        title = "100,000-row result (MB/s)" if script == "large" else f"{script} -M {mode}"
        out.append(f"\n### {title}, -c {clients}\n")
        head = "| target | TPS | latency ms | proxy cores | proxy µs/tx | vs direct |"
        head += " vs PgBouncer | vs relay | vs pgpool |"
        out.append(head)
        out.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        rounds = by[key]
        for target in ["direct", *proxies]:
            tps, lat, cores, us = [], [], [], []
            ratios: dict[str, list[float]] = defaultdict(list)
            for per in rounds.values():
                row = per.get(target)
                t = _f(row["tps"]) if row else None
                if row is None or t is None:
                    continue
                r = row
                tps.append(t)
                if (v := _f(r["lat_ms"])) is not None:
                    lat.append(v)
                if (c := _f(r["cpu_proxy"])) is not None and target != "direct":
                    cores.append(c)
                    us.append(c * 1e6 / t)
                for base in ("direct", "pgb_session", "relay", "pgpool"):
                    b = per.get(base)
                    bt = _f(b["tps"]) if b else None
                    if bt:
                        ratios[base].append(t / bt)
            if not tps:
                continue
            mean_tps = statistics.fmean(tps)
            shown = (
                f"{mean_tps * LARGE_BYTES / 1e6:,.1f} MB/s"
                if script == "large"
                else (f"{mean_tps:,.0f}")
            )
            name = f"**{target}**" if target in dbproxies else target
            out.append(
                f"| {name} | {shown} | {statistics.fmean(lat):.3f} | "
                f"{statistics.fmean(cores) if cores else 0:.2f} | "
                f"{statistics.fmean(us) if us else 0:.1f} | {_ratio(ratios['direct'])} | "
                f"{_ratio(ratios['pgb_session'])} | {_ratio(ratios['relay'])} | "
                f"{_ratio(ratios['pgpool'])} |"
            )
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--targets", default=DEFAULT_TARGETS)
    parser.add_argument("--cases", default=None, help=f"default: {DEFAULT_CASES!r}")
    parser.add_argument("--quick", action="store_true", help=f"cases {QUICK_CASES!r}")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--base-port", type=int, default=47600)
    parser.add_argument("--out", default=None, help="output directory (default: a temp dir)")
    args = parser.parse_args(argv)
    given = list(sys.argv[1:] if argv is None else argv)
    cases = (args.cases or (QUICK_CASES if args.quick else DEFAULT_CASES)).split()
    targets = args.targets.split()
    if "dbproxy_w2" in targets and not has_workers_option():
        print("# this dbproxy has no --workers option: dbproxy_w2 left out")
        targets.remove("dbproxy_w2")
    ensure_debian_packages(targets)
    out = Path(args.out or tempfile.mkdtemp(prefix="dbproxy-perf-"))
    out.mkdir(parents=True, exist_ok=True)
    stack = Stack(out=out, bench=bench_dir(), base_port=args.base_port)
    budget = 900 + args.rounds * len(cases) * len(targets) * (args.duration + 30)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_signal)
    from dbproxy import speedups

    header = [
        "# command: " + shlex.join([sys.executable, "-m", "benchmarks.perf", *given]),
        f"# machine: {platform.processor() or platform.machine()} nproc={os.cpu_count()} "
        f"{platform.platform()} python {platform.python_version()}",
        f"# dbproxy observer modules: {speedups.status().describe()}",
        f"# {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} rounds={args.rounds} "
        f"duration={args.duration}s targets={' '.join(targets)} cases={' '.join(cases)}",
    ]
    print("\n".join(header), flush=True)
    try:
        start(stack, targets, budget)
        for rnd in range(1, args.rounds + 1):
            for k, case in enumerate(cases):
                n = len(targets)
                for i in range(n):
                    target = targets[(i + rnd + k) % n]
                    run_case(stack, target, rnd, case, args.duration)
    except Interrupted as exc:
        print(f"# interrupted by {exc}")
        return 1
    finally:
        stack.stop()
    summary = "\n".join(header) + "\n" + summarize(out / "results.tsv", targets)
    (out / "summary.md").write_text(summary)
    print(summary)
    print(f"# results: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
