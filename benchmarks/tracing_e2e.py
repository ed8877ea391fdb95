"""End-to-end cost of tracing every statement: pgbench through dbproxy with 100 % spans.

    .venv/bin/python -m benchmarks.tracing_e2e [--rounds 2] [--duration 10] [--clients 16]

In one run, on 127.0.0.1 only, bounded in time, everything stopped on exit:

* a throwaway PostgreSQL 15 (``shared/bench/pgenv.sh``), ``pgbench -i -s 10`` on it;
* PgBouncer in session mode (``shared/bench/pgbouncer.sh``);
* an OTLP/HTTP sink in its own process (``POST /v1/traces`` -> 200, empty protobuf), so
  decoding nothing and answering costs the proxy nothing;
* ``dbproxy_off`` (metrics only, the default) and ``dbproxy_trace`` (``--trace
  --otlp-endpoint`` the sink), both in front of the same PostgreSQL.

Every target runs the same pgbench custom script: select-only with a fixed sampled
sqlcommenter ``traceparent``, so every statement through ``dbproxy_trace`` gets a span and
every target does identical work.  ``pgbench -n -M extended -c C -j 2 -T D`` against
direct, pgbouncer, dbproxy_off and dbproxy_trace, interleaved, the order rotated per round.
Per run: TPS, failed transactions, proxy CPU (utime+stime of the proxy process, all
threads) -> µs per transaction; for dbproxy_trace the span counters from ``/metrics``.
One transaction is one statement, so the extra proxy CPU per span is
(µs/tx traced - µs/tx off) / (spans per tx).

The machine is small and shared: compare ratios within one run, not numbers across runs.
"""

from __future__ import annotations

import argparse
import contextlib
import http.server
import importlib.metadata
import json
import os
import platform
import re
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import types
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, NoReturn

ROOT = Path(__file__).resolve().parents[1]
PGBIN = Path("/usr/lib/postgresql/15/bin")
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
SCRIPT = (
    "\\set aid random(1, 100000 * :scale)\n"
    f"SELECT abalance FROM pgbench_accounts WHERE aid = :aid /*traceparent='{TRACEPARENT}'*/;\n"
)
TARGETS = ("direct", "pgbouncer", "dbproxy_off", "dbproxy_trace")
SPAN_COUNTERS = ("created", "exported", "dropped", "export_failed")
CLK_TCK = os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------- the sink


class _SinkHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 30
    lock = threading.Lock()
    requests = 0
    bytes_in = 0
    other = 0

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        cls = type(self)
        with cls.lock:
            if self.path.split("?", 1)[0] == "/v1/traces":
                cls.requests += 1
                cls.bytes_in += len(body)
            else:
                cls.other += 1
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


def sink_main(port: int, max_seconds: float) -> int:
    """OTLP/HTTP sink: count ``POST /v1/traces`` requests and bytes, print totals at exit.

    Exits on SIGTERM/SIGINT, when its parent goes away, or after ``max_seconds``.
    """
    stop = threading.Event()
    parent = os.getppid()

    def on_signal(signum: int, frame: types.FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), _SinkHandler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2})
    thread.start()
    print(f"sink: listening on 127.0.0.1:{port}", flush=True)
    deadline = time.monotonic() + max_seconds
    try:
        while not stop.wait(0.5):
            if os.getppid() != parent or time.monotonic() > deadline:
                break
    finally:
        server.shutdown()
        server.server_close()
        usage = os.times()
        totals = {
            "requests": _SinkHandler.requests,
            "bytes": _SinkHandler.bytes_in,
            "other_requests": _SinkHandler.other,
            "cpu_s": round(usage.user + usage.system, 3),
        }
        print("sink totals " + json.dumps(totals), flush=True)
    return 0


# --------------------------------------------------------------------------- helpers


class Interrupted(Exception):
    """A signal (SIGTERM, SIGHUP, SIGALRM) asked us to stop; unwinds through finally."""


def _on_signal(signum: int, frame: types.FrameType | None) -> NoReturn:
    raise Interrupted(signal.Signals(signum).name)


def proc_cpu_s(pid: int, tid: int | None = None) -> float:
    """utime+stime of a process (all its threads), or of one thread, in seconds."""
    with open(f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat") as f:
        rest = f.read().rsplit(")", 1)[1].split()
    return (int(rest[11]) + int(rest[12])) / CLK_TCK


def port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def wait_listening(port: int, proc: subprocess.Popen[bytes] | None, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process for port {port} exited with {proc.returncode}")
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listening on 127.0.0.1:{port} after {seconds}s")


def scrape_spans(http_port: int) -> dict[str, float]:
    url = f"http://127.0.0.1:{http_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for name in SPAN_COUNTERS:
        m = re.search(rf"^dbproxy_spans_{name}_total(?:\{{[^}}]*\}})? (\S+)$", text, re.M)
        if m:
            out[name] = float(m.group(1))
    return out


def sh(cmd: list[str], timeout: float = 120) -> str:
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    return (res.stdout + res.stderr).strip()


def bench_dir() -> Path:
    override = os.environ.get("DBPROXY_BENCH_DIR")
    candidates = [Path(override)] if override else []
    candidates += [ROOT.parent / "shared" / "bench", ROOT / "shared" / "bench"]
    for path in candidates:
        if (path / "pgenv.sh").exists():
            return path
    sys.exit("tracing_e2e: shared/bench not found; set DBPROXY_BENCH_DIR")


def pgbench_bin() -> str:
    for cand in (PGBIN / "pgbench", Path("/usr/bin/pgbench")):
        if cand.exists():
            return str(cand)
    sys.exit("tracing_e2e: pgbench not found")


def clean_env() -> dict[str, str]:
    """The environment without DBPROXY_*/OTEL_* knobs, so the flags alone decide."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("DBPROXY_", "OTEL_"))} | {
        "PGUSER": "postgres",
        "PGDATABASE": "postgres",
        "PGCONNECT_TIMEOUT": "10",
    }


# --------------------------------------------------------------------------- the run


@dataclass
class Run:
    target: str
    round: int
    tps: float | None
    xacts: int
    failed: int
    proxy_cpu_s: float | None
    main_thread_cpu_s: float | None
    wall_s: float
    spans: dict[str, float] = field(default_factory=dict)
    log: str = ""

    @property
    def us_per_tx(self) -> float | None:
        if self.proxy_cpu_s is None or not self.xacts:
            return None
        return self.proxy_cpu_s * 1e6 / self.xacts


@dataclass
class Env:
    out: Path
    bench: Path
    pg_port: int
    pgb_port: int
    sink_port: int
    ports: dict[str, int] = field(default_factory=dict)
    http_ports: dict[str, int] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    logs: list[IO[bytes]] = field(default_factory=list)
    pg_started: bool = False
    pgb_started: bool = False

    def proxy_pid(self, target: str) -> int | None:
        if target == "pgbouncer":
            pid = sh([str(self.bench / "pgbouncer.sh"), "pid", str(self.pgb_port)])
            return int(pid) if pid.isdigit() else None
        proc = self.procs.get(target)
        return proc.pid if proc is not None else None

    def spawn(self, name: str, cmd: list[str]) -> subprocess.Popen[bytes]:
        log = open(self.out / f"{name}.log", "wb")  # noqa: SIM115 (closed in stop_all)
        self.logs.append(log)
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env=clean_env(), cwd=ROOT
        )
        self.procs[name] = proc
        return proc

    def stop_all(self) -> None:
        for name, proc in list(self.procs.items()):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    print(f"# {name} did not stop on SIGTERM; killing pid {proc.pid}")
                    proc.kill()
                    proc.wait(timeout=5)
        for log in self.logs:
            log.close()
        if self.pgb_started:
            print(sh([str(self.bench / "pgbouncer.sh"), "stop", str(self.pgb_port)]))
        if self.pg_started:
            print(sh([str(self.bench / "pgenv.sh"), "stop", str(self.pg_port)]))


def start_all(env: Env, args: argparse.Namespace) -> None:
    wanted = [env.pg_port, env.pgb_port, env.sink_port, *env.ports.values()]
    wanted += env.http_ports.values()
    busy = [p for p in wanted if not port_free(p)]
    if busy:
        sys.exit(f"tracing_e2e: ports in use on 127.0.0.1: {busy}; pick another --base-port")

    env.pg_started = True
    print(sh([str(env.bench / "pgenv.sh"), "start", str(env.pg_port)], timeout=180))
    print(f"# pgbench -i -s {args.scale} (direct)")
    subprocess.run(
        [
            pgbench_bin(),
            "-i",
            "-s",
            str(args.scale),
            "-q",
            "-h",
            "127.0.0.1",
            "-p",
            str(env.pg_port),
        ],
        check=True,
        timeout=600,
        env=clean_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    env.pgb_started = True
    print(
        sh(
            [
                str(env.bench / "pgbouncer.sh"),
                "start",
                str(env.pgb_port),
                str(env.pg_port),
                "session",
            ]
        )
    )

    budget = 600 + args.rounds * len(TARGETS) * (args.duration + 90)
    sink = env.spawn(
        "sink",
        [
            sys.executable,
            "-m",
            "benchmarks.tracing_e2e",
            "--sink",
            str(env.sink_port),
            "--sink-max-seconds",
            str(budget),
        ],
    )
    wait_listening(env.sink_port, sink, 20)

    dbproxy = str(Path(sys.executable).with_name("dbproxy"))
    endpoint = f"http://127.0.0.1:{env.sink_port}/v1/traces"
    for name, extra in (
        ("dbproxy_off", []),
        ("dbproxy_trace", ["--trace", "--otlp-endpoint", endpoint]),
    ):
        cmd = [
            dbproxy,
            "run",
            "--listen",
            f"127.0.0.1:{env.ports[name]}",
            "--upstream",
            f"127.0.0.1:{env.pg_port}",
            "--http-listen",
            f"127.0.0.1:{env.http_ports[name]}",
            *extra,
        ]
        print("# " + shlex.join(cmd))
        proc = env.spawn(name, cmd)
        wait_listening(env.ports[name], proc, 30)
        wait_listening(env.http_ports[name], proc, 30)
    spans = scrape_spans(env.http_ports["dbproxy_trace"])
    if "created" not in spans:
        raise RuntimeError("dbproxy_trace exposes no dbproxy_spans_created_total: tracing off?")
    if scrape_spans(env.http_ports["dbproxy_off"]):
        print("# note: dbproxy_off exposes span counters")


def drain_spans(http_port: int, seconds: float) -> dict[str, float]:
    """Wait (bounded) until every created span is exported, dropped or failed."""
    deadline = time.monotonic() + seconds
    while True:
        s = scrape_spans(http_port)
        done = s.get("exported", 0) + s.get("dropped", 0) + s.get("export_failed", 0)
        if done >= s.get("created", 0) or time.monotonic() > deadline:
            return s
        time.sleep(0.2)


def run_one(env: Env, target: str, rnd: int, args: argparse.Namespace, script: Path) -> Run:
    port = {"direct": env.pg_port, "pgbouncer": env.pgb_port}.get(target) or env.ports[target]
    pid = env.proxy_pid(target)
    if target in env.procs and env.procs[target].poll() is not None:
        raise RuntimeError(f"{target} died (exit {env.procs[target].returncode})")
    http_port = env.http_ports.get(target)
    spans0 = scrape_spans(http_port) if target == "dbproxy_trace" and http_port else {}
    cpu0 = proc_cpu_s(pid) if pid else None
    main0 = proc_cpu_s(pid, pid) if pid else None
    t0 = time.monotonic()
    cmd = [
        pgbench_bin(),
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
        "-n",
        "-M",
        "extended",
        "-c",
        str(args.clients),
        "-j",
        str(min(2, args.clients)),
        "-T",
        str(args.duration),
        "-f",
        str(script),
    ]
    try:
        res = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            env=clean_env(),
            timeout=args.duration + 60,
            check=False,
        )
        output = res.stdout + res.stderr
    except subprocess.TimeoutExpired as exc:
        output = f"pgbench timed out after {exc.timeout}s"
    spans1: dict[str, float] = {}
    if target == "dbproxy_trace" and http_port:
        # the export thread's CPU for this run's spans belongs to this run
        spans1 = drain_spans(http_port, 15)
    cpu1 = proc_cpu_s(pid) if pid else None
    main1 = proc_cpu_s(pid, pid) if pid else None
    wall = time.monotonic() - t0
    log = env.out / f"pgbench_{target}_r{rnd}.log"
    log.write_text(shlex.join(cmd) + "\n" + output)

    def grab(pattern: str) -> str | None:
        m = re.search(pattern, output, re.M)
        return m.group(1) if m else None

    tps = grab(r"^tps = ([0-9.]+) \(without initial connection time\)")
    xacts = grab(r"^number of transactions actually processed: (\d+)")
    failed = grab(r"^number of failed transactions: (\d+)")
    run = Run(
        target=target,
        round=rnd,
        tps=float(tps) if tps else None,
        xacts=int(xacts or 0),
        failed=int(failed or 0),
        proxy_cpu_s=(cpu1 - cpu0) if cpu0 is not None and cpu1 is not None else None,
        main_thread_cpu_s=(main1 - main0) if main0 is not None and main1 is not None else None,
        wall_s=wall,
        spans={k: spans1.get(k, 0) - spans0.get(k, 0) for k in spans1},
        log=str(log),
    )
    if run.tps is None:
        print(f"# {target} round {rnd}: pgbench FAILED, see {log}: {output.strip()[-300:]}")
    return run


def fmt(x: float | None, spec: str = ".0f") -> str:
    return "-" if x is None else format(x, spec)


def mean(xs: list[float | None]) -> float | None:
    vals = [x for x in xs if x is not None]
    return statistics.fmean(vals) if vals else None


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def machine_lines() -> list[str]:
    cpu = "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    try:
        uvloop = importlib.metadata.version("uvloop")
    except importlib.metadata.PackageNotFoundError:
        uvloop = "not installed"
    commit = sh(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
    return [
        f"- CPU: {cpu}; nproc {os.cpu_count()}; kernel {platform.release()}",
        f"- Python {platform.python_version()}, uvloop {uvloop}, dbproxy commit {commit}",
        f"- {sh(['pgbouncer', '--version']).splitlines()[0]}; "
        f"{sh([str(PGBIN / 'postgres'), '--version'])}; {sh([pgbench_bin(), '--version'])}",
    ]


def report(runs: list[Run], args: argparse.Namespace, command: str, sink: str) -> str:
    by: dict[str, list[Run]] = {t: [r for r in runs if r.target == t] for t in TARGETS}
    tps = {t: mean([r.tps for r in by[t]]) for t in TARGETS}
    us = {t: mean([r.us_per_tx for r in by[t]]) for t in TARGETS}
    lines = [
        f"## Tracing 100 % of statements: pgbench select-only + traceparent, -M extended, "
        f"-c {args.clients} -j {min(2, args.clients)}, {args.rounds} x {args.duration} s",
        "",
        "| target | mean TPS | TPS per round | vs direct | vs PgBouncer | proxy µs/tx | failed |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    for t in TARGETS:
        per = " / ".join(fmt(r.tps) for r in sorted(by[t], key=lambda r: r.round))
        vs_d = ratio(tps[t], tps["direct"])
        vs_b = ratio(tps[t], tps["pgbouncer"])
        failed = sum(r.failed for r in by[t])
        lines.append(
            f"| {t} | {fmt(tps[t])} | {per} | {fmt(vs_d, '.3f')} | {fmt(vs_b, '.3f')} "
            f"| {fmt(us[t], '.1f')} | {failed} |"
        )
    trace = by["dbproxy_trace"]
    tot = {k: sum(r.spans.get(k, 0) for r in trace) for k in SPAN_COUNTERS}
    xacts = sum(r.xacts for r in trace)
    spans_per_tx = tot["created"] / xacts if xacts else None
    extra = None
    if us["dbproxy_trace"] is not None and us["dbproxy_off"] is not None and spans_per_tx:
        extra = (us["dbproxy_trace"] - us["dbproxy_off"]) / spans_per_tx
    kept = ratio(tps["dbproxy_trace"], tps["dbproxy_off"])
    tps_cost = None if kept is None else 1 - kept
    lines += [
        "",
        "| dbproxy_trace spans (all rounds) | value |",
        "|---|---:|",
        f"| transactions | {xacts} |",
        *(f"| spans {k.replace('_', ' ')} | {tot[k]:.0f} |" for k in SPAN_COUNTERS),
        f"| spans per transaction | {fmt(spans_per_tx, '.3f')} |",
        f"| extra proxy CPU µs per span (µs/tx traced - off) | {fmt(extra, '.1f')} |",
        f"| TPS lost to tracing (1 - trace/off) | "
        f"{fmt(None if tps_cost is None else 100 * tps_cost, '.1f')} % |",
        f"| OTLP sink (separate process) | {sink} |",
        "",
        "Per run (order as run):",
        "",
        "| round | target | TPS | xacts | failed | proxy CPU s (main thread) | proxy cores "
        "| µs/tx | spans created | exported | dropped |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        lines.append(
            f"| {r.round} | {r.target} | {fmt(r.tps)} | {r.xacts} | {r.failed} "
            f"| {fmt(r.proxy_cpu_s, '.2f')} ({fmt(r.main_thread_cpu_s, '.2f')}) "
            f"| {fmt(None if r.proxy_cpu_s is None else r.proxy_cpu_s / r.wall_s, '.2f')} "
            f"| {fmt(r.us_per_tx, '.1f')} | "
            + " | ".join(fmt(r.spans.get(k)) if r.spans else "" for k in SPAN_COUNTERS[:3])
            + " |"
        )
    lines += ["", f"Command (in {Path.cwd()}): `{command}`", "", "Machine:", *machine_lines(), ""]
    lines.append(
        "Proxy CPU = utime+stime of the proxy process (all threads) across the pgbench run; "
        "for dbproxy_trace the window extends until the exporter has handed every created "
        "span to the sink (bounded at 15 s). PgBouncer's CPU is its single process."
    )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--duration", type=int, default=10, help="seconds per pgbench run")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--scale", type=int, default=10, help="pgbench -i -s")
    parser.add_argument("--out", default=None, help="output directory (default: a temp dir)")
    parser.add_argument(
        "--base-port", type=int, default=47540, help="first of 7 consecutive loopback ports"
    )
    parser.add_argument("--sink", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--sink-max-seconds", type=float, default=3600, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.sink is not None:
        return sink_main(args.sink, args.sink_max_seconds)

    command = shlex.join(
        [
            os.path.relpath(sys.executable)
            if sys.executable.startswith(os.getcwd())
            else sys.executable,
            "-m",
            "benchmarks.tracing_e2e",
            *(sys.argv[1:] if argv is None else argv),
        ]
    )
    out = Path(args.out or tempfile.mkdtemp(prefix="dbproxy-tracing-e2e-"))
    out.mkdir(parents=True, exist_ok=True)
    b = args.base_port
    env = Env(
        out=out,
        bench=bench_dir(),
        pg_port=b,
        pgb_port=b + 1,
        sink_port=b + 2,
        ports={"dbproxy_off": b + 3, "dbproxy_trace": b + 4},
        http_ports={"dbproxy_off": b + 5, "dbproxy_trace": b + 6},
    )
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGALRM):
        signal.signal(sig, _on_signal)
    # hard bound on the whole run; pgbench runs carry their own timeout too
    signal.alarm(600 + args.rounds * len(TARGETS) * (args.duration + 90))
    script = out / "select_traceparent.sql"
    script.write_text(SCRIPT)
    print(f"# command: {command}\n# output: {out}")
    runs: list[Run] = []
    sink_totals = "-"
    try:
        start_all(env, args)
        for rnd in range(1, args.rounds + 1):
            k = (rnd - 1) % len(TARGETS)
            for target in TARGETS[k:] + TARGETS[:k]:
                run = run_one(env, target, rnd, args, script)
                runs.append(run)
                print(
                    f"# round {rnd} {target:14s} tps={fmt(run.tps)} failed={run.failed} "
                    f"proxy_us_per_tx={fmt(run.us_per_tx, '.1f')} "
                    f"spans={ {k: int(v) for k, v in run.spans.items()} }",
                    flush=True,
                )
    except (KeyboardInterrupt, Interrupted) as exc:
        print(f"# interrupted ({type(exc).__name__} {exc}); cleaning up")
        return 130
    finally:
        signal.alarm(0)
        for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
            signal.signal(sig, signal.SIG_IGN)  # cleanup is not to be interrupted
        env.stop_all()
        sink_log = out / "sink.log"
        if sink_log.exists():
            m = re.search(r"^sink totals (.*)$", sink_log.read_text(), re.M)
            if m:
                t = json.loads(m.group(1))
                sink_totals = (
                    f"{t['requests']} requests, {t['bytes'] / 1e6:.1f} MB, {t['cpu_s']:.1f} s CPU"
                )
                print(f"# sink totals: {m.group(1)}")
    md = report(runs, args, command, sink_totals)
    (out / "summary.md").write_text(md)
    print(md)
    print(f"# results: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
