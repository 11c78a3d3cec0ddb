"""One word for where a pair stands, for the management API, `cliproxy status` and the metrics.

Pure: the caller builds a `PairView` from what it reports (the committed rows, the config) and
passes the clock in. Issue 13: `enabled`, `disabled`, `half-open`, `probing`, `switched-off` here;
other parts add `rate-limited` and `slow-start`.
"""

from __future__ import annotations

from dataclasses import dataclass

from cliproxy.core.config import RecoveryMode

__all__ = ["PairView", "pair_state"]


@dataclass(frozen=True, slots=True)
class PairView:
    """What decides a pair's state: the operator's switches and the (committed) automatic disable."""

    #: The config switches it off (vendor, model, or an unset key).
    switched_off: bool = False
    #: An operator's timed disable is in force.
    manually_disabled: bool = False
    #: The end of the automatic disable row held (in force or not: half-open and probing keep it).
    auto_disabled_until: float | None = None
    #: How the pair comes back once `auto_disabled_until` has passed.
    recovery: RecoveryMode = "timer"


def pair_state(view: PairView, now: float) -> str:
    """`switched-off`, `disabled`, `half-open`, `probing` or `enabled` at `now`."""
    if view.switched_off:
        return "switched-off"
    if view.manually_disabled:
        return "disabled"
    until = view.auto_disabled_until
    if until is not None:
        if now < until:
            return "disabled"
        if view.recovery == "half-open":
            return "half-open"
        if view.recovery == "probe":
            return "probing"
    return "enabled"
