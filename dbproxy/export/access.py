"""Who may use the HTTP server: Host check, token, same-origin writes.

Every request goes through :meth:`AccessGuard.check` before routing
(:class:`~dbproxy.export.http.HttpServer`'s ``guard``):

1. **Host header** (DNS rebinding: a web page whose name re-resolves to 127.0.0.1 must
   not read the API with the victim's browser).  Accepted: no Host (HTTP/1.0), ``localhost``
   and ``*.localhost``, any IP literal (an IP cannot be rebound), the listen host, and the
   names of ``--http-allowed-hosts`` (``*`` any, ``.example.com`` the domain and its
   subdomains).  Anything else: 421.
2. ``/healthz``, ``/readyz`` and ``/login`` are always open; ``/metrics`` needs the token
   only with ``--metrics-auth``.
3. **Reads** (GET/HEAD of ``/api/…`` and the UI) need the token when HTTP listens on a
   non-loopback address and a token is configured: ``Authorization: Bearer <token>`` or
   the UI's cookie, set by ``GET /login?token=…`` (an HMAC of the token, ``HttpOnly;
   SameSite=Strict``, so the token itself is not stored by the browser).
4. **Writes** (every other method) need the bearer token, or a same-origin browser request
   (``Sec-Fetch-Site: same-origin`` or an ``Origin`` equal to the Host it was sent to)
   plus the cookie where reads need it — on loopback too, so another site open in the
   same browser cannot post.

The policy is replaced whole on SIGHUP (:meth:`AccessGuard.update`).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
from collections.abc import Callable
from dataclasses import dataclass
from html import escape
from urllib.parse import parse_qsl, urlsplit

from dbproxy.config import Address
from dbproxy.export.http import Request, Response, Route

log = logging.getLogger(__name__)

COOKIE_NAME = "dbproxy_auth"
OPEN_PATHS = frozenset(["/healthz", "/readyz", "/login"])
_READ_METHODS = frozenset(["GET", "HEAD"])


@dataclass(frozen=True, slots=True, kw_only=True)
class AccessPolicy:
    token: str | None = None
    allowed_hosts: tuple[str, ...] = ()
    metrics_auth: bool = False


def is_loopback(host: str) -> bool:
    """``localhost`` or a loopback IP literal (``127.0.0.0/8``, ``::1``)."""
    name = host.strip("[]").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def host_name(header: str) -> str:
    """The name part of a Host header value: ``[::1]:80`` -> ``::1``, ``a:1`` -> ``a``."""
    value = header.strip().lower()
    if value.startswith("["):
        return value[1:].partition("]")[0]
    return value.rpartition(":")[0] if value.count(":") == 1 else value


def cookie_value(token: str) -> str:
    """What the UI's cookie holds: derived from the token, not the token."""
    return hmac.new(token.encode(), b"dbproxy web UI session", hashlib.sha256).hexdigest()


def _equal(given: str, expected: str) -> bool:
    return hmac.compare_digest(
        given.encode("utf-8", "surrogateescape"), expected.encode("utf-8", "surrogateescape")
    )


class AccessGuard:
    def __init__(self, policy: AccessPolicy, *, bound: Callable[[], Address]) -> None:
        self.policy = policy
        #: where the HTTP server listens (read per request: port 0 resolves at start)
        self.bound = bound
        self.refused = 0

    def update(self, policy: AccessPolicy) -> None:
        self.policy = policy

    def reads_need_token(self) -> bool:
        return self.policy.token is not None and not is_loopback(self.bound().host)

    def host_allowed(self, header: str | None) -> bool:
        if header is None:
            return True
        name = host_name(header)
        if not name:
            return False
        if name == "localhost" or name.endswith(".localhost"):
            return True
        try:
            ipaddress.ip_address(name)
            return True
        except ValueError:
            pass
        if name == self.bound().host.strip("[]").lower():
            return True
        for allowed in self.policy.allowed_hosts:
            if allowed in ("*", name):
                return True
            if allowed.startswith(".") and (name == allowed[1:] or name.endswith(allowed)):
                return True
        return False

    def _bearer_ok(self, request: Request) -> bool:
        token = self.policy.token
        scheme, _, given = (request.header("authorization") or "").partition(" ")
        return token is not None and scheme.lower() == "bearer" and _equal(given.strip(), token)

    def _cookie_ok(self, request: Request) -> bool:
        token = self.policy.token
        if token is None:
            return False
        expected = cookie_value(token)
        for part in (request.header("cookie") or "").split(";"):
            name, _, value = part.strip().partition("=")
            if name == COOKIE_NAME and _equal(value, expected):
                return True
        return False

    @staticmethod
    def same_origin(request: Request) -> bool:
        if request.header("sec-fetch-site") == "same-origin":
            return True
        origin, host = request.header("origin"), request.header("host")
        return bool(origin and host and urlsplit(origin).netloc.lower() == host.lower())

    def check(self, request: Request) -> Response | None:
        """None: go ahead; else the refusal to send."""
        refusal = self._refusal(request)
        if refusal is not None:
            self.refused += 1
            log.debug("HTTP %s %s refused: %d", request.method, request.path, refusal.status)
        return refusal

    def _refusal(self, request: Request) -> Response | None:
        if not self.host_allowed(request.header("host")):
            return Response.text(
                421,
                "Host header not accepted (DNS rebinding protection): reach dbproxy by "
                "localhost or an IP address, or add the name to --http-allowed-hosts\n",
            )
        path = request.path
        if path in OPEN_PATHS:
            return None
        if path == "/metrics" and request.method in _READ_METHODS:
            if not self.policy.metrics_auth or self._bearer_ok(request):
                return None
            return _unauthorized("/metrics needs 'Authorization: Bearer <token>' (--metrics-auth)")
        if request.method in _READ_METHODS:
            if not self.reads_need_token() or self._bearer_ok(request) or self._cookie_ok(request):
                return None
            if path == "/" or path.startswith("/ui/"):
                return Response(status=303, headers=(("Location", "/login"),))
            return _unauthorized("send 'Authorization: Bearer <token>' or log in at /login")
        if self._bearer_ok(request):
            return None
        if self.same_origin(request) and (not self.reads_need_token() or self._cookie_ok(request)):
            return None
        return Response.json(
            403,
            {
                "error": "a state-changing request needs 'Authorization: Bearer <token>' "
                "(DBPROXY_API_TOKEN / --api-token-file) or must come from the web UI"
            },
        )

    def login_route(self) -> Route:
        return Route(("GET", "POST"), "/login", self.login)

    async def login(self, request: Request) -> Response:
        """``/login``: a form (posted, so the token stays out of the browser's history);
        ``/login?token=…`` or the form's post: sets the UI cookie and goes to ``/``."""
        given = dict(request.query).get("token")
        if request.method == "POST":
            try:
                form = dict(parse_qsl(request.body.decode("utf-8"), max_num_fields=8))
            except (UnicodeDecodeError, ValueError):
                form = {}
            given = form.get("token", "")
        token = self.policy.token
        if given is not None and token is not None and _equal(given, token):
            cookie = f"{COOKIE_NAME}={cookie_value(token)}; Path=/; HttpOnly; SameSite=Strict"
            return Response(
                status=303,
                headers=(
                    ("Location", "/"),
                    ("Set-Cookie", cookie),
                    ("Referrer-Policy", "no-referrer"),
                ),
            )
        status = 401 if given is not None else 200
        message = "wrong token" if given is not None else "this dbproxy needs its HTTP token"
        if token is None:
            message = "no token is configured: the UI needs no login"
        page = (
            "<!doctype html><meta charset=utf-8><title>dbproxy login</title>"
            f"<p>{escape(message)}</p><form method=post action=/login>"
            "<input type=password name=token autocomplete=current-password>"
            " <button>Log in</button></form>"
        )
        return Response(
            status=status,
            body=page.encode(),
            content_type="text/html; charset=utf-8",
            headers=(
                ("Content-Security-Policy", "default-src 'none'; form-action 'self'"),
                ("Referrer-Policy", "no-referrer"),
            ),
        )


def _unauthorized(message: str) -> Response:
    return Response.json(401, {"error": message}, headers=(("WWW-Authenticate", "Bearer"),))
