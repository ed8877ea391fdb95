"""History buckets in memory and the SQLite store (a real file in a temp dir)."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import pytest

from dbproxy.observe.history import Bucket, History, quantile
from dbproxy.observe.history_store import SCHEMA_VERSION, open_store

MS = 1_000_000
K1 = ("1111111111111111", "db")
K2 = ("2222222222222222", "db")


def test_window_sums_are_kept_incrementally_and_expire() -> None:
    closed: list[int] = []
    h = History(window_minutes=3, on_minute_closed=lambda m, b: closed.append(m))
    for minute in range(100, 106):
        for _ in range(minute - 99):  # 1, 2, 3 … calls
            h.observe(K1, minute, 2 * MS, 3, "23" if minute == 104 else None)
    h.roll(106)
    assert closed == list(range(100, 106))
    recent = h.recent()
    assert recent[K1].calls == 4 + 5 + 6  # minutes 103..105
    assert recent[K1].rows == 3 * 15
    assert recent[K1].errors == {"23": 5}
    assert h.since(105)[K1].calls == 6
    assert h.between(103, 105)[K1].calls == 9
    h.roll(120)  # idle: everything left the window
    assert h.recent() == {}
    assert h.first_seen[K1] == 100


def test_blocks_summarise_aligned_windows() -> None:
    h = History(window_minutes=5, keep_blocks=3)
    for minute in range(0, 30):
        for _ in range(10):
            h.observe(K1, minute, (1 if minute < 15 else 40) * MS, 1, None)
    h.roll(30)
    blocks = h.blocks(K1)
    # the last three finished blocks, oldest first (block 5 finishes when minute 30 closes)
    assert [b.block for b in blocks] == [2, 3, 4]
    assert all(b.calls == 50 for b in blocks)
    assert blocks[-1].p95_s > 0.02


def test_bucket_quantile_and_subtraction() -> None:
    b = Bucket()
    for d in (MS, MS, 30 * MS):
        b.observe(d, 1, None)
    c = b.copy()
    c.add(b, -1)
    assert c.calls == 0 and not any(c.counts)
    assert 0.0005 < quantile(b.counts, 0.5) <= 0.001
    assert quantile([0] * len(b.counts), 0.5) != quantile([0] * len(b.counts), 0.5)  # NaN


def test_store_round_trip_merges_partial_minutes_and_rolls_hours(tmp_path: Path) -> None:
    store = open_store(str(tmp_path))
    assert store is not None
    a = Bucket()
    for _ in range(3):
        a.observe(2 * MS, 4, "40")
    store.write_minute(600, {K1: a}, {K1: "SELECT $1"})
    store.write_minute(600, {K1: a})  # the same minute again (restart): summed
    store.write_minute(659, {K2: a}, {K2: "SELECT 2"})
    store.write_minute(661, {K1: a})  # hour 11 begins: hour 10 is rolled up
    store.flush()
    [(minute, buckets)] = store.minutes(600, 601)
    assert minute == 600 and buckets[K1].calls == 6 and buckets[K1].errors == {"40": 6}
    window = store.window(600, 700)
    assert window[K1].calls == 9 and window[K2].calls == 3
    hours = store.series(K1[0], None, "hours", 0)
    assert [(h[0], h[2]) for h in hours] == [(10, 6)]
    assert {(f, q) for f, _, q, _ in store.fingerprints()} == {
        (K1[0], "SELECT $1"),
        (K2[0], "SELECT 2"),
    }
    store.add_deploy(1.0, "v1", "api")
    store.flush()
    assert store.deploys(0) == [(1.0, "v1", "api")]
    store.close()
    with sqlite3.connect(tmp_path / "history.sqlite") as conn:
        assert conn.execute("SELECT version FROM schema_version").fetchone() == (SCHEMA_VERSION,)


@pytest.mark.parametrize("content", [b"garbage" * 1000, b""])
def test_a_corrupt_file_is_moved_aside(
    tmp_path: Path, content: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "history.sqlite"
    if content:
        path.write_bytes(content)
    with caplog.at_level(logging.WARNING):
        store = open_store(str(tmp_path), clock=lambda: 123.0)
    assert store is not None
    store.close()
    if content:
        assert (tmp_path / "history.sqlite.corrupt-123").read_bytes() == content
        assert "moved it to history.sqlite.corrupt-123" in caplog.text


def test_another_schema_version_is_moved_aside(tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / "history.sqlite") as conn:
        conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        conn.execute("INSERT INTO schema_version VALUES (999)")
    store = open_store(str(tmp_path), clock=lambda: 5.0)
    assert store is not None
    store.close()
    assert (tmp_path / "history.sqlite.corrupt-5").exists()


def test_an_unusable_state_dir_means_memory_only(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    assert open_store(str(blocker / "sub")) is None
