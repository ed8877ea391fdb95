"""The web UI's routes and the API additions it reads (histogram, connections, ui-config)."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from importlib import resources

import pytest

from dbproxy.export import api
from dbproxy.export.http import UI_ASSETS, UI_CSP, HttpServer, export_routes
from dbproxy.observe.stats import QUERY_BUCKETS_S, Exemplar, Histogram
from tests.unit.export.snapshots import FixedSource, query, snapshot
from tests.unit.export.test_http import Q1, Served, serve


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    s = await serve()
    yield s
    await s.server.close()


async def test_index_headers_and_body(served: Served) -> None:
    status, headers, body = await served.request("GET", "/")
    assert status == 200
    assert headers["content-type"] == "text/html; charset=utf-8"
    assert headers["content-security-policy"] == UI_CSP
    assert "default-src 'self'" in UI_CSP and "unsafe" not in UI_CSP
    assert headers["cache-control"] == "no-cache"
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["referrer-policy"] == "no-referrer"
    html = body.decode()
    assert '<script src="/ui/app.js" defer></script>' in html
    # nothing inline: every script has a src, no event-handler or style attributes
    assert all("src=" in tag for tag in re.findall(r"<script[^>]*>", html))
    assert not re.search(r"<script[^>]*>\s*[^<\s]", html)
    assert not re.search(r"\son[a-z]+\s*=", html) and "style=" not in html
    assert "http://" not in html and "https://" not in html  # no CDN


async def test_one_cache_control_header(served: Served) -> None:
    addr = served.server.address
    reader, writer = await asyncio.open_connection(addr.host, addr.port)
    writer.write(b"GET /ui/style.css HTTP/1.1\r\nHost: t\r\n\r\n")
    head = (await asyncio.wait_for(reader.read(), 5)).split(b"\r\n\r\n")[0].decode().lower()
    writer.close()
    assert head.count("cache-control:") == 1 and "cache-control: no-cache" in head
    # the API keeps no-store
    _, headers, _ = await served.request("GET", "/api/queries")
    assert headers["cache-control"] == "no-store"


@pytest.mark.parametrize(
    ("name", "content_type"),
    [
        ("app.js", "text/javascript; charset=utf-8"),
        ("style.css", "text/css; charset=utf-8"),
        ("favicon.svg", "image/svg+xml"),
        ("index.html", "text/html; charset=utf-8"),
    ],
)
async def test_assets(served: Served, name: str, content_type: str) -> None:
    status, headers, body = await served.request("GET", f"/ui/{name}")
    assert status == 200 and headers["content-type"] == content_type
    assert body == resources.files("dbproxy.export.ui").joinpath(name).read_bytes()
    assert headers["content-security-policy"] == UI_CSP
    status, headers, body = await served.request("HEAD", f"/ui/{name}")
    assert status == 200 and body == b"" and int(headers["content-length"]) > 0


@pytest.mark.parametrize(
    "target",
    ["/ui/nope.js", "/ui/__init__.py", "/ui/..%2Fhttp.py", "/ui/%2E%2E%2Fapi.py", "/ui/", "/ui"],
)
async def test_only_known_assets(served: Served, target: str) -> None:
    status, _, body = await served.request("GET", target)
    assert status == 404 and b"def " not in body


async def test_methods(served: Served) -> None:
    status, headers, _ = await served.request("POST", "/", body=b"x")
    assert status == 405 and headers["allow"] == "GET, HEAD"


async def test_ui_can_be_turned_off() -> None:
    source = FixedSource(snapshot(Q1))
    server = HttpServer(
        "127.0.0.1", 0, export_routes(stats=source, ready=lambda: (True, ""), ui=False)
    )
    await server.start()
    try:
        s = Served(server, source)
        assert (await s.request("GET", "/"))[0] == 404
        assert (await s.request("GET", "/ui/app.js"))[0] == 404
        assert (await s.request("GET", "/api/ui-config"))[0] == 404
    finally:
        await server.close()


async def test_ui_config() -> None:
    source = FixedSource(snapshot(Q1))
    template = "https://grafana.example/explore?trace={trace_id}&span={span_id}"
    for given, expected in ((None, None), ("", None), (template, template)):
        routes = export_routes(stats=source, ready=lambda: (True, ""), trace_url_template=given)
        server = HttpServer("127.0.0.1", 0, routes)
        await server.start()
        try:
            s = Served(server, source)
            status, headers, body = await s.request("GET", "/api/ui-config")
            assert status == 200 and headers["content-type"] == "application/json"
            assert json.loads(body) == {"trace_url_template": expected}
            assert (await s.request("GET", "/api/ui-config?x=1"))[0] == 400
        finally:
            await server.close()


async def test_connections_endpoint(served: Served) -> None:
    status, _, body = await served.request("GET", "/api/connections")
    assert status == 200
    out = json.loads(body)
    assert out["connections"] == [
        {"database": "app", "user": "alice", "current": 3, "total": 10, "rejected": 1}
    ]
    (tx,) = out["transactions"]
    assert (tx["commits"], tx["rollbacks"], tx["errors"], tx["count"]) == (7, 2, 1, 10)
    assert tx["mean_ms"] == 15.0
    assert tx["p50_ms"] is not None and tx["p50_ms"] <= tx["p95_ms"] <= tx["p99_ms"]
    assert out["fingerprints_tracked"] == 2 and out["events_processed"] == 42
    assert {"taken_at", "since"} <= out.keys()
    assert (await served.request("GET", "/api/connections?x=1"))[0] == 400


async def test_detail_has_histogram_list_does_not(served: Served) -> None:
    _, _, body = await served.request("GET", "/api/queries/fp1")
    (row,) = json.loads(body)["queries"]
    hist = row["histogram"]
    assert hist["bounds_ms"] == [round(b * 1000, 3) for b in QUERY_BUCKETS_S]
    assert hist["counts"] == list(Q1.duration.bucket_counts)
    assert sum(hist["counts"]) == row["calls"]
    assert hist["exemplars"] == [None] * len(hist["counts"])
    _, _, body = await served.request("GET", "/api/queries")
    assert all("histogram" not in r for r in json.loads(body)["queries"])


def test_histogram_json_exemplars() -> None:
    ex = Exemplar(trace_id="a" * 32, span_id="b" * 16, value_s=0.0123456, timestamp_s=1.5)
    bounds = (0.001, 0.01)
    hist = Histogram(
        bounds=bounds, bucket_counts=(0, 0, 2), count=2, sum_s=0.03, exemplars=(None, None, ex)
    )
    assert api.histogram_json(hist) == {
        "bounds_ms": [1.0, 10.0],
        "counts": [0, 0, 2],
        "exemplars": [
            None,
            None,
            {
                "trace_id": "a" * 32,
                "span_id": "b" * 16,
                "value_ms": 12.346,
                "at": "1970-01-01T00:00:01.500Z",
            },
        ],
    }


def test_sort_by_p99_and_rows_per_call() -> None:
    slow_rare = query("slow", observations={10: 1}, rows=1)
    fast_wide = query("wide", observations={0: 10}, rows=500)
    snap = snapshot(slow_rare, fast_wide, query("none", observations={}))

    def order(sort: str) -> list[str]:
        out = api.queries(snap, api.parse_queries_params([("sort", sort)]))
        return [r["fingerprint"] for r in out["queries"]]

    assert order("p99") == ["slow", "wide", "none"]
    assert order("rows_per_call") == ["wide", "slow", "none"]
    assert {"p99", "rows_per_call"} <= set(api.SORT_KEYS)


def test_assets_are_package_data_and_safe() -> None:
    ui = resources.files("dbproxy.export.ui")
    for name in UI_ASSETS:
        assert ui.joinpath(name).is_file(), name
    js = ui.joinpath("app.js").read_text()
    # data reaches the DOM through textContent/attributes only; no dynamic code
    for banned in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert banned not in js, banned
    assert "new Function" not in js
    css = ui.joinpath("style.css").read_text()
    assert "prefers-color-scheme: dark" in css
    assert "@import" not in css and "url(" not in css
