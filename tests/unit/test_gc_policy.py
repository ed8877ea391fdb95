"""The collector policy a serving process applies once it has started (app.tune_gc)."""

from __future__ import annotations

import gc
import subprocess
import sys

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


def test_a_serving_process_loads_sqlglots_dialect_before_it_serves() -> None:
    # A fresh interpreter: this one may have loaded the dialect already.  Loading it takes
    # ~12 ms (imports); in the drain at the first analyzed statement that would stall every
    # connection, and the loaded modules would miss tune_gc's freeze.
    probe = (
        "import sys\n"
        "from dbproxy.app import App\n"
        "from dbproxy.config import ProxyConfig\n"
        "before = 'sqlglot.parsers.postgres' in sys.modules\n"
        "App(ProxyConfig())\n"
        "print(before, 'sqlglot.parsers.postgres' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120
    ).stdout.split()
    assert out == ["False", "True"]
