"""The auto-disable rule: pure functions over frozen values, the clock passed in as `now`.

One `PairState` per (vendor, model) pair. The rule is a counting window (design decision 6):

- the first countable failure opens a window at `now` with a count of 1;
- a failure while `now - window_started_at < time_window_seconds` increments the count;
- a failure after the window has passed opens a new window with a count of 1;
- a success resets the count to zero and closes the window;
- when the count reaches `failure_threshold` the pair is disabled from `now` until
  `now + disable_duration_seconds`;
- `failure_threshold == 0` switches disabling off: failures are still counted (so the status
  endpoint can show them) but never disable;
- outcomes that arrive while the pair is disabled (requests that were in flight when it tripped)
  are ignored: they neither extend nor end the disable;
- at `now == disabled_until` the pair is available again (`is_disabled` is a strict `<`) and
  `expire` resets it to zero failures;
- neutral outcomes change nothing.

Each step returns one `Decision`: the pair's new state and its effects (the `disabled` /
`enabled` event to record, the current-state row to write or clear), so the shell only applies it.

Stamps this module computes (`disabled_until`) are rounded to the millisecond, the precision the
store keeps, so what is held in memory equals what is persisted; the shell passes `now` already
rounded. Nothing here imports asyncio, time, aiohttp or SQL.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from cliproxy.core.config import AutoDisableSettings, PairKey
from cliproxy.core.events import Decision, DisabledRecord, Effect, ErrorInfo, Event, Outcome

__all__ = [
    "AUTO",
    "EMPTY",
    "PairState",
    "apply_outcome",
    "as_of",
    "auto_record",
    "end_by_operator",
    "ended_effect",
    "expire",
    "is_disabled",
    "is_idle",
    "ms",
    "remaining",
    "reset",
    "restore",
    "settings_summary",
]

#: The `reason` of an automatic disable's row and events.
AUTO = "auto"


def ms(t: float) -> float:
    """`t` rounded to the millisecond: the precision of every persisted timestamp."""
    return round(t, 3)


@dataclass(frozen=True, slots=True)
class PairState:
    """What the tracker knows about one pair's automatic disable.

    `failure_count` and `window_started_at` describe the current counting window (0 and None when
    no window is open). While disabled they keep the values that tripped the disable.
    """

    failure_count: int = 0
    window_started_at: float | None = None
    last_failure_at: float | None = None
    disabled_at: float | None = None
    disabled_until: float | None = None
    last_error: ErrorInfo | None = None


#: The state of a pair that has never failed.
EMPTY = PairState()


def is_disabled(state: PairState, now: float) -> bool:
    """True while auto-disabled: `now < disabled_until`. At exactly `disabled_until` it is available."""
    return state.disabled_until is not None and now < state.disabled_until


def remaining(state: PairState, now: float) -> float:
    """Seconds until the auto-disable ends; 0.0 when not disabled."""
    if state.disabled_until is None or now >= state.disabled_until:
        return 0.0
    return state.disabled_until - now


def as_of(state: PairState, now: float) -> PairState:
    """The state as it stands at `now`: a disable whose time has come shows as ended (count reset)."""
    if state.disabled_until is None or now < state.disabled_until:
        return state
    return reset(state)


def expire(pair: PairKey, state: PairState, now: float) -> Decision[PairState]:
    """End a disable whose time has come (`disabled_until <= now`), with the failure count reset:
    an `enabled` event (cause expired) that clears the row. Nothing to do otherwise."""
    if state.disabled_until is None or now < state.disabled_until:
        return Decision(state)
    return Decision(reset(state), (_ended(pair, state, now, cause="expired"),))


def end_by_operator(pair: PairKey, state: PairState | None, now: float, actor: str) -> Decision[PairState | None]:
    """An operator's enable: zero failures, and the disable in force (if any) ended with cause manual.

    Call `expire` first: a disable whose time had passed is recorded as expired, not as ended here.
    """
    if state is None:
        return Decision(None)
    if state.disabled_until is None:
        return Decision(reset(state))
    return Decision(reset(state), (_ended(pair, state, now, cause="manual", actor=actor),))


def reset(state: PairState) -> PairState:
    """Zero failures, no window, not disabled; the last error and last failure time are kept."""
    if state.failure_count == 0 and state.window_started_at is None and state.disabled_until is None:
        return state
    return replace(state, failure_count=0, window_started_at=None, disabled_at=None, disabled_until=None)


def apply_outcome(
    pair: PairKey, state: PairState, outcome: Outcome, settings: AutoDisableSettings, now: float
) -> Decision[PairState]:
    """Apply one outcome of one attempt at `now`.

    A disable whose time has passed is ended first (an `expired` effect), so the result is right
    even when the shell's expiry sweep has not run yet: up to two effects come back.
    """
    if outcome.kind == "neutral":
        return Decision(state)
    if is_disabled(state, now):
        return Decision(state)  # a late outcome of a request in flight when the pair tripped
    ended: tuple[Effect, ...] = ()
    if state.disabled_until is not None:  # over (not disabled at `now`), though the sweep has not said so yet
        ended = (_ended(pair, state, now, cause="expired"),)
        state = reset(state)
    if outcome.kind == "success":
        return Decision(reset(state), ended)
    state = _count_failure(state, outcome, settings, now)
    if settings.enabled and state.failure_count >= settings.failure_threshold:
        state = replace(state, disabled_at=now, disabled_until=ms(now + settings.disable_duration_seconds))
        return Decision(state, (*ended, _tripped(pair, state, settings)))
    return Decision(state, ended)


def _count_failure(state: PairState, outcome: Outcome, settings: AutoDisableSettings, now: float) -> PairState:
    error = outcome.error if outcome.error is not None else ErrorInfo(status=None, message=outcome.reason)
    in_window = (
        state.window_started_at is not None
        and state.failure_count > 0
        and now - state.window_started_at < settings.time_window_seconds
    )
    if in_window:
        return replace(state, failure_count=state.failure_count + 1, last_failure_at=now, last_error=error)
    return replace(state, failure_count=1, window_started_at=now, last_failure_at=now, last_error=error)


def _tripped(pair: PairKey, state: PairState, settings: AutoDisableSettings) -> Effect:
    """The `disabled` event and the row of the disable `state` has just entered."""
    record = auto_record(pair, state)
    assert record is not None and state.disabled_at is not None
    event = Event(
        kind="disabled",
        at=state.disabled_at,
        vendor=pair[0],
        model=pair[1],
        reason=AUTO,
        disabled_at=state.disabled_at,
        disabled_until=state.disabled_until,
        failure_count=state.failure_count,
        window_started_at=state.window_started_at,
        settings=settings_summary(settings),
        last_error=state.last_error,
        last_failure_at=state.last_failure_at,
    )
    return Effect(event, set_disabled=record)


def _ended(pair: PairKey, state: PairState, now: float, *, cause: str, actor: str | None = None) -> Effect:
    """The `enabled` event ending the disable `state` holds, clearing its row."""
    return ended_effect(pair, AUTO, state.disabled_at, state.disabled_until, now, cause=cause, actor=actor)


def ended_effect(
    pair: PairKey,
    reason: str,
    disabled_at: float | None,
    disabled_until: float | None,
    now: float,
    *,
    cause: str,
    actor: str | None = None,
) -> Effect:
    """The `enabled` event ending a disable of `reason` (auto | manual) at `now`, and clearing its row;
    `cause` is expired | manual | startup-expired."""
    vendor, model = pair
    event = Event(
        kind="enabled",
        at=now,
        vendor=vendor,
        model=model,
        reason=reason,
        cause=cause,
        disabled_at=disabled_at,
        disabled_until=disabled_until,
        actor=actor,
    )
    return Effect(event, clear_disabled=(vendor, model, reason))


def restore(record: DisabledRecord, now: float) -> Decision[PairState | None]:
    """An auto-disable read back from the store at start-up, with its original timestamps.

    One whose time passed while cliproxy was down is ended now (cause startup-expired) and nothing
    is held for the pair.
    """
    assert record.disabled_until is not None, "an auto-disable row always has an end"
    if record.disabled_until <= now:
        pair = (record.vendor, record.model)
        return Decision(
            None, (ended_effect(pair, AUTO, record.disabled_at, record.disabled_until, now, cause="startup-expired"),)
        )
    state = PairState(
        failure_count=record.failure_count,
        window_started_at=record.window_started_at,
        last_failure_at=record.last_failure_at if record.last_failure_at is not None else record.disabled_at,
        disabled_at=record.disabled_at,
        disabled_until=record.disabled_until,
        last_error=record.last_error,
    )
    return Decision(state)


def is_idle(state: PairState, now: float, idle_seconds: float) -> bool:
    """True when the record can be forgotten: not disabled and no failure for `idle_seconds`."""
    if state.disabled_until is not None:
        return False
    return state.last_failure_at is None or now - state.last_failure_at >= idle_seconds


def settings_summary(settings: AutoDisableSettings) -> dict[str, float | int]:
    """The rule in force, as recorded on a `disabled` event."""
    return {
        "failure_threshold": settings.failure_threshold,
        "time_window_seconds": settings.time_window_seconds,
        "disable_duration_seconds": settings.disable_duration_seconds,
    }


def auto_record(pair: PairKey, state: PairState) -> DisabledRecord | None:
    """The current-state row of an auto-disabled pair, None when the state holds no disable."""
    if state.disabled_at is None or state.disabled_until is None:
        return None
    vendor, model = pair
    return DisabledRecord(
        vendor=vendor,
        model=model,
        reason=AUTO,
        disabled_at=state.disabled_at,
        disabled_until=state.disabled_until,
        failure_count=state.failure_count,
        window_started_at=state.window_started_at,
        last_error=state.last_error,
        last_failure_at=state.last_failure_at,
    )
