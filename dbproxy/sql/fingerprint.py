"""SQL fingerprints: one stable id per query shape, plus what the query does.

``fingerprint(sql)`` is the pure, uncached entry point; the proxy owns a
:class:`dbproxy.sql.cache.Fingerprinter`, which gives the same results through two caches.

The id is the first 16 hex digits of BLAKE2b over ``RULES_VERSION`` and the normalized
text (see :mod:`dbproxy.sql.normalize` for the rules).  It depends on nothing else — not on
sqlglot, the machine, the process or the order queries arrive in — so it only changes when
the rules change, and then ``RULES_VERSION`` is bumped and the pinned golden ids in
``tests/golden`` show the change for review.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Final, TypeVar, overload

from dbproxy.sql.analyze import Analysis, QueryKind, analyze
from dbproxy.sql.commenter import tags_from_comments
from dbproxy.sql.lexer import tokenize
from dbproxy.sql.normalize import Normalized, normalize_tokens

__all__ = [
    "RULES_VERSION",
    "Fingerprint",
    "QueryKind",
    "Tags",
    "fingerprint",
    "fingerprint_id",
]

RULES_VERSION: Final = "1"
_T = TypeVar("_T")


class Tags(Mapping[str, str]):
    """An immutable, hashable ``str → str`` mapping (sqlcommenter tags)."""

    __slots__ = ("_items", "_map")

    def __init__(self, items: Mapping[str, str] | Iterable[tuple[str, str]] = ()) -> None:
        self._map: dict[str, str] = dict(items)
        self._items: tuple[tuple[str, str], ...] = tuple(sorted(self._map.items()))

    def __getitem__(self, key: str) -> str:
        return self._map[key]

    @overload
    def get(self, key: str, /) -> str | None: ...
    @overload
    def get(self, key: str, default: str, /) -> str: ...
    @overload
    def get(self, key: str, default: _T, /) -> str | _T: ...
    def get(self, key: str, default: object = None, /) -> object:
        return self._map.get(key, default)  # the dict's, not Mapping's try/except one

    def __contains__(self, key: object) -> bool:
        return key in self._map

    def __iter__(self) -> Iterator[str]:
        return iter(self._map)

    def __len__(self) -> int:
        return len(self._map)

    def __hash__(self) -> int:
        return hash(self._items)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Tags):
            return self._items == other._items
        if isinstance(other, Mapping):
            return self._map == dict(other.items())
        return NotImplemented

    def __repr__(self) -> str:
        return f"Tags({self._map!r})"


EMPTY_TAGS: Final = Tags()


@dataclass(frozen=True, slots=True, kw_only=True)
class Fingerprint:
    """What the proxy knows about one statement.  Hashable and immutable."""

    id: str  # 16 hex chars
    text: str  # normalized SQL, constants as $1..$n
    summary: str  # low-cardinality "SELECT users orders" (OpenTelemetry db.query.summary)
    operation: str  # SELECT, INSERT, UPDATE, DELETE, MERGE, COPY, DDL, BEGIN, SET, …
    kind: QueryKind  # read / write / other
    tables: tuple[str, ...] = ()
    tags: Tags = field(default=EMPTY_TAGS)
    parse_ok: bool = True  # False: sqlglot could not parse it; fields come from tokens


def fingerprint_id(text: str) -> str:
    """The id of a normalized text."""
    data = f"{RULES_VERSION}\x00{text}".encode("utf-8", "surrogatepass")
    return hashlib.blake2b(data, digest_size=8).hexdigest()


def normalize(sql: str) -> Normalized:
    """Tokenize and normalize ``sql``.  Never raises (a lexer/normalizer bug degrades to an
    opaque but deterministic text)."""
    try:
        comments: list[str] = []
        tokens = tokenize(sql, comments)
        return normalize_tokens(tokens, comments)
    except Exception:  # defensive: the proxy must never fail on a query
        digest = hashlib.blake2b(sql.encode("utf-8", "surrogatepass"), digest_size=8)
        text = f"/* unnormalizable {digest.hexdigest()} */"
        return Normalized(text=text, words=(), kinds=(), comments=(), max_depth=0, params=0)


def analyze_normalized(norm: Normalized) -> Analysis:
    """Structure of a normalized statement.  Never raises."""
    try:
        return analyze(norm.text, norm.words, norm.kinds, norm.max_depth)
    except Exception:  # defensive, as above
        return Analysis(
            operation="UNKNOWN", kind=QueryKind.OTHER, tables=(), summary="", parse_ok=False
        )


def build(norm: Normalized, analysis: Analysis) -> Fingerprint:
    """The tag-less fingerprint of a normalized statement."""
    return Fingerprint(
        id=fingerprint_id(norm.text),
        text=norm.text,
        summary=analysis.summary,
        operation=analysis.operation,
        kind=analysis.kind,
        tables=analysis.tables,
        parse_ok=analysis.parse_ok,
    )


def with_tags(base: Fingerprint, comments: tuple[str, ...]) -> Fingerprint:
    """``base`` with the sqlcommenter tags found in ``comments``."""
    if not comments:
        return base
    try:
        tags = tags_from_comments(comments)
    except Exception:  # defensive
        return base
    return replace(base, tags=Tags(tags)) if tags else base


def fingerprint(sql: str) -> Fingerprint:
    """Fingerprint one statement (uncached, pure, thread-safe).  Never raises.

    >>> fp = fingerprint("SELECT * FROM users WHERE id = 42")
    >>> fp.text, fp.kind.value, fp.tables
    ('SELECT * FROM users WHERE id = $1', 'read', ('users',))
    """
    norm = normalize(sql)
    return with_tags(build(norm, analyze_normalized(norm)), norm.comments)
