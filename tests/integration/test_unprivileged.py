"""``dbproxy run`` as an unprivileged user (nobody): it listens, relays, serves HTTP, and
its workers (a 0700 temp directory of Unix sockets) work too.  Nothing in dbproxy needs
root: ports above 1024, no chown, no capability."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import urllib.request
from pathlib import Path

import psycopg
import pytest

from dbproxy.pgcluster import PgServer, free_port
from tests.integration.test_cli import ProxyProcess


def _as_nobody() -> list[str]:
    """The command prefix that drops to nobody (when the tests run as root), else none:
    a non-root test run is unprivileged already."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.fail("setpriv not found: apt-get install util-linux")
    return [setpriv, "--reuid", "nobody", "--regid", "nogroup", "--clear-groups"]


def _uid_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])  # the real uid
    raise AssertionError(f"no Uid in /proc/{pid}/status")


def test_runs_as_nobody_with_workers(pg_server: PgServer) -> None:
    port = free_port()
    proc = ProxyProcess(
        [
            "--listen",
            f"127.0.0.1:{port}",
            "--upstream",
            f"{pg_server.host}:{pg_server.port}",
            "--workers",
            "2",
        ],
        env={"PYTHONDONTWRITEBYTECODE": "1"},
        prefix=_as_nobody(),
    )
    try:
        proc.wait_for_line("running 2 worker processes")
        line = proc.wait_for_line("health checks on http://")
        base = line.rsplit("on ", 1)[1].strip().rstrip("/")
        expected = pwd.getpwnam("nobody").pw_uid if os.geteuid() == 0 else os.geteuid()
        pids = [
            proc.proc.pid,
            *map(
                int,
                subprocess.run(
                    ["pgrep", "-P", str(proc.proc.pid)], capture_output=True, text=True, check=False
                ).stdout.split(),
            ),
        ]
        assert {_uid_of(p) for p in pids} == {expected}, pids
        for _ in range(4):  # over both workers (SO_REUSEPORT spreads them)
            with psycopg.connect(pg_server.dsn(host="127.0.0.1", port=port)) as conn:
                row = conn.execute("SELECT current_user, 6 * 7").fetchone()
                assert row == (pg_server.app_user, 42)
        with urllib.request.urlopen(base + "/api/connections", timeout=10) as response:
            assert response.status == 200
    finally:
        code = proc.stop()
    assert code == 0, "".join(proc.stderr_lines)
