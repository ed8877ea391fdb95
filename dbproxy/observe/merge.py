"""Merging the statistics of several worker processes into one view (pure functions).

With ``--workers N`` each process aggregates the sessions it accepted; worker 0 merges
their snapshots so ``/metrics`` and ``/api`` show the whole proxy.  The rules keep every
sum: merging the snapshots of a split workload gives the snapshot of the whole workload
(tests/unit/observe/test_merge.py checks it with hypothesis):

* queries with the same (fingerprint, database, user) add up: calls, rows, errors per
  SQLSTATE, rolled back, histogram bucket counts and sums, recent time; min of the mins,
  max of the maxes, earliest first seen, latest last seen; per bucket the exemplar with the
  latest timestamp; application and tag counts are summed and re-bounded to
  ``max_tag_values`` values plus ``"__other__"`` (:func:`topn.top_items`);
* transactions and connections per (database, user) add up;
* ``started_at`` is the earliest, ``taken_at`` the latest; ``fingerprints_tracked`` counts
  the distinct fingerprints (as the aggregator does), the other counters add up.

Durations are summed in integer nanoseconds (as the aggregator keeps them), so a merged
``sum_s`` is the same float the whole would give, not an accumulation of rounding.

:func:`fold_top` is the cardinality guard of ``Aggregator.snapshot(top=K)`` applied to a
snapshot: it must run *after* merging (a fingerprint in the top K of the whole may be
outside every worker's own top K).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Sequence
from dataclasses import fields
from typing import TypeVar

from dbproxy.observe.aggregator import OTHER_QUERY_TEXT
from dbproxy.observe.stats import (
    OTHER,
    ConnectionStats,
    Exemplar,
    Histogram,
    QueryStats,
    StatsSnapshot,
    TransactionStats,
)
from dbproxy.observe.topn import merge_counts, top_items

__all__ = [
    "DEFAULT_MAX_TAG_VALUES",
    "fold_top",
    "merge_histograms",
    "merge_queries",
    "merge_snapshots",
    "sum_counters",
]

#: The aggregator's default bound on attribution values per key.
DEFAULT_MAX_TAG_VALUES = 20

_NS = 1e9


def _ns(seconds: float) -> int:
    # exact for the ns integers the aggregator divided by 1e9 (below ~26 days of time)
    return round(seconds * _NS)


def _latest(column: Iterable[Exemplar | None]) -> Exemplar | None:
    return max((e for e in column if e is not None), key=_exemplar_time, default=None)


def _exemplar_time(e: Exemplar) -> float:
    return e.timestamp_s


def merge_histograms(hists: Sequence[Histogram]) -> Histogram:
    """Bucket counts, counts and sums added; per bucket the latest exemplar."""
    if len(hists) == 1:
        return hists[0]
    bounds = hists[0].bounds
    count = sum_ns = 0
    for h in hists:
        if h.bounds != bounds:
            raise ValueError("cannot merge histograms with different bounds")
        count += h.count
        sum_ns += _ns(h.sum_s)
    traced = [h.exemplars for h in hists if h.exemplars]
    return Histogram(
        bounds=bounds,
        bucket_counts=tuple(map(sum, zip(*[h.bucket_counts for h in hists], strict=True))),
        count=count,
        sum_s=sum_ns / _NS,
        exemplars=tuple(map(_latest, zip(*traced, strict=True))) if traced else (),
    )


def merge_queries(
    group: Sequence[QueryStats],
    *,
    max_tag_values: int = DEFAULT_MAX_TAG_VALUES,
    as_other: bool = False,
) -> QueryStats:
    """One row with the sums of ``group`` (same database and user).  ``as_other``: the
    row of the folded fingerprints (``fingerprint="__other__"``), as the aggregator makes
    it; otherwise the group must share one fingerprint and its metadata is kept."""
    if len(group) == 1 and not as_other:
        return group[0]
    first = group[0]
    calls = rows = rolled_back = recent_ns = 0
    min_s = max_s = first_seen = last_seen = 0.0
    called = False
    tagged = False
    apps: dict[str, int] = {}
    for q in group:
        for value, n in q.applications:
            apps[value] = apps.get(value, 0) + n
        calls += q.calls
        rows += q.rows
        rolled_back += q.rolled_back
        recent_ns += _ns(q.recent_total_s)
        tagged = tagged or bool(q.tags)
        if not q.calls:
            continue
        if not called:
            called = True
            min_s, max_s, first_seen, last_seen = q.min_s, q.max_s, q.first_seen, q.last_seen
            continue
        min_s = min(min_s, q.min_s)
        max_s = max(max_s, q.max_s)
        first_seen = min(first_seen, q.first_seen)
        last_seen = max(last_seen, q.last_seen)
    tags: dict[str, tuple[tuple[str, int], ...]] = {}
    if tagged:
        for k in sorted({k for q in group for k in q.tags}):
            counts = merge_counts(dict(q.tags[k]) for q in group if k in q.tags)
            tags[k] = top_items(counts, max_tag_values)
    return QueryStats(
        fingerprint=OTHER if as_other else first.fingerprint,
        database=first.database,
        user=first.user,
        query=OTHER_QUERY_TEXT if as_other else first.query,
        summary="other" if as_other else first.summary,
        operation="other" if as_other else first.operation,
        kind="other" if as_other else first.kind,
        tables=() if as_other else first.tables,
        parse_ok=True if as_other else first.parse_ok,
        calls=calls,
        duration=merge_histograms([q.duration for q in group]),
        min_s=min_s,
        max_s=max_s,
        rows=rows,
        errors=merge_counts(q.errors for q in group if q.errors),
        rolled_back=rolled_back,
        first_seen=first_seen,
        last_seen=last_seen,
        recent_total_s=recent_ns / _NS,
        applications=top_items(apps, max_tag_values) if apps else (),
        tags=tags,
    )


def _query_order(q: QueryStats) -> tuple[float, str, str, str]:
    return (-q.duration.sum_s, q.fingerprint, q.database, q.user)


def merge_snapshots(
    snapshots: Sequence[StatsSnapshot], *, max_tag_values: int = DEFAULT_MAX_TAG_VALUES
) -> StatsSnapshot:
    """The snapshot of everything the workers saw (see the module docstring)."""
    if not snapshots:
        raise ValueError("nothing to merge")
    if len(snapshots) == 1:
        return snapshots[0]
    by_key: dict[tuple[str, str, str], list[QueryStats]] = {}
    for snap in snapshots:
        for q in snap.queries:
            by_key.setdefault((q.fingerprint, q.database, q.user), []).append(q)
    queries = [merge_queries(g, max_tag_values=max_tag_values) for g in by_key.values()]
    queries.sort(key=_query_order)

    tx: dict[tuple[str, str], list[TransactionStats]] = {}
    for snap in snapshots:
        for t in snap.transactions:
            tx.setdefault((t.database, t.user), []).append(t)
    conns: dict[tuple[str, str], list[ConnectionStats]] = {}
    for snap in snapshots:
        for c in snap.connections:
            conns.setdefault((c.database, c.user), []).append(c)
    return StatsSnapshot(
        taken_at=max(s.taken_at for s in snapshots),
        started_at=min(s.started_at for s in snapshots),
        queries=tuple(queries),
        transactions=tuple(
            TransactionStats(
                database=database,
                user=user,
                commits=sum(t.commits for t in group),
                rollbacks=sum(t.rollbacks for t in group),
                errors=sum(t.errors for t in group),
                duration=merge_histograms([t.duration for t in group]),
            )
            for (database, user), group in sorted(tx.items())
        ),
        connections=tuple(
            ConnectionStats(
                database=database,
                user=user,
                current=sum(c.current for c in group),
                total=sum(c.total for c in group),
                rejected=sum(c.rejected for c in group),
            )
            for (database, user), group in sorted(conns.items())
        ),
        fingerprints_tracked=len({q.fingerprint for q in queries if q.fingerprint != OTHER}),
        fingerprints_overflow=sum(s.fingerprints_overflow for s in snapshots),
        events_processed=sum(s.events_processed for s in snapshots),
    )


def fold_top(
    snapshot: StatsSnapshot, top: int, *, max_tag_values: int = DEFAULT_MAX_TAG_VALUES
) -> StatsSnapshot:
    """``Aggregator.snapshot(top=K)`` for a snapshot: keep the ``top`` fingerprints with
    the most recent time (summed over databases and users; ties by total time, then id)
    and fold every other row into one ``__other__`` row per (database, user)."""
    top = max(0, top)
    ranking: dict[str, list[int]] = {}  # id -> [recent ns, total ns]
    for q in snapshot.queries:
        if q.fingerprint == OTHER:
            continue
        r = ranking.setdefault(q.fingerprint, [0, 0])
        r[0] += _ns(q.recent_total_s)
        r[1] += _ns(q.duration.sum_s)
    if len(ranking) <= top and not any(q.fingerprint == OTHER for q in snapshot.queries):
        return snapshot  # nothing to fold
    ranked = heapq.nsmallest(top, ranking.items(), key=lambda kv: (-kv[1][0], -kv[1][1], kv[0]))
    keep = {fid for fid, _ in ranked}
    kept: list[QueryStats] = []
    folded: dict[tuple[str, str], list[QueryStats]] = {}
    for q in snapshot.queries:
        if q.fingerprint in keep:
            kept.append(q)
        else:
            folded.setdefault((q.database, q.user), []).append(q)
    for group in folded.values():
        kept.append(merge_queries(group, max_tag_values=max_tag_values, as_other=True))
    kept.sort(key=_query_order)
    return StatsSnapshot(
        taken_at=snapshot.taken_at,
        started_at=snapshot.started_at,
        queries=tuple(kept),
        transactions=snapshot.transactions,
        connections=snapshot.connections,
        fingerprints_tracked=snapshot.fingerprints_tracked,
        fingerprints_overflow=snapshot.fingerprints_overflow,
        events_processed=snapshot.events_processed,
    )


_C = TypeVar("_C")


def sum_counters(target: _C, items: Iterable[_C]) -> _C:
    """Set every (integer) field of the dataclass ``target`` to its sum over ``items``."""
    items = list(items)
    for f in fields(target):  # type: ignore[arg-type]
        setattr(target, f.name, sum(getattr(i, f.name) for i in items))
    return target
