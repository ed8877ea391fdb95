"""`dbproxy demo` as a user runs it: a separate process, short, on free ports.

One run (≈ 30 s) checks the whole story: the regression is announced with the right
fingerprint, that query ends up on top by p95, the attribution (applications, routes)
is there, no literal from the workload leaks into the API or the metrics, and the
process exits 0 leaving no PostgreSQL process and no temporary directory behind.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from dbproxy.demo.run import DEMO_DEPLOY
from dbproxy.demo.schema import REGRESSED_INDEX
from dbproxy.demo.workload import APPLICATIONS, SENTINEL_EMAIL, regressed_statement
from dbproxy.sql.fingerprint import fingerprint

DURATION_S = 30
REGRESSION_AFTER_S = 8


class DemoProcess:
    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dbproxy", "demo", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        for stream, sink in ((self.proc.stdout, self.stdout), (self.proc.stderr, self.stderr)):
            threading.Thread(target=self._read, args=(stream, sink), daemon=True).start()

    @staticmethod
    def _read(stream: Any, sink: list[str]) -> None:
        for line in stream:
            sink.append(line)

    def wait_for(self, pattern: str, timeout: float) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.stdout):
                match = re.search(pattern, line)
                if match:
                    return match
            if self.proc.poll() is not None:
                time.sleep(0.2)  # let the readers catch up, then one last look
                for line in list(self.stdout):
                    if match := re.search(pattern, line):
                        return match
                break
            time.sleep(0.05)
        raise AssertionError(
            f"no line matching {pattern!r} within {timeout} s\n"
            f"stdout:\n{''.join(self.stdout)}\nstderr:\n{''.join(self.stderr)}"
        )

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        body: str = response.read().decode()
    return body


def clearly_on_top(rows: list[dict[str, Any]], fid: str) -> bool:
    return (
        len(rows) > 1
        and rows[0]["fingerprint"] == fid
        and rows[0]["p95_ms"] > 2 * rows[1]["p95_ms"]
    )


def processes_mentioning(text: str) -> list[str]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in args:
            found.append(f"{cmdline.parent.name}: {args}")
    return found


def test_demo_regression_is_found_and_everything_is_cleaned_up() -> None:
    expected = fingerprint(regressed_statement()).id
    demo = DemoProcess(
        "--duration",
        str(DURATION_S),
        "--regression-after",
        str(REGRESSION_AFTER_S),
        "--listen",
        "127.0.0.1:0",
        "--http-listen",
        "127.0.0.1:0",
    )
    try:
        root = Path(demo.wait_for(r"\(data in (\S+)\)", 20).group(1))
        api = demo.wait_for(r"Queries API\s+(http://\S+)/api/queries", 20).group(1)
        psql = demo.wait_for(r"Join in\s+.*'(postgresql://\S+)'", 5).group(1)
        assert re.search(r"@127\.0\.0\.1:\d+/app$", psql), psql

        announced = demo.wait_for(
            r"regression injected: dropped index (\S+); watch fingerprint ([0-9a-f]{16}) / (.*) \(",
            REGRESSION_AFTER_S + 10,
        )
        assert announced.group(1) == REGRESSED_INDEX
        assert announced.group(2) == expected
        assert "customer_id = $1" in announced.group(3)

        # the detector's finding: that fingerprint, that deploy, before/after numbers
        demo.wait_for(rf"finding latency_regression on fingerprint {expected} after deploy", 20)
        findings = json.loads(get(f"{api}/api/findings?type=latency_regression"))
        regressed = [f for f in findings if f["fingerprint"] == expected]
        assert regressed, findings
        assert regressed[0]["deploy"]["version"] == DEMO_DEPLOY
        assert regressed[0]["after"]["p95_ms"] > 2 * regressed[0]["before"]["p95_ms"]
        assert "customer_id = $1" in regressed[0]["query"]
        # nothing else slowed down
        assert {f["fingerprint"] for f in findings} == {expected}, findings

        # p95 since the start: a few seconds of seq scans put it well above everything else
        deadline = time.monotonic() + 12
        while True:
            raw = get(f"{api}/api/queries?sort=p95&limit=10000")
            rows = json.loads(raw)["queries"]
            if clearly_on_top(rows, expected) or time.monotonic() > deadline:
                break
            time.sleep(1)
        top = [(r["fingerprint"], r["p95_ms"], r["summary"]) for r in rows[:5]]
        assert rows[0]["fingerprint"] == expected, top
        assert rows[0]["p95_ms"] > 2 * rows[1]["p95_ms"], top
        assert rows[0]["p95_ms"] >= 5.0, top

        applications = {a["value"] for r in rows for a in r["applications"]}
        assert set(APPLICATIONS) <= applications, applications
        routes = {t["value"] for r in rows for t in r["tags"].get("route", [])}
        assert {"/account/orders", "/products/:id", "/checkout", "/signup"} <= routes, routes
        assert any("23505" in r["errors"] for r in rows), "no unique violation seen"
        assert sum(r["calls"] for r in rows) > 1000

        # literals never leave the proxy: not in the API, the metrics or the demo's output
        metrics = get(f"{api}/metrics")
        for text in (raw, metrics, "".join(demo.stdout), json.dumps(findings)):
            assert SENTINEL_EMAIL not in text
            assert "s3cr3t" not in text
        assert get(f"{api}/").strip(), "the web UI answers at /"

        assert demo.proc.wait(DURATION_S + 15) == 0, "".join(demo.stderr)
    finally:
        demo.kill()
    stdout = "".join(demo.stdout)
    assert f"PostgreSQL stopped, {root} removed" in stdout, stdout
    assert "Traceback" not in "".join(demo.stderr), "".join(demo.stderr)
    assert not root.exists()
    assert processes_mentioning(str(root)) == []
