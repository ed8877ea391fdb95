"""HTTP exposure rules on the real proxy: HTTP bound off loopback with a token — the web UI
in a real Chromium logs in and marks a deploy, ``dbproxy top`` reads with its token file,
a DNS-rebinding Host is refused, writes need the token or the same origin, and
``--metrics-auth`` protects ``/metrics``."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from dbproxy.config import Address
from dbproxy.pgcluster import PgServer
from tests.fixtures.fix_proxy import RunningProxy, start_proxy
from tests.integration.test_ui_browser import CHROMIUM, CHROMIUM_ARGS

pytestmark = pytest.mark.timeout(90)

TOKEN = "exposure-test-token-0123456789"


@pytest.fixture
def exposed(pg_server: PgServer) -> Iterator[tuple[RunningProxy, str]]:
    """HTTP on every interface (as in a container), with the token and /metrics auth; the
    base URL the tests use goes through 127.0.0.1."""
    proxy = start_proxy(
        pg_server,
        http_listen=Address("0.0.0.0", 0),
        api_token=TOKEN,
        metrics_auth=True,
        http_allowed_hosts=("dbproxy.internal",),
    )
    try:
        with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
            for i in range(5):
                conn.execute("SELECT %s::int + 1", (i,))
        proxy.drain_now()
        yield proxy, f"http://127.0.0.1:{proxy.app.http.address.port}"
    finally:
        proxy.stop()


def call(
    url: str, *, method: str = "GET", headers: dict[str, str] | None = None, body: bytes = b""
) -> tuple[int, bytes]:
    request = urllib.request.Request(
        url, method=method, headers=headers or {}, data=body if method == "POST" else None
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


BEARER = {"Authorization": f"Bearer {TOKEN}"}


def test_token_host_and_same_origin_rules(exposed: tuple[RunningProxy, str]) -> None:
    proxy, base = exposed
    assert call(base + "/healthz")[0] == 200
    assert call(base + "/api/queries")[0] == 401
    status, body = call(base + "/api/queries", headers=BEARER)
    assert status == 200 and "SELECT $1 + $2" in json.loads(body)["queries"][0]["query"]
    assert call(base + "/metrics")[0] == 401
    status, body = call(base + "/metrics", headers=BEARER)
    assert status == 200 and b"dbproxy_" in body
    # DNS rebinding: a foreign name is refused even with the token; a configured one is not
    assert call(base + "/api/queries", headers={**BEARER, "Host": "attacker.example"})[0] == 421
    assert call(base + "/api/queries", headers={**BEARER, "Host": "dbproxy.internal"})[0] == 200
    # writes
    deploy = json.dumps({"version": "v1.2.3"}).encode()
    json_type = {"Content-Type": "application/json"}
    assert call(base + "/api/deploys", method="POST", headers=json_type, body=deploy)[0] == 403
    cross = {**json_type, "Origin": "http://attacker.example", "Sec-Fetch-Site": "cross-site"}
    assert call(base + "/api/deploys", method="POST", headers=cross, body=deploy)[0] == 403
    status, _ = call(
        base + "/api/deploys", method="POST", headers={**json_type, **BEARER}, body=deploy
    )
    assert status == 200
    status, body = call(base + "/api/deploys", headers=BEARER)
    assert [d["version"] for d in json.loads(body)] == ["v1.2.3"]
    assert call(base + "/api/reset", method="POST")[0] == 403
    assert call(base + "/api/reset", method="POST", headers=BEARER)[0] == 200
    assert proxy.app.access.refused >= 6


def test_loopback_needs_no_token_for_reads_but_writes_need_it(pg_server: PgServer) -> None:
    proxy = start_proxy(pg_server, api_token=TOKEN)
    try:
        assert call(proxy.http_url + "/api/queries")[0] == 200
        assert call(proxy.http_url + "/metrics")[0] == 200
        assert call(proxy.http_url + "/api/reset", method="POST")[0] == 403
        same = {"Sec-Fetch-Site": "same-origin", "Content-Type": "application/json"}
        deploy = json.dumps({"version": "v7"}).encode()
        assert (
            call(proxy.http_url + "/api/deploys", method="POST", headers=same, body=deploy)[0]
            == 200
        )
        rebound = {"Host": "rebound.attacker.example"}
        assert call(proxy.http_url + "/api/queries", headers=rebound)[0] == 421
    finally:
        proxy.stop()


def _top(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dbproxy", "top", "--once", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": "/usr/bin:/bin"},
    )


def test_top_with_its_token_file(exposed: tuple[RunningProxy, str], tmp_path: Path) -> None:
    _, base = exposed
    refused = _top("--url", base)
    assert refused.returncode == 2 and "HTTP 401" in refused.stderr
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    done = _top("--url", base, "--token-file", str(token_file))
    assert done.returncode == 0, done.stderr
    assert "SELECT $1 + $2" in done.stdout


def test_web_ui_logs_in_and_marks_a_deploy(exposed: tuple[RunningProxy, str]) -> None:
    import playwright.sync_api as playwright_sync

    _, base = exposed
    if not Path(CHROMIUM).exists():
        pytest.fail(f"no Chromium at {CHROMIUM}: apt-get install chromium")
    problems: list[str] = []
    with playwright_sync.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.on("pageerror", lambda e: problems.append(f"pageerror: {e}"))
            page.goto(base + "/")
            assert page.url == base + "/login"  # redirected: no cookie yet
            page.fill("input[name=token]", "not-the-token")
            page.click("button")
            assert "wrong token" in page.content()
            page.fill("input[name=token]", TOKEN)
            page.click("button")
            page.wait_for_url(base + "/")
            assert TOKEN not in page.url
            page.wait_for_selector("#queries tbody tr[data-fingerprint]")
            cookies = page.context.cookies()
            assert [c["name"] for c in cookies] == ["dbproxy_auth"]
            assert cookies[0]["httpOnly"] and cookies[0]["value"] != TOKEN
            page.goto(base + "/#/findings")
            page.fill("#deploy-version", "v-from-the-ui")
            page.click("#deploy-form button[type=submit]")  # same-origin POST + cookie
            page.wait_for_selector("#deploys >> text=v-from-the-ui")
        finally:
            browser.close()
    assert problems == []
    status, body = call(base + "/api/deploys", headers=BEARER)
    deploys: list[dict[str, Any]] = json.loads(body)
    assert status == 200 and [d["version"] for d in deploys] == ["v-from-the-ui"]
