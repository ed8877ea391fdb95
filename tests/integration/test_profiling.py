"""`dbproxy run` with PYROSCOPE_SERVER_ADDRESS: the real pyroscope-io agent (the `profiling`
extra) pushes the proxy's CPU profiles to a local HTTP server standing in for Pyroscope
(no Pyroscope server here: the push request is decoded only as far as its labels); without
the extra, the proxy says so at start-up and runs as usual."""

from __future__ import annotations

import gzip
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import psycopg
import pytest

from dbproxy.pgcluster import PgServer


class _Pyroscope:
    """Records the push requests (Connect protocol, protobuf) it receives."""

    def __init__(self) -> None:
        self.pushes: list[tuple[str, bytes]] = []
        pushes = self.pushes

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                pushes.append((self.path, body))
                self.send_response(200)
                self.send_header("Content-Type", "application/proto")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def pyroscope() -> Iterator[_Pyroscope]:
    server = _Pyroscope()
    yield server
    server.server.shutdown()
    server.server.server_close()


def _run(pg: PgServer, env: dict[str, str], prelude: str = "") -> tuple[int, str]:
    """`dbproxy run` until it logs its start-up, then SIGTERM; (exit status, stderr)."""
    code = f"import sys; {prelude}from dbproxy.cli import main; sys.exit(main())"
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "run", "--listen", "127.0.0.1:0"],
        env={
            **os.environ,
            "DBPROXY_HTTP_LISTEN": "127.0.0.1:0",
            "DBPROXY_UPSTREAM": f"{pg.host}:{pg.port}",
            **env,
        },
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    lines: list[str] = []
    for line in proc.stderr:
        lines.append(line)
        if "serving" in line:
            break
    # some CPU to profile: an idle proxy has no on-CPU samples, and nothing is pushed
    listening = re.search(r"listening on 127\.0\.0\.1:(\d+)", "".join(lines))
    assert listening, lines
    deadline = time.monotonic() + 2
    with psycopg.connect(pg.dsn(host="127.0.0.1", port=int(listening.group(1)))) as conn:
        while time.monotonic() < deadline:
            conn.execute("SELECT g, md5(g::text) FROM generate_series(1, 500) g").fetchall()
    proc.send_signal(signal.SIGTERM)
    # not communicate(timeout=…): it reads the raw pipe, past what `for line` buffered
    proc.wait(timeout=20)
    rest = proc.stderr.read()
    return proc.returncode, "".join(lines) + rest


def test_the_agent_pushes_cpu_profiles_named_and_tagged(
    pg_server: PgServer, pyroscope: _Pyroscope
) -> None:
    status, stderr = _run(
        pg_server,
        {"PYROSCOPE_SERVER_ADDRESS": pyroscope.url, "OTEL_SERVICE_NAME": "dbproxy-edge"},
    )
    assert status == 0, stderr
    match = re.search(r"pushing CPU profiles to (\S+) as dbproxy-edge\{instance=(\S+)\}", stderr)
    assert match, stderr
    assert match.group(1) == pyroscope.url
    http_port = re.search(r"health checks on http://127\.0\.0\.1:(\d+)/", stderr)
    assert http_port and match.group(2).endswith(f":{http_port.group(1)}")
    # the agent flushes at shutdown: at least one push, labelled with the name and the tag
    assert pyroscope.pushes, stderr
    path, body = pyroscope.pushes[-1]
    assert path == "/push.v1.PusherService/Push"
    if body[:2] == b"\x1f\x8b":  # Content-Encoding: gzip
        body = gzip.decompress(body)
    assert b"dbproxy-edge" in body
    assert match.group(2).encode() in body
    assert b"process_cpu" in body


def test_without_the_extra_the_proxy_says_so_and_runs(pg_server: PgServer) -> None:
    status, stderr = _run(
        pg_server,
        {"PYROSCOPE_SERVER_ADDRESS": "http://127.0.0.1:1"},
        # as if pyroscope-io were not installed
        prelude="sys.modules['pyroscope'] = None; ",
    )
    assert status == 0, stderr
    assert (
        "WARNING dbproxy.export.profiling: PYROSCOPE_SERVER_ADDRESS is set "
        "(http://127.0.0.1:1) but the profiling extra is not installed, so no CPU profiles "
        "are pushed: pip install 'dbproxy[profiling]'"
    ) in stderr, stderr
    assert "listening on" in stderr
    assert "pushing CPU profiles" not in stderr
