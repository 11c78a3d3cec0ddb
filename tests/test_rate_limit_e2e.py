"""Retry-After through the real gateway and the fake upstream: every header form, the clamp,
extend-never-shorten, the 503 and its Retry-After, enable-all (API and CLI), and kill -9 while rate-limited."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from email.utils import format_datetime

import aiohttp
import pytest

from cliproxy.cli import main
from cliproxy.core.times import format_timestamp
from cliproxy.fake_upstream import Fault
from cliproxy.services.store import read_disabled, read_events
from cliproxy.web.keys import TRACKER
from tests.helpers import CHAT, MGMT_KEY, FakeClock, eventually, vendor
from tests.processes import GatewayProcess

PAIR = ("bad", "m")


def two_vendors(bad_url: str, good_url: str, **auto_disable: object) -> dict:
    return {
        "auto-disable": {"failure-threshold": 5, **auto_disable},
        "openai-compatibility": [vendor("bad", bad_url, ["m"], priority=1), vendor("good", good_url, ["m"])],
    }


def http_date(t: float) -> str:
    return format_datetime(datetime.fromtimestamp(t, UTC), usegmt=True)


async def status_of(admin, vendor_name: str = "bad") -> dict:
    reply = await admin.get(f"/api/models/m/status?vendor={vendor_name}")
    assert reply.status == 200
    [pair] = reply.json["pairs"]
    return pair


class TestEachHeaderForm:
    """A 429 (or 503) with a hint rate-limits the pair at once: the next request skips it until the deadline."""

    @pytest.mark.parametrize(
        ("status", "headers", "seconds"),
        [
            (429, {"Retry-After": "30"}, 30.0),
            (503, {"Retry-After": "30"}, 30.0),
            (429, {"Retry-After": "DATE+45"}, 45.0),
            (429, {"retry-after-ms": "12500"}, 12.5),
            (429, {"x-ratelimit-reset-requests": "1m30.5s"}, 90.5),
            (429, {"x-ratelimit-reset-tokens": "6m0s", "x-ratelimit-remaining-tokens": "0"}, 360.0),
        ],
    )
    async def test_form(self, upstreams, admin, status: int, headers: dict[str, str], seconds: float) -> None:
        bad, good = await upstreams(), await upstreams()
        clock = FakeClock()
        t0 = clock.t
        headers = {k: http_date(t0 + 45) if v == "DATE+45" else v for k, v in headers.items()}
        bad.fail(None, Fault(status=status, headers=headers, times=1))
        api = await admin(two_vendors(bad.url, good.url), clock=clock)
        first = await api.chat()
        assert (first.status, first.headers["x-cliproxy-vendor"], first.headers["x-cliproxy-attempts"]) == (200, "good", "2")
        second = await api.chat()
        assert second.headers["x-cliproxy-attempts"] == "1", "the rate-limited pair is skipped at once (no N failures)"
        assert len(bad.requests) == 1
        pair = await status_of(api)
        assert (pair["state"], pair["rate_limited_until"], pair["enabled"]) == (
            "rate-limited",
            format_timestamp(t0 + seconds),
            False,
        )
        assert (pair["auto_disabled"], pair["failure_count"]) == (False, 1), "it still counts for N-in-T"
        [event] = await api.events(kind="rate-limited")
        assert (event.reason, event.disabled_until, event.last_error.status) == ("rate-limited", t0 + seconds, status)
        disabled = (await api.get("/api/models/disabled")).json["disabled"]
        assert [(d["vendor"], d["reason"], d["source"]) for d in disabled] == [("bad", "rate-limited", "retry-after")]

        clock.advance(seconds)  # at the deadline the pair is routable at once, and the sweep records it
        assert (await api.chat()).headers["x-cliproxy-vendor"] == "bad"
        [enabled] = await eventually(lambda: api.events(kind="enabled"), "the sweep to record the end")
        assert (enabled.reason, enabled.cause) == ("rate-limited", "expired")
        assert (await status_of(api))["state"] == "enabled"

    async def test_honor_retry_after_false_ignores_the_hint(self, upstreams, admin) -> None:
        bad, good = await upstreams(), await upstreams()
        bad.fail(None, Fault(status=429, headers={"Retry-After": "30"}, times=1))
        api = await admin(two_vendors(bad.url, good.url, **{"honor-retry-after": False}), clock=FakeClock())
        await api.chat()
        assert (await api.chat()).headers["x-cliproxy-vendor"] == "bad"
        assert await api.events(kind="rate-limited") == []


class TestClampAndExtend:
    """The hint is cut to max-retry-after-seconds; a shorter later hint never shortens, a longer one extends."""

    async def test_clamp(self, upstreams, admin) -> None:
        bad, good = await upstreams(), await upstreams()
        clock = FakeClock()
        bad.fail(None, Fault(status=429, headers={"Retry-After": "1555200"}, times=1))  # 18 days
        api = await admin(two_vendors(bad.url, good.url, **{"max-retry-after-seconds": 600}), clock=clock)
        await api.chat()
        pair = await status_of(api)
        assert pair["rate_limited_until"] == format_timestamp(clock.t + 600)
        assert pair["auto_disable"]["max_retry_after_seconds"] == 600
        [event] = await api.events(kind="rate-limited")
        assert event.detail == {"retry_after_seconds": 1555200.0, "header": "retry-after", "clamped": True, "extended": False}

    async def test_extend_never_shorten(self, upstreams, admin) -> None:
        bad = await upstreams()
        clock = FakeClock()
        # Three requests in flight at once; their 429s come back in this order: 60 s, then 5 s, then 120 s.
        for hint, stall in (("60", 0.2), ("5", 0.5), ("120", 0.8)):
            bad.fail(None, Fault(status=429, headers={"Retry-After": hint}, stall_before_headers=stall, times=1))
        api = await admin({"openai-compatibility": [vendor("bad", bad.url, ["m"])]}, clock=clock)
        answers = await asyncio.gather(*(api.chat() for _ in range(3)))
        assert [a.status for a in answers] == [429, 429, 429]
        assert [a.headers["Retry-After"] for a in answers] == ["60", "5", "120"], "the upstream's hint is relayed as it came"
        events = await api.events(kind="rate-limited")
        assert [e.disabled_until - clock.t for e in reversed(events)] == [60.0, 120.0]  # the 5 s hint changed nothing
        assert [e.detail["extended"] for e in reversed(events)] == [False, True]
        assert (await status_of(api))["rate_limited_until"] == format_timestamp(clock.t + 120)
        answer = await api.chat()  # nothing else serves the model: 503 with the time left
        assert answer.status == 503 and answer.headers["Retry-After"] == "120"
        assert "1 pair rate-limited by the upstream (first back in 2m00s)" in (await answer.json())["error"]["message"]


class TestEnableAll:
    """POST /api/models/enable-all clears every disable the tracker holds, narrowed by vendor and reason."""

    async def rate_limit_and_disable(self, upstreams, admin):
        a, b = await upstreams(), await upstreams()
        a.fail(None, Fault(status=429, headers={"Retry-After": "300"}))
        api = await admin(
            {
                "auto-disable": {"failure-threshold": 1},
                "openai-compatibility": [vendor("a", a.url, ["m", "n"]), vendor("b", b.url, ["m"])],
            },
            clock=FakeClock(),
        )
        await api.chat("m")  # a/m: rate-limited and auto-disabled (threshold 1): two disables
        assert (await api.post("/api/models/m/disable?vendor=b", json={"duration_seconds": 60})).status == 200
        reasons = [(d["vendor"], d["model"], d["reason"]) for d in (await api.get("/api/models/disabled")).json["disabled"]]
        assert reasons == [("a", "m", "auto"), ("a", "m", "rate-limited"), ("b", "m", "manual")]
        return api

    async def test_reason_filter(self, upstreams, admin) -> None:
        api = await self.rate_limit_and_disable(upstreams, admin)
        reply = await api.post("/api/models/enable-all?reason=rate-limited")
        assert reply.status == 200 and reply.json == {"enabled": [{"vendor": "a", "model": "m", "reason": "rate-limited"}]}
        left = [(d["vendor"], d["reason"]) for d in (await api.get("/api/models/disabled")).json["disabled"]]
        assert left == [("a", "auto"), ("b", "manual")]
        [event] = await api.events(kind="enabled")
        assert (event.reason, event.cause, event.actor) == ("rate-limited", "manual", "127.0.0.1")

    async def test_vendor_filter_then_everything(self, upstreams, admin) -> None:
        api = await self.rate_limit_and_disable(upstreams, admin)
        reply = await api.post("/api/models/enable-all?vendor=b")
        assert reply.json == {"enabled": [{"vendor": "b", "model": "m", "reason": "manual"}]}
        reply = await api.post("/api/models/enable-all")
        assert [(e["vendor"], e["reason"]) for e in reply.json["enabled"]] == [("a", "auto"), ("a", "rate-limited")]
        assert (await api.get("/api/models/disabled")).json["disabled"] == []
        assert len(await api.events(kind="enabled")) == 3, "one event per disable cleared"
        assert (await api.post("/api/models/enable-all")).json == {"enabled": []}
        assert api.app[TRACKER].is_available(("a", "m"))

    async def test_bad_filters(self, upstreams, admin) -> None:
        api = await self.rate_limit_and_disable(upstreams, admin)
        assert (await api.post("/api/models/enable-all?reason=bogus")).status == 400
        assert (await api.post("/api/models/enable-all?vendor=nobody")).status == 404
        assert len((await api.get("/api/models/disabled")).json["disabled"]) == 3

    async def test_cli_enable_all(self, upstreams, admin, capsys) -> None:
        api = await self.rate_limit_and_disable(upstreams, admin)
        url = str(api.gw.client.make_url("")).rstrip("/")
        auth = ("--url", url, "--key", MGMT_KEY)
        assert await asyncio.to_thread(main, ["enable", "--all", "--reason", "rate-limited", *auth]) == 0
        assert capsys.readouterr().out == f"enabled 1 disable: a/m (rate-limited) (via {url})\n"
        assert await asyncio.to_thread(main, ["enable", "--all", "--vendor", "b", *auth]) == 0
        assert capsys.readouterr().out == f"enabled 1 disable: b/m (manual) (via {url})\n"
        assert await asyncio.to_thread(main, ["enable", "--all", *auth]) == 0
        assert capsys.readouterr().out == f"enabled 1 disable: a/m (auto) (via {url})\n"
        assert await asyncio.to_thread(main, ["enable", "a", "m", "--all", *auth]) == 2
        assert "--all names no pair" in capsys.readouterr().err


async def post_chat(url: str) -> tuple[int, dict[str, str], bytes]:
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{url}/v1/chat/completions", json=CHAT) as resp:
            return resp.status, dict(resp.headers), await resp.read()


class TestKillDashNine:
    """A rate limit committed before kill -9 is restored with its original timestamps."""

    async def test_rate_limited_survives_kill_9(self, upstreams, tmp_path) -> None:
        up = await upstreams()
        up.fail(None, Fault(status=429, headers={"Retry-After": "600"}, times=1))
        gw = GatewayProcess(tmp_path, {"openai-compatibility": [vendor("a", up.url, ["m"])]})
        try:
            gw.start()
            assert (await post_chat(gw.url))[0] == 429
            [before] = await eventually(lambda: read_disabled(tmp_path / "cliproxy.db"))
            assert (before.reason, round(before.disabled_until - before.disabled_at)) == ("rate-limited", 600)
            gw.kill9()
            gw.start()
            status, headers, body = await post_chat(gw.url)
            assert status == 503 and 0 < int(headers["Retry-After"]) <= 600
            assert b"rate-limited by the upstream" in body
            [after] = read_disabled(tmp_path / "cliproxy.db")
            assert (after.reason, after.disabled_at, after.disabled_until) == (
                "rate-limited",
                before.disabled_at,
                before.disabled_until,
            )
            assert len(up.requests) == 1  # nothing reached the upstream after the restart
            assert [e.kind for e in read_events(tmp_path / "cliproxy.db")] == ["rate-limited"]
        finally:
            gw.stop(timeout=10)
