"""Redaction: a sentinel password and a sentinel literal never leave the proxy.

A role whose password is a sentinel logs in with cleartext ``password`` authentication
(so the password itself crosses the proxy in a PasswordMessage) and runs statements
holding a sentinel literal — inlined, bound as a parameter, in a failing cast whose
message quotes it, and in a duplicate insert whose unique-violation DETAIL echoes it.
Also a login with a wrong (sentinel) password.  ``dbproxy run`` runs with DEBUG
logging, the JSON query log (every statement, errors, sessions), spans for every
statement to an in-process OTLP sink, the side connection sampling EXPLAIN ANALYZE with
the bound values and the activity sampler.  Then neither sentinel may appear in its
stderr, the query log, /metrics, any span, or any API/UI response — while each of those
demonstrably saw the statements (so the test cannot pass by observing nothing).
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from dbproxy.pgcluster import PgServer, acquire_server, free_port
from tests.fixtures.otlp_sink import OtlpSink
from tests.integration.test_cli import ProxyProcess

ROLE = "sentinel_role"
PASSWORD = f"PwSentinel{secrets.token_hex(6)}"
WRONG_PASSWORD = f"WrongPwSentinel{secrets.token_hex(6)}"
LITERAL = f"litsentinel{secrets.token_hex(6)}"
SENTINELS = (PASSWORD, WRONG_PASSWORD, LITERAL)


@pytest.fixture(scope="module")
def password_server() -> Iterator[PgServer]:
    """A cluster of its own whose ``sentinel_role`` logs in with cleartext ``password``
    authentication (the shared server's pg_hba is left alone)."""
    with acquire_server() as pg, psycopg.connect(pg.admin_dsn(), autocommit=True) as admin:
        hba_file = admin.execute("SHOW hba_file").fetchone()
        assert hba_file is not None
        hba = Path(hba_file[0])
        hba.write_text(f"host all {ROLE} 127.0.0.1/32 password\n" + hba.read_text())
        admin.execute(f"CREATE ROLE {ROLE} LOGIN PASSWORD '{PASSWORD}'")
        admin.execute(f"GRANT ALL ON DATABASE {pg.database} TO {ROLE}")
        admin.execute("SELECT pg_reload_conf()")
        with psycopg.connect(pg.admin_dsn(dbname=pg.database), autocommit=True) as db:
            db.execute("CREATE TABLE sentinel_t (id serial, email text UNIQUE)")
            db.execute(f"GRANT ALL ON sentinel_t, sentinel_t_id_seq TO {ROLE}")
        time.sleep(0.5)  # the reload is asynchronous
        yield pg


def found_in(text: str) -> list[str]:
    return [s for s in SENTINELS if s in text or s.lower() in text.lower()]


def get(base: str, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(base + path, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def workload(pg: PgServer, port: int) -> None:
    dsn = pg.dsn(user=ROLE, password=PASSWORD, host="127.0.0.1", port=port)
    with psycopg.connect(dsn, autocommit=True) as conn:
        # extended protocol, the literal bound as a value (the sampler re-runs it)
        for _ in range(3):
            conn.execute("SELECT count(*) FROM sentinel_t WHERE email = %s", (LITERAL,))
        # inlined literal (client-side binding)
        cur = psycopg.ClientCursor(conn)
        cur.execute("INSERT INTO sentinel_t (email) VALUES (%s)", (LITERAL,))
        # the unique violation's DETAIL echoes the literal: Key (email)=(…) already exists.
        with pytest.raises(psycopg.errors.UniqueViolation) as dup:
            cur.execute("INSERT INTO sentinel_t (email) VALUES (%s)", (LITERAL,))
        assert LITERAL in str(dup.value.diag.message_detail)  # the client sees it, unchanged
        with pytest.raises(psycopg.errors.InvalidTextRepresentation) as cast:
            conn.execute("SELECT %s::int", (LITERAL,))
        assert LITERAL in str(cast.value)
        cur.execute(
            "SELECT id FROM sentinel_t WHERE email = %s AND pg_sleep(0.05) IS NOT NULL", (LITERAL,)
        )
        conn.execute(f"SELECT length('{LITERAL}') /*route='/signup'*/")
    # the simple protocol through psql, and its password from the environment
    env = pg.env(user=ROLE, password=PASSWORD, base={"PATH": os.environ.get("PATH", "")})
    env.update(PGHOST="127.0.0.1", PGPORT=str(port))
    done = subprocess.run(
        [
            pg.tool("psql"),
            "-X",
            "-c",
            f"SELECT * FROM sentinel_t WHERE email = '{LITERAL}'",
            "-c",
            f"INSERT INTO sentinel_t (email) VALUES ('{LITERAL}')",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert "already exists" in done.stderr and LITERAL in done.stderr, done.stderr
    # a wrong password: refused by the server, through the proxy
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(pg.dsn(user=ROLE, password=WRONG_PASSWORD, host="127.0.0.1", port=port))


def test_sentinels_appear_in_no_log_metric_span_or_api_output(
    password_server: PgServer, tmp_path: Path
) -> None:
    pg = password_server
    sink = OtlpSink()
    port = free_port()
    query_log = tmp_path / "query.jsonl"
    proc = ProxyProcess(
        [
            "--listen",
            f"127.0.0.1:{port}",
            "--upstream",
            f"{pg.host}:{pg.port}",
            "--log-level",
            "debug",
            "--query-log",
            str(query_log),
            "--log-slow-ms",
            "0",
            "--otlp-endpoint",
            sink.url,
            "--trace-untraced-ratio",
            "1",
            "--trace-rows",
            "--proxy-span",
            "--sample-analyze",
            "1",
            "--explain-slow-ms",
            "0",
            "--sample-activity-interval",
            "0.2",
        ],
        env={
            "DBPROXY_INSPECT_DSN": pg.admin_dsn(dbname=pg.database),
            "DBPROXY_INSPECT_INTERVAL": "1",
            "OTEL_BSP_SCHEDULE_DELAY": "100",
        },
    )
    try:
        proc.wait_for_line("listening on")
        line = proc.wait_for_line("health checks on http://")
        base = line.rsplit("on ", 1)[1].strip().rstrip("/")
        workload(pg, port)
        deadline = time.monotonic() + 20
        fingerprints: list[str] = []
        while time.monotonic() < deadline:
            status, body = get(base, "/api/queries?limit=100")
            fingerprints = [q["fingerprint"] for q in json.loads(body)["queries"]]
            samples = get(base, "/metrics")[1]
            if (
                len(fingerprints) >= 5
                and "dbproxy_inspect_samples_total" in samples
                and len(sink.raw) > 0
            ):
                break
            time.sleep(0.3)
        time.sleep(2)  # the sampler's EXPLAIN ANALYZE runs, its failures get logged
        # a refused request logs at DEBUG: proof the level is on
        refused = urllib.request.Request(base + "/api/queries", headers={"Host": "evil.example"})
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(refused, timeout=10)
        outputs: dict[str, str] = {}
        for path in (
            "/metrics",
            "/api/queries?limit=100",
            "/api/connections",
            "/api/findings",
            "/api/deploys",
            "/api/load",
            "/api/blocking",
            "/api/ui-config",
            "/",
            "/ui/app.js",
            *(f"/api/queries/{fp}" for fp in fingerprints),
            *(f"/api/queries/{fp}/plans" for fp in fingerprints),
            *(f"/api/history/{fp}" for fp in fingerprints),
        ):
            status, body = get(base, path)
            # a fingerprint may have no plan or no history minute yet: its 404 counts too
            assert status == 200 or (status == 404 and path.count("/") > 3), (path, status)
            outputs[path] = body
    finally:
        code = proc.stop()
        sink.close()
    assert code == 0
    stderr = "".join(proc.stderr_lines)
    log_text = query_log.read_text()
    spans = b"".join(sink.raw).decode("utf-8", "replace")

    # each output saw the workload
    assert " DEBUG dbproxy.export.access: HTTP GET /api/queries refused: 421" in stderr
    assert any("sentinel_t" in q for q in outputs["/api/queries?limit=100"].split("query")), outputs
    assert '"23505"' in log_text and '"22P02"' in log_text and "sentinel_t" in log_text
    assert "session_rejected" in log_text or "28P01" in log_text
    assert "sentinel_t" in spans and "23505" in spans
    assert "dbproxy_statements_total" in outputs["/metrics"] or "dbproxy_" in outputs["/metrics"]
    assert ROLE in outputs["/metrics"]

    leaks = {
        "stderr (DEBUG log)": found_in(stderr),
        "query log": found_in(log_text),
        "spans (OTLP)": found_in(spans),
        **{f"GET {p}": found_in(body) for p, body in outputs.items()},
    }
    assert {k: v for k, v in leaks.items() if v} == {}
