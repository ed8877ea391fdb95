"""Per-fingerprint statistics: events in, frozen :class:`StatsSnapshot` out.

The aggregator runs on one task (the sink's drain loop) and owns plain mutable counters;
exporters only ever see :meth:`Aggregator.snapshot` copies.  It is pure: no I/O, no
asyncio, no metrics libraries; time comes from the ``clock`` it is given.

What is counted
---------------
* **A call** is one :class:`StatementFinished` or :class:`StatementFailed`: every statement
  the server ran or refused, failed ones included (their duration goes into the histogram
  too, so ``duration.count == calls``).  ``StatementStarted`` is ignored.
* **Key**: ``(fingerprint id, database, user)``.  A statement with no text gets a
  synthetic fingerprint, since its SQL is not known to the proxy:
  ``<function call oid=N>`` for a fast-path FunctionCall (``<function call>`` if the
  oid is unknown or too many distinct oids were seen) and ``<unknown statement>`` for
  anything else (a Bind on a statement prepared before observation began, a simple
  Query the splitter could not match).  Their operation is ``FUNCTION CALL`` /
  ``UNKNOWN``, kind ``other``.
* **Cardinality guard**: at most ``max_fingerprints`` distinct fingerprint ids are tracked
  (a fingerprint counts once whatever its databases and users).  Later new fingerprints
  are folded into :data:`stats.OTHER` for their (database, user), and every statement so
  folded increments ``fingerprints_overflow``.  Tracked fingerprints are not evicted
  until :meth:`Aggregator.reset`.
* **Recent window**: each key keeps the time spent in the current window of
  ``recent_window_s`` seconds (by ``clock``, at consume time) and in the previous one;
  ``recent_total_s`` is their sum, i.e. the time of the last 1 to 2 windows.  Rotation
  happens once per window over all keys (O(keys) every few minutes, nothing per event).
* **Attribution**: per key, ``application_name`` values and the sqlcommenter tags in
  :data:`ATTRIBUTION_TAGS` are counted per call, each bounded to ``max_tag_values``
  values plus ``"__other__"`` (see :mod:`dbproxy.observe.topn`).  Per-request tags
  (``traceparent``, ``tracestate``) and unknown keys are not counted.
* **Transactions** (per database and user of the session): a
  :class:`TransactionFinished` is a commit or a rollback; its duration is
  ``end_ns - start_ns``.  ``errors`` counts the rolled-back transactions in which a
  statement failed: a :class:`StatementFailed` with ``in_transaction=True`` marks the
  session, the next :class:`TransactionFinished` reads and clears the mark (so does any
  statement outside a transaction block).  A failure recovered with
  ``ROLLBACK TO SAVEPOINT`` and then committed is a commit, not an error.  The session's
  database/user come from :class:`SessionOpened`, or from its statements if that event
  was not seen (dropped by the sink, or before a restart); failing both, ``""``.
* **Connections** per (database, user): ``current`` (open sessions), ``total`` opened
  and ``rejected`` during startup.  Sessions closed without a :class:`SessionOpened`
  (rejected, cancel requests) do not change ``current``.
* **Exemplars**: a consumer that runs before the aggregator on the same batch (the span
  builder in ``export/otel.py``) may pass :class:`StatementNote` s, keyed by the
  statement's index in the batch.  A note's trace/span id becomes the exemplar of the
  bucket the statement's duration fell in (the latest one wins); its fingerprint is used
  instead of fingerprinting the text again.  The aggregator knows nothing of tracing.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final, cast

from dbproxy.observe.histogram import HistogramBuilder, bounds_to_ns, bucket_of
from dbproxy.observe.stats import (
    OTHER,
    QUERY_BUCKETS_S,
    TRANSACTION_BUCKETS_S,
    ConnectionStats,
    Exemplar,
    Histogram,
    QueryStats,
    StatsSnapshot,
    TransactionStats,
)
from dbproxy.observe.topn import count_value, merge_counts, top_items
from dbproxy.protocol.events import (
    Event,
    SessionClosed,
    SessionOpened,
    SessionRejected,
    StatementEvent,
    StatementFailed,
    StatementFinished,
    TransactionFinished,
)
from dbproxy.sql.analyze import QueryKind
from dbproxy.sql.cache import Fingerprinter, SupportsFingerprint
from dbproxy.sql.fingerprint import EMPTY_TAGS, Fingerprint, Tags, fingerprint_id

__all__ = [
    "ATTRIBUTION_TAGS",
    "FUNCTION_CALL_TEXT",
    "OTHER_QUERY_TEXT",
    "UNKNOWN_STATEMENT_TEXT",
    "Aggregator",
    "StatementNote",
]

#: sqlcommenter keys counted per key; per-request ones (traceparent…) are left out.
ATTRIBUTION_TAGS: Final = frozenset(
    ["application", "route", "controller", "action", "version", "framework"]
)
#: Placeholder texts of statements whose SQL the proxy does not know.
FUNCTION_CALL_TEXT: Final = "<function call>"
UNKNOWN_STATEMENT_TEXT: Final = "<unknown statement>"
#: ``query`` of the folded OTHER entries.
OTHER_QUERY_TEXT: Final = "(other queries)"

# Distinct per-oid function-call placeholders kept before using the generic one.
_MAX_FUNCTION_PLACEHOLDERS: Final = 1_000
_NS: Final = 1e9
# shared by every snapshot entry without errors/tags: read-only, so sharing is safe
_EMPTY_ERRORS: Final[Mapping[str, int]] = MappingProxyType({})
_EMPTY_TAGS: Final[Mapping[str, tuple[tuple[str, int], ...]]] = MappingProxyType({})


def _placeholder(text: str, operation: str) -> Fingerprint:
    return Fingerprint(
        id=fingerprint_id(text),
        text=text,
        summary=operation,
        operation=operation,
        kind=QueryKind.OTHER,
        parse_ok=True,  # nothing failed to parse: there is no SQL
    )


@dataclass(frozen=True, slots=True)
class StatementNote:
    """What a consumer that ran earlier on the same batch learned about one statement.

    ``fingerprint``: the statement's fingerprint from the same fingerprinter (statements
    carrying a traceparent miss the exact cache, so this saves a second normalization);
    ``trace_id``/``span_id``: lowercase hex ids of the span that timed it, or ``""``.
    """

    fingerprint: Fingerprint | None = None
    trace_id: str = ""
    span_id: str = ""


_UNKNOWN_FP: Final = _placeholder(UNKNOWN_STATEMENT_TEXT, "UNKNOWN")
_FUNCTION_FP: Final = _placeholder(FUNCTION_CALL_TEXT, "FUNCTION CALL")


class _Meta:
    """What a snapshot reports about a fingerprint (shared by its keys)."""

    __slots__ = ("id", "kind", "operation", "parse_ok", "query", "summary", "tables")

    def __init__(
        self,
        *,
        id: str,
        query: str,
        summary: str,
        operation: str,
        kind: str,
        tables: tuple[str, ...],
        parse_ok: bool,
    ) -> None:
        self.id = id
        self.query = query
        self.summary = summary
        self.operation = operation
        self.kind = kind
        self.tables = tables
        self.parse_ok = parse_ok

    @classmethod
    def of(cls, fp: Fingerprint) -> _Meta:
        return cls(
            id=fp.id,
            query=fp.text,
            summary=fp.summary,
            operation=fp.operation,
            kind=str(fp.kind.value),
            tables=fp.tables,
            parse_ok=fp.parse_ok,
        )


_OTHER_META: Final = _Meta(
    id=OTHER,
    query=OTHER_QUERY_TEXT,
    summary="other",
    operation="other",
    kind="other",
    tables=(),
    parse_ok=True,
)


class _QueryRecord:
    """Mutable counters of one (fingerprint, database, user)."""

    __slots__ = (
        "app_last",
        "app_pending",
        "apps",
        "calls",
        "counts",
        "database",
        "errors",
        "exemplars",
        "first_ns",
        "frozen",
        "frozen_calls",
        "frozen_generation",
        "last_ns",
        "max_ns",
        "meta",
        "min_ns",
        "previous_ns",
        "recent_ns",
        "rolled_back",
        "rows",
        "sum_ns",
        "tags",
        "user",
    )

    def __init__(self, meta: _Meta, database: str, user: str, n_buckets: int) -> None:
        self.meta = meta
        self.database = database
        self.user = user
        self.calls = 0
        self.sum_ns = 0
        self.counts = [0] * n_buckets
        self.min_ns = -1  # -1: no call yet
        self.max_ns = 0
        self.rows = 0
        self.errors: dict[str, int] | None = None
        self.rolled_back = 0
        self.first_ns = 0  # epoch ns; 0: no call yet
        self.last_ns = 0
        self.recent_ns = 0  # current window
        self.previous_ns = 0  # previous window
        self.apps: dict[str, int] = {}
        # calls of ``app_last`` not yet in ``apps``: consecutive calls of a key mostly
        # come from one application, and a native int add costs less than a dict
        # update with a boxed count; read ``apps`` through ``flush_apps``
        self.app_last = ""
        self.app_pending = 0
        self.tags: dict[str, dict[str, int]] | None = None
        # per bucket, the latest traced observation (allocated on the first one)
        self.exemplars: list[Exemplar | None] | None = None
        # the last QueryStats made of this record, reused while ``calls`` and the
        # window generation are unchanged (an idle key costs nothing to snapshot)
        self.frozen: QueryStats | None = None
        self.frozen_calls = -1
        self.frozen_generation = -1

    def flush_apps(self, limit: int) -> dict[str, int]:
        """``apps`` with the pending calls counted (as ``count_value`` per call would)."""
        if self.app_pending:
            count_value(self.apps, self.app_last, limit, self.app_pending)
            self.app_pending = 0
        return self.apps


def _merge(group: list[_QueryRecord], database: str, user: str, limit: int) -> _QueryRecord:
    """One OTHER record holding the sums of ``group`` (same database and user)."""
    other = _QueryRecord(_OTHER_META, database, user, len(group[0].counts))
    # column sums in C: this runs over thousands of records per snapshot(top=K)
    other.counts = [sum(column) for column in zip(*(r.counts for r in group), strict=True)]
    other.calls = sum(r.calls for r in group)
    other.sum_ns = sum(r.sum_ns for r in group)
    other.rows = sum(r.rows for r in group)
    other.rolled_back = sum(r.rolled_back for r in group)
    other.recent_ns = sum(r.recent_ns for r in group)
    other.previous_ns = sum(r.previous_ns for r in group)
    called = [r for r in group if r.calls]
    if called:
        other.min_ns = min(r.min_ns for r in called)
        other.max_ns = max(r.max_ns for r in called)
        other.first_ns = min(r.first_ns for r in called)
        other.last_ns = max(r.last_ns for r in called)
    errors = [r.errors for r in group if r.errors]
    if errors:
        other.errors = merge_counts(errors)
    other.apps = merge_counts(r.flush_apps(limit) for r in group)
    traced = [r.exemplars for r in group if r.exemplars]
    if traced:
        other.exemplars = [
            max((e for e in column if e is not None), key=_exemplar_time, default=None)
            for column in zip(*traced, strict=True)
        ]
    tag_keys = sorted({k for r in group if r.tags for k in r.tags})
    if tag_keys:
        other.tags = {
            k: merge_counts(r.tags[k] for r in group if r.tags and k in r.tags) for k in tag_keys
        }
    return other


def _exemplar_time(exemplar: Exemplar) -> float:
    return exemplar.timestamp_s


class _TransactionRecord:
    __slots__ = ("commits", "duration", "errors", "rollbacks")

    def __init__(self, bounds: tuple[float, ...], bounds_ns: tuple[int, ...]) -> None:
        self.commits = 0
        self.rollbacks = 0
        self.errors = 0
        self.duration = HistogramBuilder(bounds, bounds_ns)


class _ConnectionRecord:
    __slots__ = ("current", "rejected", "total")

    def __init__(self) -> None:
        self.current = 0
        self.total = 0
        self.rejected = 0


class _SessionInfo:
    __slots__ = ("database", "opened", "user")

    def __init__(self, database: str, user: str, *, opened: bool) -> None:
        self.database = database
        self.user = user
        self.opened = opened  # seen SessionOpened: counts in ConnectionStats.current


class Aggregator:
    """Per-fingerprint, per-transaction and per-connection statistics.  Not thread-safe:
    one task calls :meth:`consume`, :meth:`snapshot` and :meth:`reset`."""

    def __init__(
        self,
        *,
        fingerprinter: SupportsFingerprint,
        max_fingerprints: int = 10_000,
        max_tag_values: int = 20,
        recent_window_s: float = 300.0,
        clock: Callable[[], float] = time.time,
        query_bounds: Sequence[float] = QUERY_BUCKETS_S,
        transaction_bounds: Sequence[float] = TRANSACTION_BUCKETS_S,
    ) -> None:
        if max_fingerprints < 0:
            raise ValueError("max_fingerprints must be >= 0")
        if max_tag_values < 0:
            raise ValueError("max_tag_values must be >= 0")
        if not recent_window_s > 0:
            raise ValueError("recent_window_s must be positive")
        self._fingerprinter = fingerprinter
        # the same object when it is the real one: compiled, a direct call instead of a
        # Python-level call through the protocol (≈ 100 instructions per statement)
        self._native_fingerprinter = (
            fingerprinter if isinstance(fingerprinter, Fingerprinter) else None
        )
        self._max_fingerprints = max_fingerprints
        self._max_tag_values = max_tag_values
        self._window_s = float(recent_window_s)
        self._clock = clock
        self._query_bounds = tuple(float(b) for b in query_bounds)
        self._query_bounds_ns = bounds_to_ns(self._query_bounds)
        self._tx_bounds = tuple(float(b) for b in transaction_bounds)
        self._tx_bounds_ns = bounds_to_ns(self._tx_bounds)
        self._function_fps: dict[int, Fingerprint] = {}
        # session tracking (kept across reset: those sessions are still open)
        self._sessions: dict[int, _SessionInfo] = {}
        self._failed_in_tx: set[int] = set()
        self._init_stats(clock())

    def _init_stats(self, now: float) -> None:
        self.started_at = now
        self.events_processed = 0
        self.fingerprints_overflow = 0
        self._records: dict[tuple[str, str, str], _QueryRecord] = {}
        # fingerprint id -> the record its last statement went to: a str-keyed hit
        # (the id's hash is cached) instead of building and hashing a 3-tuple per
        # statement; checked against the statement's database and user, never holds
        # OTHER records (each folded statement must reach _new_record to be counted)
        self._last_record: dict[str, _QueryRecord] = {}
        self._metas: dict[str, _Meta] = {}
        self._transactions: dict[tuple[str, str], _TransactionRecord] = {}
        self._connections: dict[tuple[str, str], _ConnectionRecord] = {}
        self._window_start = now
        self._generation = 0  # bumped when the recent window rotates

    # ------------------------------------------------------------------ input
    def consume(
        self, events: Iterable[Event], notes: Mapping[int, StatementNote] | None = None
    ) -> None:
        """Account for a batch of events (any order of sessions; per session in order).

        ``notes`` maps the index of a statement event in ``events`` to what an earlier
        consumer learned about it (see :class:`StatementNote`)."""
        self._rotate(self._clock())
        note_of = notes.get if notes else None
        records = self._records
        last_record = self._last_record
        fingerprint = self._fingerprinter.fingerprint
        native = self._native_fingerprinter
        bounds_ns = self._query_bounds_ns
        max_values = self._max_tag_values
        failed_in_tx = self._failed_in_tx
        sessions = self._sessions
        finished, failed = StatementFinished, StatementFailed
        n = 0
        for ev in events:
            n += 1
            cls = type(ev)
            if cls is finished or cls is failed:
                st: StatementEvent = ev  # type: ignore[assignment]  # checked just above
                text = st.text
                note = note_of(n - 1) if note_of is not None else None
                if note is not None and note.fingerprint is not None:
                    fp = note.fingerprint
                elif not text:
                    fp = self._placeholder(st)
                elif native is not None:
                    fp = native.fingerprint(text)
                else:
                    fp = fingerprint(text)
                fid = fp.id
                rec = last_record.get(fid)
                if rec is None or rec.database != st.database or rec.user != st.user:
                    rec = records.get((fid, st.database, st.user))
                    if rec is None:
                        rec = self._new_record(fp, st.database, st.user)
                    if rec.meta is not _OTHER_META:
                        last_record[fid] = rec
                duration = st.duration_ns
                rec.calls += 1
                rec.sum_ns += duration
                rec.recent_ns += duration
                bucket = bucket_of(bounds_ns, duration)
                counts = rec.counts
                counts[bucket] = counts[bucket] + 1  # compiled: an int add (``+=`` is generic)
                if duration > rec.max_ns:  # noqa: PLR1730 - no call on the hot path
                    rec.max_ns = duration
                if duration < rec.min_ns or rec.min_ns < 0:
                    rec.min_ns = duration
                rec.rows += st.rows
                start = st.start_epoch_ns
                if start < rec.first_ns or not rec.first_ns:
                    rec.first_ns = start
                end = start + st.end_ns - st.start_ns
                if end > rec.last_ns:  # noqa: PLR1730 - as above
                    rec.last_ns = end
                if note is not None and note.trace_id:
                    exemplars = rec.exemplars
                    if exemplars is None:
                        exemplars = rec.exemplars = [None] * len(rec.counts)
                    exemplars[bucket] = Exemplar(
                        trace_id=note.trace_id,
                        span_id=note.span_id,
                        value_s=duration / _NS,
                        timestamp_s=end / _NS,
                    )
                if st.rolled_back:
                    rec.rolled_back += 1
                app = st.application_name
                if rec.app_pending and app == rec.app_last:
                    rec.app_pending += 1
                else:
                    if rec.app_pending:
                        count_value(rec.apps, rec.app_last, max_values, rec.app_pending)
                    rec.app_last = app
                    rec.app_pending = 1
                tags = fp.tags
                if tags is not EMPTY_TAGS and tags:
                    self._count_tags(rec, tags)
                if st.in_transaction:
                    if cls is failed:
                        failed_in_tx.add(st.session_id)
                    if st.session_id not in sessions:
                        sessions[st.session_id] = _SessionInfo(st.database, st.user, opened=False)
                elif failed_in_tx:
                    failed_in_tx.discard(st.session_id)
                if cls is failed:
                    errors = rec.errors
                    if errors is None:
                        errors = rec.errors = {}
                    state = cast(StatementFailed, st).error.sqlstate
                    errors[state] = errors.get(state, 0) + 1
            else:
                self._other_event(ev)
        self.events_processed += n

    def _other_event(self, ev: Event) -> None:
        match ev:
            case TransactionFinished():
                info = self._sessions.get(ev.session_id)
                key = (info.database, info.user) if info is not None else ("", "")
                tx = self._transactions.get(key)
                if tx is None:
                    tx = self._transactions[key] = _TransactionRecord(
                        self._tx_bounds, self._tx_bounds_ns
                    )
                errored = ev.session_id in self._failed_in_tx
                self._failed_in_tx.discard(ev.session_id)
                if ev.committed:
                    tx.commits += 1
                else:
                    tx.rollbacks += 1
                    if errored:
                        tx.errors += 1
                tx.duration.observe_ns(max(0, ev.end_ns - ev.start_ns))
            case SessionOpened():
                known = self._sessions.get(ev.session_id)
                if known is not None and known.opened:
                    return  # duplicate: already counted
                self._sessions[ev.session_id] = _SessionInfo(ev.database, ev.user, opened=True)
                conn = self._connection((ev.database, ev.user))
                conn.current += 1
                conn.total += 1
            case SessionClosed():
                info = self._sessions.pop(ev.session_id, None)
                self._failed_in_tx.discard(ev.session_id)
                if info is not None and info.opened:
                    conn = self._connection((info.database, info.user))
                    conn.current = max(0, conn.current - 1)
            case SessionRejected():
                self._connection((ev.database, ev.user)).rejected += 1
            case _:
                pass  # StatementStarted, TransactionStarted: nothing to count

    def _connection(self, key: tuple[str, str]) -> _ConnectionRecord:
        conn = self._connections.get(key)
        if conn is None:
            conn = self._connections[key] = _ConnectionRecord()
        return conn

    def _placeholder(self, ev: StatementEvent) -> Fingerprint:
        oid = ev.function_oid
        if ev.protocol != "function":
            return _UNKNOWN_FP
        if oid is None:
            return _FUNCTION_FP
        fp = self._function_fps.get(oid)
        if fp is None:
            if len(self._function_fps) >= _MAX_FUNCTION_PLACEHOLDERS:
                return _FUNCTION_FP
            fp = self._function_fps[oid] = _placeholder(
                f"<function call oid={oid}>", "FUNCTION CALL"
            )
        return fp

    def _new_record(self, fp: Fingerprint, database: str, user: str) -> _QueryRecord:
        """The record a statement of ``fp`` goes to when its key is not there yet."""
        meta = self._metas.get(fp.id)
        if meta is None:
            if len(self._metas) >= self._max_fingerprints:
                self.fingerprints_overflow += 1
                key = (OTHER, database, user)
                rec = self._records.get(key)
                if rec is None:
                    rec = self._records[key] = _QueryRecord(
                        _OTHER_META, database, user, len(self._query_bounds) + 1
                    )
                return rec
            meta = self._metas[fp.id] = _Meta.of(fp)
        rec = self._records[(fp.id, database, user)] = _QueryRecord(
            meta, database, user, len(self._query_bounds) + 1
        )
        return rec

    def _count_tags(self, rec: _QueryRecord, tags: Tags) -> None:
        limit = self._max_tag_values
        for key, value in tags.items():
            if key not in ATTRIBUTION_TAGS:
                continue
            if rec.tags is None:
                rec.tags = {}
            counter = rec.tags.get(key)
            if counter is None:
                counter = rec.tags[key] = {}
            count_value(counter, value, limit)

    def _rotate(self, now: float) -> None:
        windows = int((now - self._window_start) // self._window_s)
        if windows <= 0:
            return  # same window (or the clock went back)
        for rec in self._records.values():
            rec.previous_ns = rec.recent_ns if windows == 1 else 0
            rec.recent_ns = 0
        self._window_start += windows * self._window_s
        self._generation += 1

    # ------------------------------------------------------------------ output
    def reset(self) -> None:
        """Zero every statistic; ``started_at`` becomes now.  Open sessions stay known,
        so ``current`` connections remain true (and ``total`` restarts from 0)."""
        self._init_stats(self._clock())
        for info in self._sessions.values():
            if info.opened:
                self._connection((info.database, info.user)).current += 1

    @property
    def fingerprints_tracked(self) -> int:
        return len(self._metas)

    def snapshot(self, *, top: int | None = None) -> StatsSnapshot:
        """Frozen copies of everything.  ``top=K`` keeps the K fingerprints with the most
        recent time (summed over databases and users; ties by total time, then id) and
        folds every other key into one OTHER entry per (database, user), so calls, rows,
        errors and histogram counts keep their sums."""
        now = self._clock()
        self._rotate(now)
        records: Iterable[_QueryRecord] = self._records.values()
        if top is not None:
            records = self._fold(records, max(0, top))
        queries = [self._freeze(rec) for rec in records]
        queries.sort(key=lambda q: (-q.duration.sum_s, q.fingerprint, q.database, q.user))
        transactions = tuple(
            TransactionStats(
                database=database,
                user=user,
                commits=tx.commits,
                rollbacks=tx.rollbacks,
                errors=tx.errors,
                duration=tx.duration.freeze(),
            )
            for (database, user), tx in sorted(self._transactions.items())
        )
        connections = tuple(
            ConnectionStats(
                database=database,
                user=user,
                current=conn.current,
                total=conn.total,
                rejected=conn.rejected,
            )
            for (database, user), conn in sorted(self._connections.items())
        )
        return StatsSnapshot(
            taken_at=now,
            started_at=self.started_at,
            queries=tuple(queries),
            transactions=transactions,
            connections=connections,
            fingerprints_tracked=len(self._metas),
            fingerprints_overflow=self.fingerprints_overflow,
            events_processed=self.events_processed,
        )

    def _fold(self, records: Iterable[_QueryRecord], top: int) -> list[_QueryRecord]:
        records = list(records)
        ranking: dict[str, list[int]] = {}  # id -> [recent ns, total ns]
        for rec in records:
            fid = rec.meta.id
            if fid == OTHER:
                continue
            r = ranking.get(fid)
            if r is None:
                ranking[fid] = [rec.recent_ns + rec.previous_ns, rec.sum_ns]
            else:
                r[0] += rec.recent_ns + rec.previous_ns
                r[1] += rec.sum_ns
        ranked = heapq.nsmallest(top, ranking.items(), key=lambda kv: (-kv[1][0], -kv[1][1], kv[0]))
        keep = {fid for fid, _ in ranked}
        kept: list[_QueryRecord] = []
        folded: dict[tuple[str, str], list[_QueryRecord]] = {}
        for rec in records:
            if rec.meta.id in keep:
                kept.append(rec)
            else:
                folded.setdefault((rec.database, rec.user), []).append(rec)
        for (database, user), group in folded.items():
            kept.append(_merge(group, database, user, self._max_tag_values))
        return kept

    def _freeze(self, rec: _QueryRecord) -> QueryStats:
        frozen = rec.frozen
        if (
            frozen is not None
            and rec.frozen_calls == rec.calls
            and rec.frozen_generation == self._generation
        ):
            return frozen
        meta = rec.meta
        limit = self._max_tag_values
        apps = rec.flush_apps(limit)
        frozen = QueryStats(
            fingerprint=meta.id,
            database=rec.database,
            user=rec.user,
            query=meta.query,
            summary=meta.summary,
            operation=meta.operation,
            kind=meta.kind,
            tables=meta.tables,
            parse_ok=meta.parse_ok,
            calls=rec.calls,
            duration=Histogram(
                bounds=self._query_bounds,
                bucket_counts=tuple(rec.counts),
                count=rec.calls,  # every call is observed once
                sum_s=rec.sum_ns / _NS,
                exemplars=tuple(rec.exemplars) if rec.exemplars else (),
            ),
            min_s=max(rec.min_ns, 0) / _NS,
            max_s=rec.max_ns / _NS,
            rows=rec.rows,
            errors=dict(rec.errors) if rec.errors else _EMPTY_ERRORS,
            rolled_back=rec.rolled_back,
            first_seen=rec.first_ns / _NS,
            last_seen=rec.last_ns / _NS,
            recent_total_s=(rec.recent_ns + rec.previous_ns) / _NS,
            applications=tuple(apps.items()) if len(apps) == 1 else top_items(apps, limit),
            tags={k: top_items(v, limit) for k, v in sorted(rec.tags.items())}
            if rec.tags
            else _EMPTY_TAGS,
        )
        rec.frozen = frozen
        rec.frozen_calls = rec.calls
        rec.frozen_generation = self._generation
        return frozen
