"""Where a session's events go: a sink (the proxy's, a native call) or a callable."""

from __future__ import annotations

from dbproxy.observe.sink import QueueSink
from dbproxy.protocol.emit import CallbackEmitter, emitter
from dbproxy.protocol.events import Event, SessionClosed
from dbproxy.protocol.session import Session
from tests.unit.protocol import wire as w


def _play(emit: object) -> None:
    session = Session(session_id=7, emit=emit, epoch_offset_ns=0)  # type: ignore[arg-type]
    session.client_data(w.startup("alice", "shop"), 1_000)
    session.server_data(w.server_hello(), 2_000)
    session.client_data(w.query("SELECT 1"), 3_000)
    session.server_data(w.data_row(b"1") + w.command_complete("SELECT 1") + w.ready(), 4_000)
    session.close(5_000)


def test_the_proxy_sink_is_used_as_it_is_and_a_callable_is_wrapped() -> None:
    sink = QueueSink(16)
    assert emitter(sink) is sink
    events: list[Event] = []
    wrapped = emitter(events.append)
    assert isinstance(wrapped, CallbackEmitter)
    _play(sink)
    _play(events.append)
    drained = sink.drain()
    assert [type(e).__name__ for e in drained] == [type(e).__name__ for e in events]
    assert [type(e).__name__ for e in events] == [
        "SessionOpened",
        "StatementFinished",
        "SessionClosed",
    ]
    assert isinstance(drained[-1], SessionClosed) and sink.accepted == 3
