"""Composition root: builds the sink, the proxy and its consumers; owns their lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from dbproxy.config import ProxyConfig
from dbproxy.observe.sink import QueueSink
from dbproxy.proxy.server import ProxyServer

log = logging.getLogger(__name__)

#: How often consumers drain the sink (stats are computed off the data path).
DRAIN_INTERVAL_S = 0.1


class App:
    def __init__(self, config: ProxyConfig) -> None:
        self.config = config
        self.sink = QueueSink(config.sink_capacity)
        self.proxy = ProxyServer(config, self.sink)
        self._stopping = asyncio.Event()

    async def start(self) -> None:
        await self.proxy.start()

    def request_stop(self) -> None:
        self._stopping.set()

    async def _drain_forever(self) -> None:
        # Until the aggregator lands, events are drained and discarded so the sink
        # never fills; drops would otherwise be counted against healthy sessions.
        while True:
            await asyncio.sleep(DRAIN_INTERVAL_S)
            events = self.sink.drain()
            if events and log.isEnabledFor(logging.DEBUG):
                log.debug("drained %d events", len(events))

    async def run_until_stopped(self) -> None:
        drain = asyncio.create_task(self._drain_forever())
        try:
            await self._stopping.wait()
            await self.proxy.shutdown()
        finally:
            drain.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await drain


async def serve(config: ProxyConfig) -> None:
    app = App(config)
    await app.start()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, app.request_stop)
    await app.run_until_stopped()
    log.info("dbproxy stopped")


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop when it is installed, else the standard loop."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on POSIX
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


def run(config: ProxyConfig) -> None:
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        runner.run(serve(config))
