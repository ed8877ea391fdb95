"""The detector on synthetic minute buckets: every finding type, guards, deploys, and the
methods the server-side inspector calls (note_plan_change, note_rows_scanned)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from dbproxy.observe.detector import Detector, DetectorSettings
from dbproxy.observe.history import Bucket, History, Key

T0 = 1_800_000_000.0  # a minute boundary
A: Key = ("aaaaaaaaaaaaaaaa", "shop")
B: Key = ("bbbbbbbbbbbbbbbb", "shop")
C: Key = ("cccccccccccccccc", "shop")
MS = 1_000_000


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


Workload = Callable[[int], dict[Key, list[tuple[int, int, str | None]]]]


def steady(minute: int) -> dict[Key, list[tuple[int, int, str | None]]]:
    """Per key, (duration ns, rows, error class) of each call in that minute."""
    return {
        A: [(1 * MS + (i * 37 + minute) % 200_000, 1, None) for i in range(10)],
        B: [(2 * MS + (i * 53 + minute) % 300_000, 5, None) for i in range(10)],
        C: [(3 * MS, 2, "23" if i == 0 and minute % 4 == 0 else None) for i in range(10)],
    }


class Sim:
    def __init__(self, **settings: object) -> None:
        self.clock = Clock()
        self.settings = DetectorSettings(
            window_s=300,
            min_calls=20,
            min_latency_s=0.005,
            **settings,  # type: ignore[arg-type]
        )
        self.history = History(window_minutes=self.settings.window_minutes)
        self.detector = Detector(
            history=self.history,
            settings=self.settings,
            clock=self.clock,
            query_text=lambda key: f"SELECT {key[0]}",
        )
        self.opened: list[str] = []
        self.detector.listeners.append(lambda f: self.opened.append(f"{f.state}:{f.type}"))

    def run(self, minutes: int, workload: Workload = steady) -> None:
        for _ in range(minutes):
            minute = int(self.clock.now // 60)
            for key, calls in workload(minute).items():
                for duration, rows, error in calls:
                    self.history.observe(key, minute, duration, rows, error)
                    deploy = self.detector.active_deploy(self.clock.now)
                    if deploy is not None:
                        deploy.after.setdefault(key, Bucket()).observe(duration, rows, error)
            self.clock.now += 60
            self.detector.evaluate()

    def types(self, state: str = "open") -> list[tuple[str, str, str]]:
        return sorted(
            (f.fingerprint, f.type, f.detail) for f in self.detector.findings() if f.state == state
        )


def slower_a(minute: int) -> dict[Key, list[tuple[int, int, str | None]]]:
    calls = steady(minute)
    calls[A] = [(40 * MS, 1, None) for _ in range(10)]
    return calls


def test_steady_workload_raises_nothing() -> None:
    sim = Sim()
    sim.run(60)
    assert sim.types() == [] and sim.opened == []


def test_latency_regression_against_the_trailing_median_then_resolved() -> None:
    sim = Sim()
    sim.run(30)
    sim.run(3, slower_a)
    assert sim.types() == [(A[0], "latency_regression", "")]
    finding = sim.detector.findings()[0]
    assert finding.deploy is None and finding.baseline == "trailing"
    assert finding.before["p95_ms"] < 3 and finding.after["p95_ms"] > 20
    assert sim.opened == ["open:latency_regression"]
    sim.run(7)  # the slow minutes leave the window
    assert sim.types() == []
    assert sim.types("resolved") == [(A[0], "latency_regression", "")]


def test_one_slow_minute_is_not_a_regression() -> None:
    sim = Sim()
    sim.run(30)
    sim.run(1, slower_a)
    sim.run(5)
    assert sim.types() == [] and sim.types("resolved") == []


def test_min_latency_guard() -> None:
    sim = Sim()
    sim.run(30)

    def a_doubles(minute: int) -> dict[Key, list[tuple[int, int, str | None]]]:
        calls = steady(minute)
        calls[A] = [(3 * MS, 1, None) for _ in range(10)]  # 3x slower, under 5 ms
        return calls

    sim.run(5, a_doubles)
    assert sim.types() == []


def test_most_fingerprints_slower_at_once_is_systemic() -> None:
    sim = Sim()
    sim.run(30)

    def all_slow(minute: int) -> dict[Key, list[tuple[int, int, str | None]]]:
        return {k: [(50 * MS, r, None) for _, r, _ in v] for k, v in steady(minute).items()}

    sim.run(4, all_slow)
    assert sim.types() == []
    assert sim.detector.systemic_evaluations >= 1


def test_error_spike_by_sqlstate_class() -> None:
    sim = Sim()
    sim.run(30)

    def b_fails(minute: int) -> dict[Key, list[tuple[int, int, str | None]]]:
        calls = steady(minute)
        calls[B] = [(2 * MS, 0, "40" if i < 4 else None) for i in range(10)]
        return calls

    sim.run(3, b_fails)
    assert sim.types() == [(B[0], "error_spike", "40")]


def test_rows_per_call_jump_and_throughput_drop() -> None:
    sim = Sim()
    sim.run(30)

    def changed(minute: int) -> dict[Key, list[tuple[int, int, str | None]]]:
        calls = steady(minute)
        calls[B] = [(d, 500, e) for d, _, e in calls[B]]
        calls[C] = calls[C][:1]
        return calls

    sim.run(5, changed)
    assert sim.types() == [
        (B[0], "rows_per_call_jump", ""),
        (C[0], "throughput_drop", ""),
    ]


def test_new_heavy_fingerprint_after_warm_up_only() -> None:
    sim = Sim(new_heavy_min_total_s=0.5)
    new: Key = ("dddddddddddddddd", "shop")

    def with_new(minute: int) -> dict[Key, list[tuple[int, int, str | None]]]:
        calls = steady(minute)
        calls[new] = [(200 * MS, 1, None)]
        return calls

    sim.run(2, with_new)  # at start every fingerprint is new: nothing
    assert sim.types() == []
    sim2 = Sim(new_heavy_min_total_s=0.5)
    sim2.run(30)
    sim2.run(4, with_new)
    assert sim2.types() == [(new[0], "new_heavy", "")]


def test_deploy_compares_before_and_after_and_names_it() -> None:
    sim = Sim()
    sim.run(12)
    deploy = sim.detector.mark_deploy("v42")
    sim.run(3, slower_a)
    [finding] = sim.detector.findings()
    assert (finding.type, finding.fingerprint) == ("latency_regression", A[0])
    assert finding.deploy is deploy and finding.baseline == "deploy"
    assert finding.as_json()["deploy"]["version"] == "v42"


def test_deploy_in_the_past_splits_the_minutes_in_memory() -> None:
    sim = Sim()
    sim.run(12)
    sim.run(2, slower_a)
    deploy = sim.detector.mark_deploy("v7", at=sim.clock.now - 120)
    # "before" is what memory still holds of the window before it (3 of its 5 minutes)
    assert deploy.after[A].calls == 20 and deploy.before[A].calls == 30
    sim.detector.evaluate()
    assert sim.types() == [(A[0], "latency_regression", "")]
    assert sim.detector.findings()[0].deploy is deploy


def test_version_tag_marks_a_deploy_once_per_new_value() -> None:
    sim = Sim()
    d = sim.detector
    assert d.observe_version_tag("version", "1.0", T0) is None  # running at start
    assert d.observe_version_tag("version", "1.0", T0) is None
    marked = d.observe_version_tag("version", "1.1", T0 + 1)
    assert marked is not None and marked.version == "1.1" and marked.source == "tag:version"
    # a rolling deploy: old and new interleave, no new deploy
    assert d.observe_version_tag("version", "1.0", T0 + 2) is None
    assert d.observe_version_tag("version", "1.1", T0 + 3) is None
    assert [x.version for x in d.deploys] == ["1.1"]


def test_day_ago_baseline_is_used_when_given() -> None:
    sim = Sim(baselines=("day",))
    sim.run(6)
    day = Bucket()
    for _ in range(50):
        day.observe(1 * MS, 1, None)
    sim.run(2, slower_a)
    opened = sim.detector.evaluate(sim.clock.now, day_ago={A: day})
    assert [(f.type, f.baseline) for f in opened] == [("latency_regression", "day")]


def test_note_plan_change_raises_and_attaches_to_the_latency_finding() -> None:
    sim = Sim()
    sim.run(30)
    sim.run(3, slower_a)
    sim.detector.note_plan_change(
        fingerprint=A[0],
        database=A[1],
        at_s=sim.clock.now,
        before_plan_id="p1",
        after_plan_id="p2",
        before_summary="Index Scan on orders",
        after_summary="Seq Scan on orders",
    )
    by_type = {f.type: f for f in sim.detector.findings()}
    assert set(by_type) == {"latency_regression", "plan_change"}
    plan = by_type["plan_change"].plan
    assert plan is not None and plan["after_summary"] == "Seq Scan on orders"
    assert by_type["latency_regression"].plan == plan
    assert by_type["latency_regression"].as_json()["plan_ids"] == ["p1", "p2"]
    assert "open:plan_change" in sim.opened
    # a plan change first, the latency finding later: attached when raised
    sim2 = Sim()
    sim2.run(30)
    sim2.detector.note_plan_change(
        fingerprint=A[0],
        database=A[1],
        at_s=sim2.clock.now,
        before_plan_id="p1",
        after_plan_id="p2",
        before_summary="Index Scan",
        after_summary="Seq Scan",
    )
    sim2.run(3, slower_a)
    latency = [f for f in sim2.detector.findings() if f.type == "latency_regression"]
    assert latency and latency[0].plan is not None


def test_note_rows_scanned_jump() -> None:
    sim = Sim()
    d = sim.detector
    for i in range(10):
        d.note_rows_scanned(
            fingerprint=A[0], database=A[1], at_s=T0 + i * 60, rows_scanned_per_call=100.0
        )
    sim.clock.now = T0 + 20 * 60
    d.evaluate()
    assert sim.types() == []
    d.note_rows_scanned(
        fingerprint=A[0], database=A[1], at_s=sim.clock.now, rows_scanned_per_call=300_000.0
    )
    d.evaluate()
    [finding] = d.findings()
    assert finding.type == "rows_scanned_jump"
    assert finding.before["rows_scanned_per_call"] == 100.0
    assert finding.after["rows_scanned_per_call"] == 300_000.0


@pytest.mark.parametrize("window_s", [60.0, 900.0])
def test_window_minutes(window_s: float) -> None:
    assert DetectorSettings(window_s=window_s).window_minutes == window_s // 60
