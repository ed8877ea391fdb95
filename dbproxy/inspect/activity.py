"""The activity sampler: database load by wait event per fingerprint, and who blocked whom.

Every ``interval_s`` (only while some proxied session has a statement in flight) it asks
each live session what it runs now (:meth:`Session.current_statement`, computed on
demand, nothing kept per message) and reads ``pg_stat_activity`` for those backend pids
in one query on the side connection (pg_stat_activity is cluster-wide, so one pool
serves every database).  ``pg_blocking_pids`` is only called for backends waiting on a
``Lock``; the blockers' own rows come back in the same query.

    load      an active backend adds ``interval_s`` seconds to
              (database, fingerprint, wait_event_type, wait_event); no wait event = CPU
    blocking  a backend waiting on a Lock for ≥ ``blocked_ms``: one event per (waiting
              statement, blocker), its duration updated while it lasts

Fingerprints come from the shared fingerprinter (exact-cache hits: the drain already saw
the texts, or will); only fingerprint ids and normalized texts are kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from dbproxy.inspect.side import SidePools
from dbproxy.protocol.session import Session

log = logging.getLogger(__name__)

__all__ = ["ActivitySampler", "ActivitySettings", "BlockingEvent", "LoadBucket"]

OTHER: Final = "__other__"
CPU: Final = "CPU"
#: the blocker is idle inside a transaction block (its fingerprint is its last statement's)
IDLE_IN_TRANSACTION: Final = "idle in transaction"
#: blocker_fingerprint of a backend that is not behind this proxy
EXTERNAL: Final = "external"
#: seconds a sampled statement's wait events are kept for the query log
WAITS_KEPT_S: Final = 120.0

_ACTIVITY_SQL: Final = """
WITH mine AS (
  SELECT pid, state, wait_event_type, wait_event, backend_type, application_name,
         extract(epoch FROM now() - xact_start)::float8 AS xact_age_s,
         CASE WHEN wait_event_type = 'Lock' THEN pg_blocking_pids(pid)
              ELSE '{}'::int[] END AS blockers
  FROM pg_stat_activity WHERE pid = ANY($1::int[])
)
SELECT pid, state, wait_event_type, wait_event, backend_type, application_name,
       xact_age_s, blockers FROM mine
UNION ALL
SELECT b.pid, b.state, b.wait_event_type, b.wait_event, b.backend_type, b.application_name,
       extract(epoch FROM now() - b.xact_start)::float8, '{}'::int[]
FROM pg_stat_activity b
WHERE b.pid IN (SELECT unnest(blockers) FROM mine) AND NOT b.pid = ANY($1::int[])
"""


class _Fingerprints(Protocol):
    def fingerprint(self, sql: str) -> Any: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class ActivitySettings:
    interval_s: float = 1.0
    blocked_ms: float = 500.0
    #: fingerprints with their own load series; the rest fold into "__other__"
    max_fingerprints: int = 500
    #: seconds of per-sample load kept for /api/load
    keep_s: float = 3600.0
    max_events: int = 1000


@dataclass(slots=True, kw_only=True)
class BlockingEvent:
    """One statement waiting on a lock held by one other backend."""

    first_at_s: float
    last_at_s: float
    database: str
    fingerprint: str
    query: str
    application: str
    waiter_pid: int
    blocker_pid: int
    blocker_fingerprint: str | None  # None: not behind the proxy, or nothing known
    blocker_query: str | None
    blocker_state: str  # active, idle in transaction, …
    blocker_behind_proxy: bool
    blocker_application_name: str
    blocker_transaction_age_s: float | None
    wait_s: float
    ongoing: bool = True
    session_id: int = 0
    statement_start_ns: int = 0

    @property
    def blocker_label(self) -> str:
        """The blocker's label for dbproxy_lock_waits_total."""
        if not self.blocker_behind_proxy:
            return EXTERNAL
        return self.blocker_fingerprint or IDLE_IN_TRANSACTION


@dataclass(slots=True)
class LoadBucket:
    """One sample's load: (database, fingerprint, application, route, wait type, wait
    event) -> seconds."""

    at_s: float
    weight_s: float = 1.0  # the time this sample stands for
    load: dict[tuple[str, str, str, str, str, str], float] = field(default_factory=dict)


@dataclass(slots=True)
class ActivityCounts:
    samples: int = 0  # queries sent
    skipped_idle: int = 0  # intervals with nothing in flight (no query)
    failures: int = 0
    seconds: float = 0.0  # time spent in the sample query


@dataclass(slots=True)
class _Mine:
    session: Session
    text: str
    since_ns: int
    active: bool
    transaction_start_ns: int


class ActivitySampler:
    """Owned by the app (when the side connection is on); ``start``/``stop`` with it."""

    def __init__(
        self,
        settings: ActivitySettings,
        *,
        pools: SidePools,
        fingerprinter: _Fingerprints,
        sessions: Callable[[], Iterable[Session]],
        clock: Callable[[], float] = time.time,
        monotonic_ns: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        self.settings = settings
        self.pools = pools
        self._fingerprinter = fingerprinter
        self._sessions = sessions
        self._clock = clock
        self._monotonic_ns = monotonic_ns
        self.counts = ActivityCounts()
        #: (database, fingerprint, wait_event_type, wait_event) -> sampled active seconds
        self.load: dict[tuple[str, str, str, str], float] = {}
        #: (fingerprint, blocker label) -> lock waits longer than blocked_ms
        self.lock_waits: dict[tuple[str, str], int] = {}
        self.buckets: deque[LoadBucket] = deque()
        self.events: deque[BlockingEvent] = deque(maxlen=settings.max_events)
        #: normalized text per fingerprint id seen by the sampler
        self.queries: dict[str, str] = {}
        self._series: set[str] = set()
        self._ongoing: dict[tuple[int, int, int], BlockingEvent] = {}
        #: lock wait start per (waiter pid, statement start): first sample seen waiting
        self._lock_since: dict[tuple[int, int], int] = {}
        #: session id -> (statement start ns, blocker label): read by span builders
        self.blocked: dict[int, tuple[int, str]] = {}
        #: (session id, statement start ns) -> {wait: sampled seconds}, for statements
        #: that started in the last WAITS_KEPT_S (the query log reads them at drain time)
        self.waits: dict[tuple[int, int], dict[str, float]] = {}
        self._task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None

    async def _run(self) -> None:
        interval = max(0.05, self.settings.interval_s)
        last = self._monotonic_ns()
        while True:
            await asyncio.sleep(interval)
            # each sample stands for the time since the previous one (the sleep plus the
            # previous query), so the sums stay unbiased however long the query takes
            now = self._monotonic_ns()
            weight, last = min((now - last) / 1e9, 2 * interval), now
            try:
                await self.sample(weight)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.counts.failures += 1
                log.warning("activity sample failed: %s", type(exc).__name__)

    # ------------------------------------------------------------------ one sample
    def _snapshot(self) -> dict[int, _Mine]:
        mine: dict[int, _Mine] = {}
        for session in self._sessions():
            pid = session.backend_pid
            if not pid:
                continue
            current = session.current_statement()
            if current is None:
                continue
            mine[pid] = _Mine(
                session,
                current.text,
                current.since_ns,
                current.active,
                current.transaction_start_ns,
            )
        return mine

    async def sample(self, weight_s: float | None = None) -> bool:
        """One sample; False when nothing was in flight (no query sent)."""
        mine = self._snapshot()
        if not any(m.active for m in mine.values()):
            self.counts.skipped_idle += 1
            for event in self._ongoing.values():  # nothing waits any more
                event.ongoing = False
            self._ongoing.clear()
            self._lock_since.clear()
            return False
        database = next(m.session.database for m in mine.values() if m.active)
        pool = await self.pools.pool(database)
        started = time.perf_counter()
        async with pool.acquire() as conn:
            rows = await conn.fetch(_ACTIVITY_SQL, list(mine))
        self.counts.samples += 1
        self.counts.seconds += time.perf_counter() - started
        self.record([dict(r) for r in rows], mine, weight_s)
        return True

    def _fp(self, text: str) -> tuple[str, str, str]:
        """(fingerprint id, application tag, route tag) of a statement's text."""
        if not text:
            return "", "", ""
        fp = self._fingerprinter.fingerprint(text)
        if fp.id not in self.queries and len(self.queries) < 10 * self.settings.max_fingerprints:
            self.queries[fp.id] = fp.text
        tags = fp.tags
        if tags:
            return fp.id, tags.get("application", ""), tags.get("route", "")
        return fp.id, "", ""

    def _series_id(self, fingerprint: str) -> str:
        if fingerprint in self._series:
            return fingerprint
        if len(self._series) < self.settings.max_fingerprints:
            self._series.add(fingerprint)
            return fingerprint
        return OTHER

    def record(
        self, rows: list[dict[str, Any]], mine: dict[int, _Mine], weight_s: float | None = None
    ) -> None:
        """Account one sample's pg_stat_activity rows (pure: no I/O); each active backend
        counts ``weight_s`` seconds (default: the interval)."""
        now_s = self._clock()
        now_ns = self._monotonic_ns()
        weight = self.settings.interval_s if weight_s is None else weight_s
        by_pid = {int(r["pid"]): r for r in rows}
        bucket = LoadBucket(now_s, weight)
        waiting: set[tuple[int, int]] = set()
        seen: set[tuple[int, int, int]] = set()
        for pid, m in mine.items():
            row = by_pid.get(pid)
            if row is None or row.get("state") not in ("active", "fastpath function call"):
                continue
            if not m.active:
                continue  # the server is ahead of what the proxy relayed: next sample
            fingerprint, app_tag, route = self._fp(m.text)
            if not fingerprint:
                continue
            wtype = row.get("wait_event_type") or CPU
            wevent = row.get("wait_event") or CPU
            database = m.session.database
            application = app_tag or m.session.application_name
            key = (database, self._series_id(fingerprint), wtype, wevent)
            self.load[key] = self.load.get(key, 0.0) + weight
            bkey = (database, fingerprint, application, route, wtype, wevent)
            bucket.load[bkey] = bucket.load.get(bkey, 0.0) + weight
            wkey = (m.session.session_id, m.since_ns)
            waits = self.waits.get(wkey)
            if waits is None:
                waits = self.waits[wkey] = {}
            wait = wtype if wtype == wevent else f"{wtype}/{wevent}"
            waits[wait] = waits.get(wait, 0.0) + weight
            if wtype != "Lock":
                continue
            lock_key = (pid, m.since_ns)
            waiting.add(lock_key)
            since = self._lock_since.get(lock_key)
            if since is None:
                # first seen waiting: from the statement's start when this is its first
                # sample, else from now (it ran before it waited)
                first = now_ns - m.since_ns <= self.settings.interval_s * 1.5e9
                since = self._lock_since[lock_key] = m.since_ns if first else now_ns
            wait_s = (now_ns - since) / 1e9
            if wait_s * 1000 < self.settings.blocked_ms:
                continue
            for blocker_pid in row.get("blockers") or ():
                self._blocking(
                    now_s,
                    wait_s,
                    pid,
                    m,
                    fingerprint,
                    application,
                    database,
                    int(blocker_pid),
                    by_pid,
                    mine,
                    seen,
                )
        horizon_ns = now_ns - int(WAITS_KEPT_S * 1e9)
        while self.waits:  # insertion order is sampling order: oldest first
            oldest = next(iter(self.waits))
            if oldest[1] >= horizon_ns and len(self.waits) <= 100_000:
                break
            del self.waits[oldest]
        for lock_key in [k for k in self._lock_since if k not in waiting]:
            del self._lock_since[lock_key]
        for event_key in [k for k in self._ongoing if k not in seen]:
            self._ongoing.pop(event_key).ongoing = False
        if bucket.load:
            self.buckets.append(bucket)
        horizon = now_s - self.settings.keep_s
        while self.buckets and self.buckets[0].at_s < horizon:
            self.buckets.popleft()

    def _blocking(  # noqa: PLR0917
        self,
        now_s: float,
        wait_s: float,
        pid: int,
        m: _Mine,
        fingerprint: str,
        application: str,
        database: str,
        blocker_pid: int,
        by_pid: dict[int, dict[str, Any]],
        mine: dict[int, _Mine],
        seen: set[tuple[int, int, int]],
    ) -> None:
        key = (pid, m.since_ns, blocker_pid)
        seen.add(key)
        event = self._ongoing.get(key)
        if event is not None:
            event.last_at_s = now_s
            event.wait_s = wait_s
            row = by_pid.get(blocker_pid)
            if row is not None and row.get("xact_age_s") is not None:
                event.blocker_transaction_age_s = float(row["xact_age_s"])
            return
        row = by_pid.get(blocker_pid) or {}
        blocker = mine.get(blocker_pid)
        blocker_fp = blocker_query = None
        if blocker is not None:
            blocker_fp = self._fp(blocker.text)[0] or None
            blocker_query = self.queries.get(blocker_fp) if blocker_fp else None
        state = str(row.get("state") or ("unknown" if blocker is None else ""))
        age = row.get("xact_age_s")
        event = BlockingEvent(
            first_at_s=now_s,
            last_at_s=now_s,
            database=database,
            fingerprint=fingerprint,
            query=self.queries.get(fingerprint, ""),
            application=application,
            waiter_pid=pid,
            blocker_pid=blocker_pid,
            blocker_fingerprint=blocker_fp,
            blocker_query=blocker_query,
            blocker_state=state,
            blocker_behind_proxy=blocker is not None,
            blocker_application_name=str(row.get("application_name") or ""),
            blocker_transaction_age_s=float(age) if age is not None else None,
            wait_s=wait_s,
            session_id=m.session.session_id,
            statement_start_ns=m.since_ns,
        )
        self._ongoing[key] = event
        self.events.append(event)
        count_key = (self._series_id(fingerprint), event.blocker_label)
        if event.blocker_behind_proxy and event.blocker_fingerprint:
            count_key = (count_key[0], self._series_id(event.blocker_fingerprint))
        self.lock_waits[count_key] = self.lock_waits.get(count_key, 0) + 1
        known = self.blocked.get(m.session.session_id)
        if known is None or known[0] != m.since_ns or known[1] == EXTERNAL:
            # one blocker per statement: the first one behind the proxy
            self.blocked[m.session.session_id] = (m.since_ns, event.blocker_label)
        if len(self.blocked) > 10_000:
            self.blocked.pop(next(iter(self.blocked)))

    # ------------------------------------------------------------------ reading
    def now(self) -> float:
        return self._clock()

    def wait_events(self, session_id: int, start_ns: int, end_ns: int) -> dict[str, float]:
        """Sampled seconds by wait event (top 3) of that session's statement, {} when it
        was never caught running."""
        waits = self.waits.get((session_id, start_ns))
        if not waits:
            return {}
        top = sorted(waits.items(), key=lambda kv: -kv[1])[:3]
        return {k: round(v, 3) for k, v in top}

    def blocked_by(self, session_id: int, start_ns: int, end_ns: int) -> str | None:
        """The blocker label of a lock wait seen during that session's statement
        (start/end in the session's monotonic ns), else None.  Safe from the tracing
        thread: one dict read."""
        entry = self.blocked.get(session_id)
        if entry is None or not start_ns - 1_000_000 <= entry[0] <= max(end_ns, start_ns):
            return None
        return entry[1]

    def top_wait_events(
        self, fingerprint: str, database: str, since_s: float, until_s: float, limit: int = 3
    ) -> dict[str, float]:
        """Sampled active seconds of one fingerprint by wait event (``CPU``,
        ``Lock/transactionid`` …) between two times: the ``limit`` largest."""
        totals: dict[str, float] = {}
        for bucket in self.buckets:
            if not since_s <= bucket.at_s <= until_s:
                continue
            for (db, fp, _app, _route, wtype, wevent), seconds in bucket.load.items():
                if fp == fingerprint and db == database:
                    wait = wtype if wtype == wevent else f"{wtype}/{wevent}"
                    totals[wait] = totals.get(wait, 0.0) + seconds
        top = sorted(totals.items(), key=lambda kv: (-kv[1], kv[0]))[:limit]
        return {wait: round(seconds, 3) for wait, seconds in top}

    def load_by(self, by: str, window_s: float) -> dict[str, Any]:
        """Sampled active seconds over the last ``window_s``, grouped ``by`` one of
        fingerprint, wait_event, application, route; with the wait-event series."""
        index = {"fingerprint": 1, "application": 2, "route": 3}
        horizon = self._clock() - window_s
        groups: dict[tuple[str, ...], dict[str, float]] = {}
        series: list[dict[str, Any]] = []
        total = 0.0
        for bucket in self.buckets:
            if bucket.at_s < horizon:
                continue
            point: dict[str, float] = {}
            for (database, fp, app, route, wtype, wevent), seconds in bucket.load.items():
                total += seconds
                if by == "wait_event":
                    gkey: tuple[str, ...] = (wtype, wevent)
                else:
                    gkey = (database, (database, fp, app, route)[index[by]])
                group = groups.setdefault(gkey, {})
                wait = wtype if wtype == wevent else f"{wtype}/{wevent}"
                group[wait] = group.get(wait, 0.0) + seconds
                point[wtype] = point.get(wtype, 0.0) + seconds
            series.append({"at": bucket.at_s, "weight_s": bucket.weight_s, "load": point})
        return {"total_s": total, "groups": groups, "series": series}
