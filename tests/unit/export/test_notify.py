"""Notifications: message content, dedup and cool-down, retries with backoff, counting.
Delivery goes to an injected poster (the integration test posts to a real HTTP server)."""

from __future__ import annotations

import json
import threading

from dbproxy.export.notify import Notifier, NotifierSettings, render_message
from dbproxy.observe.detector import Deploy, Finding


def finding(fid: str = "abcdef0123456789", kind: str = "latency_regression", n: int = 1) -> Finding:
    return Finding(
        id=f"id{n}",
        fingerprint=fid,
        database="shop",
        query="SELECT * FROM orders WHERE customer_id = $1",
        type=kind,
        detail="",
        before={"p95_ms": 0.4, "calls": 300.0},
        after={"p95_ms": 18.0, "calls": 280.0},
        deploy=Deploy(version="v2.3", at=1_800_000_000.0, source="api"),
        first_seen=1_800_000_100.0,
        last_seen=1_800_000_100.0,
        plan={
            "before_plan_id": "p1",
            "after_plan_id": "p2",
            "before_summary": "Index Scan",
            "after_summary": "Seq Scan",
        },
    )


class Poster:
    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.calls: list[tuple[str, bytes]] = []
        self.lock = threading.Lock()

    def __call__(self, url: str, body: bytes, timeout: float) -> None:
        with self.lock:
            self.calls.append((url, body))
            if self.failures:
                self.failures -= 1
                raise OSError("connection refused")


SETTINGS = NotifierSettings(
    slack_url="https://hooks.slack.example/T/B/secret",
    public_url="http://proxy:9391",
    runbook_url="https://runbooks.example",
    backoff_s=0.001,
    retries=2,
)


def test_message_names_everything_a_responder_needs() -> None:
    text = render_message(finding(), SETTINGS)
    for part in (
        "latency regression",
        "abcdef0123456789",
        "customer_id = $1",
        "0.4 ms → 18.0 ms",
        "v2.3 at",
        "Index Scan → Seq Scan",
        "https://runbooks.example/DBProxyQueryLatencyRegression.md",
        "http://proxy:9391/#findings",
    ):
        assert part in text, part


def test_dedup_cooldown_retries_and_counts() -> None:
    now = [1000.0]
    poster = Poster(failures=1)
    notifier = Notifier(SETTINGS, clock=lambda: now[0], post=poster)
    try:
        notifier.finding_changed(finding(n=1))
        notifier.finding_changed(finding(n=1))  # same finding: announced once
        notifier.finding_changed(finding(n=2))  # same fingerprint and type: cool-down
        now[0] += 4000
        notifier.finding_changed(finding(n=3))  # after the cool-down
        resolved = finding(n=4)
        resolved.state = "resolved"
        notifier.finding_changed(resolved)  # resolutions are not sent
        assert notifier.wait_idle()
        assert len(poster.calls) == 3  # one failure, its retry, the third finding
        assert notifier.counts[("slack", "sent")] == 2
        assert notifier.counts[("slack", "suppressed")] == 1
        assert notifier.counts[("slack", "failed")] == 0
        body = json.loads(poster.calls[0][1])
        assert "abcdef0123456789" in body["text"] and body["blocks"]
    finally:
        notifier.close()


def test_failures_after_the_last_retry_are_counted_and_a_full_queue_drops() -> None:
    gate = threading.Event()

    def blocked(url: str, body: bytes, timeout: float) -> None:
        gate.wait(5)
        raise OSError("down")

    settings = NotifierSettings(
        webhook_url="http://127.0.0.1:9/hook", retries=1, backoff_s=0.001, queue_size=1
    )
    notifier = Notifier(settings, post=blocked)
    try:
        for n in range(4):
            notifier.finding_changed(finding(fid=f"{n:016x}", n=n))
        gate.set()
        assert notifier.wait_idle()
        assert notifier.counts[("webhook", "failed")] >= 1
        assert notifier.counts[("webhook", "dropped")] >= 1
        assert notifier.counts[("webhook", "failed")] + notifier.counts[("webhook", "dropped")] == 4
    finally:
        notifier.close()
