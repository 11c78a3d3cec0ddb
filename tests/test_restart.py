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
