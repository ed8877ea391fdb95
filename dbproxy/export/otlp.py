"""OTLP/HTTP span export with a direct protobuf encoder.

The SDK's OTLP exporters build a protobuf object per span, attribute and value before
serializing (≈ 37 µs per span here, more than building the span).  dbproxy's spans are
regular: a handful of attributes, most of them repeating (the system, the server, the
database, the normalized query of the same fingerprint), so :class:`SpanEncoder` writes
the ``ExportTraceServiceRequest`` wire format itself and keeps the encoded bytes of
repeated string attributes, resources and scopes.  The output is the same message the
SDK's ``encode_spans`` produces (a test decodes both and compares them).

:class:`OtlpHttpSpanExporter` posts it: one keep-alive connection, optional gzip, the
OTLP headers and TLS files, retries with exponential backoff on the retryable answers
(429, 502, 503, 504) and on connection errors, within the export timeout.  Only the
``http/protobuf`` protocol goes this way; ``grpc`` keeps the SDK exporter.
"""

from __future__ import annotations

import gzip
import http.client
import logging
import random
import ssl
import struct
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Final
from urllib.parse import urlparse

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext

log = logging.getLogger(__name__)

_DOUBLE: Final = struct.Struct("<d")
_FIXED64: Final = struct.Struct("<Q")
_FIXED32: Final = struct.Struct("<I")
# SpanFlags: the is_remote bit of the parent is known (always) and set (remote parent)
_HAS_IS_REMOTE: Final = 0x100
_IS_REMOTE: Final = 0x200
#: encoded string attributes kept (key, value) -> KeyValue bytes; cleared when full
_CACHE_ENTRIES: Final = 8192
_CACHE_MAX_VALUE: Final = 8192  # longer values are encoded each time


def varint(n: int) -> bytes:
    if n < 0:
        n += 1 << 64  # int64 two's complement, as protobuf encodes negative ints
    if n < 0x80:
        return bytes((n,))
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _ld(tag: bytes, payload: bytes) -> bytes:
    """A length-delimited field: tag, length, payload."""
    return tag + varint(len(payload)) + payload


def _string(tag: bytes, text: str) -> bytes:
    return _ld(tag, text.encode("utf-8"))


def any_value(value: object) -> bytes:
    """An ``AnyValue`` message body."""
    if isinstance(value, str):
        return _string(b"\x0a", value)
    if isinstance(value, bool):  # before int: bool is an int
        return b"\x10\x01" if value else b"\x10\x00"
    if isinstance(value, int):
        return b"\x18" + varint(value)
    if isinstance(value, float):
        return b"\x21" + _DOUBLE.pack(value)
    if isinstance(value, bytes):
        return _ld(b"\x3a", value)
    if isinstance(value, Mapping):
        return _ld(b"\x32", b"".join(_ld(b"\x0a", key_value(str(k), v)) for k, v in value.items()))
    if isinstance(value, Sequence):
        return _ld(b"\x2a", b"".join(_ld(b"\x0a", any_value(v)) for v in value))
    return _string(b"\x0a", str(value))


def key_value(key: str, value: object) -> bytes:
    """A ``KeyValue`` message body."""
    return _string(b"\x0a", key) + _ld(b"\x12", any_value(value))


class SpanEncoder:
    """Encodes batches of finished spans as ``ExportTraceServiceRequest`` bytes.

    Not thread-safe: one exporter thread uses it."""

    def __init__(self) -> None:
        self._attributes: dict[tuple[str, str], bytes] = {}
        self._resources: dict[int, tuple[Resource, bytes]] = {}
        self._scopes: dict[int, tuple[InstrumentationScope | None, bytes]] = {}

    def encode(self, spans: Sequence[ReadableSpan]) -> bytes:
        # group as the SDK does: resource, then instrumentation scope, in first-seen order
        groups: dict[int, dict[int, list[bytes]]] = {}
        for span in spans:
            resource = span.resource
            scope = span.instrumentation_scope
            rkey = self._resource_key(resource)
            skey = self._scope_key(scope)
            groups.setdefault(rkey, {}).setdefault(skey, []).append(self.span(span))
        out = []
        for rkey, scopes in groups.items():
            resource, resource_bytes = self._resources[rkey]
            body = [_ld(b"\x0a", resource_bytes)]
            for skey, encoded in scopes.items():
                scope, scope_bytes = self._scopes[skey]
                scope_body = [_ld(b"\x0a", scope_bytes)]
                scope_body.extend(_ld(b"\x12", s) for s in encoded)
                if scope is not None and scope.schema_url:
                    scope_body.append(_string(b"\x1a", scope.schema_url))
                body.append(_ld(b"\x12", b"".join(scope_body)))
            if resource.schema_url:
                body.append(_string(b"\x1a", resource.schema_url))
            out.append(_ld(b"\x0a", b"".join(body)))
        return b"".join(out)

    def _resource_key(self, resource: Resource) -> int:
        key = id(resource)
        cached = self._resources.get(key)
        if cached is None or cached[0] is not resource:
            attrs = b"".join(_ld(b"\x0a", key_value(k, v)) for k, v in resource.attributes.items())
            self._resources[key] = (resource, attrs)
        return key

    def _scope_key(self, scope: InstrumentationScope | None) -> int:
        key = id(scope)
        cached = self._scopes.get(key)
        if cached is None or cached[0] is not scope:
            body = b""
            if scope is not None:
                body = _string(b"\x0a", scope.name)
                if scope.version:
                    body += _string(b"\x12", scope.version)
                for k, v in (scope.attributes or {}).items():
                    body += _ld(b"\x1a", key_value(k, v))
            self._scopes[key] = (scope, body)
        return key

    def _attribute(self, key: str, value: object) -> bytes:
        if type(value) is str and len(value) <= _CACHE_MAX_VALUE:
            cache_key = (key, value)
            encoded = self._attributes.get(cache_key)
            if encoded is None:
                if len(self._attributes) >= _CACHE_ENTRIES:
                    self._attributes.clear()
                encoded = self._attributes[cache_key] = _ld(b"\x4a", key_value(key, value))
            return encoded
        return _ld(b"\x4a", key_value(key, value))

    def span(self, span: ReadableSpan) -> bytes:
        """One ``Span`` message body."""
        ctx = span.context
        assert ctx is not None
        parts = [
            b"\x0a\x10" + ctx.trace_id.to_bytes(16, "big"),
            b"\x12\x08" + ctx.span_id.to_bytes(8, "big"),
        ]
        if ctx.trace_state:
            parts.append(_string(b"\x1a", ctx.trace_state.to_header()))
        parent: SpanContext | None = span.parent
        if parent is not None:
            parts.append(b"\x22\x08" + parent.span_id.to_bytes(8, "big"))
        parts.append(_string(b"\x2a", span.name))
        parts.append(b"\x30" + varint(span.kind.value + 1))  # proto kinds start at 1
        parts.append(b"\x39" + _FIXED64.pack(span.start_time or 0))
        parts.append(b"\x41" + _FIXED64.pack(span.end_time or 0))
        attribute = self._attribute
        for key, value in (span.attributes or {}).items():
            parts.append(attribute(key, value))
        if span.dropped_attributes:
            parts.append(b"\x50" + varint(span.dropped_attributes))
        for event in span.events:
            body = _string(b"\x12", event.name) if event.name else b""
            body = b"\x09" + _FIXED64.pack(event.timestamp) + body
            for key, value in (event.attributes or {}).items():
                body += _ld(b"\x1a", key_value(key, value))
            if event.dropped_attributes:
                body += b"\x20" + varint(event.dropped_attributes)
            parts.append(_ld(b"\x5a", body))
        if span.dropped_events:
            parts.append(b"\x60" + varint(span.dropped_events))
        for link in span.links:
            lctx = link.context
            body = b"\x0a\x10" + lctx.trace_id.to_bytes(16, "big")
            body += b"\x12\x08" + lctx.span_id.to_bytes(8, "big")  # (no trace_state: as the SDK)
            for key, value in (link.attributes or {}).items():
                body += _ld(b"\x22", key_value(key, value))
            if link.dropped_attributes:
                body += b"\x28" + varint(link.dropped_attributes)
            flags = _HAS_IS_REMOTE | (_IS_REMOTE if lctx.is_remote else 0)
            body += b"\x35" + _FIXED32.pack(flags)
            parts.append(_ld(b"\x6a", body))
        if span.dropped_links:
            parts.append(b"\x70" + varint(span.dropped_links))
        status = span.status
        status_body = b""
        if status.description:
            status_body += _string(b"\x12", status.description)
        if status.status_code.value:
            status_body += b"\x18" + varint(status.status_code.value)
        parts.append(_ld(b"\x7a", status_body))
        flags = _HAS_IS_REMOTE | (_IS_REMOTE if parent is not None and parent.is_remote else 0)
        parts.append(b"\x85\x01" + _FIXED32.pack(flags))
        return b"".join(parts)


_RETRYABLE: Final = frozenset({429, 502, 503, 504})


class OtlpHttpSpanExporter(SpanExporter):
    """OTLP/HTTP (protobuf) exporter on one keep-alive connection; see the module doc."""

    def __init__(
        self,
        endpoint: str,
        *,
        headers: Mapping[str, str] | None = None,
        timeout_s: float = 10.0,
        compression: str = "none",
        certificate_file: str | None = None,
        client_certificate_file: str | None = None,
        client_key_file: str | None = None,
        encoder: SpanEncoder | None = None,
    ) -> None:
        url = urlparse(endpoint)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"not an http(s) URL: {endpoint!r}")
        self.endpoint = endpoint
        self._https = url.scheme == "https"
        self._host = url.hostname
        self._port = url.port or (443 if self._https else 80)
        self._path = (url.path or "/") + (f"?{url.query}" if url.query else "")
        self._headers = {
            **dict(headers or {}),
            "Content-Type": "application/x-protobuf",
            "User-Agent": "dbproxy-otlp",
        }
        if compression == "gzip":
            self._headers["Content-Encoding"] = "gzip"
        self._gzip = compression == "gzip"
        self._timeout_s = timeout_s
        self._context: ssl.SSLContext | None = None
        if self._https:
            self._context = ssl.create_default_context(cafile=certificate_file)
            if client_certificate_file:
                self._context.load_cert_chain(client_certificate_file, client_key_file)
        self._encoder = encoder or SpanEncoder()
        self._conn: http.client.HTTPConnection | None = None
        self._shutdown = threading.Event()
        self._rng = random.Random()

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            if self._https:
                self._conn = http.client.HTTPSConnection(
                    self._host, self._port, timeout=self._timeout_s, context=self._context
                )
            else:
                self._conn = http.client.HTTPConnection(
                    self._host, self._port, timeout=self._timeout_s
                )
        return self._conn

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._shutdown.is_set():
            return SpanExportResult.FAILURE
        if not spans:
            return SpanExportResult.SUCCESS
        try:
            body = self._encoder.encode(spans)
        except Exception:
            log.exception("cannot encode %d spans", len(spans))
            return SpanExportResult.FAILURE
        if self._gzip:
            body = gzip.compress(body, compresslevel=6)
        deadline = time.monotonic() + self._timeout_s
        delay = 0.5
        while True:
            status, reason = self._post(body)
            if status is not None and 200 <= status < 300:
                return SpanExportResult.SUCCESS
            retryable = status is None or status in _RETRYABLE
            wait = delay * (0.5 + self._rng.random())
            if not retryable or time.monotonic() + wait > deadline:
                log.warning(
                    "OTLP export of %d spans to %s failed: %s", len(spans), self.endpoint, reason
                )
                return SpanExportResult.FAILURE
            if self._shutdown.wait(wait):
                return SpanExportResult.FAILURE
            delay *= 2

    def _post(self, body: bytes) -> tuple[int | None, str]:
        try:
            conn = self._connection()
            conn.request("POST", self._path, body=body, headers=self._headers)
            response = conn.getresponse()
            response.read()
            if response.will_close:
                self._close()
            return response.status, f"HTTP {response.status} {response.reason}"
        except (OSError, http.client.HTTPException) as exc:
            self._close()
            return None, f"{type(exc).__name__}: {exc}"

    def shutdown(self) -> None:
        self._shutdown.set()
        self._close()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True
