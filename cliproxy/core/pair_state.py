"""A pair's one-word state, as the status API, `cliproxy status` and the metrics show it. Pure.

Minimal version (issue 13, part C): `switched-off`, `disabled`, `slow-start`, `enabled`. Part A
owns this function and adds `rate-limited`; part B adds `half-open` and `probing`.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PAIR_STATES", "PairView", "pair_state"]

#: Every state the issue names (the status API's enum), whichever part computes it.
PAIR_STATES = ("enabled", "disabled", "rate-limited", "half-open", "probing", "slow-start", "switched-off")


@dataclass(frozen=True, slots=True)
class PairView:
    """What the state of one pair is judged from, all of it as committed."""

    #: The operator's switch in the config (vendor or model off, or its key unset).
    switched_off: bool = False
    #: An automatic or a timed manual disable is in force.
    disabled: bool = False
    #: When the slow start after the last re-enable ends; None when the pair is not slow-starting.
    slow_start_until: float | None = None


def pair_state(view: PairView, now: float) -> str:
    """`switched-off` over `disabled` over `slow-start` over `enabled`."""
    if view.switched_off:
        return "switched-off"
    if view.disabled:
        return "disabled"
    if view.slow_start_until is not None and now < view.slow_start_until:
        return "slow-start"
    return "enabled"
