"""Property tests: literal substitutions never change the id; nothing ever raises."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dbproxy.sql.cache import Fingerprinter
from dbproxy.sql.fingerprint import fingerprint

TEMPLATES = [
    "SELECT * FROM users WHERE id = {0} AND name = {1}",
    "SELECT a, b FROM t WHERE c > {0} ORDER BY 1 LIMIT {2}",
    "INSERT INTO t (a, b, c) VALUES ({0}, {1}, {2}) RETURNING id",
    "UPDATE accounts SET balance = balance - {0} WHERE id = {2} AND note = {1}",
    "DELETE FROM s WHERE expires < {1} AND id IN ({0}, {2})",
    "SELECT * FROM t WHERE j->>'k' = {1} AND ts > now() - {1}::interval AND x = -{0}",
    "WITH x AS (SELECT * FROM t WHERE a = {0}) SELECT * FROM x WHERE b = {1}",
    "SELECT * FROM t WHERE a = ANY(ARRAY[{0}, {2}]) AND b = {1}::text",
    "SET statement_timeout = {0}",
    "SAVEPOINT sp; SELECT {0}",
]

_text = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\x00"), max_size=30)
_string_literal = _text.map(lambda s: "'" + s.replace("'", "''") + "'")
_escape_literal = _text.map(lambda s: "E'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'")
_dollar_literal = _text.filter(lambda s: "$q$" not in s).map(lambda s: f"$q${s}$q$")
_number = st.one_of(
    st.integers(min_value=0, max_value=10**30).map(str),
    st.floats(min_value=0, allow_nan=False, allow_infinity=False).map(repr),
    st.decimals(min_value=0, allow_nan=False, allow_infinity=False).map(str),
)
_literal = st.one_of(
    _number,
    _string_literal,
    _escape_literal,
    _dollar_literal,
    st.integers(min_value=1, max_value=99).map(lambda n: f"${n}"),
    st.sampled_from(["TRUE", "false", "NULL", "DATE '2024-01-01'", "'x'::text"]),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    template=st.sampled_from(TEMPLATES),
    first=st.tuples(_literal, _literal, _literal),
    second=st.tuples(_literal, _literal, _literal),
)
def test_literal_substitution_never_changes_the_id(
    template: str, first: tuple[str, str, str], second: tuple[str, str, str]
) -> None:
    a = fingerprint(template.format(*first))
    b = fingerprint(template.format(*second))
    assert a.id == b.id, (a.text, b.text)
    assert a.text == b.text


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=400))
def test_never_raises_on_arbitrary_text(sql: str) -> None:
    fp = fingerprint(sql)
    assert len(fp.id) == 16
    assert fingerprint(sql) == fp


_SQLISH = st.lists(
    st.sampled_from(
        [
            "SELECT",
            "FROM",
            "WHERE",
            "(",
            ")",
            "[",
            "]",
            ",",
            ";",
            "'",
            '"',
            "$$",
            "$1",
            "/*",
            "*/",
            "--",
            "\n",
            "::",
            "IN",
            "VALUES",
            "ARRAY",
            "ORDER",
            "BY",
            "1",
            "-",
            "t",
            "x",
            "=",
            "E'",
            "\\",
            "CAST",
            "AS",
            "int",
            "NULL",
            "SET",
            "INTERVAL",
            "?|",
        ]
    ),
    max_size=60,
).map(" ".join)


@settings(max_examples=400, deadline=None)
@given(_SQLISH)
def test_never_raises_on_sql_like_garbage(sql: str) -> None:
    fp = fingerprint(sql)
    assert Fingerprinter().fingerprint(sql) == fp
    assert len(Fingerprinter().fingerprint_many(sql)) >= 0


@settings(max_examples=50, deadline=None)
@given(st.binary(max_size=300))
def test_never_raises_on_invalid_utf8_decoded_with_replacement(data: bytes) -> None:
    sql = data.decode("utf-8", errors="replace")
    assert len(fingerprint(sql).id) == 16


def test_lone_surrogates_do_not_raise() -> None:
    assert len(fingerprint("SELECT '\ud800' FROM \udcff").id) == 16


def test_one_megabyte_inputs() -> None:
    rows = ", ".join(f"({i}, 'row {i}')" for i in range(60_000))
    insert = f"INSERT INTO t (a, b) VALUES {rows}"
    assert len(insert) > 1_000_000
    fp = fingerprint(insert)
    assert fp.text == "INSERT INTO t(a, b) VALUES ($1, $2)" and fp.parse_ok
    garbage = ("(((( '" * 200_000)[:1_100_000]
    assert len(fingerprint(garbage).id) == 16
    nested = "SELECT " + "(" * 50_000 + "1" + ")" * 50_000
    assert fingerprint(nested).parse_ok is False
    wide = "SELECT " + ", ".join(f"c{i}" for i in range(150_000)) + " FROM t"
    assert fingerprint(wide).parse_ok is False  # too long for sqlglot: tokens only
