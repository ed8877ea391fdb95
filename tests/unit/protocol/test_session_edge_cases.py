"""Edge cases of the session machine and the splitter found in review.

Each test states the PostgreSQL behaviour it relies on; every one of them must pass.
"""

from __future__ import annotations

import struct

from dbproxy.protocol.events import (
    Event,
    SessionOpened,
    TransactionFinished,
    TransactionStarted,
)
from dbproxy.protocol.session import Session
from dbproxy.sql.splitter import split_statements
from tests.unit.protocol import wire as w
from tests.unit.protocol.test_session import Script, login, play, statements, summary


def _feed(script: Script) -> tuple[Session, list[Event]]:
    events: list[Event] = []
    session = Session(session_id=1, emit=events.append, epoch_offset_ns=0)
    for side, data, t in script:
        (session.client_data if side == "c" else session.server_data)(data, t)
    return session, events


# --- extended-protocol COPY: the Sync libpq sends before the data is ignored ---------------
def test_extended_copy_in_with_libpq_syncs_keeps_pairing() -> None:
    # libpq's PQexecParams("COPY t FROM STDIN") sends Parse/Bind/Describe/Execute/Sync; the
    # server ignores Flush and Sync while in copy-in mode (copyfromparse.c), and
    # PQputCopyEnd sends CopyDone *and another Sync* (fe-exec.c).  One ReadyForQuery
    # answers the two Syncs.  A stale Sync left queued would shift every later
    # statement of the session onto the text of the one before it.
    script: Script = [
        *login(),
        (
            "c",
            w.parse("COPY t FROM STDIN") + w.bind() + w.describe("P") + w.execute() + w.sync(),
            10,
        ),
        ("s", w.parse_complete() + w.bind_complete() + w.no_data() + w.copy_in_response(), 20),
        ("c", w.copy_data(b"1\n2\n") + w.copy_done() + w.sync(), 30),
        ("s", w.command_complete("COPY 2") + w.ready(), 40),
    ]
    t = 100
    for sql, rows in (("SELECT a FROM one", 1), ("SELECT b FROM three", 3)):
        script.append(("c", w.parse(sql) + w.bind() + w.execute() + w.sync(), t))
        script.append(
            (
                "s",
                w.parse_complete()
                + w.bind_complete()
                + w.data_row(b"x") * rows
                + w.command_complete(f"SELECT {rows}")
                + w.ready(),
                t + 10,
            )
        )
        t += 100
    assert summary(play(script)) == [
        ("ok", "COPY t FROM STDIN", "COPY", 2, False),
        ("ok", "SELECT a FROM one", "SELECT", 1, False),
        ("ok", "SELECT b FROM three", "SELECT", 3, False),
    ]


# --- transactions ---------------------------------------------------------------------------
def test_rollback_to_savepoint_mid_query_keeps_later_statements_in_the_transaction() -> None:
    # ROLLBACK TO SAVEPOINT answers with the tag "ROLLBACK" but the transaction goes on:
    # the statements after it in the same Query are still in the transaction.
    script: Script = [
        *login(),
        ("c", w.query("BEGIN"), 10),
        ("s", w.command_complete("BEGIN") + w.ready("T"), 20),
        ("c", w.query("ROLLBACK TO SAVEPOINT a; INSERT INTO t VALUES (2); SELECT 1/0"), 30),
        (
            "s",
            w.command_complete("ROLLBACK")
            + w.command_complete("INSERT 0 1")
            + w.error("22012", "division by zero")
            + w.ready("E"),
            40,
        ),
    ]
    stmts = statements(play(script))
    insert = next(s for s in stmts if s.text.startswith("INSERT"))
    assert insert.in_transaction is True
    assert insert.rolled_back is False  # not an implicit transaction


def test_commit_and_chain_finishes_one_transaction_and_starts_another() -> None:
    script: Script = [
        *login(),
        ("c", w.query("BEGIN"), 10),
        ("s", w.command_complete("BEGIN") + w.ready("T"), 20),
        ("c", w.query("COMMIT AND CHAIN"), 30),
        ("s", w.command_complete("COMMIT") + w.ready("T"), 40),
        ("c", w.query("ROLLBACK"), 50),
        ("s", w.command_complete("ROLLBACK") + w.ready("I"), 60),
    ]
    events = play(script)
    finished = [e for e in events if isinstance(e, TransactionFinished)]
    assert [(f.committed, f.statements) for f in finished] == [(True, 2), (False, 1)]
    assert len([e for e in events if isinstance(e, TransactionStarted)]) == 2


# --- errors arriving before the rest of the pipeline was seen ------------------------------
def test_error_before_rest_of_pipeline_counts_skipped_executes() -> None:
    # The server runs a pipeline as it reads it: the error for the first Execute can
    # reach the proxy before the client has finished sending the pipeline.
    first = w.parse("INSERT INTO t VALUES ($1)", name="ins") + w.bind("ins") + w.execute()
    rest = (w.bind("ins") + w.execute()) * 3 + w.sync()
    script: Script = [
        *login(),
        ("c", first, 10),
        ("s", w.parse_complete() + w.bind_complete() + w.error("23505", "duplicate"), 20),
        ("c", rest, 30),
        ("s", w.ready(), 40),
    ]
    session, _events = _feed(script)
    assert session.stats.skipped_statements == 3
    assert session.stats.desyncs == 0


# --- protocol 3.2 negotiation ---------------------------------------------------------------
def test_negotiated_protocol_version_is_reported() -> None:
    # A client asks for 3.2; a PostgreSQL 17 server answers NegotiateProtocolVersion(3.0).
    startup = bytearray(w.startup())
    struct.pack_into("!I", startup, 4, (3 << 16) | 2)
    negotiate = b"v" + struct.pack("!Iii", 12, (3 << 16) | 0, 0)
    script: Script = [("c", bytes(startup), 1), ("s", negotiate + w.server_hello(), 2)]
    events = play(script)
    opened = next(e for e in events if isinstance(e, SessionOpened))
    assert opened.protocol_version == (3, 0)


# --- startup limits ---------------------------------------------------------------------------
def test_startup_packet_up_to_10004_bytes_is_accepted_as_the_server_does() -> None:
    # ProcessStartupPacket: len = wire length - 4; refused only if len > 10000.
    from dbproxy.protocol.startup import RequestKind, read_startup_request

    packet = w.startup(options="x" * (10_004 - len(w.startup(options=""))))
    assert len(packet) == 10_004
    request = read_startup_request(packet)
    assert request is not None and request.kind is RequestKind.STARTUP


# --- memory per session -----------------------------------------------------------------------
def test_idle_session_does_not_keep_megabytes_of_old_parse_messages() -> None:
    import gc
    import tracemalloc

    events: list[Event] = []
    session = Session(session_id=1, emit=events.append, epoch_offset_ns=0)
    session.client_data(w.startup(), 1)
    session.server_data(w.server_hello(), 2)
    values = ",".join(f"({j})" for j in range(6000))  # ~45 kB of SQL, e.g. an ORM bulk insert
    tracemalloc.start()
    try:
        for i in range(200):
            sql = f"INSERT INTO t VALUES ({i}),{values}"
            session.client_data(w.parse(sql) + w.bind() + w.execute() + w.sync(), 10 + i)
            session.server_data(
                w.parse_complete()
                + w.bind_complete()
                + w.command_complete("INSERT 0 6001")
                + w.ready(),
                11 + i,
            )
        events.clear()
        gc.collect()
        retained, _peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # all statements are finished: only small Parse messages are cached (was ~20 MB)
    assert retained < 2_000_000


# --- splitter -----------------------------------------------------------------------------------
def test_splitter_is_linear_in_comment_only_pieces() -> None:
    import time

    sql = "SELECT 1" + ";/**/" * 400_000  # 2 MB: PostgreSQL runs it in milliseconds
    began = time.perf_counter()
    split_statements(sql)
    elapsed = time.perf_counter() - began
    # a normal 2 MB split takes ~0.2 s; a quadratic join took ~15 s on the event loop
    assert elapsed < 2.0


def test_routine_parameter_named_begin_does_not_swallow_the_next_statement() -> None:
    # psql only counts BEGIN/CASE/END at paren_depth == 0 (psqlscan.l); BEGIN is an
    # unreserved keyword, valid as a parameter name.
    sql = "CREATE FUNCTION f(begin int) RETURNS int LANGUAGE sql AS 'select 1'; SELECT 2"
    assert split_statements(sql) == [
        "CREATE FUNCTION f(begin int) RETURNS int LANGUAGE sql AS 'select 1'",
        "SELECT 2",
    ]


def test_escape_string_continuation_keeps_backslash_escapes() -> None:
    # scan.l: a quote continuation (quote, whitespace with a newline, quote) stays in the
    # same state, so the second segment of E'..' '..' is an escape string too.
    sql = "SELECT E'a'\n'\\''; SELECT 2"
    assert split_statements(sql) == ["SELECT E'a'\n'\\''", "SELECT 2"]


def test_long_pipeline_is_emitted_in_bounded_batches() -> None:
    client = w.parse("INSERT INTO t VALUES ($1)", name="ins")
    server = w.parse_complete()
    for i in range(25_000):
        client += w.bind("ins", params=(str(i).encode(),)) + w.execute()
        server += w.bind_complete() + w.command_complete("INSERT 0 1")
    events: list[Event] = []
    session = Session(session_id=1, emit=events.append, epoch_offset_ns=0)
    for side, data, t in [*login(), ("c", client + w.sync(), 100)]:
        (session.client_data if side == "c" else session.server_data)(data, t)
    session.server_data(server[: len(server) // 2], 200)
    # half the answers are in: at most 10,000 statements are held, the rest emitted
    assert len(statements(events)) >= 12_500 - 10_000
    session.server_data(server[len(server) // 2 :] + w.ready(), 300)
    assert len(statements(events)) == 25_000
    assert session.stats.early_flushes >= 2


def test_pipeline_answered_while_it_is_sent_keeps_every_statement_in_order() -> None:
    # The pending requests are a ring that doubles when full: here it fills while its
    # head has moved (answers arrive between the client's writes), so it grows and wraps
    # around, and every answer must still pair with its own Execute.
    events: list[Event] = []
    session = Session(session_id=1, emit=events.append, epoch_offset_ns=0)
    for side, data, t in login():
        (session.client_data if side == "c" else session.server_data)(data, t)
    session.client_data(w.parse("SELECT $1", name="s"), 100)
    answers = [w.parse_complete()]
    sent = 0
    now = 101
    for chunk in range(60):
        client = b""
        for _ in range(5 + chunk):  # the client gets further and further ahead
            client += w.bind("s", params=(str(sent).encode(),)) + w.execute()
            answers.append(
                w.bind_complete()
                + w.data_row(b"x") * (sent % 3)
                + w.command_complete(f"SELECT {sent % 3}")
            )
            sent += 1
        session.client_data(client, now)
        now += 1
        take, answers = answers[: 3 + chunk // 2], answers[3 + chunk // 2 :]
        session.server_data(b"".join(take), now)
        now += 1
    session.client_data(w.sync(), now)
    session.server_data(b"".join(answers) + w.ready(), now + 1)
    done = statements(events)
    assert len(done) == sent == sum(5 + c for c in range(60))
    assert [s.rows for s in done] == [i % 3 for i in range(sent)]
    assert session.stats.desyncs == 0
    assert session.idle_since() is not None  # nothing left pending


def test_text_in_batch_tells_fresh_sql_from_an_old_prepared_statement() -> None:
    traced = "SELECT 1 /*traceparent='00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01'*/"
    script: Script = [
        *login(),
        ("c", w.query("SELECT 0"), 10),
        ("s", w.row_description("a") + w.data_row(b"0") + w.command_complete("SELECT 1"), 11),
        ("s", w.ready(), 12),
        # prepared and executed in one traced request …
        ("c", w.parse(traced, name="s1") + w.bind("s1") + w.execute() + w.sync(), 20),
        ("s", w.parse_complete() + w.bind_complete() + w.data_row(b"1"), 21),
        ("s", w.command_complete("SELECT 1") + w.ready(), 22),
        # … executed again in a later request that sent no SQL
        ("c", w.bind("s1") + w.execute() + w.sync(), 30),
        ("s", w.bind_complete() + w.data_row(b"1") + w.command_complete("SELECT 1"), 31),
        ("s", w.ready(), 32),
    ]
    stmts = statements(play(script))
    assert [(s.text == traced, s.text_in_batch) for s in stmts] == [
        (False, True),
        (True, True),
        (True, False),
    ]


def test_text_in_batch_for_flush_prepared_statements_depends_on_the_first_bind() -> None:
    # asyncpg prepares with Parse/Describe/Flush (no Sync) both for conn.fetch() — Bind
    # follows at once — and for conn.prepare() whose statement may run much later.
    ms = 1_000_000

    def prepare(name: str, t: int) -> list[tuple[str, bytes, int]]:
        return [
            ("c", w.parse(f"SELECT {name}", name=name) + w.describe("S", name) + w.flush(), t),
            ("s", w.parse_complete() + w.parameter_description() + w.row_description("a"), t + 1),
        ]

    def run(name: str, t: int) -> list[tuple[str, bytes, int]]:
        return [
            ("c", w.bind(name) + w.execute() + w.bind(name) + w.execute() + w.sync(), t),
            (
                "s",
                (w.bind_complete() + w.data_row(b"1") + w.command_complete("SELECT 1")) * 2,
                t + 1,
            ),
            ("s", w.ready(), t + 2),
        ]

    script: Script = [
        *login(),
        *prepare("now", 10 * ms),
        *run("now", 12 * ms),  # bound 2 ms after its Parse: the same request
        *run("now", 500 * ms),  # a later request
        *prepare("later", 600 * ms),
        *run("later", 900 * ms),  # first bound 300 ms after its Parse: reused later
    ]
    stmts = statements(play(script))
    assert [(s.text, s.text_in_batch) for s in stmts] == [
        ("SELECT now", True),
        ("SELECT now", True),
        ("SELECT now", False),
        ("SELECT now", False),
        ("SELECT later", False),
        ("SELECT later", False),
    ]


# --- a simple Query destroys the unnamed statement and the unnamed portal -----------------
def test_a_simple_query_drops_the_unnamed_statement_and_portal() -> None:
    # protocol docs (Extended Query): "a simple Query message also destroys the unnamed
    # statement" (and the unnamed portal).  A Bind or Execute of "" after it fails on the
    # server; the session must not report it with the old statement's text (or, for the
    # Execute, as the old, already reported run a second time).
    script: Script = [
        *login(),
        ("c", w.parse("SELECT secret FROM t") + w.bind() + w.execute() + w.sync(), 10),
        ("s", w.parse_complete() + w.bind_complete() + w.command_complete("SELECT 0"), 20),
        ("s", w.ready(), 21),
        ("c", w.query("SELECT 1"), 30),
        ("s", w.data_row(b"1") + w.command_complete("SELECT 1") + w.ready(), 40),
        ("c", w.bind() + w.execute() + w.sync(), 50),
        ("s", w.error("26000", "unnamed prepared statement does not exist") + w.ready(), 60),
        ("c", w.execute() + w.sync(), 70),
        ("s", w.error("34000", 'portal "" does not exist') + w.ready(), 80),
    ]
    events = play(script)
    assert summary(events) == [
        ("ok", "SELECT secret FROM t", "SELECT", 0, False),
        ("ok", "SELECT 1", "SELECT", 1, False),
        ("failed", "", "26000", "bind", False),
        ("failed", "", "34000", "execute", False),
    ]


# --- a named Parse the server rejects or skips does not change the named statements ------
def test_a_rejected_named_parse_keeps_the_statement_the_server_still_has() -> None:
    # Parse of a name in use fails with 42P05 (duplicate_prepared_statement) and the old
    # statement stays; a Parse skipped after an earlier error in its batch creates nothing.
    ok = w.parse_complete() + w.bind_complete() + w.data_row(b"1") + w.command_complete("SELECT 1")
    script: Script = [
        *login(),
        ("c", w.parse("SELECT a FROM t", "s1") + w.bind("s1") + w.execute() + w.sync(), 10),
        ("s", ok + w.ready(), 20),
        # a different text under the same name: rejected, s1 keeps its text
        ("c", w.parse("SELECT b FROM t", "s1") + w.sync(), 30),
        ("s", w.error("42P05", 'prepared statement "s1" already exists') + w.ready(), 40),
        # the same text again: rejected too, s1 still known
        ("c", w.parse("SELECT a FROM t", "s1") + w.sync(), 50),
        ("s", w.error("42P05", 'prepared statement "s1" already exists') + w.ready(), 60),
        ("c", w.bind("s1") + w.execute() + w.sync(), 70),
        ("s", w.bind_complete() + w.data_row(b"1") + w.command_complete("SELECT 1"), 80),
        ("s", w.ready(), 81),
        # an error before s2's Parse: the server skips it, so s2 does not exist
        ("c", w.parse("SELECT 1/0") + w.bind() + w.execute(), 90),
        ("c", w.parse("SELECT c FROM t", "s2") + w.sync(), 91),
        ("s", w.parse_complete() + w.bind_complete() + w.error("22012", "division by zero"), 100),
        ("s", w.ready(), 101),
        ("c", w.bind("s2") + w.execute() + w.sync(), 110),
        ("s", w.error("26000", 'prepared statement "s2" does not exist') + w.ready(), 120),
    ]
    _, events = _feed(script)
    assert [(e[0], e[1], e[2]) for e in summary(events)] == [
        ("ok", "SELECT a FROM t", "SELECT"),
        ("failed", "SELECT b FROM t", "42P05"),
        ("failed", "SELECT a FROM t", "42P05"),
        ("ok", "SELECT a FROM t", "SELECT"),
        ("failed", "SELECT 1/0", "22012"),
        ("failed", "", "26000"),
    ]
