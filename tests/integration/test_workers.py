"""``dbproxy run --workers 2`` as users run it: a separate process tree, real pgbench.

Merged statistics are exact (the SELECT of pgbench -S counted once per processed
transaction, across both workers), both workers serve connections, POST /api/reset
reaches every worker, SIGHUP reaches every worker's query log, a killed worker is
reported and restarted, and no process outlives SIGTERM — or a SIGKILLed worker 0.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from dbproxy.pgcluster import PgServer, free_port
from tests.integration.test_cli import ProxyProcess, run_cli

TOKEN = "workers-test-token-0123456789"
PGBENCH_SELECT = "SELECT abalance FROM pgbench_accounts WHERE aid = $1"


class Workers:
    """``dbproxy run --workers 2`` once both workers listen."""

    def __init__(self, pg: PgServer, *extra: str, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.proc = ProxyProcess(
            [
                "--workers",
                "2",
                "--listen",
                f"127.0.0.1:{self.port}",
                "--upstream",
                f"{pg.host}:{pg.port}",
                *extra,
            ],
            env={"DBPROXY_API_TOKEN": TOKEN, **(env or {})},
        )
        self.pg = pg
        line = self.proc.wait_for_line("and health checks on")
        match = re.search(r"http://([\d.]+:\d+)/", line)
        assert match, line
        self.http = f"http://{match.group(1)}"
        self.wait_for_worker_listening(1)

    def wait_for_worker_listening(self, index: int, after: int = 0) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if any(
                f"worker-{index} " in line and "listening on" in line
                for line in self.proc.stderr_lines[after:]
            ):
                return
            assert self.proc.proc.poll() is None, "".join(self.proc.stderr_lines)
            time.sleep(0.05)
        raise AssertionError(f"worker {index} never listened: {''.join(self.proc.stderr_lines)}")

    def worker_pids(self) -> dict[int, int]:
        """Worker index -> pid of the latest start of each worker (from the log)."""
        pids: dict[int, int] = {}
        for line in self.proc.stderr_lines:
            m = re.search(r"dbproxy worker (\d+) started \(pid (\d+)\)", line)
            if m:
                pids[int(m.group(1))] = int(m.group(2))
        return pids

    def get(self, path: str) -> str:
        with urllib.request.urlopen(self.http + path, timeout=10) as r:
            body: bytes = r.read()
            return body.decode()

    def metrics(self) -> dict[str, float]:
        """Every sample of /metrics by its full name and labels."""
        out: dict[str, float] = {}
        for line in self.get("/metrics").splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out

    def reset(self) -> None:
        req = urllib.request.Request(
            self.http + "/api/reset",
            method="POST",
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.status == 200

    def connect_many(self, n: int) -> None:
        for _ in range(n):
            with psycopg.connect(self.pg.dsn(port=self.port), sslmode="disable") as conn:
                conn.execute("select 1")


def accepted_per_worker(metrics: dict[str, float]) -> dict[str, float]:
    out = {}
    for key, value in metrics.items():
        m = re.fullmatch(r'dbproxy_worker_connections_accepted_total\{worker="(\d+)"\}', key)
        if m:
            out[m.group(1)] = value
    return out


def samples(metrics: dict[str, float], name: str, fingerprint: str) -> dict[str, float]:
    return {
        k: v
        for k, v in metrics.items()
        if k.startswith(name + "{") and f'fingerprint="{fingerprint}"' in k
    }


def children_of(pid: int) -> set[int]:
    """Live processes whose parent is ``pid`` (from /proc)."""
    out = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rpartition(")")[2].split()
        if fields[0] != "Z" and int(fields[1]) == pid:
            out.add(int(entry))
    return out


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_gone(pids: set[int], timeout: float) -> set[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.05)
    return {p for p in pids if alive(p)}


def wait_for_lines(path: Path, event: str, n: int, timeout: float = 10) -> list[dict[str, object]]:
    """The query log's records once it holds ``n`` lines of ``event`` (writers are threads).

    Only whole lines: a read may catch a write in progress (the last line, unfinished).
    Every whole line must be one JSON object: workers never interleave their lines."""
    deadline = time.monotonic() + timeout
    while True:
        complete = path.read_text().split("\n")[:-1]
        records = [json.loads(line) for line in complete]
        if sum(1 for r in records if r["event"] == event) >= n or time.monotonic() > deadline:
            return records
        time.sleep(0.05)


def stats_dirs() -> set[Path]:
    return set(Path(tempfile.gettempdir()).glob("dbproxy-workers-*"))


@pytest.fixture(scope="module")
def bench_schema(pg_server: PgServer) -> Iterator[str]:
    schema = f"wbench_{uuid.uuid4().hex[:8]}"
    env = pg_server.env(base=os.environ)
    psql = [pg_server.tool("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-c"]
    subprocess.run([*psql, f"create schema {schema}"], env=env, check=True, timeout=60)
    env_schema = dict(env, PGOPTIONS=f"-c search_path={schema}")
    subprocess.run(
        [pg_server.tool("pgbench"), "-i", "-q", "-s", "1"],
        env=env_schema,
        check=True,
        capture_output=True,
        timeout=120,
    )
    try:
        yield schema
    finally:
        subprocess.run([*psql, f"drop schema {schema} cascade"], env=env, check=True, timeout=60)


@pytest.mark.parametrize("mode", ["extended", "simple"])
def test_pgbench_counts_merged_exactly_over_two_workers(
    pg_server: PgServer, bench_schema: str, mode: str
) -> None:
    workers = Workers(pg_server)
    try:
        # enough connections that both workers get some (the kernel hashes them)
        workers.connect_many(30)
        env = pg_server.env(base=os.environ)
        env.update(
            PGPORT=str(workers.port),
            PGOPTIONS=f"-c search_path={bench_schema}",
            PGAPPNAME=f"workers_{mode}",
        )
        done = subprocess.run(
            [pg_server.tool("pgbench"), "-n", "-S", "-M", mode, "-c", "8", "-j", "2", "-T", "5"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert re.search(r"^number of failed transactions: 0 ", done.stdout, re.M), done.stdout
        m = re.search(r"^number of transactions actually processed: (\d+)$", done.stdout, re.M)
        assert m, done.stdout
        processed = int(m.group(1))
        assert processed > 100

        # the API: one row (database app, user app) for pgbench's SELECT, merged
        deadline = time.monotonic() + 10
        calls = -1
        while time.monotonic() < deadline:
            api = json.loads(workers.get("/api/queries?limit=10000"))
            rows = [r for r in api["queries"] if r["query"] == PGBENCH_SELECT]
            calls = sum(r["calls"] for r in rows)
            if calls >= processed:
                break
            time.sleep(0.1)
        assert calls == processed
        (row,) = rows
        fingerprint = row["fingerprint"]
        detail = json.loads(workers.get(f"/api/queries/{fingerprint}"))
        (drow,) = detail["queries"]
        assert sum(drow["histogram"]["counts"]) == processed == drow["calls"]
        assert row["applications"] == [{"value": f"workers_{mode}", "calls": processed}]

        # /metrics: the same count, histogram buckets summing to it, both workers served
        metrics = workers.metrics()
        counts = samples(metrics, "dbproxy_query_duration_seconds_count", fingerprint)
        assert sum(counts.values()) == processed
        inf = samples(metrics, "dbproxy_query_duration_seconds_bucket", fingerprint)
        assert sum(v for k, v in inf.items() if 'le="+Inf"' in k) == processed
        assert metrics["dbproxy_workers"] == 2
        assert metrics["dbproxy_worker_scrape_errors_total"] == 0
        per_worker = accepted_per_worker(metrics)
        assert set(per_worker) == {"0", "1"} and min(per_worker.values()) > 0, per_worker
        # 30 + pgbench's setup connection + 8 clients
        assert sum(per_worker.values()) == metrics["dbproxy_connections_accepted_total"] == 39
        opened = sum(
            v for k, v in metrics.items() if k.startswith("dbproxy_client_connections_opened_total")
        )
        assert opened == 39

        # POST /api/reset reaches both workers: nothing of the benchmark is left
        workers.reset()
        api = json.loads(workers.get("/api/queries?limit=10000"))
        assert [r for r in api["queries"] if r["query"] == PGBENCH_SELECT] == []
        assert api["total"] == 0, api
    finally:
        assert workers.proc.stop() == 0


def test_signals_reach_every_worker_and_no_process_is_left(
    pg_server: PgServer, tmp_path: Path
) -> None:
    log_path = tmp_path / "query.log"
    workers = Workers(pg_server, "--query-log", str(log_path), "--shutdown-timeout", "5")
    supervisor = workers.proc.proc.pid
    try:
        workers.connect_many(30)
        before = accepted_per_worker(workers.metrics())
        wait_for_lines(log_path, "session_closed", 30)  # the first sessions are all logged
        # logrotate: move the file away, SIGHUP, and every worker writes to a new file
        rotated = tmp_path / "query.log.1"
        log_path.rename(rotated)
        mark = len(workers.proc.stderr_lines)
        workers.proc.proc.send_signal(signal.SIGHUP)
        workers.proc.wait_for_line("forwarded to 1 worker(s)")
        deadline = time.monotonic() + 10
        while not any(
            "worker-1 " in line and "SIGHUP: query log reopened" in line
            for line in workers.proc.stderr_lines[mark:]
        ):
            assert time.monotonic() < deadline, "".join(workers.proc.stderr_lines)
            time.sleep(0.05)
        rotated_size = rotated.stat().st_size
        workers.connect_many(30)
        after = accepted_per_worker(workers.metrics())
        assert all(after[w] > before[w] for w in ("0", "1")), (before, after)  # both served
        lines = wait_for_lines(log_path, "session_closed", 30)
        opened = [r for r in lines if r["event"] == "session_opened"]
        assert len(opened) == 30
        # session ids are unique across workers (worker 0 odd, worker 1 even)
        assert len({r["session_id"] for r in opened}) == 30
        assert {r["session_id"] % 2 for r in opened} == {0, 1}
        assert rotated.stat().st_size == rotated_size  # nobody still writes to the old file

        # a killed worker is reported and restarted; statistics come from both again
        old = workers.worker_pids()[1]
        mark = len(workers.proc.stderr_lines)
        os.kill(old, signal.SIGKILL)
        workers.proc.wait_for_line(f"dbproxy worker 1 (pid {old}) died (killed by signal 9)")
        workers.proc.wait_for_line("dbproxy restarting worker 1")
        workers.wait_for_worker_listening(1, after=mark)
        new = workers.worker_pids()[1]
        assert new != old and alive(new) and not alive(old)
        metrics = workers.metrics()
        assert metrics["dbproxy_worker_restarts_total"] == 1
        assert metrics["dbproxy_workers"] == 2

        children = children_of(supervisor)
        assert new in children
    finally:
        assert workers.proc.stop() == 0
    workers.proc.wait_for_line("dbproxy stopped")
    assert not wait_gone(children | {new}, 10), "processes outlived the supervisor"
    # and worker 0 reaped them all (multiprocessing's resource tracker included): no
    # zombie is left for PID 1, which in a container may never reap it
    assert not [p for p in children if Path(f"/proc/{p}").exists()]


def test_workers_exit_when_worker_0_is_killed(pg_server: PgServer) -> None:
    before = stats_dirs()
    workers = Workers(pg_server, "--shutdown-timeout", "1")
    # a CancelRequest is a new connection, often accepted by another worker than the
    # session's: it is relayed as it is, so it works whichever worker takes it
    for _ in range(3):
        with psycopg.connect(pg_server.dsn(port=workers.port), sslmode="disable") as conn:
            timer = threading.Timer(0.3, conn.cancel)
            timer.start()
            with pytest.raises(psycopg.errors.QueryCanceled):
                conn.execute("select pg_sleep(20)")
            timer.join()
    assert workers.metrics()["dbproxy_cancel_requests_total"] == 3
    children = children_of(workers.proc.proc.pid)
    pid = workers.worker_pids()[1]
    assert pid in children
    directory = stats_dirs() - before
    workers.proc.proc.kill()
    workers.proc.proc.wait(10)
    assert not wait_gone(children, 15), "a worker outlived a SIGKILLed worker 0"
    # the last worker out removes worker 0's stats channel directory
    deadline = time.monotonic() + 5
    while any(d.exists() for d in directory) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(directory) == 1, directory
    assert not any(d.exists() for d in directory), "".join(workers.proc.stderr_lines[-10:])


def test_bad_listen_address_is_an_error_line_and_exit_2_with_workers() -> None:
    before = stats_dirs()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        for args in (
            ["--listen", f"127.0.0.1:{port}"],
            ["--listen", "127.0.0.1:0", "--http-listen", f"127.0.0.1:{port}"],
        ):
            result = run_cli("run", "--workers", "2", "--upstream", "127.0.0.1:1", *args)
            assert result.returncode == 2, result.stderr
            # (the HTTP case logs the proxy's listening line first, as one process does)
            last = result.stderr.strip().splitlines()[-1]
            assert last.startswith("dbproxy: cannot listen on"), result.stderr
            assert "Traceback" not in result.stderr
    assert stats_dirs() <= before  # no stats channel directory left behind
