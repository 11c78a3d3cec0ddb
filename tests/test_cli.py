"""The operator CLI against real database files, real config files, real servers and real subprocesses."""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import sqlite3
import stat
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web

from cliproxy.cli import confirmations as cli_confirmations
from cliproxy.cli import default_url, main
from cliproxy.cli import views as cli_views
from cliproxy.core.events import DisabledRecord, ErrorInfo, Event
from cliproxy.core.routing import RoutingTable
from cliproxy.services.config_loader import load_config
from cliproxy.services.store import SQLiteStore, apply_migrations, format_timestamp
from tests.helpers import make_config

REPO = Path(__file__).resolve().parent.parent
SECRET = "mgmt-key-Zq8w1-never-printed"

# --------------------------------------------------------------------------------------------
# Helpers: a config file, a seeded database, subprocesses
# --------------------------------------------------------------------------------------------


def config_data(db: Path, **extra: Any) -> dict[str, Any]:
    """One pair per state: acme holds the enabled / auto / manual / config-off / expired pairs."""
    key = [{"api-key": "sk-upstream-secret-0001"}]
    return {
        "host": "127.0.0.1",
        "port": 8317,
        "database": str(db),
        "openai-compatibility": [
            {
                "name": "acme",
                "base-url": "http://127.0.0.1:9/v1",
                "prefix": "acme",
                "api-key-entries": key,
                "models": [
                    {"name": "gpt-x", "alias": "fast"},
                    {"name": "meta/llama-3.1:8b", "alias": "llama"},
                    {"name": "qwen"},
                    {"name": "retired", "enabled": False},
                    {"name": "expired-one"},
                ],
            },
            {
                "name": "offco",
                "base-url": "http://127.0.0.1:9/v1",
                "enabled": False,
                "api-key-entries": key,
                "models": [{"name": "m1"}],
            },
            {
                "name": "keyless",
                "base-url": "http://127.0.0.1:9/v1",
                "api-key-entries": [{"api-key": "${CLIPROXY_TEST_UNSET_KEY:-}"}],
                "models": [{"name": "m2"}],
            },
        ],
        **extra,
    }


def write_config(tmp_path: Path, db: Path | None = None, **extra: Any) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config_data(db or tmp_path / "state" / "cliproxy.db", **extra), sort_keys=False))
    return path


def auto_pair(vendor: str, model: str, at: float, until: float, *, failures: int = 5) -> tuple[Event, DisabledRecord]:
    error = ErrorInfo(503, "upstream said: Service Unavailable")
    event = Event(
        kind="disabled", at=at, vendor=vendor, model=model, reason="auto", disabled_at=at, disabled_until=until,
        failure_count=failures, window_started_at=at - 10, last_error=error,
        settings={"failure_threshold": failures, "time_window_seconds": 60.0, "disable_duration_seconds": until - at},
    )  # fmt: skip
    record = DisabledRecord(
        vendor=vendor, model=model, reason="auto", disabled_at=at, disabled_until=until, failure_count=failures,
        window_started_at=at - 10, last_error=error, last_failure_at=at,
    )  # fmt: skip
    return event, record


def manual_pair(vendor: str, model: str, at: float, until: float | None) -> tuple[Event, DisabledRecord]:
    event = Event(
        kind="manual-disable", at=at, vendor=vendor, model=model, reason="manual", disabled_at=at,
        disabled_until=until, actor="127.0.0.1",
    )  # fmt: skip
    record = DisabledRecord(vendor=vendor, model=model, reason="manual", disabled_at=at, disabled_until=until, actor="127.0.0.1")
    return event, record


def ms(t: float) -> float:
    return round(t * 1000) / 1000


async def record_all(db: Path, writes: list[tuple[Event, DisabledRecord | None]]) -> None:
    store = await SQLiteStore.open(db)
    try:
        for event, record in writes:
            await store.record(event, set_disabled=record)
    finally:
        await store.close()


def seed(db: Path, now: float) -> None:
    """The database behind every state of `config_data`, plus history for the filters."""
    apply_migrations(db)
    writes: list[tuple[Event, DisabledRecord | None]] = [
        # old history: two hours ago, enabled again since
        (Event(kind="disabled", at=now - 7200, vendor="acme", model="gpt-x", reason="auto", disabled_at=now - 7200,
               disabled_until=now - 6900, failure_count=5, last_error=ErrorInfo(None, "connect timeout")), None),
        (Event(kind="enabled", at=now - 6900, vendor="acme", model="gpt-x", reason="auto", cause="expired",
               disabled_at=now - 7200, disabled_until=now - 6900), None),
        auto_pair("acme", "expired-one", now - 400, now - 100),  # over, server not told yet
        manual_pair("acme", "qwen", now - 60, now + 3780),  # 1h03m left
        auto_pair("acme", "meta/llama-3.1:8b", now - 48, now + 252.5),  # 4m12s left
        auto_pair("ghost", "gone-model", now - 30, now + 270),  # no longer configured
        auto_pair("offco", "m1", now - 10, now + 290),  # vendor off wins, auto-disable named too
    ]  # fmt: skip
    asyncio.run(record_all(db, writes))


def run_cli(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """`python -m cliproxy.cli ARGS` in a real subprocess, with a clean environment for our variables."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("CLIPROXY_")}
    base["PYTHONPATH"] = str(REPO)
    return subprocess.run(
        [sys.executable, "-m", "cliproxy.cli", *args], cwd=cwd, env={**base, **(env or {})},
        capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


def unused_port() -> int:
    with closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("CLIPROXY_CONFIG", "CLIPROXY_MANAGEMENT_KEY", "CLIPROXY_TEST_UNSET_KEY"):
        monkeypatch.delenv(name, raising=False)


def row_of(out: str, *cells: str) -> str:
    """The one table line holding every cell."""
    lines = [line for line in out.splitlines() if all(c in line for c in cells)]
    assert len(lines) == 1, (cells, out)
    return lines[0]


# --------------------------------------------------------------------------------------------
# Pure formatting and state rules
# --------------------------------------------------------------------------------------------


class TestFormatting:
    """Durations, times, tables and management paths render the same way everywhere."""

    @pytest.mark.parametrize(
        ("seconds", "text"),
        [(0, "0s"), (-5, "0s"), (0.2, "1s"), (42, "42s"), (59.5, "1m00s"), (252, "4m12s"), (600, "10m00s"),
         (3599, "59m59s"), (3600, "1h00m"), (3780, "1h03m"), (86399, "23h59m"), (86400, "1d0h"), (187200, "2d4h")],
    )  # fmt: skip
    def test_durations(self, seconds: float, text: str):
        assert cli_views.format_duration(seconds) == text

    @pytest.mark.parametrize(
        ("text", "seconds"),
        [("90", 90), ("90s", 90), ("10m", 600), ("1h30m", 5400), ("2d", 172800), ("1w", 604800), ("1.5h", 5400)],
    )
    def test_parse_duration(self, text: str, seconds: float):
        assert cli_views.parse_duration(text) == seconds

    @pytest.mark.parametrize("text", ["", "0", "0s", "-5m", "10x", "m10", "ten minutes"])
    def test_parse_duration_rejects(self, text: str):
        with pytest.raises(ValueError):
            cli_views.parse_duration(text)

    def test_parse_since(self):
        now = 1_800_000_000.0
        assert cli_views.parse_since("30m", now) == now - 1800
        assert cli_views.parse_since("24h", now) == now - 86400
        assert cli_views.parse_since("7d", now) == now - 7 * 86400
        assert cli_views.parse_since("2026-11-21", now) == 1795219200.0
        assert cli_views.parse_since("2026-11-21T08:00:00Z", now) == 1795219200.0 + 8 * 3600
        assert cli_views.parse_since("2026-11-21T09:00:00+01:00", now) == 1795219200.0 + 8 * 3600
        with pytest.raises(ValueError, match="not a duration or ISO-8601 time"):
            cli_views.parse_since("yesterday", now)

    def test_iso_matches_the_database_format(self):
        for t in (0.0, 1795132741.123, 1795132741.9996):
            assert cli_views.iso(t) == format_timestamp(t)
        assert cli_views.iso(None) is None
        assert cli_views.format_time(1795132741.999) == "2026-11-19T23:59:01Z"

    def test_table_is_aligned_without_trailing_blanks(self):
        text = cli_views.render_table(("A", "LONGER", "C"), [("xx", None, ""), ("y", "zzzzzzzz", "w")])
        assert text.splitlines() == ["A   LONGER    C", "xx  -         -", "y   zzzzzzzz  w"]

    def test_management_path_encodes_slash_and_colon(self):
        assert cli_confirmations.management_path("disable", "open router", "meta-llama/llama-3.1:8b") == (
            "/api/models/meta-llama%2Fllama-3.1%3A8b/disable?vendor=open%20router"
        )

    def test_default_url(self):
        assert default_url(make_config({"host": "0.0.0.0", "port": 9000})) == "http://127.0.0.1:9000"
        assert default_url(make_config({"host": "::", "port": 9000})) == "http://[::1]:9000"
        assert default_url(make_config({"host": "fe80::1", "port": 9000})) == "http://[fe80::1]:9000"
        assert default_url(make_config({"host": "10.1.2.3", "port": 9000})) == "http://10.1.2.3:9000"


class TestPairStates:
    """Each configured pair gets one state by precedence; the others that hold are named in the detail."""

    NOW = 1_800_000_000.0

    def statuses(self, disabled: list[DisabledRecord]) -> tuple[dict, list]:
        config = make_config(config_data(Path("/nowhere.db")), env={})
        configured, orphans = cli_views.pair_statuses(RoutingTable(config), disabled, self.NOW)
        return {(s.vendor, s.model): s for s in configured}, orphans

    def test_every_state(self):
        now = self.NOW
        by_pair, orphans = self.statuses([
            auto_pair("acme", "meta/llama-3.1:8b", now - 48, now + 252)[1],
            manual_pair("acme", "qwen", now - 60, now + 3780)[1],
            auto_pair("acme", "expired-one", now - 400, now)[1],  # ends exactly now: over
            auto_pair("offco", "m1", now, now + 300)[1],
            auto_pair("ghost", "gone", now, now + 300)[1],
        ])  # fmt: skip
        state = {k: (s.state, s.label, s.routable) for k, s in by_pair.items()}
        assert state == {
            ("acme", "gpt-x"): ("enabled", "enabled", True),
            ("acme", "meta/llama-3.1:8b"): ("auto-disabled", "auto-disabled", False),
            ("acme", "qwen"): ("manually-disabled", "manually disabled", False),
            ("acme", "retired"): ("manually-disabled", "manually disabled", False),
            ("acme", "expired-one"): ("enabled", "enabled (expired, not yet recorded)", True),
            ("offco", "m1"): ("vendor-off", "vendor off", False),
            ("keyless", "m2"): ("no-key", "no key", False),
        }
        assert by_pair["acme", "gpt-x"].names == ("fast", "acme/fast")
        assert by_pair["acme", "meta/llama-3.1:8b"].detail == (
            "4m12s left, until 2027-01-15T08:04:12.000Z, 5 failures, last error: 503 upstream said: Service Unavailable"
        )
        assert by_pair["acme", "expired-one"].detail.startswith("auto-disabled ended 2027-01-15T08:00:00.000Z, 5 failures")
        assert "5 failures" in by_pair["acme", "meta/llama-3.1:8b"].detail
        assert by_pair["acme", "qwen"].detail == "1h03m left, until 2027-01-15T09:03:00.000Z, by 127.0.0.1"
        assert by_pair["acme", "retired"].detail == "permanent: enabled: false in the config"
        assert "vendor enabled: false" in by_pair["offco", "m1"].detail
        assert by_pair["offco", "m1"].detail.startswith("vendor enabled: false in the config; auto-disabled, 5m00s left")
        [orphan] = orphans
        assert (orphan.vendor, orphan.model, orphan.state, orphan.configured, orphan.routable) == (
            "ghost", "gone", "not-configured", False, False,
        )  # fmt: skip
        assert orphan.detail.startswith("auto-disabled, 5m00s left")

    def test_manual_without_end_and_manual_over_auto(self):
        now = self.NOW
        by_pair, _ = self.statuses([
            manual_pair("acme", "gpt-x", now - 5, None)[1],
            auto_pair("acme", "gpt-x", now - 5, now + 100)[1],
        ])  # fmt: skip
        status = by_pair["acme", "gpt-x"]
        assert status.state == "manually-disabled"
        assert status.detail.startswith("no end, by 127.0.0.1; auto-disabled, 1m40s left")

    def test_json_has_iso_times_and_seconds(self):
        now = self.NOW
        by_pair, _ = self.statuses([auto_pair("acme", "gpt-x", now - 48, now + 252)[1]])
        [obj] = cli_views.status_json([by_pair["acme", "gpt-x"]])
        assert obj["state"] == "auto-disabled" and obj["routable"] is False
        [d] = obj["disables"]
        assert d["disabled_until"] == cli_views.iso(now + 252) and d["remaining_seconds"] == 252
        assert d["last_status"] == 503 and d["expired"] is False
        json.dumps(obj)  # serialisable as it is


# --------------------------------------------------------------------------------------------
# migrate
# --------------------------------------------------------------------------------------------


class TestMigrate:
    """`migrate` applies what is pending once, lists it with --dry-run, and fails in one clean line."""

    def test_twice_then_noop(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
        db = tmp_path / "state" / "cliproxy.db"
        config = write_config(tmp_path, db)
        assert main(["migrate", "--dry-run", "--config", str(config)]) == 0
        assert "0001_initial.sql" in capsys.readouterr().out
        assert not db.exists(), "--dry-run creates nothing"
        assert main(["migrate", "--config", str(config)]) == 0
        shipped = [
            "0001_initial.sql",
            "0002_last_failure_at.sql",
            "0003_rate_limited.sql",
            "0004_recovery.sql",
            "0006_last_error_kind.sql",
            "0007_disabled_keys.sql",
        ]
        assert capsys.readouterr().out.strip() == "\n".join(f"{db}: applied {name}" for name in shipped)
        with closing(sqlite3.connect(db)) as conn:
            assert conn.execute("SELECT version FROM schema_migrations").fetchall() == [(1,), (2,), (3,), (4,), (6,), (7,)]
        assert main(["migrate", "--config", str(config)]) == 0
        assert capsys.readouterr().out.strip() == f"{db}: up to date"
        assert main(["migrate", "--dry-run", "--config", str(config)]) == 0
        assert capsys.readouterr().out.strip() == f"{db}: up to date"

    def test_subprocess_uses_cliproxy_config_from_the_environment(self, tmp_path: Path):
        db = tmp_path / "cliproxy.db"
        config = write_config(tmp_path, db)
        first = run_cli("migrate", cwd=tmp_path, env={"CLIPROXY_CONFIG": str(config)})
        assert (first.returncode, first.stderr) == (0, "")
        assert "applied 0001_initial.sql" in first.stdout
        second = run_cli("migrate", cwd=tmp_path, env={"CLIPROXY_CONFIG": str(config)})
        assert second.returncode == 0 and "up to date" in second.stdout

    def test_failing_migration_exits_3_with_one_line(self, tmp_path: Path):
        db = tmp_path / "cliproxy.db"
        with closing(sqlite3.connect(db)) as conn:  # a table in the way of 0001_initial
            conn.execute("CREATE TABLE events (x)")
            conn.commit()
        config = write_config(tmp_path, db)
        result = run_cli("migrate", "--config", str(config), cwd=tmp_path)
        assert result.returncode == 3  # the database cannot be used (cli.EXIT_DATABASE)
        assert result.stdout == ""
        assert "Traceback" not in result.stderr
        assert result.stderr.count("\n") == 1
        assert re.match(
            r"cliproxy migrate: error: migration 0001_initial\.sql failed at line \d+: table events already exists", result.stderr
        )
        with closing(sqlite3.connect(db)) as conn:  # left as it was
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert tables == {"events"}

    def test_not_a_database(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
        db = tmp_path / "cliproxy.db"
        db.write_bytes(b"this is not an SQLite file at all" * 100)
        assert main(["migrate", "--config", str(write_config(tmp_path, db))]) == 3
        err = capsys.readouterr().err
        assert err.startswith("cliproxy migrate: error: ") and "not a database" in err


# --------------------------------------------------------------------------------------------
# status
# --------------------------------------------------------------------------------------------


class TestStatus:
    """`status` shows every configured pair with its state from the config and the database file."""

    def test_every_state(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
        db = tmp_path / "cliproxy.db"
        seed(db, time.time())
        assert main(["status", "--config", str(write_config(tmp_path, db))]) == 0
        out = capsys.readouterr().out
        assert f"database {db}" in out
        assert re.search(r"^VENDOR +MODEL +NAMES +STATE +DETAIL$", out, re.MULTILINE)
        assert re.search(r"acme +gpt-x +fast, acme/fast +enabled +-$", out, re.MULTILINE)
        llama = row_of(out, "meta/llama-3.1:8b")
        assert re.search(
            r"llama, acme/llama +auto-disabled +4m1\ds left, until \S+Z, 5 failures, last error: 503 upstream said", llama
        )
        assert re.search(r"manually disabled +1h0[23]m left, until \S+Z, by 127\.0\.0\.1$", row_of(out, "acme", "qwen"))
        assert re.search(r"manually disabled +permanent: enabled: false in the config$", row_of(out, "retired"))
        assert re.search(
            r"enabled \(expired, not yet recorded\) +auto-disabled ended \S+Z, 5 failures", row_of(out, "expired-one")
        )
        assert re.search(
            r"offco +m1 +m1 +vendor off +vendor enabled: false in the config; auto-disabled, 4m[45]\ds left", row_of(out, "offco")
        )
        assert "no key" in row_of(out, "keyless", "m2")
        assert "7 pairs: 2 enabled, 1 auto-disabled, 2 manually disabled, 1 vendor off, 1 no key" in out
        assert "Disabled in the database but not in the config" in out
        assert re.search(r"ghost +gone-model +- +not configured +auto-disabled, 4m[23]\ds left", out)
        # columns line up: every STATE cell starts at the same offset
        header = next(line for line in out.splitlines() if line.startswith("VENDOR"))
        offset = header.index("STATE")
        table = out.split("\n\n")[1].splitlines()[1:]
        assert all(line[offset - 2 : offset] == "  " and line[offset] != " " for line in table)

    def test_json(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
        db = tmp_path / "cliproxy.db"
        now = time.time()
        seed(db, now)
        assert main(["status", "--json", "--config", str(write_config(tmp_path, db))]) == 0
        data = json.loads(capsys.readouterr().out)
        states = {(o["vendor"], o["model"]): o["state"] for o in data}
        assert states == {
            ("acme", "gpt-x"): "enabled",
            ("acme", "meta/llama-3.1:8b"): "auto-disabled",
            ("acme", "qwen"): "manually-disabled",
            ("acme", "retired"): "manually-disabled",
            ("acme", "expired-one"): "enabled",
            ("offco", "m1"): "vendor-off",
            ("keyless", "m2"): "no-key",
            ("ghost", "gone-model"): "not-configured",
        }
        llama = next(o for o in data if o["model"] == "meta/llama-3.1:8b")
        [d] = llama["disables"]
        assert d["disabled_until"] == format_timestamp(ms(now + 252.5))
        assert d["last_failure_at"] == format_timestamp(ms(now - 48))  # the failure that tripped it
        assert 240 < d["remaining_seconds"] <= 252.5
        expired = next(o for o in data if o["model"] == "expired-one")
        assert expired["label"] == "enabled (expired, not yet recorded)" and expired["disables"][0]["expired"] is True

    @pytest.mark.parametrize(("recovery", "state", "routable"), [("half-open", "half-open", True), ("probe", "probing", False)])
    def test_an_ended_disable_waiting_for_its_recovery_verdict(self, tmp_path, capsys, recovery, state, routable):
        """Not "enabled (expired, not yet recorded)": the server keeps the row until the verdict."""
        db = tmp_path / "cliproxy.db"
        now = time.time()
        apply_migrations(db)
        asyncio.run(record_all(db, [auto_pair("acme", "expired-one", now - 400, now - 100)]))
        config = write_config(tmp_path, db, **{"auto-disable": {"recovery": recovery}})
        assert main(["status", "--config", str(config)]) == 0
        row = row_of(capsys.readouterr().out, "expired-one")
        assert re.search(rf"{state} +auto-disable ended \S+Z; recovery: {recovery}", row), row
        assert "not yet recorded" not in row
        assert main(["status", "--json", "--config", str(config)]) == 0
        [pair] = [o for o in json.loads(capsys.readouterr().out) if o["model"] == "expired-one"]
        assert (pair["state"], pair["recovery_state"], pair["routable"]) == (state, state, routable)

    def test_a_pair_reenabled_within_its_slow_start_is_slow_starting(self, tmp_path, capsys):
        db = tmp_path / "cliproxy.db"
        now = time.time()
        apply_migrations(db)
        enabled = Event(
            kind="enabled", at=now - 10, vendor="acme", model="gpt-x", reason="auto", cause="expired",
            disabled_at=now - 70, disabled_until=now - 10,
        )  # fmt: skip
        asyncio.run(record_all(db, [(enabled, None)]))
        config = write_config(tmp_path, db, **{"auto-disable": {"slow-start-seconds": 60}})
        assert main(["status", "--config", str(config)]) == 0
        row = row_of(capsys.readouterr().out, "gpt-x")
        assert re.search(r"slow-start +re-enabled, its share of the tier ramps up until \S+Z$", row), row
        assert main(["status", "--json", "--config", str(config)]) == 0
        [pair] = [o for o in json.loads(capsys.readouterr().out) if o["model"] == "gpt-x"]
        assert (pair["state"], pair["recovery_state"], pair["routable"]) == ("slow-start", "slow-start", True)
        # Past its slow start (or without one) the same history is plain `enabled`.
        for later in (write_config(tmp_path, db, **{"auto-disable": {"slow-start-seconds": 5}}), write_config(tmp_path, db)):
            assert main(["status", "--json", "--config", str(later)]) == 0
            [pair] = [o for o in json.loads(capsys.readouterr().out) if o["model"] == "gpt-x"]
            assert (pair["state"], pair["recovery_state"]) == ("enabled", "enabled")

    def test_missing_database_is_nothing_disabled(self, tmp_path: Path):
        db = tmp_path / "never-created.db"
        result = run_cli("status", "--config", str(write_config(tmp_path, db)), cwd=tmp_path)
        assert (result.returncode, result.stderr) == (0, "")
        assert f"no database at {db}: nothing is disabled" in result.stdout
        assert re.search(r"acme +gpt-x +fast, acme/fast +enabled", result.stdout)
        assert not db.exists(), "status must not create the database"
        as_json = run_cli("status", "--json", "--config", str(write_config(tmp_path, db)), cwd=tmp_path)
        assert as_json.returncode == 0 and "no database" in as_json.stderr
        assert all(o["disables"] == [] for o in json.loads(as_json.stdout))

    def test_database_without_schema(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
        db = tmp_path / "empty.db"
        sqlite3.connect(db).close()
        assert main(["status", "--config", str(write_config(tmp_path, db))]) == 1
        err = capsys.readouterr().err
        assert err.startswith("cliproxy status: error: database") and "run `cliproxy migrate`" in err

    async def test_reads_while_the_server_holds_the_database(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
        """A live writer connection (WAL) does not stop a read, and a fresh commit is seen at once."""
        db = tmp_path / "cliproxy.db"
        config = write_config(tmp_path, db)
        store = await SQLiteStore.open(db)
        try:
            now = ms(time.time())
            event, record = auto_pair("acme", "gpt-x", now, now + 600)
            await store.record(event, set_disabled=record)
            assert await asyncio.to_thread(main, ["status", "--config", str(config)]) == 0
            assert re.search(r"auto-disabled +(10m00s|9m5\ds) left", row_of(capsys.readouterr().out, "gpt-x"))
            assert await store.ping()
        finally:
            await store.close()

    def test_subprocess_and_bad_config(self, tmp_path: Path):
        db = tmp_path / "cliproxy.db"
        seed(db, time.time())
        ok = run_cli("status", "--config", str(write_config(tmp_path, db)), cwd=tmp_path)
        assert ok.returncode == 0 and "auto-disabled" in ok.stdout
        bad = tmp_path / "bad.yaml"
        bad.write_text("port: nope\nopenai-compatibility:\n  - name: x\n")
        result = run_cli("status", "--config", str(bad), cwd=tmp_path)
        assert result.returncode == 2 and "Traceback" not in result.stderr and "port:" in result.stderr


class TestWithoutTheServersEnvironment:
    """`status`, `history`, `enable` and `disable` run where the config's `${VAR}`s are unset (the
    unit reads them from a file the operator's shell does not): they need only the database, host
    and port, and a key they cannot see is reported as unknown, not missing."""

    VARIABLES = {
        "CLIPROXY_TEST_VAULT_KEY": "sk-vault-0001",
        "CLIPROXY_TEST_CLIENT_KEY": "client-0001",
        "CLIPROXY_TEST_MGMT_KEY": "mgmt-0001",
        "CLIPROXY_TEST_RETRIES": "2",
    }

    def config(self, tmp_path: Path, db: Path, **extra: Any) -> Path:
        data = config_data(db, **extra)
        data["api-keys"] = ["${CLIPROXY_TEST_CLIENT_KEY}"]
        data["request-retry"] = "${CLIPROXY_TEST_RETRIES}"  # not valid as "": read as absent
        data["remote-management"] = {"secret-key": "${CLIPROXY_TEST_MGMT_KEY}"}
        data["openai-compatibility"].append(
            {
                "name": "vaulted",
                "base-url": "http://127.0.0.1:9/v1",
                "api-key-entries": [{"api-key": "${CLIPROXY_TEST_VAULT_KEY}"}],
                "models": [{"name": "m3"}],
            }
        )
        path = tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    def test_status_and_history_in_a_shell_without_the_variables(self, tmp_path: Path):
        db = tmp_path / "cliproxy.db"
        seed(db, time.time())
        config = self.config(tmp_path, db)
        strict = run_cli("check-config", "--config", str(config), cwd=tmp_path)
        assert strict.returncode == 2 and "CLIPROXY_TEST_VAULT_KEY is not set" in strict.stderr  # serve still refuses

        status = run_cli("status", "--config", str(config), cwd=tmp_path)
        assert (status.returncode, status.stderr) == (0, "")
        vaulted = row_of(status.stdout, "vaulted", "m3")
        assert re.search(
            r"vaulted +m3 +m3 +enabled +key from \$\{CLIPROXY_TEST_VAULT_KEY\} \(not set here; assumed set for the server\)$",
            vaulted,
        )
        assert "no key" not in vaulted
        assert "no key" in row_of(status.stdout, "keyless", "m2")  # `${VAR:-}`: empty on purpose, really no key
        assert re.search(r"llama, acme/llama +auto-disabled +4m", row_of(status.stdout, "meta/llama-3.1:8b"))
        assert "8 pairs: 3 enabled, 1 auto-disabled, 2 manually disabled, 1 vendor off, 1 no key" in status.stdout

        as_json = run_cli("status", "--json", "--config", str(config), cwd=tmp_path)
        assert as_json.returncode == 0
        by_model = {o["model"]: o for o in json.loads(as_json.stdout)}
        assert by_model["m3"]["state"] == "enabled" and by_model["m3"]["missing_key"] is None
        assert by_model["m3"]["key_variables_unset"] == ["CLIPROXY_TEST_VAULT_KEY"]
        assert by_model["m2"]["missing_key"] is True and by_model["m2"]["key_variables_unset"] == []

        history = run_cli("history", "--since", "24h", "--config", str(config), cwd=tmp_path)
        assert (history.returncode, history.stderr) == (0, "")
        assert "7 event(s)" in history.stdout

        with_them = run_cli("status", "--json", "--config", str(config), cwd=tmp_path, env=self.VARIABLES)
        m3 = next(o for o in json.loads(with_them.stdout) if o["model"] == "m3")
        assert (m3["missing_key"], m3["key_variables_unset"], m3["detail"]) == (False, [], "")

    def test_enable_finds_the_address_without_the_variables(self, tmp_path: Path):
        port = unused_port()
        config = self.config(tmp_path, tmp_path / "x.db", port=port)
        result = run_cli(
            "enable", "vaulted", "m3", "--config", str(config), cwd=tmp_path, env={"CLIPROXY_MANAGEMENT_KEY": SECRET}
        )
        assert result.returncode == 1
        assert (
            result.stderr == f"cliproxy enable: error: cliproxy is not running at http://127.0.0.1:{port} (connection refused)\n"
        )

    def test_an_unset_variable_in_what_the_command_needs_is_still_an_error(self, tmp_path: Path):
        config = self.config(tmp_path, Path("${CLIPROXY_TEST_STATE_DIR}/cliproxy.db"))
        result = run_cli("status", "--config", str(config), cwd=tmp_path)
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert "database: environment variable CLIPROXY_TEST_STATE_DIR is not set" in result.stderr
        assert not list(tmp_path.glob("*.db"))


# --------------------------------------------------------------------------------------------
# history
# --------------------------------------------------------------------------------------------


class TestHistory:
    """`history` lists the audit events newest first, filtered, as an aligned table or JSON."""

    @pytest.fixture
    def seeded(self, tmp_path: Path) -> tuple[Path, float]:
        db = tmp_path / "cliproxy.db"
        now = time.time()
        seed(db, now)
        return write_config(tmp_path, db), now

    def test_table_newest_first(self, seeded: tuple[Path, float], capsys: pytest.CaptureFixture[str]):
        config, _ = seeded
        assert main(["history", "--config", str(config)]) == 0
        out = capsys.readouterr().out
        lines = out.splitlines()
        assert re.match(r"TIME +KIND +VENDOR +MODEL +REASON/CAUSE +FAILURES +DISABLED UNTIL +ACTOR +LAST ERROR$", lines[0])
        rows = [line.split()[1:4] for line in lines[1:8]]
        assert rows == [
            ["disabled", "offco", "m1"], ["disabled", "ghost", "gone-model"], ["disabled", "acme", "meta/llama-3.1:8b"],
            ["manual-disable", "acme", "qwen"], ["disabled", "acme", "expired-one"], ["enabled", "acme", "gpt-x"],
            ["disabled", "acme", "gpt-x"],
        ]  # fmt: skip
        assert lines[1:8] == sorted(lines[1:8], reverse=True), "newest first"
        assert re.search(r"enabled +acme +gpt-x +auto/expired +- +\S+Z +- +-$", lines[6])
        assert re.search(r"disabled +acme +gpt-x +auto +5 +\S+Z +- +transport connect timeout$", lines[7])
        assert "7 event(s), newest first, times in UTC" in out
        assert re.search(r"manual-disable +acme +qwen +manual +- +\S+Z +127\.0\.0\.1", out)

    def test_filters(self, seeded: tuple[Path, float], capsys: pytest.CaptureFixture[str]):
        config, _ = seeded

        def models(*args: str) -> list[tuple[str, str]]:
            assert main(["history", "--json", "--config", str(config), *args]) == 0
            return [(e["kind"], e["model"]) for e in json.loads(capsys.readouterr().out)]

        assert models("--vendor", "acme", "--model", "gpt-x") == [("enabled", "gpt-x"), ("disabled", "gpt-x")]
        assert models("--kind", "manual-disable") == [("manual-disable", "qwen")]
        assert models("--kind", "enabled") == [("enabled", "gpt-x")]
        assert models("--since", "30m") == [
            ("disabled", "m1"), ("disabled", "gone-model"), ("disabled", "meta/llama-3.1:8b"), ("manual-disable", "qwen"),
            ("disabled", "expired-one"),
        ]  # fmt: skip
        assert len(models("--since", "3h")) == 7
        assert len(models("--limit", "2")) == 2
        two_hours_ago = cli_views.iso(time.time() - 7300)
        assert len(models("--since", two_hours_ago)) == 7
        assert models("--vendor", "nobody") == []

    def test_json_shape(self, seeded: tuple[Path, float], capsys: pytest.CaptureFixture[str]):
        config, now = seeded
        assert main(["history", "--json", "--kind", "disabled", "--model", "meta/llama-3.1:8b", "--config", str(config)]) == 0
        [event] = json.loads(capsys.readouterr().out)
        assert event["at"] == format_timestamp(ms(now - 48))
        assert event["disabled_until"] == format_timestamp(ms(now + 252.5))
        assert event["disabled_seconds"] == 300.5
        assert (event["failure_count"], event["last_status"], event["reason"]) == (5, 503, "auto")
        assert event["settings"]["failure_threshold"] == 5
        assert isinstance(event["id"], int)

    def test_limit_note_and_no_match(self, seeded: tuple[Path, float], capsys: pytest.CaptureFixture[str]):
        config, _ = seeded
        assert main(["history", "--limit", "3", "--config", str(config)]) == 0
        assert "older events may exist" in capsys.readouterr().out
        assert main(["history", "--vendor", "nobody", "--config", str(config)]) == 0
        assert capsys.readouterr().out.startswith("no events match")

    def test_subprocess_and_bad_arguments(self, seeded: tuple[Path, float], tmp_path: Path):
        config, _ = seeded
        ok = run_cli("history", "--vendor", "acme", "--since", "24h", "--config", str(config), cwd=tmp_path)
        assert ok.returncode == 0 and ok.stderr == ""
        assert "5 event(s)" in ok.stdout
        for bad in (["--since", "yesterday"], ["--limit", "0"], ["--kind", "exploded"]):
            result = run_cli("history", *bad, "--config", str(config), cwd=tmp_path)
            assert result.returncode == 2 and "Traceback" not in result.stderr, bad
            assert "usage: cliproxy history" in result.stderr

    def test_missing_database(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
        config = write_config(tmp_path, tmp_path / "none.db")
        assert main(["history", "--config", str(config)]) == 0
        assert "no history yet" in capsys.readouterr().out
        assert main(["history", "--json", "--config", str(config)]) == 0
        captured = capsys.readouterr()
        assert json.loads(captured.out) == [] and "no history yet" in captured.err


# --------------------------------------------------------------------------------------------
# enable / disable
# --------------------------------------------------------------------------------------------


class ManagementStub:
    """A real HTTP server standing in for the management API: records requests, answers as scripted."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.answer: tuple[int, dict[str, Any], dict[str, str]] = (200, {"ok": True}, {})

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append(
            {
                "method": request.method,
                "raw_path": request.raw_path,
                "model": request.match_info["model"],
                "action": request.match_info["action"],
                "vendor": request.query.get("vendor"),
                "authorization": request.headers.get("Authorization"),
                "content_type": request.headers.get("Content-Type"),
                "body": await request.json() if request.can_read_body else None,
            }
        )
        status, body, headers = self.answer
        return web.json_response(body, status=status, headers=headers)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/api/models/{model:.+}/{action:enable|disable}", self.handle)
        return app


@pytest.fixture
async def stub(aiohttp_server: Any) -> tuple[ManagementStub, str]:
    stub = ManagementStub()
    server = await aiohttp_server(stub.app())
    return stub, str(server.make_url("")).rstrip("/")


def openai_error(message: str, code: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": code, "param": None, "code": code}}


class TestManagementCalls:
    """`enable` and `disable` call the running server's management API and report its answer in one line."""

    async def call(self, *args: str) -> int:
        return await asyncio.to_thread(main, list(args))

    async def test_disable_with_duration(self, stub, capsys: pytest.CaptureFixture[str]):
        server, url = stub
        assert (
            await self.call(
                "disable", "open router", "meta-llama/llama-3.1:8b", "--duration", "10m", "--url", url, "--key", SECRET
            )
            == 0
        )
        [request] = server.requests
        assert request["raw_path"] == "/api/models/meta-llama%2Fllama-3.1%3A8b/disable?vendor=open%20router"
        assert (request["model"], request["vendor"], request["action"]) == ("meta-llama/llama-3.1:8b", "open router", "disable")
        assert request["authorization"] == f"Bearer {SECRET}"
        assert request["content_type"] == "application/json"
        assert request["body"] == {"duration_seconds": 600}
        out, err = capsys.readouterr()
        assert re.fullmatch(
            rf"open router meta-llama/llama-3\.1:8b: disabled for 10m00s, until \S+Z \(via {re.escape(url)}\)\n", out
        )
        assert err == "" and SECRET not in out

    async def test_enable_and_permanent_disable_with_key_from_environment(
        self, stub, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
    ):
        server, url = stub
        monkeypatch.setenv("CLIPROXY_MANAGEMENT_KEY", SECRET)
        assert await self.call("enable", "acme", "qwen2.5:7b", "--url", url) == 0
        assert await self.call("disable", "acme", "qwen2.5:7b", "--url", url + "/") == 0
        assert [(r["action"], r["body"], r["authorization"]) for r in server.requests] == [
            ("enable", {}, f"Bearer {SECRET}"),
            ("disable", {}, f"Bearer {SECRET}"),
        ]
        assert server.requests[0]["raw_path"] == "/api/models/qwen2.5%3A7b/enable?vendor=acme"
        out = capsys.readouterr().out
        assert out.splitlines() == [
            f"acme qwen2.5:7b: enabled (via {url})",
            f"acme qwen2.5:7b: disabled until enabled again (via {url})",
        ]

    @pytest.mark.parametrize(
        ("status", "body", "headers", "expected"),
        [
            (401, openai_error("invalid management key", "unauthorized"), {}, "server answered 401: invalid management key"),
            (403, openai_error("remote management is disabled", "forbidden"), {}, "server answered 403: remote management is disabled"),
            (404, openai_error("no model 'zzz' at vendor 'acme'", "model_not_found"), {}, "server answered 404: no model 'zzz' at vendor 'acme'"),
            (429, openai_error("too many failed attempts", "rate_limited"), {"Retry-After": "600"}, "server answered 429: too many failed attempts (retry after 600s)"),
        ],
    )  # fmt: skip
    async def test_errors_are_the_servers_message(self, stub, capsys, status, body, headers, expected):
        server, url = stub
        server.answer = (status, body, headers)
        assert await self.call("enable", "acme", "zzz", "--url", url, "--key", SECRET) == 1
        out, err = capsys.readouterr()
        assert out == ""
        assert err == f"cliproxy enable: error: acme zzz: {expected}\n"

    async def test_confirmation_uses_the_servers_answer(self, stub, capsys):
        """The end time the server reports, and every pair an alias meant."""
        server, url = stub
        pairs = [
            {"vendor": "acme", "model": m, "manual_disable": {"disabled_until": "2030-01-01T00:10:00.000Z"}}
            for m in ("m-a", "m-b")
        ]
        server.answer = (200, {"model": "pool", "pairs": pairs}, {})
        assert await self.call("disable", "acme", "pool", "--duration", "600", "--url", url, "--key", SECRET) == 0
        assert capsys.readouterr().out == (
            f"acme pool: disabled for 10m00s, until 2030-01-01T00:10:00.000Z (2 pairs: acme/m-a, acme/m-b) (via {url})\n"
        )

    async def test_key_echoed_by_the_server_is_masked(self, stub, capsys):
        server, url = stub
        server.answer = (401, openai_error(f"bad key {SECRET}", "unauthorized"), {})
        assert await self.call("disable", "acme", "m", "--url", url, "--key", SECRET) == 1
        out, err = capsys.readouterr()
        assert SECRET not in out + err and "bad key ***" in err

    def test_no_key_is_refused_before_any_request(self, tmp_path: Path, capsys):
        assert main(["enable", "acme", "m", "--url", f"http://127.0.0.1:{unused_port()}"]) == 2
        assert capsys.readouterr().err == "cliproxy enable: error: no management key: pass --key or set CLIPROXY_MANAGEMENT_KEY\n"

    def test_not_running(self, tmp_path: Path):
        port = unused_port()
        config = write_config(tmp_path, tmp_path / "x.db", host="0.0.0.0", port=port)
        for args in (["enable", "acme", "gpt-x"], ["disable", "acme", "gpt-x", "--duration", "5m"]):
            result = run_cli(*args, "--config", str(config), cwd=tmp_path, env={"CLIPROXY_MANAGEMENT_KEY": SECRET})
            assert result.returncode == 1
            assert result.stdout == ""
            assert (
                result.stderr
                == f"cliproxy {args[0]}: error: cliproxy is not running at http://127.0.0.1:{port} (connection refused)\n"
            )
            assert SECRET not in result.stderr

    def test_bad_duration_is_a_usage_error(self, tmp_path: Path):
        result = run_cli("disable", "acme", "m", "--duration", "soon", "--key", SECRET, cwd=tmp_path)
        assert result.returncode == 2 and "not a duration" in result.stderr and "Traceback" not in result.stderr
        assert SECRET not in result.stderr


class TestThroughTheRealGateway:
    """enable / disable reach the real management API; status and history then show what it did."""

    async def start(self, gateway: Any, tmp_path: Path) -> tuple[str, Path, Path]:
        db = tmp_path / "state" / "cliproxy.db"
        config_path = write_config(tmp_path, db, **{"remote-management": {"secret-key": SECRET}})
        gw = await gateway(load_config(config_path))
        return str(gw.client.make_url("")).rstrip("/"), config_path, db

    @staticmethod
    async def cli(*args: str) -> int:
        return await asyncio.to_thread(main, list(args))

    async def test_timed_disable_then_enable(self, gateway, tmp_path: Path, capsys):
        url, config, _ = await self.start(gateway, tmp_path)
        auth = ("--url", url, "--key", SECRET)
        assert await self.cli("disable", "acme", "meta/llama-3.1:8b", "--duration", "10m", *auth) == 0
        out = capsys.readouterr().out
        assert re.fullmatch(rf"acme meta/llama-3\.1:8b: disabled for 10m00s, until \S+Z \(via {re.escape(url)}\)\n", out)

        assert await self.cli("status", "--config", str(config)) == 0
        row = row_of(capsys.readouterr().out, "meta/llama-3.1:8b")
        assert re.search(r"manually disabled +(10m00s|9m5\ds) left, until \S+Z, by 127\.0\.0\.1$", row)

        assert await self.cli("enable", "acme", "llama", *auth) == 0  # the alias works too
        assert capsys.readouterr().out == f"acme llama: enabled (1 pair: acme/meta/llama-3.1:8b) (via {url})\n"
        assert await self.cli("status", "--json", "--config", str(config)) == 0
        llama = next(o for o in json.loads(capsys.readouterr().out) if o["model"] == "meta/llama-3.1:8b")
        assert (llama["state"], llama["disables"]) == ("enabled", [])

        assert await self.cli("history", "--model", "meta/llama-3.1:8b", "--json", "--config", str(config)) == 0
        events = json.loads(capsys.readouterr().out)
        assert [(e["kind"], e["reason"], e["cause"], e["actor"]) for e in events] == [
            ("enabled", "manual", "manual", "127.0.0.1"),
            ("manual-disable", "manual", None, "127.0.0.1"),
        ]
        assert events[1]["disabled_seconds"] == 600

    async def test_permanent_disable_is_written_to_the_config(self, gateway, tmp_path: Path, capsys):
        url, config, _ = await self.start(gateway, tmp_path)
        assert await self.cli("disable", "acme", "qwen", "--url", url, "--key", SECRET) == 0
        assert capsys.readouterr().out == f"acme qwen: disabled until enabled again (via {url})\n"
        assert await self.cli("status", "--config", str(config)) == 0
        assert re.search(
            r"manually disabled +permanent: enabled: false in the config$", row_of(capsys.readouterr().out, "acme", "qwen")
        )

    async def test_wrong_key_and_unknown_model(self, gateway, tmp_path: Path, capsys):
        url, _, _ = await self.start(gateway, tmp_path)
        assert await self.cli("enable", "acme", "gpt-x", "--url", url, "--key", "wrong-key") == 1
        err = capsys.readouterr().err
        assert err.startswith("cliproxy enable: error: acme gpt-x: server answered 401: ") and "wrong-key" not in err
        assert await self.cli("enable", "acme", "no-such-model", "--url", url, "--key", SECRET) == 1
        err = capsys.readouterr().err
        assert err.startswith("cliproxy enable: error: acme no-such-model: server answered 404: ") and "no-such-model" in err


# --------------------------------------------------------------------------------------------
# check-config, help, the console entry
# --------------------------------------------------------------------------------------------


class TestCheckConfigAndHelp:
    """Bad configs exit 2 with key paths and no traceback; every subcommand has help."""

    COMMANDS = ("serve", "check-config", "migrate", "status", "history", "enable", "disable")

    def test_check_config_bad_file(self, tmp_path: Path):
        bad = tmp_path / "bad.yaml"
        bad.write_text(
            "port: 99999\nopenai-compatibility:\n  - name: a\n    base-url: http://x\n    models:\n      - alias: nameless\n"
        )
        result = run_cli("check-config", "--config", str(bad), cwd=tmp_path)
        assert result.returncode == 2
        assert "Traceback" not in result.stderr
        assert "port:" in result.stderr
        assert "openai-compatibility[0].models[0].name:" in result.stderr

    def test_check_config_good_file(self, tmp_path: Path, capsys):
        config = write_config(tmp_path)
        assert main(["check-config", "--config", str(config)]) == 0
        assert "OK (3 vendor(s), 7 pair(s))" in capsys.readouterr().out

    def test_top_level_help_lists_every_command(self, tmp_path: Path):
        result = run_cli("--help", cwd=tmp_path)
        assert result.returncode == 0
        for command in self.COMMANDS:
            assert re.search(rf"^    {re.escape(command)}\b", result.stdout, re.MULTILINE), command

    @pytest.mark.parametrize("command", COMMANDS)
    def test_every_command_has_help(self, command: str, capsys):
        with pytest.raises(SystemExit) as info:
            main([command, "--help"])
        assert info.value.code == 0
        out = capsys.readouterr().out
        assert out.startswith(f"usage: cliproxy {command}") and "--config" in out

    def test_console_script(self, tmp_path: Path):
        script = Path(sys.executable).parent / "cliproxy"
        assert script.exists(), "the README's test line installs the package, and with it the cliproxy script"
        result = subprocess.run([str(script), "--help"], check=False, capture_output=True, text=True, timeout=30, cwd=tmp_path)
        assert result.returncode == 0 and "history" in result.stdout


# --------------------------------------------------------------------------------------------
# backup
# --------------------------------------------------------------------------------------------


class TestBackup:
    """`cliproxy backup PATH`: a consistent copy while a real gateway keeps writing; never overwrites unasked."""

    async def test_consistent_copies_while_the_gateway_writes(self, upstreams, tmp_path: Path) -> None:
        import aiohttp

        from cliproxy.services.store import read_events
        from tests.helpers import vendor
        from tests.processes import GatewayProcess

        up = await upstreams()
        models = [f"m{i}" for i in range(20)]
        key = "backup-test-management-key-01"
        gw = GatewayProcess(
            tmp_path, {"remote-management": {"secret-key": key}, "openai-compatibility": [vendor("a", up.url, models)]}
        )
        gw.start()
        db = tmp_path / "cliproxy.db"
        stop = asyncio.Event()
        writes = 0

        async def keep_writing() -> None:  # timed disables and enables, each one committed transaction
            nonlocal writes
            async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as session:
                while not stop.is_set():
                    model = models[writes % len(models)]
                    action = "disable" if (writes // len(models)) % 2 == 0 else "enable"
                    async with session.post(
                        f"{gw.url}/api/models/{model}/{action}", json={"duration_seconds": 600} if action == "disable" else None
                    ) as resp:
                        assert resp.status == 200, await resp.text()
                    writes += 1

        writer = asyncio.create_task(keep_writing())
        try:
            copies = []
            for n in range(4):
                while writes < 5 * (n + 1):
                    await asyncio.sleep(0.01)
                target = tmp_path / f"backup-{n}.db"
                result = await asyncio.to_thread(run_cli, "backup", str(target), "--config", str(gw.config_path), cwd=tmp_path)
                assert result.returncode == 0, result.stderr
                copies.append((target, result.stdout))
        finally:
            stop.set()
            await writer
            assert gw.stop() == 0
        assert writes >= 20
        final = [(e.id, e.kind, e.model, e.at) for e in sorted(read_events(db, limit=10_000), key=lambda e: e.id)]
        for target, stdout in copies:
            with closing(sqlite3.connect(target)) as conn:
                assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
                events = conn.execute("SELECT count(*) FROM events").fetchone()[0]
                rows = conn.execute("SELECT vendor, model, event_id FROM disabled_pairs").fetchall()
                dangling = conn.execute(
                    "SELECT count(*) FROM disabled_pairs WHERE event_id NOT IN (SELECT id FROM events)"
                ).fetchone()[0]
            assert f": {events} events, {len(rows)} disabled pair rows" in stdout, stdout
            assert dangling == 0  # rows and events from the same moment
            copied = [(e.id, e.kind, e.model, e.at) for e in sorted(read_events(target, limit=10_000), key=lambda e: e.id)]
            assert copied == final[: len(copied)]  # a prefix of the history: nothing torn, nothing invented
            assert not (tmp_path / f"{target.name}-wal").exists()  # one self-contained file
        assert [len(read_events(t, limit=10_000)) for t, _ in copies] == sorted(
            len(read_events(t, limit=10_000)) for t, _ in copies
        )

    def test_refuses_to_overwrite_unless_forced(self, tmp_path: Path) -> None:
        db = tmp_path / "cliproxy.db"
        apply_migrations(db)
        config = write_config(tmp_path, db)
        target = tmp_path / "existing.db"
        target.write_text("keep me")
        result = run_cli("backup", str(target), "--config", str(config), cwd=tmp_path)
        assert result.returncode == 1
        assert "exists" in result.stderr and "--force" in result.stderr and "Traceback" not in result.stderr
        assert target.read_text() == "keep me"
        result = run_cli("backup", str(target), "--force", "--config", str(config), cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert "0 events, 0 disabled pair rows" in result.stdout
        with closing(sqlite3.connect(target)) as conn:
            assert conn.execute("SELECT count(*) FROM schema_migrations").fetchone()[0] >= 1
        assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []

    def test_no_database_is_an_error(self, tmp_path: Path) -> None:
        config = write_config(tmp_path, tmp_path / "none.db")
        result = run_cli("backup", str(tmp_path / "b.db"), "--config", str(config), cwd=tmp_path)
        assert result.returncode == 1 and "no database at" in result.stderr
        assert not (tmp_path / "b.db").exists()


def test_status_on_a_database_of_an_older_version_says_to_migrate(tmp_path: Path) -> None:
    from cliproxy.services.store import default_migrations_dir

    old = tmp_path / "old-migrations"
    old.mkdir()
    (old / "0001_initial.sql").write_text((default_migrations_dir() / "0001_initial.sql").read_text())
    db = tmp_path / "cliproxy.db"
    apply_migrations(db, old)  # the schema before 0002
    result = run_cli("status", "--config", str(write_config(tmp_path, db)), cwd=tmp_path)
    assert result.returncode == 1
    assert "older schema" in result.stderr and "cliproxy migrate" in result.stderr and "Traceback" not in result.stderr


# --------------------------------------------------------------------------------------------
# init
# --------------------------------------------------------------------------------------------


class TestInit:
    """`cliproxy init` writes a starter config that loads as written, private, and never over a file."""

    def test_starter_is_valid_private_and_never_overwritten(self, tmp_path: Path):
        where = tmp_path / "my dir: #1"  # YAML's specials in the path: the database line must still load
        where.mkdir()
        path = where / "config.yaml"
        first = run_cli("init", "--config", str(path), cwd=tmp_path)
        assert (first.returncode, first.stderr) == (0, ""), first.stderr
        assert f"wrote {path}" in first.stdout
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        text = path.read_text()
        config = load_config(path)
        [client_key] = config.api_keys
        assert client_key.startswith("sk-cliproxy-") and len(client_key) > 40
        assert config.remote_management.secret_key.startswith("mgmt-")
        assert client_key not in first.stdout and config.remote_management.secret_key not in first.stdout
        assert Path(config.database) == where / "cliproxy.db"
        assert [(v.name, [m.name for m in v.models]) for v in config.vendors] == [("local", ["llama3.2"])]
        check = run_cli("check-config", "--config", str(path), cwd=tmp_path)
        assert check.returncode == 0, check.stderr
        again = run_cli("init", "--config", str(path), cwd=tmp_path)
        assert again.returncode == 1 and "exists; it is left as it is" in again.stderr
        assert path.read_text() == text  # not a byte changed
        assert [p.name for p in where.iterdir()] == ["config.yaml"]  # no temporary file left behind
        other = tmp_path / "other.yaml"
        assert run_cli("init", "--config", str(other), cwd=tmp_path).returncode == 0
        assert load_config(other).api_keys != config.api_keys  # each install its own keys

    def test_default_path_is_the_environment_then_the_working_directory(self, tmp_path: Path):
        assert run_cli("init", cwd=tmp_path).returncode == 0
        assert (tmp_path / "config.yaml").is_file()
        named = tmp_path / "from-env.yaml"
        assert run_cli("init", cwd=tmp_path, env={"CLIPROXY_CONFIG": str(named)}).returncode == 0
        assert named.is_file()
