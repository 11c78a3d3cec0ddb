"""`cliproxy serve`, `check-config` and `migrate`: running the gateway, and what it needs first
(a valid config, a migrated database)."""

from __future__ import annotations

import argparse
import asyncio
import sqlite3

from cliproxy.cli.common import EXIT_CONFIG, config_path, database_fault_status, database_path, fail, load_or_exit
from cliproxy.services.config_loader import ConfigError, load_config
from cliproxy.services.store import MigrationError, apply_migrations, pending_migrations

__all__ = ["cmd_check_config", "cmd_migrate", "cmd_serve"]


def cmd_check_config(args: argparse.Namespace) -> int:
    path = config_path(args)
    config = load_or_exit(path)
    pairs = sum(len(v.models) for v in config.vendors)
    print(f"{path}: OK ({len(config.vendors)} vendor(s), {pairs} pair(s))")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    path = config_path(args)
    try:
        config = load_config(path)
    except ConfigError as error:
        # One line, so the journal shows the whole reason next to the unit's failure.
        problems = "; ".join(error.problems)
        return fail("serve", f"invalid configuration in {path}: {problems}", EXIT_CONFIG)
    db = database_path(config)
    # The app migrates at start-up too (a no-op after this); doing it here first turns a database
    # that cannot be used into one line and a status systemd will not restart on, not a traceback.
    try:
        apply_migrations(db)
    except MigrationError as exc:
        return fail("serve", str(exc), database_fault_status(exc))
    except (sqlite3.Error, OSError) as exc:
        return fail("serve", f"cannot open database {db}: {exc}", database_fault_status(exc))
    from cliproxy.server import serve

    return asyncio.run(serve(config))


def cmd_migrate(args: argparse.Namespace) -> int:
    config = load_or_exit(config_path(args))
    db = database_path(config)
    try:
        if args.dry_run:
            pending = pending_migrations(db)
            if not pending:
                print(f"{db}: up to date")
            else:
                print(f"{db}: {len(pending)} pending migration(s) (not applied):")
                for name in pending:
                    print(f"  {name}")
            return 0
        applied = apply_migrations(db)
    except MigrationError as exc:
        return fail("migrate", str(exc), database_fault_status(exc))
    except (sqlite3.Error, OSError) as exc:
        return fail("migrate", f"cannot migrate database {db}: {exc}", database_fault_status(exc))
    if not applied:
        print(f"{db}: up to date")
    else:
        for name in applied:
            print(f"{db}: applied {name}")
    return 0
