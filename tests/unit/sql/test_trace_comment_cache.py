"""Statements carrying a per-request traceparent are cached without it, and the cached
path gives exactly what the uncached, pure ``fingerprint()`` gives."""

from __future__ import annotations

import pytest

from benchmarks.corpus import build_corpus
from dbproxy.sql.cache import Fingerprinter
from dbproxy.sql.fingerprint import fingerprint

TP = "traceparent='00-4bf92f3577b34da6a3ce929d0e0e47{:02x}-00f067aa0ba902b7-01'"
T = TP.format(0x36)


def variants(sql: str, i: int) -> list[str]:
    tp = TP.format(i % 256)
    return [
        f"{sql} /*{tp},route='%2Fusers'*/",
        f"/*{tp}*/ {sql}",
        f"{sql} /*{tp}*/;",
        f"{sql}\n/*{tp},application='web'*/",
    ]


def test_cached_equals_uncached_on_the_corpus() -> None:
    fp = Fingerprinter()
    for i, sql in enumerate(build_corpus()[:400]):
        for text in variants(sql, i):
            assert fp.fingerprint(text) == fingerprint(text), text


@pytest.mark.parametrize(
    "text",
    [
        f"SELECT 1 -- /*{T}*/",
        f"SELECT '/*' /*{T}*/",
        f"/*app='x'*/ SELECT 1 /*{T}*/",
        f"/*{T}*/ SELECT 1 /*a='b'*/",
        f"SELECT 1 /* a /*{T}*/ */",
        f"/*{T}*/",
        f"SELECT 1 /*{T},application='a'*/ /*{T.replace('47', '48')}*/",
    ],
)
def test_tricky_comments_agree_with_the_uncached_path(text: str) -> None:
    assert Fingerprinter().fingerprint(text) == fingerprint(text)


def test_new_traceparents_hit_the_exact_cache_of_the_statement() -> None:
    fp = Fingerprinter()
    for i in range(100):
        fp.fingerprint(f"SELECT * FROM users WHERE id = $1 /*{TP.format(i)}*/")
    stats = fp.stats
    assert stats.exact_hits == 99 and stats.parses == 1
    assert stats.exact_size == 1  # the statement without its comment, not 100 texts
