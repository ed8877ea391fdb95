"""The web UI in a real headless Chromium, against the real proxy and real clients.

A workload with a few fingerprints of different latencies, rows, errors and tags goes
through the proxy (tracing on, so the histogram has exemplars); then the browser opens the
UI: the top-queries table lists them, sorting by calls and by p95 reorders the rows as the
API does, a click opens the query page and its SVG charts are drawn, nothing logs a console
error, and the workload's literals appear nowhere.  Screenshots of both pages go to
``tests/artifacts/`` (or ``$DBPROXY_TEST_ARTIFACTS``); their paths are printed.

Needs Debian's ``chromium`` (``/usr/bin/chromium``, or ``$DBPROXY_TEST_CHROMIUM``).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import pytest

from dbproxy.pgcluster import PgServer
from tests.fixtures.fix_proxy import RunningProxy, start_proxy

pytestmark = pytest.mark.timeout(60)

#: a literal every statement of the workload carries; the UI must never show it
SENTINEL = "zz-sentinel-4f2a9c"
SENTINEL_NUMBER = "918273645"
CHROMIUM = (
    os.environ.get("DBPROXY_TEST_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
)
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = Path(
    os.environ.get("DBPROXY_TEST_ARTIFACTS") or Path(__file__).resolve().parents[1] / "artifacts"
)
ROW_COUNT_IS = "n => document.querySelectorAll('#queries tbody tr[data-fingerprint]').length === n"
TRACE_TEMPLATE = "https://traces.example/trace/{trace_id}?span={span_id}"


class _Sink(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def otlp_sink() -> Iterator[str]:
    """Somewhere for the span exporter to send to (spans are not checked here)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1/traces"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def ui_proxy(pg_server: PgServer, otlp_sink: str) -> Iterator[RunningProxy]:
    # every statement gets a root span, so every histogram bucket used has an exemplar
    running = start_proxy(
        pg_server,
        otel_env={"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": otlp_sink},
        trace_untraced_ratio=1.0,
    )
    try:
        yield running
    finally:
        running.stop()


def run_workload(proxy: RunningProxy) -> None:
    with psycopg.connect(proxy.dsn(), application_name="ui-test-web", autocommit=True) as conn:
        for _ in range(3):  # slow: ~50 ms
            conn.execute(f"SELECT '{SENTINEL}' AS tag, pg_sleep(0.05)").fetchall()
        for i in range(40):  # many fast calls, 5 rows each
            conn.execute(
                f"SELECT n + {SENTINEL_NUMBER} FROM generate_series(1, 5) AS n WHERE {i} >= 0"
            ).fetchall()
        for _ in range(8):  # tagged (sqlcommenter), ~5 ms
            conn.execute(
                f"SELECT pg_sleep(0.005), '{SENTINEL}' /*route='%2Fusers%2F%3Aid'*/"
            ).fetchall()
        for _ in range(4):  # errors: 22012
            with pytest.raises(psycopg.errors.DivisionByZero):
                conn.execute(f"SELECT {SENTINEL_NUMBER} / 0")
        for _ in range(2):  # 42P01
            with pytest.raises(psycopg.errors.UndefinedTable):
                conn.execute(f"SELECT * FROM ui_missing_table WHERE x = '{SENTINEL}'")

    async def with_asyncpg() -> None:
        conn = await asyncpg.connect(
            proxy.dsn(), server_settings={"application_name": "ui-test-worker"}
        )
        try:
            for _ in range(12):  # extended protocol, ~10 ms
                await conn.fetch("SELECT $1::text AS v, pg_sleep(0.01)", SENTINEL)
        finally:
            await conn.close()

    asyncio.run(with_asyncpg())


class Background:
    """The slow query, a few times a second, while the browser watches its page."""

    def __init__(self, proxy: RunningProxy) -> None:
        self.proxy = proxy
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with psycopg.connect(self.proxy.dsn(), autocommit=True) as conn:
            while not self.stop.is_set():
                conn.execute(f"SELECT '{SENTINEL}' AS tag, pg_sleep(0.05)").fetchall()
                self.stop.wait(0.1)

    def __enter__(self) -> Background:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(5)


def api(proxy: RunningProxy, path: str) -> Any:
    with urllib.request.urlopen(f"{proxy.http_url}{path}", timeout=10) as response:
        return json.loads(response.read())


def wait_for_calls(proxy: RunningProxy, calls: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        proxy.drain_now()
        total = sum(r["calls"] for r in api(proxy, "/api/queries?limit=1000")["queries"])
        if total >= calls or time.monotonic() > deadline:
            return
        time.sleep(0.05)


@pytest.mark.integration
def test_ui_in_a_real_browser(ui_proxy: RunningProxy) -> None:
    import playwright.sync_api as playwright_sync  # a test dependency

    if not Path(CHROMIUM).exists():
        pytest.fail(f"no Chromium at {CHROMIUM}: apt-get install chromium")
    started = time.monotonic()
    run_workload(ui_proxy)
    wait_for_calls(ui_proxy, 3 + 40 + 8 + 4 + 2 + 12)
    by_calls = [r["fingerprint"] for r in api(ui_proxy, "/api/queries?sort=calls")["queries"]]
    by_p95 = [r["fingerprint"] for r in api(ui_proxy, "/api/queries?sort=p95")["queries"]]
    assert by_calls != by_p95
    slow = next(
        r
        for r in api(ui_proxy, "/api/queries?sort=p95")["queries"]
        if "pg_sleep($" in r["query"] and r["p95_ms"] and r["p95_ms"] >= 40
    )
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    problems: list[str] = []
    query = urllib.parse.urlencode({"interval": "1000", "trace_url": TRACE_TEMPLATE})

    with playwright_sync.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 900})
            page.on(
                "console",
                lambda m: (
                    problems.append(f"console {m.type}: {m.text}")
                    if m.type in ("error", "warning")
                    else None
                ),
            )
            page.on("pageerror", lambda e: problems.append(f"pageerror: {e}"))
            page.on(
                "response",
                lambda r: problems.append(f"HTTP {r.status} {r.url}") if r.status >= 400 else None,
            )
            page.goto(f"{ui_proxy.http_url}/?{query}")

            # --- top queries -------------------------------------------------------
            rows = page.locator("#queries tbody tr[data-fingerprint]")
            rows.first.wait_for()
            assert rows.count() == len(by_calls)

            def shown() -> list[str]:
                return [
                    fp or ""
                    for fp in page.eval_on_selector_all(
                        "#queries tbody tr[data-fingerprint]",
                        "els => els.map(e => e.dataset.fingerprint)",
                    )
                ]

            def sort_by(key: str, expected: list[str]) -> None:
                page.click(f'#queries th[data-sort="{key}"] button')
                page.wait_for_selector(f'#queries th[data-sort="{key}"][aria-sort="descending"]')
                page.wait_for_function(
                    "fp => document.querySelector('#queries tbody tr')?.dataset.fingerprint === fp",
                    arg=expected[0],
                )
                assert shown() == expected
                others = page.eval_on_selector_all(
                    "#queries th[data-sort]", "els => els.map(e => e.getAttribute('aria-sort'))"
                )
                assert others.count("descending") == 1 and others.count("none") == len(others) - 1

            sort_by("calls", by_calls)
            sort_by("p95", by_p95)
            assert shown()[0] == slow["fingerprint"]
            # keyboard: focus the "Calls" sort button and press Enter
            page.focus('#queries th[data-sort="calls"] button')
            page.keyboard.press("Enter")
            page.wait_for_function(
                "fp => document.querySelector('#queries tbody tr')?.dataset.fingerprint === fp",
                arg=by_calls[0],
            )
            # filter by application_name (asyncpg's statements only), then back to all
            worker = [
                r["fingerprint"]
                for r in api(ui_proxy, "/api/queries?sort=calls")["queries"]
                if any(a["value"] == "ui-test-worker" for a in r["applications"])
            ]
            assert len(worker) == 1
            page.select_option("#f-attribution", "application=ui-test-worker")
            page.wait_for_function(
                ROW_COUNT_IS,
                arg=1,
            )
            assert shown() == worker
            page.select_option("#f-attribution", "")
            page.wait_for_function(
                ROW_COUNT_IS,
                arg=len(by_calls),
            )
            assert shown() == by_calls
            assert SENTINEL not in page.inner_text("body")
            assert SENTINEL_NUMBER not in page.content()
            top_png = ARTIFACTS / "ui-top-queries.png"
            page.screenshot(path=str(top_png), full_page=True)

            # --- query page (the slow query keeps running meanwhile) ---------------------
            background = Background(ui_proxy).__enter__()
            page.click(f'#queries tr[data-fingerprint="{slow["fingerprint"]}"] td.q a')
            page.wait_for_selector("#chart-histogram svg rect.bar")
            assert page.locator("pre.sql .kw").count() >= 1  # highlighted
            assert page.locator("pre.sql .param").count() >= 1  # $1, never the literal
            assert page.locator("#chart-histogram svg rect.bar").count() >= 1
            assert page.locator("#chart-histogram svg circle.exemplar").count() >= 1
            # a few polls later the per-interval charts have lines with several points
            page.wait_for_function(
                "() => [...document.querySelectorAll('#chart-latency svg path.line')]"
                ".some(p => (p.getAttribute('d').match(/L/g) || []).length >= 3)",
                timeout=10_000,
            )
            background.__exit__()
            for chart in ("#chart-latency", "#chart-calls", "#chart-rows"):
                assert page.locator(f"{chart} svg path.line").count() >= 1, chart
            link = page.locator("#samples a").first
            href = link.get_attribute("href") or ""
            assert href.startswith("https://traces.example/trace/"), href
            # no side connection here: the plans section says how to turn it on
            assert "start dbproxy with an inspect dsn" in page.inner_text("body").lower()
            assert SENTINEL not in page.inner_text("body")
            assert SENTINEL_NUMBER not in page.content()
            query_png = ARTIFACTS / "ui-query.png"
            page.screenshot(path=str(query_png), full_page=True)

            # an erroring query shows its SQLSTATEs
            errors = next(
                r["fingerprint"]
                for r in api(ui_proxy, "/api/queries?sort=errors")["queries"]
                if r["errors"].get("22012")
            )
            page.goto(f"{ui_proxy.http_url}/#/query/{errors}")
            page.wait_for_selector("#errors td code")
            assert "22012" in page.inner_text("#errors")
            page.emulate_media(color_scheme="dark")
            dark_png = ARTIFACTS / "ui-query-errors-dark.png"
            page.screenshot(path=str(dark_png), full_page=True)
            page.emulate_media(color_scheme="light")

            # the other pages render too
            page.goto(f"{ui_proxy.http_url}/#/connections")
            page.wait_for_selector("#connections tbody tr td")
            page.goto(f"{ui_proxy.http_url}/#/findings")
            page.wait_for_selector("#findings td.empty")  # nothing regressed in this workload
            connections_png = ARTIFACTS / "ui-connections.png"
            page.goto(f"{ui_proxy.http_url}/#/connections")
            page.wait_for_selector("#transactions")
            page.screenshot(path=str(connections_png), full_page=True)
        finally:
            browser.close()

    print(f"\nscreenshots: {top_png} {query_png} {dark_png} {connections_png}")
    assert problems == []
    assert time.monotonic() - started < 30


@pytest.mark.integration
def test_findings_view_in_a_real_browser(pg_server: PgServer) -> None:
    """A real deploy-named finding (dropped index after a deploy marked from the page
    itself, workload through the proxy on a simulated clock), plus a plan change from the
    server-side seam: the Findings view lists both with before/after numbers and the
    deploy, and no literal."""
    import playwright.sync_api as playwright_sync

    if not Path(CHROMIUM).exists():
        pytest.fail(f"no Chromium at {CHROMIUM}: apt-get install chromium")
    clock = [1_800_000_000.0]
    proxy = start_proxy(
        pg_server,
        clock=lambda: clock[0],
        detect_window=120.0,
        detect_min_calls=10,
        detect_min_latency_ms=2.0,
    )
    slow_sql = f"SELECT pg_sleep(%s), '{SENTINEL}' AS tag /*route='%%2Fcart'*/"
    fast_sql = f"SELECT {SENTINEL_NUMBER} + %s"
    problems: list[str] = []

    def minute(conn: psycopg.Connection[Any], sleep_s: float) -> None:
        for i in range(8):
            conn.execute(slow_sql, (sleep_s,)).fetchall()
            conn.execute(fast_sql, (i,)).fetchall()
        proxy.drain_now()
        clock[0] += 60
        proxy.call_async(proxy.app.detect())

    try:
        with (
            psycopg.connect(proxy.dsn(), autocommit=True) as conn,
            playwright_sync.sync_playwright() as p,
        ):
            for _ in range(6):
                minute(conn, 0.001)
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1440, "height": 900})
                page.on("pageerror", lambda e: problems.append(f"pageerror: {e}"))
                page.on(
                    "response",
                    lambda r: (
                        problems.append(f"HTTP {r.status} {r.url}") if r.status >= 400 else None
                    ),
                )
                page.goto(f"{proxy.http_url}/?interval=500#/findings")
                page.wait_for_selector("#findings td.empty")
                page.fill("#deploy-version", "v9.9.9")
                page.click("#deploy-form button[type=submit]")  # same-origin POST
                page.wait_for_selector("#deploys >> text=v9.9.9")
                for _ in range(3):  # the deploy made the query 20x slower
                    minute(conn, 0.02)
                slow_fp = next(
                    q["fingerprint"]
                    for q in api(proxy, "/api/queries")["queries"]
                    if "pg_sleep" in q["query"]
                )
                proxy.call(
                    lambda: proxy.app.regression.detector.note_plan_change(  # type: ignore[union-attr]
                        fingerprint=slow_fp,
                        database=pg_server.database,
                        at_s=clock[0],
                        before_plan_id="a1b2",
                        after_plan_id="c3d4",
                        before_summary="Index Scan using cart_pkey",
                        after_summary="Seq Scan on cart",
                    )
                )
                row = page.locator("#findings tbody tr", has_text="Latency regression")
                row.wait_for()
                assert "v9.9.9" in row.locator("td.deploy").inner_text()
                before = row.locator("td.before").inner_text()
                after = row.locator("td.after").inner_text()
                assert before.startswith("p95 ") and after.startswith("p95 "), (before, after)
                plan_row = page.locator("#findings tbody tr", has_text="Plan change")
                plan_row.wait_for()
                assert "Seq Scan on cart" in plan_row.locator("td.after").inner_text()
                text = page.inner_text("main")
                assert "pg_sleep($1)" in text
                assert SENTINEL not in text and SENTINEL_NUMBER not in text
                ARTIFACTS.mkdir(parents=True, exist_ok=True)
                findings_png = ARTIFACTS / "ui-findings.png"
                page.screenshot(path=str(findings_png), full_page=True)
                print(f"\nscreenshot: {findings_png}")
            finally:
                browser.close()
    finally:
        proxy.stop()
    assert problems == []
