"""The upstream's rule: a pair the upstream asked to be left alone is `rate-limited` until then. Pure,
the clock passed in as `now`.

The third axis that makes a pair unavailable, beside the automatic disable (`cliproxy.core.failures`)
and the operator's timed disable (`cliproxy.core.manual`), held as its current-state row
(`DisabledRecord`, reason `rate-limited`):

- a 429 or 503 that carries a hint (`cliproxy.core.retry_after`) starts it at once, until
  `now + min(hint, max-retry-after-seconds)`; no N failures are needed (the response still counts
  for N-in-T: that is the failure rule's business, applied beside this one);
- a later hint that ends sooner never shortens a deadline already set; one that ends later extends
  it (a new `rate-limited` event, the row rewritten with the same `disabled_at`);
- it ends at its deadline (`enabled`, cause expired), or by an operator's enable (cause manual);
  a late success of a request that was in flight does not end it;
- with `honor-retry-after: false` hints are ignored.

Each step returns one `Decision`. Stamps are rounded to the millisecond (`failures.ms`).
"""

from __future__ import annotations

from dataclasses import replace

from cliproxy.core import failures
from cliproxy.core.config import AutoDisableSettings, PairKey
from cliproxy.core.events import Decision, DisabledRecord, Effect, Event, Outcome
from cliproxy.core.manual import in_force
from cliproxy.core.retry_after import retry_hint

__all__ = ["RATE_LIMITED", "end_by_operator", "expire", "note_outcome", "restore"]

#: The `reason` of a rate-limit's row and events, and the kind of the event that starts or extends one.
RATE_LIMITED = "rate-limited"


def note_outcome(
    pair: PairKey, held: DisabledRecord | None, outcome: Outcome, settings: AutoDisableSettings, now: float
) -> Decision[DisabledRecord | None]:
    """Read the hint an attempt's answer carries and start or extend the rate limit it asks for.

    A rate limit whose time has passed is ended first (an `expired` effect), so up to two effects come back.
    """
    if not settings.honor_retry_after or not outcome.retry_headers or outcome.error is None:
        return Decision(held)
    hint = retry_hint(outcome.error.status, outcome.retry_headers, now)
    if hint is None:
        return Decision(held)
    ended: tuple[Effect, ...] = ()
    if held is not None and not in_force(held, now):
        ended, held = (_ended(pair, held, now, cause="expired"),), None
    clamped = min(hint.seconds, settings.max_retry_after_seconds)
    until = failures.ms(now + clamped)
    if held is not None and held.disabled_until is not None and held.disabled_until >= until:
        return Decision(held, ended)  # a shorter hint never shortens it
    error = outcome.error
    if held is None:
        record = DisabledRecord(
            vendor=pair[0], model=pair[1], reason=RATE_LIMITED, disabled_at=now, disabled_until=until, last_error=error
        )
    else:
        record = replace(held, disabled_until=until, last_error=error)
    event = Event(
        kind=RATE_LIMITED,
        at=now,
        vendor=pair[0],
        model=pair[1],
        reason=RATE_LIMITED,
        disabled_at=record.disabled_at,
        disabled_until=until,
        settings={"honor_retry_after": True, "max_retry_after_seconds": settings.max_retry_after_seconds},
        last_error=error,
        detail={
            "retry_after_seconds": round(hint.seconds, 3),
            "header": hint.header,
            "clamped": hint.seconds > settings.max_retry_after_seconds,
            "extended": held is not None,
        },
    )
    return Decision(record, (*ended, Effect(event, set_disabled=record)))


def expire(pair: PairKey, held: DisabledRecord | None, now: float) -> Decision[DisabledRecord | None]:
    """End a rate limit whose time has come: an `enabled` event (cause expired) clearing its row."""
    if held is None or in_force(held, now):
        return Decision(held)
    return Decision(None, (_ended(pair, held, now, cause="expired"),))


def end_by_operator(pair: PairKey, held: DisabledRecord | None, now: float, actor: str) -> Decision[DisabledRecord | None]:
    """An operator's enable: a rate limit in force ends with cause manual; one already over, with cause expired."""
    if held is None:
        return Decision(None)
    if not in_force(held, now):
        return expire(pair, held, now)
    return Decision(None, (_ended(pair, held, now, cause="manual", actor=actor),))


def restore(record: DisabledRecord, now: float) -> Decision[DisabledRecord | None]:
    """A rate limit read back from the store at start-up, with its original timestamps; one whose time
    passed while cliproxy was down is ended now (cause startup-expired)."""
    if in_force(record, now):
        return Decision(record)
    return Decision(None, (_ended((record.vendor, record.model), record, now, cause="startup-expired"),))


def _ended(pair: PairKey, held: DisabledRecord, now: float, *, cause: str, actor: str | None = None) -> Effect:
    return failures.ended_effect(pair, RATE_LIMITED, held.disabled_at, held.disabled_until, now, cause=cause, actor=actor)
