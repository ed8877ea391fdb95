"""The stats channel: one request, one answer, over a private Unix socket.

A worker (1..N-1) serves :class:`StatsChannelServer` on ``<dir>/worker-<i>.sock`` in a
directory only the proxy's user can enter (mode 0700, made by worker 0).  A request is
one line, ``dump`` or ``reset``; the answer is the JSON document of
:mod:`dbproxy.observe.dump` (or ``{"reset":true}``), then the worker closes the
connection.  The snapshot is taken on the worker's loop (the aggregator is not
thread-safe); encoding and decoding run in threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable

from dbproxy.observe.dump import WorkerDump, decode_dump, encode_dump

log = logging.getLogger(__name__)

DUMP = b"dump"
RESET = b"reset"
RESET_DONE = b'{"reset":true}'
_REQUEST_TIMEOUT_S = 5.0


class ChannelError(Exception):
    """A worker did not answer (not running, timed out, or answered nonsense)."""


class StatsChannelServer:
    def __init__(
        self, path: str, *, dump: Callable[[], WorkerDump], reset: Callable[[], None]
    ) -> None:
        self.path = path
        self._dump = dump
        self._reset = reset
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)  # left by a worker that died in this slot
        self._server = await asyncio.start_unix_server(self._serve, self.path)
        os.chmod(self.path, 0o600)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(_REQUEST_TIMEOUT_S):
                request = (await reader.readline()).strip()
            if request == DUMP:
                dump = self._dump()  # on the loop
                writer.write(await asyncio.to_thread(encode_dump, dump))
            elif request == RESET:
                self._reset()
                writer.write(RESET_DONE)
            await writer.drain()
        except (ConnectionError, TimeoutError):
            pass
        except Exception:
            log.exception("stats channel: request failed")
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


async def _request(path: str, request: bytes, timeout_s: float) -> bytes:
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_unix_connection(path)
            try:
                writer.write(request + b"\n")
                await writer.drain()
                data = await reader.read()
            finally:
                writer.close()
                with contextlib.suppress(ConnectionError):
                    await writer.wait_closed()
    except TimeoutError:
        raise ChannelError(f"{path}: no answer within {timeout_s:g}s") from None
    except OSError as exc:
        raise ChannelError(f"{path}: {exc.strerror or exc}") from None
    if not data:
        raise ChannelError(f"{path}: empty answer")
    return data


async def fetch_dump(path: str, timeout_s: float) -> WorkerDump:
    data = await _request(path, DUMP, timeout_s)
    try:
        return await asyncio.to_thread(decode_dump, data)
    except ValueError as exc:
        raise ChannelError(f"{path}: {exc}") from None


async def request_reset(path: str, timeout_s: float) -> None:
    if await _request(path, RESET, timeout_s) != RESET_DONE:
        raise ChannelError(f"{path}: unexpected answer to reset")
