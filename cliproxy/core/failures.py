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

Recovery (issue 13, part B), all off by default (`backoff-multiplier: 1`, `recovery: timer`):

- backoff: the pair holds a `disable_level` k, the number of its disables in a row. A trip disables
  it for `disable_duration_seconds * backoff_multiplier ** (k - 1)`, capped at
  `max_disable_duration_seconds` (never below the base duration). Once the pair is back in
  service (`level_since`), k drops by one for every `disable_duration_seconds` it serves without a
  trip; the decay is computed from the clock (`current_level`), so nothing is written as it decays;
- `recovery: half-open`: when the disable's time has come the pair is not re-enabled: it is
  half-open (the shell admits at most `half_open_requests` requests at a time). The first success
  ends the disable (cause `half-open-success`); a countable failure disables it again at the next
  level (`trigger: half-open`);
- `recovery: probe`: when the disable's time has come the pair is probing: no client request goes
  to it, the shell sends one probe, and `probe_succeeded` / `probe_failed` end it (cause
  `probe-success`) or disable it again at the next level (a `probe-failed` event, then `disabled`
  with `trigger: probe`).

Half-open and probing are not stored as such: they are "the auto row's time has passed and the
recovery mode is not timer", so the auto row stays (with its original timestamps) until the
recovery resolves, and a restart finds the pair half-open or probing again.

Each step returns one `Decision`: the pair's new state and its effects (the `disabled` /
`enabled` event to record, the current-state row to write or clear), so the shell only applies it.

Stamps this module computes (`disabled_until`) are rounded to the millisecond, the precision the
store keeps, so what is held in memory equals what is persisted; the shell passes `now` already
rounded. Nothing here imports asyncio, time, aiohttp or SQL.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from cliproxy.core.config import AutoDisableSettings, PairKey
from cliproxy.core.events import BackoffRecord, Decision, DisabledRecord, Effect, ErrorInfo, Event, Outcome

__all__ = [
    "AUTO",
    "EMPTY",
    "PairState",
    "apply_outcome",
    "awaiting_recovery",
    "current_level",
    "disable_seconds",
    "probe_failed",
    "probe_succeeded",
    "recovery_phase",
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
    "restore_level",
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
    #: Disables in a row (0: none); while disabled or recovering, the level of the disable in force.
    disable_level: int = 0
    #: When the pair went back into service at `disable_level` (its decay runs from here); None while
    #: disabled or recovering, and when the level is 0.
    level_since: float | None = None


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


def as_of(state: PairState, now: float, settings: AutoDisableSettings | None = None) -> PairState:
    """The state as it stands at `now`: a disable whose time has come shows as ended (count reset),
    unless `settings` recover it by half-open or probe (then it is still waiting for its verdict)."""
    if state.disabled_until is None or now < state.disabled_until:
        return state
    if settings is not None and settings.recovery != "timer":
        return state
    return _back_in_service(state, now)


def awaiting_recovery(state: PairState, settings: AutoDisableSettings, now: float) -> bool:
    """True when the disable's time has come but the pair waits for a half-open request or a probe."""
    return settings.recovery != "timer" and state.disabled_until is not None and now >= state.disabled_until


def recovery_phase(state: PairState, settings: AutoDisableSettings, now: float) -> str | None:
    """`half-open` or `probing` while `awaiting_recovery`, else None."""
    if not awaiting_recovery(state, settings, now):
        return None
    return "half-open" if settings.recovery == "half-open" else "probing"


def current_level(state: PairState, settings: AutoDisableSettings, now: float) -> int:
    """The backoff level at `now`: the level in force while disabled or recovering; once back in
    service, one less for every `disable_duration_seconds` served since `level_since`."""
    if state.disabled_until is not None or state.level_since is None or state.disable_level == 0:
        return state.disable_level
    served = max(0.0, now - state.level_since)
    return max(0, state.disable_level - int(served // settings.disable_duration_seconds))


def disable_seconds(level: int, settings: AutoDisableSettings) -> float:
    """How long the `level`-th disable in a row lasts: base x multiplier^(level-1), capped (never below the base)."""
    base = settings.disable_duration_seconds
    if settings.backoff_multiplier == 1 or level <= 1:
        return base
    cap = max(base, settings.max_disable_duration_seconds)
    try:
        return min(cap, base * settings.backoff_multiplier ** (level - 1))
    except OverflowError:
        return cap


def expire(pair: PairKey, state: PairState, now: float, settings: AutoDisableSettings | None = None) -> Decision[PairState]:
    """End a disable whose time has come (`disabled_until <= now`), with the failure count reset:
    an `enabled` event (cause expired) that clears the row. Nothing to do otherwise, nor for a pair
    whose `settings` recover it by half-open or probe (its recovery ends it)."""
    if state.disabled_until is None or now < state.disabled_until:
        return Decision(state)
    if settings is not None and settings.recovery != "timer":
        return Decision(state)
    # back in service since its end, not since the sweep noticed: the decay runs from there
    return Decision(
        _back_in_service(state, state.disabled_until),
        (_ended(pair, state, now, cause="expired", back_since=state.disabled_until),),
    )


def probe_succeeded(pair: PairKey, state: PairState, settings: AutoDisableSettings, now: float) -> Decision[PairState]:
    """The probe of a probing pair got a 2xx: the disable ends (cause probe-success)."""
    if not awaiting_recovery(state, settings, now):
        return Decision(state)  # ended meanwhile (an operator, a reload to timer): nothing to do
    return Decision(_back_in_service(state, now), (_ended(pair, state, now, cause="probe-success"),))


def probe_failed(
    pair: PairKey, state: PairState, settings: AutoDisableSettings, error: ErrorInfo, now: float
) -> Decision[PairState]:
    """The probe of a probing pair failed: a `probe-failed` event with the error, and the pair
    disabled again at the next level (`trigger: probe`)."""
    if not awaiting_recovery(state, settings, now):
        return Decision(state)
    failed = Event(kind="probe-failed", at=now, vendor=pair[0], model=pair[1], reason=AUTO, last_error=error)
    state = replace(state, last_error=error, last_failure_at=now)
    tripped = _trip(pair, state, settings, now, state.disable_level + 1, trigger="probe")
    return Decision(tripped.state, (Effect(failed), *tripped.effects))


def end_by_operator(pair: PairKey, state: PairState | None, now: float, actor: str) -> Decision[PairState | None]:
    """An operator's enable: zero failures, and the disable in force (if any) ended with cause manual.

    Call `expire` first: a disable whose time had passed is recorded as expired, not as ended here.
    """
    if state is None:
        return Decision(None)
    if state.disabled_until is None:
        return Decision(reset(state))
    return Decision(_back_in_service(state, now), (_ended(pair, state, now, cause="manual", actor=actor),))


def reset(state: PairState) -> PairState:
    """Zero failures, no window, not disabled; the last error, last failure time and backoff level are kept."""
    if state.failure_count == 0 and state.window_started_at is None and state.disabled_until is None:
        return state
    return replace(state, failure_count=0, window_started_at=None, disabled_at=None, disabled_until=None)


def _back_in_service(state: PairState, now: float) -> PairState:
    """`reset`, and the backoff level starts to decay from `now` if a disable just ended."""
    if state.disabled_until is not None and state.disable_level > 0:
        state = replace(state, level_since=now)
    return reset(state)


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
    if awaiting_recovery(state, settings, now):
        return _recovery_outcome(pair, state, outcome, settings, now)
    ended: tuple[Effect, ...] = ()
    if state.disabled_until is not None:  # over (not disabled at `now`), though the sweep has not said so yet
        ended = (_ended(pair, state, now, cause="expired", back_since=state.disabled_until),)
        state = _back_in_service(state, state.disabled_until)
    if outcome.kind == "success":
        return Decision(reset(state), ended)
    state = _count_failure(state, outcome, settings, now)
    if settings.enabled and state.failure_count >= settings.failure_threshold:
        tripped = _trip(pair, state, settings, now, current_level(state, settings, now) + 1)
        return Decision(tripped.state, (*ended, *tripped.effects))
    return Decision(state, ended)


def _recovery_outcome(
    pair: PairKey, state: PairState, outcome: Outcome, settings: AutoDisableSettings, now: float
) -> Decision[PairState]:
    """A client request's outcome while the pair waits for its recovery verdict."""
    if settings.recovery != "half-open":
        return Decision(state)  # probing: no client request goes there; a late one from before is ignored
    if outcome.kind == "success":
        return Decision(_back_in_service(state, now), (_ended(pair, state, now, cause="half-open-success"),))
    state = _count_failure(replace(state, failure_count=0, window_started_at=None), outcome, settings, now)
    return _trip(pair, state, settings, now, state.disable_level + 1, trigger="half-open")


def _trip(
    pair: PairKey, state: PairState, settings: AutoDisableSettings, now: float, level: int, *, trigger: str | None = None
) -> Decision[PairState]:
    """Disable the pair from `now` at backoff `level`: the `disabled` event and its row.

    Under the spec's defaults no level is kept (it stays 0), so rows and events are exactly the spec's.
    """
    if not _recovery_configured(settings):
        level = 0
    state = replace(
        state,
        disabled_at=now,
        disabled_until=ms(now + disable_seconds(level, settings)),
        disable_level=level,
        level_since=None,
    )
    return Decision(state, (_tripped(pair, state, settings, trigger),))


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


def _tripped(pair: PairKey, state: PairState, settings: AutoDisableSettings, trigger: str | None = None) -> Effect:
    """The `disabled` event and the row of the disable `state` has just entered.

    With recovery settings in use the event's `detail` says the level (and what tripped it when it
    was a half-open request or a probe); with the spec's defaults the event is exactly the spec's.
    """
    record = auto_record(pair, state)
    assert record is not None and state.disabled_at is not None
    detail: dict[str, object] | None = None
    if _recovery_configured(settings) or trigger is not None:
        detail = {"disable_level": state.disable_level}
        if trigger is not None:
            detail["trigger"] = trigger
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
        detail=detail,
    )
    return Effect(event, set_disabled=record)


def _recovery_configured(settings: AutoDisableSettings) -> bool:
    return settings.backoff_multiplier != 1 or settings.recovery != "timer"


def _ended(
    pair: PairKey, state: PairState, now: float, *, cause: str, actor: str | None = None, back_since: float | None = None
) -> Effect:
    """The `enabled` event ending the disable `state` holds, clearing its row, and keeping its backoff
    level as of `back_since` (default `now`): when the pair went back into service."""
    effect = ended_effect(pair, AUTO, state.disabled_at, state.disabled_until, now, cause=cause, actor=actor)
    if state.disable_level > 0:
        since = now if back_since is None else back_since
        effect = replace(effect, set_backoff=BackoffRecord(pair[0], pair[1], state.disable_level, since))
    return effect


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


def restore(record: DisabledRecord, now: float, settings: AutoDisableSettings | None = None) -> Decision[PairState | None]:
    """An auto-disable read back from the store at start-up, with its original timestamps and level.

    One whose time passed while cliproxy was down is ended now (cause startup-expired) and nothing
    is held for the pair, unless its `settings` recover it by half-open or probe: then it is
    half-open or probing again, as it was.
    """
    assert record.disabled_until is not None, "an auto-disable row always has an end"
    recovers = settings is not None and settings.recovery != "timer"
    if record.disabled_until <= now and not recovers:
        pair = (record.vendor, record.model)
        ended = ended_effect(pair, AUTO, record.disabled_at, record.disabled_until, now, cause="startup-expired")
        if record.disable_level == 0:
            return Decision(None, (ended,))
        # back in service since its original end: the level decays from then
        since = record.disabled_until
        ended = replace(ended, set_backoff=BackoffRecord(pair[0], pair[1], record.disable_level, since))
        return Decision(PairState(disable_level=record.disable_level, level_since=since), (ended,))
    state = PairState(
        failure_count=record.failure_count,
        window_started_at=record.window_started_at,
        last_failure_at=record.last_failure_at if record.last_failure_at is not None else record.disabled_at,
        disabled_at=record.disabled_at,
        disabled_until=record.disabled_until,
        last_error=record.last_error,
        disable_level=record.disable_level,
    )
    return Decision(state)


def restore_level(level: int, level_since: float, state: PairState | None) -> PairState:
    """A backoff level read back from the store at start-up (`level_since`: when it began to decay),
    for a pair that was back in service when cliproxy stopped."""
    base = state if state is not None else EMPTY
    if base.disabled_until is not None:
        return base  # a disable in force carries its own level
    return replace(base, disable_level=level, level_since=level_since)


def is_idle(state: PairState, now: float, idle_seconds: float, settings: AutoDisableSettings | None = None) -> bool:
    """True when the record can be forgotten: not disabled, no failure for `idle_seconds`, and (with
    `settings`) its backoff level decayed to 0."""
    if state.disabled_until is not None:
        return False
    if settings is not None and current_level(state, settings, now) > 0:
        return False
    return state.last_failure_at is None or now - state.last_failure_at >= idle_seconds


def settings_summary(settings: AutoDisableSettings) -> dict[str, float | int | str]:
    """The rule in force, as recorded on a `disabled` event (the recovery settings when they are in use)."""
    summary: dict[str, float | int | str] = {
        "failure_threshold": settings.failure_threshold,
        "time_window_seconds": settings.time_window_seconds,
        "disable_duration_seconds": settings.disable_duration_seconds,
    }
    if _recovery_configured(settings):
        summary["backoff_multiplier"] = settings.backoff_multiplier
        summary["max_disable_duration_seconds"] = settings.max_disable_duration_seconds
        summary["recovery"] = settings.recovery
    return summary


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
        disable_level=state.disable_level,
    )
