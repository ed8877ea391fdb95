"""bucket_of: the histogram's native bisect."""

from __future__ import annotations

from bisect import bisect_left

from hypothesis import given
from hypothesis import strategies as st

from dbproxy.observe.histogram import bucket_of


@given(
    st.lists(st.integers(1, 10**12), min_size=1, max_size=30, unique=True).map(
        lambda xs: tuple(sorted(xs))
    ),
    st.integers(-5, 10**12 + 5),
)
def test_bucket_of_is_bisect_left(bounds: tuple[int, ...], value: int) -> None:
    assert bucket_of(bounds, value) == bisect_left(bounds, value)
