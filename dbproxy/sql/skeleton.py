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

:func:`literal_skeleton` works on the text's UTF-8 bytes (every byte of a non-ASCII
character is ≥ 0x80, and every non-ASCII character is an identifier character to the
lexer, so classes per byte are exact) with a 256-entry class table: compiled, a few
native operations per byte.  It returns ``None`` (the caller falls back to the lexer)
when the text holds a block comment or a dollar quote outside a string, or a NUL or
marker byte anywhere; :data:`NO_CONSTANT` when it has no constant (the exact-text cache
is the one for such texts).
"""

from __future__ import annotations

from typing import Final

__all__ = ["MARK_INTEGER", "MARK_NUMBER", "MARK_STRING", "NO_CONSTANT", "literal_skeleton"]

MARK_INTEGER: Final = b"\x01"
MARK_STRING: Final = b"\x02"
MARK_NUMBER: Final = b"\x03"
#: returned for a text without constants (a NUL byte cannot be in a skeleton)
NO_CONSTANT: Final = b"\x00"

# byte classes
_OTHER: Final = 0
_IDENT: Final = 1  # A-Z a-z _ and every byte of a non-ASCII character
_DIGIT: Final = 2
_QUOTE: Final = 3  # '
_DQUOTE: Final = 4  # "
_DASH: Final = 5  # -
_SLASH: Final = 6  # /
_DOLLAR: Final = 7  # $
_DOT: Final = 8  # .


def _class_table() -> bytes:
    table = bytearray(256)
    for b in range(256):
        ch = chr(b)
        if b >= 0x80 or (ch.isascii() and (ch.isalpha() or ch == "_")):
            table[b] = _IDENT
        elif "0" <= ch <= "9":
            table[b] = _DIGIT
    for ch, cls in (("'", _QUOTE), ('"', _DQUOTE), ("-", _DASH), ("/", _SLASH),
                    ("$", _DOLLAR), (".", _DOT)):  # fmt: skip
        table[ord(ch)] = cls
    return bytes(table)


_CLASS: Final = _class_table()
_Q: Final = 39  # '
_DQ: Final = 34  # "
_BACKSLASH: Final = 92
_AMP: Final = 38  # &
_UNDERSCORE: Final = 95
_STAR: Final = 42
_LF: Final = 10
_CR: Final = 13


def literal_skeleton(sql: str) -> bytes | None:
    """``sql`` with its constants replaced by class markers (UTF-8), :data:`NO_CONSTANT`
    or ``None`` (see above)."""
    # (on the str: `b"x" in some_bytes` raises and clears a TypeError inside CPython)
    if "\x00" in sql or "\x01" in sql or "\x02" in sql or "\x03" in sql:
        return None  # a character that could be taken for a marker
    data = sql.encode("utf-8", "surrogatepass")
    cls = _CLASS
    n = len(data)
    parts: list[bytes] = []
    last = 0  # start of the bytes not yet copied to parts
    i = 0
    while i < n:
        c = data[i]
        k = cls[c]
        if k == _IDENT:
            # a string prefix (E'', B'', X'', N'', U&''), U&"ident", or an identifier
            nxt = data[i + 1] if i + 1 < n else 0
            body = -1  # where a prefixed string's body starts
            backslash = False
            if nxt == _Q and c in (69, 101):  # E e
                body, backslash = i + 2, True
            elif nxt == _Q and c in (66, 98, 88, 120, 78, 110):  # B b X x N n
                body = i + 2
            elif c in (85, 117) and nxt == _AMP and i + 2 < n:  # U& u&
                quote = data[i + 2]
                if quote == _Q:
                    body = i + 3
                elif quote == _DQ:
                    i = _quoted_ident_end(data, i + 3, n)
                    continue
            if body < 0:
                i += 1
                while i < n:
                    k = cls[data[i]]
                    if k == _IDENT or k == _DIGIT or k == _DOLLAR:  # noqa: PLR1714, SIM109 - native
                        i += 1
                    else:
                        break
                continue
            end = _string_end(data, body, n, backslash)
            if end < 0:
                return None
            _cut(parts, data, last, i, MARK_STRING)
            i = last = end
            continue
        if k == _DIGIT or (k == _DOT and i + 1 < n and cls[data[i + 1]] == _DIGIT):
            end, integer = _number_end(data, i, n)
            _cut(parts, data, last, i, MARK_INTEGER if integer else MARK_NUMBER)
            i = last = end
            continue
        if k == _QUOTE:
            end = _string_end(data, i + 1, n, False)
            _cut(parts, data, last, i, MARK_STRING)
            i = last = end
            continue
        if k == _DQUOTE:
            i = _quoted_ident_end(data, i + 1, n)
            continue
        elif k == _DASH:
            if i + 1 < n and data[i + 1] == 45:  # line comment: kept, skipped
                i += 2
                while i < n and data[i] != _LF and data[i] != _CR:
                    i += 1
                continue
        elif k == _SLASH:
            if i + 1 < n and data[i + 1] == _STAR:
                return None  # block comments nest: the lexer's slow path
        elif k == _DOLLAR and i + 1 < n:
            nk = cls[data[i + 1]]
            if nk == _DIGIT:  # $n parameter: kept
                i += 2
                while i < n and cls[data[i]] == _DIGIT:
                    i += 1
                continue
            if nk == _DOLLAR or nk == _IDENT:  # noqa: PLR1714, SIM109 - native ints
                return None  # perhaps a dollar quote: the lexer's slow path
        i += 1
    if not parts:
        return NO_CONSTANT
    parts.append(data[last:])
    return b"".join(parts)


def _cut(parts: list[bytes], data: bytes, last: int, start: int, mark: bytes) -> None:
    """The bytes kept since ``last``, then ``mark`` for the constant starting at ``start``."""
    parts.append(data[last:start])
    parts.append(mark)


def _string_end(data: bytes, i: int, n: int, backslash: bool) -> int:
    """Index after a string whose body starts at ``i``: ``''`` doubles a quote, and in
    ``E''`` strings a backslash escapes the next character; unterminated runs to the end.
    -1 for an ``E''`` string whose last character is an escaping backslash: there the
    lexer's pattern backtracks into another reading (left to the lexer)."""
    while i < n:
        c = data[i]
        if c == _Q:
            if i + 1 < n and data[i + 1] == _Q:
                i += 2
                continue
            return i + 1
        if backslash and c == _BACKSLASH:
            if i + 1 >= n:
                return -1
            i += 2
            continue
        i += 1
    return n


def _quoted_ident_end(data: bytes, i: int, n: int) -> int:
    while i < n:
        if data[i] == _DQ:
            if i + 1 < n and data[i + 1] == _DQ:
                i += 2
                continue
            return i + 1
        i += 1
    return n


def _digits_end(data: bytes, j: int, n: int, cls: bytes) -> tuple[int, bool]:
    """Index after a run of digits and ``_``, and whether it held an ``_``."""
    underscore = False
    while j < n:
        c = data[j]
        if cls[c] == _DIGIT:
            j += 1
        elif c == _UNDERSCORE:
            underscore = True
            j += 1
        else:
            break
    return j, underscore


def _number_end(data: bytes, i: int, n: int) -> tuple[int, bool]:
    """End of the number at ``i`` and whether it is all digits, as the lexer reads it:
    ``0x…``/``0o…``/``0b…``, or digits and ``_`` with an optional fraction (a ``.`` not
    followed by another) and an optional exponent with at least one digit."""
    cls = _CLASS
    if data[i] == 48 and i + 2 < n:  # 0
        radix = data[i + 1]
        nxt = data[i + 2]
        if radix in (120, 88):  # x X
            ok = cls[nxt] == _DIGIT or nxt in b"abcdefABCDEF_"
            if ok:
                j = i + 3
                while j < n and (cls[data[j]] == _DIGIT or data[j] in b"abcdefABCDEF_"):
                    j += 1
                return j, False
        elif radix in (111, 79):  # o O
            if nxt in b"01234567_":
                j = i + 3
                while j < n and data[j] in b"01234567_":
                    j += 1
                return j, False
        elif radix in (98, 66) and nxt in b"01_":  # b B
            j = i + 3
            while j < n and data[j] in b"01_":
                j += 1
            return j, False
    integer = True
    fraction_allowed = True
    j = i
    if data[j] == 46:  # .5
        integer = fraction_allowed = False
        j += 1
    j, underscore = _digits_end(data, j, n, cls)
    if underscore:
        integer = False
    if fraction_allowed and j < n and data[j] == 46 and not (j + 1 < n and data[j + 1] == 46):
        integer = False  # 1.  1.5  (but 1..5 is 1, ..5)
        j, _ = _digits_end(data, j + 1, n, cls)
    if j < n and data[j] in b"eE":
        k = j + 1
        if k < n and data[k] in b"+-":
            k += 1
        if k < n and cls[data[k]] == _DIGIT:
            integer = False
            j = k + 1
            while j < n and cls[data[j]] == _DIGIT:  # the exponent: digits only
                j += 1
    return j, integer
