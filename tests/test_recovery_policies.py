"""Issue 13, part C: slow start, `on-all-disabled: best-effort`, `max-disabled-fraction` and the dry run
(`enforce: false`): pure tables with the clock passed in, the tracker on a driven clock, and each setting
end to end through the fake upstream."""

from __future__ import annotations

from collections import Counter

import pytest

from cliproxy.core.events import Decision, ErrorInfo, Event, Outcome
from cliproxy.core.failures import EMPTY, apply_outcome
from cliproxy.core.pair_state import PairView, pair_state
from cliproxy.core.policies import DRY_RUN, restrain, trips, would_exceed
from cliproxy.core.routing import RoutingTable, slow_start_weight
from cliproxy.fake_upstream import Fault
from cliproxy.web.keys import STORE, TRACKER
from tests.helpers import FakeClock, eventually, make_config, vendor
from tests.test_tracker import MemoryStore, begin, shut

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
FAIL = Outcome("failure", "http_status", ErrorInfo(500, "boom"))
T0 = 1_800_000_000.0


# ------------------------------------------------------------------------------------- pure tables


@pytest.mark.parametrize(
    ("reenabled_at", "now", "seconds", "weight"),
    [
        (None, T0, 100.0, 1.0),  # never re-enabled
        (T0, T0, 0.0, 1.0),  # slow start off
        (T0, T0, 100.0, 0.1),  # at the re-enable: 10% of a healthy peer
        (T0, T0 - 5, 100.0, 0.1),  # a clock step back never goes below the floor
        (T0, T0 + 50, 100.0, 0.55),  # half way: linear
        (T0, T0 + 90, 100.0, 0.91),
        (T0, T0 + 100, 100.0, 1.0),  # over
        (T0, T0 + 1000, 100.0, 1.0),
    ],
)
def test_slow_start_weight(reenabled_at: float | None, now: float, seconds: float, weight: float) -> None:
    assert slow_start_weight(reenabled_at, now, seconds) == pytest.approx(weight)


def table(priorities: dict[str, int] | None = None) -> RoutingTable:
    names = ["a", "b", "c"] if priorities is None else list(priorities)
    return RoutingTable(
        make_config(
            {
                "auto-disable": {"slow-start-seconds": 100},
                "openai-compatibility": [
                    vendor(n, f"http://127.0.0.1:9/{n}", ["m"], priority=(priorities or {}).get(n, 0)) for n in names
                ],
            }
        )
    )


def shares(route_table: RoutingTable, weight, requests: int) -> Counter[str]:  # noqa: ANN001
    route = route_table.route("m")
    assert route is not None
    return Counter(route.ordered(weight)[0].vendor.name for _ in range(requests))


class TestSlowStartShares:
    """A pair re-enabled at T0 with slow-start-seconds 100, among healthy peers of its tier, on a driven clock."""

    @staticmethod
    def weight_at(clock: FakeClock, seconds: float = 100.0):  # noqa: ANN205
        return lambda key: slow_start_weight(T0 if key[0] == "a" else None, clock(), seconds)

    @pytest.mark.parametrize(
        ("elapsed", "requests", "expected"),
        [
            (0.0, 210, {"a": 10, "b": 100, "c": 100}),  # 10% of a peer's share
            (50.0, 255, {"a": 55, "b": 100, "c": 100}),  # 55% half way
            (100.0, 300, {"a": 100, "b": 100, "c": 100}),  # full share: plain round robin again
        ],
    )
    def test_share_of_a_peer(self, elapsed: float, requests: int, expected: dict[str, int]) -> None:
        clock = FakeClock(T0 + elapsed)
        assert shares(table(), self.weight_at(clock), requests) == expected

    def test_spread_out_not_in_a_burst(self) -> None:
        route = table().route("m")
        assert route is not None
        picks = [route.ordered(self.weight_at(FakeClock(T0)))[0].vendor.name for _ in range(42)]
        positions = [i for i, name in enumerate(picks) if name == "a"]
        assert len(positions) == 2 and positions[1] - positions[0] >= 15, picks

    def test_share_rises_over_a_run_of_requests(self) -> None:
        """One request per second over the 100 s ramp: the pair's share grows from about 10% to 100% of a peer's."""
        clock = FakeClock(T0)
        route = table({"a": 0, "b": 0}).route("m")
        assert route is not None
        weight = self.weight_at(clock)
        per_quarter: list[Counter[str]] = []
        for _quarter in range(4):
            count: Counter[str] = Counter()
            for _ in range(25):
                count[route.ordered(weight)[0].vendor.name] += 1
                clock.advance(1.0)
            per_quarter.append(count)
        ratios = [q["a"] / q["b"] for q in per_quarter]
        assert ratios == sorted(ratios), ratios
        assert ratios[0] < 0.35 and ratios[-1] > 0.75, ratios

    def test_tiers_without_slow_start_never_ask_for_weights(self) -> None:
        route = RoutingTable(make_config({"openai-compatibility": [vendor(n, "http://x", ["m"]) for n in "ab"]})).route("m")
        assert route is not None

        def weight(key: tuple[str, str]) -> float:
            raise AssertionError("asked for a weight")

        assert [p.vendor.name for p in route.ordered(weight)] == ["a", "b"]

    def test_every_weight_one_is_the_plain_rotation(self) -> None:
        plain, weighted = table().route("m"), table().route("m")
        assert plain is not None and weighted is not None
        assert [[p.vendor.name for p in plain.ordered()] for _ in range(7)] == [
            [p.vendor.name for p in weighted.ordered(lambda key: 1.0)] for _ in range(7)
        ]

    def test_failover_order_keeps_every_pair(self) -> None:
        route = table().route("m")
        assert route is not None
        for _ in range(20):
            assert sorted(p.vendor.name for p in route.ordered(self.weight_at(FakeClock(T0)))) == ["a", "b", "c"]

    def test_only_the_tier_of_the_slow_starting_pair_is_weighted(self) -> None:
        route = table({"a": 1, "b": 0, "c": 0}).route("m")
        assert route is not None
        # `a` alone in the top tier: slow start cannot move traffic off it (there is no peer to share with).
        assert {tuple(p.vendor.name for p in route.ordered(self.weight_at(FakeClock(T0))))[0] for _ in range(10)} == {"a"}


@pytest.mark.parametrize(
    ("others", "total", "max_fraction", "exceeds"),
    [
        (0, 1, 1.0, False),  # the default never holds a trip back
        (3, 4, 1.0, False),
        (0, 2, 0.5, False),  # 1 of 2 is not more than half
        (1, 2, 0.5, True),  # 2 of 2 is
        (1, 4, 0.5, False),
        (2, 4, 0.5, True),
        (0, 1, 0.5, True),  # a model's only pair is never taken out under a limit
        (0, 0, 0.5, False),
    ],
)
def test_would_exceed(others: int, total: int, max_fraction: float, exceeds: bool) -> None:
    assert would_exceed(others, total, max_fraction) is exceeds


def test_restrain_turns_the_trip_into_would_disable() -> None:
    from tests.test_tracker import rule

    settings = rule(threshold=1)
    decision: Decision = apply_outcome(("v", "m"), EMPTY, FAIL, settings, T0)
    assert trips(decision)
    held = restrain(decision, DRY_RUN)
    assert not trips(held)
    [effect] = held.effects
    assert effect.event.kind == "would-disable" and effect.set_disabled is None and effect.clear_disabled is None
    assert effect.event.detail == {"policy": "dry-run"}
    assert (effect.event.failure_count, effect.event.disabled_until) == (1, T0 + 300)
    assert held.state.disabled_until is None and held.state.failure_count == 0
    assert held.state.last_error == FAIL.error and held.state.last_failure_at == T0


@pytest.mark.parametrize(
    ("view", "now", "state"),
    [
        (PairView(), T0, "enabled"),
        (PairView(switched_off=True, disabled=True, slow_start_until=T0 + 1), T0, "switched-off"),
        (PairView(disabled=True, slow_start_until=T0 + 1), T0, "disabled"),
        (PairView(slow_start_until=T0 + 1), T0, "slow-start"),
        (PairView(slow_start_until=T0 + 1), T0 + 1, "enabled"),
    ],
)
def test_pair_state(view: PairView, now: float, state: str) -> None:
    assert pair_state(view, now) == state


# ------------------------------------------------------------------------------------- the tracker


def settings_for(data: dict, pairs=("a", "b")) -> tuple[dict, dict]:  # noqa: ANN001
    routes = RoutingTable(
        make_config({**data, "openai-compatibility": [vendor(n, f"http://127.0.0.1:9/{n}", ["m"]) for n in pairs]})
    )
    return routes.auto_disable_settings(), routes.peers


async def tracker_on(store: MemoryStore, clock: FakeClock, data: dict):  # noqa: ANN201
    from cliproxy.services.journal import Journal
    from cliproxy.services.tracker import FailureTracker

    settings, peers = settings_for(data)
    tracker = FailureTracker(Journal(store, retry_initial=0.001), settings, clock=clock, sweep_interval=0.002)
    tracker.update_peers(peers)
    await begin(tracker)
    return tracker


class TestTrackerPolicies:
    async def test_dry_run_records_would_disable_and_keeps_routing(self) -> None:
        store, clock = MemoryStore(), FakeClock(T0)
        tracker = await tracker_on(store, clock, {"auto-disable": {"failure-threshold": 2, "enforce": False}})
        try:
            for _ in range(4):
                tracker.record_outcome(("a", "m"), FAIL)
            assert tracker.is_available(("a", "m"))
            await tracker.flush(5)
            assert store.kinds() == ["would-disable", "would-disable"]  # one per failure-threshold failures
            assert store.rows == {}
            assert store.history[0].detail == {"policy": "dry-run"}
        finally:
            await shut(tracker)

    async def test_max_disabled_fraction_holds_back_the_trip_past_the_limit(self) -> None:
        store, clock = MemoryStore(), FakeClock(T0)
        tracker = await tracker_on(store, clock, {"auto-disable": {"failure-threshold": 1, "max-disabled-fraction": 0.5}})
        try:
            tracker.record_outcome(("a", "m"), FAIL)  # 1 of 2 unavailable: allowed
            tracker.record_outcome(("b", "m"), FAIL)  # 2 of 2 would be: held back
            assert not tracker.is_available(("a", "m"))
            assert tracker.is_available(("b", "m"))
            await tracker.flush(5)
            assert [(e.kind, e.vendor) for e in store.history] == [("disabled", "a"), ("would-disable", "b")]
            assert store.history[1].detail == {
                "policy": "max-disabled-fraction",
                "unavailable": 1,
                "pairs": 2,
                "max_disabled_fraction": 0.5,
            }
            clock.advance(300)  # a's disable ends: b may now be disabled
            tracker.record_outcome(("b", "m"), FAIL)
            assert not tracker.is_available(("b", "m"))
        finally:
            await shut(tracker)

    async def test_slow_start_begins_at_the_re_enable_and_survives_a_restart(self) -> None:
        store, clock = MemoryStore(), FakeClock(T0)
        data = {"auto-disable": {"failure-threshold": 1, "disable-duration-seconds": 10, "slow-start-seconds": 100}}
        tracker = await tracker_on(store, clock, data)
        try:
            tracker.record_outcome(("a", "m"), FAIL)
            assert tracker.weight(("a", "m")) == 0.0  # disabled: its turns go to its peers
            clock.advance(10)
            assert tracker.weight(("a", "m")) == pytest.approx(0.1)  # over by the clock, before the sweep
            await eventually(lambda: "enabled" in store.kinds(), "the sweep to record the re-enable")
            await tracker.flush(5)
            assert tracker.slow_start_until(("a", "m")) == T0 + 110
            clock.advance(50)
            assert tracker.weight(("a", "m")) == pytest.approx(0.55)
            assert tracker.weight(("b", "m")) == 1.0
        finally:
            await shut(tracker)
        restarted = await tracker_on(store, clock, data)  # the same history: a restart
        try:
            assert restarted.weight(("a", "m")) == pytest.approx(0.55)
            assert restarted.slow_start_until(("a", "m")) == T0 + 110
            clock.advance(50)
            assert restarted.weight(("a", "m")) == 1.0 and restarted.slow_start_until(("a", "m")) is None
        finally:
            await shut(restarted)


# ------------------------------------------------------------------------------------- end to end


async def events_of(gw, kind: str) -> list[Event]:  # noqa: ANN001
    await gw.app[TRACKER].flush(timeout=5)
    return await gw.app[STORE].events(kind=kind)


class TestEndToEnd:
    async def test_slow_start_shares_and_status(self, upstreams, admin) -> None:  # noqa: ANN001
        a, b = await upstreams(), await upstreams()
        a.fail(None, Fault(status=500, times=1))
        clock = FakeClock(T0)
        adm = await admin(
            {
                "auto-disable": {"failure-threshold": 1, "disable-duration-seconds": 10, "slow-start-seconds": 100},
                "openai-compatibility": [vendor("a", a.url, ["m"]), vendor("b", b.url, ["m"])],
            },
            clock=clock,
        )
        gw = adm.gw
        assert (await gw.client.post("/v1/chat/completions", json=CHAT)).headers["x-cliproxy-vendor"] == "b"  # a failed over
        clock.advance(10)
        await eventually(lambda: events_of(gw, "enabled"), "the re-enable to be recorded")
        served = Counter()
        for _ in range(22):
            resp = await gw.client.post("/v1/chat/completions", json=CHAT)
            assert resp.status == 200
            served[resp.headers["x-cliproxy-vendor"]] += 1
        assert served == {"a": 2, "b": 20}
        [pair] = [p for p in (await adm.get("/api/models/m/status")).json["pairs"] if p["vendor"] == "a"]
        assert pair["state"] == "slow-start"
        assert pair["slow_start_until"] == "2027-01-15T08:01:50.000Z"
        clock.advance(100)
        [pair] = [p for p in (await adm.get("/api/models/m/status")).json["pairs"] if p["vendor"] == "a"]
        assert (pair["state"], pair["slow_start_until"]) == ("enabled", None)

    async def test_best_effort_uses_the_pair_back_soonest(self, upstreams, gateway) -> None:  # noqa: ANN001
        a, b, c = await upstreams(), await upstreams(), await upstreams()
        a.fail(None, Fault(status=500, times=1))
        b.fail(None, Fault(status=500, times=1))
        clock = FakeClock(T0)
        gw = await gateway(
            {
                "auto-disable": {"failure-threshold": 1, "disable-duration-seconds": 100, "on-all-disabled": "best-effort"},
                "openai-compatibility": [vendor("a", a.url, ["m"]), vendor("b", b.url, ["m"]), vendor("c", c.url, ["m"])],
            },
            clock=clock,
        )
        tracker = gw.app[TRACKER]
        await tracker.manual_disable(("c", "m"), 5, "ops")  # back soonest, but an operator's: never used
        assert (await gw.client.post("/v1/chat/completions", json=CHAT)).status == 500  # a, then b fail: both disabled
        assert not tracker.is_available(("a", "m")) and not tracker.is_available(("b", "m"))
        clock.advance(1)
        # a was disabled first, so it comes back first
        resp = await gw.client.post("/v1/chat/completions", json=CHAT)
        assert resp.status == 200
        assert resp.headers["x-cliproxy-degraded"] == "true"
        assert resp.headers["x-cliproxy-vendor"] == "a"
        assert len(c.requests) == 0
        clock.advance(99)  # a is back: a normal answer, no degraded header
        resp = await gw.client.post("/v1/chat/completions", json=CHAT)
        assert resp.status == 200 and "x-cliproxy-degraded" not in resp.headers

    async def test_fail_is_the_default(self, upstreams, gateway) -> None:  # noqa: ANN001
        a = await upstreams()
        a.fail(None, Fault(status=500, times=1))
        gw = await gateway(
            {"auto-disable": {"failure-threshold": 1}, "openai-compatibility": [vendor("a", a.url, ["m"])]}, clock=FakeClock(T0)
        )
        await gw.client.post("/v1/chat/completions", json=CHAT)
        resp = await gw.client.post("/v1/chat/completions", json=CHAT)
        assert resp.status == 503 and "x-cliproxy-degraded" not in resp.headers
        assert len(a.requests) == 1

    async def test_dry_run_routes_as_if_nothing_were_disabled(self, upstreams, gateway) -> None:  # noqa: ANN001
        a, b = await upstreams(), await upstreams()
        a.fail(None, Fault(status=500))
        gw = await gateway(
            {
                "auto-disable": {"failure-threshold": 2, "enforce": False},
                "openai-compatibility": [vendor("a", a.url, ["m"], priority=1), vendor("b", b.url, ["m"])],
            },
            clock=FakeClock(T0),
        )
        for _ in range(4):
            resp = await gw.client.post("/v1/chat/completions", json=CHAT)
            assert resp.headers["x-cliproxy-attempts"] == "2"  # a was tried every time: never disabled
        assert len(a.requests) == 4
        events = await events_of(gw, "would-disable")
        assert [(e.vendor, e.failure_count, e.detail["policy"]) for e in events] == [("a", 2, "dry-run")] * 2
        assert await events_of(gw, "disabled") == []
        metrics = await (await gw.client.get("/metrics")).text()
        assert 'cliproxy_pair_would_disable_total{model="m",vendor="a"} 2.0' in metrics

    async def test_max_disabled_fraction_keeps_the_last_pair_serving(self, upstreams, gateway) -> None:  # noqa: ANN001
        a, b = await upstreams(), await upstreams()
        a.fail(None, Fault(status=500))
        b.fail(None, Fault(status=500))
        gw = await gateway(
            {
                "auto-disable": {"failure-threshold": 1, "max-disabled-fraction": 0.5},
                "openai-compatibility": [vendor("a", a.url, ["m"], priority=1), vendor("b", b.url, ["m"])],
            },
            clock=FakeClock(T0),
        )
        assert (await gw.client.post("/v1/chat/completions", json=CHAT)).status == 500  # a disabled, b held back
        assert (await gw.client.post("/v1/chat/completions", json=CHAT)).headers["x-cliproxy-vendor"] == "b"
        assert [e.vendor for e in await events_of(gw, "disabled")] == ["a"]
        assert [e.vendor for e in await events_of(gw, "would-disable")] == ["b", "b"]


class TestSettings:
    def test_max_disabled_fraction_is_global_only(self) -> None:
        from cliproxy.services.config_loader import ConfigError

        with pytest.raises(ConfigError) as error:
            make_config(
                {"openai-compatibility": [vendor("a", "http://x", ["m"], **{"auto-disable": {"max-disabled-fraction": 0.5}})]}
            )
        [problem] = error.value.problems
        assert problem.startswith("openai-compatibility[0].auto-disable.max-disabled-fraction: a global setting")

    def test_inherited_field_by_field(self) -> None:
        config = make_config(
            {
                "auto-disable": {"slow-start-seconds": 60, "enforce": False, "max-disabled-fraction": 0.5},
                "openai-compatibility": [
                    vendor(
                        "a",
                        "http://x",
                        [{"name": "m", "auto-disable": {"enforce": True}}],
                        **{"auto-disable": {"on-all-disabled": "best-effort"}},
                    )
                ],
            }
        )
        s = RoutingTable(config).auto_disable_settings()[("a", "m")]
        assert (s.slow_start_seconds, s.on_all_disabled, s.enforce, s.max_disabled_fraction) == (60, "best-effort", True, 0.5)
        assert (s.source_of("slow_start_seconds"), s.source_of("on_all_disabled"), s.source_of("enforce")) == (
            "global",
            "vendor",
            "model",
        )

    def test_defaults_change_nothing(self) -> None:
        s = RoutingTable(make_config({"openai-compatibility": [vendor("a", "http://x", ["m"])]})).auto_disable_settings()[
            ("a", "m")
        ]
        assert (s.slow_start_seconds, s.on_all_disabled, s.enforce, s.max_disabled_fraction) == (0.0, "fail", True, 1.0)


class TestKillDashNine:
    """The slow start's start is the committed `enabled` event's time: a restart after kill -9 keeps it."""

    async def test_slow_start_survives_kill_9_with_its_original_time(self, upstreams, tmp_path) -> None:  # noqa: ANN001
        import aiohttp

        from cliproxy.services.store import read_events
        from tests.helpers import MGMT_KEY
        from tests.processes import GatewayProcess

        a, b = await upstreams(), await upstreams()
        a.fail(None, Fault(status=500, times=1))
        gw = GatewayProcess(
            tmp_path,
            {
                "remote-management": {"secret-key": MGMT_KEY},
                "auto-disable": {"failure-threshold": 1, "disable-duration-seconds": 0.2, "slow-start-seconds": 3600},
                "openai-compatibility": [vendor("a", a.url, ["m"], priority=1), vendor("b", b.url, ["m"], priority=1)],
            },
        )

        async def status_of_a(session: aiohttp.ClientSession) -> dict:
            headers = {"Authorization": f"Bearer {MGMT_KEY}"}
            async with session.get(f"{gw.url}/api/models/m/status", headers=headers) as resp:
                assert resp.status == 200
                return next(p for p in (await resp.json())["pairs"] if p["vendor"] == "a")

        async def served(session: aiohttp.ClientSession, requests: int) -> Counter[str]:
            count: Counter[str] = Counter()
            for _ in range(requests):
                async with session.post(f"{gw.url}/v1/chat/completions", json=CHAT) as resp:
                    assert resp.status == 200
                    count[resp.headers["x-cliproxy-vendor"]] += 1
            return count

        gw.start()
        try:
            async with aiohttp.ClientSession() as session:
                await served(session, 1)  # a fails (disabled for 0.2 s), b answers
                [enabled] = await eventually(lambda: read_events(tmp_path / "cliproxy.db", kind="enabled"), "the re-enable")

                async def slow_starting() -> dict | None:
                    status = await status_of_a(session)
                    return status if status["state"] == "slow-start" else None

                before = await eventually(slow_starting, "the committed slow start")
                gw.kill9()
                gw.start()
                after = await status_of_a(session)
                assert (after["state"], after["slow_start_until"]) == ("slow-start", before["slow_start_until"])
                from cliproxy.core.times import format_timestamp

                assert after["slow_start_until"] == format_timestamp(enabled.at + 3600)
                assert 1 <= (await served(session, 22))["a"] <= 3  # about 10% of b's share, not half
        finally:
            gw.stop(timeout=10)
