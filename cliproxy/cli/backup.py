"""`cliproxy backup`: a consistent copy of the database, safe while the server runs."""

from __future__ import annotations

import argparse
import sqlite3

from cliproxy.cli.common import config_path, database_path, fail, load_leniently_or_exit
from cliproxy.services.store import backup

__all__ = ["cmd_backup"]


def cmd_backup(args: argparse.Namespace) -> int:
    config = load_leniently_or_exit(config_path(args)).config  # only the database path is needed
    db = database_path(config)
    if not db.is_file():
        return fail("backup", f"no database at {db}")
    try:
        result = backup(db, args.path, overwrite=args.force)
    except FileExistsError as exc:
        return fail("backup", str(exc))
    except (sqlite3.Error, OSError) as exc:
        return fail("backup", f"cannot back up {db} to {args.path}: {exc}")
    print(f"{db} -> {result.path}: {result.events} events, {result.disabled_pairs} disabled pair rows, {result.size_bytes} bytes")
    return 0
