"""The store's SQL: the statements and their parameters, the one row <-> dataclass mapping, the
stdlib connections, and the synchronous read-only helpers of the operator CLI.

Shared by the async `SQLiteStore` (`cliproxy.services.store`), the migration runner
(`cliproxy.services.schema`) and the backup (`cliproxy.services.backup`).

Timestamps: the rest of the program holds wall-clock epoch seconds (floats); the database holds
ISO-8601 UTC text with milliseconds (`2026-11-21T23:59:01.123Z`), readable in the sqlite3 shell and
sortable as text. Conversion happens only here, and a stored time is the epoch value *rounded to
the millisecond*: a float read back equals `round_timestamp(original)`, so a value that already
has millisecond precision round-trips exactly.

`read_disabled` / `read_events` open the file with `mode=ro` and work while the server is stopped
or running.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Callable, Mapping
from contextlib import closing
from pathlib import Path
from typing import Any, TypeVar

from cliproxy.core.events import BackoffRecord, DisabledRecord, ErrorInfo, Event, KeyRecord
from cliproxy.core.times import format_timestamp, parse_iso

__all__ = [
    "BUSY_TIMEOUT_MS",
    "DELETE_DISABLED",
    "SELECT_BACKOFF",
    "UPSERT_BACKOFF",
    "UPSERT_KEY",
    "DELETE_KEY",
    "SELECT_KEYS",
    "key_to_row",
    "row_to_key",
    "read_disabled_keys",
    "backoff_to_row",
    "row_to_backoff",
    "FIND_EVENT",
    "INSERT_EVENT",
    "PING",
    "PRAGMAS_ALL",
    "PRAGMAS_RW",
    "SELECT_DISABLED",
    "UPSERT_DISABLED",
    "connect_ro",
    "connect_rw",
    "disabled_to_row",
    "event_to_row",
    "events_query",
    "in_write_transaction",
    "parse_timestamp",
    "read_disabled",
    "read_events",
    "round_timestamp",
    "row_to_disabled",
    "row_to_event",
    "upsert_disabled_params",
]

#: How long a statement waits for another connection's lock before failing with "database is locked".
BUSY_TIMEOUT_MS = 5000

_T = TypeVar("_T")

# --------------------------------------------------------------------------------------------
# Timestamps
# --------------------------------------------------------------------------------------------

# One format for every timestamp cliproxy writes: `cliproxy.core.times` (`cliproxy.services.store` re-exports it).


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
    "last_error_kind",
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
    "disable_level",
    "last_error_kind",
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
    return ErrorInfo(status=row["last_status"], message=row["last_error"] or "", kind=row["last_error_kind"] or "")


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
        "last_error_kind": (event.last_error.kind or None) if event.last_error else None,
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
        "disable_level": record.disable_level,
        "last_error_kind": (record.last_error.kind or None) if record.last_error else None,
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
        disable_level=row["disable_level"],
    )


def backoff_to_row(record: BackoffRecord, event_id: int | None) -> dict[str, Any]:
    """A BackoffRecord as the named parameters of a `backoff_levels` row."""
    return {
        "vendor": record.vendor,
        "model": record.model,
        "disable_level": record.disable_level,
        "level_since": format_timestamp(record.level_since),
        "event_id": event_id,
    }


def row_to_backoff(row: Mapping[str, Any]) -> BackoffRecord:
    """A `backoff_levels` row back into a BackoffRecord."""
    return BackoffRecord(
        vendor=row["vendor"],
        model=row["model"],
        disable_level=row["disable_level"],
        level_since=parse_timestamp(row["level_since"]),
    )


def key_to_row(record: KeyRecord, event_id: int | None) -> dict[str, Any]:
    """A KeyRecord as the named parameters of a `disabled_keys` row."""
    return {
        "vendor": record.vendor,
        "key_index": record.index,
        "key_hash": record.key_hash,
        "disabled_at": format_timestamp(record.disabled_at),
        "disabled_until": format_timestamp(record.disabled_until),
        "disable_level": record.disable_level,
        "last_status": record.last_error.status if record.last_error else None,
        "last_error": record.last_error.message if record.last_error else None,
        "last_error_kind": (record.last_error.kind or None) if record.last_error else None,
        "event_id": event_id,
    }


def row_to_key(row: Mapping[str, Any]) -> KeyRecord:
    """A `disabled_keys` row back into a KeyRecord."""
    return KeyRecord(
        vendor=row["vendor"],
        index=row["key_index"],
        key_hash=row["key_hash"],
        disabled_at=parse_timestamp(row["disabled_at"]),
        disabled_until=parse_timestamp(row["disabled_until"]),
        disable_level=row["disable_level"],
        last_error=_error_in(row),
    )


# --------------------------------------------------------------------------------------------
# SQL: the statements and their parameters (shared by both paths), and the stdlib runners
# --------------------------------------------------------------------------------------------

INSERT_EVENT = f"INSERT INTO events ({', '.join(_EVENT_COLUMNS)}) VALUES ({', '.join(':' + c for c in _EVENT_COLUMNS)})"

UPSERT_DISABLED = (
    f"INSERT INTO disabled_pairs ({', '.join(_DISABLED_COLUMNS)}, event_id) "
    f"VALUES ({', '.join(':' + c for c in _DISABLED_COLUMNS)}, :event_id) "
    "ON CONFLICT (vendor, model, reason) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in (*_DISABLED_COLUMNS[3:], "event_id"))
)

DELETE_DISABLED = "DELETE FROM disabled_pairs WHERE vendor = ? AND model = ? AND reason = ?"

UPSERT_BACKOFF = (
    "INSERT INTO backoff_levels (vendor, model, disable_level, level_since, event_id) "
    "VALUES (:vendor, :model, :disable_level, :level_since, :event_id) "
    "ON CONFLICT (vendor, model) DO UPDATE SET disable_level = excluded.disable_level, "
    "level_since = excluded.level_since, event_id = excluded.event_id"
)

SELECT_BACKOFF = "SELECT vendor, model, disable_level, level_since FROM backoff_levels ORDER BY vendor, model"

_KEY_COLUMNS = (
    "vendor",
    "key_index",
    "key_hash",
    "disabled_at",
    "disabled_until",
    "disable_level",
    "last_status",
    "last_error",
    "last_error_kind",
)
UPSERT_KEY = (
    f"INSERT INTO disabled_keys ({', '.join(_KEY_COLUMNS)}, event_id) "
    f"VALUES ({', '.join(':' + c for c in _KEY_COLUMNS)}, :event_id) "
    "ON CONFLICT (vendor, key_index) DO UPDATE SET " + ", ".join(f"{c} = excluded.{c}" for c in (*_KEY_COLUMNS[2:], "event_id"))
)
DELETE_KEY = "DELETE FROM disabled_keys WHERE vendor = ? AND key_index = ?"
SELECT_KEYS = f"SELECT {', '.join(_KEY_COLUMNS)} FROM disabled_keys ORDER BY vendor, key_index"

# An event already in the file (a restored copy may hold some of the events being written back).
FIND_EVENT = (
    "SELECT id FROM events WHERE at = :at AND kind = :kind AND vendor IS :vendor AND model IS :model "
    "AND reason IS :reason AND cause IS :cause AND actor IS :actor LIMIT 1"
)

SELECT_DISABLED = f"SELECT {', '.join(_DISABLED_COLUMNS)} FROM disabled_pairs ORDER BY vendor, model, reason"

# Take the write lock and read the schema, then let go: proves the file is there, readable and
# lockable for writing, without writing anything.
PING = "SELECT count(*) FROM schema_migrations"

#: Every connection: wait for other connections' locks instead of failing at once.
PRAGMAS_ALL = (f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}",)
#: Read-write connections in addition.
PRAGMAS_RW = (
    "PRAGMA journal_mode = WAL",  # persistent in the file
    "PRAGMA synchronous = FULL",  # fsync the WAL at every commit
    "PRAGMA foreign_keys = ON",
)


def events_query(
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


def upsert_disabled_params(record: DisabledRecord, event_id: int) -> dict[str, Any]:
    return {**disabled_to_row(record), "event_id": event_id}


def _configure(conn: sqlite3.Connection, *, read_only: bool = False) -> None:
    conn.row_factory = sqlite3.Row
    for pragma in PRAGMAS_ALL if read_only else (*PRAGMAS_ALL, *PRAGMAS_RW):
        conn.execute(pragma)


def connect_rw(path: Path) -> sqlite3.Connection:
    """A read-write stdlib connection (the database is created if missing); the caller issues BEGIN/COMMIT."""
    conn = sqlite3.connect(path, isolation_level=None)  # we issue BEGIN/COMMIT ourselves
    try:
        _configure(conn)
    except BaseException:
        conn.close()
        raise
    return conn


def connect_ro(path: str | os.PathLike) -> sqlite3.Connection:
    """A read-only stdlib connection (`mode=ro`) to an existing database: FileNotFoundError otherwise."""
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


def in_write_transaction(conn: sqlite3.Connection, body: Callable[[sqlite3.Connection], _T]) -> _T:
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
    return [row_to_disabled(row) for row in conn.execute(SELECT_DISABLED)]


def _select_events(conn: sqlite3.Connection, **filters: Any) -> list[Event]:
    sql, params = events_query(**filters)
    return [row_to_event(row) for row in conn.execute(sql, params)]


# --------------------------------------------------------------------------------------------
# Synchronous read-only helpers (operator CLI; safe while the server runs)
# --------------------------------------------------------------------------------------------


def read_disabled(path: str | os.PathLike) -> list[DisabledRecord]:
    """The pairs disabled now, read-only, ordered by vendor, model, reason."""
    with closing(connect_ro(path)) as conn:
        return _select_disabled(conn)


def read_disabled_keys(path: str | os.PathLike) -> list[KeyRecord]:
    """The keys out of their vendor's rotation (expired ones included: the caller has the clock), read-only."""
    with closing(connect_ro(path)) as conn:
        return [row_to_key(row) for row in conn.execute(SELECT_KEYS)]


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
    with closing(connect_ro(path)) as conn:
        return _select_events(conn, vendor=vendor, model=model, kind=kind, since=since, before_id=before_id, limit=limit)
