"""The JSON API over a :class:`~dbproxy.observe.stats.StatsSnapshot`: pure functions.

Nothing here does I/O: ``http.py`` takes the snapshot on the event loop, passes it and the
request's parameters in, and serializes what comes back.  Every failure is an
:class:`ApiError` carrying the HTTP status and a message for the JSON body.

Rows look like ``pg_stat_statements`` (times in milliseconds) plus what a proxy knows
beyond it: percentiles from the latency histogram, SQLSTATE counts, rolled-back calls and
attribution (``application_name`` and sqlcommenter tags, with calls per value).
"""

from __future__ import annotations

import hmac
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from dbproxy.observe.stats import Histogram, QueryStats, StatsSnapshot


class SnapshotSource(Protocol):
    """What exporters read: the aggregator's ``snapshot``."""

    def snapshot(self, *, top: int | None = None) -> StatsSnapshot: ...


class StatsSource(SnapshotSource, Protocol):
    """What the API needs: snapshots, and ``reset`` for ``POST /api/reset``."""

    def reset(self) -> None: ...


#: fields an optional feature adds to a query row (the inspector: rows scanned, server
#: statistics, slow samples); the flag says whether it is the detail endpoint's row
RowExtras = Callable[[QueryStats, bool], Mapping[str, Any]]


class ApiError(Exception):
    """A client-visible failure: HTTP status plus a message for ``{"error": ...}``."""

    def __init__(self, status: int, message: str, *, headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers: Mapping[str, str] = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": self.message, "status": self.status}


DEFAULT_LIMIT = 100
MAX_LIMIT = 10_000

#: sort key -> value to sort by (descending); NaN percentiles sort last.
_SORT_KEYS: dict[str, Callable[[QueryStats], float]] = {
    "total_time": lambda q: q.total_s,
    "calls": lambda q: float(q.calls),
    "mean": lambda q: q.mean_s,
    "p95": lambda q: _finite_or(_quantile(q, 0.95), -math.inf),
    "p99": lambda q: _finite_or(_quantile(q, 0.99), -math.inf),
    "rows": lambda q: float(q.rows),
    "rows_per_call": lambda q: q.rows / q.calls if q.calls else -math.inf,
    "errors": lambda q: float(q.error_count),
}
SORT_KEYS: tuple[str, ...] = tuple(_SORT_KEYS)

_QUERIES_PARAMS = frozenset({"sort", "limit", "database", "user", "group_by"})
#: tag names as sqlcommenter produces them (and "application" for application_name)
_TAG_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]{0,63}")

GROUP_BY_NOTE = (
    "only the number of calls is known per attribution value; "
    "times, rows and errors are per query, not per value"
)
RESET_HOWTO = (
    "POST /api/reset is disabled: start dbproxy with --api-token-file FILE "
    "(or DBPROXY_API_TOKEN) and send 'Authorization: Bearer <token>'"
)


@dataclass(frozen=True, slots=True, kw_only=True)
class QueriesParams:
    sort: str = "total_time"
    limit: int = DEFAULT_LIMIT
    database: str | None = None
    user: str | None = None
    group_by: str | None = None


def parse_queries_params(params: Iterable[tuple[str, str]]) -> QueriesParams:
    """Validate ``/api/queries`` parameters; unknown or repeated ones are an error."""
    seen: dict[str, str] = {}
    for name, value in params:
        if name not in _QUERIES_PARAMS:
            allowed = ", ".join(sorted(_QUERIES_PARAMS))
            raise ApiError(400, f"unknown parameter {name!r} (allowed: {allowed})")
        if name in seen:
            raise ApiError(400, f"parameter {name!r} given more than once")
        seen[name] = value
    sort = seen.get("sort", "total_time")
    if sort not in _SORT_KEYS:
        raise ApiError(400, f"sort must be one of {', '.join(SORT_KEYS)}, not {sort!r}")
    limit = DEFAULT_LIMIT
    if "limit" in seen:
        raw = seen["limit"]
        if not raw.isascii() or not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
            raise ApiError(400, f"limit must be an integer from 1 to {MAX_LIMIT}, not {raw!r}")
        limit = int(raw)
    group_by = seen.get("group_by")
    if group_by is not None and not _TAG_NAME.fullmatch(group_by):
        raise ApiError(
            400, "group_by must be 'application' or a sqlcommenter tag name such as 'route'"
        )
    return QueriesParams(
        sort=sort,
        limit=limit,
        database=seen.get("database"),
        user=seen.get("user"),
        group_by=group_by,
    )


def iso_utc(ts: float) -> str:
    """Unix seconds -> ``2024-05-01T12:00:00.123Z``."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


def _finite_or(value: float, default: float) -> float:
    return value if math.isfinite(value) else default


def _ms(seconds: float) -> float | None:
    """Seconds -> milliseconds rounded to the microsecond; None when not finite."""
    if not math.isfinite(seconds):
        return None
    return round(seconds * 1000.0, 3)


def _values(pairs: Iterable[tuple[str, int]]) -> list[dict[str, Any]]:
    return [{"value": value, "calls": calls} for value, calls in pairs]


def histogram_json(hist: Histogram) -> dict[str, Any]:
    """Bucket counts (not cumulative; the last is above the last bound) and, per bucket,
    the latest traced observation or ``None``."""
    exemplars = hist.exemplars or (None,) * len(hist.bucket_counts)
    return {
        "bounds_ms": [round(b * 1000.0, 3) for b in hist.bounds],
        "counts": list(hist.bucket_counts),
        "exemplars": [
            None
            if e is None
            else {
                "trace_id": e.trace_id,
                "span_id": e.span_id,
                "value_ms": _ms(e.value_s),
                "at": iso_utc(e.timestamp_s),
            }
            for e in exemplars
        ],
    }


def query_row(
    q: QueryStats, *, histogram: bool = False, extras: RowExtras | None = None
) -> dict[str, Any]:
    """One (fingerprint, database, user) as a JSON object; ``histogram`` adds the latency
    buckets and exemplars (``/api/queries/{fingerprint}`` only: lists stay small)."""
    hist = q.duration
    row: dict[str, Any] = {
        "fingerprint": q.fingerprint,
        "query": q.query,
        "summary": q.summary,
        "operation": q.operation,
        "kind": q.kind,
        "tables": list(q.tables),
        "database": q.database,
        "user": q.user,
        "calls": q.calls,
        "total_time_ms": _ms(q.total_s),
        "mean_time_ms": _ms(q.mean_s),
        "min_time_ms": _ms(q.min_s) if q.calls else None,
        "max_time_ms": _ms(q.max_s) if q.calls else None,
        "p50_ms": _ms(_quantile(q, 0.50)),
        "p95_ms": _ms(_quantile(q, 0.95)),
        "p99_ms": _ms(_quantile(q, 0.99)),
        "rows": q.rows,
        "rows_per_call": round(q.rows / q.calls, 3) if q.calls else None,
        "errors": dict(sorted(q.errors.items())),
        "error_count": q.error_count,
        "rolled_back": q.rolled_back,
        "first_seen": iso_utc(q.first_seen),
        "last_seen": iso_utc(q.last_seen),
        "applications": _values(q.applications),
        "tags": {name: _values(pairs) for name, pairs in sorted(q.tags.items())},
    }
    if histogram:
        row["histogram"] = histogram_json(hist)
    if extras is not None:
        row.update(extras(q, histogram))
    return row


def _sorted(rows: Iterable[QueryStats], sort: str) -> list[QueryStats]:
    key = _SORT_KEYS[sort]
    # Descending by the key, then ascending by identity: deterministic output.
    return sorted(rows, key=lambda q: (-key(q), q.fingerprint, q.database, q.user))


def _envelope(snapshot: StatsSnapshot) -> dict[str, Any]:
    return {"taken_at": iso_utc(snapshot.taken_at), "since": iso_utc(snapshot.started_at)}


def _attribution(q: QueryStats, group_by: str) -> tuple[tuple[str, int], ...]:
    if group_by == "application":
        return q.applications
    return q.tags.get(group_by, ())


def queries(
    snapshot: StatsSnapshot, params: QueriesParams, extras: RowExtras | None = None
) -> dict[str, Any]:
    """``GET /api/queries``: rows sorted desc by ``params.sort``, or grouped by attribution."""
    rows = [
        q
        for q in snapshot.queries
        if (params.database is None or q.database == params.database)
        and (params.user is None or q.user == params.user)
    ]
    out = _envelope(snapshot)
    if params.group_by is None:
        ranked = _sorted(rows, params.sort)
        out.update(
            sort=params.sort,
            limit=params.limit,
            total=len(ranked),
            queries=[query_row(q, extras=extras) for q in ranked[: params.limit]],
        )
        return out

    groups: dict[str, list[tuple[int, QueryStats]]] = {}
    for q in rows:
        for value, calls in _attribution(q, params.group_by):
            groups.setdefault(value, []).append((calls, q))
    ranked_groups = sorted(
        ((sum(c for c, _ in members), value, members) for value, members in groups.items()),
        key=lambda g: (-g[0], g[1]),
    )
    out.update(
        group_by=params.group_by,
        note=GROUP_BY_NOTE,
        limit=params.limit,
        total=len(ranked_groups),
        groups=[
            {
                "value": value,
                "calls": calls,
                "queries": [
                    {
                        "fingerprint": q.fingerprint,
                        "summary": q.summary,
                        "database": q.database,
                        "user": q.user,
                        "calls": n,
                        "query_calls": q.calls,
                    }
                    for n, q in sorted(
                        members, key=lambda m: (-m[0], m[1].fingerprint, m[1].database, m[1].user)
                    )[: params.limit]
                ],
            }
            for calls, value, members in ranked_groups[: params.limit]
        ],
    )
    return out


def query_detail(
    snapshot: StatsSnapshot, fingerprint: str, extras: RowExtras | None = None
) -> dict[str, Any]:
    """``GET /api/queries/{fingerprint}``: every database/user row of one fingerprint."""
    rows = [q for q in snapshot.queries if q.fingerprint == fingerprint]
    if not rows:
        raise ApiError(404, f"unknown fingerprint {fingerprint!r}")
    out = _envelope(snapshot)
    out.update(
        fingerprint=fingerprint,
        queries=[query_row(q, histogram=True, extras=extras) for q in _sorted(rows, "total_time")],
    )
    return out


def _quantile(q: QueryStats, level: float) -> float:
    """The histogram estimate, kept within the observed min and max: interpolating inside a
    coarse bucket (50-100 ms) must not report a p50 of 75 ms when every call took 50-53 ms."""
    estimate = q.duration.quantile(level)
    if math.isnan(estimate) or not q.calls:
        return estimate
    return min(max(estimate, q.min_s), q.max_s)


def _quantiles_ms(hist: Histogram) -> dict[str, float | None]:
    return {
        "p50_ms": _ms(hist.quantile(0.50)),
        "p95_ms": _ms(hist.quantile(0.95)),
        "p99_ms": _ms(hist.quantile(0.99)),
    }


def connections(snapshot: StatsSnapshot) -> dict[str, Any]:
    """``GET /api/connections``: client sessions and transactions per (database, user)."""
    out = _envelope(snapshot)
    out.update(
        connections=[
            {
                "database": c.database,
                "user": c.user,
                "current": c.current,
                "total": c.total,
                "rejected": c.rejected,
            }
            for c in sorted(snapshot.connections, key=lambda c: (c.database, c.user))
        ],
        transactions=[
            {
                "database": t.database,
                "user": t.user,
                "commits": t.commits,
                "rollbacks": t.rollbacks,
                "errors": t.errors,
                "count": t.duration.count,
                "mean_ms": _ms(t.duration.sum_s / t.duration.count) if t.duration.count else None,
                **_quantiles_ms(t.duration),
            }
            for t in sorted(snapshot.transactions, key=lambda t: (t.database, t.user))
        ],
        fingerprints_tracked=snapshot.fingerprints_tracked,
        fingerprints_overflow=snapshot.fingerprints_overflow,
        events_processed=snapshot.events_processed,
    )
    return out


#: placeholders a trace URL template may hold
TRACE_URL_PLACEHOLDERS = ("{trace_id}", "{span_id}")


def ui_config(trace_url_template: str | None) -> dict[str, Any]:
    """``GET /api/ui-config``: settings the web UI reads at start."""
    return {"trace_url_template": trace_url_template or None}


#: the API token, or a callable giving the current one (it changes on SIGHUP)
TokenSource = str | None | Callable[[], str | None]


def current_token(source: TokenSource) -> str | None:
    return source() if callable(source) else source


def authorize_reset(configured_token: str | None, authorization: str | None) -> None:
    """Allow ``POST /api/reset`` only with the configured bearer token (constant time)."""
    if not configured_token:
        raise ApiError(403, RESET_HOWTO)
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        given.strip().encode("utf-8", "surrogateescape"),
        configured_token.encode("utf-8", "surrogateescape"),
    ):
        raise ApiError(403, "missing or wrong token: send 'Authorization: Bearer <token>'")


def reset(source: StatsSource, *, now: float) -> dict[str, Any]:
    source.reset()
    return {"reset": True, "at": iso_utc(now)}
