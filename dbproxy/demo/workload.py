"""The demo's traffic: a small shop's web, accounts, worker and reports connections.

Four ``application_name``\\s, both drivers, both protocols' flavours:

``web``       asyncpg (extended protocol, named prepared statements): product and
              category pages, order pages, "my orders" (the query the regression hits),
              checkout transactions (some roll back when a product is out of stock);
              sqlcommenter ``route``/``controller``/``action`` tags, and a W3C
              ``traceparent`` on half of the requests, as OpenTelemetry would add.
``accounts``  psycopg with client-side binding (literals inlined in the SQL text, as
              many ORMs do): logins, sign-ups (a duplicate e-mail now and then: 23505),
              profile updates.
``worker``    psycopg with server-side binding: background jobs in transactions
              (``FOR UPDATE SKIP LOCKED``), restocking.
``reports``   asyncpg: a few aggregate queries every second or two.

Closed loops with think time: ≈ 100-200 statements/s in all, light on a 2-core machine.
"""

from __future__ import annotations

import asyncio
import random
import secrets
import threading
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Final, TypeVar
from urllib.parse import quote

import asyncpg  # type: ignore[import-untyped]  # no stubs
import psycopg
import psycopg.errors

from dbproxy.app import new_event_loop
from dbproxy.demo.schema import CUSTOMERS, ORDERS, PRODUCTS, REGRESSED_INDEX, REGRESSED_SQL

T = TypeVar("T")

#: a customer the accounts workload signs up first, then tries to sign up again now and
#: then (a unique violation); its e-mail must never reach dbproxy's output
SENTINEL_EMAIL: Final = "s3cr3t-sentinel@example.com"

APPLICATIONS: Final = ("web", "accounts", "worker", "reports")

CATEGORIES: Final = (
    "books",
    "games",
    "garden",
    "kitchen",
    "music",
    "office",
    "outdoor",
    "toys",
    "tools",
    "sports",
)

# --- web (asyncpg) ---------------------------------------------------------------------
PRODUCT_SQL: Final = (
    "SELECT id, sku, name, category, price_cents, stock FROM products WHERE id = $1"
)
CATEGORY_SQL: Final = (
    "SELECT id, name, price_cents FROM products WHERE category = $1 ORDER BY price_cents LIMIT 20"
)
ORDER_SQL: Final = (
    "SELECT o.id, o.status, o.total_cents, o.created_at, c.name, c.email"
    " FROM orders o JOIN customers c ON c.id = o.customer_id WHERE o.id = $1"
)
ORDER_ITEMS_SQL: Final = (
    "SELECT oi.line, p.name, oi.quantity, oi.price_cents FROM order_items oi"
    " JOIN products p ON p.id = oi.product_id WHERE oi.order_id = $1 ORDER BY oi.line"
)
#: reserves stock and reads the price in one statement (no row: out of stock)
RESERVE_SQL: Final = (
    "UPDATE products SET stock = stock - $2 WHERE id = $1 AND stock >= $2 RETURNING price_cents"
)
INSERT_ORDER_SQL: Final = (
    "INSERT INTO orders (customer_id, status, total_cents) VALUES ($1, 'pending', $2) RETURNING id"
)
#: sent with executemany: one Bind/Execute per line, pipelined before one Sync
INSERT_ITEM_SQL: Final = (
    "INSERT INTO order_items (order_id, line, product_id, quantity, price_cents)"
    " VALUES ($1, $2, $3, $4, $5)"
)

#: the regressed statement's sqlcommenter tags (the route of the "my orders" page)
REGRESSED_TAGS: Final = {"route": "/account/orders", "controller": "orders", "action": "index"}

# --- accounts (psycopg, client-side binding: %s placeholders) -----------------------------
LOGIN_SQL: Final = "SELECT id, name, country FROM customers WHERE email = %s"
SIGNUP_SQL: Final = "INSERT INTO customers (email, name, country) VALUES (%s, %s, %s) RETURNING id"
PROFILE_SQL: Final = "UPDATE customers SET name = %s WHERE id = %s"

# --- worker (psycopg, server-side binding) ----------------------------------------------
PENDING_SQL: Final = (
    "SELECT id, total_cents FROM orders WHERE status = 'pending'"
    " ORDER BY id LIMIT 20 FOR UPDATE SKIP LOCKED"
)
PAY_SQL: Final = "UPDATE orders SET status = 'paid' WHERE id = ANY(%s)"
SHIP_SQL: Final = (
    "UPDATE orders SET status = 'shipped' WHERE id IN"
    " (SELECT id FROM orders WHERE status = 'paid' ORDER BY id LIMIT 20 FOR UPDATE SKIP LOCKED)"
)
RESTOCK_SQL: Final = "UPDATE products SET stock = stock + 20 WHERE stock < 5"

# --- reports (asyncpg) --------------------------------------------------------------------
REPORTS: Final = {  # "recent" is by primary key: there is no index on created_at
    "revenue": (
        "SELECT date_trunc('hour', created_at) AS hour, count(*) AS orders,"
        " sum(total_cents) AS revenue_cents"
        " FROM (SELECT created_at, total_cents FROM orders ORDER BY id DESC LIMIT 2000) AS recent"
        " GROUP BY 1 ORDER BY 1"
    ),
    "top-products": (
        "SELECT p.id, p.name, sum(oi.quantity) AS units FROM order_items oi"
        " JOIN products p ON p.id = oi.product_id"
        " WHERE oi.order_id IN (SELECT id FROM orders ORDER BY id DESC LIMIT 500)"
        " GROUP BY p.id, p.name ORDER BY units DESC LIMIT 10"
    ),
    "countries": (
        "SELECT country, count(*) AS customers FROM customers GROUP BY country ORDER BY 2 DESC"
    ),
}


def sqlcomment(tags: dict[str, str]) -> str:
    """A sqlcommenter comment: keys sorted, values URL-encoded and single-quoted."""
    body = ",".join(f"{key}='{quote(value, safe='')}'" for key, value in sorted(tags.items()))
    return f"/*{body}*/"


def regressed_statement() -> str:
    """The regressed query as the workload sends it (minus the per-request traceparent,
    which does not change the fingerprint)."""
    return f"{REGRESSED_SQL} {sqlcomment(REGRESSED_TAGS)}"


class OutOfStock(Exception):
    """A checkout asked for more than the stock: the transaction rolls back."""


@dataclass
class Counters:
    requests: int = 0
    transactions: int = 0
    rollbacks: int = 0  # checkouts rolled back (out of stock)
    unique_violations: int = 0  # duplicate sign-ups


Action = Callable[[Any], Awaitable[None]]


class Workload:
    """Runs the four applications against ``dsn`` (the proxy) until :meth:`stop`."""

    def __init__(self, dsn: str, *, web_connections: int = 3, seed: int | None = None) -> None:
        self.dsn = dsn
        self.web_connections = web_connections
        self.counters = Counters()
        self._rng = random.Random(seed)
        self._stop = asyncio.Event()

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        """Until :meth:`stop`; an unexpected error (a lost connection …) propagates."""
        async with asyncio.TaskGroup() as group:
            for _ in range(self.web_connections):
                group.create_task(self._web())
            group.create_task(self._accounts())
            group.create_task(self._worker())
            group.create_task(self._reports())

    async def _pause(self, low: float, high: float) -> bool:
        """Think time; False once the workload is stopping."""
        if self._stop.is_set():
            return False
        try:
            await asyncio.wait_for(self._stop.wait(), self._rng.uniform(low, high))
        except TimeoutError:
            return True
        return False

    def _tags(self, route: str, controller: str, action: str, *, trace: bool) -> str:
        tags = {"route": route, "controller": controller, "action": action}
        if trace:  # W3C trace context: version-trace id-parent id-flags (1 in 4 sampled)
            flags = "01" if self._rng.random() < 0.25 else "00"
            tags["traceparent"] = f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-{flags}"
        return sqlcomment(tags)

    # --- web ------------------------------------------------------------------------------
    async def _web(self) -> None:
        conn = await asyncpg.connect(self.dsn, server_settings={"application_name": "web"})
        actions: list[tuple[float, Action]] = [
            (0.35, self._product_page),
            (0.20, self._category_page),
            (0.15, self._order_page),
            (0.15, self._my_orders_page),
            (0.15, self._checkout),
        ]
        weights = [w for w, _ in actions]
        try:
            while await self._pause(0.02, 0.05):
                ((_, action),) = self._rng.choices(actions, weights)
                await action(conn)
                self.counters.requests += 1
        finally:
            await _close_asyncpg(conn)

    def _trace(self) -> bool:
        return self._rng.random() < 0.5

    async def _product_page(self, conn: asyncpg.Connection) -> None:
        tags = self._tags("/products/:id", "products", "show", trace=self._trace())
        await conn.fetchrow(f"{PRODUCT_SQL} {tags}", self._rng.randint(1, PRODUCTS))

    async def _category_page(self, conn: asyncpg.Connection) -> None:
        tags = self._tags("/categories/:slug", "products", "index", trace=self._trace())
        await conn.fetch(f"{CATEGORY_SQL} {tags}", self._rng.choice(CATEGORIES))

    async def _order_page(self, conn: asyncpg.Connection) -> None:
        tags = self._tags("/orders/:id", "orders", "show", trace=self._trace())
        order_id = self._rng.randint(1, ORDERS)
        await conn.fetchrow(f"{ORDER_SQL} {tags}", order_id)
        await conn.fetch(f"{ORDER_ITEMS_SQL} {tags}", order_id)

    async def _my_orders_page(self, conn: asyncpg.Connection) -> None:
        tags = self._tags(**REGRESSED_TAGS, trace=self._trace())
        await conn.fetch(f"{REGRESSED_SQL} {tags}", self._rng.randint(1, CUSTOMERS))

    async def _checkout(self, conn: asyncpg.Connection) -> None:
        tags = self._tags("/checkout", "checkouts", "create", trace=self._trace())
        customer = self._rng.randint(1, CUSTOMERS)
        # sorted: concurrent checkouts lock products in the same order (no deadlocks)
        products = sorted(self._rng.sample(range(1, PRODUCTS + 1), self._rng.randint(1, 3)))
        quantities = [self._rng.randint(1, 3) for _ in products]
        self.counters.transactions += 1
        try:
            async with conn.transaction():
                prices: list[int] = []
                for product, quantity in zip(products, quantities, strict=True):
                    price = await conn.fetchval(f"{RESERVE_SQL} {tags}", product, quantity)
                    if price is None:
                        raise OutOfStock
                    prices.append(price)
                total = sum(p * q for p, q in zip(prices, quantities, strict=True))
                order_id = await conn.fetchval(f"{INSERT_ORDER_SQL} {tags}", customer, total)
                await conn.executemany(
                    f"{INSERT_ITEM_SQL} {tags}",
                    [
                        (order_id, line, product, quantity, price)
                        for line, (product, quantity, price) in enumerate(
                            zip(products, quantities, prices, strict=True), start=1
                        )
                    ],
                )
        except OutOfStock:
            self.counters.rollbacks += 1

    # --- accounts ---------------------------------------------------------------------------
    async def _accounts(self) -> None:
        conn = await psycopg.AsyncConnection.connect(
            self.dsn,
            application_name="accounts",
            autocommit=True,
            cursor_factory=psycopg.AsyncClientCursor,
        )
        try:
            await self._signup(conn, SENTINEL_EMAIL)  # the first time it succeeds
            signups = 0
            while await self._pause(0.1, 0.3):
                pick = self._rng.random()
                if pick < 0.6:
                    email = (
                        SENTINEL_EMAIL
                        if self._rng.random() < 0.05
                        else f"customer{self._rng.randint(1, CUSTOMERS)}@example.com"
                    )
                    tags = _percent(self._tags("/login", "sessions", "create", trace=False))
                    await conn.execute(f"{LOGIN_SQL} {tags}", (email,))
                elif pick < 0.85:
                    # the first sign-up after the sentinel's and every 10th: a duplicate
                    signups += 1
                    sentinel = signups % 10 == 1
                    email = SENTINEL_EMAIL if sentinel else f"shopper-{secrets.token_hex(6)}@ex.net"
                    await self._signup(conn, email)
                else:
                    tags = _percent(self._tags("/account", "accounts", "update", trace=False))
                    name = f"Customer {secrets.token_hex(3)}"
                    customer = self._rng.randint(1, CUSTOMERS)
                    await conn.execute(f"{PROFILE_SQL} {tags}", (name, customer))
                self.counters.requests += 1
        finally:
            await conn.close()

    async def _signup(self, conn: psycopg.AsyncConnection[Any], email: str) -> None:
        tags = _percent(self._tags("/signup", "registrations", "create", trace=False))
        country = self._rng.choice(("US", "DE", "FR", "GB", "JP", "BR", "IN", "CA"))
        try:
            await conn.execute(f"{SIGNUP_SQL} {tags}", (email, "New Shopper", country))
        except psycopg.errors.UniqueViolation:
            self.counters.unique_violations += 1

    # --- worker ---------------------------------------------------------------------------------
    async def _worker(self) -> None:
        conn = await psycopg.AsyncConnection.connect(
            self.dsn, application_name="worker", autocommit=True
        )
        try:
            tick = 0
            while await self._pause(0.3, 0.6):
                tick += 1
                job = sqlcomment({"job": "ChargePaymentsJob"})
                self.counters.transactions += 1
                async with conn.transaction():
                    cur = await conn.execute(f"{PENDING_SQL} {job}")
                    ids = [row[0] for row in await cur.fetchall()]
                    if ids:
                        await conn.execute(f"{PAY_SQL} {job}", (ids,))
                if tick % 3 == 0:
                    job = sqlcomment({"job": "ShipOrdersJob"})
                    await conn.execute(f"{SHIP_SQL} {job}")
                if tick % 10 == 0:
                    job = sqlcomment({"job": "RestockJob"})
                    await conn.execute(f"{RESTOCK_SQL} {job}")
        finally:
            await conn.close()

    # --- reports --------------------------------------------------------------------------------
    async def _reports(self) -> None:
        conn = await asyncpg.connect(self.dsn, server_settings={"application_name": "reports"})
        try:
            while await self._pause(0.5, 1.5):
                sql = self._rng.choice(list(REPORTS.values()))
                tags = self._tags("/admin/reports/:name", "reports", "show", trace=False)
                await conn.fetch(f"{sql} {tags}")
                self.counters.requests += 1
        finally:
            await _close_asyncpg(conn)


def _percent(text: str) -> str:
    """Escape ``%`` for psycopg, whose placeholders are ``%s`` (URL-encoded tags have %2F)."""
    return text.replace("%", "%%")


async def _close_asyncpg(conn: asyncpg.Connection) -> None:
    try:
        await asyncio.wait_for(conn.close(), 2)
    except (TimeoutError, OSError, asyncpg.PostgresError):
        conn.terminate()


async def drop_regressed_index(dsn: str) -> None:
    """The "deploy" that causes the regression (straight to the server, not via the proxy)."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("SET lock_timeout = '5s'")
        await conn.execute(f"DROP INDEX {REGRESSED_INDEX}")
    finally:
        await conn.close()


class WorkloadThread:
    """A :class:`Workload` on its own thread and event loop.

    The proxy timestamps statements when its loop reads them, so client work on that
    loop (drivers decoding rows, SCRAM key derivation at connect) would show up as
    database latency; on a thread of its own it delays the proxy by at most a GIL
    switch interval, and then only when both are busy at once.
    """

    def __init__(self, workload: Workload) -> None:
        self.workload = workload
        self._loop = new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="dbproxy-demo-workload", daemon=True
        )

    def start(self) -> asyncio.Future[None]:
        """Start the workload; the result is awaitable on the caller's loop."""
        self._thread.start()
        return self.call(self.workload.run())

    def call(self, coro: Coroutine[Any, Any, T]) -> asyncio.Future[T]:
        """Run ``coro`` on the workload's loop; awaitable on the caller's loop."""
        return asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self._loop))

    def stop(self) -> None:
        """Ask the workload to finish its current requests and close its connections."""
        self._loop.call_soon_threadsafe(self.workload.stop)

    def close(self) -> None:
        """Stop the loop and the thread (after the workload has ended or was cancelled)."""
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        if not self._loop.is_running():
            self._loop.close()
