"""Token-level normalization: the canonical text every fingerprint id is computed from.

The normalizer is the single source of truth for "same query": its output text is both
the fingerprint's display text and (hashed) its id, and the fingerprinter caches on it
(the "shape key"), so anything that depends on the text is a pure function of it and the
cache can never make results depend on the order queries arrive in.  sqlglot only adds
structure (tables, operation, read/write) on top and never changes the id; that keeps ids
stable across sqlglot upgrades and identical whether or not sqlglot can parse a statement.

Rules (bump ``RULES_VERSION`` in ``fingerprint.py`` when any of them changes):

* comments and whitespace are dropped; keywords are upper-cased for display and unquoted
  identifiers lower-cased (ASCII only, as PostgreSQL does); a quoted identifier that
  PostgreSQL would read the same unquoted loses its quotes (``"users"`` ≡ ``users``,
  ``"Users"`` stays);
* every constant (strings of any prefix, dollar quotes, numbers, ``TRUE``/``FALSE``/
  ``NULL`` outside ``IS [NOT]``, typed literals like ``DATE '…'`` and ``INTERVAL '1' DAY``,
  signed numbers) and every ``$n`` becomes a placeholder, renumbered ``$1..$n`` in order;
  casts on constants are dropped (``'x'::text``, ``CAST(1 AS int)``, ``$1::uuid``);
* ORDER BY / GROUP BY ordinals are kept;
* ``IN (…)`` and ``ARRAY[…]`` lists whose items are all the same constant shape collapse
  to one item; ``VALUES`` rows identical after normalization collapse to one row;
* ``!=`` is ``<>``; ``INNER JOIN`` is ``JOIN``; ``LEFT OUTER JOIN`` is ``LEFT JOIN``;
* utility statements: savepoint, prepared-statement, cursor names and 2PC GIDs become
  placeholders; ``SET`` values become one placeholder; ``BEGIN [WORK|TRANSACTION]`` and
  ``START TRANSACTION`` are ``BEGIN``, ``END`` is ``COMMIT``, ``ABORT`` is ``ROLLBACK``.

Secrets (``PASSWORD '…'``, ``OPTIONS (password '…')``, function and ``DO`` bodies) are
constants, so they never reach the text.
"""

from __future__ import annotations

import functools
import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from dbproxy.sql.keywords import (
    BY_CLAUSE_END,
    DISPLAY_UPPER,
    INTERVAL_FIELDS,
    NEEDS_QUOTES,
    OPERAND_KEYWORDS,
    TYPED_LITERAL_TYPES,
)
from dbproxy.sql.lexer import NUMBER, OP, PARAM, PUNCT, QIDENT, STRING, WORD, Token

__all__ = ["Normalized", "normalize_tokens", "render"]

# Output token kinds.
_CONST: Final = 1
_KW: Final = 2  # upper-cased keyword spelling
_IDENT: Final = 3
_OPK: Final = 4
_PUNCTK: Final = 5
_KEEP: Final = 6  # kept ordinal

_PLACEHOLDER: Final = "$"
_SIMPLE_IDENT = re.compile(r"[a-z_][a-z0-9_$]*\Z")
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
_CONST_KINDS: Final = frozenset((STRING, NUMBER, PARAM))
_CLOSERS: Final = {"(": ")", "[": "]"}
_COLLAPSIBLE_PUNCT: Final = frozenset(("(", ")", ",", "[", "]", "ARRAY", "ROW"))

_BY_CLAUSE_STOP: Final = frozenset(
    [
        "LIMIT",
        "OFFSET",
        "FETCH",
        "HAVING",
        "WINDOW",
        "FOR",
        "UNION",
        "INTERSECT",
        "EXCEPT",
        "RETURNING",
        "SELECT",
        "FROM",
        "WHERE",
        "ON",
        "PARTITION",
    ]
)

# Group contexts.
_G_OTHER: Final = 0
_G_IN: Final = 1
_G_ARRAY: Final = 2
_G_ROW: Final = 3

# VALUES states per depth.
_V_EXPECT_ROW: Final = 1
_V_AFTER_ROW: Final = 2


@dataclass(frozen=True, slots=True)
class Normalized:
    """The normalizer's result for one statement."""

    text: str  # canonical text with $1..$n
    words: tuple[str, ...]  # normalized tokens (placeholders as "$"), for classification
    kinds: tuple[int, ...]
    comments: tuple[str, ...]  # raw comments, for sqlcommenter tags
    max_depth: int
    params: int

    def keeps_constant_text(self) -> bool:
        """Whether a constant's own text is in ``text`` (an ORDER/GROUP BY ordinal):
        the one case where the text depends on a constant's value."""
        return _KEEP in self.kinds


@functools.lru_cache(maxsize=8192)  # pure; words repeat across statements
def _word(text: str) -> tuple[int, str]:
    low = text.lower() if text.isascii() else text.translate(_ASCII_LOWER)
    up = low.upper() if low.isascii() else ""
    if up in DISPLAY_UPPER:
        return _KW, up
    return _IDENT, low


def _qident(text: str) -> tuple[int, str]:
    if text[:1] in "uU":  # U&"…" escapes: keep as written
        return _IDENT, text
    inner = text[1:-1] if len(text) >= 2 and text.endswith('"') else text[1:]
    inner = inner.replace('""', '"')
    if _SIMPLE_IDENT.match(inner) and inner.upper() not in NEEDS_QUOTES:
        return _word(inner)
    return _IDENT, '"' + inner.replace('"', '""') + '"'


def _upper(tok: Token) -> str:
    return tok[1].upper() if tok[0] == WORD else ""


def _match_close(tokens: list[Token], j: int) -> int:
    """``tokens[j]`` opens a bracket; return the index after its matching close."""
    depth = 0
    n = len(tokens)
    while j < n:
        kind, text = tokens[j]
        if kind == PUNCT:
            if text in "([":
                depth += 1
            elif text in ")]":
                depth -= 1
                if depth == 0:
                    return j + 1
        j += 1
    return n


def _skip_type(tokens: list[Token], j: int) -> int:
    """Skip a type name starting at ``tokens[j]``; return the index after it."""
    n = len(tokens)
    if j >= n or tokens[j][0] not in (WORD, QIDENT):
        return j
    up = _upper(tokens[j])
    j += 1
    while j + 1 < n and tokens[j] == (PUNCT, ".") and tokens[j + 1][0] in (WORD, QIDENT):
        j += 2
    nxt = _upper(tokens[j]) if j < n else ""
    if up == "DOUBLE" and nxt == "PRECISION":
        j += 1
    elif up == "NATIONAL" and nxt in ("CHARACTER", "CHAR"):
        j += 1
        nxt = _upper(tokens[j]) if j < n else ""
        if nxt == "VARYING":
            j += 1
    elif up in ("CHARACTER", "CHAR", "BIT", "NCHAR") and nxt == "VARYING":
        j += 1
    if j < n and tokens[j] == (PUNCT, "("):
        j = _match_close(tokens, j)
    if up in ("TIMESTAMP", "TIME") and j + 2 < n:
        if (
            _upper(tokens[j]) in ("WITH", "WITHOUT")
            and _upper(tokens[j + 1]) == "TIME"
            and _upper(tokens[j + 2]) == "ZONE"
        ):
            j += 3
    elif up == "INTERVAL":
        j = _skip_interval_fields(tokens, j)
    while j < n and tokens[j] == (PUNCT, "["):
        j = _match_close(tokens, j)
    if j < n and _upper(tokens[j]) == "ARRAY":
        j += 1
        if j < n and tokens[j] == (PUNCT, "["):
            j = _match_close(tokens, j)
    return j


def _skip_interval_fields(tokens: list[Token], j: int) -> int:
    n = len(tokens)
    while j < n:
        if _upper(tokens[j]) in INTERVAL_FIELDS:
            j += 1
        elif tokens[j] == (PUNCT, "(") and j > 0 and _upper(tokens[j - 1]) == "SECOND":
            j = _match_close(tokens, j)
        else:
            break
    return j


def _typed_literal_end(tokens: list[Token], i: int) -> int:
    """If ``tokens[i:]`` is ``type 'string'``, return the index of the string, else -1."""
    if _upper(tokens[i]) not in TYPED_LITERAL_TYPES:
        return -1
    j = i + 1
    if j < len(tokens) and tokens[j][0] == STRING:
        return j
    if _upper(tokens[i]) == "INTERVAL":  # INTERVAL (p) '…' is rare; fields come after
        return -1
    j = _skip_type(tokens, i)
    if j < len(tokens) and tokens[j][0] == STRING and j > i:
        return j
    return -1


def _is_operand(kind: int, text: str) -> bool:
    if kind in (_CONST, _IDENT, _KEEP):
        return True
    if kind == _PUNCTK:
        return text in (")", "]")
    return kind == _KW and text in OPERAND_KEYWORDS


def _is_integer(text: str) -> bool:
    return text.isdigit()


class _Group:
    __slots__ = ("commas", "ctx", "open_at")

    def __init__(self, open_at: int, ctx: int) -> None:
        self.open_at = open_at
        self.ctx = ctx
        self.commas: list[int] = []


class _Values:
    __slots__ = ("comma_at", "kept", "state")

    def __init__(self) -> None:
        self.state = _V_EXPECT_ROW
        self.kept: set[tuple[str, ...]] = set()
        self.comma_at = -1


def normalize_tokens(tokens: list[Token], comments: Sequence[str] = ()) -> Normalized:
    """Normalize one statement's tokens (see the module docstring for the rules)."""
    out_t: list[str] = []
    out_k: list[int] = []
    stack: list[_Group] = []
    by_active: dict[int, bool] = {}
    values: dict[int, _Values] = {}
    max_depth = 0
    n = len(tokens)
    i = 0

    def emit_const(after: int) -> int:
        """Append a placeholder; fold a leading sign; drop casts; return next index."""
        if (
            out_t
            and out_t[-1] in ("-", "+")
            and out_k[-1] == _OPK
            and (len(out_t) == 1 or not _is_operand(out_k[-2], out_t[-2]))
        ):
            out_t.pop()
            out_k.pop()
        out_t.append(_PLACEHOLDER)
        out_k.append(_CONST)
        j = after
        while j < n and tokens[j] == (PUNCT, "::"):
            j = _skip_type(tokens, j + 1)
        return j

    while i < n:
        kind, text = tokens[i]
        depth = len(stack)
        vstate = values.get(depth)
        if vstate is not None and (
            (vstate.state == _V_EXPECT_ROW and text != "(")
            or (vstate.state == _V_AFTER_ROW and text != ",")
        ):
            del values[depth]

        if kind == WORD:
            up = text.upper() if text.isascii() else ""
            if up in ("NULL", "TRUE", "FALSE"):
                prev = out_t[-1] if out_t else ""
                # IS [NOT] NULL, NOT NULL, SET NULL, … ON NULL, NULL ON NULL are syntax
                keep = prev in ("IS", "NOT", "SET") or (
                    up == "NULL"
                    and (
                        prev == "ON"
                        or (
                            i + 2 < n
                            and _upper(tokens[i + 1]) == "ON"
                            and _upper(tokens[i + 2]) == "NULL"
                        )
                    )
                )
                if not keep:
                    i = emit_const(i + 1)
                    continue
            elif up == "CAST" and i + 3 < n and tokens[i + 1] == (PUNCT, "("):
                j = i + 2
                if tokens[j] in ((OP, "-"), (OP, "+")) and tokens[j + 1][0] == NUMBER:
                    j += 1
                if tokens[j][0] in _CONST_KINDS and j + 1 < n and _upper(tokens[j + 1]) == "AS":
                    i = emit_const(_match_close(tokens, i + 1))
                    continue
            elif (up == "INNER" and i + 1 < n and _upper(tokens[i + 1]) == "JOIN") or (
                up == "OUTER"
                and out_t
                and out_t[-1] in ("LEFT", "RIGHT", "FULL")
                and i + 1 < n
                and _upper(tokens[i + 1]) == "JOIN"
            ):
                i += 1
                continue
            elif up in TYPED_LITERAL_TYPES and i + 1 < n:
                s = _typed_literal_end(tokens, i)
                if s >= 0:
                    j = emit_const(s + 1)
                    if up == "INTERVAL":
                        j = _skip_interval_fields(tokens, j)
                        while j < n and tokens[j] == (PUNCT, "::"):
                            j = _skip_type(tokens, j + 1)
                    i = j
                    continue
            wk, wt = _word(text)
            if wt == "BY" and out_t and out_t[-1] in ("ORDER", "GROUP"):
                by_active[depth] = True
            elif wt in _BY_CLAUSE_STOP:
                by_active[depth] = False
            elif wt == "VALUES":
                values[depth] = _Values()
            out_t.append(wt)
            out_k.append(wk)
            i += 1
        elif kind in _CONST_KINDS:
            if (
                kind == NUMBER
                and by_active.get(depth)
                and out_t
                and out_t[-1] in ("BY", ",")
                and _is_integer(text)
            ):
                nxt = tokens[i + 1] if i + 1 < n else (PUNCT, ";")
                if nxt[1] in (",", ")", ";") or _upper(nxt) in BY_CLAUSE_END:
                    out_t.append(text)
                    out_k.append(_KEEP)
                    i += 1
                    continue
            i = emit_const(i + 1)
        elif kind == QIDENT:
            wk, wt = _qident(text)
            out_t.append(wt)
            out_k.append(wk)
            i += 1
        elif kind == PUNCT:
            if text in ("(", "["):
                if text == "[":
                    ctx = _G_ARRAY if out_t and out_t[-1] == "ARRAY" else _G_OTHER
                elif vstate is not None and vstate.state == _V_EXPECT_ROW and depth in values:
                    ctx = _G_ROW
                elif out_t and out_t[-1] == "IN":
                    ctx = _G_IN
                else:
                    ctx = _G_OTHER
                stack.append(_Group(len(out_t), ctx))
                max_depth = max(max_depth, len(stack))
                out_t.append(text)
                out_k.append(_PUNCTK)
                i += 1
            elif text in (")", "]"):
                by_active.pop(depth, None)
                values.pop(depth, None)
                out_t.append(text)
                out_k.append(_PUNCTK)
                i += 1
                if not stack:
                    continue
                group = stack.pop()
                if group.ctx in (_G_IN, _G_ARRAY):
                    if _collapse(out_t, out_k, group) and i < n and tokens[i] == (PUNCT, "::"):
                        # a cast on a list of constants is a cast on a constant
                        while i < n and tokens[i] == (PUNCT, "::"):
                            i = _skip_type(tokens, i + 1)
                elif group.ctx == _G_ROW:
                    _values_row(out_t, out_k, group, values.get(len(stack)))
            elif text == ",":
                if stack:
                    stack[-1].commas.append(len(out_t))
                if vstate is not None and vstate.state == _V_AFTER_ROW and depth in values:
                    vstate.state = _V_EXPECT_ROW
                    vstate.comma_at = len(out_t)
                out_t.append(text)
                out_k.append(_PUNCTK)
                i += 1
            else:
                if text == ";" and not stack:
                    by_active.clear()
                    values.clear()
                out_t.append(text)
                out_k.append(_PUNCTK)
                i += 1
        elif kind == OP:
            out_t.append("<>" if text == "!=" else text)
            out_k.append(_OPK)
            i += 1
        else:  # pragma: no cover - every lexer kind is handled above
            out_t.append(text)
            out_k.append(_OPK)
            i += 1

    while out_t and out_t[-1] == ";":
        out_t.pop()
        out_k.pop()
    _rewrite_utility(out_t, out_k)
    text, params = _render(out_t, out_k)
    return Normalized(
        text=text,
        words=tuple(out_t),
        kinds=tuple(out_k),
        comments=tuple(comments),
        max_depth=max_depth,
        params=params,
    )


def _collapse(out_t: list[str], out_k: list[int], group: _Group) -> bool:
    """Collapse ``IN (c, c, …)`` / ``ARRAY[c, c, …]`` to one item.  True if all-constant."""
    start = group.open_at + 1
    end = len(out_t) - 1  # the closing bracket
    has_const = False
    for idx in range(start, end):
        k = out_k[idx]
        if k == _CONST:
            has_const = True
        elif not (k in (_PUNCTK, _KW) and out_t[idx] in _COLLAPSIBLE_PUNCT):
            return False
    if not has_const:
        return False
    bounds = [start - 1, *group.commas, end]
    first = tuple(out_t[bounds[0] + 1 : bounds[1]])
    for a, b in itertools.pairwise(bounds[1:]):
        if tuple(out_t[a + 1 : b]) != first:
            return True  # constant, but not one repeated shape: keep as written
    if len(bounds) > 2:
        del out_t[bounds[1] : end]
        del out_k[bounds[1] : end]
    return True


def _values_row(out_t: list[str], out_k: list[int], group: _Group, vstate: _Values | None) -> None:
    if vstate is None:
        return
    row = tuple(out_t[group.open_at :])
    if row in vstate.kept and vstate.comma_at >= 0:
        del out_t[vstate.comma_at :]
        del out_k[vstate.comma_at :]
    else:
        vstate.kept.add(row)
    vstate.state = _V_AFTER_ROW


def _replace(out_t: list[str], out_k: list[int], idx: int) -> None:
    out_t[idx] = _PLACEHOLDER
    out_k[idx] = _CONST


def _rewrite_utility(out_t: list[str], out_k: list[int]) -> None:
    """Statement-level rules for transaction control, SET and named objects."""
    if not out_t:
        return
    first = out_t[0]
    size = len(out_t)
    second = out_t[1] if size > 1 else ""
    if first in ("BEGIN", "START", "COMMIT", "END", "ROLLBACK", "ABORT"):
        if first == "START" and second == "TRANSACTION":
            out_t[0:2] = ["BEGIN"]
            del out_k[1]
        elif first == "END":
            out_t[0] = "COMMIT"
        elif first == "ABORT":
            out_t[0] = "ROLLBACK"
        if len(out_t) > 1 and out_t[1] in ("WORK", "TRANSACTION"):
            del out_t[1]
            del out_k[1]
        if out_t[0] == "ROLLBACK" and len(out_t) > 2 and out_t[1] == "TO":
            del out_t[2:]
            del out_k[2:]
            out_t.extend(("SAVEPOINT", _PLACEHOLDER))
            out_k.extend((_KW, _CONST))
    elif first == "SAVEPOINT" and size == 2:
        _replace(out_t, out_k, 1)
    elif first == "RELEASE" and size >= 2:
        del out_t[1:]
        del out_k[1:]
        out_t.extend(("SAVEPOINT", _PLACEHOLDER))
        out_k.extend((_KW, _CONST))
    elif first in ("PREPARE", "EXECUTE", "DECLARE") and size >= 2 and second != "TRANSACTION":
        _replace(out_t, out_k, 1)
    elif first == "DEALLOCATE" and size >= 2:
        if second == "PREPARE":
            del out_t[1]
            del out_k[1]
        if len(out_t) == 2 and out_t[1] != "ALL":
            _replace(out_t, out_k, 1)
    elif first in ("FETCH", "MOVE", "CLOSE") and size >= 2:
        if out_k[-1] == _IDENT:
            _replace(out_t, out_k, size - 1)
    elif first in ("TRUNCATE", "LOCK") and second == "TABLE":
        del out_t[1]
        del out_k[1]
    elif first == "SET":
        _rewrite_set(out_t, out_k)


def _rewrite_set(out_t: list[str], out_k: list[int]) -> None:
    j = 1
    size = len(out_t)
    if j < size and out_t[j] == "SESSION":
        if j + 1 < size and out_t[j + 1].upper() in ("CHARACTERISTICS", "AUTHORIZATION"):
            if out_t[j + 1].upper() == "AUTHORIZATION" and j + 2 < size:
                _set_value(out_t, out_k, j + 2)
            return
        del out_t[j]  # SET SESSION x ≡ SET x
        del out_k[j]
        size -= 1
    elif j < size and out_t[j] == "LOCAL":
        j += 1
    if j >= size:
        return
    name = out_t[j].upper()
    if name in ("TRANSACTION", "CONSTRAINTS"):
        return
    if name == "TIME" and j + 1 < size and out_t[j + 1] == "ZONE":
        _set_value(out_t, out_k, j + 2)
        return
    if name in ("ROLE", "SCHEMA", "NAMES", "AUTHORIZATION"):
        _set_value(out_t, out_k, j + 1)
        return
    j += 1
    while j + 1 < size and out_t[j] == "." and out_k[j + 1] in (_IDENT, _KW):
        j += 2
    if j < size and out_t[j] in ("TO", "="):
        out_t[j] = "="
        out_k[j] = _OPK
        _set_value(out_t, out_k, j + 1)


def _set_value(out_t: list[str], out_k: list[int], j: int) -> None:
    rest = out_t[j:]
    if not rest or rest == ["DEFAULT"] or rest[:2] == ["FROM", "CURRENT"]:
        return
    del out_t[j:]
    del out_k[j:]
    out_t.append(_PLACEHOLDER)
    out_k.append(_CONST)


_CALL_KEYWORDS: Final = frozenset(("ANY", "ALL", "SOME", "CAST", "ROW", "GROUPING", "EXISTS"))
_NO_SPACE_BEFORE: Final = frozenset((",", ")", "]", ".", "::", "[", ";"))
_NO_SPACE_AFTER: Final = frozenset(("(", "[", ".", "::"))


def render(words: Sequence[str], kinds: Sequence[int]) -> str:
    """Render normalized tokens (e.g. a slice of ``Normalized.words``) as text."""
    return _render(words, kinds)[0]


def _render(out_t: Sequence[str], out_k: Sequence[int]) -> tuple[str, int]:
    """Join tokens with canonical spacing and number the placeholders ``$1..$n``."""
    parts: list[str] = []
    params = 0
    prev = ""
    prev_k = 0
    for text, kind in zip(out_t, out_k, strict=True):
        if kind == _CONST:
            params += 1
            piece = f"${params}"
        else:
            piece = text
        if parts:
            if (
                text in _NO_SPACE_BEFORE
                or prev in _NO_SPACE_AFTER
                or (text == "(" and (prev_k == _IDENT or prev in _CALL_KEYWORDS))
            ):
                parts.append(piece)
            else:
                parts.append(" ")
                parts.append(piece)
        else:
            parts.append(piece)
        prev = text
        prev_k = kind
    return "".join(parts), params
