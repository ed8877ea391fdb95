"""The process log's formatter: tracebacks without exception messages.

dbproxy's own log lines never carry SQL text, literals, passwords or server error text
(a rule of the code, checked by ``tests/integration/test_sentinel.py``).  An exception's
*message* is the one thing no call site controls: a parser error quotes the statement, a
driver error the server's message (``Key (email)=(…) already exists``), a failed
connection its DSN.  So tracebacks are logged with their frames (file, line, function,
source line — enough to find a bug) and each exception's type, never its message.
Configured once by the command line (``cli.py``) and by each worker process.
"""

from __future__ import annotations

import logging
import sys
import traceback
from types import TracebackType

WITHHELD = "(message withheld: it may quote SQL, values or server errors)"
_CAUSE = "The above exception was the direct cause of the following exception"
_CONTEXT = "During handling of the above exception, another exception occurred"

ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None] | tuple[None, None, None]


def format_exception_safely(exc: BaseException) -> str:
    """Like :func:`traceback.format_exception`, with every message of the chain replaced."""
    chain: list[tuple[BaseException, str]] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    link = ""
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        chain.append((current, link))
        if current.__cause__ is not None:
            current, link = (
                current.__cause__,
                "The above exception was the direct cause of the following exception",
            )
        elif current.__context__ is not None and not current.__suppress_context__:
            current, link = (
                current.__context__,
                "During handling of the above exception, another exception occurred",
            )
        else:
            current = None
    parts: list[str] = []
    for i, (item, _) in enumerate(reversed(chain)):
        if i:
            # the link text belongs to the exception that follows in the chain
            parts.append(f"\n{chain[len(chain) - i][1]}:\n\n")
        parts.append("Traceback (most recent call last):\n")
        parts.extend(traceback.format_tb(item.__traceback__))
        kind = type(item)
        name = (
            kind.__qualname__
            if kind.__module__ == "builtins"
            else (f"{kind.__module__}.{kind.__qualname__}")
        )
        parts.append(f"{name}: {WITHHELD}\n")
    return "".join(parts).rstrip("\n")


class SafeFormatter(logging.Formatter):
    def formatException(self, ei: ExcInfo) -> str:
        exc = ei[1]
        if exc is None:
            return ""
        return format_exception_safely(exc)


def setup_logging(level: str, fmt: str = "%(asctime)s %(levelname)s %(name)s: %(message)s") -> None:
    """The process's one handler (stderr) with :class:`SafeFormatter`."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(SafeFormatter(fmt))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level.upper()))
