"""The JSON API's pure functions."""

from __future__ import annotations

import json

import pytest

from dbproxy.export import api
from dbproxy.observe.stats import QUERY_BUCKETS_S
from tests.unit.export.snapshots import FixedSource, query, snapshot

A = query(
    "aaa",
    observations={2: 4},
    sum_s=0.008,
    rows=40,
    errors={"23505": 1},
    applications=(("web", 3), ("cron", 1)),
    tags={"route": (("/a", 4),)},
)
B = query("bbb", observations={5: 1}, sum_s=0.02, rows=1, applications=(("web", 1),))
C = query("aaa", database="other", user="bob", observations={0: 10}, sum_s=0.004, rows=10)
EMPTY = query("ccc", observations={})
SNAP = snapshot(A, B, C, EMPTY)


def params(**kw: str) -> api.QueriesParams:
    return api.parse_queries_params(kw.items())


def fps(out: dict[str, object]) -> list[tuple[str, str]]:
    rows = out["queries"]
    assert isinstance(rows, list)
    return [(r["fingerprint"], r["database"]) for r in rows]


def test_row_fields() -> None:
    (row,) = [r for r in api.queries(SNAP, params())["queries"] if r["fingerprint"] == "bbb"]
    assert row["calls"] == 1
    assert row["total_time_ms"] == 20.0
    assert row["mean_time_ms"] == 20.0
    # the snapshot's min/max are the edges of its one non-empty bucket (0.01, 0.025]
    assert row["min_time_ms"] == 10.0 and row["max_time_ms"] == 25.0
    # one observation in (0.01, 0.025]: quantiles interpolate inside that bucket
    assert row["p50_ms"] == 17.5


def test_quantiles_stay_within_the_observed_min_and_max() -> None:
    from dataclasses import replace

    (q,) = [q for q in SNAP.queries if q.fingerprint == "bbb"]
    narrow = replace(q, min_s=0.020, max_s=0.021)  # every call took 20-21 ms
    snap = replace(SNAP, queries=(narrow,))
    (row,) = api.queries(snap, params())["queries"]
    assert 20.0 <= row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"] <= 21.0
    assert row["rows"] == 1 and row["rows_per_call"] == 1.0
    assert row["errors"] == {} and row["error_count"] == 0 and row["rolled_back"] == 0
    assert row["first_seen"] == "2023-11-14T22:13:20.000Z"
    assert row["last_seen"] == "2023-11-14T22:14:20.000Z"
    assert row["applications"] == [{"value": "web", "calls": 1}]
    assert row["tables"] == ["users"] and row["kind"] == "read"
    (a,) = [
        r
        for r in api.queries(SNAP, params())["queries"]
        if r["fingerprint"] == "aaa" and r["database"] == "app"
    ]
    assert a["errors"] == {"23505": 1} and a["error_count"] == 1
    assert a["tags"] == {"route": [{"value": "/a", "calls": 4}]}


def test_empty_histogram_gives_nulls_and_valid_json() -> None:
    out = api.queries(SNAP, params(sort="p95"))
    (row,) = [r for r in out["queries"] if r["fingerprint"] == "ccc"]
    assert row["p50_ms"] is None and row["p95_ms"] is None and row["p99_ms"] is None
    assert row["min_time_ms"] is None and row["rows_per_call"] is None
    json.dumps(out, allow_nan=False)
    assert fps(out)[-1] == ("ccc", "app")  # NaN sorts last


@pytest.mark.parametrize(
    ("sort", "expected"),
    [
        ("total_time", ["bbb", "aaa", "aaa", "ccc"]),
        ("calls", ["aaa", "aaa", "bbb", "ccc"]),
        ("mean", ["bbb", "aaa", "aaa", "ccc"]),
        ("rows", ["aaa", "aaa", "bbb", "ccc"]),
        ("errors", ["aaa", "aaa", "bbb", "ccc"]),
        ("p95", ["bbb", "aaa", "aaa", "ccc"]),
    ],
)
def test_sort(sort: str, expected: list[str]) -> None:
    assert [fp for fp, _ in fps(api.queries(SNAP, params(sort=sort)))] == expected


def test_sort_ties_are_deterministic() -> None:
    out = api.queries(SNAP, params(sort="calls"))
    assert fps(out)[:2] == [("aaa", "other"), ("aaa", "app")]  # 10 calls, then 4


def test_filters_and_limit() -> None:
    out = api.queries(SNAP, params(database="app", limit="2"))
    assert out["total"] == 3 and len(out["queries"]) == 2
    assert fps(api.queries(SNAP, params(user="bob"))) == [("aaa", "other")]
    assert out["taken_at"] == "2023-11-14T22:15:20.000Z"
    assert out["since"] == "2023-11-14T22:13:20.000Z"


@pytest.mark.parametrize(
    "bad",
    [
        {"sort": "nope"},
        {"limit": "0"},
        {"limit": "10001"},
        {"limit": "x"},
        {"limit": "-1"},
        {"limit": "\u0661"},  # a digit, but not ASCII
        {"group_by": "no spaces"},
        {"bogus": "1"},
    ],
)
def test_invalid_params(bad: dict[str, str]) -> None:
    with pytest.raises(api.ApiError) as info:
        api.parse_queries_params(bad.items())
    assert info.value.status == 400


def test_repeated_param() -> None:
    with pytest.raises(api.ApiError):
        api.parse_queries_params([("sort", "calls"), ("sort", "rows")])


def test_group_by_application() -> None:
    out = api.queries(SNAP, params(group_by="application"))
    assert out["note"] == api.GROUP_BY_NOTE
    groups = out["groups"]
    assert [(g["value"], g["calls"]) for g in groups] == [("web", 4), ("cron", 1)]
    assert [(q["fingerprint"], q["calls"]) for q in groups[0]["queries"]] == [
        ("aaa", 3),
        ("bbb", 1),
    ]
    route = api.queries(SNAP, params(group_by="route"))
    assert [(g["value"], g["calls"]) for g in route["groups"]] == [("/a", 4)]
    assert api.queries(SNAP, params(group_by="tenant"))["groups"] == []


def test_detail() -> None:
    out = api.query_detail(SNAP, "aaa")
    assert fps(out) == [("aaa", "app"), ("aaa", "other")]
    with pytest.raises(api.ApiError) as info:
        api.query_detail(SNAP, "zzz")
    assert info.value.status == 404


def test_reset_authorization() -> None:
    with pytest.raises(api.ApiError) as info:
        api.authorize_reset(None, "Bearer x")
    assert info.value.status == 403 and "--api-token" in info.value.message
    assert "DBPROXY_API_TOKEN" in info.value.message
    for header in (None, "", "Bearer", "Bearer wrong", "Basic s3cret", "s3cret"):
        with pytest.raises(api.ApiError):
            api.authorize_reset("s3cret", header)
    api.authorize_reset("s3cret", "Bearer s3cret")
    api.authorize_reset("s3cret", "bearer s3cret")
    source = FixedSource(SNAP)
    assert api.reset(source, now=0.0) == {"reset": True, "at": "1970-01-01T00:00:00.000Z"}
    assert source.resets == 1


def test_buckets_constant_used() -> None:
    assert len(A.duration.bucket_counts) == len(QUERY_BUCKETS_S) + 1
