"""The side connection: asyncpg pools (one small pool per database) and the few statements
the inspector runs on them.  Every statement sent here is literal-free text; values of a
sampled execution only ever travel as bind parameters.

Generic plans: PostgreSQL ≥ 16 has ``EXPLAIN (GENERIC_PLAN)``, but only for statements
parsed without bound values (the simple protocol: over the extended protocol, a bound
value — even NULL — is folded into the plan), and asyncpg returns rows only from the
extended protocol.  So it runs inside a ``DO`` block (``EXECUTE … INTO``) that hands
the JSON back as a NOTICE.  PostgreSQL 13-15: ``SET LOCAL plan_cache_mode =
force_generic_plan``, ``PREPARE``, ``EXPLAIN EXECUTE s(NULL, …)``, ``DEALLOCATE``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable, Sequence
from typing import Any, Final

import asyncpg  # type: ignore[import-untyped]

from dbproxy.sql.lexer import PARAM, tokenize

__all__ = ["APPLICATION_NAME", "SideError", "SidePools"]

APPLICATION_NAME: Final = "dbproxy-inspect"
_DO_TAG: Final = "$dbproxy_inspect$"
_SQL_TAG: Final = "$dbproxy_sql$"
_STATEMENT: Final = "dbproxy_inspect_generic"
#: volatile functions without side effects that a sampled statement may call
VOLATILE_ALLOWED: Final = frozenset(
    ("random", "clock_timestamp", "timeofday", "gen_random_uuid", "uuid_generate_v4", "now")
)
_PGSS_SQL: Final = """
SELECT s.queryid, s.query, s.calls, s.total_exec_time, s.total_plan_time,
       s.shared_blks_hit, s.shared_blks_read, s.local_blks_hit, s.local_blks_read,
       s.temp_blks_read, s.temp_blks_written, s.wal_bytes::bigint, s.rows
FROM pg_stat_statements s
WHERE s.dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND s.userid <> (SELECT oid FROM pg_roles WHERE rolname = current_user)
ORDER BY s.total_exec_time DESC
LIMIT $1
"""


class SideError(Exception):
    """A side-connection step failed (its message never holds a value of the workload)."""


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def search_path_for(user: str, reported: str = "") -> str:
    """The client's search_path for the side connection: as the server reported it
    (PostgreSQL >= 18), else the default ``"$user", public``; ``$user`` is the client's
    user, not the inspect role."""
    path = reported.strip() or '"$user", public'
    items = [item.strip() for item in path.split(",") if item.strip()]
    return ", ".join(_quote_ident(user) if item in ('"$user"', "$user") else item for item in items)


def with_param_casts(text: str, types: Sequence[str]) -> str:
    """``$k`` → ``($k::text::type)``: every value is sent as text and cast in SQL, which the
    planner folds like a literal (custom plan), so the sampled plan matches the client's."""
    out: list[str] = []
    for kind, tok in tokenize(text):
        if kind == PARAM:
            k = int(tok[1:])
            out.append(f"({tok}::text::{types[k - 1]})")
        else:
            out.append(tok)
    return " ".join(out)


class SidePools:
    """One asyncpg pool per database, from a DSN template whose database is replaced."""

    def __init__(
        self,
        dsn: str,
        *,
        statement_timeout_ms: int = 5000,
        lock_timeout_ms: int = 100,
        max_size: int = 2,
        max_databases: int = 50,
        connect_timeout_s: float = 5.0,
    ) -> None:
        self._dsn = dsn
        self._settings = {
            "application_name": APPLICATION_NAME,
            "statement_timeout": str(statement_timeout_ms),
            "lock_timeout": str(lock_timeout_ms),
            "idle_in_transaction_session_timeout": str(max(statement_timeout_ms * 2, 1000)),
        }
        self._max_size = max_size
        self._max_databases = max_databases
        self._connect_timeout_s = connect_timeout_s
        self._pools: dict[str, asyncpg.Pool] = {}
        self._versions: dict[str, int] = {}
        self._lock = asyncio.Lock()

    async def pool(self, database: str) -> asyncpg.Pool:
        pool = self._pools.get(database)
        if pool is not None:
            return pool
        async with self._lock:
            pool = self._pools.get(database)
            if pool is not None:
                return pool
            if len(self._pools) >= self._max_databases:
                raise SideError(f"more than {self._max_databases} databases: not inspecting")
            pool = await asyncpg.create_pool(
                self._dsn,
                database=database,
                min_size=0,
                max_size=self._max_size,
                statement_cache_size=0,  # DISCARD ALL after samples drops prepared statements
                server_settings=self._settings,
                timeout=self._connect_timeout_s,
                max_inactive_connection_lifetime=60.0,
            )
            self._pools[database] = pool
            return pool

    async def close(self) -> None:
        pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            try:
                await asyncio.wait_for(pool.close(), 5.0)
            except Exception:
                pool.terminate()

    @staticmethod
    async def _version(conn: asyncpg.Connection) -> int:
        return int(conn.get_server_version().major)

    # ------------------------------------------------------------------ plans
    async def generic_plan(
        self, database: str, search_path: str, text: str, params: int
    ) -> tuple[Any, int]:
        """(EXPLAIN JSON document of the generic plan, server major version)."""
        pool = await self.pool(database)
        async with pool.acquire() as conn:
            version = await self._version(conn)
            await conn.execute("BEGIN READ ONLY")
            try:
                await conn.execute("SELECT set_config('search_path', $1, true)", search_path)
                if version >= 16:
                    plan = await self._generic_do(conn, text)
                else:
                    plan = await self._generic_prepare(conn, text, params)
            finally:
                await conn.execute("ROLLBACK")
                if version < 16:
                    # PREPARE is not undone by ROLLBACK, and after a failed EXPLAIN the
                    # transaction refused the DEALLOCATE: drop it now (the pool's
                    # connections hold no other named statement)
                    await conn.execute("DEALLOCATE ALL")
            return plan, version

    @staticmethod
    async def _generic_do(conn: asyncpg.Connection, text: str) -> Any:
        # The text has no string constant left (parameterize replaced them), so it can only
        # meet a dollar-quote tag inside a quoted identifier: refused, never escaped.
        if _DO_TAG in text or _SQL_TAG in text:
            raise SideError("statement contains the DO block's quote tags")
        body = f"{_SQL_TAG}EXPLAIN (GENERIC_PLAN, VERBOSE, FORMAT JSON) {text}{_SQL_TAG}"
        notices: list[str] = []

        def listen(_: object, message: Any) -> None:
            notices.append(str(getattr(message, "message", "")))

        conn.add_log_listener(listen)
        try:
            await conn.execute(
                f"DO {_DO_TAG} DECLARE plan text; BEGIN "
                f"EXECUTE {body} INTO plan; RAISE NOTICE '%', plan; END {_DO_TAG}"
            )
            await asyncio.sleep(0)  # log listeners are called soon after the message
        finally:
            conn.remove_log_listener(listen)
        for notice in notices:
            if notice.lstrip().startswith("["):
                return json.loads(notice)
        raise SideError("no plan came back from the DO block")

    @staticmethod
    async def _generic_prepare(conn: asyncpg.Connection, text: str, params: int) -> Any:
        await conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
        await conn.execute(f"PREPARE {_STATEMENT} AS {text}")
        args = ", ".join(["NULL"] * params)
        execute = f"EXECUTE {_STATEMENT}({args})" if params else f"EXECUTE {_STATEMENT}"
        raw = await conn.fetchval(f"EXPLAIN (VERBOSE, FORMAT JSON) {execute}")
        return json.loads(raw) if isinstance(raw, str) else raw

    # ------------------------------------------------------------------ samples
    async def volatile_functions(self, database: str, names: Iterable[str]) -> set[str]:
        """Which of ``names`` have a volatile overload in ``pg_proc`` (not allow-listed)."""
        wanted = sorted(set(names) - VOLATILE_ALLOWED)
        if not wanted:
            return set()
        pool = await self.pool(database)
        async with pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT DISTINCT proname FROM pg_proc WHERE proname = ANY($1::text[])"
                " AND provolatile = 'v'",
                wanted,
            )
        return {str(r["proname"]) for r in rows}

    async def sample_analyze(
        self,
        database: str,
        search_path: str,
        text: str,
        values: Sequence[str | None],
        declared_oids: Sequence[int] = (),
    ) -> Any:
        """``EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON)`` of ``text`` with ``values`` bound, in
        ``BEGIN READ ONLY … ROLLBACK``, then ``pg_advisory_unlock_all(); DISCARD ALL``.
        The returned plan holds values (custom plan): read numbers from it, never keep it."""
        pool = await self.pool(database)
        async with pool.acquire() as conn:
            try:
                await conn.execute("BEGIN READ ONLY")
                try:
                    await conn.execute("SELECT set_config('search_path', $1, true)", search_path)
                    types: list[str] = []
                    if values:
                        stmt = await conn.prepare(text)
                        oids = [t.oid for t in stmt.get_parameters()]
                        for i, oid in enumerate(declared_oids[: len(oids)]):
                            if oid:  # the client's declared type, as the server saw it
                                oids[i] = oid
                        types = list(
                            await conn.fetchval(
                                "SELECT array_agg(format_type(o, NULL) ORDER BY n)"
                                " FROM unnest($1::oid[]) WITH ORDINALITY AS u(o, n)",
                                oids,
                            )
                        )
                        del stmt
                    sql = "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + with_param_casts(text, types)
                    raw = await conn.fetchval(sql, *values)
                finally:
                    await conn.execute("ROLLBACK")
            finally:
                # advisory locks survive ROLLBACK; DISCARD ALL cannot share a Query with it
                await conn.execute("SELECT pg_advisory_unlock_all()")
                await conn.execute("DISCARD ALL")
        return json.loads(raw) if isinstance(raw, str) else raw

    # ------------------------------------------------------------------ pg_stat_statements
    async def pg_stat_statements(self, database: str, limit: int = 1000) -> list[dict[str, Any]]:
        """pg_stat_statements rows of ``database`` (not the inspector's own); [] when the
        extension is not installed there."""
        pool = await self.pool(database)
        async with pool.acquire() as conn:
            installed = await conn.fetchval(
                "SELECT count(*) FROM pg_extension WHERE extname = 'pg_stat_statements'"
            )
            if not installed:
                return []
            rows = await conn.fetch(_PGSS_SQL, limit)
        return [dict(r) for r in rows]
