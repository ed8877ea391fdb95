"""Drain micro-benchmark: instructions (callgrind) or µs per statement that the drain spends
on a ``StatementFinished``, with the consumers wired as ``app.py`` wires them by default
(aggregator, then regression monitor; no tracing notes, no query log, no inspector).

    .venv/bin/python -m benchmarks.drain                 # µs per statement (best of 3)
    .venv/bin/python -m benchmarks.drain --callgrind     # instructions per statement
    .venv/bin/python -m benchmarks.drain --callgrind --only aggregator --mode simple

The events are real: pgbench's select-only ``-M extended`` transaction fed through 16
:class:`Session` machines round robin (so a batch interleaves 16 sessions, each with its
own decoded text object, as in the proxy), 2,048 of them, handed to the consumers in
slices of ``DISPATCH_SLICE`` on a clock that moves 100 ms per batch.  ``--callgrind`` runs
this script twice under ``valgrind --tool=callgrind`` (1 and 5 passes over the events) and
divides the difference by the extra statements, so start-up and warm-up cancel out; the
figure does not depend on the load of the machine.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks.callgrind import instructions_of_module
from benchmarks.session_loop import startup, transactions
from dbproxy.app import DISPATCH_SLICE
from dbproxy.observe.aggregator import Aggregator, StatementNote
from dbproxy.observe.detector import DetectorSettings
from dbproxy.observe.regression import RegressionMonitor
from dbproxy.observe.sink import QueueSink
from dbproxy.protocol.events import Event, StatementFinished
from dbproxy.protocol.session import Session
from dbproxy.sql.cache import Fingerprinter

SESSIONS = 16
POOL = 2_048

NoteConsumer = Callable[[list[Event], "dict[int, StatementNote] | None"], None]


def events(n: int = POOL, sessions: int = SESSIONS, mode: str = "extended") -> list[Event]:
    """``n`` statement events (and nothing else) of pgbench ``-S -M mode``."""
    sink = QueueSink(1 << 20)
    machines = []
    clock = 1_000_000
    for sid in range(sessions):
        session = Session(session_id=sid + 1, emit=sink, epoch_offset_ns=0)
        c0, s0 = startup()
        session.client_data(c0, clock)
        session.server_data(s0, clock + 1_000)
        machines.append(session)
    sink.drain()  # SessionOpened
    txs = transactions(mode, n // sessions + 1)
    for i, (client, server) in enumerate(txs):
        for session in machines:
            clock += 20_000
            session.client_data(client, clock)
            # 50 µs to 1.3 ms: a few histogram buckets
            session.server_data(server, clock + 50_000 + (i * 7919 % 1_250_000))
    out: list[Event] = [ev for ev in sink.drain() if isinstance(ev, StatementFinished)]
    del out[n:]
    if len(out) != n:
        raise SystemExit(f"expected {n} statements, the sessions emitted {len(out)}")
    return out


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def consumers(clock: Clock, only: str) -> tuple[list[NoteConsumer], Aggregator]:
    fingerprinter = Fingerprinter()
    aggregator = Aggregator(fingerprinter=fingerprinter, max_fingerprints=10_000, clock=clock)
    monitor = RegressionMonitor(
        fingerprinter=fingerprinter, settings=DetectorSettings(), clock=clock
    )
    wired: list[NoteConsumer] = []
    if only in ("all", "aggregator"):
        wired.append(aggregator.consume)
    if only in ("all", "regression"):
        wired.append(monitor.consume)
    return wired, aggregator


def run(passes: int, only: str, pool: list[Event] | None = None, mode: str = "extended") -> float:
    """Seconds for ``passes`` passes over the pool, after one warm-up pass."""
    pool = events(mode=mode) if pool is None else pool
    clock = Clock()
    wired, _ = consumers(clock, only)
    failures = [0]

    def one_pass() -> None:
        for start in range(0, len(pool), DISPATCH_SLICE):
            part = pool[start : start + DISPATCH_SLICE]
            for consume in wired:  # as App._dispatch
                try:
                    consume(part, None)
                except Exception:
                    failures[0] += 1  # counted, as App._consumer_failed does
            clock.now += 0.1

    one_pass()
    t0 = time.perf_counter()
    for _ in range(passes):
        one_pass()
    elapsed = time.perf_counter() - t0
    if failures[0]:
        raise SystemExit(f"{failures[0]} consumer failures")
    return elapsed


def _instructions(passes: int, only: str, mode: str, work: Path) -> int:
    return instructions_of_module(
        "benchmarks.drain",
        ["--passes", str(passes), "--only", only, "--mode", mode],
        work / f"drain-{mode}-{only}-{passes}.cg",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--callgrind", action="store_true")
    parser.add_argument("--only", choices=("all", "aggregator", "regression"), default="all")
    parser.add_argument("--mode", choices=("extended", "prepared", "simple"), default="extended")
    parser.add_argument("--passes", type=int, default=0, help="(internal) run N passes")
    parser.add_argument("--keep", type=Path, help="keep the callgrind files in this directory")
    args = parser.parse_args()
    if args.passes:
        run(args.passes, args.only, mode=args.mode)
        return
    import dbproxy.observe.aggregator as module

    compiled = not module.__file__ or module.__file__.endswith(".so")
    print(f"observe modules: {'compiled' if compiled else 'pure Python'}")
    if args.callgrind:
        with tempfile.TemporaryDirectory(prefix="dbproxy-drain-") as tmp:
            work = args.keep or Path(tmp)
            work.mkdir(parents=True, exist_ok=True)
            low = _instructions(1, args.only, args.mode, work)
            high = _instructions(5, args.only, args.mode, work)
        per = (high - low) / (4 * POOL)
        print(f"drain ({args.only}, -M {args.mode}): {per:,.0f} instructions per statement")
        return
    pool = events(mode=args.mode)
    best = min(run(20, args.only, pool) for _ in range(3))
    print(
        f"drain ({args.only}, -M {args.mode}): {best / (20 * POOL) * 1e6:.3f} µs per statement"
        " (best of 3)"
    )


if __name__ == "__main__":
    main()
