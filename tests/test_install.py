"""Release-ready: what gets installed, and how the installed service starts (or refuses to).

* The sdist and the wheel hold everything an install needs (the schema as package data, LICENSE,
  README, the shipped config, the systemd unit and its installer).
* The wheel, installed into a fresh virtualenv outside the repository (no system site-packages:
  a missing dependency would show), migrates, serves a chat completion through its own
  `cliproxy fake-upstream`, and exits 0 on SIGTERM.
* `scripts/install-service.sh --prefix DIR --no-systemd` runs its real install steps (venv, wheel,
  config, state directory, unit file) under a temporary prefix.
* A permanent start-up fault prints one line, no traceback, and exits with a status the unit's
  `RestartPreventExitStatus` lists, so systemd does not restart-loop.
"""

from __future__ import annotations

import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tarfile
import time
import zipfile
from contextlib import closing
from pathlib import Path

import pytest
import yaml

from cliproxy.cli import EXIT_CONFIG, EXIT_DATABASE
from tests.processes import free_port

ROOT = Path(__file__).resolve().parent.parent


def unit_restart_prevent_statuses() -> set[int]:
    text = (ROOT / "scripts" / "cliproxy.service").read_text()
    [line] = re.findall(r"(?m)^RestartPreventExitStatus=(.*)$", text)
    return {int(status) for status in line.split()}


# --------------------------------------------------------------------------------------------
# Permanent start-up faults
# --------------------------------------------------------------------------------------------


def serve_once(tmp_path: Path, config_text: str) -> subprocess.CompletedProcess[str]:
    """The real `cliproxy serve` on `config_text`, expected to give up at start-up."""
    config = tmp_path / "config.yaml"
    config.write_text(config_text)
    return subprocess.run(
        [sys.executable, "-m", "cliproxy", "serve", "--config", str(config)],
        cwd=tmp_path, capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL,
    )


def config_for(db: Path) -> str:
    return yaml.safe_dump({"host": "127.0.0.1", "port": free_port(), "database": str(db), "openai-compatibility": []})


class TestPermanentStartupFaults:
    """Each fault: the unit does not restart on its status, stderr is one line, no traceback."""

    def assert_permanent(self, result: subprocess.CompletedProcess[str], status: int, pattern: str) -> None:
        assert result.returncode == status, result.stderr
        assert status in unit_restart_prevent_statuses()
        assert "Traceback" not in result.stderr
        assert result.stderr.count("\n") == 1, result.stderr
        assert re.fullmatch(r"cliproxy serve: error: " + pattern + r"\n", result.stderr), result.stderr

    def test_bad_config(self, tmp_path: Path):
        result = serve_once(tmp_path, "port: 99999\ndatabase: ./x.db\nopenai-compatibility:\n  - name: a\n")
        self.assert_permanent(result, EXIT_CONFIG, r"invalid configuration in .*config\.yaml: .*port: .*openai-compatibility\[0\]\.base-url: .*")
        assert not (tmp_path / "x.db").exists()

    def test_failing_migration(self, tmp_path: Path):
        db = tmp_path / "cliproxy.db"
        with closing(sqlite3.connect(db)) as conn, conn:  # a table in the way of 0001_initial
            conn.execute("CREATE TABLE events (x)")
        result = serve_once(tmp_path, config_for(db))
        self.assert_permanent(result, EXIT_DATABASE, r"migration 0001_initial\.sql failed at line \d+: table events already exists; .*")

    def test_not_a_database(self, tmp_path: Path):
        db = tmp_path / "cliproxy.db"
        db.write_bytes(b"this is not an SQLite file at all" * 100)
        result = serve_once(tmp_path, config_for(db))
        self.assert_permanent(result, EXIT_DATABASE, rf"cannot open database {re.escape(str(db))}: file is not a database")

    def test_database_cannot_be_opened(self, tmp_path: Path):
        db = tmp_path / "cliproxy.db"
        db.mkdir()  # root reads any file, so "unreadable" is a path SQLite cannot open as a file
        result = serve_once(tmp_path, config_for(db))
        self.assert_permanent(result, EXIT_DATABASE, rf"cannot open database {re.escape(str(db))}: unable to open database file")

    def test_schema_newer_than_this_version(self, tmp_path: Path):
        db = tmp_path / "cliproxy.db"
        (tmp_path / "c.yaml").write_text(config_for(db))
        subprocess.run([sys.executable, "-m", "cliproxy", "migrate", "--config", str(tmp_path / "c.yaml")], check=True, capture_output=True, timeout=30)
        with closing(sqlite3.connect(db)) as conn, conn:
            conn.execute("INSERT INTO schema_migrations VALUES (99, '0099_future.sql', '2030-01-01T00:00:00.000Z')")
        result = serve_once(tmp_path, config_for(db))
        self.assert_permanent(result, EXIT_DATABASE, r"database .* has schema version 99, newer than this cliproxy knows \(up to 1\): .*")
