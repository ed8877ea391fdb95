"""pgbench through the proxy: initialisation, then every query mode, counted statement by statement.

Each benchmark run goes to its own ``application_name`` (PGAPPNAME), so its sessions can
be told apart; within a run, pgbench opens one setup connection (table checks, vacuum)
and then one connection per client, so the sessions of a run are "setup" plus ``-c``
benchmark sessions.

Exact counts: pgbench's "number of transactions actually processed" counts completed
transactions.  Under ``-T`` the deadline (SIGALRM) only sets ``timer_exceeded``, which a
client checks when a transaction *ends* (CSTATE_END_TX); a transaction in flight at the
deadline runs to its end and is counted, and no new one starts.  Nothing is cut short, so
the events of the benchmark sessions are exactly ``statements per transaction`` times the
processed count, no tolerance.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from dbproxy.pgcluster import PgServer
from dbproxy.protocol.events import (
    SessionClosed,
    SessionOpened,
    StatementEvent,
    StatementFailed,
    StatementFinished,
)
from tests.fixtures.fix_proxy import RunningProxy
from tests.fixtures.query_counts import Counts, counts_of

CLIENTS = 4
SECONDS = 5
TPCB_COMMANDS = ["BEGIN", "UPDATE", "SELECT", "UPDATE", "UPDATE", "INSERT", "COMMIT"]
# GetTableInfo(): the scale and the partitioning of pgbench_accounts (builtin scripts).
SETUP_COUNT_BRANCHES = "select count(*) from pgbench_branches"
# Without -n, pgbench vacuums and truncates before the run (same setup connection).
# The builtin scripts' statements (one fingerprint each, whatever the query mode).
SELECT_ABALANCE = "SELECT abalance FROM pgbench_accounts WHERE aid = $1"
TPCB_WRITES = [
    "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2",
    "UPDATE pgbench_tellers SET tbalance = tbalance + $1 WHERE tid = $2",
    "UPDATE pgbench_branches SET bbalance = bbalance + $1 WHERE bid = $2",
    "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime)"
    " VALUES ($1, $2, $3, $4, CURRENT_TIMESTAMP)",
]
SETUP_VACUUM = ["vacuum pgbench_branches", "vacuum pgbench_tellers", "truncate pgbench_history"]


def _pgbench(
    pg: PgServer, env: dict[str, str], *args: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [pg.tool("pgbench"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, (
        f"pgbench {args!r} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    )
    return done


def _psql(pg: PgServer, env: dict[str, str], sql: str) -> None:
    subprocess.run(
        [pg.tool("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-c", sql],
        env=env,
        check=True,
        capture_output=True,
        timeout=60,
    )


def _in_schema(env: dict[str, str], schema: str, app: str | None = None) -> dict[str, str]:
    env = dict(env, PGOPTIONS=f"-c search_path={schema}")
    if app is not None:
        env["PGAPPNAME"] = app
    return env


@pytest.fixture(scope="module")
def bench_schema(pg_server: PgServer) -> Iterator[str]:
    """A schema holding pgbench tables at scale 1, initialised directly (not through a proxy)."""
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    env = pg_server.env(base=os.environ)
    _psql(pg_server, env, f"create schema {schema}")
    _pgbench(pg_server, _in_schema(env, schema), "-i", "-q", "-s", "1")
    try:
        yield schema
    finally:
        _psql(pg_server, env, f"drop schema {schema} cascade")


def _by_session(proxy: RunningProxy, app: str) -> dict[int, list[StatementEvent]]:
    sessions = {
        e.session_id
        for e in proxy.events
        if isinstance(e, SessionOpened) and e.application_name == app
    }
    out: dict[int, list[StatementEvent]] = {sid: [] for sid in sessions}
    for e in proxy.statements():
        if e.session_id in out:
            out[e.session_id].append(e)
    return out


def _processed(stdout: str) -> int:
    assert re.search(r"^number of failed transactions: 0 \(0\.000%\)$", stdout, re.M), stdout
    match = re.search(r"^number of transactions actually processed: (\d+)$", stdout, re.M)
    assert match, stdout
    return int(match.group(1))


def test_pgbench_initialize_through_proxy(proxy: RunningProxy, pg_server: PgServer) -> None:
    schema = f"bench_init_{uuid.uuid4().hex[:8]}"
    base = pg_server.env(base=os.environ)
    _psql(pg_server, base, f"create schema {schema}")
    try:
        done = _pgbench(pg_server, _in_schema(proxy.env(base=os.environ), schema), "-i", "-s", "1")
        assert "done in" in done.stderr
        proxy.wait_closed(1)
        events = proxy.statements()
        assert not [e for e in events if isinstance(e, StatementFailed)]
        # pgbench -i's steps "dtgvp": drop, create, generate (client side, COPY with a
        # relkind check before each), vacuum, primary keys: every statement it sent.
        relkind = "SELECT relkind FROM pg_catalog.pg_class WHERE oid=$1::pg_catalog.regclass"
        tables = "pgbench_accounts, pgbench_branches, pgbench_history, pgbench_tellers"
        assert [(e.text, e.command, e.rows, e.protocol) for e in events] == [
            (f"drop table if exists {tables}", "DROP TABLE", 0, "simple"),
            (
                "create table pgbench_history(tid int,bid int,aid    int,delta int,"
                "mtime timestamp,filler char(22))",
                "CREATE TABLE",
                0,
                "simple",
            ),
            (
                "create table pgbench_tellers(tid int not null,bid int,tbalance int,"
                "filler char(84)) with (fillfactor=100)",
                "CREATE TABLE",
                0,
                "simple",
            ),
            (
                "create table pgbench_accounts(aid    int not null,bid int,abalance int,"
                "filler char(84)) with (fillfactor=100)",
                "CREATE TABLE",
                0,
                "simple",
            ),
            (
                "create table pgbench_branches(bid int not null,bbalance int,"
                "filler char(88)) with (fillfactor=100)",
                "CREATE TABLE",
                0,
                "simple",
            ),
            ("begin", "BEGIN", 0, "simple"),
            (f"truncate table {tables}", "TRUNCATE TABLE", 0, "simple"),
            (relkind, "SELECT", 1, "extended"),
            ("copy pgbench_branches from stdin with (freeze on)", "COPY", 1, "simple"),
            (relkind, "SELECT", 1, "extended"),
            ("copy pgbench_tellers from stdin with (freeze on)", "COPY", 10, "simple"),
            (relkind, "SELECT", 1, "extended"),
            ("copy pgbench_accounts from stdin with (freeze on)", "COPY", 100_000, "simple"),
            ("commit", "COMMIT", 0, "simple"),
            ("vacuum analyze pgbench_branches", "VACUUM", 0, "simple"),
            ("vacuum analyze pgbench_tellers", "VACUUM", 0, "simple"),
            ("vacuum analyze pgbench_accounts", "VACUUM", 0, "simple"),
            ("vacuum analyze pgbench_history", "VACUUM", 0, "simple"),
            ("alter table pgbench_branches add primary key (bid)", "ALTER TABLE", 0, "simple"),
            ("alter table pgbench_tellers add primary key (tid)", "ALTER TABLE", 0, "simple"),
            ("alter table pgbench_accounts add primary key (aid)", "ALTER TABLE", 0, "simple"),
        ]
        assert all(isinstance(e, StatementFinished) for e in events)
        # Between begin and commit: inside the explicit transaction.
        assert [e.in_transaction for e in events[6:13]] == [True] * 7
        assert not events[14].in_transaction
    finally:
        _psql(pg_server, base, f"drop schema {schema} cascade")


@pytest.mark.parametrize("mode", ["simple", "extended", "prepared"])
def test_pgbench_modes_through_proxy(
    proxy: RunningProxy, pg_server: PgServer, bench_schema: str, mode: str
) -> None:
    base = proxy.env(base=os.environ)
    select_app, tpcb_app = f"bench_select_{mode}", f"bench_tpcb_{mode}"
    common = ["-M", mode, "-c", str(CLIENTS), "-T", str(SECONDS)]
    # Both scripts at once, to keep the wall time at one -T per mode.
    with ThreadPoolExecutor(2) as pool:
        select_run = pool.submit(
            _pgbench, pg_server, _in_schema(base, bench_schema, select_app), "-S", "-n", *common
        )
        tpcb_run = pool.submit(
            _pgbench, pg_server, _in_schema(base, bench_schema, tpcb_app), *common
        )
        # Drain the proxy's bounded sink while they run, so that no event is dropped.
        while not (select_run.done() and tpcb_run.done()):
            proxy.collect()
            time.sleep(0.05)
        select_tx = _processed(select_run.result().stdout)
        tpcb_tx = _processed(tpcb_run.result().stdout)
    assert select_tx > 0 and tpcb_tx > 0

    # Each run: one setup connection plus one per client.
    events = proxy.wait_closed(2 * (CLIENTS + 1), timeout=20)
    assert proxy.call(lambda: proxy.sink.dropped) == 0
    closed = [e for e in events if isinstance(e, SessionClosed)]
    assert [(e.interrupted, e.observation_lost) for e in closed] == [(0, False)] * len(closed)
    expected_protocol = "simple" if mode == "simple" else "extended"

    for app, per_tx, processed, vacuumed in (
        (select_app, ["SELECT"], select_tx, False),
        (tpcb_app, TPCB_COMMANDS, tpcb_tx, True),
    ):
        sessions = _by_session(proxy, app)
        assert len(sessions) == CLIENTS + 1, (app, sessions.keys())
        setup = [s for s in sessions.values() if s and s[0].text == SETUP_COUNT_BRANCHES]
        assert len(setup) == 1, (app, [s[:1] for s in sessions.values()])
        setup_events = setup[0]
        # pgbench's own statements, on its setup connection, always simple protocol.
        assert [e.text for e in setup_events[:1]] + [e.text for e in setup_events[2:]] == [
            SETUP_COUNT_BRANCHES,
            *(SETUP_VACUUM if vacuumed else []),
        ]
        assert "pgbench_accounts" in setup_events[1].text  # the partitioning check
        assert all(e.protocol == "simple" for e in setup_events)
        assert not [e for e in setup_events if isinstance(e, StatementFailed)]

        bench = [s for s in sessions.values() if s is not setup[0]]
        assert len(bench) == CLIENTS
        total_tx = 0
        for statements in bench:
            failed = [e for e in statements if isinstance(e, StatementFailed)]
            assert not failed, failed
            commands = [e.command for e in statements if isinstance(e, StatementFinished)]
            assert len(commands) % len(per_tx) == 0, (app, commands[-10:])
            assert commands == per_tx * (len(commands) // len(per_tx)), app
            total_tx += len(commands) // len(per_tx)
            assert {e.protocol for e in statements} == {expected_protocol}
            assert {e.rows for e in statements if e.command not in {"BEGIN", "COMMIT"}} == {1}
            assert not any(e.rolled_back for e in statements)
            select_texts = {e.text for e in statements if e.command == "SELECT"}
            if mode == "simple":
                # pgbench interpolates the variables into the SQL it sends.
                assert all(
                    re.fullmatch(r"SELECT abalance FROM pgbench_accounts WHERE aid = \d+", t)
                    for t in select_texts
                ), select_texts
                assert all(e.statement_name is None for e in statements)
            else:
                # The Parse text, verbatim (a simple Query's statements lose their ';').
                assert select_texts == {"SELECT abalance FROM pgbench_accounts WHERE aid = $1;"}
            if mode == "extended":
                assert {e.statement_name for e in statements} == {""}
            if mode == "prepared":
                # One named prepared statement per script command, reused every transaction.
                names = {e.statement_name for e in statements}
                assert "" not in names and len(names) == len(per_tx), names
        assert total_tx == processed, (app, total_tx, processed)

    # /api/queries counts every statement of every processed transaction, no more: -S runs
    # the SELECT once per transaction, tpcb-like once too, plus one of each write.
    assert counts_of(proxy, [SELECT_ABALANCE, *TPCB_WRITES]) == {
        SELECT_ABALANCE: Counts(select_tx + tpcb_tx, select_tx + tpcb_tx),
        **{write: Counts(tpcb_tx, tpcb_tx) for write in TPCB_WRITES},
    }
