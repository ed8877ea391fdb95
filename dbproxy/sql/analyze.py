"""Structure of a normalized statement: operation, read/write kind, tables, summary.

DML goes through sqlglot's ``postgres`` dialect; utility statements, DDL and anything
sqlglot rejects are classified from the normalized tokens.  Everything here is a pure
function of the normalized text, so the fingerprinter may cache it by that text.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from sqlglot import exp
from sqlglot.dialects.dialect import Dialect

from dbproxy.sql.keywords import NEEDS_QUOTES

__all__ = ["Analysis", "QueryKind", "analyze", "load_dialect"]

MAX_PARSE_CHARS: Final = 100_000  # longer texts are classified from tokens only
MAX_PARSE_DEPTH: Final = 64  # deeper nesting is classified from tokens only
MAX_SUMMARY_CHARS: Final = 255  # OpenTelemetry's limit for db.query.summary


class QueryKind(StrEnum):
    """Whether a statement changes data (must run on a primary) or only reads it."""

    READ = "read"
    WRITE = "write"
    OTHER = "other"


@dataclass(frozen=True, slots=True, kw_only=True)
class Analysis:
    operation: str
    kind: QueryKind
    tables: tuple[str, ...]
    summary: str
    parse_ok: bool
    parsed: bool = False  # sqlglot was run
    parse_ns: int = 0


_SQLGLOT_FIRST: Final = frozenset(
    ("SELECT", "WITH", "INSERT", "UPDATE", "DELETE", "MERGE", "VALUES", "TABLE", "COPY", "(")
)
_DML: Final = frozenset(("INSERT", "UPDATE", "DELETE", "MERGE"))
_TRANSACTION: Final = frozenset(("BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE"))
_SESSION: Final = frozenset(
    (
        "SET",
        "RESET",
        "SHOW",
        "DISCARD",
        "LISTEN",
        "UNLISTEN",
        "NOTIFY",
        "DEALLOCATE",
        "EXECUTE",
        "FETCH",
        "MOVE",
        "CLOSE",
        "LOAD",
    )
)
_MAINTENANCE: Final = frozenset(
    ("VACUUM", "ANALYZE", "ANALYSE", "CHECKPOINT", "CLUSTER", "REINDEX")
)
_DDL: Final = frozenset(
    ("CREATE", "ALTER", "DROP", "COMMENT", "GRANT", "REVOKE", "SECURITY", "IMPORT", "REASSIGN")
)
_WRITE_UTILITY: Final = frozenset(("TRUNCATE", "REFRESH", "CALL", "DO", "LOCK"))
_DDL_SKIP: Final = frozenset(
    [
        "OR",
        "REPLACE",
        "UNIQUE",
        "TEMP",
        "TEMPORARY",
        "UNLOGGED",
        "GLOBAL",
        "LOCAL",
        "MATERIALIZED",
        "FOREIGN",
        "RECURSIVE",
        "DEFAULT",
        "TRUSTED",
        "PROCEDURAL",
        "CONSTRAINT",
    ]
)
_TABLE_OBJECTS: Final = frozenset(("TABLE", "VIEW"))
_TABLE_INTRO: Final = frozenset(("FROM", "JOIN", "INTO", "UPDATE", "TABLE", "USING", "COPY"))
_NOT_ALIASES: Final = _TABLE_INTRO | frozenset(
    ("JOIN", "LEFT", "RIGHT", "FULL", "CROSS", "NATURAL", "TABLESAMPLE", "WINDOW")
)
_LOCK_PREFIX: Final = frozenset(("FOR", "KEY", "NO", "DO"))
_LOCKS: Final = frozenset(("UPDATE", "SHARE", "NO", "KEY"))
_NAME_SKIP: Final = frozenset(("ONLY", "LATERAL", "IF", "NOT", "EXISTS", "CONCURRENTLY"))
_NOT_NAMES: Final = frozenset(
    [
        "SELECT",
        "WITH",
        "VALUES",
        "WHERE",
        "SET",
        "ON",
        "AS",
        "LIMIT",
        "ORDER",
        "GROUP",
        "DEFAULT",
        "RETURNING",
        "CASCADE",
        "RESTRICT",
        "STDIN",
        "STDOUT",
        "ALL",
    ]
)


def analyze(text: str, words: Sequence[str], kinds: Sequence[int], max_depth: int) -> Analysis:
    """Analyze one normalized statement.  Never raises."""
    start = _first_word(words)
    if start is None:
        return Analysis(
            operation="EMPTY", kind=QueryKind.OTHER, tables=(), summary="", parse_ok=True
        )
    first = words[start]
    if first in _SQLGLOT_FIRST:
        return _analyze_dml(text, words, max_depth)
    if first == "EXPLAIN":
        return _analyze_explain(words, kinds, max_depth)
    if first == "PREPARE" and (len(words) < 2 or words[1] != "TRANSACTION"):
        return _analyze_wrapper("PREPARE", words, kinds, max_depth, QueryKind.OTHER)
    if first == "DECLARE":
        return _analyze_wrapper("DECLARE", words, kinds, max_depth, None)
    return _analyze_utility(words)


def _first_word(words: Sequence[str]) -> int | None:
    for idx, word in enumerate(words):
        if word != ";":
            return idx
    return None


# --- sqlglot path ------------------------------------------------------------------------


def _analyze_dml(text: str, words: Sequence[str], max_depth: int) -> Analysis:
    if len(text) > MAX_PARSE_CHARS or max_depth > MAX_PARSE_DEPTH:
        return _dml_from_tokens(words)
    started = time.perf_counter_ns()
    try:
        result = _parse(text)
    except Exception:  # sqlglot ParseError/TokenError/RecursionError/anything: fall back
        result = None
    elapsed = time.perf_counter_ns() - started
    if result is None:
        fallback = _dml_from_tokens(words)
        return Analysis(
            operation=fallback.operation,
            kind=fallback.kind,
            tables=fallback.tables,
            summary=fallback.summary,
            parse_ok=False,
            parsed=True,
            parse_ns=elapsed,
        )
    operation, kind, tables, summary = result
    return Analysis(
        operation=operation,
        kind=kind,
        tables=tables,
        summary=summary,
        parse_ok=True,
        parsed=True,
        parse_ns=elapsed,
    )


_OPS: Final[dict[type[exp.Expr], str]] = {
    exp.Select: "SELECT",
    exp.Insert: "INSERT",
    exp.Update: "UPDATE",
    exp.Delete: "DELETE",
    exp.Merge: "MERGE",
    exp.Copy: "COPY",
}
_WRITE_NODES: Final = frozenset((exp.Insert, exp.Update, exp.Delete, exp.Merge))


def _parse(text: str) -> tuple[str, QueryKind, tuple[str, ...], str] | None:
    statements = [s for s in _dialect().parse(text) if s is not None]
    if len(statements) != 1:
        return None
    root = statements[0]
    if isinstance(root, (exp.SetOperation, exp.Values)):
        operation = "SELECT"
    else:
        found = _OPS.get(type(root))
        if found is None:
            return None
        operation = found

    # Depth-first in text order: a statement's WITH comes first (sqlglot keeps it last);
    # FOR UPDATE OF t only repeats a table of the FROM list.
    with_ = root.args.get("with_")
    nodes: list[exp.Expr] = list(with_.dfs()) if with_ is not None else []
    nodes.extend(root.dfs(prune=lambda n: n is with_ or type(n) is exp.Lock))

    cte_names: set[str] = set()
    write = False
    parts: list[exp.Expr | str] = []
    for node in nodes:
        node_type = type(node)
        if node_type is exp.Table:
            parts.append(node)
            continue
        if node_type is exp.CTE:
            cte_names.add(node.alias_or_name)
            continue
        op = _OPS.get(node_type)
        if op is None:
            continue
        if not isinstance(node.parent, exp.When):  # MERGE … WHEN MATCHED THEN UPDATE
            parts.append(op)
        if node_type in _WRITE_NODES or (node_type is exp.Select and node.args.get("locks")):
            write = True
    if type(root) is exp.Select and root.args.get("into") is not None:
        write = True
    if type(root) is exp.Copy:
        write = bool(root.args.get("kind"))  # True: COPY … FROM

    tables: list[str] = []
    summary: list[str] = []
    for part in parts:
        if isinstance(part, str):
            word = part
        else:
            name = _table_name(part, cte_names)
            if name is None:
                continue
            if name not in tables:
                tables.append(name)
            word = name
        if not summary or summary[-1] != word:
            summary.append(word)
    kind = QueryKind.WRITE if write else QueryKind.READ
    return operation, kind, tuple(tables), _clip(" ".join(summary) or operation)


_DIALECT_CACHE: list[Dialect] = []


def _dialect() -> Dialect:
    # Immutable configuration (every parse builds a fresh parser, so no state is shared
    # between calls); building it costs milliseconds, so it is built once per process.
    if not _DIALECT_CACHE:
        _DIALECT_CACHE.append(Dialect.get_or_raise("postgres"))
    return _DIALECT_CACHE[0]


def load_dialect() -> None:
    """Build sqlglot's ``postgres`` dialect now.  It imports its parser and generator
    modules (~12 ms); a serving process does it at start rather than in the drain at the
    first statement it analyzes, where it would stall every connection of the loop."""
    _dialect()


def _ident_sql(ident: object) -> str:
    from sqlglot import exp

    if isinstance(ident, exp.Identifier):
        name = str(ident.this)
        return '"' + name.replace('"', '""') + '"' if ident.quoted else name
    return str(getattr(ident, "name", ""))


def _table_name(table: object, cte_names: set[str]) -> str | None:
    from sqlglot import exp

    assert isinstance(table, exp.Table)
    this = table.this
    if not isinstance(this, exp.Identifier):
        return None  # a table function: generate_series(…), unnest(…)
    parts = [table.args.get("catalog"), table.args.get("db"), this]
    names = [_ident_sql(p) for p in parts if p is not None]
    if len(names) == 1 and this.this in cte_names:
        return None
    return ".".join(names)


def _clip(summary: str) -> str:
    if len(summary) <= MAX_SUMMARY_CHARS:
        return summary
    cut = summary.rfind(" ", 0, MAX_SUMMARY_CHARS)
    return summary[: cut if cut > 0 else MAX_SUMMARY_CHARS]


# --- token path --------------------------------------------------------------------------


def _is_name(word: str) -> bool:
    if not word or word in _NOT_NAMES or word in NEEDS_QUOTES:
        return False
    return word[0] == '"' or word[0].isalpha() or word[0] == "_" or ord(word[0]) >= 0x80


def _read_name(words: Sequence[str], j: int) -> tuple[str | None, int]:
    n = len(words)
    while j < n and words[j] in _NAME_SKIP:
        j += 1
    if j >= n or not _is_name(words[j]):
        return None, j
    parts = [words[j]]
    j += 1
    while j + 1 < n and words[j] == "." and _is_name(words[j + 1]):
        parts.append(words[j + 1])
        j += 2
    return ".".join(p if p[0] == '"' else p.lower() for p in parts), j


def _cte_names(words: Sequence[str]) -> set[str]:
    names: set[str] = set()
    for idx in range(len(words) - 2):
        if words[idx + 1] == "AS" and words[idx + 2] in ("(", "NOT", "MATERIALIZED"):
            if idx > 0 and words[idx - 1] in ("WITH", "RECURSIVE", ","):
                names.add(words[idx].lower())
        elif words[idx] == ")" and words[idx + 1] == "AS" and words[idx + 2] == "(":
            # name(cols) AS (…): walk back over the column list
            depth = 0
            for back in range(idx, -1, -1):
                if words[back] == ")":
                    depth += 1
                elif words[back] == "(":
                    depth -= 1
                    if depth == 0:
                        if back > 1 and words[back - 2] in ("WITH", "RECURSIVE", ","):
                            names.add(words[back - 1].lower())
                        break
    return names


def _tables_from_tokens(words: Sequence[str], intro: frozenset[str]) -> list[str]:
    ctes = _cte_names(words)
    tables: list[str] = []
    n = len(words)
    j = 0
    while j < n:
        word = words[j]
        if word in intro and not (word == "UPDATE" and j > 0 and words[j - 1] in _LOCK_PREFIX):
            k = j + 1
            while True:
                name, k = _read_name(words, k)
                if name is None:
                    break
                if k < n and words[k] == "(" and word in ("FROM", "JOIN", "USING"):
                    break  # a function in FROM: generate_series(…)
                if name not in ctes and name not in tables:
                    tables.append(name)
                # optional alias, then a comma continues the list
                if k < n and words[k] == "AS":
                    k += 1
                if k < n and _is_name(words[k]) and words[k] not in _NOT_ALIASES:
                    k += 1
                if k < n and words[k] == "," and word in ("FROM", "TABLE", "USING"):
                    k += 1
                    continue
                break
            j = max(k, j + 1)
        else:
            j += 1
    return tables


def _depth0_index(words: Sequence[str], targets: frozenset[str], start: int = 0) -> int:
    depth = 0
    for idx in range(start, len(words)):
        word = words[idx]
        if word == "(":
            depth += 1
        elif word == ")":
            depth -= 1
        elif depth == 0 and word in targets:
            return idx
    return -1


def _dml_from_tokens(words: Sequence[str]) -> Analysis:
    start = 0
    while start < len(words) and words[start] == "(":
        start += 1
    first = words[start] if start < len(words) else ""
    main = first
    if first == "WITH":
        idx = _depth0_index(words, frozenset(("SELECT", *_DML)), start + 1)
        main = words[idx] if idx >= 0 else "SELECT"
    operation = main if main in _DML or main == "COPY" else "SELECT"
    write = main in _DML or any(w in _DML for w in words[start:])
    if operation == "COPY":
        write = _depth0_index(words, frozenset(("FROM",))) >= 0
    elif operation == "SELECT" and not write:
        for idx, word in enumerate(words):
            if word == "FOR" and idx + 1 < len(words) and words[idx + 1] in _LOCKS:
                write = True
                break
        into = _depth0_index(words, frozenset(("INTO",)))
        if into >= 0:
            write = True
    tables = _tables_from_tokens(words, _TABLE_INTRO)
    summary = _clip(" ".join([operation, *tables]))
    return Analysis(
        operation=operation,
        kind=QueryKind.WRITE if write else QueryKind.READ,
        tables=tuple(tables),
        summary=summary,
        parse_ok=False,
    )


def _inner_start(words: Sequence[str], after: int) -> int:
    """Index of the statement wrapped by EXPLAIN/PREPARE/DECLARE, or -1."""
    return _depth0_index(words, _SQLGLOT_FIRST - frozenset(("(",)), after)


def _analyze_inner(
    words: Sequence[str], kinds: Sequence[int], start: int, max_depth: int
) -> Analysis | None:
    if start < 0:
        return None
    from dbproxy.sql.normalize import render

    inner_words = words[start:]
    inner_kinds = kinds[start:]
    return analyze(render(inner_words, inner_kinds), inner_words, inner_kinds, max_depth)


def _analyze_explain(words: Sequence[str], kinds: Sequence[int], max_depth: int) -> Analysis:
    inner = _analyze_inner(words, kinds, _inner_start(words, 1), max_depth)
    analyze_words = ("ANALYZE", "ANALYSE")
    head = words[: _inner_start(words, 1)] if inner is not None else words
    executes = any(w in analyze_words for w in head)
    if inner is None:
        return Analysis(
            operation="EXPLAIN", kind=QueryKind.OTHER, tables=(), summary="EXPLAIN", parse_ok=False
        )
    kind = inner.kind if executes else QueryKind.OTHER
    return Analysis(
        operation="EXPLAIN",
        kind=kind,
        tables=inner.tables,
        summary=_clip("EXPLAIN " + inner.summary),
        parse_ok=inner.parse_ok,
        parsed=inner.parsed,
        parse_ns=inner.parse_ns,
    )


def _analyze_wrapper(
    operation: str,
    words: Sequence[str],
    kinds: Sequence[int],
    max_depth: int,
    kind: QueryKind | None,
) -> Analysis:
    inner = _analyze_inner(words, kinds, _inner_start(words, 2), max_depth)
    if inner is None:
        return Analysis(
            operation=operation,
            kind=kind or QueryKind.OTHER,
            tables=(),
            summary=operation,
            parse_ok=False,
        )
    return Analysis(
        operation=operation,
        kind=kind or inner.kind,
        tables=inner.tables,
        summary=_clip(f"{operation} {inner.summary}"),
        parse_ok=inner.parse_ok,
        parsed=inner.parsed,
        parse_ns=inner.parse_ns,
    )


def _analyze_utility(words: Sequence[str]) -> Analysis:
    first = words[0]
    second = words[1] if len(words) > 1 else ""
    if first in _TRANSACTION or (first == "PREPARE" and second == "TRANSACTION"):
        operation = first
        if first in ("PREPARE", "COMMIT", "ROLLBACK") and second in ("TRANSACTION", "PREPARED"):
            operation = f"{first} {second}"
        return Analysis(
            operation=operation,
            kind=QueryKind.OTHER,
            tables=(),
            summary=operation,
            parse_ok=True,
        )
    if first in _SESSION:
        summary = first
        if first in ("SET", "RESET", "SHOW") and len(words) > 1:
            target = _setting_name(words)
            summary = f"{first} {target}" if target else first
        elif first in ("LISTEN", "UNLISTEN", "NOTIFY") and _is_name(second):
            summary = f"{first} {second}"
        return Analysis(
            operation=first, kind=QueryKind.OTHER, tables=(), summary=_clip(summary), parse_ok=True
        )
    if first in _MAINTENANCE:
        tables = _tables_after_options(words)
        return Analysis(
            operation=first,
            kind=QueryKind.OTHER,
            tables=tuple(tables),
            summary=_clip(" ".join([first, *tables])),
            parse_ok=True,
        )
    if first in _DDL:
        return _analyze_ddl(words)
    if first in _WRITE_UTILITY:
        if first in ("TRUNCATE", "LOCK"):
            rest = words[2:] if second == "TABLE" else words[1:]
            tables = _tables_from_tokens(["TABLE", *rest], frozenset(("TABLE",)))
        elif first == "REFRESH":
            tables = _tables_from_tokens(words, frozenset(("VIEW",)))
        else:
            tables = []
        return Analysis(
            operation=first,
            kind=QueryKind.WRITE,
            tables=tuple(tables),
            summary=_clip(" ".join([first, *tables])),
            parse_ok=True,
        )
    return Analysis(
        operation="UNKNOWN", kind=QueryKind.OTHER, tables=(), summary="UNKNOWN", parse_ok=False
    )


def _setting_name(words: Sequence[str]) -> str:
    j = 1
    if j < len(words) and words[j] in ("LOCAL", "SESSION"):
        j += 1
    name: list[str] = []
    while j < len(words) and words[j] not in ("=", "TO", "$"):
        name.append(words[j])
        j += 1
        if len(name) >= 5:
            break
    joined = " ".join(name).replace(" . ", ".")
    return joined.lower() if joined.isupper() else joined


def _tables_after_options(words: Sequence[str]) -> list[str]:
    j = 1
    if j < len(words) and words[j] == "(":
        depth = 0
        while j < len(words):
            if words[j] == "(":
                depth += 1
            elif words[j] == ")":
                depth -= 1
                if depth == 0:
                    j += 1
                    break
            j += 1
    while j < len(words) and words[j] in ("FULL", "FREEZE", "VERBOSE", "ANALYZE", "TABLE"):
        j += 1
    return _tables_from_tokens(["TABLE", *words[j:]], frozenset(("TABLE",)))


def _analyze_ddl(words: Sequence[str]) -> Analysis:
    first = words[0]
    j = 1
    while j < len(words) and words[j] in _DDL_SKIP:
        j += 1
    obj = words[j] if j < len(words) else ""
    targets: list[str] = []
    if obj in _TABLE_OBJECTS:
        targets = _tables_from_tokens(["TABLE", *words[j + 1 :]], frozenset(("TABLE",)))
        if first != "DROP":
            targets = targets[:1]
    if first == "CREATE" and obj in ("INDEX", "TRIGGER", "POLICY", "RULE"):
        targets = _tables_from_tokens(words, frozenset(("ON",)))[:1]
    elif first == "COMMENT" or first in ("GRANT", "REVOKE"):
        targets = _tables_from_tokens(words, frozenset(("TABLE",)))
    sources = _tables_from_tokens(words, frozenset(("FROM", "JOIN"))) if first == "CREATE" else []
    tables = list(dict.fromkeys([*targets, *sources]))
    verb = f"{first} {obj}" if obj and obj[0].isalpha() and obj.isupper() else first
    if first in ("COMMENT", "GRANT", "REVOKE", "SECURITY", "IMPORT", "REASSIGN"):
        verb = first
    return Analysis(
        operation="DDL",
        kind=QueryKind.WRITE,
        tables=tuple(tables),
        summary=_clip(" ".join([verb, *targets])),
        parse_ok=True,
    )
