"""The per-connection state machine: both directions' bytes in, events out (sans-I/O).

The proxy forwards bytes first and then calls :meth:`Session.client_data` /
:meth:`Session.server_data` with the same bytes and the monotonic time they were
seen.  The session frames them, keeps the protocol state a server keeps (prepared
statements, portals, pending requests, transaction status) and emits events into the
``emit`` it was given (an :class:`~dbproxy.protocol.emit.Emitter`, or a callable).

How statements are paired with answers
    Every client request that the server answers is queued (Parse, Bind, Describe,
    Execute, Close, Sync, Query, FunctionCall); every answer pops the request it
    belongs to.  After an ErrorResponse the server skips to the next Sync, and so do
    we: skipped Executes are counted (``skipped_statements``), never reported as
    successes.  A simple Query is split into statements as the server splits it
    (:func:`dbproxy.sql.splitter.split_statements`) and each CommandComplete ends
    the next statement.

How statements are timed
    A statement starts when its first message (Parse/Bind/Execute, or the Query) was
    sent, but not before the previous statement of the session ended: in a pipeline
    the server runs one thing at a time, so this is when the server really started it.
    It ends at its CommandComplete / ErrorResponse.  The commit of an implicit
    transaction belongs to the statement that ended it: the simple protocol commits
    before the last CommandComplete, so nothing is needed there; in the extended
    protocol the commit runs at Sync, so the time from Sync to ReadyForQuery is added
    to the last statement before the Sync, and an error raised there (a deferred
    constraint, a serialization failure) fails that statement (phase ``commit``).
    A portal run in several Executes (row limits, PortalSuspended) is one statement
    whose ``duration_ns`` sums the Executes and whose rows sum their DataRows.

Implicit transactions
    Statements completed in an implicit transaction (several statements in one Query,
    or several Executes before one Sync, outside BEGIN … COMMIT) are rolled back when
    a later statement of the same transaction fails; their events say
    ``rolled_back=True``.  Statement events are therefore emitted at ReadyForQuery,
    when the outcome of the transaction is known — or early, once 10,000 are waiting
    (a pipeline of a million Executes before one Sync must not hold a million records);
    those can no longer be marked rolled back.

The session never raises on bad bytes: a protocol violation (or a replication
connection, whose CopyBoth stream we do not interpret) turns observation off for the
session, which keeps being relayed.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Final, NamedTuple, cast

from dbproxy.errors import FrontendProtocolError, ProtocolError
from dbproxy.protocol import codes, messages
from dbproxy.protocol.emit import EmitFn, Emitter, emitter
from dbproxy.protocol.events import (
    Event,
    Protocol,
    ServerError,
    SessionClosed,
    SessionOpened,
    SessionRejected,
    StatementFailed,
    StatementFinished,
    StatementStarted,
    TransactionFinished,
    TransactionStarted,
)
from dbproxy.protocol.framing import STARTUP, FrameReader, frontend_capture
from dbproxy.sql.splitter import split_statements

if TYPE_CHECKING:
    from mypy_extensions import i64  # compiled: a machine integer; pure Python: an int


# Pending-request kinds.
_PARSE: Final = 1
_BIND: Final = 2
_DESCRIBE: Final = 3
_EXECUTE: Final = 4
_CLOSE: Final = 5
_SYNC: Final = 6
_QUERY: Final = 7
_FUNCTION: Final = 8
_PHASES: Final = {_PARSE: "parse", _BIND: "bind", _DESCRIBE: "describe", _CLOSE: "close"}

_BEGIN_COMMANDS: Final = frozenset({"BEGIN", "START TRANSACTION"})
# Tags that end the open transaction block (COMMIT/ROLLBACK PREPARED act on a prepared
# transaction, not on the block, and cannot run inside one).
_END_COMMANDS: Final = frozenset({"COMMIT", "ROLLBACK", "PREPARE TRANSACTION"})
_COMMITTED: Final = frozenset({"COMMIT", "PREPARE TRANSACTION"})
# Whitespace and comments before a statement's first word.
_LEADING_COMMENTS: Final = r"\s*(?:(?:/\*.*?\*/|--[^\n]*(?:\n|$))\s*)*"
# ROLLBACK TO SAVEPOINT answers with the tag "ROLLBACK" but keeps the block open.
_SAVEPOINT_ROLLBACK: Final = re.compile(
    _LEADING_COMMENTS + r"(?:ROLLBACK|ABORT)\s+(?:(?:WORK|TRANSACTION)\s+)?TO\b",
    re.IGNORECASE | re.DOTALL,
)
# Statements that may end the block with its changes kept (checked at disconnect).
_ENDS_BLOCK: Final = re.compile(
    _LEADING_COMMENTS + r"(?:COMMIT|END|PREPARE\s+TRANSACTION)\b", re.IGNORECASE | re.DOTALL
)
# COMMIT/ROLLBACK … AND CHAIN starts a new block at once (AND NO CHAIN does not).
_CHAIN: Final = re.compile(r"\bAND\s+(NO\s+)?CHAIN\b", re.IGNORECASE)
_FORGET_PREPARED: Final = frozenset({"DEALLOCATE ALL", "DISCARD ALL"})
_SPECIAL_COMMANDS: Final = _BEGIN_COMMANDS | _END_COMMANDS | _FORGET_PREPARED
_MAX_BATCH: Final = 10_000  # statements held for their transaction's outcome
# The SQL text of a Parse describes the executions bound soon after it, in the batch of
# the first Bind: drivers prepare and execute one request back to back (asyncpg: Parse/
# Describe/Flush, then Bind/Execute/Sync; psycopg: Parse/Sync, then Bind/Execute/Sync).
# A first Bind later than this is a statement prepared earlier and reused.
_FRESH_BIND_NS: Final = 100_000_000
_UNDECIDED: Final = -1
_STALE: Final = -2
_PARSE_CACHE_SIZE: Final = 256  # distinct Parse messages remembered per session
_PARSE_CACHE_MAX_BODY: Final = 4096  # … of at most this size (≤ 1 MiB per session)


_TAG_CACHE_SIZE: Final = 256  # distinct CommandComplete bodies remembered per session
_RING: Final = 16  # pending requests held without growing (a power of two)
_RING_SHRINK: Final = 1024  # a ring grown to this size shrinks back when it empties


_MAX_BIND_HEAD: Final = 256  # longer portal + statement names are decoded every time


def _second_nul(body: bytes) -> int:
    """The position after the second NUL of ``body`` (a Bind's portal and statement
    names), or -1.  A loop over the bytes: compiled, native indexing."""
    seen = 0
    for i in range(min(len(body), _MAX_BIND_HEAD)):
        if body[i] == 0:
            seen += 1
            if seen == 2:
                return i + 1
    return -1


def _starts_with(body: bytes, head: bytes) -> bool:
    """``body.startswith(head)`` for a non-empty ``head`` (compiled, a native loop where
    the method would be a generic call)."""
    n = len(head)
    if not n or len(body) < n:
        return False
    for i in range(n):  # noqa: SIM110 - a generator is not a native loop when compiled
        if body[i] != head[i]:
            return False
    return True


class CurrentStatement(NamedTuple):
    """:meth:`Session.current_statement`: monotonic ns like the session's events."""

    text: str
    since_ns: int  # sent (active), or finished (idle in transaction)
    active: bool
    transaction_start_ns: int  # 0 outside a transaction block


class _Prepared:
    __slots__ = ("fresh_batch", "param_type_oids", "parse", "parsed_ns", "text")

    def __init__(self, parse: messages.ParseMessage) -> None:
        self.parse = parse
        self.text = parse.query
        self.param_type_oids = parse.param_type_oids
        self.parsed_ns = 0  # when the Parse was sent
        # The batch (client Sync count) whose executions the Parse text belongs to:
        # decided at the first Bind; _UNDECIDED until then, _STALE if that Bind came late.
        self.fresh_batch = _UNDECIDED


class _Reparse:
    """A pending Parse of a name that already had a statement: the server rejects it
    (42P05) unless the client deallocated the old one in SQL, so the old one is kept to be
    put back if the Parse fails."""

    __slots__ = ("parse", "replaced")

    def __init__(self, parse: messages.ParseMessage, replaced: _Prepared) -> None:
        self.parse = parse
        self.replaced = replaced


def _parse_of(payload: object) -> messages.ParseMessage | None:
    """The ParseMessage of a pending Parse's payload."""
    if isinstance(payload, messages.ParseMessage):
        return payload
    if isinstance(payload, _Reparse):
        return payload.parse
    return None


class _Tag:
    """A CommandComplete tag, decoded: the command and the row count it names."""

    __slots__ = ("command", "count")

    def __init__(self, command: str, count: int | None) -> None:
        self.command = command
        self.count = count


class _Run:
    """A statement being executed or waiting for its transaction's outcome."""

    __slots__ = (
        "active_ns",
        "application_name",
        "command",
        "end_ns",
        "error",
        "function_oid",
        "in_transaction",
        "param_type_oids",
        "param_values",
        "phase",
        "portal_name",
        "protocol",
        "rolled_back",
        "rows",
        "search_path",
        "start_ns",
        "statement_name",
        "text",
        "text_in_batch",
    )

    def __init__(
        self,
        protocol: Protocol,
        text: str,
        *,
        statement_name: str | None = None,
        portal_name: str | None = None,
        param_type_oids: tuple[int, ...] = (),
        function_oid: int | None = None,
    ) -> None:
        self.protocol: Protocol = protocol
        self.text = text
        self.statement_name = statement_name
        self.portal_name = portal_name
        self.param_type_oids = param_type_oids
        self.function_oid = function_oid
        self.start_ns = 0
        self.end_ns = 0
        self.active_ns = 0
        self.rows = 0
        self.command = ""
        self.error: ServerError | None = None
        self.phase = ""
        self.rolled_back = False
        self.in_transaction = False
        self.application_name = ""
        self.text_in_batch = protocol == "simple"
        self.param_values: tuple[str | None, ...] | None = None
        self.search_path = ""


class _Query:
    __slots__ = ("index", "statements", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self.statements = split_statements(text)
        self.index = 0


class _Pending:
    __slots__ = ("kind", "payload", "sent_ns")

    def __init__(self, kind: int, payload: object, sent_ns: int) -> None:
        self.kind = kind
        self.payload = payload
        self.sent_ns = sent_ns


class _PendingQueue:
    """The requests waiting for their answers, oldest first: a ring of three parallel
    lists (kind, payload, when sent).  Compiled, this is native: no object per request
    (a ``_Pending`` is built only on the rare paths that want one), no generic method
    calls (a deque's), no list growing and shrinking per transaction.  The ring doubles
    when full (a pipeline of a million Executes before one Sync) and shrinks back when
    it empties."""

    __slots__ = (
        "_count",
        "_head",
        "_kinds",
        "_last_box",
        "_last_ns",
        "_mask",
        "_payloads",
        "_sent",
    )

    def __init__(self) -> None:
        self._kinds: list[int] = [0] * _RING
        self._payloads: list[object] = [None] * _RING
        # the times, boxed: the requests of one read share one boxed int (_last_box)
        self._sent: list[object] = [0] * _RING
        self._last_ns = -1
        self._last_box: object = -1
        self._mask: i64 = _RING - 1
        self._head: i64 = 0
        self._count: i64 = 0

    def __len__(self) -> int:
        return self._count

    def push(self, kind: int, payload: object, sent_ns: int) -> None:
        count = self._count
        if count > self._mask:
            self._resize(2 * (self._mask + 1))
        i: i64 = (self._head + count) & self._mask
        self._kinds[i] = kind
        self._payloads[i] = payload
        if sent_ns != self._last_ns:
            self._last_ns = sent_ns
            self._last_box = sent_ns
        self._sent[i] = self._last_box
        self._count = count + 1

    def append(self, item: _Pending) -> None:
        self.push(item.kind, item.payload, item.sent_ns)

    def first_kind(self) -> int:
        """The oldest request's kind, 0 when nothing is pending."""
        return self._kinds[self._head] if self._count else 0

    def first_payload(self) -> object:
        return self._payloads[self._head]

    def first_sent(self) -> int:
        return cast(int, self._sent[self._head])

    def drop(self) -> None:
        """Forget the oldest request (there must be one)."""
        head: i64 = self._head
        self._payloads[head] = None
        self._head = (head + 1) & self._mask
        self._count -= 1
        if not self._count and self._mask >= _RING_SHRINK:
            self._resize(_RING)

    def _resize(self, size: i64) -> None:
        kinds, payloads, sent = self._kinds, self._payloads, self._sent
        mask, head, count = self._mask, self._head, self._count
        order = [(head + i) & mask for i in range(count)]
        pad = size - count
        self._kinds = [kinds[i] for i in order] + [0] * pad
        self._payloads = [payloads[i] for i in order] + [None] * pad
        self._sent = [sent[i] for i in order] + [0] * pad
        self._mask = size - 1
        self._head = 0

    def first(self) -> _Pending | None:
        """The oldest request, None when nothing is pending."""
        if not self._count:
            return None
        head = self._head
        return _Pending(self._kinds[head], self._payloads[head], cast(int, self._sent[head]))

    def popleft(self) -> _Pending:
        item = self.first()
        assert item is not None
        self.drop()
        return item

    def items(self) -> list[_Pending]:
        """The pending requests, oldest first (built on demand)."""
        kinds, payloads, sent, mask = self._kinds, self._payloads, self._sent, self._mask
        order = [(self._head + i) & mask for i in range(self._count)]
        return [_Pending(kinds[i], payloads[i], cast(int, sent[i])) for i in order]

    def replace(self, items: list[_Pending]) -> None:
        self.clear()
        for item in items:
            self.append(item)

    def clear(self) -> None:
        """Empty, back at the initial size (a ring grown by a long pipeline is let go)."""
        self._kinds = [0] * _RING
        self._payloads = [None] * _RING
        self._sent = [0] * _RING
        self._mask = _RING - 1
        self._head = 0
        self._count = 0


class SessionStats:
    """Plain counters the proxy may publish; never touched by I/O."""

    __slots__ = ("desyncs", "early_flushes", "skipped_statements", "split_mismatches")

    def __init__(self) -> None:
        self.early_flushes = 0
        self.skipped_statements = 0
        self.split_mismatches = 0
        self.desyncs = 0


#: Bind bytes kept per message when the session keeps bind values (longer: not sampled)
BIND_VALUES_CAPTURE: Final = 16_384


def _bind_capture(text_limit: int) -> list[int]:
    capture = frontend_capture(text_limit)
    capture[codes.BIND] = BIND_VALUES_CAPTURE
    return capture


class Session:
    """State machine for one client connection; see the module docstring."""

    def __init__(
        self,
        *,
        session_id: int,
        emit: EmitFn | Emitter,
        epoch_offset_ns: int,
        text_limit: int = 1 << 20,
        track_starts: bool = False,
        keep_bind_values: bool = False,
    ) -> None:
        self.session_id = session_id
        # where events go: the proxy passes its sink (a native call), tests a callable
        self._sink = emitter(emit)
        self._epoch_offset_ns = epoch_offset_ns
        self._track_starts = track_starts
        # opt-in (the EXPLAIN ANALYZE sampler): Bind bodies are captured up to
        # BIND_VALUES_CAPTURE bytes and their text values put on the finished statement
        self._keep_bind_values = keep_bind_values
        self._client = (
            FrameReader(
                capture=_bind_capture(text_limit), startup=True, error=FrontendProtocolError
            )
            if keep_bind_values
            else FrameReader.for_frontend(text_limit)
        )
        self._server = FrameReader.for_backend()
        self.stats = SessionStats()

        # what we know of the connection
        self.user = ""
        self.database = ""
        self.application_name = ""
        self.search_path = ""  # as the server reports it (PostgreSQL >= 18), else ""
        self.server_version = ""
        self.backend_pid = 0
        self.backend_key = b""  # BackendKeyData's secret (4 bytes; longer in protocol 3.2)
        self.fatal_received = False  # the server sent a FATAL/PANIC ErrorResponse
        self.terminated = False  # the client sent Terminate
        self.protocol_version = (3, 0)
        self.is_cancel_request = False
        self.client_address = ""  # set by the proxy, which owns the socket
        self.ready = False  # startup finished (first ReadyForQuery)
        self.observing = True
        self.lost_reason = ""
        self._encoding = "utf-8"

        # protocol state mirrored from the server
        self._prepared: dict[str, _Prepared] = {}  # named statements
        self._unnamed_statement: _Prepared | None = None  # (most drivers' only one)
        # (objects, not tuples: compiled, a tuple read into a variable is unboxed, and
        # boxed into a new tuple when stored again)
        self._parse_cache: dict[bytes, _Prepared] = {}
        self._last_parse_body = b""
        self._last_parse: _Prepared | None = None
        # CommandComplete bodies repeat ("SELECT 1", "INSERT 0 1"): decode each once
        # the names of the last Bind to a named statement (drivers reuse them: -M prepared)
        self._bind_head = b""  # the body up to the statement name's NUL; b"": none yet
        self._bind_portal = ""
        self._bind_statement = ""
        self._tags: dict[bytes, _Tag] = {}
        self._last_tag_body = b""
        self._last_tag: _Tag | None = None
        self._portals: dict[str, _Run] = {}  # named portals
        self._unnamed: _Run | None = None  # the unnamed portal (most drivers' only one)
        self._pending = _PendingQueue()
        self._group_start_ns = 0
        self._syncs_sent = 0  # batches the client has closed with Sync
        self._rows = 0  # DataRows since the last completion
        self._last_end_ns = 0
        self._query_run: _Run | None = None
        # After an error the server discards everything up to the next Sync; when the
        # error came before the client had sent that Sync, we discard too.
        self._skip_to_sync = False
        # In COPY FROM STDIN via Execute the server ignores Sync and Flush (libpq sends a
        # Sync after Execute and another after CopyDone; only the second is answered).
        self._copy_in = False
        self._tx_status = codes.TX_IDLE
        self._explicit = False
        self._batch: list[_Run | TransactionStarted | TransactionFinished] = []
        self._implicit: list[_Run] = []
        self._last_extended: _Run | None = None
        self._suspended: list[_Run] = []
        # the open transaction block (self._explicit): when it began, statements in it
        self._tx_start_ns = 0
        self._tx_statements = 0
        self._last_text = ""  # the last finished statement's text (for current_statement)

    # ------------------------------------------------------------------ read on demand
    def current_statement(self) -> CurrentStatement | None:
        """What the session's backend is doing now, as far as the protocol shows: the
        statement in flight (its text, when it was sent), else — inside a transaction
        block — the last statement, marked idle, with the transaction's start.  None when
        idle outside a transaction.  Computed on demand (the activity sampler calls it
        about once a second per session); the message path only keeps ``_last_text``."""
        if not self.ready or not self.observing:
            return None
        for item in self._pending.items():
            kind = item.kind
            if kind in (_EXECUTE, _FUNCTION):
                run = item.payload
                text = run.text if isinstance(run, _Run) else ""
                return CurrentStatement(
                    text,
                    max(item.sent_ns, self._last_end_ns),
                    True,
                    self._tx_start_ns if self._explicit else 0,
                )
            if kind == _QUERY:
                if self._query_run is not None:
                    text = self._query_run.text
                else:
                    query = item.payload
                    assert isinstance(query, _Query)
                    if query.index < len(query.statements):
                        text = query.statements[query.index]
                    else:
                        text = query.text
                return CurrentStatement(
                    text,
                    max(item.sent_ns, self._last_end_ns),
                    True,
                    self._tx_start_ns if self._explicit else 0,
                )
        if self._explicit:
            return CurrentStatement(self._last_text, self._last_end_ns, False, self._tx_start_ns)
        return None

    def server_at_message_boundary(self) -> bool:
        """Every server byte fed so far ended a message, so a message the proxy writes to
        the client now cannot land inside one.  False when unknown (not observing)."""
        return self.observing and not self._server.mid_frame

    def server_rest_of_frame(self) -> tuple[int, bytes] | None:
        """:meth:`FrameReader.rest_of_frame` of the server's stream; None when unknown."""
        return self._server.rest_of_frame() if self.observing else None

    def idle_since(self) -> tuple[int, bool] | None:
        """``(ns, in_transaction)``: when the session went idle at its last ReadyForQuery
        (the clock it is fed with) and whether inside a transaction block; None while a
        request is pending, before the first ReadyForQuery or when not observing."""
        if not self.ready or not self.observing or len(self._pending) or self._copy_in:
            return None
        return self._last_end_ns, self._tx_status != codes.TX_IDLE

    # ------------------------------------------------------------------ feeding
    def client_data(self, data: bytes, now_ns: int) -> None:
        if not self.observing:
            return
        reader = self._client
        reader.start(data)
        while True:
            try:
                msg_type = reader.next_frame()
            except ProtocolError as exc:
                self.lose(f"client: {exc}")
                return
            if msg_type < 0:
                return
            self._on_client(msg_type, reader.body, now_ns)
            if not self.observing:
                return

    def server_data(self, data: bytes, now_ns: int) -> None:
        if not self.observing:
            return
        reader = self._server
        reader.start(data)
        while True:
            try:
                msg_type = reader.next_frame()
            except ProtocolError as exc:
                self.lose(f"server: {exc}")
                return
            if msg_type < 0:
                return
            if msg_type == codes.DATA_ROW:
                self._rows += 1
            elif self.ready:
                self._on_server(msg_type, reader.body, now_ns)
                if not self.observing:
                    return
            else:
                self._on_server_startup(msg_type, reader.body, now_ns)
                if not self.observing:
                    return

    def close(self, now_ns: int) -> None:
        """The connection ended (either side)."""
        if self.is_cancel_request:
            return
        interrupted = sum(
            1 for p in self._pending.items() if p.kind in (_EXECUTE, _QUERY, _FUNCTION)
        )
        if self.observing and self.ready:
            # portals left suspended die with the connection: report what they sent
            for run in list(self._suspended):
                self._finish_suspended(run)
            if self._explicit and not self._may_end_block_in_flight():
                # the server rolls back the block its client left open (pg_stat_database
                # counts it in xact_rollback too); with a COMMIT in flight the outcome is
                # unknown (the server may have committed): no event
                self._close_transaction(False, now_ns)
            self._flush_batch()
        self._pending.clear()
        self._sink.put(
            SessionClosed(
                session_id=self.session_id,
                at_ns=now_ns,
                interrupted=interrupted,
                observation_lost=bool(self.lost_reason),
            )
        )

    def _may_end_block_in_flight(self) -> bool:
        """A statement sent but not answered may be a COMMIT, END or PREPARE TRANSACTION
        (or is unknown): the server may complete it after the client has gone."""
        for item in self._pending.items():
            if item.kind == _EXECUTE:
                run = item.payload
                texts = [run.text] if isinstance(run, _Run) else [""]
            elif item.kind == _QUERY:
                query = item.payload
                assert isinstance(query, _Query)
                texts = query.statements[query.index :] if query.statements else [query.text]
            else:
                continue
            if any(not text or _ENDS_BLOCK.match(text) for text in texts):
                return True
        return False

    def lose(self, reason: str) -> None:
        """Stop observing this session (bytes keep flowing)."""
        if self.observing:
            self.observing = False
            self.lost_reason = reason

    # ------------------------------------------------------------------ client side
    def _on_client(self, msg_type: int, body: bytes, now: int) -> None:
        enc = self._encoding
        if self._skip_to_sync or self._copy_in:
            if self._copy_in:
                if msg_type in (codes.COPY_DONE, codes.COPY_FAIL):
                    self._copy_in = False
                return  # CopyData; Sync and Flush are ignored by the server in copy-in
            if msg_type == codes.SYNC:
                self._skip_to_sync = False
            else:
                if msg_type == codes.EXECUTE:
                    self.stats.skipped_statements += 1
                return
        if msg_type == codes.EXECUTE:
            named = not body or body[0] != 0
            portal_name = messages.decode_execute(body, enc)[0] if named else ""
            run = self._portals.get(portal_name) if portal_name else self._unnamed
            if run is None:
                run = _Run("extended", "", portal_name=portal_name)
            sent = self._group_start_ns or now
            self._group_start_ns = 0
            self._pending.push(_EXECUTE, run, sent)
            if self._track_starts:
                self._sink.put(
                    StatementStarted(
                        session_id=self.session_id, protocol="extended", text=run.text, start_ns=now
                    )
                )
        elif msg_type == codes.BIND:
            if len(body) >= 2 and body[0] == 0 and body[1] == 0:  # unnamed portal, statement
                portal_name = statement_name = ""
            elif _starts_with(body, self._bind_head):  # the names of the last named Bind
                portal_name, statement_name = self._bind_portal, self._bind_statement
            else:
                portal_name, statement_name = messages.decode_bind(body, enc)
                end = _second_nul(body)
                if 0 < end <= _MAX_BIND_HEAD:
                    self._bind_head = body[:end]
                    self._bind_portal, self._bind_statement = portal_name, statement_name
            prepared = (
                self._prepared.get(statement_name) if statement_name else self._unnamed_statement
            )
            run = _Run(
                "extended",
                prepared.text if prepared else "",
                statement_name=statement_name,
                portal_name=portal_name,
                param_type_oids=prepared.param_type_oids if prepared else (),
            )
            if self._keep_bind_values:
                run.param_values = messages.decode_bind_values(body, enc, run.param_type_oids)
            if prepared is not None:
                if prepared.fresh_batch == _UNDECIDED:
                    in_time = now - prepared.parsed_ns <= _FRESH_BIND_NS
                    prepared.fresh_batch = self._syncs_sent if in_time else _STALE
                run.text_in_batch = prepared.fresh_batch == self._syncs_sent
            if self._suspended:
                replaced = self._portals.get(portal_name) if portal_name else self._unnamed
                if replaced is not None:
                    self._finish_suspended(replaced)
            if portal_name:
                self._portals[portal_name] = run
            else:
                self._unnamed = run
            self._start_group(now)
            self._pending.push(_BIND, run, now)
        elif msg_type == codes.SYNC:
            self._group_start_ns = 0
            self._syncs_sent += 1
            self._pending.push(_SYNC, None, now)
        elif msg_type == codes.PARSE:
            # Drivers send the same Parse over and over (unnamed statements): decode once.
            # The last one is compared first (a memcmp; the dict would hash the body).
            prepared = self._last_parse if body == self._last_parse_body else None
            if prepared is None:
                prepared = self._parse_cache.get(body)
            if prepared is None:
                prepared = _Prepared(messages.decode_parse(body, enc))
                if len(body) <= _PARSE_CACHE_MAX_BODY:  # big bulk statements: not kept
                    if len(self._parse_cache) >= _PARSE_CACHE_SIZE:
                        self._parse_cache.clear()
                    self._parse_cache[body] = prepared
            if len(body) <= _PARSE_CACHE_MAX_BODY:
                self._last_parse_body = body
                self._last_parse = prepared
            parse = prepared.parse
            prepared.parsed_ns = now
            prepared.fresh_batch = _UNDECIDED
            payload: object = parse
            if not parse.name:
                self._unnamed_statement = prepared
            else:
                old = self._prepared.get(parse.name)
                if old is not None:
                    payload = _Reparse(parse, old)  # put back if this Parse fails
                if old is not prepared:
                    self._prepared[parse.name] = prepared
            self._start_group(now)
            self._pending.push(_PARSE, payload, now)
        elif msg_type == codes.DESCRIBE:
            self._start_group(now)
            self._pending.push(_DESCRIBE, None, now)
        elif msg_type == codes.QUERY:
            # a simple Query destroys the unnamed portal and the unnamed statement
            unnamed = self._unnamed
            if unnamed is not None and self._suspended:
                self._finish_suspended(unnamed)
            self._unnamed = None
            self._unnamed_statement = None
            query = _Query(messages.decode_query(body, enc))
            self._pending.push(_QUERY, query, now)
            if self._track_starts:
                self._sink.put(
                    StatementStarted(
                        session_id=self.session_id, protocol="simple", text=query.text, start_ns=now
                    )
                )
        elif msg_type == codes.CLOSE:
            kind, name = messages.decode_target(body, enc)
            target = None
            if kind == ord("S"):
                self._forget_statement(name)
            elif kind == ord("P"):
                if name:
                    target = self._portals.pop(name, None)
                else:
                    target, self._unnamed = self._unnamed, None
            self._pending.push(_CLOSE, target, now)
        elif msg_type == codes.FUNCTION_CALL:
            oid = messages.decode_function_call(body)
            run = _Run("function", "", function_oid=oid)
            self._pending.push(_FUNCTION, run, now)
        elif msg_type == STARTUP:
            self._on_startup_packet(body)
        elif msg_type == codes.TERMINATE:
            self.terminated = True  # the server closing next is no fault
        # Flush, CopyData/Done/Fail and password messages need no state.

    def _undo_parse(self, payload: object) -> None:
        """The server did not create the statement of this pending Parse (it failed, or
        was skipped after an earlier error): put back the statement it replaced, else
        forget it — if it is still the registered one."""
        parse = _parse_of(payload)
        if parse is None:
            return
        if not parse.name:
            current = self._unnamed_statement
            if current is not None and current.parse is parse:
                self._unnamed_statement = None
            return
        current = self._prepared.get(parse.name)
        if current is None or current.parse is not parse:
            return  # replaced again since (a later Parse, a Close)
        if isinstance(payload, _Reparse):
            self._prepared[parse.name] = payload.replaced
        else:
            del self._prepared[parse.name]

    def _forget_statement(self, name: str) -> None:
        if name:
            self._prepared.pop(name, None)
        else:
            self._unnamed_statement = None

    def _start_group(self, now: int) -> None:
        if not self._group_start_ns:
            self._group_start_ns = now

    def _on_startup_packet(self, body: bytes) -> None:
        packet = messages.decode_startup(body)
        if packet.code == codes.CANCEL_REQUEST_CODE:
            self.is_cancel_request = True
            self.observing = False
            return
        if packet.code >> 16 != 3:
            return  # SSLRequest / GSSENCRequest: another startup packet follows
        self.protocol_version = (packet.code >> 16, packet.code & 0xFFFF)
        params = packet.params
        self.user = params.get("user", "")
        self.database = params.get("database", self.user)
        self.application_name = params.get("application_name", "")
        if params.get("replication", "false").lower() not in ("false", "off", "no", "0"):
            self.lose("replication connection: relayed without interpretation")

    # ------------------------------------------------------------------ server side
    def _on_server_startup(self, msg_type: int, body: bytes, now: int) -> None:
        if msg_type == codes.READY_FOR_QUERY:
            self.ready = True
            self._tx_status = body[0] if body else codes.TX_IDLE
            self._last_end_ns = now
            self._sink.put(
                SessionOpened(
                    session_id=self.session_id,
                    user=self.user,
                    database=self.database,
                    application_name=self.application_name,
                    backend_pid=self.backend_pid,
                    server_version=self.server_version,
                    protocol_version=self.protocol_version,
                    at_ns=now,
                    at_epoch_ns=now + self._epoch_offset_ns,
                    client_address=self.client_address,
                )
            )
        elif msg_type == codes.PARAMETER_STATUS:
            self._on_parameter_status(body)
        elif msg_type == codes.NEGOTIATE_PROTOCOL_VERSION:
            # the server's newest supported minor version is what this session speaks
            if len(body) >= 4:
                minor = int.from_bytes(body[:4], "big") & 0xFFFF
                self.protocol_version = (self.protocol_version[0], minor)
        elif msg_type == codes.BACKEND_KEY_DATA:
            self.backend_pid, self.backend_key = messages.decode_backend_key_data(body)
        elif msg_type == codes.ERROR_RESPONSE:
            fields = messages.decode_error(body, self._encoding)
            self.fatal_received = True  # an error before ReadyForQuery ends the startup
            self._sink.put(
                SessionRejected(
                    session_id=self.session_id,
                    user=self.user,
                    database=self.database,
                    error=ServerError(
                        severity=fields.severity, sqlstate=fields.sqlstate, message=fields.message
                    ),
                    at_ns=now,
                )
            )
            self.observing = False

    def _on_parameter_status(self, body: bytes) -> None:
        name, value = messages.decode_parameter_status(body)
        if name == "application_name":
            self.application_name = value
        elif name == "client_encoding":
            encoding = messages.python_encoding(value)
            if encoding != self._encoding:
                # the caches keyed by raw bytes hold names and texts decoded the old way
                self._encoding = encoding
                self._parse_cache.clear()
                self._last_parse_body = b""
                self._last_parse = None
                self._bind_head = b""
        elif name == "server_version":
            self.server_version = value
        elif name == "search_path":  # reported by PostgreSQL >= 18
            self.search_path = value

    def _on_server(self, msg_type: int, body: bytes, now: int) -> None:
        pending = self._pending
        if msg_type == codes.COMMAND_COMPLETE:
            # the same tag as last time ("SELECT 1"): a memcmp, not a hash of the body
            tag = self._last_tag if body == self._last_tag_body else self._tags.get(body)
            if tag is None:
                tag = _Tag(*messages.decode_command_complete(body))
                if len(self._tags) < _TAG_CACHE_SIZE:
                    self._tags[body] = tag
            self._last_tag_body = body
            self._last_tag = tag
            command, count = tag.command, tag.count
            kind = pending.first_kind()
            if kind == _EXECUTE:
                run = cast(_Run, pending.first_payload())
                sent = pending.first_sent()
                pending.drop()
                self._end_segment(run, sent, now)
                self._finish(run, command, count, now)
                # the portal is exhausted: a new Execute on it starts afresh
                if self._suspended and run in self._suspended:
                    self._suspended.remove(run)
            elif kind == _QUERY:
                run = self._query_statement(
                    cast(_Query, pending.first_payload()), pending.first_sent(), now
                )
                run.active_ns = now - run.start_ns
                run.rows = self._rows
                self._rows = 0
                self._finish(run, command, count, now)
            else:
                self._desync()
        elif msg_type == codes.READY_FOR_QUERY:
            self._on_ready(body[0] if body else codes.TX_IDLE, now)
        elif msg_type == codes.PARSE_COMPLETE:
            self._expect(_PARSE)
        elif msg_type == codes.BIND_COMPLETE:
            self._expect(_BIND)
        elif msg_type in (codes.ROW_DESCRIPTION, codes.NO_DATA):
            if pending.first_kind() == _DESCRIBE:
                pending.drop()
        elif msg_type == codes.PORTAL_SUSPENDED:
            if pending.first_kind() == _EXECUTE:
                run = cast(_Run, pending.first_payload())
                self._end_segment(run, pending.first_sent(), now)
                pending.drop()
                run.rows += self._rows
                self._rows = 0
                self._last_end_ns = now
                if run not in self._suspended:
                    self._suspended.append(run)
            else:
                self._desync()
        elif msg_type == codes.ERROR_RESPONSE:
            self._on_error(messages.decode_error(body, self._encoding), now)
        elif msg_type == codes.EMPTY_QUERY_RESPONSE:
            head = pending.first()
            if head is not None and head.kind == _EXECUTE:
                pending.popleft()
            elif head is not None and head.kind == _QUERY:
                query = head.payload
                assert isinstance(query, _Query)
                query.index += 1
            self._last_end_ns = now
        elif msg_type == codes.CLOSE_COMPLETE:
            closed = pending.first_payload() if pending.first_kind() == _CLOSE else None
            if self._expect(_CLOSE) and isinstance(closed, _Run):
                self._finish_suspended(closed)
        elif msg_type == codes.FUNCTION_CALL_RESPONSE:
            if pending.first_kind() == _FUNCTION:
                run = cast(_Run, pending.first_payload())
                run.start_ns = max(pending.first_sent(), self._last_end_ns)
                run.active_ns = now - run.start_ns
                self._finish(run, "FUNCTION CALL", None, now)
        elif msg_type == codes.PARAMETER_STATUS:
            self._on_parameter_status(body)
        elif msg_type == codes.COPY_IN_RESPONSE:
            if pending.first_kind() == _EXECUTE:
                # Syncs the client sent after this Execute reach the server in copy-in
                # mode, where it ignores them: they will get no ReadyForQuery.
                head = pending.popleft()
                pending.replace([head, *(p for p in pending.items() if p.kind != _SYNC)])
                self._copy_in = True
        elif msg_type == codes.COPY_BOTH_RESPONSE:
            self.lose("CopyBoth (replication stream): relayed without interpretation")
        # ParameterDescription, CopyIn/OutResponse, CopyData/Done, Notice and
        # Notification responses need no state.

    def _expect(self, kind: int) -> bool:
        """The answer to the oldest request, which must be of ``kind`` (else: a desync)."""
        pending = self._pending
        if pending.first_kind() == kind:
            pending.drop()
            return True
        self._desync()
        return False

    def _desync(self) -> None:
        # An answer we cannot pair.  Like asyncpg after a parse error: give up on the
        # requests in flight and pick up again at the next ReadyForQuery.
        self.stats.desyncs += 1
        pending = self._pending
        while len(pending) and pending.first_kind() not in (_SYNC, _QUERY, _FUNCTION):
            pending.drop()

    def _query_statement(self, query: _Query, sent_ns: int, now: int) -> _Run:
        """The statement of a simple Query that the current answer belongs to."""
        run = self._query_run
        if run is None:
            if query.index < len(query.statements):
                text = query.statements[query.index]
            else:
                self.stats.split_mismatches += 1
                text = query.text if not query.statements else ""
            query.index += 1
            run = _Run("simple", text)
            run.start_ns = max(sent_ns, self._last_end_ns)
            self._query_run = run
        return run

    def _end_segment(self, run: _Run, sent_ns: int, now: int) -> None:
        start = max(sent_ns, self._last_end_ns)
        if not run.start_ns:
            run.start_ns = start
            run.in_transaction = self._explicit
        run.active_ns += now - start
        run.end_ns = now

    def _finish(self, run: _Run, command: str, count: int | None, now: int) -> None:
        if run.protocol == "extended":
            run.rows += self._rows
            self._rows = 0
        if not run.rows and count is not None:
            run.rows = count
        run.command = command
        run.end_ns = now
        run.application_name = self.application_name
        run.search_path = self.search_path
        self._last_end_ns = now
        self._query_run = None
        self._last_text = run.text
        special = command in _SPECIAL_COMMANDS  # one lookup for the common case
        if special and command in _BEGIN_COMMANDS and not self._explicit:
            self._open_transaction(run.start_ns)
        run.in_transaction = self._explicit
        if not run.in_transaction:
            self._implicit.append(run)
        else:
            self._tx_statements += 1
        self._batch.append(run)
        if len(self._batch) > _MAX_BATCH:
            self._flush_early(run)
        if special:
            self._transaction_command(run, command, now)
        if run.protocol == "extended":
            self._last_extended = run
        else:
            self._last_extended = None

    def _transaction_command(self, run: _Run, command: str, now: int) -> None:
        """After a COMMIT/ROLLBACK/PREPARE TRANSACTION or DEALLOCATE/DISCARD ALL."""
        if command in _END_COMMANDS and self._explicit and not _SAVEPOINT_ROLLBACK.match(run.text):
            # COMMIT (or ROLLBACK, also the tag of a COMMIT of a failed transaction)
            self._close_transaction(command in _COMMITTED, now)
            chain = _CHAIN.search(run.text)
            if chain is not None and chain.group(1) is None:
                self._open_transaction(now)  # … AND CHAIN starts the next one at once
        elif command in _FORGET_PREPARED:
            self._prepared = {}  # the unnamed statement stays

    def _fail(self, run: _Run, error: ServerError, phase: str, sent_ns: int, now: int) -> None:
        if not run.start_ns:
            run.start_ns = max(sent_ns, self._last_end_ns)
        run.active_ns += now - max(run.start_ns, sent_ns, self._last_end_ns)
        run.rows += self._rows
        self._rows = 0
        run.error = error
        run.phase = phase
        run.end_ns = now
        run.application_name = self.application_name
        if run not in self._batch:
            run.in_transaction = self._explicit
            if run.in_transaction:
                self._tx_statements += 1
            self._batch.append(run)
        self._last_end_ns = now
        self._query_run = None
        self._last_extended = None
        if run in self._suspended:
            self._suspended.remove(run)

    def _on_error(self, fields: messages.ErrorFields, now: int) -> None:
        if fields.severity in ("FATAL", "PANIC"):
            self.fatal_received = True
        error = ServerError(
            severity=fields.severity, sqlstate=fields.sqlstate, message=fields.message
        )
        pending = self._pending
        head = pending.first()
        if head is None:
            return  # e.g. FATAL on admin shutdown while idle
        if head.kind == _QUERY:
            query = head.payload
            assert isinstance(query, _Query)
            run = self._query_statement(query, head.sent_ns, now)
            self._fail(run, error, "execute", head.sent_ns, now)
            self.stats.skipped_statements += max(0, len(query.statements) - query.index)
            query.index = len(query.statements)
        elif head.kind == _SYNC:
            # An ERROR at Sync is raised by the commit of the implicit transaction (a
            # FATAL there is the connection ending, not the statement failing).
            last = self._last_extended
            if (
                last is not None
                and not last.in_transaction
                and last.error is None
                and fields.severity == "ERROR"
            ):
                self._fail(last, error, "commit", head.sent_ns, now)
        elif head.kind == _FUNCTION:
            call = head.payload
            assert isinstance(call, _Run)
            self._fail(call, error, "execute", head.sent_ns, now)
        else:
            # Parse/Bind/Describe/Execute/Close: the statement is the first Execute up
            # to the next Sync; the server skips everything after the error until Sync.
            failed: _Run | None = None
            sent = head.sent_ns
            skipped = 0
            self._copy_in = False
            while len(pending) and pending.first_kind() != _SYNC:
                item = pending.popleft()
                if item.kind == _PARSE:
                    # failed or skipped: the statement was not created (a later Bind to
                    # it fails on its own)
                    self._undo_parse(item.payload)
                elif item.kind == _EXECUTE:
                    if failed is None:
                        assert isinstance(item.payload, _Run)
                        failed = item.payload
                    else:
                        skipped += 1
            self.stats.skipped_statements += skipped
            if not len(pending):
                self._skip_to_sync = True  # the Sync is still to come from the client
            phase = "execute" if head.kind == _EXECUTE else _PHASES.get(head.kind, "execute")
            if failed is None:
                payload = head.payload
                parse = _parse_of(payload)
                if parse is not None:
                    failed = _Run("extended", parse.query, statement_name=parse.name)
                    failed.text_in_batch = True
                elif isinstance(payload, _Run):
                    failed = payload
            if failed is not None:
                self._fail(failed, error, phase, sent, now)
        self._rollback_implicit()

    def _rollback_implicit(self) -> None:
        if not self._explicit:
            for run in self._implicit:
                if run.error is None:
                    run.rolled_back = True
        self._implicit.clear()

    def _finish_suspended(self, run: _Run) -> None:
        """A portal left suspended is gone (closed, replaced, its transaction or connection
        ended): report it with the rows fetched so far, as of its last Execute."""
        if run not in self._suspended:
            return
        self._suspended.remove(run)
        run.command = "SELECT"
        run.application_name = self.application_name
        if run.in_transaction:
            self._tx_statements += 1
        else:
            self._implicit.append(run)
        self._batch.append(run)

    def _on_ready(self, status: int, now: int) -> None:
        pending = self._pending
        answered = 0  # the kind of request this ReadyForQuery answers
        answered_ns = 0
        while len(pending):
            kind = pending.first_kind()
            sent = pending.first_sent()
            pending.drop()
            if kind in (_SYNC, _QUERY, _FUNCTION):
                answered = kind
                answered_ns = sent
                break
            self.stats.desyncs += 1
        if answered == _SYNC:
            run = self._last_extended
            if run is not None and run.error is None and not run.in_transaction:
                # commit of the implicit transaction, measured from when it could start
                commit_ns = now - max(run.end_ns, answered_ns)
                if commit_ns > 0:
                    run.end_ns += commit_ns
                    run.active_ns += commit_ns
        if status == codes.TX_IDLE and not len(pending):
            if self._suspended:
                for run in list(self._suspended):
                    self._finish_suspended(run)
            self._unnamed = None
            if self._portals:
                self._portals.clear()
        self._implicit.clear()
        self._last_extended = None
        self._query_run = None
        self._rows = 0
        self._last_end_ns = now

        # The server's status is the truth at batch boundaries: a block we did not see
        # begin (observation started inside it), or one that ended without a COMMIT or
        # ROLLBACK tag (a COMMIT failing on a deferred constraint, an error ending it).
        if status != codes.TX_IDLE and not self._explicit:
            self._open_transaction(now)
        elif status == codes.TX_IDLE and self._explicit:
            self._close_transaction(False, now)
        self._tx_status = status
        self._flush_batch()

    def _flush_early(self, keep: _Run) -> None:
        """Bound memory on a long pipeline with one Sync (executemany of a million rows):
        emit all but the newest statement now.  Statements emitted this way can no longer
        be marked rolled back by a later error (counted in ``early_flushes``)."""
        self.stats.early_flushes += 1
        self._batch.pop()
        self._flush_batch()
        self._batch.append(keep)
        self._implicit = [keep] if keep in self._implicit else []

    def _open_transaction(self, at_ns: int) -> None:
        self._explicit = True
        self._tx_start_ns = at_ns
        self._tx_statements = 0
        self._batch.append(TransactionStarted(session_id=self.session_id, at_ns=at_ns))

    def _close_transaction(self, committed: bool, end_ns: int) -> None:
        self._explicit = False
        self._batch.append(
            TransactionFinished(
                session_id=self.session_id,
                committed=committed,
                start_ns=self._tx_start_ns,
                end_ns=end_ns,
                statements=self._tx_statements,
            )
        )

    def _flush_batch(self) -> None:
        if not self._batch:
            return
        batch = self._batch
        self._batch = []
        offset = self._epoch_offset_ns
        sid, user, database = self.session_id, self.user, self.database
        # The two constructors below repeat their shared keywords on purpose: building them
        # from a dict (**common) cost ~0.4 µs per statement on the hot path.
        for run in batch:
            if not isinstance(run, _Run):
                self._sink.put(run)  # TransactionStarted / TransactionFinished, in order
                continue
            if run.error is None:
                event: Event = StatementFinished(
                    session_id=sid,
                    user=user,
                    database=database,
                    application_name=run.application_name,
                    protocol=run.protocol,
                    text=run.text,
                    statement_name=run.statement_name,
                    portal_name=run.portal_name,
                    param_type_oids=run.param_type_oids,
                    function_oid=run.function_oid,
                    start_ns=run.start_ns,
                    end_ns=run.end_ns,
                    duration_ns=run.active_ns,
                    start_epoch_ns=run.start_ns + offset,
                    rows=run.rows,
                    rolled_back=run.rolled_back,
                    in_transaction=run.in_transaction,
                    text_in_batch=run.text_in_batch,
                    command=run.command,
                    param_values=run.param_values,
                    search_path=run.search_path,
                )
            else:
                event = StatementFailed(
                    session_id=sid,
                    user=user,
                    database=database,
                    application_name=run.application_name,
                    protocol=run.protocol,
                    text=run.text,
                    statement_name=run.statement_name,
                    portal_name=run.portal_name,
                    param_type_oids=run.param_type_oids,
                    function_oid=run.function_oid,
                    start_ns=run.start_ns,
                    end_ns=run.end_ns,
                    duration_ns=run.active_ns,
                    start_epoch_ns=run.start_ns + offset,
                    rows=run.rows,
                    rolled_back=run.rolled_back,
                    in_transaction=run.in_transaction,
                    text_in_batch=run.text_in_batch,
                    error=run.error,
                    phase=run.phase,
                )
            self._sink.put(event)
