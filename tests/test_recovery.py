"""Recovery (issue 13, part B): backoff levels and their decay, half-open and probe recovery.

The pure rule is driven with the clock passed in (`(outcomes, now) -> state` tables); the shell and
the gateway through the fake upstream, with a FakeClock.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import replace

import pytest

from cliproxy.core import failures
from cliproxy.core.config import DEFAULT_COUNT_STATUSES, AutoDisableSettings, ProbeSpec
from cliproxy.core.events import ErrorInfo, Outcome
from cliproxy.core.failures import EMPTY, PairState
from cliproxy.fake_upstream import Fault
from cliproxy.web.keys import STORE, TRACKER
from tests.helpers import FakeClock, eventually, vendor

PAIR = ("acme", "gpt-x")
FAIL = Outcome("failure", "http_status", ErrorInfo(503, "down"))
OK = Outcome("success", "ok")
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def rule(**overrides: object) -> AutoDisableSettings:
    base = AutoDisableSettings(
        failure_threshold=1, time_window_seconds=60.0, disable_duration_seconds=100.0, count_statuses=DEFAULT_COUNT_STATUSES
    )
    return replace(base, **overrides)  # type: ignore[arg-type]


def run(steps: list[tuple[float, Outcome]], settings: AutoDisableSettings, state: PairState = EMPTY) -> PairState:
    for now, outcome in steps:
        state = failures.apply_outcome(PAIR, state, outcome, settings, now).state
    return state


class TestBackoffTable:
    """The k-th disable in a row lasts base x multiplier^(k-1), capped; k decays by one per base duration served."""

    @pytest.mark.parametrize(
        ("steps", "level", "until"),
        [
            # first trip: the base duration
            ([(0.0, FAIL)], 1, 100.0),
            # fails again the moment it is back: twice as long
            ([(0.0, FAIL), (100.0, FAIL)], 2, 300.0),
            # and again: four times (400 s), capped at 250 s, from 300
            ([(0.0, FAIL), (100.0, FAIL), (300.0, FAIL)], 3, 550.0),
            # the cap holds the fourth and later
            ([(0.0, FAIL), (100.0, FAIL), (300.0, FAIL), (550.0, FAIL)], 4, 800.0),
            # back at 300 (level 2), served 100 s (one base duration): level 1, so the next trip is level 2
            ([(0.0, FAIL), (100.0, FAIL), (400.0, FAIL)], 2, 600.0),
            # served 199.9 s: still only one step of decay
            ([(0.0, FAIL), (100.0, FAIL), (499.9, FAIL)], 2, 699.9),
            # served 200 s: decayed to 0, the next trip is the first again
            ([(0.0, FAIL), (100.0, FAIL), (500.0, FAIL)], 1, 600.0),
        ],
    )
    def test_levels_and_decay(self, steps, level, until) -> None:
        settings = rule(backoff_multiplier=2.0, max_disable_duration_seconds=250.0)
        state = run(steps, settings)
        assert (state.disable_level, state.disabled_until) == (level, until)

    def test_current_level_decays_with_the_clock(self) -> None:
        settings = rule(backoff_multiplier=3.0)
        state = run([(0.0, FAIL), (100.0, FAIL), (400.0, FAIL)], settings)  # level 3 until 400 + 900
        back = failures.expire(PAIR, state, 1300.0, settings).state
        assert [failures.current_level(back, settings, t) for t in (1300.0, 1399.9, 1400.0, 1500.0, 1600.0, 9e9)] == [
            3,
            3,
            2,
            1,
            0,
            0,
        ]

    def test_the_cap_never_shortens_the_base(self) -> None:
        assert failures.disable_seconds(5, rule(backoff_multiplier=2.0, max_disable_duration_seconds=10.0)) == 100.0

    def test_defaults_keep_no_level_and_the_spec_duration(self) -> None:
        state = run([(0.0, FAIL), (100.0, FAIL), (200.0, FAIL)], rule())
        assert (state.disable_level, state.disabled_until) == (0, 300.0)

    def test_the_ended_disable_keeps_its_level_for_the_store(self) -> None:
        settings = rule(backoff_multiplier=2.0)
        state = run([(0.0, FAIL)], settings)
        [effect] = failures.expire(PAIR, state, 100.0, settings).effects
        assert effect.event.cause == "expired"
        assert effect.set_backoff is not None
        assert (effect.set_backoff.disable_level, effect.set_backoff.level_since) == (1, 100.0)


class TestHalfOpenTable:
    """Half-open: the disable's end leaves the pair waiting; a success ends it, a failure re-disables one level up."""

    settings = rule(recovery="half-open", backoff_multiplier=2.0)

    def test_the_timer_does_not_end_it(self) -> None:
        state = run([(0.0, FAIL)], self.settings)
        decision = failures.expire(PAIR, state, 100.0, self.settings)
        assert decision.effects == () and decision.state is state
        assert failures.recovery_phase(state, self.settings, 99.9) is None
        assert failures.recovery_phase(state, self.settings, 100.0) == "half-open"

    def test_first_success_enables_with_its_cause(self) -> None:
        state = run([(0.0, FAIL)], self.settings)
        decision = failures.apply_outcome(PAIR, state, OK, self.settings, 150.0)
        [effect] = decision.effects
        assert (effect.event.kind, effect.event.cause, effect.event.disabled_until) == ("enabled", "half-open-success", 100.0)
        assert effect.clear_disabled == ("acme", "gpt-x", "auto")
        assert decision.state.disabled_until is None and decision.state.level_since == 150.0

    def test_one_failure_disables_at_the_next_level(self) -> None:
        state = run([(0.0, FAIL)], rule(recovery="half-open", backoff_multiplier=2.0, failure_threshold=5))
        assert state.disabled_until is None  # one failure of five: not tripped
        state = run([(0.0, FAIL)] * 5, rule(recovery="half-open", backoff_multiplier=2.0, failure_threshold=5))
        decision = failures.apply_outcome(
            PAIR, state, FAIL, rule(recovery="half-open", backoff_multiplier=2.0, failure_threshold=5), 120.0
        )
        [effect] = decision.effects
        assert effect.event.kind == "disabled"
        assert effect.event.detail == {"disable_level": 2, "trigger": "half-open"}
        assert (decision.state.disabled_at, decision.state.disabled_until, decision.state.disable_level) == (120.0, 320.0, 2)

    def test_neutral_changes_nothing(self) -> None:
        state = run([(0.0, FAIL)], self.settings)
        assert failures.apply_outcome(PAIR, state, Outcome("neutral", "client_disconnect"), self.settings, 150.0).state is state


class TestProbeTable:
    settings = rule(recovery="probe", backoff_multiplier=2.0)

    def test_client_outcomes_do_not_decide(self) -> None:
        state = run([(0.0, FAIL)], self.settings)
        assert failures.recovery_phase(state, self.settings, 100.0) == "probing"
        for outcome in (OK, FAIL):
            assert failures.apply_outcome(PAIR, state, outcome, self.settings, 110.0).state is state

    def test_probe_success_enables(self) -> None:
        state = run([(0.0, FAIL)], self.settings)
        decision = failures.probe_succeeded(PAIR, state, self.settings, 101.0)
        [effect] = decision.effects
        assert (effect.event.kind, effect.event.cause) == ("enabled", "probe-success")
        assert decision.state.disabled_until is None

    def test_probe_failure_records_it_and_disables_one_level_up(self) -> None:
        state = run([(0.0, FAIL)], self.settings)
        decision = failures.probe_failed(PAIR, state, self.settings, ErrorInfo(502, "bad gateway"), 101.0)
        failed, disabled = decision.effects
        assert (failed.event.kind, failed.event.last_error) == ("probe-failed", ErrorInfo(502, "bad gateway"))
        assert failed.set_disabled is None
        assert disabled.event.kind == "disabled" and disabled.event.detail == {"disable_level": 2, "trigger": "probe"}
        assert disabled.set_disabled is not None and disabled.set_disabled.disabled_until == 301.0
        assert disabled.set_disabled.disable_level == 2

    def test_probe_result_before_the_end_does_nothing(self) -> None:
        state = run([(0.0, FAIL)], self.settings)
        assert failures.probe_succeeded(PAIR, state, self.settings, 99.0).state is state


class TestRestoreTable:
    def test_a_half_open_row_is_half_open_again_with_its_timestamps(self) -> None:
        settings = rule(recovery="half-open", backoff_multiplier=2.0)
        state = run([(0.0, FAIL), (100.0, FAIL)], settings)  # level 2, 100..300
        record = failures.auto_record(PAIR, state)
        assert record is not None
        restored = failures.restore(record, 500.0, settings)
        assert restored.effects == ()
        assert restored.state is not None
        assert (restored.state.disabled_at, restored.state.disabled_until, restored.state.disable_level) == (100.0, 300.0, 2)
        assert failures.recovery_phase(restored.state, settings, 500.0) == "half-open"

    def test_a_timer_row_that_ended_while_down_keeps_its_level_from_its_end(self) -> None:
        settings = rule(backoff_multiplier=2.0)
        state = run([(0.0, FAIL)], settings)
        record = failures.auto_record(PAIR, state)
        assert record is not None
        decision = failures.restore(record, 150.0, settings)
        [effect] = decision.effects
        assert effect.event.cause == "startup-expired"
        assert decision.state == PairState(disable_level=1, level_since=100.0)
        assert failures.current_level(decision.state, settings, 199.9) == 1
        assert failures.current_level(decision.state, settings, 200.0) == 0


def one_vendor_config(url: str, **auto_disable: object) -> dict:
    return {
        "auto-disable": {"failure-threshold": 1, "disable-duration-seconds": 30, **auto_disable},
        "openai-compatibility": [vendor("a", url, ["m"])],
    }


def two_vendors(bad_url: str, good_url: str, **auto_disable: object) -> dict:
    return {
        "auto-disable": {"failure-threshold": 1, "disable-duration-seconds": 30, **auto_disable},
        "openai-compatibility": [vendor("bad", bad_url, ["m"], priority=1), vendor("good", good_url, ["m"])],
    }


async def events_of(gw, kind: str) -> list:
    await gw.app[TRACKER].flush(timeout=5)
    return await gw.app[STORE].events(kind=kind)


class TestBackoffEndToEnd:
    async def test_levels_grow_then_decay_through_the_gateway(self, upstreams, gateway):
        bad, good = await upstreams(), await upstreams()
        bad.fail(None, Fault(status=500))
        clock = FakeClock()
        gw = await gateway(two_vendors(bad.url, good.url, **{"backoff-multiplier": 2}), clock=clock)
        tracker = gw.app[TRACKER]
        durations = []
        for _ in range(3):
            await gw.client.post("/v1/chat/completions", json=CHAT)
            state = tracker.state(("bad", "m"))
            durations.append(state.disabled_until - state.disabled_at)
            clock.advance(state.disabled_until - clock())
        assert durations == [30.0, 60.0, 120.0]
        assert tracker.disable_level(("bad", "m")) == 3
        bad.clear_faults()
        assert (await gw.client.post("/v1/chat/completions", json=CHAT)).headers["x-cliproxy-vendor"] == "bad"
        clock.advance(60)  # two base durations served without a trip: level 1
        assert tracker.disable_level(("bad", "m")) == 1
        await tracker.flush(timeout=5)
        assert tracker.committed_level(("bad", "m")) == 1
        bad.fail(None, Fault(status=500))
        await gw.client.post("/v1/chat/completions", json=CHAT)
        state = tracker.state(("bad", "m"))
        assert (state.disable_level, state.disabled_until - state.disabled_at) == (2, 60.0)
        [*_, last] = sorted(await events_of(gw, "disabled"), key=lambda e: e.id)
        assert last.detail == {"disable_level": 2}


class TestDisabledListWhileRecovering:
    """`GET /api/models/disabled` lists a pair whose disable is over but whose recovery waits for a
    verdict (`state` half-open or probing), until the verdict brings it back."""

    @pytest.mark.parametrize(("recovery", "phase"), [("half-open", "half-open"), ("probe", "probing")])
    async def test_a_pair_waiting_for_its_verdict_is_listed(self, upstreams, admin, recovery, phase):
        bad, good = await upstreams(), await upstreams()
        bad.fail(None, Fault(status=500, times=1))
        clock = FakeClock()
        adm = await admin(two_vendors(bad.url, good.url, recovery=recovery), clock=clock)
        await adm.gw.client.post("/v1/chat/completions", json=CHAT)

        async def listed() -> list[tuple[str, str, float]]:
            reply = await adm.get("/api/models/disabled")
            return [(p["vendor"], p["state"], p["remaining_seconds"]) for p in reply.json["disabled"]]

        assert await listed() == [("bad", "disabled", 30.0)]
        if recovery == "probe":
            bad.fail(None, Fault(stall_before_headers=2, times=1))  # the probe takes a while: the pair is probing
        clock.advance(30)
        assert await listed() == [("bad", phase, 0.0)]  # over, but not back: the row waits for the verdict
        if recovery == "half-open":
            answer = await adm.gw.client.post("/v1/chat/completions", json=CHAT)
            assert answer.headers["x-cliproxy-vendor"] == "bad"  # the test request, which succeeds
        await eventually(lambda: _nothing_listed(listed), "the verdict to take the pair off the list")


async def _nothing_listed(listed: Callable[[], Awaitable[list[tuple[str, str, float]]]]) -> bool:
    return await listed() == []


class TestHalfOpenEndToEnd:
    async def test_concurrent_requests_exactly_one_reaches_the_pair(self, upstreams, gateway):
        bad, good = await upstreams(chunk_delay=0.05), await upstreams()
        bad.fail(None, Fault(status=500, times=1))
        clock = FakeClock()
        gw = await gateway(two_vendors(bad.url, good.url, recovery="half-open"), clock=clock)
        await gw.client.post("/v1/chat/completions", json=CHAT)
        assert not gw.app[TRACKER].is_available(("bad", "m"))
        clock.advance(30)
        assert gw.app[TRACKER].recovery_phase(("bad", "m")) == "half-open"
        bad.reset_stats()
        stream = {**CHAT, "stream": True}
        responses = await asyncio.gather(*(gw.client.post("/v1/chat/completions", json=stream) for _ in range(5)))
        vendors = sorted(r.headers["x-cliproxy-vendor"] for r in responses)
        for r in responses:
            await r.read()
        assert vendors == ["bad", "good", "good", "good", "good"]
        assert bad.request_count == 1
        [enabled] = await events_of(gw, "enabled")
        assert enabled.cause == "half-open-success"
        assert gw.app[TRACKER].recovery_phase(("bad", "m")) is None

    async def test_a_failure_in_half_open_disables_again_one_level_up(self, upstreams, gateway):
        bad, good = await upstreams(), await upstreams()
        bad.fail(None, Fault(status=500))
        clock = FakeClock()
        gw = await gateway(two_vendors(bad.url, good.url, recovery="half-open", **{"backoff-multiplier": 2}), clock=clock)
        await gw.client.post("/v1/chat/completions", json=CHAT)
        clock.advance(30)
        resp = await gw.client.post("/v1/chat/completions", json=CHAT)
        assert resp.headers["x-cliproxy-vendor"] == "good" and resp.headers["x-cliproxy-attempts"] == "2"
        second = sorted(await events_of(gw, "disabled"), key=lambda e: e.id)[-1]
        assert second.detail == {"disable_level": 2, "trigger": "half-open"}
        assert second.disabled_until - second.disabled_at == 60.0

    async def test_a_cancelled_request_releases_its_slot(self, upstreams, gateway):
        bad, good = await upstreams(), await upstreams()
        bad.fail(None, Fault(status=500, times=1))
        clock = FakeClock()
        gw = await gateway(two_vendors(bad.url, good.url, recovery="half-open"), clock=clock)
        await gw.client.post("/v1/chat/completions", json=CHAT)
        clock.advance(30)
        bad.fail(None, Fault(stall_before_headers=30))  # the half-open request hangs until the client gives up
        tracker = gw.app[TRACKER]
        pending = asyncio.ensure_future(gw.client.post("/v1/chat/completions", json=CHAT))
        await eventually(lambda: bad.request_count >= 2, "the half-open request to reach the upstream")
        assert not tracker.is_available(("bad", "m"))  # its one slot is taken
        pending.cancel()
        with pytest.raises(asyncio.CancelledError):
            await pending
        await eventually(lambda: tracker.is_available(("bad", "m")), "the slot of the cancelled request to be released")
        assert tracker.recovery_phase(("bad", "m")) == "half-open"  # a cancellation decides nothing
        bad.clear_faults()
        assert (await gw.client.post("/v1/chat/completions", json=CHAT)).headers["x-cliproxy-vendor"] == "bad"
        [enabled] = await events_of(gw, "enabled")
        assert enabled.cause == "half-open-success"

    async def test_a_client_error_releases_its_slot_without_deciding(self, upstreams, gateway):
        up = await upstreams()
        up.fail(None, Fault(status=500, times=1))
        clock = FakeClock()
        gw = await gateway(one_vendor_config(up.url, recovery="half-open"), clock=clock)
        await gw.client.post("/v1/chat/completions", json=CHAT)
        clock.advance(30)
        up.fail(None, Fault(status=400, times=1))
        assert (await gw.client.post("/v1/chat/completions", json=CHAT)).status == 400
        tracker = gw.app[TRACKER]
        assert tracker.recovery_phase(("a", "m")) == "half-open" and tracker.is_available(("a", "m"))


class TestProbeEndToEnd:
    async def test_probe_success_enables_and_no_client_request_goes_there_meanwhile(self, upstreams, gateway):
        bad, good = await upstreams(), await upstreams()
        bad.fail(None, Fault(status=500, times=1))
        clock = FakeClock()
        cfg = two_vendors(bad.url, good.url, recovery="probe")
        cfg["openai-compatibility"][0]["api-key-entries"] = [{"api-key": "sk-probe-key-000001"}]
        gw = await gateway(cfg, clock=clock)
        await gw.client.post("/v1/chat/completions", json=CHAT)
        bad.fail(None, Fault(stall_before_headers=0.5, times=1))  # the probe takes a while: the pair is probing
        clock.advance(30)
        await eventually(lambda: bad.probe_count == 1, "the prober to send its probe")
        assert gw.app[TRACKER].recovery_phase(("bad", "m")) == "probing"
        assert (await gw.client.post("/v1/chat/completions", json=CHAT)).headers["x-cliproxy-vendor"] == "good"
        await eventually(lambda: gw.app[TRACKER].recovery_phase(("bad", "m")) is None, "the probe's verdict")
        probe = [r for r in bad.requests if r.is_probe]
        assert len(probe) == 1 and probe[0].path == "/v1/chat/completions"
        assert probe[0].json == {"model": "m", "messages": [{"role": "user", "content": "ping"}], "max_tokens": 1}
        assert probe[0].headers["Authorization"] == "Bearer sk-probe-key-000001"
        [enabled] = await events_of(gw, "enabled")
        assert enabled.cause == "probe-success"
        assert (await gw.client.post("/v1/chat/completions", json=CHAT)).headers["x-cliproxy-vendor"] == "bad"

    async def test_probe_failure_records_the_error_and_disables_one_level_up(self, upstreams, gateway):
        bad, good = await upstreams(), await upstreams()
        bad.fail(None, Fault(status=503))
        clock = FakeClock()
        gw = await gateway(two_vendors(bad.url, good.url, recovery="probe", **{"backoff-multiplier": 2}), clock=clock)
        await gw.client.post("/v1/chat/completions", json=CHAT)
        clock.advance(30)
        await eventually(lambda: events_of(gw, "probe-failed"), "the failed probe to be recorded")
        [failed] = await events_of(gw, "probe-failed")
        assert failed.last_error.status == 503
        second = sorted(await events_of(gw, "disabled"), key=lambda e: e.id)[-1]
        assert second.detail == {"disable_level": 2, "trigger": "probe"}
        assert second.disabled_until - second.disabled_at == 60.0
        assert bad.probe_count == 1
        assert not gw.app[TRACKER].is_available(("bad", "m"))

    async def test_an_anthropic_format_vendor_is_probed_in_its_own_api(self, upstreams, gateway):
        """Its Messages endpoint, the key as x-api-key and an anthropic-version: the fake refuses a
        request without either, as Anthropic's API does, so a chat probe would never bring it back."""
        up = await upstreams()
        up.fail(None, Fault(status=500, times=1))
        clock = FakeClock()
        anth = vendor("anth", up.url, ["claude"], **{"api-format": "anthropic"})
        anth["api-key-entries"] = [{"api-key": "sk-anth-probe-key-0001"}]
        cfg = {"auto-disable": {"failure-threshold": 1, "disable-duration-seconds": 30, "recovery": "probe"}}
        gw = await gateway({**cfg, "openai-compatibility": [anth]}, clock=clock)
        message = {"model": "claude", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
        assert (await gw.client.post("/v1/messages", json=message)).status == 500
        assert not gw.app[TRACKER].is_available(("anth", "claude"))
        clock.advance(30)
        await eventually(lambda: events_of(gw, "enabled"), "the probe to bring the pair back")
        [enabled] = await events_of(gw, "enabled")
        assert enabled.cause == "probe-success"
        [probe] = [r for r in up.requests if r.is_probe]
        assert probe.path == "/v1/messages"
        assert probe.json == {"model": "claude", "messages": [{"role": "user", "content": "ping"}], "max_tokens": 1}
        headers = {k.lower(): v for k, v in probe.headers.items()}
        assert headers["x-api-key"] == "sk-anth-probe-key-0001" and "authorization" not in headers
        assert headers["anthropic-version"] == "2023-06-01"

    async def test_a_configured_probe_path_and_body(self, upstreams, gateway):
        up = await upstreams()
        up.fail(None, Fault(status=500, times=1))
        clock = FakeClock()
        probe = {"path": "/embeddings", "body": {"input": "ping"}}
        gw = await gateway(one_vendor_config(up.url, recovery="probe", probe=probe), clock=clock)
        await gw.client.post("/v1/chat/completions", json=CHAT)
        clock.advance(30)
        await eventually(lambda: events_of(gw, "enabled"), "the probe to enable the pair")
        [request] = [r for r in up.requests if r.path == "/v1/embeddings"]
        assert request.json == {"input": "ping", "model": "m"}

    async def test_probe_timeout_is_a_failure(self, upstreams, gateway):
        up = await upstreams()
        up.fail(None, Fault(status=500, times=1))
        clock = FakeClock()
        gw = await gateway(one_vendor_config(up.url, recovery="probe", **{"probe-timeout-seconds": 0.2}), clock=clock)
        await gw.client.post("/v1/chat/completions", json=CHAT)
        up.fail(None, Fault(stall_before_headers=5, times=1))
        clock.advance(30)
        await eventually(lambda: events_of(gw, "probe-failed"), "the probe to time out")
        [failed] = await events_of(gw, "probe-failed")
        assert failed.last_error.status is None and "timed out" in failed.last_error.message


def test_probe_spec_default() -> None:
    assert rule().probe == ProbeSpec("/chat/completions", None)


class TestStatus:
    async def test_status_shows_state_and_disable_level_from_what_is_committed(self, admin, upstreams):
        up = await upstreams()
        up.fail(None, Fault(status=500, times=1))
        clock = FakeClock()
        a = await admin(one_vendor_config(up.url, recovery="half-open", **{"backoff-multiplier": 2}), clock=clock)

        async def status() -> tuple[str, int]:
            await a.app[TRACKER].flush(timeout=5)
            [pair] = (await a.get("/api/models/m/status")).json["pairs"]
            return pair["state"], pair["disable_level"]

        assert await status() == ("enabled", 0)
        await a.chat()
        assert await status() == ("disabled", 1)
        clock.advance(30)
        assert await status() == ("half-open", 1)
        await a.chat()
        assert await status() == ("enabled", 1)
        clock.advance(30)  # one base duration served: decayed
        assert await status() == ("enabled", 0)


def test_pair_state_table() -> None:
    from cliproxy.core.pair_state import PairView, pair_state

    cases = [
        (PairView(), 0.0, "enabled"),
        (PairView(switched_off=True, auto_disabled_until=10.0), 0.0, "switched-off"),
        (PairView(manually_disabled=True), 0.0, "disabled"),
        (PairView(auto_disabled_until=10.0), 9.9, "disabled"),
        (PairView(auto_disabled_until=10.0), 10.0, "enabled"),
        (PairView(auto_disabled_until=10.0, recovery="half-open"), 10.0, "half-open"),
        (PairView(auto_disabled_until=10.0, recovery="probe"), 10.0, "probing"),
        (PairView(auto_disabled_until=10.0, recovery="probe"), 5.0, "disabled"),
    ]
    assert [pair_state(view, now) for view, now, _ in cases] == [state for _, _, state in cases]
