"""Listeners and upstreams other than one IPv4 address: a Unix socket (``psql -h DIR``),
IPv6, several ``--listen`` addresses, an upstream given as a Unix-socket directory (the
readiness check and the inspector's side connection too), and ``--workers 2`` sharing the
Unix socket."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from dbproxy.config import Address
from dbproxy.errors import ConfigError
from dbproxy.pgcluster import PgServer, free_port
from dbproxy.protocol.events import SessionOpened
from tests.fixtures.fix_proxy import start_proxy
from tests.integration.test_cli import ProxyProcess


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="dbproxy-sock-") as directory:
        yield Path(directory)


def _psql(pg: PgServer, *args: str, host: str, port: int) -> str:
    env = pg.env(base=os.environ)
    env.update(PGHOST=host, PGPORT=str(port))
    result = subprocess.run(
        [pg.tool("psql"), "-X", "-At", "-v", "ON_ERROR_STOP=1", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def _ipv6_available() -> None:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError as exc:
        pytest.fail(f"these tests need IPv6 on the loopback (::1): {exc}")


def test_psql_over_the_unix_socket(pg_server: PgServer, sock_dir: Path) -> None:
    proxy = start_proxy(pg_server, listen_unix=str(sock_dir))
    path = sock_dir / f".s.PGSQL.{proxy.port}"
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert stat.S_ISSOCK(path.stat().st_mode) and mode == 0o777
        # psql -h DIR -p PORT, as with PostgreSQL itself
        assert _psql(pg_server, "-c", "SELECT 40 + 2", host=str(sock_dir), port=proxy.port) == "42"
        opened = [
            e for e in proxy.wait_for(lambda evs: any(isinstance(e, SessionOpened) for e in evs))
        ]
        sessions = [e for e in opened if isinstance(e, SessionOpened)]
        assert sessions[0].client_address == "[local]"
        # the TCP listener is still there
        assert _psql(pg_server, "-c", "SELECT 1", host="127.0.0.1", port=proxy.port) == "1"
    finally:
        proxy.stop()
    assert not path.exists(), "the socket is removed on shutdown"


def test_unix_socket_mode_stale_file_and_a_live_owner(pg_server: PgServer, sock_dir: Path) -> None:
    port = free_port()
    path = sock_dir / f".s.PGSQL.{port}"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))  # a file left by a process that died: nobody listens
    stale.close()
    proxy = start_proxy(
        pg_server,
        listen=Address("127.0.0.1", port),
        listen_unix=str(sock_dir),
        listen_unix_mode=0o770,
    )
    try:
        assert stat.S_IMODE(path.stat().st_mode) == 0o770
        assert _psql(pg_server, "-c", "SELECT 7", host=str(sock_dir), port=port) == "7"
        # a second proxy must not steal the live socket
        with pytest.raises(ConfigError, match="another process is listening"):
            start_proxy(pg_server, listen_unix=str(sock_dir), listen=Address("127.0.0.2", port))
        assert _psql(pg_server, "-c", "SELECT 8", host=str(sock_dir), port=port) == "8"
    finally:
        proxy.stop()
    assert not path.exists()


def test_ipv6_and_several_listen_addresses(pg_server: PgServer) -> None:
    _ipv6_available()
    proxy = start_proxy(pg_server, listen_also=(Address("::1", 0),))
    try:
        assert _psql(pg_server, "-c", "SELECT 'v4'", host="127.0.0.1", port=proxy.port) == "v4"
        # port 0 after the first address: the first address's port
        assert _psql(pg_server, "-c", "SELECT 'v6'", host="::1", port=proxy.port) == "v6"
        with psycopg.connect(pg_server.dsn(host="::1", port=proxy.port)) as conn:
            assert conn.execute("SELECT inet_client_addr() IS NOT NULL").fetchone() == (True,)
        sessions = [e for e in proxy.collect() if isinstance(e, SessionOpened)]
        assert {s.client_address.split("]")[0] for s in sessions} >= {"[::1"}
    finally:
        proxy.stop()


def test_psql_host_is_ipv6_only(pg_server: PgServer) -> None:
    _ipv6_available()
    proxy = start_proxy(pg_server, listen=Address("::1", 0))
    try:
        assert str(proxy.app.proxy.address) == f"[::1]:{proxy.port}"
        assert _psql(pg_server, "-c", "SELECT 6", host="::1", port=proxy.port) == "6"
        # the conninfo form: psql "host=::1 port=…"
        conninfo = f"host=::1 port={proxy.port} dbname={pg_server.database}"
        assert _psql(pg_server, conninfo, "-c", "SELECT 9", host="127.0.0.9", port=1) == "9"
    finally:
        proxy.stop()


def test_upstream_as_unix_socket_directory(pg_server: PgServer) -> None:
    assert pg_server.socket_dir is not None, "the throwaway cluster has a socket directory"
    upstream = Address(str(pg_server.socket_dir), pg_server.port)
    # the side connection reaches the server over the same socket (libpq/asyncpg: host=DIR)
    inspect_dsn = (
        f"postgresql://{pg_server.superuser}@/postgres"
        f"?host={pg_server.socket_dir}&port={pg_server.port}"
    )
    proxy = start_proxy(
        pg_server,
        upstream=upstream,
        inspect_dsn=inspect_dsn,
        explain_slow_ms=0.0,
        inspect_interval=0.3,
        inspect_plan_interval=0.3,
    )
    try:
        with urllib.request.urlopen(proxy.http_url + "/readyz", timeout=10) as resp:
            assert resp.status == 200
            assert "reachable" in resp.read().decode()
        with psycopg.connect(proxy.dsn()) as conn:
            # over the Unix socket the server sees no client address
            row = conn.execute("SELECT inet_client_addr(), 1 + 1").fetchone()
            assert row == (None, 2)
            conn.execute("SELECT count(*) FROM pg_class WHERE relname = %s", ("pg_type",))
        # the side connection planned the statement over the Unix socket
        deadline = time.monotonic() + 20
        while True:
            proxy.drain_now()
            with urllib.request.urlopen(proxy.http_url + "/api/queries?limit=100") as resp:
                rows = json.loads(resp.read())["queries"]
            fps = [r["fingerprint"] for r in rows if "pg_class" in r["query"]]
            if fps:
                url = f"{proxy.http_url}/api/queries/{fps[0]}"
                with urllib.request.urlopen(url) as resp:
                    if json.loads(resp.read())["queries"][0]["plan"] is not None:
                        break
            assert time.monotonic() < deadline, f"no plan over the Unix socket: {rows}"
            time.sleep(0.2)
    finally:
        proxy.stop()


def test_readiness_fails_for_a_missing_unix_upstream(pg_server: PgServer, sock_dir: Path) -> None:
    proxy = start_proxy(pg_server, upstream=Address(str(sock_dir), 5999))
    try:
        try:
            urllib.request.urlopen(proxy.http_url + "/readyz", timeout=10)
        except urllib.error.HTTPError as exc:
            assert exc.code == 503
            assert "unreachable" in exc.read().decode()
        else:
            raise AssertionError("/readyz said ready without an upstream")
        with pytest.raises(psycopg.OperationalError, match="could not connect to the upstream"):
            psycopg.connect(proxy.dsn(), connect_timeout=5).close()
    finally:
        proxy.stop()


def test_workers_share_the_unix_socket(pg_server: PgServer, sock_dir: Path) -> None:
    port = free_port()
    proc = ProxyProcess(
        [
            "--workers",
            "2",
            "--listen",
            f"127.0.0.1:{port}",
            "--listen-unix",
            str(sock_dir),
            "--upstream",
            f"{pg_server.host}:{pg_server.port}",
        ]
    )
    path = sock_dir / f".s.PGSQL.{port}"
    try:
        proc.wait_for_line("and health checks on", timeout=30)
        proc.wait_for_line("worker-1 ", timeout=30)
        deadline = time.monotonic() + 30
        while not any(
            "worker-1 " in line and "listening on" in line and str(path) in line
            for line in proc.stderr_lines
        ):
            assert time.monotonic() < deadline, "".join(proc.stderr_lines)
            time.sleep(0.05)
        conns = [psycopg.connect(pg_server.dsn(host=str(sock_dir), port=port)) for _ in range(8)]
        try:
            assert [c.execute("SELECT 5").fetchone() for c in conns] == [(5,)] * 8
        finally:
            for conn in conns:
                conn.close()
        # worker 0 stopped: worker 1 alone accepts on the inherited socket
        os.kill(proc.proc.pid, signal.SIGSTOP)
        try:
            dsn = pg_server.dsn(host=str(sock_dir), port=port)
            with psycopg.connect(dsn, connect_timeout=10) as conn:
                assert conn.execute("SELECT 6").fetchone() == (6,)
        finally:
            os.kill(proc.proc.pid, signal.SIGCONT)
    finally:
        code = proc.stop()
    assert code == 0, "".join(proc.stderr_lines)
    assert not path.exists(), "worker 0 removes the socket on shutdown"
