"""Prometheus families about the worker processes of ``--workers N`` (worker 0 only)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Protocol

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector


class WorkerStats(Protocol):
    """What ``workers.merged.MergedStats`` knows after the scrape's snapshot."""

    @property
    def configured(self) -> int: ...
    @property
    def answered(self) -> int: ...
    @property
    def scrape_errors(self) -> int: ...
    @property
    def restarts(self) -> int: ...
    @property
    def accepted_by_worker(self) -> Mapping[int, int]: ...


class WorkersCollector(Collector):
    def __init__(self, stats: WorkerStats) -> None:
        self._stats = stats

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        s = self._stats
        yield GaugeMetricFamily(
            "dbproxy_workers",
            "Worker processes whose statistics are in this scrape (worker 0 included).",
            value=s.answered,
        )
        yield GaugeMetricFamily(
            "dbproxy_workers_configured",
            "Worker processes configured (--workers).",
            value=s.configured,
        )
        yield CounterMetricFamily(
            "dbproxy_worker_scrape_errors",
            "Requests for a worker's statistics unanswered in time (left out of the merge).",
            value=s.scrape_errors,
        )
        yield CounterMetricFamily(
            "dbproxy_worker_restarts",
            "Worker processes restarted after they died.",
            value=s.restarts,
        )
        accepted = CounterMetricFamily(
            "dbproxy_worker_connections_accepted",
            "TCP connections accepted per worker process (from 0 again when it restarts).",
            labels=("worker",),
        )
        for worker, n in sorted(s.accepted_by_worker.items()):
            accepted.add_metric((str(worker),), n)
        yield accepted
