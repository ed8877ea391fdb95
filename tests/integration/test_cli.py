"""`dbproxy run` as users run it: a separate process, configured by flags, env and file.

Running the proxy out of process also lets blocking client calls that hold the GIL
(libpq's PQcancel through psycopg's ``conn.cancel()``) talk to it, as in production.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import psycopg
import pytest

from dbproxy.pgcluster import PgServer, free_port


class ProxyProcess:
    def __init__(
        self, args: list[str], env: dict[str, str] | None = None, prefix: Sequence[str] = ()
    ) -> None:
        """``prefix``: a command that runs it (``setpriv --reuid nobody …``)."""
        self.proc = subprocess.Popen(
            [*prefix, sys.executable, "-m", "dbproxy", "run", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            # a free port for the HTTP server unless the test says otherwise
            env={**os.environ, "DBPROXY_HTTP_LISTEN": "127.0.0.1:0", **(env or {})},
        )
        self.stderr_lines: list[str] = []
        self._reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._reader.start()

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr_lines.append(line)

    def wait_for_line(self, needle: str, timeout: float = 15) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.stderr_lines:
                if needle in line:
                    return line
            if self.proc.poll() is not None and needle not in "".join(self.stderr_lines):
                time.sleep(0.1)
                break
            time.sleep(0.02)
        raise AssertionError(f"no {needle!r} in stderr: {''.join(self.stderr_lines)}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(15)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()


def start_process(pg: PgServer, *extra: str) -> tuple[ProxyProcess, int]:
    """``dbproxy run`` on a free port in front of ``pg``, once it says it listens."""
    port = free_port()
    proc = ProxyProcess(
        ["--listen", f"127.0.0.1:{port}", "--upstream", f"{pg.host}:{pg.port}", *extra]
    )
    proc.wait_for_line("listening on")
    return proc, port


@pytest.fixture
def proxy_process(pg_server: PgServer) -> Iterator[tuple[ProxyProcess, int]]:
    proc, port = start_process(pg_server)
    try:
        yield proc, port
    finally:
        proc.stop()


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dbproxy", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, **(env or {})},
    )


def test_startup_line_says_where_it_listens_and_forwards(
    proxy_process: tuple[ProxyProcess, int], pg_server: PgServer
) -> None:
    proc, port = proxy_process
    line = proc.wait_for_line("listening on")
    assert f"127.0.0.1:{port}" in line and f"forwarding to 127.0.0.1:{pg_server.port}" in line
    with psycopg.connect(pg_server.dsn(port=port), sslmode="disable") as conn:
        assert conn.execute("select 'through the proxy process'").fetchone() == (
            "through the proxy process",
        )
    assert proc.stop() == 0


def test_psycopg_conn_cancel_on_pg_sleep(
    proxy_process: tuple[ProxyProcess, int], pg_server: PgServer
) -> None:
    _proc, port = proxy_process
    with psycopg.connect(pg_server.dsn(port=port), sslmode="disable", autocommit=True) as conn:
        timer = threading.Timer(0.5, conn.cancel)
        started = time.monotonic()
        timer.start()
        with pytest.raises(psycopg.errors.QueryCanceled):
            conn.execute("select pg_sleep(20)")
        timer.join()
        assert time.monotonic() - started < 10
        assert conn.execute("select 2").fetchone() == (2,)


def test_sigterm_lets_sessions_finish_then_exits_0(pg_server: PgServer) -> None:
    proc, port = start_process(pg_server, "--shutdown-timeout", "10")
    with psycopg.connect(pg_server.dsn(port=port), sslmode="disable", autocommit=True) as conn:
        result: list[object] = []
        worker = threading.Thread(
            target=lambda: result.append(conn.execute("select pg_sleep(1), 7").fetchone())
        )
        worker.start()
        time.sleep(0.3)
        proc.proc.send_signal(signal.SIGTERM)
        proc.wait_for_line("shutting down")
        worker.join(10)
        assert result and result[0] is not None and result[0][1] == 7  # type: ignore[index]
        # new connections are refused while draining
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(pg_server.dsn(port=port), sslmode="disable", connect_timeout=2)
    assert proc.proc.wait(15) == 0


def test_shutdown_timeout_closes_remaining_sessions(pg_server: PgServer) -> None:
    proc, port = start_process(pg_server, "--shutdown-timeout", "0.5")
    conn = psycopg.connect(pg_server.dsn(port=port), sslmode="disable")
    try:
        started = time.monotonic()
        proc.proc.send_signal(signal.SIGTERM)
        assert proc.proc.wait(15) == 0
        assert time.monotonic() - started < 5
        proc.wait_for_line("closing 1 session(s) still open")
        with pytest.raises(psycopg.OperationalError):
            conn.execute("select 1")
    finally:
        conn.close()


def test_port_in_use_is_one_line_and_exit_2() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_cli("run", "--listen", f"127.0.0.1:{port}", "--upstream", "127.0.0.1:1")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"dbproxy: cannot listen on 127.0.0.1:{port}: address already in use"
    ]


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--listen", "nonsense"], {}, "invalid --listen 'nonsense'"),
        (["--upstream", "db:99999"], {}, "port must be 0-65535"),
        ([], {"DBPROXY_LISTEN": "x:y"}, "invalid DBPROXY_LISTEN"),
        (["--config", "/nonexistent/dbproxy.toml"], {}, "cannot read config file"),
        (["--shutdown-timeout", "-1"], {}, "invalid --shutdown-timeout"),
    ],
)
def test_bad_configuration_is_one_line_and_exit_2(
    args: list[str], env: dict[str, str], message: str
) -> None:
    result = run_cli("run", *args, env=env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dbproxy: ") and message in lines[0]
    assert "Traceback" not in result.stderr


def test_config_file_and_env_precedence(tmp_path: Path, pg_server: PgServer) -> None:
    port_file, port_env = free_port(), free_port()
    config = tmp_path / "dbproxy.toml"
    config.write_text(
        f'listen = "127.0.0.1:{port_file}"\nupstream = "{pg_server.host}:{pg_server.port}"\n'
    )
    bad = tmp_path / "bad.toml"
    bad.write_text("listen = [unterminated\n")
    result = run_cli("run", "--config", str(bad))
    assert result.returncode == 2 and "not valid TOML" in result.stderr
    unknown = tmp_path / "unknown.toml"
    unknown.write_text('lissen = "x"\n')
    result = run_cli("run", "--config", str(unknown))
    assert result.returncode == 2 and "unknown setting(s): lissen" in result.stderr

    # the file alone
    proc = ProxyProcess(["--config", str(config)])
    try:
        assert f"127.0.0.1:{port_file}" in proc.wait_for_line("listening on")
    finally:
        assert proc.stop() == 0
    # the environment beats the file (DBPROXY_CONFIG names the file)
    proc = ProxyProcess(
        [], env={"DBPROXY_CONFIG": str(config), "DBPROXY_LISTEN": f"127.0.0.1:{port_env}"}
    )
    try:
        assert f"127.0.0.1:{port_env}" in proc.wait_for_line("listening on")
        with psycopg.connect(pg_server.dsn(port=port_env), sslmode="disable") as conn:
            assert conn.execute("select 1").fetchone() == (1,)
    finally:
        assert proc.stop() == 0


def test_metrics_served_by_the_process(pg_server: PgServer) -> None:
    port, http_port = free_port(), free_port()
    proc = ProxyProcess(
        [
            "--listen",
            f"127.0.0.1:{port}",
            "--upstream",
            f"{pg_server.host}:{pg_server.port}",
            "--http-listen",
            f"127.0.0.1:{http_port}",
        ]
    )
    try:
        line = proc.wait_for_line("and health checks on")
        assert f"127.0.0.1:{http_port}" in line
        with psycopg.connect(pg_server.dsn(port=port), sslmode="disable") as conn:
            conn.execute("select 'metrics please'")
        import urllib.request

        deadline = time.monotonic() + 5
        text = ""
        while time.monotonic() < deadline and "metrics please" not in text:
            with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=5) as r:
                text = r.read().decode()
            time.sleep(0.1)
        # the normalized text appears in dbproxy_query_info, the literal never does
        assert "SELECT $1" in text and "metrics please" not in text
    finally:
        assert proc.stop() == 0
