"""The monitor as the drain feeds it: events + tracing notes in, findings with example
trace ids out (synthetic events, injected clock)."""

from __future__ import annotations

from dbproxy.observe.aggregator import StatementNote
from dbproxy.observe.detector import DetectorSettings
from dbproxy.observe.regression import RegressionMonitor
from dbproxy.protocol.events import Event, StatementFinished
from dbproxy.sql.cache import Fingerprinter

SQL = "SELECT * FROM orders WHERE customer_id = $1"
OTHER = "SELECT * FROM products WHERE id = $1"


def statement(text: str, duration_ms: float) -> StatementFinished:
    return StatementFinished(
        session_id=1,
        user="app",
        database="shop",
        application_name="web",
        protocol="extended",
        text=text,
        statement_name=None,
        portal_name=None,
        param_type_oids=(),
        function_oid=None,
        start_ns=0,
        end_ns=int(duration_ms * 1e6),
        duration_ns=int(duration_ms * 1e6),
        start_epoch_ns=0,
        rows=1,
        rolled_back=False,
        in_transaction=False,
        command="SELECT",
    )


def test_slow_traced_executions_become_the_findings_example_traces() -> None:
    now = [1_800_000_000.0]
    fingerprinter = Fingerprinter()
    monitor = RegressionMonitor(
        fingerprinter=fingerprinter,
        settings=DetectorSettings(window_s=120, min_calls=10),
        clock=lambda: now[0],
    )
    for minute in range(16):
        slow = minute >= 13
        events: list[Event] = []
        notes: dict[int, StatementNote] = {}
        for i in range(10):
            events.append(statement(SQL, 40.0 + i if slow else 1.0))
            if slow:
                notes[len(events) - 1] = StatementNote(
                    fingerprint=fingerprinter.fingerprint(SQL),
                    trace_id=f"{minute:02d}{i:030x}",
                    span_id=f"{i:016x}",
                )
            events.append(statement(OTHER, 2.0))
        monitor.consume(events, notes)
        now[0] += 60
        monitor.tick()
    [finding] = monitor.detector.open_findings()
    assert finding.type == "latency_regression"
    assert finding.query == SQL
    # the three slowest traced executions still in the window
    assert len(finding.trace_ids) == 3
    assert all(
        t.endswith(f"{9:030x}") or t.endswith(f"{8:030x}") or t.endswith(f"{7:030x}")
        for t in finding.trace_ids
    )
    assert monitor.published.open_findings == ((finding.fingerprint, "latency_regression"),)


def test_findings_api_carries_the_fingerprints_top_wait_events() -> None:
    import asyncio
    import json

    from dbproxy.export.findings import FindingsEndpoints
    from dbproxy.export.http import Request

    now = [1_800_000_000.0]
    monitor = RegressionMonitor(
        fingerprinter=Fingerprinter(),
        settings=DetectorSettings(window_s=120, min_calls=10),
        clock=lambda: now[0],
    )
    for minute in range(16):
        monitor.consume([statement(SQL, 40.0 if minute >= 13 else 1.0) for _ in range(10)])
        now[0] += 60
        monitor.tick()
    [finding] = monitor.detector.open_findings()
    asked: list[tuple[str, str, float, float]] = []

    def waits(fp: str, db: str, since: float, until: float) -> dict[str, float]:
        asked.append((fp, db, since, until))
        return {"Lock/transactionid": 3.5, "CPU": 1.0}

    def get(endpoints: FindingsEndpoints) -> list[dict[str, object]]:
        request = Request(method="GET", path="/api/findings", query=(), headers={})
        response = asyncio.run(endpoints.findings(request))
        rows: list[dict[str, object]] = json.loads(response.body)
        return rows

    [row] = get(FindingsEndpoints(monitor, wait_events=waits))
    assert row["wait_events"] == {"Lock/transactionid": 3.5, "CPU": 1.0}
    assert asked == [(finding.fingerprint, "shop", finding.first_seen - 120, finding.last_seen)]
    [plain] = get(FindingsEndpoints(monitor))  # no activity sampler: no key
    assert "wait_events" not in plain
