"""What worker 0's ``/metrics`` and ``/api`` read with ``--workers N``: every worker's
statistics, merged at each request.

:class:`MergedStats` is a :class:`~dbproxy.export.api.StatsSource` (``snapshot`` and
``reset``), and its ``proxy``/``sink``/``fingerprinter``/``spans``/``query_log``
attributes stand in for the live counter objects the Prometheus collector reads: the
collector and the API do not know there are several processes.

Freshness: :meth:`MergedStats.refresh` asks every other worker for a dump (in parallel,
with a short timeout; a worker that does not answer is left out and counted in
``scrape_errors``), takes worker 0's own snapshot on the loop, and merges them in a
worker thread (≈ 0.3 s for two workers of 10,000 fingerprints: the loop keeps relaying meanwhile).
:meth:`wrap_routes` makes the ``/metrics`` and ``/api/…`` handlers await it before they
read ``snapshot()``, so nothing served is older than the request; ``snapshot()`` returns
that merge (folded to ``top`` when asked) and never blocks on other processes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import fields
from typing import Protocol

from dbproxy.export.http import Handler, Request, Response, Route
from dbproxy.observe.dump import (
    FingerprinterView,
    ProxyTotals,
    QueryLogTotals,
    SinkTotals,
    SpanTotals,
    WorkerDump,
)
from dbproxy.observe.merge import (
    DEFAULT_MAX_TAG_VALUES,
    fold_top,
    merge_snapshots,
    sum_counters,
)
from dbproxy.observe.stats import StatsSnapshot
from dbproxy.sql.cache import FingerprinterStats

log = logging.getLogger(__name__)

_FP_FIELDS = tuple(f.name for f in fields(FingerprinterStats))


class Peers(Protocol):
    """The other workers (``supervisor.WorkerPool``)."""

    @property
    def count(self) -> int:
        """Workers configured, worker 0 included."""
        ...

    @property
    def restarts(self) -> int: ...

    async def dumps(self) -> tuple[list[WorkerDump], int]:
        """The dumps of the workers that answered, and how many did not."""
        ...

    async def reset(self) -> int:
        """Reset every other worker's statistics; returns how many failed."""
        ...


class MergedStats:
    def __init__(
        self,
        local: Callable[[], WorkerDump],
        local_reset: Callable[[], None],
        peers: Peers,
        *,
        tracing: bool,
        query_log: bool,
        max_tag_values: int = DEFAULT_MAX_TAG_VALUES,
    ) -> None:
        self._local = local
        self._local_reset = local_reset
        self._peers = peers
        self._max_tag_values = max_tag_values
        self._merged: StatsSnapshot | None = None
        # the counter objects handed to the collector (summed at each snapshot)
        self.proxy = ProxyTotals()
        self.sink = SinkTotals()
        self.fingerprinter = FingerprinterView(FingerprinterStats(**dict.fromkeys(_FP_FIELDS, 0)))
        self.spans: SpanTotals | None = SpanTotals() if tracing else None
        self.query_log: QueryLogTotals | None = QueryLogTotals() if query_log else None
        #: dumps that did not arrive (timeout, worker down or restarting)
        self.scrape_errors = 0
        #: workers whose statistics are in the last snapshot, worker 0 included
        self.answered = 1
        #: TCP connections accepted per worker index, as of the last snapshot
        self.accepted_by_worker: dict[int, int] = {}

    @property
    def configured(self) -> int:
        return self._peers.count

    @property
    def restarts(self) -> int:
        return self._peers.restarts

    async def refresh(self) -> None:
        """Fetch every other worker's dump (those that answer in time) and merge them
        with worker 0's own statistics, taken now."""
        remote, failed = await self._peers.dumps()
        self.scrape_errors += failed
        dumps = [self._local(), *remote]  # on the loop: the aggregator is not thread-safe
        self._merged = await asyncio.to_thread(self._merge, dumps)
        self._sum_counters(dumps)

    def _merge(self, dumps: Sequence[WorkerDump]) -> StatsSnapshot:
        return merge_snapshots([d.snapshot for d in dumps], max_tag_values=self._max_tag_values)

    def snapshot(self, *, top: int | None = None) -> StatsSnapshot:
        """The merge of the last :meth:`refresh` (worker 0 alone, now, if there was
        none); ``top=K`` folds it as ``Aggregator.snapshot(top=K)`` does."""
        merged = self._merged
        if merged is None:
            local = self._local()
            self._sum_counters([local])
            merged = local.snapshot
        if top is not None:
            merged = fold_top(merged, top, max_tag_values=self._max_tag_values)
        return merged

    def _sum_counters(self, dumps: Sequence[WorkerDump]) -> None:
        self.answered = len(dumps)
        self.accepted_by_worker = {d.worker: d.proxy.connections_accepted for d in dumps}
        sum_counters(self.proxy, (d.proxy for d in dumps))
        sum_counters(self.sink, (d.sink for d in dumps))
        self.fingerprinter.stats = FingerprinterStats(
            **{name: sum(getattr(d.fingerprinter, name) for d in dumps) for name in _FP_FIELDS}
        )
        if self.spans is not None:
            sum_counters(self.spans, (d.spans for d in dumps if d.spans is not None))
        if self.query_log is not None:
            sum_counters(self.query_log, (d.query_log for d in dumps if d.query_log is not None))

    def reset(self) -> None:
        """Worker 0's part of ``POST /api/reset`` (the route wrapper resets the others)."""
        self._local_reset()
        self._merged = None

    async def reset_peers(self) -> None:
        failed = await self._peers.reset()
        if failed:
            log.warning("POST /api/reset: %d worker(s) did not answer; not reset", failed)

    def wrap_routes(self, routes: Sequence[Route]) -> list[Route]:
        """The same routes, with ``/metrics`` and ``/api/…`` refreshing first and
        ``POST /api/reset`` forwarded to every worker once worker 0 accepted it."""
        out: list[Route] = []
        for route in routes:
            handler = route.handler
            if route.pattern == "/api/reset":
                handler = self._resetting(handler)
            elif route.pattern == "/metrics" or (
                route.pattern.startswith("/api/") and route.pattern != "/api/ui-config"
            ):
                handler = self._refreshing(handler)
            out.append(Route(route.methods, route.pattern, handler))
        return out

    def _refreshing(self, handler: Handler) -> Handler:
        async def refreshed(request: Request) -> Response:
            await self.refresh()
            return await handler(request)

        return refreshed

    def _resetting(self, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        async def reset(request: Request) -> Response:
            response = await handler(request)  # authorizes (ApiError) and resets worker 0
            if response.status == 200:
                await self.reset_peers()
            return response

        return reset
