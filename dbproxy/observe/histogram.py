"""Mutable bucket counters that freeze into :class:`dbproxy.observe.stats.Histogram`.

Observations are kept in integer nanoseconds: the bounds are converted once, so the hot
path compares ints (no float division per event) and ``sum`` is exact.  Bucket ``i``
counts values ``<= bounds[i]`` and ``> bounds[i-1]`` (``bisect_left``), the last bucket
everything above the last bound, as the snapshot contract says.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

from dbproxy.observe.stats import Histogram

__all__ = ["HistogramBuilder", "bounds_to_ns", "bucket_of", "freeze"]


def bucket_of(bounds_ns: tuple[int, ...], value_ns: int) -> int:
    """``bisect_left(bounds_ns, value_ns)``, written out as a scan from the smallest bound:
    most statements fall in the first buckets, where this stops after a comparison or
    two (compiled, on native ints: ``bisect`` would box the value and compare Python
    objects, and a binary search pays four probes for every value)."""
    i = 0
    for bound in bounds_ns:
        if value_ns <= bound:
            return i
        i += 1
    return i


def bounds_to_ns(bounds: Sequence[float]) -> tuple[int, ...]:
    """Validate ``bounds`` (seconds) and convert them to integer nanoseconds."""
    if not bounds:
        raise ValueError("histogram bounds must not be empty")
    out = tuple(round(b * 1e9) for b in bounds)
    if out[0] <= 0 or any(a >= b for a, b in pairwise(out)):
        raise ValueError("histogram bounds must be positive and strictly increasing")
    return out


def freeze(bounds: tuple[float, ...], counts: Sequence[int], sum_ns: int) -> Histogram:
    """A frozen histogram of ``counts`` (len(bounds) + 1, not cumulative)."""
    return Histogram(
        bounds=bounds,
        bucket_counts=tuple(counts),
        count=sum(counts),
        sum_s=sum_ns / 1e9,
    )


class HistogramBuilder:
    """A mutable histogram; ``freeze()`` copies it out.  Not thread-safe."""

    __slots__ = ("bounds", "bounds_ns", "count", "counts", "sum_ns")

    def __init__(self, bounds: Sequence[float], bounds_ns: tuple[int, ...] | None = None) -> None:
        self.bounds: tuple[float, ...] = tuple(bounds)
        self.bounds_ns: tuple[int, ...] = bounds_to_ns(bounds) if bounds_ns is None else bounds_ns
        if len(self.bounds_ns) != len(self.bounds):
            raise ValueError("bounds_ns must match bounds")
        self.counts: list[int] = [0] * (len(self.bounds) + 1)
        self.count = 0
        self.sum_ns = 0

    def observe_ns(self, value_ns: int) -> None:
        self.counts[bucket_of(self.bounds_ns, value_ns)] += 1
        self.count += 1
        self.sum_ns += value_ns

    def observe(self, seconds: float) -> None:
        self.observe_ns(round(seconds * 1e9))

    def add_counts(self, counts: Sequence[int], sum_ns: int) -> None:
        """Merge raw bucket counts taken with the same bounds."""
        if len(counts) != len(self.counts):
            raise ValueError("cannot merge histograms with different bounds")
        mine = self.counts
        for i, n in enumerate(counts):
            mine[i] += n
        self.count += sum(counts)
        self.sum_ns += sum_ns

    def merge(self, other: HistogramBuilder) -> None:
        if other.bounds_ns != self.bounds_ns:
            raise ValueError("cannot merge histograms with different bounds")
        self.add_counts(other.counts, other.sum_ns)

    def reset(self) -> None:
        self.counts = [0] * (len(self.bounds) + 1)
        self.count = 0
        self.sum_ns = 0

    def freeze(self) -> Histogram:
        return Histogram(
            bounds=self.bounds,
            bucket_counts=tuple(self.counts),
            count=self.count,
            sum_s=self.sum_ns / 1e9,
        )
