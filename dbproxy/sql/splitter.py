"""Split a simple-Query string into statements the way PostgreSQL does.

PostgreSQL runs every statement of a simple Query message in order and answers each
with its own CommandComplete (or EmptyQueryResponse / ErrorResponse).  To pair those
answers with statement text we split the string with the lexical rules of the server's
scanner (``scan.l``) plus psql's heuristics (``psqlscan.l``) for the cases the grammar
decides:

* semicolons inside single-quoted strings (``''`` doubling; backslash escapes only in
  ``E''`` strings), double-quoted identifiers, dollar quotes (``$tag$ … $tag$``, but
  ``$1`` is a parameter), ``--`` and nested ``/* */`` comments do not split;
* semicolons inside parentheses do not split (psql's ``paren_depth``);
* semicolons inside a ``CREATE [OR REPLACE] FUNCTION|PROCEDURE … BEGIN ATOMIC … END``
  body do not split (psql's ``begin_depth``, with ``CASE … END`` nesting, counted only
  outside parentheses, so a parameter named ``begin`` is not a block).

Empty statements are dropped, as the server drops them.  A trailing piece that holds
only comments (``SELECT 1; /*traceparent='…'*/``) is attached to the statement before
it, so sqlcommenter tags written after the semicolon are not lost.

Pure and allocation-light: a single pass over the string, no regular expressions on the
hot loop.  Never raises; unterminated quotes or comments run to the end of the string
(the server would reject such a string as a whole, so the split no longer matters).
"""

from __future__ import annotations

__all__ = ["split_statements"]

_IDENT_START = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_")
_IDENT_CONT = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_0123456789$")


def _is_ident_start(ch: str) -> bool:
    return ch in _IDENT_START or ord(ch) >= 0x80


def _is_ident_cont(ch: str) -> bool:
    return ch in _IDENT_CONT or ord(ch) >= 0x80


def _dollar_tag_end(sql: str, i: int, n: int) -> int:
    """If ``sql[i] == '$'`` opens a dollar quote, return the index after its tag, else -1."""
    j = i + 1
    if j < n and sql[j] == "$":
        return j + 1
    if j >= n or not _is_ident_start(sql[j]):
        return -1  # `$1` is a parameter, a lone `$` an operator character
    j += 1
    while j < n and sql[j] != "$":
        if not _is_ident_cont(sql[j]):
            return -1
        j += 1
    return j + 1 if j < n else -1


def _skip_quoted(sql: str, i: int, n: int, backslash: bool) -> int:
    """Index after the string literal whose body starts at ``i``.  As in scan.l, a
    closing quote followed by whitespace holding a newline and another quote continues
    the same literal (``'a'\n'b'`` is ``'ab'``), keeping its escape mode."""
    while i < n:
        c = sql[i]
        if backslash and c == "\\":
            i += 2
            continue
        if c == "'":
            if i + 1 < n and sql[i + 1] == "'":
                i += 2
                continue
            j = i + 1
            while j < n and sql[j] in " \t\r\f\n":
                j += 1
            if j < n and sql[j] == "'" and "\n" in sql[i + 1 : j]:
                i = j + 1  # continuation
                continue
            return i + 1
        i += 1
    return n


def split_statements(sql: str) -> list[str]:
    """Return the statements of ``sql`` without their terminating semicolons."""
    # Fast path (most simple Queries hold one statement): with no comment and no
    # semicolon, nothing can split; with one final semicolon and no quote, dollar,
    # comment or parenthesis before it, it ends the only statement.  Exactly what the
    # full scan returns (a property test holds the two equal).
    if "--" not in sql and "/*" not in sql:
        semicolons = sql.count(";")
        if semicolons == 0:
            only = sql.strip()
            return [only] if only else []
        if semicolons == 1:
            body = sql.rstrip()
            if body.endswith(";") and not any(c in body for c in "'\"$("):
                only = body[:-1].strip()
                return [only] if only else []
    return _split_scan(sql)


def _split_scan(sql: str) -> list[str]:
    n = len(sql)
    pieces: list[tuple[str, bool]] = []  # (text, has_code)
    start = 0
    i = 0
    paren_depth = 0
    begin_depth = 0
    # psql's heuristic: remember the first identifiers of the statement to recognise
    # CREATE [OR REPLACE] FUNCTION|PROCEDURE, where BEGIN ... END nests semicolons.
    idents: list[str] = []
    has_code = False

    while i < n:
        ch = sql[i]
        if ch == "-" and i + 1 < n and sql[i + 1] == "-":
            nl = sql.find("\n", i + 2)
            i = n if nl < 0 else nl + 1
            continue
        if ch == "/" and i + 1 < n and sql[i + 1] == "*":
            depth = 1
            i += 2
            while i < n and depth:
                if sql.startswith("/*", i):
                    depth += 1
                    i += 2
                elif sql.startswith("*/", i):
                    depth -= 1
                    i += 2
                else:
                    i += 1
            continue
        if ch == ";":
            if paren_depth == 0 and begin_depth == 0:
                pieces.append((sql[start:i], has_code))
                start = i + 1
                idents = []
                has_code = False
            i += 1
            continue
        if ch.isspace():
            i += 1
            continue
        has_code = True
        if ch == "'":
            # E'...' (and e'...') strings honour backslash escapes; the prefix letter was
            # consumed as an identifier just before us.
            backslash = i > 0 and sql[i - 1] in "eE" and (i < 2 or not _is_ident_cont(sql[i - 2]))
            i = _skip_quoted(sql, i + 1, n, backslash)
            continue
        if ch == '"':
            i += 1
            while i < n:
                if sql[i] == '"':
                    if i + 1 < n and sql[i + 1] == '"':
                        i += 2
                        continue
                    i += 1
                    break
                i += 1
            continue
        if ch == "$":
            tag_end = _dollar_tag_end(sql, i, n)
            if tag_end > 0:
                tag = sql[i:tag_end]
                close = sql.find(tag, tag_end)
                i = n if close < 0 else close + len(tag)
                continue
            i += 1
            while i < n and sql[i].isdigit():
                i += 1
            continue
        if ch == "(":
            paren_depth += 1
            i += 1
            continue
        if ch == ")":
            if paren_depth > 0:
                paren_depth -= 1
            i += 1
            continue
        if _is_ident_start(ch):
            j = i + 1
            while j < n and _is_ident_cont(sql[j]):
                j += 1
            word = sql[i:j].lower()
            if len(idents) < 4:
                idents.append(word)
            if paren_depth == 0 and _in_routine_definition(idents):
                if word == "begin":
                    begin_depth += 1
                elif word == "case":
                    if begin_depth >= 1:
                        begin_depth += 1
                elif word == "end" and begin_depth > 0:
                    begin_depth -= 1
            i = j
            continue
        i += 1

    pieces.append((sql[start:], has_code))

    statements: list[list[str]] = []
    for text, code in pieces:
        stripped = text.strip()
        if not stripped:
            continue
        if not code:
            # Comment-only piece: belongs to the statement before it, if any.
            if statements:
                statements[-1].append(stripped)
            continue
        statements.append([stripped])
    return [parts[0] if len(parts) == 1 else " ".join(parts) for parts in statements]


def _in_routine_definition(idents: list[str]) -> bool:
    if len(idents) < 2 or idents[0] != "create":
        return False
    if idents[1] in ("function", "procedure"):
        return True
    return (
        len(idents) >= 4
        and idents[1] == "or"
        and idents[2] == "replace"
        and idents[3] in ("function", "procedure")
    )
