"""Entry point of workers 1..N-1 (started by :mod:`dbproxy.workers.supervisor`).

A worker is a whole proxy (``App``) without the HTTP server: it accepts on the shared
port, observes its sessions, and answers worker 0's requests for its statistics on its
stats channel.  SIGTERM/SIGINT: graceful shutdown (as a single process does); SIGHUP:
reopen the query log.  It exits when worker 0 goes away.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import multiprocessing
import os
import signal
import socket
import sys

from dbproxy.config import ConfigSource, ProxyConfig
from dbproxy.errors import ConfigError
from dbproxy.logsafe import setup_logging

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent_pid: int) -> None:
    """SIGTERM from the kernel when the parent dies (Linux); if it is already gone, now."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        except (OSError, AttributeError):  # pragma: no cover - no prctl: the sentinel remains
            pass
    if os.getppid() != parent_pid:
        raise SystemExit(0)


def worker_main(  # noqa: PLR0917 - a multiprocessing target: positional args
    config: ProxyConfig,
    index: int,
    socket_path: str,
    parent_pid: int,
    unix_socket: socket.socket | None = None,
    reload_from: tuple[ConfigSource, ProxyConfig] | None = None,
) -> None:
    """``unix_socket``: worker 0's ``--listen-unix`` socket to accept on too;
    ``reload_from``: the configuration's source and what it gave (SIGHUP reloads)."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})  # inherited; until handled
    _die_with_parent(parent_pid)
    setup_logging(
        config.log_level, f"%(asctime)s %(levelname)s worker-{index} %(name)s: %(message)s"
    )
    from dbproxy.app import new_event_loop

    try:
        with asyncio.Runner(loop_factory=new_event_loop) as runner:
            runner.run(_serve(config, index, socket_path, parent_pid, unix_socket, reload_from))
    except ConfigError as exc:
        log.error("dbproxy worker %d: %s", index, exc)
        raise SystemExit(2) from None
    except KeyboardInterrupt:  # SIGINT before the handlers were installed
        pass


async def _serve(  # noqa: PLR0917 - worker_main's arguments, passed on
    config: ProxyConfig,
    index: int,
    socket_path: str,
    parent_pid: int,
    unix_socket: socket.socket | None,
    reload_from: tuple[ConfigSource, ProxyConfig] | None,
) -> None:
    from dbproxy.app import App, tune_gc
    from dbproxy.workers.channel import StatsChannelServer

    app = App(config, worker_index=index, serve_http=False)
    tune_gc()  # before the listeners accept (see tune_gc)
    if unix_socket is not None:  # --listen-unix: accept on worker 0's socket
        app.proxy.listeners.inherit_unix(unix_socket)
    await app.start()
    channel = StatsChannelServer(socket_path, dump=app.local_dump, reset=app.aggregator.reset)
    await channel.start()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, app.request_stop)

    reloader = None
    if reload_from is not None:
        source, loaded = reload_from
        reloader = app.reloader(source, loaded, who=f"worker {index}: ")

    def hangup() -> None:
        app.hangup(reloader)  # query log reopened, configuration reloaded
        if app.query_log is not None:
            log.info("SIGHUP: query log reopened")

    loop.add_signal_handler(signal.SIGHUP, hangup)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})  # one sent meanwhile: now
    parent = multiprocessing.parent_process()
    if parent is not None and parent.sentinel is not None:

        def parent_gone() -> None:
            loop.remove_reader(parent.sentinel)
            log.warning("dbproxy worker 0 is gone: shutting down")
            app.request_stop()

        loop.add_reader(parent.sentinel, parent_gone)
    try:
        await app.run_until_stopped()
    finally:
        await channel.close()
        if os.getppid() != parent_pid:
            # worker 0 died and cannot remove its stats directory: the last one out does
            with contextlib.suppress(OSError):
                os.rmdir(os.path.dirname(socket_path))
    log.info("dbproxy worker %d stopped", index)
