"""The pure auto-disable rule: synchronous tables of (outcomes, now) -> expected state and effects."""

from __future__ import annotations

import pytest

from cliproxy.core import failures
from cliproxy.core.config import (
    DEFAULT_COUNT_STATUSES,
    AutoDisableOverrides,
    AutoDisableSettings,
    resolve_auto_disable,
)
from cliproxy.core.events import Decision, DisabledRecord, Effect, ErrorInfo, Event, Outcome
from cliproxy.core.failures import EMPTY, PairState

PAIR = ("acme", "gpt-x")


def rule(threshold: int = 3, window: float = 10.0, duration: float = 60.0) -> AutoDisableSettings:
    return AutoDisableSettings(
        failure_threshold=threshold,
        time_window_seconds=window,
        disable_duration_seconds=duration,
        count_statuses=DEFAULT_COUNT_STATUSES,
    )


def err(status: int | None = 503, message: str = "upstream down") -> ErrorInfo:
    return ErrorInfo(status=status, message=message)


FAIL = Outcome("failure", "http_status", err())
OK = Outcome("success", "ok")
NEUTRAL = Outcome("neutral", "client_error", err(400, "bad request"))
_BY_NAME = {"f": FAIL, "s": OK, "n": NEUTRAL}


def run(
    steps: list[tuple[str, float]], settings: AutoDisableSettings, state: PairState = EMPTY
) -> tuple[PairState, list[Effect]]:
    """Apply ("f" | "s" | "n", now) steps in order; return the final state and every effect."""
    effects: list[Effect] = []
    for name, now in steps:
        decision = failures.apply_outcome(PAIR, state, _BY_NAME[name], settings, now)
        state = decision.state
        effects.extend(decision.effects)
    return state, effects


def expired_effect(
    disabled_at: float, disabled_until: float, now: float, cause: str = "expired", actor: str | None = None
) -> Effect:
    """The `enabled` event of an auto-disable that ended at `now`, clearing its row."""
    event = Event(
        kind="enabled",
        at=now,
        vendor="acme",
        model="gpt-x",
        reason="auto",
        cause=cause,
        disabled_at=disabled_at,
        disabled_until=disabled_until,
        actor=actor,
    )
    return Effect(event, clear_disabled=("acme", "gpt-x", "auto"))


class TestCountingWindow:
    """Failures inside the window add up; a failure after it, or a success, starts over."""

    @pytest.mark.parametrize(
        ("steps", "count", "window_started_at", "last_failure_at"),
        [
            ([("f", 100.0)], 1, 100.0, 100.0),
            ([("f", 100.0), ("f", 105.0)], 2, 100.0, 105.0),
            ([("f", 100.0), ("f", 109.999)], 2, 100.0, 109.999),
            # now - window_started_at == window: the window has passed, a new one opens
            ([("f", 100.0), ("f", 110.0)], 1, 110.0, 110.0),
            ([("f", 100.0), ("f", 105.0), ("f", 111.0)], 1, 111.0, 111.0),
            ([("f", 100.0), ("f", 111.0), ("f", 115.0)], 2, 111.0, 115.0),
            # success resets and closes the window, keeping when the pair last failed
            ([("f", 100.0), ("s", 101.0)], 0, None, 100.0),
            ([("f", 100.0), ("f", 101.0), ("s", 102.0), ("f", 103.0)], 1, 103.0, 103.0),
            # neutral outcomes change nothing
            ([("f", 100.0), ("n", 101.0), ("n", 102.0)], 1, 100.0, 100.0),
            ([("n", 100.0)], 0, None, None),
            ([("s", 100.0)], 0, None, None),
        ],
    )
    def test_window(
        self,
        steps: list[tuple[str, float]],
        count: int,
        window_started_at: float | None,
        last_failure_at: float | None,
    ) -> None:
        state, effects = run(steps, rule(threshold=5))
        assert (state.failure_count, state.window_started_at, state.last_failure_at) == (
            count,
            window_started_at,
            last_failure_at,
        )
        assert effects == []
        assert state.disabled_until is None

    def test_neutral_returns_the_same_state(self) -> None:
        state, _ = run([("f", 1.0)], rule())
        assert failures.apply_outcome(PAIR, state, NEUTRAL, rule(), 2.0) == Decision(state, ())

    def test_success_on_a_clean_state_returns_it_unchanged(self) -> None:
        assert failures.apply_outcome(PAIR, EMPTY, OK, rule(), 1.0).state is EMPTY

    def test_last_error_is_the_latest_failures(self) -> None:
        state = failures.apply_outcome(PAIR, EMPTY, Outcome("failure", "http_status", err(500, "a")), rule(), 1.0).state
        state = failures.apply_outcome(PAIR, state, Outcome("failure", "http_status", err(429, "b")), rule(), 2.0).state
        assert state.last_error == err(429, "b")

    def test_a_failure_without_error_info_records_its_reason(self) -> None:
        state = failures.apply_outcome(PAIR, EMPTY, Outcome("failure", "connect_timeout"), rule(), 1.0).state
        assert state.last_error == ErrorInfo(status=None, message="connect_timeout")


class TestThreshold:
    """Reaching the threshold inside one window disables the pair for the configured duration."""

    @pytest.mark.parametrize(
        ("threshold", "steps", "disabled_at", "disabled_until"),
        [
            (3, [("f", 100.0), ("f", 101.0), ("f", 102.0)], 102.0, 162.0),
            (3, [("f", 100.0), ("f", 101.0)], None, None),
            (3, [("f", 100.0), ("f", 101.0), ("f", 111.0)], None, None),  # third fell in a new window
            (3, [("f", 100.0), ("f", 101.0), ("s", 101.5), ("f", 102.0)], None, None),
            (1, [("f", 100.0)], 100.0, 160.0),
            (2, [("f", 100.0), ("n", 100.5), ("f", 101.0)], 101.0, 161.0),
        ],
    )
    def test_disable(
        self,
        threshold: int,
        steps: list[tuple[str, float]],
        disabled_at: float | None,
        disabled_until: float | None,
    ) -> None:
        state, effects = run(steps, rule(threshold=threshold, duration=60.0))
        assert (state.disabled_at, state.disabled_until) == (disabled_at, disabled_until)
        assert [e.event.kind for e in effects] == (["disabled"] if disabled_at is not None else [])

    def test_the_effect_records_the_disable_and_writes_its_row(self) -> None:
        settings = rule(threshold=2, window=30.0, duration=90.0)
        steps = [("f", 100.0), ("f", 120.0)]
        state, effects = run(steps, settings)
        row = DisabledRecord(
            vendor="acme",
            model="gpt-x",
            reason="auto",
            disabled_at=120.0,
            disabled_until=210.0,
            failure_count=2,
            window_started_at=100.0,
            last_error=err(),
            last_failure_at=120.0,
        )
        event = Event(
            kind="disabled",
            at=120.0,
            vendor="acme",
            model="gpt-x",
            reason="auto",
            disabled_at=120.0,
            disabled_until=210.0,
            failure_count=2,
            window_started_at=100.0,
            settings={"failure_threshold": 2, "time_window_seconds": 30.0, "disable_duration_seconds": 90.0},
            last_error=err(),
            last_failure_at=120.0,
        )
        assert effects == [Effect(event, set_disabled=row)]
        assert state.failure_count == 2 and state.window_started_at == 100.0
        assert failures.auto_record(PAIR, state) == row

    def test_disabled_until_is_rounded_to_the_millisecond(self) -> None:
        state, _ = run([("f", 0.1)], rule(threshold=1, duration=0.2))
        assert state.disabled_until == 0.3  # not 0.30000000000000004

    @pytest.mark.parametrize("n", [1, 5, 50])
    def test_threshold_zero_counts_but_never_disables(self, n: int) -> None:
        state, effects = run([("f", 100.0 + i * 0.01) for i in range(n)], rule(threshold=0))
        assert effects == []
        assert state.failure_count == n
        assert not failures.is_disabled(state, 101.0)

    def test_a_lower_threshold_applies_from_the_next_failure(self) -> None:
        state, _ = run([("f", 100.0), ("f", 101.0), ("f", 102.0)], rule(threshold=5))
        state, effects = run([("f", 103.0)], rule(threshold=2), state)
        assert state.failure_count == 4 and state.disabled_at == 103.0
        assert [e.event.kind for e in effects] == ["disabled"]


class TestWhileDisabled:
    """Late outcomes of requests in flight when the pair tripped neither extend nor end the disable."""

    @pytest.mark.parametrize(
        "late",
        [
            [("f", 102.5)],
            [("s", 102.5)],
            [("f", 110.0), ("f", 120.0), ("f", 130.0)],  # would be a whole new window
            [("s", 161.999), ("f", 161.999)],
            [("n", 150.0)],
        ],
    )
    def test_late_outcomes_are_ignored(self, late: list[tuple[str, float]]) -> None:
        tripped, _ = run([("f", 100.0), ("f", 101.0), ("f", 102.0)], rule())
        state, effects = run(late, rule(), tripped)
        assert state is tripped
        assert effects == []


class TestExpiry:
    """A disable ends at exactly disabled_until, with the failure count reset to zero."""

    def tripped(self) -> PairState:
        state, _ = run([("f", 100.0), ("f", 101.0), ("f", 102.0)], rule())
        assert state.disabled_until == 162.0
        return state

    @pytest.mark.parametrize(
        ("now", "disabled"),
        [(102.0, True), (161.999, True), (162.0, False), (162.001, False), (1e9, False)],
    )
    def test_boundary(self, now: float, disabled: bool) -> None:
        state = self.tripped()
        assert failures.is_disabled(state, now) is disabled
        decision = failures.expire(PAIR, state, now)
        assert (decision.effects == ()) is disabled
        assert (failures.as_of(state, now) is state) is disabled
        assert failures.remaining(state, now) == pytest.approx(max(0.0, 162.0 - now))

    def test_expire_resets(self) -> None:
        decision = failures.expire(PAIR, self.tripped(), 162.0)
        state = decision.state
        assert decision.effects == (expired_effect(102.0, 162.0, now=162.0),)
        assert failures.as_of(self.tripped(), 162.0) == state
        assert state == PairState(
            failure_count=0,
            window_started_at=None,
            last_failure_at=102.0,
            disabled_at=None,
            disabled_until=None,
            last_error=err(),
        )

    def test_expire_leaves_an_active_or_clean_state_alone(self) -> None:
        state = self.tripped()
        assert failures.expire(PAIR, state, 161.0) == Decision(state)
        assert failures.expire(PAIR, EMPTY, 1.0) == Decision(EMPTY)

    def test_outcome_after_expiry_ends_the_disable_first(self) -> None:
        """Without the sweep having run, the next failure sees an expired disable and counts from 1."""
        state, effects = run([("f", 170.0)], rule(), self.tripped())
        assert effects == [expired_effect(102.0, 162.0, now=170.0)]
        assert (state.failure_count, state.window_started_at, state.disabled_until) == (1, 170.0, None)

    def test_expiry_and_new_disable_in_one_step(self) -> None:
        state, effects = run([("f", 170.0)], rule(threshold=1), self.tripped())
        assert [(e.event.kind, e.clear_disabled is not None, e.set_disabled is not None) for e in effects] == [
            ("enabled", True, False),
            ("disabled", False, True),
        ]
        assert state.disabled_until == 230.0

    def test_success_after_expiry(self) -> None:
        state, effects = run([("s", 162.0)], rule(), self.tripped())
        assert effects == [expired_effect(102.0, 162.0, now=162.0)]
        assert state.failure_count == 0


class TestRecords:
    """States convert to and from the store's rows, and idle records are recognised."""

    def test_restore_round_trip(self) -> None:
        state, _ = run([("f", 100.0), ("f", 101.0), ("f", 102.0)], rule())
        record = failures.auto_record(PAIR, state)
        assert record == DisabledRecord(
            vendor="acme",
            model="gpt-x",
            reason="auto",
            disabled_at=102.0,
            disabled_until=162.0,
            failure_count=3,
            window_started_at=100.0,
            last_error=err(),
            last_failure_at=102.0,
        )
        assert failures.restore(record, now=161.999) == Decision(state)

    def test_restore_of_a_disable_over_while_down_ends_it(self) -> None:
        state, _ = run([("f", 100.0), ("f", 101.0), ("f", 102.0)], rule())
        record = failures.auto_record(PAIR, state)
        assert record is not None
        assert failures.restore(record, now=500.0) == Decision(
            None, (expired_effect(102.0, 162.0, now=500.0, cause="startup-expired"),)
        )

    @pytest.mark.parametrize(
        ("state", "effects"),
        [
            (None, ()),
            (PairState(failure_count=2, window_started_at=100.0, last_failure_at=101.0), ()),
            (
                PairState(
                    failure_count=3, window_started_at=100.0, last_failure_at=102.0, disabled_at=102.0, disabled_until=162.0
                ),
                (expired_effect(102.0, 162.0, now=110.0, cause="manual", actor="ops"),),
            ),
        ],
    )
    def test_end_by_operator(self, state: PairState | None, effects: tuple[Effect, ...]) -> None:
        decision = failures.end_by_operator(PAIR, state, 110.0, "ops")
        assert decision.effects == effects
        if state is None:
            assert decision.state is None
        else:
            assert decision.state == failures.reset(state) and decision.state.failure_count == 0

    def test_no_record_when_not_disabled(self) -> None:
        assert failures.auto_record(PAIR, EMPTY) is None

    @pytest.mark.parametrize(
        ("state", "now", "idle"),
        [
            (EMPTY, 0.0, True),
            (PairState(failure_count=1, window_started_at=0.0, last_failure_at=0.0), 3599.0, False),
            (PairState(failure_count=1, window_started_at=0.0, last_failure_at=0.0), 3600.0, True),
            (PairState(last_failure_at=0.0, disabled_at=0.0, disabled_until=10.0), 9999.0, False),
        ],
    )
    def test_is_idle(self, state: PairState, now: float, idle: bool) -> None:
        assert failures.is_idle(state, now, 3600.0) is idle

    def test_disabled_event(self) -> None:
        settings = rule(threshold=2, window=30.0, duration=90.0)
        _, (effect,) = run([("f", 100.0), ("f", 101.0)], settings)
        event = effect.event
        assert (event.kind, event.at, event.vendor, event.model, event.reason) == (
            "disabled",
            101.0,
            "acme",
            "gpt-x",
            "auto",
        )
        assert (event.failure_count, event.window_started_at, event.disabled_at, event.disabled_until) == (
            2,
            100.0,
            101.0,
            191.0,
        )
        assert event.settings == {"failure_threshold": 2, "time_window_seconds": 30.0, "disable_duration_seconds": 90.0}
        assert event.last_error == err()


class TestResolveAutoDisable:
    """Model over vendor over global over the defaults, each field inherited on its own."""

    NONE = AutoDisableOverrides()

    def test_defaults(self) -> None:
        s = resolve_auto_disable(self.NONE, self.NONE, self.NONE)
        assert (s.failure_threshold, s.time_window_seconds, s.disable_duration_seconds) == (5, 60.0, 300.0)
        assert s.count_statuses == DEFAULT_COUNT_STATUSES
        assert all(level == "default" for _, level in s.sources)
        assert s.enabled

    @pytest.mark.parametrize(
        "field_name",
        ["failure_threshold", "time_window_seconds", "disable_duration_seconds", "count_statuses"],
    )
    @pytest.mark.parametrize("level", ["global", "vendor", "model"])
    def test_one_field_at_one_level(self, field_name: str, level: str) -> None:
        value = frozenset({500}) if field_name == "count_statuses" else 7
        overrides = AutoDisableOverrides(**{field_name: value})
        levels = {"global": self.NONE, "vendor": self.NONE, "model": self.NONE, level: overrides}
        s = resolve_auto_disable(levels["global"], levels["vendor"], levels["model"])
        defaults = resolve_auto_disable(self.NONE, self.NONE, self.NONE)
        for name in ("failure_threshold", "time_window_seconds", "disable_duration_seconds", "count_statuses"):
            if name == field_name:
                assert getattr(s, name) == value
                assert s.source_of(name) == level
            else:
                assert getattr(s, name) == getattr(defaults, name)
                assert s.source_of(name) == "default"

    def test_model_overrides_only_its_threshold(self) -> None:
        s = resolve_auto_disable(
            AutoDisableOverrides(failure_threshold=10, time_window_seconds=120.0),
            AutoDisableOverrides(failure_threshold=3, disable_duration_seconds=600.0),
            AutoDisableOverrides(failure_threshold=2),
        )
        assert (s.failure_threshold, s.time_window_seconds, s.disable_duration_seconds) == (2, 120.0, 600.0)
        assert dict(s.sources) == {
            "failure_threshold": "model",
            "time_window_seconds": "global",
            "disable_duration_seconds": "vendor",
            "count_statuses": "default",
        }

    def test_threshold_zero_switches_off(self) -> None:
        s = resolve_auto_disable(AutoDisableOverrides(failure_threshold=5), AutoDisableOverrides(failure_threshold=0), self.NONE)
        assert s.failure_threshold == 0 and not s.enabled
        assert s.source_of("failure_threshold") == "vendor"
