"""The history's SQLite file under ``--state-dir``: 26 h of minutes, 14 days of hours.

Writes happen on one dedicated thread fed by a bounded queue (the drain hands it each
completed minute and returns at once); reads (start-up, the day-ago baseline, the API)
use a second connection under a lock, from a worker thread.  WAL mode lets both run.

Rows are sparse (a row exists only where a fingerprint ran) and hold only fingerprint
ids, database names, normalized query text and numbers — never a literal.  A minute row
written at shutdown (the open minute, partial) is merged (summed) with the same minute
written after a restart, so a restart loses at most the minute that was open when the
process died.

Schema changes bump :data:`SCHEMA_VERSION`; a file with another version, or one SQLite
cannot read, is moved aside (``history.sqlite.corrupt-<time>``) with a warning and a
fresh file is created: the proxy never fails to start because of its history.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Final

from dbproxy.observe.history import N_BUCKETS, Bucket, Key

__all__ = ["HOURS_KEPT", "MINUTES_KEPT", "SCHEMA_VERSION", "HistoryStore", "open_store"]

log = logging.getLogger(__name__)

SCHEMA_VERSION: Final = 1
FILE_NAME: Final = "history.sqlite"
MINUTES_KEPT: Final = 26 * 60
HOURS_KEPT: Final = 14 * 24
_QUEUE_SIZE: Final = 256  # completed minutes waiting for the writer (≈ 4 h of backlog)

_H = [f"h{i}" for i in range(N_BUCKETS)]
_STAT_COLUMNS = ["calls", "sum_ns", "rows", *_H]


def _table(name: str, unit: str) -> str:
    cols = ", ".join(f"{c} INTEGER NOT NULL DEFAULT 0" for c in _STAT_COLUMNS)
    return (
        f"CREATE TABLE IF NOT EXISTS {name} ({unit} INTEGER NOT NULL, fingerprint TEXT NOT NULL,"
        f" database TEXT NOT NULL, {cols}, PRIMARY KEY ({unit}, fingerprint, database))"
    )


_SCHEMA = [
    "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS fingerprints (fingerprint TEXT NOT NULL, database TEXT NOT"
    " NULL, query TEXT NOT NULL, first_minute INTEGER NOT NULL,"
    " PRIMARY KEY (fingerprint, database))",
    _table("minutes", "minute"),
    _table("hours", "hour"),
    "CREATE TABLE IF NOT EXISTS minute_errors (minute INTEGER NOT NULL, fingerprint TEXT NOT"
    " NULL, database TEXT NOT NULL, class TEXT NOT NULL, count INTEGER NOT NULL,"
    " PRIMARY KEY (minute, fingerprint, database, class))",
    "CREATE TABLE IF NOT EXISTS deploys (at REAL NOT NULL, version TEXT NOT NULL,"
    " source TEXT NOT NULL)",
]

_UPSERT_MINUTE = (
    f"INSERT INTO minutes (minute, fingerprint, database, {', '.join(_STAT_COLUMNS)}) "
    f"VALUES ({', '.join('?' * (3 + len(_STAT_COLUMNS)))}) "
    "ON CONFLICT (minute, fingerprint, database) DO UPDATE SET "
    + ", ".join(f"{c} = {c} + excluded.{c}" for c in _STAT_COLUMNS)
)
_UPSERT_ERRORS = (
    "INSERT INTO minute_errors VALUES (?, ?, ?, ?, ?) ON CONFLICT (minute, fingerprint,"
    " database, class) DO UPDATE SET count = count + excluded.count"
)
_ROLL_HOUR = (
    f"INSERT INTO hours (hour, fingerprint, database, {', '.join(_STAT_COLUMNS)}) "
    f"SELECT minute / 60, fingerprint, database, "
    f"{', '.join(f'sum({c})' for c in _STAT_COLUMNS)} FROM minutes "
    "WHERE minute >= ? AND minute < ? GROUP BY minute / 60, fingerprint, database "
    "ON CONFLICT (hour, fingerprint, database) DO UPDATE SET "
    + ", ".join(f"{c} = {c} + excluded.{c}" for c in _STAT_COLUMNS)
)

_Job = Callable[[sqlite3.Connection], None]


def _row(bucket: Bucket) -> list[int]:
    return [bucket.calls, bucket.sum_ns, bucket.rows, *bucket.counts]


def _bucket(values: tuple[int, ...]) -> Bucket:
    b = Bucket()
    b.calls, b.sum_ns, b.rows = values[0], values[1], values[2]
    b.counts = list(values[3 : 3 + N_BUCKETS])
    return b


class HistoryStore:
    """One SQLite file; :meth:`close` drains the writer queue."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.dropped_minutes = 0  # completed minutes the full queue could not take
        self.write_errors = 0
        self._reader = _connect(path)
        self._read_lock = threading.Lock()
        self._writer = _connect(path)
        self._queue: queue.Queue[_Job | None] = queue.Queue(_QUEUE_SIZE)
        self._known: set[Key] = set()
        self._rolled_hour = self._meta_int("rolled_hour")
        self._thread = threading.Thread(target=self._run, name="dbproxy-history", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ writer side
    def _run(self) -> None:
        # the writer connection is used on this thread only from now on
        while True:
            job = self._queue.get()
            try:
                if job is None:
                    return
                with self._writer:  # one transaction per job
                    job(self._writer)
            except sqlite3.Error:
                self.write_errors += 1
                log.warning("history: write to %s failed", self.path, exc_info=True)
            finally:
                self._queue.task_done()

    def _submit(self, job: _Job) -> bool:
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            self.dropped_minutes += 1
            return False
        return True

    def write_minute(
        self, minute: int, buckets: dict[Key, Bucket], queries: dict[Key, str] | None = None
    ) -> None:
        """Queue one completed minute (rows are built now: the buckets may be reused)."""
        rows = [(minute, fid, db, *_row(b)) for (fid, db), b in buckets.items()]
        errors = [
            (minute, fid, db, cls, n)
            for (fid, db), b in buckets.items()
            if b.errors
            for cls, n in b.errors.items()
        ]
        new = [k for k in buckets if k not in self._known]
        self._known.update(new)
        texts = queries or {}
        fingerprints = [(fid, db, texts.get((fid, db), ""), minute) for fid, db in new]

        def job(conn: sqlite3.Connection) -> None:
            conn.executemany(_UPSERT_MINUTE, rows)
            if errors:
                conn.executemany(_UPSERT_ERRORS, errors)
            if fingerprints:
                conn.executemany(
                    "INSERT OR IGNORE INTO fingerprints VALUES (?, ?, ?, ?)", fingerprints
                )
            self._roll_hours(conn, minute)

        self._submit(job)

    def _roll_hours(self, conn: sqlite3.Connection, minute: int) -> None:
        """Sum every completed hour not rolled yet into ``hours``; prune old rows."""
        hour = minute // 60
        if self._rolled_hour is None:
            self._rolled_hour = hour - 1
            self._set_meta(conn, "rolled_hour", self._rolled_hour)
            return
        if hour - 1 <= self._rolled_hour:
            return
        for h in range(self._rolled_hour + 1, hour):
            conn.execute(_ROLL_HOUR, (h * 60, (h + 1) * 60))
        self._rolled_hour = hour - 1
        self._set_meta(conn, "rolled_hour", self._rolled_hour)
        conn.execute("DELETE FROM minutes WHERE minute < ?", (minute - MINUTES_KEPT,))
        conn.execute("DELETE FROM minute_errors WHERE minute < ?", (minute - MINUTES_KEPT,))
        conn.execute("DELETE FROM hours WHERE hour < ?", (hour - HOURS_KEPT,))

    @staticmethod
    def _set_meta(conn: sqlite3.Connection, key: str, value: int) -> None:
        conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, str(value)))

    def add_deploy(self, at: float, version: str, source: str) -> None:
        def job(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT INTO deploys VALUES (?, ?, ?)", (at, version, source))

        self._submit(job)

    def flush(self, timeout: float = 10.0) -> None:
        """Wait until what was queued so far is written (tests, shutdown)."""
        done = threading.Event()
        if self._submit(lambda _conn: done.set()):
            done.wait(timeout)

    def close(self, timeout: float = 10.0) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout)
        with contextlib.suppress(sqlite3.Error):
            self._writer.close()
        with self._read_lock, contextlib.suppress(sqlite3.Error):
            self._reader.close()

    # ------------------------------------------------------------------ reader side
    @contextlib.contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        with self._read_lock:
            yield self._reader

    def _meta_int(self, key: str) -> int | None:
        with self._read() as conn:
            row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return int(row[0]) if row else None

    def minutes(self, start: int, end: int) -> list[tuple[int, dict[Key, Bucket]]]:
        """The stored minutes in ``[start, end)``, oldest first, with their errors."""
        out: dict[int, dict[Key, Bucket]] = {}
        cols = ", ".join(_STAT_COLUMNS)
        with self._read() as conn:
            for minute, fid, db, *values in conn.execute(
                f"SELECT minute, fingerprint, database, {cols} FROM minutes "
                "WHERE minute >= ? AND minute < ? ORDER BY minute",
                (start, end),
            ):
                out.setdefault(minute, {})[(fid, db)] = _bucket(tuple(values))
            for minute, fid, db, cls, n in conn.execute(
                "SELECT minute, fingerprint, database, class, count FROM minute_errors "
                "WHERE minute >= ? AND minute < ?",
                (start, end),
            ):
                b = out.get(minute, {}).get((fid, db))
                if b is not None:
                    if b.errors is None:
                        b.errors = {}
                    b.errors[cls] = n
        return sorted(out.items())

    def window(self, start: int, end: int) -> dict[Key, Bucket]:
        """Per key, the sum of the minutes in ``[start, end)`` (the day-ago baseline)."""
        sums = ", ".join(f"sum({c})" for c in _STAT_COLUMNS)
        out: dict[Key, Bucket] = {}
        with self._read() as conn:
            for fid, db, *values in conn.execute(
                f"SELECT fingerprint, database, {sums} FROM minutes "
                "WHERE minute >= ? AND minute < ? GROUP BY fingerprint, database",
                (start, end),
            ):
                out[(fid, db)] = _bucket(tuple(values))
            for fid, db, cls, n in conn.execute(
                "SELECT fingerprint, database, class, sum(count) FROM minute_errors "
                "WHERE minute >= ? AND minute < ? GROUP BY fingerprint, database, class",
                (start, end),
            ):
                b = out.get((fid, db))
                if b is not None:
                    if b.errors is None:
                        b.errors = {}
                    b.errors[cls] = n
        return out

    def fingerprints(self) -> list[tuple[str, str, str, int]]:
        """(fingerprint, database, normalized query, first minute) of every known key."""
        with self._read() as conn:
            rows = conn.execute(
                "SELECT fingerprint, database, query, first_minute FROM fingerprints"
            ).fetchall()
        self._known.update((fid, db) for fid, db, _, _ in rows)
        return [(str(a), str(b), str(c), int(d)) for a, b, c, d in rows]

    def series(
        self, fingerprint: str, database: str | None, table: str, start: int
    ) -> list[tuple[int, str, int, int, int, list[int]]]:
        """(unit, database, calls, sum_ns, rows, histogram) rows of one fingerprint."""
        unit = {"minutes": "minute", "hours": "hour"}[table]
        cols = ", ".join(_STAT_COLUMNS)
        sql = f"SELECT {unit}, database, {cols} FROM {table} WHERE fingerprint = ? AND {unit} >= ?"
        args: list[object] = [fingerprint, start]
        if database is not None:
            sql += " AND database = ?"
            args.append(database)
        with self._read() as conn:
            rows = conn.execute(sql + f" ORDER BY {unit}", args).fetchall()
        return [(r[0], r[1], r[2], r[3], r[4], list(r[5:])) for r in rows]

    def deploys(self, since: float) -> list[tuple[float, str, str]]:
        with self._read() as conn:
            rows = conn.execute(
                "SELECT at, version, source FROM deploys WHERE at >= ? ORDER BY at", (since,)
            ).fetchall()
        return [(float(a), str(v), str(s)) for a, v, s in rows]


def _connect(path: Path) -> sqlite3.Connection:
    # "with conn:" is one transaction; connections move between threads (under a lock)
    return sqlite3.connect(path, check_same_thread=False, timeout=5.0)


def _prepare(path: Path) -> None:
    """Create or check the file; raises sqlite3.Error / ValueError when it is unusable."""
    conn = sqlite3.connect(path, timeout=5.0)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        ok = conn.execute("PRAGMA quick_check").fetchone()
        if not ok or ok[0] != "ok":
            raise ValueError(f"quick_check: {ok[0] if ok else 'no answer'}")
        with conn:
            for statement in _SCHEMA:
                conn.execute(statement)
            row = conn.execute("SELECT version FROM schema_version").fetchone()
            if row is None:
                conn.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION,))
            elif row[0] != SCHEMA_VERSION:
                raise ValueError(f"schema version {row[0]}, expected {SCHEMA_VERSION}")
    finally:
        conn.close()


def open_store(state_dir: str, *, clock: Callable[[], float] = time.time) -> HistoryStore | None:
    """The store in ``state_dir`` (created if needed).  A corrupt or foreign file is moved
    aside and replaced; if even that fails, None (memory only) — never an exception."""
    directory = Path(state_dir)
    path = directory / FILE_NAME
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        log.warning(
            "history: cannot create --state-dir %s (%s); keeping history in memory only",
            directory,
            exc.strerror or exc,
        )
        return None
    for attempt in (1, 2):
        try:
            _prepare(path)
            return HistoryStore(path)
        except (sqlite3.Error, ValueError) as exc:
            if attempt == 2:
                break
            aside = path.with_name(f"{FILE_NAME}.corrupt-{int(clock())}")
            log.warning(
                "history: %s is unusable (%s); moved it to %s and starting a fresh one",
                path,
                exc,
                aside.name,
            )
            try:
                path.rename(aside)
                for suffix in ("-wal", "-shm"):
                    side = path.with_name(FILE_NAME + suffix)
                    if side.exists():
                        side.rename(aside.with_name(aside.name + suffix))
            except OSError as move_exc:
                log.warning("history: cannot move %s aside (%s)", path, move_exc)
                break
        except OSError as exc:
            log.warning("history: cannot open %s (%s)", path, exc)
            break
    log.warning("history: keeping history in memory only")
    return None
