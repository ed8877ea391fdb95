"""TLS on both legs and SCRAM / channel binding through the real proxy (issue 11).

Server: Debian's PostgreSQL 15 (built with OpenSSL) with ssl=on (``pg_tls_server``).
Clients: Debian psql 15, psycopg 3 (psycopg-binary's libpq 18: sslnegotiation=direct,
channel_binding), asyncpg.  The proxy's certificate comes from a trustme CA.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import pytest
import trustme

from dbproxy.config import Address
from dbproxy.pgcluster import PgServer
from dbproxy.protocol.events import SessionOpened
from tests.fixtures.fix_proxy import RunningProxy, start_proxy
from tests.integration.test_cli import start_process

PSQL_15 = "/usr/lib/postgresql/15/bin/psql"


@dataclass(frozen=True)
class ProxyCert:
    ca: Path
    cert: Path
    key: Path
    other_cert: Path  # a second certificate of the same CA (reload test)
    other_key: Path


@pytest.fixture(scope="module")
def proxy_cert(tmp_path_factory: pytest.TempPathFactory) -> ProxyCert:
    root = tmp_path_factory.mktemp("proxy-tls")
    ca = trustme.CA()
    paths = []
    for name in ("first", "second"):
        leaf = ca.issue_cert("localhost", "127.0.0.1", common_name=f"dbproxy-{name}")
        cert, key = root / f"{name}.crt", root / f"{name}.key"
        leaf.cert_chain_pems[0].write_to_path(str(cert))
        leaf.private_key_pem.write_to_path(str(key))
        paths += [cert, key]
    ca.cert_pem.write_to_path(str(root / "ca.crt"))
    return ProxyCert(root / "ca.crt", paths[0], paths[1], paths[2], paths[3])


@pytest.fixture(scope="module")
def tls_pg(pg_tls_server: PgServer) -> PgServer:
    if pg_tls_server.ssl_root_cert is None:
        pytest.fail("the TLS test server has no root certificate to verify it with")
    return pg_tls_server


def _proxy(pg: PgServer, cert: ProxyCert, **overrides: Any) -> RunningProxy:
    return start_proxy(
        pg,
        client_tls_cert=str(cert.cert),
        client_tls_key=str(cert.key),
        **overrides,
    )


@pytest.fixture
def make_proxy(tls_pg: PgServer, proxy_cert: ProxyCert) -> Iterator[Any]:
    started: list[RunningProxy] = []

    def make(**overrides: Any) -> RunningProxy:
        running = _proxy(tls_pg, proxy_cert, **overrides)
        started.append(running)
        return running

    yield make
    for running in started:
        running.stop()


def _upstream_tls(pg: PgServer, mode: str = "verify-full") -> dict[str, Any]:
    return {"upstream_tls": mode, "upstream_tls_ca": str(pg.ssl_root_cert)}


def _connect(proxy: RunningProxy, cert: ProxyCert, **params: str) -> psycopg.Connection[Any]:
    base = {"sslmode": "verify-full", "sslrootcert": str(cert.ca)}
    base.update(params)
    return psycopg.connect(
        proxy.pg.dsn(host="localhost", port=proxy.port, params=base), connect_timeout=10
    )


def _client_ssl(conn: psycopg.Connection[Any]) -> bool:
    return bool(conn.pgconn.ssl_in_use)


def _backend_ssl(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()
    assert row is not None
    return bool(row[0])


# ----------------------------------------------------------------------------- client leg
def test_psql_15_sslmode_require_and_verify_full(make_proxy: Any, proxy_cert: ProxyCert) -> None:
    proxy = make_proxy(client_tls="require")
    psql = PSQL_15 if Path(PSQL_15).exists() else shutil.which("psql")
    if psql is None:
        pytest.fail("Debian psql 15 is missing (apt-get install postgresql-client-15)")
    for mode, extra in (("require", {}), ("verify-full", {"PGSSLROOTCERT": str(proxy_cert.ca)})):
        env = proxy.env()
        env.update(PGHOST="localhost", PGSSLMODE=mode, **extra)
        out = subprocess.run(
            [psql, "-XAtc", "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "f"  # client leg TLS, upstream plaintext
    # and the proxy's certificate is what verify-full checked: another CA fails
    env = proxy.env()
    env.update(
        PGHOST="localhost", PGSSLMODE="verify-full", PGSSLROOTCERT=str(proxy.pg.ssl_root_cert)
    )
    out = run_psql_raw(psql, env)
    assert out.returncode != 0 and "certificate verify failed" in out.stderr


def run_psql_raw(psql: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [psql, "-XAtc", "SELECT 1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_plaintext_is_refused_under_require(make_proxy: Any) -> None:
    proxy = make_proxy(client_tls="require")
    with pytest.raises(psycopg.OperationalError) as info:
        psycopg.connect(proxy.dsn(params={"sslmode": "disable"}), connect_timeout=10)
    assert "TLS is required" in str(info.value)
    # the same client with TLS gets in
    with psycopg.connect(proxy.dsn(params={"sslmode": "require"}), connect_timeout=10) as conn:
        assert _client_ssl(conn)


def test_allow_serves_both(make_proxy: Any) -> None:
    proxy = make_proxy(client_tls="allow")
    for mode, encrypted in (("disable", False), ("require", True)):
        with psycopg.connect(proxy.dsn(params={"sslmode": mode}), connect_timeout=10) as conn:
            assert _client_ssl(conn) is encrypted
            assert conn.execute("SELECT 41 + 1").fetchone() == (42,)


def test_direct_tls_via_psycopg_and_alpn_is_required(
    make_proxy: Any, proxy_cert: ProxyCert
) -> None:
    proxy = make_proxy(client_tls="require")
    with _connect(proxy, proxy_cert, sslnegotiation="direct") as conn:
        assert _client_ssl(conn)
        assert conn.execute("SELECT 'direct'").fetchone() == ("direct",)
    # a direct TLS client without ALPN "postgresql" is cut, as the server does
    ctx = ssl.create_default_context(cafile=str(proxy_cert.ca))
    with socket.create_connection((proxy.host, proxy.port), timeout=5) as raw:
        try:
            with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
                tls.sendall(b"\x00\x00\x00\x08\x04\xd2\x16\x2f")
                assert tls.recv(100) == b""
        except (ssl.SSLError, ConnectionError):
            pass  # closed during or right after the handshake


def test_asyncpg_over_tls(make_proxy: Any, proxy_cert: ProxyCert) -> None:
    proxy = make_proxy(client_tls="require")
    ctx = ssl.create_default_context(cafile=str(proxy_cert.ca))

    async def run() -> Any:
        conn = await asyncpg.connect(proxy.pg.dsn(host="localhost", port=proxy.port), ssl=ctx)
        try:
            return await conn.fetchval("SELECT $1::int * 2", 21)
        finally:
            await conn.close()

    assert asyncio.run(run()) == 42


def test_bytes_after_sslrequest_are_rejected(make_proxy: Any) -> None:
    """CVE-2021-23214 class: plaintext piggy-backed on the SSLRequest never gets in."""
    proxy = make_proxy(client_tls="allow")
    startup = _startup(proxy.pg.app_user, proxy.pg.database)
    with socket.create_connection((proxy.host, proxy.port), timeout=5) as sock:
        sock.sendall(struct.pack("!II", 8, 80877103) + startup)
        reply = _read_all(sock)
    assert reply[:1] == b"E" and b"08P01" in reply and b"unencrypted data" in reply


def test_gssencrequest_is_answered_n(make_proxy: Any) -> None:
    proxy = make_proxy(client_tls="require")
    with socket.create_connection((proxy.host, proxy.port), timeout=5) as sock:
        sock.sendall(struct.pack("!II", 8, 80877104))
        assert sock.recv(1) == b"N"


def _startup(user: str, database: str) -> bytes:
    payload = struct.pack("!I", 196608) + f"user\0{user}\0database\0{database}\0\0".encode()
    return struct.pack("!I", len(payload) + 4) + payload


def _read_all(sock: socket.socket) -> bytes:
    out = b""
    while chunk := sock.recv(4096):
        out += chunk
    return out


# ----------------------------------------------------------------------------- upstream leg
@pytest.mark.parametrize("mode", ["disable", "prefer", "require", "verify-ca", "verify-full"])
def test_upstream_tls_modes(make_proxy: Any, tls_pg: PgServer, mode: str) -> None:
    proxy = make_proxy(**_upstream_tls(tls_pg, mode))  # client leg plaintext: independent
    with psycopg.connect(proxy.dsn(params={"sslmode": "disable"}), connect_timeout=10) as conn:
        assert not _client_ssl(conn)
        assert _backend_ssl(conn) is (mode != "disable")


def test_upstream_verify_full_refuses_a_wrong_ca(make_proxy: Any, proxy_cert: ProxyCert) -> None:
    proxy = make_proxy(upstream_tls="verify-full", upstream_tls_ca=str(proxy_cert.ca))
    with pytest.raises(psycopg.OperationalError) as info:
        psycopg.connect(proxy.dsn(params={"sslmode": "disable"}), connect_timeout=10)
    assert "could not connect to the upstream" in str(info.value)


def test_upstream_require_refuses_a_plaintext_server(
    pg_server: PgServer, proxy_cert: ProxyCert
) -> None:
    """The embedded server has no TLS: require fails, prefer falls back to plaintext."""
    for mode, works in (("require", False), ("prefer", True)):
        proxy = _proxy(pg_server, proxy_cert, upstream_tls=mode)
        try:
            dsn = proxy.dsn(params={"sslmode": "disable"})
            if works:
                with psycopg.connect(dsn, connect_timeout=10) as conn:
                    assert conn.execute("SELECT 1").fetchone() == (1,)
            else:
                with pytest.raises(psycopg.OperationalError, match="does not support TLS"):
                    psycopg.connect(dsn, connect_timeout=10)
        finally:
            proxy.stop()


def test_upstream_bytes_after_s_are_refused(tls_pg: PgServer, proxy_cert: ProxyCert) -> None:
    """CVE-2021-23222 class: a peer posing as the server answers the SSLRequest with 'S'
    and piggy-backs plaintext (a fake ReadyForQuery) before the handshake."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(8)
            conn.sendall(b"SZ\x00\x00\x00\x05I")
            conn.settimeout(5)
            with contextlib.suppress(OSError):
                conn.recv(100)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    proxy = _proxy(tls_pg, proxy_cert, upstream=Address("127.0.0.1", port), upstream_tls="require")
    try:
        with pytest.raises(psycopg.OperationalError, match="unencrypted data after its SSL"):
            psycopg.connect(proxy.dsn(params={"sslmode": "disable"}), connect_timeout=10)
    finally:
        proxy.stop()
        listener.close()
        thread.join(5)


# ----------------------------------------------------------------------------- SCRAM
@pytest.mark.parametrize("source", [None, "auth_file", "auth_query"])
def test_client_tls_upstream_plaintext_passthrough(
    make_proxy: Any, proxy_cert: ProxyCert, auth_sources: dict[str, Any], source: str | None
) -> None:
    """Case 1: no -PLUS offered by the server on its plaintext connection; libpq answers
    with the 'y' flag and the server accepts.  channel_binding=require cannot be met.
    A configured auth source changes nothing (the proxy authenticates only with TLS on
    both legs)."""
    proxy = make_proxy(client_tls="require", **(auth_sources[source] if source else {}))
    with _connect(proxy, proxy_cert, channel_binding="prefer") as conn:
        assert _client_ssl(conn) and not _backend_ssl(conn)
    with pytest.raises(psycopg.OperationalError, match="channel binding is required"):
        _connect(proxy, proxy_cert, channel_binding="require")


def test_upstream_prefer_falling_back_to_plaintext_relays_scram(
    pg_server: PgServer, proxy_cert: ProxyCert, auth_sources: dict[str, Any]
) -> None:
    """--upstream-tls prefer against a server without TLS, with an auth source: the
    upstream connection turns out plaintext, so the exchange is relayed (case 1)."""
    proxy = _proxy(
        pg_server,
        proxy_cert,
        client_tls="require",
        upstream_tls="prefer",
        **auth_sources["auth_file"],
    )
    try:
        with _connect(proxy, proxy_cert, channel_binding="prefer") as conn:
            assert _client_ssl(conn)
            assert conn.execute("SELECT current_user").fetchone() == (pg_server.app_user,)
        with pytest.raises(psycopg.OperationalError, match="channel binding is required"):
            _connect(proxy, proxy_cert, channel_binding="require")
    finally:
        proxy.stop()


@pytest.fixture(scope="module")
def auth_sources(tls_pg: PgServer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """An auth_file with the app role's secret, and auth_query over a SECURITY DEFINER
    function (PgBouncer's recipe) run by an unprivileged role."""
    admin = tls_pg.admin_dsn(dbname=tls_pg.database)
    with psycopg.connect(admin, autocommit=True) as conn:
        row = conn.execute(
            "SELECT rolpassword FROM pg_authid WHERE rolname = %s", (tls_pg.app_user,)
        ).fetchone()
        assert row is not None and row[0].startswith("SCRAM-SHA-256$")
        conn.execute(
            """
            DROP ROLE IF EXISTS dbproxy_auth;
            CREATE ROLE dbproxy_auth LOGIN PASSWORD 'auth-user-pw-123';
            CREATE SCHEMA IF NOT EXISTS pgbouncer;
            CREATE OR REPLACE FUNCTION pgbouncer.get_auth(p_usename text)
            RETURNS TABLE(usename name, passwd text) LANGUAGE sql SECURITY DEFINER AS
            $$ SELECT rolname, rolpassword FROM pg_authid
               WHERE rolname = p_usename AND rolcanlogin $$;
            REVOKE ALL ON FUNCTION pgbouncer.get_auth(text) FROM PUBLIC;
            GRANT USAGE ON SCHEMA pgbouncer TO dbproxy_auth;
            GRANT EXECUTE ON FUNCTION pgbouncer.get_auth(text) TO dbproxy_auth;
            """
        )
    path = tmp_path_factory.mktemp("auth") / "userlist.txt"
    path.write_text(f'; dbproxy auth_file\n"{tls_pg.app_user}" "{row[0]}"\n')
    auth_dsn = tls_pg.dsn(user="dbproxy_auth", password="auth-user-pw-123")
    return {
        "auth_file": {"auth_file": str(path)},
        "auth_query": {"auth_dsn": auth_dsn + "?sslmode=require"},
    }


@pytest.mark.parametrize("source", ["auth_file", "auth_query"])
@pytest.mark.parametrize("binding", ["prefer", "require", "disable"])
def test_tls_both_legs_proxy_authenticates(
    make_proxy: Any,
    proxy_cert: ProxyCert,
    tls_pg: PgServer,
    auth_sources: dict[str, Any],
    *,
    source: str,
    binding: str,
) -> None:
    """Case 2: the proxy offers SCRAM-SHA-256-PLUS bound to its own certificate, checks
    the proof and logs in upstream (PLUS bound to the server's certificate) with the
    recovered ClientKey."""
    proxy = make_proxy(client_tls="require", **_upstream_tls(tls_pg), **auth_sources[source])
    with _connect(proxy, proxy_cert, channel_binding=binding) as conn:
        assert _client_ssl(conn) and _backend_ssl(conn)
        assert conn.execute("SELECT current_user").fetchone() == (tls_pg.app_user,)
    # a wrong password is refused by the proxy itself, as the server would; an unknown
    # user gets the same answer after the same exchange
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        _connect(proxy, proxy_cert, channel_binding=binding, password="wrong-password")
    unknown = tls_pg.dsn(
        user="no_such_user",
        password="pw",
        host="localhost",
        port=proxy.port,
        params={"sslmode": "verify-full", "sslrootcert": str(proxy_cert.ca)},
    )
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(unknown, connect_timeout=10, channel_binding=binding)


def test_proxy_auth_with_psql_15_and_asyncpg(
    make_proxy: Any, proxy_cert: ProxyCert, tls_pg: PgServer, auth_sources: dict[str, Any]
) -> None:
    """libpq 15 binds (channel_binding=require); asyncpg does not bind (flag 'n')."""
    proxy = make_proxy(client_tls="require", **_upstream_tls(tls_pg), **auth_sources["auth_query"])
    env = proxy.env()
    env.update(
        PGHOST="localhost",
        PGSSLMODE="verify-full",
        PGSSLROOTCERT=str(proxy_cert.ca),
        PGCHANNELBINDING="require",
    )
    sql = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
    out = subprocess.run(
        [PSQL_15, "-XAtc", sql], env=env, capture_output=True, text=True, timeout=30, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "t"
    ctx = ssl.create_default_context(cafile=str(proxy_cert.ca))

    async def run() -> Any:
        conn = await asyncpg.connect(proxy.pg.dsn(host="localhost", port=proxy.port), ssl=ctx)
        try:
            return await conn.fetchval("SELECT current_user")
        finally:
            await conn.close()

    assert asyncio.run(run()) == tls_pg.app_user


def test_proxy_auth_relays_a_protocol_downgrade(
    make_proxy: Any, proxy_cert: ProxyCert, tls_pg: PgServer, auth_sources: dict[str, Any]
) -> None:
    """libpq 18 asking for protocol 3.2: PostgreSQL 15 answers NegotiateProtocolVersion
    before authentication; the proxy relays it and the session runs at 3.0."""
    proxy = make_proxy(client_tls="require", **_upstream_tls(tls_pg), **auth_sources["auth_file"])
    with _connect(proxy, proxy_cert, max_protocol_version="latest") as conn:
        assert conn.pgconn.protocol_version == 3
        assert conn.execute("SELECT 7").fetchone() == (7,)
    opened = [e for e in proxy.wait_closed() if isinstance(e, SessionOpened)]
    assert [(e.user, e.protocol_version) for e in opened] == [(tls_pg.app_user, (3, 0))]


def test_proxy_auth_answers_malformed_scram_with_08p01(
    make_proxy: Any, proxy_cert: ProxyCert, tls_pg: PgServer, auth_sources: dict[str, Any]
) -> None:
    proxy = make_proxy(client_tls="require", **_upstream_tls(tls_pg), **auth_sources["auth_file"])
    ctx = ssl.create_default_context(cafile=str(proxy_cert.ca))
    bad_first = b"SCRAM-SHA-256\x00" + struct.pack("!i", 5) + b"q,,x="
    with socket.create_connection((proxy.host, proxy.port), timeout=5) as raw:
        raw.sendall(struct.pack("!II", 8, 80877103))
        assert raw.recv(1) == b"S"
        with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(_startup(tls_pg.app_user, tls_pg.database))
            offer = tls.recv(4096)
            assert offer[:1] == b"R" and b"SCRAM-SHA-256-PLUS" in offer
            tls.sendall(b"p" + struct.pack("!i", len(bad_first) + 4) + bad_first)
            reply = _read_all(tls)
    assert reply[:1] == b"E" and b"C08P01" in reply and b"malformed SCRAM" in reply


def test_tls_both_legs_without_auth_source_is_passthrough(
    make_proxy: Any, proxy_cert: ProxyCert, tls_pg: PgServer
) -> None:
    """Without auth_file/auth_query the exchange is relayed: only clients that do not
    bind (channel_binding=disable) can log in — documented."""
    proxy = make_proxy(client_tls="require", **_upstream_tls(tls_pg))
    with _connect(proxy, proxy_cert, channel_binding="disable") as conn:
        assert _backend_ssl(conn)
    with pytest.raises(psycopg.OperationalError):
        _connect(proxy, proxy_cert, channel_binding="require")


def test_statements_through_proxy_auth_are_counted(
    make_proxy: Any, proxy_cert: ProxyCert, tls_pg: PgServer, auth_sources: dict[str, Any]
) -> None:
    proxy = make_proxy(client_tls="require", **_upstream_tls(tls_pg), **auth_sources["auth_file"])
    with _connect(proxy, proxy_cert) as conn:
        for i in range(17):
            conn.execute("SELECT %s::int AS tls_counted", (i,))
        for _ in range(5):
            conn.execute("SELECT 'tls simple' AS tls_simple_counted", prepare=False)
    proxy.wait_closed()
    proxy.drain_now()
    with urllib.request.urlopen(proxy.http_url + "/api/queries?limit=1000", timeout=10) as r:
        rows = json.loads(r.read())["queries"]
    calls = {row["query"]: row["calls"] for row in rows if "counted" in row["query"]}
    assert sorted(calls.values()) == [5, 17], calls
    assert all("tls simple" not in q for q in calls)  # literals normalized away


# ----------------------------------------------------------------------------- reload
def test_reload_tls_swaps_the_certificate_and_keeps_it_on_a_bad_file(
    tls_pg: PgServer, proxy_cert: ProxyCert, tmp_path: Path
) -> None:
    cert, key = tmp_path / "proxy.crt", tmp_path / "proxy.key"
    shutil.copyfile(proxy_cert.cert, cert)
    shutil.copyfile(proxy_cert.key, key)
    proxy = start_proxy(
        tls_pg, client_tls="require", client_tls_cert=str(cert), client_tls_key=str(key)
    )
    try:
        assert _peer_cn(proxy, proxy_cert) == "dbproxy-first"
        cert.write_text("not a certificate\n")
        assert proxy.call(proxy.server.reload_tls) is False
        assert _peer_cn(proxy, proxy_cert) == "dbproxy-first"  # the old context stays
        shutil.copyfile(proxy_cert.other_cert, cert)
        shutil.copyfile(proxy_cert.other_key, key)
        assert proxy.call(proxy.server.reload_tls) is True
        assert _peer_cn(proxy, proxy_cert) == "dbproxy-second"
    finally:
        proxy.stop()


def test_sighup_reloads_certificates_of_dbproxy_run_and_keeps_sessions(
    tls_pg: PgServer, proxy_cert: ProxyCert, tmp_path: Path
) -> None:
    cert, key = tmp_path / "proxy.crt", tmp_path / "proxy.key"
    shutil.copyfile(proxy_cert.cert, cert)
    shutil.copyfile(proxy_cert.key, key)
    flags = ["--client-tls", "require", "--client-tls-cert", str(cert)]
    proc, port = start_process(tls_pg, *flags, "--client-tls-key", str(key))
    try:
        dsn = tls_pg.dsn(
            host="localhost",
            port=port,
            params={"sslmode": "verify-full", "sslrootcert": str(proxy_cert.ca)},
        )
        with psycopg.connect(dsn, connect_timeout=10, autocommit=True) as running:
            assert _peer_cn_at("127.0.0.1", port, proxy_cert) == "dbproxy-first"
            shutil.copyfile(proxy_cert.other_cert, cert)
            shutil.copyfile(proxy_cert.other_key, key)
            proc.proc.send_signal(signal.SIGHUP)
            proc.wait_for_line("TLS certificates reloaded")
            assert _peer_cn_at("127.0.0.1", port, proxy_cert) == "dbproxy-second"
            # the session opened before the reload keeps working over its old context
            assert running.execute("SELECT 'still here'").fetchone() == ("still here",)
    finally:
        assert proc.stop() == 0


def _peer_cn(proxy: RunningProxy, cert: ProxyCert) -> str:
    return _peer_cn_at(proxy.host, proxy.port, cert)


def _peer_cn_at(host: str, port: int, cert: ProxyCert) -> str:
    ctx = ssl.create_default_context(cafile=str(cert.ca))
    with socket.create_connection((host, port), timeout=5) as raw:
        raw.sendall(struct.pack("!II", 8, 80877103))
        assert raw.recv(1) == b"S"
        with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            peer = tls.getpeercert()
    subject = dict(item[0] for item in peer["subject"])
    return str(subject["commonName"])
