"""The schema: finding the migration files and applying them, and the schema version checks.

The schema is plain SQL in `cliproxy/services/migrations/NNNN_name.sql` (package data), applied in
order, each file in one transaction together with its row in `schema_migrations`. A database
migrated by a newer cliproxy is refused. `apply_migrations` runs at start-up (and `cliproxy
migrate`), `pending_migrations` lists what would run without writing anything.
"""

from __future__ import annotations

import os
import re
import sqlite3
import time
from contextlib import closing
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from cliproxy.core.times import format_timestamp
from cliproxy.services.sql import connect_ro, connect_rw, in_write_transaction

__all__ = ["MigrationError", "apply_migrations", "default_migrations_dir", "pending_migrations"]


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
            f"the migration files are missing from the installed package (looked in {directory}); reinstall cliproxy",
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
            raise MigrationError(f"migration file {path.name} is not named NNNN_name.sql (in {directory})", path=path)
        version = int(match.group(1))
        if version in found:
            raise MigrationError(f"migration files {found[version].name} and {path.name} share version {version}", path=path)
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
    exists = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'").fetchone()
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
        keyword = re.match(r"[A-Za-z]*", statement).group(0).upper()  # type: ignore[union-attr]  # [A-Za-z]* always matches
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
                    f"migration {migration.name} failed at line {line}: {exc}; the database was left as it was before this file",
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
        return in_write_transaction(conn, body)
    except MigrationError:
        raise
    except sqlite3.Error as exc:  # BEGIN or COMMIT failed (locked, disk full, ...)
        raise MigrationError(
            f"migration {migration.name} could not be committed: {exc}; the database was left as it was before this file",
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
    with closing(connect_rw(db_path)) as conn:
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
    with closing(connect_ro(path)) as conn:
        done = _applied_versions(conn)
    _refuse_newer_schema(Path(path), done, migrations)
    return [m.name for m in migrations if m.version not in done]
