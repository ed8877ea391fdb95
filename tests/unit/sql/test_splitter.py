"""PostgreSQL's statement split for simple Query strings."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dbproxy.sql.splitter import _split_scan, split_statements


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("select 1", ["select 1"]),
        ("select 1;", ["select 1"]),
        ("select 1; select 2", ["select 1", "select 2"]),
        ("  ;; select 1 ;;; ", ["select 1"]),
        ("", []),
        ("-- only a comment", []),
        ("select ';'; select 2", ["select ';'", "select 2"]),
        ("select 'it''s;'; select 2", ["select 'it''s;'", "select 2"]),
        ("select E'\\';x'; select 2", ["select E'\\';x'", "select 2"]),
        ("select e'a\\\\'; select 2", ["select e'a\\\\'", "select 2"]),
        # without E, a backslash is an ordinary character (standard_conforming_strings)
        ("select 'a\\'; select 2", ["select 'a\\'", "select 2"]),
        ('select 1 as ";"; select 2', ['select 1 as ";"', "select 2"]),
        ('select "a""b;"; select 2', ['select "a""b;"', "select 2"]),
        ("select $$a;b$$; select 2", ["select $$a;b$$", "select 2"]),
        ("select $fn$ $$;$$ $fn$; select 2", ["select $fn$ $$;$$ $fn$", "select 2"]),
        ("select $1; select $2", ["select $1", "select $2"]),
        ("select 1 -- x;\n; select 2", ["select 1 -- x;", "select 2"]),
        (
            "select /* a; /* nested; */ b; */ 1; select 2",
            ["select /* a; /* nested; */ b; */ 1", "select 2"],
        ),
        ("select (1; 2); select 3", ["select (1; 2)", "select 3"]),
        ("select 1; /*traceparent='00-a-b-01'*/", ["select 1 /*traceparent='00-a-b-01'*/"]),
        ("/*app=x*/ select 1", ["/*app=x*/ select 1"]),
        (
            "create function f() returns int language sql begin atomic select 1; "
            "select case when true then 2 end; end; select 3",
            [
                "create function f() returns int language sql begin atomic select 1; "
                "select case when true then 2 end; end",
                "select 3",
            ],
        ),
        (
            "CREATE OR REPLACE PROCEDURE p() BEGIN ATOMIC INSERT INTO t VALUES (1); END; CALL p()",
            [
                "CREATE OR REPLACE PROCEDURE p() BEGIN ATOMIC INSERT INTO t VALUES (1); END",
                "CALL p()",
            ],
        ),
        # BEGIN as a transaction command is not a block
        ("begin; select 1; commit", ["begin", "select 1", "commit"]),
        # unterminated quote runs to the end, as the server would reject it anyway
        ("select 'abc; select 2", ["select 'abc; select 2"]),
        ("select ü; select 2", ["select ü", "select 2"]),
    ],
)
def test_split(sql: str, expected: list[str]) -> None:
    assert split_statements(sql) == expected


# --- the fast path returns exactly what the full scan returns --------------------------
_PIECES = st.sampled_from(
    [
        "SELECT 1",
        "select a from t where id = 42",
        ";",
        " ",
        "\n",
        "\t",
        "'",
        '"',
        "$",
        "$1",
        "$$",
        "(",
        ")",
        "--",
        "/*",
        "*/",
        "e'x\\'",
        "BEGIN",
        "END",
        "CREATE FUNCTION f()",
        "create or replace procedure p",
        "ATOMIC",
        "CASE",
        "x",
        "1.5",
        "-",
        "/",
        "é",
    ]
)


@settings(max_examples=3000, deadline=None)
@given(st.lists(_PIECES, max_size=12).map("".join))
def test_fast_path_equals_the_full_scan(sql: str) -> None:
    assert split_statements(sql) == _split_scan(sql)


def test_fast_path_cases() -> None:
    for sql in (
        "SELECT abalance FROM pgbench_accounts WHERE aid = 123;",
        "SELECT 1",
        "  SELECT 1 ;  \n",
        ";",
        "",
        "   ",
        "SELECT f(1);",  # a parenthesis: the full scan decides
        "SELECT 'a;b'",
        "SELECT 1; SELECT 2",
    ):
        assert split_statements(sql) == _split_scan(sql), sql
