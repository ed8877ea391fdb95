"""Worker 0: the process ``dbproxy run --workers N`` starts.

1. It listens first (``SO_REUSEPORT``), so ``--listen HOST:0`` resolves to one real
   port, and starts its HTTP server;
2. it makes a private directory (mode 0700) for the stats channels and starts workers
   1..N-1 (multiprocessing, "spawn": a fresh interpreter, no forked loop or threads),
   each given the frozen configuration with the resolved port; they listen on the same
   address with ``SO_REUSEPORT`` and the kernel spreads new connections over all N;
3. signals: SIGTERM/SIGINT stop every worker (each stops accepting and lets its sessions
   finish within ``--shutdown-timeout``) and then itself; SIGHUP reopens its own query
   log and is forwarded to every worker, which reopens its own;
4. a worker that dies (non-zero status, killed by a signal) is logged and restarted, at
   most :data:`MAX_RESTARTS` times per :data:`RESTART_WINDOW_S` per slot (later restarts
   wait for the window); a worker that exits with status 0 was asked to and stays down.

Workers never outlive it: they ask the kernel for SIGTERM when their parent dies
(``PR_SET_PDEATHSIG`` on Linux) and also watch multiprocessing's parent sentinel.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
import time
from collections import deque
from collections.abc import Callable
from multiprocessing.process import BaseProcess

from dbproxy.config import ConfigSource, ProxyConfig
from dbproxy.observe.dump import WorkerDump
from dbproxy.workers.channel import ChannelError, fetch_dump, request_reset

log = logging.getLogger(__name__)

#: restarts allowed per worker slot within RESTART_WINDOW_S
MAX_RESTARTS = 5
RESTART_WINDOW_S = 60.0
#: how long worker 0 waits for another worker's statistics at a scrape
FETCH_TIMEOUT_S = 2.0
#: beyond --shutdown-timeout, how long worker 0 waits for workers before SIGKILL
EXIT_GRACE_S = 5.0


class WorkerPool:
    """Workers 1..N-1: start, watch, restart, signal, stop; fetch their statistics."""

    def __init__(
        self,
        count: int,
        *,
        fetch_timeout_s: float = FETCH_TIMEOUT_S,
        max_restarts: int = MAX_RESTARTS,
        restart_window_s: float = RESTART_WINDOW_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._count = count
        self._fetch_timeout_s = fetch_timeout_s
        self._max_restarts = max_restarts
        self._window_s = restart_window_s
        self._clock = clock
        self.directory = tempfile.mkdtemp(prefix="dbproxy-workers-")  # mode 0700
        self._config: ProxyConfig | None = None
        self._unix_socket: socket.socket | None = None
        #: where the configuration came from and what it gave (SIGHUP reloads in workers)
        self.source: ConfigSource | None = None
        self.loaded: ProxyConfig | None = None
        self._procs: dict[int, BaseProcess] = {}
        self._recent_restarts: dict[int, deque[float]] = {}
        self._retry: dict[int, asyncio.TimerHandle] = {}
        self._stopping = False
        self._all_exited = asyncio.Event()
        self.restarts = 0

    @property
    def count(self) -> int:
        return self._count

    def socket_path(self, index: int) -> str:
        return os.path.join(self.directory, f"worker-{index}.sock")

    @property
    def pids(self) -> dict[int, int]:
        return {i: p.pid for i, p in self._procs.items() if p.pid is not None}

    def start(self, config: ProxyConfig, *, unix_socket: socket.socket | None = None) -> None:
        """Start workers 1..N-1 with ``config`` (its listen port already resolved) and
        worker 0's listening Unix socket (``--listen-unix``), which they inherit."""
        self._config = config
        self._unix_socket = unix_socket
        for index in range(1, self._count):
            self._spawn(index)

    def reconfigure(self, config: ProxyConfig, loaded: ProxyConfig) -> None:
        """After a SIGHUP reload: what a restarted worker starts with."""
        self._config = config
        self.loaded = loaded

    def _spawn(self, index: int) -> None:
        assert self._config is not None
        from dbproxy.workers.worker import worker_main

        ctx = multiprocessing.get_context("spawn")
        proc = ctx.Process(
            target=worker_main,
            args=(
                self._config,
                index,
                self.socket_path(index),
                os.getpid(),
                self._unix_socket,
                None if self.source is None or self.loaded is None else (self.source, self.loaded),
            ),
            name=f"dbproxy-worker-{index}",
            daemon=True,  # multiprocessing's exit handler also ends it
        )
        # the child starts with SIGHUP blocked (the mask survives fork and exec) and
        # unblocks it once its handler is in place: a SIGHUP forwarded while it starts
        # would otherwise kill it (default action); this way it is delivered late
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
        try:
            proc.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        self._procs[index] = proc
        self._all_exited.clear()
        asyncio.get_running_loop().add_reader(proc.sentinel, self._exited, index, proc)
        log.info("dbproxy worker %d started (pid %s)", index, proc.pid)

    def _exited(self, index: int, proc: BaseProcess) -> None:
        loop = asyncio.get_running_loop()
        loop.remove_reader(proc.sentinel)
        proc.join(1.0)
        code, pid = proc.exitcode, proc.pid
        if self._procs.get(index) is proc:
            del self._procs[index]
        with contextlib.suppress(ValueError):
            proc.close()
        how = f"killed by signal {-code}" if code is not None and code < 0 else f"status {code}"
        if self._stopping or code == 0:
            log.info("dbproxy worker %d (pid %s) exited (%s)", index, pid, how)
        else:
            log.warning("dbproxy worker %d (pid %s) died (%s)", index, pid, how)
            self._restart_later(index)
        if not self._procs:
            self._all_exited.set()

    def _restart_later(self, index: int) -> None:
        now = self._clock()
        recent = self._recent_restarts.setdefault(index, deque())
        while recent and now - recent[0] >= self._window_s:
            recent.popleft()
        if len(recent) < self._max_restarts:
            recent.append(now)
            self.restarts += 1
            log.info("dbproxy restarting worker %d", index)
            try:
                self._spawn(index)
            except OSError as exc:  # out of processes, memory…: try again later
                log.error("dbproxy cannot start worker %d: %s", index, exc)
                self._retry[index] = asyncio.get_running_loop().call_later(
                    self._window_s / self._max_restarts, self._retry_now, index
                )
            return
        delay = self._window_s - (now - recent[0])
        log.error(
            "dbproxy worker %d died %d times within %.0fs: next restart in %.0fs",
            index,
            len(recent),
            self._window_s,
            delay,
        )
        self._retry[index] = asyncio.get_running_loop().call_later(delay, self._retry_now, index)

    def _retry_now(self, index: int) -> None:
        self._retry.pop(index, None)
        if not self._stopping and index not in self._procs:
            self._restart_later(index)

    def signal_all(self, sig: signal.Signals) -> int:
        """Send ``sig`` to every running worker; returns how many."""
        sent = 0
        for proc in list(self._procs.values()):
            if proc.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, sig)
                    sent += 1
        return sent

    def begin_stop(self) -> None:
        """No more restarts; SIGTERM to every worker (each drains its own sessions)."""
        self._stopping = True
        for handle in self._retry.values():
            handle.cancel()
        self._retry.clear()
        self.signal_all(signal.SIGTERM)

    async def wait_stopped(self, timeout_s: float) -> None:
        """Wait for every worker to exit; SIGKILL what is left after ``timeout_s``."""
        if self._procs:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._all_exited.wait(), timeout_s)
        stuck = 0
        for index, proc in list(self._procs.items()):
            log.warning("dbproxy worker %d (pid %s) did not exit: killing it", index, proc.pid)
            proc.kill()
            await asyncio.to_thread(proc.join, 5.0)
            stuck += proc.exitcode is None
            with contextlib.suppress(ValueError):
                asyncio.get_running_loop().remove_reader(proc.sentinel)
                proc.close()
        self._procs.clear()
        self.cleanup()
        if not stuck:  # a process still alive keeps the tracker (and the wait) going
            await asyncio.to_thread(_stop_resource_tracker)

    def cleanup(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)

    # ------------------------------------------------------------------ statistics
    async def dumps(self) -> tuple[list[WorkerDump], int]:
        results = await asyncio.gather(
            *(
                fetch_dump(self.socket_path(i), self._fetch_timeout_s)
                for i in range(1, self._count)
            ),
            return_exceptions=True,
        )
        dumps: list[WorkerDump] = []
        failed = 0
        for index, result in enumerate(results, start=1):
            if isinstance(result, WorkerDump):
                dumps.append(result)
            else:
                failed += 1
                level = logging.DEBUG if isinstance(result, ChannelError) else logging.WARNING
                log.log(level, "no statistics from worker %d: %s", index, result)
        return dumps, failed

    async def reset(self) -> int:
        results = await asyncio.gather(
            *(
                request_reset(self.socket_path(i), self._fetch_timeout_s)
                for i in range(1, self._count)
            ),
            return_exceptions=True,
        )
        return sum(1 for r in results if isinstance(r, BaseException))


def _stop_resource_tracker() -> None:
    """Stop and reap the helper process "spawn" started (multiprocessing leaves it to
    exit on its own after us, unreaped: a zombie where PID 1 does not reap)."""
    from multiprocessing import resource_tracker

    tracker = getattr(resource_tracker, "_resource_tracker", None)
    stop = getattr(tracker, "_stop", None)
    if stop is not None:
        with contextlib.suppress(Exception):
            stop()


async def serve_workers(config: ProxyConfig, source: ConfigSource | None = None) -> None:
    """``dbproxy run --workers N`` (N > 1): this process is worker 0 and the supervisor."""
    from dbproxy.app import App, tune_gc

    pool = WorkerPool(config.workers)
    pool.source, pool.loaded = source, config
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    # before start (as serve() does): a SIGTERM while it starts stops it once started
    # instead of killing it by the default action; a SIGHUP waits, blocked, for its handler
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
    try:
        app = App(config, peers=pool)
        tune_gc()  # before the listeners accept (see tune_gc); the workers do their own
        await app.start()
    except BaseException:
        pool.cleanup()
        raise
    try:
        listeners = app.proxy.listeners
        pool.start(
            dataclasses.replace(
                config, listen=app.proxy.address, listen_also=tuple(listeners.addresses[1:])
            ),
            unix_socket=listeners.unix_socket,
        )
    except BaseException:
        pool.begin_stop()
        await asyncio.gather(app.stop(0), pool.wait_stopped(EXIT_GRACE_S))
        raise
    reloader = app.reloader(source, config) if source is not None else None

    def hangup() -> None:
        app.hangup(reloader)  # query log reopened, configuration and TLS files reloaded
        if reloader is not None:
            pool.reconfigure(
                dataclasses.replace(app.config, listen=app.proxy.address), reloader.loaded
            )
        sent = pool.signal_all(signal.SIGHUP)  # each worker reloads on its own
        what = "query log reopened" if app.query_log is not None else "no query log to reopen"
        log.info("SIGHUP: %s; forwarded to %d worker(s)", what, sent)

    loop.add_signal_handler(signal.SIGHUP, hangup)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})  # one sent meanwhile: now
    log.info("dbproxy running %d worker processes on %s", config.workers, app.proxy.address)
    await stop.wait()
    log.info("dbproxy stopping %d worker process(es)", len(pool.pids) + 1)
    pool.begin_stop()
    grace = app.config.shutdown_timeout + EXIT_GRACE_S  # as reloaded, if it was
    await asyncio.gather(app.stop(), pool.wait_stopped(grace))
    log.info("dbproxy stopped")
