"""The collector policy a serving process applies once it has started (app.tune_gc)."""

from __future__ import annotations

import gc

from dbproxy.app import GC_THRESHOLDS, tune_gc


def test_tune_gc_freezes_the_startup_heap_and_raises_the_young_threshold() -> None:
    before = gc.get_threshold()
    try:
        tune_gc()
        assert gc.get_threshold() == GC_THRESHOLDS
        assert GC_THRESHOLDS[0] > before[0]
        # the modules, sqlglot's tables…: out of the sight of every later collection
        assert gc.get_freeze_count() > 10_000
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
