"""Spans and exemplars end to end: real clients through the real proxy, spans exported
over OTLP/HTTP by the real exporter to a receiver in the test that decodes
``ExportTraceServiceRequest`` with opentelemetry-proto.

Until the App wires tracing from its configuration, :func:`traced_proxy` attaches
``build_tracing`` to a running App the way the wiring will: the span builder runs first
on each batch and hands its notes to the aggregator.
"""

from __future__ import annotations

import asyncio
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import asyncpg
import psycopg
import pytest
from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_om

from dbproxy.export.otel import Tracing
from dbproxy.pgcluster import PgServer
from dbproxy.protocol.events import Event, StatementFinished
from tests.fixtures.fix_proxy import RunningProxy, start_proxy

SENTINEL = "s3cr3t-sentinel"
HAND_TRACE = "0af7651916cd43dd8448eb211c80319c"
HAND_PARENT = "b7ad6b7169203331"


# --- a real OTLP/HTTP receiver ------------------------------------------------------------
@dataclass(frozen=True)
class ReceivedSpan:
    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    kind: int
    attributes: dict[str, Any]
    status_code: int
    status_message: str
    raw: bytes


class OtlpReceiver:
    def __init__(self) -> None:
        self.spans: list[ReceivedSpan] = []
        self.requests = 0
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                receiver._add(request)
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200 if self.path == "/v1/traces" else 404)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def _add(self, request: ExportTraceServiceRequest) -> None:
        spans = []
        for resource_spans in request.resource_spans:
            for scope_spans in resource_spans.scope_spans:
                for s in scope_spans.spans:
                    attrs: dict[str, Any] = {}
                    for kv in s.attributes:
                        which = kv.value.WhichOneof("value")
                        value = getattr(kv.value, which) if which else None
                        if which == "array_value":
                            value = tuple(v.string_value for v in kv.value.array_value.values)
                        attrs[kv.key] = value
                    spans.append(
                        ReceivedSpan(
                            trace_id=s.trace_id.hex(),
                            span_id=s.span_id.hex(),
                            parent_span_id=s.parent_span_id.hex(),
                            name=s.name,
                            kind=s.kind,
                            attributes=attrs,
                            status_code=s.status.code,
                            status_message=s.status.message,
                            raw=s.SerializeToString(),
                        )
                    )
        with self._lock:
            self.requests += 1
            self.spans.extend(spans)

    def take(self) -> list[ReceivedSpan]:
        with self._lock:
            spans, self.spans = self.spans, []
        return spans

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    r = OtlpReceiver()
    yield r
    r.close()


# --- the proxy with tracing attached ----------------------------------------------------------
class TracedProxy:
    def __init__(self, proxy: RunningProxy, tracing: Tracing, receiver: OtlpReceiver) -> None:
        self.proxy = proxy
        self.tracing = tracing
        self.receiver = receiver

    def spans(self) -> list[ReceivedSpan]:
        """Drain the sink through the span builder and aggregator, export, receive."""
        self.proxy.drain_now()
        assert self.tracing.force_flush()
        return self.receiver.take()

    def events(self) -> list[Event]:
        return self.proxy.collect()


@pytest.fixture
def traced_factory(pg_server: PgServer, receiver: OtlpReceiver) -> Iterator[Any]:
    started: list[TracedProxy] = []

    def make(**settings: Any) -> TracedProxy:
        # the App's own wiring, configured as a user would: dbproxy settings + OTEL_* env
        proxy = start_proxy(
            pg_server,
            otel_env={"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"{receiver.url}/v1/traces"},
            **settings,
        )
        tracing = proxy.app.tracing
        assert tracing is not None
        traced = TracedProxy(proxy, tracing, receiver)
        started.append(traced)
        return traced

    yield make
    for traced in started:
        traced.proxy.stop()  # the App shuts its tracer provider down


@pytest.fixture
def traced(traced_factory: Any) -> TracedProxy:
    result: TracedProxy = traced_factory()
    return result


def db_spans(spans: list[ReceivedSpan]) -> list[ReceivedSpan]:
    return [s for s in spans if s.attributes.get("db.system.name") == "postgresql"]


# --- psycopg 3 instrumented with opentelemetry-instrumentation-psycopg -------------------------
@pytest.fixture
def app_tracing() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    instrumentor = PsycopgInstrumentor()
    instrumentor.instrument(enable_commenter=True, tracer_provider=provider)
    try:
        yield provider, exporter
    finally:
        instrumentor.uninstrument()
        provider.shutdown()


@pytest.mark.parametrize("cursor_kind", ["server_binding", "client_binding"])
def test_psycopg_app_spans_continue_in_the_proxy(
    traced: TracedProxy,
    app_tracing: tuple[TracerProvider, InMemorySpanExporter],
    cursor_kind: str,
) -> None:
    provider, app_spans = app_tracing
    tracer = provider.get_tracer("test-app")
    cursor_factory = psycopg.ClientCursor if cursor_kind == "client_binding" else psycopg.Cursor
    with (
        psycopg.connect(traced.proxy.dsn(), autocommit=True, cursor_factory=cursor_factory) as conn,
        tracer.start_as_current_span("GET /users/:id"),
    ):
        conn.execute("SELECT %s::int AS id, now()", (42,)).fetchall()
    (request,) = [s for s in app_spans.get_finished_spans() if s.name == "GET /users/:id"]
    (client,) = [s for s in app_spans.get_finished_spans() if s.kind is SpanKind.CLIENT]
    (span,) = db_spans(traced.spans())
    assert span.trace_id == format(request.context.trace_id, "032x")
    assert span.parent_span_id == format(client.context.span_id, "016x")
    assert span.kind == 3  # SPAN_KIND_CLIENT
    assert span.attributes["db.query.text"] == "SELECT $1 AS id, now()"
    assert span.attributes["db.namespace"] == traced.proxy.pg.database
    assert span.attributes["server.port"] == traced.proxy.pg.port
    assert span.attributes["client.address"] == "127.0.0.1"
    (statement,) = [e for e in traced.events() if hasattr(e, "protocol")]
    expected = "simple" if cursor_kind == "client_binding" else "extended"
    assert statement.protocol == expected


def test_exemplars_link_slow_buckets_to_exported_spans(
    traced: TracedProxy, app_tracing: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    provider, _ = app_tracing
    tracer = provider.get_tracer("test-app")
    with psycopg.connect(traced.proxy.dsn(), autocommit=True) as conn:
        for _ in range(3):
            with tracer.start_as_current_span("request"):
                conn.execute("SELECT pg_sleep(0.02)").fetchall()
    spans = db_spans(traced.spans())
    assert len(spans) == 3
    request = urllib.request.Request(
        f"{traced.proxy.http_url}/metrics", headers={"Accept": "application/openmetrics-text"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        text = response.read().decode()
    exemplars = [
        s.exemplar
        for family in parse_om(text)  # type: ignore[no-untyped-call]
        for s in family.samples
        if s.name == "dbproxy_query_duration_seconds_bucket" and s.exemplar is not None
    ]
    assert exemplars
    exported = {(s.trace_id, s.span_id) for s in spans}
    for exemplar in exemplars:
        assert (exemplar.labels["trace_id"], exemplar.labels["span_id"]) in exported
        assert exemplar.value >= 0.02
    assert "dbproxy_spans_exported_total 3.0" in text
    assert "dbproxy_spans_dropped_total 0.0" in text


# --- asyncpg and psql with hand-written comments --------------------------------------------
def comment(sampled: bool = True) -> str:
    return f"/*traceparent='00-{HAND_TRACE}-{HAND_PARENT}-{'01' if sampled else '00'}'*/"


async def test_asyncpg_comment_at_the_end_and_at_the_start(traced: TracedProxy) -> None:
    conn = await asyncpg.connect(traced.proxy.dsn())
    try:
        await conn.fetch(f"SELECT $1::int AS a {comment()}", 1)
        await conn.fetch(f"{comment()} SELECT $1::int AS b", 2)
    finally:
        await conn.close()
    spans = await asyncio.to_thread(lambda: db_spans(traced.spans()))
    assert sorted(s.attributes["db.query.text"] for s in spans) == [
        "SELECT $1 AS a",
        "SELECT $1 AS b",
    ]
    assert {(s.trace_id, s.parent_span_id) for s in spans} == {(HAND_TRACE, HAND_PARENT)}


async def test_asyncpg_named_statement_executed_later_is_not_parented(
    traced: TracedProxy,
) -> None:
    conn = await asyncpg.connect(traced.proxy.dsn())
    try:
        stmt = await conn.prepare(f"SELECT $1::int AS later {comment()}")
        await asyncio.sleep(0.3)  # the drain runs: the Parse's batch is over
        await stmt.fetch(1)  # a later, untraced request
    finally:
        await conn.close()
    spans = await asyncio.to_thread(lambda: db_spans(traced.spans()))
    assert [s for s in spans if s.trace_id == HAND_TRACE] == []


def test_psycopg_prepared_statement_executed_later_is_not_parented(
    traced: TracedProxy,
) -> None:
    sql = f"SELECT %s::int AS prepared_later {comment()}"
    with psycopg.connect(traced.proxy.dsn(), autocommit=True) as conn:
        conn.execute(sql, (1,), prepare=True).fetchall()  # the traced request
        time.sleep(0.3)  # the drain runs in between
        conn.execute(sql, (2,), prepare=True).fetchall()  # a later one, same statement
    spans = [s for s in db_spans(traced.spans()) if s.trace_id == HAND_TRACE]
    statements = [e for e in traced.events() if isinstance(e, StatementFinished)]
    later = statements[-1]
    assert later.statement_name  # a named statement
    assert not later.text_in_batch  # executed without its Parse
    assert len(spans) == sum(e.text_in_batch for e in statements) <= 1


def test_psql_comment_at_the_end_and_at_the_start(traced: TracedProxy, pg_server: PgServer) -> None:
    env = traced.proxy.env()
    for sql in (f"SELECT 1 AS psql_end {comment()}", f"{comment()} SELECT 2 AS psql_start"):
        subprocess.run(["psql", "-X", "-q", "-c", sql], env=env, check=True, capture_output=True)
    spans = db_spans(traced.spans())
    assert sorted(s.attributes["db.query.text"] for s in spans) == [
        "SELECT $1 AS psql_end",
        "SELECT $1 AS psql_start",
    ]
    assert {(s.trace_id, s.parent_span_id) for s in spans} == {(HAND_TRACE, HAND_PARENT)}


# --- sampling ------------------------------------------------------------------------------
def test_unsampled_parent_and_no_context_give_no_span(traced: TracedProxy) -> None:
    with psycopg.connect(traced.proxy.dsn(), autocommit=True) as conn:
        conn.execute(f"SELECT 1 {comment(sampled=False)}")
        conn.execute("SELECT 2")
    assert db_spans(traced.spans()) == []
    assert traced.tracing.counts.created == 0


def test_slow_statement_under_an_unsampled_parent_gets_a_span(traced_factory: Any) -> None:
    traced: TracedProxy = traced_factory(trace_slow_ms=100.0)
    with psycopg.connect(traced.proxy.dsn(), autocommit=True) as conn:
        conn.execute(f"SELECT pg_sleep(0.15) {comment(sampled=False)}")
        conn.execute(f"SELECT 1 {comment(sampled=False)}")
    (span,) = db_spans(traced.spans())
    assert (span.trace_id, span.parent_span_id) == (HAND_TRACE, HAND_PARENT)
    assert span.name == "SELECT"


# --- errors and secrets -----------------------------------------------------------------------
def test_errors_carry_the_sqlstate_and_never_the_values(traced: TracedProxy) -> None:
    with psycopg.connect(traced.proxy.dsn(), autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS trace_secrets")
        conn.execute("CREATE TABLE trace_secrets (v text PRIMARY KEY)")
        conn.execute(f"INSERT INTO trace_secrets VALUES ('{SENTINEL}') {comment()}")
        with pytest.raises(psycopg.errors.UniqueViolation) as raised:
            conn.execute(f"INSERT INTO trace_secrets VALUES ('{SENTINEL}') {comment()}")
        assert SENTINEL in str(raised.value.diag.message_detail)  # the server echoed it
        with pytest.raises(psycopg.errors.DivisionByZero):
            conn.execute(f"SELECT 1 / 0 WHERE '{SENTINEL}' <> '' {comment()}")
        conn.execute("DROP TABLE trace_secrets")
    spans = db_spans(traced.spans())
    failed = sorted(
        (s.attributes["db.response.status_code"], s.status_message, s.attributes["error.type"])
        for s in spans
        if s.status_code == 2  # STATUS_CODE_ERROR
    )
    assert failed == [
        ("22012", "division_by_zero", "22012"),
        ("23505", "unique_violation", "23505"),
    ]
    assert len(spans) == 3
    for span in spans:
        assert SENTINEL.encode() not in span.raw
    request = urllib.request.Request(
        f"{traced.proxy.http_url}/metrics", headers={"Accept": "application/openmetrics-text"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert SENTINEL not in response.read().decode()
    with urllib.request.urlopen(f"{traced.proxy.http_url}/api/queries", timeout=10) as response:
        assert SENTINEL not in response.read().decode()


def test_proxy_span_wraps_the_client_span(traced_factory: Any) -> None:
    traced: TracedProxy = traced_factory(trace_proxy_span=True)
    with psycopg.connect(traced.proxy.dsn(), autocommit=True) as conn:
        conn.execute(f"SELECT 1 {comment()}")
    spans = db_spans(traced.spans())
    (server,) = [s for s in spans if s.kind == 2]
    (client,) = [s for s in spans if s.kind == 3]
    assert server.parent_span_id == HAND_PARENT
    assert client.parent_span_id == server.span_id
