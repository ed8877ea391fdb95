from __future__ import annotations

from dbproxy.sql.lexer import NUMBER, OP, PARAM, PUNCT, QIDENT, STRING, WORD, tokenize


def test_strings_of_every_kind() -> None:
    sql = "E'a\\'b' 'x''y' B'01' X'FF' U&'d\\0061' N'n' $$a;'b$$ $t$x$t$"
    assert [k for k, _ in tokenize(sql)] == [STRING] * 8


def test_params_operators_and_jsonb_question_marks() -> None:
    tokens = tokenize("a ? 'k' AND b ?| c AND d ?& e AND $12 = f->>'x'")
    assert (OP, "?") in tokens and (OP, "?|") in tokens and (OP, "?&") in tokens
    assert (PARAM, "$12") in tokens and (OP, "->>") in tokens


def test_operator_trailing_sign_rule() -> None:
    assert tokenize("a=-1") == [(WORD, "a"), (OP, "="), (OP, "-"), (NUMBER, "1")]
    assert tokenize("a @- 1")[1] == (OP, "@-")  # kept: contains a special character
    assert tokenize("a*/*c*/b") == [(WORD, "a"), (OP, "*"), (WORD, "b")]


def test_comments_collected_and_nested() -> None:
    comments: list[str] = []
    tokens = tokenize("SELECT /* a /* b */ c */ 1 -- tail\n, 2", comments)
    assert comments == ["/* a /* b */ c */", "-- tail"]
    assert tokens == [(WORD, "SELECT"), (NUMBER, "1"), (PUNCT, ","), (NUMBER, "2")]


def test_unterminated_everything_runs_to_the_end() -> None:
    assert tokenize("'abc") == [(STRING, "'abc")]
    assert tokenize('"abc') == [(QIDENT, '"abc')]
    assert tokenize("$x$abc") == [(STRING, "$x$abc")]
    assert tokenize("/* abc") == []


def test_identifiers_with_dollars_and_unicode() -> None:
    assert tokenize("a$b$ größe") == [(WORD, "a$b$"), (WORD, "größe")]
