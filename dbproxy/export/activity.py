"""The activity sampler's exports: ``GET /api/load``, ``GET /api/blocking`` and its
Prometheus collector (registered on the app's registry).

    dbproxy_db_load_seconds_total{database,fingerprint,wait_event_type,wait_event}
        sampled active seconds: rate() is the average active sessions (CPU = no wait event)
    dbproxy_lock_waits_total{fingerprint,blocker_fingerprint}
        lock waits longer than --blocked-ms (blocker: a fingerprint, "idle in transaction",
        or "external" when the blocker is not behind this proxy)
    dbproxy_activity_samples_total{outcome}   pg_stat_activity samples (sampled, idle, failed)
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from dbproxy.export import api
from dbproxy.export.http import Request, Response, Route
from dbproxy.inspect.activity import ActivitySampler, BlockingEvent

__all__ = ["ActivityCollector", "activity_routes_for"]

_BY = ("fingerprint", "wait_event", "application", "route")
_MAX_WINDOW_S = 86_400.0


def _params(request: Request, allowed: set[str]) -> dict[str, str]:
    params: dict[str, str] = {}
    for name, value in request.query:
        if name not in allowed:
            raise api.ApiError(400, f"unknown parameter {name!r}")
        params[name] = value
    return params


def _window(params: dict[str, str], default: float) -> float:
    text = params.get("window", "")
    if not text:
        return default
    try:
        value = float(text.removesuffix("s"))
    except ValueError:
        raise api.ApiError(400, "window must be a number of seconds") from None
    if not 0 < value <= _MAX_WINDOW_S:
        raise api.ApiError(400, f"window must be in (0, {_MAX_WINDOW_S:.0f}] seconds")
    return value


def _event_json(e: BlockingEvent) -> dict[str, Any]:
    return {
        "first_seen": api.iso_utc(e.first_at_s),
        "last_seen": api.iso_utc(e.last_at_s),
        "ongoing": e.ongoing,
        "database": e.database,
        "fingerprint": e.fingerprint,
        "query": e.query,
        "application": e.application,
        "waiter_pid": e.waiter_pid,
        "lock_wait_ms": round(e.wait_s * 1000, 1),
        "blocker": {
            "pid": e.blocker_pid,
            "behind_proxy": e.blocker_behind_proxy,
            "state": e.blocker_state,
            "fingerprint": e.blocker_fingerprint,
            "query": e.blocker_query,
            "application_name": e.blocker_application_name,
            "transaction_age_s": None
            if e.blocker_transaction_age_s is None
            else round(e.blocker_transaction_age_s, 3),
            "label": e.blocker_label,
        },
    }


def activity_routes_for(sampler: ActivitySampler) -> list[Route]:
    async def load(request: Request) -> Response:
        params = _params(request, {"by", "window", "limit"})
        by = params.get("by", "fingerprint")
        if by not in _BY:
            raise api.ApiError(400, f"by must be one of {', '.join(_BY)}")
        window = _window(params, 300.0)
        try:
            limit = int(params.get("limit", "20"))
        except ValueError:
            raise api.ApiError(400, "limit must be an integer") from None
        result = sampler.load_by(by, window)
        groups = []
        for key, waits in result["groups"].items():
            seconds = sum(waits.values())
            row: dict[str, Any] = {
                "load_s": round(seconds, 3),
                "average_active_sessions": round(seconds / window, 4),
                "wait_events": {k: round(v, 3) for k, v in sorted(waits.items())},
            }
            if by == "wait_event":
                row["wait_event_type"], row["wait_event"] = key
            else:
                row["database"], row[by] = key
                if by == "fingerprint":
                    row["query"] = sampler.queries.get(key[1], "")
            groups.append(row)
        groups.sort(key=lambda r: -float(r["load_s"]))
        return Response.json(
            200,
            {
                "by": by,
                "window_s": window,
                "interval_s": sampler.settings.interval_s,
                "total_load_s": round(result["total_s"], 3),
                "average_active_sessions": round(result["total_s"] / window, 4),
                "rows": groups[: max(limit, 0)],
                "series": [
                    {"at": api.iso_utc(p["at"]), "weight_s": p["weight_s"], "load": p["load"]}
                    for p in result["series"]
                ],
            },
        )

    async def blocking(request: Request) -> Response:
        params = _params(request, {"window"})
        window = _window(params, 3600.0)
        horizon = sampler.now() - window
        events = [e for e in sampler.events if e.last_at_s >= horizon]
        events.reverse()
        return Response.json(
            200,
            {
                "window_s": window,
                "blocked_ms": sampler.settings.blocked_ms,
                "events": [_event_json(e) for e in events],
            },
        )

    return [
        Route(("GET",), "/api/load", load),
        Route(("GET",), "/api/blocking", blocking),
    ]


class ActivityCollector(Collector):
    """Reads the sampler's counters at scrape time (on the event loop)."""

    def __init__(self, sampler: ActivitySampler) -> None:
        self.sampler = sampler

    def collect(self) -> Iterator[Metric]:
        s = self.sampler
        load = CounterMetricFamily(
            "dbproxy_db_load_seconds",
            "Sampled active seconds of the proxied sessions' backends (rate() = average "
            "active sessions); wait_event CPU: active with no wait event.",
            labels=("database", "fingerprint", "wait_event_type", "wait_event"),
        )
        for (database, fingerprint, wtype, wevent), seconds in sorted(s.load.items()):
            load.add_metric((database, fingerprint, wtype, wevent), seconds)
        yield load
        waits = CounterMetricFamily(
            "dbproxy_lock_waits",
            "Lock waits longer than --blocked-ms, by waiting and blocking fingerprint.",
            labels=("fingerprint", "blocker_fingerprint"),
        )
        for (fingerprint, blocker), count in sorted(s.lock_waits.items()):
            waits.add_metric((fingerprint, blocker), count)
        yield waits
        samples = CounterMetricFamily(
            "dbproxy_activity_samples",
            "pg_stat_activity samples of the activity sampler, by outcome.",
            labels=("outcome",),
        )
        samples.add_metric(("sampled",), s.counts.samples)
        samples.add_metric(("idle",), s.counts.skipped_idle)
        samples.add_metric(("failed",), s.counts.failures)
        yield samples
