"""A PostgreSQL-flavoured lexer for the fingerprint normalizer.

This is not a parser: it turns text into tokens the way PostgreSQL's ``scan.l`` would
(strings with all their prefixes and escapes, dollar quotes, nested comments, quoted
identifiers, ``$n`` parameters, operator runs with the trailing ``+``/``-`` rule), so
the normalizer can replace constants and collapse lists without ever being confused by
a ``;`` or ``'`` inside a string.  It never raises: unterminated strings, identifiers
and comments run to the end of the input, anything unknown is a one-character token.

``?``, ``?|`` and ``?&`` are operators (jsonb), never placeholders: only ``$n`` reaches
PostgreSQL.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = [
    "COMMENT",
    "IDENT",
    "NUMBER",
    "OP",
    "PARAM",
    "PUNCT",
    "QIDENT",
    "STRING",
    "WORD",
    "Token",
    "tokenize",
]

# Token kinds.  Small ints keep tokens as plain tuples: the lexer is on the hot path.  The
# values are the regex group numbers below, so a match's ``lastindex`` is its kind.
COMMENT: Final = 1  # -- … (line comment; block comments are collected, never tokens)
_BLOCK: Final = 2  # /* opener, handled by hand (comments nest)
STRING: Final = 3  # any string constant: '', E'', B'', X'', U&'', N'', $$…$$
QIDENT: Final = 4  # "quoted identifier" (text with quotes)
PARAM: Final = 5  # $1
_DOLLAR: Final = 6  # $tag$ opener, handled by hand
NUMBER: Final = 7
WORD: Final = 8  # unquoted identifier or keyword (text as written)
PUNCT: Final = 9  # ( ) [ ] , ; . :: :
OP: Final = 10  # operator run: = <> ->> @> ?| …
_OTHER: Final = 11  # any other character (reported as OP)
IDENT: Final = WORD  # alias kept for readers

Token = tuple[int, str]

_OP_SPECIAL = frozenset("~!@#%^&|`?")
_IDENT_START = r"A-Za-z_\u0080-\U0010ffff"
_IDENT_CONT = r"A-Za-z0-9_$\u0080-\U0010ffff"
_TAG_CONT = r"A-Za-z0-9_\u0080-\U0010ffff"

# Alternatives are ordered by how often they occur (words first); each group's number is
# its token kind, so the order of the groups is fixed: lookaheads keep string prefixes
# (E'', B'', X'', N'', U&'') out of WORD and comment openers out of OP.
_MASTER = re.compile(
    rf"""\s*(?:
      (?=--)(--[^\n\r]*)
    | (?=/\*)(/\*)
    | (?=[eEbBxXnNuU'])([eE]'(?:[^'\\]|\\[\s\S]|'')*(?:'|\Z)
      |(?:[bBxXnN]|[uU]&)'(?:[^']|'')*(?:'|\Z)
      |'(?:[^']|'')*(?:'|\Z))
    | (?=[uU"])((?:[uU]&)?"(?:[^"]|"")*(?:"|\Z))
    | (?=\$)(\$\d+)
    | (?=\$)(\$(?:[{_IDENT_START}][{_TAG_CONT}]*)?\$)
    | (?=[0-9.])(0[xX][0-9a-fA-F_]+|0[oO][0-7_]+|0[bB][01_]+
      |(?:\d[\d_]*(?:\.(?!\.)[\d_]*)?|\.\d[\d_]*)(?:[eE][+-]?\d+)?)
    | ([{_IDENT_START}][{_IDENT_CONT}]*)
    | (::|[()\[\],;.:])
    | ([+\-*/<>=~!@\#%^&|`?]+)
    | (\S)
    )""",
    re.VERBOSE | re.ASCII,
)

# Inputs without these need no hand-written lexing: block comments, dollar quotes, and
# operator runs the trailing-sign rule could cut (``=-1``).
_NEEDS_SLOW_PATH = re.compile(
    rf"/\*|\$(?:[{_IDENT_START}][{_TAG_CONT}]*)?\$|[*/<>=~!@#%^&|`?+][+-]|-\+",
)


def _trim_operator(text: str) -> str:
    """PostgreSQL's rule: a multi-char operator cannot end in ``+``/``-`` unless it holds
    one of ``~!@#%^&|`?``; ``--`` or ``/*`` inside a run starts a comment."""
    for marker in ("--", "/*"):
        cut = text.find(marker)
        if cut > 0:
            text = text[:cut]
    if len(text) > 1 and text[-1] in "+-" and not any(c in _OP_SPECIAL for c in text):
        text = text.rstrip("+-") or text[0]
    return text


def _block_comment_end(sql: str, start: int) -> int:
    """Index after the ``*/`` closing the (nested) comment opened at ``start``."""
    depth = 0
    pos = start
    n = len(sql)
    while pos < n:
        close = sql.find("*/", pos)
        if close < 0:
            return n
        opened = sql.find("/*", pos)
        if 0 <= opened < close:
            depth += 1
            pos = opened + 2
            continue
        depth -= 1
        pos = close + 2
        if depth == 0:
            return pos
    return n


def tokenize(sql: str, comments: list[str] | None = None) -> list[Token]:
    """Split ``sql`` into tokens.  Whitespace is dropped; comments are dropped too, or
    appended to ``comments`` when given.  Never raises."""
    if _NEEDS_SLOW_PATH.search(sql) is None:
        tokens = [(m.lastindex or 0, m.group(m.lastindex or 0)) for m in _MASTER.finditer(sql)]
        if "--" in sql:
            if comments is not None:
                comments.extend(text for kind, text in tokens if kind == COMMENT)
            tokens = [tok for tok in tokens if tok[0] != COMMENT]
        if _OTHER in (kind for kind, _ in tokens):
            tokens = [(OP, text) if kind == _OTHER else (kind, text) for kind, text in tokens]
        return tokens
    return _tokenize_slow(sql, comments)


def _tokenize_slow(sql: str, comments: list[str] | None) -> list[Token]:
    tokens: list[Token] = []
    append = tokens.append
    pos = 0
    n = len(sql)
    while pos < n:
        restart = -1
        for m in _MASTER.finditer(sql, pos):
            kind = m.lastindex or 0
            text = m.group(kind)
            if kind == OP:
                trimmed = _trim_operator(text) if len(text) > 1 else text
                if len(trimmed) != len(text):
                    append((OP, trimmed))
                    restart = m.start(kind) + len(trimmed)
                    break
                append((OP, text))
            elif kind == COMMENT:
                if comments is not None:
                    comments.append(text)
            elif kind == _BLOCK:
                start = m.start(kind)
                end = _block_comment_end(sql, start)
                if comments is not None:
                    comments.append(sql[start:end])
                restart = end
                break
            elif kind == _DOLLAR:
                start = m.start(kind)
                close = sql.find(text, m.end())
                end = n if close < 0 else close + len(text)
                append((STRING, sql[start:end]))
                restart = end
                break
            elif kind == _OTHER:
                append((OP, text))
            else:
                append((kind, text))
        if restart < 0:
            break
        pos = restart
    return tokens
