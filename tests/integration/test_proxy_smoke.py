"""First light: asyncpg through the real proxy against the real server."""

from __future__ import annotations

import asyncpg

from dbproxy.protocol.events import SessionOpened, StatementFinished
from tests.fixtures.fix_proxy import RunningProxy


async def test_asyncpg_select_through_proxy(proxy: RunningProxy) -> None:
    conn = await asyncpg.connect(proxy.dsn())
    try:
        assert await conn.fetchval("select 40 + 2") == 42
    finally:
        await conn.close()
    events = proxy.wait_closed()
    opened = [e for e in events if isinstance(e, SessionOpened)]
    assert opened and opened[0].user == proxy.pg.app_user and opened[0].backend_pid > 0
    assert opened[0].client_address.startswith("127.0.0.1:")
    done = [e for e in events if isinstance(e, StatementFinished)]
    assert [(e.text, e.rows, e.command) for e in done] == [("select 40 + 2", 1, "SELECT")]
