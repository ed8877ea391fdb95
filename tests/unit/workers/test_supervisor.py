"""The restart budget of the worker pool (no processes: spawning is recorded)."""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path

import pytest

from dbproxy.workers.supervisor import WorkerPool


def mode(path: str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def exists(path: str) -> bool:
    return Path(path).exists()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_restarts_are_bounded_per_window_then_wait_for_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = Clock()
    pool = WorkerPool(3, max_restarts=5, restart_window_s=60.0, clock=clock)
    spawned: list[int] = []
    monkeypatch.setattr(pool, "_spawn", spawned.append)
    try:
        assert mode(pool.directory) == 0o700
        for _ in range(5):
            pool._restart_later(1)
            clock.now += 1
        assert spawned == [1] * 5 and pool.restarts == 5
        pool._restart_later(1)  # the sixth death within a minute: no restart now
        assert spawned == [1] * 5 and 1 in pool._retry
        loop = asyncio.get_running_loop()
        # the next try is when the first restart leaves the window (55 s from now)
        assert pool._retry[1].when() - loop.time() == pytest.approx(55.0, abs=1.0)
        pool._restart_later(2)  # other slots have their own budget
        assert spawned[-1] == 2
        clock.now += 60
        pool._retry.pop(1).cancel()
        pool._retry_now(1)  # the window has passed: restarted again
        assert spawned[-1] == 1 and pool.restarts == 7
        pool.begin_stop()  # no retries after stop
        assert not pool._retry
    finally:
        pool.cleanup()
    assert not exists(pool.directory)
