"""OpenTelemetry spans for statements, built after the fact from events, off the hot path.

One CLIENT span per statement (and, with ``proxy_span``, a SERVER span for the hop with
the CLIENT span as its child), named by the fingerprint's summary (``SELECT users``),
timed with the event's wall-clock start and end, attributes per the OpenTelemetry
database semantic conventions (``db.system.name``, ``db.namespace``, ``db.query.text`` —
normalized, never literals —, ``db.query.summary``, ``db.response.status_code``,
``error.type``, ``server.*``, ``client.*``) plus ``dbproxy.*``.  Error spans get status
ERROR with the SQLSTATE's condition name as description; the server's message (which can
echo values) is never used.

Which statements get a span:

* **Trace context** comes from the sqlcommenter ``traceparent``/``tracestate`` of the
  statement text (already URL-decoded by :mod:`dbproxy.sql.commenter`), through the SDK's
  W3C propagator — only when ``text_in_batch``: a named statement executed later carries
  its old Parse's comment, which describes another request.
* With a parent, the parent's sampled flag decides (``respect_parent``, the default); a
  ``traceidratio``/``always_on`` sampler decides by trace id instead.
* Without one, a root span is made for a ``root_ratio`` fraction of statements (default 0:
  none).
* ``slow_ns``: a statement at least that slow always gets a span — even under an
  unsampled parent, which yields a *partial* trace (the parent is not in the backend) —
  and, without context, a root span.

:class:`SpanBuilder` runs in the App's drain task before the aggregator and returns a
:class:`~dbproxy.observe.aggregator.StatementNote` per statement it fingerprinted or
traced, keyed by the statement's index in the batch: the aggregator reuses the
fingerprint and records the span's ids as the latency bucket's exemplar.  Spans go to a
bounded batch processor whose worker thread exports them (OTLP over HTTP or gRPC); the
processor counts created, exported, failed and dropped spans for ``/metrics``.

Nothing here touches global OpenTelemetry state: the provider is local, never
``set_tracer_provider``; the environment comes in as a mapping (``config.environment()``).
"""

from __future__ import annotations

import logging
import random
import ssl
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Literal, cast
from urllib.parse import unquote, urlparse

from opentelemetry.context import Context
from opentelemetry.sdk._shared_internal import BatchProcessor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace import Span as SdkSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ALWAYS_ON
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.sdk.version import __version__ as otel_sdk_version
from opentelemetry.trace import (
    INVALID_SPAN_CONTEXT,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
    get_current_span,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue

from dbproxy import __version__
from dbproxy.errors import ConfigError
from dbproxy.export.otlp import OtlpHttpSpanExporter
from dbproxy.export.prometheus import sqlstate_label
from dbproxy.observe.aggregator import StatementNote
from dbproxy.observe.span_filter import NEVER_SLOW, span_candidates
from dbproxy.protocol.events import (
    Event,
    SessionClosed,
    SessionOpened,
    StatementEvent,
    StatementFailed,
    StatementFinished,
)
from dbproxy.sql.cache import SupportsFingerprint
from dbproxy.sql.fingerprint import Fingerprint

__all__ = [
    "SQLSTATE_CONDITIONS",
    "SamplingPolicy",
    "SpanBuilder",
    "SpanCounts",
    "Tracing",
    "TracingSettings",
    "build_tracing",
    "condition_name",
]

log = logging.getLogger(__name__)

#: sqlcommenter tags copied onto spans as ``dbproxy.tag.<key>`` (never traceparent & co).
SPAN_TAGS: Final = ("application", "route", "controller", "action", "framework")

#: Condition names of the SQLSTATEs applications meet most (PostgreSQL "Error Codes"
#: appendix); other codes fall back to their class name.
SQLSTATE_CONDITIONS: Final[Mapping[str, str]] = {
    "0A000": "feature_not_supported",
    "08000": "connection_exception",
    "08003": "connection_does_not_exist",
    "08006": "connection_failure",
    "08P01": "protocol_violation",
    "21000": "cardinality_violation",
    "22001": "string_data_right_truncation",
    "22003": "numeric_value_out_of_range",
    "22007": "invalid_datetime_format",
    "22008": "datetime_field_overflow",
    "22012": "division_by_zero",
    "22023": "invalid_parameter_value",
    "22P02": "invalid_text_representation",
    "23000": "integrity_constraint_violation",
    "23502": "not_null_violation",
    "23503": "foreign_key_violation",
    "23505": "unique_violation",
    "23514": "check_violation",
    "23P01": "exclusion_violation",
    "24000": "invalid_cursor_state",
    "25001": "active_sql_transaction",
    "25P01": "no_active_sql_transaction",
    "25P02": "in_failed_sql_transaction",
    "25006": "read_only_sql_transaction",
    "26000": "invalid_sql_statement_name",
    "28000": "invalid_authorization_specification",
    "28P01": "invalid_password",
    "34000": "invalid_cursor_name",
    "3D000": "invalid_catalog_name",
    "3F000": "invalid_schema_name",
    "40001": "serialization_failure",
    "40P01": "deadlock_detected",
    "42501": "insufficient_privilege",
    "42601": "syntax_error",
    "42703": "undefined_column",
    "42704": "undefined_object",
    "42710": "duplicate_object",
    "42723": "duplicate_function",
    "42P01": "undefined_table",
    "42P02": "undefined_parameter",
    "42P05": "duplicate_prepared_statement",
    "42P06": "duplicate_schema",
    "42P07": "duplicate_table",
    "42883": "undefined_function",
    "42804": "datatype_mismatch",
    "53100": "disk_full",
    "53200": "out_of_memory",
    "53300": "too_many_connections",
    "54000": "program_limit_exceeded",
    "55000": "object_not_in_prerequisite_state",
    "55P03": "lock_not_available",
    "57014": "query_canceled",
    "57P01": "admin_shutdown",
    "57P02": "crash_shutdown",
    "57P03": "cannot_connect_now",
    "58030": "io_error",
    "P0001": "raise_exception",
    "XX000": "internal_error",
}


def condition_name(sqlstate: str) -> str:
    """The condition name of a SQLSTATE, else its class name, else ``unknown``."""
    state, error_class = sqlstate_label(sqlstate)
    return SQLSTATE_CONDITIONS.get(state, error_class)


# ------------------------------------------------------------------------------ settings
Protocol_ = Literal["http/protobuf", "grpc"]


@dataclass(frozen=True, slots=True, kw_only=True)
class TracingSettings:
    """dbproxy's own tracing settings (``config.py`` fills them); ``None`` means "from the
    standard ``OTEL_*`` variable, else the default"."""

    #: turn tracing on even without an endpoint (then OTLP's default endpoint is used)
    trace: bool = False
    #: OTLP endpoint; HTTP: a URL without a path gets ``/v1/traces``
    otlp_endpoint: str | None = None
    otlp_protocol: str | None = None  # "http/protobuf" or "grpc"
    service_name: str | None = None
    #: fraction of statements without trace context that get a root span
    untraced_ratio: float | None = None
    #: statements at least this slow always get a span (partial traces under an
    #: unsampled parent); None: off
    slow_ms: float | None = None
    #: a SERVER span for the hop, parent of the CLIENT span
    proxy_span: bool = False
    #: opt-in ``db.response.returned_rows``
    record_rows: bool = False
    #: bounded export queue; spans beyond it are dropped and counted
    queue_size: int | None = None
    #: longest ``db.query.text`` (and any attribute) kept, in characters
    max_attribute_length: int = 4096


@dataclass(frozen=True, slots=True)
class SamplingPolicy:
    """Which statements get a span (see the module docstring)."""

    root_ratio: float = 0.0
    respect_parent: bool = True
    slow_ns: int | None = None

    @property
    def ratio_bound(self) -> int:
        # TraceIdRatioBased's rule: the low 64 bits of the trace id below ratio * 2**64
        return round(self.root_ratio * (1 << 64))


def sampling_policy(settings: TracingSettings, env: Mapping[str, str]) -> SamplingPolicy:
    """The policy from ``OTEL_TRACES_SAMPLER``/``_ARG`` and the dbproxy settings (which
    win).  The default is ``parentbased`` with no root spans."""
    name = env.get("OTEL_TRACES_SAMPLER", "").strip().lower()
    arg = env.get("OTEL_TRACES_SAMPLER_ARG", "").strip()
    ratio = 0.0
    respect_parent = True
    if name:
        table: dict[str, tuple[bool, float | None]] = {
            "always_on": (False, 1.0),
            "always_off": (False, 0.0),
            "traceidratio": (False, None),
            "parentbased_always_on": (True, 1.0),
            "parentbased_always_off": (True, 0.0),
            "parentbased_traceidratio": (True, None),
        }
        if name not in table:
            raise ConfigError(
                f"invalid OTEL_TRACES_SAMPLER {name!r}: expected one of {', '.join(table)}"
            )
        respect_parent, fixed = table[name]
        ratio = _ratio(arg or "1.0", "OTEL_TRACES_SAMPLER_ARG") if fixed is None else fixed
    if settings.untraced_ratio is not None:
        ratio = _ratio(str(settings.untraced_ratio), "trace_untraced_ratio")
    slow_ns = None
    if settings.slow_ms is not None:
        if settings.slow_ms < 0:
            raise ConfigError(f"invalid trace_slow_ms {settings.slow_ms!r}: must be >= 0")
        slow_ns = round(settings.slow_ms * 1_000_000)
    return SamplingPolicy(root_ratio=ratio, respect_parent=respect_parent, slow_ns=slow_ns)


def _ratio(text: str, origin: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"invalid {origin} {text!r}: not a number") from None
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"invalid {origin} {text!r}: must be between 0 and 1")
    return value


# ------------------------------------------------------------------------------ counting
class SpanCounts:
    """Counters of the span pipeline (read by the Prometheus collector)."""

    __slots__ = ("created", "dropped", "export_failed", "exported")

    def __init__(self) -> None:
        self.created = 0
        self.exported = 0
        self.export_failed = 0
        self.dropped = 0


class _ProcessorCounts:
    """``ProcessorMetricsT`` of the SDK's batch processor, feeding :class:`SpanCounts`."""

    def __init__(self, counts: SpanCounts) -> None:
        self._counts = counts

    def register_queue_size(self, get_queue_size: Callable[[], int]) -> None:
        pass

    def drop_items(self, count: int, error_type: str = "queue_full") -> None:
        self._counts.dropped += count

    def finish_items(self, count: int) -> None:
        pass


class _CountingExporter(SpanExporter):
    """Counts what the wrapped exporter delivered or failed to deliver."""

    def __init__(self, inner: SpanExporter, counts: SpanCounts) -> None:
        self._inner = inner
        self._counts = counts

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            result = self._inner.export(spans)
        except Exception:
            self._counts.export_failed += len(spans)
            raise
        if result is SpanExportResult.SUCCESS:
            self._counts.exported += len(spans)
        else:
            self._counts.export_failed += len(spans)
        return result

    def shutdown(self) -> None:
        self._inner.shutdown()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return self._inner.force_flush(timeout_millis)


class CountingBatchSpanProcessor(SpanProcessor):
    """The SDK's batch processor (bounded queue, its own export thread) with drops and
    exports counted: the public ``BatchSpanProcessor`` only reports drops to a global
    meter provider behind an environment switch."""

    def __init__(
        self,
        exporter: SpanExporter,
        counts: SpanCounts,
        *,
        max_queue_size: int = 2048,
        schedule_delay_millis: float = 1000.0,
        max_export_batch_size: int = 512,
        export_timeout_millis: float = 30_000.0,
    ) -> None:
        max_export_batch_size = min(max_export_batch_size, max_queue_size)
        self._processor: BatchProcessor[ReadableSpan] = BatchProcessor(
            _CountingExporter(exporter, counts),
            schedule_delay_millis,
            max_export_batch_size,
            export_timeout_millis,
            max_queue_size,
            "Span",
            _ProcessorCounts(counts),
        )

    def on_start(self, span: SdkSpan, parent_context: Context | None = None) -> None:
        pass

    def on_end(self, span: ReadableSpan) -> None:
        if span.context is not None and span.context.trace_flags.sampled:
            self._processor.emit(span)

    def shutdown(self) -> None:
        self._processor.shutdown()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return bool(self._processor.force_flush(timeout_millis))


# ------------------------------------------------------------------------------ spans
_EMPTY_CONTEXT: Final = Context()
_PROPAGATOR: Final = TraceContextTextMapPropagator()
_LOW64: Final = (1 << 64) - 1
_SAMPLED: Final = TraceFlags(TraceFlags.SAMPLED)
_NO_TRACE_STATE: Final = TraceState()
_UNSET: Final = Status(StatusCode.UNSET)


def _split_host_port(address: str) -> tuple[str, int | None]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        return address, None
    return host.strip("[]"), int(port)


class SpanBuilder:
    """The drain consumer: events in, spans out, a note per statement for the aggregator.

    Spans are built as finished :class:`ReadableSpan` s and handed to the batch
    processor directly, not through ``Tracer.start_span``/``Span.end``: the SDK's live
    span (locks, attribute validation of every value, sampler and processor fan-out)
    costs ≈ 45 µs per statement here and buys nothing for a span whose start, end and
    attributes are all known at once.  What the SDK would have done is done here: ids
    from the same generator rule (random, non-zero), the parent's trace id and
    tracestate, the provider's resource and limits (attribute length), sampled flag set
    (the builder has already decided).  Export, batching and OTEL_* configuration stay
    the SDK's.

    Not thread-safe (one drain task); shares the App's fingerprinter, whose cache is
    therefore only touched from that task.
    """

    #: sessions whose SessionClosed was never seen are forgotten beyond this many
    MAX_SESSIONS: Final = 100_000

    def __init__(
        self,
        processor: SpanProcessor,
        fingerprinter: SupportsFingerprint,
        policy: SamplingPolicy,
        *,
        resource: Resource,
        server_address: str,
        server_port: int,
        counts: SpanCounts | None = None,
        proxy_span: bool = False,
        record_rows: bool = False,
        max_attribute_length: int | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._on_end = processor.on_end
        self._resource = resource
        self._scope = InstrumentationScope("dbproxy", __version__)
        self._fingerprint = fingerprinter.fingerprint
        self._policy = policy
        self._bound = policy.ratio_bound
        self._slow_ns = policy.slow_ns
        self._server_address = server_address
        self._server_port = server_port
        self.counts = counts if counts is not None else SpanCounts()
        self._proxy_span = proxy_span
        self._record_rows = record_rows
        self._max_len = max_attribute_length
        self._rng = rng or random.Random()
        self._clients: dict[int, tuple[str, int | None]] = {}
        #: (session id, start ns, end ns) -> what blocked that statement on a lock, if
        #: anything (set by the composition root when the activity sampler runs)
        self.blocked_by: Callable[[int, int, int], str | None] | None = None

    def consume(
        self, events: Sequence[Event], only: Sequence[int] | None = None
    ) -> dict[int, StatementNote]:
        """Build the spans of a batch; returns notes keyed by index in ``events``.
        ``only``: the indices to look at (:meth:`candidates`), default all."""
        notes: dict[int, StatementNote] = {}
        finished, failed = StatementFinished, StatementFailed
        for i in range(len(events)) if only is None else only:
            ev = events[i]
            cls = type(ev)
            if cls is finished or cls is failed:
                note = self._statement(cast(StatementEvent, ev))
                if note is not None:
                    notes[i] = note
            elif cls is SessionOpened:
                opened = cast(SessionOpened, ev)
                if opened.client_address:
                    clients = self._clients
                    if len(clients) >= self.MAX_SESSIONS:
                        del clients[next(iter(clients))]
                    clients[opened.session_id] = _split_host_port(opened.client_address)
            elif cls is SessionClosed:
                self._clients.pop(cast(SessionClosed, ev).session_id, None)
        return notes

    def candidates(self, events: list[Event]) -> list[int]:
        """The indices of ``events`` that :meth:`consume` can act on (a superset; see
        :mod:`dbproxy.observe.span_filter`): cheap, so it runs on the event loop."""
        slow = self._slow_ns
        return span_candidates(events, self._bound > 0, NEVER_SLOW if slow is None else slow)

    def _statement(self, st: StatementEvent) -> StatementNote | None:
        text = st.text
        fp: Fingerprint | None = None
        parent_sc = INVALID_SPAN_CONTEXT
        # cheap test first: most statements carry no trace context
        if st.text_in_batch and "traceparent" in text:
            fp = self._fingerprint(text)
            tags = fp.tags
            traceparent = tags.get("traceparent")
            if traceparent:
                carrier = {"traceparent": traceparent}
                tracestate = tags.get("tracestate")
                if tracestate:
                    carrier["tracestate"] = tracestate
                ctx = _PROPAGATOR.extract(carrier, context=_EMPTY_CONTEXT)
                parent_sc = get_current_span(ctx).get_span_context()
        slow = self._slow_ns is not None and st.duration_ns >= self._slow_ns
        if parent_sc.is_valid:
            if self._policy.respect_parent:
                sampled = parent_sc.trace_flags.sampled
            else:
                sampled = (parent_sc.trace_id & _LOW64) < self._bound
        else:
            bound = self._bound
            sampled = bound > 0 and self._rng.getrandbits(64) < bound
        if not (sampled or slow):
            return StatementNote(fp) if fp is not None else None
        if fp is None and text:
            fp = self._fingerprint(text)
        return self._span(st, fp, parent_sc if parent_sc.is_valid else None)

    def _new_id(self, bits: int) -> int:
        value = 0
        while not value:  # the SDK's RandomIdGenerator rule: never the invalid id 0
            value = self._rng.getrandbits(bits)
        return value

    def _child_of(self, parent: SpanContext | None) -> SpanContext:
        if parent is None:
            trace_id, trace_state = self._new_id(128), _NO_TRACE_STATE
        else:
            trace_id, trace_state = parent.trace_id, parent.trace_state
        return SpanContext(
            trace_id,
            self._new_id(64),
            is_remote=False,
            trace_flags=_SAMPLED,
            trace_state=trace_state,
        )

    def _span(
        self, st: StatementEvent, fp: Fingerprint | None, parent: SpanContext | None
    ) -> StatementNote:
        attributes: dict[str, AttributeValue] = {
            "db.system.name": "postgresql",
            "db.namespace": st.database,
            "server.address": self._server_address,
            "server.port": self._server_port,
        }
        if fp is not None:
            name = fp.summary or fp.operation
            query = fp.text
            if self._max_len is not None and len(query) > self._max_len:
                query = query[: self._max_len]
            attributes["db.query.text"] = query
            if fp.summary:
                attributes["db.query.summary"] = fp.summary
            attributes["dbproxy.fingerprint"] = fp.id
            attributes["dbproxy.kind"] = str(fp.kind.value)
            attributes["dbproxy.operation"] = fp.operation
            if fp.tables:
                attributes["dbproxy.tables"] = fp.tables
            tags = fp.tags
            if tags:
                for key in SPAN_TAGS:
                    value = tags.get(key)
                    if value is not None:
                        if self._max_len is not None and len(value) > self._max_len:
                            value = value[: self._max_len]
                        attributes[f"dbproxy.tag.{key}"] = value
        else:  # no SQL text: a fast-path function call or an unknown prepared statement
            name = "FUNCTION CALL" if st.protocol == "function" else "UNKNOWN"
            attributes["dbproxy.operation"] = name
        if self.blocked_by is not None:
            blocker = self.blocked_by(st.session_id, st.start_ns, st.end_ns)
            if blocker is not None:
                attributes["dbproxy.blocked_by"] = blocker
        client = self._clients.get(st.session_id)
        if client is not None:
            attributes["client.address"] = client[0]
            if client[1] is not None:
                attributes["client.port"] = client[1]
        status = _UNSET
        if type(st) is StatementFailed:
            sqlstate = sqlstate_label(st.error.sqlstate)[0]
            attributes["db.response.status_code"] = sqlstate
            attributes["error.type"] = sqlstate
            status = Status(StatusCode.ERROR, condition_name(sqlstate))
        elif self._record_rows:
            attributes["db.response.returned_rows"] = st.rows
        start = st.start_epoch_ns
        end = start + max(0, st.end_ns - st.start_ns)
        created = 1
        if self._proxy_span:
            server_attributes: dict[str, AttributeValue] = {
                "db.system.name": "postgresql",
                "db.namespace": st.database,
                **{k: v for k, v in attributes.items() if k.startswith("client.")},
            }
            server_sc = self._child_of(parent)
            self._emit(
                name,
                server_sc,
                parent=parent,
                kind=SpanKind.SERVER,
                attributes=server_attributes,
                status=status,
                start=start,
                end=end,
            )
            parent = server_sc
            created = 2
        sc = self._child_of(parent)
        self._emit(
            name,
            sc,
            parent=parent,
            kind=SpanKind.CLIENT,
            attributes=attributes,
            status=status,
            start=start,
            end=end,
        )
        self.counts.created += created
        return StatementNote(fp, format(sc.trace_id, "032x"), format(sc.span_id, "016x"))

    def _emit(
        self,
        name: str,
        context: SpanContext,
        *,
        parent: SpanContext | None,
        kind: SpanKind,
        attributes: dict[str, AttributeValue],
        status: Status,
        start: int,
        end: int,
    ) -> None:
        self._on_end(
            ReadableSpan(
                name=name,
                context=context,
                parent=parent,
                resource=self._resource,
                attributes=attributes,
                kind=kind,
                instrumentation_scope=self._scope,
                status=status,
                start_time=start,
                end_time=end,
            )
        )


# ------------------------------------------------------------------------------ wiring
@dataclass(slots=True)
class Tracing:
    """What the composition root holds when tracing is on."""

    provider: TracerProvider
    builder: SpanBuilder
    counts: SpanCounts
    #: where spans go, for the start-up log ("http/protobuf http://…/v1/traces")
    destination: str

    def consume(
        self, events: Sequence[Event], only: Sequence[int] | None = None
    ) -> dict[int, StatementNote]:
        return self.builder.consume(events, only)

    def candidates(self, events: list[Event]) -> list[int]:
        return self.builder.candidates(events)

    def force_flush(self, timeout_ms: int = 5_000) -> bool:
        return self.provider.force_flush(timeout_ms)

    def shutdown(self) -> None:
        """Export what is queued and stop the export thread (blocks: call it in a thread)."""
        self.provider.shutdown()


def _env(env: Mapping[str, str], *names: str) -> str | None:
    for name in names:
        value = env.get(name, "").strip()
        if value:
            return value
    return None


def tracing_enabled(settings: TracingSettings, env: Mapping[str, str]) -> bool:
    """On with ``--trace`` or an endpoint (dbproxy's or the standard variables), unless
    ``OTEL_SDK_DISABLED=true`` or ``OTEL_TRACES_EXPORTER=none``."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if env.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none":
        return False
    return bool(
        settings.trace
        or settings.otlp_endpoint
        or _env(env, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
    )


def _pairs(text: str) -> dict[str, str]:
    """``k=v,k2=v2`` with percent-encoded keys and values (headers, resource attributes)."""
    out: dict[str, str] = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        if sep and key.strip():
            out[unquote(key.strip())] = unquote(value.strip())
    return out


def build_resource(settings: TracingSettings, env: Mapping[str, str]) -> Resource:
    """service.name: the setting, else ``OTEL_SERVICE_NAME``, else ``service.name`` of
    ``OTEL_RESOURCE_ATTRIBUTES``, else ``dbproxy``."""
    attributes: dict[str, AttributeValue] = {
        "telemetry.sdk.language": "python",
        "telemetry.sdk.name": "opentelemetry",
        "telemetry.sdk.version": otel_sdk_version,
        "service.version": __version__,
    }
    attributes.update(_pairs(env.get("OTEL_RESOURCE_ATTRIBUTES", "")))
    name = settings.service_name or _env(env, "OTEL_SERVICE_NAME")
    if name:
        attributes["service.name"] = name
    attributes.setdefault("service.name", "dbproxy")
    return Resource(attributes)


def _int_env(env: Mapping[str, str], name: str, default: int) -> int:
    raw = _env(env, name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"invalid {name} {raw!r}: not an integer") from None
    if value < 1:
        raise ConfigError(f"invalid {name} {raw!r}: must be >= 1")
    return value


def build_exporter(settings: TracingSettings, env: Mapping[str, str]) -> tuple[SpanExporter, str]:
    """The OTLP exporter, every option passed explicitly from ``env`` (the exporters'
    own environment reads then find nothing left to decide)."""
    protocol = (
        settings.otlp_protocol
        or _env(env, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    ).lower()
    if protocol not in ("http/protobuf", "grpc"):
        raise ConfigError(f"unsupported OTLP protocol {protocol!r}: expected http/protobuf or grpc")
    headers = _pairs(
        _env(env, "OTEL_EXPORTER_OTLP_TRACES_HEADERS", "OTEL_EXPORTER_OTLP_HEADERS") or ""
    )
    # the specification says milliseconds (the Python exporters take seconds)
    timeout_s = _int_env(env, "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", 0) / 1000 or None
    if timeout_s is None:
        timeout_s = _int_env(env, "OTEL_EXPORTER_OTLP_TIMEOUT", 10_000) / 1000
    compression = (
        _env(env, "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "OTEL_EXPORTER_OTLP_COMPRESSION")
        or "none"
    ).lower()
    if compression not in ("none", "gzip"):
        raise ConfigError(f"unsupported OTLP compression {compression!r}: expected none or gzip")
    certificate = _env(
        env, "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", "OTEL_EXPORTER_OTLP_CERTIFICATE"
    )
    client_key = _env(env, "OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY", "OTEL_EXPORTER_OTLP_CLIENT_KEY")
    client_cert = _env(
        env, "OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE", "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE"
    )
    traces_endpoint = _env(env, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    base_endpoint = _env(env, "OTEL_EXPORTER_OTLP_ENDPOINT")

    if protocol == "grpc":
        import grpc  # type: ignore[import-untyped]
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
            OTLPSpanExporter as GrpcExporter,
        )

        endpoint = settings.otlp_endpoint or traces_endpoint or base_endpoint
        endpoint = endpoint or "http://localhost:4317"
        insecure_raw = _env(
            env, "OTEL_EXPORTER_OTLP_TRACES_INSECURE", "OTEL_EXPORTER_OTLP_INSECURE"
        )
        scheme = urlparse(endpoint).scheme
        insecure = insecure_raw.lower() == "true" if insecure_raw is not None else scheme != "https"
        credentials = None
        if not insecure:
            credentials = grpc.ssl_channel_credentials(
                root_certificates=_read(certificate),
                private_key=_read(client_key),
                certificate_chain=_read(client_cert),
            )
        grpc_exporter = GrpcExporter(
            endpoint=endpoint,
            insecure=insecure,
            credentials=credentials,
            headers=headers,
            timeout=timeout_s,
            compression=grpc.Compression.Gzip
            if compression == "gzip"
            else grpc.Compression.NoCompression,
        )
        return grpc_exporter, f"grpc {endpoint}"

    if settings.otlp_endpoint:
        endpoint = settings.otlp_endpoint
        if urlparse(endpoint).path in ("", "/"):
            endpoint = endpoint.rstrip("/") + "/v1/traces"
    elif traces_endpoint:
        endpoint = traces_endpoint
    else:
        endpoint = (base_endpoint or "http://localhost:4318").rstrip("/") + "/v1/traces"
    # dbproxy's own encoder and client (export/otlp.py): a third of the SDK's CPU per span
    try:
        http_exporter = OtlpHttpSpanExporter(
            endpoint,
            certificate_file=certificate,
            client_key_file=client_key,
            client_certificate_file=client_cert,
            headers=headers,
            timeout_s=timeout_s,
            compression=compression,
        )
    except (ValueError, OSError, ssl.SSLError) as exc:
        raise ConfigError(f"invalid OTLP endpoint or TLS files for {endpoint}: {exc}") from None
    return http_exporter, f"http/protobuf {endpoint}"


def _read(path: str | None) -> bytes | None:
    if path is None:
        return None
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None


def build_tracing(
    settings: TracingSettings,
    env: Mapping[str, str],
    *,
    fingerprinter: SupportsFingerprint,
    upstream_host: str,
    upstream_port: int,
    exporter: SpanExporter | None = None,
    rng: random.Random | None = None,
) -> Tracing | None:
    """Everything tracing needs, or None when tracing is off (nothing configured).

    ``exporter`` replaces the OTLP exporter (tests pass an in-memory one; it also turns
    tracing on).  Raises :class:`ConfigError` on bad settings or variables.
    """
    if exporter is None and not tracing_enabled(settings, env):
        return None
    policy = sampling_policy(settings, env)
    if exporter is not None:
        destination = type(exporter).__name__
    else:
        exporter, destination = build_exporter(settings, env)
    counts = SpanCounts()
    queue_size = settings.queue_size or _int_env(env, "OTEL_BSP_MAX_QUEUE_SIZE", 2048)
    processor = CountingBatchSpanProcessor(
        exporter,
        counts,
        max_queue_size=queue_size,
        schedule_delay_millis=_int_env(env, "OTEL_BSP_SCHEDULE_DELAY", 1000),
        max_export_batch_size=_int_env(env, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512),
        export_timeout_millis=_int_env(env, "OTEL_BSP_EXPORT_TIMEOUT", 30_000),
    )
    limit = settings.max_attribute_length
    provider = TracerProvider(
        # the SpanBuilder samples; the SDK must record what it is handed
        sampler=ALWAYS_ON,
        resource=build_resource(settings, env),
        shutdown_on_exit=False,  # the App shuts it down; no atexit hook
        span_limits=SpanLimits(
            max_attributes=64,
            max_events=16,
            max_links=16,
            max_span_attributes=64,
            max_event_attributes=16,
            max_link_attributes=16,
            max_attribute_length=limit,
            max_span_attribute_length=limit,
        ),
    )
    provider.add_span_processor(processor)
    builder = SpanBuilder(
        processor,
        fingerprinter,
        policy,
        resource=provider.resource,
        max_attribute_length=limit,
        server_address=upstream_host,
        server_port=upstream_port,
        counts=counts,
        proxy_span=settings.proxy_span,
        record_rows=settings.record_rows,
        rng=rng,
    )
    return Tracing(provider=provider, builder=builder, counts=counts, destination=destination)
