"""Aggregator micro-benchmark: µs per event for ``consume`` and ms per ``snapshot``.

    .venv/bin/python -m benchmarks.aggregator

The mix: 100,000 statement events over 50 fingerprints (extended-protocol texts, so the
Fingerprinter's exact cache answers), 3 applications, 2% failed, 1% rolled back, 10% in
transactions, plus session and transaction events; consumed in batches of 2,000 (20k
statements/s drained every 100 ms).  Snapshots are timed with 10,000 keys.
"""

from __future__ import annotations

import random
import time
from dataclasses import replace

from dbproxy.observe.aggregator import Aggregator
from dbproxy.protocol.events import (
    Event,
    ServerError,
    SessionOpened,
    StatementFailed,
    StatementFinished,
    TransactionFinished,
)
from dbproxy.sql.cache import Fingerprinter

EPOCH = 1_700_000_000_000_000_000
ERROR = ServerError(severity="ERROR", sqlstate="23505", message="duplicate key")


def workload(n: int, fingerprints: int, seed: int = 1) -> list[Event]:
    rnd = random.Random(seed)
    texts = [
        f"SELECT a, b FROM table_{i} WHERE id = $1 AND status = $2 /*route='/r{i % 7}'*/"
        if i % 5 == 0
        else f"SELECT a, b FROM table_{i} WHERE id = $1 AND status = $2"
        for i in range(fingerprints)
    ]
    events: list[Event] = [
        SessionOpened(
            session_id=s,
            user="app",
            database="shop",
            application_name=f"svc-{s % 3}",
            backend_pid=1000 + s,
            server_version="18",
            protocol_version=(3, 0),
            at_ns=0,
            at_epoch_ns=EPOCH,
        )
        for s in range(20)
    ]
    t = 0
    for i in range(n):
        sid = i % 20
        duration = int(rnd.expovariate(1 / 2_000_000))
        common = {
            "session_id": sid,
            "user": "app",
            "database": "shop",
            "application_name": f"svc-{sid % 3}",
            "protocol": "extended",
            "text": texts[int(rnd.paretovariate(1.2)) % fingerprints],
            "statement_name": "",
            "portal_name": "",
            "param_type_oids": (23, 25),
            "function_oid": None,
            "start_ns": t,
            "end_ns": t + duration,
            "duration_ns": duration,
            "start_epoch_ns": EPOCH + t,
            "rows": rnd.randint(0, 20),
            "rolled_back": rnd.random() < 0.01,
            "in_transaction": rnd.random() < 0.1,
        }
        t += 50_000
        if rnd.random() < 0.02:
            events.append(StatementFailed(**common, error=ERROR, phase="execute"))  # type: ignore[arg-type]
        else:
            events.append(StatementFinished(**common, command="SELECT"))  # type: ignore[arg-type]
        if i % 10 == 9:
            events.append(
                TransactionFinished(
                    session_id=sid, committed=True, start_ns=t - 1_000, end_ns=t, statements=3
                )
            )
    return events


def bench_consume(events: list[Event], batch: int = 2_000, repeat: int = 5) -> float:
    best = float("inf")
    for _ in range(repeat):
        agg = Aggregator(fingerprinter=Fingerprinter())
        agg.consume(events[:batch])  # warm the fingerprint cache
        started = time.perf_counter()
        for i in range(0, len(events), batch):
            agg.consume(events[i : i + batch])
        best = min(best, time.perf_counter() - started)
    return best / len(events) * 1e6


def bench_snapshot(keys: int = 10_000, repeat: int = 5) -> tuple[float, float, float]:
    """(cold, warm, top=100) ms: cold right after every key changed, warm with none."""
    template = workload(1, 1)[-1]
    assert isinstance(template, StatementFinished)
    batch = [replace(template, text=f"SELECT c{i} FROM t") for i in range(keys)]
    cold = warm = top = float("inf")
    for _ in range(repeat):
        agg = Aggregator(fingerprinter=Fingerprinter(), max_fingerprints=keys)
        agg.consume(batch)
        started = time.perf_counter()
        agg.snapshot()
        cold = min(cold, time.perf_counter() - started)
        started = time.perf_counter()
        agg.snapshot()
        warm = min(warm, time.perf_counter() - started)
        started = time.perf_counter()
        agg.snapshot(top=100)
        top = min(top, time.perf_counter() - started)
    return cold * 1e3, warm * 1e3, top * 1e3


def main() -> None:
    events = workload(100_000, 50)
    us = bench_consume(events)
    cold, warm, top = bench_snapshot()
    print(f"consume: {us:.2f} µs/event ({len(events):,} events, 50 fingerprints)")
    print(f"snapshot of 10,000 keys: {cold:.1f} ms all changed, {warm:.1f} ms none changed,")
    print(f"  {top:.1f} ms with top=100")


if __name__ == "__main__":
    main()
