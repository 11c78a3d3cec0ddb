"""Disabled pairs survive `kill -9` of a real gateway process, with their original timestamps."""

from __future__ import annotations

import time

import aiohttp
import pytest

from cliproxy.fake_upstream import Fault
from cliproxy.services.store import read_disabled, read_events
from tests.helpers import eventually, vendor
from tests.processes import GatewayProcess

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


async def post_chat(url: str) -> tuple[int, dict[str, str]]:
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{url}/v1/chat/completions", json=CHAT) as resp:
            await resp.read()
            return resp.status, dict(resp.headers)


@pytest.fixture
def processes():
    started: list[GatewayProcess] = []
    yield started
    for proc in started:
        proc.stop(timeout=10)


class TestKillDashNine:
    """A disable committed before the kill is still in force after the restart, timestamps unchanged."""

    async def test_disabled_pair_survives_kill_9(self, upstreams, tmp_path, processes):
        up = await upstreams()
        up.fail(None, Fault(status=500))
        gw = GatewayProcess(
            tmp_path,
            {
                "auto-disable": {"failure-threshold": 2, "disable-duration-seconds": 600},
                "openai-compatibility": [vendor("a", up.url, ["m"])],
            },
        )
        processes.append(gw.start())
        for _ in range(2):
            assert (await post_chat(gw.url))[0] == 500
        [before] = await eventually(lambda: read_disabled(tmp_path / "cliproxy.db"))
        gw.kill9()
        gw.start()
        status, headers = await post_chat(gw.url)
        assert status == 503
        assert 0 < int(headers["Retry-After"]) <= 600
        [after] = read_disabled(tmp_path / "cliproxy.db")
        assert (after.disabled_at, after.disabled_until) == (before.disabled_at, before.disabled_until)
        assert len(up.requests) == 2  # nothing reached the upstream after the restart

    async def test_expired_during_downtime_is_enabled_at_startup(self, upstreams, tmp_path, processes):
        up = await upstreams()
        up.fail(None, Fault(status=500, times=1))
        gw = GatewayProcess(
            tmp_path,
            {
                "auto-disable": {"failure-threshold": 1, "disable-duration-seconds": 0.5},
                "openai-compatibility": [vendor("a", up.url, ["m"])],
            },
        )
        processes.append(gw.start())
        assert (await post_chat(gw.url))[0] == 500
        [record] = await eventually(lambda: read_disabled(tmp_path / "cliproxy.db"))
        gw.kill9()
        await eventually(lambda: time.time() > record.disabled_until + 0.05)
        gw.start()
        assert (await post_chat(gw.url))[0] == 200
        [enabled] = await eventually(lambda: read_events(tmp_path / "cliproxy.db", kind="enabled"))
        assert enabled.cause == "startup-expired"
        assert (enabled.disabled_at, enabled.disabled_until) == (record.disabled_at, record.disabled_until)
        assert read_disabled(tmp_path / "cliproxy.db") == []


class TestRecoveryStatesSurviveKillDashNine:
    """Issue 13 part B: half-open, probing and a backoff level are where they were after `kill -9`."""

    async def test_half_open_survives_kill_9(self, upstreams, tmp_path, processes):
        up = await upstreams()
        up.fail(None, Fault(status=500, times=1))
        db = tmp_path / "cliproxy.db"
        gw = GatewayProcess(
            tmp_path,
            {
                "auto-disable": {"failure-threshold": 1, "disable-duration-seconds": 0.5, "recovery": "half-open"},
                "openai-compatibility": [vendor("a", up.url, ["m"])],
            },
        )
        processes.append(gw.start())
        assert (await post_chat(gw.url))[0] == 500
        [record] = await eventually(lambda: read_disabled(db))
        await eventually(lambda: time.time() > record.disabled_until + 0.6)  # half-open, and the sweep has run
        assert read_disabled(db) == [record]  # half-open keeps the row until a request decides
        gw.kill9()
        gw.start()
        assert read_disabled(db) == [record]  # not ended at start-up: still half-open
        assert read_events(db, kind="enabled") == []
        status, headers = await post_chat(gw.url)
        assert (status, headers["x-cliproxy-vendor"]) == (200, "a")
        [enabled] = await eventually(lambda: read_events(db, kind="enabled"))
        assert enabled.cause == "half-open-success"
        assert (enabled.disabled_at, enabled.disabled_until) == (record.disabled_at, record.disabled_until)
        assert read_disabled(db) == []

    async def test_probing_survives_kill_9_and_is_probed_again(self, upstreams, tmp_path, processes):
        up = await upstreams()
        up.fail(None, Fault(status=500, times=1))
        db = tmp_path / "cliproxy.db"
        gw = GatewayProcess(
            tmp_path,
            {
                "auto-disable": {"failure-threshold": 1, "disable-duration-seconds": 0.5, "recovery": "probe"},
                "openai-compatibility": [vendor("a", up.url, ["m"])],
            },
        )
        processes.append(gw.start())
        assert (await post_chat(gw.url))[0] == 500
        [record] = await eventually(lambda: read_disabled(db))
        up.fail(None, Fault(stall_before_headers=60, times=1))  # the first probe hangs: killed while probing
        await eventually(lambda: up.probe_count == 1, "the first probe")
        gw.kill9()
        gw.start()
        await eventually(lambda: read_events(db, kind="enabled"), "the probe after the restart to enable the pair")
        [enabled] = read_events(db, kind="enabled")
        assert enabled.cause == "probe-success"
        assert (enabled.disabled_at, enabled.disabled_until) == (record.disabled_at, record.disabled_until)
        assert up.probe_count == 2
        assert [r for r in up.requests if not r.is_probe] == up.requests[:1]  # no client request went there meanwhile

    async def test_backoff_level_survives_kill_9(self, upstreams, tmp_path, processes):
        up = await upstreams()
        up.fail(None, Fault(status=500))
        db = tmp_path / "cliproxy.db"
        gw = GatewayProcess(
            tmp_path,
            {
                "auto-disable": {"failure-threshold": 1, "disable-duration-seconds": 1, "backoff-multiplier": 30},
                "openai-compatibility": [vendor("a", up.url, ["m"])],
            },
        )
        processes.append(gw.start())
        assert (await post_chat(gw.url))[0] == 500
        [first] = await eventually(lambda: read_disabled(db))
        assert first.disable_level == 1
        await eventually(lambda: time.time() > first.disabled_until)
        assert (await post_chat(gw.url))[0] == 500  # straight after the first: the second in a row
        [second] = await eventually(lambda: [r for r in read_disabled(db) if r.disable_level == 2])
        assert second.disabled_until - second.disabled_at == 30.0
        gw.kill9()
        gw.start()
        status, headers = await post_chat(gw.url)
        assert status == 503 and 0 < int(headers["Retry-After"]) <= 30
        assert read_disabled(db) == [second]


class TestKeyOutSurvivesKillDashNine:
    """A key the upstream refused, once committed, is still out of the rotation after kill -9, with its timestamps."""

    async def test_only_key_revoked_survives_kill_9(self, upstreams, tmp_path, processes):
        from cliproxy.services.sql import read_disabled_keys

        revoked = "sk-vendor-revoked-key-0002"
        up = await upstreams()
        up.revoke_key(revoked)
        gw = GatewayProcess(
            tmp_path,
            {
                "auto-disable": {"disable-duration-seconds": 600},
                "openai-compatibility": [
                    {
                        "name": "v",
                        "base-url": up.url,
                        "api-key-entries": [{"api-key": revoked}],
                        "models": [{"name": "m"}],
                    }
                ],
            },
        )
        processes.append(gw.start())
        assert (await post_chat(gw.url))[0] == 401  # the upstream's refusal, relayed
        [before] = await eventually(lambda: read_disabled_keys(tmp_path / "cliproxy.db"))
        gw.kill9()
        gw.start()
        status, headers = await post_chat(gw.url)
        assert status == 503  # the vendor's only key is still out: its pairs are unavailable (credentials)
        assert 0 < int(headers["Retry-After"]) <= 600
        [after] = read_disabled_keys(tmp_path / "cliproxy.db")
        assert after == before
        assert up.refused_keys == 1  # nothing reached the upstream after the restart
