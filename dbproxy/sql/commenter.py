"""sqlcommenter tags: ``/*key='value',…*/`` comments ORMs and tracers append to queries.

Format (https://google.github.io/sqlcommenter/spec/): a block comment holding
comma-separated ``key='value'`` pairs, keys and values URL-encoded, ``'`` in values
escaped as ``\\'`` (bare ``key=value`` tokens are accepted next to quoted ones:
OpenTelemetry's Python instrumentation writes some numbers unquoted).  Usually the
comment ends the statement; some frameworks (Rails with
``query_log_tags_prepend_comment``) put it first, so every comment is looked at.  Rails'
legacy marginalia form ``/*application:App,controller:users,action:index*/`` is accepted
too, but only when every key is one of the keys that format is known to use, so an
ordinary comment such as ``/* note: slow */`` never turns into tags.

Tags come from comments only, never from the statement text, and are bounded (count and
length) because they are attacker-controlled input.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Final
from urllib.parse import unquote

from dbproxy.sql.lexer import tokenize

__all__ = ["MAX_TAGS", "MAX_TAG_LENGTH", "parse_sqlcommenter", "tags_from_comments"]

MAX_TAGS: Final = 32
MAX_TAG_LENGTH: Final = 512  # per key and per value, after decoding

# Values are quoted per the spec; OpenTelemetry's Python DB-API commenter writes some
# unquoted (``dbapi_threadsafety=2,libpq_version=170002``), so a bare token is accepted too.
_PAIR = re.compile(
    r"\s*([^=,'\s]+)\s*=\s*(?:'((?:[^'\\]|\\.)*)'|([^=,'\s]+))\s*(?:,|\Z)", re.DOTALL
)
_LEGACY_PAIR = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*):([^,]*?)\s*(?:,|\Z)")
_LEGACY_KEYS: Final = frozenset(
    [
        "application",
        "controller",
        "action",
        "job",
        "line",
        "namespaced_controller",
        "source_location",
        "db_host",
        "database",
        "socket",
        "pid",
        "route",
        "framework",
        "db_driver",
    ]
)


def _sqlcommenter_pairs(body: str) -> list[tuple[str, str]] | None:
    pairs: list[tuple[str, str]] = []
    pos = 0
    n = len(body)
    while pos < n:
        m = _PAIR.match(body, pos)
        if m is None:
            return None
        key = unquote(m.group(1))
        quoted = m.group(2)
        value = unquote(quoted.replace("\\'", "'") if quoted is not None else m.group(3))
        pairs.append((key, value))
        pos = m.end()
    return pairs


def _legacy_pairs(body: str) -> list[tuple[str, str]] | None:
    pairs: list[tuple[str, str]] = []
    pos = 0
    n = len(body)
    while pos < n:
        m = _LEGACY_PAIR.match(body, pos)
        if m is None or m.group(1) not in _LEGACY_KEYS or m.end() == pos:
            return None
        pairs.append((m.group(1), m.group(2)))
        pos = m.end()
    return pairs


def _comment_tags(comment: str) -> list[tuple[str, str]]:
    if not (comment.startswith("/*") and comment.endswith("*/")) or len(comment) < 5:
        return []
    body = comment[2:-2].strip()
    if not body or "/*" in body:
        return []
    if "=" in body and "'" in body:
        pairs = _sqlcommenter_pairs(body)
    elif ":" in body:
        pairs = _legacy_pairs(body)
    else:
        return []
    return pairs or []


def tags_from_comments(
    comments: Iterable[str], initial: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Merge the tags of every sqlcommenter comment, later comments winning.

    ``initial`` holds the tags of comments that came before (as this function returned
    them), so ``tags_from_comments(b, tags_from_comments(a)) == tags_from_comments(a + b)``.
    """
    tags: dict[str, str] = dict(initial) if initial else {}
    for comment in comments:
        for key, value in _comment_tags(comment):
            if not key or len(key) > MAX_TAG_LENGTH or len(value) > MAX_TAG_LENGTH:
                continue
            if key not in tags and len(tags) >= MAX_TAGS:
                continue
            tags[key] = value
    return tags


def parse_sqlcommenter(sql: str) -> dict[str, str]:
    """Return the sqlcommenter tags of ``sql`` (``{}`` when there are none).  Never raises.

    >>> parse_sqlcommenter("SELECT 1 /*traceparent='00-4bf9-00f0-01',route='%2Fusers'*/")
    {'traceparent': '00-4bf9-00f0-01', 'route': '/users'}
    """
    if "/*" not in sql:
        return {}
    comments: list[str] = []
    tokenize(sql, comments)
    return tags_from_comments(comments)
