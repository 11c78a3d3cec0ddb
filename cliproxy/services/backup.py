"""The online backup: a consistent copy of the database, safe while the server writes to it."""

from __future__ import annotations

import os
import sqlite3
import tempfile
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

from cliproxy.services.sql import connect_ro

__all__ = ["BackupResult", "backup"]


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
        with closing(connect_ro(source)) as src, closing(sqlite3.connect(temp, isolation_level=None)) as dst:
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
