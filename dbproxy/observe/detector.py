"""Regression detector: recent window vs baseline, per (fingerprint, database) → findings.

Pure: no I/O, no asyncio; time is the ``now`` (Unix seconds) passed to :meth:`evaluate`
or the injected ``clock``.  The day-ago baseline, which lives in the SQLite store, is
read by the caller (off the event loop) and handed in.

Comparison
----------
* **Normal**: the recent window (the last ``window_s`` of completed minutes plus the open
  one) against the baseline: the same window a day ago (when the store has it) and the
  median of the trailing aligned windows (at least ``min_baseline_windows`` of them,
  entirely before the recent window).  Where both exist the more tolerant one is used
  (the higher p95, rows per call and error rate; the lower call count), so a daily peak
  or a single odd window does not raise anything.
* **Deploy-aware**: for ``deploy_horizon_windows`` windows after a deploy (a new
  ``version``/``deploy`` sqlcommenter tag value, or ``POST /api/deploys``), everything
  is compared before vs after it: the window before the deploy against what ran since,
  and findings name the deploy.

Guards: both sides need ``min_calls`` calls; a latency regression also needs the new p95
to reach ``min_latency_s``.  Findings (one open per key, type and detail) resolve when
an evaluation with enough traffic no longer sees the condition, or when the fingerprint
has not run for a whole window.
"""

from __future__ import annotations

import hashlib
import math
import statistics
import time
from collections import deque
from collections.abc import Callable, Generator, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from dbproxy.observe.history import Bucket, History, Key
from dbproxy.observe.stats import QUERY_BUCKETS_S

__all__ = [
    "EVALUATION_CHUNK",
    "FINDING_TYPES",
    "Deploy",
    "Detector",
    "DetectorSettings",
    "Finding",
    "run_steps",
]

FINDING_TYPES: Final = (
    "latency_regression",
    "new_heavy",
    "error_spike",
    "rows_per_call_jump",
    "throughput_drop",
    "rows_scanned_jump",
    "plan_change",
    "n_plus_one",
)
#: keys compared between two yields of :meth:`Detector.evaluate_steps`
EVALUATION_CHUNK: Final = 500
_MAX_FINDINGS: Final = 1_000  # resolved findings beyond this are forgotten, oldest first
_MAX_DEPLOYS: Final = 100
_MAX_VERSIONS: Final = 1_000


def run_steps(steps: Generator[None, None, list[Finding]]) -> list[Finding]:
    """Run a stepwise evaluation to its end."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            opened: list[Finding] = done.value
            return opened


@dataclass(frozen=True, slots=True, kw_only=True)
class DetectorSettings:
    window_s: float = 900.0
    #: which baselines the normal comparison uses: "day" (same window a day ago, needs
    #: the store), "trailing" (median of earlier windows)
    baselines: tuple[str, ...] = ("day", "trailing")
    min_calls: int = 30
    min_latency_s: float = 0.005
    latency_ratio: float = 2.0
    #: calls above latency_ratio x the baseline p95 needed for a latency regression, and
    #: in how many distinct minutes (a stall of the machine hits one minute only)
    min_slow_calls: int = 5
    min_slow_minutes: int = 2
    #: when at least this fraction of the comparable fingerprints (3 or more) got
    #: latency_ratio slower at once, no per-query latency finding is raised
    systemic_fraction: float = 0.5
    error_ratio: float = 3.0
    error_rate_min: float = 0.05
    min_errors: int = 5
    rows_ratio: float = 4.0
    rows_min: float = 10.0
    throughput_ratio: float = 0.25
    new_heavy_top: int = 5
    new_heavy_min_total_s: float = 1.0
    min_baseline_windows: int = 3
    keep_baseline_windows: int = 8
    deploy_horizon_windows: float = 2.0
    rows_scanned_ratio: float = 4.0

    @property
    def window_minutes(self) -> int:
        return max(1, round(self.window_s / 60))


@dataclass(slots=True, kw_only=True)
class Deploy:
    version: str
    at: float
    source: str  # "api", "tag:version", "tag:deploy"
    #: read back from the store after a restart: listed, never compared against
    restored: bool = False
    #: per key, the window before the deploy, and everything since
    before: dict[Key, Bucket] = field(default_factory=dict, repr=False)
    before_span_s: float = 0.0
    after: dict[Key, Bucket] = field(default_factory=dict, repr=False)

    def as_json(self) -> dict[str, Any]:
        return {"version": self.version, "at": self.at, "source": self.source}

    def label(self) -> str:
        return f"{self.version} at {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(self.at))} UTC"


@dataclass(slots=True, kw_only=True)
class Finding:
    id: str
    fingerprint: str
    database: str
    query: str
    type: str
    detail: str  # SQLSTATE class of an error spike, route of an N+1, else ""
    before: dict[str, float]
    after: dict[str, float]
    deploy: Deploy | None
    first_seen: float
    last_seen: float
    state: str = "open"  # open | resolved
    resolved_at: float | None = None
    trace_ids: list[str] = field(default_factory=list)
    plan: dict[str, str] | None = None
    tags: dict[str, str] = field(default_factory=dict)
    baseline: str = ""  # deploy | day | trailing | day+trailing

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "fingerprint": self.fingerprint,
            "database": self.database,
            "query": self.query,
            "type": self.type,
            "detail": self.detail,
            "state": self.state,
            "before": _finite(self.before),
            "after": _finite(self.after),
            "baseline": self.baseline,
            "deploy": self.deploy.as_json() if self.deploy is not None else None,
            "plan": self.plan,
            "plan_ids": (
                [self.plan["before_plan_id"], self.plan["after_plan_id"]] if self.plan else []
            ),
            "first_seen": self.first_seen,
            "last_seen": self.last_seen,
            "resolved_at": self.resolved_at,
            "trace_ids": list(self.trace_ids),
            "tags": dict(self.tags),
        }


def _finite(numbers: Mapping[str, float]) -> dict[str, float | None]:
    return {k: (round(v, 6) if math.isfinite(v) else None) for k, v in numbers.items()}


@dataclass(slots=True)
class _Side:
    """One side of a comparison, as numbers."""

    calls: float
    minutes: float
    p95_s: float  # NaN: not enough calls to say
    rows_per_call: float
    error_rates: dict[str, float]
    total_s: float
    counts: tuple[int, ...] = ()  # latency histogram (after sides only)
    #: the highest p95 of the trailing windows: a regression must be worse than all of
    #: them (the baseline's own spread: a busy machine's usual bad minutes)
    p95_ceiling_s: float = float("nan")

    def numbers(self) -> dict[str, float]:
        return {
            "calls": self.calls,
            "calls_per_min": self.calls / self.minutes if self.minutes else float("nan"),
            "p95_ms": self.p95_s * 1000,
            "rows_per_call": self.rows_per_call,
            "total_s": self.total_s,
        }


def _side(bucket: Bucket | None, minutes: float, min_calls: int) -> _Side:
    if bucket is None or bucket.calls <= 0:
        return _Side(0, minutes, float("nan"), float("nan"), {}, 0.0)
    calls = bucket.calls
    return _Side(
        calls=calls,
        minutes=minutes,
        p95_s=bucket.p95_s() if calls >= min_calls else float("nan"),
        rows_per_call=bucket.rows / calls,
        error_rates={c: n / calls for c, n in (bucket.errors or {}).items()},
        total_s=bucket.total_s,
        counts=tuple(bucket.counts),
    )


def _count_above(counts: tuple[int, ...], threshold_s: float) -> float:
    """How many observations exceed ``threshold_s`` (linear inside the bucket)."""
    above = 0.0
    lower = 0.0
    for i, n in enumerate(counts):
        upper = QUERY_BUCKETS_S[i] if i < len(QUERY_BUCKETS_S) else math.inf
        if n:
            if lower >= threshold_s:
                above += n
            elif upper > threshold_s:
                above += n if math.isinf(upper) else n * (upper - threshold_s) / (upper - lower)
        lower = upper
    return above


def _nanmax(values: Iterable[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return max(finite) if finite else float("nan")


@dataclass(slots=True)
class _RowsScanned:
    samples: deque[tuple[float, float]]  # (at_s, rows scanned per call)


class Detector:
    """Owns findings and deploys.  Not thread-safe: call it on the loop that feeds the
    history (``note_plan_change``/``note_rows_scanned`` included)."""

    def __init__(
        self,
        *,
        history: History,
        settings: DetectorSettings,
        clock: Callable[[], float] = time.time,
        query_text: Callable[[Key], str] | None = None,
        examples: Callable[[Key], list[str]] | None = None,
        tags_of: Callable[[Key], dict[str, str]] | None = None,
    ) -> None:
        self.history = history
        self.settings = settings
        self.clock = clock
        self._query_text = query_text or (lambda _key: "")
        self._examples = examples or (lambda _key: [])
        self._tags_of = tags_of or (lambda _key: {})
        self._findings: dict[str, Finding] = {}  # id -> finding, insertion ordered
        self._open: dict[tuple[str, str, str, str], Finding] = {}  # (fid, db, type, detail)
        self.deploys: deque[Deploy] = deque(maxlen=_MAX_DEPLOYS)
        self._versions: dict[str, str] = {}  # tag key -> last value seen
        self._seen_versions: set[str] = set()
        self._plan_changes: dict[Key, tuple[float, dict[str, str]]] = {}
        self._rows_scanned: dict[Key, _RowsScanned] = {}
        #: called with each newly opened (and each resolved) finding
        self.listeners: list[Callable[[Finding], None]] = []
        self.evaluations = 0
        self.last_evaluation: float | None = None
        self._new: list[Finding] = []  # opened, listeners not told yet
        self.systemic_evaluations = 0  # evaluations that saw most fingerprints slower
        self._trailing_range: tuple[int, int] | None = None
        self._trailing_cache: dict[Key, _Side] = {}

    # ------------------------------------------------------------------ deploys
    def mark_deploy(self, version: str, at: float | None = None, source: str = "api") -> Deploy:
        now = self.clock()
        at = now if at is None else min(at, now)
        h = self.history
        wmin = self.settings.window_minutes
        if at >= now - 1.0:
            # now: the recent window so far is "before"; the consumer fills "after"
            before = h.recent()
            after: dict[Key, Bucket] = {}
            span = wmin * 60.0
        else:
            split = int(at // 60)
            before = h.between(split - wmin, split)
            after = h.since(split)
            span = wmin * 60.0
        deploy = Deploy(
            version=version, at=at, source=source, before=before, before_span_s=span, after=after
        )
        self.deploys.append(deploy)
        self._seen_versions.add(version)
        return deploy

    def restore_deploy(self, version: str, at: float, source: str) -> None:
        """A deploy read back from the store: listed, not compared against."""
        self.deploys.append(Deploy(version=version, at=at, source=source, restored=True))
        self._seen_versions.add(version)

    def observe_version_tag(self, key: str, value: str, now: float) -> Deploy | None:
        """A ``version``/``deploy`` tag value seen on a statement: a value never seen
        before (after the first one) marks a deploy.  Old and new values interleave
        during a rolling deploy, so only the first appearance counts."""
        previous = self._versions.get(key)
        if previous == value:
            return None
        self._versions[key] = value
        if value in self._seen_versions:
            return None
        if len(self._seen_versions) >= _MAX_VERSIONS:
            return None
        self._seen_versions.add(value)
        if previous is None:
            return None  # the version running when we started: not a deploy
        return self.mark_deploy(value, now, source=f"tag:{key}")

    def active_deploy(self, now: float) -> Deploy | None:
        if not self.deploys:
            return None
        deploy = self.deploys[-1]
        horizon = self.settings.deploy_horizon_windows * self.settings.window_s
        if deploy.restored or not deploy.at <= now <= deploy.at + horizon:
            return None
        return deploy

    # ------------------------------------------------------------------ server-side feeds
    def note_plan_change(
        self,
        *,
        fingerprint: str,
        database: str,
        at_s: float,
        before_plan_id: str,
        after_plan_id: str,
        before_summary: str,
        after_summary: str,
    ) -> None:
        """The server-side inspector saw the plan of ``fingerprint`` change: raise (or
        update) a ``plan_change`` finding, and attach the change to a latency finding of
        the same fingerprint raised within a window of it."""
        key = (fingerprint, database)
        plan = {
            "before_plan_id": before_plan_id,
            "after_plan_id": after_plan_id,
            "before_summary": before_summary,
            "after_summary": after_summary,
        }
        self._plan_changes[key] = (at_s, plan)
        finding = self._raise(
            key,
            "plan_change",
            "",
            before={},
            after={},
            now=at_s,
            deploy=self._deploy_at(at_s),
            baseline="plan",
        )
        finding.plan = plan
        latency = self._open.get((fingerprint, database, "latency_regression", ""))
        if latency is not None and abs(latency.last_seen - at_s) <= 2 * self.settings.window_s:
            latency.plan = plan
        self._announce_new()

    def note_rows_scanned(
        self, *, fingerprint: str, database: str, at_s: float, rows_scanned_per_call: float
    ) -> None:
        """A measurement of rows scanned per call (sampled EXPLAIN ANALYZE or
        pg_stat_statements); :meth:`evaluate` compares the recent window's mean with the
        median of earlier samples (``rows_scanned_jump``)."""
        key = (fingerprint, database)
        series = self._rows_scanned.get(key)
        if series is None:
            series = self._rows_scanned[key] = _RowsScanned(deque(maxlen=64))
        series.samples.append((at_s, float(rows_scanned_per_call)))

    def report_n_plus_one(
        self,
        *,
        key: Key,
        route: str,
        application: str,
        executions_median: float,
        executions_max: int,
        time_per_request_s: float,
        requests: int,
        now: float,
    ) -> Finding:
        finding = self._raise(
            key,
            "n_plus_one",
            route,
            before={},
            after={
                "executions_per_request_median": executions_median,
                "executions_per_request_max": float(executions_max),
                "time_per_request_ms": time_per_request_s * 1000,
                "requests": float(requests),
            },
            now=now,
            deploy=None,
            baseline="request",
        )
        finding.tags = {k: v for k, v in (("route", route), ("application", application)) if v}
        self._announce_new()
        return finding

    # ------------------------------------------------------------------ evaluation
    def evaluate(
        self, now: float | None = None, *, day_ago: Mapping[Key, Bucket] | None = None
    ) -> list[Finding]:
        """Compare every key; returns the findings opened by this evaluation."""
        return run_steps(self.evaluate_steps(now, day_ago=day_ago))

    def evaluate_steps(
        self,
        now: float | None = None,
        *,
        day_ago: Mapping[Key, Bucket] | None = None,
        chunk: int = EVALUATION_CHUNK,
    ) -> Generator[None, None, list[Finding]]:
        """:meth:`evaluate` in steps of ``chunk`` keys: the caller may let its event loop
        run between steps (10,000 busy fingerprints take a few hundred ms).  Nothing else
        may touch the history or the detector until the generator is exhausted."""
        now = self.clock() if now is None else now
        s = self.settings
        h = self.history
        minute = int(now // 60)
        h.roll(minute)
        self.evaluations += 1
        self.last_evaluation = now
        seen: set[tuple[str, str, str, str]] = set()
        deploy = self.active_deploy(now)
        wmin = s.window_minutes
        if deploy is not None:
            after_map: Mapping[Key, Bucket] = deploy.after
            after_minutes = max((now - deploy.at) / 60, 1e-9)
            before_of: Callable[[Key], _Side] = lambda key: self._before_deploy(  # noqa: E731
                deploy, key, minute
            )
            keys = set(deploy.after) | set(deploy.before)
            baseline = "deploy"
        else:
            after_map = h.recent()
            after_minutes = float(min(wmin, minute - (h.first_minute or minute)) or 1)
            keys = set(after_map) | set(h.keys_with_blocks())
            day = day_ago if (day_ago is not None and "day" in s.baselines) else None
            if day is not None:
                keys |= set(day)
            baseline = "+".join(
                b for b in ("day", "trailing") if b in s.baselines and (b != "day" or day)
            )
            before_of = lambda key: self._baseline(key, minute, day)  # noqa: E731

        heavy = self._new_heavy_candidates(after_map, minute, deploy)
        quiet = s.min_calls
        results: list[tuple[Key, _Side, _Side, list[tuple[str, str]]]] = []
        comparable = slower = 0
        for n, key in enumerate(keys):
            if n and not n % chunk:
                yield
            bucket = after_map.get(key)
            before = before_of(key)
            if (
                (bucket is None or bucket.calls < quiet)
                and before.calls < 2 * quiet
                and key not in heavy
            ):
                continue  # too little traffic on the after side, no throughput to lose
            after = _side(bucket, after_minutes, s.min_calls)
            since = int(deploy.at // 60) if deploy is not None else minute - wmin
            conditions = self._conditions(key, before, after, after_minutes, since)
            if not (math.isnan(before.p95_s) or math.isnan(after.p95_s)):
                comparable += 1
                slower += (
                    after.p95_s >= s.latency_ratio * before.p95_s and after.p95_s >= s.min_latency_s
                )
            results.append((key, before, after, conditions))
        # Most fingerprints slower at once is the host or the server (CPU, I/O, locks),
        # not a query: one finding per query would only bury the cause.
        systemic = comparable >= 3 and slower >= s.systemic_fraction * comparable
        if systemic:
            self.systemic_evaluations += 1
        for key, before, after, conditions in results:
            for kind, detail in conditions:
                slot = (key[0], key[1], kind, detail)
                if systemic and kind == "latency_regression":
                    seen.add(slot)  # an open one stays as it is
                    continue
                finding = self._raise(
                    key,
                    kind,
                    detail,
                    before=before.numbers(),
                    after=after.numbers(),
                    now=now,
                    deploy=deploy,
                    baseline=baseline,
                )
                self._decorate(finding, key, detail)
                seen.add(slot)
            if key in heavy:
                finding = self._raise(
                    key,
                    "new_heavy",
                    "",
                    before=before.numbers(),
                    after=after.numbers(),
                    now=now,
                    deploy=deploy,
                    baseline=baseline,
                )
                self._decorate(finding, key, "")
                seen.add((key[0], key[1], "new_heavy", ""))
        seen |= self._evaluate_rows_scanned(now)
        self._resolve_stale(now, seen, after_map, deploy)
        self._trim()
        return self._announce_new()

    def _before_deploy(self, deploy: Deploy, key: Key, minute: int) -> _Side:
        side = _side(deploy.before.get(key), deploy.before_span_s / 60, self.settings.min_calls)
        if "trailing" in self.settings.baselines:
            trailing = self._trailing(key, minute)
            if trailing is not None:
                side.p95_ceiling_s = trailing.p95_ceiling_s
        return side

    def _baseline(self, key: Key, minute: int, day: Mapping[Key, Bucket] | None) -> _Side:
        s = self.settings
        wmin = s.window_minutes
        sides: list[_Side] = []
        if day is not None:
            sides.append(_side(day.get(key), float(wmin), s.min_calls))
        if "trailing" in s.baselines:
            trailing = self._trailing(key, minute)
            if trailing is not None:
                sides.append(trailing)
        if not sides:
            return _Side(0, float(wmin), float("nan"), float("nan"), {}, 0.0)
        classes = {c for side in sides for c in side.error_rates}
        return _Side(
            calls=min(side.calls for side in sides),
            minutes=float(wmin),
            p95_s=_nanmax(side.p95_s for side in sides),
            rows_per_call=_nanmax(side.rows_per_call for side in sides),
            error_rates={c: max(side.error_rates.get(c, 0.0) for side in sides) for c in classes},
            total_s=min(side.total_s for side in sides),
            p95_ceiling_s=_nanmax(side.p95_ceiling_s for side in sides),
        )

    def _trailing(self, key: Key, minute: int) -> _Side | None:
        """Median of the aligned windows entirely before the recent one (windows with no
        call count as zero traffic, back to the first minute this history knows).
        Cached until the range of blocks moves (once per window)."""
        s = self.settings
        h = self.history
        wmin = s.window_minutes
        last_block = (minute - wmin) // wmin - 1  # the newest block ending before the window
        first_known = h.first_minute if h.first_minute is not None else minute
        first_block = max(last_block - s.keep_baseline_windows + 1, -(-first_known // wmin))
        n_blocks = last_block - first_block + 1
        if n_blocks < s.min_baseline_windows:
            return None
        if self._trailing_range != (first_block, last_block):
            self._trailing_range = (first_block, last_block)
            self._trailing_cache = {}
        cached = self._trailing_cache.get(key)
        if cached is None:
            cached = self._trailing_cache[key] = self._median_of_blocks(
                key, first_block, last_block
            )
        return cached

    def _median_of_blocks(self, key: Key, first_block: int, last_block: int) -> _Side:
        s = self.settings
        wmin = s.window_minutes
        n_blocks = last_block - first_block + 1
        h = self.history
        blocks = [b for b in h.blocks(key) if first_block <= b.block <= last_block]
        calls = [float(b.calls) for b in blocks] + [0.0] * (n_blocks - len(blocks))
        busy = [b for b in blocks if b.calls >= s.min_calls]
        classes = {c for b in blocks for c in b.errors}
        return _Side(
            calls=statistics.median(calls),
            minutes=float(wmin),
            p95_s=statistics.median(b.p95_s for b in busy)
            if len(busy) >= s.min_baseline_windows
            else float("nan"),
            rows_per_call=statistics.median(b.rows / b.calls for b in busy)
            if busy
            else float("nan"),
            error_rates={
                c: statistics.median(b.errors.get(c, 0) / b.calls for b in busy) if busy else 0.0
                for c in classes
            },
            total_s=statistics.median(
                [b.total_s for b in blocks] + [0.0] * (n_blocks - len(blocks))
            ),
            p95_ceiling_s=max((b.p95_s for b in busy), default=float("nan")),
        )

    def _conditions(
        self, key: Key, before: _Side, after: _Side, after_minutes: float, since: int
    ) -> list[tuple[str, str]]:
        s = self.settings
        out: list[tuple[str, str]] = []
        enough = after.calls >= s.min_calls and before.calls >= s.min_calls
        if (
            enough
            and not math.isnan(before.p95_s)
            and not math.isnan(after.p95_s)
            and after.p95_s >= s.min_latency_s
            and after.p95_s >= s.latency_ratio * before.p95_s
            and not after.p95_s <= before.p95_ceiling_s  # (NaN: no ceiling known)
            # a handful of slow calls, not one outlier that the p95 of a quiet window is
            and _count_above(after.counts, s.latency_ratio * before.p95_s) >= s.min_slow_calls
            and self.history.minutes_with_calls_above(
                key, round(s.latency_ratio * before.p95_s * 1e9), since
            )
            >= min(s.min_slow_minutes, s.window_minutes)
        ):
            out.append(("latency_regression", ""))
        if enough:
            for cls, rate in after.error_rates.items():
                n = rate * after.calls
                base = before.error_rates.get(cls, 0.0)
                if n >= s.min_errors and rate >= max(s.error_ratio * base, base + s.error_rate_min):
                    out.append(("error_spike", cls))
            b_rpc, a_rpc = before.rows_per_call, after.rows_per_call
            if (
                not math.isnan(b_rpc)
                and a_rpc >= s.rows_ratio * max(b_rpc, 1.0)
                and a_rpc - b_rpc >= s.rows_min
            ):
                out.append(("rows_per_call_jump", ""))
        # throughput: calls per minute, once the after side covers half a window
        if (
            before.calls >= 2 * s.min_calls
            and after_minutes >= s.window_minutes / 2
            and before.minutes > 0
        ):
            before_rate = before.calls / before.minutes
            after_rate = after.calls / after_minutes
            if after_rate <= s.throughput_ratio * before_rate:
                out.append(("throughput_drop", ""))
        return out

    def _new_heavy_candidates(
        self, after_map: Mapping[Key, Bucket], minute: int, deploy: Deploy | None
    ) -> set[Key]:
        s = self.settings
        h = self.history
        wmin = s.window_minutes
        if deploy is not None:
            if not deploy.before:
                return set()  # nothing ran before: everything would be "new"
            is_new: Callable[[Key], bool] = lambda key: key not in deploy.before  # noqa: E731
        else:
            if h.first_minute is None or minute - h.first_minute < 2 * wmin:
                return set()  # warming up: every fingerprint is new at start
            start = minute - wmin
            is_new = lambda key: h.first_seen.get(key, minute) >= start  # noqa: E731
        ranked = sorted(after_map.items(), key=lambda kv: kv[1].sum_ns, reverse=True)
        top = ranked[: s.new_heavy_top]
        return {
            key for key, bucket in top if is_new(key) and bucket.total_s >= s.new_heavy_min_total_s
        }

    def _evaluate_rows_scanned(self, now: float) -> set[tuple[str, str, str, str]]:
        s = self.settings
        seen: set[tuple[str, str, str, str]] = set()
        start = now - s.window_s
        for key, series in self._rows_scanned.items():
            recent = [v for at, v in series.samples if start <= at <= now]
            older = [v for at, v in series.samples if at < start]
            if not recent or not older:
                continue
            base = statistics.median(older)
            value = statistics.fmean(recent)
            if value >= s.rows_scanned_ratio * max(base, 1.0):
                self._raise(
                    key,
                    "rows_scanned_jump",
                    "",
                    before={"rows_scanned_per_call": base},
                    after={"rows_scanned_per_call": value},
                    now=now,
                    deploy=self.active_deploy(now),
                    baseline="samples",
                )
                seen.add((key[0], key[1], "rows_scanned_jump", ""))
        return seen

    # ------------------------------------------------------------------ findings
    def _raise(
        self,
        key: Key,
        kind: str,
        detail: str,
        *,
        before: dict[str, float],
        after: dict[str, float],
        now: float,
        deploy: Deploy | None,
        baseline: str,
    ) -> Finding:
        slot = (key[0], key[1], kind, detail)
        finding = self._open.get(slot)
        if finding is None:
            digest = hashlib.blake2b(
                f"{key[0]}\0{key[1]}\0{kind}\0{detail}\0{now!r}".encode(), digest_size=8
            ).hexdigest()
            finding = Finding(
                id=digest,
                fingerprint=key[0],
                database=key[1],
                query=self._query_text(key),
                type=kind,
                detail=detail,
                before=before,
                after=after,
                deploy=deploy,
                first_seen=now,
                last_seen=now,
                baseline=baseline,
            )
            self._open[slot] = finding
            self._findings[finding.id] = finding
            self._new.append(finding)
        else:
            # keep the numbers that raised it fresh; the deploy it was raised under stays
            finding.before, finding.after = before or finding.before, after or finding.after
            finding.last_seen = max(finding.last_seen, now)
        return finding

    def _decorate(self, finding: Finding, key: Key, detail: str) -> None:
        examples = self._examples(key)
        if examples:
            finding.trace_ids = examples
        if not finding.tags:
            finding.tags = self._tags_of(key)
        if finding.type == "latency_regression" and finding.plan is None:
            change = self._plan_changes.get(key)
            near = 2 * self.settings.window_s
            if change is not None and abs(change[0] - finding.last_seen) <= near:
                finding.plan = change[1]

    def _deploy_at(self, at: float) -> Deploy | None:
        horizon = self.settings.deploy_horizon_windows * self.settings.window_s
        for deploy in reversed(self.deploys):
            if deploy.at <= at <= deploy.at + horizon:
                return deploy
        return None

    def _resolve_stale(
        self,
        now: float,
        seen: set[tuple[str, str, str, str]],
        after_map: Mapping[Key, Bucket],
        deploy: Deploy | None,
    ) -> None:
        s = self.settings
        for slot, finding in list(self._open.items()):
            if slot in seen:
                continue
            kind = finding.type
            if kind in ("plan_change", "n_plus_one", "rows_scanned_jump"):
                # events, not states: resolved a while after they were last seen
                if now - finding.last_seen < 2 * s.window_s:
                    continue
            elif kind == "throughput_drop":
                pass  # traffic came back (or the baseline moved): resolved
            else:
                bucket = after_map.get((finding.fingerprint, finding.database))
                calls = bucket.calls if bucket is not None else 0
                if 0 < calls < s.min_calls:
                    continue  # too little traffic to say either way
            finding.state = "resolved"
            finding.resolved_at = now
            del self._open[slot]
            self._notify(finding)

    def _announce_new(self) -> list[Finding]:
        """Tell the listeners about the findings opened since last time (once they are
        complete: numbers, tags, plan, trace ids)."""
        new, self._new = self._new, []
        for finding in new:
            self._notify(finding)
        return new

    def _notify(self, finding: Finding) -> None:
        for listener in self.listeners:
            listener(finding)  # listeners must not raise (the notifier only queues)

    def _trim(self) -> None:
        if len(self._findings) <= _MAX_FINDINGS:
            return
        for fid in [f.id for f in self._findings.values() if f.state == "resolved"]:
            if len(self._findings) <= _MAX_FINDINGS:
                break
            del self._findings[fid]

    # ------------------------------------------------------------------ output
    def findings(self) -> list[Finding]:
        """Open findings first (newest first), then resolved ones (newest first)."""
        items = list(self._findings.values())
        items.sort(key=lambda f: (f.state != "open", -f.last_seen))
        return items

    def open_findings(self) -> list[Finding]:
        return list(self._open.values())
