"""`dbproxy top` as users run it: a separate process polling a real proxy's JSON API.

The live view runs under a pseudo-terminal of a fixed size (120x40); the test reads what it
draws, presses keys, and checks the terminal is given back as it was (``stty -a`` run in the
same terminal after ``top`` exits, plus the escapes that leave the alternate screen).
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from dbproxy.pgcluster import PgServer, free_port
from tests.fixtures.fix_proxy import RunningProxy, start_proxy

COLS, LINES = 120, 40
CSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Za-z0-9]|\x1b[=>78]")
SGR = re.compile(rb"\x1b\[([0-9;]*)m")


def _api_rows(proxy: RunningProxy) -> list[dict[str, Any]]:
    with urllib.request.urlopen(f"{proxy.http_url}/api/queries?limit=100", timeout=5) as r:
        rows: list[dict[str, Any]] = json.load(r)["queries"]
    return rows


def _wait_rows(
    proxy: RunningProxy, predicate: Callable[[list[dict[str, Any]]], bool], timeout: float = 10
) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        proxy.drain_now()
        rows = _api_rows(proxy)
        if predicate(rows):
            return rows
        assert time.monotonic() < deadline, f"API rows never matched: {rows!r}"
        time.sleep(0.05)


def _calls(rows: list[dict[str, Any]], needle: str) -> int:
    return sum(r["calls"] for r in rows if needle in r["query"])


@pytest.fixture(scope="module")
def loaded(pg_server: PgServer) -> Iterator[tuple[RunningProxy, str]]:
    """A proxy that has seen a workload dominated by pg_sleep; yields it and that fingerprint."""
    proxy = start_proxy(pg_server)
    try:
        with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
            for _ in range(20):
                conn.execute("select pg_sleep(0.02)").fetchall()
            for i in range(5):
                conn.execute("select %s::int + 1", (i,)).fetchall()
            for _ in range(3):
                conn.execute("select relname from pg_class limit 5").fetchall()
            for _ in range(2):
                with pytest.raises(psycopg.errors.DivisionByZero):
                    conn.execute("select 1 / 0")
        rows = _wait_rows(
            proxy,
            lambda rows: _calls(rows, "pg_sleep") == 20 and _calls(rows, "pg_class") == 3,
        )
        (sleep_fp,) = {r["fingerprint"] for r in rows if "pg_sleep" in r["query"]}
        yield proxy, sleep_fp
    finally:
        proxy.stop()


def _top(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dbproxy", "top", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=15,
    )


# --- --once and errors --------------------------------------------------------------------


def test_once_prints_a_plain_table(loaded: tuple[RunningProxy, str]) -> None:
    proxy, sleep_fp = loaded
    done = _top("--url", proxy.http_url, "--once")
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert "\x1b" not in done.stdout  # plain: no colors, no cursor movement
    header, first, *rest = done.stdout.splitlines()
    assert header.split()[:4] == ["fingerprint", "calls/s", "calls", "total▼"]
    assert "query" in header and "summary" in header
    # the dominating statement first, with its whole normalized text (stdout is a pipe)
    assert first.startswith(sleep_fp)
    assert first.rstrip().endswith("pg_sleep($1)")
    assert " 20 " in first and " read " in first
    assert any("pg_class" in line for line in rest)
    division = next(line for line in rest if "SELECT $1 / $2" in line)
    assert re.search(r"\s2\s", division)  # its two errors

    by_calls = _top("--url", proxy.http_url, "--once", "--sort", "calls", "--limit", "2")
    assert by_calls.returncode == 0, by_calls.stderr
    header, *lines = by_calls.stdout.splitlines()
    assert "calls▼" in header and "total▼" not in header
    assert len(lines) == 2 and lines[0].startswith(sleep_fp)  # 20 calls beat 5, 3, 2


@pytest.mark.parametrize("mode", [["--once"], ["--interval", "0.5"]])
def test_unreachable_url_is_one_line_and_exit_2(mode: list[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    done = _top("--url", url, *mode)
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("dbproxy top: cannot reach ")
    assert url in lines[0] and "refused" in lines[0]


def test_not_a_dbproxy_api_is_one_line_and_exit_2(loaded: tuple[RunningProxy, str]) -> None:
    proxy, _ = loaded
    done = _top("--url", f"{proxy.http_url}/nope", "--once")
    assert done.returncode == 2
    (line,) = done.stderr.splitlines()
    assert line.startswith("dbproxy top: ") and "404" in line


# --- the live view under a pseudo-terminal ---------------------------------------------------


class Terminal:
    """``top`` (then ``stty -a``) in a 120x40 pty; collects everything it writes."""

    def __init__(
        self, argv: list[str], env: dict[str, str], *, sigint_ignored: bool = False
    ) -> None:
        self.lines = LINES
        pid, fd = pty.fork()
        if pid == 0:  # child: size the terminal, then run top and report the terminal after
            try:
                if sigint_ignored:  # as a background job of a script starts it (nohup too)
                    signal.signal(signal.SIGINT, signal.SIG_IGN)
                fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", LINES, COLS, 0, 0))
                # the shell outlives a Ctrl-C (a trap, not an ignore: top still gets SIGINT)
                script = 'trap : INT; "$@"; rc=$?; printf "\\n@@STTY@@"; stty -a; exit $rc'
                os.execve("/bin/sh", ["/bin/sh", "-c", script, "sh", *argv], env)
            finally:
                os._exit(127)
        self.pid, self.fd = pid, fd
        self.raw = b""
        self.status: int | None = None

    def read(self, timeout: float) -> None:
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if ready:
            try:
                self.raw += os.read(self.fd, 65536)
            except OSError:  # EIO: the child side closed
                time.sleep(timeout)

    def frames(self) -> list[list[str]]:
        """Each full redraw (rich homes the cursor first) as its lines, escapes removed."""
        out = []
        for chunk in self.raw.split(b"\x1b[H")[1:]:
            text = CSI.sub(b"", chunk).decode("utf-8", "replace")
            out.append([line.rstrip() for line in text.replace("\r", "").split("\n")])
        return out

    def wait_frame(self, predicate: Callable[[list[str]], bool], timeout: float) -> list[str]:
        deadline = time.monotonic() + timeout
        while True:
            for frame in reversed(self.frames()):
                if len(frame) >= self.lines and predicate(frame):
                    return frame
            if time.monotonic() > deadline:
                last = self.frames()[-1:] or [["<nothing drawn>"]]
                raise AssertionError("no such frame; last:\n" + "\n".join(last[0]))
            self.read(0.1)

    def send(self, keys: bytes) -> None:
        os.write(self.fd, keys)

    def resize(self, cols: int, lines: int) -> None:
        """As a terminal emulator does: the kernel then sends SIGWINCH to the foreground."""
        fcntl.ioctl(self.fd, termios.TIOCSWINSZ, struct.pack("HHHH", lines, cols, 0, 0))
        self.lines = lines

    def wait_exit(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.read(0.05)
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                while select.select([self.fd], [], [], 0.2)[0]:  # what is left in the pty
                    try:
                        data = os.read(self.fd, 65536)
                    except OSError:
                        break
                    if not data:
                        break
                    self.raw += data
                self.status = os.waitstatus_to_exitcode(status)
                return self.status
        raise AssertionError("top did not exit")

    def close(self) -> None:
        if self.status is None:
            with_suppress_kill(self.pid)
        os.close(self.fd)


def with_suppress_kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass


def _data_rows(frame: list[str]) -> list[str]:
    titles = next(i for i, line in enumerate(frame) if line.startswith("fingerprint "))
    return [line for line in frame[titles + 1 :] if re.match(r"^[0-9a-f]{16} ", line)]


def test_live_view_keys_and_terminal_restored(loaded: tuple[RunningProxy, str]) -> None:
    proxy, sleep_fp = loaded
    stop = threading.Event()

    def traffic() -> None:  # a steady stream of cheap calls: a rate to show, a calls leader
        with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
            while not stop.is_set():
                conn.execute("select 42 as answer").fetchall()
                time.sleep(0.005)

    worker = threading.Thread(target=traffic, daemon=True)
    worker.start()
    env = {**os.environ, "TERM": "xterm-256color", "NO_COLOR": "1", "LANG": "C.UTF-8"}
    env.pop("COLUMNS", None)
    env.pop("LINES", None)
    term = Terminal(
        [sys.executable, "-m", "dbproxy", "top", "--url", proxy.http_url, "--interval", "0.5"],
        env,
    )
    try:
        frame = term.wait_frame(lambda f: "sort: total_time" in f[0], timeout=10)
        assert frame[0].startswith(f"dbproxy top  {proxy.http_url}  ")
        assert all(len(line) <= COLS for line in frame)
        first = _data_rows(frame)[0]
        assert first.startswith(sleep_fp) and "pg_sleep($1)" in first
        assert " read " in first and " SELECT " in first
        titles = next(line for line in frame if line.startswith("fingerprint "))
        assert "total▼" in titles and "calls/s" in titles and "p95" in titles
        assert frame[LINES - 1].startswith("t total  c calls  m mean")  # keys on the last line

        # the cheap statement gets a rate once two polls have seen it move
        def answer_has_rate(f: list[str]) -> bool:
            rows = [line for line in _data_rows(f) if "answer" in line]
            return bool(rows) and re.match(r"^\S+ +\d+(\.\d+)? ", rows[0]) is not None

        frame = term.wait_frame(answer_has_rate, timeout=6)
        assert _data_rows(frame)[0].startswith(sleep_fp)  # still first by total time

        # `c`: sort by calls; the indicator moves and the busy statement comes first
        time.sleep(0.3)
        term.send(b"c")
        frame = term.wait_frame(
            lambda f: "sort: calls" in f[0] and "answer" in _data_rows(f)[0], timeout=6
        )
        titles = next(line for line in frame if line.startswith("fingerprint "))
        assert "calls▼" in titles and "total▼" not in titles

        # a narrower, shorter terminal: redrawn to fit, the query cut with an ellipsis
        term.resize(80, 20)
        frame = term.wait_frame(lambda f: "t total" in f[19] and len(f[2]) <= 80, timeout=5)
        assert all(len(line) <= 80 for line in frame[:20])
        assert "pg_sleep($1)" in "\n".join(frame[:20])
        assert any(line.endswith("…") for line in frame[:20] if "pg_class" in line)

        term.send(b"q")
        assert term.wait_exit(timeout=5) == 0
    finally:
        stop.set()
        worker.join(5)
        term.close()

    raw = term.raw
    top_out, _, stty = raw.partition(b"@@STTY@@")
    assert b"\x1b[?1049h" in top_out  # entered the alternate screen …
    assert top_out.rindex(b"\x1b[?1049l") > top_out.rindex(b"\x1b[H")  # … and left it last
    assert top_out.rindex(b"\x1b[?25h") > top_out.rindex(b"\x1b[?25l")  # cursor shown again
    # cbreak undone: the shell's stty sees the canonical, echoing terminal it started with
    settings = stty.decode(errors="replace").split()
    assert "icanon" in settings and "echo" in settings, stty
    assert "rows 20; columns 80;" in stty.decode()  # the size the test gave it last
    # NO_COLOR: attributes (bold, reverse) but no foreground/background colors
    for params in SGR.findall(top_out):
        codes = [int(p) for p in params.split(b";") if p]
        assert not any(30 <= c <= 49 or 90 <= c <= 107 for c in codes), params


@pytest.mark.parametrize("sigint_ignored", [False, True], ids=["sigint-default", "sigint-ignored"])
def test_ctrl_c_restores_the_terminal(
    loaded: tuple[RunningProxy, str], sigint_ignored: bool
) -> None:
    proxy, _ = loaded
    env = {**os.environ, "TERM": "xterm", "LANG": "C.UTF-8"}
    argv = [sys.executable, "-m", "dbproxy", "top", "--url", proxy.http_url]
    term = Terminal(argv, env, sigint_ignored=sigint_ignored)
    try:
        term.wait_frame(lambda f: f[0].startswith("dbproxy top"), timeout=10)
        term.send(b"\x03")  # Ctrl-C: the terminal's intr character, SIGINT to the foreground
        assert term.wait_exit(timeout=5) == 0
    finally:
        term.close()
    top_out, _, stty = term.raw.partition(b"@@STTY@@")
    assert top_out.rindex(b"\x1b[?1049l") > top_out.rindex(b"\x1b[H")
    assert b"Traceback" not in top_out
    settings = stty.decode(errors="replace").split()
    assert "icanon" in settings and "echo" in settings, stty


def test_failed_polls_show_on_the_status_line(pg_server: PgServer) -> None:
    proxy = start_proxy(pg_server)
    env = {**os.environ, "TERM": "xterm", "LANG": "C.UTF-8"}
    argv = [sys.executable, "-m", "dbproxy", "top", "--url", proxy.http_url, "--interval", "0.3"]
    term = Terminal(argv, env)
    try:
        frame = term.wait_frame(lambda f: f[0].startswith("dbproxy top"), timeout=10)
        assert "no queries yet" in "\n".join(frame)
        proxy.stop()  # the proxy goes away: top stays, says so, and keeps trying
        frame = term.wait_frame(lambda f: f[LINES - 1].startswith("poll failed at "), timeout=5)
        assert f"cannot reach {proxy.http_url}" in frame[LINES - 1]
        assert frame[0].startswith("dbproxy top")  # the last data stays on screen
        term.wait_frame(
            lambda f: re.match(r"poll failed at \S+ \(([3-9]|\d\d+)x\)", f[-1]) is not None,
            timeout=5,
        )
        term.send(b"q")
        assert term.wait_exit(timeout=5) == 0
    finally:
        term.close()
        proxy.stop()
