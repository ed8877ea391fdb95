"""The HTTP server against real sockets: routing, strict parsing, metrics, API, health."""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from dbproxy.export.http import HttpServer, export_routes
from dbproxy.export.prometheus import DbproxyCollector
from tests.unit.export.snapshots import FixedSource, query, snapshot

Q1 = query("fp1", observations={1: 2, 3: 1}, sum_s=0.0071, rows=30, errors={"23505": 1})
Q2 = query("fp2", user="bob", observations={0: 5}, sum_s=0.002, rows=5)

Ready = Callable[[], tuple[bool, str] | Awaitable[tuple[bool, str]]]


class Served:
    def __init__(self, server: HttpServer, source: FixedSource) -> None:
        self.server = server
        self.source = source

    async def raw(self, data: bytes) -> tuple[int, dict[str, str], bytes]:
        addr = self.server.address
        reader, writer = await asyncio.open_connection(addr.host, addr.port)
        writer.write(data)
        await writer.drain()
        response = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        head, _, body = response.partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            headers[name.lower()] = value.strip()
        assert status_line.startswith("HTTP/1.1 ")
        return int(status_line.split()[1]), headers, body

    async def request(
        self, method: str, target: str, *headers: str, body: bytes = b""
    ) -> tuple[int, dict[str, str], bytes]:
        lines = [f"{method} {target} HTTP/1.1", "Host: test", *headers]
        if body:
            lines.append(f"Content-Length: {len(body)}")
        return await self.raw(("\r\n".join(lines) + "\r\n\r\n").encode() + body)


async def serve(
    ready: Ready = lambda: (True, "upstream reachable"),
    api_token: str | None = None,
    **server_kw: Any,
) -> Served:
    source = FixedSource(snapshot(Q1, Q2))
    registry = CollectorRegistry()
    collector = DbproxyCollector(source)
    registry.register(collector)
    routes = export_routes(
        stats=source, ready=ready, registry=registry, collector=collector, api_token=api_token
    )
    server = HttpServer("127.0.0.1", 0, routes, **server_kw)
    await server.start()
    return Served(server, source)


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    s = await serve()
    yield s
    await s.server.close()


async def test_healthz_and_head(served: Served) -> None:
    status, headers, body = await served.request("GET", "/healthz")
    assert (status, body) == (200, b"ok\n")
    assert headers["connection"] == "close"
    status, headers, body = await served.request("HEAD", "/healthz")
    assert (status, body, headers["content-length"]) == (200, b"", "3")


async def test_readyz() -> None:
    async def async_not_ready() -> tuple[bool, str]:
        return False, "upstream 127.0.0.1:5432 unreachable: Connection refused"

    def broken() -> tuple[bool, str]:
        raise RuntimeError("boom")

    cases: list[tuple[Ready, tuple[int, bytes]]] = [
        (lambda: (True, ""), (200, b"ok\n")),
        (async_not_ready, (503, b"upstream 127.0.0.1:5432 unreachable: Connection refused\n")),
        (lambda: (False, "not listening yet"), (503, b"not listening yet\n")),
        (broken, (503, b"readiness check failed: RuntimeError\n")),
    ]
    for ready, expected in cases:
        s = await serve(ready=ready)
        try:
            status, _, body = await s.request("GET", "/readyz")
            assert (status, body) == expected
        finally:
            await s.server.close()


async def test_metrics_plain_openmetrics_gzip(served: Served) -> None:
    status, headers, body = await served.request("GET", "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain; version=0.0.4")
    assert b"dbproxy_query_duration_seconds_bucket{" in body
    status, headers, body = await served.request(
        "GET", "/metrics", "Accept: application/openmetrics-text; version=1.0.0"
    )
    assert headers["content-type"].startswith("application/openmetrics-text")
    assert body.endswith(b"# EOF\n")
    status, headers, body = await served.request(
        "GET", "/metrics", "Accept-Encoding: gzip, deflate"
    )
    assert headers["content-encoding"] == "gzip"
    assert b"dbproxy_query_rows_total" in gzip.decompress(body)
    assert served.source.tops == [500, 500, 500]


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET /healthz\r\nHost: x\r\n\r\n", 400),
        (b"GET  /healthz HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET http://x/healthz HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET /healthz HTTP/2.0\r\nHost: x\r\n\r\n", 505),
        (b"GET /healthz HTTP/1.1\r\n\r\n", 400),  # no Host
        (b"GET /healthz HTTP/1.1\r\nHost : x\r\n\r\n", 400),
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n", 400),
        (b"GET /healthz HTTP/1.1\r\nHost: \xff\r\n\r\n", 400),
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX: a\nb\r\n\r\n", 400),
        (b"GET /healthz HTTP/1.0\r\n\r\n", 200),  # 1.0 needs no Host
        (b"POST /api/reset HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n", 501),
        (b"POST /api/reset HTTP/1.1\r\nHost: x\r\nContent-Length: 1x\r\n\r\n", 400),
        (b"POST /api/reset HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\n", 413),
        (b"GET /api/queries?sort=%ZZ HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET /api/queries?a&&b HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n", 404),
        (b"GET /metrics/ HTTP/1.1\r\nHost: x\r\n\r\n", 404),
    ],
)
async def test_strict_parsing(served: Served, raw: bytes, status: int) -> None:
    assert (await served.raw(raw))[0] == status


async def test_oversized_header(served: Served) -> None:
    status, _, _ = await served.request("GET", "/healthz", "X-Big: " + "a" * 20_000)
    assert status == 431


async def test_method_not_allowed(served: Served) -> None:
    status, headers, _ = await served.request("POST", "/metrics", body=b"x")
    assert status == 405 and headers["allow"] == "GET, HEAD"
    status, headers, _ = await served.request("GET", "/api/reset")
    assert status == 405 and headers["allow"] == "POST"


async def test_api_queries(served: Served) -> None:
    status, headers, body = await served.request("GET", "/api/queries?sort=calls&limit=1")
    assert status == 200 and headers["content-type"] == "application/json"
    out = json.loads(body)
    assert [r["fingerprint"] for r in out["queries"]] == ["fp2"]
    assert out["total"] == 2
    status, _, body = await served.request("GET", "/api/queries?sort=bogus")
    assert status == 400 and "sort must be one of" in json.loads(body)["error"]
    status, _, body = await served.request("GET", "/api/queries/fp1")
    assert status == 200 and json.loads(body)["queries"][0]["calls"] == 3
    status, _, body = await served.request("GET", "/api/queries/unknown")
    assert status == 404 and json.loads(body)["error"] == "unknown fingerprint 'unknown'"
    assert served.source.tops == [None, None, None]  # the 400 takes no snapshot


async def test_api_agrees_with_metrics(served: Served) -> None:
    _, _, body = await served.request("GET", "/api/queries")
    rows = {(r["fingerprint"], r["user"]): r for r in json.loads(body)["queries"]}
    _, _, text = await served.request("GET", "/metrics")
    samples = {
        (s.name, s.labels.get("fingerprint"), s.labels.get("user")): s.value
        for f in text_string_to_metric_families(text.decode())
        for s in f.samples
        if "le" not in s.labels and "sqlstate" not in s.labels
    }
    for (fp, user), row in rows.items():
        assert samples[("dbproxy_query_duration_seconds_count", fp, user)] == row["calls"]
        sum_ms = samples[("dbproxy_query_duration_seconds_sum", fp, user)] * 1000
        assert sum_ms == pytest.approx(row["total_time_ms"], abs=1e-3)
        assert samples[("dbproxy_query_rows_total", fp, user)] == row["rows"]
    assert rows[("fp1", "alice")]["errors"] == {"23505": 1}


async def test_reset_token() -> None:
    s = await serve()
    try:
        status, _, body = await s.request("POST", "/api/reset", "Authorization: Bearer x")
        assert status == 403 and "--api-token" in json.loads(body)["error"]
        assert s.source.resets == 0
    finally:
        await s.server.close()
    s = await serve(api_token="s3cret")
    try:
        status, _, _ = await s.request("POST", "/api/reset")
        assert status == 403
        status, _, _ = await s.request("POST", "/api/reset", "Authorization: Bearer nope")
        assert status == 403
        assert s.source.resets == 0
        status, _, body = await s.request(
            "POST", "/api/reset", "Authorization: Bearer s3cret", body=b"{}"
        )
        assert status == 200 and json.loads(body)["reset"] is True
        assert s.source.resets == 1
    finally:
        await s.server.close()


async def test_connection_limit_timeout_and_close() -> None:
    s = await serve(max_connections=1, request_timeout=0.3)
    addr = s.server.address
    idle_reader, idle_writer = await asyncio.open_connection(addr.host, addr.port)
    idle_writer.write(b"GET /healthz HTTP/1.1\r\n")  # never finishes its head
    await asyncio.sleep(0.05)
    assert (await s.request("GET", "/healthz"))[0] == 503
    response = await asyncio.wait_for(idle_reader.read(), 5)
    assert response.startswith(b"HTTP/1.1 408 ")
    idle_writer.close()
    # close() returns promptly even with a silent client connected
    silent_reader, silent_writer = await asyncio.open_connection(addr.host, addr.port)
    await asyncio.sleep(0.05)
    await asyncio.wait_for(s.server.close(), 2)
    assert await asyncio.wait_for(silent_reader.read(), 2) == b""
    silent_writer.close()
