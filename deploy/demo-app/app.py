"""shop: a small HTTP service for the compose stack, instrumented with OpenTelemetry.

It talks to PostgreSQL through dbproxy with psycopg 3, with OpenTelemetry's psycopg
instrumentation and its sqlcommenter on (`enable_commenter=True`): every statement carries
the request's `traceparent`, so dbproxy's statement spans land inside the request's trace
and its latency exemplars link to it. Each query also carries `route` and `version`
sqlcommenter tags (dbproxy exports them with `--metrics-tags`; Grafana marks new versions).

A load generator inside the process sends realistic requests to the service itself
(`DEMO_RPS` per second): order history, product pages, new orders, a daily report. The
regression switch drops the index behind the order-history query and bumps the version, as
a bad deploy would: `POST /admin/regression` (or `DEMO_REGRESSION_AFTER_S` seconds after
start); `POST /admin/fix` recreates the index.

Configuration (environment): DATABASE_URL, PORT (8080), DEMO_RPS (20),
DEMO_REGRESSION_AFTER_S (0 = only on request), APP_VERSION (1.4.2), DEMO_ORDERS
(300000, rows loaded on first start), and the standard
OTEL_* variables (OTEL_SERVICE_NAME, OTEL_EXPORTER_OTLP_ENDPOINT, …).
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import quote

import psycopg
from opentelemetry import propagate, trace
from opentelemetry._logs import set_logger_provider
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor
from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode

log = logging.getLogger("shop")

SCHEMA = """
CREATE TABLE IF NOT EXISTS customers (id int PRIMARY KEY, email text NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS products (
    id int PRIMARY KEY, name text NOT NULL, price_cents int NOT NULL);
CREATE TABLE IF NOT EXISTS orders (
    id bigserial PRIMARY KEY, customer_id int NOT NULL REFERENCES customers,
    status text NOT NULL, total_cents int NOT NULL, created_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE IF NOT EXISTS order_items (
    order_id bigint NOT NULL REFERENCES orders, product_id int NOT NULL REFERENCES products,
    quantity int NOT NULL);
"""
SEED = """
INSERT INTO customers SELECT g, 'customer' || g || '@example.com' FROM generate_series(1, 5000) g;
INSERT INTO products SELECT g, 'product ' || g, 100 + g * 7 % 9000 FROM generate_series(1, 500) g;
INSERT INTO orders (customer_id, status, total_cents, created_at)
    SELECT 1 + g % 5000, (ARRAY['new', 'paid', 'shipped'])[1 + g % 3], 500 + g % 20000,
           now() - make_interval(mins => g % 100000)
    FROM generate_series(1, %(orders)s) g;
INSERT INTO order_items SELECT id, 1 + id % 500, 1 + id % 3 FROM orders;
"""
INDEX = "CREATE INDEX IF NOT EXISTS orders_customer_id_idx ON orders (customer_id, created_at)"


class Shop:
    def __init__(self, dsn: str, version: str) -> None:
        self.dsn = dsn
        self.version = version
        self._local = threading.local()

    def conn(self) -> psycopg.Connection[Any]:
        conn: psycopg.Connection[Any] | None = getattr(self._local, "conn", None)
        if conn is None or conn.closed:
            conn = psycopg.connect(self.dsn, autocommit=True, application_name="shop")
            self._local.conn = conn
        return conn

    def sql(self, route: str, statement: str) -> str:
        """The statement with its attribution tags (the commenter adds traceparent).

        sqlcommenter values are URL-encoded inside single quotes (`%` doubled for psycopg's
        placeholder syntax)."""
        tags = f"route='{quote(route, safe='')}',version='{quote(self.version)}'"
        return f"{statement} /*{tags.replace('%', '%%')}*/"

    def setup(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True, application_name="shop-setup") as conn:
            conn.execute(SCHEMA)
            if conn.execute("SELECT count(*) FROM customers").fetchone() == (0,):
                orders = int(os.environ.get("DEMO_ORDERS", "300000"))
                log.info("loading the shop: 5,000 customers, %d orders", orders)
                with conn.transaction():
                    conn.execute(SEED.replace("%(orders)s", str(orders)))
            conn.execute(INDEX)
            conn.execute("ANALYZE")

    def order_history(self, customer_id: int) -> list[dict[str, Any]]:
        rows = self.conn().execute(
            self.sql(
                "/customers/:id/orders",
                "SELECT id, status, total_cents, created_at FROM orders "
                "WHERE customer_id = %s ORDER BY created_at DESC LIMIT 20",
            ),
            (customer_id,),
        )
        return [
            {"id": r[0], "status": r[1], "total_cents": r[2], "created_at": r[3].isoformat()}
            for r in rows
        ]

    def product(self, product_id: int) -> dict[str, Any] | None:
        row = (
            self.conn()
            .execute(
                self.sql(
                    "/products/:id", "SELECT id, name, price_cents FROM products WHERE id = %s"
                ),
                (product_id,),
            )
            .fetchone()
        )
        return None if row is None else {"id": row[0], "name": row[1], "price_cents": row[2]}

    def place_order(self, customer_id: int, items: list[tuple[int, int]]) -> int:
        conn = self.conn()
        with conn.transaction():
            total = 0
            for product_id, quantity in items:
                price = conn.execute(
                    self.sql(
                        "/orders", "SELECT price_cents FROM products WHERE id = %s FOR UPDATE"
                    ),
                    (product_id,),
                ).fetchone()
                if price is None:
                    raise LookupError(f"no product {product_id}")
                total += price[0] * quantity
            row = conn.execute(
                self.sql(
                    "/orders",
                    "INSERT INTO orders (customer_id, status, total_cents) "
                    "VALUES (%s, 'new', %s) RETURNING id",
                ),
                (customer_id, total),
            ).fetchone()
            assert row is not None
            with conn.cursor() as cur:
                cur.executemany(
                    self.sql(
                        "/orders",
                        "INSERT INTO order_items (order_id, product_id, quantity) "
                        "VALUES (%s, %s, %s)",
                    ),
                    [(row[0], p, q) for p, q in items],
                )
            return int(row[0])

    def daily_report(self) -> list[dict[str, Any]]:
        rows = self.conn().execute(
            self.sql(
                "/reports/daily",
                "SELECT status, count(*), sum(total_cents) FROM orders "
                "WHERE created_at > now() - interval '1 day' GROUP BY status ORDER BY status",
            )
        )
        return [{"status": r[0], "orders": r[1], "total_cents": r[2]} for r in rows]

    def regress(self) -> None:
        """A bad deploy: the index behind the order history goes, and the version changes."""
        with psycopg.connect(self.dsn, autocommit=True, application_name="shop-admin") as conn:
            conn.execute("DROP INDEX IF EXISTS orders_customer_id_idx")
        self.version = bump(self.version)
        log.warning("regression injected: dropped orders_customer_id_idx, version %s", self.version)

    def fix(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True, application_name="shop-admin") as conn:
            conn.execute(INDEX)
        self.version = bump(self.version)
        log.info("regression fixed: orders_customer_id_idx recreated, version %s", self.version)


def bump(version: str) -> str:
    major, minor, *_ = [*version.split("."), "0", "0"]
    return f"{major}.{int(minor) + 1}.0"


ROUTES: list[tuple[str, re.Pattern[str], str]] = [
    ("GET", re.compile(r"/customers/(\d+)/orders"), "/customers/:id/orders"),
    ("GET", re.compile(r"/products/(\d+)"), "/products/:id"),
    ("POST", re.compile(r"/orders"), "/orders"),
    ("GET", re.compile(r"/reports/daily"), "/reports/daily"),
    ("POST", re.compile(r"/admin/regression"), "/admin/regression"),
    ("POST", re.compile(r"/admin/fix"), "/admin/fix"),
    ("GET", re.compile(r"/healthz"), "/healthz"),
]


def make_handler(shop: Shop, tracer: trace.Tracer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self._handle("GET")

        def do_POST(self) -> None:
            self._handle("POST")

        def _handle(self, method: str) -> None:
            path = self.path.split("?")[0]
            found = next(
                (
                    (route, m)
                    for verb, pattern, route in ROUTES
                    if verb == method and (m := pattern.fullmatch(path))
                ),
                None,
            )
            if found is None:
                self._reply(404, {"error": "not found"})
                return
            route, match = found
            ctx = propagate.extract(dict(self.headers))
            with tracer.start_as_current_span(
                f"{method} {route}",
                context=ctx,
                kind=SpanKind.SERVER,
                attributes={"http.request.method": method, "http.route": route},
            ) as span:
                try:
                    status, body = self._route(route, match)
                except Exception as exc:
                    span.record_exception(exc)
                    span.set_status(Status(StatusCode.ERROR))
                    log.exception("%s %s failed", method, route)
                    status, body = 500, {"error": type(exc).__name__}
                span.set_attribute("http.response.status_code", status)
                self._reply(status, body)

        def _route(self, route: str, match: re.Match[str]) -> tuple[int, Any]:
            if route == "/customers/:id/orders":
                return 200, shop.order_history(int(match.group(1)))
            if route == "/products/:id":
                product = shop.product(int(match.group(1)))
                return (200, product) if product else (404, {"error": "no such product"})
            if route == "/orders":
                length = int(self.headers.get("Content-Length", "0"))
                order = json.loads(self.rfile.read(length) or b"{}")
                items = [(int(i["product_id"]), int(i["quantity"])) for i in order["items"]]
                return 201, {"id": shop.place_order(int(order["customer_id"]), items)}
            if route == "/reports/daily":
                return 200, shop.daily_report()
            if route == "/admin/regression":
                shop.regress()
                return 200, {"version": shop.version, "dropped": "orders_customer_id_idx"}
            if route == "/admin/fix":
                shop.fix()
                return 200, {"version": shop.version}
            return 200, {"status": "ok", "version": shop.version}

        def _reply(self, status: int, body: Any) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


def load(base: str, rps: float, stop: threading.Event) -> None:
    """Realistic traffic: mostly reads, some orders, the odd report."""
    rng = random.Random()

    def request(method: str, path: str, body: Any = None) -> None:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(base + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        try:
            urllib.request.urlopen(req, timeout=10).close()
        except (urllib.error.URLError, OSError) as exc:
            log.debug("load request %s %s: %s", method, path, exc)

    actions: list[tuple[float, Callable[[], None]]] = [
        (0.45, lambda: request("GET", f"/customers/{rng.randint(1, 5000)}/orders")),
        (0.40, lambda: request("GET", f"/products/{rng.randint(1, 520)}")),  # a few 404s
        (
            0.14,
            lambda: request(
                "POST",
                "/orders",
                {
                    "customer_id": rng.randint(1, 5000),
                    "items": [
                        {"product_id": rng.randint(1, 500), "quantity": rng.randint(1, 3)}
                        for _ in range(rng.randint(1, 4))
                    ],
                },
            ),
        ),
        (0.01, lambda: request("GET", "/reports/daily")),
    ]
    weights = [w for w, _ in actions]
    while not stop.is_set():
        started = time.monotonic()
        rng.choices(actions, weights)[0][1]()
        stop.wait(max(0.0, rng.expovariate(rps) - (time.monotonic() - started)))


def main() -> None:
    resource = Resource.create({"service.version": os.environ.get("APP_VERSION", "1.4.2")})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    logs = LoggerProvider(resource=resource)
    logs.add_log_record_processor(BatchLogRecordProcessor(OTLPLogExporter()))
    set_logger_provider(logs)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger().addHandler(LoggingHandler(level=logging.INFO, logger_provider=logs))
    # client spans per statement, and the traceparent in a sqlcommenter comment
    PsycopgInstrumentor().instrument(enable_commenter=True, commenter_options={})

    shop = Shop(os.environ["DATABASE_URL"], os.environ.get("APP_VERSION", "1.4.2"))
    for attempt in range(60):
        try:
            shop.setup()
            break
        except psycopg.OperationalError as exc:
            log.info("waiting for the database (%s)", exc)
            time.sleep(min(1 + attempt, 5))
    else:
        raise SystemExit("shop: the database never answered")

    port = int(os.environ.get("PORT", "8080"))
    server = ThreadingHTTPServer(("0.0.0.0", port), make_handler(shop, trace.get_tracer("shop")))
    stop = threading.Event()
    rps = float(os.environ.get("DEMO_RPS", "20"))
    for _ in range(4):
        threading.Thread(
            target=load, args=(f"http://127.0.0.1:{port}", rps / 4, stop), daemon=True
        ).start()
    after = float(os.environ.get("DEMO_REGRESSION_AFTER_S", "0"))
    if after > 0:
        threading.Timer(after, shop.regress).start()
    log.info("shop listening on :%d, %.0f requests/s, version %s", port, rps, shop.version)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        log.info("shop stopping")
    finally:
        stop.set()
        provider.shutdown()
        logs.shutdown()


if __name__ == "__main__":
    main()
