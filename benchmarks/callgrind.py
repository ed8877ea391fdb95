"""Instruction counts from callgrind, shared by the benchmarks that report them
(``instructions``, ``drain``, ``session_loop``)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

_TOTAL = re.compile(rb"^(?:summary|totals):\s*(\d+)", re.MULTILINE)


def total_of(dump: bytes) -> int | None:
    """The instruction total of a callgrind dump, None when it has none (yet)."""
    match = _TOTAL.search(dump)
    return int(match.group(1)) if match else None


def instructions_of_module(module: str, args: list[str], out: Path) -> int:
    """Run ``python -m module *args`` under callgrind; everything it executed.  String
    hashing is seeded (``PYTHONHASHSEED=0``): dict probe sequences otherwise change from
    run to run, and the count with them (±2 %)."""
    subprocess.run(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
         sys.executable, "-m", module, *args],
        check=True, capture_output=True, env={**os.environ, "PYTHONHASHSEED": "0"},
    )  # fmt: skip
    total = total_of(out.read_bytes())
    if total is None:
        raise SystemExit(f"no totals in {out}")
    return total
