"""Pure arithmetic over ``EXPLAIN (FORMAT JSON)`` output: plan shapes, summaries, rows
scanned, buffers and the functions a plan calls.  No I/O, no asyncpg.

A plan's **shape** is what makes two plans "the same plan": node types, relations,
indexes, join types and the order of children (join order) — not costs, row estimates
or timings, which move with every ANALYZE.  Its hash is the plan id.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final

__all__ = [
    "ScanCount",
    "plan_functions",
    "plan_id",
    "plan_root",
    "plan_shape",
    "plan_summary",
    "rows_scanned",
]

#: node fields that make the shape (everything else is estimates, timings or expressions)
_SHAPE_KEYS: Final = (
    "Node Type",
    "Parent Relationship",
    "Subplan Name",
    "Join Type",
    "Strategy",
    "Partial Mode",
    "Parallel Aware",
    "Scan Direction",
    "Relation Name",
    "Schema",
    "Index Name",
    "CTE Name",
    "Function Name",
    "Operation",
)
#: scans of a table's rows: what "rows scanned" adds up
BASE_SCANS: Final = frozenset(
    (
        "Seq Scan",
        "Index Scan",
        "Index Only Scan",
        "Bitmap Heap Scan",
        "Tid Scan",
        "Tid Range Scan",
        "Sample Scan",
    )
)
_SCAN_SUFFIX: Final = " Scan"
_IDENT = r'"?([A-Za-z_][A-Za-z0-9_$]*)"?'
_FUNCTION_CALL = re.compile(rf"(?:{_IDENT}\.)?{_IDENT}\(")
_EXPRESSION_KEYS: Final = frozenset(
    (
        "Output",
        "Filter",
        "Join Filter",
        "Index Cond",
        "Recheck Cond",
        "Hash Cond",
        "Merge Cond",
        "One-Time Filter",
        "Sort Key",
        "Group Key",
        "Function Call",
        "Table Function Call",
        "TID Cond",
        "Cache Key",
        "Presorted Key",
        "Order By",
    )
)


def plan_root(explain: Any) -> Mapping[str, Any]:
    """The top plan node of an EXPLAIN JSON document (``[{"Plan": …}]``, or the object,
    or its text); ValueError when it is not one."""
    if isinstance(explain, str | bytes):
        explain = json.loads(explain)
    if isinstance(explain, list) and explain:
        explain = explain[0]
    if isinstance(explain, Mapping) and isinstance(explain.get("Plan"), Mapping):
        plan: Mapping[str, Any] = explain["Plan"]
        return plan
    raise ValueError("not an EXPLAIN (FORMAT JSON) document")


def _nodes(node: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    yield node
    for child in node.get("Plans") or ():
        if isinstance(child, Mapping):
            yield from _nodes(child)


def plan_shape(node: Mapping[str, Any]) -> list[Any]:
    """The shape of a plan tree: nested ``[fields, children]`` lists, JSON-serializable."""
    fields = [[key, node[key]] for key in _SHAPE_KEYS if key in node]
    return [fields, [plan_shape(child) for child in node.get("Plans") or ()]]


def plan_id(node: Mapping[str, Any]) -> str:
    """16 hex digits identifying the plan's shape."""
    text = json.dumps(plan_shape(node), separators=(",", ":"), sort_keys=False)
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def _describe(node: Mapping[str, Any]) -> str:
    kind = str(node.get("Node Type", "?"))
    if node.get("Parallel Aware"):
        kind = f"Parallel {kind}"
    index = node.get("Index Name")
    relation = node.get("Relation Name")
    text = kind
    if index:
        text += f" using {index}"
    if relation:
        text += f" on {relation}"
        alias = node.get("Alias")
        if alias and alias != relation:
            text += f" {alias}"
    return text


def plan_summary(node: Mapping[str, Any], *, max_scans: int = 4) -> str:
    """One line: ``Index Scan using t_pkey on t``, or the top node and its scans
    (``Hash Join: Seq Scan on a, Index Scan using b_pkey on b``)."""
    scans = [
        _describe(n)
        for n in _nodes(node)
        if str(n.get("Node Type", "")).endswith(_SCAN_SUFFIX) or n.get("Relation Name")
    ]
    top = _describe(node)
    if not scans:
        return top
    if len(scans) == 1 and scans[0] == top:
        return top
    shown = ", ".join(scans[:max_scans])
    if len(scans) > max_scans:
        shown += f", … ({len(scans) - max_scans} more)"
    head = str(node.get("Node Type", "?"))
    join = node.get("Join Type")
    if join and join != "Inner":
        head = f"{head} ({join})"
    return f"{head}: {shown}"


@dataclass(frozen=True, slots=True, kw_only=True)
class ScanCount:
    """What one sampled ``EXPLAIN (ANALYZE, BUFFERS)`` execution did."""

    rows_scanned: float  # rows the base-table scans read (returned + filtered out)
    rows_returned: float  # rows the top node returned
    shared_hit: int = 0
    shared_read: int = 0
    local_hit: int = 0
    local_read: int = 0
    temp_read: int = 0
    temp_written: int = 0


def _num(node: Mapping[str, Any], key: str) -> float:
    value = node.get(key, 0)
    return float(value) if isinstance(value, int | float) else 0.0


def rows_scanned(explain: Any) -> ScanCount:
    """Rows scanned by one execution, from ``EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON)``.

    Per base-table scan node: (Actual Rows + Rows Removed by Filter + Rows Removed by
    Index Recheck) x Actual Loops — EXPLAIN shows those rows per loop.  Bitmap Index Scans
    are skipped (their Bitmap Heap Scan reads the rows), so are CTE, subquery, function and
    values scans (their inputs are counted where they scan a table).  A parallel scan's
    node already sums the leader and the workers (loops = processes), so the per-worker
    ``Workers`` entries are not added again.  PostgreSQL ≤ 17 rounds the per-loop rows to
    an integer, so a count over many loops is approximate there.  Buffers come from the
    top node, which includes its children's."""
    root = plan_root(explain)
    scanned = 0.0
    for node in _nodes(root):
        if node.get("Node Type") not in BASE_SCANS:
            continue
        per_loop = (
            _num(node, "Actual Rows")
            + _num(node, "Rows Removed by Filter")
            + _num(node, "Rows Removed by Index Recheck")
        )
        scanned += per_loop * _num(node, "Actual Loops")
    return ScanCount(
        rows_scanned=round(scanned, 2),
        rows_returned=round(_num(root, "Actual Rows") * _num(root, "Actual Loops"), 2),
        shared_hit=int(_num(root, "Shared Hit Blocks")),
        shared_read=int(_num(root, "Shared Read Blocks")),
        local_hit=int(_num(root, "Local Hit Blocks")),
        local_read=int(_num(root, "Local Read Blocks")),
        temp_read=int(_num(root, "Temp Read Blocks")),
        temp_written=int(_num(root, "Temp Written Blocks")),
    )


def plan_functions(explain: Any) -> set[str]:
    """Lower-cased names of the functions a (VERBOSE) plan's expressions call, e.g. from a
    view's definition: the sampler checks them in ``pg_proc`` besides the statement's own."""
    names: set[str] = set()
    for node in _nodes(plan_root(explain)):
        fn = node.get("Function Name")
        if isinstance(fn, str):
            names.add(fn.lower())
        for key, value in node.items():
            if key not in _EXPRESSION_KEYS:
                continue
            for text in value if isinstance(value, list) else (value,):
                if isinstance(text, str):
                    names.update(m.group(2).lower() for m in _FUNCTION_CALL.finditer(text))
    return names
