"""What the inspector keeps, per (fingerprint, database): plans, sampled rows scanned,
the server's pg_stat_statements numbers and the slowest recent executions.  Pure and
bounded; the clock is passed in.  Nothing here holds a literal of the workload: plans are
generic plans (no values), samples keep parameter *types* only.
"""

from __future__ import annotations

import heapq
import json
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from dbproxy.inspect.plan import ScanCount, plan_id, plan_root, plan_summary

__all__ = [
    "InspectStore",
    "PlanChange",
    "PlanRecord",
    "RateLimiter",
    "RowsScanned",
    "ServerStats",
    "SlowSample",
]

Key = tuple[str, str]  # (fingerprint, database)


@dataclass(frozen=True, slots=True, kw_only=True)
class PlanChange:
    """A fingerprint's plan shape changed (the regression detector's input)."""

    fingerprint: str
    database: str
    at_s: float
    before_plan_id: str
    after_plan_id: str
    before_summary: str
    after_summary: str


@dataclass(slots=True, kw_only=True)
class PlanRecord:
    id: str
    summary: str
    plan: Any  # the EXPLAIN JSON document of a generic plan
    first_seen: float
    last_seen: float
    times_seen: int = 1
    server_version: int = 0


#: samples the "per call" means are taken over (the recent ones: a plan change shows)
RECENT_SAMPLES = 20


@dataclass(slots=True)
class RowsScanned:
    """Sampled EXPLAIN ANALYZE executions of one key; means over the recent samples."""

    samples: int = 0
    recent: deque[ScanCount] = field(default_factory=lambda: deque(maxlen=RECENT_SAMPLES))
    last_at: float = 0.0

    def _mean(self, values: list[float]) -> float:
        return sum(values) / len(values) if values else 0.0

    @property
    def mean_scanned(self) -> float:
        return self._mean([c.rows_scanned for c in tuple(self.recent)])

    @property
    def mean_returned(self) -> float:
        return self._mean([c.rows_returned for c in tuple(self.recent)])

    @property
    def mean_shared_hit(self) -> float:
        return self._mean([float(c.shared_hit) for c in tuple(self.recent)])

    @property
    def mean_shared_read(self) -> float:
        return self._mean([float(c.shared_read) for c in tuple(self.recent)])


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerStats:
    """pg_stat_statements rows whose normalized text has this fingerprint, summed."""

    queryids: tuple[int, ...]
    calls: int
    total_exec_time_ms: float
    total_plan_time_ms: float
    shared_blks_hit: int
    shared_blks_read: int
    local_blks_hit: int
    local_blks_read: int
    temp_blks_read: int
    temp_blks_written: int
    wal_bytes: int
    rows: int
    at_s: float

    @property
    def mean_exec_time_ms(self) -> float:
        return self.total_exec_time_ms / self.calls if self.calls else 0.0

    @property
    def mean_plan_time_ms(self) -> float:
        return self.total_plan_time_ms / self.calls if self.calls else 0.0


@dataclass(frozen=True, slots=True, kw_only=True, order=True)
class SlowSample:
    duration_ns: int
    at_epoch_ns: int
    application_name: str = field(compare=False)
    client: str = field(compare=False)
    trace_id: str = field(compare=False)
    user: str = field(compare=False)
    protocol: str = field(compare=False)
    param_type_oids: tuple[int, ...] = field(compare=False)
    #: what it waited on a lock behind (the activity sampler's blocker label), or ""
    blocked_by: str = field(default="", compare=False)


class RateLimiter:
    """At most ``per_minute`` events globally (sliding 60 s) and one per key every
    ``key_interval_s``.  Pure; ``clock`` is monotonic seconds."""

    def __init__(
        self, *, per_minute: int, key_interval_s: float, clock: Callable[[], float]
    ) -> None:
        self.per_minute = per_minute
        self.key_interval_s = key_interval_s
        self._clock = clock
        self._recent: list[float] = []
        self._last: OrderedDict[object, float] = OrderedDict()
        self.refused = 0

    def allow(self, key: object) -> bool:
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self.key_interval_s:
            self.refused += 1
            return False
        cutoff = now - 60.0
        recent = self._recent
        while recent and recent[0] <= cutoff:
            recent.pop(0)
        if len(recent) >= self.per_minute:
            self.refused += 1
            return False
        recent.append(now)
        self._last[key] = now
        self._last.move_to_end(key)
        if len(self._last) > 10_000:
            self._last.popitem(last=False)
        return True


class InspectStore:
    """Bounded per-key state; ``on_plan_change`` / ``on_rows_scanned`` are the seams the
    regression detector plugs into (exceptions there are the caller's to count)."""

    def __init__(
        self,
        *,
        max_keys: int = 10_000,
        max_plan_keys: int = 1_000,
        max_plans: int = 10,
        slow_samples: int = 5,
        slow_window_s: float = 900.0,
    ) -> None:
        self.max_keys = max_keys
        self.max_plan_keys = max_plan_keys  # plans are big (VERBOSE JSON): fewer of them
        self.max_plans = max_plans
        self.slow_samples = slow_samples
        self.slow_window_s = slow_window_s
        self._plans: OrderedDict[Key, list[PlanRecord]] = OrderedDict()
        self._current: dict[Key, str] = {}
        self.plan_changes: dict[Key, int] = {}
        self.rows: dict[Key, RowsScanned] = {}
        self.server: dict[Key, ServerStats] = {}
        #: pg_stat_statements queryids from EXPLAIN (VERBOSE)'s "Query Identifier"
        self.queryids: dict[Key, set[int]] = {}
        self._slow: dict[Key, list[SlowSample]] = {}

    # ---------------------------------------------------------------- plans
    def record_plan(
        self, fingerprint: str, database: str, explain: Any, *, at_s: float, server_version: int = 0
    ) -> PlanChange | None:
        """Keep a generic plan; return the change when its shape differs from the last."""
        root = plan_root(explain)
        pid = plan_id(root)
        key = (fingerprint, database)
        doc = explain[0] if isinstance(explain, list) and explain else explain
        queryid = doc.get("Query Identifier") if isinstance(doc, Mapping) else None
        room = key in self.queryids or len(self.queryids) < self.max_keys
        if isinstance(queryid, int) and queryid and room:
            self.queryids.setdefault(key, set()).add(queryid)
        plans = self._plans.get(key)
        if plans is None:
            if len(self._plans) >= self.max_plan_keys:
                old, _ = self._plans.popitem(last=False)
                self._current.pop(old, None)
            plans = self._plans[key] = []
        self._plans.move_to_end(key)
        record = next((p for p in plans if p.id == pid), None)
        if record is None:
            record = PlanRecord(
                id=pid,
                summary=plan_summary(root),
                plan=explain if not isinstance(explain, str | bytes) else json.loads(explain),
                first_seen=at_s,
                last_seen=at_s,
                server_version=server_version,
            )
            plans.append(record)
            if len(plans) > self.max_plans:
                current = self._current.get(key)
                plans.sort(key=lambda p: (p.id == current, p.last_seen))
                del plans[0]
        else:
            record.last_seen = at_s
            record.times_seen += 1
        before = self._current.get(key)
        self._current[key] = pid
        if before is None or before == pid:
            return None
        self.plan_changes[key] = self.plan_changes.get(key, 0) + 1
        before_summary = next((p.summary for p in plans if p.id == before), "")
        return PlanChange(
            fingerprint=fingerprint,
            database=database,
            at_s=at_s,
            before_plan_id=before,
            after_plan_id=pid,
            before_summary=before_summary,
            after_summary=record.summary,
        )

    def plans(self, fingerprint: str) -> dict[str, list[PlanRecord]]:
        """database -> plans (oldest first) of one fingerprint."""
        return {
            db: sorted(plans, key=lambda p: p.first_seen)
            for (fp, db), plans in self._plans.items()
            if fp == fingerprint
        }

    def current_plan(self, fingerprint: str, database: str) -> PlanRecord | None:
        pid = self._current.get((fingerprint, database))
        plans = self._plans.get((fingerprint, database)) or []
        return next((p for p in plans if p.id == pid), None)

    def has_plan(self, fingerprint: str, database: str) -> bool:
        return (fingerprint, database) in self._current

    # ---------------------------------------------------------------- rows scanned
    def record_scan(
        self, fingerprint: str, database: str, count: ScanCount, *, at_s: float
    ) -> RowsScanned:
        key = (fingerprint, database)
        rec = self.rows.get(key)
        if rec is None:
            if len(self.rows) >= self.max_keys:
                self.rows.pop(next(iter(self.rows)))
            rec = self.rows[key] = RowsScanned()
        rec.samples += 1
        rec.recent.append(count)
        rec.last_at = at_s
        return rec

    # ---------------------------------------------------------------- pg_stat_statements
    def record_server(self, database: str, by_fingerprint: Mapping[str, ServerStats]) -> None:
        for key in [k for k in self.server if k[1] == database]:
            del self.server[key]
        for fingerprint, stats in by_fingerprint.items():
            if len(self.server) >= self.max_keys:
                break
            self.server[(fingerprint, database)] = stats

    # ---------------------------------------------------------------- slow samples
    def record_execution(self, fingerprint: str, database: str, sample: SlowSample) -> None:
        """Keep the ``slow_samples`` slowest executions of the recent window."""
        key = (fingerprint, database)
        heap = self._slow.get(key)
        if heap is None:
            if len(self._slow) >= self.max_keys:
                self._slow.pop(next(iter(self._slow)))
            heap = self._slow[key] = []
        cutoff = sample.at_epoch_ns - int(self.slow_window_s * 1e9)
        if heap and heap[0].at_epoch_ns < cutoff:
            heap[:] = [s for s in heap if s.at_epoch_ns >= cutoff]
            heapq.heapify(heap)
        if len(heap) < self.slow_samples:
            heapq.heappush(heap, sample)
        elif sample.duration_ns > heap[0].duration_ns:
            heapq.heapreplace(heap, sample)

    def slowest(self, fingerprint: str, database: str) -> list[SlowSample]:
        return sorted(self._slow.get((fingerprint, database), ()), reverse=True)
