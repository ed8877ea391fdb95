"""Findings over HTTP and Prometheus: ``/api/findings``, ``/api/deploys``,
``/api/history/{fingerprint}``, and the ``dbproxy_findings`` gauge.

Routes plug into :func:`dbproxy.export.http.export_routes` through ``extra_routes``; the
:class:`FindingsCollector` is registered on the app's registry.  Scrapes render in a
worker thread, so the collector reads only what the monitor *published* on the loop
(immutable tuples swapped in whole), never its live dicts.

``POST /api/deploys`` changes state: it needs the API token (``Authorization: Bearer``)
or a same-origin browser request (``Origin`` equal to the ``Host`` it was sent to, or
``Sec-Fetch-Site: same-origin``), so another site cannot post deploys from a browser.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any
from urllib.parse import urlsplit

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from dbproxy.export.api import ApiError, TokenSource, current_token, iso_utc
from dbproxy.export.http import Request, Response, Route
from dbproxy.export.notify import OUTCOMES, Notifier
from dbproxy.observe.detector import FINDING_TYPES, Finding
from dbproxy.observe.history import quantile
from dbproxy.observe.regression import RegressionMonitor

__all__ = ["FindingsCollector", "FindingsEndpoints", "authorize_change"]

_MAX_VERSION_CHARS = 200


def authorize_change(api_token: str | None, request: Request) -> None:
    """A state-changing request: the bearer token, or a same-origin browser request."""
    scheme, _, given = (request.header("authorization") or "").partition(" ")
    if api_token and scheme.lower() == "bearer":
        if hmac.compare_digest(
            given.strip().encode("utf-8", "surrogateescape"),
            api_token.encode("utf-8", "surrogateescape"),
        ):
            return
        raise ApiError(403, "wrong token")
    if request.header("sec-fetch-site") == "same-origin":
        return
    origin = request.header("origin")
    host = request.header("host")
    if origin and host and urlsplit(origin).netloc == host:
        return
    raise ApiError(
        403,
        "send 'Authorization: Bearer <token>' (DBPROXY_API_TOKEN / --api-token-file) "
        "or post from the web UI",
    )


#: (fingerprint, database, since, until) -> sampled seconds by wait event, the largest first
WaitEvents = Callable[[str, str, float, float], dict[str, float]]


def finding_json(finding: Finding) -> dict[str, Any]:
    out = finding.as_json()
    out["first_seen_iso"] = iso_utc(finding.first_seen)
    out["last_seen_iso"] = iso_utc(finding.last_seen)
    return out


class FindingsEndpoints:
    def __init__(
        self,
        monitor: RegressionMonitor,
        *,
        api_token: TokenSource = None,
        wait_events: WaitEvents | None = None,
    ) -> None:
        self.monitor = monitor
        self.api_token = api_token
        #: the activity sampler's top wait events (fingerprint, database, since, until),
        #: when the side connection samples pg_stat_activity
        self.wait_events = wait_events

    def routes(self) -> list[Route]:
        return [
            Route(("GET",), "/api/findings", self.findings),
            Route(("GET", "POST"), "/api/deploys", self.deploys),
            Route(("GET",), "/api/history/{fingerprint}", self.history),
        ]

    async def findings(self, request: Request) -> Response:
        params = dict(request.query)
        unknown = set(params) - {"state", "type", "fingerprint", "id"}
        if unknown:
            raise ApiError(400, f"unknown parameter(s): {', '.join(sorted(unknown))}")
        state = params.get("state", "all")
        if state not in ("open", "resolved", "all"):
            raise ApiError(400, "state must be open, resolved or all")
        kind = params.get("type")
        if kind is not None and kind not in FINDING_TYPES:
            raise ApiError(400, f"type must be one of {', '.join(FINDING_TYPES)}")
        rows = [
            self._with_waits(finding_json(f), f)
            for f in self.monitor.detector.findings()
            if state in ("all", f.state)
            and (kind is None or f.type == kind)
            and ("fingerprint" not in params or f.fingerprint == params["fingerprint"])
            and ("id" not in params or f.id == params["id"])
        ]
        return Response.json(200, rows)

    def _with_waits(self, row: dict[str, Any], finding: Finding) -> dict[str, Any]:
        if self.wait_events is not None:
            since = finding.first_seen - self.monitor.settings.window_s
            row["wait_events"] = self.wait_events(
                finding.fingerprint, finding.database, since, finding.last_seen
            )
        return row

    async def deploys(self, request: Request) -> Response:
        if request.method == "POST":
            authorize_change(current_token(self.api_token), request)
            version, at = _parse_deploy(request.body)
            deploy = self.monitor.mark_deploy(version, at)
            return Response.json(200, {"deploy": deploy.as_json()})
        return Response.json(
            200,
            [
                {**d.as_json(), "at_iso": iso_utc(d.at), "restored": d.restored}
                for d in reversed(self.monitor.detector.deploys)
            ],
        )

    async def history(self, request: Request) -> Response:
        params = dict(request.query)
        fid = request.path_params["fingerprint"]
        database = params.get("database")
        resolution = params.get("resolution", "minute")
        if resolution not in ("minute", "hour"):
            raise ApiError(400, "resolution must be minute or hour")
        monitor = self.monitor
        rows: dict[tuple[int, str], dict[str, Any]] = {}
        store = monitor.store
        now_minute = int(monitor.clock() // 60)
        if store is not None:
            table = "minutes" if resolution == "minute" else "hours"
            start = now_minute - 26 * 60 if resolution == "minute" else now_minute // 60 - 14 * 24
            for unit, db, calls, sum_ns, n_rows, hist in await asyncio.to_thread(
                store.series, fid, database, table, start
            ):
                rows[(unit, db)] = _point(unit, resolution, db, calls, sum_ns, n_rows, hist)
        if resolution == "minute":  # what is not written yet (the open minute, or no store)
            open_minute = monitor.history.open_minute
            for minute, key, bucket in monitor.history.minute_buckets(fid):
                if database is not None and key[1] != database:
                    continue
                point = (minute, key[1])
                stored = rows.get(point)
                if stored is not None and minute == open_minute:
                    # a partial minute written before a restart, plus what came since
                    stored["calls"] += bucket.calls
                    stored["rows"] += bucket.rows
                    stored["total_ms"] = round(stored["total_ms"] + bucket.sum_ns / 1e6, 3)
                    continue
                if stored is not None:
                    continue  # written: the store has all of it
                rows[point] = _point(
                    minute,
                    "minute",
                    key[1],
                    bucket.calls,
                    bucket.sum_ns,
                    bucket.rows,
                    bucket.counts,
                )
        ordered = [rows[k] for k in sorted(rows)]
        return Response.json(
            200,
            {
                "fingerprint": fid,
                "query": next((q for (f, _), q in monitor.queries.items() if f == fid), ""),
                "resolution": resolution,
                "persistent": store is not None,
                "points": ordered,
            },
        )


def _point(  # noqa: PLR0917 - one row's columns
    unit: int, resolution: str, db: str, calls: int, sum_ns: int, n_rows: int, hist: list[int]
) -> dict[str, Any]:
    start = unit * (60 if resolution == "minute" else 3600)
    p95 = quantile(hist, 0.95)
    return {
        "start": start,
        "start_iso": iso_utc(start),
        "database": db,
        "calls": calls,
        "total_ms": round(sum_ns / 1e6, 3),
        "p95_ms": round(p95 * 1000, 3) if math.isfinite(p95) else None,
        "rows": n_rows,
    }


def _parse_deploy(body: bytes) -> tuple[str, float | None]:
    try:
        payload = json.loads(body or b"{}")
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, 'body must be JSON: {"version": "...", "at": optional}') from None
    if not isinstance(payload, dict):
        raise ApiError(400, 'body must be a JSON object: {"version": "..."}')
    version = payload.get("version")
    if not isinstance(version, str) or not version.strip():
        raise ApiError(400, '"version" must be a non-empty string')
    if len(version) > _MAX_VERSION_CHARS:
        raise ApiError(400, f'"version" must be at most {_MAX_VERSION_CHARS} characters')
    at = payload.get("at")
    if at is None:
        return version.strip(), None
    if isinstance(at, bool) or not isinstance(at, int | float) or not math.isfinite(at):
        raise ApiError(400, '"at" must be Unix seconds')
    return version.strip(), float(at)


class FindingsCollector(Collector):
    """``dbproxy_findings{fingerprint, type}`` (1 while open), N+1 and notification
    counters, history store counters; from what the monitor published."""

    def __init__(self, monitor: RegressionMonitor, notifier: Notifier | None = None) -> None:
        self.monitor = monitor
        self.notifier = notifier

    def collect(self) -> Iterator[Metric]:
        published = self.monitor.published
        gauge = GaugeMetricFamily(
            "dbproxy_findings",
            "Open regression findings (1 while open), by fingerprint and finding type",
            labels=["fingerprint", "type"],
        )
        for fingerprint, kind in published.open_findings:
            gauge.add_metric([fingerprint, kind], 1.0)
        yield gauge
        n_plus_one = CounterMetricFamily(
            "dbproxy_n_plus_one",
            "Requests (traces or transactions) that ran one fingerprint at least "
            "--n-plus-one-min times",
            labels=["fingerprint", "route"],
        )
        for (fingerprint, route), count in published.n_plus_one:
            n_plus_one.add_metric([fingerprint, route], float(count))
        yield n_plus_one
        evaluations = CounterMetricFamily(
            "dbproxy_detector_evaluations", "Regression detector evaluations"
        )
        evaluations.add_metric([], float(published.evaluations))
        yield evaluations
        store = self.monitor.store
        history = CounterMetricFamily(
            "dbproxy_history_errors",
            "History minutes not written: dropped (writer queue full) or failed writes",
            labels=["reason"],
        )
        history.add_metric(["dropped"], float(store.dropped_minutes if store else 0))
        history.add_metric(["write_failed"], float(store.write_errors if store else 0))
        yield history
        if self.notifier is not None:
            notifications = CounterMetricFamily(
                "dbproxy_notifications",
                "Finding notifications by target and outcome (sent, failed after retries, "
                "dropped on a full queue, suppressed by dedup/cool-down)",
                labels=["target", "outcome"],
            )
            counts: Mapping[tuple[str, str], int] = dict(self.notifier.counts)
            for target in self.notifier.targets:
                for outcome in OUTCOMES:
                    notifications.add_metric(
                        [target, outcome], float(counts.get((target, outcome), 0))
                    )
            yield notifications
