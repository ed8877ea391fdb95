"""The drain's per-fingerprint memos (aggregator records, monitor keys and open-minute
buckets, pending application counts) against a plain model of what they must count:
any order of texts, databases, users, applications, batch splits, minute rolls, a clock
going back, and the cardinality guards."""

from __future__ import annotations

from bisect import bisect_left
from collections import defaultdict

from hypothesis import given, settings
from hypothesis import strategies as st

from dbproxy.observe.aggregator import Aggregator
from dbproxy.observe.detector import DetectorSettings
from dbproxy.observe.history import BOUNDS_NS
from dbproxy.observe.regression import RegressionMonitor
from dbproxy.observe.stats import OTHER
from dbproxy.observe.topn import count_value, top_items
from dbproxy.protocol.events import Event, StatementFinished
from dbproxy.sql.cache import Fingerprinter

TEXTS = [
    "SELECT a FROM t WHERE id = $1",
    "SELECT b FROM u WHERE id = $1",
    "UPDATE t SET a = $1 WHERE id = $2",
]
DATABASES = ["shop", "billing"]
USERS = ["app", "admin"]
APPS = ["web", "worker", "cron", ""]
LIMIT = 2  # max_tag_values
MAX_FPS = 2  # max_fingerprints: the third text overflows


def statement(text: str, database: str, user: str, app: str, duration_ns: int) -> Event:
    # fresh str objects, as each session decodes its own: the memos must compare values
    return StatementFinished(
        session_id=1,
        user="".join(user),
        database="".join(database),
        application_name="".join(app),
        protocol="extended",
        text="".join(text),
        statement_name=None,
        portal_name=None,
        param_type_oids=(),
        function_oid=None,
        start_ns=0,
        end_ns=duration_ns,
        duration_ns=duration_ns,
        start_epoch_ns=1_700_000_000_000_000_000,
        rows=1,
        rolled_back=False,
        in_transaction=False,
        command="SELECT",
    )


one = st.tuples(
    st.sampled_from(TEXTS),
    st.sampled_from(DATABASES),
    st.sampled_from(USERS),
    st.sampled_from(APPS),
    st.integers(min_value=1, max_value=40_000_000_000),
)
# a batch: its events and the clock step (seconds) before it, sometimes backwards
batches = st.lists(
    st.tuples(st.lists(one, max_size=12), st.sampled_from([0.0, 0.1, 30.0, 61.0, -70.0])),
    max_size=12,
)


@settings(max_examples=150, deadline=None)
@given(batches)
def test_memoized_consumers_count_what_the_model_counts(
    plan: list[tuple[list[tuple[str, str, str, str, int]], float]],
) -> None:
    now = [1_800_000_000.0]
    fingerprinter = Fingerprinter()
    agg = Aggregator(
        fingerprinter=fingerprinter,
        max_fingerprints=MAX_FPS,
        max_tag_values=LIMIT,
        clock=lambda: now[0],
    )
    monitor = RegressionMonitor(
        fingerprinter=fingerprinter,
        settings=DetectorSettings(window_s=3600),
        clock=lambda: now[0],
        max_fingerprints=3,  # keys are (fingerprint, database): 6 possible
    )
    # the model
    tracked: list[str] = []
    overflow = 0
    calls: dict[tuple[str, str, str], int] = defaultdict(int)
    counts: dict[tuple[str, str, str], list[int]] = defaultdict(lambda: [0] * 16)
    apps: dict[tuple[str, str, str], dict[str, int]] = defaultdict(dict)
    keys: list[tuple[str, str]] = []
    monitor_overflow = 0
    minutes: dict[tuple[int, tuple[str, str]], list[int]] = defaultdict(lambda: [0, 0])
    open_minute: int | None = None
    for items, step in plan:
        now[0] += step
        minute = int(now[0] // 60)
        events = [statement(*item) for item in items]
        agg.consume(events)
        monitor.consume(events)
        for text, database, user, app, duration in items:
            fid = fingerprinter.fingerprint(text).id
            if fid not in tracked and len(tracked) < MAX_FPS:
                tracked.append(fid)
            if fid not in tracked:
                overflow += 1
                fid = OTHER
            key = (fid, database, user)
            calls[key] += 1
            counts[key][bisect_left(BOUNDS_NS, duration)] += 1
            count_value(apps[key], app, LIMIT)
            mkey = (fingerprinter.fingerprint(text).id, database)
            if mkey not in keys:
                if len(keys) >= 3:
                    monitor_overflow += 1
                    continue
                keys.append(mkey)
            # the history's open minute moves with observations only, and never back
            open_minute = minute if open_minute is None else max(open_minute, minute)
            slot = minutes[(open_minute, mkey)]
            slot[0] += 1
            slot[1] += duration
    snap = agg.snapshot()
    got = {(q.fingerprint, q.database, q.user): q for q in snap.queries}
    assert set(got) == set(calls)
    for key, q in got.items():
        assert q.calls == calls[key]
        assert list(q.duration.bucket_counts) == counts[key]
        assert q.applications == top_items(apps[key], LIMIT)
    assert snap.fingerprints_overflow == overflow
    assert monitor.overflow == monitor_overflow
    seen: dict[tuple[int, tuple[str, str]], list[int]] = {}
    for fid in {k[0] for k in keys}:
        for m, key, bucket in monitor.history.minute_buckets(fid):
            seen[(m, key)] = [bucket.calls, bucket.sum_ns]
    assert seen == dict(minutes)
