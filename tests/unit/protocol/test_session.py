"""The session state machine, fed real protocol bytes.

Every conversation is played whole, one byte at a time, split at every offset of every
step, and with trailing bytes of a next message: the events must be the same each time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from dbproxy.protocol.events import (
    Event,
    SessionClosed,
    SessionOpened,
    SessionRejected,
    StatementEvent,
    StatementFailed,
    StatementFinished,
    TransactionFinished,
    TransactionStarted,
)
from dbproxy.protocol.session import Session
from tests.unit.protocol import wire as w

Script = list[tuple[str, bytes, int]]  # (side "c"/"s", bytes, monotonic ns)
Chunker = Callable[[bytes], list[bytes]]

EPOCH = 1_700_000_000_000_000_000


def login(t: int = 0) -> Script:
    return [("c", w.startup(application_name="checkout"), t), ("s", w.server_hello(), t + 10)]


def play(script: Script, chunker: Chunker = lambda b: [b], *, close: bool = True) -> list[Event]:
    events: list[Event] = []
    session = Session(session_id=7, emit=events.append, epoch_offset_ns=EPOCH)
    for side, data, t in script:
        for chunk in chunker(data):
            if side == "c":
                session.client_data(chunk, t)
            else:
                session.server_data(chunk, t)
    if close:
        session.close(script[-1][2] + 1)
    return events


def bytewise(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


def variants(script: Script) -> Iterator[tuple[str, list[Event]]]:
    yield "bytewise", play(script, bytewise)
    for index, (_side, data, _t) in enumerate(script):
        for offset in range(1, len(data)):

            def split(b: bytes, _i: int = index, _o: int = offset, _d: bytes = data) -> list[bytes]:
                return [b[:_o], b[_o:]] if b is _d else [b]

            yield f"step {index} split at {offset}", play(script, split)


def check(script: Script) -> list[Event]:
    """Play ``script`` every way; all must give the events of the whole-message run."""
    expected = play(script)
    for name, events in variants(script):
        assert events == expected, name
    # Trailing bytes: the start of a message that never completes changes nothing
    # but the count of interrupted statements.
    trailing = [*script, ("c", w.query("select 1")[:7], script[-1][2])]
    with_trailing = play(trailing)
    assert [e for e in with_trailing if not isinstance(e, SessionClosed)] == [
        e for e in expected if not isinstance(e, SessionClosed)
    ]
    return expected


def statements(events: list[Event]) -> list[StatementEvent]:
    return [e for e in events if isinstance(e, StatementFinished | StatementFailed)]


def summary(events: list[Event]) -> list[tuple[object, ...]]:
    out: list[tuple[object, ...]] = []
    for e in statements(events):
        if isinstance(e, StatementFailed):
            out.append(("failed", e.text, e.error.sqlstate, e.phase, e.rolled_back))
        else:
            out.append(("ok", e.text, e.command, e.rows, e.rolled_back))
    return out


# --- startup -----------------------------------------------------------------------------
def test_login_opens_session_with_startup_parameters_and_backend_pid() -> None:
    events = check(login())
    opened = events[0]
    assert isinstance(opened, SessionOpened)
    assert (opened.user, opened.database, opened.application_name) == ("alice", "shop", "checkout")
    assert opened.backend_pid == 4242
    assert opened.server_version == "18.1"
    assert opened.at_epoch_ns == opened.at_ns + EPOCH
    assert isinstance(events[-1], SessionClosed) and events[-1].interrupted == 0


def test_scram_exchange_is_passed_over_and_rejection_reported() -> None:
    script: Script = [
        ("c", w.startup(), 1),
        ("s", w.auth_sasl(), 2),
        ("c", w.password("n,,n=,r=abc"), 3),
        ("s", w.error("28P01", 'password authentication failed for user "alice"', "FATAL"), 4),
    ]
    events = check(script)
    rejected = [e for e in events if isinstance(e, SessionRejected)]
    assert len(rejected) == 1
    assert rejected[0].error.sqlstate == "28P01" and rejected[0].error.severity == "FATAL"
    assert not any(isinstance(e, SessionOpened) for e in events)


def test_ssl_request_then_startup_in_the_stream() -> None:
    events = check([("c", w.ssl_request() + w.startup(), 1), ("s", w.server_hello(), 2)])
    assert isinstance(events[0], SessionOpened) and events[0].user == "alice"


def test_cancel_request_emits_nothing() -> None:
    events = play([("c", w.cancel_request(4242), 1)])
    assert events == []


def test_replication_connection_is_not_interpreted() -> None:
    script: Script = [
        ("c", w.startup(replication="database"), 1),
        ("s", w.server_hello(), 2),
        ("c", w.query("START_REPLICATION SLOT s LOGICAL 0/0"), 3),
        ("s", w.copy_both_response() + w.copy_data(b"w" + b"\x00" * 30), 4),
    ]
    events = play(script)
    assert statements(events) == []
    closed = events[-1]
    assert isinstance(closed, SessionClosed) and closed.observation_lost


# --- simple protocol ---------------------------------------------------------------------
def test_simple_query_rows_timing_and_wall_clock() -> None:
    script = [
        *login(),
        ("c", w.query("SELECT id FROM users WHERE id > 1"), 5_000),
        ("s", w.row_description("id") + w.data_row(b"2") + w.data_row(b"3"), 5_400),
        ("s", w.command_complete("SELECT 2") + w.ready(), 6_000),
    ]
    events = check(script)
    (stmt,) = statements(events)
    assert isinstance(stmt, StatementFinished)
    assert stmt.text == "SELECT id FROM users WHERE id > 1"
    assert (stmt.rows, stmt.command, stmt.protocol) == (2, "SELECT", "simple")
    assert (stmt.start_ns, stmt.end_ns, stmt.duration_ns) == (5_000, 6_000, 1_000)
    assert stmt.start_epoch_ns == EPOCH + 5_000
    assert (stmt.user, stmt.database, stmt.application_name) == ("alice", "shop", "checkout")


def test_multi_statement_query_one_event_each_in_order() -> None:
    sql = "INSERT INTO t VALUES (1); UPDATE t SET a = 2 WHERE a = 1; SELECT 'a;b' AS s"
    script = [
        *login(),
        ("c", w.query(sql), 10_000),
        ("s", w.command_complete("INSERT 0 1"), 10_100),
        ("s", w.command_complete("UPDATE 1"), 10_300),
        ("s", w.row_description("s") + w.data_row(b"a;b") + w.command_complete("SELECT 1"), 10_600),
        ("s", w.ready(), 10_700),
    ]
    events = check(script)
    assert summary(events) == [
        ("ok", "INSERT INTO t VALUES (1)", "INSERT", 1, False),
        ("ok", "UPDATE t SET a = 2 WHERE a = 1", "UPDATE", 1, False),
        ("ok", "SELECT 'a;b' AS s", "SELECT", 1, False),
    ]
    # each statement starts where the previous one ended
    assert [(s.start_ns, s.end_ns) for s in statements(events)] == [
        (10_000, 10_100),
        (10_100, 10_300),
        (10_300, 10_600),
    ]


def test_error_mid_string_rolls_back_earlier_and_skips_later_statements() -> None:
    sql = "INSERT INTO t VALUES (1); SELECT 1/0; INSERT INTO t VALUES (2)"
    script = [
        *login(),
        ("c", w.query(sql), 1_000_000),
        ("s", w.command_complete("INSERT 0 1"), 1_000_100),
        ("s", w.error("22012", "division by zero") + w.ready(), 1_000_200),
    ]
    events = check(script)
    assert summary(events) == [
        ("ok", "INSERT INTO t VALUES (1)", "INSERT", 1, True),
        ("failed", "SELECT 1/0", "22012", "execute", False),
    ]


def test_statements_in_explicit_transaction_and_transaction_events() -> None:
    script = [
        *login(),
        ("c", w.query("BEGIN"), 100_000),
        ("s", w.command_complete("BEGIN") + w.ready("T"), 100_010),
        ("c", w.query("UPDATE accounts SET balance = 0"), 100_020),
        ("s", w.command_complete("UPDATE 3") + w.ready("T"), 100_030),
        ("c", w.query("COMMIT"), 100_040),
        ("s", w.command_complete("COMMIT") + w.ready("I"), 100_050),
    ]
    events = check(script)
    assert [s.in_transaction for s in statements(events)] == [True, True, True]
    started = [e for e in events if isinstance(e, TransactionStarted)]
    finished = [e for e in events if isinstance(e, TransactionFinished)]
    assert len(started) == 1 and started[0].at_ns == 100_000
    assert len(finished) == 1
    assert (finished[0].committed, finished[0].statements) == (True, 3)
    assert (finished[0].start_ns, finished[0].end_ns) == (100_000, 100_050)


def test_failed_transaction_commit_is_reported_as_rollback() -> None:
    script = [
        *login(),
        ("c", w.query("BEGIN"), 10),
        ("s", w.command_complete("BEGIN") + w.ready("T"), 20),
        ("c", w.query("SELECT 1/0"), 30),
        ("s", w.error("22012", "division by zero") + w.ready("E"), 40),
        ("c", w.query("COMMIT"), 50),
        ("s", w.command_complete("ROLLBACK") + w.ready("I"), 60),
    ]
    events = check(script)
    finished = [e for e in events if isinstance(e, TransactionFinished)]
    assert len(finished) == 1 and finished[0].committed is False


def test_a_transaction_left_open_at_disconnect_is_reported_rolled_back() -> None:
    script = [
        *login(),
        ("c", w.query("BEGIN"), 10),
        ("s", w.command_complete("BEGIN") + w.ready("T"), 20),
        ("c", w.query("UPDATE accounts SET balance = 0"), 30),
        ("s", w.command_complete("UPDATE 3") + w.ready("T"), 40),
    ]
    events = check(script)  # closed at 41
    assert [type(e).__name__ for e in events[-3:]] == [
        "StatementFinished",
        "TransactionFinished",
        "SessionClosed",
    ]
    finished = events[-2]
    assert isinstance(finished, TransactionFinished)
    assert (finished.committed, finished.statements) == (False, 2)
    assert (finished.start_ns, finished.end_ns) == (10, 41)


@pytest.mark.parametrize(
    "in_flight",
    ["COMMIT", "/* app */ end", "PREPARE TRANSACTION 'tx1'", "UPDATE t SET a = 2; COMMIT"],
)
def test_no_rollback_is_reported_when_a_commit_was_in_flight_at_disconnect(
    in_flight: str,
) -> None:
    # the server may complete the COMMIT after the client has gone: outcome unknown
    script = [
        *login(),
        ("c", w.query("BEGIN"), 10),
        ("s", w.command_complete("BEGIN") + w.ready("T"), 20),
        ("c", w.query(in_flight), 30),
    ]
    events = play(script)
    assert not [e for e in events if isinstance(e, TransactionFinished)]
    closed = events[-1]
    assert isinstance(closed, SessionClosed) and closed.interrupted == 1


def test_a_statement_in_flight_at_disconnect_is_still_rolled_back() -> None:
    script = [
        *login(),
        ("c", w.query("BEGIN"), 10),
        ("s", w.command_complete("BEGIN") + w.ready("T"), 20),
        ("c", w.parse("UPDATE t SET a = $1") + w.bind() + w.execute() + w.sync(), 30),
    ]
    events = play(script)
    (finished,) = [e for e in events if isinstance(e, TransactionFinished)]
    assert finished.committed is False and finished.end_ns == 31


def test_fetch_from_sql_cursor_counts_datarows() -> None:
    script = [
        *login(),
        ("c", w.query("FETCH 3 FROM c1"), 10),
        ("s", w.row_description("a") + w.data_row(b"1") + w.data_row(b"2") + w.data_row(b"3"), 20),
        ("s", w.command_complete("FETCH 3") + w.ready("T"), 30),
    ]
    ((_, text, command, rows, _),) = summary(check(script))
    assert (text, command, rows) == ("FETCH 3 FROM c1", "FETCH", 3)


def test_copy_in_counts_rows_from_tag() -> None:
    script = [
        *login(),
        ("c", w.query("COPY t FROM STDIN"), 10),
        ("s", w.copy_in_response(), 20),
        ("c", w.copy_data(b"1\n2\n") + w.copy_data(b"3\n") + w.copy_done(), 30),
        ("s", w.command_complete("COPY 3") + w.ready(), 40),
    ]
    assert summary(check(script)) == [("ok", "COPY t FROM STDIN", "COPY", 3, False)]


def test_copy_out_counts_rows_from_tag() -> None:
    script = [
        *login(),
        ("c", w.query("COPY t TO STDOUT"), 10),
        ("s", w.copy_out_response() + w.copy_data(b"1\n") + w.copy_data(b"2\n"), 20),
        ("s", w.copy_done() + w.command_complete("COPY 2") + w.ready(), 30),
    ]
    assert summary(check(script)) == [("ok", "COPY t TO STDOUT", "COPY", 2, False)]


def test_empty_query_emits_no_statement() -> None:
    script = [*login(), ("c", w.query("  "), 10), ("s", w.empty_query() + w.ready(), 20)]
    assert statements(check(script)) == []


def test_out_of_band_messages_anywhere_change_nothing() -> None:
    plain = [
        *login(),
        ("c", w.query("SELECT a FROM t"), 10),
        ("s", w.row_description("a") + w.data_row(b"1") + w.data_row(b"2"), 20),
        ("s", w.command_complete("SELECT 2") + w.ready(), 30),
    ]
    noisy = [
        *login(),
        ("c", w.query("SELECT a FROM t"), 10),
        (
            "s",
            w.notice("hello")
            + w.row_description("a")
            + w.data_row(b"1")
            + w.notification(99, "ch", "x")
            + w.parameter_status("TimeZone", "UTC")
            + w.data_row(b"2"),
            20,
        ),
        ("s", w.command_complete("SELECT 2") + w.notice("bye") + w.ready(), 30),
    ]
    assert summary(check(noisy)) == summary(check(plain))


def test_application_name_follows_parameter_status() -> None:
    script = [
        *login(),
        ("c", w.query("SET application_name = 'billing'"), 10),
        ("s", w.command_complete("SET") + w.parameter_status("application_name", "billing"), 20),
        ("s", w.ready(), 21),
        ("c", w.query("SELECT 1"), 30),
        ("s", w.row_description("x") + w.data_row(b"1") + w.command_complete("SELECT 1"), 40),
        ("s", w.ready(), 41),
    ]
    names = [s.application_name for s in statements(check(script))]
    assert names == ["checkout", "billing"]


# --- extended protocol -------------------------------------------------------------------
def extended_round(sql: str, t: int, rows: int = 1, tag: str = "SELECT 1") -> Script:
    return [
        ("c", w.parse(sql) + w.bind() + w.describe("P") + w.execute() + w.sync(), t),
        (
            "s",
            w.parse_complete()
            + w.bind_complete()
            + w.row_description("a")
            + b"".join(w.data_row(b"1") for _ in range(rows))
            + w.command_complete(tag),
            t + 300,
        ),
        ("s", w.ready(), t + 400),
    ]


def test_extended_round_trip_includes_commit_until_ready() -> None:
    script = [
        *login(),
        *extended_round("SELECT a FROM t WHERE id = $1", 5_000, rows=2, tag="SELECT 2"),
    ]
    (stmt,) = statements(check(script))
    assert isinstance(stmt, StatementFinished)
    assert (stmt.protocol, stmt.rows, stmt.statement_name, stmt.portal_name) == (
        "extended",
        2,
        "",
        "",
    )
    # implicit transaction: its commit (Sync → ReadyForQuery) belongs to the statement
    assert (stmt.start_ns, stmt.end_ns, stmt.duration_ns) == (5_000, 5_400, 400)


def test_commit_time_when_sync_is_sent_late() -> None:
    script = [
        *login(),
        ("c", w.parse("INSERT INTO t VALUES ($1)") + w.bind() + w.execute() + w.flush(), 1_000),
        ("s", w.parse_complete() + w.bind_complete() + w.command_complete("INSERT 0 1"), 1_200),
        ("c", w.sync(), 5_000),  # the client thought for a while before Sync
        ("s", w.ready(), 5_050),
    ]
    (stmt,) = statements(check(script))
    # 200 ns executing + 50 ns committing; the client's think time is not counted
    assert (stmt.duration_ns, stmt.end_ns) == (250, 1_250)


def test_named_statement_reused_across_binds() -> None:
    script: Script = [
        *login(),
        ("c", w.parse("SELECT * FROM users WHERE id = $1", name="s1", oids=(23,)) + w.sync(), 10),
        ("s", w.parse_complete() + w.ready(), 20),
    ]
    t = 100
    for i in range(5):
        script.append(("c", w.bind("s1", params=(str(i).encode(),)) + w.execute() + w.sync(), t))
        script.append(
            ("s", w.bind_complete() + w.data_row(b"x") + w.command_complete("SELECT 1"), t + 5)
        )
        script.append(("s", w.ready(), t + 6))
        t += 100
    stmts = statements(check(script))
    assert len(stmts) == 5
    assert {(s.text, s.statement_name, s.param_type_oids) for s in stmts} == {
        ("SELECT * FROM users WHERE id = $1", "s1", (23,))
    }


def test_binds_alternating_between_named_statements_and_portals_keep_their_names() -> None:
    # The names of the last named Bind are remembered (the body up to the statement
    # name's NUL); other names, a name that extends the last one, or named portals must
    # not reuse them.
    script: Script = [
        *login(),
        ("c", w.parse("SELECT 1", name="s") + w.parse("SELECT 2", name="s1") + w.sync(), 10),
        ("s", w.parse_complete() * 2 + w.ready(), 20),
    ]
    binds = [("s", ""), ("s1", ""), ("s1", ""), ("s", "p"), ("s", ""), ("s1", "p1"), ("s1", "")]
    t = 100
    for statement, portal in binds:
        script.append(("c", w.bind(statement, portal=portal) + w.execute(portal) + w.sync(), t))
        script.append(("s", w.bind_complete() + w.command_complete("SELECT 0") + w.ready(), t + 5))
        t += 100
    stmts = statements(check(script))
    assert [(s.text, s.statement_name, s.portal_name) for s in stmts] == [
        ({"s": "SELECT 1", "s1": "SELECT 2"}[st], st, po) for st, po in binds
    ]


def test_a_client_encoding_change_drops_what_was_decoded_the_old_way() -> None:
    # Names and texts are cached by their raw bytes; after SET client_encoding the same
    # bytes mean other characters, and the session decodes them again.
    script: Script = [*login()]
    t = 100
    for _ in range(2):
        script.append(("c", w.bind("é", portal="ü") + w.execute("ü") + w.sync(), t))
        script.append(("s", w.bind_complete() + w.command_complete("SELECT 0") + w.ready(), t + 5))
        t += 100
    script.append(("s", w.parameter_status("client_encoding", "LATIN1"), t))
    script.append(("c", w.bind("é", portal="ü") + w.execute("ü") + w.sync(), t + 10))
    script.append(("s", w.bind_complete() + w.command_complete("SELECT 0") + w.ready(), t + 15))
    stmts = statements(check(script))
    assert [(s.statement_name, s.portal_name) for s in stmts] == [
        ("é", "ü"),
        ("é", "ü"),
        ("é".encode().decode("latin-1"), "ü".encode().decode("latin-1")),
    ]


def test_pipeline_of_executes_then_one_sync() -> None:
    sql = "INSERT INTO t VALUES ($1)"
    client = w.parse(sql, name="ins")
    server = w.parse_complete()
    for i in range(4):
        client += w.bind("ins", params=(str(i).encode(),)) + w.execute()
        server += w.bind_complete() + w.command_complete("INSERT 0 1")
    script = [
        *login(),
        ("c", client + w.sync(), 1_000),
        ("s", server, 1_400),
        ("s", w.ready(), 1_500),
    ]
    stmts = statements(check(script))
    assert [(s.text, s.rows, s.rolled_back) for s in stmts] == [(sql, 1, False)] * 4
    # the first one ran 400 ns; the others completed in the same read
    assert stmts[0].start_ns == 1_000 and stmts[-1].end_ns == 1_500


def test_error_mid_pipeline_rolls_back_completed_and_skips_the_rest() -> None:
    client = (
        w.parse("INSERT INTO t VALUES ($1)", name="ins")
        + w.bind("ins", params=(b"1",))
        + w.execute()
        + w.bind("ins", params=(b"1",))
        + w.execute()
        + w.bind("ins", params=(b"3",))
        + w.execute()
        + w.parse("SELECT 1")
        + w.bind()
        + w.execute()
        + w.sync()
    )
    server = (
        w.parse_complete()
        + w.bind_complete()
        + w.command_complete("INSERT 0 1")
        + w.bind_complete()
        + w.error("23505", "duplicate key value violates unique constraint")
    )
    script = [*login(), ("c", client, 1_000), ("s", server, 2_000), ("s", w.ready(), 2_100)]
    session_events: list[Event] = []
    session = Session(session_id=1, emit=session_events.append, epoch_offset_ns=0)
    for side, data, t in script:
        (session.client_data if side == "c" else session.server_data)(data, t)
    assert session.stats.skipped_statements == 2
    assert summary(check(script)) == [
        ("ok", "INSERT INTO t VALUES ($1)", "INSERT", 1, True),
        ("failed", "INSERT INTO t VALUES ($1)", "23505", "execute", False),
    ]
    # the next batch after the Sync is observed normally
    more = [*script, *extended_round("SELECT 2", 3_000)]
    assert summary(check(more))[-1] == ("ok", "SELECT 2", "SELECT", 1, False)


def test_parse_error_is_a_failed_statement_with_its_text() -> None:
    script = [
        *login(),
        ("c", w.parse("SELEC 1") + w.bind() + w.execute() + w.sync(), 10),
        ("s", w.error("42601", 'syntax error at or near "SELEC"') + w.ready(), 20),
    ]
    assert summary(check(script)) == [("failed", "SELEC 1", "42601", "parse", False)]


def test_deferred_constraint_error_at_commit_fails_the_last_statement() -> None:
    client = (
        w.parse("INSERT INTO child VALUES ($1)") + w.bind(params=(b"9",)) + w.execute() + w.sync()
    )
    server = w.parse_complete() + w.bind_complete() + w.command_complete("INSERT 0 1")
    script = [
        *login(),
        ("c", client, 1_000),
        ("s", server, 1_100),
        ("s", w.error("23503", "insert or update on table violates foreign key constraint"), 1_300),
        ("s", w.ready(), 1_310),
    ]
    events = check(script)
    (stmt,) = statements(events)
    assert isinstance(stmt, StatementFailed)
    assert (stmt.error.sqlstate, stmt.phase) == ("23503", "commit")
    assert stmt.end_ns == 1_300 and stmt.duration_ns == 300


def test_deferred_error_in_simple_protocol_is_the_statement_error() -> None:
    script = [
        *login(),
        ("c", w.query("INSERT INTO child VALUES (9)"), 1_000),
        ("s", w.error("23503", "violates foreign key constraint") + w.ready(), 1_300),
    ]
    assert summary(check(script)) == [
        ("failed", "INSERT INTO child VALUES (9)", "23503", "execute", False)
    ]


def test_row_limited_executes_are_one_statement() -> None:
    script: Script = [
        *login(),
        ("c", w.query("BEGIN"), 10),
        ("s", w.command_complete("BEGIN") + w.ready("T"), 20),
        (
            "c",
            w.parse("SELECT g FROM big", name="")
            + w.bind(portal="cur")
            + w.execute("cur", 2)
            + w.sync(),
            100,
        ),
        ("s", w.parse_complete() + w.bind_complete() + w.data_row(b"1") + w.data_row(b"2"), 150),
        ("s", w.portal_suspended() + w.ready("T"), 160),
        ("c", w.execute("cur", 2) + w.sync(), 1_000),
        ("s", w.data_row(b"3") + w.data_row(b"4") + w.portal_suspended() + w.ready("T"), 1_030),
        ("c", w.execute("cur", 2) + w.sync(), 2_000),
        ("s", w.data_row(b"5") + w.command_complete("SELECT 1") + w.ready("T"), 2_020),
    ]
    stmts = statements(check(script))
    portal = [s for s in stmts if s.portal_name == "cur"]
    assert len(portal) == 1
    assert portal[0].rows == 5
    # 60 + 30 + 20: time between the Executes is the client's, not the statement's
    assert portal[0].duration_ns == 110


def test_suspended_portal_closed_early_is_reported_with_rows_so_far() -> None:
    script: Script = [
        *login(),
        ("c", w.query("BEGIN"), 10),
        ("s", w.command_complete("BEGIN") + w.ready("T"), 20),
        (
            "c",
            w.parse("SELECT g FROM big") + w.bind(portal="p") + w.execute("p", 3) + w.sync(),
            100,
        ),
        (
            "s",
            w.parse_complete() + w.bind_complete() + b"".join(w.data_row(b"1") for _ in range(3)),
            150,
        ),
        ("s", w.portal_suspended() + w.ready("T"), 160),
        ("c", w.close("P", "p") + w.sync(), 200),
        ("s", w.close_complete() + w.ready("T"), 210),
    ]
    stmts = [s for s in statements(check(script)) if s.portal_name == "p"]
    assert [(s.rows, s.duration_ns) for s in stmts] == [(3, 60)]


def test_suspended_portal_at_session_close_is_reported_with_rows_so_far() -> None:
    # PgJDBC: a ResultSet read partly (fetch size 3) inside a transaction, then the
    # connection closed (Terminate) with the portal and the transaction still open.
    script: Script = [
        *login(),
        ("c", w.query("BEGIN"), 10),
        ("s", w.command_complete("BEGIN") + w.ready("T"), 20),
        (
            "c",
            w.parse("SELECT g FROM big") + w.bind(portal="p") + w.execute("p", 3) + w.sync(),
            100,
        ),
        (
            "s",
            w.parse_complete() + w.bind_complete() + b"".join(w.data_row(b"1") for _ in range(3)),
            150,
        ),
        ("s", w.portal_suspended() + w.ready("T"), 160),
        ("c", w.terminate(), 200),
    ]
    events = check(script)
    stmts = [s for s in statements(events) if s.portal_name == "p"]
    assert [(s.rows, s.duration_ns, s.in_transaction) for s in stmts] == [(3, 60, True)]
    # reported before the session's end
    assert isinstance(events[-1], SessionClosed)


def test_function_call() -> None:
    script = [
        *login(),
        ("c", w.function_call(1598), 10),
        ("s", w.function_result(b"\x00\x00\x00\x01") + w.ready(), 30),
    ]
    (stmt,) = statements(check(script))
    assert (stmt.protocol, stmt.function_oid, stmt.duration_ns) == ("function", 1598, 20)


def test_describe_statement_without_execute_emits_nothing() -> None:
    script = [
        *login(),
        ("c", w.parse("SELECT $1::int", name="q") + w.describe("S", "q") + w.sync(), 10),
        (
            "s",
            w.parse_complete()
            + w.parameter_description(23)
            + w.row_description("int4")
            + w.ready(),
            20,
        ),
    ]
    assert statements(check(script)) == []


def test_close_statement_forgets_it() -> None:
    script = [
        *login(),
        ("c", w.parse("SELECT 1", name="q") + w.close("S", "q") + w.sync(), 10),
        ("s", w.parse_complete() + w.close_complete() + w.ready(), 20),
        ("c", w.bind("q") + w.execute() + w.sync(), 30),
        ("s", w.error("26000", 'prepared statement "q" does not exist') + w.ready(), 40),
    ]
    assert summary(check(script)) == [("failed", "", "26000", "bind", False)]


# --- limits and bad input -----------------------------------------------------------------
def test_huge_datarow_streams_without_being_kept() -> None:
    big = w.data_row(b"x" * (4 << 20))
    script = [
        *login(),
        ("c", w.query("SELECT repeat('x', 4194304)"), 10),
        ("s", w.row_description("r") + big + w.command_complete("SELECT 1") + w.ready(), 20),
    ]
    events = play(script, lambda b: [b[i : i + 65536] for i in range(0, len(b), 65536)])
    assert summary(events) == [("ok", "SELECT repeat('x', 4194304)", "SELECT", 1, False)]


def test_statement_text_is_cut_at_the_limit() -> None:
    events: list[Event] = []
    session = Session(session_id=1, emit=events.append, epoch_offset_ns=0, text_limit=64)
    for side, data, t in [*login(), ("c", w.query("SELECT '" + "y" * 1000 + "'"), 10)]:
        (session.client_data if side == "c" else session.server_data)(data, t)
    session.server_data(
        w.row_description("a") + w.data_row(b"y") + w.command_complete("SELECT 1") + w.ready(), 20
    )
    (stmt,) = statements(events)
    assert len(stmt.text.encode()) <= 64 and stmt.text.startswith("SELECT 'yyy")


@pytest.mark.parametrize(
    "garbage",
    [
        b"\x00\x00\x00\x02",  # startup length below the minimum
        b"\x00\x01\x00\x00" + b"\x00" * 20,  # startup packet over 10,000 bytes
    ],
)
def test_bad_startup_turns_observation_off(garbage: bytes) -> None:
    events: list[Event] = []
    session = Session(session_id=1, emit=events.append, epoch_offset_ns=0)
    session.client_data(garbage, 1)
    assert not session.observing and "startup" in session.lost_reason
    session.close(2)
    assert isinstance(events[-1], SessionClosed) and events[-1].observation_lost


def test_bad_message_length_from_server_turns_observation_off() -> None:
    events: list[Event] = []
    session = Session(session_id=1, emit=events.append, epoch_offset_ns=0)
    for side, data, t in login():
        (session.client_data if side == "c" else session.server_data)(data, t)
    session.server_data(b"Z\x00\x00\x00\x02", 5)
    assert not session.observing and session.lost_reason.startswith("server")


def test_unexpected_answer_resynchronises_at_ready_for_query() -> None:
    script = [
        *login(),
        ("s", w.bind_complete() + w.command_complete("SELECT 1") + w.ready(), 10),
        *extended_round("SELECT 5", 100),
    ]
    assert summary(check(script)) == [("ok", "SELECT 5", "SELECT", 1, False)]


def test_connection_lost_mid_statement_counts_interrupted() -> None:
    script = [*login(), ("c", w.query("SELECT pg_sleep(100)"), 10)]
    events = play(script)
    closed = events[-1]
    assert isinstance(closed, SessionClosed) and closed.interrupted == 1
    assert statements(events) == []


def test_row_limited_portal_replaced_by_next_query_is_reported_in_its_transaction() -> None:
    # asyncpg's fetchval: Execute with a row limit of 1, PortalSuspended, then COMMIT
    # (a simple Query drops the unnamed portal) inside BEGIN … COMMIT.
    script: Script = [
        *login(),
        ("c", w.query("BEGIN"), 100),
        ("s", w.command_complete("BEGIN") + w.ready("T"), 110),
        (
            "c",
            w.parse("SELECT 41 + 1", name="s1") + w.bind("s1") + w.execute("", 1) + w.sync(),
            200,
        ),
        (
            "s",
            w.parse_complete() + w.bind_complete() + w.data_row(b"42") + w.portal_suspended(),
            230,
        ),
        ("s", w.ready("T"), 240),
        ("c", w.query("COMMIT"), 300),
        ("s", w.command_complete("COMMIT") + w.ready("I"), 320),
    ]
    events = check(script)
    assert [(s.text, s.rows, s.in_transaction) for s in statements(events)] == [
        ("BEGIN", 0, True),
        ("SELECT 41 + 1", 1, True),
        ("COMMIT", 0, True),
    ]
    (finished,) = [e for e in events if isinstance(e, TransactionFinished)]
    assert finished.statements == 3
    select = statements(events)[1]
    assert (select.start_ns, select.end_ns, select.duration_ns) == (200, 230, 30)


def test_begin_and_commit_in_one_query_is_a_transaction() -> None:
    script: Script = [
        *login(),
        ("c", w.query("BEGIN; UPDATE t SET a = 1; COMMIT"), 100),
        ("s", w.command_complete("BEGIN") + w.command_complete("UPDATE 2"), 150),
        ("s", w.command_complete("COMMIT") + w.ready("I"), 200),
    ]
    events = check(script)
    assert [type(e).__name__ for e in events if "Transaction" in type(e).__name__] == [
        "TransactionStarted",
        "TransactionFinished",
    ]
    (finished,) = [e for e in events if isinstance(e, TransactionFinished)]
    assert (finished.committed, finished.statements, finished.start_ns) == (True, 3, 100)


def test_rollback_to_savepoint_does_not_end_the_transaction() -> None:
    script: Script = [
        *login(),
        ("c", w.query("BEGIN"), 10),
        ("s", w.command_complete("BEGIN") + w.ready("T"), 20),
        ("c", w.query("SAVEPOINT s1"), 30),
        ("s", w.command_complete("SAVEPOINT") + w.ready("T"), 40),
        ("c", w.query("ROLLBACK TO SAVEPOINT s1"), 50),
        ("s", w.command_complete("ROLLBACK") + w.ready("T"), 60),
        ("c", w.query("COMMIT"), 70),
        ("s", w.command_complete("COMMIT") + w.ready("I"), 80),
    ]
    events = check(script)
    finished = [e for e in events if isinstance(e, TransactionFinished)]
    assert [(f.committed, f.statements, f.end_ns) for f in finished] == [(True, 4, 80)]
