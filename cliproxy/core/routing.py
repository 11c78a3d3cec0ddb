"""Model name -> ordered candidate pairs. Pure: built once per config load, then O(1) per lookup.

The table maps every client-facing name (an alias, or the upstream name when there is no alias,
and `prefix/alias` for vendors with a prefix) to the enabled pairs serving it, grouped in priority
tiers. A lookup rotates within each tier (round robin) and never looks at vendors that do not
serve the name, so its cost does not grow with the size of the configuration.

Slow start (issue 13): a pair re-enabled less than `slow-start-seconds` ago has a weight below a
healthy peer's 1.0 (`slow_start_weight`, rising linearly from 0.1 to 1.0). While any pair of a tier
weighs less than 1.0, that tier's first choice is made by smooth weighted round robin (nginx's:
deterministic, spreads a small share evenly instead of in bursts); the cost stays O(tier size),
what the plain rotation already costs. With every weight 1.0 the plain rotation is used, unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from itertools import count

from cliproxy.core.config import (
    ApiKeyEntry,
    AutoDisableSettings,
    Config,
    ModelEntry,
    PairKey,
    Timeouts,
    Vendor,
    resolve_auto_disable,
)
from cliproxy.core.key_scope import key_hash
from cliproxy.core.redact import SecretMasker, config_secrets

__all__ = ["Pair", "Route", "RoutingTable", "KeyRotation", "SLOW_START_FLOOR", "SmoothWeights", "slow_start_weight"]

#: A pair just re-enabled gets this fraction of a healthy peer's traffic; it rises to 1.0 over `slow-start-seconds`.
SLOW_START_FLOOR = 0.1


def slow_start_weight(reenabled_at: float | None, now: float, seconds: float) -> float:
    """A pair's weight in its tier, a healthy peer's being 1.0: from 0.1 at the re-enable to 1.0
    `seconds` later, linearly. 1.0 when slow start is off (`seconds` 0) or the pair was not re-enabled."""
    if reenabled_at is None or seconds <= 0:
        return 1.0
    elapsed = now - reenabled_at
    if elapsed >= seconds:
        return 1.0
    if elapsed <= 0:
        return SLOW_START_FLOOR
    return SLOW_START_FLOOR + (1.0 - SLOW_START_FLOOR) * elapsed / seconds


class SmoothWeights:
    """Smooth weighted round robin over one tier (nginx's): each pick adds every pair's weight to its
    running score, takes the highest (the first on a tie) and takes the total back off it.

    Deterministic, and a pair of weight w among peers of 1.0 gets its share spread out, not in a
    burst. The scores are kept only while the tier is weighted: `reset()` when it stops being so,
    so a later slow start begins from zero and not from an old run's leftovers.
    """

    __slots__ = ("_scores", "active")

    def __init__(self, size: int) -> None:
        self._scores = [0.0] * size
        self.active = False

    def pick(self, weights: list[float]) -> int:
        self.active = True
        best = 0
        scores = self._scores
        for i, w in enumerate(weights):
            scores[i] += w
            if scores[i] > scores[best]:
                best = i
        scores[best] -= sum(weights)
        return best

    def reset(self) -> None:
        if self.active:
            self._scores = [0.0] * len(self._scores)
            self.active = False


class KeyRotation:
    """Round robin over a vendor's `api-key-entries` (those with a value), shared by all its pairs.

    Each key keeps its index in `api-key-entries` (what the tracker and the management API call it)
    and its `key_hash`. `next(usable)` skips keys that are out (key scope): it asks `usable` about
    the key whose turn it is, and only when that one is out about the following ones, so a request
    costs one O(1) check while every key is in (O(keys) only while some are out).
    """

    __slots__ = ("entries", "indexes", "hashes", "_turn")

    def __init__(self, entries: tuple[tuple[int, ApiKeyEntry], ...]) -> None:
        self.entries = tuple(entry for _, entry in entries)
        #: Each entry's index in `api-key-entries` (empty values left out of the rotation).
        self.indexes = tuple(index for index, _ in entries)
        self.hashes = tuple(key_hash(entry.api_key) for entry in self.entries)
        #: The position whose turn is next; a pick moves it past the key picked, so a key that is
        #: out hands its turns on evenly instead of doubling the next key's share.
        self._turn = 0

    def next(self, usable: Callable[[int], bool] | None = None, skip: Collection[int] = ()) -> tuple[int, ApiKeyEntry] | None:
        """The next key in turn, as (index in `api-key-entries`, entry): the first from the turn's on
        that is `usable` and not in `skip` (keys this request already tried). None when there are no
        keys, or when `usable` or `skip` rule out every one."""
        size = len(self.entries)
        if not size:
            return None
        start = self._turn % size
        for step in range(size):
            position = (start + step) % size
            index = self.indexes[position]
            if index in skip or (usable is not None and not usable(index)):
                continue
            self._turn = position + 1
            return index, self.entries[position]
        return None


@dataclass(frozen=True, slots=True, eq=False)
class Pair:
    """One vendor and one of its model entries, with everything a request needs precomputed."""

    vendor: Vendor
    model: ModelEntry
    auto_disable: AutoDisableSettings
    timeouts: Timeouts
    keys: KeyRotation
    #: `base-url` without a trailing slash; the client's path after /v1 is appended.
    base_url: str
    proxy_url: str | None
    #: Every secret of the config, not only this vendor's: an upstream may echo a client key a user
    #: pasted into a prompt, or another vendor's key a user was given. One masker for the whole
    #: config (built once per load), so masking an error costs the same with 1 or 1,000 keys.
    secrets: SecretMasker = field(default_factory=SecretMasker)
    #: (vendor name, model name): what the tracker, metrics and traffic know the pair by. Built
    #: once here, not per use (a request asks for it five times or more).
    key: PairKey = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", (self.vendor.name, self.model.name))

    @property
    def enabled_in_config(self) -> bool:
        """Switched on by the operator (vendor and model), and not waiting for an unset key."""
        return self.vendor.routable and self.model.enabled


@dataclass(frozen=True, slots=True)
class Route:
    """The answer to "who serves this name": enabled pairs in priority tiers, and how many are switched off."""

    name: str
    tiers: tuple[tuple[Pair, ...], ...]
    switched_off: int
    counters: tuple[count[int], ...] = field(default=())
    #: The pairs with this name that the config switches off (vendor, model or an unset key):
    #: read only to explain a 503.
    switched_off_pairs: tuple[Pair, ...] = ()
    #: One smooth weighted round robin per tier, used while a pair of the tier slow-starts.
    smooth: tuple[SmoothWeights, ...] = ()
    #: Per tier: does any of its pairs have slow start on? The others never ask for weights (no cost by default).
    weighted: tuple[bool, ...] = ()

    def ordered(self, weight: Callable[[PairKey], float] | None = None) -> list[Pair]:
        """Highest tier first; each tier rotated one step further on every call (round robin).

        With `weight` (a pair's weight in its tier, 1.0 for a healthy pair), a tier where some pair
        weighs less starts at the smooth weighted round robin's pick; the rest follow in tier order.
        """
        ordered: list[Pair] = []
        for index, (tier, counter) in enumerate(zip(self.tiers, self.counters)):
            if len(tier) == 1:
                ordered.append(tier[0])
                continue
            start = self._weighted_start(index, tier, weight) if weight is not None and self.weighted[index] else None
            if start is None:
                start = next(counter) % len(tier)
            ordered.extend(tier[start:])
            ordered.extend(tier[:start])
        return ordered

    def _weighted_start(self, index: int, tier: tuple[Pair, ...], weight: Callable[[PairKey], float]) -> int | None:
        """The smooth weighted pick of a tier with a slow-starting pair; None when every weight is 1.0."""
        weights = [weight(pair.key) for pair in tier]
        smooth = self.smooth[index]
        if all(w >= 1.0 for w in weights):
            smooth.reset()
            return None
        return smooth.pick(weights)


class RoutingTable:
    """Built from a `Config`; immutable apart from the round-robin counters."""

    def __init__(self, config: Config, masker: SecretMasker | None = None) -> None:
        self.config = config
        masker = masker if masker is not None else SecretMasker(config_secrets(config))
        #: Every configured pair, switched off or not: the tracker and the management API want them all.
        self.pairs: dict[PairKey, Pair] = {}
        #: Public names of every pair, for "which pairs serve this name" in the management API.
        self.names_of: dict[PairKey, tuple[str, ...]] = {}
        grouped: dict[str, list[Pair]] = {}
        switched_off: dict[str, list[Pair]] = {}
        #: Each vendor's key rotation (key scope: the tracker learns the keys' hashes from it).
        self.keys: dict[str, KeyRotation] = {}
        for vendor in config.vendors:
            keys = KeyRotation(tuple((i, e) for i, e in enumerate(vendor.api_key_entries) if e.api_key))
            self.keys[vendor.name] = keys
            timeouts = vendor.timeouts.over(config.timeouts)
            for model in vendor.models:
                pair = Pair(
                    vendor=vendor,
                    model=model,
                    auto_disable=resolve_auto_disable(config.auto_disable, vendor.auto_disable, model.auto_disable),
                    timeouts=timeouts,
                    keys=keys,
                    base_url=vendor.base_url.rstrip("/"),
                    proxy_url=config.proxy_url,
                    secrets=masker,
                )
                self.pairs[pair.key] = pair
                names = [model.public_name]
                if vendor.prefix:
                    names.append(f"{vendor.prefix}/{model.public_name}")
                self.names_of[pair.key] = tuple(names)
                for name in names:
                    if pair.enabled_in_config:
                        grouped.setdefault(name, []).append(pair)
                    else:
                        switched_off.setdefault(name, []).append(pair)
        self.routes: dict[str, Route] = {}
        for name in {*grouped, *switched_off}:
            pairs = grouped.get(name, [])
            priorities = sorted({p.vendor.priority for p in pairs}, reverse=True)
            tiers = tuple(tuple(p for p in pairs if p.vendor.priority == prio) for prio in priorities)
            self.routes[name] = Route(
                name=name,
                tiers=tiers,
                switched_off=len(switched_off.get(name, ())),
                counters=tuple(count() for _ in tiers),
                switched_off_pairs=tuple(switched_off.get(name, ())),
                smooth=tuple(SmoothWeights(len(tier)) for tier in tiers),
                weighted=tuple(any(p.auto_disable.slow_start_seconds > 0 for p in tier) for tier in tiers),
            )
        #: For each pair, the pairs switched on with each of its names (one shared tuple per name):
        #: what `max-disabled-fraction` weighs a trip against, read only when a pair trips.
        self.peers: dict[PairKey, tuple[tuple[PairKey, ...], ...]] = {}
        for route in self.routes.values():
            members = tuple(pair.key for tier in route.tiers for pair in tier)
            for key in members:
                self.peers.setdefault(key, ())
                self.peers[key] = (*self.peers[key], members)
        #: What /v1/models lists: names with at least one pair switched on, sorted for stable output.
        self.public_models: tuple[str, ...] = tuple(sorted(n for n, r in self.routes.items() if r.tiers))

    def auto_disable_settings(self) -> dict[PairKey, AutoDisableSettings]:
        """Each configured pair's effective rule, for the failure tracker."""
        return {key: pair.auto_disable for key, pair in self.pairs.items()}

    def route(self, name: str) -> Route | None:
        """None when no pair, switched on or off, has this name."""
        return self.routes.get(name)

    def pairs_named(self, name: str, vendor: str | None = None) -> list[Pair]:
        """Every pair (switched on or off) that a management caller may mean by `name`:
        an alias, an upstream name or `prefix/alias`; optionally narrowed to one vendor."""
        found = [
            pair
            for key, pair in self.pairs.items()
            if (name in self.names_of[key] or pair.model.name == name) and (vendor is None or pair.vendor.name == vendor)
        ]
        return found
