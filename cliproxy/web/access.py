"""What one proxied request did, for its access line and the metrics: telemetry only.

The forwarding path fills it in (`cliproxy.web.upstream`); the access middleware
(`cliproxy.web.logs`) reads it once the handler is done. What the client asked for is not here:
that is the request's `ProxiedRequest`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from cliproxy.core.traffic import PairTraffic

__all__ = ["AccessInfo"]


@dataclass(slots=True)
class AccessInfo:
    """Attempts, the pair that answered last, timings, bytes and one outcome reason per attempt."""

    #: `time.perf_counter()` when the request arrived.
    started: float = field(default_factory=time.perf_counter)
    vendor: str | None = None
    upstream_model: str | None = None
    attempts: int = 0
    ttfb: float | None = None
    bytes_out: int = 0
    #: The reason of every outcome reported for the request, in order (the last one is logged).
    outcomes: list[str] = field(default_factory=list)
    #: Where each attempt is also counted for the dashboard's per-minute traffic (`GET /api/pairs/stats`).
    traffic: PairTraffic | None = None
    #: The answer is an SSE stream counted in the metrics' streams in flight (uncounted at the end).
    stream_counted: bool = False
