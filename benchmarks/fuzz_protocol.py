"""Mutation fuzzer for the pure protocol core (framing + session state machine).

Builds realistic conversations (startup, auth, simple and extended queries, rows, errors,
COPY, notices), then mutates their frames (bit flips, wrong type bytes, corrupt lengths,
truncated or padded bodies, random frames, splices) and feeds both directions to a fresh
:class:`Session` in random chunk sizes.  The only exceptions allowed anywhere are the
documented protocol errors (``ProtocolError``), and ``Session`` must not even raise those:
it turns them into "observation lost" and keeps relaying.

    uv run --frozen --no-sync python -m benchmarks.fuzz_protocol --frames 1000000

prints the frames fed, the sessions, how many lost observation, and the time.
``tests/unit/protocol/test_fuzz.py`` runs the same loop on a smaller budget.
"""

from __future__ import annotations

import argparse
import random
import struct
import time
from dataclasses import dataclass

from dbproxy.errors import FrontendProtocolError
from dbproxy.protocol.events import Event
from dbproxy.protocol.session import Session
from dbproxy.protocol.startup import read_startup_request

FRONTEND_TYPES = b"QPBEDCSHFXdcfp"
BACKEND_TYPES = b"RKSZTDCEN123nstIGHWcdAv"
_I32 = struct.Struct("!I")


def _msg(kind: bytes, body: bytes) -> bytes:
    return kind + _I32.pack(len(body) + 4) + body


def _cstr(text: str) -> bytes:
    return text.encode() + b"\x00"


def _startup(rng: random.Random) -> bytes:
    minor = rng.choice((0, 0, 0, 2))
    params = _cstr("user") + _cstr("u") + _cstr("database") + _cstr("d")
    if rng.random() < 0.1:
        params += _cstr("replication") + _cstr("true")
    body = struct.pack("!I", (3 << 16) | minor) + params + b"\x00"
    return _I32.pack(len(body) + 4) + body


_SQL = (
    "select 1",
    "select * from t where id = 42 and name = 'x'",
    "begin",
    "commit",
    "rollback",
    "insert into t values (1, 'a'); update t set a = 2",
    "copy t from stdin",
    "select pg_sleep(0.1) /*traceparent='00-0af7651916cd43dd8448eb211c80319c-"
    "b7ad6b7169203331-01'*/",
    "",
)


def _client_frames(rng: random.Random) -> list[bytes]:
    out: list[bytes] = []
    for _ in range(rng.randint(1, 12)):
        sql = rng.choice(_SQL)
        if rng.random() < 0.5:
            out.append(_msg(b"Q", _cstr(sql)))
        else:
            name = rng.choice(("", "s1"))
            out.append(_msg(b"P", _cstr(name) + _cstr(sql) + b"\x00\x01\x00\x00\x00\x17"))
            out.append(
                _msg(b"B", _cstr("") + _cstr(name) + b"\x00\x00\x00\x01\x00\x00\x00\x0142\x00\x00")
            )
            out.append(_msg(b"D", b"P\x00"))
            out.append(_msg(b"E", b"\x00" + _I32.pack(rng.choice((0, 0, 10)))))
            out.append(_msg(b"S", b""))
        if rng.random() < 0.05:
            out.append(_msg(b"d", rng.randbytes(rng.randint(0, 40))))
            out.append(_msg(b"c", b""))
        if rng.random() < 0.05:
            out.append(_msg(b"F", _I32.pack(1598) + b"\x00\x00\x00\x00\x00\x00"))
        if rng.random() < 0.05:
            out.append(_msg(b"C", b"S" + _cstr("s1")))
    if rng.random() < 0.3:
        out.append(_msg(b"X", b""))
    return out


def _error(severity: str, code: str) -> bytes:
    body = b"S" + _cstr(severity) + b"V" + _cstr(severity) + b"C" + _cstr(code)
    return _msg(b"E", body + b"M" + _cstr("boom") + b"D" + _cstr("Key (id)=(42)") + b"\x00")


def _server_frames(rng: random.Random) -> list[bytes]:
    out = [
        _msg(b"R", _I32.pack(0)),
        _msg(b"S", _cstr("server_version") + _cstr("18.1")),
        _msg(b"S", _cstr("client_encoding") + _cstr(rng.choice(("UTF8", "LATIN1", "SQL_ASCII")))),
        _msg(b"K", _I32.pack(rng.randint(1, 99999)) + rng.randbytes(rng.choice((4, 4, 32)))),
        _msg(b"Z", b"I"),
    ]
    for _ in range(rng.randint(1, 12)):
        roll = rng.random()
        if roll < 0.3:
            out += [_msg(b"1", b""), _msg(b"2", b""), _msg(b"n", b"")]
        if roll < 0.6:
            out.append(_msg(b"T", b"\x00\x01" + _cstr("a") + b"\x00" * 18))
            out += [_msg(b"D", b"\x00\x01" + _I32.pack(2) + b"42")] * rng.randint(0, 5)
            out.append(_msg(b"C", _cstr(rng.choice(("SELECT 3", "INSERT 0 1", "BEGIN", "COMMIT")))))
        elif roll < 0.75:
            out.append(_error(rng.choice(("ERROR", "ERROR", "FATAL")), "23505"))
        elif roll < 0.8:
            out.append(_msg(b"G", b"\x00\x00\x01\x00\x00"))
        elif roll < 0.85:
            out.append(_msg(b"N", b"SWARNING\x00Mnote\x00\x00"))
        elif roll < 0.9:
            out.append(_msg(b"s", b""))
        elif roll < 0.95:
            out.append(_msg(b"A", _I32.pack(7) + _cstr("chan") + _cstr("payload")))
        out.append(_msg(b"Z", rng.choice((b"I", b"T", b"E"))))
    return out


def _random_frame(rng: random.Random, types: bytes) -> bytes:
    kind = bytes((rng.choice(types) if rng.random() < 0.9 else rng.randrange(256),))
    return _msg(kind, rng.randbytes(rng.choice((0, 1, 4, 5, 8, 16, 64))))


def mutate(frame: bytes, rng: random.Random, types: bytes) -> bytes:
    """One random mutation of a frame (or a random frame instead)."""
    op = rng.randrange(8)
    if op == 0 and frame:  # flip bits
        data = bytearray(frame)
        for _ in range(rng.randint(1, 3)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        return bytes(data)
    if op == 1 and frame:  # wrong type byte
        return bytes((rng.randrange(256),)) + frame[1:]
    if op == 2 and len(frame) >= 5:  # corrupt length
        length = rng.choice((0, 3, 4, 5, len(frame) + 1, len(frame) - 2, 0x7FFFFFFF, 0xFFFFFFFF))
        return frame[:1] + _I32.pack(length & 0xFFFFFFFF) + frame[5:]
    if op == 3:  # truncate
        return frame[: rng.randrange(len(frame) + 1)]
    if op == 4:  # trailing garbage
        return frame + rng.randbytes(rng.randint(1, 16))
    if op == 5 and len(frame) > 5:  # random body, correct length
        return _msg(frame[:1], rng.randbytes(len(frame) - 5))
    if op == 6:
        return _random_frame(rng, types)
    return frame  # unchanged (keeps the conversation going past the mutation)


@dataclass
class FuzzResult:
    frames: int = 0
    sessions: int = 0
    sessions_lost: int = 0
    startup_errors: int = 0
    events: int = 0
    seconds: float = 0.0


def _chunks(data: bytes, rng: random.Random) -> list[bytes]:
    if rng.random() < 0.5:
        return [data]
    out, pos = [], 0
    while pos < len(data):
        step = rng.choice((1, 2, 3, 5, 7, 64, 4096))
        out.append(data[pos : pos + step])
        pos += step
    return out


def run(frames: int, seed: int = 0, mutation_rate: float = 0.05) -> FuzzResult:
    """Feed at least ``frames`` generated and mutated frames; raises on any exception
    other than a documented protocol error."""
    rng = random.Random(seed)
    result = FuzzResult()
    started = time.perf_counter()
    now = 1_000_000_000

    def emit(event: Event) -> None:
        result.events += 1

    while result.frames < frames:
        result.sessions += 1
        session = Session(session_id=result.sessions, emit=emit, epoch_offset_ns=0)
        first = _startup(rng)
        if rng.random() < mutation_rate * 4:
            first = mutate(first, rng, b"\x00")
        try:
            read_startup_request(first)
        except FrontendProtocolError:
            result.startup_errors += 1
        client = [first, *_client_frames(rng)]
        server = _server_frames(rng)
        client = [
            mutate(f, rng, FRONTEND_TYPES) if rng.random() < mutation_rate else f for f in client
        ]
        server = [
            mutate(f, rng, BACKEND_TYPES) if rng.random() < mutation_rate else f for f in server
        ]
        result.frames += len(client) + len(server)
        # interleave the two directions roughly as a conversation would
        ci = si = 0
        while ci < len(client) or si < len(server):
            now += rng.randrange(1, 2_000_000)
            if ci < len(client) and (si >= len(server) or rng.random() < 0.5):
                for chunk in _chunks(client[ci], rng):
                    session.client_data(chunk, now)
                ci += 1
            else:
                for chunk in _chunks(server[si], rng):
                    session.server_data(chunk, now)
                si += 1
            if rng.random() < 0.05:
                session.current_statement()
                session.idle_since()
                session.server_at_message_boundary()
        session.close(now)
        if not session.observing:
            result.sessions_lost += 1
    result.seconds = time.perf_counter() - started
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    res = run(args.frames, args.seed)
    print(
        f"{res.frames:,} frames in {res.sessions:,} sessions, {res.seconds:.1f} s "
        f"({res.frames / res.seconds:,.0f} frames/s); observation lost in "
        f"{res.sessions_lost:,} sessions; {res.startup_errors:,} startup packets refused; "
        f"{res.events:,} events; no other exception"
    )


if __name__ == "__main__":
    main()
