"""Model name -> ordered candidate pairs. Pure: built once per config load, then O(1) per lookup.

The table maps every client-facing name (an alias, or the upstream name when there is no alias,
and `prefix/alias` for vendors with a prefix) to the enabled pairs serving it, grouped in priority
tiers. A lookup rotates within each tier (round robin) and never looks at vendors that do not
serve the name, so its cost does not grow with the size of the configuration.
"""

from __future__ import annotations

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
from cliproxy.core.redact import SecretMasker, config_secrets

__all__ = ["Pair", "Route", "RoutingTable", "KeyRotation"]


class KeyRotation:
    """Round robin over a vendor's `api-key-entries`, shared by all its pairs."""

    __slots__ = ("_entries", "_counter")

    def __init__(self, entries: tuple[ApiKeyEntry, ...]) -> None:
        self._entries = entries
        self._counter = count()

    def next(self) -> ApiKeyEntry | None:
        if not self._entries:
            return None
        return self._entries[next(self._counter) % len(self._entries)]


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

    @property
    def key(self) -> PairKey:
        return (self.vendor.name, self.model.name)

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

    def ordered(self) -> list[Pair]:
        """Highest tier first; each tier rotated one step further on every call (round robin)."""
        ordered: list[Pair] = []
        for tier, counter in zip(self.tiers, self.counters):
            if len(tier) == 1:
                ordered.append(tier[0])
                continue
            start = next(counter) % len(tier)
            ordered.extend(tier[start:])
            ordered.extend(tier[:start])
        return ordered


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
        for vendor in config.vendors:
            keys = KeyRotation(tuple(e for e in vendor.api_key_entries if e.api_key))
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
            )
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
