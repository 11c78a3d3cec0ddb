"""Auto-disable through the real gateway: the failure tracker sits on the outcome seam of real requests."""

from __future__ import annotations

import asyncio

from cliproxy.fake_upstream import Fault
from cliproxy.web.keys import STORE, TRACKER
from tests.helpers import FakeClock, eventually, vendor

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def two_vendors(bad_url: str, good_url: str, **auto_disable: float) -> dict:
    return {
        "auto-disable": {"failure-threshold": 2, "time-window-seconds": 60, "disable-duration-seconds": 30, **auto_disable},
        "openai-compatibility": [vendor("bad", bad_url, ["m"], priority=1), vendor("good", good_url, ["m"])],
    }


async def events_of(gw, kind: str) -> list:
    await gw.app[TRACKER].flush(timeout=5)
    return await gw.app[STORE].events(kind=kind)


class TestDisableAndFailover:
    """N countable failures disable a pair, and the next request goes straight to the other vendor."""

    async def test_threshold_disables_and_routing_skips(self, upstreams, gateway):
        bad, good = await upstreams(), await upstreams()
        bad.fail(None, Fault(status=500))
        gw = await gateway(two_vendors(bad.url, good.url), clock=FakeClock())
        for _ in range(2):
            resp = await gw.client.post("/v1/chat/completions", json=CHAT)
            assert resp.headers["x-cliproxy-vendor"] == "good"
            assert resp.headers["x-cliproxy-attempts"] == "2"
        resp = await gw.client.post("/v1/chat/completions", json=CHAT)
        assert resp.headers["x-cliproxy-attempts"] == "1"
        assert len(bad.requests) == 2
        [event] = await events_of(gw, "disabled")
        assert (event.vendor, event.model, event.failure_count) == ("bad", "m", 2)
        assert event.last_error.status == 500
        assert event.settings["failure_threshold"] == 2

    async def test_reenabled_after_the_duration(self, upstreams, gateway):
        bad, good = await upstreams(), await upstreams()
        bad.fail(None, Fault(status=503, times=2))
        clock = FakeClock()
        gw = await gateway(two_vendors(bad.url, good.url), clock=clock)
        for _ in range(2):
            await gw.client.post("/v1/chat/completions", json=CHAT)
        clock.advance(29.9)
        assert (await gw.client.post("/v1/chat/completions", json=CHAT)).headers["x-cliproxy-vendor"] == "good"
        clock.advance(0.1)  # exactly disabled_until: routable again at once, before any background task runs
        assert (await gw.client.post("/v1/chat/completions", json=CHAT)).headers["x-cliproxy-vendor"] == "bad"
        await eventually(lambda: events_of(gw, "enabled"), "the sweep (every 0.5 s) to record the re-enable")
        [enabled] = await events_of(gw, "enabled")
        assert enabled.cause == "expired"
        assert gw.app[TRACKER].state(("bad", "m")).failure_count == 0


class TestWhatCounts:
    """Mid-stream breaks count once; client disconnects and client errors never count."""

    async def test_stream_break_counts(self, upstreams, gateway):
        up = await upstreams(chunks=5)
        up.fail(None, Fault(reset_after_chunks=2))
        gw = await gateway({"auto-disable": {"failure-threshold": 1}, "openai-compatibility": [vendor("a", up.url, ["m"])]})
        resp = await gw.client.post("/v1/chat/completions", json={**CHAT, "stream": True})
        assert b"stream_error" in await resp.read()
        [event] = await events_of(gw, "disabled")
        assert event.failure_count == 1

    async def test_client_disconnect_does_not_count(self, upstreams, gateway):
        up = await upstreams(chunks=40, chunk_delay=0.05)
        gw = await gateway({"auto-disable": {"failure-threshold": 1}, "openai-compatibility": [vendor("a", up.url, ["m"])]})
        resp = await gw.client.post("/v1/chat/completions", json={**CHAT, "stream": True})
        await resp.content.readany()
        resp.close()
        await eventually(lambda: up.disconnects, "the upstream request to be cancelled")
        assert up.disconnects == 1
        assert gw.app[TRACKER].is_available(("a", "m"))
        assert (await gw.client.post("/v1/chat/completions", json=CHAT)).status == 200
        assert await events_of(gw, "disabled") == []

    async def test_client_error_does_not_count(self, upstreams, gateway):
        up = await upstreams()
        up.fail(None, Fault(status=400, times=3))
        gw = await gateway({"auto-disable": {"failure-threshold": 1}, "openai-compatibility": [vendor("a", up.url, ["m"])]})
        for _ in range(3):
            assert (await gw.client.post("/v1/chat/completions", json=CHAT)).status == 400
        assert (await gw.client.post("/v1/chat/completions", json=CHAT)).status == 200

    async def test_configured_count_statuses(self, upstreams, gateway):
        up = await upstreams()
        up.fail(None, Fault(status=429))
        gw = await gateway(
            {
                "auto-disable": {"failure-threshold": 1, "count-statuses": ["5xx"]},
                "openai-compatibility": [vendor("a", up.url, ["m"])],
            }
        )
        for _ in range(3):
            assert (await gw.client.post("/v1/chat/completions", json=CHAT)).status == 429
        assert await events_of(gw, "disabled") == []


class TestAllDisabled:
    """When every pair of a model is disabled the client gets 503 with a Retry-After."""

    async def test_503_with_retry_after(self, upstreams, gateway):
        a, b = await upstreams(), await upstreams()
        a.fail(None, Fault(status=500))
        b.fail(None, Fault(status=500))
        clock = FakeClock()
        gw = await gateway(
            {
                "auto-disable": {"failure-threshold": 1, "disable-duration-seconds": 120},
                "openai-compatibility": [
                    vendor("a", a.url, ["m"], **{"auto-disable": {"disable-duration-seconds": 60}}),
                    vendor("b", b.url, ["m"]),
                ],
            },
            clock=clock,
        )
        assert (await gw.client.post("/v1/chat/completions", json=CHAT)).status == 500
        clock.advance(10)
        resp = await gw.client.post("/v1/chat/completions", json=CHAT)
        assert resp.status == 503
        body = await resp.json()
        assert body["error"]["code"] == "no_available_vendor"
        assert body["error"]["message"] == "no vendor available for model 'm': 2 pairs auto-disabled (first back in 50s)"
        assert resp.headers["Retry-After"] == "50"  # a comes back first: 60 - 10

    async def test_503_message_counts_each_cause_apart(self, upstreams, gateway):
        """Vendors off, vendors without a key, models off, auto-disabled and operator-disabled pairs."""
        a1, a2, other = await upstreams(), await upstreams(), await upstreams()
        a1.fail(None, Fault(status=500))
        a2.fail(None, Fault(status=500))
        clock = FakeClock()
        gw = await gateway(
            {
                "auto-disable": {"failure-threshold": 1},
                "openai-compatibility": [
                    vendor("a1", a1.url, ["m"], priority=3, **{"auto-disable": {"disable-duration-seconds": 60}}),
                    vendor("a2", a2.url, ["m"], priority=2, **{"auto-disable": {"disable-duration-seconds": 120}}),
                    vendor("op", other.url, ["m"], priority=1),
                    vendor("off", other.url, ["m"], enabled=False),
                    vendor("keyless", other.url, ["m"], **{"api-key-entries": [{"api-key": ""}]}),
                    vendor("b", other.url, [{"name": "m", "enabled": False}]),
                ],
            },
            clock=clock,
        )
        await gw.app[TRACKER].manual_disable(("op", "m"), 600, actor="test")
        assert (await gw.client.post("/v1/chat/completions", json=CHAT)).status == 500  # a1 then a2 fail
        clock.advance(18)
        resp = await gw.client.post("/v1/chat/completions", json=CHAT)
        assert resp.status == 503
        assert (await resp.json())["error"]["message"] == (
            "no vendor available for model 'm': 1 vendor switched off, 1 vendor without an api key, "
            "1 model switched off, 2 pairs auto-disabled (first back in 42s), "
            "1 pair disabled by an operator (first back in 9m42s)"
        )
        assert resp.headers["Retry-After"] == "42"
        assert not other.requests

    async def test_503_when_the_config_switches_every_pair_off(self, upstreams, gateway):
        up = await upstreams()
        gw = await gateway(
            {
                "openai-compatibility": [
                    vendor("off", up.url, ["m"], enabled=False),
                    vendor("b", up.url, [{"name": "m", "enabled": False}]),
                ]
            }
        )
        resp = await gw.client.post("/v1/chat/completions", json=CHAT)
        assert resp.status == 503 and "Retry-After" not in resp.headers
        assert (await resp.json())["error"][
            "message"
        ] == "no vendor available for model 'm': 1 vendor switched off, 1 model switched off"


class TestConcurrency:
    """Hundreds of concurrent failures to one pair trip exactly one disable and one event."""

    async def test_500_concurrent_failures_one_disable(self, upstreams, gateway):
        up = await upstreams()
        up.fail(None, Fault(status=500))
        gw = await gateway(
            {"request-retry": 0, "auto-disable": {"failure-threshold": 5}, "openai-compatibility": [vendor("a", up.url, ["m"])]}
        )
        responses = await asyncio.gather(*(gw.client.post("/v1/chat/completions", json=CHAT) for _ in range(500)))
        statuses = {r.status for r in responses}
        for r in responses:
            r.release()
        assert statuses <= {500, 503}
        assert len(await events_of(gw, "disabled")) == 1
        assert len(gw.app[TRACKER].disabled_pairs()) == 1
