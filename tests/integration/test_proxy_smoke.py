"""First light: asyncpg through the real proxy against the real server."""

from __future__ import annotations

import asyncpg

from dbproxy.protocol.events import SessionOpened, StatementFinished
from dbproxy.proxy.forward import ClientForward, ServerConnection
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


async def test_a_forwarding_connection_reads_through_the_compiled_data_path(
    proxy: RunningProxy,
) -> None:
    # After the startup, every client read goes to proxy/forward.py's ClientForward (the
    # hot path compiled by mypyc), not through ClientConnection.data_received.
    conn = await asyncpg.connect(proxy.dsn())
    try:
        assert await conn.fetchval("select 1") == 1
        (client,) = proxy.server.connections
        assert client.transport is not None
        assert isinstance(client.transport.get_protocol(), ClientForward)
        assert isinstance(client.upstream, ServerConnection)
        before = proxy.server.stats.bytes_from_client
        assert await conn.fetchval("select 2") == 2
        assert proxy.server.stats.bytes_from_client > before  # still counted
    finally:
        await conn.close()
    done = [e for e in proxy.wait_closed() if isinstance(e, StatementFinished)]
    assert [e.text for e in done] == ["select 1", "select 2"]  # and still observed
