"""Session.current_statement(): what the backend runs now, computed on demand."""

from __future__ import annotations

from dbproxy.protocol.events import Event
from dbproxy.protocol.session import Session
from tests.unit.protocol import wire as w


def _session() -> Session:
    events: list[Event] = []
    s = Session(session_id=1, emit=events.append, epoch_offset_ns=0)
    s.client_data(w.startup(), 0)
    s.server_data(w.server_hello(), 10)
    return s


def test_idle_outside_a_transaction_is_none() -> None:
    s = _session()
    assert s.current_statement() is None
    s.client_data(w.query("SELECT 1"), 100)
    s.server_data(w.command_complete("SELECT 1") + w.ready(), 200)
    assert s.current_statement() is None


def test_simple_query_in_flight_then_idle_in_transaction() -> None:
    s = _session()
    s.client_data(w.query("BEGIN"), 100)
    s.server_data(w.command_complete("BEGIN") + w.ready("T"), 110)
    s.client_data(w.query("UPDATE t SET a = 1; SELECT pg_sleep(1)"), 200)
    current = s.current_statement()
    assert current is not None
    assert (current.text, current.since_ns, current.active) == ("UPDATE t SET a = 1", 200, True)
    assert current.transaction_start_ns == 100
    s.server_data(w.command_complete("UPDATE 1"), 300)
    current = s.current_statement()
    assert current is not None and current.text == "SELECT pg_sleep(1)" and current.active
    assert current.since_ns == 300
    s.server_data(w.command_complete("SELECT 1") + w.ready("T"), 1300)
    current = s.current_statement()
    assert current is not None and not current.active
    assert (current.text, current.since_ns, current.transaction_start_ns) == (
        "SELECT pg_sleep(1)",
        1300,
        100,
    )
    s.client_data(w.query("COMMIT"), 1400)
    s.server_data(w.command_complete("COMMIT") + w.ready("I"), 1410)
    assert s.current_statement() is None


def test_extended_execute_in_flight() -> None:
    s = _session()
    s.client_data(w.parse("SELECT $1") + w.bind() + w.execute() + w.sync(), 500)
    current = s.current_statement()
    assert current is not None and current.active
    assert (current.text, current.since_ns, current.transaction_start_ns) == ("SELECT $1", 500, 0)
    s.server_data(w.parse_complete() + w.bind_complete() + w.command_complete("SELECT 1"), 600)
    s.server_data(w.ready(), 610)
    assert s.current_statement() is None
