"""The throwaway PostgreSQL the whole suite runs against: auth, clients, tools, version."""

from __future__ import annotations

import os
import subprocess

import asyncpg
import psycopg
import pytest

from dbproxy.pgcluster import PgServer

pytestmark = pytest.mark.integration


async def test_asyncpg_connects_as_app_over_tcp(pg_server: PgServer, pg_dsn: str) -> None:
    conn = await asyncpg.connect(pg_dsn)
    try:
        row = await conn.fetchrow(
            "SELECT current_user, current_database(), inet_server_addr()::text AS addr,"
            " (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) AS rolsuper"
        )
    finally:
        await conn.close()
    assert row is not None
    assert row["current_user"] == pg_server.app_user
    assert row["current_database"] == pg_server.database
    assert row["rolsuper"] is False
    if pg_server.source in ("embedded", "local"):
        assert row["addr"] == "127.0.0.1/32"  # TCP, not the unix socket


def test_psycopg_connects_as_app_and_owns_database(pg_server: PgServer, pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn) as conn:
        owner = conn.execute(
            "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = current_database()"
        ).fetchone()
        conn.execute("CREATE TEMP TABLE t (x int)")
        conn.execute("INSERT INTO t VALUES (1), (2)")
        total = conn.execute("SELECT sum(x) FROM t").fetchone()
    assert owner == (pg_server.app_user,)
    assert total == (3,)


async def test_wrong_password_is_rejected_with_28p01(pg_server: PgServer) -> None:
    bad = pg_server.dsn(password="not-the-password")
    if pg_server.source == "dsn":
        try:
            conn = await asyncpg.connect(bad)
        except asyncpg.InvalidPasswordError:
            pass
        else:
            await conn.close()
            pytest.fail(
                "DBPROXY_TEST_DSN: this server's pg_hba.conf lets the app user in without a "
                "password; the authentication tests need scram-sha-256 over TCP",
                pytrace=False,
            )
    with pytest.raises(asyncpg.InvalidPasswordError) as excinfo:
        await asyncpg.connect(bad)
    assert excinfo.value.sqlstate == "28P01"
    with pytest.raises(psycopg.OperationalError) as perr:
        psycopg.connect(bad, connect_timeout=10)
    assert "password authentication failed" in str(perr.value)


def test_superuser_can_connect_with_password(pg_server: PgServer, pg_admin_dsn: str) -> None:
    with psycopg.connect(pg_admin_dsn) as conn:
        row = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()
    assert row == (True,)


def test_app_role_stores_a_scram_verifier(pg_admin_dsn: str, pg_server: PgServer) -> None:
    with psycopg.connect(pg_admin_dsn) as conn:
        row = conn.execute(
            "SELECT rolpassword FROM pg_authid WHERE rolname = %s", (pg_server.app_user,)
        ).fetchone()
    assert row is not None
    assert row[0].startswith("SCRAM-SHA-256$")


def test_pg_hba_requires_scram_over_tcp(pg_server: PgServer, pg_admin_dsn: str) -> None:
    # With DBPROXY_TEST_DSN the server's owner must configure pg_hba.conf this way too
    # (README → Tests): the authentication tests are meaningless otherwise.
    with psycopg.connect(pg_admin_dsn) as conn:
        rules = conn.execute(
            "SELECT type, address, auth_method FROM pg_hba_file_rules WHERE error IS NULL"
        ).fetchall()
    host_rules = [r for r in rules if r[0].startswith("host")]
    assert ("host", "127.0.0.1", "scram-sha-256") in host_rules
    assert all(method == "scram-sha-256" for _, _, method in host_rules), host_rules
    # Nothing else (trust, password, md5) can sneak a TCP connection in.
    assert {r[0] for r in rules} <= {"local", "host"}


def test_psql_from_bindir_runs(pg_server: PgServer, pg_env: dict[str, str]) -> None:
    psql = pg_server.tool("psql")
    if pg_server.bindir is not None and pg_server.source != "dsn":
        assert psql.startswith(str(pg_server.bindir))
    result = subprocess.run(
        [psql, "-X", "-A", "-t", "-c", "select 1"],
        env=pg_env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "1"


def test_pgbench_from_same_bindir(pg_server: PgServer, pg_env: dict[str, str]) -> None:
    pgbench = pg_server.tool("pgbench")
    assert os.path.dirname(pgbench) == os.path.dirname(pg_server.tool("psql"))
    init = subprocess.run(
        [pgbench, "-i", "-s", "1", "-q", "--no-vacuum"],
        env=pg_env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert init.returncode == 0, init.stderr
    run = subprocess.run(
        [pgbench, "-T", "1", "-c", "2", "-n"],
        env=pg_env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert "number of transactions actually processed" in run.stdout
    assert " 0/0" not in run.stdout


async def test_server_major_version_matches(pg_server: PgServer, pg_dsn: str) -> None:
    conn = await asyncpg.connect(pg_dsn)
    try:
        version_num = int(await conn.fetchval("SHOW server_version_num"))
    finally:
        await conn.close()
    assert pg_server.version == version_num // 10000
    assert pg_server.version >= 13


def test_pg_stat_statements_is_loaded(pg_server: PgServer) -> None:
    # Throwaway clusters preload it; a DBPROXY_TEST_DSN or container server must too
    # (README → Tests).
    with psycopg.connect(pg_server.admin_dsn(dbname=pg_server.database)) as conn:
        loaded = conn.execute("SHOW shared_preload_libraries").fetchone()
        ext = conn.execute(
            "SELECT 1 FROM pg_extension WHERE extname = 'pg_stat_statements'"
        ).fetchone()
    assert loaded is not None
    assert "pg_stat_statements" in loaded[0]
    assert ext == (1,)


def test_tls_server_verifies_with_its_root_cert(pg_tls_server: PgServer) -> None:
    assert pg_tls_server.tls
    params = {"sslmode": "verify-full"}
    if pg_tls_server.ssl_root_cert is not None:
        params["sslrootcert"] = str(pg_tls_server.ssl_root_cert)
    with psycopg.connect(pg_tls_server.dsn(params=params)) as conn:
        row = conn.execute(
            "SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
        ).fetchone()
    assert row is not None
    assert row[0] is True
    assert row[1].startswith("TLS")
