"""The operator's rule: timed manual disables and the operator's enable, pure, the clock passed in as `now`.

A timed manual disable is the second axis that makes a pair unavailable, beside the automatic one
(`cliproxy.core.failures`): held as its current-state row (`DisabledRecord`, reason manual), ended by
its own expiry or by an operator's enable, never by an automatic re-enable. The permanent operator
switch lives in the config file and is not handled here; a disable without a duration is only
recorded as an event.

Each step returns one `Decision`: the new state and its effects (the event to record, the row to
write or clear). Stamps are rounded to the millisecond (`failures.ms`), the precision the store keeps.
"""

from __future__ import annotations

from dataclasses import dataclass

from cliproxy.core import failures
from cliproxy.core.config import AutoDisableSettings, PairKey
from cliproxy.core.events import Decision, DisabledRecord, Effect, Event
from cliproxy.core.failures import PairState

__all__ = ["MANUAL", "Axes", "cleared", "disable", "enable", "expire", "in_force", "restore"]

#: The `reason` of an operator's disable's row and events.
MANUAL = "manual"


@dataclass(frozen=True, slots=True)
class Axes:
    """Both of a pair's axes: the automatic disable's state and the timed manual disable (None: none held)."""

    auto: PairState | None
    timed: DisabledRecord | None


def in_force(record: DisabledRecord, now: float) -> bool:
    """True while a disable row holds: no end, or `now` before its end."""
    return record.disabled_until is None or now < record.disabled_until


def disable(
    pair: PairKey, timed: DisabledRecord | None, duration_seconds: float | None, actor: str, now: float
) -> Decision[DisabledRecord | None]:
    """An operator's disable at `now`: with a duration, a timed disable (it replaces the one held);
    without one only a `manual-disable` event (the permanent switch is the config's).

    A duration that is not > 0 raises ValueError.
    """
    if duration_seconds is not None and not duration_seconds > 0:
        raise ValueError(f"duration_seconds must be > 0 or None, got {duration_seconds!r}")
    vendor, model = pair
    if duration_seconds is None:
        return Decision(
            timed, (Effect(Event(kind="manual-disable", at=now, vendor=vendor, model=model, reason=MANUAL, actor=actor)),)
        )
    until = failures.ms(now + duration_seconds)
    record = DisabledRecord(vendor=vendor, model=model, reason=MANUAL, disabled_at=now, disabled_until=until, actor=actor)
    event = Event(
        kind="manual-disable",
        at=now,
        vendor=vendor,
        model=model,
        reason=MANUAL,
        disabled_at=now,
        disabled_until=until,
        actor=actor,
        detail={"duration_seconds": duration_seconds},
    )
    return Decision(record, (Effect(event, set_disabled=record),))


def expire(pair: PairKey, timed: DisabledRecord | None, now: float) -> Decision[DisabledRecord | None]:
    """End a timed disable whose time has come: an `enabled` event (cause expired) clearing its row."""
    if timed is None or in_force(timed, now):
        return Decision(timed)
    return Decision(None, (_ended(pair, timed, now, cause="expired"),))


def enable(
    pair: PairKey,
    axes: Axes,
    actor: str,
    now: float,
    *,
    record_if_nothing_cleared: bool = True,
    settings: AutoDisableSettings | None = None,
) -> Decision[Axes]:
    """An operator's enable at `now`: clear the auto-disable and the timed manual disable, reset the count.

    A disable whose time had already passed is recorded as expired first (both axes, auto first);
    then one `enabled` event (cause manual) per disable still in force; or one `manual-enable` event
    when nothing was cleared (not with `record_if_nothing_cleared=False`: the caller records the
    action itself, e.g. as the config write-back that switches the pair back on). With the pair's
    `settings`, a pair that is half-open or probing is still in force: the operator ends it.
    """
    auto_expired = failures.expire(pair, axes.auto, now, settings) if axes.auto is not None else Decision(None)
    timed_expired = expire(pair, axes.timed, now)
    auto_ended = failures.end_by_operator(pair, auto_expired.state, now, actor)
    timed = timed_expired.state
    timed_ended = (_ended(pair, timed, now, cause="manual", actor=actor),) if timed is not None else ()
    effects = (*auto_expired.effects, *timed_expired.effects, *auto_ended.effects, *timed_ended)
    if not auto_ended.effects and not timed_ended and record_if_nothing_cleared:
        vendor, model = pair
        effects = (*effects, Effect(Event(kind="manual-enable", at=now, vendor=vendor, model=model, actor=actor)))
    return Decision(Axes(auto_ended.state, None), effects)


def cleared(effects: tuple[Effect, ...]) -> bool:
    """True when `enable`'s effects end a disable that was in force (not one that had only expired)."""
    return any(e.event.kind == "enabled" and e.event.cause == "manual" for e in effects)


def restore(record: DisabledRecord, now: float) -> Decision[DisabledRecord | None]:
    """A timed disable read back from the store at start-up; one whose time passed while cliproxy
    was down is ended now (cause startup-expired)."""
    if in_force(record, now):
        return Decision(record)
    return Decision(None, (_ended((record.vendor, record.model), record, now, cause="startup-expired"),))


def _ended(pair: PairKey, record: DisabledRecord, now: float, *, cause: str, actor: str | None = None) -> Effect:
    return failures.ended_effect(pair, MANUAL, record.disabled_at, record.disabled_until, now, cause=cause, actor=actor)
