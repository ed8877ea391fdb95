"""Bounded value counters for attribution (application_name, sqlcommenter tags).

A counter is a plain ``dict[str, int]`` (cheap to bump on the hot path) holding at most
``limit`` distinct values plus the :data:`OTHER_VALUE` slot: once ``limit`` values are
known, a value not among them is counted under ``"__other__"``.  First come, first kept:
deterministic for a given event order and O(1) per observation, and the values that
matter (a handful of applications, routes, controllers) arrive early and often.  Counts
always sum to the number of observations.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

__all__ = ["OTHER_VALUE", "count_value", "merge_counts", "top_items"]

#: The value everything beyond a counter's limit is folded into.
OTHER_VALUE = "__other__"


def count_value(counter: dict[str, int], value: str, limit: int, times: int = 1) -> None:
    """Count ``times`` observations of ``value`` in a counter bounded to ``limit`` values
    (the same as ``times`` calls: where the first one goes, so do the others)."""
    n = counter.get(value)
    if n is not None:
        counter[value] = n + times
    elif len(counter) - (OTHER_VALUE in counter) < limit and value != OTHER_VALUE:
        counter[value] = times
    else:
        counter[OTHER_VALUE] = counter.get(OTHER_VALUE, 0) + times


def merge_counts(counters: Iterable[Mapping[str, int]]) -> dict[str, int]:
    """Sum several counters (unbounded: bound the result with :func:`top_items`)."""
    out: dict[str, int] = {}
    for counter in counters:
        for value, n in counter.items():
            out[value] = out.get(value, 0) + n
    return out


def top_items(counter: Mapping[str, int], limit: int) -> tuple[tuple[str, int], ...]:
    """The ``limit`` largest values by count (ties by value), the rest summed into
    ``"__other__"`` (listed last); the counts keep their total."""
    other = counter.get(OTHER_VALUE, 0)
    ranked = sorted(
        ((v, n) for v, n in counter.items() if v != OTHER_VALUE), key=lambda vn: (-vn[1], vn[0])
    )
    kept = ranked[:limit]
    other += sum(n for _v, n in ranked[limit:])
    if other:
        kept.append((OTHER_VALUE, other))
    return tuple(kept)
