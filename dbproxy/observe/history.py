"""Per-fingerprint history in 1-minute buckets: what the regression detector compares.

Pure (no I/O, no asyncio): time comes from the minute numbers the caller passes
(``minute = int(epoch_seconds // 60)``), and completed minutes go to an optional
``on_minute_closed`` callback (the SQLite store, :mod:`dbproxy.observe.history_store`).

Per key ``(fingerprint id, database)`` a :class:`Bucket` holds calls, total time (ns),
rows, a coarse latency histogram on :data:`QUERY_BUCKETS_S` (mergeable and subtractable:
plain counts) and errors per SQLSTATE class.  Buckets are sparse: a key has one only in
the minutes it ran.

Memory holds only what the detector needs:

* the open minute, and the completed minutes of the recent window (``window_minutes``),
  whose sum is kept incrementally (a minute is added when it closes and subtracted when
  it leaves the window): reading the recent window is O(keys), not O(keys x minutes);
* for the trailing-median baseline, one :class:`BlockSummary` per key and per aligned
  block of ``window_minutes`` minutes, the last ``keep_blocks`` blocks.

Everything older (26 h of minutes, 14 days of hours) lives in the store only.
"""

from __future__ import annotations

import operator
import struct
from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

from dbproxy.observe.histogram import bounds_to_ns, bucket_of
from dbproxy.observe.stats import QUERY_BUCKETS_S

__all__ = [
    "BOUNDS_NS",
    "N_BUCKETS",
    "BlockSummary",
    "Bucket",
    "History",
    "Key",
    "quantile",
]

Key = tuple[str, str]  # (fingerprint id, database)

BOUNDS_NS: Final = bounds_to_ns(QUERY_BUCKETS_S)
N_BUCKETS: Final = len(QUERY_BUCKETS_S) + 1


def quantile(counts: Iterable[int], q: float) -> float:
    """The q-quantile (seconds) of a bucket-count list on :data:`QUERY_BUCKETS_S`, by
    linear interpolation inside the bucket (as PromQL's histogram_quantile); NaN if empty."""
    counts = list(counts)
    total = sum(counts)
    if not total:
        return float("nan")
    rank = q * total
    seen = 0
    lower = 0.0
    bounds = QUERY_BUCKETS_S
    for i, n in enumerate(counts):
        if i >= len(bounds):
            return bounds[-1]
        upper = bounds[i]
        if n and seen + n >= rank:
            return lower + (upper - lower) * (rank - seen) / n
        seen += n
        lower = upper
    return bounds[-1]


class Bucket:
    """Mutable sums of one key over some minutes (one minute, a window, a block)."""

    __slots__ = ("calls", "counts", "errors", "rows", "sum_ns")

    def __init__(self) -> None:
        self.calls = 0
        self.sum_ns = 0
        self.rows = 0
        self.counts = [0] * N_BUCKETS
        self.errors: dict[str, int] | None = None  # SQLSTATE class -> count

    def observe(self, duration_ns: int, rows: int, error_class: str | None) -> None:
        self.calls += 1
        self.sum_ns += duration_ns
        self.rows += rows
        counts = self.counts
        i = bucket_of(BOUNDS_NS, duration_ns)
        counts[i] = counts[i] + 1  # compiled: an int add (``+=`` on an item is generic)
        if error_class is not None:
            errors = self.errors
            if errors is None:
                errors = self.errors = {}
            errors[error_class] = errors.get(error_class, 0) + 1

    def add(self, other: Bucket, sign: int = 1) -> None:
        self.calls += sign * other.calls
        self.sum_ns += sign * other.sum_ns
        self.rows += sign * other.rows
        self.counts = list(
            map(operator.add if sign > 0 else operator.sub, self.counts, other.counts)
        )
        if other.errors:
            errors = self.errors
            if errors is None:
                errors = self.errors = {}
            for cls, n in other.errors.items():
                left = errors.get(cls, 0) + sign * n
                if left:
                    errors[cls] = left
                else:
                    errors.pop(cls, None)
            if not errors:
                self.errors = None

    def copy(self) -> Bucket:
        out = Bucket.__new__(Bucket)
        out.calls, out.sum_ns, out.rows = self.calls, self.sum_ns, self.rows
        out.counts = self.counts.copy()
        out.errors = dict(self.errors) if self.errors else None
        return out

    @property
    def error_count(self) -> int:
        return sum(self.errors.values()) if self.errors else 0

    def p95_s(self) -> float:
        return quantile(self.counts, 0.95)

    @property
    def total_s(self) -> float:
        return self.sum_ns / 1e9


# a completed minute of one key, packed: calls, rows, sum_ns, then the bucket counts
_PACK: Final = struct.Struct(f"<IQQ{N_BUCKETS}I")
_NO_ERRORS: Final[Mapping[str, int]] = MappingProxyType({})


class FrozenMinute:
    """A completed minute's buckets, packed (≈ 120 bytes per key instead of ≈ 350):
    memory holds a whole window of these for every active fingerprint."""

    __slots__ = ("errors", "packed")

    def __init__(self, buckets: Mapping[Key, Bucket]) -> None:
        pack = _PACK.pack
        self.packed: dict[Key, bytes] = {
            k: pack(b.calls, b.rows, b.sum_ns, *b.counts) for k, b in buckets.items()
        }
        self.errors: dict[Key, dict[str, int]] = {
            k: dict(b.errors) for k, b in buckets.items() if b.errors
        }

    def __len__(self) -> int:
        return len(self.packed)

    def __contains__(self, key: object) -> bool:
        return key in self.packed

    def get(self, key: Key) -> Bucket | None:
        raw = self.packed.get(key)
        if raw is None:
            return None
        return self._unpack(key, raw)

    def _unpack(self, key: Key, raw: bytes) -> Bucket:
        values = _PACK.unpack(raw)
        b = Bucket()
        b.calls, b.rows, b.sum_ns = values[0], values[1], values[2]
        b.counts = list(values[3:])
        errors = self.errors.get(key)
        if errors:
            b.errors = dict(errors)
        return b

    def items(self) -> Iterator[tuple[Key, Bucket]]:
        for key, raw in self.packed.items():
            yield key, self._unpack(key, raw)

    def keys(self) -> Iterable[Key]:
        return self.packed.keys()


@dataclass(frozen=True, slots=True)
class BlockSummary:
    """A key's numbers over one aligned block of ``window_minutes`` minutes."""

    block: int
    calls: int
    total_s: float
    p95_s: float
    rows: int
    errors: Mapping[str, int]


def merge_into(target: dict[Key, Bucket], source: Mapping[Key, Bucket] | FrozenMinute) -> None:
    for key, bucket in source.items():
        acc = target.get(key)
        if acc is None:
            acc = target[key] = Bucket()
        acc.add(bucket)


MinuteSink = Callable[[int, dict[Key, Bucket]], None]


class History:
    """Minute buckets of the recent window plus per-block summaries.  Not thread-safe:
    one task observes and rolls it."""

    def __init__(
        self,
        *,
        window_minutes: int,
        keep_blocks: int = 8,
        on_minute_closed: MinuteSink | None = None,
    ) -> None:
        if window_minutes < 1:
            raise ValueError("window_minutes must be >= 1")
        self.window_minutes = window_minutes
        self.keep_blocks = keep_blocks
        self._on_closed = on_minute_closed
        self._open_minute: int | None = None
        self._open: dict[Key, Bucket] = {}
        #: bumped whenever the open minute's buckets are handed on (see open_bucket)
        self.generation = 0
        #: completed minutes still inside the recent window, oldest first
        self._minutes: dict[int, FrozenMinute] = {}
        self._window: dict[Key, Bucket] = {}  # sum of self._minutes
        self._block_no: int | None = None
        self._block: dict[Key, Bucket] = {}
        self._blocks: dict[Key, deque[BlockSummary]] = {}
        #: the first minute this history has data for (store included): blocks before
        #: it are unknown, not zero traffic
        self.first_minute: int | None = None
        #: the minute each key was first seen (from the store too): "new" fingerprints
        self.first_seen: dict[Key, int] = {}

    # ------------------------------------------------------------------ input
    def observe(
        self, key: Key, minute: int, duration_ns: int, rows: int, error_class: str | None
    ) -> None:
        self.open_bucket(key, minute).observe(duration_ns, rows, error_class)

    def open_bucket(self, key: Key, minute: int) -> Bucket:
        """The bucket an observation of ``key`` at ``minute`` goes to (rolling to
        ``minute`` first).  A caller may keep it and observe into it directly while
        :attr:`generation` is unchanged and its minute is the same: the open minute
        only moves forward, and every move bumps the generation."""
        if minute != self._open_minute:
            self.roll(minute)
        bucket = self._open.get(key)
        if bucket is None:
            bucket = self._open[key] = Bucket()
            if key not in self.first_seen:
                self.first_seen[key] = minute
        return bucket

    def roll(self, minute: int) -> None:
        """Close the open minute if ``minute`` is later (a clock going back is ignored:
        its observations join the open minute)."""
        if self.first_minute is None:
            self.first_minute = minute
        if self._open_minute is None:
            self._open_minute = minute
            self._expire(minute)  # minutes restored from the store may be old
            return
        if minute <= self._open_minute:
            return
        closed, self._open_minute = self._open_minute, minute
        buckets, self._open = self._open, {}
        self.generation += 1
        if buckets:
            self._close(closed, buckets, persist=True)
        self._expire(minute)

    def restore(self, minute: int, buckets: dict[Key, Bucket]) -> None:
        """Replay a completed minute read back from the store (oldest first, before any
        observation), without writing it again."""
        if self.first_minute is None or minute < self.first_minute:
            self.first_minute = minute
        for key in buckets:
            seen = self.first_seen.get(key)
            if seen is None or minute < seen:
                self.first_seen[key] = minute
        self._close(minute, buckets, persist=False)

    def _close(self, minute: int, buckets: dict[Key, Bucket], *, persist: bool) -> None:
        if persist and self._on_closed is not None:
            self._on_closed(minute, buckets)
        block_no = minute // self.window_minutes
        if self._block_no is None:
            self._block_no = block_no
        elif block_no > self._block_no:
            self._finish_block()
            self._block_no = block_no
        if block_no == self._block_no:
            merge_into(self._block, buckets)
        self._minutes[minute] = FrozenMinute(buckets)
        merge_into(self._window, buckets)

    def _finish_block(self) -> None:
        assert self._block_no is not None
        for key, acc in self._block.items():
            series = self._blocks.get(key)
            if series is None:
                series = self._blocks[key] = deque(maxlen=self.keep_blocks)
            series.append(
                BlockSummary(
                    block=self._block_no,
                    calls=acc.calls,
                    total_s=acc.total_s,
                    p95_s=acc.p95_s(),
                    rows=acc.rows,
                    errors=dict(acc.errors) if acc.errors else _NO_ERRORS,
                )
            )
        self._block = {}
        # forget keys whose last block is too old to matter
        oldest = self._block_no - self.keep_blocks
        stale = [k for k, s in self._blocks.items() if s[-1].block < oldest]
        for key in stale:
            del self._blocks[key]

    def _expire(self, now_minute: int) -> None:
        """Drop completed minutes that left the window ``[now - W, now)``."""
        start = now_minute - self.window_minutes
        window = self._window
        for minute in [m for m in self._minutes if m < start]:
            for key, bucket in self._minutes.pop(minute).items():
                acc = window.get(key)
                if acc is None:  # pragma: no cover - sums are kept exactly
                    continue
                acc.add(bucket, -1)
                if acc.calls <= 0:
                    del window[key]

    # ------------------------------------------------------------------ output
    @property
    def open_minute(self) -> int | None:
        return self._open_minute

    def recent(self) -> dict[Key, Bucket]:
        """Sums of the completed minutes of the window plus the open minute (copies)."""
        out = {key: bucket.copy() for key, bucket in self._window.items()}
        merge_into(out, self._open)
        return out

    def since(self, minute: int) -> dict[Key, Bucket]:
        """Sums of the minutes from ``minute`` on that are still in memory (copies)."""
        out: dict[Key, Bucket] = {}
        for m, buckets in self._minutes.items():
            if m >= minute:
                merge_into(out, buckets)
        if self._open_minute is not None and self._open_minute >= minute:
            merge_into(out, self._open)
        return out

    def between(self, start: int, end: int) -> dict[Key, Bucket]:
        """Sums of the in-memory minutes in ``[start, end)``, open minute included."""
        out: dict[Key, Bucket] = {}
        for m, buckets in self._minutes.items():
            if start <= m < end:
                merge_into(out, buckets)
        if self._open_minute is not None and start <= self._open_minute < end:
            merge_into(out, self._open)
        return out

    def minutes_with_calls_above(self, key: Key, threshold_ns: int, start: int) -> int:
        """In how many in-memory minutes from ``start`` on ``key`` had a call slower than
        ``threshold_ns`` (bucket resolution: only buckets wholly above the threshold count)."""
        first = bisect_left(BOUNDS_NS, threshold_ns)
        n = 0
        for minute, buckets in self._minutes.items():
            bucket = buckets.get(key)
            if minute >= start and bucket is not None and any(bucket.counts[first + 1 :]):
                n += 1
        if self._open_minute is not None and self._open_minute >= start:
            bucket = self._open.get(key)
            if bucket is not None and any(bucket.counts[first + 1 :]):
                n += 1
        return n

    def minute_buckets(self, fingerprint: str) -> list[tuple[int, Key, Bucket]]:
        """The in-memory minutes (window and open one) of every key of ``fingerprint``."""
        out: list[tuple[int, Key, Bucket]] = []
        for minute, frozen in self._minutes.items():
            out.extend((minute, k, b) for k, b in frozen.items() if k[0] == fingerprint)
        if self._open_minute is not None:
            out.extend(
                (self._open_minute, k, b) for k, b in self._open.items() if k[0] == fingerprint
            )
        return out

    def open_buckets(self) -> dict[Key, Bucket]:
        return self._open

    def blocks(self, key: Key) -> tuple[BlockSummary, ...]:
        series = self._blocks.get(key)
        return tuple(series) if series else ()

    def keys_with_blocks(self) -> Iterable[Key]:
        return self._blocks.keys()

    def has_past(self, key: Key) -> bool:
        """Seen before the recent window (a block summary, or minutes now leaving)."""
        return key in self._blocks

    def minutes_in_memory(self) -> int:
        return len(self._minutes) + (1 if self._open else 0)
