"""Prometheus metrics: a custom collector that builds fresh families from a snapshot.

Per-fingerprint series need no long-lived child objects: every scrape asks the aggregator
for ``snapshot(top=max_fingerprints)`` (rows beyond the limit arrive folded into
``fingerprint="__other__"``), so the number of series stays bounded and a reset of the
aggregator simply restarts the counters.  The collector is registered on a registry the
composition root passes in, never on the global ``REGISTRY``.

Labels carry normalized SQL, fingerprint ids, SQLSTATEs and their class names only: no
literals, no error messages.

Latency buckets carry exemplars (``trace_id``, ``span_id`` of the latest traced statement
in the bucket) when tracing is on; only the OpenMetrics format can show them (text 0.0.4
has no exemplars, prometheus_client leaves them out there).
"""

from __future__ import annotations

import platform
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Protocol

from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.samples import Exemplar as PromExemplar
from prometheus_client.utils import floatToGoString

from dbproxy import __version__, speedups
from dbproxy.export.api import SnapshotSource
from dbproxy.observe.stats import Histogram, StatsSnapshot
from dbproxy.sql.cache import FingerprinterStats

#: prometheus_client's own ``le`` formatting (untyped upstream), so our buckets look like theirs.
_format_le: Callable[[float], str] = floatToGoString

DEFAULT_MAX_FINGERPRINTS = 500
#: ``dbproxy_query_info{query=...}`` is cut to this many UTF-8 bytes.
MAX_QUERY_LABEL_BYTES = 1024

#: SQLSTATE class (first two characters) -> condition name, from PostgreSQL's
#: "PostgreSQL Error Codes" appendix.
SQLSTATE_CLASSES: Mapping[str, str] = {
    "00": "successful_completion",
    "01": "warning",
    "02": "no_data",
    "03": "sql_statement_not_yet_complete",
    "08": "connection_exception",
    "09": "triggered_action_exception",
    "0A": "feature_not_supported",
    "0B": "invalid_transaction_initiation",
    "0F": "locator_exception",
    "0L": "invalid_grantor",
    "0P": "invalid_role_specification",
    "0Z": "diagnostics_exception",
    "20": "case_not_found",
    "21": "cardinality_violation",
    "22": "data_exception",
    "23": "integrity_constraint_violation",
    "24": "invalid_cursor_state",
    "25": "invalid_transaction_state",
    "26": "invalid_sql_statement_name",
    "27": "triggered_data_change_violation",
    "28": "invalid_authorization_specification",
    "2B": "dependent_privilege_descriptors_still_exist",
    "2D": "invalid_transaction_termination",
    "2F": "sql_routine_exception",
    "34": "invalid_cursor_name",
    "38": "external_routine_exception",
    "39": "external_routine_invocation_exception",
    "3B": "savepoint_exception",
    "3D": "invalid_catalog_name",
    "3F": "invalid_schema_name",
    "40": "transaction_rollback",
    "42": "syntax_error_or_access_rule_violation",
    "44": "with_check_option_violation",
    "53": "insufficient_resources",
    "54": "program_limit_exceeded",
    "55": "object_not_in_prerequisite_state",
    "57": "operator_intervention",
    "58": "system_error",
    "72": "snapshot_failure",
    "F0": "config_file_error",
    "HV": "fdw_error",
    "P0": "plpgsql_error",
    "XX": "internal_error",
}
_SQLSTATE = re.compile(r"[0-9A-Z]{5}")


def sqlstate_label(sqlstate: str) -> tuple[str, str]:
    """``(sqlstate, error_class)`` labels; anything that is not a SQLSTATE becomes unknown."""
    if not _SQLSTATE.fullmatch(sqlstate):
        return "unknown", "unknown"
    return sqlstate, SQLSTATE_CLASSES.get(sqlstate[:2], "unknown")


def truncate_utf8(text: str, max_bytes: int) -> str:
    """Cut ``text`` to at most ``max_bytes`` UTF-8 bytes without splitting a character."""
    raw = text.encode("utf-8", "surrogatepass")
    if len(raw) <= max_bytes:
        return text
    return raw[:max_bytes].decode("utf-8", "ignore")


class ProxyCounters(Protocol):
    """The proxy's own counters (``ProxyServer.stats``)."""

    @property
    def connections_accepted(self) -> int: ...
    @property
    def upstream_connect_failures(self) -> int: ...
    @property
    def observer_errors(self) -> int: ...
    @property
    def rejected_startups(self) -> int: ...
    @property
    def cancel_requests(self) -> int: ...
    @property
    def bytes_from_client(self) -> int: ...
    @property
    def bytes_from_server(self) -> int: ...
    @property
    def replication_physical(self) -> int: ...
    @property
    def replication_database(self) -> int: ...


class SinkCounters(Protocol):
    """The event queue's counters (``QueueSink``)."""

    @property
    def accepted(self) -> int: ...
    @property
    def dropped(self) -> int: ...
    @property
    def capacity(self) -> int: ...


class SpanCounters(Protocol):
    """The tracing pipeline's counters (``export.otel.Tracing.counters``)."""

    @property
    def created(self) -> int: ...
    @property
    def exported(self) -> int: ...
    @property
    def dropped(self) -> int: ...
    @property
    def export_failed(self) -> int: ...


class QueryLogCounters(Protocol):
    """The JSON query log's writer (``QueryLog``)."""

    @property
    def lines_written(self) -> int: ...
    @property
    def lines_dropped(self) -> int: ...
    @property
    def write_errors(self) -> int: ...


class FingerprinterCounters(Protocol):
    """The fingerprint cache (``Fingerprinter``)."""

    @property
    def stats(self) -> FingerprinterStats: ...


#: Snapshots taken on the event loop for a render that runs in a thread (keyed by
#: collector id); ``asyncio.to_thread`` carries the context into the worker.
_PINNED: ContextVar[Mapping[int, StatsSnapshot]] = ContextVar("dbproxy_pinned_snapshots")

_QUERY_LABELS = ("database", "user", "fingerprint", "operation", "kind")
_ERROR_LABELS = (*_QUERY_LABELS, "sqlstate", "error_class")
_INFO_LABELS = ("fingerprint", "summary", "operation", "kind", "tables", "query")
_DB_USER = ("database", "user")


class _Buckets:
    """Memoized ``le`` label strings per bounds tuple (the same few tuples every scrape)."""

    def __init__(self) -> None:
        self._le: dict[tuple[float, ...], tuple[str, ...]] = {}

    def cumulative(
        self, hist: Histogram
    ) -> list[tuple[str, float] | tuple[str, float, PromExemplar]]:
        le = self._le.get(hist.bounds)
        if le is None:
            le = (*(_format_le(b) for b in hist.bounds), "+Inf")
            self._le[hist.bounds] = le
        out: list[tuple[str, float] | tuple[str, float, PromExemplar]] = []
        total = 0
        for name, n in zip(le, hist.bucket_counts, strict=True):
            total += n
            out.append((name, total))
        if hist.exemplars:
            for i, ex in enumerate(hist.exemplars):
                if ex is not None:
                    out[i] = (
                        out[i][0],
                        out[i][1],
                        PromExemplar(
                            {"trace_id": ex.trace_id, "span_id": ex.span_id},
                            ex.value_s,
                            ex.timestamp_s,
                        ),
                    )
        return out


class DbproxyCollector(Collector):
    """Builds every ``dbproxy_*`` family at scrape time.

    ``stats`` is the aggregator (only ``snapshot(top=...)`` is used); the other sources are
    optional so tests and partial setups can leave them out (their families are then
    omitted).  ``metrics_tags`` selects which attribution values are exported in
    ``dbproxy_query_calls_by_tag_total``: ``"application"`` means ``application_name``,
    anything else a sqlcommenter tag; empty (the default) exports none.
    """

    def __init__(
        self,
        stats: SnapshotSource,
        *,
        proxy: ProxyCounters | None = None,
        sink: SinkCounters | None = None,
        fingerprinter: FingerprinterCounters | None = None,
        spans: SpanCounters | None = None,
        query_log: QueryLogCounters | None = None,
        max_fingerprints: int | None = DEFAULT_MAX_FINGERPRINTS,
        metrics_tags: Sequence[str] = (),
        version: str = __version__,
    ) -> None:
        if max_fingerprints is not None and max_fingerprints < 1:
            raise ValueError("max_fingerprints must be positive (or None for no limit)")
        self._stats = stats
        self._proxy = proxy
        self._sink = sink
        self._fingerprinter = fingerprinter
        self._spans = spans
        self._query_log = query_log
        self._max_fingerprints = max_fingerprints
        self._tags = tuple(metrics_tags)
        self._version = version
        self._buckets = _Buckets()

    def update(self, *, max_fingerprints: int, metrics_tags: tuple[str, ...]) -> None:
        """New series settings (SIGHUP reload); the next scrape uses them."""
        self._max_fingerprints = max_fingerprints
        self._tags = tuple(metrics_tags)

    def describe(self) -> list[Metric]:
        # Nothing to describe up front: registering must not take a snapshot.
        return []

    def collect(self) -> Iterator[Metric]:
        snapshot = _PINNED.get({}).get(id(self))
        if snapshot is None:
            snapshot = self._stats.snapshot(top=self._max_fingerprints)
        yield from self.families(snapshot)

    @contextmanager
    def pinned(self) -> Iterator[StatsSnapshot]:
        """Take the snapshot now (on the event loop) for collects in this context.

        The aggregator is not thread-safe, but rendering 1000 series takes long enough to
        belong in a worker thread: ``with collector.pinned(): await asyncio.to_thread(...)``
        makes the thread's ``collect`` use this snapshot instead of taking one.
        """
        snapshot = self._stats.snapshot(top=self._max_fingerprints)
        token = _PINNED.set({**_PINNED.get({}), id(self): snapshot})
        try:
            yield snapshot
        finally:
            _PINNED.reset(token)

    def families(self, snapshot: StatsSnapshot) -> Iterator[Metric]:
        """Every family for one snapshot (plus the current process-level counters)."""
        yield from self._query_families(snapshot)
        yield from self._transaction_families(snapshot)
        yield from self._connection_families(snapshot)
        yield from self._process_families(snapshot)

    def _query_families(self, snapshot: StatsSnapshot) -> Iterator[Metric]:
        duration = HistogramMetricFamily(
            "dbproxy_query_duration_seconds",
            "Statement latency seen at the proxy (first byte of the request to the answer), "
            "per fingerprint; failed statements included.",
            labels=_QUERY_LABELS,
        )
        rows = CounterMetricFamily(
            "dbproxy_query_rows",
            "Rows returned (DataRows) or affected (CommandComplete) per fingerprint.",
            labels=_QUERY_LABELS,
        )
        errors = CounterMetricFamily(
            "dbproxy_query_errors",
            "Failed statements per fingerprint and SQLSTATE (messages are never exported).",
            labels=_ERROR_LABELS,
        )
        rolled_back = CounterMetricFamily(
            "dbproxy_query_rolled_back",
            "Statements that succeeded but were undone by a later error in their "
            "implicit transaction.",
            labels=_QUERY_LABELS,
        )
        info = GaugeMetricFamily(
            "dbproxy_query_info",
            "Normalized text and analysis of each fingerprint (value is always 1).",
            labels=_INFO_LABELS,
        )
        by_tag = CounterMetricFamily(
            "dbproxy_query_calls_by_tag",
            "Calls per fingerprint and attribution value (application_name or a "
            "sqlcommenter tag), for the top values the aggregator keeps.",
            labels=("fingerprint", "tag", "value"),
        )
        seen_info: set[str] = set()
        tag_calls: dict[tuple[str, str, str], int] = {}
        cumulative = self._buckets.cumulative
        tags = self._tags
        for q in snapshot.queries:
            labels = (q.database, q.user, q.fingerprint, q.operation, q.kind)
            duration.add_metric(labels, cumulative(q.duration), q.duration.sum_s)
            rows.add_metric(labels, q.rows)
            if q.rolled_back:
                rolled_back.add_metric(labels, q.rolled_back)
            for sqlstate, n in sorted(q.errors.items()):
                errors.add_metric((*labels, *sqlstate_label(sqlstate)), n)
            if q.fingerprint not in seen_info:
                seen_info.add(q.fingerprint)
                info.add_metric(
                    (
                        q.fingerprint,
                        q.summary,
                        q.operation,
                        q.kind,
                        ",".join(q.tables),
                        truncate_utf8(q.query, MAX_QUERY_LABEL_BYTES),
                    ),
                    1,
                )
            for tag in tags:
                pairs = q.applications if tag == "application" else q.tags.get(tag, ())
                for value, calls in pairs:
                    key = (q.fingerprint, tag, value)
                    tag_calls[key] = tag_calls.get(key, 0) + calls
        yield duration
        yield rows
        yield errors
        yield rolled_back
        yield info
        if tags:
            for key in sorted(tag_calls):
                by_tag.add_metric(key, tag_calls[key])
            yield by_tag

    def _transaction_families(self, snapshot: StatsSnapshot) -> Iterator[Metric]:
        total = CounterMetricFamily(
            "dbproxy_transactions",
            "Transactions by outcome: commit, rollback (explicit), error (ended by an error).",
            labels=(*_DB_USER, "outcome"),
        )
        duration = HistogramMetricFamily(
            "dbproxy_transaction_duration_seconds",
            "Transaction duration from its first statement to its end.",
            labels=_DB_USER,
        )
        for t in snapshot.transactions:
            db_user = (t.database, t.user)
            total.add_metric((*db_user, "commit"), t.commits)
            total.add_metric((*db_user, "rollback"), t.rollbacks)
            total.add_metric((*db_user, "error"), t.errors)
            duration.add_metric(db_user, self._buckets.cumulative(t.duration), t.duration.sum_s)
        yield total
        yield duration

    def _connection_families(self, snapshot: StatsSnapshot) -> Iterator[Metric]:
        current = GaugeMetricFamily(
            "dbproxy_client_connections", "Open client sessions.", labels=_DB_USER
        )
        # Not "dbproxy_client_connections_total": OpenMetrics forbids a counter family
        # with the same name as the gauge above.
        total = CounterMetricFamily(
            "dbproxy_client_connections_opened", "Client sessions opened.", labels=_DB_USER
        )
        rejected = CounterMetricFamily(
            "dbproxy_client_connections_rejected",
            "Client sessions the server refused (authentication or startup failed).",
            labels=_DB_USER,
        )
        for c in snapshot.connections:
            db_user = (c.database, c.user)
            current.add_metric(db_user, c.current)
            total.add_metric(db_user, c.total)
            rejected.add_metric(db_user, c.rejected)
        yield current
        yield total
        yield rejected

    def _process_families(self, snapshot: StatsSnapshot) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "dbproxy_fingerprints_tracked",
            "Distinct (fingerprint, database, user) rows the aggregator holds.",
            value=snapshot.fingerprints_tracked,
        )
        yield CounterMetricFamily(
            "dbproxy_fingerprints_overflow",
            "Statements folded into fingerprint __other__ because the aggregator was full.",
            value=snapshot.fingerprints_overflow,
        )
        yield CounterMetricFamily(
            "dbproxy_events_processed",
            "Protocol events the aggregator has consumed.",
            value=snapshot.events_processed,
        )
        yield GaugeMetricFamily(
            "dbproxy_stats_started_timestamp_seconds",
            "When the statistics started (process start or last POST /api/reset).",
            value=snapshot.started_at,
        )
        if self._proxy is not None:
            p = self._proxy
            yield CounterMetricFamily(
                "dbproxy_connections_accepted",
                "TCP connections accepted by the proxy listener.",
                value=p.connections_accepted,
            )
            yield CounterMetricFamily(
                "dbproxy_upstream_connect_errors",
                "Failed connection attempts to the upstream PostgreSQL.",
                value=p.upstream_connect_failures,
            )
            yield CounterMetricFamily(
                "dbproxy_startups_rejected",
                "Client startup packets the proxy itself rejected (malformed, direct TLS).",
                value=p.rejected_startups,
            )
            yield CounterMetricFamily(
                "dbproxy_cancel_requests",
                "CancelRequest packets relayed.",
                value=p.cancel_requests,
            )
            walsenders = CounterMetricFamily(
                "dbproxy_replication_connections",
                "Replication connections relayed without interpretation, by mode "
                "(physical: replication=true; database: replication=database).",
                labels=("mode",),
            )
            walsenders.add_metric(("physical",), p.replication_physical)
            walsenders.add_metric(("database",), p.replication_database)
            yield walsenders
            yield CounterMetricFamily(
                "dbproxy_observer_errors",
                "Exceptions in the observation path (the session keeps relaying bytes).",
                value=p.observer_errors,
            )
            traffic = CounterMetricFamily(
                "dbproxy_bytes", "Bytes relayed, by direction.", labels=("direction",)
            )
            traffic.add_metric(("client_to_server",), p.bytes_from_client)
            traffic.add_metric(("server_to_client",), p.bytes_from_server)
            yield traffic
        if self._sink is not None:
            yield CounterMetricFamily(
                "dbproxy_events_dropped",
                "Events dropped because the observation queue was full.",
                value=self._sink.dropped,
            )
            yield GaugeMetricFamily(
                "dbproxy_event_queue_capacity",
                "Capacity of the observation queue.",
                value=self._sink.capacity,
            )
        if self._fingerprinter is not None:
            fs = self._fingerprinter.stats
            hits = CounterMetricFamily(
                "dbproxy_fingerprint_cache_hits",
                "Fingerprint cache hits (exact: same text; skeleton: same text but for its "
                "constants; shape: same normalized text).",
                labels=("cache",),
            )
            misses = CounterMetricFamily(
                "dbproxy_fingerprint_cache_misses", "Fingerprint cache misses.", labels=("cache",)
            )
            entries = GaugeMetricFamily(
                "dbproxy_fingerprint_cache_entries",
                "Entries in the fingerprint caches.",
                labels=("cache",),
            )
            hits.add_metric(("exact",), fs.exact_hits)
            hits.add_metric(("shape",), fs.shape_hits)
            hits.add_metric(("skeleton",), fs.skeleton_hits)
            misses.add_metric(("exact",), fs.exact_misses)
            misses.add_metric(("shape",), fs.shape_misses)
            misses.add_metric(("skeleton",), fs.skeleton_misses)
            entries.add_metric(("exact",), fs.exact_size)
            entries.add_metric(("shape",), fs.shape_size)
            entries.add_metric(("skeleton",), fs.skeleton_size)
            yield hits
            yield misses
            yield entries
            yield CounterMetricFamily(
                "dbproxy_fingerprint_parse_seconds",
                "Time spent parsing statements with sqlglot.",
                value=fs.parse_ns / 1e9,
            )
            yield CounterMetricFamily(
                "dbproxy_fingerprint_parse_failures",
                "Statements sqlglot could not parse (token-level analysis used instead).",
                value=fs.parse_failures,
            )
        if self._spans is not None:
            sp = self._spans
            yield CounterMetricFamily(
                "dbproxy_spans_created",
                "Spans built from statements (sampled by trace context, ratio or slowness).",
                value=sp.created,
            )
            yield CounterMetricFamily(
                "dbproxy_spans_exported",
                "Spans the OTLP exporter delivered.",
                value=sp.exported,
            )
            yield CounterMetricFamily(
                "dbproxy_spans_dropped",
                "Spans dropped because the export queue was full (or after shutdown).",
                value=sp.dropped,
            )
            yield CounterMetricFamily(
                "dbproxy_spans_export_failed",
                "Spans in export batches the OTLP exporter could not deliver.",
                value=sp.export_failed,
            )
        if self._query_log is not None:
            ql = self._query_log
            yield CounterMetricFamily(
                "dbproxy_query_log_lines", "JSON query log lines written.", value=ql.lines_written
            )
            yield CounterMetricFamily(
                "dbproxy_query_log_lines_dropped",
                "JSON query log lines dropped (writer queue full, or the log closed).",
                value=ql.lines_dropped,
            )
            yield CounterMetricFamily(
                "dbproxy_query_log_write_errors",
                "Writes to the JSON query log that failed (disk full, closed pipe).",
                value=ql.write_errors,
            )
        build = GaugeMetricFamily(
            "dbproxy_build_info",
            "dbproxy build information (compiled: the mypyc build of the hot modules is in use).",
            labels=("version", "python", "compiled"),
        )
        compiled = "true" if speedups.status().compiled else "false"
        build.add_metric((self._version, platform.python_version(), compiled), 1)
        yield build


def render(registry: CollectorRegistry, accept: str | None) -> tuple[bytes, str]:
    """The exposition for an ``Accept`` header: OpenMetrics when asked, else text 0.0.4.

    Returns ``(body, content_type)``.
    """
    encoder: Callable[[CollectorRegistry], bytes]
    encoder, content_type = choose_encoder(accept or "")
    return encoder(registry), content_type
