"""The regression monitor: one drain consumer feeding history, deploys, N+1 and the detector.

    drain ──consume(events, notes)──▶ RegressionMonitor
        ├─ History (minute buckets) ──closed minutes──▶ HistoryStore (own thread)
        ├─ deploy tags (version/deploy) ─▶ Detector.observe_version_tag
        ├─ NPlusOneTracker (per trace / transaction)
        └─ slow traced examples (trace ids from the notes)
    every few seconds: tick(now, day_ago) ─▶ Detector.evaluate ─▶ findings ─▶ listeners (notifier)

Statements are bucketed by the monitor's ``clock`` at consume time (the drain runs every
100 ms, so that is within a fraction of a second of the statement's end), which is what
lets tests drive the whole path — real statements through the real proxy — on an
injected clock.  Pure: no I/O here (the store does its own on its thread), no asyncio.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Generator, Iterable, Mapping
from dataclasses import dataclass
from typing import Final, cast

from dbproxy.observe.aggregator import StatementNote
from dbproxy.observe.detector import Deploy, Detector, DetectorSettings, Finding, run_steps
from dbproxy.observe.history import Bucket, History, Key
from dbproxy.observe.history_store import HistoryStore
from dbproxy.observe.nplusone import NPlusOneStats, NPlusOneTracker, trace_id_of
from dbproxy.protocol.events import (
    Event,
    SessionClosed,
    StatementEvent,
    StatementFailed,
    StatementFinished,
    TransactionFinished,
)
from dbproxy.sql.cache import Fingerprinter, SupportsFingerprint
from dbproxy.sql.fingerprint import EMPTY_TAGS

__all__ = ["DEPLOY_TAGS", "Published", "RegressionMonitor"]

log = logging.getLogger(__name__)

#: sqlcommenter tags whose new values mark a deploy
DEPLOY_TAGS: Final = ("version", "deploy")
_EXAMPLES: Final = 3  # slowest traced executions kept per key


class _KeyMemo:
    """A fingerprint's last key, and the open-minute bucket of it with the minute and
    history generation it is valid for."""

    __slots__ = ("bucket", "generation", "key", "minute")

    def __init__(self, key: Key) -> None:
        self.key = key
        self.bucket: Bucket | None = None
        self.minute = -1
        self.generation = -1


@dataclass(frozen=True, slots=True)
class Published:
    """What scrapes (in a worker thread) may read: immutable, swapped in whole."""

    open_findings: tuple[tuple[str, str], ...] = ()  # (fingerprint, type), distinct
    n_plus_one: tuple[tuple[tuple[str, str], int], ...] = ()  # ((fingerprint, route), n)
    evaluations: int = 0


class RegressionMonitor:
    """Not thread-safe: consume/tick on one loop; the store has its own thread."""

    def __init__(
        self,
        *,
        fingerprinter: SupportsFingerprint,
        settings: DetectorSettings,
        store: HistoryStore | None = None,
        clock: Callable[[], float] = time.time,
        n_plus_one_min: int = 10,
        n_plus_one_idle_s: float = 2.0,
        max_fingerprints: int = 10_000,
    ) -> None:
        self.settings = settings
        self.store = store
        self.clock = clock
        self._fingerprinter = fingerprinter
        # compiled, a direct call when it is the real one (see Aggregator)
        self._native_fingerprinter = (
            fingerprinter if isinstance(fingerprinter, Fingerprinter) else None
        )
        self.max_fingerprints = max_fingerprints
        self.overflow = 0  # statements of keys beyond max_fingerprints (not kept)
        self.queries: dict[Key, str] = {}
        self._keys: dict[Key, Key] = {}
        # fingerprint id -> its last key and that key's open-minute bucket: a str-keyed
        # hit instead of a fresh tuple per statement (checked against the statement's
        # database), and no history lookup while the minute stays open
        self._last_key: dict[str, _KeyMemo] = {}
        self._evaluated_minute: int | None = None
        self._tags: dict[Key, dict[str, str]] = {}
        self._examples: dict[Key, list[tuple[int, str, int]]] = {}
        self.history = History(
            window_minutes=settings.window_minutes,
            keep_blocks=settings.keep_baseline_windows,
            on_minute_closed=self._minute_closed if store is not None else None,
        )
        self.detector = Detector(
            history=self.history,
            settings=settings,
            clock=clock,
            query_text=lambda key: self.queries.get(key, ""),
            examples=self._example_traces,
            tags_of=lambda key: dict(self._tags.get(key, {})),
        )
        self.n_plus_one = NPlusOneTracker(
            min_executions=n_plus_one_min,
            idle_s=n_plus_one_idle_s,
            on_offender=self._offender,
        )
        #: (fingerprint, route) -> offending requests, for dbproxy_n_plus_one_total
        self.n_plus_one_counts: dict[tuple[str, str], int] = {}
        self.published = Published()
        if store is not None:
            self._restore(store)

    # ------------------------------------------------------------------ start-up
    def _restore(self, store: HistoryStore) -> None:
        """Known fingerprints, the minutes the detector needs, and recent deploys."""
        now = self.clock()
        minute = int(now // 60)
        wmin = self.settings.window_minutes
        try:
            for fid, db, query, first in store.fingerprints():
                if len(self._keys) < self.max_fingerprints:
                    key = (fid, db)
                    self._keys[key] = key
                    self.queries[key] = query
                    self.history.first_seen[(fid, db)] = first
            start = minute - wmin * (self.settings.keep_baseline_windows + 2)
            for m, buckets in store.minutes(start, minute + 1):
                self.history.restore(m, buckets)
            for at, version, source in store.deploys(now - 14 * 86400):
                self.detector.restore_deploy(version, at, source)
        except Exception:
            log.warning(
                "history: could not read back %s; starting empty", store.path, exc_info=True
            )

    def _minute_closed(self, minute: int, buckets: dict[Key, Bucket]) -> None:
        if self.store is not None:
            self.store.write_minute(minute, buckets, self.queries)

    # ------------------------------------------------------------------ input
    def consume(
        self, events: Iterable[Event], notes: Mapping[int, StatementNote] | None = None
    ) -> None:
        now = self.clock()
        minute = int(now // 60)
        history = self.history
        detector = self.detector
        deploy = detector.active_deploy(now)
        fingerprint = self._fingerprinter.fingerprint
        native = self._native_fingerprinter
        nplus = self.n_plus_one
        queries = self.queries
        keys = self._keys
        last_key = self._last_key
        for i, ev in enumerate(events):
            cls = type(ev)
            if cls is StatementFinished or cls is StatementFailed:
                # the base class: compiled, each attribute is a plain field read (a
                # union would dispatch on the type at every access)
                st: StatementEvent = ev  # type: ignore[assignment]
                if not st.text:
                    continue  # function calls, unknown statements: no query to compare
                note = notes.get(i) if notes else None
                fp = note.fingerprint if note is not None and note.fingerprint else None
                if fp is None:
                    fp = native.fingerprint(st.text) if native is not None else fingerprint(st.text)
                if fp.operation == "EMPTY":
                    continue
                fid = fp.id
                memo = last_key.get(fid)
                if memo is None or memo.key[1] != st.database:
                    found = keys.get((fid, st.database))
                    if found is None:  # one tuple per key, shared by every bucket of it
                        if len(keys) >= self.max_fingerprints:
                            self.overflow += 1
                            continue
                        found = (fid, st.database)
                        keys[found] = found
                        queries.setdefault(found, fp.text)
                    memo = last_key[fid] = _KeyMemo(found)
                # (never Optional: compiled, a plain Key is a C struct, not a new tuple)
                key: Key = memo.key
                err = (
                    cast(StatementFailed, st).error.sqlstate[:2] if cls is StatementFailed else None
                )
                open_bucket = memo.bucket
                if (
                    open_bucket is None
                    or memo.minute != minute
                    or memo.generation != history.generation
                ):
                    open_bucket = memo.bucket = history.open_bucket(key, minute)
                    memo.minute = minute
                    memo.generation = history.generation
                open_bucket.observe(st.duration_ns, st.rows, err)
                tags = fp.tags
                route = application = trace_id = ""
                if tags is not EMPTY_TAGS and tags:  # identity first: len() is a call
                    for tag in DEPLOY_TAGS:
                        value = tags.get(tag)
                        if value:
                            marked = detector.observe_version_tag(tag, value, now)
                            if marked is not None:
                                self._deploy_marked(marked)
                                deploy = detector.active_deploy(now)
                    route = tags.get("route", "")
                    application = tags.get("application", "")
                    if route or application:
                        known = self._tags.get(key)
                        if known is None:
                            known = self._tags[key] = {}
                        if route:
                            known["route"] = route
                        if application:
                            known["application"] = application
                    traceparent = tags.get("traceparent")
                    if traceparent and st.text_in_batch:
                        trace_id = trace_id_of(traceparent)
                if deploy is not None:
                    bucket = deploy.after.get(key)
                    if bucket is None:
                        bucket = deploy.after[key] = Bucket()
                    bucket.observe(st.duration_ns, st.rows, err)
                if note is not None and note.trace_id:
                    self._keep_example(key, st.duration_ns, note.trace_id, minute)
                nplus.statement(
                    key=key,
                    duration_ns=st.duration_ns,
                    trace_id=trace_id,
                    session_id=st.session_id,
                    in_transaction=st.in_transaction,
                    route=route,
                    application=application or st.application_name,
                    now=now,
                )
            elif cls is TransactionFinished or cls is SessionClosed:
                nplus.transaction_finished(ev.session_id, now)
        nplus.expire(now)
        if len(self.n_plus_one_counts) != len(self.published.n_plus_one) or any(
            self.n_plus_one_counts.get(slot) != n for slot, n in self.published.n_plus_one
        ):
            self.publish()

    def publish(self) -> None:
        """Swap in what the collector reads (on the loop that owns the monitor)."""
        self.published = Published(
            open_findings=tuple(
                sorted({(f.fingerprint, f.type) for f in self.detector.open_findings()})
            ),
            n_plus_one=tuple(sorted(self.n_plus_one_counts.items())),
            evaluations=self.detector.evaluations,
        )

    def _keep_example(self, key: Key, duration_ns: int, trace_id: str, minute: int) -> None:
        kept = self._examples.get(key)
        if kept is None:
            kept = self._examples[key] = []
        horizon = minute - self.settings.window_minutes
        kept[:] = [e for e in kept if e[2] >= horizon and e[1] != trace_id]
        kept.append((duration_ns, trace_id, minute))
        kept.sort(reverse=True)
        del kept[_EXAMPLES:]

    def _example_traces(self, key: Key) -> list[str]:
        return [trace for _, trace, _ in self._examples.get(key, [])]

    def _offender(self, stats: NPlusOneStats, now: float) -> None:
        slot = (stats.key[0], stats.route)
        self.n_plus_one_counts[slot] = self.n_plus_one_counts.get(slot, 0) + 1
        self.detector.report_n_plus_one(
            key=stats.key,
            route=stats.route,
            application=stats.application,
            executions_median=stats.executions_median,
            executions_max=stats.executions_max,
            time_per_request_s=stats.time_per_request_s,
            requests=stats.requests,
            now=now,
        )

    # ------------------------------------------------------------------ periodic
    def day_ago(self, now: float | None = None) -> dict[Key, Bucket] | None:
        """The same window a day ago, from the store (blocking: call it off the loop)."""
        if self.store is None or "day" not in self.settings.baselines:
            return None
        now = self.clock() if now is None else now
        minute = int(now // 60) - 24 * 60
        return self.store.window(minute - self.settings.window_minutes, minute + 1)

    def tick(
        self,
        now: float | None = None,
        *,
        day_ago: Mapping[Key, Bucket] | None = None,
        force: bool = False,
    ) -> list[Finding]:
        """Close idle N+1 groups and, once per minute (buckets are minutes), evaluate;
        returns the findings opened."""
        return run_steps(self.tick_steps(now, day_ago=day_ago, force=force))

    def tick_steps(
        self,
        now: float | None = None,
        *,
        day_ago: Mapping[Key, Bucket] | None = None,
        force: bool = False,
    ) -> Generator[None, None, list[Finding]]:
        """:meth:`tick` in steps, so the event loop can relay bytes in between."""
        now = self.clock() if now is None else now
        self.n_plus_one.expire(now)
        minute = int(now // 60)
        opened: list[Finding] = []
        if force or minute != self._evaluated_minute:
            self._evaluated_minute = minute
            opened = yield from self.detector.evaluate_steps(now, day_ago=day_ago)
        self.publish()
        return opened

    def mark_deploy(self, version: str, at: float | None = None) -> Deploy:
        deploy = self.detector.mark_deploy(version, at, source="api")
        self._deploy_marked(deploy)
        return deploy

    def _deploy_marked(self, deploy: Deploy) -> None:
        log.info("deploy %s marked (%s)", deploy.version, deploy.source)
        if self.store is not None:
            self.store.add_deploy(deploy.at, deploy.version, deploy.source)

    def close(self) -> None:
        """Write the open (partial) minute and stop the store's thread."""
        if self.store is None:
            return
        buckets = self.history.open_buckets()
        minute = self.history.open_minute
        if buckets and minute is not None:
            self.store.write_minute(minute, buckets, self.queries)
        self.store.close()
