"""Durable storage of auto-disable state: the append-only event history and the disabled pairs.

The modules of the store, one noun each:

* `cliproxy.services.store` (here): the `Store` protocol and `SQLiteStore`, its async implementation;
* `cliproxy.services.sql`: the SQL text, the row <-> dataclass mapping and the timestamp format,
  the stdlib connections, and the read-only `read_disabled` / `read_events` of the operator CLI;
* `cliproxy.services.schema`: the migration files (`cliproxy/services/migrations/NNNN_name.sql`,
  package data) and `apply_migrations` / `pending_migrations`;
* `cliproxy.services.backup`: the online backup;
* `cliproxy.services.database_file`: the watch on the file under the server's feet.

Their public names are importable from here too, as they were when this was one module.

`SQLiteStore` (async, for the server): one `aiosqlite` connection (aiosqlite runs a stdlib
connection on its own worker thread). An `asyncio.Lock` makes calls run one after another, and
every write is one transaction (`BEGIN IMMEDIATE` ... `COMMIT`, `ROLLBACK` on error). Each call
runs as its own task that the caller awaits through `asyncio.shield`: a caller cancelled while
its transaction is under way does not interrupt it (it still commits or rolls back, and the next
call queues behind it on the lock), and a caller cancelled while still waiting for the lock
withdraws its call, which then never runs. WAL journal, `synchronous=FULL` (a committed disable
survives kill -9 and power loss), `busy_timeout`, `foreign_keys`.

The file under the server's feet (`DatabaseFile`): before every call the store checks that the
path still names the file it opened and that it is writable; on a problem the call fails with
`DatabaseFileProblem` without touching the connection, and `ping` answers False (`/readyz` 503).
When the path was deleted or replaced and can be written again, the database is recreated there
(migrations applied) and given what this store still holds: the events it committed in this run
(the newest `EVENTS_KEPT_IN_MEMORY`; those already in the file are not written twice) and the
current `disabled_pairs`.

Errors from SQLite propagate as `sqlite3.Error` (aiosqlite raises sqlite3's own); nothing is
swallowed (except by `ping`, whose answer is the boolean). Nothing secret is added here: error
excerpts arrive already masked.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, Protocol, TypeVar, runtime_checkable

import aiosqlite

from cliproxy.core.events import BackoffRecord, DisabledRecord, Event, KeyId, KeyRecord
from cliproxy.core.times import format_timestamp
from cliproxy.services.backup import BackupResult, backup
from cliproxy.services.database_file import DatabaseFile, DatabaseFileProblem, file_identity, park, sidecars
from cliproxy.services.schema import MigrationError, apply_migrations, default_migrations_dir, pending_migrations
from cliproxy.services.sql import (
    BUSY_TIMEOUT_MS,
    DELETE_DISABLED,
    DELETE_KEY,
    FIND_EVENT,
    INSERT_EVENT,
    PING,
    PRAGMAS_ALL,
    PRAGMAS_RW,
    SELECT_BACKOFF,
    SELECT_DISABLED,
    SELECT_KEYS,
    UPSERT_BACKOFF,
    UPSERT_DISABLED,
    UPSERT_KEY,
    backoff_to_row,
    event_to_row,
    events_query,
    key_to_row,
    parse_timestamp,
    read_disabled,
    read_events,
    round_timestamp,
    row_to_backoff,
    row_to_disabled,
    row_to_event,
    row_to_key,
    upsert_disabled_params,
)

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

#: Events committed in this run that are kept in memory to refill a database file deleted or replaced
#: under the running server (about 1 KiB each).
EVENTS_KEPT_IN_MEMORY = 10_000

_log = logging.getLogger("cliproxy.store")  # the name operators grep for; kept across the move

_T = TypeVar("_T")


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
        (the delete runs first). Returns the new event's id. A store that keeps backoff levels
        also takes `set_backoff` (a `BackoffRecord` to insert-or-replace), only passed when set."""
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
        for pragma in (*PRAGMAS_ALL, *PRAGMAS_RW):
            await conn.execute(pragma)
    except BaseException:
        await conn.close()
        raise
    return conn


async def _in_write_transaction_async(conn: aiosqlite.Connection, body: Callable[[aiosqlite.Connection], Awaitable[_T]]) -> _T:
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


class SQLiteStore:
    """The SQLite implementation of `Store` on one aiosqlite connection; see the module doc."""

    def __init__(self, path: Path, conn: aiosqlite.Connection, *, migrations_dir: Path | None = None) -> None:
        """Use `await SQLiteStore.open(path)`."""
        self.path = path
        self._conn: aiosqlite.Connection | None = conn
        self._lock = asyncio.Lock()  # one call at a time on the connection, in call order
        self._tasks: set[asyncio.Task[Any]] = set()  # strong references to calls in flight
        self._migrations_dir = migrations_dir
        self._file = DatabaseFile(path)
        # What this run committed, to refill a recreated file: the newest events, and the current
        # disabled_pairs rows with the event that wrote each.
        self._recent: deque[Event] = deque(maxlen=EVENTS_KEPT_IN_MEMORY)
        self._dropped = 0
        self._disabled: dict[tuple[str, str, str], tuple[DisabledRecord, Event | None]] = {}
        self._mirror_loaded = False
        self._backoff: dict[tuple[str, str], BackoffRecord] = {}
        self._keys: dict[KeyId, KeyRecord] = {}

    @classmethod
    async def open(cls, path: str | os.PathLike, *, migrations_dir: Path | None = None) -> SQLiteStore:
        """Create the parent directory if missing, apply pending migrations, open the connection."""
        db_path = Path(path)
        await asyncio.to_thread(apply_migrations, db_path, migrations_dir)
        return cls(db_path, await _connect_async(db_path), migrations_dir=migrations_dir)

    @property
    def file_problem(self) -> str | None:
        """Why the database file is not usable now (checked afresh), or None."""
        return self._file.current_problem()

    async def _recreate(self) -> None:
        """The path no longer names our file: leave the old connection, open (create) the database at the
        path, and write back the events and disabled pairs this run holds. Raises while that cannot be done."""
        old, self._conn = self._conn, None
        if old is not None:
            if self._file.became_unwritable():
                await park(old)
            else:
                # SQLite does not checkpoint into a file that was moved or unlinked: closing is safe.
                try:
                    await old.close()
                except Exception as exc:  # the file is gone: nothing to lose here
                    _log.warning("closing the connection to the lost database file failed: %r", exc)
        if file_identity(self.path) is None:  # a -wal/-shm without its database is stale: never replay it
            for sidecar in sidecars(self.path):
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
        self._file.reopened()
        dropped = f" ({self._dropped} older events of this run were no longer held)" if self._dropped else ""
        _log.warning(
            "the database file %s was recreated: %d events and %d disabled pairs written back%s",
            self.path,
            events,
            rows,
            dropped,
        )

    async def _refill(self, conn: aiosqlite.Connection) -> tuple[int, int]:
        ids: dict[int, int] = {}
        written = 0
        for event in self._recent:
            row = event_to_row(event)
            found = list(await conn.execute_fetchall(FIND_EVENT, row))
            if found:
                ids[id(event)] = found[0][0]
                continue
            ids[id(event)] = (await conn.execute(INSERT_EVENT, row)).lastrowid  # type: ignore[assignment]
            written += 1
        await conn.execute("DELETE FROM disabled_pairs")
        for record, disabling in self._disabled.values():
            event_id = ids.get(id(disabling)) if disabling is not None else None
            await conn.execute(UPSERT_DISABLED, upsert_disabled_params(record, event_id))  # type: ignore[arg-type]
        for level in self._backoff.values():
            await conn.execute(UPSERT_BACKOFF, backoff_to_row(level, None))
        for key in self._keys.values():
            await conn.execute(UPSERT_KEY, key_to_row(key, None))
        return written, len(self._disabled)

    def _spawn(self, coro: Coroutine[Any, Any, _T]) -> asyncio.Task[_T]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _run(self, body: Callable[[aiosqlite.Connection], Awaitable[_T]], *, write: bool = False) -> _T:
        if self._conn is None and not self._file.lost:
            raise RuntimeError(f"store {self.path} is closed")
        started = False

        async def call() -> _T:
            nonlocal started
            async with self._lock:
                started = True
                if self._file.lost:
                    await self._recreate()
                try:
                    self._file.check(write=write)
                except DatabaseFileProblem:
                    if not self._file.lost:
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
        set_backoff: BackoffRecord | None = None,
        set_disabled_key: KeyRecord | None = None,
        clear_disabled_key: KeyId | None = None,
    ) -> int:
        async def body(conn: aiosqlite.Connection) -> int:
            event_id = (await conn.execute(INSERT_EVENT, event_to_row(event))).lastrowid
            assert event_id is not None
            if clear_disabled is not None:
                await conn.execute(DELETE_DISABLED, tuple(clear_disabled))
            if set_disabled is not None:
                await conn.execute(UPSERT_DISABLED, upsert_disabled_params(set_disabled, event_id))
            if set_backoff is not None:
                await conn.execute(UPSERT_BACKOFF, backoff_to_row(set_backoff, event_id))
            if clear_disabled_key is not None:
                await conn.execute(DELETE_KEY, tuple(clear_disabled_key))
            if set_disabled_key is not None:
                await conn.execute(UPSERT_KEY, key_to_row(set_disabled_key, event_id))
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
            if set_backoff is not None:
                self._backoff[(set_backoff.vendor, set_backoff.model)] = set_backoff
            if clear_disabled_key is not None:
                self._keys.pop(clear_disabled_key, None)
            if set_disabled_key is not None:
                self._keys[set_disabled_key.key] = set_disabled_key
            return event_id

        if not self._mirror_loaded:
            await self.load_disabled()
        return await self._run(transaction, write=True)

    async def load_disabled(self) -> list[DisabledRecord]:
        async def body(conn: aiosqlite.Connection) -> list[DisabledRecord]:
            return [row_to_disabled(row) for row in await conn.execute_fetchall(SELECT_DISABLED)]  # type: ignore[arg-type]  # sqlite3.Row is a mapping

        records = await self._run(body)
        if not self._mirror_loaded:  # the rows of the file as opened, to refill a recreated file
            self._disabled = {(r.vendor, r.model, r.reason): (r, None) for r in records}
            self._mirror_loaded = True
        return records

    async def load_backoff(self) -> list[BackoffRecord]:
        """Every `backoff_levels` row (decayed ones included: the caller has the clock and the settings)."""

        async def body(conn: aiosqlite.Connection) -> list[BackoffRecord]:
            return [row_to_backoff(row) for row in await conn.execute_fetchall(SELECT_BACKOFF)]  # type: ignore[arg-type]  # sqlite3.Row is a mapping

        records = await self._run(body)
        for record in records:  # to refill a recreated file
            self._backoff.setdefault((record.vendor, record.model), record)
        return records

    async def load_disabled_keys(self) -> list[KeyRecord]:
        """Every `disabled_keys` row (expired ones included: the caller has the clock)."""

        async def body(conn: aiosqlite.Connection) -> list[KeyRecord]:
            return [row_to_key(row) for row in await conn.execute_fetchall(SELECT_KEYS)]  # type: ignore[arg-type]  # sqlite3.Row is a mapping

        records = await self._run(body)
        for record in records:  # to refill a recreated file
            self._keys.setdefault(record.key, record)
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
            sql, params = events_query(vendor=vendor, model=model, kind=kind, since=since, before_id=before_id, limit=limit)
            return [row_to_event(row) for row in await conn.execute_fetchall(sql, params)]  # type: ignore[arg-type]  # sqlite3.Row is a mapping

        return await self._run(body)

    async def ping(self) -> bool:
        async def body(conn: aiosqlite.Connection) -> bool:
            await conn.execute_fetchall(PING)
            return True

        if self._file.is_the_opened_file() and self._file.current_problem() is not None:
            if self._file.problem is None:
                self._file.problem = self._file.current_problem()
                _log.error("database problem: %s; not ready until it is writable", self._file.problem)
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
                if self._file.current_problem(write=False) is not None and not self._file.lost:
                    _log.error("the database file %s is not writable: its connection is left open until exit", self.path)
                    await park(conn)
                    return
                await conn.close()

        await asyncio.shield(self._spawn(call()))
