"""The histogram builder and the bounded value counters."""

from __future__ import annotations

import pytest

from dbproxy.observe.histogram import HistogramBuilder, bounds_to_ns, freeze
from dbproxy.observe.stats import QUERY_BUCKETS_S
from dbproxy.observe.topn import OTHER_VALUE, count_value, merge_counts, top_items


def test_builder_buckets_follow_the_contract() -> None:
    h = HistogramBuilder((0.001, 0.01, 0.1))
    for seconds in (0.0, 0.0005, 0.001, 0.0011, 0.01, 0.05, 0.1, 0.2, 30.0):
        h.observe(seconds)
    frozen = h.freeze()
    # <= bound goes in that bucket; the last one is +Inf
    assert frozen.bucket_counts == (3, 2, 2, 2)
    assert frozen.count == 9 == sum(frozen.bucket_counts)
    assert frozen.sum_s == pytest.approx(30.3626)
    assert frozen.bounds == (0.001, 0.01, 0.1)


def test_builder_merge_and_reset() -> None:
    a = HistogramBuilder(QUERY_BUCKETS_S)
    b = HistogramBuilder(QUERY_BUCKETS_S)
    a.observe_ns(3_000_000)
    b.observe_ns(3_000_000)
    b.observe_ns(40_000_000_000)
    a.merge(b)
    assert a.count == 3 and a.sum_ns == 40_006_000_000
    assert a.freeze().quantile(0.5) == pytest.approx(0.004375)  # 2.5 ms + 2.5 ms * 1.5 / 2
    with pytest.raises(ValueError, match="different bounds"):
        a.merge(HistogramBuilder((1.0,)))
    a.reset()
    assert a.freeze().count == 0 and sum(a.freeze().bucket_counts) == 0


def test_freeze_helper_and_bound_validation() -> None:
    h = freeze((1.0, 2.0), [1, 0, 2], 7_000_000_000)
    assert (h.count, h.sum_s, h.bucket_counts) == (3, 7.0, (1, 0, 2))
    assert bounds_to_ns((0.0005, 1.0)) == (500_000, 1_000_000_000)
    for bad in ((), (0.0, 1.0), (1.0, 1.0), (2.0, 1.0)):
        with pytest.raises(ValueError):
            bounds_to_ns(bad)


def test_quantile_of_constant_observations_stays_in_their_bucket() -> None:
    h = HistogramBuilder(QUERY_BUCKETS_S)
    for _ in range(100):
        h.observe(0.003)
    frozen = h.freeze()
    for q in (0.01, 0.5, 0.95, 0.99):
        assert 0.0025 <= frozen.quantile(q) <= 0.005


def test_bounded_counter_folds_new_values_into_other() -> None:
    counter: dict[str, int] = {}
    for value in ["a", "b", "a", "c", "d", "a", "c", "e"]:
        count_value(counter, value, 2)
    assert counter == {"a": 3, "b": 1, OTHER_VALUE: 4}
    assert sum(counter.values()) == 8
    # the literal value "__other__" cannot take a slot of its own
    count_value(counter, OTHER_VALUE, 5)
    assert counter[OTHER_VALUE] == 5 and len(counter) == 3
    assert top_items(counter, 1) == (("a", 3), (OTHER_VALUE, 6))


def test_top_items_and_merge_are_deterministic() -> None:
    merged = merge_counts([{"x": 2, "y": 2}, {"z": 5, "y": 1}, {}])
    assert merged == {"x": 2, "y": 3, "z": 5}
    assert top_items(merged, 2) == (("z", 5), ("y", 3), (OTHER_VALUE, 2))
    assert top_items({"b": 1, "a": 1}, 5) == (("a", 1), ("b", 1))
    assert top_items({}, 3) == ()
