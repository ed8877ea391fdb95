"""Literal skeletons: a statement's text with its constants masked, as a cache key.

A simple-protocol statement carries its values in its text (``… WHERE aid = 48213``), so
the fingerprinter's exact-text cache misses on nearly every execution and the lexer and
normalizer run again (≈ 100,000 instructions for pgbench's one-line SELECT).  The
skeleton is one hand-written pass over the text that cuts out every constant the
lexer would report and puts a marker of its class in its place::

    SELECT abalance FROM pgbench_accounts WHERE aid = 48213;
    SELECT abalance FROM pgbench_accounts WHERE aid = \\x01;

Why the skeleton determines the fingerprint (so a cache keyed on it can never change a
result): everything outside the constants is kept verbatim, and the spans cut out are
exactly the lexer's STRING and NUMBER tokens (this scanner follows
:mod:`dbproxy.sql.lexer`'s token rules; a property test holds the two equal).  Two texts
with the same skeleton therefore lex to the same tokens except for the constants' text,
and the normalizer reads a constant's text in two places only: whether a NUMBER is an
integer, and then, for a ``GROUP BY``/``ORDER BY`` ordinal, its digits, which it keeps
(anything else becomes ``$n``).  The markers keep the first distinction (``\\x01``
integer, ``\\x02`` string of any prefix, ``\\x03`` any other number); for the second
the cache stores nothing under a skeleton whose normalized text kept an ordinal
(:meth:`dbproxy.sql.normalize.Normalized.keeps_constant_text`: the decision to keep one
depends only on what the skeleton holds, so every text of that skeleton keeps it too).
Comments stay in the skeleton, so sqlcommenter tags are part of the key too.

:func:`literal_skeleton` returns ``None`` (the caller falls back to the lexer) when the
text holds a block comment or a dollar quote outside a string, or a marker character
anywhere; it returns the text itself, unchanged, when it has no constant.
"""

from __future__ import annotations

from typing import Final

__all__ = ["MARK_INTEGER", "MARK_NUMBER", "MARK_STRING", "literal_skeleton"]

MARK_INTEGER: Final = "\x01"
MARK_STRING: Final = "\x02"
MARK_NUMBER: Final = "\x03"

_DIGITS: Final = frozenset("0123456789")
_IDENT_START: Final = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_")
_IDENT_CONT: Final = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_0123456789$")
_HEX: Final = frozenset("0123456789abcdefABCDEF_")
_OCT: Final = frozenset("01234567_")
_BIN: Final = frozenset("01_")
_PLAIN_PREFIX: Final = frozenset("bBxXnN")


def literal_skeleton(sql: str) -> str | None:
    """``sql`` with its constants replaced by class markers, or ``None`` (see above)."""
    if "\x01" in sql or "\x02" in sql or "\x03" in sql:
        return None
    n = len(sql)
    parts: list[str] = []
    last = 0  # start of the text not yet copied to parts
    i = 0
    while i < n:
        ch = sql[i]
        if ch in _IDENT_START or ch >= "\x80":
            # a string prefix (E'', B'', X'', N'', U&''), U&"ident", or an identifier
            nxt = sql[i + 1] if i + 1 < n else ""
            if nxt == "'" and (ch in {"e", "E"}):
                end = _string_end(sql, i + 2, n, backslash=True)
                if end < 0:
                    return None
                parts.append(sql[last:i])
                parts.append(MARK_STRING)
                i = last = end
                continue
            if nxt == "'" and ch in _PLAIN_PREFIX:
                end = _string_end(sql, i + 2, n, backslash=False)
                parts.append(sql[last:i])
                parts.append(MARK_STRING)
                i = last = end
                continue
            if (ch in {"u", "U"}) and nxt == "&" and i + 2 < n:
                quote = sql[i + 2]
                if quote == "'":
                    end = _string_end(sql, i + 3, n, backslash=False)
                    parts.append(sql[last:i])
                    parts.append(MARK_STRING)
                    i = last = end
                    continue
                if quote == '"':
                    i = _quoted_ident_end(sql, i + 3, n)
                    continue
            i += 1
            while i < n:
                c = sql[i]
                if c in _IDENT_CONT or c >= "\x80":
                    i += 1
                else:
                    break
            continue
        if ch in _DIGITS or (ch == "." and i + 1 < n and sql[i + 1] in _DIGITS):
            end, integer = _number_end(sql, i, n)
            parts.append(sql[last:i])
            parts.append(MARK_INTEGER if integer else MARK_NUMBER)
            i = last = end
            continue
        if ch == "'":
            end = _string_end(sql, i + 1, n, backslash=False)
            parts.append(sql[last:i])
            parts.append(MARK_STRING)
            i = last = end
            continue
        if ch == '"':
            i = _quoted_ident_end(sql, i + 1, n)
            continue
        if ch == "-":
            if i + 1 < n and sql[i + 1] == "-":  # line comment: kept, skipped
                i += 2
                while i < n and sql[i] != "\n" and sql[i] != "\r":
                    i += 1
                continue
        elif ch == "/":
            if i + 1 < n and sql[i + 1] == "*":
                return None  # block comments nest: the lexer's slow path
        elif ch == "$" and i + 1 < n:
            nxt = sql[i + 1]
            if nxt in _DIGITS:  # $n parameter: kept
                i += 2
                while i < n and sql[i] in _DIGITS:
                    i += 1
                continue
            if nxt == "$" or nxt in _IDENT_START or nxt >= "\x80":
                return None  # perhaps a dollar quote: the lexer's slow path
        i += 1
    if not parts:
        return sql
    parts.append(sql[last:])
    return "".join(parts)


def _string_end(sql: str, i: int, n: int, *, backslash: bool) -> int:
    """Index after a string whose body starts at ``i``: ``''`` doubles a quote, and in
    ``E''`` strings a backslash escapes the next character; unterminated runs to the end.
    -1 for an ``E''`` string whose last character is an escaping backslash: there the
    lexer's pattern backtracks into another reading (left to the lexer)."""
    while i < n:
        c = sql[i]
        if c == "'":
            if i + 1 < n and sql[i + 1] == "'":
                i += 2
                continue
            return i + 1
        if backslash and c == "\\":
            if i + 1 >= n:
                return -1
            i += 2
            continue
        i += 1
    return n


def _quoted_ident_end(sql: str, i: int, n: int) -> int:
    while i < n:
        if sql[i] == '"':
            if i + 1 < n and sql[i + 1] == '"':
                i += 2
                continue
            return i + 1
        i += 1
    return n


def _number_end(sql: str, i: int, n: int) -> tuple[int, bool]:
    """End of the number at ``i`` and whether it is all digits, as the lexer reads it:
    ``0x…``/``0o…``/``0b…``, or digits and ``_`` with an optional fraction (a ``.`` not
    followed by another) and an optional exponent with at least one digit."""
    if sql[i] == "0" and i + 2 < n:
        radix = sql[i + 1]
        allowed = (
            _HEX if radix in "xX" else _OCT if radix in "oO" else _BIN if radix in "bB" else None
        )
        if allowed is not None and sql[i + 2] in allowed:
            j = i + 3
            while j < n and sql[j] in allowed:
                j += 1
            return j, False
    integer = True
    j = i
    fraction_allowed = True
    if sql[j] == ".":  # .5
        integer = fraction_allowed = False
        j += 1
    while j < n:
        c = sql[j]
        if c in _DIGITS:
            j += 1
        elif c == "_":
            integer = False
            j += 1
        else:
            break
    if fraction_allowed and j < n and sql[j] == "." and not (j + 1 < n and sql[j + 1] == "."):
        integer = False  # 1.  1.5  (but 1..5 is 1, ..5)
        j += 1
        while j < n and (sql[j] in _DIGITS or sql[j] == "_"):
            j += 1
    if j < n and sql[j] in "eE":
        k = j + 1
        if k < n and sql[k] in "+-":
            k += 1
        if k < n and sql[k] in _DIGITS:
            integer = False
            k += 1
            while k < n and sql[k] in _DIGITS:
                k += 1
            j = k
    return j, integer
