"""One small HTTP/1.1 server for everything dbproxy serves: metrics, JSON API, health.

Built on ``asyncio.start_server`` with a strict parser and no dependencies: request line
and headers up to ``max_header_bytes`` (431 beyond), ``Content-Length`` bodies only (413
beyond ``max_body_bytes``, 501 for ``Transfer-Encoding``), origin-form targets, HTTP/1.0
and 1.1 only (505), ``Host`` required for 1.1, one request per connection (every response
says ``Connection: close``).  ``HEAD`` is answered wherever ``GET`` is.

Routes: ``/healthz`` (the process answers), ``/readyz`` (a ``ready()`` callable the
composition root provides), ``/metrics`` (Prometheus text or OpenMetrics; rendered in a
worker thread from a snapshot taken on the loop), ``/api/queries``,
``/api/queries/{fingerprint}``, ``/api/connections``, ``POST /api/reset`` (bearer token),
and the web UI: ``/`` and ``/ui/{asset}`` (static files shipped in ``dbproxy/export/ui``)
plus ``/api/ui-config``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import inspect
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any
from urllib.parse import parse_qsl, unquote

from prometheus_client.registry import CollectorRegistry

from dbproxy.config import Address
from dbproxy.export import api
from dbproxy.export.prometheus import DbproxyCollector, render

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 9391
_LINGER_S = 1.0
_LINGER_MAX_BYTES = 1 << 20

_REASONS = {
    200: "OK",
    303: "See Other",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    413: "Content Too Large",
    421: "Misdirected Request",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
    503: "Service Unavailable",
    505: "HTTP Version Not Supported",
}
_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_REQUEST_LINE = re.compile(rf"({_TOKEN}) (/[\x21-\x7e]*) HTTP/(\d)\.(\d)")
_HEADER = re.compile(rf"({_TOKEN}):[ \t]*([^\x00-\x08\x0a-\x1f\x7f]*?)[ \t]*")


@dataclass(frozen=True, slots=True, kw_only=True)
class Request:
    method: str
    path: str  # percent-decoded, without the query string
    query: tuple[tuple[str, str], ...]
    headers: Mapping[str, str]  # lower-case names; repeated headers joined with ", "
    body: bytes = b""
    path_params: Mapping[str, str] = field(default_factory=dict)

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


@dataclass(frozen=True, slots=True, kw_only=True)
class Response:
    status: int = 200
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def text(cls, status: int, text: str) -> Response:
        return cls(status=status, body=text.encode())

    @classmethod
    def json(cls, status: int, payload: Any, headers: tuple[tuple[str, str], ...] = ()) -> Response:
        body = json.dumps(payload, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        return cls(
            status=status,
            body=body.encode() + b"\n",
            content_type="application/json",
            headers=headers,
        )


Handler = Callable[[Request], Awaitable[Response]]
#: runs before routing (export/access.py): None lets the request through, else the refusal
Guard = Callable[[Request], "Response | None"]


@dataclass(frozen=True, slots=True)
class Route:
    """``pattern`` is a path whose segments may be ``{name}`` (one non-empty segment)."""

    methods: tuple[str, ...]
    pattern: str
    handler: Handler

    def match(self, path: str) -> dict[str, str] | None:
        want = self.pattern.split("/")
        got = path.split("/")
        if len(want) != len(got):
            return None
        params: dict[str, str] = {}
        for w, g in zip(want, got, strict=True):
            if w.startswith("{") and w.endswith("}"):
                if not g:
                    return None
                params[w[1:-1]] = unquote(g, errors="strict")
            elif w != g:
                return None
        return params


class _HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class HttpServer:
    """``await HttpServer(host, port, routes).start()``; ``address``; ``await close()``."""

    def __init__(
        self,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        routes: Sequence[Route] = (),
        *,
        max_header_bytes: int = 16 * 1024,
        max_body_bytes: int = 64 * 1024,
        request_timeout: float = 10.0,
        max_connections: int = 64,
        guard: Guard | None = None,
    ) -> None:
        self.guard = guard
        self.host = host
        self.port = port
        self.routes = tuple(routes)
        self.max_header_bytes = max_header_bytes
        self.max_body_bytes = max_body_bytes
        self.request_timeout = request_timeout
        self.max_connections = max_connections
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._serve, self.host, self.port, limit=self.max_header_bytes
        )

    @property
    def address(self) -> Address:
        """Where it listens (with the real port when 0 was asked for)."""
        assert self._server is not None and self._server.sockets
        host, port = self._server.sockets[0].getsockname()[:2]
        return Address(host, port)

    async def close(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None

    async def __aenter__(self) -> HttpServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            if len(self._tasks) > self.max_connections:
                await self._write(writer, Response.text(503, "too many connections\n"), "GET")
                return
            method = "GET"
            try:
                async with asyncio.timeout(self.request_timeout):
                    request = await self._read_request(reader)
                method = request.method
                refusal = self.guard(request) if self.guard is not None else None
                response = refusal or await self._dispatch(request)
            except _HttpError as exc:
                response = Response.text(exc.status, exc.message + "\n")
            except TimeoutError:
                response = Response.text(408, "request timeout\n")
            except asyncio.IncompleteReadError:
                return  # the client went away before sending a whole request
            await self._write(writer, response, method)
        except ConnectionError:
            pass
        except asyncio.CancelledError:
            writer.close()  # server shutdown: no lingering
            raise
        finally:
            self._tasks.discard(task)
            if not writer.is_closing():
                with contextlib.suppress(ConnectionError, TimeoutError):
                    await self._lingering_close(reader, writer)
            writer.close()
            with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                await writer.wait_closed()

    @staticmethod
    async def _lingering_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Half-close, then discard what the client still sends (briefly): closing with
        unread input makes the kernel send RST, and the client may lose our response."""
        if writer.is_closing() or not writer.can_write_eof():
            return
        writer.write_eof()
        async with asyncio.timeout(_LINGER_S):
            discarded = 0
            while discarded < _LINGER_MAX_BYTES:
                chunk = await reader.read(65536)
                if not chunk:
                    break
                discarded += len(chunk)

    async def _read_request(self, reader: asyncio.StreamReader) -> Request:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            raise _HttpError(431, "request header too large") from None
        except asyncio.IncompleteReadError as exc:
            if exc.partial:
                raise _HttpError(400, "incomplete request") from None
            raise
        try:
            text = head[:-4].decode("ascii")
        except UnicodeDecodeError:
            raise _HttpError(400, "non-ASCII bytes in the request head") from None
        lines = text.split("\r\n")
        if any("\r" in line or "\n" in line for line in lines):
            raise _HttpError(400, "bare CR or LF in the request head")
        m = _REQUEST_LINE.fullmatch(lines[0])
        if m is None:
            raise _HttpError(400, "malformed request line")
        method, target, major, minor = m.groups()
        if major != "1" or minor not in ("0", "1"):
            raise _HttpError(505, "only HTTP/1.0 and HTTP/1.1 are supported")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            h = _HEADER.fullmatch(line)
            if h is None:
                raise _HttpError(400, "malformed header line")
            name, value = h.group(1).lower(), h.group(2)
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        if minor == "1" and "host" not in headers:
            raise _HttpError(400, "missing Host header")
        if "transfer-encoding" in headers:
            raise _HttpError(501, "Transfer-Encoding is not supported; send Content-Length")
        body = b""
        if "content-length" in headers:
            values = {v.strip() for v in headers["content-length"].split(",")}
            if len(values) != 1 or not (raw := values.pop()).isdigit():
                raise _HttpError(400, "invalid Content-Length")
            length = int(raw)
            if length > self.max_body_bytes:
                raise _HttpError(413, f"request body larger than {self.max_body_bytes} bytes")
            body = await reader.readexactly(length)
        raw_path, _, raw_query = target.partition("?")
        try:
            query = tuple(
                parse_qsl(
                    raw_query,
                    keep_blank_values=True,
                    strict_parsing=True,
                    errors="strict",
                    max_num_fields=64,
                )
            )
        except (ValueError, UnicodeDecodeError):
            raise _HttpError(400, "malformed query string") from None
        return Request(method=method, path=raw_path, query=query, headers=headers, body=body)

    async def _dispatch(self, request: Request) -> Response:
        allowed: list[str] = []
        for route in self.routes:
            try:
                params = route.match(request.path)
            except UnicodeDecodeError:
                raise _HttpError(400, "malformed percent-encoding in the path") from None
            if params is None:
                continue
            methods = route.methods + (("HEAD",) if "GET" in route.methods else ())
            if request.method not in methods:
                allowed.extend(m for m in methods if m not in allowed)
                continue
            try:
                return await route.handler(
                    Request(
                        method=request.method,
                        path=request.path,
                        query=request.query,
                        headers=request.headers,
                        body=request.body,
                        path_params=params,
                    )
                )
            except api.ApiError as exc:
                return Response.json(exc.status, exc.body(), tuple(exc.headers.items()))
            except Exception:
                log.exception("HTTP handler for %s %s failed", request.method, request.path)
                return Response.text(500, "internal error\n")
        if allowed:
            return Response(
                status=405,
                body=b"method not allowed\n",
                headers=(("Allow", ", ".join(allowed)),),
            )
        return Response.text(404, "not found\n")

    @staticmethod
    async def _write(writer: asyncio.StreamWriter, response: Response, method: str) -> None:
        reason = _REASONS.get(response.status, "")
        head = [
            f"HTTP/1.1 {response.status} {reason}",
            f"Content-Type: {response.content_type}",
            f"Content-Length: {len(response.body)}",
            "Connection: close",
            *(
                ()
                if any(name.lower() == "cache-control" for name, _ in response.headers)
                else ("Cache-Control: no-store",)
            ),
            *(f"{name}: {value}" for name, value in response.headers),
        ]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
        if method != "HEAD":
            writer.write(response.body)
        await writer.drain()


# --- handlers ---------------------------------------------------------------------------

ReadyCheck = Callable[[], tuple[bool, str] | Awaitable[tuple[bool, str]]]


def health_routes(ready: ReadyCheck, *, ready_timeout: float = 5.0) -> list[Route]:
    """``/healthz``: 200 while the process answers; ``/readyz``: 200 or 503 with the reason."""

    async def healthz(_: Request) -> Response:
        return Response.text(200, "ok\n")

    async def readyz(_: Request) -> Response:
        try:
            async with asyncio.timeout(ready_timeout):
                result = ready()
                if inspect.isawaitable(result):
                    result = await result
            ok, reason = result
        except TimeoutError:
            ok, reason = False, f"readiness check timed out after {ready_timeout:g}s"
        except Exception as exc:
            log.debug("readiness check failed", exc_info=True)
            ok, reason = False, f"readiness check failed: {type(exc).__name__}"
        if ok:
            return Response.text(200, (reason or "ok") + "\n")
        return Response.text(503, (reason or "not ready") + "\n")

    return [Route(("GET",), "/healthz", healthz), Route(("GET",), "/readyz", readyz)]


class MetricsEndpoint:
    """``GET /metrics``: text format 0.0.4, or OpenMetrics when the ``Accept`` header asks.

    The snapshot is taken on the event loop (``collector.pinned()``); turning ~1000 series
    into text takes ~100 ms of CPU, so that part runs in a worker thread (one at a time) to
    keep the loop responsive.  Gzip when the scraper accepts it (Prometheus does).
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        collector: DbproxyCollector | None = None,
        *,
        in_thread: bool = True,
    ) -> None:
        self.registry = registry
        self.collector = collector
        self.in_thread = in_thread
        self._lock = asyncio.Lock()

    def route(self) -> Route:
        return Route(("GET",), "/metrics", self)

    def _render(self, accept: str | None, gzip_ok: bool) -> tuple[bytes, str, bool]:
        body, content_type = render(self.registry, accept)
        if gzip_ok:
            return gzip.compress(body, compresslevel=1), content_type, True
        return body, content_type, False

    async def __call__(self, request: Request) -> Response:
        accept = request.header("accept")
        encodings = request.header("accept-encoding") or ""
        gzip_ok = "gzip" in (e.split(";")[0].strip().lower() for e in encodings.split(","))
        async with self._lock:
            with self.collector.pinned() if self.collector else contextlib.nullcontext():
                # Without a collector to pin, collect() would snapshot in the worker thread.
                if self.in_thread and self.collector is not None:
                    body, content_type, gzipped = await asyncio.to_thread(
                        self._render, accept, gzip_ok
                    )
                else:
                    body, content_type, gzipped = self._render(accept, gzip_ok)
        headers = (("Content-Encoding", "gzip"), ("Vary", "Accept-Encoding")) if gzipped else ()
        return Response(status=200, body=body, content_type=content_type, headers=headers)


class ApiEndpoints:
    """``/api/queries``, ``/api/queries/{fingerprint}``, ``POST /api/reset``."""

    def __init__(
        self,
        stats: api.StatsSource,
        *,
        api_token: api.TokenSource = None,
        clock: Callable[[], float] = time.time,
        row_extras: api.RowExtras | None = None,
    ) -> None:
        self.stats = stats
        self.api_token = api_token
        self.clock = clock
        self.row_extras = row_extras

    def routes(self) -> list[Route]:
        return [
            Route(("GET",), "/api/queries", self.queries),
            Route(("GET",), "/api/queries/{fingerprint}", self.query),
            Route(("GET",), "/api/connections", self.connections),
            Route(("POST",), "/api/reset", self.reset),
        ]

    async def queries(self, request: Request) -> Response:
        params = api.parse_queries_params(request.query)
        snapshot = self.stats.snapshot(top=None)
        return Response.json(200, api.queries(snapshot, params, self.row_extras))

    async def query(self, request: Request) -> Response:
        if request.query:
            raise api.ApiError(400, "this endpoint takes no parameters")
        snapshot = self.stats.snapshot(top=None)
        fingerprint = request.path_params["fingerprint"]
        return Response.json(200, api.query_detail(snapshot, fingerprint, self.row_extras))

    async def connections(self, request: Request) -> Response:
        if request.query:
            raise api.ApiError(400, "this endpoint takes no parameters")
        return Response.json(200, api.connections(self.stats.snapshot(top=None)))

    async def reset(self, request: Request) -> Response:
        api.authorize_reset(api.current_token(self.api_token), request.header("authorization"))
        return Response.json(200, api.reset(self.stats, now=self.clock()))


#: the UI's files (package data in ``dbproxy/export/ui``) and their content types
UI_ASSETS: Mapping[str, str] = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}
#: scripts, styles, images and fetches from this origin only; no inline script or style
UI_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
_UI_HEADERS = (
    ("Cache-Control", "no-cache"),
    ("Content-Security-Policy", UI_CSP),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
)


class UiEndpoints:
    """``GET /`` (the page), ``GET /ui/{asset}`` (its files), ``GET /api/ui-config``.

    The files are read once, here, from the package: only the names in
    :data:`UI_ASSETS` are served, so a path can never reach anything else.
    """

    def __init__(self, *, trace_url_template: str | None = None) -> None:
        self.trace_url_template = trace_url_template
        package = resources.files("dbproxy.export.ui")
        self.assets: dict[str, bytes] = {
            name: package.joinpath(name).read_bytes() for name in UI_ASSETS
        }

    def routes(self) -> list[Route]:
        return [
            Route(("GET",), "/", self.index),
            Route(("GET",), "/ui/{asset}", self.asset),
            Route(("GET",), "/api/ui-config", self.config),
        ]

    def _file(self, name: str) -> Response:
        return Response(
            status=200,
            body=self.assets[name],
            content_type=UI_ASSETS[name],
            headers=_UI_HEADERS,
        )

    async def index(self, _: Request) -> Response:
        return self._file("index.html")

    async def asset(self, request: Request) -> Response:
        name = request.path_params["asset"]
        if name not in self.assets:
            return Response.text(404, "not found\n")
        return self._file(name)

    async def config(self, request: Request) -> Response:
        if request.query:
            raise api.ApiError(400, "this endpoint takes no parameters")
        return Response.json(200, api.ui_config(self.trace_url_template))


def export_routes(
    *,
    stats: api.StatsSource,
    ready: ReadyCheck,
    registry: CollectorRegistry | None = None,
    collector: DbproxyCollector | None = None,
    api_token: api.TokenSource = None,
    ui: bool = True,
    trace_url_template: str | None = None,
    extra_routes: Iterable[Route] = (),
    row_extras: api.RowExtras | None = None,
) -> list[Route]:
    """All of dbproxy's routes; ``/metrics`` only when a registry is given; the web UI
    unless ``ui`` is false (``trace_url_template`` links its trace ids to a trace UI).
    ``extra_routes``: endpoints of optional features (findings, plans …) that the
    composition root builds only when they are on; ``row_extras``: fields such a feature
    adds to ``/api/queries`` rows."""
    routes: Iterable[Route] = [
        *health_routes(ready),
        *ApiEndpoints(stats, api_token=api_token, row_extras=row_extras).routes(),
        *extra_routes,
    ]
    if ui:
        routes = [*routes, *UiEndpoints(trace_url_template=trace_url_template).routes()]
    if registry is not None:
        routes = [*routes, MetricsEndpoint(registry, collector).route()]
    return list(routes)
