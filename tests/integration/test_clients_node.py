"""node-postgres (npm ``pg`` with ``pg-cursor``) through the proxy.

One Node process per module: ``tests/clients/node/matrix.mjs`` runs every scenario against
PostgreSQL directly and then through the proxy, printing one JSON line per scenario and
target.  The tests compare the two and check the counts on ``/api/queries``.  The npm
packages come from the committed lock file (``npm ci``, once; node_modules is gitignored).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from dbproxy.pgcluster import PgServer
from dbproxy.protocol.events import Event, StatementFailed, StatementFinished
from tests.fixtures.fix_proxy import RunningProxy, start_proxy
from tests.fixtures.query_counts import Counts, counts_of

NODE_DIR = Path(__file__).parents[1] / "clients" / "node"


@dataclass(frozen=True)
class NodeRun:
    results: dict[tuple[str, str], Any]  # (target, scenario) -> parsed JSON
    events: list[Event]
    proxy: RunningProxy


def _installed() -> Path:
    for tool, package in (("node", "nodejs"), ("npm", "npm")):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} not found: .ci/run installs it (apt-get install {package})")
    installed = NODE_DIR / "node_modules" / ".package-lock.json"
    lock = NODE_DIR / "package-lock.json"
    if not installed.is_file() or installed.stat().st_mtime < lock.stat().st_mtime:
        done = subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=NODE_DIR,
            capture_output=True,
            text=True,
            check=False,
            timeout=300,
        )
        if done.returncode != 0:
            pytest.fail(f"npm ci in {NODE_DIR} failed:\n{done.stdout}{done.stderr}")
    return NODE_DIR


@pytest.fixture(scope="module")
def node(pg_server: PgServer) -> Iterator[NodeRun]:
    directory = _installed()
    proxy = start_proxy(pg_server)
    try:
        done = subprocess.run(
            [
                "node",
                "matrix.mjs",
                f"direct={pg_server.dsn()}",
                f"proxy={proxy.dsn()}",
            ],
            cwd=directory,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, f"matrix.mjs failed:\n{done.stdout}\n{done.stderr}"
        results: dict[tuple[str, str], Any] = {}
        for line in done.stdout.splitlines():
            target, scenario, value = line.split("\t")
            results[(target, scenario)] = json.loads(value)
        # a plain client (params, cursor), then a pipelining one
        events = proxy.wait_closed(2)
        yield NodeRun(results, list(events), proxy)
    finally:
        proxy.stop()


def _same_as_direct(node: NodeRun, scenario: str) -> Any:
    proxied = node.results[("proxy", scenario)]
    assert proxied == node.results[("direct", scenario)]
    return proxied


def _finished(node: NodeRun, marker: str) -> list[StatementFinished]:
    return [e for e in node.events if isinstance(e, StatementFinished) and marker in e.text]


SUM = "select $1::int + $2::int as sum, upper($3) as up /* node params */"
INSERT = "insert into node_items values ($1, $2, $3)"
NAMED = "select id, label, amount from node_items where id > $1 order by id"
UPDATE = "update node_items set amount = amount * 2 where id % $1 = 0"
TOTAL = "select count(*)::int as n, sum(amount)::text as total from node_items"


def test_parameterized_queries(node: NodeRun) -> None:
    results = _same_as_direct(node, "params")
    assert results[-1]["rows"] == [{"n": 12, "total": "135.00"}]
    # node-postgres parses a named query once, then only binds it.
    named = _finished(node, "from node_items where id > $1")
    assert [e.rows for e in named] == [12, 6, 1]
    assert {e.statement_name for e in named} == {"node-items-over"}
    assert counts_of(node.proxy, [SUM, INSERT, NAMED, UPDATE, TOTAL]) == {
        SUM: Counts(5, 5),
        INSERT: Counts(12, 12),
        NAMED: Counts(3, 19),
        UPDATE: Counts(1, 4),
        TOTAL: Counts(1, 1),
    }


CURSOR = "select g, repeat('x', g % 7) as pad from generate_series(1, $1) g /* node cursor */"
CURSOR_EARLY = "select g from generate_series(1, $1) g /* node cursor early close */"
AFTER = "select $1::text as after_cursors"


def test_cursor(node: NodeRun) -> None:
    batches = _same_as_direct(node, "cursor")
    assert [len(b) for b in batches[:7]] == [10, 10, 10, 10, 10, 3, 0]
    # pg-cursor: Execute with a row limit and Flush, PortalSuspended, no Sync until close.
    assert [(e.text, e.rows) for e in _finished(node, "/* node cursor")] == [
        (CURSOR, 53),
        (CURSOR_EARLY, 20),
    ]
    assert counts_of(node.proxy, [CURSOR, CURSOR_EARLY, AFTER]) == {
        CURSOR: Counts(1, 53),
        CURSOR_EARLY: Counts(1, 20),
        AFTER: Counts(1, 1),
    }


DOUBLED = "select $1::int * 2 as doubled /* node pipeline */"
SIMPLE = "select g, g * 10 as tens from generate_series(1, 5) g /* node pipeline simple */"
BOOM = "select 1 / $1::int as boom /* node pipeline error */"
AGG = "select string_agg(g::text, ',') as s from generate_series(1, $1) g /* node pipeline agg */"


def test_pipelined_queries(node: NodeRun) -> None:
    settled = _same_as_direct(node, "pipeline")
    assert settled[2] == {"error": "22012"}
    assert [r["rows"] for r in settled[:2]] == [
        [{"doubled": 42}],
        [{"g": g, "tens": g * 10} for g in range(1, 6)],
    ]
    # Each query has its own Sync: the failure is alone, nothing around it is rolled back.
    pipeline = [e for e in node.events if isinstance(e, StatementFinished | StatementFailed)]
    pipeline = [e for e in pipeline if "/* node pipeline" in e.text]
    assert [(type(e).__name__, e.rows) for e in pipeline] == [
        ("StatementFinished", 1),
        ("StatementFinished", 5),
        ("StatementFailed", 0),
        ("StatementFinished", 1),
        ("StatementFinished", 1),
        ("StatementFinished", 1),
    ]
    assert not any(isinstance(e, StatementFinished) and e.rolled_back for e in pipeline)
    assert counts_of(node.proxy, [DOUBLED, SIMPLE, BOOM, AGG]) == {
        DOUBLED: Counts(3, 3),
        SIMPLE: Counts(1, 5),
        BOOM: Counts(1, 0, 1),
        AGG: Counts(1, 1),
    }
