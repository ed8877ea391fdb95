from __future__ import annotations

import threading

from dbproxy.sql.cache import Fingerprinter
from dbproxy.sql.fingerprint import Fingerprint, fingerprint


def test_exact_and_shape_hits_and_stats() -> None:
    fp = Fingerprinter()
    a = fp.fingerprint("SELECT * FROM t WHERE id = 1")
    b = fp.fingerprint("SELECT * FROM t WHERE id = 1")
    c = fp.fingerprint("select *  from t where id = 2")
    assert a is b and a.id == c.id
    stats = fp.stats
    # texts with constants are cached by their skeleton (constants cut out), not as text
    # (the second text is remembered as it is among the recent ones: an exact hit)
    assert (stats.exact_hits, stats.exact_misses) == (1, 2)
    assert (stats.skeleton_hits, stats.skeleton_misses) == (0, 2)
    assert (stats.shape_hits, stats.shape_misses) == (1, 1)
    assert stats.parses == 1 and stats.parse_failures == 0 and stats.parse_ns > 0
    assert (stats.exact_size, stats.skeleton_size, stats.shape_size) == (0, 2, 1)
    # a text without constants is cached as text
    d = fp.fingerprint("SELECT * FROM t WHERE id = $1")
    assert fp.fingerprint("SELECT * FROM t WHERE id = $1") is d
    assert (fp.stats.exact_hits, fp.stats.exact_size) == (2, 1)


def test_skeleton_hits_give_what_the_uncached_path_gives() -> None:
    fp = Fingerprinter()
    texts = [f"SELECT abalance FROM pgbench_accounts WHERE aid = {i};" for i in (1, 22, 333)] + [
        "SELECT name FROM users WHERE email = 'a@b.c' AND age > 1.5 -- app=shop",
        "SELECT name FROM users WHERE email = 'x@y.z' AND age > 30.25 -- app=shop",
        "SELECT a, b FROM t WHERE c = 5 ORDER BY 2",
        "SELECT a, b FROM t WHERE c = 7 ORDER BY 1",  # same skeleton, another ordinal
        "SELECT a FROM t WHERE c IN (1, 2, 3)",
        "SELECT a FROM t WHERE c IN (4, 5, 6)",
    ]
    for text in texts + texts:
        assert fp.fingerprint(text) == fingerprint(text), text
    stats = fp.stats
    assert stats.skeleton_hits == 4  # the first round: 22, 333, x@y.z, (4, 5, 6)
    assert stats.exact_hits == 9  # the second round: every text remembered as it is
    # the ordinal texts are not cached by skeleton (their text keeps the ordinal)
    assert stats.exact_size == 2


def test_two_hundred_row_insert_parses_once_as_one_row() -> None:
    fp = Fingerprinter()
    rows = ", ".join(f"({i}, 'name{i}')" for i in range(200))
    first = fp.fingerprint(f"INSERT INTO t (a, b) VALUES {rows}")
    again = fp.fingerprint(f"INSERT INTO t (a, b) VALUES {rows.replace('name', 'x')}")
    assert first.text == "INSERT INTO t(a, b) VALUES ($1, $2)"
    assert again.id == first.id
    assert fp.stats.parses == 1 and fp.stats.skeleton_hits == 1  # same skeleton


def test_bounded_lru() -> None:
    fp = Fingerprinter(exact_capacity=4, shape_capacity=2)
    for i in range(10):
        fp.fingerprint(f"SELECT c{i} FROM t")
    assert fp.stats.exact_size == 4 and fp.stats.shape_size == 2
    fp.fingerprint("SELECT c9 FROM t")  # most recent: still cached
    assert fp.stats.exact_hits == 1


def test_zero_capacity_and_huge_texts_are_not_cached() -> None:
    fp = Fingerprinter(exact_capacity=0, shape_capacity=0)
    fp.fingerprint("SELECT 1")
    assert fp.stats.exact_size == 0 and fp.stats.shape_size == 0
    big = Fingerprinter(max_exact_chars=100, max_shape_chars=100)
    big.fingerprint("SELECT " + ", ".join(f"c{i}" for i in range(100)) + " FROM t")
    assert big.stats.exact_size == 0 and big.stats.shape_size == 0


def test_tags_are_per_statement_not_per_shape() -> None:
    fp = Fingerprinter()
    a = fp.fingerprint("SELECT 1 /*traceparent='00-a-b-01'*/")
    b = fp.fingerprint("SELECT 2 /*traceparent='00-c-d-01'*/")
    plain = fp.fingerprint("SELECT 3")
    assert a.id == b.id == plain.id
    assert a.tags["traceparent"] == "00-a-b-01" and b.tags["traceparent"] == "00-c-d-01"
    assert not plain.tags
    # traceparent texts are never cached themselves; the statements without them are
    # (under their common skeleton)
    assert fp.stats.exact_size == 0 and fp.stats.skeleton_size == 1


def test_fingerprint_many_splits_like_postgres() -> None:
    fp = Fingerprinter()
    result = fp.fingerprint_many(
        "BEGIN; INSERT INTO t VALUES (1, 'a;b'); SELECT $$x;y$$ /*c='d'*/; ; COMMIT"
    )
    assert [r.operation for r in result] == ["BEGIN", "INSERT", "SELECT", "COMMIT"]
    assert result[2].tags == {"c": "d"}
    assert fp.fingerprint_many("SELECT 1") == [fingerprint("SELECT 1")]
    assert fp.fingerprint_many("") == []
    assert fp.fingerprint_many("  -- nothing") == []
    assert fp.fingerprint_many(";;") == []


def test_fingerprint_is_hashable_and_immutable() -> None:
    a = fingerprint("SELECT 1 /*k='v'*/")
    assert hash(a) == hash(fingerprint("SELECT 2 /*k='v'*/"))
    assert {a: 1}[fingerprint("SELECT 3 /*k='v'*/")] == 1
    assert a.tags == {"k": "v"}


def test_threads_get_identical_results() -> None:
    statements = [
        f"SELECT a{i % 7} FROM t WHERE b IN ({', '.join(['1'] * (i % 5 + 1))})" for i in range(300)
    ]
    expected = [fingerprint(s) for s in statements]
    results: dict[int, list[Fingerprint]] = {}

    def work(n: int) -> None:
        results[n] = [fingerprint(s) for s in reversed(statements)][::-1]

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r == expected for r in results.values())


def test_fingerprinter_satisfies_the_protocol() -> None:
    from dbproxy.sql.cache import SupportsFingerprint

    seam: SupportsFingerprint = Fingerprinter()
    assert seam.fingerprint("SELECT 1").operation == "SELECT"


def test_repeated_text_is_served_by_the_last_hit_and_counted_as_an_exact_hit() -> None:
    fp = Fingerprinter()
    a = "SELECT abalance FROM pgbench_accounts WHERE aid = $1"
    b = "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2"
    first_a, first_b = fp.fingerprint(a), fp.fingerprint(b)
    # equal texts in other objects (each session decodes its own), alternating and repeated
    texts = [a, "".join(a), b, "".join(b), "".join(b), a]
    assert [fp.fingerprint(t) for t in texts] == [
        first_a,
        first_a,
        first_b,
        first_b,
        first_b,
        first_a,
    ]
    assert fp.stats.exact_hits == len(texts)
    fp.clear()
    assert fp.fingerprint("".join(a)) == first_a  # recomputed after clear(), same result
    assert fp.stats.exact_misses == 3
