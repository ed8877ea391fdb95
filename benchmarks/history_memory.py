"""Memory of the regression monitor (history + detector) at 10,000 active fingerprints.

    .venv/bin/python -m benchmarks.history_memory [--fingerprints N] [--per-minute K]

Every fingerprint runs ``K`` times in every simulated minute (each with a route tag, 2%
failing, a few traced), for long enough to reach the steady state: the recent window
full of minutes (15), eight trailing-window summaries per key, the open block, one
deploy's before/after copies.  Reports the Python heap the monitor holds (tracemalloc,
fingerprints pre-made so the fingerprinter's caches are not counted), the process RSS,
the cost per consumed statement and of one evaluation.  Memory only: no store.
"""

from __future__ import annotations

import argparse
import gc
import resource
import time
import tracemalloc
from collections.abc import Iterator

from dbproxy.observe.aggregator import StatementNote
from dbproxy.observe.detector import DetectorSettings
from dbproxy.observe.regression import RegressionMonitor
from dbproxy.protocol.events import Event, ServerError, StatementFailed, StatementFinished
from dbproxy.sql.fingerprint import Fingerprint, fingerprint

ERROR = ServerError(severity="ERROR", sqlstate="23505", message="duplicate key")


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


class NoFingerprinter:
    """Notes carry every fingerprint: the monitor never needs to fingerprint."""

    def fingerprint(self, sql: str) -> Fingerprint:
        raise AssertionError("unexpected")

    def fingerprint_many(self, sql: str) -> list[Fingerprint]:
        raise AssertionError("unexpected")


def make_fingerprints(n: int) -> list[Fingerprint]:
    base = fingerprint("SELECT a, b FROM t WHERE id = $1 /*route='/r'*/")
    out = []
    for i in range(n):
        text = f"SELECT a, b FROM table_{i} WHERE id = $1 AND status = $2"
        out.append(
            Fingerprint(
                id=f"{i:016x}",
                text=text,
                summary=f"SELECT table_{i}",
                operation="SELECT",
                kind=base.kind,
                tables=(f"table_{i}",),
                parse_ok=True,
                tags=base.tags,
            )
        )
    return out


def minute_batches(
    fps: list[Fingerprint], per_minute: int, minute: int, batch: int = 2000
) -> Iterator[tuple[list[Event], dict[int, StatementNote]]]:
    events: list[Event] = []
    notes: dict[int, StatementNote] = {}
    i = 0
    for rep in range(per_minute):
        for n, fp in enumerate(fps):
            i += 1
            common = {
                "session_id": n % 50,
                "user": "app",
                "database": "shop",
                "application_name": "svc",
                "protocol": "extended",
                "text": "x",  # not read: the note carries the fingerprint
                "statement_name": None,
                "portal_name": None,
                "param_type_oids": (),
                "function_oid": None,
                "start_ns": 0,
                "end_ns": 1_000_000 + n,
                "duration_ns": 1_000_000 + (n * 7919 + rep * 104729 + minute) % 3_000_000,
                "start_epoch_ns": 0,
                "rows": 1,
                "rolled_back": False,
                "in_transaction": False,
            }
            if i % 50 == 0:
                ev: Event = StatementFailed(**common, error=ERROR, phase="execute")  # type: ignore[arg-type]
            else:
                ev = StatementFinished(**common, command="SELECT")  # type: ignore[arg-type]
            trace = f"{i:032x}" if i % 100 == 0 else ""
            notes[len(events)] = StatementNote(fingerprint=fp, trace_id=trace, span_id="")
            events.append(ev)
            if len(events) >= batch:
                yield events, notes
                events, notes = [], {}
    if events:
        yield events, notes


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--fingerprints", type=int, default=10_000)
    parser.add_argument("--per-minute", type=int, default=1)
    parser.add_argument("--minutes", type=int, default=15 * 10 + 1)
    parser.add_argument(
        "--timing", action="store_true", help="no tracemalloc (it slows Python down ~3x)"
    )
    args = parser.parse_args()

    fps = make_fingerprints(args.fingerprints)
    clock = Clock()
    gc.collect()
    if not args.timing:
        tracemalloc.start()
    before, _ = tracemalloc.get_traced_memory()
    monitor = RegressionMonitor(
        fingerprinter=NoFingerprinter(),
        settings=DetectorSettings(),
        clock=clock,
        max_fingerprints=args.fingerprints,
    )
    consumed = 0
    consume_s = 0.0
    evaluate_s: list[float] = []
    longest_step_s = 0.0
    for minute in range(args.minutes):
        if minute == args.minutes - 8:
            monitor.mark_deploy("bench-v2")  # its before/after copies count too
        for events, notes in minute_batches(fps, args.per_minute, minute):
            started = time.perf_counter()
            monitor.consume(events, notes)
            consume_s += time.perf_counter() - started
            consumed += len(events)
        clock.now += 60
        if minute % 15 == 0 or minute >= args.minutes - 3:
            started = time.perf_counter()
            steps = monitor.tick_steps()
            step_started = started
            while True:  # as App.detect runs it: the loop runs between steps
                try:
                    next(steps)
                except StopIteration:
                    break
                now_s = time.perf_counter()
                longest_step_s = max(longest_step_s, now_s - step_started)
                step_started = now_s
            longest_step_s = max(longest_step_s, time.perf_counter() - step_started)
            evaluate_s.append(time.perf_counter() - started)
    gc.collect()
    current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    held = (current - before) / 1e6
    print(
        f"fingerprints {args.fingerprints:,}, {args.per_minute}/min each, {args.minutes} minutes "
        f"({consumed:,} statements)"
    )
    if not args.timing:
        print(f"monitor heap: {held:.1f} MB held, {(peak - before) / 1e6:.1f} MB peak")
    print(f"process max RSS: {rss_mb:.0f} MB (interpreter, the benchmark's data, tracemalloc)")
    print(f"consume: {consume_s / consumed * 1e6:.2f} µs per statement")
    print(
        f"evaluate: {max(evaluate_s) * 1000:.0f} ms max, "
        f"{sorted(evaluate_s)[len(evaluate_s) // 2] * 1000:.0f} ms median"
    )
    print(f"longest step between event-loop turns: {longest_step_s * 1000:.0f} ms")
    print(f"in memory: {monitor.history.minutes_in_memory()} minutes")


if __name__ == "__main__":
    main()
