"""Times as text: the one parser (CLI --since/--duration, API ?since=) and the one format every output uses."""

from __future__ import annotations

import io
import json
import logging
import re
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import yaml

from cliproxy import cli
from cliproxy.core.config import LoggingSettings
from cliproxy.core.times import format_duration, format_time, format_timestamp, parse_duration, parse_since
from cliproxy.fake_upstream import Fault
from cliproxy.web import logs
from cliproxy.web.keys import TRACKER
from tests.helpers import vendor

NOW = 1_800_000_000.0  # 2027-01-15T08:00:00Z
#: The one form: ISO-8601 UTC, milliseconds, `Z`.
ONE_FORM = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"
#: Anything that looks like a date and time, whatever its form.
ANY_TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\d[T ]\d\d:\d\d(?::\d\d(?:\.\d+)?)?(?:Z|[+-]\d\d:?\d\d)?")


class TestParsing:
    """Durations and `since` values parse the same for the CLI and the API; anything else is a ValueError."""

    @pytest.mark.parametrize(
        ("text", "seconds"),
        [("90", 90), ("1.5", 1.5), ("90s", 90), ("30m", 1800), ("1h30m", 5400), ("24h", 86400), ("7d", 604800),
         ("2w", 1_209_600), ("1d2h3m4s", 93784), ("1.5h", 5400), (" 10M ", 600)],
    )  # fmt: skip
    def test_durations(self, text: str, seconds: float):
        assert parse_duration(text) == seconds
        assert parse_since(text, NOW) == NOW - seconds

    @pytest.mark.parametrize(
        ("text", "epoch"),
        [("2027-01-15", NOW - 8 * 3600), ("2027-01-15T08:00:00Z", NOW), ("2027-01-15T08:00:00", NOW),
         ("2027-01-15T09:00:00+01:00", NOW), ("2027-01-15T08:00:00.250Z", NOW + 0.25), ("2027-01-15 08:00", NOW)],
    )  # fmt: skip
    def test_iso_dates_and_times(self, text: str, epoch: float):
        assert parse_since(text, NOW) == epoch

    @pytest.mark.parametrize("text", ["", "soon", "yesterday", "0", "0s", "-5m", "5x", "1h 30m", "m", "9" * 400, "2027-13-01"])
    def test_rejects(self, text: str):
        with pytest.raises(ValueError):
            parse_since(text, NOW)

    def test_the_cli_and_the_api_use_it(self):
        from cliproxy.cli import views as cli_views
        from cliproxy.web.admin import events

        assert events.parse_since is parse_since and cli_views.parse_since is parse_since
        assert cli_views.parse_duration is parse_duration


class TestFormatting:
    """One timestamp form everywhere; durations for people."""

    @pytest.mark.parametrize(
        ("epoch", "text"),
        [(NOW, "2027-01-15T08:00:00.000Z"), (NOW + 0.1234, "2027-01-15T08:00:00.123Z"), (NOW + 0.9996, "2027-01-15T08:00:01.000Z"),
         (0.0, "1970-01-01T00:00:00.000Z")],
    )  # fmt: skip
    def test_timestamp(self, epoch: float, text: str):
        assert format_timestamp(epoch) == text
        assert format_time(epoch) == format_timestamp(int(epoch))[:19] + "Z"  # tables: the whole second, rounded down

    @pytest.mark.parametrize(("seconds", "text"), [(0, "0s"), (41.2, "42s"), (252, "4m12s"), (3780, "1h03m"), (187200, "2d4h")])
    def test_duration(self, seconds: float, text: str):
        assert format_duration(seconds) == text

    def test_store_keeps_its_name(self):
        from cliproxy.services import store

        assert store.format_timestamp is format_timestamp


class TestEveryOutputUsesTheOneForm:
    """Text and JSON logs, the events table, the management API and the CLI's JSON: only `...T..:..:..mmmZ`."""

    async def test_grep_every_output(self, upstreams, gateway, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
        up = await upstreams()
        up.fail(None, Fault(status=500))
        db = tmp_path / "cliproxy.db"
        data: dict[str, Any] = {
            "database": str(db),
            "remote-management": {"secret-key": "mgmt-key-times-0001"},
            "auto-disable": {"failure-threshold": 1},
            "openai-compatibility": [vendor("a", up.url, ["m"])],
        }
        outputs: dict[str, str] = {}
        for form in ("text", "json"):
            stream = io.StringIO()
            handler = logs.configure_logging(LoggingSettings(level="INFO", format=form), stream=stream)
            try:
                gw = await gateway(data)
                await gw.client.post("/v1/chat/completions", json={"model": "m", "messages": []})  # fails: disabled
                reply = await gw.client.get("/api/events", headers={"Authorization": "Bearer mgmt-key-times-0001"})
                outputs["api"] = await reply.text()
                await gw.app[TRACKER].flush(timeout=5)
            finally:
                logging.getLogger().removeHandler(handler)
                handler.close()
            outputs[f"log-{form}"] = stream.getvalue()
            db.unlink()  # the second round starts from nothing too
            for suffix in ("-wal", "-shm"):
                Path(f"{db}{suffix}").unlink(missing_ok=True)
        # the json round's database is gone; one more round for the table and the CLI
        gw = await gateway(data)
        await gw.client.post("/v1/chat/completions", json={"model": "m", "messages": []})
        await gw.app[TRACKER].flush(timeout=5)
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
            outputs["events-table"] = json.dumps(conn.execute("SELECT * FROM events").fetchall())
            outputs["disabled-table"] = json.dumps(conn.execute("SELECT * FROM disabled_pairs").fetchall())
        config = tmp_path / "config.yaml"
        config.write_text(yaml.safe_dump(data))
        for command in (["history", "--json"], ["status", "--json"]):
            capsys.readouterr()
            assert cli.main([*command, "--config", str(config)]) == 0
            outputs[" ".join(command)] = capsys.readouterr().out

        for name, text in outputs.items():
            found = ANY_TIMESTAMP.findall(text)
            assert found, f"{name} holds no timestamp: {text[:300]}"
            wrong = [t for t in found if not re.fullmatch(ONE_FORM, t)]
            assert wrong == [], f"{name}: {wrong}"
        assert "disabled_until='" in outputs["log-text"] and '"disabled_until": "' in outputs["log-json"]
