"""PgJDBC (Debian ``libpostgresql-jdbc-java``) through the proxy: fetch size and server prepares.

One JVM per module: ``tests/clients/jdbc/JdbcMatrix.java`` (source launch, no build step)
runs every scenario against PostgreSQL directly and then through the proxy, printing one
line of results per scenario and target.  The tests compare the two and check what the
proxy observed and what ``/api/queries`` counts.
"""

from __future__ import annotations

import shutil
import subprocess
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from dbproxy.pgcluster import PgServer
from dbproxy.protocol.events import Event, StatementFailed, StatementFinished
from tests.fixtures.fix_proxy import RunningProxy, start_proxy
from tests.fixtures.query_counts import Counts, counts_of

PROGRAM = Path(__file__).parents[1] / "clients" / "jdbc" / "JdbcMatrix.java"
JARS = (Path("/usr/share/java/postgresql.jar"),)


@dataclass(frozen=True)
class JdbcRun:
    results: dict[tuple[str, str], str]  # (target, scenario) -> printed rows
    events: list[Event]
    proxy: RunningProxy


def _url(pg: PgServer, host: str, port: int) -> str:
    query = urllib.parse.urlencode(
        {"user": pg.app_user, "password": pg.app_password, "prepareThreshold": "3"}
    )
    return f"jdbc:postgresql://{host}:{port}/{pg.database}?{query}"


def _jar() -> Path:
    for jar in JARS:
        if jar.is_file():
            return jar
    pytest.fail("PgJDBC not found: .ci/run installs it (apt-get install libpostgresql-jdbc-java)")


@pytest.fixture(scope="module")
def jdbc(pg_server: PgServer) -> Iterator[JdbcRun]:
    java = shutil.which("java")
    if java is None:
        pytest.fail("java not found: .ci/run installs it (apt-get install default-jdk-headless)")
    jar = _jar()
    proxy = start_proxy(pg_server)
    try:
        done = subprocess.run(
            [
                java,
                "-cp",
                str(jar),
                str(PROGRAM),
                f"direct={_url(pg_server, pg_server.host, pg_server.port)}",
                f"proxy={_url(pg_server, proxy.host, proxy.port)}",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, f"JdbcMatrix failed:\n{done.stdout}\n{done.stderr}"
        results: dict[tuple[str, str], str] = {}
        for line in done.stdout.splitlines():
            target, scenario, rows = line.split("\t")
            results[(target, scenario)] = rows
        events = proxy.wait_closed(2)  # the scenarios' connection, then "abandoned"
        yield JdbcRun(results, list(events), proxy)
    finally:
        proxy.stop()


def _same_as_direct(jdbc: JdbcRun, scenario: str) -> str:
    proxied = jdbc.results[("proxy", scenario)]
    assert proxied == jdbc.results[("direct", scenario)]
    return proxied


def _finished(jdbc: JdbcRun, marker: str) -> list[StatementFinished]:
    failed = [e for e in jdbc.events if isinstance(e, StatementFailed) and marker in e.text]
    assert not failed, failed
    return [e for e in jdbc.events if isinstance(e, StatementFinished) and marker in e.text]


FETCH_A = "select g, md5(g::text) as h from generate_series(1, $1) g order by g /* jdbc fetch a */"
FETCH_B = "select g * 2 as twice from generate_series(1, $1) g /* jdbc fetch b */"
FETCH_EARLY = "select g from generate_series(1, $1) g /* jdbc fetch early close */"


def test_fetch_size_in_transaction(jdbc: JdbcRun) -> None:
    rows = _same_as_direct(jdbc, "fetch_size")
    assert rows.count("[") - 1 == 95 + 30 + 15
    # Each portal, run in Executes of 10 / 7 rows ended by PortalSuspended, is one statement
    # with every row it sent, even while the other portal is suspended too.
    # B (30 rows, read interleaved with A) completes first.
    assert [(e.text, e.rows, e.in_transaction) for e in _finished(jdbc, "jdbc fetch")] == [
        (FETCH_B, 30, True),
        (FETCH_A, 95, True),
        (FETCH_EARLY, 20, True),  # closed after two batches: the rows the server sent
    ]
    # PgJDBC runs a fetch-size query in a named portal (C_n), not the unnamed one.
    assert all(e.portal_name for e in _finished(jdbc, "jdbc fetch"))
    assert counts_of(jdbc.proxy, [FETCH_A, FETCH_B, FETCH_EARLY]) == {
        FETCH_A: Counts(1, 95),
        FETCH_B: Counts(1, 30),
        FETCH_EARLY: Counts(1, 20),
    }


THRESHOLD = "select $1::int * 3 + 1 as v, 'item ' || $2 as s /* jdbc threshold */"
INSERT = "insert into jdbc_items (id, label) values ($1, $2)"
SUM = "select count(*), sum(id), string_agg(label, ',' order by id) from jdbc_items where id > $1"


def test_prepare_threshold_server_prepared(jdbc: JdbcRun) -> None:
    rows = _same_as_direct(jdbc, "prepare_threshold")
    assert rows.count('"server"') >= 6  # PGStatement.isUseServerPrepare(), after each run
    assert '"batch 20"' in rows
    threshold = _finished(jdbc, "jdbc threshold")
    assert [e.rows for e in threshold] == [1] * 8
    # PgJDBC switches to a named server statement at the 3rd execution (prepareThreshold=3):
    # Parse once with a name, then Bind to that name.
    names = [e.statement_name for e in threshold]
    assert names[:2] == ["", ""] and names[2] != "" and set(names[2:]) == {names[2]}
    inserts = [e for e in _finished(jdbc, "insert into jdbc_items")]
    assert [e.rows for e in inserts] == [1] * 20
    assert counts_of(jdbc.proxy, [THRESHOLD, INSERT, SUM]) == {
        THRESHOLD: Counts(8, 8),
        INSERT: Counts(20, 20),
        SUM: Counts(4, 4),
    }


LEFT_OPEN = "select g, g % 3 as m from generate_series(1, $1) g /* jdbc left open */"
UNIQUE = "insert into jdbc_unique (id) values ($1)"
AUTOSAVE = "select 100 / $1 as q /* jdbc autosave */"


def test_suspended_portal_batch_error_autosave(jdbc: JdbcRun) -> None:
    rows = _same_as_direct(jdbc, "failures")
    assert '"23505 [-3, -3, -3, -3]"' in rows and '"22012"' in rows
    statements = [
        e
        for e in jdbc.events
        if isinstance(e, StatementFinished | StatementFailed) and e.text in (UNIQUE, AUTOSAVE)
    ]
    # The batch: two inserts, the duplicate fails, the server skips the fourth.  autosave:
    # a SAVEPOINT before each query, ROLLBACK TO it after the failure, then the next query.
    assert [(type(e).__name__, e.text, e.rows) for e in statements] == [
        ("StatementFinished", UNIQUE, 1),
        ("StatementFinished", UNIQUE, 1),
        ("StatementFailed", UNIQUE, 0),
        ("StatementFinished", AUTOSAVE, 1),
        ("StatementFailed", AUTOSAVE, 0),
        ("StatementFinished", AUTOSAVE, 1),
    ]
    commands = [e.command for e in jdbc.events if isinstance(e, StatementFinished)]
    assert "ROLLBACK TO SAVEPOINT" in " ".join(e.text for e in _finished(jdbc, "PGJDBC_AUTOSAVE"))
    assert commands.count("SAVEPOINT") >= 3
    # The portal left open is one statement, ended when its transaction committed, with the
    # two batches of 10 rows the server sent (the client read 12).
    assert [(e.rows, e.in_transaction) for e in _finished(jdbc, "jdbc left open")] == [(20, True)]
    assert counts_of(jdbc.proxy, [LEFT_OPEN, UNIQUE, AUTOSAVE]) == {
        LEFT_OPEN: Counts(1, 20),
        UNIQUE: Counts(3, 2, 1),
        AUTOSAVE: Counts(3, 2, 1),
    }


ABANDONED = "select g, -g as neg from generate_series(1, $1) g /* jdbc abandoned */"


def test_connection_closed_with_portal_suspended(jdbc: JdbcRun) -> None:
    rows = _same_as_direct(jdbc, "abandoned")
    assert rows == '[["1","-1"],["2","-2"],["3","-3"]]'
    # The portal died with the connection: still one statement, with the 10 rows it sent.
    assert [(e.rows, e.in_transaction) for e in _finished(jdbc, "jdbc abandoned")] == [(10, True)]
    assert counts_of(jdbc.proxy, [ABANDONED]) == {ABANDONED: Counts(1, 10)}
