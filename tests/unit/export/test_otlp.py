"""dbproxy's OTLP encoder writes what the SDK's encoder writes; its exporter posts it."""

from __future__ import annotations

import gzip
import http.server
import threading
from collections.abc import Iterator
from typing import ClassVar

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    set_span_in_context,
)
from opentelemetry.trace.span import TraceState

from dbproxy.export.otlp import OtlpHttpSpanExporter, SpanEncoder, varint
from tests.unit.export.test_otel import SAMPLED, Traced, statement


def _sdk_spans() -> list[ReadableSpan]:
    """Spans made the SDK's way, with every field the encoder handles."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource({"service.name": "svc", "n": 3}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("lib", "1.2", schema_url="https://opentelemetry.io/schemas/1.21")
    state = TraceState([("k", "v")])
    remote = SpanContext(0xABC, 0xDEF, is_remote=True, trace_flags=TraceFlags(1), trace_state=state)
    link = Link(remote, {"link.attr": "x", "n": -7})
    parent = set_span_in_context(NonRecordingSpan(remote))
    span = tracer.start_span(
        "op",
        context=parent,
        kind=SpanKind.PRODUCER,
        links=[link],
        attributes={
            "s": "text ünïcode",
            "b": True,
            "f": 1.5,
            "i": -(2**40),
            "big": 2**62,
            "bytes": b"\x00\x01",
            "tuple": ("a", "b"),
            "ints": [1, 2, 3],
            "empty": "",
        },
        start_time=1_700_000_000_000_000_000,
    )
    span.add_event("ev", {"e": 1}, timestamp=1_700_000_000_000_000_500)
    span.set_status(Status(StatusCode.ERROR, "went wrong"))
    span.end(end_time=1_700_000_000_000_001_000)
    root = tracer.start_span("root", start_time=5)
    root.end(end_time=9)
    other = provider.get_tracer("other").start_span("x", start_time=1)
    other.end(end_time=2)
    provider.shutdown()
    return list(exporter.get_finished_spans())


def _same(spans: list[ReadableSpan]) -> None:
    ours = ExportTraceServiceRequest.FromString(SpanEncoder().encode(spans))
    assert ours == encode_spans(spans)


def test_sdk_made_spans_encode_like_the_sdk_encoder() -> None:
    _same(_sdk_spans())


def test_dbproxy_spans_encode_like_the_sdk_encoder() -> None:
    t = Traced(proxy_span=True, record_rows=True, untraced_ratio=1.0)
    conn = t.conn()
    conn.query(statement("SELECT * FROM users WHERE id = 42"))
    conn.query("SELECT * FROM orders WHERE id = 1")
    conn.query(statement("INSERT INTO t VALUES (1)"), error="23505")
    tracestate = f"{statement('SELECT 2')[:-2]},tracestate='a%3Db'*/"
    conn.query(tracestate)
    events = list(t.events)
    t.events.clear()
    t.tracing.consume(events)
    assert t.tracing.force_flush()
    exporter_spans = list(t.exporter.get_finished_spans())
    assert len(exporter_spans) == 8
    encoder = SpanEncoder()
    for _ in range(2):  # second time from the caches
        ours = ExportTraceServiceRequest.FromString(encoder.encode(exporter_spans))
        assert ours == encode_spans(exporter_spans)
    t.tracing.shutdown()
    assert SAMPLED  # the statements above carried a sampled traceparent


def test_varint_matches_protobuf() -> None:
    for n in (0, 1, 127, 128, 300, 2**32, 2**63 - 1, -1, -(2**63)):
        expected = n if n >= 0 else n + (1 << 64)
        raw = varint(n)
        value, shift = 0, 0
        for b in raw:
            value |= (b & 0x7F) << shift
            shift += 7
        assert value == expected and raw[-1] < 0x80


class _Receiver(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    answers: ClassVar[list[int]] = []
    bodies: ClassVar[list[tuple[dict[str, str], bytes]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).bodies.append((dict(self.headers), body))
        status = type(self).answers.pop(0) if type(self).answers else 200
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[tuple[str, type[_Receiver]]]:
    handler = type("Handler", (_Receiver,), {"answers": [], "bodies": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1/traces", handler
    server.shutdown()
    server.server_close()


def test_exporter_posts_gzip_with_headers_and_keeps_the_connection(
    receiver: tuple[str, type[_Receiver]],
) -> None:
    url, handler = receiver
    spans = _sdk_spans()
    exporter = OtlpHttpSpanExporter(url, headers={"x-tenant": "a"}, compression="gzip")
    assert exporter.export(spans) is SpanExportResult.SUCCESS
    assert exporter.export(spans[:1]) is SpanExportResult.SUCCESS
    (headers, body), _ = handler.bodies
    assert headers["x-tenant"] == "a" and headers["Content-Encoding"] == "gzip"
    assert headers["Content-Type"] == "application/x-protobuf"
    decoded = ExportTraceServiceRequest.FromString(gzip.decompress(body))
    assert decoded == encode_spans(spans)
    exporter.shutdown()
    assert exporter.export(spans) is SpanExportResult.FAILURE


def test_exporter_retries_retryable_answers_only(receiver: tuple[str, type[_Receiver]]) -> None:
    url, handler = receiver
    spans = _sdk_spans()[:1]
    exporter = OtlpHttpSpanExporter(url, timeout_s=5)
    handler.answers = [503, 429, 200]
    assert exporter.export(spans) is SpanExportResult.SUCCESS
    assert len(handler.bodies) == 3
    handler.answers = [400]
    assert exporter.export(spans) is SpanExportResult.FAILURE
    assert len(handler.bodies) == 4  # not retried


def test_exporter_gives_up_within_its_timeout_when_nothing_listens() -> None:
    import socket
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    exporter = OtlpHttpSpanExporter(f"http://127.0.0.1:{port}/v1/traces", timeout_s=1.5)
    started = time.monotonic()
    assert exporter.export(_sdk_spans()[:1]) is SpanExportResult.FAILURE
    assert time.monotonic() - started < 3


def test_bad_endpoints_are_refused() -> None:
    with pytest.raises(ValueError, match="not an http"):
        OtlpHttpSpanExporter("localhost:4318")
