"""Plan shapes, summaries and the rows-scanned arithmetic over EXPLAIN JSON (pure)."""

from __future__ import annotations

import json
from typing import Any

from dbproxy.inspect.plan import plan_functions, plan_id, plan_root, plan_summary, rows_scanned


def _doc(plan: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"Plan": plan}]


INDEX = {
    "Node Type": "Index Scan",
    "Relation Name": "t",
    "Alias": "t",
    "Index Name": "t_pkey",
    "Total Cost": 8.3,
    "Plan Rows": 1,
}


def test_plan_id_ignores_costs_and_estimates_but_not_indexes() -> None:
    other_costs = dict(INDEX, **{"Total Cost": 99.0, "Plan Rows": 1000})
    assert plan_id(INDEX) == plan_id(other_costs)
    seq = {"Node Type": "Seq Scan", "Relation Name": "t", "Alias": "t"}
    assert plan_id(INDEX) != plan_id(seq)
    assert plan_id(dict(INDEX, **{"Index Name": "t_other"})) != plan_id(INDEX)


def test_join_order_is_part_of_the_shape() -> None:
    a = {"Node Type": "Seq Scan", "Relation Name": "a"}
    b = {"Node Type": "Seq Scan", "Relation Name": "b"}
    ab = {"Node Type": "Hash Join", "Join Type": "Inner", "Plans": [a, b]}
    ba = {"Node Type": "Hash Join", "Join Type": "Inner", "Plans": [b, a]}
    assert plan_id(ab) != plan_id(ba)


def test_summaries() -> None:
    assert plan_summary(INDEX) == "Index Scan using t_pkey on t"
    nested = {
        "Node Type": "Nested Loop",
        "Join Type": "Left",
        "Plans": [
            {"Node Type": "Seq Scan", "Relation Name": "a", "Alias": "x"},
            INDEX,
        ],
    }
    assert plan_summary(nested) == (
        "Nested Loop (Left): Seq Scan on a x, Index Scan using t_pkey on t"
    )
    assert plan_root(json.dumps(_doc(INDEX)))["Node Type"] == "Index Scan"


def test_rows_scanned_multiplies_loops_and_adds_filtered_rows() -> None:
    plan = {
        "Node Type": "Nested Loop",
        "Actual Rows": 50,
        "Actual Loops": 1,
        "Shared Hit Blocks": 33,
        "Shared Read Blocks": 2,
        "Plans": [
            {"Node Type": "Index Scan", "Actual Rows": 10, "Actual Loops": 1},
            {
                "Node Type": "Seq Scan",
                "Actual Rows": 5,
                "Rows Removed by Filter": 495,
                "Actual Loops": 10,
                "Shared Hit Blocks": 30,
            },
        ],
    }
    count = rows_scanned(_doc(plan))
    assert count.rows_scanned == 10 + 10 * 500
    assert count.rows_returned == 50
    assert (count.shared_hit, count.shared_read) == (33, 2)  # the top node's only


def test_bitmap_index_scans_and_cte_scans_are_not_counted_twice() -> None:
    plan = {
        "Node Type": "CTE Scan",
        "Actual Rows": 7,
        "Actual Loops": 1,
        "Plans": [
            {
                "Node Type": "Bitmap Heap Scan",
                "Parent Relationship": "InitPlan",
                "Actual Rows": 7,
                "Rows Removed by Index Recheck": 3,
                "Actual Loops": 1,
                "Plans": [{"Node Type": "Bitmap Index Scan", "Actual Rows": 10, "Actual Loops": 1}],
            }
        ],
    }
    assert rows_scanned(_doc(plan)).rows_scanned == 10


def test_parallel_scans_count_once_and_never_executed_nodes_zero() -> None:
    plan = {
        "Node Type": "Gather",
        "Actual Rows": 3,
        "Actual Loops": 1,
        "Plans": [
            {
                "Node Type": "Seq Scan",
                "Parallel Aware": True,
                "Actual Rows": 1.0,
                "Rows Removed by Filter": 33332.67,  # PostgreSQL 18 shows fractions
                "Actual Loops": 3,
                "Workers": [
                    {"Worker Number": 0, "Actual Rows": 1, "Actual Loops": 1},
                    {"Worker Number": 1, "Actual Rows": 1, "Actual Loops": 1},
                ],
            },
            {"Node Type": "Index Scan", "Actual Rows": 0, "Actual Loops": 0},
        ],
    }
    assert rows_scanned(_doc(plan)).rows_scanned == 100001.01


def test_plan_functions_reads_expressions() -> None:
    plan = {
        "Node Type": "Seq Scan",
        "Output": ["public.audit(t.id)", "lower(t.name)"],
        "Filter": "(t.id > $1)",
        "Plans": [{"Node Type": "Function Scan", "Function Name": "generate_series"}],
    }
    assert plan_functions(_doc(plan)) == {"audit", "lower", "generate_series"}
