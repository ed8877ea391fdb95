"""Regression detection end to end: real statements through the real proxy (psycopg), the
history and the detector on an injected clock, so hours of simulated workload run in
seconds.  Each simulated minute runs a fixed workload, drains the proxy, advances the
clock one minute and lets the App evaluate (``App.detect``) as its timer would.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import random
import sqlite3
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from dbproxy.pgcluster import PgServer
from dbproxy.sql.fingerprint import fingerprint
from tests.fixtures.fix_proxy import RunningProxy, start_proxy

TOKEN = "regression-token-0123456789"
START = 1_800_000_000.0  # a minute boundary, far from the real clock
SENTINEL = "S3NT1NEL-7f3a9"

AFFECTED = "SELECT id, amount FROM reg_orders WHERE customer_id = %s"
# the unaffected queries take a few ms (pg_sleep), as application queries do, so that
# the jitter of this shared test machine stays well inside their normal spread
BY_ID = "SELECT customer_id, pg_sleep(%s) FROM reg_orders WHERE id = %s"
SMALL = "SELECT count(*), pg_sleep(%s) FROM reg_small WHERE k = %s"
CHILD = "SELECT id, amount FROM reg_orders WHERE id = %s"
BATCH = "SELECT id, amount FROM reg_orders WHERE id = ANY(%s)"
PARENT = "SELECT id FROM reg_orders WHERE customer_id = %s ORDER BY id LIMIT 50"


class FakeClock:
    def __init__(self, start: float = START) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Receiver:
    """A local HTTP server standing in for Slack / a webhook: records POST bodies."""

    def __init__(self, status: int = 200) -> None:
        self.bodies: list[bytes] = []
        received = self.bodies
        self.status = status
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                received.append(self.rfile.read(length))
                self.send_response(outer.status)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def shop(pg_server: PgServer) -> Iterator[PgServer]:
    with psycopg.connect(pg_server.dsn(), autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS reg_orders, reg_small")
        conn.execute(
            "CREATE TABLE reg_orders (id bigint PRIMARY KEY, customer_id int NOT NULL,"
            " amount int NOT NULL, note text NOT NULL)"
        )
        conn.execute(
            "INSERT INTO reg_orders SELECT i, i % 5000, i % 997, md5(i::text)"
            " FROM generate_series(1, 300000) i"
        )
        conn.execute("CREATE TABLE reg_small (k int NOT NULL)")
        conn.execute("INSERT INTO reg_small SELECT i % 50 FROM generate_series(1, 200) i")
        conn.execute("ANALYZE reg_orders")
        conn.execute("ANALYZE reg_small")
    yield pg_server
    with psycopg.connect(pg_server.dsn(), autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS reg_orders, reg_small")


def create_index(pg: PgServer) -> None:
    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        conn.execute(
            "CREATE INDEX IF NOT EXISTS reg_orders_customer_idx ON reg_orders (customer_id)"
        )


def drop_index(pg: PgServer) -> None:
    # straight to the server: the "deploy", not the workload
    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        conn.execute("DROP INDEX IF EXISTS reg_orders_customer_idx")


def fid(sql: str) -> str:
    return fingerprint(sql.replace("%s", "$1")).id


def call_api(
    proxy: RunningProxy, path: str, method: str = "GET", body: Any = None, token: str | None = None
) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"{proxy.http_url}{path}", data=data, method=method)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def metrics(proxy: RunningProxy) -> dict[str, list[tuple[dict[str, str], float]]]:
    with urllib.request.urlopen(f"{proxy.http_url}/metrics", timeout=10) as response:
        text = response.read().decode()
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return out


class Sim:
    """Simulated minutes: a workload function per minute, then drain, tick, evaluate."""

    def __init__(self, proxy: RunningProxy, clock: FakeClock) -> None:
        self.proxy = proxy
        self.clock = clock
        self.conn = psycopg.connect(proxy.dsn(), autocommit=True, prepare_threshold=None)
        self.minute = 0

    def run(self, minutes: int, workload: Callable[[psycopg.Connection[Any], int], None]) -> None:
        for _ in range(minutes):
            workload(self.conn, self.minute)
            self.proxy.drain_now()
            self.clock.advance(60)
            self.minute += 1
            self.proxy.call_async(self.proxy.app.detect())

    def findings(self, state: str = "all") -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = call_api(self.proxy, f"/api/findings?state={state}")
        return result

    def close(self) -> None:
        self.conn.close()


def steady(conn: psycopg.Connection[Any], minute: int) -> None:
    rng = random.Random(minute)
    for _ in range(10):
        conn.execute(AFFECTED, (rng.randrange(5000),)).fetchall()
        conn.execute(BY_ID, (0.002, rng.randrange(1, 300000))).fetchall()
        conn.execute(SMALL, (0.002, rng.randrange(50))).fetchall()


def detection_config(**overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "detect_window": 300.0,
        "detect_min_calls": 20,
        "detect_min_latency_ms": 5.0,
        "api_token": TOKEN,
    }
    config.update(overrides)
    return config


def test_deploy_then_dropped_index_raises_one_finding_and_one_slack_post(
    shop: PgServer, tmp_path: Path
) -> None:
    create_index(shop)
    receiver = Receiver()
    clock = FakeClock()
    proxy = start_proxy(
        shop,
        clock=clock,
        **detection_config(
            state_dir=str(tmp_path),
            slack_webhook_url=receiver.url,
            public_url="http://dbproxy.example:9391",
            runbook_url="https://runbooks.example/dbproxy",
        ),
    )
    sim = Sim(proxy, clock)
    try:
        sim.run(30, steady)  # six windows of steady traffic
        assert sim.findings() == []

        deployed = call_api(proxy, "/api/deploys", "POST", {"version": "v2.0.1"}, token=TOKEN)
        assert deployed["deploy"]["version"] == "v2.0.1"
        drop_index(shop)
        deploy_minute = sim.minute
        while sim.minute < deploy_minute + 8 and not sim.findings():
            sim.run(1, steady)
        delay = sim.minute - deploy_minute
        sim.run(3, steady)  # and it stays one finding

        findings = sim.findings()
        assert len(findings) == 1, findings
        finding = findings[0]
        assert finding["fingerprint"] == fid(AFFECTED)
        assert finding["type"] == "latency_regression"
        assert finding["state"] == "open"
        assert finding["deploy"]["version"] == "v2.0.1"
        assert "customer_id = $1" in finding["query"]
        assert finding["after"]["p95_ms"] > 2 * finding["before"]["p95_ms"]
        assert finding["after"]["p95_ms"] >= 5.0
        assert finding["before"]["calls"] >= 20 and finding["after"]["calls"] >= 20
        print(f"detection delay: {delay} simulated minutes after the deploy")
        assert delay <= 3

        deploys = call_api(proxy, "/api/deploys")
        assert [d["version"] for d in deploys] == ["v2.0.1"]

        # the gauge another branch's alert rule reads: exactly these labels
        gauge = metrics(proxy)["dbproxy_findings"]
        assert gauge == [({"fingerprint": fid(AFFECTED), "type": "latency_regression"}, 1.0)]

        notifier = proxy.app.notifier
        assert notifier is not None and notifier.wait_idle()
        assert len(receiver.bodies) == 1
        slack = json.loads(receiver.bodies[0])
        text = slack["text"]
        assert fid(AFFECTED) in text and "customer_id = $1" in text
        assert "v2.0.1" in text and "p95" in text
        assert "https://runbooks.example/dbproxy/DBProxyQueryLatencyRegression.md" in text
        assert "http://dbproxy.example:9391/" in text
        sent = metrics(proxy)["dbproxy_notifications_total"]
        assert ({"target": "slack", "outcome": "sent"}, 1.0) in sent
    finally:
        sim.close()
        proxy.stop()
        receiver.close()
        create_index(shop)


def test_post_deploys_needs_the_token_or_same_origin(shop: PgServer) -> None:
    proxy = start_proxy(shop, **detection_config())
    try:
        with pytest.raises(urllib.error.HTTPError) as refused:
            call_api(proxy, "/api/deploys", "POST", {"version": "x"})
        assert refused.value.code == 403
        with pytest.raises(urllib.error.HTTPError) as wrong:
            call_api(
                proxy, "/api/deploys", "POST", {"version": "x"}, token="wrong-token-0123456789"
            )
        assert wrong.value.code == 403
        request = urllib.request.Request(
            f"{proxy.http_url}/api/deploys",
            data=b'{"version": "from-ui"}',
            method="POST",
            headers={"Origin": proxy.http_url, "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert json.loads(response.read())["deploy"]["version"] == "from-ui"
        with pytest.raises(urllib.error.HTTPError) as bad:
            call_api(proxy, "/api/deploys", "POST", {"at": 5}, token=TOKEN)
        assert bad.value.code == 400
        assert [d["version"] for d in call_api(proxy, "/api/deploys")] == ["from-ui"]
    finally:
        proxy.stop()


def noisy(conn: psycopg.Connection[Any], minute: int) -> None:
    """Unchanged but noisy: call counts vary ±30 %, latencies are lognormal around 3 ms
    (p95 ≈ 6 ms, above the 5 ms guard, so the guard is not what keeps them quiet).
    Statements are interleaved, as concurrent requests are."""
    rng = random.Random(1000 + minute)

    def latency() -> float:
        return min(0.05, rng.lognormvariate(-5.8, 0.4))

    work: list[tuple[str, tuple[Any, ...]]] = []
    work += [(BY_ID, (latency(), rng.randrange(1, 300000))) for _ in range(rng.randint(7, 13))]
    work += [(SMALL, (latency(), rng.randrange(50))) for _ in range(rng.randint(7, 13))]
    work += [("SELECT pg_sleep(%s)", (latency(),)) for _ in range(rng.randint(7, 13))]
    rng.shuffle(work)
    for sql, params in work:
        conn.execute(sql, params).fetchall()


def test_noisy_unchanged_workload_raises_at_most_one_finding(shop: PgServer) -> None:
    clock = FakeClock()
    window_min = 2
    # the default guards (5 ms minimum p95), short windows
    proxy = start_proxy(
        shop,
        clock=clock,
        **detection_config(detect_window=60.0 * window_min, detect_min_latency_ms=5.0),
    )
    sim = Sim(proxy, clock)
    try:
        windows = 100
        sim.run(windows * window_min, noisy)
        findings = sim.findings()
        keys = 3
        rate = len(findings) / (windows * keys)
        print(
            f"noise: {len(findings)} finding(s) over {windows} windows x {keys} fingerprints "
            f"(false-positive rate {rate:.4f} per fingerprint-window): "
            f"{[(f['type'], f['query'], f['before'], f['after']) for f in findings]}"
        )
        assert len(findings) <= 1, findings
        assert proxy.app.regression is not None
        assert proxy.app.regression.detector.evaluations >= windows * window_min
    finally:
        sim.close()
        proxy.stop()


def traceparent(rng: random.Random) -> str:
    return f"00-{rng.getrandbits(128):032x}-{rng.getrandbits(64):016x}-01"


def orm_page(conn: psycopg.Connection[Any], rng: random.Random, *, batched: bool) -> None:
    comment = f"/*route='%%2Forders%%2F%%3Aid',traceparent='{traceparent(rng)}'*/"
    customer = rng.randrange(5000)
    ids = [r[0] for r in conn.execute(f"{PARENT} {comment}", (customer,)).fetchall()]
    assert len(ids) == 50 or customer >= 5000
    if batched:
        conn.execute(f"{BATCH} {comment}", (ids,)).fetchall()
    else:
        for order_id in ids:
            conn.execute(f"{CHILD} {comment}", (order_id,)).fetchall()


def test_orm_loop_is_an_n_plus_one_and_the_batched_page_is_not(shop: PgServer) -> None:
    create_index(shop)
    clock = FakeClock()
    proxy = start_proxy(shop, clock=clock, **detection_config())
    rng = random.Random(7)
    try:
        with psycopg.connect(proxy.dsn(), autocommit=True, prepare_threshold=None) as conn:
            for _ in range(3):
                orm_page(conn, rng, batched=True)
            proxy.drain_now()
            clock.advance(5)  # the traces went idle
            proxy.call_async(proxy.app.detect())
            assert [f for f in call_api(proxy, "/api/findings") if f["type"] == "n_plus_one"] == []

            for _ in range(3):
                orm_page(conn, rng, batched=False)
            proxy.drain_now()
            clock.advance(5)
            proxy.call_async(proxy.app.detect())
        found = [f for f in call_api(proxy, "/api/findings") if f["type"] == "n_plus_one"]
        assert len(found) == 1, found
        finding = found[0]
        assert finding["fingerprint"] == fid(CHILD)
        assert finding["detail"] == "/orders/:id"
        assert finding["tags"]["route"] == "/orders/:id"
        assert finding["after"]["executions_per_request_median"] == 50
        assert finding["after"]["executions_per_request_max"] == 50
        assert finding["after"]["requests"] == 3
        assert finding["after"]["time_per_request_ms"] > 0
        counted = metrics(proxy)["dbproxy_n_plus_one_total"]
        assert counted == [({"fingerprint": fid(CHILD), "route": "/orders/:id"}, 3.0)]
    finally:
        proxy.stop()


def test_n_plus_one_inside_a_transaction_without_trace_context(shop: PgServer) -> None:
    clock = FakeClock()
    proxy = start_proxy(shop, clock=clock, **detection_config(n_plus_one_min=20))
    try:
        with psycopg.connect(proxy.dsn(), prepare_threshold=None) as conn:
            with conn.transaction():
                for i in range(1, 26):
                    conn.execute(CHILD, (i,)).fetchall()
            with conn.transaction():
                for i in range(1, 11):  # below --n-plus-one-min
                    conn.execute(BY_ID, (0, i)).fetchall()
        proxy.drain_now()
        proxy.call_async(proxy.app.detect())
        found = [f for f in call_api(proxy, "/api/findings") if f["type"] == "n_plus_one"]
        assert [(f["fingerprint"], f["after"]["executions_per_request_max"]) for f in found] == [
            (fid(CHILD), 25)
        ]
    finally:
        proxy.stop()


def test_history_survives_a_restart_and_a_corrupt_file_does_not_stop_startup(
    shop: PgServer, tmp_path: Path
) -> None:
    create_index(shop)
    clock = FakeClock()
    proxy = start_proxy(shop, clock=clock, **detection_config(state_dir=str(tmp_path)))
    sim = Sim(proxy, clock)
    try:
        sim.run(12, steady)
    finally:
        sim.close()
        proxy.stop()
    # restart: same state dir, the clock goes on
    proxy = start_proxy(shop, clock=clock, **detection_config(state_dir=str(tmp_path)))
    sim = Sim(proxy, clock)
    try:
        sim.run(3, steady)
        history = call_api(proxy, f"/api/history/{fid(AFFECTED)}")
        minutes = [p["start"] for p in history["points"]]
        assert history["persistent"] is True
        assert int(START) in minutes, "the first minute before the restart is kept"
        assert len(minutes) >= 15
        assert all(p["calls"] == 10 for p in history["points"][:-1]), history["points"]
        assert "customer_id = $1" in history["query"]
        regression = proxy.app.regression
        assert regression is not None
        assert regression.history.first_minute == int(START // 60)
    finally:
        sim.close()
        proxy.stop()

    state = tmp_path / "history.sqlite"
    state.write_bytes(b"this is not a database" * 100)
    proxy = start_proxy(shop, clock=clock, **detection_config(state_dir=str(tmp_path)))
    sim = Sim(proxy, clock)
    try:
        sim.run(2, steady)
        assert proxy.app.regression is not None and proxy.app.regression.store is not None
        aside = list(tmp_path.glob("history.sqlite.corrupt-*"))
        assert len(aside) == 1 and aside[0].read_bytes().startswith(b"this is not")
        history = call_api(proxy, f"/api/history/{fid(AFFECTED)}")
        assert len(history["points"]) >= 1
    finally:
        sim.close()
        proxy.stop()


def test_no_client_literal_reaches_findings_history_or_notifications(
    shop: PgServer, tmp_path: Path
) -> None:
    create_index(shop)
    receiver = Receiver()
    clock = FakeClock()
    proxy = start_proxy(
        shop,
        clock=clock,
        **detection_config(
            state_dir=str(tmp_path), webhook_url=receiver.url, slack_webhook_url=receiver.url
        ),
    )
    sim = Sim(proxy, clock)
    literal = f"'{SENTINEL}'"

    def with_sentinel(conn: psycopg.Connection[Any], minute: int) -> None:
        steady(conn, minute)
        if minute >= 12:  # a new heavy query, an error spike, an N+1: all carrying it
            conn.execute(f"SELECT pg_sleep(0.25) WHERE {literal} <> ''").fetchall()
            for _ in range(10):
                with contextlib.suppress(psycopg.errors.DivisionByZero):
                    conn.execute(f"SELECT 1 / 0 WHERE {literal} = {literal}")
            with conn.transaction():
                for _ in range(12):
                    conn.execute(f"SELECT id FROM reg_orders WHERE note = {literal}").fetchall()

    try:
        sim.run(12 + 5, with_sentinel)
        findings = call_api(proxy, "/api/findings")
        assert {f["type"] for f in findings} >= {"new_heavy", "n_plus_one"}, findings
        notifier = proxy.app.notifier
        assert notifier is not None and notifier.wait_idle()
        assert receiver.bodies
        assert proxy.app.regression is not None and proxy.app.regression.store is not None
        proxy.app.regression.store.flush()
        dump = "\n".join(sqlite3.connect(tmp_path / "history.sqlite").iterdump())
        texts = {
            "findings": json.dumps(findings),
            "history": json.dumps(call_api(proxy, f"/api/history/{findings[0]['fingerprint']}")),
            "store": dump,
            "notifications": b"".join(receiver.bodies).decode(),
            "metrics": json.dumps(metrics(proxy)),
        }
        assert "pg_sleep($1) WHERE $2 <> $3" in texts["store"]  # normalized text is stored
        for name, text in texts.items():
            assert SENTINEL not in text, f"{SENTINEL} leaked into {name}"
    finally:
        sim.close()
        proxy.stop()
        receiver.close()


def test_a_new_version_tag_marks_a_deploy(shop: PgServer) -> None:
    clock = FakeClock()
    proxy = start_proxy(shop, clock=clock, **detection_config())
    try:
        with psycopg.connect(proxy.dsn(), autocommit=True, prepare_threshold=None) as conn:
            for version in ("1.4.0", "1.4.0", "1.5.0", "1.4.0", "1.5.0"):  # rolling deploy
                conn.execute(
                    f"SELECT count(*) FROM reg_small /*application='shop',version='{version}'*/"
                ).fetchall()
                proxy.drain_now()
                clock.advance(10)
        deploys = call_api(proxy, "/api/deploys")
        assert [(d["version"], d["source"]) for d in deploys] == [("1.5.0", "tag:version")]
        assert deploys[0]["at"] == START + 20
    finally:
        proxy.stop()
