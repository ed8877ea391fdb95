"""A deterministic corpus of ORM-style PostgreSQL statements, written for this project.

Used by the fingerprint corpus test (scored against libpg_query's fingerprint through
``pglast``) and by ``benchmarks/fingerprint.py``.  Every template draws fresh literals,
``IN``-list lengths and ``VALUES`` row counts, and the statements are decorated the way
real traffic is: keyword case, line breaks, ``$n`` instead of literals, sqlcommenter
comments with a new ``traceparent`` per execution.  Each statement carries the class it
belongs to (for per-class benchmark figures) and the expected operation and kind.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["CLASSES", "Statement", "build_corpus", "workload"]


@dataclass(frozen=True, slots=True)
class Statement:
    sql: str
    cls: str  # point, join, cte, window, upsert, insert, update, delete, json, txn, ddl, …
    template: str
    operation: str
    kind: str


_NAMES = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy"]
_STATUSES = ["new", "paid", "shipped", "cancelled", "refunded"]


class _Gen:
    """Literal helpers; ``param=True`` writes ``$n`` where an ORM would bind a parameter."""

    def __init__(self, rng: random.Random, *, param: bool) -> None:
        self.rng = rng
        self.param = param
        self.n = 0

    def _p(self) -> str:
        self.n += 1
        return f"${self.n}"

    def i(self, lo: int = 1, hi: int = 100_000) -> str:
        return self._p() if self.param else str(self.rng.randint(lo, hi))

    def s(self, pool: list[str] | None = None) -> str:
        if self.param:
            return self._p()
        value = self.rng.choice(pool or _NAMES)
        return "'" + value.replace("'", "''") + "'"

    def email(self) -> str:
        if self.param:
            return self._p()
        return f"'{self.rng.choice(_NAMES)}{self.rng.randint(1, 999)}@example.com'"

    def ts(self) -> str:
        if self.param:
            return self._p()
        day = self.rng.randint(1, 28)
        return f"'2025-{self.rng.randint(1, 12):02d}-{day:02d} 12:00:00+00'::timestamptz"

    def ids(self, lo: int = 1, hi: int = 40) -> str:
        return ", ".join(self.i() for _ in range(self.rng.randint(lo, hi)))

    def num(self) -> str:
        return self._p() if self.param else f"{self.rng.randint(1, 9999)}.{self.rng.randint(0, 99)}"

    def bool(self) -> str:
        return self._p() if self.param else self.rng.choice(["true", "false"])


Template = Callable[[_Gen], str]

# (name, class, operation, kind, template)
# one template per entry, its SQL laid out as it reads: not reformatted
# fmt: off
_TEMPLATES: list[tuple[str, str, str, str, Template]] = [
    # --- point lookups ---------------------------------------------------------------
    ("user_by_id", "point", "SELECT", "read",
     lambda g: f'SELECT "users"."id", "users"."email", "users"."name" FROM "users" '
               f'WHERE "users"."id" = {g.i()} LIMIT 1'),
    ("user_by_email", "point", "SELECT", "read",
     lambda g: f"SELECT users.* FROM users WHERE users.email = {g.email()} "
               f"AND users.deleted_at IS NULL LIMIT 1"),
    ("session_by_token", "point", "SELECT", "read",
     lambda g: f"SELECT s.id, s.user_id, s.expires_at FROM sessions s "
               f"WHERE s.token = {g.s()} AND s.expires_at > now()"),
    ("product_exists", "point", "SELECT", "read",
     lambda g: f"SELECT 1 AS one FROM products WHERE products.sku = {g.s()} LIMIT 1"),
    ("count_orders", "point", "SELECT", "read",
     lambda g: f"SELECT count(*) FROM orders WHERE orders.user_id = {g.i()} "
               f"AND orders.status = {g.s(_STATUSES)}"),
    ("settings_get", "point", "SELECT", "read",
     lambda g: f"SELECT value FROM app.settings WHERE key = {g.s()} AND tenant_id = {g.i()}"),
    ("users_in", "point", "SELECT", "read",
     lambda g: f"SELECT id, name FROM users WHERE id IN ({g.ids()})"),
    ("users_any", "point", "SELECT", "read",
     lambda g: f"SELECT id, name FROM users WHERE id = ANY(ARRAY[{g.ids()}])"),
    ("orders_between", "point", "SELECT", "read",
     lambda g: f"SELECT id, total FROM orders WHERE created_at >= {g.ts()} "
               f"AND created_at < {g.ts()} ORDER BY created_at DESC LIMIT {g.i(10, 100)}"),
    ("order_page", "point", "SELECT", "read",
     lambda g: f"SELECT * FROM orders WHERE user_id = {g.i()} ORDER BY id DESC "
               f"LIMIT {g.i(10, 50)} OFFSET {g.i(0, 500)}"),
    ("for_update", "point", "SELECT", "write",
     lambda g: f"SELECT * FROM jobs WHERE queue = {g.s()} AND run_at <= now() "
               f"ORDER BY priority DESC, id LIMIT {g.i(1, 10)} FOR UPDATE SKIP LOCKED"),
    ("ilike_search", "point", "SELECT", "read",
     lambda g: f"SELECT id, name FROM products WHERE name ILIKE {g.s()} "
               f"AND price BETWEEN {g.num()} AND {g.num()}"),
    # --- joins -------------------------------------------------------------------------
    ("order_with_items", "join", "SELECT", "read",
     lambda g: "SELECT o.id, o.total, i.product_id, i.quantity, p.name FROM orders o "
               "INNER JOIN order_items i ON i.order_id = o.id "
               f"JOIN products p ON p.id = i.product_id WHERE o.id = {g.i()}"),
    ("user_orders_left", "join", "SELECT", "read",
     lambda g: "SELECT u.id, u.name, count(o.id) AS orders, coalesce(sum(o.total), 0) AS spent "
               "FROM users u LEFT OUTER JOIN orders o ON o.user_id = u.id "
               f"AND o.status <> {g.s(_STATUSES)} WHERE u.created_at > {g.ts()} "
               "GROUP BY u.id, u.name HAVING count(o.id) > "
               f"{g.i(0, 5)} ORDER BY spent DESC LIMIT {g.i(5, 50)}"),
    ("tenant_join", "join", "SELECT", "read",
     lambda g: "SELECT t.name, u.email FROM public.tenants t JOIN public.users u "
               f"ON u.tenant_id = t.id WHERE t.id IN ({g.ids(1, 8)}) AND u.active = {g.bool()}"),
    ("exists_subquery", "join", "SELECT", "read",
     lambda g: "SELECT p.* FROM products p WHERE EXISTS (SELECT 1 FROM order_items i "
               f"WHERE i.product_id = p.id AND i.created_at > {g.ts()}) "
               f"AND p.category_id = {g.i()}"),
    ("lateral_top", "join", "SELECT", "read",
     lambda g: "SELECT u.id, recent.id AS order_id FROM users u CROSS JOIN LATERAL "
               "(SELECT o.id FROM orders o WHERE o.user_id = u.id ORDER BY o.created_at DESC "
               f"LIMIT {g.i(1, 5)}) recent WHERE u.id = {g.i()}"),
    ("grouped_report", "join", "SELECT", "read",
     lambda g: "SELECT date_trunc('day', o.created_at) AS day, p.category_id, sum(i.quantity) "
               "FROM orders o JOIN order_items i ON i.order_id = o.id JOIN products p "
               "ON p.id = i.product_id WHERE o.created_at > now() - "
               f"interval '{g.rng.randint(1, 90)} days' "
               "GROUP BY 1, 2 ORDER BY 1, 3 DESC"),
    # ordinals are kept here; libpg_query treats ORDER BY 1 and ORDER BY 2 alike (deviation)
    ("report_sorted", "join", "SELECT", "read",
     lambda g: "SELECT p.category_id, count(*), sum(i.quantity) FROM order_items i "
               f"JOIN products p ON p.id = i.product_id WHERE i.created_at > {g.ts()} "
               f"GROUP BY 1 ORDER BY {g.rng.choice('123')} DESC"),
    # --- CTEs and window functions -----------------------------------------------------
    ("cte_totals", "cte", "SELECT", "read",
     lambda g: "WITH totals AS (SELECT user_id, sum(total) AS spent FROM orders "
               f"WHERE status = {g.s(_STATUSES)} GROUP BY user_id) "
               "SELECT u.name, t.spent FROM totals t JOIN users u ON u.id = t.user_id "
               f"WHERE t.spent > {g.num()} ORDER BY t.spent DESC"),
    ("cte_recursive", "cte", "SELECT", "read",
     lambda g: "WITH RECURSIVE tree AS (SELECT id, parent_id, name FROM categories "
               f"WHERE id = {g.i()} UNION ALL SELECT c.id, c.parent_id, c.name FROM categories c "
               "JOIN tree ON c.parent_id = tree.id) SELECT * FROM tree"),
    ("cte_delete_move", "cte", "INSERT", "write",
     lambda g: "WITH moved AS (DELETE FROM events WHERE created_at < "
               f"{g.ts()} RETURNING *) INSERT INTO events_archive SELECT * FROM moved"),
    ("window_rank", "window", "SELECT", "read",
     lambda g: "SELECT id, user_id, total, row_number() OVER (PARTITION BY user_id "
               "ORDER BY created_at DESC) AS rn, sum(total) OVER (PARTITION BY user_id) "
               f"AS user_total FROM orders WHERE created_at > {g.ts()}"),
    ("window_lag", "window", "SELECT", "read",
     lambda g: "SELECT day, revenue, revenue - lag(revenue) OVER (ORDER BY day) AS delta "
               f"FROM daily_revenue WHERE day >= {g.ts()} ORDER BY day"),
    ("union_search", "cte", "SELECT", "read",
     lambda g: f"SELECT id, 'user' AS kind FROM users WHERE name ILIKE {g.s()} UNION ALL "
               f"SELECT id, 'product' AS kind FROM products WHERE name ILIKE {g.s()} "
               f"LIMIT {g.i(5, 20)}"),
    # --- JSON --------------------------------------------------------------------------
    ("json_get", "json", "SELECT", "read",
     lambda g: f"SELECT id, payload->>'type' AS type FROM events WHERE payload->>'user_id' = "
               f"{g.s()} AND payload @> {g.s()}::jsonb"),
    ("json_keys", "json", "SELECT", "read",
     lambda g: "SELECT id FROM documents WHERE tags ?| array['a', 'b'] "
               f"AND meta ? 'published' AND meta #>> '{{author,name}}' = {g.s()}"),
    ("json_build", "json", "SELECT", "read",
     lambda g: "SELECT jsonb_build_object('id', u.id, 'name', u.name) FROM users u "
               f"WHERE u.id = {g.i()}"),
    ("json_update", "json", "UPDATE", "write",
     lambda g: f"UPDATE documents SET meta = jsonb_set(meta, '{{views}}', to_jsonb({g.i()})) "
               f"WHERE id = {g.i()}"),
    # --- writes --------------------------------------------------------------------------
    ("insert_user", "insert", "INSERT", "write",
     lambda g: "INSERT INTO users (email, name, created_at) VALUES "
               f"({g.email()}, {g.s()}, now()) RETURNING id"),
    ("insert_items_multi", "insert", "INSERT", "write",
     lambda g: "INSERT INTO order_items (order_id, product_id, quantity, price) VALUES "
               + ", ".join(f"({g.i()}, {g.i()}, {g.i(1, 9)}, {g.num()})"
                           for _ in range(g.rng.randint(1, 60)))),
    ("insert_events_big", "insert", "INSERT", "write",
     lambda g: "INSERT INTO events (kind, user_id, payload, created_at) VALUES "
               + ", ".join(f"({g.s()}, {g.i()}, '{{\"n\": {g.rng.randint(1, 9)}}}', now())"
                           for _ in range(g.rng.randint(150, 220)))),
    ("upsert_setting", "upsert", "INSERT", "write",
     lambda g: "INSERT INTO app.settings (tenant_id, key, value) VALUES "
               f"({g.i()}, {g.s()}, {g.s()}) ON CONFLICT (tenant_id, key) DO UPDATE SET "
               "value = EXCLUDED.value, updated_at = now() RETURNING id"),
    ("upsert_nothing", "upsert", "INSERT", "write",
     lambda g: "INSERT INTO tags (name) VALUES "
               + ", ".join(f"({g.s()})" for _ in range(g.rng.randint(1, 10)))
               + " ON CONFLICT DO NOTHING"),
    ("insert_select", "insert", "INSERT", "write",
     lambda g: "INSERT INTO daily_revenue (day, revenue) SELECT date_trunc('day', created_at), "
               f"sum(total) FROM orders WHERE created_at >= {g.ts()} GROUP BY 1"),
    ("update_status", "update", "UPDATE", "write",
     lambda g: f"UPDATE orders SET status = {g.s(_STATUSES)}, updated_at = now() "
               f"WHERE id = {g.i()} RETURNING id, status"),
    ("update_balance", "update", "UPDATE", "write",
     lambda g: f"UPDATE accounts SET balance = balance - {g.num()} WHERE id = {g.i()} "
               f"AND balance >= {g.num()}"),
    ("update_from", "update", "UPDATE", "write",
     lambda g: "UPDATE products p SET stock = p.stock - i.quantity FROM order_items i "
               f"WHERE i.product_id = p.id AND i.order_id = {g.i()}"),
    ("delete_sessions", "delete", "DELETE", "write",
     lambda g: f"DELETE FROM sessions WHERE expires_at < {g.ts()}"),
    ("delete_in", "delete", "DELETE", "write",
     lambda g: f"DELETE FROM order_items WHERE order_id = {g.i()} AND id IN ({g.ids(1, 12)})"),
    ("delete_using", "delete", "DELETE", "write",
     lambda g: "DELETE FROM cart_items c USING carts k WHERE c.cart_id = k.id "
               f"AND k.updated_at < {g.ts()} RETURNING c.id"),
    ("merge_stock", "upsert", "MERGE", "write",
     lambda g: "MERGE INTO inventory t USING incoming s ON t.sku = s.sku "
               "WHEN MATCHED THEN UPDATE SET qty = t.qty + s.qty WHEN NOT MATCHED THEN "
               "INSERT (sku, qty) VALUES (s.sku, s.qty)"),
    # --- transactions and session ------------------------------------------------------
    # START TRANSACTION is BEGIN here; libpg_query keeps them apart (a measured deviation)
    ("begin", "txn", "BEGIN", "other",
     lambda g: "START TRANSACTION" if g.rng.random() < 0.1 else "BEGIN"),
    ("begin_iso", "txn", "BEGIN", "other",
     lambda g: "BEGIN ISOLATION LEVEL REPEATABLE READ"),
    ("commit", "txn", "COMMIT", "other", lambda g: "COMMIT"),
    ("rollback", "txn", "ROLLBACK", "other", lambda g: "ROLLBACK"),
    ("savepoint", "txn", "SAVEPOINT", "other",
     lambda g: f"SAVEPOINT active_record_{g.rng.randint(1, 9)}"),
    ("release", "txn", "RELEASE", "other",
     lambda g: f"RELEASE SAVEPOINT active_record_{g.rng.randint(1, 9)}"),
    ("rollback_to", "txn", "ROLLBACK", "other",
     lambda g: f"ROLLBACK TO SAVEPOINT sp_{g.rng.randint(1, 9)}"),
    ("set_timeout", "txn", "SET", "other",
     lambda g: f"SET statement_timeout = {g.rng.randint(1, 60) * 1000}"),
    ("set_app_user", "txn", "SET", "other",
     lambda g: f"SET app.current_user_id = '{g.rng.randint(1, 9999)}'"),
    ("show", "txn", "SHOW", "other", lambda g: "SHOW transaction_isolation"),
    ("listen", "txn", "LISTEN", "other", lambda g: "LISTEN order_events"),
    # --- DDL / maintenance ---------------------------------------------------------------
    ("create_table", "ddl", "DDL", "write",
     lambda g: f"CREATE TABLE IF NOT EXISTS tmp_import_{g.rng.randint(1, 3)} "
               "(id bigserial PRIMARY KEY, payload jsonb NOT NULL, "
               "created_at timestamptz DEFAULT now())"),
    ("create_index", "ddl", "DDL", "write",
     lambda g: "CREATE INDEX CONCURRENTLY IF NOT EXISTS orders_user_created_idx "
               "ON orders (user_id, created_at DESC)"),
    ("alter_add", "ddl", "DDL", "write",
     lambda g: "ALTER TABLE users ADD COLUMN IF NOT EXISTS "
               f"flag_{g.rng.randint(1, 3)} boolean DEFAULT false"),
    ("drop_table", "ddl", "DDL", "write",
     lambda g: f"DROP TABLE IF EXISTS tmp_import_{g.rng.randint(1, 3)}"),
    ("truncate", "ddl", "TRUNCATE", "write", lambda g: "TRUNCATE TABLE tmp_import_1"),
    ("copy_in", "ddl", "COPY", "write",
     lambda g: "COPY events (kind, user_id, payload) FROM STDIN WITH (FORMAT csv)"),
    ("copy_out", "ddl", "COPY", "read",
     lambda g: f"COPY (SELECT id, email FROM users WHERE tenant_id = {g.i()}) TO STDOUT"),
    ("vacuum", "ddl", "VACUUM", "other", lambda g: "VACUUM (ANALYZE) orders"),
]
# fmt: on

CLASSES: tuple[str, ...] = tuple(dict.fromkeys(cls for _, cls, _, _, _ in _TEMPLATES))


def _decorate(rng: random.Random, sql: str) -> str:
    """Cosmetic variants real traffic shows; none of them changes the query."""
    roll = rng.random()
    if roll < 0.15 and '"' not in sql and "'" not in sql:
        sql = sql.lower()
    elif roll < 0.3:
        sql = sql.replace(" FROM ", "\n  FROM ").replace(" WHERE ", "\n WHERE ")
    roll = rng.random()
    if roll < 0.2:
        trace = f"{rng.getrandbits(128):032x}"
        span = f"{rng.getrandbits(64):016x}"
        sql += f" /*controller='orders',action='show',traceparent='00-{trace}-{span}-01'*/"
    elif roll < 0.25:
        sql = "/*application='shop',controller='users',action='index'*/ " + sql
    elif roll < 0.3:
        sql += " -- generated by orm"
    return sql


def build_corpus(per_template: int = 20, seed: int = 20250101) -> list[Statement]:
    """``per_template`` statements per template (about 60 templates), deterministic."""
    rng = random.Random(seed)
    corpus: list[Statement] = []
    for name, cls, operation, kind, template in _TEMPLATES:
        for _ in range(per_template):
            gen = _Gen(rng, param=rng.random() < 0.3)
            sql = _decorate(rng, template(gen))
            corpus.append(Statement(sql, cls, name, operation, kind))
    return corpus


def workload(size: int, seed: int = 7) -> list[str]:
    """A stream of executions with realistic repetition: a few templates dominate (Zipf),
    most statements are bound with ``$n`` (same text every time), some carry literals."""
    rng = random.Random(seed)
    corpus = build_corpus(per_template=8, seed=seed)
    by_template: dict[str, list[Statement]] = {}
    for stmt in corpus:
        by_template.setdefault(stmt.template, []).append(stmt)
    names = list(by_template)
    rng.shuffle(names)
    weights = [1.0 / (rank + 1) for rank in range(len(names))]
    templates = {name: (cls, op, kind, fn) for name, cls, op, kind, fn in _TEMPLATES}
    stream: list[str] = []
    for name in rng.choices(names, weights=weights, k=size):
        if rng.random() < 0.1:  # first sight of new literals / a fresh traceparent
            fn = templates[name][3]
            stream.append(_decorate(rng, fn(_Gen(rng, param=False))))
        else:
            stream.append(rng.choice(by_template[name]).sql)
    return stream
