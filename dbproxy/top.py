"""``dbproxy top``: a terminal view of a running proxy's top queries.

It polls ``GET /api/queries`` of the proxy's HTTP server (stdlib ``urllib``, with a timeout)
and draws the top fingerprints with their rate of calls (Δcalls/Δt between two successive
snapshots, timed by the proxy's own ``taken_at``), p95, rows per call, errors, kind, summary
and normalized query.  The screen is a rich ``Live`` on the alternate screen; keys are read
from the terminal in cbreak mode by the same ``select`` loop that waits for the next poll,
and polls run on a worker thread, so neither a slow proxy nor a key press blocks the other.
The terminal is restored on ``q``, Ctrl-C, SIGTERM and SIGHUP.

``--once`` prints one plain table (no colors, no escapes) and exits: the whole query text
when stdout is not a terminal, so it can be piped to ``grep``/``awk``.

Errors the user can fix (bad flags, a proxy that does not answer the first poll) are one
line on stderr and exit status 2.  Later failed polls are shown on the status line and
retried at every interval, the last good data staying on screen.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import math
import os
import queue
import select
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from types import FrameType
from typing import Any, NoReturn
from urllib.error import HTTPError, URLError
from urllib.parse import urlencode, urlsplit
from urllib.request import ProxyHandler, Request, build_opener

from dbproxy import __version__
from dbproxy.config import environment

EXIT_OK = 0
EXIT_USAGE = 2

DEFAULT_URL = "http://127.0.0.1:9391"
SORTS: tuple[str, ...] = ("total_time", "calls", "mean", "p95", "rows", "errors")
#: key -> sort (lower case only: upper-case letters end escape sequences such as F1's ESC O P)
SORT_KEYS: dict[str, str] = {
    "t": "total_time",
    "c": "calls",
    "m": "mean",
    "p": "p95",
    "r": "rows",
    "e": "errors",
}
QUIT_KEYS = frozenset({"q"})
MAX_LIMIT = 10_000
MAX_BODY = 64 * 1024 * 1024
KEY_HELP = "t total  c calls  m mean  p p95  r rows  e errors  q quit"


class TopError(Exception):
    """A one-line, user-facing failure (unreachable proxy, not a dbproxy API, …)."""


# --- data -------------------------------------------------------------------------------


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _int(value: Any) -> int:
    number = _num(value)
    return int(number) if number is not None else 0


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _parse_ts(value: Any) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class Row:
    """One (fingerprint, database, user) row of ``/api/queries``."""

    fingerprint: str
    query: str
    summary: str
    kind: str
    database: str
    user: str
    calls: int
    total_ms: float
    mean_ms: float | None
    p95_ms: float | None
    rows: int
    rows_per_call: float | None
    errors: int

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.fingerprint, self.database, self.user)

    @classmethod
    def from_json(cls, obj: Any) -> Row:
        if not isinstance(obj, dict):
            raise TopError("unexpected response: a row is not a JSON object")
        return cls(
            fingerprint=_str(obj.get("fingerprint")),
            query=_str(obj.get("query")),
            summary=_str(obj.get("summary")),
            kind=_str(obj.get("kind")),
            database=_str(obj.get("database")),
            user=_str(obj.get("user")),
            calls=_int(obj.get("calls")),
            total_ms=_num(obj.get("total_time_ms")) or 0.0,
            mean_ms=_num(obj.get("mean_time_ms")),
            p95_ms=_num(obj.get("p95_ms")),
            rows=_int(obj.get("rows")),
            rows_per_call=_num(obj.get("rows_per_call")),
            errors=_int(obj.get("error_count")),
        )


#: sort -> value sorted descending (as the API does; missing percentiles last)
_SORT_VALUE: dict[str, Callable[[Row], float]] = {
    "total_time": lambda r: r.total_ms,
    "calls": lambda r: float(r.calls),
    "mean": lambda r: r.mean_ms if r.mean_ms is not None else -math.inf,
    "p95": lambda r: r.p95_ms if r.p95_ms is not None else -math.inf,
    "rows": lambda r: float(r.rows),
    "errors": lambda r: float(r.errors),
}


def sort_rows(rows: Sequence[Row], sort: str) -> list[Row]:
    value = _SORT_VALUE[sort]
    return sorted(rows, key=lambda r: (-value(r), r.fingerprint, r.database, r.user))


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One answer of ``/api/queries``."""

    sort: str
    taken_at: float  # the proxy's clock (unix seconds)
    since: float | None  # start of the statistics window (last reset)
    total: int  # rows the proxy knows, before the limit
    rows: tuple[Row, ...]
    latency_s: float  # how long the request took


class Fetcher:
    """``GET {url}/api/queries?sort=…&limit=…`` with a timeout; failures are :class:`TopError`."""

    def __init__(self, base_url: str, *, timeout: float, token: str | None = None) -> None:
        self.base_url = base_url
        self.timeout = timeout
        self._headers = {"Accept": "application/json", "User-Agent": f"dbproxy-top/{__version__}"}
        if token:  # the proxy's HTTP token, needed when its HTTP is not on loopback
            self._headers["Authorization"] = f"Bearer {token}"
        # A local metrics port: environment HTTP proxies would only get in the way.
        self._opener = build_opener(ProxyHandler({}))

    def url(self, sort: str, limit: int) -> str:
        return f"{self.base_url}/api/queries?{urlencode({'sort': sort, 'limit': limit})}"

    def fetch(self, sort: str, limit: int) -> Snapshot:
        request = Request(
            self.url(sort, limit),
            headers=self._headers,
        )
        started = time.monotonic()
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                body = response.read(MAX_BODY)
        except HTTPError as exc:
            hint = "; is it dbproxy's --http-listen?" if exc.code == 404 else ""
            raise TopError(f"{self.base_url}: HTTP {exc.code}{_api_error(exc)}{hint}") from None
        except URLError as exc:
            raise TopError(f"cannot reach {self.base_url}: {_reason(exc.reason)}") from None
        except TimeoutError:
            raise TopError(
                f"cannot reach {self.base_url}: no answer within {self.timeout:g}s"
            ) from None
        except (OSError, http.client.HTTPException) as exc:
            raise TopError(f"cannot reach {self.base_url}: {_reason(exc)}") from None
        latency = time.monotonic() - started
        try:
            payload = json.loads(body)
        except ValueError:
            raise TopError(
                f"{self.base_url} did not answer with JSON: is it dbproxy's --http-listen?"
            ) from None
        if not isinstance(payload, dict) or not isinstance(payload.get("queries"), list):
            raise TopError(
                f"{self.base_url}/api/queries did not answer with queries: "
                "is it dbproxy's --http-listen?"
            )
        taken_at = _parse_ts(payload.get("taken_at"))
        return Snapshot(
            sort=sort,
            taken_at=taken_at if taken_at is not None else time.time(),
            since=_parse_ts(payload.get("since")),
            total=_int(payload.get("total")),
            rows=tuple(Row.from_json(r) for r in payload["queries"]),
            latency_s=latency,
        )


def _reason(reason: object) -> str:
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror.lower() if reason.strerror[:1].isupper() else reason.strerror
    if isinstance(reason, TimeoutError) or str(reason) == "timed out":
        return "timed out"
    text = str(reason).strip() or type(reason).__name__
    return " ".join(text.split())


def _api_error(exc: HTTPError) -> str:
    """``: message`` from the API's ``{"error": …}`` body, or the HTTP reason."""
    message = ""
    try:
        payload = json.loads(exc.read(64 * 1024))
        if isinstance(payload, dict) and isinstance(payload.get("error"), str):
            message = payload["error"]
    except (OSError, ValueError, http.client.HTTPException):
        pass
    message = message or str(exc.reason or "")
    return f": {' '.join(message.split())}" if message else ""


class Rates:
    """Calls per second per row, from successive snapshots (Δcalls / Δtaken_at).

    Samples are kept per row across sorts, so switching the sort keeps the rates of rows
    seen before; a reset of the statistics (``since`` moves) starts over.
    """

    def __init__(self, *, min_gap_s: float = 0.2, forget_after_s: float = 600.0) -> None:
        self._samples: dict[tuple[str, str, str], tuple[int, float]] = {}
        self._rates: dict[tuple[str, str, str], float] = {}
        self._since: float | None = None
        self._min_gap = min_gap_s
        self._forget_after = forget_after_s

    def update(self, snap: Snapshot) -> None:
        if snap.since != self._since:
            self._samples.clear()
            self._rates.clear()
            self._since = snap.since
        now = snap.taken_at
        for row in snap.rows:
            prev = self._samples.get(row.key)
            if prev is None:
                self._samples[row.key] = (row.calls, now)
                continue
            calls, at = prev
            if now - at < self._min_gap:
                continue  # too close to the last sample to be a rate (a poll right after a key)
            if row.calls >= calls:
                self._rates[row.key] = (row.calls - calls) / (now - at)
            else:
                self._rates.pop(row.key, None)
            self._samples[row.key] = (row.calls, now)
        stale = [k for k, (_, at) in self._samples.items() if now - at > self._forget_after]
        for key in stale:
            del self._samples[key]
            self._rates.pop(key, None)

    def get(self, row: Row) -> float | None:
        return self._rates.get(row.key)


def window_rate(row: Row, snap: Snapshot) -> float | None:
    """Average calls/s over the statistics window (``--once`` has no second sample)."""
    if snap.since is None or snap.taken_at - snap.since <= 0:
        return None
    return row.calls / (snap.taken_at - snap.since)


# --- formatting --------------------------------------------------------------------------


def fmt_ms(ms: float | None) -> str:
    if ms is None:
        return "-"
    if ms < 1.0:
        return f"{ms:.3f}ms"
    if ms < 100.0:
        return f"{ms:.2f}ms"
    if ms < 1000.0:
        return f"{ms:.0f}ms"
    s = ms / 1000.0
    if s < 60.0:
        return f"{s:.2f}s"
    if s < 3600.0:
        return f"{int(s // 60)}m{int(s % 60):02d}s"
    return f"{int(s // 3600)}h{int(s % 3600 // 60):02d}m"


def fmt_count(n: float) -> str:
    if n < 100_000:
        return f"{n:.0f}" if float(n).is_integer() else f"{n:.2f}"
    for unit, scale in (("k", 1e3), ("M", 1e6), ("G", 1e9), ("T", 1e12)):
        if n < scale * 1000 or unit == "T":
            return f"{n / scale:.1f}{unit}" if n / scale < 100 else f"{n / scale:.0f}{unit}"
    return f"{n:.0f}"  # pragma: no cover


def fmt_rate(rate: float | None) -> str:
    if rate is None:
        return "-"
    if rate < 10:
        return f"{rate:.2f}"
    if rate < 1000:
        return f"{rate:.1f}"
    return fmt_count(round(rate))


def fmt_ratio(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 100:
        return f"{value:.2f}".rstrip("0").rstrip(".") if value else "0"
    return fmt_count(round(value))


def fmt_duration_s(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"


def one_line(text: str) -> str:
    return " ".join(text.split())


def cell_len(text: str) -> int:
    from rich.cells import cell_len as _cell_len

    return _cell_len(text)


def fit(text: str, width: int, *, right: bool = False) -> str:
    """Pad or truncate (with an ellipsis) to exactly ``width`` terminal cells."""
    from rich.cells import set_cell_size

    if width <= 0:
        return ""
    if cell_len(text) > width:
        text = set_cell_size(text, width - 1) + "…" if width > 1 else set_cell_size(text, width)
    pad = " " * (width - cell_len(text))
    return pad + text if right else text + pad


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    title: str
    width: int  # 0: as wide as the content (summary) / what is left (query)
    right: bool
    priority: int  # dropped first when the terminal is narrow: highest number
    sort: str | None = None


COLUMNS: tuple[Column, ...] = (
    Column("fingerprint", "fingerprint", 16, False, 2),
    Column("rate", "calls/s", 8, True, 1),
    Column("calls", "calls", 7, True, 3, "calls"),
    Column("total", "total", 9, True, 1, "total_time"),
    Column("mean", "mean", 9, True, 3, "mean"),
    Column("p95", "p95", 9, True, 1, "p95"),
    Column("rows", "rows", 7, True, 4, "rows"),
    Column("rows_per_call", "rows/call", 9, True, 2),
    Column("errors", "errors", 6, True, 1, "errors"),
    Column("kind", "kind", 5, False, 2),
    Column("who", "user@db", 16, False, 5),
    Column("summary", "summary", 0, False, 1),
    Column("query", "query", 0, False, 0),
)
SUMMARY_MAX = 24
QUERY_MIN = 24


def layout(rows: Sequence[Row], sort: str, width: int | None) -> list[tuple[Column, int]]:
    """Columns and widths for ``width`` cells (None: unlimited, the whole text)."""
    many_owners = len({(r.database, r.user) for r in rows}) > 1
    summary_w = max([len("summary"), *(cell_len(one_line(r.summary)) for r in rows)])
    who_w = max([len("user@db"), *(cell_len(f"{r.user}@{r.database}") for r in rows)])
    if width is None:
        query_w = max([len("query"), *(cell_len(one_line(r.query)) for r in rows)])
        chosen = [
            (c, {"summary": summary_w, "query": query_w, "who": who_w}.get(c.name, c.width))
            for c in COLUMNS
        ]
        if not many_owners:
            chosen = [(c, w) for c, w in chosen if c.name != "who"]
        return chosen

    def priority(c: Column) -> int:
        if c.sort == sort or c.name == "query":
            return 0
        if c.name == "who":
            return 2 if many_owners else 5
        return c.priority

    widths = {
        c.name: (min(summary_w, SUMMARY_MAX) if c.name == "summary" else c.width) for c in COLUMNS
    }
    widths["who"] = min(who_w, 24)
    kept = list(COLUMNS)
    while True:
        fixed = sum(widths[c.name] for c in kept if c.name != "query") + (len(kept) - 1)
        if fixed + QUERY_MIN <= width:
            break
        droppable = [c for c in kept if priority(c) > 0]
        if not droppable:
            break
        worst = max(priority(c) for c in droppable)
        victim = [c for c in droppable if priority(c) == worst][-1]
        kept.remove(victim)
    fixed = sum(widths[c.name] for c in kept if c.name != "query") + (len(kept) - 1)
    widths["query"] = max(width - fixed, len("query"))
    return [(c, widths[c.name]) for c in kept]


def cell_text(col: Column, row: Row, rate: float | None) -> str:
    match col.name:
        case "fingerprint":
            return row.fingerprint
        case "rate":
            return fmt_rate(rate)
        case "calls":
            return fmt_count(row.calls)
        case "total":
            return fmt_ms(row.total_ms)
        case "mean":
            return fmt_ms(row.mean_ms)
        case "p95":
            return fmt_ms(row.p95_ms)
        case "rows":
            return fmt_count(row.rows)
        case "rows_per_call":
            return fmt_ratio(row.rows_per_call)
        case "errors":
            return fmt_count(row.errors)
        case "kind":
            return row.kind or "-"
        case "who":
            return f"{row.user}@{row.database}"
        case "summary":
            return one_line(row.summary) or "-"
        case _:
            return one_line(row.query)


def sort_marker() -> str:
    encoding = (getattr(sys.stdout, "encoding", None) or "").lower().replace("-", "")
    return "▼" if encoding.startswith("utf") else "v"


def header_cells(cols: Sequence[tuple[Column, int]], sort: str) -> list[tuple[str, bool]]:
    """(text, is the sort column) per column."""
    out = []
    for col, width in cols:
        title = col.title
        is_sort = col.sort == sort
        if is_sort:
            title = f"{title}{sort_marker()}"
        out.append((fit(title, width, right=col.right), is_sort))
    return out


def row_cells(
    cols: Sequence[tuple[Column, int]], row: Row, rate: float | None
) -> list[tuple[Column, str]]:
    return [(col, fit(cell_text(col, row, rate), width, right=col.right)) for col, width in cols]


def plain_table(snap: Snapshot, width: int | None) -> str:
    """``--once``: a header line and one line per row, columns separated by a space."""
    rows = sort_rows(snap.rows, snap.sort)
    cols = layout(rows, snap.sort, width)
    lines = [" ".join(text for text, _ in header_cells(cols, snap.sort)).rstrip()]
    for row in rows:
        cells = row_cells(cols, row, window_rate(row, snap))
        lines.append(" ".join(text for _, text in cells).rstrip())
    return "\n".join(lines) + "\n"


# --- the live view -------------------------------------------------------------------------


@dataclass
class ViewState:
    url: str
    interval: float
    limit: int
    sort: str
    snapshot: Snapshot
    rates: Rates = field(default_factory=Rates)
    last_ok: float = field(default_factory=time.time)  # local clock of the last good poll
    error: str | None = None
    error_at: float | None = None
    failures: int = 0

    def accept(self, result: Snapshot | TopError) -> None:
        if isinstance(result, TopError):
            self.error = str(result)
            self.error_at = time.time()
            self.failures += 1
            return
        self.rates.update(result)
        self.snapshot = result
        self.last_ok = time.time()
        self.error = None
        self.error_at = None
        self.failures = 0


def render(state: ViewState, width: int, height: int) -> Any:
    """The whole screen as a rich renderable: ``height`` lines of at most ``width`` cells."""
    from rich.console import Group
    from rich.text import Text

    width = max(width, 20)
    height = max(height, 5)
    snap = state.snapshot
    rows = sort_rows(snap.rows, state.sort)
    body_h = max(height - 4, 0)  # 2 header lines, column titles, status line
    shown = rows[:body_h]
    cols = layout(shown, state.sort, width)

    rates = [state.rates.get(r) for r in shown]
    known = [r for r in rates if r is not None]
    clock = time.strftime("%H:%M:%S")
    line1 = Text(no_wrap=True, overflow="ellipsis")
    line1.append("dbproxy top", style="bold")
    line1.append(f"  {state.url}  {clock}  sort: ")
    line1.append(state.sort, style="bold reverse")
    line1.append(f"  every {state.interval:g}s")
    if snap.since is not None:
        line1.append(f"  stats since {time.strftime('%H:%M:%S', time.localtime(snap.since))}")
        line1.append(f" ({fmt_duration_s(snap.taken_at - snap.since)})")
    line2 = Text(no_wrap=True, overflow="ellipsis")
    line2.append(f"fingerprints {snap.total}  showing {len(shown)}  ")
    line2.append("top rows: ", style="dim")
    line2.append(f"calls {fmt_count(sum(r.calls for r in shown))}  ")
    line2.append(f"time {fmt_ms(sum(r.total_ms for r in shown))}  ")
    line2.append(f"calls/s {fmt_rate(sum(known)) if known else '-'}  ")
    errors = sum(r.errors for r in shown)
    line2.append(f"errors {fmt_count(errors)}", style="red" if errors else "")

    titles = Text(no_wrap=True, overflow="crop")
    for i, (text, is_sort) in enumerate(header_cells(cols, state.sort)):
        if i:
            titles.append(" ", style="reverse")
        titles.append(text, style="reverse bold" if is_sort else "reverse")
    titles.append(" " * max(width - titles.cell_len, 0), style="reverse")

    lines = [line1, line2, titles]
    for row, rate in zip(shown, rates, strict=True):
        line = Text(no_wrap=True, overflow="crop")
        for i, (col, text) in enumerate(row_cells(cols, row, rate)):
            if i:
                line.append(" ")
            style = ""
            if col.sort == state.sort:
                style = "bold"
            elif col.name == "errors" and row.errors:
                style = "red"
            elif col.name == "fingerprint":
                style = "cyan"
            line.append(text, style=style)
        lines.append(line)
    if not shown:
        lines.append(Text("no queries yet: run some through the proxy", style="dim"))
    while len(lines) < height - 1:
        lines.append(Text(""))

    status = Text(no_wrap=True, overflow="ellipsis")
    if state.error is not None:
        at = time.strftime("%H:%M:%S", time.localtime(state.error_at or time.time()))
        age = fmt_duration_s(time.time() - state.last_ok)
        status.append(
            f"poll failed at {at} ({state.failures}x): {state.error}; retrying, data {age} old",
            style="bold red",
        )
    else:
        ok = time.strftime("%H:%M:%S", time.localtime(state.last_ok))
        status.append(f"{KEY_HELP}", style="dim")
        status.append(f"   polled {ok} in {snap.latency_s * 1000:.0f}ms", style="dim")
    lines.append(status)
    for line in lines:
        line.truncate(width, overflow="ellipsis" if line is status else "crop")
    return Group(*lines[:height])


class Poller(threading.Thread):
    """Fetches on its own thread every ``interval`` (or now, on request); wakes the UI."""

    def __init__(
        self, fetcher: Fetcher, *, sort: str, limit: int, interval: float, wake_fd: int
    ) -> None:
        super().__init__(name="dbproxy-top-poller", daemon=True)
        self._fetcher = fetcher
        self.sort = sort  # read by this thread, set by the UI (a str assignment is atomic)
        self._limit = limit
        self._interval = interval
        self._wake_fd = wake_fd
        self._now = threading.Event()
        self._stop = threading.Event()
        self.results: queue.SimpleQueue[Snapshot | TopError] = queue.SimpleQueue()

    def poll_now(self) -> None:
        self._now.set()

    def stop(self) -> None:
        self._stop.set()
        self._now.set()

    def run(self) -> None:
        next_at = time.monotonic() + self._interval  # the first poll was made by main()
        while not self._stop.is_set():
            self._now.wait(max(0.0, next_at - time.monotonic()))
            self._now.clear()
            if self._stop.is_set():
                return
            next_at = time.monotonic() + self._interval
            result: Snapshot | TopError
            try:
                result = self._fetcher.fetch(self.sort, self._limit)
            except TopError as exc:
                result = exc
            except Exception as exc:  # never let the thread die silently
                result = TopError(f"unexpected error: {type(exc).__name__}: {exc}")
            self.results.put(result)
            with contextlib.suppress(OSError):
                os.write(self._wake_fd, b"!")


class _Quit(Exception):
    """A signal asked us to leave (SIGTERM, SIGHUP)."""


@contextlib.contextmanager
def _cbreak(fd: int | None) -> Iterator[None]:
    """Keys one at a time, no echo; the terminal's settings restored on the way out."""
    if fd is None:
        yield
        return
    import termios
    import tty

    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd, termios.TCSANOW)
        yield
    finally:
        with contextlib.suppress(termios.error, OSError):
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)


@contextlib.contextmanager
def _signals(wake_fd: int) -> Iterator[None]:
    def leave(signum: int, frame: FrameType | None) -> NoReturn:
        raise _Quit(signum)

    def resized(signum: int, frame: FrameType | None) -> None:
        with contextlib.suppress(OSError):
            os.write(wake_fd, b"w")

    # SIGINT too: a process started with it ignored (a background job of a script, nohup)
    # keeps it ignored, and Ctrl-C, the terminal's way out of a full-screen program, would
    # do nothing (KeyboardInterrupt then ends the loop as usual)
    wanted: dict[int, Any] = {signal.SIGTERM: leave, signal.SIGINT: signal.default_int_handler}
    for name, wanted_handler in (("SIGHUP", leave), ("SIGWINCH", resized)):
        if hasattr(signal, name):
            wanted[getattr(signal, name)] = wanted_handler
    previous = {signum: signal.signal(signum, new) for signum, new in wanted.items()}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


def run_live(state: ViewState, fetcher: Fetcher) -> int:
    from rich.console import Console
    from rich.live import Live

    stdin_fd: int | None = sys.stdin.fileno() if sys.stdin and sys.stdin.isatty() else None
    console = Console(highlight=False, emoji=False, markup=False)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    poller = Poller(
        fetcher, sort=state.sort, limit=state.limit, interval=state.interval, wake_fd=wake_w
    )

    def draw(live: Live) -> None:
        try:  # the terminal's size now (a resize sends SIGWINCH, which wakes the loop)
            width, height = os.get_terminal_size(sys.stdout.fileno())
        except OSError:
            width, height = console.size
        console.size = (width, height)  # rich crops the screen to the same size
        live.update(render(state, width, height), refresh=True)

    try:
        with _signals(wake_w), _cbreak(stdin_fd):
            live = Live(
                console=console,
                screen=True,
                auto_refresh=False,
                redirect_stdout=False,
                redirect_stderr=False,
            )
            with live:
                poller.start()
                draw(live)
                while True:
                    fds = [wake_r] if stdin_fd is None else [wake_r, stdin_fd]
                    # wake at least every second: the clock in the header moves
                    ready, _, _ = select.select(fds, [], [], 1.0)
                    if stdin_fd is not None and stdin_fd in ready:
                        data = os.read(stdin_fd, 256)
                        if not data:
                            stdin_fd = None  # stdin closed: no keys any more, Ctrl-C still works
                        for ch in data.split(b"\x1b", 1)[0].decode("ascii", "ignore"):
                            if ch in QUIT_KEYS:
                                return EXIT_OK
                            sort = SORT_KEYS.get(ch)
                            if sort is not None and sort != state.sort:
                                state.sort = sort
                                poller.sort = sort
                                poller.poll_now()
                    if wake_r in ready:
                        with contextlib.suppress(BlockingIOError):
                            os.read(wake_r, 4096)
                    while True:
                        try:
                            state.accept(poller.results.get_nowait())
                        except queue.Empty:
                            break
                    draw(live)
    except (KeyboardInterrupt, _Quit):
        return EXIT_OK
    finally:
        poller.stop()
        os.close(wake_r)
        os.close(wake_w)


# --- command line -----------------------------------------------------------------------


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value) or value < 0.1:
        raise argparse.ArgumentTypeError(f"must be at least 0.1 seconds, not {text!r}")
    return value


def _limit(text: str) -> int:
    if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= MAX_LIMIT:
        raise argparse.ArgumentTypeError(f"must be an integer from 1 to {MAX_LIMIT}, not {text!r}")
    return int(text)


def normalize_url(text: str) -> str:
    """``host:port`` or ``http(s)://host:port[/prefix]`` -> the base URL without a trailing /."""
    url = text.strip()
    if "://" not in url:
        url = f"http://{url}"
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"--url must look like http://HOST:PORT, not {text!r}")
    try:
        parts.port  # noqa: B018 - validates the port
    except ValueError:
        raise ValueError(f"--url has a bad port: {text!r}") from None
    if parts.query or parts.fragment:
        raise ValueError(f"--url takes no query string: {text!r}")
    return url.rstrip("/")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dbproxy top",
        description=(
            "Terminal view of a running dbproxy's top queries (polls its /api/queries). "
            "Keys: t/c/m/p/r/e sort by total time, calls, mean, p95, rows, errors; q quits."
        ),
    )
    parser.add_argument(
        "--url",
        default=environment().get("DBPROXY_TOP_URL", DEFAULT_URL),
        help=f"the proxy's HTTP server, its --http-listen (DBPROXY_TOP_URL, {DEFAULT_URL})",
    )
    parser.add_argument(
        "--token-file",
        metavar="FILE",
        help="the proxy's HTTP token, when its HTTP server is not on loopback "
        "(else DBPROXY_API_TOKEN, as the proxy reads it)",
    )
    parser.add_argument(
        "--interval",
        type=_positive_float,
        default=2.0,
        metavar="SECONDS",
        help="seconds between polls (2)",
    )
    parser.add_argument(
        "--limit", type=_limit, default=30, metavar="N", help="rows fetched per poll (30)"
    )
    parser.add_argument(
        "--sort", choices=SORTS, default="total_time", help="initial order (total_time)"
    )
    parser.add_argument(
        "--once",
        action="store_true",
        help="print one plain table and exit (calls/s: average since the stats window began)",
    )
    parser.add_argument(
        "--timeout",
        type=_positive_float,
        default=None,
        metavar="SECONDS",
        help="HTTP timeout per poll (the interval, at least 2 and at most 10)",
    )
    return parser


def _fail(message: str) -> int:
    print(f"dbproxy top: {one_line(message)}", file=sys.stderr)
    return EXIT_USAGE


def main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(list(argv))
    try:
        url = normalize_url(args.url)
    except ValueError as exc:
        return _fail(str(exc))
    timeout = args.timeout if args.timeout is not None else min(max(args.interval, 2.0), 10.0)
    token = environment().get("DBPROXY_API_TOKEN")
    if args.token_file:
        try:
            with open(args.token_file, encoding="utf-8") as fh:
                token = fh.read().removesuffix("\n").removesuffix("\r")
        except OSError as exc:
            return _fail(f"cannot read --token-file {args.token_file}: {exc.strerror or exc}")
    fetcher = Fetcher(url, timeout=timeout, token=token)
    try:
        first = fetcher.fetch(args.sort, args.limit)
    except TopError as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:
        return 130

    if args.once:
        width: int | None = None
        if sys.stdout.isatty():
            width = os.get_terminal_size(sys.stdout.fileno()).columns
        try:
            sys.stdout.write(plain_table(first, width))
            sys.stdout.flush()
        except BrokenPipeError:  # `dbproxy top --once | head`
            with contextlib.suppress(OSError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK

    if not sys.stdout.isatty():
        return _fail("stdout is not a terminal: use --once for a plain table")
    state = ViewState(
        url=url, interval=args.interval, limit=args.limit, sort=args.sort, snapshot=first
    )
    state.rates.update(first)
    return run_live(state, fetcher)
