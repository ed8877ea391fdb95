"""Notifications of new findings: a Slack incoming webhook and/or a generic JSON webhook.

Off unless a URL is configured (``DBPROXY_SLACK_WEBHOOK_URL``, ``DBPROXY_WEBHOOK_URL``,
environment or config file only: they are secrets).  If Alertmanager already routes the
``dbproxy_findings`` alert, leave these unset: choose one, so a team is paged once.

The detector calls :meth:`Notifier.finding_changed` on the event loop; it only builds the
message (from the finding as it is now: fingerprint, normalized query, before/after
numbers, deploy, plan change, links) and queues it.  One worker thread delivers with
retries and exponential backoff; outcomes are counted per target (``sent``, ``failed``
after the last retry, ``dropped`` when the queue is full, ``suppressed`` by dedup or the
cool-down).  Nothing here can block or fail the proxy.

Dedup and cool-down: a finding is announced once, when it opens; another finding of the
same fingerprint and type within ``cooldown_s`` is suppressed.  Resolutions are not sent.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from dbproxy.observe.detector import Finding

__all__ = ["RUNBOOKS", "Notifier", "NotifierSettings", "render_message"]

log = logging.getLogger(__name__)

#: finding type -> runbook file in deploy/runbooks
RUNBOOKS: Final[Mapping[str, str]] = {
    "latency_regression": "DBProxyQueryLatencyRegression.md",
    "new_heavy": "DBProxyNewSlowQuery.md",
    "error_spike": "DBProxyQueryErrorSpike.md",
    "throughput_drop": "DBProxyThroughputDrop.md",
}
_TITLES: Final[Mapping[str, str]] = {
    "latency_regression": "latency regression",
    "new_heavy": "new heavy query",
    "error_spike": "error spike",
    "rows_per_call_jump": "rows per call jump",
    "throughput_drop": "throughput drop",
    "rows_scanned_jump": "rows scanned jump",
    "plan_change": "plan change",
    "n_plus_one": "N+1 queries",
}
_MAX_QUERY_CHARS: Final = 500
OUTCOMES: Final = ("sent", "failed", "dropped", "suppressed")


@dataclass(frozen=True, slots=True, kw_only=True)
class NotifierSettings:
    slack_url: str | None = None
    webhook_url: str | None = None
    public_url: str | None = None
    runbook_url: str | None = None
    cooldown_s: float = 3600.0
    retries: int = 4
    backoff_s: float = 1.0
    timeout_s: float = 5.0
    queue_size: int = 100


def _num(value: float | None, unit: str = "") -> str:
    if value is None or value != value:  # noqa: PLR0124 - NaN check
        return "n/a"
    return f"{value:,.1f}{unit}" if abs(value) < 1000 else f"{value:,.0f}{unit}"


def _change(finding: Finding) -> str:
    b, a = finding.before, finding.after
    match finding.type:
        case "latency_regression" | "new_heavy":
            line = f"p95 {_num(b.get('p95_ms'), ' ms')} → {_num(a.get('p95_ms'), ' ms')}"
            bp, ap = b.get("p95_ms", float("nan")), a.get("p95_ms", float("nan"))
            if bp == bp and ap == ap and bp > 0:  # noqa: PLR0124 - NaN checks
                line += f" ({ap / bp:.1f}x)"
            return line + f"; calls {_num(b.get('calls'))} → {_num(a.get('calls'))}"
        case "error_spike":
            return (
                f"SQLSTATE class {finding.detail} errors; calls {_num(b.get('calls'))} → "
                f"{_num(a.get('calls'))}"
            )
        case "rows_per_call_jump":
            return f"rows per call {_num(b.get('rows_per_call'))} → {_num(a.get('rows_per_call'))}"
        case "throughput_drop":
            return (
                f"calls per minute {_num(b.get('calls_per_min'))} → {_num(a.get('calls_per_min'))}"
            )
        case "rows_scanned_jump":
            return (
                f"rows scanned per call {_num(b.get('rows_scanned_per_call'))} → "
                f"{_num(a.get('rows_scanned_per_call'))}"
            )
        case "n_plus_one":
            return (
                f"{_num(a.get('executions_per_request_median'))} executions per request "
                f"(max {_num(a.get('executions_per_request_max'))}), "
                f"{_num(a.get('time_per_request_ms'), ' ms')} per request"
            )
        case _:
            return ""


def links(finding: Finding, settings: NotifierSettings) -> dict[str, str]:
    out: dict[str, str] = {}
    if settings.public_url:
        base = settings.public_url.rstrip("/")
        out["ui"] = f"{base}/#findings"
        out["finding"] = f"{base}/api/findings?id={finding.id}"
    if settings.runbook_url:
        out["runbook"] = (
            f"{settings.runbook_url.rstrip('/')}/{RUNBOOKS.get(finding.type, 'README.md')}"
        )
    return out


def render_message(finding: Finding, settings: NotifierSettings) -> str:
    """Plain text (Slack mrkdwn) naming everything a responder needs first."""
    title = _TITLES.get(finding.type, finding.type)
    query = finding.query[:_MAX_QUERY_CHARS]
    if len(finding.query) > _MAX_QUERY_CHARS:
        query += "…"
    lines = [
        f"*dbproxy: {title}* — fingerprint `{finding.fingerprint}` (database {finding.database})",
        f"```{query}```",
    ]
    change = _change(finding)
    if change:
        lines.append(change)
    if finding.deploy is not None:
        lines.append(f"after deploy *{finding.deploy.label()}*")
    if finding.plan:
        p = finding.plan
        lines.append(
            f"plan changed: {p['before_summary']} → {p['after_summary']} "
            f"(plan {p['before_plan_id']} → {p['after_plan_id']})"
        )
    if finding.tags:
        lines.append(", ".join(f"{k} {v}" for k, v in sorted(finding.tags.items())))
    if finding.trace_ids:
        lines.append("example traces: " + ", ".join(finding.trace_ids))
    found = links(finding, settings)
    if found:
        lines.append(" | ".join(f"<{url}|{name}>" for name, url in found.items()))
    return "\n".join(lines)


def slack_payload(finding: Finding, settings: NotifierSettings) -> dict[str, Any]:
    text = render_message(finding, settings)
    return {"text": text, "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": text}}]}


def webhook_payload(finding: Finding, settings: NotifierSettings) -> dict[str, Any]:
    return {
        "event": "finding_opened",
        "finding": finding.as_json(),
        "message": render_message(finding, settings),
        "links": links(finding, settings),
    }


@dataclass(frozen=True, slots=True)
class _Delivery:
    target: str  # "slack" | "webhook"
    url: str
    body: bytes


Poster = Callable[[str, bytes, float], None]


def _post(url: str, body: bytes, timeout: float) -> None:
    request = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        response.read()


class Notifier:
    def __init__(
        self,
        settings: NotifierSettings,
        *,
        clock: Callable[[], float] = time.time,
        post: Poster = _post,
        sleep: Callable[[float], bool] | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self._post = post
        self._stop = threading.Event()
        self._sleep = sleep or self._stop.wait  # returns True when stopping
        urls = (("slack", settings.slack_url), ("webhook", settings.webhook_url))
        self.targets = tuple(t for t, url in urls if url)
        self.counts: dict[tuple[str, str], int] = {
            (t, o): 0 for t in self.targets for o in OUTCOMES
        }
        self._announced: set[str] = set()
        self._last: dict[tuple[str, str], float] = {}  # (fingerprint, type) -> when sent
        self._queue: queue.Queue[_Delivery | None] = queue.Queue(settings.queue_size)
        self._thread = threading.Thread(target=self._run, name="dbproxy-notify", daemon=True)
        self._thread.start()

    def _count(self, target: str, outcome: str) -> None:
        self.counts[(target, outcome)] = self.counts.get((target, outcome), 0) + 1

    def finding_changed(self, finding: Finding) -> None:
        """The detector's listener (on the loop): queue the announcement of a new finding."""
        if finding.state != "open":
            return
        if finding.id in self._announced:
            return
        self._announced.add(finding.id)
        now = self.clock()
        slot = (finding.fingerprint, finding.type)
        last = self._last.get(slot)
        if last is not None and now - last < self.settings.cooldown_s:
            for target in self.targets:
                self._count(target, "suppressed")
            return
        self._last[slot] = now
        s = self.settings
        for target, url, payload in (
            ("slack", s.slack_url, slack_payload),
            ("webhook", s.webhook_url, webhook_payload),
        ):
            if not url:
                continue
            body = json.dumps(payload(finding, s), ensure_ascii=False, allow_nan=False).encode()
            try:
                self._queue.put_nowait(_Delivery(target, url, body))
            except queue.Full:
                self._count(target, "dropped")

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                self._deliver(item)
            finally:
                self._queue.task_done()

    def _deliver(self, item: _Delivery) -> None:
        s = self.settings
        for attempt in range(s.retries + 1):
            try:
                self._post(item.url, item.body, s.timeout_s)
            except (OSError, urllib.error.URLError, ValueError) as exc:
                # never log the URL: a webhook URL is a secret
                log.warning(
                    "notification to %s failed (attempt %d of %d): %s",
                    item.target,
                    attempt + 1,
                    s.retries + 1,
                    type(exc).__name__,
                )
                if attempt < s.retries and not self._stop.is_set():
                    if self._sleep(s.backoff_s * 2**attempt):
                        break
                    continue
                break
            else:
                self._count(item.target, "sent")
                return
        self._count(item.target, "failed")

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Wait until everything queued was delivered or given up (tests)."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.01)
        return not self._queue.unfinished_tasks

    def close(self, timeout: float = 5.0) -> None:
        self._stop.set()
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(None)
        self._thread.join(timeout)


def build_notifier(
    settings: NotifierSettings, *, clock: Callable[[], float] = time.time
) -> Notifier | None:
    """A notifier when a URL is configured, else None (off)."""
    if not (settings.slack_url or settings.webhook_url):
        return None
    return Notifier(settings, clock=clock)
