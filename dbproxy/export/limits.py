"""Prometheus view of the proxy's limits and fault handling (``proxy/limits.py``)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector


class LimitCounters(Protocol):
    @property
    def too_many_connections(self) -> int: ...
    @property
    def startup_timeouts(self) -> int: ...
    @property
    def idle_timeouts(self) -> int: ...
    @property
    def idle_in_transaction_timeouts(self) -> int: ...
    @property
    def cancels_on_client_loss(self) -> int: ...
    @property
    def cancels_failed(self) -> int: ...
    @property
    def upstream_lost(self) -> int: ...
    @property
    def errors_withheld(self) -> int: ...


class LimitsCollector(Collector):
    """Counters read at scrape time (open sessions: ``dbproxy_client_connections``)."""

    def __init__(self, stats: LimitCounters) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        s = self._stats
        rejected = CounterMetricFamily(
            "dbproxy_connections_closed_by_limit",
            "Client connections the proxy ended itself, by limit: too_many (53300), "
            "startup_timeout (08P01), idle (57P05), idle_in_transaction (25P03).",
            labels=("limit",),
        )
        rejected.add_metric(("too_many",), s.too_many_connections)
        rejected.add_metric(("startup_timeout",), s.startup_timeouts)
        rejected.add_metric(("idle",), s.idle_timeouts)
        rejected.add_metric(("idle_in_transaction",), s.idle_in_transaction_timeouts)
        yield rejected
        yield CounterMetricFamily(
            "dbproxy_client_lost_cancels",
            "CancelRequests sent upstream because a client vanished mid-statement.",
            value=s.cancels_on_client_loss,
        )
        yield CounterMetricFamily(
            "dbproxy_client_lost_cancel_errors",
            "Of those, the ones that could not be delivered.",
            value=s.cancels_failed,
        )
        yield CounterMetricFamily(
            "dbproxy_upstream_lost",
            "Sessions whose upstream connection ended without a FATAL from the server "
            "(the client got 08006 from the proxy).",
            value=s.upstream_lost,
        )
        yield CounterMetricFamily(
            "dbproxy_errors_withheld",
            "Errors the proxy could not say because the server's stream was mid-message "
            "(the connection was closed without them).",
            value=s.errors_withheld,
        )
