"""The JSON query log, over events from real protocol bytes fed to the session machine."""

from __future__ import annotations

import errno
import io
import json
import sys
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from dbproxy.export.querylog import (
    KEY_ORDER,
    MAX_QUERY_BYTES,
    QueryLog,
    open_query_log,
    parse_traceparent,
    rfc3339_ms,
)
from dbproxy.observe.aggregator import Aggregator, StatementNote
from dbproxy.protocol.events import Event, SessionClosed, SessionOpened, StatementEvent
from dbproxy.protocol.session import Session
from dbproxy.sql.cache import Fingerprinter
from dbproxy.sql.fingerprint import fingerprint
from tests.unit.protocol import wire as w
from tests.unit.protocol.test_session import EPOCH, Script, login

SENTINEL = "s3cr3t-sentinel"
TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_ID = "b7ad6b7169203331"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"
MS = 1_000_000


def play(script: Script, session_id: int = 7, *, close: bool = True) -> list[Event]:
    events: list[Event] = []
    session = Session(session_id=session_id, emit=events.append, epoch_offset_ns=EPOCH)
    for side, data, t in script:
        if side == "c":
            session.client_data(data, t)
        else:
            session.server_data(data, t)
    if close:
        session.close(script[-1][2] + MS)
    return events


def simple(sql: str, t: int, duration_ns: int, tag: str = "SELECT 1", rows: int = 1) -> Script:
    return [
        ("c", w.query(sql), t),
        ("s", w.row_description("a") + b"".join(w.data_row(b"1") for _ in range(rows)), t + 10),
        ("s", w.command_complete(tag) + w.ready(), t + duration_ns),
    ]


def failing(sql: str, t: int, duration_ns: int, sqlstate: str, message: str) -> Script:
    return [
        ("c", w.query(sql), t),
        ("s", w.error(sqlstate, message) + w.ready(), t + duration_ns),
    ]


def lines_of(out: io.StringIO) -> list[dict[str, Any]]:
    text = out.getvalue()
    assert text == "" or text.endswith("\n")
    records = [json.loads(line) for line in text.splitlines()]
    for record in records:  # stable key order: a subsequence of KEY_ORDER
        keys = list(record)
        assert keys == [k for k in KEY_ORDER if k in record], keys
    return records


def new_log(out: io.StringIO, **options: Any) -> QueryLog:
    options.setdefault("background", False)
    return QueryLog(out, **options)


# --- every field ------------------------------------------------------------------------
def test_slow_query_line_has_every_field() -> None:
    sql = (
        f"SELECT id, name FROM users WHERE email = '{SENTINEL}' "
        f"/*traceparent='{TRACEPARENT}',route='%2Fusers%2F%3Aid',controller='users',"
        f"tracestate='vendor%3Dx'*/"
    )
    start = 5 * MS
    script = [*login(), *simple(sql, start, 250 * MS, rows=2)]
    out = io.StringIO()
    qlog = new_log(out, log_slow_ms=100, client_address=lambda sid: f"10.0.0.5:{50000 + sid}")
    qlog.consume(play(script))

    opened, slow, closed = lines_of(out)
    fp = fingerprint(sql)
    assert slow == {
        "ts": rfc3339_ms(EPOCH + start + 250 * MS),
        "level": "warning",
        "event": "slow_query",
        "trace_id": TRACE_ID,
        "span_id": PARENT_ID,
        "session_id": 7,
        "backend_pid": 4242,
        "client_addr": "10.0.0.5:50007",
        "database": "shop",
        "user": "alice",
        "application_name": "checkout",
        "protocol": "simple",
        "fingerprint": fp.id,
        "summary": "SELECT users",
        "duration_ms": 250.0,
        "rows": 2,
        "command": "SELECT",
        "rolled_back": False,
        "in_transaction": False,
        "tags": {"controller": "users", "route": "/users/:id"},  # no traceparent/tracestate
        "query": "SELECT id, name FROM users WHERE email = $1",
    }
    assert slow["ts"] == "2023-11-14T22:13:20.255Z"
    assert opened == {
        "ts": "2023-11-14T22:13:20.000Z",
        "level": "info",
        "event": "session_opened",
        "session_id": 7,
        "backend_pid": 4242,
        "client_addr": "10.0.0.5:50007",
        "database": "shop",
        "user": "alice",
        "application_name": "checkout",
    }
    assert closed == {
        "ts": rfc3339_ms(EPOCH + start + 251 * MS),
        "level": "info",
        "event": "session_closed",
        "session_id": 7,
        "backend_pid": 4242,
        "client_addr": "10.0.0.5:50007",
        "database": "shop",
        "user": "alice",
        "application_name": "checkout",
        "duration_ms": 256.0,  # session lifetime
        "interrupted": 0,
        "observation_lost": False,
    }
    assert SENTINEL not in out.getvalue()
    assert (qlog.lines_written, qlog.write_errors, qlog.lines_dropped) == (3, 0, 0)


def test_fingerprint_id_is_the_aggregators() -> None:
    sql = "SELECT * FROM orders WHERE id = 42"
    events = play([*login(), *simple(sql, MS, 200 * MS)])
    out = io.StringIO()
    new_log(out, log_slow_ms=1, log_sessions=False).consume(events)
    aggregator = Aggregator(fingerprinter=Fingerprinter())
    aggregator.consume(events)
    (row,) = aggregator.snapshot().queries
    (line,) = lines_of(out)
    assert (line["fingerprint"], line["query"], line["summary"]) == (
        row.fingerprint,
        row.query,
        row.summary,
    )


def test_query_is_cut_at_2kb_without_splitting_characters() -> None:
    columns = ", ".join(f"spalte_ä{i:04d}" for i in range(400))
    events = play([*login(), *simple(f"SELECT {columns} FROM t", MS, 200 * MS)])
    out = io.StringIO()
    new_log(out, log_slow_ms=100, log_sessions=False).consume(events)
    (line,) = lines_of(out)
    assert line["query"].startswith("SELECT spalte_ä0000, spalte_ä0001")
    assert MAX_QUERY_BYTES - 4 < len(line["query"].encode()) <= MAX_QUERY_BYTES
    # ensure_ascii=False: UTF-8 on the wire, not \\u escapes
    assert "spalte_ä0000" in out.getvalue()


def test_function_call_uses_the_aggregators_placeholder() -> None:
    script = [
        *login(),
        ("c", w.function_call(1598), MS),
        ("s", w.function_result(b"\x00\x00\x00\x01") + w.ready(), 300 * MS),
    ]
    events = play(script)
    out = io.StringIO()
    new_log(out, log_slow_ms=100, log_sessions=False).consume(events)
    (line,) = lines_of(out)
    aggregator = Aggregator(fingerprinter=Fingerprinter())
    aggregator.consume(events)
    (row,) = aggregator.snapshot().queries
    assert line["query"] == "<function call oid=1598>" == row.query
    assert line["fingerprint"] == row.fingerprint
    assert line["protocol"] == "function"


# --- slow threshold -----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("log_slow_ms", "logged"),
    [(None, []), (100, [100.0, 250.0]), (100.001, [250.0]), (0, [0.5, 100.0, 250.0])],
)
def test_slow_threshold_is_inclusive_and_none_turns_it_off(
    log_slow_ms: float | None, logged: list[float]
) -> None:
    script = [
        *login(),
        *simple("SELECT 1", 1 * MS, MS // 2),
        *simple("SELECT 2", 10 * MS, 100 * MS),
        *simple("SELECT 3", 200 * MS, 250 * MS),
    ]
    out = io.StringIO()
    new_log(out, log_slow_ms=log_slow_ms, log_sessions=False).consume(play(script))
    assert [line["duration_ms"] for line in lines_of(out)] == logged


def test_negative_threshold_is_refused() -> None:
    with pytest.raises(ValueError, match="log_slow_ms"):
        QueryLog(io.StringIO(), log_slow_ms=-1)


# --- errors -----------------------------------------------------------------------------------
def unique_violation_script() -> Script:
    message = (
        'duplicate key value violates unique constraint "users_email_key" '
        f"Key (email)=({SENTINEL}) already exists."
    )
    return [
        *login(),
        # extended protocol, literal in the text and in a parameter
        (
            "c",
            w.parse(
                f"INSERT INTO users (email, note) VALUES ($1, '{SENTINEL}') "
                f"/*traceparent='{TRACEPARENT}'*/"
            )
            + w.bind(params=(SENTINEL.encode(),))
            + w.execute()
            + w.sync(),
            MS,
        ),
        ("s", w.parse_complete() + w.bind_complete() + w.error("23505", message), 3 * MS),
        ("s", w.ready(), 3 * MS + 500),
        # simple protocol, literal in the text, message echoing it
        *failing(
            f"UPDATE users SET email = '{SENTINEL}' WHERE id = 1", 5 * MS, MS, "23505", message
        ),
    ]


def test_failed_statements_are_logged_with_sqlstate_class_and_no_message() -> None:
    out = io.StringIO()
    qlog = new_log(out)  # slow log off, errors and sessions on by default
    qlog.consume(play(unique_violation_script()))
    records = lines_of(out)
    assert [r["event"] for r in records] == [
        "session_opened",
        "query_error",
        "query_error",
        "session_closed",
    ]
    extended, simple_ = records[1], records[2]
    assert extended == {
        "ts": rfc3339_ms(EPOCH + 3 * MS),
        "level": "error",
        "event": "query_error",
        "trace_id": TRACE_ID,
        "span_id": PARENT_ID,
        "session_id": 7,
        "backend_pid": 4242,
        "database": "shop",
        "user": "alice",
        "application_name": "checkout",
        "protocol": "extended",
        "fingerprint": fingerprint("INSERT INTO users (email, note) VALUES ($1, 'x')").id,
        "summary": "INSERT users",
        "duration_ms": 2.0,
        "rows": 0,
        "sqlstate": "23505",
        "error_class": "integrity_constraint_violation",
        "phase": "execute",
        "rolled_back": False,
        "in_transaction": False,
        "query": "INSERT INTO users(email, note) VALUES ($1, $2)",
    }
    assert simple_["protocol"] == "simple" and "trace_id" not in simple_
    assert simple_["query"] == "UPDATE users SET email = $1 WHERE id = $2"
    text = out.getvalue()
    assert SENTINEL not in text
    assert "duplicate key" not in text and "already exists" not in text


def test_errors_can_be_turned_off_but_a_slow_failure_is_still_slow() -> None:
    script = [
        *login(),
        *failing("SELECT 1/0", MS, MS, "22012", "division by zero"),
        *failing("SELECT pg_sleep(10)", 10 * MS, 500 * MS, "57014", "canceling statement"),
    ]
    out = io.StringIO()
    new_log(out, log_errors=False, log_sessions=False, log_slow_ms=100).consume(play(script))
    (line,) = lines_of(out)
    assert (line["event"], line["level"], line["sqlstate"], line["error_class"]) == (
        "slow_query",
        "warning",
        "57014",
        "operator_intervention",
    )
    out = io.StringIO()
    new_log(out, log_errors=False, log_sessions=False).consume(play(script))
    assert lines_of(out) == []


def test_failed_slow_statement_is_one_error_line() -> None:
    script = [*login(), *failing("SELECT pg_sleep(10)", MS, 500 * MS, "57014", "canceling")]
    out = io.StringIO()
    new_log(out, log_slow_ms=100, log_sessions=False).consume(play(script))
    assert [r["event"] for r in lines_of(out)] == ["query_error"]


def test_sqlstate_that_is_not_one_is_unknown() -> None:
    script = [*login(), *failing("SELECT 1", MS, MS, "not-a-state", "boom")]
    out = io.StringIO()
    new_log(out, log_sessions=False).consume(play(script))
    (line,) = lines_of(out)
    assert (line["sqlstate"], line["error_class"]) == ("unknown", "unknown")


# --- sessions ------------------------------------------------------------------------------
def test_rejected_session_has_sqlstate_and_no_message_and_no_close_line() -> None:
    script: Script = [
        ("c", w.startup(), 1),
        ("s", w.auth_sasl(), 2),
        ("c", w.password("n,,n=,r=" + SENTINEL), 3),
        ("s", w.error("28P01", f'password authentication failed for "{SENTINEL}"', "FATAL"), 4),
    ]
    out = io.StringIO()
    # no statement seen yet: the wall-clock offset comes from the clocks passed in
    qlog = new_log(out, wall_clock_ns=lambda: EPOCH + 10, monotonic_ns=lambda: 10)
    qlog.consume(play(script, session_id=9))
    (line,) = lines_of(out)
    assert line == {
        "ts": "2023-11-14T22:13:20.000Z",
        "level": "warning",
        "event": "session_rejected",
        "session_id": 9,
        "database": "shop",
        "user": "alice",
        "sqlstate": "28P01",
        "error_class": "invalid_authorization_specification",
    }
    assert SENTINEL not in out.getvalue()


def test_sessions_can_be_turned_off_and_backend_pid_is_still_known() -> None:
    script = [*login(), *simple("SELECT 1", MS, 300 * MS)]
    out = io.StringIO()
    qlog = new_log(out, log_sessions=False, log_slow_ms=100)
    qlog.consume(play(script, close=False))
    qlog.consume(play([], close=False))  # batches split anywhere
    (line,) = lines_of(out)
    assert (line["event"], line["backend_pid"]) == ("slow_query", 4242)
    assert "client_addr" not in line


def test_session_details_are_dropped_on_close_and_bounded() -> None:
    out = io.StringIO()
    qlog = new_log(out, max_sessions=2)
    for sid in (1, 2, 3):
        qlog.consume(play(login(), session_id=sid, close=False))
    assert qlog.sessions_evicted == 1
    events = play([*login(), *simple("SELECT 1", MS, MS)], session_id=3)
    qlog.consume([e for e in events if isinstance(e, SessionClosed)])
    assert qlog.sessions_evicted == 1
    assert len(qlog._sessions) == 1  # only session 2 is left
    # a close for a session never seen open (a TCP probe) writes nothing
    before = len(lines_of(out))
    qlog.consume(play([("c", b"", 1)], session_id=50))
    assert len(lines_of(out)) == before


# --- trace context --------------------------------------------------------------------------
def named_statement_script() -> Script:
    sql = f"SELECT * FROM users WHERE id = $1 /*traceparent='{TRACEPARENT}'*/"
    script: Script = [
        *login(),
        ("c", w.parse(sql, name="s1") + w.bind("s1") + w.execute() + w.sync(), MS),
        ("s", w.parse_complete() + w.bind_complete() + w.command_complete("SELECT 0"), 200 * MS),
        ("s", w.ready(), 200 * MS + 1),
        # the same named statement run again later, in a batch without its Parse
        ("c", w.bind("s1") + w.execute() + w.sync(), 300 * MS),
        ("s", w.bind_complete() + w.command_complete("SELECT 0") + w.ready(), 500 * MS),
    ]
    return script


def test_traceparent_only_when_the_text_was_sent_with_the_execution() -> None:
    out = io.StringIO()
    new_log(out, log_slow_ms=100, log_sessions=False).consume(play(named_statement_script()))
    first, again = lines_of(out)
    assert (first["trace_id"], first["span_id"]) == (TRACE_ID, PARENT_ID)
    assert "trace_id" not in again and "span_id" not in again
    assert first["fingerprint"] == again["fingerprint"]


def test_span_ids_hook_wins_and_its_failure_falls_back() -> None:
    def hook(ev: StatementEvent) -> tuple[str, str] | None:
        if ev.start_ns == MS:
            return "1" * 32, "2" * 16
        if ev.text_in_batch is False:
            raise RuntimeError("tracing broke")
        return None

    out = io.StringIO()
    qlog = new_log(out, log_slow_ms=100, log_sessions=False, span_ids=hook)
    qlog.consume(play(named_statement_script()))
    first, again = lines_of(out)
    assert (first["trace_id"], first["span_id"]) == ("1" * 32, "2" * 16)
    assert "trace_id" not in again
    assert qlog.hook_errors == 1


def test_tracing_notes_give_the_proxy_span_and_the_fingerprint() -> None:
    events = play(named_statement_script())
    first, again = (i for i, e in enumerate(events) if isinstance(e, StatementEvent))
    marker = fingerprint("SELECT 'from the note'")  # proves the note's fingerprint is used
    notes = {
        first: StatementNote(marker, "c" * 32, "d" * 16),
        again: StatementNote(None, "", ""),  # no span: nothing to add
    }
    out = io.StringIO()
    new_log(out, log_slow_ms=100, log_sessions=False).consume(events, notes)
    line_first, line_again = lines_of(out)
    assert (line_first["trace_id"], line_first["span_id"]) == ("c" * 32, "d" * 16)
    assert (line_first["fingerprint"], line_first["query"]) == (marker.id, "SELECT $1")
    assert "trace_id" not in line_again
    assert line_again["query"] == "SELECT * FROM users WHERE id = $1"


def test_client_address_hook_failure_is_counted() -> None:
    def broken(_sid: int) -> str | None:
        raise KeyError("gone")

    out = io.StringIO()
    qlog = new_log(out, client_address=broken)
    qlog.consume(play(login()))
    assert [r["event"] for r in lines_of(out)] == ["session_opened", "session_closed"]
    assert qlog.hook_errors == 1


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (TRACEPARENT, (TRACE_ID, PARENT_ID)),
        (f" {TRACEPARENT} ", (TRACE_ID, PARENT_ID)),
        (f"01-{TRACE_ID}-{PARENT_ID}-01-extra", (TRACE_ID, PARENT_ID)),  # future version
        (f"00-{TRACE_ID}-{PARENT_ID}-01-extra", None),
        (f"ff-{TRACE_ID}-{PARENT_ID}-01", None),
        (f"00-{'0' * 32}-{PARENT_ID}-01", None),
        (f"00-{TRACE_ID}-{'0' * 16}-01", None),
        (f"00-{TRACE_ID.upper()}-{PARENT_ID}-01", None),
        (f"00-{TRACE_ID}-{PARENT_ID}", None),
        ("", None),
    ],
)
def test_parse_traceparent(value: str, expected: tuple[str, str] | None) -> None:
    assert parse_traceparent(value) == expected


def test_rfc3339_ms_truncates_to_milliseconds_in_utc() -> None:
    assert rfc3339_ms(0) == "1970-01-01T00:00:00.000Z"
    assert rfc3339_ms(1_700_000_000_999_999_999) == "2023-11-14T22:13:20.999Z"


# --- writing: failures, queue, files --------------------------------------------------------
class BrokenStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.broken = True

    def write(self, s: str) -> int:
        if self.broken:
            raise OSError(errno.ENOSPC, "No space left on device")
        return super().write(s)


def test_failing_stream_counts_errors_and_never_raises(caplog: pytest.LogCaptureFixture) -> None:
    out = BrokenStream()
    qlog = new_log(out)
    qlog.consume(play(login(), session_id=1))  # two lines, both fail
    qlog.consume(play(login(), session_id=2))
    assert (qlog.lines_written, qlog.write_errors) == (0, 4)
    assert len([r for r in caplog.records if "cannot write" in r.message]) == 1  # once a streak
    out.broken = False
    qlog.consume(play(login(), session_id=3))
    assert (qlog.lines_written, qlog.write_errors) == (2, 4)
    assert [r["session_id"] for r in lines_of(out)] == [3, 3]


def test_failing_stream_in_the_writer_thread() -> None:
    out = BrokenStream()
    qlog = QueryLog(out)
    qlog.consume(play(login()))
    assert qlog.flush(5)
    assert (qlog.lines_written, qlog.write_errors) == (0, 2)
    assert qlog.close()


class BlockingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def write(self, s: str) -> int:
        self.release.wait(10)
        return super().write(s)


def test_a_blocked_stream_never_blocks_consume_and_the_queue_is_bounded() -> None:
    out = BlockingStream()
    qlog = QueryLog(out, max_pending_lines=3)
    for sid in range(10):  # 20 lines; the writer is stuck in its first write
        qlog.consume(play(login(), session_id=sid))
    # at most 3 queued, and at most one batch (the whole queue, 3) taken by the writer
    assert qlog.lines_dropped >= 20 - 3 - 3
    assert qlog.pending_lines <= 3
    out.release.set()
    assert qlog.flush(5)
    assert qlog.lines_written + qlog.lines_dropped == 20
    assert qlog.lines_written == len(lines_of(out))
    assert qlog.close()
    qlog.consume(play(login(), session_id=99))  # after close: dropped, counted
    assert qlog.lines_written + qlog.lines_dropped == 22


def test_file_is_appended_and_reopened_after_rotation(tmp_path: Path) -> None:
    path = tmp_path / "queries.log"
    path.write_text('{"earlier":true}\n', encoding="utf-8")
    qlog = QueryLog(str(path), log_slow_ms=100)
    qlog.consume(play([*login(), *simple("SELECT 'ü'", MS, 200 * MS)], session_id=1))
    assert qlog.flush(5)
    rotated = tmp_path / "queries.log.1"
    path.rename(rotated)
    qlog.reopen()
    qlog.consume(play(login(), session_id=2))
    assert qlog.close()
    old = [json.loads(x) for x in rotated.read_text(encoding="utf-8").splitlines()]
    new = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]
    assert [r.get("event") for r in old] == [None, "session_opened", "slow_query", "session_closed"]
    assert [r["event"] for r in new] == ["session_opened", "session_closed"]
    assert (qlog.lines_written, qlog.write_errors, qlog.lines_dropped) == (5, 0, 0)


def test_synchronous_reopen_and_unopenable_path(tmp_path: Path) -> None:
    path = tmp_path / "q.log"
    qlog = QueryLog(path, background=False)
    path.rename(tmp_path / "q.log.1")
    qlog.reopen()
    qlog.consume(play(login()))
    assert len(path.read_text(encoding="utf-8").splitlines()) == 2
    assert qlog.close()
    with pytest.raises(OSError):
        QueryLog(tmp_path / "missing-dir" / "q.log")


def test_open_query_log_targets(tmp_path: Path) -> None:
    assert open_query_log("off") is None
    assert open_query_log("") is None
    stdout_log = open_query_log("-", background=False)
    assert stdout_log is not None and stdout_log._stream is sys.stdout
    assert stdout_log.close()
    file_log = open_query_log(str(tmp_path / "q.log"), log_slow_ms=5)
    assert file_log is not None and file_log.close()


def test_lone_surrogates_do_not_make_a_line_unwritable() -> None:
    events = play([*login(), *simple("SELECT 1", MS, MS)], close=False)
    opened = events[0]
    assert isinstance(opened, SessionOpened)
    weird = replace(opened, application_name="app\udcff")
    out = io.StringIO()
    qlog = new_log(out)
    qlog.consume([weird])
    (line,) = lines_of(out)
    assert line["application_name"] == "app?"
    out.getvalue().encode("utf-8")
