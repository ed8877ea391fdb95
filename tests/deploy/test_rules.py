"""The shipped Prometheus rules and Alertmanager config: promtool, amtool, a real Alertmanager.

deploy/prometheus/rules/dbproxy.rules.yml is checked and unit-tested with promtool
(deploy/prometheus/tests/dbproxy.rules.test.yml); deploy/alertmanager/alertmanager.yml is
checked with amtool and then run: a real Alertmanager, with the shipped Slack template,
posts to a local HTTP server standing in for Slack.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from dbproxy.pgcluster import free_port

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
RULES = DEPLOY / "prometheus" / "rules" / "dbproxy.rules.yml"
RULE_TESTS = DEPLOY / "prometheus" / "tests" / "dbproxy.rules.test.yml"
ALERTMANAGER_YML = DEPLOY / "alertmanager" / "alertmanager.yml"
TEMPLATES = DEPLOY / "alertmanager" / "templates"
RUNBOOKS = DEPLOY / "runbooks"
ALERTMANAGER_BIN = "/usr/bin/prometheus-alertmanager"

ALERTS = (
    "DBProxyQueryLatencyRegression",
    "DBProxyNewSlowQuery",
    "DBProxyQueryErrorSpike",
    "DBProxyThroughputDrop",
    "DBProxyUpstreamDown",
    "DBProxyEventsDropped",
    "DBProxyRegressionFinding",
)


def _tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"{name} not found: .ci/run installs it (Debian package '{package}': "
            f"apt-get install {package})"
        )
    return path


def _run(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, check=False, timeout=60)


def test_promtool_check_rules() -> None:
    result = _run([_tool("promtool", "prometheus"), "check", "rules", str(RULES)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_test_rules() -> None:
    result = _run([_tool("promtool", "prometheus"), "test", "rules", str(RULE_TESTS)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_a_unit_test_a_runbook_and_links() -> None:
    rules = RULES.read_text()
    tests = RULE_TESTS.read_text()
    assert rules.count("- alert: ") == len(ALERTS)
    for alert in ALERTS:
        assert f"- alert: {alert}\n" in rules
        assert f"alertname: {alert}\n" in tests, f"no firing test for {alert}"
        assert f"alertname: {alert}, exp_alerts: []" in tests, f"no quiet test for {alert}"
        assert (RUNBOOKS / f"{alert}.md").is_file(), f"no runbook for {alert}"
        url = f"https://github.com/dbproxy/dbproxy/blob/main/deploy/runbooks/{alert}.md"
        assert url in rules


def test_amtool_check_config() -> None:
    result = _run(
        [_tool("amtool", "prometheus-alertmanager"), "check-config", str(ALERTMANAGER_YML)]
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 templates" in result.stdout  # the relative template glob resolves


def test_the_slack_webhook_is_never_inline() -> None:
    config = ALERTMANAGER_YML.read_text()
    assert "api_url_file: /etc/alertmanager/slack_webhook_url" in config
    assert "api_url:" not in config
    assert "hooks.slack.com" not in config


# --- a real Alertmanager posting to a fake Slack ------------------------------------------


class _Slack:
    """A local HTTP server that records the JSON bodies POSTed to it."""

    def __init__(self) -> None:
        self.payloads: list[dict[str, object]] = []
        self.received = threading.Event()
        slack = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                slack.payloads.append({"path": self.path, "body": json.loads(body)})
                slack.received.set()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> _Slack:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def slack() -> Iterator[_Slack]:
    with _Slack() as server:
        yield server


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status)
    except (urllib.error.URLError, OSError):
        return 0


@pytest.fixture
def alertmanager(tmp_path: Path, slack: _Slack) -> Iterator[str]:
    if not Path(ALERTMANAGER_BIN).is_file():
        pytest.fail(
            f"{ALERTMANAGER_BIN} not found: .ci/run installs it "
            "(Debian package 'prometheus-alertmanager')"
        )
    # A copy of the shipped config: the webhook file and group_wait are the only changes.
    webhook = tmp_path / "slack_webhook_url"
    webhook.write_text(f"http://127.0.0.1:{slack.port}/slack\n")
    config = ALERTMANAGER_YML.read_text()
    assert "api_url_file: /etc/alertmanager/slack_webhook_url" in config
    assert "group_wait: 30s" in config
    config = config.replace("/etc/alertmanager/slack_webhook_url", str(webhook))
    config = config.replace("group_wait: 30s", "group_wait: 1s")
    (tmp_path / "alertmanager.yml").write_text(config)
    shutil.copytree(TEMPLATES, tmp_path / "templates")
    (tmp_path / "data").mkdir()

    port = free_port()
    log = (tmp_path / "alertmanager.log").open("wb")
    process = subprocess.Popen(
        [
            ALERTMANAGER_BIN,
            f"--config.file={tmp_path / 'alertmanager.yml'}",
            f"--storage.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 10
        while _get(f"{base}/-/ready") != 200:
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(
                    "alertmanager did not start:\n" + (tmp_path / "alertmanager.log").read_text()
                )
            time.sleep(0.1)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


TIMES = "\u00d7"  # the ratio annotation's multiplication sign
FINGERPRINT = "3f9a1c0e5b7d2a41"
DASHBOARD_PATH = f"/d/dbproxy-top-queries/dbproxy-top-queries?var-fingerprint={FINGERPRINT}"
QUERY = "SELECT * FROM orders WHERE customer_id = $1 AND created_at > $2"
RUNBOOK = (
    "https://github.com/dbproxy/dbproxy/blob/main/deploy/runbooks/DBProxyQueryLatencyRegression.md"
)


def test_alertmanager_sends_the_regression_to_slack_and_inhibits_new_slow_query(
    alertmanager: str, slack: _Slack
) -> None:
    alert = {
        "labels": {
            "alertname": "DBProxyQueryLatencyRegression",
            "fingerprint": FINGERPRINT,
            "severity": "warning",
            "summary": "SELECT orders",
        },
        "annotations": {
            "summary": f"Query {FINGERPRINT} p95 latency is 10.0{TIMES} what it was a day ago",
            "description": "p95 over 15 minutes of SELECT orders is 480ms",
            "query": QUERY,
            "ratio": f"10.0{TIMES}",
            "dashboard": DASHBOARD_PATH,
            "runbook_url": RUNBOOK,
        },
    }
    # The same query also flagged as new: the inhibit rule must keep it out of Slack.
    new_slow_query = {
        "labels": {
            "alertname": "DBProxyNewSlowQuery",
            "fingerprint": FINGERPRINT,
            "severity": "warning",
        },
        "annotations": {"summary": f"New query {FINGERPRINT}", "query": QUERY},
    }
    request = urllib.request.Request(
        f"{alertmanager}/api/v2/alerts",
        data=json.dumps([alert, new_slow_query]).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 200

    assert slack.received.wait(timeout=10), "no Slack webhook call within 10 s"
    call = slack.payloads[0]
    assert call["path"] == "/slack"
    body = call["body"]
    assert isinstance(body, dict)
    [attachment] = body["attachments"]
    text = attachment["text"]
    # The normalized query, Slack-escaped, in a code block
    assert "```SELECT * FROM orders WHERE customer_id = $1 AND created_at &gt; $2```" in text
    assert f"*Ratio:* 10.0{TIMES}" in text
    assert f"<{RUNBOOK}|Runbook>" in text
    dashboard = f"https://grafana.example.com{DASHBOARD_PATH}"
    assert f"<{dashboard}|Dashboard>" in text
    assert attachment["title"] == f"[FIRING:1] DBProxyQueryLatencyRegression ({FINGERPRINT})"
    assert attachment["title_link"] == dashboard
    assert attachment["color"] == "warning"

    # Both groups flush after group_wait (1 s); give the inhibited one time to show up.
    time.sleep(2.5)
    titles = [c["body"]["attachments"][0]["title"] for c in slack.payloads]  # type: ignore[index]
    assert titles == [attachment["title"]], titles


def _post(alertmanager: str, alerts: list[dict[str, object]]) -> None:
    request = urllib.request.Request(
        f"{alertmanager}/api/v2/alerts",
        data=json.dumps(alerts).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 200


def test_a_detector_finding_pages_once_for_its_query(alertmanager: str, slack: _Slack) -> None:
    """One event, one page: the detector's finding mutes the PromQL latency alerts of the
    same fingerprint, not those of another query."""
    other = "0123456789abcdef"

    def alert(name: str, fingerprint: str) -> dict[str, object]:
        return {
            "labels": {"alertname": name, "fingerprint": fingerprint, "severity": "warning"},
            "annotations": {"summary": f"{name} {fingerprint}", "query": QUERY},
        }

    finding = alert("DBProxyRegressionFinding", FINGERPRINT)
    finding["labels"]["type"] = "latency"  # type: ignore[index]
    _post(
        alertmanager,
        [
            finding,
            alert("DBProxyQueryLatencyRegression", FINGERPRINT),
            alert("DBProxyNewSlowQuery", FINGERPRINT),
            alert("DBProxyQueryLatencyRegression", other),
        ],
    )
    assert slack.received.wait(timeout=10), "no Slack webhook call within 10 s"
    time.sleep(3)  # every group has flushed (group_wait 1 s)
    titles = sorted(c["body"]["attachments"][0]["title"] for c in slack.payloads)  # type: ignore[index]
    assert titles == [
        f"[FIRING:1] DBProxyQueryLatencyRegression ({other})",
        f"[FIRING:1] DBProxyRegressionFinding ({FINGERPRINT})",
    ], titles
