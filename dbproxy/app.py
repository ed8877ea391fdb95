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
import gc
import logging
import os
import signal
import socket
import time
from collections.abc import Callable, Sequence

from prometheus_client import CollectorRegistry

from dbproxy import __version__, speedups
from dbproxy.config import ConfigSource, ProxyConfig
from dbproxy.errors import ConfigError
from dbproxy.export.access import AccessGuard, AccessPolicy, is_loopback
from dbproxy.export.api import RowExtras
from dbproxy.export.control import ControlCollector, status_routes
from dbproxy.export.findings import FindingsCollector, FindingsEndpoints
from dbproxy.export.http import HttpServer, Route, export_routes
from dbproxy.export.notify import Notifier, NotifierSettings, build_notifier
from dbproxy.export.otel import Tracing, TracingSettings, build_tracing
from dbproxy.export.profiling import Profiler, ProfilingSettings, start_profiling
from dbproxy.export.prometheus import DbproxyCollector
from dbproxy.export.querylog import QueryLog, open_query_log
from dbproxy.export.workers import WorkersCollector
from dbproxy.inspect.activity import ActivitySampler, ActivitySettings
from dbproxy.inspect.inspector import Inspector, InspectSettings
from dbproxy.observe.aggregator import Aggregator, StatementNote
from dbproxy.observe.detector import DetectorSettings
from dbproxy.observe.dump import (
    ProxyTotals,
    QueryLogTotals,
    SinkTotals,
    SpanTotals,
    WorkerDump,
    counters_of,
)
from dbproxy.observe.history import Bucket, Key
from dbproxy.observe.history_store import open_store
from dbproxy.observe.regression import RegressionMonitor
from dbproxy.observe.sink import QueueSink
from dbproxy.protocol.events import Event
from dbproxy.proxy.server import ProxyServer
from dbproxy.reload import Reloader
from dbproxy.sql.analyze import load_dialect
from dbproxy.sql.cache import Fingerprinter
from dbproxy.workers.merged import MergedStats, Peers

log = logging.getLogger(__name__)

#: How often the drain task moves events from the sink to the aggregator.
DRAIN_INTERVAL_S = 0.1
#: Events handed to the consumers between two turns of the event loop.
DISPATCH_SLICE = 512
#: How often the regression detector evaluates (real seconds).
DETECT_INTERVAL_S = 5.0

Consumer = Callable[[list[Event]], None]
NoteConsumer = Callable[[list[Event], "dict[int, StatementNote] | None"], None]


class App:
    """One proxy process.  With ``--workers N`` (see :mod:`dbproxy.workers`): worker 0
    gets ``peers`` (the other workers) and serves their merged statistics; workers
    1..N-1 get ``serve_http=False`` and serve theirs on a stats channel instead."""

    def __init__(
        self,
        config: ProxyConfig,
        *,
        consumers: Sequence[Consumer] = (),
        worker_index: int = 0,
        peers: Peers | None = None,
        serve_http: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.worker_index = worker_index
        self._serve_http = serve_http
        self.clock = clock  # history and detector time (tests inject a fake one)
        self.sink = QueueSink(config.sink_capacity)
        self.fingerprinter = Fingerprinter()
        load_dialect()  # here, not in the drain at the first statement (a ~12 ms stall)
        self.aggregator = Aggregator(
            fingerprinter=self.fingerprinter, max_fingerprints=config.max_fingerprints
        )
        self.proxy = ProxyServer(config, self.sink, worker_index=worker_index)
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
        # with other workers, /metrics and /api read every worker's statistics, merged
        self.merged: MergedStats | None = None
        if peers is not None:
            self.merged = MergedStats(
                self.local_dump,
                self.aggregator.reset,
                peers,
                tracing=self.tracing is not None,
                query_log=self.query_log is not None,
            )
            self.registry.register(WorkersCollector(self.merged))
        self.collector = DbproxyCollector(
            self.merged or self.aggregator,
            proxy=self.merged.proxy if self.merged else self.proxy.stats,
            sink=self.merged.sink if self.merged else self.sink,
            fingerprinter=self.merged.fingerprinter if self.merged else self.fingerprinter,
            max_fingerprints=config.metrics_max_fingerprints,
            metrics_tags=config.metrics_tags,
            spans=self.merged.spans
            if self.merged
            else (self.tracing.counts if self.tracing is not None else None),
            query_log=self.merged.query_log if self.merged else self.query_log,
        )
        self.registry.register(self.collector)
        from dbproxy.export.limits import LimitsCollector

        self.registry.register(LimitsCollector(self.proxy.limit_stats))
        self.inspector = _build_inspector(config, self.fingerprinter)
        extra_routes: list[Route] = []
        row_extras: RowExtras | None = None
        if self.inspector is not None:
            from dbproxy.export.inspect import InspectCollector, inspect_routes_for, row_extras_for

            self.registry.register(InspectCollector(self.inspector))
            extra_routes = inspect_routes_for(self.inspector)
            row_extras = row_extras_for(self.inspector)
        self.activity = _build_activity(config, self.inspector, self.fingerprinter, self.proxy)
        if self.activity is not None:
            from dbproxy.export.activity import ActivityCollector, activity_routes_for

            self.registry.register(ActivityCollector(self.activity))
            extra_routes.extend(activity_routes_for(self.activity))
            if self.tracing is not None:
                self.tracing.builder.blocked_by = self.activity.blocked_by
            if self.inspector is not None:
                self.inspector.blocked_by = self.activity.blocked_by
            if self.query_log is not None:
                self.query_log.wait_events = self.activity.wait_events
                self.query_log.blocked_by = self.activity.blocked_by
        self.regression, self.notifier = self._build_regression(config)
        if self.regression is not None:
            extra_routes.extend(
                FindingsEndpoints(
                    self.regression,
                    api_token=lambda: self.config.api_token,  # SIGHUP may change it
                    wait_events=self.activity.top_wait_events if self.activity else None,
                ).routes()
            )
            if self.inspector is not None:  # plans and rows scanned feed the detector
                detector = self.regression.detector
                self.inspector.on_plan_change.append(
                    lambda c: detector.note_plan_change(
                        fingerprint=c.fingerprint,
                        database=c.database,
                        at_s=c.at_s,
                        before_plan_id=c.before_plan_id,
                        after_plan_id=c.after_plan_id,
                        before_summary=c.before_summary,
                        after_summary=c.after_summary,
                    )
                )
                self.inspector.on_rows_scanned.append(
                    lambda fp, db, at, scanned: detector.note_rows_scanned(
                        fingerprint=fp, database=db, at_s=at, rows_scanned_per_call=scanned
                    )
                )
        routes = export_routes(
            stats=self.merged or self.aggregator,
            ready=self.proxy.check_upstream,
            registry=self.registry,
            collector=self.collector,
            api_token=lambda: self.config.api_token,  # SIGHUP may change it
            ui=config.ui,
            trace_url_template=config.ui_trace_url,
            extra_routes=extra_routes,
            row_extras=row_extras,
        )
        if self.merged is not None:
            routes = self.merged.wrap_routes(routes)
        self.access = AccessGuard(access_policy(config), bound=lambda: self.http.address)
        routes.append(self.access.login_route())
        self._reloader: Reloader | None = None  # set when SIGHUP handling is installed
        routes.extend(status_routes(self.access, lambda: self._reloader))
        self.registry.register(ControlCollector(self.access, lambda: self._reloader))
        self.http = HttpServer(
            config.http_listen.host, config.http_listen.port, routes, guard=self.access.check
        )
        # consumers that take the tracing notes, then plain ones (tests' recorders)
        self._note_consumers: list[NoteConsumer] = [self.aggregator.consume]
        if self.query_log is not None:
            self._note_consumers.append(self.query_log.consume)
        if self.inspector is not None:
            self._note_consumers.append(self.inspector.consume)
        if self.regression is not None:
            self._note_consumers.append(self.regression.consume)
        self._consumers: list[Consumer] = list(consumers)
        self.consumer_errors = 0
        self._stopping = asyncio.Event()
        self._drain_task: asyncio.Task[None] | None = None
        self._drain_lock = asyncio.Lock()
        self._draining_stopped = False
        self.profiler: Profiler | None = None
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
        if self._serve_http:
            await self._start_http()
        if self.tracing is not None:
            log.info("dbproxy exporting statement spans to %s", self.tracing.destination)
        if self.config.pyroscope_server_address is not None:
            self.profiler = start_profiling(self._profiling_settings(self.config))
        if self.regression is not None and self.regression.store is None:
            log.info(
                "history kept in memory only (no day-ago baseline, lost on restart); "
                "--state-dir DIR keeps 26 h of minutes and 14 days of hours"
            )
        self._drain_task = asyncio.get_running_loop().create_task(self._drain_forever())
        if self.regression is not None:
            self._detect_task = asyncio.get_running_loop().create_task(self._detect_forever())
        if self.inspector is not None:
            self.inspector.start()
            log.info("dbproxy inspecting plans through its side connection")
        if self.activity is not None:
            self.activity.start()

    async def _start_http(self) -> None:
        try:
            await self.http.start()
        except OSError as exc:
            await self.proxy.shutdown(0)
            reason = os.strerror(exc.errno).lower() if exc.errno else str(exc)
            listen = self.config.http_listen
            raise ConfigError(f"cannot listen on {listen} (--http-listen): {reason}") from None
        log.info("dbproxy %s, observer modules: %s", __version__, speedups.status().describe())
        what = "the web UI, /metrics, /api" if self.config.ui else "/metrics, /api"
        log.info("dbproxy serving %s and health checks on http://%s/", what, self.http.address)
        if not is_loopback(self.http.address.host) and self.config.api_token is None:
            log.warning(
                "HTTP listens on %s without a token: anyone who reaches it reads the API "
                "and the UI; set DBPROXY_API_TOKEN (or --api-token-file)",
                self.http.address,
            )

    def apply_config(self, config: ProxyConfig, changed: Sequence[str]) -> None:
        """SIGHUP (:mod:`dbproxy.reload`): ``config`` is the running configuration with
        the live-changeable ``changed`` settings replaced.  Open sessions keep going; new
        connections read ``self.proxy.config``."""
        self.config = config
        self.proxy.config = config
        if "log_level" in changed:
            logging.getLogger().setLevel(getattr(logging, config.log_level.upper()))
        self.access.update(access_policy(config))
        self.collector.update(
            max_fingerprints=config.metrics_max_fingerprints, metrics_tags=config.metrics_tags
        )
        if self.query_log is not None:
            self.query_log.update(
                log_slow_ms=config.log_slow_ms,
                log_errors=config.log_errors,
                log_sessions=config.log_sessions,
            )

    def reloader(self, source: ConfigSource, loaded: ProxyConfig, *, who: str = "") -> Reloader:
        """What SIGHUP calls: the config file again, applied live where it can be."""
        self._reloader = Reloader(source, loaded, lambda: self.config, self.apply_config, who=who)
        return self._reloader

    def hangup(self, reloader: Reloader | None) -> None:
        """SIGHUP: reopen the query log (logrotate), reload the configuration, then the
        TLS certificates (renewed on disk, or named anew by the reloaded file)."""
        if self.query_log is not None:
            self.query_log.reopen()
        if reloader is not None:
            reloader()
        self.proxy.reload_tls()

    def local_dump(self) -> WorkerDump:
        """This process's statistics and counters (what another worker's merge reads);
        on the loop: the aggregator is not thread-safe."""
        return WorkerDump(
            worker=self.worker_index,
            pid=os.getpid(),
            snapshot=self.aggregator.snapshot(top=None),
            proxy=counters_of(ProxyTotals, self.proxy.stats),
            sink=counters_of(SinkTotals, self.sink),
            fingerprinter=self.fingerprinter.stats,
            spans=None if self.tracing is None else counters_of(SpanTotals, self.tracing.counts),
            query_log=None
            if self.query_log is None
            else counters_of(QueryLogTotals, self.query_log),
        )

    def _profiling_settings(self, config: ProxyConfig) -> ProfilingSettings:
        assert config.pyroscope_server_address is not None
        name = config.service_name or config.otel_env.get("OTEL_SERVICE_NAME", "").strip()
        return ProfilingSettings(
            server_address=config.pyroscope_server_address,
            application_name=name or "dbproxy",
            tags=self._profile_tags(),
            env=config.pyroscope_env,
        )

    def _profile_tags(self) -> dict[str, str]:
        # as Prometheus names this proxy: host and the port of /metrics (worker 0's)
        port = self.http.address.port if self._serve_http else self.config.http_listen.port
        tags = {"instance": f"{socket.gethostname()}:{port}"}
        if self.config.workers > 1:
            tags["worker"] = str(self.worker_index)
        return tags

    async def drain(self) -> int:
        """Hand everything in the sink to the consumers; returns how many events.

        Span building (tens of µs per span) runs in a worker thread so the event loop keeps
        relaying bytes meanwhile; the rest (≈ 1 µs per event) runs on the loop, which owns
        the aggregator.  Drains never overlap (the fingerprinter is single-threaded, and
        batches must reach the consumers in order)."""
        async with self._drain_lock:
            events = self.sink.drain()
            if events:
                notes = None
                if self.tracing is not None:
                    # what may get a span, picked on the loop (cheap): usually nothing, and
                    # then no thread is woken (see observe/span_filter.py)
                    picked = self._trace_candidates(events)
                    if picked:
                        notes = await asyncio.to_thread(self._trace, events, picked)
                # in slices, yielding to the loop between them: a 100 ms batch at 30k
                # statements/s is ~10 ms of consumer work, which must not stall relaying
                for start in range(0, len(events), DISPATCH_SLICE):
                    if start:
                        await asyncio.sleep(0)
                    end = start + DISPATCH_SLICE
                    part = events[start:end] if start or end < len(events) else events
                    self._dispatch(part, _slice_notes(notes, start, end))
            return len(events)

    def _trace_candidates(self, events: list[Event]) -> list[int]:
        assert self.tracing is not None
        try:
            return self.tracing.candidates(events)
        except Exception:
            self._consumer_failed("tracing", len(events))
            return []

    def _trace(self, events: list[Event], picked: list[int]) -> dict[int, StatementNote] | None:
        if self.tracing is None:
            return None
        try:  # first: its notes carry span ids (exemplars) and fingerprints
            return self.tracing.consume(events, picked)
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
        if self.activity is not None:
            await self.activity.stop()
        if self.inspector is not None:
            await self.inspector.stop()
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
        if self.profiler is not None:
            await asyncio.to_thread(self.profiler.stop)

    async def run_until_stopped(self) -> None:
        await self._stopping.wait()
        await self.stop()


def _slice_notes(
    notes: dict[int, StatementNote] | None, start: int, end: int
) -> dict[int, StatementNote] | None:
    """The notes of ``events[start:end]``, re-keyed by index in that slice."""
    if not notes:
        return notes
    if start == 0 and all(i < end for i in notes):
        return notes
    return {i - start: n for i, n in notes.items() if start <= i < end}


def _build_inspector(config: ProxyConfig, fingerprinter: Fingerprinter) -> Inspector | None:
    """The side connection's inspector, when ``inspect_dsn`` is set."""
    if not config.inspect_dsn:
        return None
    return Inspector(
        InspectSettings(
            dsn=config.inspect_dsn,
            explain_slow_ms=config.explain_slow_ms,
            sample_analyze=config.sample_analyze,
            samples_per_minute=config.sample_analyze_per_minute,
            plan_interval_s=config.inspect_plan_interval,
            plans_per_minute=config.inspect_plans_per_minute,
            interval_s=config.inspect_interval,
            top=config.inspect_top,
            statement_timeout_ms=config.inspect_statement_timeout_ms,
            exclude=config.inspect_exclude,
            max_keys=config.max_fingerprints,
        ),
        fingerprinter=fingerprinter,
    )


def _build_activity(
    config: ProxyConfig,
    inspector: Inspector | None,
    fingerprinter: Fingerprinter,
    proxy: ProxyServer,
) -> ActivitySampler | None:
    """The pg_stat_activity sampler (load, blocking): on the inspector's side connection,
    over this process's sessions."""
    if inspector is None or config.sample_activity_interval is None:
        return None
    return ActivitySampler(
        ActivitySettings(
            interval_s=config.sample_activity_interval,
            blocked_ms=config.blocked_ms,
            max_fingerprints=config.metrics_max_fingerprints,
        ),
        pools=inspector.pools,
        fingerprinter=fingerprinter,
        sessions=lambda: [conn.session for conn in proxy.connections],
    )


def access_policy(config: ProxyConfig) -> AccessPolicy:
    return AccessPolicy(
        token=config.api_token,
        allowed_hosts=config.http_allowed_hosts,
        metrics_auth=config.metrics_auth,
    )


#: The cyclic collector's generation thresholds in a serving process (CPython's default
#: is (700, 10, 10)).  See :func:`tune_gc`.
GC_THRESHOLDS: tuple[int, int, int] = (10_000, 10, 10)


def tune_gc() -> None:
    """The collector policy of a serving process, applied once its App is built and
    before its listeners accept (a connection is a reference cycle: one frozen while
    alive would never be collected).

    ``gc.freeze()`` moves what start-up built (modules, sqlglot's tables, the
    configuration: ~72,000 objects) out of the collector's sight, so its full collections
    walk only what the proxy allocated since (a full collection of that heap took ~9 ms,
    during which nothing is relayed).

    The data path allocates two container objects per statement (its run and its event);
    they live until the drain hands them to the consumers, up to 100 ms later, thousands
    at a time.  With CPython's young-generation threshold of 700 a collection ran every
    ~350 statements and walked them all, then again in the middle generation: ~1,300
    instructions per pgbench transaction in the session machine
    (``benchmarks.session_loop``-like loop, 2,000 transactions per drain).  At 10,000 most
    of them are freed by reference counting (the drain) before a collection sees them.
    Nothing on the data path makes reference cycles; what does (asyncio tasks, exceptions)
    is still collected, in larger batches."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


async def serve(config: ProxyConfig, source: ConfigSource | None = None) -> None:
    app = App(config)
    tune_gc()  # before the listeners accept: a live connection must not be frozen
    loop = asyncio.get_running_loop()
    # before start: a signal that arrives while it starts (after "listening on") is
    # handled once it has started, rather than killing it by the default action
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, app.request_stop)
    reloader = app.reloader(source, config) if source is not None else None
    loop.add_signal_handler(signal.SIGHUP, app.hangup, reloader)
    await app.start()
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


def run(config: ProxyConfig, source: ConfigSource | None = None) -> None:
    """``source``: where ``config`` came from, so SIGHUP can reload it."""
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        if config.workers > 1:
            from dbproxy.workers.supervisor import serve_workers

            runner.run(serve_workers(config, source))
        else:
            runner.run(serve(config, source))
