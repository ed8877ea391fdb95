"""`dbproxy top` (being built)."""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str]) -> int:
    print("dbproxy: 'top' is not available in this build", file=sys.stderr)
    return 2
