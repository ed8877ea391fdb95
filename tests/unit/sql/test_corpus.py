"""The generated ORM-style corpus scored against libpg_query's fingerprint (via pglast).

Over all pairs of corpus statements, "same fingerprint" by dbproxy is compared with "same
fingerprint" by libpg_query: precision = agreed-same / dbproxy-same, recall = agreed-same /
reference-same.  The figures are printed (``pytest -s``) for the project notes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Iterable

import pglast.parser as pglast_parser

from benchmarks.corpus import build_corpus
from dbproxy.sql.fingerprint import fingerprint

CORPUS = build_corpus()


def _same_pairs(keys: Iterable[Hashable]) -> int:
    return sum(n * (n - 1) // 2 for n in Counter(keys).values())


def test_corpus_size() -> None:
    assert len(CORPUS) >= 1000


def test_precision_and_recall_against_libpg_query() -> None:
    ours = [fingerprint(stmt.sql).id for stmt in CORPUS]
    reference = [pglast_parser.fingerprint(stmt.sql) for stmt in CORPUS]
    ours_same = _same_pairs(ours)
    ref_same = _same_pairs(reference)
    both_same = _same_pairs(zip(ours, reference, strict=True))
    precision = both_same / ours_same
    recall = both_same / ref_same
    print(
        f"\ncorpus {len(CORPUS)} statements, {len(set(ours))} dbproxy fingerprints, "
        f"{len(set(reference))} libpg_query fingerprints; "
        f"precision {precision:.4f} recall {recall:.4f}"
    )
    assert precision >= 0.99
    assert recall >= 0.95


def test_corpus_operation_and_kind() -> None:
    wrong = []
    for stmt in CORPUS:
        fp = fingerprint(stmt.sql)
        if (fp.operation, fp.kind.value) != (stmt.operation, stmt.kind) or not fp.parse_ok:
            wrong.append((stmt.template, fp.operation, fp.kind.value, fp.parse_ok))
    assert not wrong, wrong[:5]


def test_corpus_traceparent_tags_survive() -> None:
    tagged = [s for s in CORPUS if "traceparent=" in s.sql]
    assert tagged
    for stmt in tagged:
        assert fingerprint(stmt.sql).tags["traceparent"].startswith("00-")
