"""The collector: names, labels, cumulative buckets, negotiation, promtool."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_om
from prometheus_client.parser import text_string_to_metric_families as parse_text

from dbproxy import speedups
from dbproxy.export.prometheus import (
    MAX_QUERY_LABEL_BYTES,
    DbproxyCollector,
    render,
    sqlstate_label,
    truncate_utf8,
)
from dbproxy.observe.stats import OTHER, QUERY_BUCKETS_S
from dbproxy.sql.cache import FingerprinterStats
from tests.unit.export.snapshots import FixedSource, big_snapshot, query, snapshot


class FakeProxy:
    connections_accepted = 11
    upstream_connect_failures = 2
    observer_errors = 1
    rejected_startups = 3
    cancel_requests = 4
    bytes_from_client = 1000
    bytes_from_server = 5000
    replication_physical = 6
    replication_database = 7


class FakeSink:
    accepted = 100
    dropped = 5
    capacity = 10_000


class FakeFingerprinter:
    stats = FingerprinterStats(
        exact_hits=90,
        exact_misses=10,
        shape_hits=6,
        shape_misses=4,
        parses=4,
        parse_failures=1,
        parse_ns=2_500_000_000,
        normalize_ns=1000,
        exact_size=10,
        shape_size=4,
        exact_capacity=4096,
        shape_capacity=1024,
    )


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in parse_text(text)
        for s in family.samples
    }


def scrape(source: FixedSource, accept: str | None = None, **kwargs: object) -> tuple[str, str]:
    registry = CollectorRegistry()
    registry.register(DbproxyCollector(source, **kwargs))  # type: ignore[arg-type]
    body, content_type = render(registry, accept)
    return body.decode(), content_type


Q1 = query(
    "fp1",
    observations={0: 1, 2: 3, len(QUERY_BUCKETS_S): 1},  # 0.5ms, 3 x 2.5ms, 1 above 30s
    sum_s=31.25,
    rows=12,
    errors={"23505": 2, "40P01": 1},
    rolled_back=1,
    applications=(("web", 4), ("cron", 1)),
    tags={"route": (("/users/:id", 5),)},
)
Q2 = query("fp1", user="bob", observations={1: 2}, sum_s=0.0015, rows=2)
Q3 = query(OTHER, query="", summary="", operation="", kind="other", tables=())


def labels(**kw: str) -> frozenset[tuple[str, str]]:
    return frozenset(kw.items())


QL = {
    "database": "app",
    "user": "alice",
    "fingerprint": "fp1",
    "operation": "SELECT",
    "kind": "read",
}


def test_query_histogram_is_cumulative_with_count_and_sum() -> None:
    source = FixedSource(snapshot(Q1, Q2, Q3))
    text, content_type = scrape(source)
    assert content_type.startswith("text/plain; version=0.0.4")
    s = samples(text)
    name = "dbproxy_query_duration_seconds"
    assert s[(f"{name}_bucket", labels(**QL, le="0.0005"))] == 1
    assert s[(f"{name}_bucket", labels(**QL, le="0.001"))] == 1
    assert s[(f"{name}_bucket", labels(**QL, le="0.0025"))] == 4
    assert s[(f"{name}_bucket", labels(**QL, le="30.0"))] == 4
    assert s[(f"{name}_bucket", labels(**QL, le="+Inf"))] == 5
    assert s[(f"{name}_count", labels(**QL))] == 5
    assert s[(f"{name}_sum", labels(**QL))] == 31.25
    bob = {**QL, "user": "bob"}
    assert s[(f"{name}_count", labels(**bob))] == 2
    assert s[("dbproxy_query_rows_total", labels(**QL))] == 12
    assert s[("dbproxy_query_rows_total", labels(**bob))] == 2
    assert s[("dbproxy_query_rolled_back_total", labels(**QL))] == 1
    err = "dbproxy_query_errors_total"
    assert (
        s[(err, labels(**QL, sqlstate="23505", error_class="integrity_constraint_violation"))] == 2
    )
    assert s[(err, labels(**QL, sqlstate="40P01", error_class="transaction_rollback"))] == 1
    other = {**QL, "fingerprint": OTHER, "operation": "", "kind": "other"}
    assert s[(f"{name}_count", labels(**other))] == 3
    assert source.tops == [500]


def test_query_info_once_per_fingerprint() -> None:
    text, _ = scrape(FixedSource(snapshot(Q1, Q2)))
    info = [line for line in text.splitlines() if line.startswith("dbproxy_query_info{")]
    assert len(info) == 1
    s = samples(text)
    key = labels(
        fingerprint="fp1",
        summary="SELECT users",
        operation="SELECT",
        kind="read",
        tables="users",
        query="SELECT * FROM users WHERE id = $1",
    )
    assert s[("dbproxy_query_info", key)] == 1


def test_query_label_is_cut_utf8_safe() -> None:
    long = "SELECT '€" + "é" * 2000
    assert len(truncate_utf8(long, MAX_QUERY_LABEL_BYTES).encode()) <= MAX_QUERY_LABEL_BYTES
    assert truncate_utf8("€€", 4) == "€"
    assert truncate_utf8("abc", 3) == "abc"
    text, _ = scrape(FixedSource(snapshot(query("fp", query=long, tables=("a", "b")))))
    (family,) = [f for f in parse_text(text) if f.name == "dbproxy_query_info"]
    (sample,) = family.samples
    assert sample.labels["query"] == truncate_utf8(long, MAX_QUERY_LABEL_BYTES)
    assert sample.labels["tables"] == "a,b"


def test_sqlstate_classes() -> None:
    assert sqlstate_label("23505") == ("23505", "integrity_constraint_violation")
    assert sqlstate_label("42P01") == ("42P01", "syntax_error_or_access_rule_violation")
    assert sqlstate_label("57014") == ("57014", "operator_intervention")
    assert sqlstate_label("XX000") == ("XX000", "internal_error")
    assert sqlstate_label("0A000") == ("0A000", "feature_not_supported")
    assert sqlstate_label("ZZ999") == ("ZZ999", "unknown")
    assert sqlstate_label("oops, 'secret'") == ("unknown", "unknown")


def test_transactions_connections_and_process_counters() -> None:
    text, _ = scrape(
        FixedSource(snapshot(Q1)),
        proxy=FakeProxy(),
        sink=FakeSink(),
        fingerprinter=FakeFingerprinter(),
        version="9.9.9",
    )
    s = samples(text)
    db = {"database": "app", "user": "alice"}
    assert s[("dbproxy_transactions_total", labels(**db, outcome="commit"))] == 7
    assert s[("dbproxy_transactions_total", labels(**db, outcome="rollback"))] == 2
    assert s[("dbproxy_transactions_total", labels(**db, outcome="error"))] == 1
    tx = "dbproxy_transaction_duration_seconds"
    assert s[(f"{tx}_bucket", labels(**db, le="0.0005"))] == 4
    assert s[(f"{tx}_bucket", labels(**db, le="0.01"))] == 4
    assert s[(f"{tx}_bucket", labels(**db, le="0.025"))] == 10
    assert s[(f"{tx}_bucket", labels(**db, le="300.0"))] == 10
    assert s[(f"{tx}_count", labels(**db))] == 10
    assert s[("dbproxy_client_connections", labels(**db))] == 3
    assert s[("dbproxy_client_connections_opened_total", labels(**db))] == 10
    assert s[("dbproxy_client_connections_rejected_total", labels(**db))] == 1
    plain = {
        "dbproxy_upstream_connect_errors_total": 2,
        "dbproxy_connections_accepted_total": 11,
        "dbproxy_startups_rejected_total": 3,
        "dbproxy_cancel_requests_total": 4,
        "dbproxy_observer_errors_total": 1,
        "dbproxy_events_dropped_total": 5,
        "dbproxy_events_processed_total": 42,
        "dbproxy_fingerprints_tracked": 1,
        "dbproxy_fingerprints_overflow_total": 0,
        "dbproxy_fingerprint_parse_seconds_total": 2.5,
        "dbproxy_fingerprint_parse_failures_total": 1,
    }
    for name, value in plain.items():
        assert s[(name, frozenset())] == value, name
    walsenders = "dbproxy_replication_connections_total"
    assert s[(walsenders, labels(mode="physical"))] == 6
    assert s[(walsenders, labels(mode="database"))] == 7
    assert s[("dbproxy_bytes_total", labels(direction="client_to_server"))] == 1000
    assert s[("dbproxy_bytes_total", labels(direction="server_to_client"))] == 5000
    assert s[("dbproxy_fingerprint_cache_hits_total", labels(cache="exact"))] == 90
    assert s[("dbproxy_fingerprint_cache_misses_total", labels(cache="shape"))] == 4
    build = [k for k in s if k[0] == "dbproxy_build_info"]
    assert len(build) == 1 and ("version", "9.9.9") in build[0][1]
    compiled = "true" if speedups.status().compiled else "false"
    assert ("compiled", compiled) in build[0][1]


def test_optional_sources_are_omitted() -> None:
    text, _ = scrape(FixedSource(snapshot(Q1)))
    assert "dbproxy_bytes_total" not in text
    assert "dbproxy_events_dropped_total" not in text
    assert "dbproxy_query_calls_by_tag_total" not in text
    assert "dbproxy_build_info{" in text


def test_calls_by_tag_sums_over_database_and_user() -> None:
    q2 = query("fp1", user="bob", applications=(("web", 3),), tags={"route": (("/x", 1),)})
    text, _ = scrape(FixedSource(snapshot(Q1, q2)), metrics_tags=("application", "route"))
    s = samples(text)
    name = "dbproxy_query_calls_by_tag_total"
    assert s[(name, labels(fingerprint="fp1", tag="application", value="web"))] == 7
    assert s[(name, labels(fingerprint="fp1", tag="application", value="cron"))] == 1
    assert s[(name, labels(fingerprint="fp1", tag="route", value="/users/:id"))] == 5
    assert s[(name, labels(fingerprint="fp1", tag="route", value="/x"))] == 1


def test_openmetrics_negotiation() -> None:
    source = FixedSource(snapshot(Q1, Q2))
    accept = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
    text, content_type = scrape(source, accept, proxy=FakeProxy(), sink=FakeSink())
    assert content_type.startswith("application/openmetrics-text; version=1.0.0")
    assert text.endswith("# EOF\n")
    # the strict parser raises on invalid output
    families = {f.name: f for f in parse_om(text)}  # type: ignore[no-untyped-call]
    hist = families["dbproxy_query_duration_seconds"]
    assert hist.type == "histogram"
    assert families["dbproxy_client_connections_opened"].type == "counter"
    assert families["dbproxy_client_connections"].type == "gauge"


def test_pinned_snapshot_is_used_by_collect() -> None:
    source = FixedSource(snapshot(Q1))
    collector = DbproxyCollector(source, max_fingerprints=7)
    registry = CollectorRegistry()
    registry.register(collector)
    assert source.tops == []  # registering takes no snapshot
    with collector.pinned():
        source.snap = snapshot()  # a later change must not leak into this scrape
        body, _ = render(registry, None)
    assert b'fingerprint="fp1"' in body
    assert source.tops == [7]


def test_invalid_limit() -> None:
    with pytest.raises(ValueError):
        DbproxyCollector(FixedSource(snapshot()), max_fingerprints=0)


def test_promtool_check_metrics(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail(
            "promtool not found: install Debian's 'prometheus' package (apt-get install prometheus)"
        )
    text, _ = scrape(
        FixedSource(snapshot(Q1, Q2, Q3)),
        proxy=FakeProxy(),
        sink=FakeSink(),
        fingerprinter=FakeFingerprinter(),
        metrics_tags=("application", "route"),
    )
    result = subprocess.run(
        [promtool, "check", "metrics"],
        check=False,
        input=text,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "" and result.stderr.strip() == "", (
        result.stdout + result.stderr
    )


def test_render_time_500_fingerprints() -> None:
    """500 fingerprints x 2 users: report the cost (rendered in a thread by http.py)."""
    snap = big_snapshot()
    source = FixedSource(snap)
    registry = CollectorRegistry()
    registry.register(DbproxyCollector(source))
    start = time.perf_counter()
    body, _ = render(registry, None)
    elapsed = time.perf_counter() - start
    assert body.count(b"dbproxy_query_duration_seconds_count{") == 1000
    assert elapsed < 2.0, f"render took {elapsed * 1000:.0f} ms"
