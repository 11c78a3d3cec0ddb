"""Slow start: a pair re-enabled with `slow-start-seconds` set gets its share of traffic back gradually.

`FailureTracker` owns one `SlowStarts` and delegates to it. When each recently re-enabled pair came
back (the `at` of its last `enabled` event) is held twice: as applied in memory (routing's weight)
and as committed to the store (what reports show); only pairs with slow start on are held. The
start is persisted with the event, so a restart reads it back from the history (`restore`).
"""

from __future__ import annotations

from collections.abc import Callable

from cliproxy.core import failures
from cliproxy.core.config import AutoDisableSettings, PairKey
from cliproxy.core.events import Event
from cliproxy.core.failures import PairState
from cliproxy.core.routing import slow_start_weight
from cliproxy.services.journal import Journal

__all__ = ["SlowStarts"]


class SlowStarts:
    """When each slow-starting pair came back, in memory and as committed."""

    def __init__(
        self,
        journal: Journal,
        *,
        settings_for: Callable[[PairKey], AutoDisableSettings | None],
        clock: Callable[[], float],
    ) -> None:
        self._journal = journal
        self._settings_for = settings_for
        self._clock = clock
        self._reenabled_at: dict[PairKey, float] = {}
        self._committed_reenabled_at: dict[PairKey, float] = {}
        journal.committed_listeners.append(self.note_committed)

    def weight(self, pair: PairKey, state: PairState | None) -> float:
        """The pair's weight in its priority tier: 1.0, or less while it slow-starts after a re-enable. O(1).

        With slow start on, an auto-disabled pair (`state`) weighs 0 (it is skipped anyway: its turns
        go to its peers), and one whose disable is over by the clock but not yet recorded by the
        sweep starts from the disable's end.
        """
        settings = self._settings_for(pair)
        if settings is None or settings.slow_start_seconds <= 0:
            return 1.0
        now = self._clock()
        reenabled_at = self._reenabled_at.get(pair)
        if state is not None and state.disabled_until is not None:
            if now < state.disabled_until:
                return 0.0
            reenabled_at = state.disabled_until
        if reenabled_at is None:
            return 1.0
        return slow_start_weight(reenabled_at, now, settings.slow_start_seconds)

    def until(self, pair: PairKey) -> float | None:
        """When the pair's slow start ends, as committed (what reports show); None when it is not slow-starting."""
        reenabled_at = self._committed_reenabled_at.get(pair)
        settings = self._settings_for(pair)
        if reenabled_at is None or settings is None or settings.slow_start_seconds <= 0:
            return None
        until = failures.ms(reenabled_at + settings.slow_start_seconds)
        return until if self._clock() < until else None

    def committed_pairs(self) -> list[PairKey]:
        """The pairs slow-starting now, as committed (what reports show), sorted. O(slow starts held)."""
        return sorted(pair for pair in self._committed_reenabled_at if self.until(pair) is not None)

    def note_applied(self, event: Event) -> None:
        """An event just applied in memory: an `enabled` one starts the pair's slow start for routing."""
        self._note(event, self._reenabled_at)

    def note_committed(self, event: Event) -> None:
        """An event the journal has committed: an `enabled` one starts the slow start reports show."""
        self._note(event, self._committed_reenabled_at)

    def drop_over(self, now: float) -> None:
        """Forget the slow starts that are over (or whose pair is no longer configured)."""
        for held in (self._reenabled_at, self._committed_reenabled_at):
            for pair in [p for p, at in held.items() if self._over(p, at, now)]:
                del held[pair]

    async def restore(self, longest: float, now: float) -> None:
        """The slow starts still running: the last `enabled` event of each pair within its
        `slow-start-seconds` (`longest`: the longest configured), read back from the history with its original time."""
        if longest <= 0:
            return
        for event in await self._journal.events_since("enabled", now - longest):
            self.note_applied(event)
            self.note_committed(event)

    def _over(self, pair: PairKey, reenabled_at: float, now: float) -> bool:
        settings = self._settings_for(pair)
        return settings is None or now >= reenabled_at + settings.slow_start_seconds

    def _note(self, event: Event, held: dict[PairKey, float]) -> None:
        """An `enabled` event starts the pair's slow start (when it has one): its `at` is the start,
        persisted with the event, so a restart finds it there."""
        if event.kind != "enabled" or event.vendor is None or event.model is None:
            return
        pair = (event.vendor, event.model)
        settings = self._settings_for(pair)
        if settings is not None and settings.slow_start_seconds > 0:
            held[pair] = max(event.at, held.get(pair, event.at))
