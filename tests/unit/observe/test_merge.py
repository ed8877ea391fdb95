"""Merging worker snapshots: the merge of a split workload is the aggregate of the whole;
the JSON codec of worker dumps round-trips exactly."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dbproxy.observe.aggregator import Aggregator, StatementNote
from dbproxy.observe.dump import (
    DumpError,
    ProxyTotals,
    QueryLogTotals,
    SinkTotals,
    SpanTotals,
    WorkerDump,
    counters_of,
    decode_dump,
    encode_dump,
)
from dbproxy.observe.merge import fold_top, merge_histograms, merge_snapshots, sum_counters
from dbproxy.observe.stats import OTHER, Exemplar, Histogram, StatsSnapshot
from dbproxy.protocol.events import (
    Event,
    ServerError,
    SessionClosed,
    SessionOpened,
    StatementFailed,
    StatementFinished,
    TransactionFinished,
)
from dbproxy.sql.cache import Fingerprinter

EPOCH = 1_700_000_000_000_000_000
MS = 1_000_000
NOW = 1_700_000_000.0

# a few statements, with literals that vary and sqlcommenter attribution
TEXTS = [
    "SELECT * FROM users WHERE id = {n}",
    "SELECT * FROM orders WHERE customer_id = {n} /*route='%2Forders',controller='shop'*/",
    "UPDATE accounts SET balance = balance - {n} WHERE id = 1",
    "INSERT INTO audit VALUES ({n}, 'x') /*route='%2Faudit'*/",
    "SELECT pg_sleep({n})",
    "DELETE FROM carts WHERE id = {n} /*application='cleaner'*/",
]
DURATIONS = [1, 499_999, 500_000, 500_001, 3 * MS, 40 * MS, 2_500 * MS, 31_000 * MS]
SESSIONS = {  # session id -> (database, user, application_name)
    1: ("shop", "alice", "web"),
    2: ("shop", "alice", "worker"),
    3: ("shop", "bob", "web"),
    4: ("crm", "alice", ""),
    5: ("crm", "carol", "reports"),
    6: ("shop", "alice", "web"),
}


class Clock:
    def __call__(self) -> float:
        return NOW


def new_aggregator(**kw: int) -> Aggregator:
    return Aggregator(fingerprinter=Fingerprinter(), clock=Clock(), **kw)  # type: ignore[arg-type]


@st.composite
def workloads(draw: st.DrawFn) -> list[tuple[Event, StatementNote | None]]:
    """A stream of events of several sessions, in time order (each ends later than the
    previous one, so 'latest exemplar' means the same in any split)."""
    n = draw(st.integers(min_value=0, max_value=60))
    out: list[tuple[Event, StatementNote | None]] = []
    opened: set[int] = set()
    for i in range(n):
        sid = draw(st.sampled_from(sorted(SESSIONS)))
        database, user, app = SESSIONS[sid]
        start_epoch = EPOCH + i * 100_000 * MS  # 100 s apart: ends are increasing
        if sid not in opened and draw(st.booleans()):
            opened.add(sid)
            out.append(
                (
                    SessionOpened(
                        session_id=sid,
                        user=user,
                        database=database,
                        application_name=app,
                        backend_pid=1000 + sid,
                        server_version="18.0",
                        protocol_version=(3, 0),
                        at_ns=i,
                        at_epoch_ns=start_epoch,
                    ),
                    None,
                )
            )
        kind = draw(st.sampled_from(["ok", "ok", "ok", "fail", "tx", "close"]))
        if kind == "tx":
            out.append(
                (
                    TransactionFinished(
                        session_id=sid,
                        committed=draw(st.booleans()),
                        start_ns=0,
                        end_ns=draw(st.sampled_from(DURATIONS)),
                        statements=2,
                    ),
                    None,
                )
            )
            continue
        if kind == "close":
            opened.discard(sid)
            out.append(
                (
                    SessionClosed(session_id=sid, at_ns=i, interrupted=0, observation_lost=False),
                    None,
                )
            )
            continue
        text = draw(st.sampled_from(TEXTS)).format(n=draw(st.integers(0, 9)))
        duration = draw(st.sampled_from(DURATIONS))
        common = {
            "session_id": sid,
            "user": user,
            "database": database,
            "application_name": app,
            "protocol": draw(st.sampled_from(["simple", "extended"])),
            "text": text,
            "statement_name": None,
            "portal_name": None,
            "param_type_oids": (),
            "function_oid": None,
            "start_ns": 0,
            "end_ns": duration,
            "duration_ns": duration,
            "start_epoch_ns": start_epoch,
            "rows": draw(st.integers(0, 5)),
            "rolled_back": draw(st.booleans()),
            "in_transaction": draw(st.booleans()),
        }
        event: Event
        if kind == "fail":
            event = StatementFailed(
                **common,  # type: ignore[arg-type]
                error=ServerError(
                    severity="ERROR", sqlstate=draw(st.sampled_from(["23505", "57014"])), message=""
                ),
                phase="execute",
            )
        else:
            event = StatementFinished(**common, command="SELECT")  # type: ignore[arg-type]
        note = None
        if draw(st.booleans()):
            note = StatementNote(trace_id=f"{i:032x}", span_id=f"{i + 1:016x}")
        out.append((event, note))
    return out


def feed(agg: Aggregator, items: list[tuple[Event, StatementNote | None]]) -> None:
    for event, note in items:
        agg.consume([event], {0: note} if note is not None else None)


def split(
    items: list[tuple[Event, StatementNote | None]], owner: dict[int, int], parts: int
) -> list[list[tuple[Event, StatementNote | None]]]:
    """Each session's events go to the worker that accepted it, in order."""
    out: list[list[tuple[Event, StatementNote | None]]] = [[] for _ in range(parts)]
    for item in items:
        out[owner[item[0].session_id] % parts].append(item)
    return out


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    items=workloads(),
    parts=st.integers(1, 3),
    owner=st.fixed_dictionaries({sid: st.integers(0, 2) for sid in SESSIONS}),
    top=st.integers(0, 7),
)
def test_merge_of_splits_is_the_aggregate_of_the_whole(
    items: list[tuple[Event, StatementNote | None]], parts: int, owner: dict[int, int], top: int
) -> None:
    whole = new_aggregator()
    feed(whole, items)
    workers = [new_aggregator() for _ in range(parts)]
    for agg, share in zip(workers, split(items, owner, parts), strict=True):
        feed(agg, share)

    merged = merge_snapshots([w.snapshot() for w in workers])
    expected = whole.snapshot()
    assert merged == expected
    # the cardinality guard applied after merging = the whole's own guard
    assert fold_top(merged, top) == whole.snapshot(top=top)
    # and through the codec, as the snapshots travel between processes
    dumps = [decode_dump(encode_dump(dump_of(w.snapshot(), i))) for i, w in enumerate(workers)]
    assert merge_snapshots([d.snapshot for d in dumps]) == expected


def dump_of(snapshot: StatsSnapshot, worker: int = 1, *, optional: bool = True) -> WorkerDump:
    fp = Fingerprinter()
    fp.fingerprint("SELECT 1")
    return WorkerDump(
        worker=worker,
        pid=4242 + worker,
        snapshot=snapshot,
        proxy=ProxyTotals(connections_accepted=3, bytes_from_client=10, bytes_from_server=2**40),
        sink=SinkTotals(accepted=5, dropped=1, capacity=65536),
        fingerprinter=fp.stats,
        spans=SpanTotals(created=4, exported=3, dropped=1) if optional else None,
        query_log=QueryLogTotals(lines_written=9) if optional else None,
    )


def traced_snapshot() -> StatsSnapshot:
    agg = new_aggregator()
    feed(
        agg,
        [
            (
                StatementFinished(
                    session_id=1,
                    user="u ü",
                    database='d"b',
                    application_name="app\n",
                    protocol="simple",
                    text="SELECT * FROM t WHERE a = 1 /*route='%2Fx'*/",
                    statement_name=None,
                    portal_name=None,
                    param_type_oids=(),
                    function_oid=None,
                    start_ns=0,
                    end_ns=d,
                    duration_ns=d,
                    start_epoch_ns=EPOCH + d,
                    rows=1,
                    rolled_back=False,
                    in_transaction=False,
                    command="SELECT",
                ),
                StatementNote(trace_id="ab" * 16, span_id="cd" * 8),
            )
            for d in (1, 3 * MS, 12 * MS, 3 * MS + 1)
        ],
    )
    agg.consume(
        [TransactionFinished(session_id=1, committed=True, start_ns=0, end_ns=7 * MS, statements=1)]
    )
    return agg.snapshot()


@pytest.mark.parametrize("optional", [True, False])
def test_codec_round_trip_is_exact(optional: bool) -> None:
    dump = dump_of(traced_snapshot(), optional=optional)
    assert dump.snapshot.queries[0].duration.exemplars  # the test covers exemplars
    data = encode_dump(dump)
    assert decode_dump(data) == dump
    json.loads(data)  # plain JSON


def test_codec_refuses_garbage() -> None:
    good = json.loads(encode_dump(dump_of(traced_snapshot())))
    for bad in (b"", b"[]", b'{"v": 99}', b"not json"):
        with pytest.raises(DumpError):
            decode_dump(bad)
    broken = dict(good, proxy={"connections_accepted": "3"})
    with pytest.raises(DumpError):
        decode_dump(json.dumps(broken).encode())
    snapshot = dict(good["snapshot"])
    snapshot["queries"] = [good["snapshot"]["queries"][0][:5]]
    with pytest.raises(DumpError):
        decode_dump(json.dumps(dict(good, snapshot=snapshot)).encode())


def test_histograms_add_bucket_by_bucket_and_keep_the_latest_exemplar() -> None:
    bounds = (0.001, 0.01)
    old = Exemplar(trace_id="1" * 32, span_id="1" * 16, value_s=0.0005, timestamp_s=10.0)
    new = Exemplar(trace_id="2" * 32, span_id="2" * 16, value_s=0.0007, timestamp_s=20.0)
    a = Histogram(
        bounds=bounds, bucket_counts=(1, 0, 2), count=3, sum_s=0.1, exemplars=(new, None, None)
    )
    b = Histogram(
        bounds=bounds, bucket_counts=(4, 1, 0), count=5, sum_s=0.2, exemplars=(old, None, None)
    )
    c = Histogram(bounds=bounds, bucket_counts=(0, 0, 1), count=1, sum_s=0.7)
    m = merge_histograms([a, b, c])
    assert m.bucket_counts == (5, 1, 3) and m.count == 9
    assert m.sum_s == pytest.approx(1.0) and m.exemplars == (new, None, None)
    with pytest.raises(ValueError, match="bounds"):
        merge_histograms([a, Histogram(bounds=(1.0,), bucket_counts=(0, 0), count=0, sum_s=0)])


def test_attribution_beyond_the_bound_keeps_its_sum() -> None:
    """Each worker bounds its attribution values; the merge re-bounds the sum."""
    workers = [new_aggregator(max_tag_values=2) for _ in range(2)]
    apps = [["a", "b", "c", "c"], ["d", "d", "d", "a", "e"]]
    for agg, names in zip(workers, apps, strict=True):
        for i, app in enumerate(names):
            agg.consume(
                [
                    StatementFinished(
                        session_id=i,
                        user="u",
                        database="d",
                        application_name=app,
                        protocol="simple",
                        text="SELECT 1",
                        statement_name=None,
                        portal_name=None,
                        param_type_oids=(),
                        function_oid=None,
                        start_ns=0,
                        end_ns=MS,
                        duration_ns=MS,
                        start_epoch_ns=EPOCH,
                        rows=1,
                        rolled_back=False,
                        in_transaction=False,
                        command="SELECT",
                    )
                ]
            )
    merged = merge_snapshots([w.snapshot() for w in workers], max_tag_values=2)
    (q,) = merged.queries
    assert q.calls == 9 and sum(n for _v, n in q.applications) == 9
    assert len(q.applications) == 3 and q.applications[-1][0] == OTHER


def test_counter_groups_sum() -> None:
    live = ProxyTotals(connections_accepted=2, bytes_from_client=5)
    total = sum_counters(
        ProxyTotals(), [live, counters_of(ProxyTotals, live), ProxyTotals(cancel_requests=1)]
    )
    assert total == ProxyTotals(connections_accepted=4, bytes_from_client=10, cancel_requests=1)
