"""The dashboard's data endpoints and its page, through the real app: `GET /api/pairs`,
`GET /api/pairs/stats` (the per-minute counters), `GET /api/events/stream` (SSE: auth, live,
resume, the subscriber bound) and `/ui/` (access rules, security headers)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from cliproxy.core.traffic import MINUTES, PairTraffic
from cliproxy.fake_upstream import Fault
from cliproxy.web.admin.event_stream import EVENT_FEED
from cliproxy.web.ui import SECURITY_HEADERS
from tests.helpers import MGMT_KEY, Admin, FakeClock, eventually, vendor

AUTH = {"Authorization": f"Bearer {MGMT_KEY}"}


def two_vendors(bad_url: str, good_url: str, **extra: Any) -> dict[str, Any]:
    return {
        "auto-disable": {"failure-threshold": 2, "time-window-seconds": 60, "disable-duration-seconds": 30},
        "openai-compatibility": [vendor("bad", bad_url, ["m"], priority=1), vendor("good", good_url, ["m", "other"])],
        **extra,
    }


def series(reply: Any, vendor_name: str, model: str = "m") -> dict[str, Any]:
    [entry] = [p for p in reply.json["pairs"] if p["vendor"] == vendor_name and p["model"] == model]
    return entry


class TestTrafficRing:
    """The core counters: one bucket per minute, an hour deep, old minutes read as zero."""

    def test_counts_per_minute_and_forgets_after_an_hour(self):
        clock = FakeClock(60 * 1000)  # the start of a minute
        traffic = PairTraffic(clock)
        pair = ("v", "m")
        traffic.record(pair, failed=False)
        traffic.record(pair, failed=True)
        clock.advance(60)
        traffic.record(pair, failed=True)
        now = traffic.series(pair)
        assert len(now.requests) == MINUTES
        assert now.requests[-2:] == (2, 1) and now.failures[-2:] == (1, 1)
        assert sum(now.requests) == 3
        clock.advance(60 * (MINUTES - 1))  # the first minute just left the hour; the second is the oldest
        assert traffic.series(pair).requests[0] == 1 and sum(traffic.series(pair).requests) == 1
        clock.advance(60 * MINUTES)
        assert sum(traffic.series(pair).requests) == 0
        traffic.record(pair, failed=False)  # a bucket reused after an hour starts from zero
        assert sum(traffic.series(pair).requests) == 1 and sum(traffic.series(pair).failures) == 0

    def test_unknown_pair_is_all_zeros(self):
        assert PairTraffic(FakeClock()).series(("v", "m")).requests == (0,) * MINUTES


class TestPairs:
    async def test_every_pair_with_state_and_priority(self, admin, upstreams):
        bad, good = await upstreams(), await upstreams()
        bad.fail(None, Fault(status=500))
        a: Admin = await admin(two_vendors(bad.url, good.url), clock=FakeClock())
        reply = await a.get("/api/pairs")
        assert reply.status == 200
        assert [(p["vendor"], p["model"]) for p in reply.json["pairs"]] == [("bad", "m"), ("good", "m"), ("good", "other")]
        assert series(reply, "bad")["priority"] == 1 and series(reply, "bad")["state"] == "enabled"
        await a.chat()
        await a.chat()
        reply = await a.get("/api/pairs")
        assert series(reply, "bad")["state"] == "disabled"
        assert series(reply, "bad")["remaining_seconds"] == 30

    async def test_needs_the_key(self, admin, upstreams):
        up = await upstreams()
        a: Admin = await admin(two_vendors(up.url, up.url))
        for path in ("/api/pairs", "/api/pairs/stats", "/api/events/stream"):  # 3 failures: under the lock-out's 5
            assert (await a.get(path, key="wrong")).status == 401, path


class TestPairStats:
    async def test_requests_and_countable_failures_per_minute(self, admin, upstreams):
        bad, good = await upstreams(), await upstreams()
        bad.fail(None, Fault(status=500, times=1))  # one countable failure, then it answers
        bad.fail(None, Fault(status=400, times=1))  # a client error: an attempt, not a countable failure
        clock = FakeClock(60 * 30_000_000)
        a: Admin = await admin(two_vendors(bad.url, good.url), clock=clock)
        await a.chat()  # bad 500 -> good
        await a.chat()  # bad 400 (answered to the client)
        clock.advance(60)
        await a.chat()  # bad ok
        reply = await a.get("/api/pairs/stats")
        assert reply.status == 200 and reply.json["minutes"] == MINUTES
        bad_series, good_series = series(reply, "bad"), series(reply, "good")
        assert bad_series["requests"][-2:] == [2, 1] and bad_series["failures"][-2:] == [1, 0]
        assert good_series["requests"][-2:] == [1, 0] and sum(good_series["failures"]) == 0
        assert sum(series(reply, "good", "other")["requests"]) == 0  # listed, never asked for
        clock.advance(60 * MINUTES)
        assert sum(series(await a.get("/api/pairs/stats"), "bad")["requests"]) == 0


async def read_events(resp: Any, count: int, timeout: float = 5.0) -> list[tuple[int, dict[str, Any]]]:
    """The next `count` SSE messages of an open stream, as (id, data)."""
    out: list[tuple[int, dict[str, Any]]] = []
    block: dict[str, str] = {}

    async def read() -> None:
        while len(out) < count:
            line = (await resp.content.readline()).decode().rstrip("\n")
            if line == "":
                if "data" in block:
                    assert block["event"] == "audit"
                    out.append((int(block["id"]), json.loads(block["data"])))
                block.clear()
            elif not line.startswith(":"):
                name, _, value = line.partition(": ")
                block[name] = value

    await asyncio.wait_for(read(), timeout)
    return out


class TestEventStream:
    async def test_live_events_after_commit(self, admin, upstreams):
        bad, good = await upstreams(), await upstreams()
        bad.fail(None, Fault(status=500))
        a: Admin = await admin(two_vendors(bad.url, good.url), clock=FakeClock())
        before = await a.events()
        resp = await a.gw.client.get("/api/events/stream", headers=AUTH)
        assert resp.status == 200 and resp.content_type == "text/event-stream"
        await a.chat()
        await a.chat()  # the second failure disables the bad pair
        [(event_id, event)] = await read_events(resp, 1)
        assert event["kind"] == "disabled" and event["vendor"] == "bad" and event["reason"] == "auto"
        assert event_id == event["id"] and all(e.id < event_id for e in before)  # new events only, not the history
        [stored] = await a.events(kind="disabled")
        assert stored.id == event_id  # sent once committed: it is in SQLite with that id
        resp.close()

    async def test_resume_from_last_event_id(self, admin, upstreams):
        bad, good = await upstreams(), await upstreams()
        a: Admin = await admin(two_vendors(bad.url, good.url), clock=FakeClock())
        for seconds in (10, 20, 30):
            assert (await a.post("/api/models/m/disable?vendor=bad", json={"duration_seconds": seconds})).status == 200
        ids = sorted(e.id for e in await a.events(kind="manual-disable"))
        resp = await a.gw.client.get("/api/events/stream", headers={**AUTH, "Last-Event-ID": str(ids[0])})
        got = await read_events(resp, 2)
        assert [i for i, _ in got] == ids[1:]  # the ones after the given id, oldest first, each once
        assert [e["disabled_until"] is not None for _, e in got] == [True, True]
        assert (await a.post("/api/models/m/enable?vendor=bad")).status == 200
        [(_, live)] = await read_events(resp, 1)  # then live
        assert live["kind"] == "enabled" and live["cause"] == "manual"
        resp.close()

    async def test_bad_last_event_id_is_400(self, admin, upstreams):
        up = await upstreams()
        a: Admin = await admin(two_vendors(up.url, up.url))
        reply = await a.get("/api/events/stream", headers={"Last-Event-ID": "yesterday"})
        assert reply.status == 400 and "Last-Event-ID" in reply.json["error"]["message"]

    async def test_subscribers_are_bounded(self, admin, upstreams):
        up = await upstreams()
        a: Admin = await admin(two_vendors(up.url, up.url))
        feed = a.app[EVENT_FEED]
        feed.max_subscribers = 2
        streams = [await a.gw.client.get("/api/events/stream", headers=AUTH) for _ in range(2)]
        assert [s.status for s in streams] == [200, 200]
        refused = await a.get("/api/events/stream")
        assert refused.status == 503 and refused.headers["Retry-After"]
        streams[0].close()
        await eventually(lambda: len(feed) == 1)  # a closed stream frees its place
        again = await a.gw.client.get("/api/events/stream", headers=AUTH)
        assert again.status == 200
        for s in (streams[1], again):
            s.close()


class TestDashboardPage:
    async def test_served_with_security_headers(self, admin, upstreams):
        up = await upstreams()
        a: Admin = await admin(two_vendors(up.url, up.url))
        for path, kind in (("/ui/", "text/html"), ("/ui/app.js", "text/javascript"), ("/ui/app.css", "text/css")):
            resp = await a.gw.client.get(path)
            assert resp.status == 200 and resp.content_type == kind, path
            for name, value in SECURITY_HEADERS.items():
                assert resp.headers[name] == value, (path, name)
        csp = SECURITY_HEADERS["Content-Security-Policy"]
        assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
        page = await (await a.gw.client.get("/ui/")).text()
        assert "<style" not in page and " style=" not in page and "<script>" not in page  # nothing inline for the CSP to block
        assert (await a.gw.client.get("/ui/../config.yaml")).status == 404
        redirect = await a.gw.client.get("/ui", allow_redirects=False)
        assert redirect.status == 302 and redirect.headers["Location"] == "/ui/"

    async def test_absent_when_management_is_off(self, gateway, upstreams):
        up = await upstreams()
        gw = await gateway({"openai-compatibility": [vendor("v", up.url, ["m"])]})
        assert (await gw.client.get("/ui/")).status == 404

    async def test_remote_clients_refused_unless_allowed(self, admin, upstreams):
        up = await upstreams()
        remote = {"X-Forwarded-For": "203.0.113.9"}
        a: Admin = await admin(
            two_vendors(up.url, up.url, **{"remote-management": {"secret-key": MGMT_KEY, "trusted-proxies": ["127.0.0.1"]}})
        )
        assert (await a.gw.client.get("/ui/", headers=remote)).status == 403

    async def test_locked_out_address_gets_429(self, admin, upstreams):
        up = await upstreams()
        a: Admin = await admin(two_vendors(up.url, up.url))
        for _ in range(5):
            assert (await a.get("/api/pairs", key="wrong")).status == 401
        resp = await a.gw.client.get("/ui/")
        assert resp.status == 429 and int(resp.headers["Retry-After"]) > 0

    async def test_same_origin_calls_reach_the_api_and_foreign_ones_do_not(self, admin, upstreams):
        up = await upstreams()
        a: Admin = await admin(two_vendors(up.url, up.url))
        own = str(a.gw.client.make_url("/")).rstrip("/")
        ok = await a.gw.client.post("/api/models/enable-all", headers={**AUTH, "Origin": own})
        assert ok.status == 200
        foreign = await a.gw.client.post("/api/models/enable-all", headers={**AUTH, "Origin": "http://evil.example"})
        assert foreign.status == 403
        client_api = await a.gw.client.post("/v1/chat/completions", json={}, headers={"Origin": own})
        assert client_api.status == 403  # only the management API takes the dashboard's own origin
