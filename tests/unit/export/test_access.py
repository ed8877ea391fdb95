"""The HTTP access guard on a real HttpServer: Host check, token, same-origin writes,
the UI's login cookie, /metrics auth."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from prometheus_client import CollectorRegistry

from dbproxy.config import Address
from dbproxy.export.access import (
    COOKIE_NAME,
    AccessGuard,
    AccessPolicy,
    cookie_value,
    host_name,
    is_loopback,
)
from dbproxy.export.http import HttpServer, Response, Route, export_routes
from dbproxy.export.prometheus import DbproxyCollector
from tests.unit.export.snapshots import FixedSource, query, snapshot

TOKEN = "t0ken-for-the-http-api-0123456789"


class Served:
    def __init__(self, server: HttpServer, guard: AccessGuard, posted: list[bytes]) -> None:
        self.server = server
        self.guard = guard
        self.posted = posted

    async def request(
        self,
        method: str,
        target: str,
        *headers: str,
        host: str | None = "localhost:9391",
        body: bytes = b"",
    ) -> tuple[int, dict[str, str], bytes]:
        lines = [f"{method} {target} HTTP/1.1"]
        if host is not None:
            lines.append(f"Host: {host}")
        lines.extend(headers)
        lines.append(f"Content-Length: {len(body)}")
        data = ("\r\n".join(lines) + "\r\n\r\n").encode() + body
        addr = self.server.address
        reader, writer = await asyncio.open_connection(addr.host, addr.port)
        writer.write(data)
        await writer.drain()
        response = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        head, _, payload = response.partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        out: dict[str, str] = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            out[name.lower()] = value.strip()
        return int(status_line.split()[1]), out, payload


async def serve(policy: AccessPolicy, *, bound_host: str | None = None) -> Served:
    """``bound_host``: where the guard believes HTTP listens (the test binds 127.0.0.1
    either way, to be reachable; the guard's decisions depend only on this)."""
    source = FixedSource(snapshot(query("fp1")))
    registry = CollectorRegistry()
    collector = DbproxyCollector(source)
    registry.register(collector)
    posted: list[bytes] = []

    async def change(request: object) -> Response:
        posted.append(getattr(request, "body", b""))
        return Response.json(200, {"ok": True})

    routes = export_routes(
        stats=source,
        ready=lambda: (True, "ok"),
        registry=registry,
        collector=collector,
        api_token=policy.token,
        extra_routes=[Route(("POST",), "/api/change", change)],
    )
    holder: dict[str, HttpServer] = {}

    def bound() -> Address:
        real = holder["server"].address
        return Address(bound_host, real.port) if bound_host else real

    guard = AccessGuard(policy, bound=bound)
    routes.append(guard.login_route())
    server = HttpServer("127.0.0.1", 0, routes, guard=guard.check)
    holder["server"] = server
    await server.start()
    return Served(server, guard, posted)


@pytest.fixture
async def local() -> AsyncIterator[Served]:
    s = await serve(AccessPolicy(token=TOKEN, allowed_hosts=("dbproxy.internal", ".corp.example")))
    yield s
    await s.server.close()


@pytest.fixture
async def exposed() -> AsyncIterator[Served]:
    s = await serve(AccessPolicy(token=TOKEN), bound_host="0.0.0.0")
    yield s
    await s.server.close()


def test_host_name_and_loopback() -> None:
    assert host_name("[::1]:9391") == "::1" and host_name("Example.COM:80") == "example.com"
    assert host_name("::1") == "::1" and host_name("a") == "a"
    assert is_loopback("127.0.0.2") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.0.0.1")


@pytest.mark.parametrize(
    ("host", "status"),
    [
        ("localhost:9391", 200),
        ("LOCALHOST", 200),
        ("app.localhost:9391", 200),
        ("127.0.0.1:9391", 200),
        ("[::1]:9391", 200),
        ("10.1.2.3:9391", 200),  # an IP literal cannot be rebound
        ("dbproxy.internal:9391", 200),
        ("corp.example", 200),
        ("metrics.corp.example:9391", 200),
        ("evil.example:9391", 421),  # a rebound name
        ("dbproxy.internal.evil.example", 421),
        ("notcorp.example", 421),
        ("", 421),
    ],
)
async def test_host_header_is_checked_on_every_request(
    local: Served, host: str, status: int
) -> None:
    for path in ("/api/queries", "/", "/metrics", "/nowhere"):
        got, _, body = await local.request("GET", path, host=host)
        if status == 421:
            assert got == 421, (path, host)
            assert b"--http-allowed-hosts" in body
        else:
            assert got == (404 if path == "/nowhere" else 200), (path, host, body)


async def test_http10_without_host_is_accepted(local: Served) -> None:
    addr = local.server.address
    reader, writer = await asyncio.open_connection(addr.host, addr.port)
    writer.write(b"GET /healthz HTTP/1.0\r\n\r\n")
    response = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert response.startswith(b"HTTP/1.1 200")


async def test_writes_need_the_token_or_same_origin_even_on_loopback(local: Served) -> None:
    status, _, _ = await local.request("POST", "/api/change", body=b"a")
    assert status == 403 and local.posted == []
    # another site's page in the same browser
    status, _, _ = await local.request(
        "POST", "/api/change", "Origin: http://evil.example", "Sec-Fetch-Site: cross-site"
    )
    assert status == 403
    status, _, _ = await local.request("POST", "/api/change", "Authorization: Bearer wrong")
    assert status == 403 and local.posted == []
    # the token, or the UI (same origin)
    assert (await local.request("POST", "/api/change", f"Authorization: Bearer {TOKEN}"))[0] == 200
    assert (await local.request("POST", "/api/change", "Sec-Fetch-Site: same-origin"))[0] == 200
    status, _, _ = await local.request(
        "POST", "/api/change", "Origin: http://localhost:9391", host="localhost:9391"
    )
    assert status == 200 and len(local.posted) == 3
    # reads on loopback need nothing
    assert (await local.request("GET", "/api/queries"))[0] == 200
    assert local.guard.refused == 3


async def test_exposed_reads_need_the_token_or_the_login_cookie(exposed: Served) -> None:
    status, headers, _ = await exposed.request("GET", "/api/queries")
    assert status == 401 and headers["www-authenticate"] == "Bearer"
    status, headers, _ = await exposed.request("GET", "/")
    assert status == 303 and headers["location"] == "/login"
    assert (await exposed.request("GET", "/ui/app.js"))[0] == 303
    assert (await exposed.request("GET", "/healthz"))[0] == 200
    assert (await exposed.request("GET", "/readyz"))[0] == 200
    assert (await exposed.request("GET", "/metrics"))[0] == 200  # no --metrics-auth
    ok = await exposed.request("GET", "/api/queries", f"Authorization: Bearer {TOKEN}")
    assert ok[0] == 200 and b"fp1" in ok[2]
    # the login form, a wrong token, then the right one (query string and posted form)
    status, headers, page = await exposed.request("GET", "/login")
    assert status == 200 and b"<form" in page and TOKEN.encode() not in page
    assert (await exposed.request("GET", "/login?token=nope"))[0] == 401
    status, headers, _ = await exposed.request("GET", f"/login?token={TOKEN}")
    assert status == 303 and headers["location"] == "/"
    cookie = headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and TOKEN not in cookie
    value = cookie.split(";")[0]
    assert value == f"{COOKIE_NAME}={cookie_value(TOKEN)}"
    status, headers, _ = await exposed.request(
        "POST",
        "/login",
        "Content-Type: application/x-www-form-urlencoded",
        body=f"token={TOKEN}".encode(),
    )
    assert status == 303 and headers["set-cookie"].split(";")[0] == value
    assert (await exposed.request("GET", "/", f"Cookie: other=1; {value}"))[0] == 200
    assert (await exposed.request("GET", "/api/queries", f"Cookie: {value}"))[0] == 200
    assert (await exposed.request("GET", "/api/queries", f"Cookie: {COOKIE_NAME}=x"))[0] == 401
    # a write from the UI needs the cookie as well as the same origin
    same = "Sec-Fetch-Site: same-origin"
    assert (await exposed.request("POST", "/api/change", same))[0] == 403
    assert (await exposed.request("POST", "/api/change", same, f"Cookie: {value}"))[0] == 200
    # the cookie alone is not enough for a write (no same-origin proof)
    assert (await exposed.request("POST", "/api/change", f"Cookie: {value}"))[0] == 403


async def test_metrics_auth_and_live_policy_change(exposed: Served) -> None:
    exposed.guard.update(AccessPolicy(token=TOKEN, metrics_auth=True))
    status, _, body = await exposed.request("GET", "/metrics")
    assert status == 401 and b"--metrics-auth" in body
    ok = await exposed.request("GET", "/metrics", f"Authorization: Bearer {TOKEN}")
    assert ok[0] == 200 and b"dbproxy_" in ok[2]
    assert (await exposed.request("GET", "/metrics", "Authorization: Bearer x"))[0] == 401
    # a new token (SIGHUP): the old one stops working at once
    new = "another-token-0123456789abcdef"
    exposed.guard.update(AccessPolicy(token=new))
    assert (await exposed.request("GET", "/api/queries", f"Authorization: Bearer {TOKEN}"))[
        0
    ] == 401
    assert (await exposed.request("GET", "/api/queries", f"Authorization: Bearer {new}"))[0] == 200
    assert (await exposed.request("GET", "/metrics"))[0] == 200
