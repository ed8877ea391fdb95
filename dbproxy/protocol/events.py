"""Events the session state machine emits: frozen, slotted, keyword-only dataclasses.

Times: ``*_ns`` fields are ``time.monotonic_ns()`` values (use them for durations);
``*_epoch_ns`` fields are wall-clock nanoseconds since the Unix epoch (use them for
spans and logs).  Both come from the clock the proxy passes in, so tests control them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Protocol = Literal["simple", "extended", "function"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerError:
    """The parts of an ErrorResponse an observer may keep (no DETAIL: it holds values)."""

    severity: str
    sqlstate: str
    message: str


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionOpened:
    session_id: int
    user: str
    database: str
    application_name: str
    backend_pid: int
    server_version: str
    protocol_version: tuple[int, int]
    at_ns: int
    at_epoch_ns: int
    #: the client's address as the proxy saw it (``host:port``), when known
    client_address: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionRejected:
    """The server refused the connection during startup (bad password, no such db…)."""

    session_id: int
    user: str
    database: str
    error: ServerError
    at_ns: int


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionClosed:
    session_id: int
    at_ns: int
    #: statements that were running when the connection ended (no outcome known)
    interrupted: int
    #: the observer lost track of the protocol and stopped observing this session
    observation_lost: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class StatementStarted:
    """Only emitted when the session was created with ``track_starts=True``."""

    session_id: int
    protocol: Protocol
    text: str
    start_ns: int


@dataclass(frozen=True, slots=True, kw_only=True)
class StatementEvent:
    """Fields shared by finished and failed statements."""

    session_id: int
    user: str
    database: str
    application_name: str
    protocol: Protocol
    #: the statement's SQL (one statement of a multi-statement Query), possibly cut
    #: to the capture limit; empty for a fast-path function call
    text: str
    statement_name: str | None
    portal_name: str | None
    param_type_oids: tuple[int, ...]
    function_oid: int | None
    start_ns: int
    end_ns: int
    #: time the server spent on it: end - start, except for a portal run in several
    #: Executes (row limits), where the gaps between Executes are not counted
    duration_ns: int
    start_epoch_ns: int
    #: DataRows sent for row-returning statements, else the CommandComplete count
    rows: int
    #: the completed implicit transaction was rolled back by a later error
    rolled_back: bool
    #: inside an explicit transaction block (BEGIN … COMMIT)
    in_transaction: bool
    #: the SQL text was sent with this execution (a simple Query, or a Parse whose first
    #: Bind followed within 100 ms — and the other Binds before that Bind's Sync): only
    #: then does its sqlcommenter traceparent describe this execution; a named statement
    #: executed later carries its old Parse text and comment
    text_in_batch: bool = True
    #: the Bind's text-format parameter values (None: NULL), only from sessions created with
    #: ``keep_bind_values=True`` (the opt-in EXPLAIN ANALYZE sampler); held in memory only,
    #: never logged, stored or exported
    param_values: tuple[str | None, ...] | None = field(default=None, repr=False, compare=False)
    #: the session's search_path when the statement finished, as the server reported it
    #: (PostgreSQL >= 18 reports it); "" when unknown
    search_path: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class StatementFinished(StatementEvent):
    #: CommandComplete tag without its counts: SELECT, INSERT, CREATE TABLE, COPY …
    command: str


@dataclass(frozen=True, slots=True, kw_only=True)
class StatementFailed(StatementEvent):
    error: ServerError
    #: where it failed: "parse", "bind", "describe", "execute" or "commit"
    phase: str


@dataclass(frozen=True, slots=True, kw_only=True)
class TransactionStarted:
    session_id: int
    at_ns: int


@dataclass(frozen=True, slots=True, kw_only=True)
class TransactionFinished:
    session_id: int
    committed: bool
    start_ns: int
    end_ns: int
    statements: int


Event = (
    SessionOpened
    | SessionRejected
    | SessionClosed
    | StatementStarted
    | StatementFinished
    | StatementFailed
    | TransactionStarted
    | TransactionFinished
)
