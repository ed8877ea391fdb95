"""The inspector's store: plan changes, bounded slow samples, rate limits (pure)."""

from __future__ import annotations

from typing import Any

from dbproxy.inspect.plan import ScanCount
from dbproxy.inspect.store import InspectStore, RateLimiter, SlowSample


def _doc(node_type: str, index: str | None = None) -> list[dict[str, Any]]:
    plan: dict[str, Any] = {"Node Type": node_type, "Relation Name": "t", "Total Cost": 1.0}
    if index:
        plan["Index Name"] = index
    return [{"Plan": plan}]


def test_plan_change_is_reported_once_per_shape_change() -> None:
    store = InspectStore()
    assert store.record_plan("fp", "db", _doc("Index Scan", "t_pkey"), at_s=1.0) is None
    assert store.record_plan("fp", "db", _doc("Index Scan", "t_pkey"), at_s=2.0) is None
    change = store.record_plan("fp", "db", _doc("Seq Scan"), at_s=3.0)
    assert change is not None
    assert (change.before_summary, change.after_summary) == (
        "Index Scan using t_pkey on t",
        "Seq Scan on t",
    )
    assert change.before_plan_id != change.after_plan_id and change.at_s == 3.0
    assert store.record_plan("fp", "db", _doc("Seq Scan"), at_s=4.0) is None
    assert store.plan_changes == {("fp", "db"): 1}
    plans = store.plans("fp")["db"]
    assert [p.times_seen for p in plans] == [2, 2]
    assert store.record_plan("fp", "other", _doc("Seq Scan"), at_s=5.0) is None


def test_rows_scanned_mean_is_over_recent_samples() -> None:
    store = InspectStore()
    for _ in range(30):
        store.record_scan("fp", "db", ScanCount(rows_scanned=1, rows_returned=1), at_s=1.0)
    for _ in range(20):
        store.record_scan("fp", "db", ScanCount(rows_scanned=1000, rows_returned=1), at_s=2.0)
    rec = store.rows[("fp", "db")]
    assert rec.samples == 50 and rec.mean_scanned == 1000


def _sample(ms: int, at_s: int) -> SlowSample:
    return SlowSample(
        duration_ns=ms * 1_000_000,
        at_epoch_ns=at_s * 1_000_000_000,
        application_name="app",
        client="127.0.0.1:5",
        trace_id="",
        user="u",
        protocol="extended",
        param_type_oids=(23,),
    )


def test_slow_samples_keep_the_slowest_recent_ones() -> None:
    store = InspectStore(slow_samples=3, slow_window_s=100)
    for i, ms in enumerate([5, 50, 1, 40, 30, 2]):
        store.record_execution("fp", "db", _sample(ms, i))
    assert [s.duration_ns // 1_000_000 for s in store.slowest("fp", "db")] == [50, 40, 30]
    store.record_execution("fp", "db", _sample(3, 1000))  # the old ones left the window
    assert [s.duration_ns // 1_000_000 for s in store.slowest("fp", "db")] == [3]


def test_rate_limiter_global_and_per_key() -> None:
    now = [0.0]
    limiter = RateLimiter(per_minute=3, key_interval_s=10, clock=lambda: now[0])
    assert limiter.allow("a") and not limiter.allow("a")
    assert limiter.allow("b") and limiter.allow("c") and not limiter.allow("d")
    now[0] = 61.0
    assert limiter.allow("a") and limiter.allow("d")
    assert limiter.refused == 2


def test_plans_are_kept_for_a_bounded_number_of_fingerprints() -> None:
    store = InspectStore(max_plan_keys=2, max_plans=2)
    for i in range(3):
        store.record_plan(f"fp{i}", "db", _doc("Seq Scan"), at_s=float(i))
    assert store.plans("fp0") == {} and store.plans("fp2")
    for node, at in (("Seq Scan", 10.0), ("Index Scan", 11.0), ("Bitmap Heap Scan", 12.0)):
        store.record_plan("fp2", "db", _doc(node, "i" if "Index" in node else None), at_s=at)
    kept = [p.summary for p in store.plans("fp2")["db"]]
    assert len(kept) == 2 and kept[-1] == "Bitmap Heap Scan on t"  # the current one stays
