"""Events the session state machine emits: slotted, keyword-only dataclasses.

Treat them as immutable: one event reaches several consumers (span builder, aggregator,
query log).  They are not ``frozen=True`` because a frozen dataclass sets each field
through ``object.__setattr__``, and the per-statement events carry hand-written
``__init__`` s (``init=False``) because the generated one runs as interpreted Python even
in the compiled build: together that was a quarter of the observer's instructions per
statement (``benchmarks/session_loop.py``, valgrind).  The dataclass machinery (``==``,
``repr``, ``dataclasses.replace``) is kept.

Times: ``*_ns`` fields are ``time.monotonic_ns()`` values (use them for durations);
``*_epoch_ns`` fields are wall-clock nanoseconds since the Unix epoch (use them for
spans and logs).  Both come from the clock the proxy passes in, so tests control them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Protocol = Literal["simple", "extended", "function"]


@dataclass(slots=True, kw_only=True)
class ServerError:
    """The parts of an ErrorResponse an observer may keep (no DETAIL: it holds values)."""

    severity: str
    sqlstate: str
    message: str


@dataclass(slots=True, kw_only=True)
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


@dataclass(slots=True, kw_only=True)
class SessionRejected:
    """The server refused the connection during startup (bad password, no such db…)."""

    session_id: int
    user: str
    database: str
    error: ServerError
    at_ns: int


@dataclass(slots=True, kw_only=True)
class SessionClosed:
    session_id: int
    at_ns: int
    #: statements that were running when the connection ended (no outcome known)
    interrupted: int
    #: the observer lost track of the protocol and stopped observing this session
    observation_lost: bool


@dataclass(slots=True, kw_only=True)
class StatementStarted:
    """Only emitted when the session was created with ``track_starts=True``."""

    session_id: int
    protocol: Protocol
    text: str
    start_ns: int


@dataclass(slots=True, kw_only=True, init=False)
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

    def __init__(
        self,
        *,
        session_id: int,
        user: str,
        database: str,
        application_name: str,
        protocol: Protocol,
        text: str,
        statement_name: str | None,
        portal_name: str | None,
        param_type_oids: tuple[int, ...],
        function_oid: int | None,
        start_ns: int,
        end_ns: int,
        duration_ns: int,
        start_epoch_ns: int,
        rows: int,
        rolled_back: bool,
        in_transaction: bool,
        text_in_batch: bool = True,
        param_values: tuple[str | None, ...] | None = None,
        search_path: str = "",
    ) -> None:
        self.session_id = session_id
        self.user = user
        self.database = database
        self.application_name = application_name
        self.protocol = protocol
        self.text = text
        self.statement_name = statement_name
        self.portal_name = portal_name
        self.param_type_oids = param_type_oids
        self.function_oid = function_oid
        self.start_ns = start_ns
        self.end_ns = end_ns
        self.duration_ns = duration_ns
        self.start_epoch_ns = start_epoch_ns
        self.rows = rows
        self.rolled_back = rolled_back
        self.in_transaction = in_transaction
        self.text_in_batch = text_in_batch
        self.param_values = param_values
        self.search_path = search_path


@dataclass(slots=True, kw_only=True, init=False)
class StatementFinished(StatementEvent):
    #: CommandComplete tag without its counts: SELECT, INSERT, CREATE TABLE, COPY …
    command: str

    def __init__(
        self,
        *,
        session_id: int,
        user: str,
        database: str,
        application_name: str,
        protocol: Protocol,
        text: str,
        statement_name: str | None,
        portal_name: str | None,
        param_type_oids: tuple[int, ...],
        function_oid: int | None,
        start_ns: int,
        end_ns: int,
        duration_ns: int,
        start_epoch_ns: int,
        rows: int,
        rolled_back: bool,
        in_transaction: bool,
        text_in_batch: bool = True,
        param_values: tuple[str | None, ...] | None = None,
        search_path: str = "",
        command: str,
    ) -> None:
        StatementEvent.__init__(
            self,
            session_id=session_id,
            user=user,
            database=database,
            application_name=application_name,
            protocol=protocol,
            text=text,
            statement_name=statement_name,
            portal_name=portal_name,
            param_type_oids=param_type_oids,
            function_oid=function_oid,
            start_ns=start_ns,
            end_ns=end_ns,
            duration_ns=duration_ns,
            start_epoch_ns=start_epoch_ns,
            rows=rows,
            rolled_back=rolled_back,
            in_transaction=in_transaction,
            text_in_batch=text_in_batch,
            param_values=param_values,
            search_path=search_path,
        )
        self.command = command


@dataclass(slots=True, kw_only=True, init=False)
class StatementFailed(StatementEvent):
    error: ServerError
    #: where it failed: "parse", "bind", "describe", "execute" or "commit"
    phase: str

    def __init__(
        self,
        *,
        session_id: int,
        user: str,
        database: str,
        application_name: str,
        protocol: Protocol,
        text: str,
        statement_name: str | None,
        portal_name: str | None,
        param_type_oids: tuple[int, ...],
        function_oid: int | None,
        start_ns: int,
        end_ns: int,
        duration_ns: int,
        start_epoch_ns: int,
        rows: int,
        rolled_back: bool,
        in_transaction: bool,
        text_in_batch: bool = True,
        param_values: tuple[str | None, ...] | None = None,
        search_path: str = "",
        error: ServerError,
        phase: str,
    ) -> None:
        StatementEvent.__init__(
            self,
            session_id=session_id,
            user=user,
            database=database,
            application_name=application_name,
            protocol=protocol,
            text=text,
            statement_name=statement_name,
            portal_name=portal_name,
            param_type_oids=param_type_oids,
            function_oid=function_oid,
            start_ns=start_ns,
            end_ns=end_ns,
            duration_ns=duration_ns,
            start_epoch_ns=start_epoch_ns,
            rows=rows,
            rolled_back=rolled_back,
            in_transaction=in_transaction,
            text_in_batch=text_in_batch,
            param_values=param_values,
            search_path=search_path,
        )
        self.error = error
        self.phase = phase


@dataclass(slots=True, kw_only=True, init=False)
class TransactionStarted:
    session_id: int
    at_ns: int

    def __init__(self, *, session_id: int, at_ns: int) -> None:
        self.session_id = session_id
        self.at_ns = at_ns


@dataclass(slots=True, kw_only=True, init=False)
class TransactionFinished:
    session_id: int
    committed: bool
    start_ns: int
    end_ns: int
    statements: int

    def __init__(
        self, *, session_id: int, committed: bool, start_ns: int, end_ns: int, statements: int
    ) -> None:
        self.session_id = session_id
        self.committed = committed
        self.start_ns = start_ns
        self.end_ns = end_ns
        self.statements = statements


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
