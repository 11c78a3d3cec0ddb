"""The policies over a trip (issue 13): `enforce: false` (a dry run) and `max-disabled-fraction`. Pure.

The failure rule (`cliproxy.core.failures`) decides that a pair trips; these decide whether the
trip is enforced. A trip that is not enforced becomes a `would-disable` event (with everything the
`disabled` event would have said, and the policy that held it back) and no current-state row: the
pair stays in service and its failure window starts over, so the next one is recorded only after
another `failure-threshold` failures.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from cliproxy.core.events import Decision, Effect
from cliproxy.core.failures import PairState, reset

__all__ = ["DRY_RUN", "MAX_DISABLED_FRACTION", "restrain", "trips", "would_exceed"]

#: The `policy` of a `would-disable` event held back by `enforce: false`.
DRY_RUN = "dry-run"
#: The `policy` of a `would-disable` event held back by `max-disabled-fraction`.
MAX_DISABLED_FRACTION = "max-disabled-fraction"


def trips(decision: Decision[PairState]) -> bool:
    """True when the decision disables the pair (its last effect is a `disabled` event)."""
    return any(effect.event.kind == "disabled" for effect in decision.effects)


def would_exceed(unavailable_others: int, total: int, max_fraction: float) -> bool:
    """True when one more unavailable pair would leave more than `max_fraction` of `total` unavailable."""
    return total > 0 and (unavailable_others + 1) / total > max_fraction


def restrain(decision: Decision[PairState], policy: str, detail: Mapping[str, object] | None = None) -> Decision[PairState]:
    """The trip in `decision`, not enforced: its `disabled` effect becomes a `would-disable` event
    without a row, and the state is the pair's in service with its count reset (last error kept)."""
    effects: list[Effect] = []
    for effect in decision.effects:
        if effect.event.kind != "disabled":
            effects.append(effect)
            continue
        event = replace(effect.event, kind="would-disable", detail={"policy": policy, **(detail or {})})
        effects.append(Effect(event))
    return Decision(reset(decision.state), tuple(effects))
