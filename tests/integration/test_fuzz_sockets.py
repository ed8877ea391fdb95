"""Malformed connections through a real proxy to a real server (issue 11).

5,000 connections send a mutated startup or post-startup conversation, half-close (so a
truncated message cannot wait forever) and must each end within 5 s with an ErrorResponse
or a close, from the proxy or from PostgreSQL (the proxy relays bytes, so most malformed
input after the startup packet is the server's to answer).  Meanwhile a well-behaved
client keeps running statements through the same proxy.
"""

from __future__ import annotations

import asyncio
import random
import struct
import time

import asyncpg

from benchmarks.fuzz_protocol import FRONTEND_TYPES, mutate
from dbproxy.pgcluster import PgServer
from tests.fixtures.fix_proxy import start_proxy

CONNECTIONS = 5_000
CONCURRENCY = 24
DEADLINE_S = 5.0


def _startup(user: str, database: str, version: int = 3 << 16) -> bytes:
    body = struct.pack("!I", version)
    body += b"user\x00" + user.encode() + b"\x00database\x00" + database.encode() + b"\x00\x00"
    return struct.pack("!I", len(body) + 4) + body


def _payload(rng: random.Random, user: str, database: str) -> bytes:
    kind = rng.randrange(6)
    if kind == 0:  # garbage instead of a startup packet
        return rng.randbytes(rng.randint(1, 64))
    if kind == 1:  # a mutated startup packet
        return mutate(_startup(user, database), rng, b"\x00")
    if kind == 2:  # an unsupported protocol version, or a bad SSLRequest sequence
        if rng.random() < 0.5:
            return _startup(user, database, rng.choice((2 << 16, 4 << 16, 3 << 16 | 99)))
        return struct.pack("!II", 8, 80877103) + rng.randbytes(rng.randint(0, 32))
    if kind == 3:  # a CancelRequest for a made-up backend
        return struct.pack("!III", 16, 80877102, rng.randrange(1 << 31)) + rng.randbytes(4)
    # a valid startup, then mutated messages where the SASL exchange should be
    out = _startup(user, database)
    for _ in range(rng.randint(1, 6)):
        body = rng.randbytes(rng.choice((0, 4, 16, 100)))
        frame = bytes((rng.choice(FRONTEND_TYPES),)) + struct.pack("!I", len(body) + 4) + body
        out += mutate(frame, rng, FRONTEND_TYPES) if rng.random() < 0.7 else frame
    return out


def _has_error_response(data: bytes) -> bool:
    """Whether the server→client bytes hold an ErrorResponse message."""
    pos = 1 if data[:1] in (b"N", b"S") else 0  # the answer to an SSLRequest
    while pos + 5 <= len(data):
        if data[pos : pos + 1] == b"E":
            return True
        pos += 1 + struct.unpack_from("!I", data, pos + 1)[0]
    return False


async def _one(host: str, port: int, payload: bytes) -> tuple[float, bool]:
    """(seconds until the connection ended, whether an ErrorResponse came)."""
    started = time.monotonic()
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(payload)
        writer.write_eof()  # half-close: nothing more is coming
        received = b""
        async with asyncio.timeout(DEADLINE_S):
            while chunk := await reader.read(65536):
                received += chunk
        return time.monotonic() - started, _has_error_response(received)
    finally:
        writer.close()


def test_five_thousand_malformed_connections_while_a_good_client_works(
    pg_server: PgServer,
) -> None:
    proxy = start_proxy(pg_server)
    rng = random.Random(20261126)
    payloads = [_payload(rng, pg_server.app_user, pg_server.database) for _ in range(CONNECTIONS)]

    async def main() -> tuple[list[tuple[float, bool]], int, float]:
        good = await asyncpg.connect(proxy.dsn(), ssl=False)
        stop = asyncio.Event()
        good_runs = 0

        async def well_behaved() -> None:
            nonlocal good_runs
            while not stop.is_set():
                assert await good.fetchval("select $1::int + 1", good_runs) == good_runs + 1
                good_runs += 1
                await asyncio.sleep(0.01)

        gate = asyncio.Semaphore(CONCURRENCY)

        async def bounded(payload: bytes) -> tuple[float, bool]:
            async with gate:
                return await _one(proxy.host, proxy.port, payload)

        steady = asyncio.create_task(well_behaved())
        started = time.monotonic()
        results = await asyncio.gather(*(bounded(p) for p in payloads))
        elapsed = time.monotonic() - started
        stop.set()
        await steady
        # the good session survived the storm and still answers
        assert await good.fetchval("select 'fine'") == "fine"
        await good.close()
        return results, good_runs, elapsed

    try:
        results, good_runs, elapsed = asyncio.run(main())
        slowest = max(seconds for seconds, _ in results)
        errors = sum(error for _, error in results)
        print(
            f"socket fuzz: {len(results):,} malformed connections in {elapsed:.1f}s, "
            f"slowest {slowest:.2f}s, {errors:,} ended with an ErrorResponse, the rest with "
            f"a close; the good client ran {good_runs:,} statements meanwhile"
        )
        assert len(results) == CONNECTIONS
        assert slowest < DEADLINE_S
        assert CONNECTIONS // 4 < errors < CONNECTIONS  # both kinds of ending were exercised
        assert good_runs > 10
        assert proxy.server.stats.observer_errors == 0
        # nothing is left open
        deadline = time.monotonic() + 10
        while proxy.server.connections and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(proxy.server.connections) == 0
    finally:
        proxy.stop()
