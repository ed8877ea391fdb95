"""The literal skeleton cuts out exactly the lexer's constants, so it can key a cache.

The central property: put a canonical constant of each marker's class back into the
skeleton, lex both texts, and the token streams agree on every token except the
constants' text — and on the one fact about a constant the normalizer reads (is a
NUMBER an integer).  Then two texts with one skeleton normalize alike, unless the
normalizer kept an ordinal's digits (then the fingerprinter does not use the skeleton).
"""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks.corpus import build_corpus
from dbproxy.sql.fingerprint import normalize
from dbproxy.sql.lexer import NUMBER, STRING, Token, tokenize
from dbproxy.sql.skeleton import (
    MARK_INTEGER,
    MARK_NUMBER,
    MARK_STRING,
    NO_CONSTANT,
    literal_skeleton,
)
from tests.unit.sql.golden import all_statements, load_groups

_CANONICAL = {MARK_INTEGER: b" 0 ", MARK_STRING: b" '' ", MARK_NUMBER: b" 0.5 "}


def _shape(tokens: list[Token]) -> list[tuple[int, str | bool]]:
    """Tokens with constants reduced to what the normalizer may read of them."""
    out: list[tuple[int, str | bool]] = []
    for kind, text in tokens:
        if kind == STRING:
            out.append((kind, True))
        elif kind == NUMBER:
            out.append((kind, text.isdigit()))
        else:
            out.append((kind, text))
    return out


def _refill(skeleton: bytes) -> str:
    out = b"".join(
        _CANONICAL.get(skeleton[i : i + 1], skeleton[i : i + 1]) for i in range(len(skeleton))
    )
    return out.decode("utf-8", "surrogatepass")


def _check(sql: str) -> bytes | None:
    skeleton = literal_skeleton(sql)
    if skeleton is None:
        return None
    if skeleton == NO_CONSTANT:
        skeleton = sql.encode("utf-8", "surrogatepass")
    comments: list[str] = []
    refilled_comments: list[str] = []
    assert _shape(tokenize(sql, comments)) == _shape(
        tokenize(_refill(skeleton), refilled_comments)
    ), (sql, skeleton)
    assert comments == refilled_comments
    return skeleton


_PIECES = st.sampled_from(
    [
        " ", "\n", "\t", "a", "t1", "e", "E", "b", "B", "x", "X", "n", "N", "u", "U", "&",
        "'", "''", '"', "\\", "$", "$1", "$a", "$$", "-", "--", "/", "*", "/*", "*/", "+",
        "=", ";", "(", ")", ",", ".", "..", "0", "1", "7", "42", "0x", "0o", "0b", "1f", "_",
        "e5", "E-", "+3", "1.5", ".5", "1e", "é", "\r", "select", "order by", "in (",
        "\x01",
    ]
)  # fmt: skip


@settings(max_examples=5000, deadline=None)
@given(st.lists(_PIECES, max_size=16).map("".join))
def test_skeleton_spans_are_the_lexers_constants(sql: str) -> None:
    _check(sql)


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=40))
def test_skeleton_on_any_text(sql: str) -> None:
    _check(sql)


def test_real_statements() -> None:
    statements = [s.sql for s in build_corpus()] + all_statements(load_groups())
    covered = sum(_check(sql) is not None for sql in statements)
    assert covered > len(statements) * 0.6  # most take the fast path


def test_markers() -> None:
    assert literal_skeleton("SELECT abalance FROM t WHERE aid = 48213;") == (
        b"SELECT abalance FROM t WHERE aid = \x01;"
    )
    assert literal_skeleton("x = E'it\\'s' AND y = 1.5 AND z = 0x1F AND t2.c = $1") == (
        b"x = \x02 AND y = \x03 AND z = \x03 AND t2.c = $1"
    )
    assert literal_skeleton("ORDER BY 1, 2 -- note 3") == b"ORDER BY \x01, \x01 -- note 3"
    assert literal_skeleton("SELECT now()") == NO_CONSTANT
    assert literal_skeleton("SELECT 'é' FROM t1 WHERE é2 = 1e5") == (
        "SELECT \x02 FROM t1 WHERE é2 = \x03".encode()
    )


def test_fallbacks() -> None:
    for sql in (
        "SELECT 1 /* c */",  # block comments nest
        "SELECT $$a$$",  # dollar quotes
        "SELECT $q$a$q$",
        "SELECT E'x\\",  # the lexer backtracks into another reading
        "SELECT '\x01'",  # a marker character in the text
        "SELECT 1\x00",
    ):
        assert literal_skeleton(sql) is None, sql


def test_same_skeleton_same_normalized_text() -> None:
    rng = random.Random(5)
    statements = [s.sql for s in build_corpus()]
    by_skeleton: dict[bytes, str] = {}
    checked = 0
    for sql in statements + rng.sample(statements, len(statements)):
        skeleton = literal_skeleton(sql)
        if skeleton is None or skeleton == NO_CONSTANT:
            continue
        norm = normalize(sql)
        if norm.keeps_constant_text():  # ordinals: the cache stores nothing for these
            continue
        text = norm.text
        assert by_skeleton.setdefault(skeleton, text) == text, sql
        checked += 1
    assert checked > 1000


def test_ordinals_are_the_one_dependence_on_values() -> None:
    a = normalize("SELECT a, b FROM t WHERE c = 5 ORDER BY 2")
    b = normalize("SELECT a, b FROM t WHERE c = 7 ORDER BY 1")
    assert literal_skeleton("SELECT a, b FROM t WHERE c = 5 ORDER BY 2") == literal_skeleton(
        "SELECT a, b FROM t WHERE c = 7 ORDER BY 1"
    )
    assert a.text != b.text
    assert a.keeps_constant_text() and b.keeps_constant_text()
    assert not normalize("SELECT a FROM t WHERE c = 5 ORDER BY a").keeps_constant_text()
