"""The inspector's exports: ``GET /api/queries/{fingerprint}/plans``, the fields it adds to
``/api/queries`` rows, and its Prometheus collector (registered on the app's registry).

    dbproxy_query_plan_changes_total{database,fingerprint}   plan shape changes seen
    dbproxy_query_rows_scanned{database,fingerprint}         sampled mean rows scanned per call
    dbproxy_inspect_jobs_total{job,outcome}                  side-connection work, by outcome
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from dbproxy.export import api
from dbproxy.export.http import Request, Response, Route
from dbproxy.inspect.inspector import Inspector
from dbproxy.observe.stats import QueryStats

__all__ = ["InspectCollector", "inspect_routes_for", "row_extras_for"]


def _round(value: float, digits: int = 3) -> float | None:
    return round(value, digits) if math.isfinite(value) else None


def row_extras_for(inspector: Inspector) -> api.RowExtras:
    """Rows scanned (and ÷ returned) on every row; server statistics and the slowest
    recent executions on the detail endpoint's rows."""
    store = inspector.store

    def extras(q: QueryStats, detail: bool) -> Mapping[str, Any]:
        key = (q.fingerprint, q.database)
        out: dict[str, Any] = {}
        rec = store.rows.get(key)
        if rec is not None and rec.samples:
            returned = q.rows / q.calls if q.calls else 0.0
            scanned = rec.mean_scanned
            out["rows_scanned_per_call"] = _round(scanned, 2)
            out["rows_scanned_per_returned"] = (
                _round(scanned / returned, 2) if returned > 0 else None
            )
            out["rows_scanned_samples"] = rec.samples
        else:
            out["rows_scanned_per_call"] = None
            out["rows_scanned_per_returned"] = None
            out["rows_scanned_samples"] = 0
        current = store.current_plan(q.fingerprint, q.database)
        out["plan"] = (
            {"id": current.id, "summary": current.summary} if current is not None else None
        )
        out["plan_changes"] = store.plan_changes.get(key, 0)
        if not detail:
            return out
        server = store.server.get(key)
        out["server"] = (
            None
            if server is None
            else {
                "queryids": [str(qid) for qid in server.queryids],
                "calls": server.calls,
                "mean_exec_time_ms": _round(server.mean_exec_time_ms),
                "total_exec_time_ms": _round(server.total_exec_time_ms),
                "mean_plan_time_ms": _round(server.mean_plan_time_ms),
                "shared_blks_hit": server.shared_blks_hit,
                "shared_blks_read": server.shared_blks_read,
                "local_blks_hit": server.local_blks_hit,
                "local_blks_read": server.local_blks_read,
                "temp_blks_read": server.temp_blks_read,
                "temp_blks_written": server.temp_blks_written,
                "wal_bytes": server.wal_bytes,
                "rows": server.rows,
                "at": api.iso_utc(server.at_s),
            }
        )
        if rec is not None and rec.samples:
            out["rows_scanned_detail"] = {
                "samples": rec.samples,
                "mean_rows_returned": _round(rec.mean_returned, 2),
                "mean_shared_blks_hit": _round(rec.mean_shared_hit, 1),
                "mean_shared_blks_read": _round(rec.mean_shared_read, 1),
                "last_at": api.iso_utc(rec.last_at),
            }
        out["slow_samples"] = [
            {
                "duration_ms": round(s.duration_ns / 1e6, 3),
                "at": api.iso_utc(s.at_epoch_ns / 1e9),
                "application_name": s.application_name,
                "client": s.client,
                "user": s.user,
                "trace_id": s.trace_id or None,
                "protocol": s.protocol,
                "param_type_oids": list(s.param_type_oids),
                "blocked_by": s.blocked_by or None,
            }
            for s in store.slowest(q.fingerprint, q.database)
            if s.user == q.user
        ]
        return out

    return extras


def inspect_routes_for(inspector: Inspector) -> list[Route]:
    async def plans(request: Request) -> Response:
        if request.query:
            raise api.ApiError(400, "this endpoint takes no parameters")
        fingerprint = request.path_params["fingerprint"]
        by_db = inspector.store.plans(fingerprint)
        if not by_db:
            raise api.ApiError(404, f"no plans for fingerprint {fingerprint!r} (yet)")
        return Response.json(
            200,
            {
                "fingerprint": fingerprint,
                "databases": [
                    {
                        "database": database,
                        "current": getattr(
                            inspector.store.current_plan(fingerprint, database), "id", None
                        ),
                        "plan_changes": inspector.store.plan_changes.get(
                            (fingerprint, database), 0
                        ),
                        "plans": [
                            {
                                "id": p.id,
                                "summary": p.summary,
                                "first_seen": api.iso_utc(p.first_seen),
                                "last_seen": api.iso_utc(p.last_seen),
                                "times_seen": p.times_seen,
                                "server_version": p.server_version,
                                "generic": True,
                                "plan": p.plan,
                            }
                            for p in plans
                        ],
                    }
                    for database, plans in sorted(by_db.items())
                ],
            },
        )

    return [Route(("GET",), "/api/queries/{fingerprint}/plans", plans)]


class InspectCollector(Collector):
    """Reads the inspector's store at scrape time (on the event loop, like the app's)."""

    def __init__(self, inspector: Inspector) -> None:
        self.inspector = inspector

    def collect(self) -> Iterator[Metric]:
        store = self.inspector.store
        changes = CounterMetricFamily(
            "dbproxy_query_plan_changes",
            "Times the generic plan's shape of a fingerprint changed.",
            labels=("database", "fingerprint"),
        )
        for (fingerprint, database), count in sorted(store.plan_changes.items()):
            changes.add_metric((database, fingerprint), count)
        yield changes
        scanned = GaugeMetricFamily(
            "dbproxy_query_rows_scanned",
            "Rows scanned per call (mean of the recent sampled EXPLAIN ANALYZE executions).",
            labels=("database", "fingerprint"),
        )
        for (fingerprint, database), rec in sorted(store.rows.items()):
            if rec.samples:
                scanned.add_metric((database, fingerprint), rec.mean_scanned)
        yield scanned
        jobs = CounterMetricFamily(
            "dbproxy_inspect_jobs",
            "Side-connection jobs (plan, sample, pgss) by outcome.",
            labels=("job", "outcome"),
        )
        for (job, outcome), count in sorted(self.inspector.counts.jobs.items()):
            jobs.add_metric((job, outcome), count)
        yield jobs
