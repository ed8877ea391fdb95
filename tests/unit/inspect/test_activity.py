"""The activity sampler's accounting (pure: rows as pg_stat_activity returns them)."""

from __future__ import annotations

from typing import Any

from dbproxy.inspect.activity import ActivitySampler, ActivitySettings, _Mine
from dbproxy.inspect.side import SidePools
from dbproxy.protocol.session import Session
from dbproxy.sql.cache import Fingerprinter


class _Clock:
    def __init__(self) -> None:
        self.s = 1000.0

    def wall(self) -> float:
        return self.s

    def mono_ns(self) -> int:
        return int(self.s * 1e9)


def _sampler(clock: _Clock, **settings: Any) -> ActivitySampler:
    return ActivitySampler(
        ActivitySettings(interval_s=1.0, **settings),
        pools=SidePools("postgresql://x@127.0.0.1:1/db"),
        fingerprinter=Fingerprinter(),
        sessions=list,
        clock=clock.wall,
        monotonic_ns=clock.mono_ns,
    )


def _mine(sid: int, text: str, since_ns: int, active: bool = True) -> _Mine:
    s = Session(session_id=sid, emit=lambda e: None, epoch_offset_ns=0)
    s.database = "shop"
    s.application_name = "web"
    return _Mine(s, text, since_ns, active, 0)


def _row(pid: int, state: str, wtype: str | None, wevent: str | None, **kw: Any) -> Any:
    return {
        "pid": pid,
        "state": state,
        "wait_event_type": wtype,
        "wait_event": wevent,
        "backend_type": "client backend",
        "application_name": kw.get("app", "web"),
        "xact_age_s": kw.get("age"),
        "blockers": kw.get("blockers", []),
    }


def test_cpu_and_wait_events_with_a_bounded_label_set() -> None:
    clock = _Clock()
    sampler = _sampler(clock, max_fingerprints=1)
    now = clock.mono_ns()
    mine = {
        1: _mine(1, "SELECT * FROM a WHERE id = 1", now),
        2: _mine(2, "SELECT * FROM b WHERE id = 2", now),
        3: _mine(3, "SELECT * FROM a WHERE id = 3", now, active=False),
    }
    rows = [
        _row(1, "active", None, None),
        _row(2, "active", "IO", "DataFileRead"),
        _row(3, "idle in transaction", "Client", "ClientRead"),
    ]
    sampler.record(rows, mine)
    sampler.record(rows, mine, 0.5)
    fp_a = Fingerprinter().fingerprint("SELECT * FROM a WHERE id = 1").id
    assert sampler.load == {
        ("shop", fp_a, "CPU", "CPU"): 1.5,
        ("shop", "__other__", "IO", "DataFileRead"): 1.5,
    }
    by_wait = sampler.load_by("wait_event", 60)
    assert by_wait["total_s"] == 3.0
    assert by_wait["groups"][("IO", "DataFileRead")] == {"IO/DataFileRead": 1.5}
    assert sampler.load_by("application", 60)["groups"][("shop", "web")] == {
        "CPU": 1.5,
        "IO/DataFileRead": 1.5,
    }


def test_blocking_event_after_blocked_ms_once_per_wait() -> None:
    clock = _Clock()
    sampler = _sampler(clock, blocked_ms=1500)
    start = clock.mono_ns()
    mine = {
        10: _mine(10, "UPDATE t SET a = 2 WHERE id = 1", start),
        11: _mine(11, "UPDATE t SET a = 1 WHERE id = 1", start - 5_000_000_000, active=False),
    }
    rows = [
        _row(10, "active", "Lock", "transactionid", blockers=[11, 99]),
        _row(11, "idle in transaction", "Client", "ClientRead", age=6.0),
        _row(99, "active", None, None, app="psql", age=1.0),
    ]
    sampler.record(rows, mine)
    assert not sampler.events  # waited 0 s so far
    clock.s += 2
    sampler.record(rows, mine)
    clock.s += 1
    sampler.record(rows, mine)
    events = list(sampler.events)
    assert len(events) == 2
    inside, outside = events
    assert inside.blocker_behind_proxy and inside.blocker_state == "idle in transaction"
    assert inside.blocker_fingerprint and inside.blocker_transaction_age_s == 6.0
    assert inside.wait_s == 3.0 and inside.ongoing
    assert not outside.blocker_behind_proxy and outside.blocker_application_name == "psql"
    assert outside.blocker_label == "external"
    assert sum(sampler.lock_waits.values()) == 2
    assert sampler.blocked_by(10, start, start + 10**9) == inside.blocker_fingerprint
    assert sampler.blocked_by(10, start + 10**10, start + 2 * 10**10) is None
    clock.s += 1
    sampler.record([_row(10, "active", None, None)], mine)
    assert not inside.ongoing and not outside.ongoing


def test_top_wait_events_of_one_fingerprint_in_a_time_range() -> None:
    from dbproxy.inspect.activity import LoadBucket

    sampler = _sampler(_Clock())
    key = ("shop", "fp1", "web", "", "Lock", "transactionid")
    sampler.buckets.extend(
        [
            LoadBucket(at_s=100.0, load={key: 2.0, ("shop", "fp1", "", "", "CPU", "CPU"): 1.0}),
            LoadBucket(at_s=101.0, load={key: 1.5, ("shop", "fp2", "", "", "CPU", "CPU"): 9.0}),
            LoadBucket(at_s=200.0, load={key: 50.0}),  # outside the range
            LoadBucket(at_s=101.5, load={("other", "fp1", "", "", "IO", "DataFileRead"): 7.0}),
        ]
    )
    waits = sampler.top_wait_events("fp1", "shop", 99.0, 150.0)
    assert waits == {"Lock/transactionid": 3.5, "CPU": 1.0}
    assert list(waits) == ["Lock/transactionid", "CPU"]  # largest first
    assert sampler.top_wait_events("fp1", "shop", 99.0, 150.0, limit=1) == {
        "Lock/transactionid": 3.5
    }
    assert sampler.top_wait_events("fp3", "shop", 0.0, 1e9) == {}
