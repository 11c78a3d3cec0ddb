"""Per-pair traffic over the last hour: requests and countable failures per minute, in memory.

Each pair has a ring of `MINUTES` buckets indexed by `minute % MINUTES`; a bucket remembers which
minute it holds, so a bucket left from an hour (or more) ago reads as zero and is reset when it is
written again. Recording is O(1) and allocates nothing after a pair's first request; nothing is
written to disk (the counts are lost on restart, like the Prometheus counters). The clock
(wall-clock seconds) is injected: the gateway passes its own, so tests drive the minutes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["MINUTES", "PairTraffic", "TrafficSeries"]

#: Buckets kept per pair: one per minute of the last hour.
MINUTES = 60


@dataclass(slots=True)
class _Ring:
    minute: list[int] = field(default_factory=lambda: [-1] * MINUTES)  # which minute each bucket holds
    requests: list[int] = field(default_factory=lambda: [0] * MINUTES)
    failures: list[int] = field(default_factory=lambda: [0] * MINUTES)


@dataclass(frozen=True, slots=True)
class TrafficSeries:
    """One pair's counts, oldest minute first; the last entry is the current (partial) minute."""

    vendor: str
    model: str
    requests: tuple[int, ...]
    failures: tuple[int, ...]


class PairTraffic:
    """The rings of every pair that has been asked for since start-up."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._rings: dict[tuple[str, str], _Ring] = {}

    def record(self, pair: tuple[str, str], *, failed: bool) -> None:
        """Count one attempt at `pair`; `failed` when it was a failure that counts towards auto-disable."""
        ring = self._rings.get(pair)
        if ring is None:
            ring = self._rings[pair] = _Ring()
        minute = int(self._clock() // 60)
        slot = minute % MINUTES
        if ring.minute[slot] != minute:
            ring.minute[slot] = minute
            ring.requests[slot] = 0
            ring.failures[slot] = 0
        ring.requests[slot] += 1
        if failed:
            ring.failures[slot] += 1

    def series(self, pair: tuple[str, str]) -> TrafficSeries:
        """The last hour of `pair`, minute by minute (zeros for a pair never asked for)."""
        current = int(self._clock() // 60)
        ring = self._rings.get(pair)
        requests = [0] * MINUTES
        failures = [0] * MINUTES
        if ring is not None:
            for age in range(MINUTES):
                minute = current - (MINUTES - 1 - age)
                slot = minute % MINUTES
                if ring.minute[slot] == minute:
                    requests[age] = ring.requests[slot]
                    failures[age] = ring.failures[slot]
        return TrafficSeries(pair[0], pair[1], tuple(requests), tuple(failures))
