"""Key scope (issue 14): a key the upstream refuses leaves its vendor's rotation; the pair is not counted.

The pure rule (`cliproxy.core.key_scope`) and the rotation (`cliproxy.core.routing.KeyRotation`) in
table tests with a clock; the rest through the real gateway, a real fake upstream that refuses one
specific key (it reads the Authorization header), and a real SQLite file.
"""

from __future__ import annotations

from typing import Any

import pytest

from cliproxy.app import create_app
from cliproxy.core import key_scope
from cliproxy.core.config import ApiKeyEntry, AutoDisableSettings
from cliproxy.core.events import ErrorInfo
from cliproxy.core.routing import KeyRotation
from cliproxy.services.sql import read_disabled_keys
from cliproxy.web.keys import STORE, TRACKER
from tests.helpers import FakeClock, make_config

GOOD = "sk-vendor-good-key-0001"
BAD = "sk-vendor-revoked-key-0002"
CHAT = {"messages": [{"role": "user", "content": "hi"}]}

SETTINGS = AutoDisableSettings(
    failure_threshold=3, time_window_seconds=60, disable_duration_seconds=100, count_statuses=frozenset({401, 500})
)
BACKOFF = AutoDisableSettings(
    failure_threshold=3,
    time_window_seconds=60,
    disable_duration_seconds=100,
    count_statuses=frozenset({401, 500}),
    backoff_multiplier=2.0,
    max_disable_duration_seconds=1000,
)
REFUSED = ErrorInfo(401, "Incorrect API key provided.", "http_status")


# ------------------------------------------------------------------ the pure rule


def test_a_refused_key_is_out_for_the_disable_duration_then_back() -> None:
    h = key_scope.key_hash(BAD)
    decision = key_scope.disable(("v", 1), h, None, REFUSED, SETTINGS, 1000.0, keys_left=1)
    state = decision.state
    assert key_scope.is_out(state, 1000.0) and key_scope.is_out(state, 1099.999)
    assert not key_scope.is_out(state, 1100.0)
    (effect,) = decision.effects
    assert effect.event.kind == "key-disabled" and effect.event.reason == "key"
    assert effect.event.detail == {"key_index": 1, "key_hash": h, "disable_level": 1, "keys_available": 1}
    assert effect.set_disabled_key is not None and effect.set_disabled_key.disabled_until == 1100.0
    assert BAD not in repr(effect)  # the value is never in an event or a row, only its hash

    assert key_scope.expire(state, 1099.0).effects == ()
    expired = key_scope.expire(state, 1100.0)
    (back,) = expired.effects
    assert back.event.kind == "key-enabled" and back.event.cause == "expired" and back.clear_disabled_key == ("v", 1)
    assert not key_scope.is_out(expired.state, 1100.0)


def test_the_last_key_out_says_credentials_and_names_the_vendors_models() -> None:
    decision = key_scope.disable(("v", 0), "h", None, REFUSED, SETTINGS, 10.0, keys_left=0, models=("a", "b"))
    (effect,) = decision.effects
    assert effect.event.reason == key_scope.CREDENTIALS
    assert effect.event.detail is not None and effect.event.detail["models"] == ["a", "b"]


def test_a_key_refused_again_soon_backs_off_and_a_key_already_out_writes_nothing() -> None:
    first = key_scope.disable(("v", 0), "h", None, REFUSED, BACKOFF, 0.0, keys_left=1)
    again_while_out = key_scope.disable(("v", 0), "h", first.state, REFUSED, BACKOFF, 50.0, keys_left=1)
    assert again_while_out.effects == () and again_while_out.state is first.state
    back = key_scope.expire(first.state, 100.0).state
    second = key_scope.disable(("v", 0), "h", back, REFUSED, BACKOFF, 120.0, keys_left=1)
    assert second.state.record is not None
    assert second.state.record.disable_level == 2 and second.state.record.disabled_until == 120.0 + 200.0
    # served a whole disable duration per level: the level decays back to the first
    back2 = key_scope.expire(second.state, 320.0).state
    third = key_scope.disable(("v", 0), "h", back2, REFUSED, BACKOFF, 320.0 + 200.0, keys_left=1)
    assert third.state.record is not None and third.state.record.disable_level == 1


def test_an_operator_enable_and_a_restore() -> None:
    out = key_scope.disable(("v", 0), "h", None, REFUSED, SETTINGS, 0.0, keys_left=1)
    enabled = key_scope.end_by_operator(out.state, 10.0, "127.0.0.1")
    (effect,) = enabled.effects
    assert effect.event.cause == "manual" and effect.event.actor == "127.0.0.1"
    assert not key_scope.is_out(enabled.state, 10.0)
    assert key_scope.end_by_operator(enabled.state, 11.0, "x").effects == ()

    record = out.state.record
    assert record is not None
    kept = key_scope.restore(record, "h", 50.0)
    assert kept.effects == () and kept.state is not None and kept.state.record == record  # original timestamps
    (late,) = key_scope.restore(record, "h", 100.0).effects
    assert late.event.cause == "startup-expired"
    changed = key_scope.restore(record, "another", 50.0)
    assert changed.state is None and changed.effects[0].event.cause == "key-changed"
    assert key_scope.restore(record, None, 50.0).effects[0].event.cause == "key-changed"


def test_the_rotation_skips_keys_that_are_out_and_asks_once_while_all_are_in() -> None:
    rotation = KeyRotation(((0, ApiKeyEntry("k0")), (2, ApiKeyEntry("k2")), (3, ApiKeyEntry("k3"))))
    asked: list[int] = []

    def all_in(index: int) -> bool:
        asked.append(index)
        return True

    picked = [rotation.next(all_in) for _ in range(4)]
    assert [p[0] for p in picked if p] == [0, 2, 3, 0]
    assert asked == [0, 2, 3, 0]  # one question per request: no scan of the keys

    out = {2}
    picks = [rotation.next(lambda i: i not in out) for _ in range(4)]
    assert [p[0] for p in picks if p] == [3, 0, 3, 0]
    assert rotation.next(lambda i: False) is None
    assert rotation.next(None, skip={0, 2, 3}) is None
    assert KeyRotation(()).next() is None


# ------------------------------------------------------------------ through the gateway


def _config(url: str, keys: list[str], models: tuple[str, ...] = ("m",), **extra: Any) -> dict[str, Any]:
    return {
        "openai-compatibility": [
            {
                "name": "v",
                "base-url": url,
                "api-key-entries": [{"api-key": k} for k in keys],
                "models": [{"name": m} for m in models],
            }
        ],
        **extra,
    }


async def test_a_pool_with_one_revoked_key_keeps_serving_and_writes_one_event(upstreams: Any, gateway: Any) -> None:
    up = await upstreams(name="up")
    up.revoke_key(BAD)
    gw = await gateway(_config(up.url, [GOOD, BAD]))
    for _ in range(6):
        resp = await gw.client.post("/v1/chat/completions", json={**CHAT, "model": "m"})
        assert resp.status == 200, await resp.text()
        await resp.read()
    assert up.refused_keys == 1  # the refused key was tried once, then left out of the rotation
    tracker = gw.app[TRACKER]
    assert tracker.is_available(("v", "m"))
    assert tracker.state(("v", "m")) is None  # no pair counted
    assert not tracker.key_usable("v", 1) and tracker.key_usable("v", 0)
    await tracker.flush(5)
    events = await gw.app[STORE].events(kind="key-disabled")
    assert len(events) == 1
    (event,) = events
    assert event.vendor == "v" and event.reason == "key" and event.detail["key_index"] == 1
    assert event.last_error is not None and event.last_error.status == 401
    assert await gw.app[STORE].events(kind="disabled") == []


async def test_a_vendor_whose_only_key_is_revoked_writes_one_event_for_all_its_pairs(upstreams: Any, gateway: Any) -> None:
    up = await upstreams(name="up")
    up.revoke_key(BAD)
    gw = await gateway(_config(up.url, [BAD], models=("a", "b", "c")))
    first = await gw.client.post("/v1/chat/completions", json={**CHAT, "model": "a"})
    assert first.status == 401  # the upstream's answer: there is no other key nor vendor to try
    await first.read()
    tracker = gw.app[TRACKER]
    for model in ("a", "b", "c"):
        assert not tracker.is_available(("v", model))
        assert tracker.disabled_by(("v", model)) == "credentials"
    later = await gw.client.post("/v1/chat/completions", json={**CHAT, "model": "b"})
    assert later.status == 503
    await later.read()
    assert up.refused_keys == 1
    await tracker.flush(5)
    events = await gw.app[STORE].events(vendor="v")
    assert [e.kind for e in events] == ["key-disabled"]
    assert events[0].reason == "credentials" and events[0].detail["models"] == ["a", "b", "c"]


async def test_a_key_comes_back_when_its_time_is_over(upstreams: Any, gateway: Any) -> None:
    clock = FakeClock()
    up = await upstreams(name="up")
    up.revoke_key(BAD)
    gw = await gateway(_config(up.url, [GOOD, BAD], **{"auto-disable": {"disable-duration-seconds": 30}}), clock=clock)
    for _ in range(2):
        assert (await gw.client.post("/v1/chat/completions", json={**CHAT, "model": "m"})).status == 200
    tracker = gw.app[TRACKER]
    assert not tracker.key_usable("v", 1)
    clock.advance(30)
    assert tracker.key_usable("v", 1)
    assert tracker.expire_due() == 1
    await tracker.flush(5)
    (back,) = await gw.app[STORE].events(kind="key-enabled")
    assert back.cause == "expired" and back.detail == {"key_index": 1, "key_hash": key_scope.key_hash(BAD)}


async def test_a_key_out_survives_a_restart_with_its_original_timestamps(upstreams: Any, gateway: Any, tmp_path: Any) -> None:
    clock = FakeClock()
    up = await upstreams(name="up")
    up.revoke_key(BAD)
    data = {"database": str(tmp_path / "keys.db"), **_config(up.url, [GOOD, BAD])}
    gw = await gateway(data, clock=clock)
    assert (await gw.client.post("/v1/chat/completions", json={**CHAT, "model": "m"})).status == 200
    assert (await gw.client.post("/v1/chat/completions", json={**CHAT, "model": "m"})).status == 200
    await gw.app[TRACKER].flush(5)
    (row,) = read_disabled_keys(tmp_path / "keys.db")
    assert row.index == 1 and row.disabled_at == clock.t and row.key_hash == key_scope.key_hash(BAD)

    clock.advance(10)
    again = await gateway(make_config(data), clock=clock)
    tracker = again.app[TRACKER]
    assert not tracker.key_usable("v", 1)
    restored = tracker.committed_key("v", 1)
    assert restored == row
    # a replaced key at that index is not held out for the old one's refusal
    clock.advance(1)
    third = await gateway(
        make_config(_config(up.url, [GOOD, "sk-vendor-new-key-0003"]) | {"database": data["database"]}), clock=clock
    )
    assert third.app[TRACKER].key_usable("v", 1)
    await third.app[TRACKER].flush(5)
    (changed,) = await third.app[STORE].events(kind="key-enabled")
    assert changed.cause == "key-changed"
    assert read_disabled_keys(tmp_path / "keys.db") == []


@pytest.mark.parametrize("status", [402, 403])
async def test_every_key_scope_status_puts_the_key_out(upstreams: Any, gateway: Any, status: int) -> None:
    from cliproxy.fake_upstream import Fault

    up = await upstreams(name="up")
    up.fail("m", Fault(status=status, times=1))
    gw = await gateway(_config(up.url, [GOOD, BAD]))
    resp = await gw.client.post("/v1/chat/completions", json={**CHAT, "model": "m"})
    assert resp.status == 200
    tracker = gw.app[TRACKER]
    assert sum(1 for i in (0, 1) if not tracker.key_usable("v", i)) == 1
    assert tracker.state(("v", "m")) is None


async def test_key_scope_statuses_can_be_narrowed(upstreams: Any, gateway: Any) -> None:
    up = await upstreams(name="up")
    up.revoke_key(BAD)
    gw = await gateway(_config(up.url, [BAD, GOOD], **{"auto-disable": {"key-scope-statuses": [402]}}))
    await gw.client.post("/v1/chat/completions", json={**CHAT, "model": "m"})
    tracker = gw.app[TRACKER]
    assert tracker.key_usable("v", 0)  # a 401 is no longer about the key: the pair counts it
    state = tracker.state(("v", "m"))
    assert state is not None and state.failure_count == 1


def test_the_app_is_built_for_keys() -> None:
    create_app(make_config(_config("http://127.0.0.1:9", [GOOD, BAD])))


async def test_the_api_shows_each_key_and_an_operator_puts_one_back(upstreams: Any, admin: Any) -> None:
    up = await upstreams(name="up")
    up.revoke_key(BAD)
    adm = await admin(_config(up.url, [GOOD, BAD, ""]))
    for _ in range(2):
        assert (await adm.chat("m")).status == 200
    vendors = (await adm.get("/api/vendors")).json["vendors"]
    keys = vendors[0]["keys"]
    assert [(k["index"], k["state"]) for k in keys] == [(0, "in"), (1, "out"), (2, "unset")]
    assert keys[1]["until"] is not None and keys[1]["disable_level"] == 1 and "Incorrect API key" in keys[1]["last_error"]
    assert all(BAD not in body and GOOD not in body for body in adm.bodies)  # masked

    assert (await adm.post("/api/vendors/v/keys/7/enable")).status == 404
    assert (await adm.post("/api/vendors/nope/keys/0/enable")).status == 404
    reply = await adm.post("/api/vendors/v/keys/1/enable")
    assert reply.status == 200 and reply.json["cleared"] is True
    assert [k["state"] for k in reply.json["keys"]] == ["in", "in", "unset"]
    assert adm.app[TRACKER].key_usable("v", 1)
    again = await adm.post("/api/vendors/v/keys/1/enable")
    assert again.json["cleared"] is False
    (event,) = await adm.events(kind="key-enabled")
    assert event.cause == "manual" and event.actor is not None and event.detail["key_index"] == 1


async def test_the_metrics_show_the_keys_available_once_committed(upstreams: Any, gateway: Any) -> None:
    up = await upstreams(name="up")
    up.revoke_key(BAD)
    gw = await gateway(_config(up.url, [GOOD, BAD]))

    async def scrape() -> str:
        resp = await gw.client.get("/metrics")
        assert resp.status == 200
        return await resp.text()

    assert 'cliproxy_vendor_keys_available{vendor="v"} 2.0' in await scrape()
    for _ in range(2):  # the second request's turn is the revoked key's
        assert (await gw.client.post("/v1/chat/completions", json={**CHAT, "model": "m"})).status == 200
    await gw.app[TRACKER].flush(5)
    text = await scrape()
    assert 'cliproxy_vendor_keys_available{vendor="v"} 1.0' in text
    assert 'cliproxy_vendor_key_out{key_index="1",vendor="v"} 1.0' in text


async def test_cliproxy_status_lists_a_key_out(upstreams: Any, admin: Any, capsys: Any) -> None:
    from cliproxy.cli import main

    up = await upstreams(name="up")
    up.revoke_key(BAD)
    adm = await admin(_config(up.url, [GOOD, BAD]))
    for _ in range(2):
        assert (await adm.chat("m")).status == 200
    await adm.app[TRACKER].flush(5)
    assert main(["status", "--config", str(adm.config_path)]) == 0
    out = capsys.readouterr().out
    assert "Keys out of their vendor's rotation" in out
    (line,) = [x for x in out.splitlines() if "key 1" in x]
    assert line.strip().startswith("v key 1 (") and "out until" in line and "Incorrect API key" in line
    assert BAD not in out and "credentials" not in line
