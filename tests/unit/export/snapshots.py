"""Hand-built snapshots for the export tests (no aggregator needed)."""

from __future__ import annotations

from collections.abc import Mapping

from dbproxy.observe.stats import (
    QUERY_BUCKETS_S,
    TRANSACTION_BUCKETS_S,
    ConnectionStats,
    Histogram,
    QueryStats,
    StatsSnapshot,
    TransactionStats,
)

T0 = 1_700_000_000.0


def histogram(
    observations: Mapping[int, int], *, sum_s: float, bounds: tuple[float, ...] = QUERY_BUCKETS_S
) -> Histogram:
    """``observations`` maps a bucket index (len(bounds) = +Inf) to a count."""
    counts = [0] * (len(bounds) + 1)
    for i, n in observations.items():
        counts[i] += n
    return Histogram(bounds=bounds, bucket_counts=tuple(counts), count=sum(counts), sum_s=sum_s)


def query(
    fingerprint: str,
    *,
    database: str = "app",
    user: str = "alice",
    query: str = "SELECT * FROM users WHERE id = $1",
    summary: str = "SELECT users",
    operation: str = "SELECT",
    kind: str = "read",
    tables: tuple[str, ...] = ("users",),
    observations: Mapping[int, int] | None = None,
    sum_s: float | None = None,
    rows: int = 0,
    errors: Mapping[str, int] | None = None,
    rolled_back: int = 0,
    applications: tuple[tuple[str, int], ...] = (),
    tags: Mapping[str, tuple[tuple[str, int], ...]] | None = None,
) -> QueryStats:
    observations = observations if observations is not None else {2: 3}
    default_sum = 0.002 * sum(observations.values())
    hist = histogram(observations, sum_s=sum_s if sum_s is not None else default_sum)
    return QueryStats(
        fingerprint=fingerprint,
        database=database,
        user=user,
        query=query,
        summary=summary,
        operation=operation,
        kind=kind,
        tables=tables,
        parse_ok=True,
        calls=hist.count,
        duration=hist,
        min_s=_observed_min(hist),
        max_s=_observed_max(hist),
        rows=rows,
        errors=dict(errors or {}),
        rolled_back=rolled_back,
        first_seen=T0,
        last_seen=T0 + 60,
        recent_total_s=hist.sum_s,
        applications=applications,
        tags=dict(tags or {}),
    )


def snapshot(*queries: QueryStats, taken_at: float = T0 + 120) -> StatsSnapshot:
    return StatsSnapshot(
        taken_at=taken_at,
        started_at=T0,
        queries=tuple(queries),
        transactions=(
            TransactionStats(
                database="app",
                user="alice",
                commits=7,
                rollbacks=2,
                errors=1,
                duration=histogram({0: 4, 5: 6}, sum_s=0.15, bounds=TRANSACTION_BUCKETS_S),
            ),
        ),
        connections=(
            ConnectionStats(database="app", user="alice", current=3, total=10, rejected=1),
        ),
        fingerprints_tracked=len({(q.fingerprint, q.database, q.user) for q in queries}),
        fingerprints_overflow=0,
        events_processed=42,
    )


def big_snapshot(
    fingerprints: int = 500, users: tuple[str, ...] = ("alice", "bob")
) -> StatsSnapshot:
    """``fingerprints`` x ``users`` rows with full histograms, errors and tags."""
    rows = []
    for i in range(fingerprints):
        for user in users:
            rows.append(
                query(
                    f"{i:016x}",
                    user=user,
                    query=f"SELECT a, b, c FROM table_{i} WHERE id = $1 AND status IN ($2, $3)",
                    summary=f"SELECT table_{i}",
                    tables=(f"table_{i}",),
                    observations={b: (i + b) % 7 + 1 for b in range(len(QUERY_BUCKETS_S) + 1)},
                    sum_s=1.5 + i,
                    rows=10 * i,
                    errors={"23505": 1, "40001": 2} if i % 10 == 0 else None,
                    applications=(("web", 5), ("worker", 2)),
                    tags={"route": (("/users/:id", 4),)},
                )
            )
    return snapshot(*rows)


class FixedSource:
    """A StatsSource returning a fixed snapshot; records calls."""

    def __init__(self, snap: StatsSnapshot) -> None:
        self.snap = snap
        self.tops: list[int | None] = []
        self.resets = 0

    def snapshot(self, *, top: int | None = None) -> StatsSnapshot:
        self.tops.append(top)
        return self.snap

    def reset(self) -> None:
        self.resets += 1


def _observed_min(hist: Histogram) -> float:
    """The lower edge of the first non-empty bucket: consistent with the counts."""
    for i, n in enumerate(hist.bucket_counts):
        if n:
            return hist.bounds[i - 1] if i > 0 else 0.0
    return float("inf")


def _observed_max(hist: Histogram) -> float:
    """The upper edge of the last non-empty bucket (twice the last bound for +Inf)."""
    for i in range(len(hist.bucket_counts) - 1, -1, -1):
        if hist.bucket_counts[i]:
            return hist.bounds[i] if i < len(hist.bounds) else hist.bounds[-1] * 2
    return 0.0
