"""A pair's recovery state in one word: the `state` the status API, `cliproxy status --json`
(`recovery_state`) and the metrics show. Pure, the clock passed in as `now`.

By precedence, the first that holds is the state:

    switched-off   the config switches it off (vendor or model `enabled: false`, or no api key):
                   only an operator brings it back
    disabled       an automatic disable or an operator's timed disable is in force
    half-open      its automatic disable is over and `recovery: half-open` lets a few requests test it
    probing        its automatic disable is over and `recovery: probe` has cliproxy test it first
    rate-limited   the upstream said when to come back (Retry-After and friends) and that time has not come
    slow-start     re-enabled less than `slow-start-seconds` ago: its share of the tier is still ramping up
    enabled        none of the above: routable

"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from cliproxy.core.config import RecoveryMode

__all__ = ["PAIR_STATES", "PairView", "RecoveryState", "pair_state"]

RecoveryState = Literal["enabled", "disabled", "rate-limited", "half-open", "probing", "slow-start", "switched-off"]

#: Every state the status API may show (its schema's enum), whichever rule computes it.
PAIR_STATES: tuple[RecoveryState, ...] = (
    "enabled",
    "disabled",
    "rate-limited",
    "half-open",
    "probing",
    "slow-start",
    "switched-off",
)


@dataclass(frozen=True, slots=True)
class PairView:
    """What decides a pair's state, as committed (times are wall-clock epoch seconds)."""

    #: The config switches the pair off (vendor or model `enabled: false`, or every key empty).
    switched_off: bool = False
    #: A disable is in force, as the caller already judged it (set this or the three fields below).
    disabled: bool = False
    #: End of the automatic disable row held for the pair (in force or not: half-open and probing keep
    #: it until their verdict); None when there is none.
    auto_disabled_until: float | None = None
    #: How the pair comes back once `auto_disabled_until` has passed.
    recovery: RecoveryMode = "timer"
    #: An operator's timed disable is held for the pair.
    manually_disabled: bool = False
    #: Its end (None with `manually_disabled`: until enabled).
    manually_disabled_until: float | None = None
    #: End of the rate limit held for the pair; None when there is none.
    rate_limited_until: float | None = None
    #: When the slow start after the last re-enable ends; None when the pair is not slow-starting.
    slow_start_until: float | None = None


def pair_state(view: PairView, now: float) -> RecoveryState:
    """The pair's state at `now` (see the module docstring for the precedence)."""
    if view.switched_off:
        return "switched-off"
    if view.disabled:
        return "disabled"
    if view.manually_disabled and (view.manually_disabled_until is None or now < view.manually_disabled_until):
        return "disabled"
    until = view.auto_disabled_until
    if until is not None:
        if now < until:
            return "disabled"
        if view.recovery == "half-open":
            return "half-open"
        if view.recovery == "probe":
            return "probing"
    if view.rate_limited_until is not None and now < view.rate_limited_until:
        return "rate-limited"
    if view.slow_start_until is not None and now < view.slow_start_until:
        return "slow-start"
    return "enabled"
