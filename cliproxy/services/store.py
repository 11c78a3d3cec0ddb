"""Durable storage of auto-disable state: the append-only event history and the disabled pairs.

All SQL of the project lives here. The schema is plain SQL in `cliproxy/services/migrations/NNNN_name.sql`
(package data), applied in order, each file in one transaction together with its row in
`schema_migrations`.

Timestamps: the rest of the program holds wall-clock epoch seconds (floats); the database holds
ISO-8601 UTC text with milliseconds (`2026-11-21T23:59:01.123Z`), readable in the sqlite3 shell and
sortable as text. Conversion happens only here, and a stored time is the epoch value *rounded to
the millisecond*: a float read back equals `round_timestamp(original)`, so a value that already
has millisecond precision round-trips exactly.

Two ways in:

* `SQLiteStore` (async, for the server): one `aiosqlite` connection (aiosqlite runs a stdlib
  connection on its own worker thread). An `asyncio.Lock` makes calls run one after another, and
  every write is one transaction (`BEGIN IMMEDIATE` ... `COMMIT`, `ROLLBACK` on error). Each call
  runs as its own task that the caller awaits through `asyncio.shield`: a caller cancelled while
  its transaction is under way does not interrupt it (it still commits or rolls back, and the next
  call queues behind it on the lock), and a caller cancelled while still waiting for the lock
  withdraws its call, which then never runs. WAL journal, `synchronous=FULL` (a committed disable
  survives kill -9 and power loss), `busy_timeout`, `foreign_keys`.
* Synchronous functions (stdlib `sqlite3`) for start-up and the operator CLI: `apply_migrations`,
  `pending_migrations`, and the read-only `read_disabled` / `read_events`, which open the file with
  `mode=ro` and work while the server is stopped or running.

The SQL text, its parameters and the row <-> dataclass mapping are shared by both ways in.

The file under the server's feet. Before every call `SQLiteStore` checks that the path still names
the file it opened (`st_dev`, `st_ino`) and that the database and its `-wal`/`-shm` are writable
(one `stat` and three `access` calls). SQLite maps `-shm` into memory: touching that mapping after
the file was made immutable (`chattr +i`) kills the process with SIGBUS, and a connection to a
deleted or replaced file writes where nobody will read. So on a problem the connection is not
touched at all: the call fails with `DatabaseFileProblem` (an `sqlite3.OperationalError`), logged
at ERROR once per outage, and `ping` answers False (`/readyz` 503). When the path was deleted or
replaced and can be written again, the database is recreated there (migrations applied) and given
what this store still holds: the events it committed in this run (the newest
`EVENTS_KEPT_IN_MEMORY`; those already in the file are not written twice) and the current
`disabled_pairs`. A connection left on an unwritable file is never closed (closing checkpoints
through `-shm`): it is parked until the process exits.

Errors from SQLite propagate as `sqlite3.Error` (aiosqlite raises sqlite3's own); nothing is
swallowed (except by `ping`, whose answer is the boolean). Nothing secret is added here: error
excerpts arrive already masked.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import logging
import os
import re
import sqlite3
import tempfile
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from contextlib import closing
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Protocol, TypeVar, runtime_checkable

import aiosqlite

from cliproxy.core.events import DisabledRecord, ErrorInfo, Event
from cliproxy.core.times import format_timestamp, parse_iso

__all__ = [
    "BUSY_TIMEOUT_MS",
    "DatabaseFileProblem",
    "EVENTS_KEPT_IN_MEMORY",
    "MigrationError",
    "SQLiteStore",
    "Store",
    "BackupResult",
    "apply_migrations",
    "backup",
    "default_migrations_dir",
    "format_timestamp",
    "parse_timestamp",
    "pending_migrations",
    "read_disabled",
    "read_events",
    "round_timestamp",
]

#: How long a statement waits for another connection's lock before failing with "database is locked".
BUSY_TIMEOUT_MS = 5000

#: Events committed in this run that are kept in memory to refill a database file deleted or replaced
#: under the running server (about 1 KiB each).
EVENTS_KEPT_IN_MEMORY = 10_000

_log = logging.getLogger("cliproxy.store")  # the name operators grep for; kept across the move

_T = TypeVar("_T")

# --------------------------------------------------------------------------------------------
# Timestamps
# --------------------------------------------------------------------------------------------

# One format for every timestamp cliproxy writes: `cliproxy.core.times` (re-exported here for callers).


def parse_timestamp(text: str) -> float:
    """ISO-8601 text as stored (`...Z`, or with an offset; naive means UTC) -> epoch seconds."""
    return parse_iso(text)


def round_timestamp(epoch_seconds: float) -> float:
    """The value an epoch time has after a trip through the store (millisecond precision)."""
    return round(epoch_seconds * 1000) / 1000


def _ts_out(value: float | None) -> str | None:
    return None if value is None else format_timestamp(value)


def _ts_in(value: str | None) -> float | None:
    return None if value is None else parse_timestamp(value)


# --------------------------------------------------------------------------------------------
# Row <-> dataclass: the one mapping, shared by the async store and the sync helpers
# --------------------------------------------------------------------------------------------

_EVENT_COLUMNS = (
    "at",
    "kind",
    "vendor",
    "model",
    "reason",
    "cause",
    "disabled_at",
    "disabled_until",
    "failure_count",
    "window_started_at",
    "threshold",
    "window_seconds",
    "duration_seconds",
    "settings",
    "last_status",
    "last_error",
    "actor",
    "detail",
    "last_failure_at",
)

_DISABLED_COLUMNS = (
    "vendor",
    "model",
    "reason",
    "disabled_at",
    "disabled_until",
    "failure_count",
    "window_started_at",
    "last_status",
    "last_error",
    "actor",
    "last_failure_at",
)

#: Event.settings key -> events column holding a copy of it for queries.
_SETTINGS_COLUMNS = {
    "failure_threshold": "threshold",
    "time_window_seconds": "window_seconds",
    "disable_duration_seconds": "duration_seconds",
}


def _json_default(value: Any) -> Any:
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    raise TypeError(f"not JSON-serialisable for the store: {type(value).__name__}")


def _json_out(value: dict | None) -> str | None:
    if value is None:
        return None
    return json.dumps(value, sort_keys=True, ensure_ascii=False, default=_json_default)


def _json_in(text: str | None) -> dict | None:
    return None if text is None else json.loads(text)


def _error_in(row: Mapping[str, Any]) -> ErrorInfo | None:
    if row["last_status"] is None and row["last_error"] is None:
        return None
    return ErrorInfo(status=row["last_status"], message=row["last_error"] or "")


def event_to_row(event: Event) -> dict[str, Any]:
    """An Event as the named parameters of an `events` row (its `id` is ignored: the store assigns it).

    `settings` is stored whole as JSON (sets become sorted lists) and its three known keys are
    copied into threshold / window_seconds / duration_seconds.
    """
    settings = event.settings or {}
    row: dict[str, Any] = {
        "at": format_timestamp(event.at),
        "kind": event.kind,
        "vendor": event.vendor,
        "model": event.model,
        "reason": event.reason,
        "cause": event.cause,
        "disabled_at": _ts_out(event.disabled_at),
        "disabled_until": _ts_out(event.disabled_until),
        "failure_count": event.failure_count,
        "window_started_at": _ts_out(event.window_started_at),
        "settings": _json_out(event.settings),
        "last_status": event.last_error.status if event.last_error else None,
        "last_error": event.last_error.message if event.last_error else None,
        "actor": event.actor,
        "detail": _json_out(event.detail),
        "last_failure_at": _ts_out(event.last_failure_at),
    }
    for key, column in _SETTINGS_COLUMNS.items():
        row[column] = settings.get(key)
    return row


def row_to_event(row: Mapping[str, Any]) -> Event:
    """An `events` row (with `id`) back into the Event that was recorded."""
    return Event(
        id=row["id"],
        kind=row["kind"],
        at=parse_timestamp(row["at"]),
        vendor=row["vendor"],
        model=row["model"],
        reason=row["reason"],
        cause=row["cause"],
        disabled_at=_ts_in(row["disabled_at"]),
        disabled_until=_ts_in(row["disabled_until"]),
        failure_count=row["failure_count"],
        window_started_at=_ts_in(row["window_started_at"]),
        settings=_json_in(row["settings"]),
        last_error=_error_in(row),
        actor=row["actor"],
        detail=_json_in(row["detail"]),
        last_failure_at=_ts_in(row["last_failure_at"]),
    )


def disabled_to_row(record: DisabledRecord) -> dict[str, Any]:
    """A DisabledRecord as the named parameters of a `disabled_pairs` row."""
    return {
        "vendor": record.vendor,
        "model": record.model,
        "reason": record.reason,
        "disabled_at": format_timestamp(record.disabled_at),
        "disabled_until": _ts_out(record.disabled_until),
        "failure_count": record.failure_count,
        "window_started_at": _ts_out(record.window_started_at),
        "last_status": record.last_error.status if record.last_error else None,
        "last_error": record.last_error.message if record.last_error else None,
        "actor": record.actor,
        "last_failure_at": _ts_out(record.last_failure_at),
    }


def row_to_disabled(row: Mapping[str, Any]) -> DisabledRecord:
    """A `disabled_pairs` row back into a DisabledRecord."""
    return DisabledRecord(
        vendor=row["vendor"],
        model=row["model"],
        reason=row["reason"],
        disabled_at=parse_timestamp(row["disabled_at"]),
        disabled_until=_ts_in(row["disabled_until"]),
        failure_count=row["failure_count"],
        window_started_at=_ts_in(row["window_started_at"]),
        last_error=_error_in(row),
        actor=row["actor"],
        last_failure_at=_ts_in(row["last_failure_at"]),
    )


# --------------------------------------------------------------------------------------------
# SQL: the statements and their parameters (shared by both paths), and the stdlib runners
# --------------------------------------------------------------------------------------------

_INSERT_EVENT = (
    f"INSERT INTO events ({', '.join(_EVENT_COLUMNS)}) "
    f"VALUES ({', '.join(':' + c for c in _EVENT_COLUMNS)})"
)

_UPSERT_DISABLED = (
    f"INSERT INTO disabled_pairs ({', '.join(_DISABLED_COLUMNS)}, event_id) "
    f"VALUES ({', '.join(':' + c for c in _DISABLED_COLUMNS)}, :event_id) "
    "ON CONFLICT (vendor, model, reason) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in (*_DISABLED_COLUMNS[3:], "event_id"))
)

_DELETE_DISABLED = "DELETE FROM disabled_pairs WHERE vendor = ? AND model = ? AND reason = ?"

# An event already in the file (a restored copy may hold some of the events being written back).
_FIND_EVENT = (
    "SELECT id FROM events WHERE at = :at AND kind = :kind AND vendor IS :vendor AND model IS :model "
    "AND reason IS :reason AND cause IS :cause AND actor IS :actor LIMIT 1"
)

_SELECT_DISABLED = (
    f"SELECT {', '.join(_DISABLED_COLUMNS)} FROM disabled_pairs ORDER BY vendor, model, reason"
)

# Take the write lock and read the schema, then let go: proves the file is there, readable and
# lockable for writing, without writing anything.
_PING = "SELECT count(*) FROM schema_migrations"

#: Every connection: wait for other connections' locks instead of failing at once.
_PRAGMAS_ALL = (f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}",)
#: Read-write connections in addition.
_PRAGMAS_RW = (
    "PRAGMA journal_mode = WAL",  # persistent in the file
    "PRAGMA synchronous = FULL",  # fsync the WAL at every commit
    "PRAGMA foreign_keys = ON",
)


def _events_query(
    *,
    vendor: str | None,
    model: str | None,
    kind: str | None,
    since: float | None,
    before_id: int | None,
    limit: int,
) -> tuple[str, list[Any]]:
    """The SELECT (and its parameters) behind `Store.events` / `read_events`."""
    if limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    where: list[str] = []
    params: list[Any] = []
    for column, value in (("vendor", vendor), ("model", model), ("kind", kind)):
        if value is not None:
            where.append(f"{column} = ?")
            params.append(value)
    if since is not None:
        where.append("at >= ?")
        params.append(format_timestamp(since))
    if before_id is not None:
        where.append("id < ?")
        params.append(before_id)
    sql = f"SELECT id, {', '.join(_EVENT_COLUMNS)} FROM events"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY id DESC LIMIT ?"
    params.append(limit)
    return sql, params


def _upsert_disabled_params(record: DisabledRecord, event_id: int) -> dict[str, Any]:
    return {**disabled_to_row(record), "event_id": event_id}


def _configure(conn: sqlite3.Connection, *, read_only: bool = False) -> None:
    conn.row_factory = sqlite3.Row
    for pragma in _PRAGMAS_ALL if read_only else (*_PRAGMAS_ALL, *_PRAGMAS_RW):
        conn.execute(pragma)


def _connect_rw(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)  # we issue BEGIN/COMMIT ourselves
    try:
        _configure(conn)
    except BaseException:
        conn.close()
        raise
    return conn


def _connect_ro(path: str | os.PathLike) -> sqlite3.Connection:
    resolved = Path(path).resolve()
    if not resolved.is_file():
        raise FileNotFoundError(f"no database at {resolved}")
    conn = sqlite3.connect(f"{resolved.as_uri()}?mode=ro", uri=True, isolation_level=None)
    try:
        _configure(conn, read_only=True)
    except BaseException:
        conn.close()
        raise
    return conn


def _in_write_transaction(conn: sqlite3.Connection, body: Callable[[sqlite3.Connection], _T]) -> _T:
    """Run `body` inside BEGIN IMMEDIATE ... COMMIT; roll back on any error and re-raise it."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = body(conn)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return result


def _select_disabled(conn: sqlite3.Connection) -> list[DisabledRecord]:
    return [row_to_disabled(row) for row in conn.execute(_SELECT_DISABLED)]


def _select_events(conn: sqlite3.Connection, **filters: Any) -> list[Event]:
    sql, params = _events_query(**filters)
    return [row_to_event(row) for row in conn.execute(sql, params)]


# --------------------------------------------------------------------------------------------
# Migrations
# --------------------------------------------------------------------------------------------


class MigrationError(Exception):
    """A migration could not be applied (or found); the database is left as it was before that file.

    `path` is the migration file (or directory), `line` the line of the failing statement when
    known, `sqlite_message` SQLite's own message when SQLite raised.
    """

    def __init__(
        self,
        message: str,
        *,
        path: Path | None = None,
        line: int | None = None,
        sqlite_message: str | None = None,
    ) -> None:
        super().__init__(message)
        self.path = path
        self.line = line
        self.sqlite_message = sqlite_message


@dataclass(frozen=True, slots=True)
class _Migration:
    version: int
    name: str  # the file name
    path: Path


_MIGRATION_NAME = re.compile(r"^(\d{4})_[A-Za-z0-9_]+\.sql$")
_TRANSACTION_CONTROL = {"BEGIN", "COMMIT", "END", "ROLLBACK"}

_CREATE_SCHEMA_MIGRATIONS = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    INTEGER PRIMARY KEY,
    name       TEXT NOT NULL,
    applied_at TEXT NOT NULL
)"""


def default_migrations_dir() -> Path:
    """The migration files shipped with the package (`cliproxy/services/migrations`, package data).

    Found through `importlib.resources`, so a wheel install, an editable install and a source
    checkout all read the same files; a package installed without them is a broken install.
    """
    directory = resources.files("cliproxy.services") / "migrations"
    # A wheel is unpacked into plain files, so this is a Path; the runner lists the directory and
    # names files in its errors, which a zip-imported Traversable could not offer.
    if not isinstance(directory, Path) or not (directory / "0001_initial.sql").is_file():
        raise MigrationError(
            f"the migration files are missing from the installed package (looked in {directory}); "
            "reinstall cliproxy",
            path=Path(str(directory)),
        )
    return directory


def _discover(migrations_dir: Path | None) -> list[_Migration]:
    directory = Path(migrations_dir) if migrations_dir is not None else default_migrations_dir()
    if not directory.is_dir():
        raise MigrationError(f"migrations directory {directory} does not exist", path=directory)
    found: dict[int, _Migration] = {}
    for path in sorted(directory.glob("*.sql")):
        match = _MIGRATION_NAME.match(path.name)
        if match is None:
            raise MigrationError(
                f"migration file {path.name} is not named NNNN_name.sql (in {directory})", path=path
            )
        version = int(match.group(1))
        if version in found:
            raise MigrationError(
                f"migration files {found[version].name} and {path.name} share version {version}", path=path
            )
        found[version] = _Migration(version, path.name, path)
    return [found[v] for v in sorted(found)]


def _skip_leading_comments(text: str, start: int = 0) -> int:
    """Index of the first character of `text[start:]` that is neither whitespace nor a comment."""
    i, n = start, len(text)
    while i < n:
        if text[i].isspace():
            i += 1
        elif text.startswith("--", i):
            newline = text.find("\n", i)
            i = n if newline < 0 else newline + 1
        elif text.startswith("/*", i):
            end = text.find("*/", i + 2)
            i = n if end < 0 else end + 2
        else:
            break
    return i


def _split_statements(script: str) -> list[tuple[int, str]]:
    """Split a SQL script into (line number, statement) using SQLite's own notion of a complete
    statement, so semicolons inside strings, comments and trigger bodies are handled."""
    statements: list[tuple[int, str]] = []
    start = 0
    pos = 0
    while True:
        semicolon = script.find(";", pos)
        if semicolon < 0:
            break
        pos = semicolon + 1
        chunk = script[start:pos]
        if sqlite3.complete_statement(chunk):
            begin = _skip_leading_comments(script, start)
            if script[begin:pos].strip() != ";":
                statements.append((script.count("\n", 0, begin) + 1, script[begin:pos]))
            start = pos
    begin = _skip_leading_comments(script, start)
    if begin < len(script):  # trailing text without a final semicolon: let SQLite judge it
        statements.append((script.count("\n", 0, begin) + 1, script[begin:]))
    return statements


def _applied_versions(conn: sqlite3.Connection) -> set[int]:
    exists = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'"
    ).fetchone()
    if not exists:
        return set()
    return {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}


def _apply_one(conn: sqlite3.Connection, migration: _Migration) -> bool:
    """Apply one migration file and record it, in one transaction. False if it was already applied."""
    try:
        script = migration.path.read_text(encoding="utf-8")
    except OSError as exc:
        raise MigrationError(f"cannot read migration {migration.name}: {exc}", path=migration.path) from exc
    statements = _split_statements(script)
    for line, statement in statements:
        keyword = re.match(r"[A-Za-z]*", statement).group(0).upper()
        if keyword in _TRANSACTION_CONTROL:
            raise MigrationError(
                f"migration {migration.name} line {line}: {keyword} is not allowed in a migration "
                "(each file already runs in one transaction)",
                path=migration.path,
                line=line,
            )

    def body(c: sqlite3.Connection) -> bool:
        c.execute(_CREATE_SCHEMA_MIGRATIONS)
        if c.execute("SELECT 1 FROM schema_migrations WHERE version = ?", (migration.version,)).fetchone():
            return False  # applied meanwhile by another process
        for line, statement in statements:
            try:
                c.execute(statement)
            except sqlite3.Error as exc:
                raise MigrationError(
                    f"migration {migration.name} failed at line {line}: {exc}; "
                    "the database was left as it was before this file",
                    path=migration.path,
                    line=line,
                    sqlite_message=str(exc),
                ) from exc
        c.execute(
            "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
            (migration.version, migration.name, format_timestamp(time.time())),
        )
        return True

    try:
        return _in_write_transaction(conn, body)
    except MigrationError:
        raise
    except sqlite3.Error as exc:  # BEGIN or COMMIT failed (locked, disk full, ...)
        raise MigrationError(
            f"migration {migration.name} could not be committed: {exc}; "
            "the database was left as it was before this file",
            path=migration.path,
            sqlite_message=str(exc),
        ) from exc


def _refuse_newer_schema(db_path: Path, applied: set[int], migrations: list[_Migration]) -> None:
    """A database migrated by a newer cliproxy has tables this version does not know how to keep
    consistent: refuse to run on it rather than write rows the newer code would misread."""
    known = max((m.version for m in migrations), default=0)
    newest = max(applied, default=0)
    if newest > known:
        raise MigrationError(
            f"database {db_path} has schema version {newest}, newer than this cliproxy knows "
            f"(up to {known}): it was used by a newer cliproxy; upgrade cliproxy (or restore a backup)",
            path=db_path,
        )


def apply_migrations(path: str | os.PathLike, migrations_dir: Path | None = None) -> list[str]:
    """Apply the pending migrations to the database at `path` (created, with its parent directory,
    if missing), in version order, each in its own transaction with its `schema_migrations` row.

    Returns the file names applied (empty when up to date: then nothing is written). Stops at the
    first failure with `MigrationError`; earlier files of the same run stay applied.
    """
    migrations = _discover(migrations_dir)
    db_path = Path(path)
    db_path.parent.mkdir(parents=True, exist_ok=True)
    applied: list[str] = []
    with closing(_connect_rw(db_path)) as conn:
        done = _applied_versions(conn)
        _refuse_newer_schema(db_path, done, migrations)
        for migration in migrations:
            if migration.version not in done and _apply_one(conn, migration):
                applied.append(migration.name)
    return applied


def pending_migrations(path: str | os.PathLike, migrations_dir: Path | None = None) -> list[str]:
    """The migration file names not yet applied to the database at `path` (all, if it does not exist).

    Opens the database read-only; creates nothing.
    """
    migrations = _discover(migrations_dir)
    if not Path(path).exists():
        return [m.name for m in migrations]
    with closing(_connect_ro(path)) as conn:
        done = _applied_versions(conn)
    _refuse_newer_schema(Path(path), done, migrations)
    return [m.name for m in migrations if m.version not in done]


# --------------------------------------------------------------------------------------------
# Synchronous read-only helpers (operator CLI; safe while the server runs)
# --------------------------------------------------------------------------------------------


def read_disabled(path: str | os.PathLike) -> list[DisabledRecord]:
    """The pairs disabled now, read-only, ordered by vendor, model, reason."""
    with closing(_connect_ro(path)) as conn:
        return _select_disabled(conn)


def read_events(
    path: str | os.PathLike,
    *,
    vendor: str | None = None,
    model: str | None = None,
    kind: str | None = None,
    since: float | None = None,
    before_id: int | None = None,
    limit: int = 100,
) -> list[Event]:
    """Events newest first, read-only; same filters as `Store.events`."""
    with closing(_connect_ro(path)) as conn:
        return _select_events(
            conn, vendor=vendor, model=model, kind=kind, since=since, before_id=before_id, limit=limit
        )


@dataclass(frozen=True, slots=True)
class BackupResult:
    """What `backup` copied."""

    path: Path
    events: int
    disabled_pairs: int
    size_bytes: int


def backup(source: str | os.PathLike, destination: str | os.PathLike, *, overwrite: bool = False) -> BackupResult:
    """A consistent copy of the database at `source`, safe while the server writes to it.

    SQLite's online backup API (`sqlite3.Connection.backup`) in one step, from a read-only
    connection: it copies the committed state as of one moment, WAL content included, which a file
    copy of a WAL database does not promise. The copy is written to a temporary file beside
    `destination`, checked (`PRAGMA quick_check`), fsynced and renamed into place, so a failed or
    interrupted backup never leaves a half-written file under that name. An existing `destination`
    is refused (FileExistsError) unless `overwrite`.
    """
    target = Path(destination)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} exists (pass --force to overwrite it)")
    if target.is_dir():
        raise IsADirectoryError(f"{target} is a directory")
    fd, temp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    temp = Path(temp_name)
    try:
        with closing(_connect_ro(source)) as src, closing(sqlite3.connect(temp, isolation_level=None)) as dst:
            src.backup(dst)  # pages=-1: all in one step, one read transaction: one consistent moment
            dst.execute("PRAGMA journal_mode = DELETE")  # a single self-contained file: no -wal beside it
            check = dst.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise sqlite3.DatabaseError(f"the copy fails quick_check: {check}")
            events = dst.execute("SELECT count(*) FROM events").fetchone()[0]
            disabled = dst.execute("SELECT count(*) FROM disabled_pairs").fetchone()[0]
        with open(temp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(temp, target)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    directory = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # the rename itself survives a power cut
    finally:
        os.close(directory)
    return BackupResult(target.resolve(), events, disabled, target.stat().st_size)


# --------------------------------------------------------------------------------------------
# The async store
# --------------------------------------------------------------------------------------------


@runtime_checkable
class Store(Protocol):
    """What the failure tracker needs from durable storage; another backend could implement it."""

    async def record(
        self,
        event: Event,
        *,
        set_disabled: DisabledRecord | None = None,
        clear_disabled: tuple[str, str, str] | None = None,
    ) -> int:
        """Append `event` and, in the same transaction, delete the current-state row
        `clear_disabled` = (vendor, model, reason) and/or insert-or-replace `set_disabled`
        (the delete runs first). Returns the new event's id."""
        ...

    async def load_disabled(self) -> list[DisabledRecord]:
        """Every current-state row (expired ones included: the caller decides)."""
        ...

    async def events(
        self,
        *,
        vendor: str | None = None,
        model: str | None = None,
        kind: str | None = None,
        since: float | None = None,
        before_id: int | None = None,
        limit: int = 100,
    ) -> list[Event]:
        """Events newest first (by id), filtered; `since` inclusive on `at`; `before_id` exclusive,
        for paging: pass the smallest id of the previous page."""
        ...

    async def ping(self) -> bool:
        """True when the database answers and its write lock can be taken."""
        ...

    async def close(self) -> None:
        """Release the connection; further calls fail (ping answers False)."""
        ...


async def _connect_async(path: Path) -> aiosqlite.Connection:
    conn = await aiosqlite.connect(path, isolation_level=None)  # we issue BEGIN/COMMIT ourselves
    try:
        conn.row_factory = sqlite3.Row
        for pragma in (*_PRAGMAS_ALL, *_PRAGMAS_RW):
            await conn.execute(pragma)
    except BaseException:
        await conn.close()
        raise
    return conn


async def _in_write_transaction_async(
    conn: aiosqlite.Connection, body: Callable[[aiosqlite.Connection], Awaitable[_T]]
) -> _T:
    """Run `body` inside BEGIN IMMEDIATE ... COMMIT; roll back on any error and re-raise it."""
    try:
        await conn.execute("BEGIN IMMEDIATE")
        result = await body(conn)
        await conn.execute("COMMIT")
    except BaseException:
        # Queued on aiosqlite's thread behind any statement still in flight, so it acts on the final
        # state; "no transaction is active" (BEGIN failed, or SQLite already rolled back) is fine.
        try:
            await conn.execute("ROLLBACK")
        except sqlite3.OperationalError:
            if conn.in_transaction:
                raise
        raise
    return result


class DatabaseFileProblem(sqlite3.OperationalError):
    """The database path no longer names the writable file the store has open (deleted, replaced,
    made unwritable); nothing was sent to SQLite."""


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_dev, st.st_ino)


def _sidecars(path: Path) -> tuple[Path, Path]:
    return (path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm"))


_parked: list[Any] = []  # connections on unwritable files: never closed, never collected


def _park(conn: aiosqlite.Connection) -> None:
    """Stop the connection's thread without closing the SQLite connection, and keep it for ever.

    Closing it would checkpoint through the `-shm` mapping of a file that can no longer be
    written, which kills the process with SIGBUS; the OS releases everything at exit.
    """
    inner = getattr(conn, "_connection", None)
    if inner is not None:
        ctypes.pythonapi.Py_IncRef(ctypes.py_object(inner))  # not even interpreter shutdown frees it
        _parked.append(inner)
    conn._connection = None  # aiosqlite's stop() would close it otherwise
    conn.stop()


class SQLiteStore:
    """The SQLite implementation of `Store` on one aiosqlite connection; see the module doc."""

    def __init__(self, path: Path, conn: aiosqlite.Connection, *, migrations_dir: Path | None = None) -> None:
        """Use `await SQLiteStore.open(path)`."""
        self.path = path
        self._conn: aiosqlite.Connection | None = conn
        self._lock = asyncio.Lock()  # one call at a time on the connection, in call order
        self._tasks: set[asyncio.Task[Any]] = set()  # strong references to calls in flight
        self._migrations_dir = migrations_dir
        self._identity = _identity(path)
        self._unwritable_at_open = self._unwritable_files()
        self._problem: str | None = None  # set while the file is not usable (logged once)
        self._lost = False  # the path no longer names our file: recreate before the next call
        # What this run committed, to refill a recreated file: the newest events, and the current
        # disabled_pairs rows with the event that wrote each.
        self._recent: deque[Event] = deque(maxlen=EVENTS_KEPT_IN_MEMORY)
        self._dropped = 0
        self._disabled: dict[tuple[str, str, str], tuple[DisabledRecord, Event | None]] = {}
        self._mirror_loaded = False

    @classmethod
    async def open(cls, path: str | os.PathLike, *, migrations_dir: Path | None = None) -> SQLiteStore:
        """Create the parent directory if missing, apply pending migrations, open the connection."""
        db_path = Path(path)
        await asyncio.to_thread(apply_migrations, db_path, migrations_dir)
        return cls(db_path, await _connect_async(db_path), migrations_dir=migrations_dir)

    @property
    def file_problem(self) -> str | None:
        """Why the database file is not usable now (checked afresh), or None."""
        return self._file_problem()

    def _file_problem(self, *, write: bool = True) -> str | None:
        """Why the file cannot take a write (`write`), or a read, now; None when it can.

        A read is refused only when a file became unwritable AFTER it was opened: SQLite mapped its
        `-shm` writable then, and even a read marks it. A file unwritable from the start was
        opened read-only by SQLite and reads are safe.
        """
        identity = _identity(self.path)
        if identity is None:
            return f"the database file {self.path} was deleted"
        if identity != self._identity:
            return f"the database file {self.path} was replaced by another file"
        unwritable = self._unwritable_files()
        if not write:
            unwritable = [c for c in unwritable if c not in self._unwritable_at_open]
        if unwritable:
            return f"{unwritable[0]} is not writable"
        return None

    def _unwritable_files(self) -> list[Path]:
        return [c for c in (self.path, *_sidecars(self.path)) if c.exists() and not os.access(c, os.W_OK)]

    def _check_file(self, *, write: bool = True) -> None:
        """Raise DatabaseFileProblem (logged at ERROR once per outage) unless the file is ours and usable."""
        problem = self._file_problem(write=write)
        if problem is None:
            if self._problem is not None:
                _log.warning("the database file %s is writable again", self.path)
            self._problem = None
            return
        if problem != self._problem:
            _log.error("database problem: %s; state changes are kept in memory and written once it is back", problem)
        self._problem = problem
        if _identity(self.path) != self._identity:
            self._lost = True
        raise DatabaseFileProblem(problem)

    async def _recreate(self) -> None:
        """The path no longer names our file: leave the old connection, open (create) the database at the
        path, and write back the events and disabled pairs this run holds. Raises while that cannot be done."""
        old, self._conn = self._conn, None
        if old is not None:
            if [c for c in self._unwritable_files() if c not in self._unwritable_at_open]:
                _park(old)
            else:
                # SQLite does not checkpoint into a file that was moved or unlinked: closing is safe.
                try:
                    await old.close()
                except Exception as exc:  # the file is gone: nothing to lose here
                    _log.warning("closing the connection to the lost database file failed: %r", exc)
        if _identity(self.path) is None:  # a -wal/-shm without its database is stale: never replay it
            for sidecar in _sidecars(self.path):
                sidecar.unlink(missing_ok=True)
        directory = self.path.parent
        if not os.access(directory, os.W_OK | os.X_OK):
            raise DatabaseFileProblem(f"the directory {directory} is not writable: cannot recreate the database")
        if self.path.exists() and not os.access(self.path, os.W_OK):
            raise DatabaseFileProblem(f"{self.path} is not writable: cannot recreate the database")
        await asyncio.to_thread(apply_migrations, self.path, self._migrations_dir)
        conn = await _connect_async(self.path)
        try:
            events, rows = await _in_write_transaction_async(conn, self._refill)
        except BaseException:
            await conn.close()
            raise
        self._conn = conn
        self._identity = _identity(self.path)
        self._unwritable_at_open = self._unwritable_files()
        self._lost = False
        self._problem = None
        dropped = f" ({self._dropped} older events of this run were no longer held)" if self._dropped else ""
        _log.warning(
            "the database file %s was recreated: %d events and %d disabled pairs written back%s",
            self.path, events, rows, dropped,
        )

    async def _refill(self, conn: aiosqlite.Connection) -> tuple[int, int]:
        ids: dict[int, int] = {}
        written = 0
        for event in self._recent:
            row = event_to_row(event)
            found = await conn.execute_fetchall(_FIND_EVENT, row)
            if found:
                ids[id(event)] = found[0][0]
                continue
            ids[id(event)] = (await conn.execute(_INSERT_EVENT, row)).lastrowid  # type: ignore[assignment]
            written += 1
        await conn.execute("DELETE FROM disabled_pairs")
        for record, event in self._disabled.values():
            event_id = ids.get(id(event)) if event is not None else None
            await conn.execute(_UPSERT_DISABLED, _upsert_disabled_params(record, event_id))  # type: ignore[arg-type]
        return written, len(self._disabled)

    def _spawn(self, coro: Coroutine[Any, Any, _T]) -> asyncio.Task[_T]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _run(self, body: Callable[[aiosqlite.Connection], Awaitable[_T]], *, write: bool = False) -> _T:
        if self._conn is None and not self._lost:
            raise RuntimeError(f"store {self.path} is closed")
        started = False

        async def call() -> _T:
            nonlocal started
            async with self._lock:
                started = True
                if self._lost:
                    await self._recreate()
                try:
                    self._check_file(write=write)
                except DatabaseFileProblem:
                    if not self._lost:
                        raise
                    await self._recreate()  # deleted or replaced just now
                conn = self._conn
                if conn is None:
                    raise RuntimeError(f"store {self.path} is closed")
                return await body(conn)

        task = self._spawn(call())
        try:
            # Once it holds the lock the call runs to its end (COMMIT or ROLLBACK) even if our
            # caller is cancelled; the next call waits for it on the lock.
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            if not started:
                task.cancel()  # still waiting for the lock: nothing done yet, withdraw it
            raise

    async def record(
        self,
        event: Event,
        *,
        set_disabled: DisabledRecord | None = None,
        clear_disabled: tuple[str, str, str] | None = None,
    ) -> int:
        async def body(conn: aiosqlite.Connection) -> int:
            event_id = (await conn.execute(_INSERT_EVENT, event_to_row(event))).lastrowid
            assert event_id is not None
            if clear_disabled is not None:
                await conn.execute(_DELETE_DISABLED, tuple(clear_disabled))
            if set_disabled is not None:
                await conn.execute(_UPSERT_DISABLED, _upsert_disabled_params(set_disabled, event_id))
            return event_id

        async def transaction(conn: aiosqlite.Connection) -> int:
            event_id = await _in_write_transaction_async(conn, body)
            # Committed: remember it for a recreated file (under the lock, so no recreation misses it).
            if len(self._recent) == self._recent.maxlen:
                self._dropped += 1
            self._recent.append(event)
            if clear_disabled is not None:
                self._disabled.pop(tuple(clear_disabled), None)  # type: ignore[arg-type]
            if set_disabled is not None:
                self._disabled[(set_disabled.vendor, set_disabled.model, set_disabled.reason)] = (set_disabled, event)
            return event_id

        if not self._mirror_loaded:
            await self.load_disabled()
        return await self._run(transaction, write=True)

    async def load_disabled(self) -> list[DisabledRecord]:
        async def body(conn: aiosqlite.Connection) -> list[DisabledRecord]:
            return [row_to_disabled(row) for row in await conn.execute_fetchall(_SELECT_DISABLED)]

        records = await self._run(body)
        if not self._mirror_loaded:  # the rows of the file as opened, to refill a recreated file
            self._disabled = {(r.vendor, r.model, r.reason): (r, None) for r in records}
            self._mirror_loaded = True
        return records

    async def events(
        self,
        *,
        vendor: str | None = None,
        model: str | None = None,
        kind: str | None = None,
        since: float | None = None,
        before_id: int | None = None,
        limit: int = 100,
    ) -> list[Event]:
        async def body(conn: aiosqlite.Connection) -> list[Event]:
            sql, params = _events_query(
                vendor=vendor, model=model, kind=kind, since=since, before_id=before_id, limit=limit
            )
            return [row_to_event(row) for row in await conn.execute_fetchall(sql, params)]

        return await self._run(body)

    async def ping(self) -> bool:
        async def body(conn: aiosqlite.Connection) -> bool:
            await conn.execute_fetchall(_PING)
            return True

        if _identity(self.path) == self._identity and self._file_problem() is not None:
            if self._problem is None:
                self._problem = self._file_problem()
                _log.error("database problem: %s; not ready until it is writable", self._problem)
            return False  # unwritable: the connection is not touched at all (see the module doc)
        try:
            return await self._run(lambda conn: _in_write_transaction_async(conn, body), write=True)
        except (sqlite3.Error, RuntimeError):
            return False

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return

        async def call() -> None:
            async with self._lock:  # after the calls already queued
                if self._file_problem(write=False) is not None and not self._lost:
                    _log.error("the database file %s is not writable: its connection is left open until exit", self.path)
                    _park(conn)
                    return
                await conn.close()

        await asyncio.shield(self._spawn(call()))
