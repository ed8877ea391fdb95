"""Faults on either side, and in the observer: the proxy survives and clients see only
what PostgreSQL itself would have told them."""

from __future__ import annotations

import threading
import time
import urllib.request

import psycopg
import pytest

from dbproxy.pgcluster import PgServer
from dbproxy.protocol.events import Event, SessionClosed
from dbproxy.protocol.session import Session
from tests.fixtures.fix_proxy import RunningProxy, start_proxy


def _metric(proxy: RunningProxy, name: str) -> float:
    proxy.drain_now()
    with urllib.request.urlopen(f"{proxy.http_url}/metrics", timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def test_a_failing_consumer_is_counted_and_clients_are_unaffected(pg_server: PgServer) -> None:
    def boom(events: list[Event]) -> None:
        raise RuntimeError("observer bug")

    proxy = start_proxy(pg_server, consumers=[boom])
    try:
        with psycopg.connect(proxy.dsn(), sslmode="disable", autocommit=True) as conn:
            for i in range(50):
                assert conn.execute("select %s::int * 2", (i,)).fetchone() == (2 * i,)
        assert _metric(proxy, "dbproxy_observer_errors_total") >= 1
        # the other consumers still got every statement
        assert _metric(proxy, "dbproxy_events_dropped_total") == 0
    finally:
        proxy.stop()


def test_a_crashing_session_machine_stops_observing_but_bytes_flow(
    proxy: RunningProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = Session.server_data
    calls = {"n": 0}

    def flaky(self: Session, data: bytes, now_ns: int) -> None:
        calls["n"] += 1
        if calls["n"] == 5:  # somewhere after login, mid-session
            raise ValueError("injected observer fault")
        original(self, data, now_ns)

    monkeypatch.setattr(Session, "server_data", flaky)
    with psycopg.connect(proxy.dsn(), sslmode="disable", autocommit=True) as conn:
        rows = [
            conn.execute("select g from generate_series(1, %s) g", (n,)).fetchall()
            for n in range(1, 30)
        ]
    assert [len(r) for r in rows] == list(range(1, 30))
    assert proxy.server.stats.observer_errors == 1
    closed = [e for e in proxy.wait_closed() if isinstance(e, SessionClosed)]
    assert closed and closed[0].observation_lost


def test_backend_terminated_mid_query(proxy: RunningProxy, pg_server: PgServer) -> None:
    victim = psycopg.connect(proxy.dsn(), sslmode="disable", autocommit=True)
    pid = victim.info.backend_pid
    errors: list[BaseException] = []

    def run() -> None:
        try:
            victim.execute("select pg_sleep(20)")
        except BaseException as exc:
            errors.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    time.sleep(0.5)
    with psycopg.connect(
        pg_server.dsn(user=pg_server.superuser, password=pg_server.superuser_password),
        sslmode="disable",
        autocommit=True,
    ) as admin:
        admin.execute("select pg_terminate_backend(%s)", (pid,))
    worker.join(10)
    victim.close()
    assert errors and isinstance(errors[0], psycopg.OperationalError)
    assert "terminating connection due to administrator command" in str(errors[0])
    events = proxy.wait_closed()
    closed = [e for e in events if isinstance(e, SessionClosed)]
    assert closed[0].interrupted == 1
    # the proxy keeps serving
    with psycopg.connect(proxy.dsn(), sslmode="disable") as conn:
        assert conn.execute("select 'still here'").fetchone() == ("still here",)


def test_client_vanishes_mid_result(proxy: RunningProxy) -> None:
    import socket

    conn = psycopg.connect(proxy.dsn(), sslmode="disable")
    conn.pgconn.send_query(b"select repeat('x', 1000) from generate_series(1, 200000)")
    time.sleep(0.2)
    # cut the client's socket without a Terminate message
    sock = socket.socket(fileno=conn.pgconn.socket)
    sock.shutdown(socket.SHUT_RDWR)
    sock.detach()
    conn.close()
    events = proxy.wait_closed()
    assert any(isinstance(e, SessionClosed) for e in events)
    with psycopg.connect(proxy.dsn(), sslmode="disable") as again:
        assert again.execute("select 1").fetchone() == (1,)
