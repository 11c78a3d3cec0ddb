"""`cliproxy status` and `history`: the pairs' states and the audit history, read from the config
and the database file (opened read-only: the server may be running or not)."""

from __future__ import annotations

import argparse
import sqlite3
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from cliproxy.cli import history_view, views
from cliproxy.cli.common import config_path, database_path, fail, load_leniently_or_exit, print_json
from cliproxy.core.events import KeyRecord
from cliproxy.core.routing import RoutingTable
from cliproxy.services.sql import read_disabled_keys
from cliproxy.services.store import read_disabled, read_events

__all__ = ["cmd_history", "cmd_status", "limit_arg", "since_arg"]

_T = TypeVar("_T")
#: The most recent `enabled` events `status` reads for slow starts (one per pair is what counts).
_ENABLED_EVENTS_READ = 100_000


class _Unreadable(Exception):
    pass


def _read(db: Path, reader: Callable[[Path], _T]) -> _T:
    try:
        return reader(db)
    except sqlite3.Error as exc:
        if "no such table" in str(exc):
            raise _Unreadable(f"database {db} has no schema yet ({exc}); run `cliproxy migrate`") from None
        if "no such column" in str(exc):  # written by an older version; the server migrates it at start-up
            raise _Unreadable(f"database {db} has an older schema ({exc}); run `cliproxy migrate`") from None
        raise _Unreadable(f"cannot read database {db}: {exc}") from None
    except OSError as exc:
        raise _Unreadable(f"cannot read database {db}: {exc}") from None


def cmd_status(args: argparse.Namespace) -> int:
    loaded = load_leniently_or_exit(config_path(args))
    config = loaded.config
    db = database_path(config)
    now = time.time()
    notes: list[str] = []
    keys_out: list[KeyRecord] = []
    if db.is_file():
        try:
            disabled = _read(db, read_disabled)
        except _Unreadable as exc:
            return fail("status", str(exc))
        try:
            keys_out = _read(db, read_disabled_keys)
        except _Unreadable as exc:  # a database from before key scope: no key was ever put out
            notes.append(str(exc))
    else:
        disabled = []
        notes.append(f"no database at {db}: nothing is disabled (the server creates it at start-up)")
    unset_keys = {v.name: loaded.unset_key_variables(i) for i, v in enumerate(config.vendors)}
    table = RoutingTable(config)
    reenabled: dict[tuple[str, str], float] = {}
    longest = max((pair.auto_disable.slow_start_seconds for pair in table.pairs.values()), default=0.0)
    if longest > 0 and db.is_file():
        # Slow starts run from the last `enabled` event of each pair, as the server restores them.
        try:
            recent = _read(db, lambda path: read_events(path, kind="enabled", since=now - longest, limit=_ENABLED_EVENTS_READ))
        except _Unreadable as exc:
            return fail("status", str(exc))
        for event in recent:  # newest first
            if event.vendor is not None and event.model is not None:
                reenabled.setdefault((event.vendor, event.model), event.at)
    configured, orphans = views.pair_statuses(table, disabled, now, unset_keys, reenabled)
    if args.json:
        print_json(views.status_json([*configured, *orphans]))
        for note in notes:
            print(note, file=sys.stderr)
        return 0
    print(f"database {db}, times in UTC, now {views.iso(now)}")
    print()
    if configured:
        print(views.status_table(configured))
        print()
    print(views.summary(configured))
    if key_lines := views.keys_out_lines(table, keys_out, now):
        print()
        print("Keys out of their vendor's rotation (the upstream refused them):")
        print("\n".join(key_lines))
    if orphans:
        print()
        print("Disabled in the database but not in the config (kept and ignored by the server):")
        print(views.status_table(orphans))
    for note in notes:
        print(note)
    return 0


def since_arg(text: str) -> float:
    try:
        return views.parse_since(text, time.time())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def limit_arg(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def cmd_history(args: argparse.Namespace) -> int:
    config = load_leniently_or_exit(config_path(args)).config
    db = database_path(config)
    if not db.is_file():
        note = f"no database at {db}: no history yet"
        if args.json:
            print_json([])
            print(note, file=sys.stderr)
        else:
            print(note)
        return 0
    try:
        events = _read(
            db,
            lambda path: read_events(
                path, vendor=args.vendor, model=args.model, kind=args.kind, since=args.since, limit=args.limit
            ),
        )
    except _Unreadable as exc:
        return fail("history", str(exc))
    if args.json:
        print_json([history_view.event_json(e) for e in events])
        return 0
    if not events:
        print(f"no events match (database {db})")
        return 0
    print(history_view.history_table(events))
    print()
    more = f"; older events may exist: raise --limit (now {args.limit}) or use --since" if len(events) == args.limit else ""
    print(f"{len(events)} event(s), newest first, times in UTC{more}")
    return 0
