"""GenerationalCache: the fingerprinter's bounded caches (hot entries survive, bound holds)."""

from __future__ import annotations

import random

import pytest

from dbproxy.sql.cache import Fingerprinter, GenerationalCache
from dbproxy.sql.fingerprint import fingerprint


@pytest.mark.parametrize("capacity", [0, 1, 2, 3, 4, 10, 101])
def test_never_holds_more_than_its_capacity(capacity: int) -> None:
    cache: GenerationalCache[int, str] = GenerationalCache(capacity)
    rnd = random.Random(capacity)
    biggest = 0
    for _ in range(2_000):
        key = rnd.randrange(3 * capacity + 5)
        if rnd.random() < 0.5:
            cache.get(key)
        else:
            cache.put(key, str(key))
        biggest = max(biggest, len(cache))
    for key in range(-1, -2 * capacity - 2, -1):  # new keys only: it fills up
        cache.put(key, str(key))
        biggest = max(biggest, len(cache))
    assert biggest <= capacity
    assert biggest == (capacity if capacity < 2 else capacity // 2 * 2)


def test_values_are_the_ones_put_last() -> None:
    cache: GenerationalCache[int, str] = GenerationalCache(8)
    model: dict[int, str] = {}
    rnd = random.Random(7)
    for step in range(5_000):
        key = rnd.randrange(20)
        if rnd.random() < 0.4:
            cache.put(key, f"{key}:{step}")
            model[key] = f"{key}:{step}"
        got = cache.get(key)
        assert got is None or got == model[key]  # a miss is allowed, a stale value is not
        assert (key in cache) == (got is not None)


def test_an_entry_used_once_per_half_capacity_insertions_survives() -> None:
    capacity = 100
    cache: GenerationalCache[str, int] = GenerationalCache(capacity)
    cache.put("hot", 1)
    for i in range(10_000):  # one-off keys stream through
        cache.put(f"cold{i}", i)
        if i % (capacity // 2) == 0:
            assert cache.get("hot") == 1, i
    assert cache.get("hot") == 1
    assert cache.get("cold0") is None  # the stream itself was evicted
    assert len(cache) <= capacity


def test_an_unused_entry_is_evicted_after_a_full_turn() -> None:
    cache: GenerationalCache[str, int] = GenerationalCache(4)
    cache.put("a", 1)
    for i in range(4):
        cache.put(f"x{i}", i)
    assert cache.get("a") is None


def test_old_generation_hit_moves_back_to_young() -> None:
    cache: GenerationalCache[str, int] = GenerationalCache(4)  # generations of 2
    cache.put("a", 1)
    cache.put("b", 2)
    cache.put("c", 3)  # a, b are now old
    assert cache.get("a") == 1  # promoted
    cache.put("d", 4)  # young (c, a) full: rotation drops b
    cache.put("e", 5)
    assert cache.get("a") == 1 and cache.get("b") is None


def test_clear_and_capacity_zero() -> None:
    cache: GenerationalCache[str, int] = GenerationalCache(0)
    cache.put("a", 1)
    assert cache.get("a") is None and len(cache) == 0
    cache = GenerationalCache(6)
    for i in range(6):
        cache.put(str(i), i)
    cache.clear()
    assert len(cache) == 0 and cache.get("1") is None
    with pytest.raises(ValueError, match="capacity"):
        GenerationalCache(-1)


def test_fingerprinter_results_do_not_depend_on_evictions() -> None:
    """Tiny caches evict all the time; every answer still equals the uncached one."""
    small = Fingerprinter(exact_capacity=3, shape_capacity=2, skeleton_capacity=2)
    rnd = random.Random(3)
    texts = [f"SELECT c{i} FROM t WHERE id = $1" for i in range(8)] + [
        f"SELECT c{i} FROM t WHERE id = {rnd.randrange(100)}" for i in range(8)
    ]
    for _ in range(300):
        text = rnd.choice(texts)
        assert small.fingerprint(text) == fingerprint(text)
    stats = small.stats
    assert stats.exact_size <= 3 and stats.shape_size <= 2 and stats.skeleton_size <= 2
    assert stats.exact_hits > 0 and stats.shape_hits > 0
