"""Database load by wait event per fingerprint, and blocking, against real PostgreSQL 18
through the real proxy with psycopg: the activity sampler reads pg_stat_activity on the
side connection and attributes each active backend to the fingerprint its proxied
session is running."""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from dbproxy.pgcluster import PgServer
from tests.fixtures.fix_proxy import RunningProxy, start_proxy
from tests.integration.test_inspect import _get, _inspect_dsn, _prepare, _wait
from tests.integration.test_tracing import OtlpReceiver, receiver

__all__ = ["receiver"]  # the fixture

INTERVAL = 0.2


@pytest.fixture
def sampled(pg_server: PgServer, receiver: OtlpReceiver, tmp_path: Path) -> Iterator[RunningProxy]:
    _prepare(pg_server)
    admin_dsn = pg_server.admin_dsn(dbname=pg_server.database)
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS act_accounts")
        conn.execute("CREATE TABLE act_accounts (id int PRIMARY KEY, balance int NOT NULL)")
        conn.execute("INSERT INTO act_accounts SELECT g, 100 FROM generate_series(1, 10) g")
        conn.execute("GRANT ALL ON act_accounts TO app")
    proxy = start_proxy(
        pg_server,
        inspect_dsn=_inspect_dsn(pg_server),
        explain_slow_ms=None,
        sample_activity_interval=INTERVAL,
        blocked_ms=300.0,
        otel_env={"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"{receiver.url}/v1/traces"},
        trace_slow_ms=200.0,
        query_log=str(tmp_path / "queries.jsonl"),
        log_slow_ms=500.0,
    )
    try:
        yield proxy
    finally:
        proxy.stop()


def _metrics(proxy: RunningProxy) -> str:
    with urllib.request.urlopen(proxy.http_url + "/metrics", timeout=10) as resp:
        return str(resp.read().decode())


def _load_series(text: str, fingerprint: str) -> dict[tuple[str, str], float]:
    out: dict[tuple[str, str], float] = {}
    pattern = re.compile(r"^dbproxy_db_load_seconds_total\{(.*)\} (\S+)$", re.M)
    for m in pattern.finditer(text):
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
        if labels["fingerprint"] == fingerprint:
            key = (labels["wait_event_type"], labels["wait_event"])
            out[key] = out.get(key, 0.0) + float(m.group(2))
    return out


def _fingerprint(proxy: RunningProxy, needle: str) -> str:
    def find() -> str | None:
        load = _get(proxy, "/api/load?by=fingerprint&window=600")
        for row in load["rows"]:
            if needle in row["query"]:
                return str(row["fingerprint"])
        return None

    return str(_wait(find, 10, f"load for a fingerprint with {needle!r}"))


def test_lock_wait_blocked_by_idle_in_transaction(
    sampled: RunningProxy, receiver: OtlpReceiver
) -> None:
    holder = psycopg.connect(sampled.dsn())
    waiter = psycopg.connect(sampled.dsn(), autocommit=True)
    try:
        holder.execute("UPDATE act_accounts SET balance = balance - 1 WHERE id = 1")
        hold_started = time.monotonic()
        errors: list[BaseException] = []

        def wait() -> None:
            try:
                waiter.execute("UPDATE act_accounts SET balance = balance + 5 WHERE id = 1")
            except BaseException as exc:  # surfaced below
                errors.append(exc)

        thread = threading.Thread(target=wait)
        started = time.monotonic()
        thread.start()

        def blocked() -> dict[str, Any] | None:
            for event in _get(sampled, "/api/blocking")["events"]:
                if "balance + $1" in event["query"]:
                    return dict(event)
            return None

        event = _wait(blocked, 5, "a blocking event on /api/blocking")
        seen_after = time.monotonic() - started
        assert seen_after < 2.0, f"blocking shown after {seen_after:.2f}s"
        blocker = event["blocker"]
        assert blocker["behind_proxy"] is True
        assert blocker["state"] == "idle in transaction"
        assert "balance - $1" in (blocker["query"] or "")
        assert blocker["fingerprint"] and blocker["fingerprint"] != event["fingerprint"]
        age = blocker["transaction_age_s"]
        assert age is not None and 0.2 < age <= time.monotonic() - hold_started + 0.5
        assert event["lock_wait_ms"] >= 300
        waiter_fp = event["fingerprint"]

        text = _metrics(sampled)
        before = _load_series(text, waiter_fp).get(("Lock", "transactionid"), 0)
        time.sleep(4 * INTERVAL)
        after = _load_series(_metrics(sampled), waiter_fp).get(("Lock", "transactionid"), 0)
        assert after > before > 0, (before, after)
        assert (
            f'dbproxy_lock_waits_total{{blocker_fingerprint="{blocker["fingerprint"]}",'
            f'fingerprint="{waiter_fp}"}} 1.0'
        ) in _metrics(sampled)

        holder.rollback()
        thread.join(10)
        assert not errors
        waiter_load = _get(sampled, "/api/load?by=wait_event&window=600")
        assert any(r["wait_event_type"] == "Lock" for r in waiter_load["rows"])
        # the waiter's span and slow sample name the blocker
        sampled.drain_now()
        tracing = sampled.app.tracing
        assert tracing is not None and tracing.force_flush()
        spans = [
            sp
            for sp in receiver.take()
            if sp.attributes.get("dbproxy.fingerprint") == waiter_fp
            and sp.attributes.get("dbproxy.blocked_by") == blocker["fingerprint"]
        ]
        assert len(spans) == 1, receiver.spans
        log = sampled.app.query_log
        assert log is not None and log.flush(5)
        logged = [json.loads(ln) for ln in Path(str(log._path)).read_text().splitlines()]
        waiter_lines = [ln for ln in logged if ln.get("fingerprint") == waiter_fp]
        assert waiter_lines and waiter_lines[0]["blocked_by"] == blocker["fingerprint"]
        assert "Lock/transactionid" in waiter_lines[0]["wait_events"], waiter_lines
        slow = _get(sampled, f"/api/queries/{waiter_fp}")["queries"][0]["slow_samples"]
        assert slow and slow[0]["blocked_by"] == blocker["fingerprint"], slow
        done = _wait(
            lambda: not _get(sampled, "/api/blocking")["events"][0]["ongoing"], 5, "event end"
        )
        assert done
    finally:
        holder.close()
        waiter.close()


def test_cpu_and_pg_sleep(sampled: RunningProxy) -> None:
    with psycopg.connect(sampled.dsn(), autocommit=True) as conn:
        conn.execute("SELECT pg_sleep(1.5)")
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            conn.execute(
                "SELECT count(*) FROM generate_series(1, 3000) a,"
                " LATERAL generate_series(1, 1000 + a % 2) b WHERE (a * b) % 7 = 1"
            )
    sleep_fp = _fingerprint(sampled, "pg_sleep")
    cpu_fp = _fingerprint(sampled, "generate_series")
    text = _metrics(sampled)
    sleep = _load_series(text, sleep_fp)
    assert sleep.get(("Timeout", "PgSleep"), 0) >= 1.0, sleep
    assert sum(sleep.values()) - sleep[("Timeout", "PgSleep")] <= 2 * INTERVAL, sleep
    cpu = _load_series(text, cpu_fp)
    total = sum(cpu.values())
    assert total >= 1.0, cpu
    assert cpu.get(("CPU", "CPU"), 0) / total >= 0.7, cpu
    # the slow-query log line carries the statement's sampled wait events
    sampled.drain_now()
    log = sampled.app.query_log
    assert log is not None and log.flush(5)
    lines = [json.loads(ln) for ln in Path(str(log._path)).read_text().splitlines()]
    sleep_lines = [ln for ln in lines if ln["event"] == "slow_query" and "pg_sleep" in ln["query"]]
    waits = sleep_lines[0].get("wait_events", {}) if sleep_lines else {}
    assert waits.get("Timeout/PgSleep", 0) >= 1.0, sleep_lines
    by_app = _get(sampled, "/api/load?by=application&window=600")
    assert by_app["rows"] and by_app["total_load_s"] > 2.0


def test_load_matches_measured_durations(sampled: RunningProxy) -> None:
    """Steady run: sampled active seconds ≈ the statement time the proxy measured."""
    stop = time.monotonic() + 4.0

    def client(i: int) -> None:
        with psycopg.connect(sampled.dsn(), autocommit=True) as conn:
            while time.monotonic() < stop:
                conn.execute("SELECT pg_sleep(0.03), count(*) FROM generate_series(1, 20000)")
                conn.execute("SELECT 1")

    threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    statements = sampled.statements()
    measured = sum(s.duration_ns for s in statements) / 1e9
    load = _get(sampled, "/api/load?by=fingerprint&window=600")["total_load_s"]
    ratio = load / measured
    print(f"load {load:.2f} s, measured {measured:.2f} s, ratio {ratio:.2f}")
    assert 0.7 <= ratio <= 1.3, (load, measured)
    samples = re.search(
        r'dbproxy_activity_samples_total\{outcome="sampled"\} (\S+)', _metrics(sampled)
    )
    assert samples is not None and float(samples.group(1)) <= 4.5 / INTERVAL + 3


def test_no_inspect_dsn_no_sampling(pg_server: PgServer) -> None:
    proxy = start_proxy(pg_server)
    try:
        assert proxy.app.activity is None
        with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
            conn.execute("SELECT pg_sleep(0.5)")
            with psycopg.connect(pg_server.admin_dsn(), autocommit=True) as admin:
                n = admin.execute(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE application_name = 'dbproxy-inspect'"
                ).fetchone()
        assert n is not None and n[0] == 0
        assert "dbproxy_db_load_seconds" not in _metrics(proxy)
    finally:
        proxy.stop()


def test_load_view_in_a_real_browser(sampled: RunningProxy) -> None:
    """The UI's Load page: the stacked chart, top queries by load, and the blocking table
    with the holder idle in transaction; no literal of the workload anywhere."""
    import playwright.sync_api as playwright_sync

    from tests.integration.test_ui_browser import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS

    if not Path(CHROMIUM).exists():
        pytest.fail(f"no Chromium at {CHROMIUM}: apt-get install chromium")
    secret = "918273645"
    problems: list[str] = []
    holder = psycopg.connect(sampled.dsn())
    waiter = psycopg.connect(sampled.dsn(), autocommit=True)
    try:
        holder.execute(f"UPDATE act_accounts SET balance = {secret} WHERE id = 2")
        thread = threading.Thread(
            target=lambda: waiter.execute(
                f"UPDATE act_accounts SET balance = balance + {secret} WHERE id = 2"
            )
        )
        thread.start()
        with playwright_sync.sync_playwright() as p:
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
                page.goto(f"{sampled.http_url}/?interval=1000#/load")
                row = page.locator("#blocking tbody tr", has_text="idle in transaction")
                row.wait_for(timeout=10_000)
                assert "balance + $1" in row.inner_text()
                page.locator("#load tbody tr[data-fingerprint]").first.wait_for()
                page.locator("#load-chart path.line").first.wait_for(state="attached")
                assert "Lock/transactionid" in page.inner_text("#load")
                text = page.inner_text("main")
                assert secret not in text
                ARTIFACTS.mkdir(parents=True, exist_ok=True)
                shot = ARTIFACTS / "ui-load.png"
                page.screenshot(path=str(shot), full_page=True)
                print(f"\nscreenshot: {shot}")
            finally:
                browser.close()
        holder.rollback()
        thread.join(10)
    finally:
        holder.close()
        waiter.close()
    assert problems == []
