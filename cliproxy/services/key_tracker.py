"""The key scope (issue 14) of the failure tracker: which of each vendor's upstream keys are out of
the rotation, and until when.

`FailureTracker` owns one `KeyTracker` and delegates its key methods to it; the rules are the pure
`cliproxy.core.key_scope`. Like the tracker, memory is authoritative for routing (`key_usable`,
`credentials_out` are synchronous and O(1) while some key is in) and reports read the journal's
committed rows (`committed_key`).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable

from cliproxy.core import key_scope
from cliproxy.core.config import AutoDisableSettings, PairKey
from cliproxy.core.events import Decision, Effect, KeyId, KeyRecord, Outcome
from cliproxy.core.key_scope import KeyState
from cliproxy.core.routing import RoutingTable
from cliproxy.services.journal import Journal

__all__ = ["KeyTracker"]


class KeyTracker:
    """Each vendor's keys held out of the rotation, the count of those out and the heap of their ends."""

    def __init__(
        self,
        journal: Journal,
        *,
        settings_for: Callable[[PairKey], AutoDisableSettings | None],
        clock: Callable[[], float],
        now: Callable[[], float],
        carry_out: Callable[[tuple[Effect, ...]], None],
    ) -> None:
        self._journal = journal
        self._settings_for = settings_for
        self._clock = clock
        self._now = now
        self._carry_out = carry_out
        # each vendor's keys (index in api-key-entries -> hash of the value) and models, set by
        # `update_keys`; the keys held (out, or back at a backoff level), how many of each vendor's
        # are out (an upper bound: one over by the clock counts until the sweep), and the heap of
        # their ends (until, vendor, index).
        self._key_hashes: dict[str, dict[int, str]] = {}
        self._vendor_models: dict[str, tuple[str, ...]] = {}
        self._keys: dict[KeyId, KeyState] = {}
        self._keys_out: dict[str, int] = {}
        self._key_deadlines: list[tuple[float, str, int]] = []

    def update_keys(self, table: RoutingTable) -> None:
        """Learn each vendor's keys (index and hash of the value) and models from a (re)loaded config.

        Run before `restore` (which matches rows against it) and on each reload, where a key held
        for an index whose value changed (replaced, or the list reordered) or that is gone is let go
        (`key-enabled`, cause key-changed): the key now there was never refused. O(keys) per reload.
        """
        self._key_hashes = {vendor: dict(zip(rotation.indexes, rotation.hashes)) for vendor, rotation in table.keys.items()}
        models: dict[str, list[str]] = {}
        for vendor, model in table.pairs:
            models.setdefault(vendor, []).append(model)
        self._vendor_models = {vendor: tuple(names) for vendor, names in models.items()}
        now = self._now()
        for key, state in list(self._keys.items()):
            current = self._key_hashes.get(key[0], {}).get(key[1])
            self._apply(key, key_scope.forget_changed(state, current, now))

    def key_usable(self, vendor: str, index: int) -> bool:
        """False while the vendor's key at `index` is out of the rotation; O(1), by the clock."""
        return not key_scope.is_out(self._keys.get((vendor, index)), self._clock())

    def record_key_failure(self, pair: PairKey, index: int, outcome: Outcome) -> bool:
        """An answer of `key-scope-statuses` to the vendor's key at `index`: the key goes out of the
        rotation for the pair's disable duration (with backoff), no pair is counted. The last key of
        a vendor to go out writes the one event (reason `credentials`) for all its pairs. False
        when the pair or the key is not in the config (then the outcome counts as usual)."""
        settings = self._settings_for(pair)
        vendor = pair[0]
        hash_ = self._key_hashes.get(vendor, {}).get(index)
        if settings is None or hash_ is None:
            return False
        key = (vendor, index)
        left = sum(1 for other in self._key_hashes[vendor] if other != index and self.key_usable(vendor, other))
        decision = key_scope.disable(
            key,
            hash_,
            self._keys.get(key),
            outcome.error,
            settings,
            self._now(),
            keys_left=left,
            models=self._vendor_models.get(vendor, ()),
        )
        self._apply(key, decision)
        return True

    def credentials_out(self, vendor: str) -> bool:
        """True while every key of a vendor that has keys is out: all its pairs are unavailable
        (reason `credentials`). O(1) while some key is in; O(keys) only when all may be out."""
        hashes = self._key_hashes.get(vendor)
        if not hashes or self._keys_out.get(vendor, 0) < len(hashes):
            return False
        return not any(self.key_usable(vendor, index) for index in hashes)

    def first_key_back(self, vendor: str, now: float) -> float:
        """Seconds until the first of the vendor's keys held out comes back (0.0 when none is held)."""
        ends = [s.record.disabled_until for (v, _), s in self._keys.items() if v == vendor and s.record is not None]
        return max(0.0, min(ends) - now) if ends else 0.0

    async def enable_key(self, vendor: str, index: int, actor: str) -> bool:
        """An operator puts the key back in the rotation now (`key-enabled`, cause manual). True when it was out."""
        key = (vendor, index)
        decision = key_scope.end_by_operator(self._keys.get(key), self._now(), actor)
        cleared = any(e.event.cause == "manual" for e in decision.effects)
        self._apply(key, decision)
        return cleared

    def keys_of(self, vendor: str) -> dict[int, str]:
        """The vendor's keys with a value: index in `api-key-entries` -> hash of the value."""
        return dict(self._key_hashes.get(vendor, {}))

    def committed_key(self, vendor: str, index: int) -> KeyRecord | None:
        """The key's time out as committed to the store while it is in force (what reports show), or None."""
        record = self._journal.committed_key((vendor, index))
        if record is None or self._clock() >= record.disabled_until:
            return None
        if record.key_hash != self._key_hashes.get(vendor, {}).get(index):
            return None
        return record

    def key_vendors(self) -> list[str]:
        """The vendors that have keys, sorted."""
        return sorted(v for v, hashes in self._key_hashes.items() if hashes)

    def restore(self, now: float) -> None:
        """Take back the keys the journal holds as committed (at start-up, after `update_keys`)."""
        for key_record in self._journal.committed_keys():
            current = self._key_hashes.get(key_record.vendor, {}).get(key_record.index)
            self._apply(key_record.key, key_scope.restore(key_record, current, now))

    def expire_due(self, now: float) -> int:
        """Put back every key whose time out is over; pops the heap, so O(expired). Returns the events."""
        count = 0
        while self._key_deadlines and self._key_deadlines[0][0] <= now:
            until, vendor, index = heapq.heappop(self._key_deadlines)
            state = self._keys.get((vendor, index))
            if state is not None and state.record is not None and state.record.disabled_until == until:
                decision = key_scope.expire(state, now)
                count += len(decision.effects)
                self._apply((vendor, index), decision)
        return count

    def _apply(self, key: KeyId, decision: Decision[KeyState] | Decision[KeyState | None]) -> None:
        """Memory first (the key's state, its vendor's count of keys out, the deadline), then the effects."""
        old, new = self._keys.get(key), decision.state
        was_out = old is not None and old.record is not None
        is_out = new is not None and new.record is not None
        if new is None:
            self._keys.pop(key, None)
        else:
            self._keys[key] = new
        if was_out != is_out:
            self._keys_out[key[0]] = self._keys_out.get(key[0], 0) + (1 if is_out else -1)
        if new is not None and new.record is not None and (old is None or old.record is not new.record):
            heapq.heappush(self._key_deadlines, (new.record.disabled_until, key[0], key[1]))
        self._carry_out(decision.effects)
