"""The side connection's literal-free parameterization (pure)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dbproxy.sql.parameterize import called_functions, parameterize


def test_constants_become_numbered_parameters_after_the_clients() -> None:
    p = parameterize("SELECT * FROM t WHERE a = $1 AND name LIKE 'sent%' AND n > 42 LIMIT 5")
    assert p is not None
    assert p.text == "SELECT * FROM t WHERE a = $1 AND name LIKE $2 AND n > $3 LIMIT $4"
    assert (p.params, p.original_params) == (4, 1)
    assert p.literals == ("sent%", "42", "5")
    assert p.sampleable


def test_values_are_decoded_and_kept_out_of_the_text_and_repr() -> None:
    p = parameterize("SELECT 'it''s', $q$dollar$q$, N'n', 1_000 /* 'comment' */")
    assert p is not None
    assert p.literals == ("it's", "dollar", "n", "1000")
    assert "it" not in p.text and "dollar" not in p.text and "comment" not in p.text
    assert "dollar" not in repr(p)


def test_typed_literals_casts_and_type_modifiers_keep_their_types() -> None:
    p = parameterize(
        "SELECT x::varchar(10), DATE '2024-01-01', INTERVAL '1' DAY, CAST('5' AS numeric(10, 2))"
    )
    assert p is not None
    assert p.text == (
        "SELECT x :: varchar ( 10 ) , CAST($1 AS DATE) , CAST($2 AS INTERVAL DAY) , "
        "CAST ( $3 AS numeric ( 10 , 2 ) )"
    )


def test_negative_numbers_are_one_constant_but_subtraction_stays() -> None:
    p = parameterize("UPDATE a SET b = b + -5, c = c - 3 WHERE d IN (-1, 2) AND e > -0.5")
    assert p is not None
    assert p.text == "UPDATE a SET b = b + $1 , c = c - $2 WHERE d IN ( $3 , $4 ) AND e > $5"
    assert p.literals == ("-5", "3", "-1", "2", "-0.5")


def test_order_and_group_by_ordinals_stay() -> None:
    p = parameterize("SELECT a, count(*) FROM t WHERE b = 3 GROUP BY 1, 2 ORDER BY 2 DESC, 1")
    assert p is not None
    assert p.text.endswith("WHERE b = $1 GROUP BY 1 , 2 ORDER BY 2 DESC , 1")


def test_undecoded_values_make_a_statement_plannable_but_not_sampleable() -> None:
    p = parameterize(r"SELECT E'a\nb', B'101'")
    assert p is not None
    assert p.literals == (None, None)
    assert not p.sampleable


@pytest.mark.parametrize("sql", ["SELECT 1; SELECT 2", "", "  ;  "])
def test_several_or_no_statements_are_refused(sql: str) -> None:
    assert parameterize(sql) is None


def test_called_functions() -> None:
    assert called_functions('SELECT f(1), s."G"(2), count(*) FROM t') == {"f", "G", "count"}


@given(
    st.lists(
        st.text(alphabet="abcxyz'%_ -", min_size=1, max_size=8).map(lambda s: "zz" + s),
        min_size=1,
        max_size=4,
    )
)
def test_no_string_literal_survives(values: list[str]) -> None:
    quoted = [("'" + v.replace("'", "''") + "'") for v in values]
    sql = "SELECT * FROM t WHERE " + " AND ".join(f"c{i} = {q}" for i, q in enumerate(quoted))
    p = parameterize(sql)
    assert p is not None
    assert "zz" not in p.text and "'" not in p.text
    assert list(p.literals) == values
    assert re.findall(r"\$\d+", p.text) == [f"${i + 1}" for i in range(len(values))]
