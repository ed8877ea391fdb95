"""Golden cases: equivalences, non-equivalences, expected fields and pinned ids.

Regenerate the pinned ids after a reviewed rules change (and bump RULES_VERSION when ids
change):  DBPROXY_UPDATE_GOLDEN=1 .venv/bin/pytest tests/unit/sql/test_golden.py
"""

from __future__ import annotations

import json
import os
import random

import pytest

from dbproxy.sql.cache import Fingerprinter
from dbproxy.sql.fingerprint import Fingerprint, fingerprint
from tests.unit.sql.golden import IDS_FILE, Group, all_statements, load_groups

GROUPS = load_groups()
STATEMENTS = all_statements(GROUPS)


def _record(fp: Fingerprint) -> dict[str, object]:
    return {
        "id": fp.id,
        "text": fp.text,
        "kind": fp.kind.value,
        "operation": fp.operation,
        "tables": list(fp.tables),
        "summary": fp.summary,
        "parse_ok": fp.parse_ok,
    }


def test_golden_has_several_hundred_cases() -> None:
    assert len(STATEMENTS) >= 500
    assert len(GROUPS) >= 150


@pytest.mark.parametrize("group", GROUPS, ids=[f"line{g.line}" for g in GROUPS])
def test_group(group: Group) -> None:
    anchor = fingerprint(group.anchor)
    for sql in group.same:
        fp = fingerprint(sql)
        assert fp.id == anchor.id, f"expected same:\n  {sql!r}\n  {fp.text!r}\n  {anchor.text!r}"
        assert fp.text == anchor.text
    for sql in group.different:
        fp = fingerprint(sql)
        assert fp.id != anchor.id, f"expected different from anchor: {sql!r} -> {fp.text!r}"
    expect = group.expect
    if "text" in expect:
        assert anchor.text == expect["text"]
    if "kind" in expect:
        assert anchor.kind.value == expect["kind"]
    if "op" in expect:
        assert anchor.operation == expect["op"]
    if "tables" in expect:
        tables = [] if expect["tables"] == "-" else expect["tables"].split(",")
        assert list(anchor.tables) == tables
    if "summary" in expect:
        assert anchor.summary == expect["summary"]
    if "parse_ok" in expect:
        assert anchor.parse_ok is (expect["parse_ok"] == "true")
    if "tags" in expect:
        want = (
            {}
            if expect["tags"] == "-"
            else dict(pair.split("=", 1) for pair in expect["tags"].split(";"))
        )
        assert dict(anchor.tags) == want


def test_pinned_ids() -> None:
    current = {sql: _record(fingerprint(sql)) for sql in STATEMENTS}
    if os.environ.get("DBPROXY_UPDATE_GOLDEN") == "1":
        lines = [
            json.dumps({"sql": sql, **rec}, ensure_ascii=False) for sql, rec in current.items()
        ]
        IDS_FILE.write_text("[\n" + ",\n".join(lines) + "\n]\n", encoding="utf-8")
    pinned = {entry.pop("sql"): entry for entry in json.loads(IDS_FILE.read_text("utf-8"))}
    changed = [sql for sql in current if pinned.get(sql) != current[sql]]
    assert not changed, (
        f"{len(changed)} fingerprints changed, first: {changed[0]!r}: "
        f"{pinned.get(changed[0])} -> {current[changed[0]]}"
    )
    assert set(pinned) == set(current), "golden cases and pinned ids are out of sync"


def test_cached_fingerprinter_matches_pure_function_in_any_order() -> None:
    expected = {sql: fingerprint(sql) for sql in STATEMENTS}
    rng = random.Random(5)
    for capacity in (0, 3, 10_000):
        fingerprinter = Fingerprinter(exact_capacity=capacity, shape_capacity=capacity)
        order = STATEMENTS * 2
        rng.shuffle(order)
        for sql in order:
            assert fingerprinter.fingerprint(sql) == expected[sql]
