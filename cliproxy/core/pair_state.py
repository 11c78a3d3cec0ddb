"""A pair's recovery state in one word: the `state` the status API, `cliproxy status --json`
(`recovery_state`) and the metrics show. Pure, the clock passed in as `now`.

By precedence, the first that holds is the state:

    switched-off   the config switches it off (vendor or model `enabled: false`, or no api key):
                   only an operator brings it back
    disabled       an automatic disable or an operator's timed disable is in force
    rate-limited   the upstream said when to come back (Retry-After and friends) and that time has not come
    enabled        none of the above: routable

Later parts of issue 13 add `half-open`, `probing` and `slow-start` here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["PAIR_STATES", "RecoveryState", "PairView", "pair_state"]

RecoveryState = Literal["enabled", "disabled", "rate-limited", "switched-off"]

#: Every value `pair_state` returns, in precedence order (for schemas and metrics).
PAIR_STATES: tuple[RecoveryState, ...] = ("switched-off", "disabled", "rate-limited", "enabled")


@dataclass(frozen=True, slots=True)
class PairView:
    """What decides a pair's state, as committed (times are wall-clock epoch seconds)."""

    #: The config switches the pair off (vendor or model `enabled: false`, or every key empty).
    switched_off: bool = False
    #: End of the automatic disable held for the pair; None when there is none.
    auto_disabled_until: float | None = None
    #: An operator's timed disable is held for the pair.
    manually_disabled: bool = False
    #: Its end (None with `manually_disabled`: until enabled).
    manually_disabled_until: float | None = None
    #: End of the rate limit held for the pair; None when there is none.
    rate_limited_until: float | None = None


def pair_state(view: PairView, now: float) -> RecoveryState:
    """The pair's state at `now` (see the module docstring for the precedence)."""
    if view.switched_off:
        return "switched-off"
    if view.auto_disabled_until is not None and now < view.auto_disabled_until:
        return "disabled"
    if view.manually_disabled and (view.manually_disabled_until is None or now < view.manually_disabled_until):
        return "disabled"
    if view.rate_limited_until is not None and now < view.rate_limited_until:
        return "rate-limited"
    return "enabled"
