"""Tests of cliproxy.services.store against real SQLite files (no mocks)."""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import sqlite3
import subprocess
import threading
from contextlib import closing
from dataclasses import replace
from pathlib import Path

import pytest

from cliproxy.core.events import DisabledRecord, ErrorInfo, Event
from cliproxy.services.store import (
    MigrationError,
    SQLiteStore,
    Store,
    apply_migrations,
    default_migrations_dir,
    format_timestamp,
    parse_timestamp,
    pending_migrations,
    read_disabled,
    read_events,
    round_timestamp,
)

REPO_MIGRATIONS = Path(__file__).resolve().parent.parent / "cliproxy" / "services" / "migrations"

T0 = 1795132741.123  # 2026-11-19T23:59:01.123Z: millisecond precision, so it round-trips exactly
SETTINGS = {"failure_threshold": 5, "time_window_seconds": 60.0, "disable_duration_seconds": 300.0}


def columns(conn: sqlite3.Connection, table: str) -> list[str]:
    return [row[1] for row in conn.execute(f"PRAGMA table_info({table})")]


def snapshot(path: Path) -> tuple[list, list, list]:
    """Schema, migration bookkeeping and full SQL dump of a database, for before/after comparisons."""
    with closing(sqlite3.connect(path)) as conn:
        schema = conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY name").fetchall()
        has_versions = any(row[1] == "schema_migrations" for row in schema)
        versions = conn.execute("SELECT * FROM schema_migrations ORDER BY version").fetchall() if has_versions else []
        dump = list(conn.iterdump())
    return schema, versions, dump


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def disable_event(vendor: str, model: str, at: float, **kw) -> Event:
    return Event(
        kind="disabled",
        at=at,
        vendor=vendor,
        model=model,
        reason="auto",
        disabled_at=at,
        disabled_until=at + 300,
        failure_count=5,
        window_started_at=at - 42.5,
        settings=SETTINGS,
        last_error=ErrorInfo(503, "upstream said: Service Unavailable"),
        **kw,
    )


def auto_record(vendor: str, model: str, at: float) -> DisabledRecord:
    return DisabledRecord(
        vendor=vendor,
        model=model,
        reason="auto",
        disabled_at=at,
        disabled_until=at + 300,
        failure_count=5,
        window_started_at=at - 42.5,
        last_error=ErrorInfo(503, "upstream said: Service Unavailable"),
    )


def manual_record(vendor: str, model: str, at: float) -> DisabledRecord:
    return DisabledRecord(vendor=vendor, model=model, reason="manual", disabled_at=at, disabled_until=None, actor="10.0.0.7")


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "state" / "cliproxy.db"


@pytest.fixture
async def store(db: Path):
    s = await SQLiteStore.open(db)
    yield s
    await s.close()


class TestTimestamps:
    """Epoch floats become ISO-8601 UTC text with milliseconds and come back to the millisecond."""

    def test_format_is_iso_utc_with_milliseconds(self):
        assert format_timestamp(0) == "1970-01-01T00:00:00.000Z"
        assert format_timestamp(T0) == "2026-11-19T23:59:01.123Z"

    def test_round_trip_preserves_milliseconds(self):
        for value in (T0, 0.001, 1.999, 1700000000.5, 1795132741.999):
            assert parse_timestamp(format_timestamp(value)) == value

    def test_finer_values_are_rounded_to_the_millisecond(self):
        assert format_timestamp(T0 + 0.0004) == "2026-11-19T23:59:01.123Z"
        assert format_timestamp(1.9996) == "1970-01-01T00:00:02.000Z"
        assert parse_timestamp(format_timestamp(T0 + 0.0004)) == round_timestamp(T0 + 0.0004) == T0

    def test_text_order_is_time_order(self):
        times = [0.5, 9.999, 10.0, 99.0, 1e9, T0]
        assert sorted(format_timestamp(t) for t in times) == [format_timestamp(t) for t in sorted(times)]


class TestMigrations:
    """Migrations create the schema once, record their versions, and fail atomically."""

    def test_from_empty_creates_the_schema(self, db: Path):
        names = [
            "0001_initial.sql",
            "0002_last_failure_at.sql",
            "0003_rate_limited.sql",
            "0004_recovery.sql",
            "0006_last_error_kind.sql",
            "0007_disabled_keys.sql",
        ]
        assert pending_migrations(db) == names
        assert not db.exists(), "pending_migrations must not create the database"
        assert apply_migrations(db) == names
        with closing(sqlite3.connect(db)) as conn:
            assert columns(conn, "schema_migrations") == ["version", "name", "applied_at"]
            assert columns(conn, "events") == [
                "id", "at", "kind", "vendor", "model", "reason", "cause", "disabled_at", "disabled_until",
                "failure_count", "window_started_at", "threshold", "window_seconds", "duration_seconds",
                "settings", "last_status", "last_error", "actor", "detail", "last_failure_at", "last_error_kind",
            ]  # fmt: skip
            assert columns(conn, "disabled_pairs") == [
                "vendor", "model", "reason", "disabled_at", "disabled_until", "failure_count",
                "window_started_at", "last_status", "last_error", "actor", "event_id", "last_failure_at", "disable_level",
                "last_error_kind",
            ]  # fmt: skip
            assert columns(conn, "backoff_levels") == ["vendor", "model", "disable_level", "level_since", "event_id"]
            pk = {row[1]: row[5] for row in conn.execute("PRAGMA table_info(disabled_pairs)") if row[5]}
            assert pk == {"vendor": 1, "model": 2, "reason": 3}
            indexes = {row[1]: [c[2] for c in conn.execute(f"PRAGMA index_info({row[1]})")]
                       for row in conn.execute("PRAGMA index_list(events)")}  # fmt: skip
            assert indexes["events_pair_at"] == ["vendor", "model", "at"]
            assert indexes["events_kind_at"] == ["kind", "at"]
            assert indexes["events_at"] == ["at"]
            versions = conn.execute("SELECT version, name, applied_at FROM schema_migrations").fetchall()
        assert [(v, n) for v, n, _ in versions] == [(int(name[:4]), name) for name in names]
        parse_timestamp(versions[0][2])
        assert pending_migrations(db) == []

    def test_rerun_applies_nothing_and_changes_nothing(self, db: Path):
        apply_migrations(db)
        before, digest = snapshot(db), file_digest(db)
        assert apply_migrations(db) == []
        assert snapshot(db) == before
        assert file_digest(db) == digest

    def test_wal_mode_is_on(self, db: Path):
        apply_migrations(db)
        with closing(sqlite3.connect(db)) as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"

    def test_failing_migration_leaves_the_database_as_it_was(self, db: Path, tmp_path: Path):
        migrations = tmp_path / "migrations"
        migrations.mkdir()
        shutil.copy(REPO_MIGRATIONS / "0001_initial.sql", migrations)
        apply_migrations(db, migrations)
        before = snapshot(db)
        (migrations / "0002_bad.sql").write_text(
            "-- adds a table, then breaks\n"
            "CREATE TABLE extra (x INTEGER);\n"
            "INSERT INTO extra VALUES (1);\n"
            "CREATE INDEX broken ON no_such_table (x);\n"
        )
        with pytest.raises(MigrationError, match=r"0002_bad\.sql.*line 4.*no such table: main\.no_such_table") as info:
            apply_migrations(db, migrations)
        assert info.value.path == migrations / "0002_bad.sql"
        assert info.value.line == 4
        assert "no_such_table" in (info.value.sqlite_message or "")
        assert snapshot(db) == before
        assert pending_migrations(db, migrations) == ["0002_bad.sql"]

    def test_failing_first_migration_leaves_an_empty_database(self, db: Path, tmp_path: Path):
        migrations = tmp_path / "migrations"
        migrations.mkdir()
        (migrations / "0001_bad.sql").write_text("CREATE TABLE a (x);\nTHIS IS NOT SQL;\n")
        with pytest.raises(MigrationError, match=r"0001_bad\.sql failed at line 2: .*syntax error"):
            apply_migrations(db, migrations)
        assert snapshot(db)[:2] == ([], [])

    def test_applies_in_version_order_and_only_the_new_ones(self, db: Path, tmp_path: Path):
        migrations = tmp_path / "migrations"
        migrations.mkdir()
        shutil.copy(REPO_MIGRATIONS / "0001_initial.sql", migrations)
        (migrations / "0003_c.sql").write_text("ALTER TABLE b ADD COLUMN y TEXT DEFAULT 'a;b';")
        (migrations / "0002_b.sql").write_text("CREATE TABLE b (x); /* no trailing semicolon */ INSERT INTO b VALUES (1)")
        assert apply_migrations(db, migrations) == ["0001_initial.sql", "0002_b.sql", "0003_c.sql"]
        (migrations / "0004_d.sql").write_text("INSERT INTO b (x) VALUES (2);")
        assert pending_migrations(db, migrations) == ["0004_d.sql"]
        assert apply_migrations(db, migrations) == ["0004_d.sql"]
        with closing(sqlite3.connect(db)) as conn:
            assert conn.execute("SELECT x, y FROM b ORDER BY x").fetchall() == [(1, "a;b"), (2, "a;b")]
            assert [r[0] for r in conn.execute("SELECT version FROM schema_migrations")] == [1, 2, 3, 4]

    def test_transaction_control_in_a_migration_is_refused(self, db: Path, tmp_path: Path):
        migrations = tmp_path / "migrations"
        migrations.mkdir()
        (migrations / "0001_tx.sql").write_text("CREATE TABLE a (x);\nCOMMIT;\n")
        with pytest.raises(MigrationError, match=r"0001_tx\.sql line 2: COMMIT is not allowed"):
            apply_migrations(db, migrations)
        assert snapshot(db)[:2] == ([], [])

    def test_badly_named_files_are_reported(self, db: Path, tmp_path: Path):
        migrations = tmp_path / "migrations"
        migrations.mkdir()
        (migrations / "1_initial.sql").write_text("CREATE TABLE a (x);")
        with pytest.raises(MigrationError, match=r"1_initial\.sql is not named NNNN_name\.sql"):
            pending_migrations(db, migrations)

    def test_a_schema_newer_than_the_shipped_migrations_is_refused(self, db: Path):
        apply_migrations(db)
        with closing(sqlite3.connect(db)) as conn, conn:
            conn.execute("INSERT INTO schema_migrations VALUES (99, '0099_future.sql', '2030-01-01T00:00:00.000Z')")
        before = snapshot(db)
        for call in (apply_migrations, pending_migrations):
            with pytest.raises(MigrationError, match=r"schema version 99, newer than this cliproxy knows \(up to \d+\)"):
                call(db)
        assert snapshot(db) == before

    def test_default_directory_is_the_package_data(self):
        assert default_migrations_dir() == REPO_MIGRATIONS

    async def test_open_creates_the_parent_directory_and_migrates(self, db: Path):
        store = await SQLiteStore.open(db)
        try:
            assert db.is_file()
            assert pending_migrations(db) == []
            assert isinstance(store, Store)
        finally:
            await store.close()


class TestDisabledState:
    """record() keeps the current-state table in step with the events, in one transaction."""

    async def test_auto_and_manual_coexist_and_clear_removes_one_reason(self, store: SQLiteStore):
        auto, manual = auto_record("acme", "gpt-x", T0), manual_record("acme", "gpt-x", T0 + 1)
        await store.record(disable_event("acme", "gpt-x", T0), set_disabled=auto)
        await store.record(
            Event(kind="manual-disable", at=T0 + 1, vendor="acme", model="gpt-x", reason="manual", actor="10.0.0.7"),
            set_disabled=manual,
        )
        assert await store.load_disabled() == [auto, manual]
        await store.record(
            Event(kind="enabled", at=T0 + 300, vendor="acme", model="gpt-x", reason="auto", cause="expired"),
            clear_disabled=("acme", "gpt-x", "auto"),
        )
        assert await store.load_disabled() == [manual]

    async def test_set_replaces_the_row_of_the_same_reason(self, store: SQLiteStore):
        await store.record(disable_event("acme", "m", T0), set_disabled=auto_record("acme", "m", T0))
        later = auto_record("acme", "m", T0 + 600)
        await store.record(disable_event("acme", "m", T0 + 600), set_disabled=later)
        assert await store.load_disabled() == [later]

    async def test_row_points_at_its_event(self, store: SQLiteStore, db: Path):
        event_id = await store.record(disable_event("acme", "m", T0), set_disabled=auto_record("acme", "m", T0))
        with closing(sqlite3.connect(db)) as conn:
            assert conn.execute("SELECT event_id FROM disabled_pairs").fetchall() == [(event_id,)]

    async def test_failed_write_leaves_nothing_behind(self, store: SQLiteStore):
        bad = DisabledRecord(vendor="acme", model="m", reason="sometimes", disabled_at=T0, disabled_until=None)
        with pytest.raises(sqlite3.IntegrityError, match="CHECK constraint failed"):
            await store.record(disable_event("acme", "m", T0), set_disabled=bad)
        assert await store.events() == []
        assert await store.load_disabled() == []
        assert await store.record(disable_event("acme", "m", T0)) >= 1  # the connection is usable again

    async def test_manual_without_end_and_no_error(self, store: SQLiteStore):
        record = DisabledRecord(vendor="v", model="m", reason="manual", disabled_at=T0, disabled_until=None)
        await store.record(Event(kind="manual-disable", at=T0), set_disabled=record)
        assert await store.load_disabled() == [record]

    async def test_survives_close_and_reopen(self, db: Path):
        store = await SQLiteStore.open(db)
        auto = auto_record("acme", "gpt-x", T0)
        event = disable_event("acme", "gpt-x", T0, detail={"note": "ünïcode", "n": [1, 2]})
        event_id = await store.record(event, set_disabled=auto)
        await store.close()
        reopened = await SQLiteStore.open(db)
        try:
            assert await reopened.load_disabled() == [auto]
            [back] = await reopened.events()
            assert back == replace(event, id=event_id)
        finally:
            await reopened.close()


class TestEvents:
    """events() returns full events newest first, filtered and paged."""

    @pytest.fixture
    async def filled(self, store: SQLiteStore) -> list[int]:
        ids = []
        for i, (vendor, model, kind) in enumerate([
            ("a", "m1", "disabled"),
            ("a", "m2", "disabled"),
            ("b", "m1", "disabled"),
            ("a", "m1", "enabled"),
            (None, None, "config-reloaded"),
            ("a", "m1", "disabled"),
        ]):  # fmt: skip
            ids.append(await store.record(Event(kind=kind, at=T0 + i * 10, vendor=vendor, model=model)))
        return ids

    async def test_full_round_trip(self, store: SQLiteStore):
        event = Event(
            kind="disabled",
            at=T0,
            vendor="acme",
            model="gpt-x",
            reason="auto",
            cause=None,
            disabled_at=T0,
            disabled_until=T0 + 300,
            failure_count=5,
            window_started_at=1795132681.124,  # a millisecond-precise literal (T0 - 59.999 is not)
            settings={**SETTINGS, "count_statuses": [429, 500], "sources": {"failure_threshold": "model"}},
            last_error=ErrorInfo(None, "connect timeout"),
            actor="127.0.0.1",
            detail={"attempts": 5, "nested": {"ok": True}},
        )
        event_id = await store.record(event)
        assert await store.events() == [replace(event, id=event_id)]

    async def test_minimal_event_round_trip(self, store: SQLiteStore):
        event_id = await store.record(Event(kind="config-reloaded", at=T0, settings={}, detail={}))
        assert await store.events() == [Event(kind="config-reloaded", at=T0, settings={}, detail={}, id=event_id)]

    async def test_settings_are_copied_into_columns(self, store: SQLiteStore, db: Path):
        await store.record(disable_event("a", "m", T0))
        with closing(sqlite3.connect(db)) as conn:
            row = conn.execute("SELECT threshold, window_seconds, duration_seconds FROM events").fetchone()
        assert row == (5, 60.0, 300.0)

    async def test_newest_first(self, store: SQLiteStore, filled: list[int]):
        assert [e.id for e in await store.events()] == filled[::-1]

    async def test_filters(self, store: SQLiteStore, filled: list[int]):
        assert [e.id for e in await store.events(vendor="a")] == [filled[5], filled[3], filled[1], filled[0]]
        assert [e.id for e in await store.events(model="m1")] == [filled[5], filled[3], filled[2], filled[0]]
        assert [e.id for e in await store.events(vendor="a", model="m1")] == [filled[5], filled[3], filled[0]]
        assert [e.id for e in await store.events(kind="enabled")] == [filled[3]]
        assert [e.id for e in await store.events(since=T0 + 30)] == [filled[5], filled[4], filled[3]]
        assert [e.id for e in await store.events(vendor="a", kind="disabled", since=T0 + 5)] == [filled[5], filled[1]]

    async def test_paging_with_before_id(self, store: SQLiteStore, filled: list[int]):
        pages, before = [], None
        while page := await store.events(limit=4, before_id=before):
            pages.append([e.id for e in page])
            before = page[-1].id
        assert pages == [filled[:1:-1], filled[1::-1]]
        assert [e.id for e in await store.events(vendor="a", before_id=filled[3], limit=1)] == [filled[1]]

    async def test_negative_limit_is_refused(self, store: SQLiteStore):
        with pytest.raises(ValueError):
            await store.events(limit=-1)

    async def test_timestamps_are_iso_text_in_the_sqlite3_shell(self, store: SQLiteStore, db: Path):
        await store.record(disable_event("a", "m", T0), set_disabled=auto_record("a", "m", T0))
        out = subprocess.run(
            ["sqlite3", str(db), "SELECT at, disabled_until FROM events; SELECT disabled_at FROM disabled_pairs;"],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        assert out.stdout.splitlines() == [
            "2026-11-19T23:59:01.123Z|2026-11-20T00:04:01.123Z",
            "2026-11-19T23:59:01.123Z",
        ]

    async def test_events_are_append_only(self, store: SQLiteStore, db: Path):
        await store.record(disable_event("a", "m", T0))
        with closing(sqlite3.connect(db)) as conn:
            with pytest.raises(sqlite3.IntegrityError, match="append-only"):
                conn.execute("UPDATE events SET kind = 'enabled'")
            with pytest.raises(sqlite3.IntegrityError, match="append-only"):
                conn.execute("DELETE FROM events")
        assert len(await store.events()) == 1


class TestSyncReaders:
    """The read-only helpers for the operator CLI see committed state, also while the server runs."""

    async def test_read_while_the_store_is_open(self, store: SQLiteStore, db: Path):
        auto, manual = auto_record("a", "m", T0), manual_record("b", "m", T0)
        first = await store.record(disable_event("a", "m", T0), set_disabled=auto)
        second = await store.record(Event(kind="manual-disable", at=T0 + 5, vendor="b", model="m"), set_disabled=manual)
        assert await asyncio.to_thread(read_disabled, db) == [auto, manual]
        assert [e.id for e in await asyncio.to_thread(read_events, db)] == [second, first]
        assert [e.id for e in read_events(db, vendor="a")] == [first]
        assert [e.id for e in read_events(db, kind="manual-disable", since=T0 + 5)] == [second]
        assert [e.id for e in read_events(db, limit=1)] == [second]
        assert read_events(db, model="m", before_id=second) == await store.events(before_id=second)

    async def test_read_while_another_connection_holds_the_write_lock(self, store: SQLiteStore, db: Path):
        await store.record(disable_event("a", "m", T0), set_disabled=auto_record("a", "m", T0))
        writer = sqlite3.connect(db, isolation_level=None)
        try:
            writer.execute("BEGIN IMMEDIATE")
            writer.execute("DELETE FROM disabled_pairs")
            assert read_disabled(db) == [auto_record("a", "m", T0)]  # WAL: readers see the last commit
            writer.execute("ROLLBACK")
        finally:
            writer.close()

    def test_read_only_helpers_do_not_write(self, db: Path):
        apply_migrations(db)
        digest = file_digest(db)
        assert read_disabled(db) == []
        assert read_events(db) == []
        assert file_digest(db) == digest

    def test_missing_database_is_reported(self, tmp_path: Path):
        with pytest.raises(FileNotFoundError):
            read_disabled(tmp_path / "nope.db")
        assert not (tmp_path / "nope.db").exists()


class TestPingAndClose:
    """ping() answers whether the database is usable; close() is final and idempotent."""

    async def test_ping(self, db: Path):
        store = await SQLiteStore.open(db)
        assert await store.ping() is True
        await store.close()
        assert await store.ping() is False
        await store.close()
        with pytest.raises(RuntimeError, match="closed"):
            await store.load_disabled()

    async def test_ping_false_while_another_connection_holds_the_write_lock(self, store: SQLiteStore, db: Path):
        assert store._conn is not None
        await store._conn.execute("PRAGMA busy_timeout = 50")  # fail fast, not after 5 s
        writer = sqlite3.connect(db, isolation_level=None)
        try:
            writer.execute("BEGIN IMMEDIATE")
            assert await store.ping() is False
            writer.execute("ROLLBACK")
            assert await store.ping() is True
        finally:
            writer.close()

    @staticmethod
    def pair_state(db: Path, vendor: str) -> tuple[list[int], list[int]]:
        """Committed event ids of `vendor` and the event ids its disabled_pairs rows point at."""
        with closing(sqlite3.connect(db)) as conn:
            events = [r[0] for r in conn.execute("SELECT id FROM events WHERE vendor = ? ORDER BY id", (vendor,))]
            rows = [r[0] for r in conn.execute("SELECT event_id FROM disabled_pairs WHERE vendor = ?", (vendor,))]
        return events, rows

    @staticmethod
    async def hold_at_upsert(store: SQLiteStore) -> tuple[threading.Event, threading.Event]:
        """Make aiosqlite's thread stop just before the disabled_pairs upsert (the event row already
        inserted, the transaction open) until the returned `release` is set."""
        reached, release = threading.Event(), threading.Event()

        def trace(sql: str) -> None:
            if sql.startswith("INSERT INTO disabled_pairs"):
                reached.set()
                release.wait(5)

        assert store._conn is not None
        await store._conn.set_trace_callback(trace)
        return reached, release

    async def test_caller_cancelled_mid_transaction_leaves_it_complete(self, store: SQLiteStore, db: Path):
        reached, release = await self.hold_at_upsert(store)
        try:
            caller = asyncio.create_task(store.record(disable_event("a", "m", T0), set_disabled=auto_record("a", "m", T0)))
            assert await asyncio.to_thread(reached.wait, 5)
            caller.cancel()  # the event row is inserted, the upsert not yet run
            with pytest.raises(asyncio.CancelledError):
                await caller
            assert self.pair_state(db, "a") == ([], [])  # nothing committed yet
            nxt = asyncio.create_task(store.record(disable_event("b", "m", T0 + 1), set_disabled=auto_record("b", "m", T0 + 1)))
            await asyncio.sleep(0.05)
            assert not nxt.done()  # queued behind the cancelled caller's transaction
        finally:
            release.set()
        second = await nxt  # would fail with "cannot start a transaction within a transaction" otherwise
        events, rows = self.pair_state(db, "a")
        assert len(events) == 1 and rows == events  # the cancelled write committed whole
        assert self.pair_state(db, "b") == ([second], [second])
        assert await store.load_disabled() == [auto_record("a", "m", T0), auto_record("b", "m", T0 + 1)]
        assert await store.ping() is True

    async def test_caller_cancelled_while_queued_withdraws_its_write(self, store: SQLiteStore, db: Path):
        reached, release = await self.hold_at_upsert(store)
        try:
            first = asyncio.create_task(store.record(disable_event("a", "m", T0), set_disabled=auto_record("a", "m", T0)))
            assert await asyncio.to_thread(reached.wait, 5)
            queued = asyncio.create_task(store.record(disable_event("q", "m", T0 + 1)))
            await asyncio.sleep(0.01)
            queued.cancel()  # still waiting for the lock: nothing of it has run
            with pytest.raises(asyncio.CancelledError):
                await queued
        finally:
            release.set()
        first_id = await first
        assert await store.record(disable_event("b", "m", T0 + 2)) > first_id
        assert self.pair_state(db, "a") == ([first_id], [first_id])
        assert self.pair_state(db, "q") == ([], [])

    @pytest.mark.parametrize("turns", range(8))
    async def test_caller_cancelled_at_any_point_leaves_all_or_nothing(self, store: SQLiteStore, db: Path, turns: int):
        caller = asyncio.create_task(store.record(disable_event("a", "m", T0), set_disabled=auto_record("a", "m", T0)))
        for _ in range(turns):
            await asyncio.sleep(0)
        caller.cancel()
        await asyncio.gather(caller, return_exceptions=True)
        second = await store.record(disable_event("b", "m", T0 + 1), set_disabled=auto_record("b", "m", T0 + 1))
        events, rows = self.pair_state(db, "a")
        assert (events, rows) == ([], []) or (len(events) == 1 and rows == events)
        if not caller.cancelled():
            assert events == [caller.result()]
        assert self.pair_state(db, "b") == ([second], [second])
        assert await store.ping() is True

    async def test_cancelled_caller_does_not_break_the_transaction(self, store: SQLiteStore):
        tasks = [asyncio.create_task(store.record(disable_event("a", f"m{i}", T0 + i))) for i in range(20)]
        await asyncio.sleep(0)
        for task in tasks[::2]:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        events = await store.events(limit=100)
        assert len({e.id for e in events}) == len(events) >= 10
        assert await store.ping() is True


class TestFileUnderTheStore:
    """The path stops naming the file the store opened: the next call writes back what this run committed."""

    async def test_a_restored_copy_gets_the_newer_events_once(self, tmp_path: Path) -> None:
        db = tmp_path / "c.db"
        store = await SQLiteStore.open(db)
        try:
            await store.load_disabled()
            await store.record(disable_event("a", "m", T0), set_disabled=auto_record("a", "m", T0))
            backup = tmp_path / "backup.db"
            with closing(sqlite3.connect(db)) as src, closing(sqlite3.connect(backup)) as dst:
                src.backup(dst)  # a consistent copy holding the first event
            await store.record(disable_event("b", "m", T0 + 1), set_disabled=auto_record("b", "m", T0 + 1))
            for sidecar in (tmp_path / "c.db-wal", tmp_path / "c.db-shm"):
                sidecar.unlink(missing_ok=True)
            backup.replace(db)  # the operator restores the backup under the running store
            assert store.file_problem is not None and "replaced" in store.file_problem
            await store.record(disable_event("c", "m", T0 + 2), set_disabled=auto_record("c", "m", T0 + 2))
        finally:
            await store.close()
        assert [(e.vendor, e.at) for e in sorted(read_events(db), key=lambda e: e.id)] == [
            ("a", T0),
            ("b", T0 + 1),
            ("c", T0 + 2),
        ]
        assert [(r.vendor, r.model) for r in read_disabled(db)] == [("a", "m"), ("b", "m"), ("c", "m")]

    async def test_only_the_newest_events_are_held(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        import cliproxy.services.store as store_module

        monkeypatch.setattr(store_module, "EVENTS_KEPT_IN_MEMORY", 2)
        db = tmp_path / "c.db"
        store = await SQLiteStore.open(db)
        try:
            await store.load_disabled()
            for i in range(3):
                await store.record(disable_event("a", f"m{i}", T0 + i))
            for path in (db, tmp_path / "c.db-wal", tmp_path / "c.db-shm"):
                path.unlink(missing_ok=True)
            assert await store.ping()  # recreated at once: the directory is writable
        finally:
            await store.close()
        assert [e.model for e in sorted(read_events(db), key=lambda e: e.id)] == ["m1", "m2"]
