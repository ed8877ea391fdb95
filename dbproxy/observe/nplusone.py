"""N+1 detection: the same fingerprint executed many times within one request.

A *request* is one trace (the trace id of the statement's sqlcommenter ``traceparent``,
when the text was sent with that execution) or, for statements without one, one explicit
transaction of a session.  A trace has no end marker, so its group closes once no
statement of it arrived for ``idle_s`` (by the injected clock); a transaction's closes at
its ``TransactionFinished``.  When a group closes, every fingerprint executed at least
``min_executions`` times in it is an offending request for (fingerprint, database,
route): counted (``dbproxy_n_plus_one_total``) and summarised (executions per request,
median and max; time per request) for the ``n_plus_one`` finding.

Pure: no I/O; bounded (``max_open`` groups, the oldest closed first when full).
"""

from __future__ import annotations

import statistics
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from dbproxy.observe.history import Key

__all__ = ["NPlusOneStats", "NPlusOneTracker", "trace_id_of"]

_HEX: Final = frozenset("0123456789abcdef")


def trace_id_of(traceparent: str) -> str:
    """The trace id of a W3C ``traceparent`` (``00-<32 hex>-<16 hex>-<2 hex>``), or ``""``."""
    parts = traceparent.strip().lower().split("-")
    if len(parts) < 4 or len(parts[1]) != 32 or not set(parts[1]) <= _HEX:
        return ""
    if parts[1] == "0" * 32:
        return ""
    return parts[1]


class _Group:
    __slots__ = ("application", "counts", "last_seen", "route")

    def __init__(self, now: float) -> None:
        self.counts: dict[Key, list[int]] = {}  # key -> [executions, total ns]
        self.route = ""
        self.application = ""
        self.last_seen = now


@dataclass(slots=True)
class NPlusOneStats:
    """Offending requests of one (fingerprint, database, route)."""

    key: Key
    route: str
    application: str = ""
    requests: int = 0
    total_ns: int = 0
    executions: deque[int] = field(default_factory=lambda: deque(maxlen=256))
    times_ns: deque[int] = field(default_factory=lambda: deque(maxlen=256))

    @property
    def executions_median(self) -> float:
        return float(statistics.median(self.executions)) if self.executions else 0.0

    @property
    def executions_max(self) -> int:
        return max(self.executions) if self.executions else 0

    @property
    def time_per_request_s(self) -> float:
        return statistics.fmean(self.times_ns) / 1e9 if self.times_ns else 0.0


Offender = Callable[[NPlusOneStats, float], None]


class NPlusOneTracker:
    def __init__(
        self,
        *,
        min_executions: int = 10,
        idle_s: float = 2.0,
        max_open: int = 10_000,
        max_stats: int = 10_000,
        on_offender: Offender | None = None,
    ) -> None:
        self.min_executions = min_executions
        self.idle_s = idle_s
        self.max_open = max_open
        self.max_stats = max_stats
        self.on_offender = on_offender
        self._traces: dict[str, _Group] = {}  # insertion order = oldest first
        self._transactions: dict[int, _Group] = {}
        self.stats: dict[tuple[str, str, str], NPlusOneStats] = {}

    def statement(
        self,
        *,
        key: Key,
        duration_ns: int,
        trace_id: str,
        session_id: int,
        in_transaction: bool,
        route: str,
        application: str,
        now: float,
    ) -> None:
        if trace_id:
            group = self._traces.get(trace_id)
            if group is None:
                self._make_room(now)
                group = self._traces[trace_id] = _Group(now)
        elif in_transaction:
            group = self._transactions.get(session_id)
            if group is None:
                self._make_room(now)
                group = self._transactions[session_id] = _Group(now)
        else:
            return
        counts = group.counts.get(key)
        if counts is None:
            group.counts[key] = [1, duration_ns]
        else:
            counts[0] += 1
            counts[1] += duration_ns
        if route and not group.route:
            group.route = route
        if application and not group.application:
            group.application = application
        group.last_seen = now

    def transaction_finished(self, session_id: int, now: float) -> None:
        group = self._transactions.pop(session_id, None)
        if group is not None:
            self._close(group, now)

    def expire(self, now: float) -> None:
        """Close the trace groups idle for ``idle_s``."""
        idle = [t for t, g in self._traces.items() if now - g.last_seen >= self.idle_s]
        for trace_id in idle:
            self._close(self._traces.pop(trace_id), now)

    def flush(self, now: float) -> None:
        """Close every group (shutdown, tests)."""
        for group in [*self._traces.values(), *self._transactions.values()]:
            self._close(group, now)
        self._traces.clear()
        self._transactions.clear()

    def _make_room(self, now: float) -> None:
        if len(self._traces) + len(self._transactions) < self.max_open:
            return
        if self._traces:
            oldest = next(iter(self._traces))
            self._close(self._traces.pop(oldest), now)
        else:
            oldest_tx = next(iter(self._transactions))
            self._close(self._transactions.pop(oldest_tx), now)

    def _close(self, group: _Group, now: float) -> None:
        for key, (executions, total_ns) in group.counts.items():
            if executions < self.min_executions:
                continue
            slot = (key[0], key[1], group.route)
            stats = self.stats.get(slot)
            if stats is None:
                if len(self.stats) >= self.max_stats:
                    continue
                stats = self.stats[slot] = NPlusOneStats(key=key, route=group.route)
            stats.application = group.application or stats.application
            stats.requests += 1
            stats.total_ns += total_ns
            stats.executions.append(executions)
            stats.times_ns.append(total_ns)
            if self.on_offender is not None:
                self.on_offender(stats, now)
