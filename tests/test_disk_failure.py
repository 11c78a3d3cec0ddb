"""A database that stops taking writes: the gateway keeps routing, says it is not ready, logs, and catches up.

Two real outages of a real `cliproxy serve` process, neither needing root:

- **Locked.** The test holds `BEGIN EXCLUSIVE` on the database from its own connection, so every
  write of the gateway waits out `busy_timeout` and fails with "database is locked", until the
  test lets go. (A `chmod` of the file would not do: the gateway's open descriptor keeps writing.)
- **Full.** The gateway's `RLIMIT_FSIZE` is lowered from outside with `prlimit(2)` while it runs, so
  every write to a file fails with EFBIG, the way a full disk fails writes; then it is raised again.
  CPython ignores SIGXFSZ, so the process lives on. Linux only (skipped elsewhere). Its stderr goes
  through a pipe, which the limit does not cover, so the log keeps flowing.

During the outage: every client request is answered (the failing vendor is disabled in memory and
requests fail over), `/readyz` is 503, the management API answers 503 instead of reporting state
it could lose, and the log says why. Afterwards: `/readyz` is 200 again and the transitions queued
meanwhile are in the events table in the order they happened, with the timestamps they were
logged with, and the database passes `PRAGMA integrity_check`.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from cliproxy.fake_upstream import FakeUpstream, Fault
from cliproxy.services.store import parse_timestamp, read_events
from tests.helpers import eventually, vendor
from tests.processes import GatewayProcess

MGMT_KEY = "disk-failure-management-key-01"
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
DURATION = 1.0  # the auto-disable: short, so it also expires (and trips again) during the outage


def _config(bad: FakeUpstream, good: FakeUpstream) -> dict[str, Any]:
    return {
        "log-format": "json",
        "remote-management": {"secret-key": MGMT_KEY},
        "auto-disable": {"failure-threshold": 2, "time-window-seconds": 60, "disable-duration-seconds": DURATION},
        "openai-compatibility": [vendor("bad", bad.url, ["m"], priority=1), vendor("good", good.url, ["m"])],
    }


class PipedGateway(GatewayProcess):
    """A gateway whose stderr reaches the log file through a pipe and a reader thread."""

    def start(self, timeout: float = 15.0) -> PipedGateway:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "cliproxy.cli", "serve", "--config", str(self.config_path)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=self.env,
        )
        pipe = self.process.stdout
        assert pipe is not None

        def copy() -> None:
            with pipe, open(self.log_path, "ab") as log:
                for line in pipe:
                    log.write(line)
                    log.flush()

        self.reader = threading.Thread(target=copy, daemon=True)
        self.reader.start()
        deadline = time.monotonic() + timeout
        while "listening on" not in self.log():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"cliproxy did not start:\n{self.log()}")
            time.sleep(0.05)
        return self

    def stop(self, *args: Any, **kwargs: Any) -> int:
        code = super().stop(*args, **kwargs)
        self.reader.join(timeout=5)  # the pipe is closed once the process is gone
        return code


class Client:
    def __init__(self, gw: GatewayProcess, session: aiohttp.ClientSession) -> None:
        self.gw, self.session = gw, session

    async def chat(self) -> tuple[int, str | None]:
        async with self.session.post(self.gw.url + "/v1/chat/completions", json=CHAT) as resp:
            await resp.read()
            return resp.status, resp.headers.get("x-cliproxy-vendor")

    async def get(self, path: str, **headers: str) -> tuple[int, str]:
        async with self.session.get(self.gw.url + path, headers=headers) as resp:
            return resp.status, await resp.text()

    async def api(self, path: str) -> tuple[int, Any]:
        status, text = await self.get(path, Authorization=f"Bearer {MGMT_KEY}")
        return status, json.loads(text)

    async def ready(self) -> int:
        """`/readyz`'s status: 200 or 503, never anything else (a missing probe fails the test)."""
        status, body = await self.get("/readyz")
        assert status in (200, 503), (status, body)
        return status

    async def wait_ready(self, expected: int, timeout: float) -> None:
        await eventually(lambda: self._ready_is(expected), f"/readyz to answer {expected}", timeout=timeout, interval=0.1)

    async def _ready_is(self, expected: int) -> bool:
        return await self.ready() == expected

    async def metric(self, name: str) -> float | None:
        """The value of the series `name` on /metrics (which must answer 200); None when the series is absent."""
        status, text = await self.get("/metrics")
        assert status == 200, (status, text)
        for line in text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        return None

    async def drive_two_trips(self) -> list[tuple[int, str | None]]:
        """Trip `bad`, let the disable run out, trip it again: three transitions, every request answered."""
        answers = [await self.chat() for _ in range(2)]  # bad fails twice (failover to good): disabled
        answers += [await self.chat() for _ in range(3)]  # disabled: straight to good
        # The disable has run out and the sweep has logged its end (DURATION plus the 0.5 s sweep).
        await eventually(
            lambda: len(_logged_transitions(self.gw.log())) >= 2, "the disable of bad to run out", timeout=DURATION + 5
        )
        answers += [await self.chat() for _ in range(2)]  # bad is tried again, fails twice: disabled again
        return answers


def _logged_transitions(log: str) -> list[tuple[str, str, float, float]]:
    """(kind, cause, disabled_at, disabled_until) of the tracker's JSON log lines, in order."""
    out = []
    for line in log.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if (
            record.get("logger") == "cliproxy.tracker"
            and record.get("message") in ("disabled", "enabled")
            and record.get("vendor") == "bad"
        ):
            out.append(
                (
                    record["message"],
                    record.get("cause") or "",
                    parse_timestamp(record["disabled_at"]),
                    parse_timestamp(record["disabled_until"]),
                )
            )
    return out


def _stored_transitions(db: Path) -> list[tuple[str, str, float, float]]:
    events = sorted(read_events(db, vendor="bad", limit=1000), key=lambda e: e.id)
    return [(e.kind, e.cause or "", e.disabled_at, e.disabled_until) for e in events if e.kind in ("disabled", "enabled")]  # type: ignore[misc]


def _integrity(db: Path) -> str:
    conn = sqlite3.connect(db, timeout=5)
    try:
        return conn.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        conn.close()


@pytest.fixture
def processes() -> Any:
    started: list[GatewayProcess] = []
    yield started
    for proc in started:
        proc.stop(timeout=10)


async def _wait_log(gw: GatewayProcess, text: str, timeout: float) -> None:
    def logged() -> bool:
        log = gw.log()
        assert text in log, f"the log so far ends:\n{log[-3000:]}"
        return True

    await eventually(logged, f"{text!r} in the log", timeout=timeout, interval=0.1)


async def _outage_and_recovery(client: Client, gw: GatewayProcess, db: Path, *, outage: Any, recover: Any) -> None:
    await client.wait_ready(200, timeout=5)
    outage()
    try:
        answers = await client.drive_two_trips()
        assert all(status == 200 for status, _ in answers), answers
        assert [v for _, v in answers] == ["good"] * 7  # routing never waited for the database
        *_, (status, body) = await asyncio.gather(
            _wait_log(gw, "store write failed", timeout=8), client.wait_ready(503, timeout=8), client.api("/api/models/disabled")
        )
        assert status == 503, body
        assert "database is not accepting writes" in body["error"]["message"]
        assert await client.metric("cliproxy_store_writes_healthy") == 0
        assert (await client.metric("cliproxy_store_pending_writes") or 0) >= 3
        assert _stored_transitions(db) == []  # nothing reached the file meanwhile
    finally:
        recover()
    await client.wait_ready(200, timeout=12)
    await _wait_log(gw, "store writes recovered", timeout=12)
    status, body = await client.api("/api/models/disabled")
    assert status == 200, body
    logged = _logged_transitions(gw.log())
    # disabled, enabled (expired), disabled, and by now perhaps that one's expiry too
    expected = [("disabled", ""), ("enabled", "expired"), ("disabled", ""), ("enabled", "expired")]
    assert [(kind, cause) for kind, cause, *_ in logged] == expected[: len(logged)] and len(logged) >= 3, logged
    assert _stored_transitions(db) == logged  # all of them, in order, with the times they were logged with
    in_force = [(parse_timestamp(r["disabled_at"]), parse_timestamp(r["disabled_until"])) for r in body["disabled"]]
    if len(logged) == 3 and logged[-1][3] > time.time() + 0.1:
        assert in_force == [logged[-1][2:]]
    elif len(logged) == 4:
        assert in_force == []
    assert _integrity(db) == "ok"
    assert (await client.chat())[0] == 200


@pytest.mark.slow  # a real outage and catch-up (about 7 s)
class TestLockedDatabase:
    """Another connection holds the write lock: routing goes on, /readyz and the management API say 503, then it catches up."""

    async def test_outage_and_catch_up(self, upstreams, tmp_path: Path, processes: list[GatewayProcess]) -> None:
        bad, good = await upstreams(), await upstreams()
        bad.fail(None, Fault(status=500))
        gw = GatewayProcess(tmp_path, _config(bad, good))
        processes.append(gw.start())
        db = tmp_path / "cliproxy.db"
        blocker = sqlite3.connect(db, isolation_level=None, timeout=0)

        def outage() -> None:
            blocker.execute("BEGIN EXCLUSIVE")

        def recover() -> None:
            blocker.execute("ROLLBACK")
            blocker.close()

        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:
            client = Client(gw, session)
            await _outage_and_recovery(client, gw, db, outage=outage, recover=recover)
        assert "database is locked" in gw.log()


@pytest.mark.skipif(not (sys.platform.startswith("linux") and hasattr(resource, "prlimit")), reason="needs Linux prlimit(2)")
class TestFullDisk:
    """Every file write fails with EFBIG (RLIMIT_FSIZE lowered from outside): routing goes on, /readyz says 503, then it catches up."""

    @pytest.mark.slow  # a real outage and catch-up (about 5 s)
    async def test_outage_and_catch_up(self, upstreams, tmp_path: Path, processes: list[GatewayProcess]) -> None:
        bad, good = await upstreams(), await upstreams()
        bad.fail(None, Fault(status=500))
        gw = PipedGateway(tmp_path, _config(bad, good))
        processes.append(gw.start())
        assert gw.process is not None
        pid = gw.process.pid
        db = tmp_path / "cliproxy.db"
        soft, hard = resource.prlimit(pid, resource.RLIMIT_FSIZE)

        def outage() -> None:
            resource.prlimit(pid, resource.RLIMIT_FSIZE, (1, hard))  # no write past the first byte of any file

        def recover() -> None:
            resource.prlimit(pid, resource.RLIMIT_FSIZE, (soft, hard))

        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:
            client = Client(gw, session)
            await _outage_and_recovery(client, gw, db, outage=outage, recover=recover)
        assert gw.process.poll() is None  # SIGXFSZ did not kill it
        log = gw.log()
        assert "disk I/O error" in log or "database or disk is full" in log, log[-3000:]
        assert os.path.getsize(db) > 0

    async def test_config_reload_during_the_outage_is_recorded_afterwards(
        self, upstreams, tmp_path: Path, processes: list[GatewayProcess]
    ) -> None:
        good = await upstreams()
        gw = PipedGateway(tmp_path, _config(good, good))
        processes.append(gw.start())
        assert gw.process is not None
        pid = gw.process.pid
        soft, hard = resource.prlimit(pid, resource.RLIMIT_FSIZE)
        resource.prlimit(pid, resource.RLIMIT_FSIZE, (1, hard))
        try:
            gw.config_path.write_text(gw.config_path.read_text().replace("priority: 1", "priority: 5"))
            await _wait_log(gw, '"event": "config-reloaded", "detail": {"reason": "file-changed"', timeout=5)  # in force
            await _wait_log(gw, "event=config-reloaded", timeout=5)  # the queued write failed and is being retried
        finally:
            resource.prlimit(pid, resource.RLIMIT_FSIZE, (soft, hard))
        async with aiohttp.ClientSession() as session:
            status, _ = await Client(gw, session).api("/api/models/disabled")  # waits for the queued writes
            assert status == 200
        await eventually(
            lambda: "config-reloaded" in [e.kind for e in read_events(tmp_path / "cliproxy.db", limit=100)],
            "the config-reloaded event in the database",
            timeout=5,
        )


@pytest.mark.slow  # waits out the API's commit wait (about 10 s)
class TestReportsShowOnlyCommittedState:
    """While the database is locked a pair trips: neither /metrics nor the management API shows it until it is committed."""

    async def test_locked_database_hides_the_uncommitted_disable(
        self, upstreams, tmp_path: Path, processes: list[GatewayProcess]
    ) -> None:
        bad, good = await upstreams(), await upstreams()
        bad.fail(None, Fault(status=500))
        config = _config(bad, good)
        config["auto-disable"]["disable-duration-seconds"] = 600  # stays disabled through the test
        gw = GatewayProcess(tmp_path, config)
        processes.append(gw.start())
        db = tmp_path / "cliproxy.db"
        blocker = sqlite3.connect(db, isolation_level=None, timeout=0)
        series = 'cliproxy_pair_disabled{model="m",reason="auto",vendor="bad"}'
        counter = 'cliproxy_pair_disables_total{model="m",reason="auto",vendor="bad"}'
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:
            client = Client(gw, session)
            await client.wait_ready(200, timeout=5)
            blocker.execute("BEGIN EXCLUSIVE")
            try:
                assert [await client.chat() for _ in range(2)] == [(200, "good")] * 2  # bad fails twice: disabled in memory
                assert (await client.chat()) == (200, "good")
                await _wait_log(gw, "store write failed", timeout=8)  # the disable is queued, not committed
                assert await client.metric(series) is None
                assert await client.metric(counter) is None
                assert await client.metric('cliproxy_pairs_disabled{reason="auto"}') == 0
                status, body = await client.api("/api/models/disabled")
                assert status == 503, body
                assert await client.metric(series) is None  # still not, after the API's wait ran out
            finally:
                blocker.execute("ROLLBACK")
                blocker.close()
            status, body = await client.api("/api/models/disabled")  # waits for the commit
            assert status == 200, body
            assert [(e["vendor"], e["reason"]) for e in body["disabled"]] == [("bad", "auto")]
            assert await client.metric(series) == 1
            assert await client.metric(counter) == 1


# ---------------------------------------------------------------------------------------------
# The file itself: deleted, replaced or made immutable under the running gateway
# ---------------------------------------------------------------------------------------------


def _chattr(flag: str, *paths: Path) -> None:
    subprocess.run(["chattr", flag, *map(str, paths)], check=True, capture_output=True)


def _can_chattr(tmp_path: Path) -> bool:
    probe = tmp_path / "chattr-probe"
    probe.touch()
    try:
        _chattr("+i", probe)
    except (OSError, subprocess.CalledProcessError):
        return False
    _chattr("-i", probe)
    probe.unlink()
    return True


@pytest.fixture
def immutable(tmp_path: Path) -> Any:
    """`chattr +i` on files (root on a filesystem that supports it); everything is made mutable again afterwards."""
    if not _can_chattr(tmp_path):
        pytest.skip("needs chattr +i (root on ext4/xfs/btrfs)")
    touched: set[Path] = set()

    def set_(*paths: Path) -> None:
        touched.update(paths)
        _chattr("+i", *paths)

    def clear(*paths: Path) -> None:
        _chattr("-i", *paths)

    yield set_, clear
    for path in touched:
        if path.exists():
            _chattr("-i", path)


def _db_files(db: Path) -> list[Path]:
    return [p for p in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")) if p.exists()]


def _file_config(bad: FakeUpstream, good: FakeUpstream) -> dict[str, Any]:
    config = _config(bad, good)
    config["auto-disable"]["disable-duration-seconds"] = 600  # nothing expires during the test
    config["openai-compatibility"].append(vendor("other", bad.url, ["m2"]))
    return config


async def _trip(client: Client, model: str = "m") -> None:
    for _ in range(2):
        async with client.session.post(client.gw.url + "/v1/chat/completions", json={**CHAT, "model": model}) as resp:
            await resp.read()


async def _timed_disable(client: Client, model: str, vendor_name: str) -> None:
    async with client.session.post(
        f"{client.gw.url}/api/models/{model}/disable?vendor={vendor_name}",
        json={"duration_seconds": 600},
        headers={"Authorization": f"Bearer {MGMT_KEY}"},
    ) as resp:
        assert resp.status == 200, await resp.text()


def _store_errors(log: str) -> list[str]:
    """The messages the store logged at ERROR (JSON log lines)."""
    out = []
    for line in log.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("logger") == "cliproxy.store" and record.get("level") == "ERROR":
            out.append(record["message"])
    return out


def _rows(db: Path) -> list[tuple[str, str, str]]:
    conn = sqlite3.connect(db, timeout=5)
    try:
        return sorted(conn.execute("SELECT vendor, model, reason FROM disabled_pairs"))
    finally:
        conn.close()


class TestDatabaseFileUnderTheGateway:
    """Deleted, replaced or made immutable while the gateway runs: noticed (ERROR, /readyz 503), and nothing acknowledged is lost."""

    async def test_deleted_then_recreated_with_everything_acknowledged(
        self, upstreams, tmp_path: Path, processes: list[GatewayProcess], immutable: Any
    ) -> None:
        set_immutable, clear_immutable = immutable
        bad, good = await upstreams(), await upstreams()
        bad.fail(None, Fault(status=500))
        data = tmp_path / "data"
        data.mkdir()
        db = data / "cliproxy.db"
        config = _file_config(bad, good)
        config["database"] = str(db)
        gw = GatewayProcess(tmp_path, config)
        processes.append(gw.start())
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:
            client = Client(gw, session)
            await client.wait_ready(200, timeout=5)
            await _trip(client)  # bad/m auto-disabled
            await _timed_disable(client, "m", "good")  # good/m timed manual disable (waits for the commit)
            before = [(e.kind, e.vendor, e.at) for e in sorted(read_events(db, limit=100), key=lambda e: e.id)]
            assert [k for k, *_ in before] == ["disabled", "manual-disable"]
            for path in _db_files(db):
                path.unlink()
            set_immutable(data)  # nothing can be created there: the outage lasts until we say so
            try:
                await client.wait_ready(503, timeout=5)
                status, body = await client.get("/readyz")
                assert "was deleted" in body, body
                await _trip(client, "m2")  # other/m2 auto-disabled meanwhile: held in memory
                await _wait_log(gw, "store write failed", timeout=8)
                assert any(
                    m.startswith("database problem: the database file") and "was deleted" in m for m in _store_errors(gw.log())
                )
            finally:
                clear_immutable(data)
            await client.wait_ready(200, timeout=12)
            await _wait_log(gw, "was recreated", timeout=12)
            status, body = await client.api("/api/models/disabled")
            assert status == 200, body
        after = [(e.kind, e.vendor, e.at) for e in sorted(read_events(db, limit=100), key=lambda e: e.id)]
        assert after[:2] == before and [k for k, *_ in after[2:]] == ["disabled"] and after[2][1] == "other"
        assert _rows(db) == [("bad", "m", "auto"), ("good", "m", "manual"), ("other", "m2", "auto")]
        assert _integrity(db) == "ok"

    async def test_replaced_file_gets_the_state(self, upstreams, tmp_path: Path, processes: list[GatewayProcess]) -> None:
        bad, good = await upstreams(), await upstreams()
        bad.fail(None, Fault(status=500))
        gw = GatewayProcess(tmp_path, _file_config(bad, good))
        processes.append(gw.start())
        db = tmp_path / "cliproxy.db"
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:
            client = Client(gw, session)
            await client.wait_ready(200, timeout=5)
            await _trip(client)
            status, _ = await client.api("/api/models/disabled")  # committed
            assert status == 200
            other = tmp_path / "other.db"
            sqlite3.connect(other).close()  # an empty file (the gateway applies the migrations)
            for sidecar in _db_files(db)[1:]:
                sidecar.unlink()
            os.replace(other, db)
            await _trip(client, "m2")
            await _wait_log(gw, "was replaced by another file", timeout=8)
            await _wait_log(gw, "was recreated", timeout=8)
            status, body = await client.api("/api/models/disabled")
            assert status == 200, body
            await client.wait_ready(200, timeout=5)
        assert _rows(db) == [("bad", "m", "auto"), ("other", "m2", "auto")]
        assert [e.kind for e in read_events(db, limit=10)] == ["disabled", "disabled"]

    async def test_immutable_files_outage_then_catch_up_and_sigterm_is_clean(
        self, upstreams, tmp_path: Path, processes: list[GatewayProcess], immutable: Any
    ) -> None:
        set_immutable, clear_immutable = immutable
        bad, good = await upstreams(), await upstreams()
        bad.fail(None, Fault(status=500))
        gw = GatewayProcess(tmp_path, _file_config(bad, good))
        processes.append(gw.start())
        db = tmp_path / "cliproxy.db"
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:
            client = Client(gw, session)
            await client.wait_ready(200, timeout=5)
            await _trip(client, "m2")
            assert (await client.api("/api/models/disabled"))[0] == 200
            files = _db_files(db)
            assert len(files) == 3  # WAL mode: -wal and -shm (mapped) exist
            set_immutable(*files)
            try:
                await client.wait_ready(503, timeout=5)
                await _trip(client)  # written to nothing: SQLite's mapping of -shm is not touched (that was SIGBUS)
                await _wait_log(gw, "store write failed", timeout=8)
                assert any("is not writable" in m for m in _store_errors(gw.log()))
            finally:
                clear_immutable(*files)
            await client.wait_ready(200, timeout=12)
            assert (await client.api("/api/models/disabled"))[0] == 200
            assert _rows(db) == [("bad", "m", "auto"), ("other", "m2", "auto")]
            set_immutable(*files)
            await client.wait_ready(503, timeout=5)
        assert gw.stop(timeout=15) == 0  # SIGTERM: a clean exit, not SIGBUS (-7)
        clear_immutable(*files)
        assert "Traceback" not in gw.log()
        assert _integrity(db) == "ok"

    async def test_starting_on_an_immutable_database_is_not_ready_at_once(
        self, upstreams, tmp_path: Path, processes: list[GatewayProcess], immutable: Any
    ) -> None:
        set_immutable, clear_immutable = immutable
        good = await upstreams()
        gw = GatewayProcess(tmp_path, _file_config(good, good))
        gw.start()
        assert gw.stop() == 0
        db = tmp_path / "cliproxy.db"
        set_immutable(*_db_files(db))
        processes.append(gw.start())
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:
            client = Client(gw, session)
            status, body = await client.get("/readyz")  # the first probe, before any write was tried
            assert status == 503 and "is not writable" in body, body
            assert (await client.chat())[0] == 200  # it serves meanwhile
        assert gw.stop() == 0
        clear_immutable(*_db_files(db))
