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

# Token kinds.  Small ints keep tokens as plain tuples: the lexer is on the hot path.
WORD: Final = 1  # unquoted identifier or keyword (text as written)
QIDENT: Final = 2  # "quoted identifier" (text with quotes)
STRING: Final = 3  # any string constant: '', E'', B'', X'', U&'', N'', $$…$$
NUMBER: Final = 4
PARAM: Final = 5  # $1
OP: Final = 6  # operator run: = <> ->> @> ?| …
PUNCT: Final = 7  # ( ) [ ] , ; . :: :
COMMENT: Final = 8  # -- … or /* … */ (text with delimiters)
IDENT: Final = WORD  # alias kept for readers

Token = tuple[int, str]

_OP_CHARS = "+\\-*/<>=~!@#%^&|`?"
_OP_SPECIAL = frozenset("~!@#%^&|`?")

_MASTER = re.compile(
    r"""
      (?P<ws>\s+)
    | (?P<lc>--[^\n\r]*)
    | (?P<bc>/\*)
    | (?P<estr>[eE]'(?:[^'\\]|\\[\s\S]|'')*(?:'|\Z))
    | (?P<pstr>(?:[bBxXnN]|[uU]&)'(?:[^']|'')*(?:'|\Z))
    | (?P<str>'(?:[^']|'')*(?:'|\Z))
    | (?P<uqid>[uU]&"(?:[^"]|"")*(?:"|\Z))
    | (?P<qid>"(?:[^"]|"")*(?:"|\Z))
    | (?P<param>\$\d+)
    | (?P<dq>\$(?:[A-Za-z_\u0080-\U0010ffff][A-Za-z0-9_\u0080-\U0010ffff]*)?\$)
    | (?P<num>0[xX][0-9a-fA-F_]+|0[oO][0-7_]+|0[bB][01_]+
        |(?:\d[\d_]*(?:\.(?!\.)[\d_]*)?|\.\d[\d_]*)(?:[eE][+-]?\d+)?)
    | (?P<word>[A-Za-z_\u0080-\U0010ffff][A-Za-z0-9_$\u0080-\U0010ffff]*)
    | (?P<cast>::)
    | (?P<op>[+\-*/<>=~!@\#%^&|`?]+)
    | (?P<punct>[()\[\],;.:])
    | (?P<other>[\s\S])
    """,
    re.VERBOSE | re.ASCII,
)

_KIND_BY_GROUP: Final[dict[str, int]] = {
    "estr": STRING,
    "pstr": STRING,
    "str": STRING,
    "uqid": QIDENT,
    "qid": QIDENT,
    "param": PARAM,
    "num": NUMBER,
    "word": WORD,
    "cast": PUNCT,
    "punct": PUNCT,
    "other": OP,
}


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
    tokens: list[Token] = []
    append = tokens.append
    kinds = _KIND_BY_GROUP
    pos = 0
    n = len(sql)
    while pos < n:
        restart = -1
        for m in _MASTER.finditer(sql, pos):
            group = m.lastgroup
            if group == "ws":
                continue
            if group in ("word", "punct", "cast"):
                append((kinds[group], m.group()))
            elif group == "op":
                text = m.group()
                trimmed = _trim_operator(text) if len(text) > 1 else text
                if len(trimmed) != len(text):
                    append((OP, trimmed))
                    restart = m.start() + len(trimmed)
                    break
                append((OP, text))
            elif group == "lc":
                if comments is not None:
                    comments.append(m.group())
            elif group == "bc":
                end = _block_comment_end(sql, m.start())
                if comments is not None:
                    comments.append(sql[m.start() : end])
                restart = end
                break
            elif group == "dq":
                tag = m.group()
                close = sql.find(tag, m.end())
                end = n if close < 0 else close + len(tag)
                append((STRING, sql[m.start() : end]))
                restart = end
                break
            else:
                append((kinds[group], m.group()))  # type: ignore[index]
        if restart < 0:
            break
        pos = restart
    return tokens
