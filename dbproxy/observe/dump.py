"""What one worker process reports to worker 0, and its JSON codec (pure: no I/O).

With ``--workers N`` every process has its own aggregator and counters; worker 0 asks
the others for a :class:`WorkerDump` at each scrape or API request and merges them
(:mod:`dbproxy.observe.merge`).  A dump holds everything the Prometheus collector and
the JSON API read: the aggregator's full ``snapshot(top=None)`` and the counter groups of
the proxy, the event queue, the fingerprint cache, the span pipeline and the query log.

The wire format is JSON (never pickle: the bytes cross a process boundary), one object
``{"v": 1, …}``; floats are written with ``repr`` precision, so a round trip is exact.
Histogram bounds are written once per distinct tuple (``"bounds"`` table) and referred
to by index.  :func:`decode_dump` raises :class:`DumpError` on anything malformed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, TypeVar

from dbproxy.observe.stats import (
    ConnectionStats,
    Exemplar,
    Histogram,
    QueryStats,
    StatsSnapshot,
    TransactionStats,
)
from dbproxy.sql.cache import FingerprinterStats

__all__ = [
    "FORMAT_VERSION",
    "DumpError",
    "FingerprinterView",
    "ProxyTotals",
    "QueryLogTotals",
    "SinkTotals",
    "SpanTotals",
    "WorkerDump",
    "counters_of",
    "decode_dump",
    "encode_dump",
]

FORMAT_VERSION = 1


class DumpError(ValueError):
    """A dump that cannot be decoded (wrong version, missing or mistyped field)."""


# Counter groups: plain mutable records with the attribute names of the objects the
# collector reads (``ProxyStats``, ``QueueSink``, ``SpanCounts``, ``QueryLog``), so a
# merged total can stand in for the live object (export/prometheus.py Protocols).
@dataclass(slots=True, kw_only=True)
class ProxyTotals:
    connections_accepted: int = 0
    upstream_connect_failures: int = 0
    observer_errors: int = 0
    rejected_startups: int = 0
    cancel_requests: int = 0
    bytes_from_client: int = 0
    bytes_from_server: int = 0
    replication_physical: int = 0
    replication_database: int = 0


@dataclass(slots=True, kw_only=True)
class SinkTotals:
    accepted: int = 0
    dropped: int = 0
    capacity: int = 0


@dataclass(slots=True, kw_only=True)
class SpanTotals:
    created: int = 0
    exported: int = 0
    dropped: int = 0
    export_failed: int = 0


@dataclass(slots=True, kw_only=True)
class QueryLogTotals:
    lines_written: int = 0
    lines_dropped: int = 0
    write_errors: int = 0


@dataclass(slots=True)
class FingerprinterView:
    """Stands in for the ``Fingerprinter`` (the collector reads its ``stats``)."""

    stats: FingerprinterStats


_Totals = TypeVar("_Totals", ProxyTotals, SinkTotals, SpanTotals, QueryLogTotals)


def counters_of(cls: type[_Totals], live: object) -> _Totals:
    """A copy of the counters of a live object (same attribute names)."""
    return cls(**{f.name: int(getattr(live, f.name)) for f in fields(cls)})


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerDump:
    worker: int  # 0 .. N-1
    pid: int
    snapshot: StatsSnapshot
    proxy: ProxyTotals
    sink: SinkTotals
    fingerprinter: FingerprinterStats
    spans: SpanTotals | None = None  # None: tracing off
    query_log: QueryLogTotals | None = None  # None: query log off


_FP_FIELDS = tuple(f.name for f in fields(FingerprinterStats))


# ---------------------------------------------------------------------------- encode
class _Encoder:
    def __init__(self) -> None:
        self.bounds: dict[tuple[float, ...], int] = {}

    def hist(self, h: Histogram) -> list[Any]:
        index = self.bounds.get(h.bounds)
        if index is None:
            index = self.bounds[h.bounds] = len(self.bounds)
        exemplars = [
            None if e is None else [e.trace_id, e.span_id, e.value_s, e.timestamp_s]
            for e in h.exemplars
        ]
        return [index, list(h.bucket_counts), h.count, h.sum_s, exemplars]

    def query(self, q: QueryStats) -> list[Any]:
        return [
            q.fingerprint,
            q.database,
            q.user,
            q.query,
            q.summary,
            q.operation,
            q.kind,
            list(q.tables),
            q.parse_ok,
            q.calls,
            self.hist(q.duration),
            q.min_s,
            q.max_s,
            q.rows,
            dict(q.errors),
            q.rolled_back,
            q.first_seen,
            q.last_seen,
            q.recent_total_s,
            [list(p) for p in q.applications],
            {k: [list(p) for p in v] for k, v in q.tags.items()},
        ]


def encode_dump(dump: WorkerDump) -> bytes:
    """The dump as one JSON document (UTF-8)."""
    enc = _Encoder()
    snap = dump.snapshot
    body: dict[str, Any] = {
        "v": FORMAT_VERSION,
        "worker": dump.worker,
        "pid": dump.pid,
        "snapshot": {
            "taken_at": snap.taken_at,
            "started_at": snap.started_at,
            "queries": [enc.query(q) for q in snap.queries],
            "transactions": [
                [t.database, t.user, t.commits, t.rollbacks, t.errors, enc.hist(t.duration)]
                for t in snap.transactions
            ],
            "connections": [
                [c.database, c.user, c.current, c.total, c.rejected] for c in snap.connections
            ],
            "fingerprints_tracked": snap.fingerprints_tracked,
            "fingerprints_overflow": snap.fingerprints_overflow,
            "events_processed": snap.events_processed,
        },
        "proxy": _totals(dump.proxy),
        "sink": _totals(dump.sink),
        "fingerprinter": {name: getattr(dump.fingerprinter, name) for name in _FP_FIELDS},
        "spans": None if dump.spans is None else _totals(dump.spans),
        "query_log": None if dump.query_log is None else _totals(dump.query_log),
    }
    body["bounds"] = [list(b) for b in enc.bounds]  # insertion order = index
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _totals(t: ProxyTotals | SinkTotals | SpanTotals | QueryLogTotals) -> dict[str, int]:
    return {f.name: getattr(t, f.name) for f in fields(t)}


# ---------------------------------------------------------------------------- decode
def decode_dump(data: bytes) -> WorkerDump:
    """The dump :func:`encode_dump` wrote; :class:`DumpError` if it is not one."""
    try:
        body = json.loads(data)
        if not isinstance(body, dict) or body.get("v") != FORMAT_VERSION:
            raise DumpError(f"not a version {FORMAT_VERSION} worker dump")
        return _decode(body)
    except DumpError:
        raise
    except (ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
        raise DumpError(f"malformed worker dump: {type(exc).__name__}: {exc}") from None


def _decode(body: Mapping[str, Any]) -> WorkerDump:
    bounds = [tuple(_float(b) for b in row) for row in body["bounds"]]
    snap = body["snapshot"]

    def hist(raw: Sequence[Any]) -> Histogram:
        index, counts, count, sum_s, exemplars = raw
        b = bounds[_int(index)]
        bucket_counts = tuple(_int(n) for n in counts)
        if len(bucket_counts) != len(b) + 1:
            raise DumpError("histogram bucket counts do not match its bounds")
        ex = tuple(
            None
            if e is None
            else Exemplar(
                trace_id=_str(e[0]),
                span_id=_str(e[1]),
                value_s=_float(e[2]),
                timestamp_s=_float(e[3]),
            )
            for e in exemplars
        )
        if ex and len(ex) != len(bucket_counts):
            raise DumpError("histogram exemplars do not match its buckets")
        return Histogram(
            bounds=b,
            bucket_counts=bucket_counts,
            count=_int(count),
            sum_s=_float(sum_s),
            exemplars=ex,
        )

    def pairs(raw: Sequence[Any]) -> tuple[tuple[str, int], ...]:
        return tuple((_str(v), _int(n)) for v, n in raw)

    queries = tuple(
        QueryStats(
            fingerprint=_str(r[0]),
            database=_str(r[1]),
            user=_str(r[2]),
            query=_str(r[3]),
            summary=_str(r[4]),
            operation=_str(r[5]),
            kind=_str(r[6]),
            tables=tuple(_str(t) for t in r[7]),
            parse_ok=_bool(r[8]),
            calls=_int(r[9]),
            duration=hist(r[10]),
            min_s=_float(r[11]),
            max_s=_float(r[12]),
            rows=_int(r[13]),
            errors={_str(k): _int(v) for k, v in r[14].items()},
            rolled_back=_int(r[15]),
            first_seen=_float(r[16]),
            last_seen=_float(r[17]),
            recent_total_s=_float(r[18]),
            applications=pairs(r[19]),
            tags={_str(k): pairs(v) for k, v in r[20].items()},
        )
        for r in snap["queries"]
    )
    transactions = tuple(
        TransactionStats(
            database=_str(r[0]),
            user=_str(r[1]),
            commits=_int(r[2]),
            rollbacks=_int(r[3]),
            errors=_int(r[4]),
            duration=hist(r[5]),
        )
        for r in snap["transactions"]
    )
    connections = tuple(
        ConnectionStats(
            database=_str(r[0]),
            user=_str(r[1]),
            current=_int(r[2]),
            total=_int(r[3]),
            rejected=_int(r[4]),
        )
        for r in snap["connections"]
    )
    fp = body["fingerprinter"]
    return WorkerDump(
        worker=_int(body["worker"]),
        pid=_int(body["pid"]),
        snapshot=StatsSnapshot(
            taken_at=_float(snap["taken_at"]),
            started_at=_float(snap["started_at"]),
            queries=queries,
            transactions=transactions,
            connections=connections,
            fingerprints_tracked=_int(snap["fingerprints_tracked"]),
            fingerprints_overflow=_int(snap["fingerprints_overflow"]),
            events_processed=_int(snap["events_processed"]),
        ),
        proxy=_decode_totals(ProxyTotals, body["proxy"]),
        sink=_decode_totals(SinkTotals, body["sink"]),
        fingerprinter=FingerprinterStats(**{name: _int(fp[name]) for name in _FP_FIELDS}),
        spans=None if body["spans"] is None else _decode_totals(SpanTotals, body["spans"]),
        query_log=None
        if body["query_log"] is None
        else _decode_totals(QueryLogTotals, body["query_log"]),
    )


def _decode_totals(cls: type[_Totals], raw: Mapping[str, Any]) -> _Totals:
    return cls(**{f.name: _int(raw[f.name]) for f in fields(cls)})


def _int(value: Any) -> int:
    if type(value) is not int:
        raise DumpError(f"expected an integer, got {type(value).__name__}")
    return value


def _float(value: Any) -> float:
    if type(value) is float:
        return value
    if type(value) is int:
        return float(value)
    raise DumpError(f"expected a number, got {type(value).__name__}")


def _str(value: Any) -> str:
    if type(value) is not str:
        raise DumpError(f"expected a string, got {type(value).__name__}")
    return value


def _bool(value: Any) -> bool:
    if type(value) is not bool:
        raise DumpError(f"expected a boolean, got {type(value).__name__}")
    return value
