"""The pure operator rule: synchronous tables of (state, action, now) -> expected state and effects."""

from __future__ import annotations

import pytest

from cliproxy.core import manual
from cliproxy.core.events import Decision, DisabledRecord, Effect, ErrorInfo, Event
from cliproxy.core.failures import PairState
from cliproxy.core.manual import Axes

PAIR = ("acme", "gpt-x")
ROW_AUTO = ("acme", "gpt-x", "auto")
ROW_MANUAL = ("acme", "gpt-x", "manual")
TIMED = DisabledRecord("acme", "gpt-x", "manual", disabled_at=100.0, disabled_until=160.0, actor="10.0.0.1")
FOREVER = DisabledRecord("acme", "gpt-x", "manual", disabled_at=100.0, disabled_until=None, actor="cli")
AUTO_DISABLED = PairState(
    failure_count=3,
    window_started_at=90.0,
    last_failure_at=95.0,
    disabled_at=95.0,
    disabled_until=155.0,
    last_error=ErrorInfo(503, "x"),
)
COUNTING = PairState(failure_count=2, window_started_at=90.0, last_failure_at=95.0)


def enabled(
    reason: str, cause: str, disabled_at: float, disabled_until: float | None, now: float, actor: str | None = None
) -> Effect:
    event = Event(
        kind="enabled",
        at=now,
        vendor="acme",
        model="gpt-x",
        reason=reason,
        cause=cause,
        disabled_at=disabled_at,
        disabled_until=disabled_until,
        actor=actor,
    )
    return Effect(event, clear_disabled=("acme", "gpt-x", reason))


class TestDisable:
    """A duration makes a timed disable (state and row); none only records the operator's action."""

    def test_timed(self) -> None:
        decision = manual.disable(PAIR, None, 60.0, "10.0.0.1", now=100.0)
        assert decision.state == TIMED
        event = Event(
            kind="manual-disable",
            at=100.0,
            vendor="acme",
            model="gpt-x",
            reason="manual",
            disabled_at=100.0,
            disabled_until=160.0,
            actor="10.0.0.1",
            detail={"duration_seconds": 60.0},
        )
        assert decision.effects == (Effect(event, set_disabled=TIMED),)

    def test_end_is_rounded_to_the_millisecond(self) -> None:
        assert manual.disable(PAIR, None, 0.2, "ops", now=0.1).state.disabled_until == 0.3  # type: ignore[union-attr]

    def test_a_new_timed_disable_replaces_the_one_held(self) -> None:
        decision = manual.disable(PAIR, TIMED, 600.0, "ops", now=120.0)
        assert decision.state is not None and (decision.state.disabled_at, decision.state.disabled_until) == (120.0, 720.0)

    @pytest.mark.parametrize("held", [None, TIMED])
    def test_without_duration_only_records(self, held: DisabledRecord | None) -> None:
        decision = manual.disable(PAIR, held, None, "ops", now=120.0)
        assert decision == Decision(
            held, (Effect(Event(kind="manual-disable", at=120.0, vendor="acme", model="gpt-x", reason="manual", actor="ops")),)
        )

    @pytest.mark.parametrize("duration", [0.0, -5.0])
    def test_duration_must_be_positive(self, duration: float) -> None:
        with pytest.raises(ValueError):
            manual.disable(PAIR, None, duration, "ops", now=100.0)


class TestExpiry:
    """A timed disable ends at exactly its end; one without an end never expires."""

    @pytest.mark.parametrize(
        ("held", "now", "expected"),
        [
            (None, 500.0, Decision(None)),
            (TIMED, 159.999, Decision(TIMED)),
            (TIMED, 160.0, Decision(None, (enabled("manual", "expired", 100.0, 160.0, now=160.0),))),
            (FOREVER, 1e9, Decision(FOREVER)),
        ],
    )
    def test_expire(self, held: DisabledRecord | None, now: float, expected: Decision[DisabledRecord | None]) -> None:
        assert manual.expire(PAIR, held, now) == expected

    @pytest.mark.parametrize(
        ("record", "now", "expected"),
        [
            (TIMED, 150.0, Decision(TIMED)),
            (FOREVER, 1e9, Decision(FOREVER)),
            (TIMED, 500.0, Decision(None, (enabled("manual", "startup-expired", 100.0, 160.0, now=500.0),))),
        ],
    )
    def test_restore(self, record: DisabledRecord, now: float, expected: Decision[DisabledRecord | None]) -> None:
        assert manual.restore(record, now) == expected


class TestEnable:
    """An operator's enable ends both axes: expired ones as expired first, the rest with cause manual."""

    @pytest.mark.parametrize(
        ("axes", "now", "effects", "cleared"),
        [
            # nothing held: the operator's action is recorded on its own
            (
                Axes(None, None),
                120.0,
                (Effect(Event(kind="manual-enable", at=120.0, vendor="acme", model="gpt-x", actor="ops")),),
                False,
            ),
            (
                Axes(COUNTING, None),
                120.0,
                (Effect(Event(kind="manual-enable", at=120.0, vendor="acme", model="gpt-x", actor="ops")),),
                False,
            ),
            (Axes(AUTO_DISABLED, None), 120.0, (enabled("auto", "manual", 95.0, 155.0, now=120.0, actor="ops"),), True),
            (Axes(None, TIMED), 120.0, (enabled("manual", "manual", 100.0, 160.0, now=120.0, actor="ops"),), True),
            (Axes(None, FOREVER), 120.0, (enabled("manual", "manual", 100.0, None, now=120.0, actor="ops"),), True),
            (
                Axes(AUTO_DISABLED, TIMED),
                120.0,
                (
                    enabled("auto", "manual", 95.0, 155.0, now=120.0, actor="ops"),
                    enabled("manual", "manual", 100.0, 160.0, now=120.0, actor="ops"),
                ),
                True,
            ),
            # the auto-disable ended before the sweep noticed: expired first, then the timed one by hand
            (
                Axes(AUTO_DISABLED, TIMED),
                157.0,
                (
                    enabled("auto", "expired", 95.0, 155.0, now=157.0),
                    enabled("manual", "manual", 100.0, 160.0, now=157.0, actor="ops"),
                ),
                True,
            ),
            # both over: recorded as expired, and the operator's action on its own
            (
                Axes(AUTO_DISABLED, TIMED),
                200.0,
                (
                    enabled("auto", "expired", 95.0, 155.0, now=200.0),
                    enabled("manual", "expired", 100.0, 160.0, now=200.0),
                    Effect(Event(kind="manual-enable", at=200.0, vendor="acme", model="gpt-x", actor="ops")),
                ),
                False,
            ),
        ],
    )
    def test_enable(self, axes: Axes, now: float, effects: tuple[Effect, ...], cleared: bool) -> None:
        decision = manual.enable(PAIR, axes, "ops", now)
        assert decision.effects == effects
        assert manual.cleared(decision.effects) is cleared
        assert decision.state.timed is None
        if axes.auto is None:
            assert decision.state.auto is None
        else:
            assert decision.state.auto is not None and decision.state.auto.failure_count == 0
            assert decision.state.auto.disabled_until is None and decision.state.auto.last_error == axes.auto.last_error

    def test_nothing_recorded_when_the_caller_records_the_action(self) -> None:
        decision = manual.enable(PAIR, Axes(COUNTING, None), "ops", 120.0, record_if_nothing_cleared=False)
        assert decision.effects == () and decision.state.auto is not None and decision.state.auto.failure_count == 0
        assert manual.enable(PAIR, Axes(None, TIMED), "ops", 120.0, record_if_nothing_cleared=False).effects == (
            enabled("manual", "manual", 100.0, 160.0, now=120.0, actor="ops"),
        )

    def test_rows_cleared_are_the_disables_ended(self) -> None:
        effects = manual.enable(PAIR, Axes(AUTO_DISABLED, TIMED), "ops", 120.0).effects
        assert [e.clear_disabled for e in effects] == [ROW_AUTO, ROW_MANUAL]
        assert all(e.set_disabled is None for e in effects)
