"""Composition root: builds the sink, proxy, aggregator, exporters and HTTP server, and
owns their lifecycle. Nothing else constructs these objects or reads the configuration.

    data path:  ProxyServer ──events──▶ QueueSink (bounded, counts drops)
    off path:   drain task (every DRAIN_INTERVAL_S):
                  1. Tracing (spans, when configured) ──notes (fingerprint, span ids)──▶
                  2. Aggregator (stats, exemplars) and QueryLog (JSON lines, own thread)
    scrape:     HttpServer ── /metrics ─▶ DbproxyCollector ─▶ Aggregator.snapshot()
                           ── /api/…   ─▶ api.py           ─▶ Aggregator.snapshot()
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable, Sequence

from prometheus_client import CollectorRegistry

from dbproxy.config import ProxyConfig
from dbproxy.errors import ConfigError
from dbproxy.export.findings import FindingsCollector, FindingsEndpoints
from dbproxy.export.http import HttpServer, export_routes
from dbproxy.export.notify import Notifier, NotifierSettings, build_notifier
from dbproxy.export.otel import Tracing, TracingSettings, build_tracing
from dbproxy.export.prometheus import DbproxyCollector
from dbproxy.export.querylog import QueryLog, open_query_log
from dbproxy.observe.aggregator import Aggregator, StatementNote
from dbproxy.observe.detector import DetectorSettings
from dbproxy.observe.history import Bucket, Key
from dbproxy.observe.history_store import open_store
from dbproxy.observe.regression import RegressionMonitor
from dbproxy.observe.sink import QueueSink
from dbproxy.protocol.events import Event
from dbproxy.proxy.server import ProxyServer
from dbproxy.sql.cache import Fingerprinter

log = logging.getLogger(__name__)

#: How often the drain task moves events from the sink to the aggregator.
DRAIN_INTERVAL_S = 0.1
#: How often the regression detector evaluates (real seconds).
DETECT_INTERVAL_S = 5.0

Consumer = Callable[[list[Event]], None]
NoteConsumer = Callable[[list[Event], "dict[int, StatementNote] | None"], None]


class App:
    def __init__(
        self,
        config: ProxyConfig,
        *,
        consumers: Sequence[Consumer] = (),
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.clock = clock  # history and detector time (tests inject a fake one)
        self.sink = QueueSink(config.sink_capacity)
        self.fingerprinter = Fingerprinter()
        self.aggregator = Aggregator(
            fingerprinter=self.fingerprinter, max_fingerprints=config.max_fingerprints
        )
        self.proxy = ProxyServer(config, self.sink)
        self.tracing: Tracing | None = build_tracing(
            TracingSettings(
                trace=config.trace,
                otlp_endpoint=config.otlp_endpoint,
                otlp_protocol=config.otlp_protocol,
                service_name=config.service_name,
                untraced_ratio=config.trace_untraced_ratio,
                slow_ms=config.trace_slow_ms,
                proxy_span=config.trace_proxy_span,
                record_rows=config.trace_rows,
                queue_size=config.trace_queue_size,
            ),
            config.otel_env,
            fingerprinter=self.fingerprinter,
            upstream_host=config.upstream.host,
            upstream_port=config.upstream.port,
        )
        try:
            self.query_log: QueryLog | None = open_query_log(
                config.query_log,
                fingerprinter=self.fingerprinter,
                log_slow_ms=config.log_slow_ms,
                log_errors=config.log_errors,
                log_sessions=config.log_sessions,
            )
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise ConfigError(
                f"cannot open query log {config.query_log} (--query-log): {reason}"
            ) from None
        self.registry = CollectorRegistry()
        self.collector = DbproxyCollector(
            self.aggregator,
            proxy=self.proxy.stats,
            sink=self.sink,
            fingerprinter=self.fingerprinter,
            max_fingerprints=config.metrics_max_fingerprints,
            metrics_tags=config.metrics_tags,
            spans=self.tracing.counts if self.tracing is not None else None,
            query_log=self.query_log,
        )
        self.registry.register(self.collector)
        self.regression, self.notifier = self._build_regression(config)
        self.http = HttpServer(
            config.http_listen.host,
            config.http_listen.port,
            export_routes(
                stats=self.aggregator,
                ready=self.proxy.check_upstream,
                registry=self.registry,
                collector=self.collector,
                api_token=config.api_token,
                ui=config.ui,
                trace_url_template=config.ui_trace_url,
                extra_routes=FindingsEndpoints(self.regression, api_token=config.api_token).routes()
                if self.regression is not None
                else (),
            ),
        )
        # consumers that take the tracing notes, then plain ones (tests' recorders)
        self._note_consumers: list[NoteConsumer] = [self.aggregator.consume]
        if self.query_log is not None:
            self._note_consumers.append(self.query_log.consume)
        if self.regression is not None:
            self._note_consumers.append(self.regression.consume)
        self._consumers: list[Consumer] = list(consumers)
        self.consumer_errors = 0
        self._stopping = asyncio.Event()
        self._drain_task: asyncio.Task[None] | None = None
        self._drain_lock = asyncio.Lock()
        self._draining_stopped = False
        self._detect_task: asyncio.Task[None] | None = None
        # (minute, the day-ago window read for it): read once a minute
        self._day_ago: tuple[int, dict[Key, Bucket] | None] | None = None

    def _build_regression(
        self, config: ProxyConfig
    ) -> tuple[RegressionMonitor | None, Notifier | None]:
        if not config.detect:
            return None, None
        store = None
        if config.state_dir:
            store = open_store(config.state_dir, clock=self.clock)
        monitor = RegressionMonitor(
            fingerprinter=self.fingerprinter,
            settings=DetectorSettings(
                window_s=config.detect_window,
                baselines=config.detect_baseline,
                min_calls=config.detect_min_calls,
                min_latency_s=config.detect_min_latency_ms / 1000,
                latency_ratio=config.detect_latency_ratio,
            ),
            store=store,
            clock=self.clock,
            n_plus_one_min=config.n_plus_one_min,
            max_fingerprints=config.max_fingerprints,
        )
        notifier = build_notifier(
            NotifierSettings(
                slack_url=config.slack_webhook_url,
                webhook_url=config.webhook_url,
                public_url=config.public_url,
                runbook_url=config.runbook_url,
                cooldown_s=config.notify_cooldown,
            ),
            clock=self.clock,
        )
        if notifier is not None:
            monitor.detector.listeners.append(notifier.finding_changed)
        self.registry.register(FindingsCollector(monitor, notifier))
        return monitor, notifier

    async def detect(self, *, force: bool = False) -> int:
        """One evaluation (at most one a minute unless ``force``; the day-ago window is
        read from the store off the loop, once a minute); returns how many findings it
        opened."""
        monitor = self.regression
        if monitor is None:
            return 0
        now = self.clock()
        day_ago = None
        if monitor.store is not None and "day" in monitor.settings.baselines:
            minute = int(now // 60)
            if self._day_ago is None or self._day_ago[0] != minute:
                window = await asyncio.to_thread(monitor.day_ago, now)
                self._day_ago = (minute, window)
            day_ago = self._day_ago[1]
        async with self._drain_lock:  # no batch meanwhile: the sink buffers (bounded)
            steps = monitor.tick_steps(now, day_ago=day_ago, force=force)
            while True:
                try:
                    next(steps)
                except StopIteration as done:
                    return len(done.value)
                await asyncio.sleep(0)  # relay bytes between chunks of fingerprints

    async def _detect_forever(self) -> None:
        while not self._draining_stopped:
            await asyncio.sleep(DETECT_INTERVAL_S)
            try:
                await self.detect()
            except Exception:
                self._consumer_failed("detector", 0)

    async def start(self) -> None:
        await self.proxy.start()
        try:
            await self.http.start()
        except OSError as exc:
            await self.proxy.shutdown(0)
            reason = os.strerror(exc.errno).lower() if exc.errno else str(exc)
            listen = self.config.http_listen
            raise ConfigError(f"cannot listen on {listen} (--http-listen): {reason}") from None
        what = "the web UI, /metrics, /api" if self.config.ui else "/metrics, /api"
        log.info("dbproxy serving %s and health checks on http://%s/", what, self.http.address)
        if self.tracing is not None:
            log.info("dbproxy exporting statement spans to %s", self.tracing.destination)
        if self.regression is not None and self.regression.store is None:
            log.info(
                "history kept in memory only (no day-ago baseline, lost on restart); "
                "--state-dir DIR keeps 26 h of minutes and 14 days of hours"
            )
        self._drain_task = asyncio.get_running_loop().create_task(self._drain_forever())
        if self.regression is not None:
            self._detect_task = asyncio.get_running_loop().create_task(self._detect_forever())

    async def drain(self) -> int:
        """Hand everything in the sink to the consumers; returns how many events.

        Span building (tens of µs per span) runs in a worker thread so the event loop keeps
        relaying bytes meanwhile; the rest (≈ 1 µs per event) runs on the loop, which owns
        the aggregator.  Drains never overlap (the fingerprinter is single-threaded, and
        batches must reach the consumers in order)."""
        async with self._drain_lock:
            events = self.sink.drain()
            if events:
                notes = await asyncio.to_thread(self._trace, events) if self.tracing else None
                self._dispatch(events, notes)
            return len(events)

    def _trace(self, events: list[Event]) -> dict[int, StatementNote] | None:
        if self.tracing is None:
            return None
        try:  # first: its notes carry span ids (exemplars) and fingerprints
            return self.tracing.consume(events)
        except Exception:
            self._consumer_failed("tracing", len(events))
            return None

    def _dispatch(self, events: list[Event], notes: dict[int, StatementNote] | None) -> None:
        for consume in self._note_consumers:
            try:
                consume(events, notes)
            except Exception:
                self._consumer_failed(getattr(consume, "__qualname__", "consumer"), len(events))
        for plain in self._consumers:
            try:
                plain(events)
            except Exception:
                self._consumer_failed(getattr(plain, "__qualname__", "consumer"), len(events))

    def _consumer_failed(self, name: str, batch: int) -> None:
        # Observation failures are counted (dbproxy_observer_errors_total) and logged,
        # never fatal: the proxy keeps relaying.
        self.consumer_errors += 1
        self.proxy.stats.observer_errors += 1
        log.exception("%s failed on a batch of %d events", name, batch)

    async def _drain_forever(self) -> None:
        while not self._draining_stopped:
            await asyncio.sleep(DRAIN_INTERVAL_S)
            await self.drain()

    def request_stop(self) -> None:
        self._stopping.set()

    async def stop(self, grace_s: float | None = None) -> None:
        await self.proxy.shutdown(grace_s)
        if self._drain_task is not None:
            # let a drain in flight finish (its batch is in a worker thread), then stop
            self._draining_stopped = True
            await self._drain_task
        await self.drain()  # what the last sessions emitted
        if self._detect_task is not None:
            self._detect_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._detect_task
        if self.regression is not None:  # writes the open minute, joins the store thread
            await asyncio.to_thread(self.regression.close)
        if self.notifier is not None:
            await asyncio.to_thread(self.notifier.close, 5.0)
        if self.tracing is not None:  # exports what is queued; blocks, so off the loop
            await asyncio.to_thread(self.tracing.shutdown)
        if self.query_log is not None:  # writes what the last drain queued
            await asyncio.to_thread(self.query_log.close, 5.0)
        await self.http.close()

    async def run_until_stopped(self) -> None:
        await self._stopping.wait()
        await self.stop()


async def serve(config: ProxyConfig) -> None:
    app = App(config)
    await app.start()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, app.request_stop)
    if app.query_log is not None:
        loop.add_signal_handler(signal.SIGHUP, app.query_log.reopen)  # after logrotate
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
