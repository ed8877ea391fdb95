"""Session-loop micro-benchmark: µs per pgbench transaction spent in the pure observer.

    .venv/bin/python -m benchmarks.session_loop [--tx 100000] [--profile]
    .venv/bin/python -m benchmarks.session_loop --callgrind [--mode extended]

Feeds the bytes of pgbench's select-only transaction (``-M extended``, ``-M prepared``
and ``-M simple``: one read per direction per transaction, as a busy proxy sees them)
through ``Session.client_data`` / ``Session.server_data``, with the sink's ``put`` as
``emit``, then hands the events to the aggregator like the drain does.  What it measures
is the observer's share of the proxy's CPU per transaction; the relay's own cost
(syscalls, uvloop) is measured end to end by ``benchmarks.perf``.

``--profile`` prints the top of a cProfile of the extended-protocol loop.

``--callgrind`` counts instead the instructions per transaction of the session machine
alone (no aggregator): this script runs twice under ``valgrind --tool=callgrind`` (1 and 3
passes over 2,000 transactions, the sink drained every 2,000 as the drain would, the
collector tuned as a serving process's, ``app.tune_gc``) and the difference is divided by
the extra transactions, so start-up is not counted; independent of the machine's load.
The figure includes this script's interpreted loop (two calls and two clock reads per
transaction, ≈ 1.9k instructions), which ``proxy/forward.py`` does natively in the proxy.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import struct
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks.callgrind import instructions_of_module
from dbproxy.observe.aggregator import Aggregator
from dbproxy.observe.sink import QueueSink
from dbproxy.protocol.events import StatementFinished
from dbproxy.protocol.session import Session
from dbproxy.sql.cache import Fingerprinter

SELECT = "SELECT abalance FROM pgbench_accounts WHERE aid = $1;"
_POOL = 2_000  # transactions per pass (--callgrind)


def msg(t: bytes, payload: bytes) -> bytes:
    return t + struct.pack("!I", len(payload) + 4) + payload


def cstr(s: str) -> bytes:
    return s.encode() + b"\x00"


def startup() -> tuple[bytes, bytes]:
    params = b"user\x00app\x00database\x00shop\x00application_name\x00pgbench\x00\x00"
    client = struct.pack("!II", len(params) + 8, 196608) + params
    server = (
        msg(b"R", struct.pack("!I", 0))
        + msg(b"S", cstr("server_version") + cstr("18.0"))
        + msg(b"S", cstr("client_encoding") + cstr("UTF8"))
        + msg(b"K", struct.pack("!II", 4242, 99))
        + msg(b"Z", b"I")
    )
    return client, server


def _bind(statement: str, aid: int) -> bytes:
    value = str(aid).encode()
    return msg(
        b"B",
        cstr("")
        + cstr(statement)
        + struct.pack("!HH", 0, 1)
        + struct.pack("!I", len(value))
        + value
        + struct.pack("!H", 0),
    )


def _answer(*, parse: bool) -> bytes:
    row = msg(b"D", struct.pack("!HI", 1, 4) + b"4242")
    desc = msg(
        b"T",
        struct.pack("!H", 1) + cstr("abalance") + struct.pack("!IHIhih", 16400, 3, 23, 4, -1, 0),
    )
    return (
        (msg(b"1", b"") if parse else b"")
        + msg(b"2", b"")
        + desc
        + row
        + msg(b"C", cstr("SELECT 1"))
        + msg(b"Z", b"I")
    )


def transactions(mode: str, n: int) -> list[tuple[bytes, bytes]]:
    """(client bytes, server bytes) of ``n`` transactions in pgbench's ``-M mode``."""
    txs: list[tuple[bytes, bytes]] = []
    if mode == "prepared":
        prepare = msg(b"P", cstr("P0_1") + cstr(SELECT) + struct.pack("!H", 0))
        prepare += msg(b"D", b"S" + cstr("P0_1")) + msg(b"S", b"")
        txs.append((prepare, msg(b"1", b"") + msg(b"t", b"\x00\x00") + msg(b"Z", b"I")))
    for i in range(n):
        aid = 1 + (i * 7919) % 100_000
        if mode == "extended":
            client = (
                msg(b"P", cstr("") + cstr(SELECT) + struct.pack("!H", 0))
                + _bind("", aid)
                + msg(b"D", b"P" + cstr(""))
                + msg(b"E", cstr("") + struct.pack("!I", 0))
                + msg(b"S", b"")
            )
            server = _answer(parse=True)
        elif mode == "prepared":
            client = (
                _bind("P0_1", aid)
                + msg(b"D", b"P" + cstr(""))
                + msg(b"E", cstr("") + struct.pack("!I", 0))
                + msg(b"S", b"")
            )
            server = _answer(parse=False)
        else:
            client = msg(b"Q", cstr(SELECT.replace("$1", str(aid))))
            server = _answer(parse=False)[len(msg(b"2", b"")) :]
        txs.append((client, server))
    return txs


def logged_in(sink: QueueSink) -> Session:
    """A session past its startup (what the proxy observes first), emitting into ``sink``."""
    session = Session(session_id=1, emit=sink, epoch_offset_ns=0)
    c0, s0 = startup()
    session.client_data(c0, 0)
    session.server_data(s0, 1)
    return session


def run(mode: str, n: int, wrap: Callable[[Callable[[], None]], None] | None = None) -> float:
    """µs per transaction for session + drain to the aggregator."""
    sink = QueueSink(1 << 20)
    aggregator = Aggregator(fingerprinter=Fingerprinter(), max_fingerprints=10_000)
    session = logged_in(sink)
    txs = transactions(mode, n)
    now = time.monotonic_ns

    def loop() -> None:
        client_data = session.client_data
        server_data = session.server_data
        for i, (client, server) in enumerate(txs):
            client_data(client, now())
            server_data(server, now())
            if i % 2000 == 1999:
                aggregator.consume(sink.drain(), None)
        aggregator.consume(sink.drain(), None)

    t0 = time.perf_counter()
    if wrap is None:
        loop()
    else:
        wrap(loop)
    elapsed = time.perf_counter() - t0
    calls = sum(s.calls for s in aggregator.snapshot(top=None).queries)
    if calls != n:
        raise SystemExit(f"{mode}: expected {n} calls, the aggregator counted {calls}")
    return elapsed / n * 1e6


def session_passes(mode: str, passes: int) -> None:
    """(--callgrind, internal) ``passes`` times over ``_POOL`` transactions, session only."""
    from dbproxy.app import tune_gc

    tune_gc()
    sink = QueueSink(1 << 20)
    session = logged_in(sink)
    txs = transactions(mode, _POOL)
    now = time.monotonic_ns
    client_data, server_data = session.client_data, session.server_data
    for _ in range(passes):
        for client, server in txs:
            client_data(client, now())
            server_data(server, now())
        if sum(isinstance(e, StatementFinished) for e in sink.drain()) != _POOL:
            raise SystemExit(f"{mode}: the session did not emit one statement per transaction")


def _instructions(mode: str, passes: int, work: Path) -> int:
    return instructions_of_module(
        "benchmarks.session_loop",
        ["--passes", str(passes), "--mode", mode],
        work / f"session-{mode}-{passes}.cg",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tx", type=int, default=100_000)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--callgrind", action="store_true")
    parser.add_argument("--mode", choices=("extended", "prepared", "simple"), default="extended")
    parser.add_argument("--passes", type=int, default=0, help="(internal) run N passes")
    parser.add_argument("--keep", type=Path, help="keep the callgrind files in this directory")
    args = parser.parse_args()
    if args.passes:
        session_passes(args.mode, args.passes)
        return
    import dbproxy.protocol.session as session_module

    compiled = not session_module.__file__ or session_module.__file__.endswith(".so")
    print(f"session module: {'compiled' if compiled else 'pure Python'}")
    if args.callgrind:
        with tempfile.TemporaryDirectory(prefix="dbproxy-session-") as tmp:
            work = args.keep or Path(tmp)
            work.mkdir(parents=True, exist_ok=True)
            low = _instructions(args.mode, 1, work)
            high = _instructions(args.mode, 3, work)
        per = (high - low) / (2 * _POOL)
        print(f"session machine, -M {args.mode}: {per:,.0f} instructions per transaction")
        return
    for mode in ("extended", "prepared", "simple"):
        best = min(run(mode, args.tx) for _ in range(3))
        print(f"-M {mode:9s} {best:6.2f} µs/tx (session + aggregator, best of 3)")
    if args.profile:
        profiler = cProfile.Profile()

        def wrap(loop: Callable[[], None]) -> None:
            profiler.runcall(loop)

        run("extended", args.tx, wrap)
        pstats.Stats(profiler).sort_stats("tottime").print_stats(15)


if __name__ == "__main__":
    main()
