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

Stamps this module computes (`disabled_until`) are rounded to the millisecond, the precision the
store keeps, so what is held in memory equals what is persisted; the shell passes `now` already
rounded. Nothing here imports asyncio, time, aiohttp or SQL.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from cliproxy.core.config import AutoDisableSettings, PairKey
from cliproxy.core.events import DisabledRecord, ErrorInfo, Event, Outcome

__all__ = [
    "EMPTY",
    "DisableTransition",
    "EnableTransition",
    "PairState",
    "Transition",
    "apply_outcome",
    "auto_record",
    "disabled_event",
    "enabled_event",
    "expire",
    "is_disabled",
    "is_idle",
    "ms",
    "remaining",
    "reset",
    "restore",
    "settings_summary",
]


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


@dataclass(frozen=True, slots=True)
class DisableTransition:
    """The pair was just auto-disabled: everything the `disabled` event and the store row need."""

    failure_count: int
    window_started_at: float
    disabled_at: float
    disabled_until: float
    settings: AutoDisableSettings
    last_error: ErrorInfo | None
    last_failure_at: float | None = None


@dataclass(frozen=True, slots=True)
class EnableTransition:
    """The pair's auto-disable just ended; `disabled_at`/`disabled_until` are those of that disable."""

    cause: str  # expired | manual | startup-expired
    disabled_at: float
    disabled_until: float


Transition = DisableTransition | EnableTransition


def is_disabled(state: PairState, now: float) -> bool:
    """True while auto-disabled: `now < disabled_until`. At exactly `disabled_until` it is available."""
    return state.disabled_until is not None and now < state.disabled_until


def remaining(state: PairState, now: float) -> float:
    """Seconds until the auto-disable ends; 0.0 when not disabled."""
    if state.disabled_until is None or now >= state.disabled_until:
        return 0.0
    return state.disabled_until - now


def expire(state: PairState, now: float) -> tuple[PairState, EnableTransition | None]:
    """End a disable whose time has come (`disabled_until <= now`), with the failure count reset.

    Returns the state unchanged and no transition when there is nothing to end.
    """
    if state.disabled_until is None or now < state.disabled_until:
        return state, None
    assert state.disabled_at is not None
    transition = EnableTransition("expired", state.disabled_at, state.disabled_until)
    return reset(state), transition


def reset(state: PairState) -> PairState:
    """Zero failures, no window, not disabled; the last error and last failure time are kept."""
    if state.failure_count == 0 and state.window_started_at is None and state.disabled_until is None:
        return state
    return replace(state, failure_count=0, window_started_at=None, disabled_at=None, disabled_until=None)


def apply_outcome(
    state: PairState, outcome: Outcome, settings: AutoDisableSettings, now: float
) -> tuple[PairState, tuple[Transition, ...]]:
    """Apply one outcome of one attempt at `now`.

    A disable whose time has passed is ended first (an `expired` transition), so the result is
    right even when the shell's expiry sweep has not run yet: up to two transitions come back.
    """
    if outcome.kind == "neutral":
        return state, ()
    if is_disabled(state, now):
        return state, ()  # a late outcome of a request in flight when the pair tripped
    state, ended = expire(state, now)
    before: tuple[Transition, ...] = (ended,) if ended is not None else ()
    if outcome.kind == "success":
        return reset(state), before
    state = _count_failure(state, outcome, settings, now)
    if settings.enabled and state.failure_count >= settings.failure_threshold:
        state, tripped = _disable(state, settings, now)
        return state, (*before, tripped)
    return state, before


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


def _disable(state: PairState, settings: AutoDisableSettings, now: float) -> tuple[PairState, DisableTransition]:
    until = ms(now + settings.disable_duration_seconds)
    state = replace(state, disabled_at=now, disabled_until=until)
    assert state.window_started_at is not None
    return state, DisableTransition(
        failure_count=state.failure_count,
        window_started_at=state.window_started_at,
        disabled_at=now,
        disabled_until=until,
        settings=settings,
        last_error=state.last_error,
        last_failure_at=state.last_failure_at,
    )


def restore(record: DisabledRecord) -> PairState:
    """The state of an auto-disable read back from the store, with its original timestamps."""
    return PairState(
        failure_count=record.failure_count,
        window_started_at=record.window_started_at,
        last_failure_at=record.last_failure_at if record.last_failure_at is not None else record.disabled_at,
        disabled_at=record.disabled_at,
        disabled_until=record.disabled_until,
        last_error=record.last_error,
    )


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
        reason="auto",
        disabled_at=state.disabled_at,
        disabled_until=state.disabled_until,
        failure_count=state.failure_count,
        window_started_at=state.window_started_at,
        last_error=state.last_error,
        last_failure_at=state.last_failure_at,
    )


def disabled_event(pair: PairKey, t: DisableTransition) -> Event:
    """The `disabled` audit event of an automatic disable."""
    vendor, model = pair
    return Event(
        kind="disabled",
        at=t.disabled_at,
        vendor=vendor,
        model=model,
        reason="auto",
        disabled_at=t.disabled_at,
        disabled_until=t.disabled_until,
        failure_count=t.failure_count,
        window_started_at=t.window_started_at,
        settings=settings_summary(t.settings),
        last_error=t.last_error,
        last_failure_at=t.last_failure_at,
    )


def enabled_event(
    pair: PairKey,
    *,
    at: float,
    reason: str,
    cause: str,
    disabled_at: float | None,
    disabled_until: float | None,
    actor: str | None = None,
) -> Event:
    """The `enabled` audit event ending a disable; `reason` names which one (auto | manual)."""
    vendor, model = pair
    return Event(
        kind="enabled",
        at=at,
        vendor=vendor,
        model=model,
        reason=reason,
        cause=cause,
        disabled_at=disabled_at,
        disabled_until=disabled_until,
        actor=actor,
    )
