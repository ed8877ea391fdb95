"""N+1 grouping per trace (closed when idle) and per transaction."""

from __future__ import annotations

from dbproxy.observe.nplusone import NPlusOneStats, NPlusOneTracker, trace_id_of

CHILD = ("c" * 16, "db")
PARENT = ("p" * 16, "db")


def test_trace_id_of() -> None:
    assert trace_id_of("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01") == (
        "4bf92f3577b34da6a3ce929d0e0e4736"
    )
    assert trace_id_of("00-" + "0" * 32 + "-00f067aa0ba902b7-01") == ""
    assert trace_id_of("garbage") == ""


def test_trace_groups_close_when_idle_and_report_offenders() -> None:
    seen: list[tuple[int, float]] = []

    def offender(stats: NPlusOneStats, now: float) -> None:
        seen.append((stats.executions_max, now))

    t = NPlusOneTracker(min_executions=10, idle_s=2.0, on_offender=offender)
    for request, n in enumerate((50, 30, 5)):
        trace = f"{request:032x}"
        t.statement(
            key=PARENT,
            duration_ns=1000,
            trace_id=trace,
            session_id=1,
            in_transaction=False,
            route="/orders",
            application="web",
            now=100.0,
        )
        for _ in range(n):
            t.statement(
                key=CHILD,
                duration_ns=2000,
                trace_id=trace,
                session_id=1,
                in_transaction=False,
                route="/orders",
                application="web",
                now=100.5,
            )
    t.expire(101.0)
    assert seen == []  # not idle yet
    t.expire(103.0)
    assert [s[0] for s in seen] == [50, 50]  # two offending requests (5 is under the limit)
    stats = t.stats[(CHILD[0], CHILD[1], "/orders")]
    assert stats.requests == 2 and stats.executions_median == 40.0
    assert stats.application == "web"
    assert abs(stats.time_per_request_s - 40 * 2000 / 1e9) < 1e-12


def test_transaction_groups_close_at_commit_and_untraced_autocommit_is_ignored() -> None:
    t = NPlusOneTracker(min_executions=3)
    for _ in range(5):
        t.statement(
            key=CHILD,
            duration_ns=1,
            trace_id="",
            session_id=7,
            in_transaction=False,
            route="",
            application="",
            now=1.0,
        )
    t.transaction_finished(7, 1.0)
    assert t.stats == {}
    for _ in range(5):
        t.statement(
            key=CHILD,
            duration_ns=1,
            trace_id="",
            session_id=7,
            in_transaction=True,
            route="",
            application="",
            now=1.0,
        )
    t.transaction_finished(7, 2.0)
    assert t.stats[(CHILD[0], CHILD[1], "")].executions_max == 5
