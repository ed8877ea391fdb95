"""Spans from statement events: protocol bytes through the real session machine, a local
TracerProvider with an in-memory exporter (no global OpenTelemetry state)."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client import CollectorRegistry
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_om

from dbproxy.errors import ConfigError
from dbproxy.export.otel import (
    Tracing,
    TracingSettings,
    build_exporter,
    build_resource,
    build_tracing,
    condition_name,
    sampling_policy,
    tracing_enabled,
)
from dbproxy.export.prometheus import DbproxyCollector, render
from dbproxy.observe.aggregator import Aggregator
from dbproxy.protocol.events import Event
from dbproxy.protocol.session import Session
from dbproxy.sql.cache import Fingerprinter
from tests.unit.protocol import wire as w

EPOCH = 1_700_000_000_000_000_000
MS = 1_000_000
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
SAMPLED = f"00-{TRACE_ID}-{PARENT_ID}-01"
UNSAMPLED = f"00-{TRACE_ID}-{PARENT_ID}-00"
SENTINEL = "s3cr3t-sentinel"


class Conn:
    """One client connection played through the real session state machine."""

    def __init__(self, events: list[Event], session_id: int = 1, peer: str = "") -> None:
        self.session = Session(session_id=session_id, emit=events.append, epoch_offset_ns=EPOCH)
        self.session.client_address = peer
        self.t = 1_000
        self.client(w.startup("alice", "shop", application_name="checkout"))
        self.server(w.server_hello())

    def client(self, data: bytes, dt: int = 1_000) -> None:
        self.t += dt
        self.session.client_data(data, self.t)

    def server(self, data: bytes, dt: int = 1_000) -> None:
        self.t += dt
        self.session.server_data(data, self.t)

    def query(self, sql: str, *, error: str | None = None, took_ns: int = MS) -> None:
        self.client(w.query(sql))
        if error is not None:
            answer = w.error(error, f"Key (v)=({SENTINEL}) already exists.")
        else:
            answer = w.row_description("a") + w.data_row(b"1") + w.command_complete("SELECT 1")
        self.server(answer + w.ready(), took_ns)

    def extended(self, sql: str, *, name: str = "", took_ns: int = MS) -> None:
        self.client(w.parse(sql, name) + w.bind(name) + w.execute() + w.sync())
        answer = w.parse_complete() + w.bind_complete()
        self.server(answer + w.data_row(b"1") + w.command_complete("SELECT 1") + w.ready(), took_ns)

    def execute_named(self, name: str, took_ns: int = MS) -> None:
        self.client(w.bind(name) + w.execute() + w.sync())
        answer = w.bind_complete() + w.data_row(b"1") + w.command_complete("SELECT 1")
        self.server(answer + w.ready(), took_ns)


class Traced:
    """A tracing pipeline with an in-memory exporter, and the events to feed it."""

    def __init__(self, env: dict[str, str] | None = None, **settings: object) -> None:
        self.exporter = InMemorySpanExporter()
        self.fingerprinter = Fingerprinter()
        tracing = build_tracing(
            TracingSettings(**settings),  # type: ignore[arg-type]
            env or {},
            fingerprinter=self.fingerprinter,
            upstream_host="db.internal",
            upstream_port=5432,
            exporter=self.exporter,
        )
        assert tracing is not None
        self.tracing: Tracing = tracing
        self.events: list[Event] = []

    def conn(self, session_id: int = 1, peer: str = "10.1.2.3:50000") -> Conn:
        return Conn(self.events, session_id, peer)

    def spans(self) -> list[ReadableSpan]:
        events = list(self.events)
        self.events.clear()
        # as the App drains: only what the cheap filter picks reaches the builder
        self.notes = self.tracing.consume(events, self.tracing.candidates(events))
        self.batch = events
        assert self.tracing.force_flush()
        spans = list(self.exporter.get_finished_spans())
        self.exporter.clear()
        return spans


@pytest.fixture
def traced() -> Iterator[Traced]:
    t = Traced()
    yield t
    t.tracing.shutdown()


def statement(sql: str) -> str:
    return f"{sql} /*traceparent='{SAMPLED}'*/"


def test_span_per_statement_with_the_parent_from_sqlcommenter(traced: Traced) -> None:
    conn = traced.conn()
    conn.query(statement("SELECT * FROM users WHERE id = 42"), took_ns=3 * MS)
    (span,) = traced.spans()
    ev = traced.batch[-1]
    assert span.name == "SELECT users"
    assert span.kind is SpanKind.CLIENT
    assert format(span.context.trace_id, "032x") == TRACE_ID
    assert span.parent is not None and format(span.parent.span_id, "016x") == PARENT_ID
    assert span.parent.is_remote
    assert span.start_time == ev.start_epoch_ns  # type: ignore[union-attr]
    assert span.end_time == ev.start_epoch_ns + 3 * MS  # type: ignore[union-attr]
    attrs = dict(span.attributes or {})
    fp = traced.fingerprinter.fingerprint("SELECT * FROM users WHERE id = 42")
    assert attrs == {
        "db.system.name": "postgresql",
        "db.namespace": "shop",
        "db.query.text": "SELECT * FROM users WHERE id = $1",
        "db.query.summary": "SELECT users",
        "server.address": "db.internal",
        "server.port": 5432,
        "client.address": "10.1.2.3",
        "client.port": 50000,
        "dbproxy.fingerprint": fp.id,
        "dbproxy.kind": "read",
        "dbproxy.operation": "SELECT",
        "dbproxy.tables": ("users",),
    }
    assert span.status.status_code is StatusCode.UNSET
    assert span.resource.attributes["service.name"] == "dbproxy"
    # the note for the aggregator: same fingerprint, the span's ids
    (note,) = traced.notes.values()
    assert note.fingerprint is not None and note.fingerprint.id == fp.id
    assert note.trace_id == TRACE_ID
    assert note.span_id == format(span.context.span_id, "016x")


def test_comment_first_url_encoded_tracestate_and_tags(traced: Traced) -> None:
    conn = traced.conn(peer="[::1]:6000")
    conn.extended(
        f"/*action='index',controller='users',route='%2Fusers%2F%3Aid',"
        f"traceparent='{SAMPLED}',tracestate='congo%3Dt61rcWkgMzE%2Crojo%3D00f067aa0ba902b7'*/ "
        "SELECT name FROM users WHERE id = $1"
    )
    (span,) = traced.spans()
    assert format(span.context.trace_id, "032x") == TRACE_ID
    assert span.context.trace_state.to_header() == "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"
    attrs = dict(span.attributes or {})
    assert attrs["dbproxy.tag.route"] == "/users/:id"
    assert attrs["dbproxy.tag.controller"] == "users"
    assert attrs["dbproxy.tag.action"] == "index"
    assert attrs["client.address"] == "::1"
    assert not any("traceparent" in str(v) or "tracestate" in k for k, v in attrs.items())


def test_unsampled_parent_gives_no_span_and_no_context_no_span(traced: Traced) -> None:
    conn = traced.conn()
    conn.query(f"SELECT 1 /*traceparent='{UNSAMPLED}'*/")
    conn.query("SELECT 2")
    conn.query("SELECT 3 /*traceparent='garbage'*/")
    assert traced.spans() == []
    # the traced statement's fingerprint still reaches the aggregator
    assert [n.trace_id for n in traced.notes.values()] == ["", ""]


def test_slow_statements_get_spans_even_under_an_unsampled_parent() -> None:
    t = Traced(slow_ms=50)
    try:
        conn = t.conn()
        conn.query(f"SELECT pg_sleep(0.1) /*traceparent='{UNSAMPLED}'*/", took_ns=100 * MS)
        conn.query(f"SELECT 1 /*traceparent='{UNSAMPLED}'*/", took_ns=MS)
        conn.query("SELECT pg_sleep(0.2)", took_ns=200 * MS)
        partial, root = t.spans()
        assert format(partial.context.trace_id, "032x") == TRACE_ID  # a partial trace
        assert partial.parent is not None and format(partial.parent.span_id, "016x") == PARENT_ID
        assert root.parent is None  # no context: a root span
    finally:
        t.tracing.shutdown()


def test_untraced_ratio_makes_root_spans() -> None:
    t = Traced(untraced_ratio=1.0)
    try:
        t.conn().query("SELECT 1")
        (span,) = t.spans()
        assert span.parent is None
    finally:
        t.tracing.shutdown()


def test_named_statement_executed_later_does_not_reuse_the_old_traceparent(
    traced: Traced,
) -> None:
    conn = traced.conn()
    conn.extended(statement("SELECT * FROM users WHERE id = $1"), name="s1")
    conn.execute_named("s1")
    first, *rest = traced.spans()
    assert format(first.context.trace_id, "032x") == TRACE_ID
    assert rest == []  # the later execution has no context: no span (ratio 0)
    assert len(traced.batch) > 0


def test_error_status_sqlstate_and_no_message_anywhere(traced: Traced) -> None:
    conn = traced.conn()
    conn.query(statement(f"INSERT INTO t (v) VALUES ('{SENTINEL}')"), error="23505")
    (span,) = traced.spans()
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == "unique_violation"
    attrs = dict(span.attributes or {})
    assert attrs["db.response.status_code"] == "23505"
    assert attrs["error.type"] == "23505"
    assert attrs["db.query.text"] == "INSERT INTO t(v) VALUES ($1)"
    assert SENTINEL not in repr(span.to_json())
    assert span.events == ()


def test_condition_names() -> None:
    assert condition_name("40P01") == "deadlock_detected"
    assert condition_name("22P05") == "data_exception"  # class fallback
    assert condition_name("not a state") == "unknown"


def test_proxy_span_is_the_parent_of_the_client_span() -> None:
    t = Traced(proxy_span=True, record_rows=True)
    try:
        t.conn().query(statement("SELECT 1"))
        client, server = sorted(t.spans(), key=lambda s: s.kind is SpanKind.SERVER)
        assert server.kind is SpanKind.SERVER and client.kind is SpanKind.CLIENT
        assert server.parent is not None and format(server.parent.span_id, "016x") == PARENT_ID
        assert client.parent is not None and client.parent.span_id == server.context.span_id
        assert (client.start_time, client.end_time) == (server.start_time, server.end_time)
        assert dict(client.attributes or {})["db.response.returned_rows"] == 1
        assert t.tracing.counts.created == 2
    finally:
        t.tracing.shutdown()


def test_exemplars_reach_the_histogram_and_openmetrics(traced: Traced) -> None:
    conn = traced.conn()
    conn.query(statement("SELECT * FROM users WHERE id = 1"), took_ns=3 * MS)
    conn.query("SELECT * FROM users WHERE id = 2", took_ns=20 * MS)  # no span
    (span,) = traced.spans()
    aggregator = Aggregator(fingerprinter=traced.fingerprinter)
    aggregator.consume(traced.batch, traced.notes)
    (q,) = aggregator.snapshot().queries
    assert q.calls == 2
    traced_bucket = [e for e in q.duration.exemplars if e is not None]
    assert len(traced_bucket) == 1
    (ex,) = traced_bucket
    assert (ex.trace_id, ex.span_id) == (TRACE_ID, format(span.context.span_id, "016x"))
    assert ex.value_s == pytest.approx(0.003)
    assert ex.timestamp_s == pytest.approx(span.end_time / 1e9)  # type: ignore[operator]
    # folded into OTHER, the exemplar survives
    (folded,) = aggregator.snapshot(top=0).queries
    assert [e for e in folded.duration.exemplars if e is not None] == [ex]

    registry = CollectorRegistry()
    registry.register(DbproxyCollector(aggregator, spans=traced.tracing.counts))
    body, content_type = render(registry, "application/openmetrics-text")
    assert content_type.startswith("application/openmetrics-text")
    text = body.decode()
    found = [
        s.exemplar
        for family in parse_om(text)  # type: ignore[no-untyped-call]
        for s in family.samples
        if s.name == "dbproxy_query_duration_seconds_bucket" and s.exemplar is not None
    ]
    assert len(found) == 1
    assert found[0].labels == {"trace_id": TRACE_ID, "span_id": ex.span_id}
    assert "dbproxy_spans_created_total 1.0" in text
    plain, _ = render(registry, None)
    assert b"trace_id" not in plain  # text 0.0.4 has no exemplars


class BlockingExporter(SpanExporter):
    def __init__(self) -> None:
        self.release = threading.Event()
        self.exported = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.release.wait(10)
        self.exported += len(spans)
        return SpanExportResult.SUCCESS


def test_a_full_queue_drops_and_counts() -> None:
    exporter = BlockingExporter()
    tracing = build_tracing(
        TracingSettings(queue_size=4, untraced_ratio=1.0),
        {"OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "2", "OTEL_BSP_SCHEDULE_DELAY": "10"},
        fingerprinter=Fingerprinter(),
        upstream_host="db",
        upstream_port=5432,
        exporter=exporter,
    )
    assert tracing is not None
    events: list[Event] = []
    conn = Conn(events)
    for i in range(40):
        conn.query(f"SELECT {i}")
    tracing.consume(events)
    counts = tracing.counts
    assert counts.created == 40
    assert counts.dropped > 0
    exporter.release.set()
    tracing.shutdown()
    assert counts.exported == exporter.exported
    # The SDK's emit() checks "queue full" and then appends without a lock: when its export
    # thread takes a batch in between, a span is counted as dropped yet still exported.
    # So the drop count may exceed the true losses by the batches taken meanwhile (≤ 2 here).
    assert 0 <= counts.exported - (40 - counts.dropped) <= 2
    assert counts.export_failed == 0


# --- configuration ---------------------------------------------------------------------
def test_off_unless_configured() -> None:
    off = TracingSettings()
    assert not tracing_enabled(off, {})
    assert tracing_enabled(TracingSettings(trace=True), {})
    assert tracing_enabled(off, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"})
    assert tracing_enabled(off, {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/x"})
    assert not tracing_enabled(TracingSettings(trace=True), {"OTEL_SDK_DISABLED": "true"})
    assert not tracing_enabled(TracingSettings(trace=True), {"OTEL_TRACES_EXPORTER": "none"})
    assert (
        build_tracing(off, {}, fingerprinter=Fingerprinter(), upstream_host="h", upstream_port=1)
        is None
    )


def test_sampler_variables_and_settings() -> None:
    def policy(env: dict[str, str], **kw: object) -> tuple[float, bool]:
        p = sampling_policy(TracingSettings(**kw), env)  # type: ignore[arg-type]
        return p.root_ratio, p.respect_parent

    assert policy({}) == (0.0, True)
    assert policy({"OTEL_TRACES_SAMPLER": "parentbased_always_on"}) == (1.0, True)
    assert policy({"OTEL_TRACES_SAMPLER": "always_on"}) == (1.0, False)
    assert policy(
        {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.25"}
    ) == (0.25, True)
    assert policy({"OTEL_TRACES_SAMPLER": "always_on"}, untraced_ratio=0.5) == (0.5, False)
    with pytest.raises(ConfigError, match="OTEL_TRACES_SAMPLER"):
        policy({"OTEL_TRACES_SAMPLER": "jaeger_remote"})
    with pytest.raises(ConfigError, match="between 0 and 1"):
        policy({}, untraced_ratio=2.0)


def test_exporter_and_resource_from_the_given_environment_only() -> None:
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318/",
        "OTEL_EXPORTER_OTLP_HEADERS": "authorization=Bearer%20abc,x-tenant=t1",
        "OTEL_EXPORTER_OTLP_TIMEOUT": "2500",
        "OTEL_SERVICE_NAME": "orders-db-proxy",
        "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment.name=prod,service.name=ignored",
    }
    exporter, destination = build_exporter(TracingSettings(), env)
    assert destination == "http/protobuf http://collector:4318/v1/traces"
    exporter.shutdown()
    _, destination = build_exporter(TracingSettings(otlp_endpoint="http://tempo:4318"), {})
    assert destination == "http/protobuf http://tempo:4318/v1/traces"
    grpc_exporter, destination = build_exporter(
        TracingSettings(otlp_protocol="grpc", otlp_endpoint="http://tempo:4317"), {}
    )
    assert destination == "grpc http://tempo:4317"
    grpc_exporter.shutdown()
    with pytest.raises(ConfigError, match="http/json"):
        build_exporter(TracingSettings(), {"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"})
    resource = build_resource(TracingSettings(), env)
    assert resource.attributes["service.name"] == "orders-db-proxy"
    assert resource.attributes["deployment.environment.name"] == "prod"
    assert build_resource(TracingSettings(service_name="x"), env).attributes["service.name"] == "x"


def test_spans_are_built_as_the_sdk_would_build_them() -> None:
    """Spans skip Tracer.start_span (cost); what the SDK would set is set here."""
    t = Traced(max_attribute_length=40, untraced_ratio=1.0)
    conn = t.conn()
    conn.query("SELECT " + ", ".join(f"col_{i}" for i in range(30)) + " FROM wide_table")
    conn.query(statement("SELECT 1"))
    root, child = t.spans()
    for span in (root, child):
        assert span.instrumentation_scope is not None
        assert span.instrumentation_scope.name == "dbproxy"
        assert span.context.trace_flags.sampled and not span.context.is_remote
        assert span.context.span_id != 0 and span.end_time is not None
        assert span.start_time is not None and span.end_time >= span.start_time
        assert span.status.status_code is StatusCode.UNSET
    # a root span: new non-zero trace id, no parent; the query text cut to the limit
    assert root.parent is None and root.context.trace_id != 0
    text = root.attributes["db.query.text"]  # type: ignore[index]
    assert isinstance(text, str) and len(text) == 40 and text.startswith("SELECT col_0")
    # a child: the parent's trace id, a span id of its own
    assert child.parent is not None and child.context.trace_id == int(TRACE_ID, 16)
    assert child.context.span_id != int(PARENT_ID, 16)
    t.tracing.shutdown()


@pytest.mark.parametrize(
    "settings",
    [{}, {"slow_ms": 50}, {"untraced_ratio": 1.0}, {"untraced_ratio": 0.5, "slow_ms": 0}],
    ids=["default", "slow", "all", "ratio-and-slow-0"],
)
def test_the_candidate_filter_drops_only_what_would_get_no_span_or_note(
    settings: dict[str, object],
) -> None:
    # every kind of statement the builder treats differently, through the real session
    t = Traced(**settings)
    try:
        conn = t.conn()
        conn.query(statement("SELECT 1"), took_ns=MS)  # sampled parent
        conn.query(f"SELECT 2 /*traceparent='{UNSAMPLED}'*/", took_ns=MS)  # note, no span
        conn.query("SELECT 3", took_ns=100 * MS)  # slow, no context
        conn.query("SELECT 4", took_ns=MS)  # nothing
        conn.query("INSERT INTO t VALUES (1)", error="23505", took_ns=MS)
        conn.extended(statement("SELECT 5"))
        conn.execute_named("")  # the Parse text's comment is not this batch's
        t.conn(session_id=2, peer="10.0.0.9:4000").query(statement("SELECT 6"))
        events = list(t.events)
        picked = t.tracing.candidates(events)
        statements = [i for i, ev in enumerate(events) if "Statement" in type(ev).__name__]
        if settings.get("untraced_ratio"):
            assert set(statements) <= set(picked)
        else:  # the plain statements are not looked at
            assert statements[3] not in picked
        every = t.tracing.consume(events)
        assert t.tracing.force_flush()
        spans_every = sorted(s.name for s in t.exporter.get_finished_spans())
        t.exporter.clear()
        only = t.tracing.consume(events, picked)
        assert t.tracing.force_flush()
        spans_only = sorted(s.name for s in t.exporter.get_finished_spans())
        assert sorted(every) == sorted(only)
        assert [n.fingerprint for _, n in sorted(every.items())] == [
            n.fingerprint for _, n in sorted(only.items())
        ]
        assert spans_every == spans_only and len(spans_every) >= 2
        # the second session's client address was learned from its SessionOpened
        attrs = [dict(s.attributes or {}) for s in t.exporter.get_finished_spans()]
        assert any(a.get("client.address") == "10.0.0.9" for a in attrs)
    finally:
        t.tracing.shutdown()
