"""Webhook notifications (`notify`), against a real local receiver: an aiohttp server in the test."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
from collections import Counter
from typing import Any

import pytest
from aiohttp import web

from cliproxy.core.config import NOTIFY_EVENTS
from cliproxy.core.events import ErrorInfo, Event
from cliproxy.core.runtime import LiveRuntime, Runtime
from cliproxy.fake_upstream import Fault
from cliproxy.services.config_loader import ConfigError
from cliproxy.web.admin.config_view import config_view
from cliproxy.web.admin.views import event_view
from cliproxy.web.keys import STORE
from cliproxy.web.notifier import Coalescer, Notifier, NotifyTiming, sign
from tests.helpers import FakeClock, eventually, make_config, vendor
from tests.processes import free_port

#: Fast retries and a fast ticker; the one-a-minute window is the FakeClock's.
FAST = NotifyTiming(timeout_seconds=2.0, attempts=3, retry_initial=0.01, retry_max=0.02, tick_seconds=0.01, close_seconds=0.5)
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


class Receiver:
    """A webhook receiver on a real port: records every POST; answers `status`, or hangs while `hang` is set."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.status = 200
        self.hang = False
        self._release = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        self.received.append((dict(request.headers), await request.read()))
        if self.hang:
            await self._release.wait()
        return web.Response(status=self.status)

    def release(self) -> None:
        self.hang = False
        self._release.set()

    @property
    def bodies(self) -> list[dict[str, Any]]:
        return [json.loads(body) for _, body in self.received]


@pytest.fixture
async def receiver(aiohttp_server: Any) -> Any:
    r = Receiver()
    app = web.Application()
    app.router.add_post("/hook/{token}", r.handle)
    server = await aiohttp_server(app)
    r.url = str(server.make_url("/hook/T0K3N-in-the-path"))  # type: ignore[attr-defined]
    yield r
    r.release()


def disabled(vendor_: str = "a", model: str = "m", at: float = 1_800_000_000.0, id_: int = 7) -> Event:
    return Event(
        "disabled",
        at,
        vendor=vendor_,
        model=model,
        reason="auto",
        disabled_at=at,
        disabled_until=at + 300,
        failure_count=5,
        last_error=ErrorInfo(500, "upstream down"),
        id=id_,
    )


def enabled(vendor_: str = "a", model: str = "m", at: float = 1_800_000_010.0, id_: int = 8) -> Event:
    return Event("enabled", at, vendor=vendor_, model=model, reason="auto", cause="expired", id=id_)


class Harness:
    """A started `Notifier` on a runtime built from a `notify` list, counting its results."""

    def __init__(self, notify: list[dict[str, Any]], timing: NotifyTiming = FAST) -> None:
        self.clock = FakeClock()
        self.counts: Counter[str] = Counter()
        self.runtime = LiveRuntime(Runtime.build(make_config({"notify": notify})))
        self.notifier = Notifier(self.runtime, count=self.count, clock=self.clock, timing=timing)

    def count(self, result: str) -> None:
        self.counts[result] += 1

    def reload(self, notify: list[dict[str, Any]]) -> None:
        self.runtime.current = Runtime.build(make_config({"notify": notify}))


@pytest.fixture
async def harness() -> Any:
    started: list[Harness] = []

    async def start(notify: list[dict[str, Any]], timing: NotifyTiming = FAST) -> Harness:
        h = Harness(notify, timing)
        await h.notifier.start()
        started.append(h)
        return h

    yield start
    for h in started:
        await h.notifier.close()


class TestConfig:
    """`notify` is read strictly, and its secret never leaves unmasked."""

    def test_defaults_to_every_transition(self):
        [target] = make_config({"notify": [{"url": "https://hooks.example/x"}]}).notify
        assert target.events == frozenset(NOTIFY_EVENTS) and target.secret is None

    @pytest.mark.parametrize(
        ("entry", "problem"),
        [
            ({"url": "ftp://x"}, "notify[0].url: must be an http:// or https:// URL"),
            ({"url": "http://x", "events": ["disabled", "exploded"]}, "notify[0].events[1]: Must be one of: disabled,"),
            ({"url": "http://x", "events": []}, "notify[0].events: list at least one event"),
            ({"url": "http://x", "sceret": "s"}, "notify[0].sceret: unknown key; did you mean 'secret'?"),
        ],
    )
    def test_bad_entry_names_its_key(self, entry, problem):
        with pytest.raises(ConfigError) as failed:
            make_config({"notify": [entry]})
        assert problem in str(failed.value)

    def test_secret_masked_in_config_view_and_masker(self):
        config = make_config({"notify": [{"url": "https://u:pa55word@hooks.example/x", "secret": "whsec-0123456789abcdef"}]})
        [shown] = config_view(config)["notify"]
        assert "whsec-0123456789abcdef" not in json.dumps(shown) and "pa55word" not in json.dumps(shown)
        masker = Runtime.build(config).masker
        assert masker.mask("echo whsec-0123456789abcdef and pa55word") == "echo *** and ***"
        assert "whsec" not in repr(config.notify)


class TestCoalescer:
    """At most one message per pair per window; later transitions fold into the next one."""

    def test_flapping_pair_gives_one_message_then_one_coalesced(self):
        c = Coalescer(60)
        first, _ = c.offer(("a", "m"), {"kind": "disabled"}, 0)
        assert first == {"kind": "disabled", "coalesced": 0}
        assert c.offer(("a", "m"), {"kind": "enabled"}, 10) == (None, 0)  # held
        assert c.offer(("a", "m"), {"kind": "disabled", "n": 2}, 20) == (None, 1)  # replaces the held one
        assert c.due(59.9) == []
        assert c.due(60) == [{"kind": "disabled", "n": 2, "coalesced": 1}]
        assert c.due(200) == []

    def test_pairs_are_independent_and_a_quiet_pair_is_sent_at_once(self):
        c = Coalescer(60)
        assert c.offer(("a", "m"), {"k": 1}, 0)[0] is not None
        assert c.offer(("b", "m"), {"k": 2}, 1)[0] is not None
        assert c.offer(("a", "m"), {"k": 3}, 61)[0] == {"k": 3, "coalesced": 0}

    def test_a_message_released_by_the_window_starts_the_next_window(self):
        c = Coalescer(60)
        c.offer(("a", "m"), {"k": 1}, 0)
        c.offer(("a", "m"), {"k": 2}, 30)
        assert len(c.due(60)) == 1
        assert c.offer(("a", "m"), {"k": 3}, 70) == (None, 0)  # 10 s after the released one
        assert c.due(120) == [{"k": 3, "coalesced": 0}]


class TestDelivery:
    """Each transition is POSTed as the event `GET /api/events` shows, signed when a secret is set."""

    async def test_delivered_as_the_event_view(self, harness, receiver):
        h = await harness([{"url": receiver.url}])
        event = disabled()
        h.notifier.on_event(event)
        await eventually(lambda: h.counts["sent"] == 1, "the message sent")
        [(headers, body)] = receiver.received
        assert json.loads(body) == {**event_view(event, h.runtime.current.masker), "coalesced": 0}
        assert json.loads(body)["id"] == 7 and json.loads(body)["at"] == "2027-01-15T08:00:00.000Z"
        assert headers["Content-Type"] == "application/json" and headers["x-cliproxy-event"] == "disabled"
        assert "x-cliproxy-signature" not in headers

    async def test_signed_with_hmac_sha256_of_the_body(self, harness, receiver):
        h = await harness([{"url": receiver.url, "secret": "whsec-0123456789abcdef"}])
        h.notifier.on_event(disabled())
        await eventually(lambda: receiver.received, "the message")
        [(headers, body)] = receiver.received
        expected = "sha256=" + hmac.new(b"whsec-0123456789abcdef", body, hashlib.sha256).hexdigest()
        assert headers["x-cliproxy-signature"] == expected == sign("whsec-0123456789abcdef", body)
        assert b"whsec" not in body

    async def test_filtered_by_events(self, harness, receiver):
        h = await harness([{"url": receiver.url, "events": ["enabled"]}])
        h.notifier.on_event(disabled())
        h.notifier.on_event(Event("manual-disable", 1_800_000_000.0, vendor="a", model="m2"))  # never a notification
        h.notifier.on_event(enabled(model="other"))
        await eventually(lambda: h.counts["sent"] == 1, "the enabled message")
        assert [b["kind"] for b in receiver.bodies] == ["enabled"]

    async def test_flapping_pair_coalesced_by_the_clock(self, harness, receiver):
        h = await harness([{"url": receiver.url}])
        h.notifier.on_event(disabled(id_=1))
        h.clock.advance(10)
        h.notifier.on_event(enabled(id_=2))
        h.clock.advance(10)
        h.notifier.on_event(disabled(id_=3))
        await eventually(lambda: h.counts["sent"] == 1, "the first message")
        await asyncio.sleep(FAST.tick_seconds * 5)  # ticks pass; the clock has not reached the minute
        assert len(receiver.received) == 1 and h.counts["coalesced"] == 1
        h.clock.advance(40)  # the minute since the first message is over
        await eventually(lambda: h.counts["sent"] == 2, "the coalesced message")
        assert [(b["id"], b["kind"], b["coalesced"]) for b in receiver.bodies] == [(1, "disabled", 0), (3, "disabled", 1)]

    async def test_reload_applies_the_new_list(self, harness, receiver):
        h = await harness([])
        h.notifier.on_event(disabled(model="m1"))
        h.reload([{"url": receiver.url}])
        h.notifier.on_event(disabled(model="m2"))
        await eventually(lambda: h.counts["sent"] == 1, "the message after the reload")
        assert [b["model"] for b in receiver.bodies] == ["m2"]


class TestReceiverTrouble:
    """A receiver that is down, fails or hangs costs its own messages and nothing else, and is counted."""

    async def test_receiver_down_is_retried_then_counted_failed(self, harness, caplog):
        url = f"http://127.0.0.1:{free_port()}/hook/T0K3N-in-the-path"
        h = await harness([{"url": url, "secret": "whsec-0123456789abcdef"}])
        with caplog.at_level(logging.WARNING, logger="cliproxy.notify"):
            h.notifier.on_event(disabled())
            await eventually(lambda: h.counts["failed"] == 1, "the message given up")
        assert h.counts["sent"] == 0
        [line] = [r.getMessage() for r in caplog.records if r.name == "cliproxy.notify"]
        assert "notification failed" in line and "T0K3N" not in line and "whsec" not in line

    async def test_500_is_retried_attempts_times(self, harness, receiver):
        receiver.status = 500
        h = await harness([{"url": receiver.url}])
        h.notifier.on_event(disabled())
        await eventually(lambda: h.counts["failed"] == 1, "the message given up")
        assert len(receiver.received) == FAST.attempts

    async def test_400_is_not_retried(self, harness, receiver):
        receiver.status = 400
        h = await harness([{"url": receiver.url}])
        h.notifier.on_event(disabled())
        await eventually(lambda: h.counts["failed"] == 1, "the message refused")
        assert len(receiver.received) == 1

    async def test_full_queue_drops_the_oldest_and_counts_it(self, harness, receiver):
        receiver.hang = True
        h = await harness([{"url": receiver.url}], NotifyTiming(**{**_fields(FAST), "queue_size": 2, "timeout_seconds": 30}))
        h.notifier.on_event(disabled(model="m0"))
        await eventually(lambda: receiver.received, "the first message in flight")
        for n in (1, 2, 3):
            h.notifier.on_event(disabled(model=f"m{n}"))
        assert h.counts["dropped"] == 1
        receiver.release()
        await eventually(lambda: h.counts["sent"] == 3, "the rest delivered")
        assert [b["model"] for b in receiver.bodies] == ["m0", "m2", "m3"]

    async def test_a_hanging_receiver_does_not_hold_up_another(self, harness, receiver, aiohttp_server):
        other = Receiver()
        app = web.Application()
        app.router.add_post("/", other.handle)
        server = await aiohttp_server(app)
        receiver.hang = True
        h = await harness([{"url": receiver.url}, {"url": str(server.make_url("/"))}])
        for n in range(3):
            h.notifier.on_event(disabled(model=f"m{n}"))
        await eventually(lambda: len(other.received) == 3, "the healthy receiver's messages")
        assert len(receiver.received) == 1


async def metrics_with(read: Any, line: str) -> str | None:
    text = await read()
    return text if line in text else None


def _fields(timing: NotifyTiming) -> dict[str, Any]:
    return {name: getattr(timing, name) for name in timing.__dataclass_fields__}


def two_vendors(bad_url: str, good_url: str, notify: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "auto-disable": {"failure-threshold": 1, "time-window-seconds": 60, "disable-duration-seconds": 300},
        "openai-compatibility": [vendor("bad", bad_url, ["m"], priority=1), vendor("good", good_url, ["m"])],
        "notify": notify,
    }


class TestThroughTheGateway:
    """A real trip in the real gateway reaches the receiver; a hanging receiver does not slow the proxy."""

    async def test_trip_notified_with_its_stored_id_and_counted(self, upstreams, gateway, receiver):
        bad, good = await upstreams(), await upstreams()
        bad.fail(None, Fault(status=500))
        gw = await gateway(
            two_vendors(bad.url, good.url, [{"url": receiver.url, "secret": "whsec-0123456789abcdef"}]),
            clock=FakeClock(),
            notify_timing=FAST,
        )
        resp = await gw.client.post("/v1/chat/completions", json=CHAT)
        assert resp.status == 200 and resp.headers["x-cliproxy-vendor"] == "good"
        await eventually(lambda: receiver.received, "the disabled notification")
        [(headers, body)] = receiver.received
        assert headers["x-cliproxy-signature"] == sign("whsec-0123456789abcdef", body)
        message = json.loads(body)
        assert (message["kind"], message["vendor"], message["model"], message["last_error"]["status"]) == (
            "disabled",
            "bad",
            "m",
            500,
        )
        [stored] = await gw.app[STORE].events(kind="disabled")
        assert message["id"] == stored.id and message["at"] == event_view(stored, [])["at"]

        async def metrics() -> str:
            return await (await gw.client.get("/metrics")).text()

        text = await eventually(
            lambda: metrics_with(metrics, 'cliproxy_notifications_total{result="sent"} 1.0'), "the sent message counted"
        )
        assert 'cliproxy_notifications_total{result="failed"} 0.0' in text

    async def test_hanging_receiver_does_not_slow_proxied_requests(self, upstreams, gateway, receiver):
        receiver.hang = True
        bad, good = await upstreams(), await upstreams()
        bad.fail(None, Fault(status=500))
        gw = await gateway(
            two_vendors(bad.url, good.url, [{"url": receiver.url}]),
            clock=FakeClock(),
            notify_timing=NotifyTiming(**{**_fields(FAST), "timeout_seconds": 60}),
        )
        resp = await gw.client.post("/v1/chat/completions", json=CHAT)  # trips `bad`
        assert resp.status == 200
        await eventually(lambda: receiver.received, "the notification hanging in the receiver")
        slowest = 0.0
        for _ in range(20):
            started = time.monotonic()
            resp = await gw.client.post("/v1/chat/completions", json=CHAT)
            await resp.read()
            slowest = max(slowest, time.monotonic() - started)
            assert resp.status == 200 and resp.headers["x-cliproxy-attempts"] == "1"
        assert slowest < 1.0, slowest  # the POST would hold a request for its 60 s timeout
        assert len(receiver.received) == 1  # still the one, still hanging


class TestAlertPremises:
    """What the README's alert rules read is there when their case happens."""

    async def test_a_model_with_every_pair_down_shows_as_5xx_with_no_vendor_tried(self, upstreams, gateway):
        bad = await upstreams()
        bad.fail(None, Fault(status=500))
        gw = await gateway(
            {"auto-disable": {"failure-threshold": 1}, "openai-compatibility": [vendor("bad", bad.url, ["m"])]}, clock=FakeClock()
        )
        assert (await gw.client.post("/v1/chat/completions", json=CHAT)).status == 500  # relayed as it came; trips the pair
        refused = await gw.client.post("/v1/chat/completions", json=CHAT)
        assert refused.status == 503 and len(bad.requests) == 1

        async def metrics() -> str:
            return await (await gw.client.get("/metrics")).text()

        text = await eventually(
            lambda: metrics_with(metrics, 'cliproxy_pair_disabled{model="m",reason="auto",vendor="bad"} 1.0'), "the pair disabled"
        )
        assert 'cliproxy_requests_total{model="m",status_class="5xx",vendor="none"} 1.0' in text  # CliproxyModelDown
