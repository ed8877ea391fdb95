"""The inspector: picks statements from the drained event batches and, off the proxy's hot
path, asks the server about them through the side connection.

    consume(events, notes)  (the app's drain, on the loop; cheap: no I/O)
        ├─ slow samples (every finished statement: the N slowest recent ones)
        ├─ slow statement (≥ explain_slow_ms)     ──▶ plan job   ┐
        └─ sampled read (sample_analyze fraction) ──▶ sample job ├─▶ bounded queue ─▶ worker
    periodic task: top fingerprints by total time ──▶ plan jobs  │    (own task; each job
                   pg_stat_statements per database ─▶ pgss job  ┘     times out, failures
                                                                      are counted + logged)

Rate limits: plans at most ``plans_per_minute`` and one per (fingerprint, database) every
``plan_interval_s``; samples at most ``samples_per_minute`` and one per key every
``sample_interval_s``.  A sampled execution's values live only in its queued job.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from dbproxy.inspect.plan import plan_functions, rows_scanned
from dbproxy.inspect.side import APPLICATION_NAME, SidePools, search_path_for
from dbproxy.inspect.store import InspectStore, PlanChange, ServerStats, SlowSample
from dbproxy.protocol.events import Event, SessionClosed, SessionOpened, StatementFinished
from dbproxy.sql.parameterize import Parameterized, called_functions, parameterize

log = logging.getLogger(__name__)

__all__ = ["InspectSettings", "Inspector", "RowsScannedCallback"]

#: operations a plan is taken for (EXPLAIN without ANALYZE never executes them)
EXPLAINABLE: Final = frozenset(("SELECT", "INSERT", "UPDATE", "DELETE", "MERGE"))
RowsScannedCallback = Callable[[str, str, float, float], None]
#: longer statements are not planned (their rewritten text is not kept)
MAX_TEXT_CHARS: Final = 65_536
#: seconds before a fingerprint whose plan or sample failed is tried again
PLAN_RETRY_S: Final = 600.0


class _Fingerprints(Protocol):
    def fingerprint(self, sql: str) -> Any: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class InspectSettings:
    dsn: str = field(repr=False)
    explain_slow_ms: float | None = 1000.0
    sample_analyze: float = 0.0
    samples_per_minute: int = 60
    sample_interval_s: float = 1.0
    plans_per_minute: int = 60
    plan_interval_s: float = 300.0
    interval_s: float = 60.0  # periodic plans of the top fingerprints, pg_stat_statements
    top: int = 20
    statement_timeout_ms: int = 5000
    lock_timeout_ms: int = 100
    queue_size: int = 256
    #: fingerprint ids or table names never sampled with EXPLAIN ANALYZE
    exclude: tuple[str, ...] = ()
    max_keys: int = 10_000
    slow_samples: int = 5


@dataclass(slots=True)
class _KeyInfo:
    search_path: str  # the client's, resolved for the side connection
    operation: str
    kind: str
    tables: tuple[str, ...]
    text: str | None  # parameterized (literal-free) text, None when not rewritable
    params: int
    total_ns: int = 0
    unsafe_until: float = 0.0  # not sampled before (volatile functions found)
    plan_failed_until: float = 0.0  # not planned before (the last plan failed)
    sample_ok: bool = False  # a plain read, not opted out (decided once)


@dataclass(frozen=True, slots=True)
class _PlanJob:
    fingerprint: str
    database: str
    search_path: str
    text: str
    params: int


@dataclass(frozen=True, slots=True)
class _SampleJob:
    fingerprint: str
    database: str
    search_path: str
    statement: Parameterized = field(repr=False)  # holds the execution's literals
    bind_values: tuple[str | None, ...] = field(default=(), repr=False)  # and Bind values
    declared_oids: tuple[int, ...] = ()  # the Parse's parameter types (0: unspecified)


@dataclass(frozen=True, slots=True)
class _PgssJob:
    database: str


_Job = _PlanJob | _SampleJob | _PgssJob


@dataclass(slots=True)
class InspectCounts:
    """Monotonic counters (exported as dbproxy_inspect_*)."""

    jobs: dict[tuple[str, str], int] = field(default_factory=dict)  # (kind, outcome)
    callback_errors: int = 0

    def add(self, kind: str, outcome: str) -> None:
        key = (kind, outcome)
        self.jobs[key] = self.jobs.get(key, 0) + 1


class Inspector:
    """Owned by the app; ``consume`` on the drain, ``start``/``stop`` with the app."""

    def __init__(
        self,
        settings: InspectSettings,
        *,
        fingerprinter: _Fingerprints,
        pools: SidePools | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        rng: Callable[[], float] = random.random,
        on_plan_change: Sequence[Callable[[PlanChange], None]] = (),
        on_rows_scanned: Sequence[RowsScannedCallback] = (),
    ) -> None:
        from dbproxy.inspect.store import RateLimiter

        self.settings = settings
        self.store = InspectStore(max_keys=settings.max_keys, slow_samples=settings.slow_samples)
        self.pools = pools or SidePools(
            settings.dsn,
            statement_timeout_ms=settings.statement_timeout_ms,
            lock_timeout_ms=settings.lock_timeout_ms,
        )
        self.counts = InspectCounts()
        self._fingerprinter = fingerprinter
        self._clock = clock
        self._rng = rng
        self._plan_limit = RateLimiter(
            per_minute=settings.plans_per_minute,
            key_interval_s=settings.plan_interval_s,
            clock=monotonic,
        )
        self._sample_limit = RateLimiter(
            per_minute=settings.samples_per_minute,
            key_interval_s=settings.sample_interval_s,
            clock=monotonic,
        )
        self.on_plan_change: list[Callable[[PlanChange], None]] = list(on_plan_change)
        self.on_rows_scanned: list[RowsScannedCallback] = list(on_rows_scanned)
        #: (session id, start ns, end ns) -> the lock blocker's label (activity sampler)
        self.blocked_by: Callable[[int, int, int], str | None] | None = None
        self._slow_ns = (
            None if settings.explain_slow_ms is None else int(settings.explain_slow_ms * 1e6)
        )
        self._exclude = frozenset(settings.exclude)
        self._keys: OrderedDict[tuple[str, str], _KeyInfo] = OrderedDict()
        self._clients: dict[int, str] = {}
        self._databases: set[str] = set()
        self._queue: asyncio.Queue[_Job] | None = None
        self._tasks: list[asyncio.Task[None]] = []

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self._queue = asyncio.Queue(self.settings.queue_size)
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._work()), loop.create_task(self._periodic())]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []
        await self.pools.close()

    # ------------------------------------------------------------------ input (no I/O)
    def consume(self, events: list[Event], notes: Mapping[int, Any] | None = None) -> None:
        for index, ev in enumerate(events):
            cls = type(ev)
            if cls is SessionOpened:
                self._clients[ev.session_id] = ev.client_address  # type: ignore[union-attr]
                continue
            if cls is SessionClosed:
                self._clients.pop(ev.session_id, None)
                continue
            if cls is not StatementFinished:
                continue
            st: StatementFinished = ev  # type: ignore[assignment]
            if not st.text or st.protocol == "function" or st.application_name == APPLICATION_NAME:
                continue
            note = notes.get(index) if notes else None
            fp = getattr(note, "fingerprint", None) or self._fingerprinter.fingerprint(st.text)
            key = (fp.id, st.database)
            info = self._keys.get(key)
            if info is None:
                info = self._new_key(key, fp, st)
            else:
                self._keys.move_to_end(key)
            info.total_ns += st.duration_ns
            self.store.record_execution(
                fp.id,
                st.database,
                SlowSample(
                    duration_ns=st.duration_ns,
                    at_epoch_ns=st.start_epoch_ns,
                    application_name=st.application_name,
                    client=self._clients.get(st.session_id, ""),
                    trace_id=getattr(note, "trace_id", "") or "",
                    user=st.user,
                    protocol=st.protocol,
                    param_type_oids=st.param_type_oids,
                    blocked_by=(
                        self.blocked_by(st.session_id, st.start_ns, st.end_ns) or ""
                        if self.blocked_by is not None
                        else ""
                    ),
                ),
            )
            if info.text is None or info.operation not in EXPLAINABLE:
                continue
            if self._slow_ns is not None and st.duration_ns >= self._slow_ns:
                self._plan(key, info)
            rate = self.settings.sample_analyze
            if rate > 0 and info.sample_ok and self._rng() < rate and self._may_sample(info):
                self._sample(key, info, st)

    def _new_key(self, key: tuple[str, str], fp: Any, st: StatementFinished) -> _KeyInfo:
        p = parameterize(st.text) if len(st.text) <= MAX_TEXT_CHARS else None
        info = _KeyInfo(
            search_path=search_path_for(st.user, st.search_path),
            operation=str(fp.operation),
            kind=str(getattr(fp.kind, "value", fp.kind)),
            tables=tuple(fp.tables),
            text=p.text if p is not None else None,
            params=p.params if p is not None else 0,
        )
        info.sample_ok = self._sampleable(info, fp.id)
        self._keys[key] = info
        self._databases.add(st.database)
        if len(self._keys) > self.settings.max_keys:
            self._keys.popitem(last=False)
        return info

    def _sampleable(self, info: _KeyInfo, fingerprint: str) -> bool:
        """Whether a fingerprint may ever be sampled: a plain read, not opted out."""
        if info.operation != "SELECT" or info.kind != "read" or info.text is None:
            return False
        if fingerprint in self._exclude or self._exclude.intersection(info.tables):
            return False
        upper = f" {info.text.upper()} "
        return not any(
            lock in upper for lock in (" FOR UPDATE ", " FOR SHARE ", " FOR NO ", " FOR KEY ")
        )

    def _may_sample(self, info: _KeyInfo) -> bool:
        """Not now: a volatile function was found, or its last plan or sample failed."""
        now = self._clock()
        return info.unsafe_until <= now and info.plan_failed_until <= now

    def _enqueue(self, job: _Job, kind: str) -> bool:
        if self._queue is None:
            return False
        try:
            self._queue.put_nowait(job)
        except asyncio.QueueFull:
            self.counts.add(kind, "dropped")
            return False
        return True

    def _plan(self, key: tuple[str, str], info: _KeyInfo) -> None:
        if info.text is None or info.plan_failed_until > self._clock():
            return
        if not self._plan_limit.allow(key):
            return
        self._enqueue(_PlanJob(key[0], key[1], info.search_path, info.text, info.params), "plan")

    def _sample(self, key: tuple[str, str], info: _KeyInfo, st: StatementFinished) -> None:
        statement = parameterize(st.text)  # this execution's literals
        if statement is None or not statement.sampleable:
            self.counts.add("sample", "skipped")
            return
        bind: tuple[str | None, ...] = ()
        if statement.original_params:  # extended protocol: the Bind's values are needed
            values = st.param_values
            if values is None or len(values) != statement.original_params:
                self.counts.add("sample", "skipped")  # binary format, or too big to capture
                return
            bind = values
        if not self._sample_limit.allow(key):
            return
        job = _SampleJob(key[0], key[1], info.search_path, statement, bind, st.param_type_oids)
        self._enqueue(job, "sample")

    # ------------------------------------------------------------------ off the hot path
    async def _periodic(self) -> None:
        while True:
            await asyncio.sleep(self.settings.interval_s)
            try:
                self.tick()
            except Exception:
                self.counts.add("periodic", "failed")
                log.exception("inspector periodic step failed")

    def tick(self) -> None:
        """Plan the top fingerprints by total time (so a 'before' plan exists when one
        regresses) and refresh pg_stat_statements of each database seen."""
        ranked = sorted(self._keys.items(), key=lambda kv: -kv[1].total_ns)
        for key, info in ranked[: self.settings.top]:
            if info.operation in EXPLAINABLE:
                self._plan(key, info)
        for database in sorted(self._databases):
            self._enqueue(_PgssJob(database), "pgss")

    async def _work(self) -> None:
        assert self._queue is not None
        timeout = self.settings.statement_timeout_ms / 1000.0 * 3 + 5.0
        while True:
            job = await self._queue.get()
            kind = (
                "plan"
                if isinstance(job, _PlanJob)
                else "sample"
                if isinstance(job, _SampleJob)
                else "pgss"
            )
            try:
                outcome = await asyncio.wait_for(self._run(job), timeout)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                outcome = "failed"
                self._backoff(job)
                # A server's message may quote a value ('invalid input syntax for type
                # integer: "…"', a DETAIL echoing a key): only the class and SQLSTATE are
                # logged, never server error text.
                detail = f"SQLSTATE {getattr(exc, 'sqlstate', None) or '?'}"
                log.warning(
                    "inspector %s job for %s failed: %s: %s",
                    kind,
                    getattr(job, "fingerprint", getattr(job, "database", "")),
                    type(exc).__name__,
                    detail,
                )
            self.counts.add(kind, outcome)
            del job  # a sample's values go with it

    def _backoff(self, job: _Job) -> None:
        """A plan that failed (no privilege on a table, a statement the rewrite broke) is
        not retried for a while: the failure is counted, not repeated every interval."""
        if isinstance(job, _PlanJob | _SampleJob):
            info = self._keys.get((job.fingerprint, job.database))
            if info is not None:
                info.plan_failed_until = self._clock() + PLAN_RETRY_S

    async def _run(self, job: _Job) -> str:
        if isinstance(job, _PlanJob):
            return await self._run_plan(job)
        if isinstance(job, _SampleJob):
            return await self._run_sample(job)
        return await self._run_pgss(job)

    async def _run_plan(self, job: _PlanJob) -> str:
        plan, version = await self.pools.generic_plan(
            job.database, job.search_path, job.text, job.params
        )
        change = self.store.record_plan(
            job.fingerprint, job.database, plan, at_s=self._clock(), server_version=version
        )
        if change is not None:
            log.info(
                "plan change for %s in %s: %s -> %s",
                job.fingerprint,
                job.database,
                change.before_summary,
                change.after_summary,
            )
            for callback in self.on_plan_change:
                try:
                    callback(change)
                except Exception:
                    self.counts.callback_errors += 1
                    log.exception("on_plan_change callback failed")
        return "ok"

    async def _run_sample(self, job: _SampleJob) -> str:
        key = (job.fingerprint, job.database)
        info = self._keys.get(key)
        names = called_functions(job.statement.text)
        current = self.store.current_plan(job.fingerprint, job.database)
        if current is None:  # the functions a view calls show in the plan: plan first
            await self._run_plan(
                _PlanJob(
                    job.fingerprint,
                    job.database,
                    job.search_path,
                    job.statement.text,
                    job.statement.params,
                )
            )
            current = self.store.current_plan(job.fingerprint, job.database)
        if current is not None:
            names |= plan_functions(current.plan)
        volatile = await self.pools.volatile_functions(job.database, names)
        if volatile:
            if info is not None:
                info.unsafe_until = self._clock() + 600.0
            return "unsafe"
        values = [*job.bind_values, *job.statement.literals]
        explain = await self.pools.sample_analyze(
            job.database, job.search_path, job.statement.text, values, job.declared_oids
        )
        count = rows_scanned(explain)
        del explain  # a custom plan: it shows the values; only its numbers are kept
        at_s = self._clock()
        rec = self.store.record_scan(job.fingerprint, job.database, count, at_s=at_s)
        for callback in self.on_rows_scanned:
            try:
                callback(job.fingerprint, job.database, at_s, rec.mean_scanned)
            except Exception:
                self.counts.callback_errors += 1
                log.exception("on_rows_scanned callback failed")
        return "ok"

    async def _run_pgss(self, job: _PgssJob) -> str:
        rows = await self.pools.pg_stat_statements(job.database)
        if not rows:
            return "unavailable"
        # a row belongs to a fingerprint by its queryid (EXPLAIN VERBOSE of the statement's
        # $n text: the extended-protocol form) or by its normalized text (the server's $n
        # text of literal statements hashes differently, but normalizes the same)
        by_queryid = {
            qid: fp
            for (fp, db), qids in self.store.queryids.items()
            if db == job.database
            for qid in qids
        }
        by_fp: dict[str, list[dict[str, Any]]] = {}
        for row in rows:
            fp_id = by_queryid.get(row.get("queryid") or 0)
            if fp_id is None:
                text = row.get("query") or ""
                if not text:
                    continue
                fp_id = self._fingerprinter.fingerprint(text).id
            by_fp.setdefault(fp_id, []).append(row)
        at_s = self._clock()
        self.store.record_server(
            job.database,
            {fp: _server_stats(group, at_s) for fp, group in by_fp.items()},
        )
        return "ok"

    def slow_ms(self) -> float | None:
        return self.settings.explain_slow_ms


def _server_stats(rows: list[dict[str, Any]], at_s: float) -> ServerStats:
    def total(name: str) -> float:
        return float(sum(r.get(name) or 0 for r in rows))

    return ServerStats(
        queryids=tuple(sorted(int(r["queryid"]) for r in rows if r.get("queryid") is not None)),
        calls=int(total("calls")),
        total_exec_time_ms=total("total_exec_time"),
        total_plan_time_ms=total("total_plan_time"),
        shared_blks_hit=int(total("shared_blks_hit")),
        shared_blks_read=int(total("shared_blks_read")),
        local_blks_hit=int(total("local_blks_hit")),
        local_blks_read=int(total("local_blks_read")),
        temp_blks_read=int(total("temp_blks_read")),
        temp_blks_written=int(total("temp_blks_written")),
        wal_bytes=int(total("wal_bytes")),
        rows=int(total("rows")),
        at_s=at_s,
    )
