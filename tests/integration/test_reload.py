"""SIGHUP: ``dbproxy run --config FILE`` re-reads the file and applies what it can while
a psql session keeps working through it (same backend before and after)."""

from __future__ import annotations

import http.client
import json
import queue
import signal
import subprocess
import threading
import time
from pathlib import Path

from dbproxy.pgcluster import PgServer, free_port
from tests.integration.test_cli import ProxyProcess

TOKEN = "reloaded-token-0123456789abcdef"


class PsqlSession:
    """One interactive psql (no file, stdin kept open): a statement in, its line out."""

    def __init__(self, pg: PgServer, port: int) -> None:
        env = pg.env(base={"PATH": "/usr/bin:/bin"})
        env["PGHOST"], env["PGPORT"] = "127.0.0.1", str(port)
        self.proc = subprocess.Popen(
            [pg.tool("psql"), "-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def query(self, sql: str) -> str:
        assert self.proc.stdin is not None
        self.proc.stdin.write(sql + "\n")
        self.proc.stdin.flush()
        try:
            return self.lines.get(timeout=15)
        except queue.Empty:
            err = (
                self.proc.stderr.read() if self.proc.poll() is not None and self.proc.stderr else ""
            )
            raise AssertionError(
                f"psql answered nothing to {sql!r} (exit {self.proc.poll()}): {err}"
            ) from None

    def close(self) -> int:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        return self.proc.wait(15)


def http_status(url_port: int, path: str, host: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", url_port, timeout=10)
    try:
        conn.request("GET", path, headers={"Host": host})
        return conn.getresponse().status
    finally:
        conn.close()


def http_post(port: int, path: str, token: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", path, headers={"Authorization": f"Bearer {token}"})
        return conn.getresponse().status
    finally:
        conn.close()


def http_get(port: int, path: str) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        assert response.status == 200, (path, response.status)
        return response.read().decode()
    finally:
        conn.close()


def http_port(proc: ProxyProcess) -> int:
    line = proc.wait_for_line("health checks on http://")
    return int(line.rsplit(":", 1)[1].strip().rstrip("/"))


def write_config(path: Path, pg: PgServer, port: int, **extra: str) -> None:
    lines = [f'listen = "127.0.0.1:{port}"', f'upstream = "{pg.host}:{pg.port}"']
    lines += [f"{k} = {v}" for k, v in extra.items()]
    path.write_text("\n".join(lines) + "\n")


def reload_and_wait(
    proc: ProxyProcess, count: int, needle: str = "SIGHUP: configuration reloaded"
) -> None:
    before = sum(needle in line for line in proc.stderr_lines)
    proc.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if sum(needle in line for line in proc.stderr_lines) >= before + count:
            return
        time.sleep(0.05)
    raise AssertionError(f"no {count} x {needle!r} after SIGHUP: {''.join(proc.stderr_lines)}")


def test_sighup_applies_the_config_file_without_dropping_a_psql_session(
    pg_server: PgServer, tmp_path: Path
) -> None:
    port = free_port()
    config = tmp_path / "dbproxy.toml"
    token_file = tmp_path / "token"
    token_file.write_text("first-token-0123456789abcdef\n")
    write_config(config, pg_server, port, log_level='"info"', api_token_file=f'"{token_file}"')
    proc = ProxyProcess(["--config", str(config)])
    session: PsqlSession | None = None
    try:
        proc.wait_for_line("listening on")
        hport = http_port(proc)
        session = PsqlSession(pg_server, port)
        pid = session.query("select pg_backend_pid();")
        assert pid.isdigit()
        assert session.query("select 40 + 2;") == "42"
        # before: a name not allowed, and DEBUG lines off
        assert http_status(hport, "/api/queries", "dbproxy.internal") == 421
        assert not any(" DEBUG " in line for line in proc.stderr_lines)

        other_upstream = free_port()
        write_config(
            config,
            pg_server,
            free_port(),  # listen: needs a restart
            log_level='"debug"',
            api_token_file=f'"{token_file}"',
            http_allowed_hosts='["dbproxy.internal"]',
            metrics_tags='["route"]',
        )
        config.write_text(
            config.read_text().replace(
                f"{pg_server.host}:{pg_server.port}", f"127.0.0.1:{other_upstream}"
            )
        )
        token_file.write_text(TOKEN + "\n")  # rotated
        reload_and_wait(proc, 1)
        warn = proc.wait_for_line("only applied after a restart")
        assert "listen" in warn and "upstream" in warn
        applied = proc.wait_for_line("SIGHUP: configuration reloaded")
        assert "log_level" in applied and "http_allowed_hosts" in applied
        assert "api_token" in applied
        assert "metrics_tags" in applied

        # the session goes on, on the same backend, through the running upstream
        assert session.query("select pg_backend_pid();") == pid
        assert session.query("select 'still here';") == "still here"
        # the new settings are live
        assert http_status(hport, "/api/queries", "dbproxy.internal") == 200
        assert http_status(hport, "/api/queries", "evil.example") == 421
        proc.wait_for_line(" DEBUG ")
        # the rotated token is the one POST /api/reset takes now
        assert http_post(hport, "/api/reset", "first-token-0123456789abcdef") == 403
        assert http_post(hport, "/api/reset", TOKEN) == 200
        # /api/status and the metrics name what waits for a restart (never values)
        status = json.loads(http_get(hport, "/api/status"))
        assert status["reload"]["restart_pending"] == ["listen", "upstream"]
        assert status["reload"]["reloads"] == 1 and status["http"]["allowed_hosts"] == [
            "dbproxy.internal"
        ]
        metrics = http_get(hport, "/metrics")
        assert "dbproxy_config_restart_pending 2.0" in metrics
        assert 'dbproxy_config_reloads_total{result="ok"} 1.0' in metrics
        assert "dbproxy_http_refused_total 3.0" in metrics  # two 421s, one 403
        # a new connection still goes to the old listen address and upstream
        second = PsqlSession(pg_server, port)
        assert second.query("select 7;") == "7"
        assert second.close() == 0

        # a file that no longer loads changes nothing
        config.write_text('log_level = "loud"\n')
        proc.proc.send_signal(signal.SIGHUP)
        proc.wait_for_line("configuration not reloaded")
        assert session.query("select pg_backend_pid();") == pid
        assert http_status(hport, "/api/queries", "dbproxy.internal") == 200
        assert 'dbproxy_config_reloads_total{result="failed"} 1.0' in http_get(hport, "/metrics")
        assert session.close() == 0
        session = None
        assert proc.proc.poll() is None
    finally:
        if session is not None:
            session.close()
        proc.stop()
    assert "first-token" not in "".join(proc.stderr_lines)
    assert TOKEN not in "".join(proc.stderr_lines)


def test_sighup_reloads_every_worker(pg_server: PgServer, tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "dbproxy.toml"
    write_config(config, pg_server, port, workers="2", log_slow_ms="1000")
    proc = ProxyProcess(["--config", str(config)])
    sessions: list[PsqlSession] = []
    try:
        proc.wait_for_line("running 2 worker processes")
        proc.wait_for_line("dbproxy worker 1 started")
        # a few sessions, so that (SO_REUSEPORT) both workers most likely hold one
        sessions = [PsqlSession(pg_server, port) for _ in range(6)]
        pids = [s.query("select pg_backend_pid();") for s in sessions]
        write_config(config, pg_server, port, workers="2", log_slow_ms="5", log_level='"warning"')
        reload_and_wait(proc, 2)  # worker 0 and worker 1
        lines = [line for line in proc.stderr_lines if "SIGHUP: configuration reloaded" in line]
        assert any("worker 1: SIGHUP" in line for line in lines), lines
        assert all("log_slow_ms" in line and "log_level" in line for line in lines), lines
        for session, pid in zip(sessions, pids, strict=True):
            assert session.query("select pg_backend_pid();") == pid
        assert all(s.close() == 0 for s in sessions)
        sessions = []
        assert proc.proc.poll() is None
    finally:
        for s in sessions:
            s.close()
        proc.stop()
