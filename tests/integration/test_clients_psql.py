"""psql through the proxy: the same output as direct, and one event per statement."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

from dbproxy.pgcluster import PgServer
from dbproxy.protocol.events import StatementEvent, StatementFailed, StatementFinished
from tests.fixtures.fix_proxy import RunningProxy


def _psql(pg: PgServer, env: dict[str, str], *args: str, cwd: Path | None = None) -> str:
    """Run psql (no psqlrc, stop on the first error) and return its stdout."""
    done = subprocess.run(
        [pg.tool("psql"), "-X", "-v", "ON_ERROR_STOP=1", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, f"psql {args!r} failed: {done.stderr}"
    return done.stdout


def _summary(events: list[StatementEvent]) -> list[tuple[str, str, int, str]]:
    """(text, command, rows, protocol) of finished statements; a failure fails the test."""
    failed = [e for e in events if isinstance(e, StatementFailed)]
    assert not failed, failed
    return [
        (e.text, e.command, e.rows, e.protocol) for e in events if isinstance(e, StatementFinished)
    ]


def _name(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def test_psql_c_multi_statement_query(proxy: RunningProxy, pg_server: PgServer) -> None:
    # One -c string is one simple Query holding two statements; psql prints both results.
    sql = "select 1 as a, 'x;y' as b; select g from generate_series(1, 3) g order by g desc"
    direct = _psql(pg_server, pg_server.env(), "-c", sql)
    proxied = _psql(pg_server, proxy.env(), "-c", sql)
    assert proxied == direct
    assert "x;y" in proxied and "(3 rows)" in proxied

    proxy.wait_closed(1)
    assert _summary(proxy.statements()) == [
        ("select 1 as a, 'x;y' as b", "SELECT", 1, "simple"),
        ("select g from generate_series(1, 3) g order by g desc", "SELECT", 3, "simple"),
    ]


def test_psql_f_file_one_event_per_statement(
    proxy: RunningProxy, pg_server: PgServer, tmp_path: Path
) -> None:
    def script(table: str) -> str:
        return (
            f"create table {table} (id int primary key, v text);\n"
            f"insert into {table} select g, 'v' || g from generate_series(1, 5) g;\n"
            f"update {table} set v = 'changed' where id <= 2;\n"
            f"select id, v from {table} order by id;\n"
            f"delete from {table} where id > 3;\n"
            f"select count(*) from {table};\n"
            f"drop table {table};\n"
        )

    direct_table, proxied_table = _name("psql_f_direct"), _name("psql_f_proxy")
    (tmp_path / "direct.sql").write_text(script(direct_table))
    (tmp_path / "proxied.sql").write_text(script(proxied_table))
    direct = _psql(pg_server, pg_server.env(), "-f", "direct.sql", cwd=tmp_path)
    proxied = _psql(pg_server, proxy.env(), "-f", "proxied.sql", cwd=tmp_path)
    # The table name never shows in the output, so the outputs must match exactly.
    assert proxied == direct
    assert "changed" in proxied

    proxy.wait_closed(1)
    # psql sends each statement of a file as its own Query; the event text is the
    # statement without its terminating semicolon.
    assert _summary(proxy.statements()) == [
        (f"create table {proxied_table} (id int primary key, v text)", "CREATE TABLE", 0, "simple"),
        (
            f"insert into {proxied_table} select g, 'v' || g from generate_series(1, 5) g",
            "INSERT",
            5,
            "simple",
        ),
        (f"update {proxied_table} set v = 'changed' where id <= 2", "UPDATE", 2, "simple"),
        (f"select id, v from {proxied_table} order by id", "SELECT", 5, "simple"),
        (f"delete from {proxied_table} where id > 3", "DELETE", 2, "simple"),
        (f"select count(*) from {proxied_table}", "SELECT", 1, "simple"),
        (f"drop table {proxied_table}", "DROP TABLE", 0, "simple"),
    ]


def test_psql_copy_in_and_out(proxy: RunningProxy, pg_server: PgServer, tmp_path: Path) -> None:
    lines = 250
    source = tmp_path / "in.csv"
    # Quotes, commas, NULLs and non-ASCII text, so CSV quoting goes through the proxy too.
    source.write_text(
        "".join(
            f'{i},"text, {i} ""q"" é",{"" if i % 7 == 0 else i * 1.5}\n'
            for i in range(1, lines + 1)
        ),
        encoding="utf-8",
    )

    def run(env: dict[str, str], table: str, out: str) -> str:
        _psql(pg_server, env, "-c", f"create table {table} (id int, t text, x numeric)")
        copy_in = _psql(
            pg_server, env, "-c", f"\\copy {table} from 'in.csv' with (format csv)", cwd=tmp_path
        )
        copy_out = _psql(
            pg_server,
            env,
            "-c",
            f"\\copy (select * from {table} order by id) to '{out}' with (format csv)",
            cwd=tmp_path,
        )
        _psql(pg_server, env, "-c", f"drop table {table}")
        return copy_in + copy_out

    direct_table, proxied_table = _name("psql_copy_direct"), _name("psql_copy_proxy")
    direct = run(pg_server.env(), direct_table, "direct.csv")
    proxied = run(proxy.env(), proxied_table, "proxied.csv")
    assert proxied == direct == f"COPY {lines}\nCOPY {lines}\n"
    direct_bytes = (tmp_path / "direct.csv").read_bytes()
    assert (tmp_path / "proxied.csv").read_bytes() == direct_bytes
    # What went in came back out, byte for byte.
    assert direct_bytes == source.read_bytes()

    proxy.wait_closed(4)
    summary = _summary(proxy.statements())
    assert [(cmd, rows, proto) for _, cmd, rows, proto in summary] == [
        ("CREATE TABLE", 0, "simple"),
        ("COPY", lines, "simple"),
        ("COPY", lines, "simple"),
        ("DROP TABLE", 0, "simple"),
    ]
    # psql's \copy rewrites the command as COPY … FROM STDIN / TO STDOUT (its own spacing).
    assert [text for text, *_ in summary[1:3]] == [
        f"COPY  {proxied_table} FROM STDIN with (format csv)",
        f"COPY  ( select * from {proxied_table} order by id ) TO STDOUT with (format csv)",
    ]
