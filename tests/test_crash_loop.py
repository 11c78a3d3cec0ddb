"""`kill -9` at random moments while disables and manual changes are driven: nothing reported is lost.

A real `cliproxy serve` subprocess, two in-process fake upstreams (`a` fails on demand, `b` never
does), and a seeded random sequence of rounds. Each round drives auto-disables (failing requests)
and management changes (timed disable, permanent disable written to config.yaml, PATCH of a vendor
or model entry, enable), records what `GET /api/models/disabled` reported, then kills the gateway
with SIGKILL at a random moment: right after a call returned, or while one is in flight. After the
restart every disable that had been reported is still there with the same `disabled_at` and
`disabled_until`, or, when its time has run out, has an `enabled` event with those timestamps; the
database passes `PRAGMA integrity_check`; config.yaml is whole and loads.

Bounded for CI: `CLIPROXY_CRASH_ROUNDS` rounds (default 10) within `CLIPROXY_CRASH_SECONDS`
(default 45 s; no new round starts after that). `CLIPROXY_CRASH_SEED` picks another sequence.
"""

from __future__ import annotations

import asyncio
import os
import random
import sqlite3
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest

from cliproxy.fake_upstream import FakeUpstream, Fault
from cliproxy.services.config_loader import load_config
from cliproxy.services.store import parse_timestamp
from tests.helpers import eventually, vendor
from tests.processes import GatewayProcess

ROUNDS = int(os.environ.get("CLIPROXY_CRASH_ROUNDS", "10"))
BUDGET_SECONDS = float(os.environ.get("CLIPROXY_CRASH_SECONDS", "45"))
SEED = int(os.environ.get("CLIPROXY_CRASH_SEED", "20261122"))

MGMT_KEY = "crash-loop-management-key-0001"
MODELS = ("m1", "m2", "org/m3")  # one name with a slash: it travels URL-encoded
VENDORS = ("a", "b")
THRESHOLD = 2
AUTO_DURATION = 3.0  # short, so some disables end while the gateway is down and some while it runs
TIMED_DURATIONS = (0.5, 1.5, 4.0, 60.0)
CONFIG_SOURCES = ("model-config", "vendor-config")

Entry = dict[str, Any]


def _config(flaky: FakeUpstream, good: FakeUpstream) -> dict[str, Any]:
    return {
        "remote-management": {"secret-key": MGMT_KEY},
        "request-retry": 1,
        "auto-disable": {"failure-threshold": THRESHOLD, "time-window-seconds": 30, "disable-duration-seconds": AUTO_DURATION},
        "openai-compatibility": [
            vendor("a", flaky.url, list(MODELS), priority=1),
            vendor("b", good.url, list(MODELS)),
        ],
    }


@dataclass
class InFlight:
    """A call made after the last report (or interrupted by the kill): it may have undone part of the report."""

    name: str
    vendor: str | None = None
    model: str | None = None
    enabled: bool | None = None

    def may_undo(self, entry: Entry) -> bool:
        same_pair = (entry["vendor"], entry["model"]) == (self.vendor, self.model)
        if self.name == "enable":
            return same_pair
        if self.name == "timed":  # a new timed disable of the pair replaces the one in force
            return same_pair and entry["source"] == "timed"
        if self.name == "patch-model" and self.enabled:
            return same_pair and entry["source"] == "model-config"
        if self.name == "patch-vendor" and self.enabled:
            return entry["vendor"] == self.vendor and entry["source"] == "vendor-config"
        return False


@dataclass
class Figures:
    rounds: int = 0
    kills_after_a_call: int = 0
    kills_during_a_call: int = 0
    calls_cut_by_the_kill: int = 0
    calls: int = 0
    checked_in_force: int = 0
    checked_expired: int = 0
    checked_config: int = 0
    undone_by_a_later_call: int = 0
    leftover_temp_files: int = 0
    seconds: float = 0.0
    ops: dict[str, int] = field(default_factory=dict)


class Driver:
    """Drives one gateway process through the management API and the client API."""

    def __init__(self, gw: GatewayProcess, flaky: FakeUpstream, session: aiohttp.ClientSession, rng: random.Random) -> None:
        self.gw = gw
        self.flaky = flaky
        self.session = session
        self.rng = rng
        #: The last `GET /api/models/disabled` answer before the kill.
        self.reported: list[Entry] = []

    async def api(self, method: str, path: str, json: Any = None) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {MGMT_KEY}"}
        async with self.session.request(method, self.gw.url + path, json=json, headers=headers) as resp:
            body = await resp.json(content_type=None)
            assert resp.status < 500 or resp.status == 503, (method, path, resp.status, body)
            return resp.status, body

    async def chat(self, model: str) -> int:
        body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
        async with self.session.post(self.gw.url + "/v1/chat/completions", json=body) as resp:
            await resp.read()
            return resp.status

    async def report(self) -> None:
        status, body = await self.api("GET", "/api/models/disabled")
        assert status == 200, body
        self.reported = body["disabled"]

    # -- the operations a round is made of: (name, coroutine factory, what an interruption may undo)

    def pick(self) -> tuple[str, Callable[[], Awaitable[Any]], InFlight]:
        rng = self.rng
        model, vendor_name = rng.choice(MODELS), rng.choice(VENDORS)
        path = f"/api/models/{quote(model, safe='')}"
        choice = rng.choices(
            ["trip", "timed", "permanent", "enable", "patch-vendor", "patch-model", "traffic"],
            weights=[4, 3, 1, 2, 1, 1, 1],
        )[0]
        if choice == "trip":

            async def trip() -> None:
                self.flaky.clear_faults()
                self.flaky.fail(model, Fault(status=500, times=THRESHOLD))
                await asyncio.gather(*(self.chat(model) for _ in range(THRESHOLD)))

            return choice, trip, InFlight(choice)
        if choice == "timed":
            duration = rng.choice(TIMED_DURATIONS)
            return (
                choice,
                lambda: self.api("POST", f"{path}/disable?vendor={vendor_name}", {"duration_seconds": duration}),
                InFlight(choice, vendor_name, model),
            )
        if choice == "permanent":
            return choice, lambda: self.api("POST", f"{path}/disable?vendor={vendor_name}"), InFlight(choice)
        if choice == "enable":
            return choice, lambda: self.api("POST", f"{path}/enable?vendor={vendor_name}"), InFlight(choice, vendor_name, model)
        if choice == "patch-vendor":
            enabled = rng.random() < 0.6
            return (
                choice,
                lambda: self.api("PATCH", f"/api/vendors/{vendor_name}", {"enabled": enabled}),
                InFlight(choice, vendor_name, None, enabled),
            )
        if choice == "patch-model":
            enabled = rng.random() < 0.6
            return (
                choice,
                lambda: self.api("PATCH", f"/api/vendors/{vendor_name}/models/{quote(model, safe='')}", {"enabled": enabled}),
                InFlight(choice, vendor_name, model, enabled),
            )

        async def traffic() -> None:
            await asyncio.gather(*(self.chat(rng.choice(MODELS)) for _ in range(3)))

        return choice, traffic, InFlight(choice)


def _db_enabled_events(db: Path) -> set[tuple[Any, ...]]:
    """(vendor, model, reason, cause, disabled_at, disabled_until) of every `enabled` event in the file."""
    conn = sqlite3.connect(db, timeout=5)
    try:
        rows = conn.execute(
            "SELECT vendor, model, reason, cause, disabled_at, disabled_until FROM events WHERE kind = 'enabled'"
        ).fetchall()
    finally:
        conn.close()
    return {tuple(r) for r in rows}


def _integrity(db: Path) -> tuple[str, list[Any]]:
    conn = sqlite3.connect(db, timeout=5)
    try:
        [(result,)] = conn.execute("PRAGMA integrity_check").fetchall()
        dangling = conn.execute("PRAGMA foreign_key_check").fetchall()
    finally:
        conn.close()
    return result, dangling


def _unmet(
    reported: list[Entry],
    now_report: list[Entry],
    enabled_events: set[tuple[Any, ...]],
    later: list[InFlight],
    figures: Figures | None,
) -> list[str]:
    """What of the reported disables is missing after the restart (empty: all accounted for)."""
    problems: list[str] = []
    timed_now = {
        (e["vendor"], e["model"], e["reason"]): (e["disabled_at"], e["disabled_until"])
        for e in now_report
        if e["source"] in ("auto-disable", "timed")
    }
    config_now = {(e["vendor"], e["model"], e["source"]) for e in now_report if e["source"] in CONFIG_SOURCES}
    for entry in reported:
        key = (entry["vendor"], entry["model"])
        if any(call.may_undo(entry) for call in later):
            if figures is not None:
                figures.undone_by_a_later_call += 1
            continue
        if entry["source"] in CONFIG_SOURCES:
            allowed = {entry["source"]} | ({"model-config"} if entry["source"] == "vendor-config" else set())
            if not any((*key, source) in config_now for source in allowed):
                problems.append(f"config disable lost: {entry}")
            elif figures is not None:
                figures.checked_config += 1
            continue
        times = (entry["disabled_at"], entry["disabled_until"])
        if timed_now.get((*key, entry["reason"])) == times:
            if figures is not None:
                figures.checked_in_force += 1
            continue
        ended = {
            cause for (v, m, r, cause, at, until) in enabled_events if (v, m, r, at, until) == (*key, entry["reason"], *times)
        }
        expired = ended & {"expired", "startup-expired"}
        if expired and entry["disabled_until"] is not None and parse_timestamp(entry["disabled_until"]) <= time.time():
            if figures is not None:
                figures.checked_expired += 1
            continue
        problems.append(
            f"reported disable neither in force with the same times nor ended by expiry: {entry}; "
            f"now: {timed_now.get((*key, entry['reason']))}; enabled events: {sorted(ended)}"
        )
    return problems


async def _verify_after_restart(driver: Driver, db: Path, reported: list[Entry], later: list[InFlight], figures: Figures) -> None:
    """Every reported disable accounted for (retrying briefly: an expiry is recorded by the 0.5 s sweep)."""

    async def accounted_for() -> bool:
        await driver.report()  # also waits until the start-up transitions are committed
        problems = _unmet(reported, driver.reported, _db_enabled_events(db), later, None)
        assert not problems, "\n".join(problems)
        return True

    await eventually(accounted_for, "every reported disable to be accounted for", timeout=4.0, interval=0.2)
    _unmet(reported, driver.reported, _db_enabled_events(db), later, figures)  # count what was checked


def _temp_files(directory: Path) -> Iterator[Path]:
    return (p for p in directory.iterdir() if p.name.startswith(".config.yaml.") and p.name.endswith(".tmp"))


@pytest.fixture
def processes() -> Iterator[list[GatewayProcess]]:
    started: list[GatewayProcess] = []
    yield started
    for proc in started:
        proc.stop(timeout=10)


@pytest.mark.slow  # kills and restarts the gateway for seconds on end
class TestCrashLoop:
    """Reported disables, timed or automatic or in config.yaml, survive kill -9 at random moments, with identical times."""

    async def test_random_kills(self, upstreams, tmp_path: Path, processes: list[GatewayProcess]) -> None:
        rng = random.Random(SEED)
        flaky, good = await upstreams(), await upstreams()
        gw = GatewayProcess(tmp_path, _config(flaky, good))
        processes.append(gw.start())
        db = tmp_path / "cliproxy.db"
        figures = Figures()
        started = time.monotonic()
        connector = aiohttp.TCPConnector(force_close=True)  # no pooled connection outlives a kill
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=15)) as session:
            driver = Driver(gw, flaky, session, rng)
            await driver.report()
            for round_no in range(ROUNDS):
                if time.monotonic() - started > BUDGET_SECONDS:
                    break
                steps = [driver.pick() for _ in range(rng.randint(2, 6))]
                kill_at = rng.randrange(len(steps))
                during = rng.random() < 0.5
                # Calls made after the last report, the interrupted one included: they may have undone part of it.
                later: list[InFlight] = []
                for index, (name, call, in_flight) in enumerate(steps):
                    figures.ops[name] = figures.ops.get(name, 0) + 1
                    figures.calls += 1
                    if index == kill_at and during:
                        task = asyncio.ensure_future(call())
                        await asyncio.sleep(rng.uniform(0.0, 0.006))  # a call takes a few ms: most kills land inside it
                        gw.kill9()
                        later.append(in_flight)
                        [result] = await asyncio.gather(task, return_exceptions=True)
                        assert not isinstance(result, AssertionError), result
                        figures.kills_during_a_call += 1
                        figures.calls_cut_by_the_kill += isinstance(result, (aiohttp.ClientError, OSError))
                        break
                    await call()
                    later.append(in_flight)
                    if rng.random() < 0.8:
                        await driver.report()
                        later.clear()
                    if index == kill_at:
                        gw.kill9()
                        figures.kills_after_a_call += 1
                        break
                reported = list(driver.reported)
                # The file on disk as the crash left it: whole and valid, never half-written.
                load_config(gw.config_path)
                figures.leftover_temp_files += sum(1 for _ in _temp_files(tmp_path))
                gw.start()
                result, dangling = _integrity(db)
                assert result == "ok", f"round {round_no}: integrity_check: {result}"
                assert dangling == [], f"round {round_no}: foreign_key_check: {dangling}"
                await _verify_after_restart(driver, db, reported, later, figures)
                figures.rounds += 1
        figures.seconds = round(time.monotonic() - started, 1)
        log = gw.log()
        assert "Traceback" not in log, log[-4000:]
        assert figures.rounds >= min(ROUNDS, 3)
        assert figures.checked_in_force + figures.checked_expired + figures.checked_config > 0
        print(f"\ncrash loop (seed {SEED}): {figures}")


class TestKillRightAfterAcknowledgement:
    """A disable that /metrics or the management API has reported survives kill -9 the moment after the report."""

    async def test_reported_disables_survive(self, upstreams, tmp_path: Path, processes: list[GatewayProcess]) -> None:
        flaky, good = await upstreams(), await upstreams()
        flaky.fail(None, Fault(status=500))
        config = _config(flaky, good)
        config["auto-disable"]["disable-duration-seconds"] = 600
        gw = GatewayProcess(tmp_path, config)
        processes.append(gw.start())
        db = tmp_path / "cliproxy.db"
        headers = {"Authorization": f"Bearer {MGMT_KEY}"}
        series = 'cliproxy_pair_disabled{model="m1",reason="auto",vendor="a"}'
        connector = aiohttp.TCPConnector(force_close=True)
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=15)) as session:

            async def scrape() -> str:
                async with session.get(gw.url + "/metrics") as resp:
                    return await resp.text()

            # 1. An auto-disable committed while the scrapes are going on: the first scrape that shows it is followed by kill -9.
            blocker = sqlite3.connect(db, isolation_level=None, timeout=0)
            blocker.execute("BEGIN EXCLUSIVE")  # the disable waits in memory until the lock goes
            for _ in range(THRESHOLD):
                async with session.post(gw.url + "/v1/chat/completions", json={"model": "m1", "messages": []}) as resp:
                    assert resp.status == 200
            assert series not in await scrape()
            blocker.execute("ROLLBACK")
            blocker.close()

            async def reported() -> bool:
                return series in await scrape()

            await eventually(reported, "the disable to be reported on /metrics", timeout=10)
            gw.kill9()
            gw.start()
            async with session.get(gw.url + "/api/models/disabled", headers=headers) as resp:
                body = await resp.json()
            assert [(e["vendor"], e["model"], e["source"]) for e in body["disabled"]] == [("a", "m1", "auto-disable")]

            # 2. A timed manual disable: kill -9 as soon as the POST has answered 200.
            async with session.post(
                gw.url + "/api/models/m2/disable?vendor=b", json={"duration_seconds": 600}, headers=headers
            ) as resp:
                assert resp.status == 200
                until = (await resp.json())["pairs"][0]["manual_disable"]["disabled_until"]
            gw.kill9()
            gw.start()
            async with session.get(gw.url + "/api/models/disabled", headers=headers) as resp:
                body = await resp.json()
            timed = [e for e in body["disabled"] if e["source"] == "timed"]
            assert [(e["vendor"], e["model"], e["disabled_until"]) for e in timed] == [("b", "m2", until)]


class TestLeftoverTempFiles:
    """A write-back cut by kill -9 leaves `.config.yaml.XXXXXXXX.tmp`: the next start removes it, and nothing else."""

    async def test_removed_at_start_up(self, upstreams, tmp_path: Path, processes: list[GatewayProcess]) -> None:
        import tempfile

        flaky, good = await upstreams(), await upstreams()
        gw = GatewayProcess(tmp_path, _config(flaky, good))
        fd, leftover = tempfile.mkstemp(
            prefix=".config.yaml.", suffix=".tmp", dir=tmp_path
        )  # as cliproxy.services.config_file names it
        os.write(fd, b"port: 1\n")  # half a config
        os.close(fd)
        unrelated = tmp_path / ".config.yaml.notes.tmp"
        unrelated.write_text("the operator's")
        processes.append(gw.start())
        assert not Path(leftover).exists()
        assert unrelated.exists()
        assert f"removed {leftover}" in gw.log()
