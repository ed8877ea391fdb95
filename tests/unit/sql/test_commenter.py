from __future__ import annotations

from dbproxy.sql.commenter import MAX_TAGS, parse_sqlcommenter, tags_from_comments


def test_trailing_sqlcommenter() -> None:
    sql = (
        "SELECT * FROM users /*action='show',controller='users',"
        "traceparent='00-5bd66ef5095369c7b0d1f8f4bd33716a-c532cb4098ac3dd2-01',"
        "tracestate='congo%3Dt61rcWkgMzE%2Crojo%3D00f067aa0ba902b7'*/"
    )
    assert parse_sqlcommenter(sql) == {
        "action": "show",
        "controller": "users",
        "traceparent": "00-5bd66ef5095369c7b0d1f8f4bd33716a-c532cb4098ac3dd2-01",
        "tracestate": "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7",
    }


def test_leading_comment_and_url_decoding() -> None:
    sql = (
        "/*route='%2Fpolls%2F%3Cint%3Aquestion_id%3E',"
        "db_driver='django.db.backends.postgresql'*/ SELECT 1"
    )
    assert parse_sqlcommenter(sql) == {
        "route": "/polls/<int:question_id>",
        "db_driver": "django.db.backends.postgresql",
    }


def test_escaped_quote_and_spaces() -> None:
    assert parse_sqlcommenter("SELECT 1 /* a='it\\'s' , b='x y' */") == {"a": "it's", "b": "x y"}


def test_rails_legacy_format_only_with_known_keys() -> None:
    assert parse_sqlcommenter("SELECT 1 /*application:Shop,controller:users,action:index*/") == {
        "application": "Shop",
        "controller": "users",
        "action": "index",
    }
    assert parse_sqlcommenter("SELECT 1 /* TODO: fix */") == {}
    assert parse_sqlcommenter("SELECT 1 /* note: slow, owner: bob */") == {}


def test_not_tags() -> None:
    assert parse_sqlcommenter("SELECT 1") == {}
    assert parse_sqlcommenter("SELECT '/*a=''b''*/'") == {}  # inside a string
    assert parse_sqlcommenter("SELECT 1 -- a='b'") == {}  # sqlcommenter uses /* */
    assert parse_sqlcommenter("SELECT 1 /* a='b' junk */") == {}
    assert parse_sqlcommenter("SELECT 1 /**/") == {}


def test_later_comment_wins_and_bounds() -> None:
    assert tags_from_comments(["/*a='1'*/", "/*a='2',b='3'*/"]) == {"a": "2", "b": "3"}
    many = "/*" + ",".join(f"k{i}='v'" for i in range(100)) + "*/"
    assert len(tags_from_comments([many])) == MAX_TAGS
    assert tags_from_comments(["/*a='" + "x" * 10_000 + "'*/"]) == {}


def test_never_raises_on_bad_percent_encoding() -> None:
    assert parse_sqlcommenter("SELECT 1 /*a='%zz%',b='%E2%82'*/")["a"] == "%zz%"


def test_unquoted_values_of_opentelemetry_python_instrumentation() -> None:
    # what opentelemetry-instrumentation-psycopg (DB-API commenter) appends
    sql = (
        "SELECT 1 /*db_driver='psycopg%3A3.3.9',dbapi_level='2.0',dbapi_threadsafety=2,"
        "driver_paramstyle='pyformat',libpq_version=180006,"
        "traceparent='00-ff0f568d44b54cdbbf403f05cd859c2f-359f29212b4ae8e4-03'*/"
    )
    tags = parse_sqlcommenter(sql)
    assert tags["traceparent"] == "00-ff0f568d44b54cdbbf403f05cd859c2f-359f29212b4ae8e4-03"
    assert tags["db_driver"] == "psycopg:3.3.9"
    assert tags["dbapi_threadsafety"] == "2"
    assert parse_sqlcommenter("SELECT 1 /* a = b */") == {}
