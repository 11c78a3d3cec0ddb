"""The database file under the server's feet: is the path still the writable file the store opened?

Before every call `SQLiteStore` asks `DatabaseFile.check`: the path must still name the file it
opened (`st_dev`, `st_ino`) and the database and its `-wal`/`-shm` must be writable (one `stat` and
three `access` calls). SQLite maps `-shm` into memory: touching that mapping after the file was
made immutable (`chattr +i`) kills the process with SIGBUS, and a connection to a deleted or
replaced file writes where nobody will read. So on a problem the connection is not touched at all:
the call fails with `DatabaseFileProblem` (an `sqlite3.OperationalError`), logged at ERROR once per
outage. A connection left on an unwritable file is never closed (closing checkpoints through
`-shm`): it is `park`ed until the process exits. Recreating the database at the path is the
store's (`cliproxy.services.store`).
"""

from __future__ import annotations

import ctypes
import logging
import os
import sqlite3
from pathlib import Path
from typing import Any

import aiosqlite

__all__ = ["DatabaseFile", "DatabaseFileProblem", "file_identity", "park", "sidecars"]

_log = logging.getLogger("cliproxy.store")  # the name operators grep for; kept across the move


class DatabaseFileProblem(sqlite3.OperationalError):
    """The database path no longer names the writable file the store has open (deleted, replaced,
    made unwritable); nothing was sent to SQLite."""


def file_identity(path: Path) -> tuple[int, int] | None:
    """(st_dev, st_ino) of the file at `path`, None when there is none."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_dev, st.st_ino)


def sidecars(path: Path) -> tuple[Path, Path]:
    """The `-wal` and `-shm` files SQLite keeps beside the database at `path`."""
    return (path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm"))


_parked: list[Any] = []  # connections on unwritable files: never closed, never collected


async def park(conn: aiosqlite.Connection) -> None:
    """Stop the connection's thread without closing the SQLite connection, and keep it for ever.

    Closing it would checkpoint through the `-shm` mapping of a file that can no longer be
    written, which kills the process with SIGBUS; the OS releases everything at exit.
    """
    inner = getattr(conn, "_connection", None)
    if inner is not None:
        ctypes.pythonapi.Py_IncRef(ctypes.py_object(inner))  # not even interpreter shutdown frees it
        _parked.append(inner)
    conn._connection = None  # aiosqlite's stop() would close it otherwise
    stopped = conn.stop()
    if stopped is not None:
        # Awaited so the worker thread hands its answer to a loop that still runs (a loop closed first
        # made the thread raise "Event loop is closed" in whatever ran next).
        await stopped


class DatabaseFile:
    """The watch on one open database file: its identity and writability as of when it was opened."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._identity = file_identity(path)
        self._unwritable_at_open = self.unwritable_files()
        #: Why the file is not usable, while an outage lasts (logged once); None when it is.
        self.problem: str | None = None
        #: The path no longer names the opened file (deleted or replaced): recreate before the next call.
        self.lost = False

    def reopened(self) -> None:
        """The database at the path was (re)created and opened: watch that file from now on."""
        self._identity = file_identity(self.path)
        self._unwritable_at_open = self.unwritable_files()
        self.lost = False
        self.problem = None

    def is_the_opened_file(self) -> bool:
        """True while the path still names the file that was opened."""
        return file_identity(self.path) == self._identity

    def current_problem(self, *, write: bool = True) -> str | None:
        """Why the file cannot take a write (`write`), or a read, now; None when it can.

        A read is refused only when a file became unwritable AFTER it was opened: SQLite mapped its
        `-shm` writable then, and even a read marks it. A file unwritable from the start was
        opened read-only by SQLite and reads are safe.
        """
        identity = file_identity(self.path)
        if identity is None:
            return f"the database file {self.path} was deleted"
        if identity != self._identity:
            return f"the database file {self.path} was replaced by another file"
        unwritable = self.unwritable_files()
        if not write:
            unwritable = [c for c in unwritable if c not in self._unwritable_at_open]
        if unwritable:
            return f"{unwritable[0]} is not writable"
        return None

    def unwritable_files(self) -> list[Path]:
        """The database and sidecar files that exist and cannot be written now."""
        return [c for c in (self.path, *sidecars(self.path)) if c.exists() and not os.access(c, os.W_OK)]

    def became_unwritable(self) -> bool:
        """True when a file that was writable at open no longer is (its connection must be parked)."""
        return any(c not in self._unwritable_at_open for c in self.unwritable_files())

    def check(self, *, write: bool = True) -> None:
        """Raise DatabaseFileProblem (logged at ERROR once per outage) unless the file is ours and usable."""
        problem = self.current_problem(write=write)
        if problem is None:
            if self.problem is not None:
                _log.warning("the database file %s is writable again", self.path)
            self.problem = None
            return
        if problem != self.problem:
            _log.error("database problem: %s; state changes are kept in memory and written once it is back", problem)
        self.problem = problem
        if not self.is_the_opened_file():
            self.lost = True
        raise DatabaseFileProblem(problem)
