"""The cached fingerprinter the proxy owns (one per process, passed in by the composition
root; never a module global).

Three bounded caches sit in front of sqlglot (:class:`GenerationalCache`: a hit is one
dict lookup, nothing is reordered; entries used since the last rotation survive it):

* **exact**: raw statement text → :class:`Fingerprint`.  An extended-protocol query
  (``$n`` parameters) has the same text on every execution, so this is the common case.
* **skeleton**: the text with its constants cut out (:mod:`dbproxy.sql.skeleton`, one
  pass, no lexer) → :class:`Fingerprint`.  A simple-protocol query carries new values
  every time, so its text rarely repeats, but its skeleton does: a hit costs one scan
  instead of the lexer and normalizer (pgbench ``-M simple``: half the observer's
  instructions per transaction).  Texts with constants are cached here and not in
  **exact**, where one-off texts would evict the extended protocol's; the last few
  thousand such texts are also remembered as they are (**recent**, a plain dict emptied
  when full), because every consumer of a drained batch looks the same text up again.
* **shape**: normalized text → tag-less :class:`Fingerprint`.  The lexer-based normalizer
  replaces constants and collapses ``IN``/``ARRAY``/``VALUES`` lists, so the same query
  with other literals, another list length, other whitespace or other comments (a new
  ``traceparent`` every time) is found here without parsing.  A 200-row INSERT costs one
  scan and, at most, one parse of a single row.

Because the normalized text fully determines the fingerprint (the id is its hash and the
analysis is a pure function of it), cache hits and misses can never change a result: the
output for a statement is the same whatever came before it.

Not thread-safe (plain dicts, no locks): one instance belongs to one task or thread.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Final, Generic, Protocol, TypeVar

from dbproxy.sql.commenter import tags_from_comments
from dbproxy.sql.fingerprint import (
    Fingerprint,
    Tags,
    analyze_normalized,
    build,
    normalize,
    with_tags,
)
from dbproxy.sql.skeleton import NO_CONSTANT, literal_skeleton

__all__ = ["Fingerprinter", "FingerprinterStats", "GenerationalCache", "SupportsFingerprint"]

# Texts longer than these are fingerprinted but not cached, which bounds the caches' memory
# (entries x length) and keeps one-off giant statements from evicting the hot set.
DEFAULT_MAX_EXACT_CHARS: Final = 8_192
DEFAULT_MAX_SHAPE_CHARS: Final = 8_192
#: texts with constants remembered as they are (one drained batch is 512 statements)
_RECENT_SIZE: Final = 4_096


K = TypeVar("K")
V = TypeVar("V")


class GenerationalCache(Generic[K, V]):
    """A bounded cache whose hits cost one dict lookup (an LRU's ``move_to_end`` on every
    hit cost more than the lookup itself).

    Two generations of at most ``capacity // 2`` entries each: new entries go to the
    young one; when it is full, the old generation is dropped and the young one becomes
    the old one; a hit in the old generation moves the entry back to the young one.  So
    ``len() <= capacity`` always, and an entry used at least once every
    ``capacity // 2`` insertions is never evicted (an LRU keeps those used once every
    ``capacity`` insertions: the bound is the same, the guaranteed hot set half of it).
    ``capacity`` 1 keeps one generation of one entry; 0 caches nothing."""

    __slots__ = ("_generation", "_old", "_young", "capacity")

    def __init__(self, capacity: int) -> None:
        if capacity < 0:
            raise ValueError("capacity must be >= 0")
        self.capacity = capacity
        self._generation = max(1, capacity // 2)
        self._young: dict[K, V] = {}
        self._old: dict[K, V] = {}

    def get(self, key: K) -> V | None:
        hit = self._young.get(key)
        if hit is not None:
            return hit
        old = self._old
        if not old:
            return None
        hit = old.pop(key, None)
        if hit is not None:
            self._add(key, hit)
        return hit

    def put(self, key: K, value: V) -> None:
        if not self.capacity:
            return
        young = self._young
        if key in young:
            young[key] = value
            return
        self._old.pop(key, None)
        self._add(key, value)

    def _add(self, key: K, value: V) -> None:
        young = self._young
        if len(young) >= self._generation:
            # capacity 1: a single generation (two would hold 2 entries)
            self._old = young if self.capacity > 1 else {}
            self._young = young = {}
        young[key] = value

    def __len__(self) -> int:
        return len(self._young) + len(self._old)

    def __contains__(self, key: K) -> bool:
        return key in self._young or key in self._old

    def clear(self) -> None:
        self._young = {}
        self._old = {}


class SupportsFingerprint(Protocol):
    """The seam the aggregator depends on (tests may pass a fake)."""

    def fingerprint(self, sql: str) -> Fingerprint: ...

    def fingerprint_many(self, sql: str) -> list[Fingerprint]: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class FingerprinterStats:
    """A snapshot of the fingerprinter's counters (monotonic except the sizes)."""

    exact_hits: int
    exact_misses: int
    shape_hits: int
    shape_misses: int
    parses: int  # sqlglot parse attempts
    parse_failures: int  # statements that fell back to token-level analysis
    parse_ns: int  # total time inside sqlglot
    normalize_ns: int  # total time in the lexer/normalizer (exact misses)
    exact_size: int
    shape_size: int
    exact_capacity: int
    shape_capacity: int
    skeleton_hits: int = 0
    skeleton_misses: int = 0
    skeleton_size: int = 0
    skeleton_capacity: int = 0


def _split_trace_comment(sql: str) -> tuple[str, str, bool] | None:
    """``(statement without it, the comment, trailing?)`` when ``sql`` ends (before an
    optional ``;``) or starts with one plain ``/*…*/`` comment carrying a traceparent."""
    if "traceparent" not in sql:
        return None
    text = sql.strip()
    suffix = ""
    if text.endswith(";"):
        text, suffix = text[:-1].rstrip(), ";"
    if text.endswith("*/"):
        start = text.rfind("/*")
        comment = text[start:]
        core = text[:start].rstrip()
        # not when the "comment" sits inside a trailing -- line comment
        if (
            start > 0
            and core
            and comment.count("/*") == 1
            and "traceparent" in comment
            and "--" not in core.rsplit("\n", 1)[-1]
        ):
            return core + suffix, comment, True
    if text.startswith("/*"):
        end = text.find("*/")
        comment = text[: end + 2]
        core = text[end + 2 :].lstrip()
        if end > 0 and core and comment.count("/*") == 1 and "traceparent" in comment:
            return core + suffix, comment, False
    return None


class Fingerprinter:
    """Cached, deterministic SQL fingerprinting.  Not thread-safe."""

    __slots__ = (
        "_exact",
        "_exact_capacity",
        "_exact_hits",
        "_exact_misses",
        "_last_hit",
        "_max_exact_chars",
        "_max_shape_chars",
        "_normalize_ns",
        "_parse_failures",
        "_parse_ns",
        "_parses",
        "_recent",
        "_shape",
        "_shape_capacity",
        "_shape_hits",
        "_shape_misses",
        "_skeleton",
        "_skeleton_capacity",
        "_skeleton_hits",
        "_skeleton_misses",
    )

    def __init__(
        self,
        *,
        exact_capacity: int = 10_000,
        shape_capacity: int = 10_000,
        skeleton_capacity: int = 10_000,
        max_exact_chars: int = DEFAULT_MAX_EXACT_CHARS,
        max_shape_chars: int = DEFAULT_MAX_SHAPE_CHARS,
    ) -> None:
        if exact_capacity < 0 or shape_capacity < 0 or skeleton_capacity < 0:
            raise ValueError("cache capacities must be >= 0")
        self._exact: GenerationalCache[str, Fingerprint] = GenerationalCache(exact_capacity)
        self._shape: GenerationalCache[str, Fingerprint] = GenerationalCache(shape_capacity)
        self._skeleton: GenerationalCache[bytes, Fingerprint] = GenerationalCache(skeleton_capacity)
        self._exact_capacity = exact_capacity
        self._shape_capacity = shape_capacity
        self._skeleton_capacity = skeleton_capacity
        self._skeleton_hits = 0
        self._skeleton_misses = 0
        self._recent: dict[str, Fingerprint] = {}
        # the last exact hit: consecutive statements are often the same text (a driver's
        # prepared statement; each consumer of a batch fingerprints every statement)
        # (one slot, read once: the tracing thread fingerprints too)
        self._last_hit: tuple[str, Fingerprint] | None = None
        self._max_exact_chars = max_exact_chars
        self._max_shape_chars = max_shape_chars
        self._exact_hits = 0
        self._exact_misses = 0
        self._shape_hits = 0
        self._shape_misses = 0
        self._parses = 0
        self._parse_failures = 0
        self._parse_ns = 0
        self._normalize_ns = 0

    def fingerprint(self, sql: str) -> Fingerprint:
        """Fingerprint one statement.  Never raises."""
        last = self._last_hit
        if last is not None and sql == last[0]:  # the same object, or a memcmp
            self._exact_hits += 1
            return last[1]
        exact = self._exact
        hit = exact.get(sql)
        if hit is not None:
            self._exact_hits += 1
            self._last_hit = (sql, hit)
            return hit
        # A traceparent is new on every execution: look the statement up without its
        # sqlcommenter comment, then add that comment's tags (the id ignores comments).
        split = _split_trace_comment(sql)
        if split is not None:
            core, comment, trailing = split
            core_fp = self.fingerprint(core)
            if trailing:
                tags = tags_from_comments((comment,), core_fp.tags)
            elif not core_fp.tags:
                tags = tags_from_comments((comment,))
            else:
                tags = None  # a leading comment before others: merge order needs them all
            if tags is not None:
                return replace(core_fp, tags=Tags(tags)) if tags else core_fp
        recent = self._recent.get(sql)
        if recent is not None:
            self._exact_hits += 1  # the same text, remembered
            return recent
        self._exact_misses += 1
        skeleton = None
        if self._skeleton_capacity and len(sql) <= self._max_shape_chars:
            skeleton = literal_skeleton(sql)
            if skeleton == NO_CONSTANT:
                skeleton = None  # no constant: the exact cache is the one for it
        if skeleton is not None:
            hit = self._skeleton.get(skeleton)
            if hit is not None:
                self._skeleton_hits += 1
                self._remember(sql, hit)
                return hit
            self._skeleton_misses += 1

        started = time.perf_counter_ns()
        norm = normalize(sql)
        self._normalize_ns += time.perf_counter_ns() - started
        key = norm.text
        shape = self._shape
        base = shape.get(key)
        if base is not None:
            self._shape_hits += 1
        else:
            self._shape_misses += 1
            analysis = analyze_normalized(norm)
            if analysis.parsed:
                self._parses += 1
                self._parse_ns += analysis.parse_ns
            if not analysis.parse_ok:
                self._parse_failures += 1
            base = build(norm, analysis)
            if len(key) <= self._max_shape_chars:
                shape.put(key, base)

        result = with_tags(base, norm.comments)
        # A traceparent is new on every execution: caching such texts would only evict.
        if "traceparent" in result.tags:
            return result
        if skeleton is not None and not norm.keeps_constant_text():
            self._skeleton.put(skeleton, result)
            self._remember(sql, result)
        elif len(sql) <= self._max_exact_chars:
            exact.put(sql, result)
        return result

    def _remember(self, sql: str, fp: Fingerprint) -> None:
        recent = self._recent
        if len(recent) >= _RECENT_SIZE:
            recent.clear()
        recent[sql] = fp

    def fingerprint_many(self, sql: str) -> list[Fingerprint]:
        """Fingerprint every statement of a simple-Query string, split as PostgreSQL does."""
        if ";" not in sql:
            fp = self.fingerprint(sql)
            return [] if fp.operation == "EMPTY" else [fp]
        from dbproxy.sql.splitter import split_statements

        try:
            statements = split_statements(sql)
        except Exception:  # defensive: the splitter must not take the proxy down
            statements = [sql]
        return [self.fingerprint(statement) for statement in statements]

    @property
    def stats(self) -> FingerprinterStats:
        return FingerprinterStats(
            exact_hits=self._exact_hits,
            exact_misses=self._exact_misses,
            shape_hits=self._shape_hits,
            shape_misses=self._shape_misses,
            parses=self._parses,
            parse_failures=self._parse_failures,
            parse_ns=self._parse_ns,
            normalize_ns=self._normalize_ns,
            exact_size=len(self._exact),
            shape_size=len(self._shape),
            exact_capacity=self._exact_capacity,
            shape_capacity=self._shape_capacity,
            skeleton_hits=self._skeleton_hits,
            skeleton_misses=self._skeleton_misses,
            skeleton_size=len(self._skeleton),
            skeleton_capacity=self._skeleton_capacity,
        )

    def clear(self) -> None:
        """Drop the caches (counters are kept)."""
        self._exact.clear()
        self._shape.clear()
        self._skeleton.clear()
        self._recent.clear()
        self._last_hit = None
