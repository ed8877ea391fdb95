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
