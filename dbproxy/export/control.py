"""The operator's view of exposure and reloads: ``GET /api/status`` and a collector.

``dbproxy_http_refused_total`` counts requests the access rules refused (Host header,
token, same origin: :mod:`dbproxy.export.access`); ``dbproxy_config_reloads_total
{result}`` counts SIGHUP reloads; ``dbproxy_config_restart_pending`` is the number of
settings the config file changed that only a restart applies (their names are in
``/api/status`` and the log; never their values).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from dbproxy import __version__
from dbproxy.export.access import AccessGuard
from dbproxy.export.api import ApiError
from dbproxy.export.http import Request, Response, Route
from dbproxy.reload import Reloader

#: the app's reloader once SIGHUP handling is installed (None: no config source)
ReloaderRef = Callable[[], Reloader | None]


def status(access: AccessGuard, reloader: Reloader | None) -> dict[str, Any]:
    return {
        "version": __version__,
        "http": {
            "reads_need_token": access.reads_need_token(),
            "token_configured": access.policy.token is not None,
            "metrics_auth": access.policy.metrics_auth,
            "allowed_hosts": list(access.policy.allowed_hosts),
        },
        "reload": None
        if reloader is None
        else {
            "config_file": reloader.source.path,
            "reloads": reloader.reloads,
            "failures": reloader.failures,
            "restart_pending": list(reloader.pending),
        },
    }


def status_routes(access: AccessGuard, reloader: ReloaderRef) -> list[Route]:
    async def handler(request: Request) -> Response:
        if request.query:
            raise ApiError(400, "this endpoint takes no parameters")
        return Response.json(200, status(access, reloader()))

    return [Route(("GET",), "/api/status", handler)]


class ControlCollector(Collector):
    def __init__(self, access: AccessGuard, reloader: ReloaderRef) -> None:
        self.access = access
        self.reloader = reloader

    def collect(self) -> Iterator[Metric]:
        refused = CounterMetricFamily(
            "dbproxy_http_refused",
            "HTTP requests refused by the access rules (Host header, token, same origin).",
        )
        refused.add_metric([], self.access.refused)
        yield refused
        reloads = CounterMetricFamily(
            "dbproxy_config_reloads",
            "SIGHUP configuration reloads: ok, or failed (the running one was kept).",
            labels=["result"],
        )
        pending = GaugeMetricFamily(
            "dbproxy_config_restart_pending",
            "Settings the config file changed that only apply after a restart.",
        )
        reloader = self.reloader()
        reloads.add_metric(["ok"], reloader.reloads if reloader else 0)
        reloads.add_metric(["failed"], reloader.failures if reloader else 0)
        pending.add_metric([], len(reloader.pending) if reloader else 0)
        yield reloads
        yield pending
