"""The rate-limit axis of the failure tracker: a 429/503 with a Retry-After hint makes the pair
unavailable until then at once, ended by expiry or by an operator.

`FailureTracker` owns one `RateLimits` and delegates to it; the rules are the pure
`cliproxy.core.rate_limit`. The expiry heap stays the tracker's (one heap for every axis): each
limit started here is handed to it through `on_deadline`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from cliproxy.core import manual, rate_limit
from cliproxy.core.config import AutoDisableSettings, PairKey
from cliproxy.core.events import Decision, DisabledRecord, Effect, Outcome

__all__ = ["RateLimits"]


class RateLimits:
    """The pairs rate-limited by their upstream (reason `rate-limited`), in memory."""

    def __init__(
        self,
        *,
        settings_for: Callable[[PairKey], AutoDisableSettings | None],
        now: Callable[[], float],
        carry_out: Callable[[tuple[Effect, ...]], None],
        on_deadline: Callable[[PairKey, float], None],
    ) -> None:
        self._settings_for = settings_for
        self._now = now
        self._carry_out = carry_out
        self._on_deadline = on_deadline
        self._held: dict[PairKey, DisabledRecord] = {}

    def note_outcome(self, pair: PairKey, outcome: Outcome) -> None:
        """An answer carrying a Retry-After hint: the pair is limited until then (pairs not in the config are ignored)."""
        settings = self._settings_for(pair)
        if settings is not None:
            self.apply(pair, rate_limit.note_outcome(pair, self._held.get(pair), outcome, settings, self._now()))

    def held(self, pair: PairKey) -> DisabledRecord | None:
        """The pair's limit as held in memory, in force or not (the sweep may not have ended it yet)."""
        return self._held.get(pair)

    def in_force(self, pair: PairKey, now: float) -> DisabledRecord | None:
        """The pair's limit while it is in force at `now`, or None."""
        record = self._held.get(pair)
        if record is None or not manual.in_force(record, now):
            return None
        return record

    def all_in_force(self, now: float) -> Iterator[DisabledRecord]:
        """Every limit in force at `now`."""
        return (r for r in self._held.values() if manual.in_force(r, now))

    def end_by_operator(self, pair: PairKey, now: float, actor: str) -> Decision[DisabledRecord | None]:
        """The decision ending the pair's limit by an operator (applied by the caller with `apply`, in its order)."""
        return rate_limit.end_by_operator(pair, self._held.get(pair), now, actor)

    def expire(self, pair: PairKey, now: float) -> int:
        """End the pair's limit when it is over; returns how many events that wrote."""
        decision = rate_limit.expire(pair, self._held.get(pair), now)
        self.apply(pair, decision)
        return len(decision.effects)

    def restore(self, record: DisabledRecord, now: float) -> None:
        """A committed `rate-limited` row read back at start-up."""
        self.apply((record.vendor, record.model), rate_limit.restore(record, now))

    def apply(self, pair: PairKey, decision: Decision[DisabledRecord | None]) -> None:
        """Memory first (the limit, and the deadline of one it starts), then the effects."""
        old, new = self._held.get(pair), decision.state
        if new is None:
            self._held.pop(pair, None)
        elif new is not old:
            self._held[pair] = new
            if new.disabled_until is not None:
                self._on_deadline(pair, new.disabled_until)
        self._carry_out(decision.effects)
