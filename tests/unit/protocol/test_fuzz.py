"""Fuzzing the pure protocol core (issue 11): generated frames (hypothesis) and a
million-frame mutation loop (``benchmarks/fuzz_protocol.py``).  The only exception allowed
is the documented ``ProtocolError`` of the framing layer, and ``Session`` raises none: it
stops observing and the proxy keeps relaying."""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchmarks.fuzz_protocol import BACKEND_TYPES, FRONTEND_TYPES, run
from dbproxy.errors import FrontendProtocolError, ProtocolError
from dbproxy.protocol.events import Event
from dbproxy.protocol.framing import FrameReader
from dbproxy.protocol.session import Session
from dbproxy.protocol.startup import read_startup_request
from tests.unit.protocol import wire


def test_a_million_generated_and_mutated_frames_raise_nothing() -> None:
    result = run(1_000_000, seed=11)
    assert result.frames >= 1_000_000
    # the loop reached every outcome: sessions observed to the end, sessions whose
    # observation was lost on a framing error, refused startup packets, events
    assert result.sessions_lost > 0
    assert result.sessions - result.sessions_lost > 0
    assert result.startup_errors > 0
    assert result.events > 0
    print(f"fuzz: {result.frames:,} frames, {result.sessions:,} sessions, {result.seconds:.1f}s")


def _frame(types: bytes) -> st.SearchStrategy[bytes]:
    def build(kind: int, body: bytes) -> bytes:
        return bytes((kind,)) + struct.pack("!I", len(body) + 4) + body

    return st.one_of(
        st.builds(build, st.sampled_from(list(types)), st.binary(max_size=48)),
        st.binary(min_size=1, max_size=12),  # raw bytes: headers, garbage, truncations
    )


_ready = (
    wire.auth_ok()
    + wire.backend_key(4242)
    + wire.parameter_status("server_version", "18")
    + wire.ready()
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(st.booleans(), st.one_of(_frame(FRONTEND_TYPES), _frame(BACKEND_TYPES))),
        max_size=40,
    ),
    st.booleans(),
)
def test_generated_frames_after_a_real_startup(
    steps: list[tuple[bool, bytes]], startup_done: bool
) -> None:
    events: list[Event] = []
    session = Session(session_id=1, emit=events.append, epoch_offset_ns=0)
    session.client_data(wire.startup(), 1)
    if startup_done:
        session.server_data(_ready, 2)
    for now, (from_client, data) in enumerate(steps, start=3):
        if from_client:
            session.client_data(data, now)
        else:
            session.server_data(data, now)
        session.current_statement()
        session.idle_since()
    session.close(10_000)
    assert isinstance(session.server_at_message_boundary(), bool)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300), st.lists(st.integers(1, 40), max_size=20), st.booleans())
def test_framing_splits_arbitrary_bytes_the_same_way_or_raises_a_protocol_error(
    data: bytes, cuts: list[int], frontend: bool
) -> None:
    def frames(parts: list[bytes]) -> list[tuple[int, int, bytes]] | str:
        reader = FrameReader.for_frontend() if frontend else FrameReader.for_backend()
        out: list[tuple[int, int, bytes]] = []
        try:
            for part in parts:
                out += reader.feed(part)
        except ProtocolError as exc:
            return type(exc).__name__
        return out

    parts, pos = [], 0
    for cut in cuts:
        parts.append(data[pos : pos + cut])
        pos += cut
    parts.append(data[pos:])
    # the same frames, or the same protocol error, however the bytes arrive
    assert frames([data]) == frames(parts)


@given(st.binary(max_size=64))
def test_startup_requests_are_classified_or_refused(data: bytes) -> None:
    try:
        request = read_startup_request(data)
    except FrontendProtocolError:
        return
    if request is not None and request.size:
        assert 8 <= request.size <= len(data)


@pytest.mark.parametrize("key", [b"\x00\x00\x00\x01", bytes(range(32))])
def test_backend_key_is_kept_whole_for_the_cancel_on_vanish(key: bytes) -> None:
    session = Session(session_id=1, emit=lambda e: None, epoch_offset_ns=0)
    session.client_data(wire.startup(), 1)
    body = struct.pack("!I", 77) + key
    session.server_data(wire.auth_ok() + b"K" + struct.pack("!I", len(body) + 4) + body, 2)
    session.server_data(wire.ready(), 3)
    assert (session.backend_pid, session.backend_key) == (77, key)
