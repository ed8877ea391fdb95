"""Span building micro-benchmark: CPU µs per span in the drain consumer.

    .venv/bin/python -m benchmarks.tracing

Statement events as the session emits them, each with a sqlcommenter traceparent (a new
one per statement, as instrumented applications send them: the fingerprinter's exact
cache is bypassed, the shape cache answers), consumed in batches of 2,000 by
``Tracing.consume`` with the real batch processor and a no-op exporter (the export
thread's encoding is not on the drain path).  Reported: process CPU time per span, for
the span builder alone and for span builder + aggregator with its notes (the drain), and
the cost of the statements that carry no context (the default: no span).
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from dbproxy.export.otel import TracingSettings, build_tracing
from dbproxy.observe.aggregator import Aggregator
from dbproxy.protocol.events import Event, StatementFinished
from dbproxy.sql.cache import Fingerprinter

EPOCH = 1_700_000_000_000_000_000
BATCH = 2_000


class NullExporter(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def workload(n: int, *, traced: bool, seed: int = 1) -> list[Event]:
    rnd = random.Random(seed)
    events: list[Event] = []
    for i in range(n):
        text = f"SELECT a, b FROM table_{i % 50} WHERE id = $1 AND status = $2"
        if traced:
            trace_id = rnd.getrandbits(128)
            span_id = rnd.getrandbits(64)
            text += f" /*route='%2Fr{i % 7}',traceparent='00-{trace_id:032x}-{span_id:016x}-01'*/"
        events.append(
            StatementFinished(
                session_id=i % 16,
                user="app",
                database="app",
                application_name="bench",
                protocol="extended",
                text=text,
                statement_name=None,
                portal_name=None,
                param_type_oids=(23, 25),
                function_oid=None,
                start_ns=i * 1000,
                end_ns=i * 1000 + 500_000,
                duration_ns=500_000,
                start_epoch_ns=EPOCH + i * 1000,
                rows=1,
                rolled_back=False,
                in_transaction=False,
                command="SELECT",
            )
        )
    return events


def run(events: list[Event], *, aggregate: bool, settings: TracingSettings) -> float:
    fingerprinter = Fingerprinter()
    tracing = build_tracing(
        settings,
        {"OTEL_BSP_MAX_QUEUE_SIZE": str(len(events) + 1)},
        fingerprinter=fingerprinter,
        upstream_host="db",
        upstream_port=5432,
        exporter=NullExporter(),
    )
    assert tracing is not None
    aggregator = Aggregator(fingerprinter=fingerprinter)
    # warm the shape cache (steady state: known queries, new literals/comments)
    tracing.consume(events[:200])
    started = time.process_time()
    for i in range(0, len(events), BATCH):
        batch = events[i : i + BATCH]
        notes = tracing.consume(batch)
        if aggregate:
            aggregator.consume(batch, notes)
    cpu = time.process_time() - started
    tracing.shutdown()
    return cpu


def main() -> None:
    n = 50_000
    traced = workload(n, traced=True)
    plain = workload(n, traced=False)
    settings = TracingSettings()
    for label, events, aggregate in (
        ("span builder, traced statements", traced, False),
        ("span builder + aggregator (drain), traced", traced, True),
        ("span builder, statements without context", plain, False),
    ):
        best = min(run(events, aggregate=aggregate, settings=settings) for _ in range(3))
        print(f"{label:45s} {best / n * 1e6:7.2f} µs per statement")
    proxy = min(
        run(traced, aggregate=False, settings=TracingSettings(proxy_span=True)) for _ in range(3)
    )
    print(f"{'span builder, --proxy-span (2 spans)':45s} {proxy / n * 1e6:7.2f} µs per statement")
    fp = Fingerprinter()
    fp.fingerprint(str(traced[0].text))  # type: ignore[attr-defined]
    started = time.process_time()
    for ev in traced:
        fp.fingerprint(ev.text)  # type: ignore[attr-defined]
    print(
        f"{'  of which: fingerprint (shape-cache hit)':45s} "
        f"{(time.process_time() - started) / n * 1e6:7.2f} µs per statement"
    )


if __name__ == "__main__":
    main()
