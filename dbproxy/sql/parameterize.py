"""Literal-free, executable parameterization of one statement, for the side connection.

The fingerprint normalizer's text is for display and hashing (casts dropped, lists
collapsed); the side connection needs a text PostgreSQL can plan the way it plans the
client's statement, with no literal of the client's left in it:

* every string and number constant becomes ``$k`` (numbered after the statement's own
  ``$n``), typed literals keep their type (``DATE '…'`` → ``CAST($k AS DATE)``,
  ``INTERVAL '1' DAY`` → ``CAST($k AS INTERVAL DAY)``), casts stay (``'x'::uuid`` →
  ``$k::uuid``);
* ORDER BY / GROUP BY ordinals and type modifiers (``varchar(10)``) stay: they are syntax;
* comments go (sqlcommenter tags, or anything a client wrote there).

The literals' values are returned separately (never inside the text), decoded to the
text PostgreSQL would read (``'it''s'`` → ``it's``), so that a sampled EXPLAIN ANALYZE can
send them as bind parameters.  A literal whose value is not decoded here (``E''`` with
backslashes, ``U&''``, bit strings) is ``None``: the statement can still be planned, but
not sampled.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Final

from dbproxy.sql.keywords import BY_CLAUSE_END, INTERVAL_FIELDS
from dbproxy.sql.lexer import NUMBER, OP, PARAM, PUNCT, QIDENT, STRING, WORD, Token, tokenize
from dbproxy.sql.normalize import _skip_type, _typed_literal_end

__all__ = ["Parameterized", "called_functions", "parameterize"]

_BY_STOP: Final = frozenset(
    (
        *("LIMIT", "OFFSET", "FETCH", "HAVING", "WINDOW", "FOR", "UNION", "INTERSECT"),
        *("EXCEPT", "RETURNING", "SELECT", "FROM", "WHERE", "ON", "PARTITION"),
    )
)
#: keywords after which a ``-`` is a sign, not a subtraction
_SIGN_AFTER: Final = frozenset(
    (
        *("SELECT", "WHERE", "AND", "OR", "NOT", "THEN", "ELSE", "WHEN", "CASE", "VALUES"),
        *("LIMIT", "OFFSET", "RETURNING", "SET", "BY", "IN", "BETWEEN", "IS", "LIKE", "ON"),
        *("HAVING", "ILIKE", "ANY", "ALL", "SOME", "DISTINCT", "FROM", "TO", "AT", "ZONE"),
    )
)
_ORDINAL_FOLLOW: Final = _BY_STOP | BY_CLAUSE_END | {"GROUP"}


@dataclass(frozen=True, slots=True)
class Parameterized:
    """``text`` has ``$1..$params`` and no constant of the input; ``literals`` hold the
    values of ``$(original_params+1)..$params`` (memory only: never log or store them)."""

    text: str
    params: int
    original_params: int
    literals: tuple[str | None, ...] = field(repr=False)

    @property
    def sampleable(self) -> bool:
        """Every literal's value is known (so it can be sent as a bind value)."""
        return all(value is not None for value in self.literals)


def _upper(tok: Token) -> str:
    return tok[1].upper() if tok[0] == WORD else ""


def _string_value(text: str) -> str | None:
    """The value of a string constant token, or None when it is not decoded here."""
    if text.startswith("$"):  # $tag$…$tag$
        close = text.index("$", 1) + 1
        tag = text[:close]
        if len(text) >= 2 * len(tag) and text.endswith(tag):
            return text[close : len(text) - len(tag)]
        return None
    head = text[:1]
    if head in "nN":
        text, head = text[1:], "'"
    elif head in "eE":
        if "\\" in text:
            return None
        text, head = text[1:], "'"
    if head != "'" or len(text) < 2 or not text.endswith("'"):
        return None  # B'', X'', U&'' or unterminated
    return text[1:-1].replace("''", "'")


def _is_ordinal(tokens: list[Token], i: int, in_by: bool) -> bool:
    if not in_by or not tokens[i][1].isdigit():
        return False
    prev = tokens[i - 1] if i else (0, "")
    if not (prev == (PUNCT, ",") or _upper(prev) == "BY"):
        return False
    nxt = tokens[i + 1] if i + 1 < len(tokens) else (PUNCT, ";")
    return nxt in ((PUNCT, ","), (PUNCT, ")"), (PUNCT, ";")) or _upper(nxt) in _ORDINAL_FOLLOW


def _is_sign(tokens: list[Token], i: int) -> bool:
    """``tokens[i]`` is a ``-`` that signs what follows (not a subtraction)."""
    if tokens[i] != (OP, "-"):
        return False
    if i == 0:
        return True
    kind, text = tokens[i - 1]
    if kind == OP:
        return True
    if kind == PUNCT:
        return text in ("(", ",", "[")
    return _upper(tokens[i - 1]) in _SIGN_AFTER


def parameterize(sql: str) -> Parameterized | None:
    """The statement with its constants replaced by ``$k``; None when it holds several
    statements or a construct this cannot rewrite safely."""
    tokens = tokenize(sql)
    while tokens and tokens[-1] == (PUNCT, ";"):
        tokens.pop()
    if not tokens or (PUNCT, ";") in tokens:
        return None
    original = 0
    for kind, text in tokens:
        if kind == PARAM:
            original = max(original, int(text[1:]))
    out: list[str] = []
    literals: list[str | None] = []
    n = original
    depth = 0
    by_depth = -1  # paren depth of the ORDER BY / GROUP BY list we are in, or -1
    i = 0
    count = len(tokens)
    while i < count:
        kind, text = tokens[i]
        up = _upper(tokens[i])
        if kind == PUNCT and text in "([":
            depth += 1
        elif kind == PUNCT and text in ")]":
            if by_depth == depth:
                by_depth = -1
            depth -= 1
        elif up == "BY" and i and _upper(tokens[i - 1]) in ("ORDER", "GROUP"):
            by_depth = depth
        elif up in _BY_STOP and by_depth == depth:
            by_depth = -1
        if kind == WORD and (i == 0 or tokens[i - 1] != (PUNCT, ".")):
            end = _typed_literal_end(tokens, i)
            if end > i:  # TYPE 'literal'
                type_tokens = tokens[i:end]
                j = end + 1
                if up == "INTERVAL":
                    while j < count and _upper(tokens[j]) in INTERVAL_FIELDS:
                        type_tokens.append(tokens[j])
                        j += 1
                if any(k in (STRING, PARAM) for k, _ in type_tokens):
                    return None
                n += 1
                literals.append(_string_value(tokens[end][1]))
                out.append(f"CAST(${n} AS {' '.join(t for _, t in type_tokens)})")
                i = j
                continue
        if (kind == PUNCT and text == "::") or up == "AS":
            # a cast's type (or an alias): syntax, copied as written, typmods included
            j = _skip_type(tokens, i + 1)
            if any(k in (STRING, PARAM) for k, _ in tokens[i + 1 : j]):
                return None
            out.extend(t for _, t in tokens[i:j])
            i = j
            continue
        if kind == STRING:
            n += 1
            literals.append(_string_value(text))
            out.append(f"${n}")
        elif kind == NUMBER and not _is_ordinal(tokens, i, by_depth == depth):
            n += 1
            value = text.replace("_", "") if text[:1].isdigit() else text
            if out and out[-1] == "-" and _is_sign(tokens, i - 1):
                out.pop()  # ``-1`` is one constant: ``- $1`` would be ambiguous (unknown)
                value = "-" + value
            literals.append(value)
            out.append(f"${n}")
        else:
            out.append(text)
        i += 1
    return Parameterized(
        text=" ".join(out), params=n, original_params=original, literals=tuple(literals)
    )


def called_functions(sql: str) -> set[str]:
    """Lower-cased names written as ``name(`` in a statement: the functions it may call
    (keywords and table names come along; looking those up in ``pg_proc`` is harmless)."""
    tokens = tokenize(sql)
    names: set[str] = set()
    for (kind, word), nxt in itertools.pairwise(tokens):
        if nxt == (PUNCT, "(") and kind in (WORD, QIDENT):
            names.add(word[1:-1].replace('""', '"') if kind == QIDENT else word.lower())
    return names
