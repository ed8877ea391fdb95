"""The compose stack's demo app (deploy/demo-app/app.py) through the real proxy.

The shop service runs as a process, as in its container, against a database of its own on
the test server, through an in-process proxy with tracing on; both export OTLP to a
receiver in the test. Checked: its load generator's requests reach PostgreSQL through the
proxy with the psycopg instrumentation's sqlcommenter `traceparent` (dbproxy's statement
spans are children of the shop's psycopg spans, in the same traces), its `route` and
`version` tags, and the regression switch (the index goes, the version changes).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from dbproxy.pgcluster import PgServer, free_port
from tests.deploy.files import DEPLOY
from tests.fixtures.fix_proxy import RunningProxy, start_proxy
from tests.fixtures.otlp_sink import OtlpSink

DATABASE = "shop_demo"
HISTORY = "SELECT id, status, total_cents, created_at FROM orders WHERE customer_id = $1"


def _http(method: str, url: str) -> tuple[int, Any]:
    request = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, None
    except (urllib.error.URLError, OSError):
        return 0, None


@pytest.fixture
def shop_database(pg_server: PgServer, pg_admin_dsn: str) -> Iterator[str]:
    with psycopg.connect(pg_admin_dsn, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {DATABASE} OWNER {pg_server.app_user}")
    yield DATABASE
    with psycopg.connect(pg_admin_dsn, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")


def test_the_shop_sends_traced_tagged_queries_and_regresses_on_request(
    pg_server: PgServer, shop_database: str, tmp_path: Path
) -> None:
    sink = OtlpSink()
    proxy: RunningProxy = start_proxy(pg_server, trace=True, otlp_endpoint=sink.url)
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": proxy.dsn(dbname=shop_database),
        "PORT": str(port),
        "DEMO_RPS": "40",
        "DEMO_ORDERS": "20000",
        "OTEL_SERVICE_NAME": "shop",
        "OTEL_EXPORTER_OTLP_ENDPOINT": sink.url,
        "OTEL_BSP_SCHEDULE_DELAY": "200",
        "OTEL_BLRP_SCHEDULE_DELAY": "200",
    }
    log = (tmp_path / "shop.log").open("wb")
    shop = subprocess.Popen(
        [sys.executable, str(DEPLOY / "demo-app" / "app.py")],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while _http("GET", f"{base}/healthz")[0] != 200:
            if shop.poll() is not None or time.monotonic() > deadline:
                pytest.fail("the shop did not start:\n" + (tmp_path / "shop.log").read_text())
            time.sleep(0.2)
        time.sleep(3)
        status, body = _http("POST", f"{base}/admin/regression")
        assert (status, body) == (200, {"version": "1.5.0", "dropped": "orders_customer_id_idx"})
        time.sleep(3)
    finally:
        shop.send_signal(signal.SIGINT)  # KeyboardInterrupt: flushes spans and logs
        try:
            shop.wait(timeout=15)
        except subprocess.TimeoutExpired:
            shop.kill()
            shop.wait()
        log.close()
        try:
            proxy.drain_now()
            with urllib.request.urlopen(f"{proxy.http_url}/api/queries?limit=200") as r:
                rows = json.loads(r.read())["queries"]
        finally:
            proxy.stop()  # exports dbproxy's remaining spans
            sink.close()
    shop_log = (tmp_path / "shop.log").read_text()
    assert "Traceback" not in shop_log, shop_log

    # The order history ran through the proxy before and after the "deploy", tagged.
    [history] = [q for q in rows if q["query"].startswith(HISTORY)]
    assert history["calls"] > 10
    assert {t["value"] for t in history["tags"]["route"]} == {"/customers/:id/orders"}
    assert {t["value"] for t in history["tags"]["version"]} == {"1.4.2", "1.5.0"}
    assert {a["value"] for a in history["applications"]} == {"shop"}
    routes = {t["value"] for q in rows for t in q["tags"].get("route", [])}
    assert {"/customers/:id/orders", "/products/:id", "/orders"} <= routes
    with psycopg.connect(pg_server.dsn(dbname=shop_database)) as conn:
        indexes = conn.execute("SELECT indexname FROM pg_indexes WHERE tablename = 'orders'")
        assert [r[0] for r in indexes] == ["orders_pkey"]

    # dbproxy's statement spans sit under the shop's psycopg spans, in the shop's traces.
    shop_spans = {s.span_id: s for s in sink.spans if s.service == "shop"}
    db_spans = [s for s in sink.spans if s.service == "dbproxy"]
    assert len(db_spans) > 20
    parented = [s for s in db_spans if s.parent_span_id in shop_spans]
    assert len(parented) >= 0.9 * len(db_spans), (len(parented), len(db_spans))
    for span in parented:
        parent = shop_spans[span.parent_span_id]
        assert parent.trace_id == span.trace_id
        assert parent.kind == 3  # SPAN_KIND_CLIENT: the psycopg instrumentation
    roots = {s.trace_id for s in shop_spans.values() if s.name == "GET /customers/:id/orders"}
    assert roots & {s.trace_id for s in parented}
    assert any("regression injected" in body for body in sink.log_bodies)
