"""Immutable statistics snapshots: what the aggregator publishes, what exporters read.

The aggregator owns mutable counters on its own task; at scrape/API time it hands out a
:class:`StatsSnapshot` (plain frozen data, safe to read from anywhere).  Exporters
(Prometheus collector, JSON API, later OTel/regression) compute from snapshots only.

Conventions:
* durations in seconds (float), timestamps in Unix epoch seconds (float);
* histogram ``bucket_counts`` are NOT cumulative: ``bucket_counts[i]`` counts observations
  ``<= bounds[i]`` and ``> bounds[i-1]``; the last element counts those above the last
  bound (the ``+Inf`` bucket), so ``len(bucket_counts) == len(bounds) + 1`` and
  ``sum(bucket_counts) == count``;
* ``OTHER`` is the fingerprint id statements are folded into beyond a cardinality limit;
* ``Histogram.exemplars`` is empty, or holds one optional :class:`Exemplar` per bucket
  (the latest traced observation that fell in it), aligned with ``bucket_counts``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

#: Fingerprint id that collects everything beyond a cardinality guard.
OTHER = "__other__"

#: Statement latency buckets (seconds): 0.5 ms … 30 s, roughly x2.5 apart.
QUERY_BUCKETS_S: tuple[float, ...] = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
#: Transaction duration buckets (seconds).
TRANSACTION_BUCKETS_S: tuple[float, ...] = (*QUERY_BUCKETS_S, 60.0, 300.0)


@dataclass(frozen=True, slots=True, kw_only=True)
class Exemplar:
    """One traced observation: the span that timed it (OpenMetrics exemplar)."""

    trace_id: str  # 32 lowercase hex digits
    span_id: str  # 16 lowercase hex digits
    value_s: float  # the observed duration
    timestamp_s: float  # when it was observed (statement end, Unix epoch seconds)


@dataclass(frozen=True, slots=True, kw_only=True)
class Histogram:
    bounds: tuple[float, ...]
    bucket_counts: tuple[int, ...]  # len(bounds) + 1, not cumulative
    count: int
    sum_s: float
    #: empty, or len(bounds) + 1 entries: the latest traced observation of each bucket
    exemplars: tuple[Exemplar | None, ...] = ()

    def quantile(self, q: float) -> float:
        """Estimate the q-quantile (0..1) by linear interpolation inside the bucket,
        as PromQL's histogram_quantile does; NaN when empty."""
        if self.count == 0:
            return float("nan")
        rank = q * self.count
        seen = 0
        lower = 0.0
        for i, n in enumerate(self.bucket_counts):
            upper = self.bounds[i] if i < len(self.bounds) else self.bounds[-1]
            if n and seen + n >= rank:
                if i >= len(self.bounds):
                    return self.bounds[-1]
                return lower + (upper - lower) * (rank - seen) / n
            seen += n
            lower = upper
        return self.bounds[-1]


@dataclass(frozen=True, slots=True, kw_only=True)
class QueryStats:
    """Statistics of one (fingerprint, database, user)."""

    fingerprint: str
    database: str
    user: str
    query: str  # normalized text ($1..$n), never literals
    summary: str
    operation: str
    kind: str  # read | write | other
    tables: tuple[str, ...]
    parse_ok: bool
    calls: int  # statements executed, failed ones included
    duration: Histogram  # every call's duration (failed ones included)
    min_s: float
    max_s: float
    rows: int  # DataRows returned, or rows affected per CommandComplete
    errors: Mapping[str, int]  # SQLSTATE -> count
    rolled_back: int  # calls undone by a later error in their implicit transaction
    first_seen: float
    last_seen: float
    #: total time in the recent window the cardinality guard ranks by
    recent_total_s: float
    #: top application_name values and sqlcommenter tag values, with call counts
    applications: tuple[tuple[str, int], ...] = ()
    tags: Mapping[str, tuple[tuple[str, int], ...]] = field(default_factory=dict)

    @property
    def total_s(self) -> float:
        return self.duration.sum_s

    @property
    def mean_s(self) -> float:
        return self.duration.sum_s / self.calls if self.calls else 0.0

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())


@dataclass(frozen=True, slots=True, kw_only=True)
class TransactionStats:
    database: str
    user: str
    commits: int
    rollbacks: int
    #: transactions that ended because of an error (failed state then rollback)
    errors: int
    duration: Histogram


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionStats:
    database: str
    user: str
    current: int
    total: int
    rejected: int


@dataclass(frozen=True, slots=True, kw_only=True)
class StatsSnapshot:
    taken_at: float
    started_at: float  # when the aggregator started (or was last reset)
    queries: tuple[QueryStats, ...]
    transactions: tuple[TransactionStats, ...]
    connections: tuple[ConnectionStats, ...]
    fingerprints_tracked: int
    #: statements folded into OTHER because the aggregator's own limit was reached
    fingerprints_overflow: int
    events_processed: int
