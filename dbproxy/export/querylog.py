"""Structured query log: JSON lines for slow statements, failed statements and sessions.

A :class:`QueryLog` is an event consumer (``App(config, consumers=[log.consume])``): it
picks the events worth a line, turns each into one JSON object (one line, UTF-8,
``ensure_ascii=False``, keys always in the order of :data:`KEY_ORDER`, absent keys left
out) and hands the lines to a writer.

What a line may contain: normalized SQL (constants as ``$n``, comments removed, cut at
:data:`MAX_QUERY_BYTES`), fingerprint id and summary, SQLSTATE and its class, names
(database, user, application_name), counts and times, and the attribution tags of
:data:`dbproxy.observe.aggregator.ATTRIBUTION_TAGS`.  Never literal values, passwords or
the server's error message (it often echoes values: ``Key (email)=(…) already exists``).

Never blocking the proxy: the drain task that calls :meth:`QueryLog.consume` runs on the
proxy's event loop, so a write that blocks (a full pipe, a stalled log shipper, a slow
disk) would stall every session.  By default lines go through a bounded queue to a writer
thread; when the queue is full, lines are dropped and counted (``lines_dropped``).  A write
that raises (disk full, closed pipe) is counted (``write_errors``) and its line dropped;
nothing raises into the App.

``trace_id`` / ``span_id`` come from the statement's sqlcommenter ``traceparent`` when its
SQL text was sent with that execution (``text_in_batch``).  ``span_id`` is then the
*application's* span (the traceparent's parent id), not a span of the proxy: the proxy's
own span id is only known when tracing is on.  Then the App passes the tracing consumer's
notes (``consume(events, notes)``) and a statement the proxy made a span for gets that
span's ids; a ``span_ids(event)`` hook, if given, wins over both.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, TextIO

from dbproxy.export.prometheus import sqlstate_label, truncate_utf8
from dbproxy.observe.aggregator import (
    ATTRIBUTION_TAGS,
    FUNCTION_CALL_TEXT,
    UNKNOWN_STATEMENT_TEXT,
    StatementNote,
)
from dbproxy.protocol.events import (
    Event,
    SessionClosed,
    SessionOpened,
    SessionRejected,
    StatementEvent,
    StatementFailed,
    StatementFinished,
)
from dbproxy.sql.cache import Fingerprinter, SupportsFingerprint
from dbproxy.sql.fingerprint import fingerprint_id

__all__ = [
    "KEY_ORDER",
    "MAX_QUERY_BYTES",
    "ClientAddressFn",
    "QueryLog",
    "SpanIdsFn",
    "open_query_log",
    "parse_traceparent",
]

log = logging.getLogger(__name__)

#: ``query`` is cut to this many UTF-8 bytes (never inside a character).
MAX_QUERY_BYTES: Final = 2048
#: Lines waiting for the writer thread; beyond this they are dropped and counted.
DEFAULT_MAX_PENDING_LINES: Final = 10_000
#: Sessions whose SessionOpened details (backend pid, …) are kept until SessionClosed.
DEFAULT_MAX_SESSIONS: Final = 100_000

#: Every key a line can have, in the order it appears in (keys without a value are left
#: out).  Short, low-cardinality keys first; the long ``tags`` and ``query`` last.
KEY_ORDER: Final = (
    "ts",
    "level",
    "event",
    "trace_id",
    "span_id",
    "session_id",
    "backend_pid",
    "client_addr",
    "database",
    "user",
    "application_name",
    "protocol",
    "fingerprint",
    "summary",
    "duration_ms",
    "rows",
    "command",
    "sqlstate",
    "error_class",
    "phase",
    "rolled_back",
    "in_transaction",
    "interrupted",
    "observation_lost",
    "tags",
    "wait_events",
    "blocked_by",
    "query",
)

#: ``(trace_id, span_id)`` for a statement, e.g. from the tracing code; None: not known.
SpanIdsFn = Callable[[StatementEvent], "tuple[str, str] | None"]
#: The client's address (``host:port``) of a session, if the proxy still knows it.
ClientAddressFn = Callable[[int], "str | None"]

# W3C Trace Context: version-traceid-parentid-flags, lowercase hex.
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
_ZERO_TRACE: Final = "0" * 32
_ZERO_SPAN: Final = "0" * 16


def parse_traceparent(value: str) -> tuple[str, str] | None:
    """``(trace_id, parent_span_id)`` of a W3C ``traceparent``, or None when invalid.

    >>> parse_traceparent("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
    ('0af7651916cd43dd8448eb211c80319c', 'b7ad6b7169203331')
    """
    m = _TRACEPARENT.fullmatch(value.strip())
    if m is None:
        return None
    version, trace_id, span_id, _flags, rest = m.groups()
    if version == "ff" or (version == "00" and rest is not None):
        return None
    if trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN:
        return None
    return trace_id, span_id


def rfc3339_ms(epoch_ns: int) -> str:
    """``2024-05-01T12:00:00.123Z`` (UTC, milliseconds, truncated)."""
    seconds, rest_ns = divmod(epoch_ns, 1_000_000_000)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    return f"{stamp}.{rest_ns // 1_000_000:03d}Z"


@dataclass(slots=True)
class _SessionInfo:
    backend_pid: int
    user: str
    database: str
    application_name: str
    client_addr: str | None
    opened_ns: int
    epoch_offset_ns: int


class QueryLog:
    """Consumer of event batches that writes JSON lines; see the module docstring.

    ``out`` is a text stream (not closed by :meth:`close`) or a file path, opened in
    append mode, line-buffered, and reopened by :meth:`reopen` (after log rotation).
    Construction opens the file, so a bad path raises :class:`OSError` at start-up.

    ``background=False`` writes synchronously inside :meth:`consume` (tests, or streams
    that cannot block); then ``lines_dropped`` stays 0.

    Counters (plain ints, for metrics): ``lines_written``, ``write_errors`` (failed
    writes and flushes), ``lines_dropped`` (queue full or log closed), ``hook_errors``
    (``span_ids`` / ``client_address`` raised), ``format_errors`` (batches lost to a bug),
    ``sessions_evicted``.
    """

    def __init__(
        self,
        out: TextIO | str | os.PathLike[str],
        *,
        fingerprinter: SupportsFingerprint | None = None,
        log_slow_ms: float | None = None,
        log_errors: bool = True,
        log_sessions: bool = True,
        span_ids: SpanIdsFn | None = None,
        client_address: ClientAddressFn | None = None,
        background: bool = True,
        max_pending_lines: int = DEFAULT_MAX_PENDING_LINES,
        max_sessions: int = DEFAULT_MAX_SESSIONS,
        wall_clock_ns: Callable[[], int] = time.time_ns,
        monotonic_ns: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        if log_slow_ms is not None and log_slow_ms < 0:
            raise ValueError("log_slow_ms must be >= 0 (or None: off)")
        if max_pending_lines < 1 or max_sessions < 1:
            raise ValueError("max_pending_lines and max_sessions must be >= 1")
        # The App passes its own fingerprinter (same loop as the aggregator: the caches
        # are shared); a standalone log gets a small private one.
        self._fingerprinter: SupportsFingerprint = fingerprinter or Fingerprinter(
            exact_capacity=1_000, shape_capacity=1_000
        )
        self._slow_ns: int | None = None if log_slow_ms is None else int(log_slow_ms * 1e6)
        self._log_errors = log_errors
        self._log_sessions = log_sessions
        self._span_ids = span_ids
        self._client_address = client_address
        self._max_sessions = max_sessions
        self._sessions: dict[int, _SessionInfo] = {}
        self._wall_clock_ns = wall_clock_ns
        self._monotonic_ns = monotonic_ns
        self._last_offset_ns: int | None = None  # wall - monotonic, from the newest event
        #: (session id, start ns, end ns) -> sampled seconds by wait event, and the lock
        #: blocker's label (the activity sampler, when on): added to slow_query lines
        self.wait_events: Callable[[int, int, int], dict[str, float]] | None = None
        self.blocked_by: Callable[[int, int, int], str | None] | None = None

        if isinstance(out, str | os.PathLike):
            self._path: str | None = os.fspath(out)
            self._stream: TextIO | None = self._open(self._path)
        else:
            self._path = None
            self._stream = out

        self.lines_written = 0
        self.write_errors = 0
        self.lines_dropped = 0
        self.hook_errors = 0
        self.format_errors = 0
        self.sessions_evicted = 0
        self._failing = False  # inside a streak of write errors (logged once)

        self._background = background
        self._max_pending = max_pending_lines
        self._cond = threading.Condition()
        self._pending: deque[str] = deque()
        self._busy = False
        self._closing = False
        self._reopen_requested = False
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ consumer
    def consume(
        self, events: Iterable[Event], notes: Mapping[int, StatementNote] | None = None
    ) -> None:
        """Turn a batch of events into lines and queue them.  Never raises.

        ``notes`` (as for :meth:`Aggregator.consume`): what the tracing consumer learned
        about the statement at that index of ``events`` — its fingerprint is reused, and
        its span's ids, when it made one, become ``trace_id``/``span_id`` (``span_id``
        is then the proxy's span, a child of the application's)."""
        try:
            lines = self.format_lines(events, notes)
        except Exception:  # defensive: a formatting bug must not cost the other consumers
            self.format_errors += 1
            log.debug("query log could not format a batch", exc_info=True)
            return
        if lines:
            self._submit(lines)

    def format_lines(
        self, events: Iterable[Event], notes: Mapping[int, StatementNote] | None = None
    ) -> list[str]:
        """The lines for ``events`` (and per-session bookkeeping), without writing them."""
        lines: list[str] = []
        slow_ns = self._slow_ns
        note_of = notes.get if notes else None
        for i, ev in enumerate(events):
            if isinstance(ev, StatementFinished):
                self._learn_offset(ev)
                if slow_ns is not None and ev.duration_ns >= slow_ns:
                    note = note_of(i) if note_of else None
                    lines.append(self._statement_line(ev, "slow_query", "warning", note))
            elif isinstance(ev, StatementFailed):
                self._learn_offset(ev)
                if self._log_errors:
                    note = note_of(i) if note_of else None
                    lines.append(self._statement_line(ev, "query_error", "error", note))
                elif slow_ns is not None and ev.duration_ns >= slow_ns:
                    # e.g. a statement_timeout (57014): slow is what matters here
                    note = note_of(i) if note_of else None
                    lines.append(self._statement_line(ev, "slow_query", "warning", note))
            elif isinstance(ev, SessionOpened):
                info = self._remember(ev)
                if self._log_sessions:
                    lines.append(self._opened_line(ev, info))
            elif isinstance(ev, SessionClosed):
                closed = self._sessions.pop(ev.session_id, None)
                # Sessions never seen open (rejected, or a TCP probe that sent nothing)
                # have nothing to close: no line.
                if closed is not None and self._log_sessions:
                    lines.append(self._closed_line(ev, closed))
            elif isinstance(ev, SessionRejected) and self._log_sessions:
                lines.append(self._rejected_line(ev))
        return lines

    # ------------------------------------------------------------------ lines
    def _statement_line(
        self, ev: StatementEvent, event: str, level: str, note: StatementNote | None
    ) -> str:
        fp_id, text, summary, tags = self._describe(ev, note)
        ids = self._trace_ids(ev, note, tags.get("traceparent"))
        info = self._sessions.get(ev.session_id)
        end_epoch_ns = ev.start_epoch_ns + (ev.end_ns - ev.start_ns)
        record: dict[str, object] = {
            "ts": rfc3339_ms(end_epoch_ns),
            "level": level,
            "event": event,
        }
        if ids is not None:
            record["trace_id"], record["span_id"] = ids
        record["session_id"] = ev.session_id
        if info is not None:
            record["backend_pid"] = info.backend_pid
            record["client_addr"] = info.client_addr
        else:
            record["client_addr"] = self._lookup_client(ev.session_id)
        record["database"] = ev.database
        record["user"] = ev.user
        record["application_name"] = ev.application_name
        record["protocol"] = ev.protocol
        record["fingerprint"] = fp_id
        record["summary"] = summary
        record["duration_ms"] = round(ev.duration_ns / 1e6, 3)
        record["rows"] = ev.rows
        if isinstance(ev, StatementFinished):
            record["command"] = ev.command
        else:
            assert isinstance(ev, StatementFailed)
            record["sqlstate"], record["error_class"] = sqlstate_label(ev.error.sqlstate)
            record["phase"] = ev.phase
        record["rolled_back"] = ev.rolled_back
        record["in_transaction"] = ev.in_transaction
        attribution = {k: tags[k] for k in sorted(tags) if k in ATTRIBUTION_TAGS}
        if attribution:
            record["tags"] = attribution
        if event == "slow_query" and self.wait_events is not None:
            waits = self.wait_events(ev.session_id, ev.start_ns, ev.end_ns)
            if waits:
                record["wait_events"] = waits
        if event == "slow_query" and self.blocked_by is not None:
            blocker = self.blocked_by(ev.session_id, ev.start_ns, ev.end_ns)
            if blocker:
                record["blocked_by"] = blocker
        record["query"] = truncate_utf8(text, MAX_QUERY_BYTES)
        return _dumps(record)

    def _opened_line(self, ev: SessionOpened, info: _SessionInfo) -> str:
        return _dumps(
            {
                "ts": rfc3339_ms(ev.at_epoch_ns),
                "level": "info",
                "event": "session_opened",
                "session_id": ev.session_id,
                "backend_pid": ev.backend_pid,
                "client_addr": info.client_addr,
                "database": ev.database,
                "user": ev.user,
                "application_name": ev.application_name,
            }
        )

    def _closed_line(self, ev: SessionClosed, info: _SessionInfo) -> str:
        return _dumps(
            {
                "ts": rfc3339_ms(ev.at_ns + info.epoch_offset_ns),
                "level": "info",
                "event": "session_closed",
                "session_id": ev.session_id,
                "backend_pid": info.backend_pid,
                "client_addr": info.client_addr,
                "database": info.database,
                "user": info.user,
                "application_name": info.application_name,
                # how long the session was open
                "duration_ms": round((ev.at_ns - info.opened_ns) / 1e6, 3),
                "interrupted": ev.interrupted,
                "observation_lost": ev.observation_lost,
            }
        )

    def _rejected_line(self, ev: SessionRejected) -> str:
        sqlstate, error_class = sqlstate_label(ev.error.sqlstate)
        return _dumps(
            {
                "ts": rfc3339_ms(ev.at_ns + self._offset_ns()),
                "level": "warning",
                "event": "session_rejected",
                "session_id": ev.session_id,
                "client_addr": self._lookup_client(ev.session_id),
                "database": ev.database,
                "user": ev.user,
                "sqlstate": sqlstate,
                "error_class": error_class,
            }
        )

    # ------------------------------------------------------------------ helpers
    def _describe(
        self, ev: StatementEvent, note: StatementNote | None
    ) -> tuple[str, str, str, dict[str, str]]:
        """``(fingerprint id, normalized text, summary, tags)``, ids as the aggregator's."""
        if ev.text:
            fp = note.fingerprint if note is not None else None
            if fp is None:
                fp = self._fingerprinter.fingerprint(ev.text)
            return fp.id, fp.text, fp.summary, dict(fp.tags)
        if ev.protocol == "function":
            oid = ev.function_oid
            text = FUNCTION_CALL_TEXT if oid is None else f"<function call oid={oid}>"
            return fingerprint_id(text), text, "FUNCTION CALL", {}
        return fingerprint_id(UNKNOWN_STATEMENT_TEXT), UNKNOWN_STATEMENT_TEXT, "UNKNOWN", {}

    def _trace_ids(
        self, ev: StatementEvent, note: StatementNote | None, traceparent: str | None
    ) -> tuple[str, str] | None:
        if self._span_ids is not None:
            try:
                ids = self._span_ids(ev)
            except Exception:
                self.hook_errors += 1
                ids = None
            if ids is not None:
                return ids
        if note is not None and note.trace_id and note.span_id:
            return note.trace_id, note.span_id  # the proxy's own span
        # A named statement run later carries its old Parse's comment: not this trace.
        if traceparent is None or not ev.text_in_batch:
            return None
        return parse_traceparent(traceparent)

    def _lookup_client(self, session_id: int) -> str | None:
        if self._client_address is None:
            return None
        try:
            return self._client_address(session_id)
        except Exception:
            self.hook_errors += 1
            return None

    def _remember(self, ev: SessionOpened) -> _SessionInfo:
        sessions = self._sessions
        if ev.session_id not in sessions and len(sessions) >= self._max_sessions:
            del sessions[next(iter(sessions))]  # the oldest: its close was probably lost
            self.sessions_evicted += 1
        offset = ev.at_epoch_ns - ev.at_ns
        self._last_offset_ns = offset
        info = sessions[ev.session_id] = _SessionInfo(
            backend_pid=ev.backend_pid,
            user=ev.user,
            database=ev.database,
            application_name=ev.application_name,
            client_addr=ev.client_address or self._lookup_client(ev.session_id),
            opened_ns=ev.at_ns,
            epoch_offset_ns=offset,
        )
        return info

    def _learn_offset(self, ev: StatementEvent) -> None:
        self._last_offset_ns = ev.start_epoch_ns - ev.start_ns

    def _offset_ns(self) -> int:
        """Wall clock minus monotonic clock, for events that carry only ``at_ns``."""
        if self._last_offset_ns is None:
            self._last_offset_ns = self._wall_clock_ns() - self._monotonic_ns()
        return self._last_offset_ns

    # ------------------------------------------------------------------ writing
    def _submit(self, lines: Sequence[str]) -> None:
        if not self._background:
            with self._cond:
                if self._closing:
                    self.lines_dropped += len(lines)
                    return
                self._write(lines)
            return
        with self._cond:
            if self._closing:
                self.lines_dropped += len(lines)
                return
            room = self._max_pending - len(self._pending)
            if room < len(lines):
                self.lines_dropped += len(lines) - max(room, 0)
                lines = lines[: max(room, 0)]
            self._pending.extend(lines)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="dbproxy-querylog", daemon=True
                )
                self._thread.start()
            self._cond.notify_all()

    def _run(self) -> None:
        cond = self._cond
        while True:
            with cond:
                while not self._pending and not self._closing and not self._reopen_requested:
                    cond.wait()
                reopen, self._reopen_requested = self._reopen_requested, False
                batch = list(self._pending)
                self._pending.clear()
                if not batch and not reopen and self._closing:
                    return
                self._busy = True
            try:
                if reopen:
                    self._reopen_now()
                if batch:
                    self._write(batch)
            finally:
                with cond:
                    self._busy = False
                    cond.notify_all()

    def _write(self, lines: Sequence[str]) -> None:
        stream = self._stream
        if stream is None:
            self._count_failure(len(lines), "the query log file is not open")
            return
        for line in lines:
            try:
                stream.write(line)
            except Exception as exc:
                self._count_failure(1, exc)
            else:
                self.lines_written += 1
                self._failing = False
        try:
            stream.flush()
        except Exception as exc:
            self._count_failure(1, exc)

    def _count_failure(self, n: int, why: object) -> None:
        self.write_errors += n
        if not self._failing:  # once per streak of failures, not per line
            self._failing = True
            log.warning("query log: cannot write (%s); dropping lines until it recovers", why)

    @staticmethod
    def _open(path: str) -> TextIO:
        return open(path, "a", encoding="utf-8", errors="replace", buffering=1)

    def _reopen_now(self) -> None:
        if self._path is None:
            return
        try:
            fresh = self._open(self._path)
        except OSError as exc:
            # keep writing to the old file (renamed by logrotate) rather than nowhere
            log.warning("query log: cannot reopen %s: %s", self._path, exc.strerror or exc)
            return
        old, self._stream = self._stream, fresh
        if old is not None:
            try:
                old.close()
            except Exception:
                self.write_errors += 1

    # ------------------------------------------------------------------ control
    def update(self, *, log_slow_ms: float | None, log_errors: bool, log_sessions: bool) -> None:
        """New line settings (SIGHUP reload); on the loop that calls ``consume``."""
        self._slow_ns = None if log_slow_ms is None else int(log_slow_ms * 1e6)
        self._log_errors = log_errors
        self._log_sessions = log_sessions

    def reopen(self) -> None:
        """Reopen the file (after log rotation; e.g. on SIGHUP).  Safe to call from the
        event loop: with the writer thread, the reopen happens there, before its next
        write.  No-op for a stream."""
        if self._path is None:
            return
        with self._cond:
            if self._closing:
                return
            if self._thread is None:  # synchronous, or no line written yet
                self._reopen_now()
                return
            self._reopen_requested = True
            self._cond.notify_all()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every queued line is written (or failed); False on timeout."""
        with self._cond:
            return self._cond.wait_for(
                lambda: not self._pending and not self._busy and not self._reopen_requested,
                timeout,
            )

    def close(self, timeout: float | None = 5.0) -> bool:
        """Write what is queued, stop the writer thread and close a file this log opened.
        Later lines are dropped (counted).  False if the writer did not finish in time (the
        file is then left open: the thread may still be inside a write)."""
        with self._cond:
            if self._closing:
                return True
            self._closing = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                return False
        if self._path is not None and self._stream is not None:
            try:
                self._stream.close()
            except Exception:
                self.write_errors += 1
            self._stream = None
        return True

    @property
    def pending_lines(self) -> int:
        return len(self._pending)


def _dumps(record: dict[str, object]) -> str:
    """One JSON line: keys in KEY_ORDER, None values left out, lone surrogates replaced."""
    line = json.dumps(
        {k: record[k] for k in KEY_ORDER if record.get(k) is not None},
        ensure_ascii=False,
        separators=(",", ":"),
    )
    if not line.isascii():
        try:
            line.encode("utf-8")
        except UnicodeEncodeError:
            line = line.encode("utf-8", "replace").decode("utf-8")
    return line + "\n"


def open_query_log(target: str, **options: Any) -> QueryLog | None:
    """The query log for a ``query_log`` setting: ``"off"`` (or empty) → None, ``"-"`` →
    standard output, anything else → a file path.  ``options`` go to :class:`QueryLog`.
    Raises :class:`OSError` when the file cannot be opened."""
    if target.strip().lower() in ("", "off"):
        return None
    out: TextIO | str = sys.stdout if target == "-" else target
    return QueryLog(out, **options)
