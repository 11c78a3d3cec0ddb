"""One upstream attempt's result and how its outcome is told.

An attempt (`cliproxy.web.upstream`) ends `Opened` (the answer the client will get) or `Failed`
(an error before any byte reached the client); every attempt reports exactly one `Outcome`, always
through `report`, which tells both the failure tracker (the `OutcomeSink` seam) and the request's
access record. The relay (`cliproxy.web.relay`) reports the outcome of the chosen answer the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

import aiohttp
from multidict import CIMultiDict

from cliproxy.core.events import Outcome, OutcomeSink
from cliproxy.core.routing import Pair
from cliproxy.web.access import AccessInfo
from cliproxy.web.proxied_request import ProxiedRequest

__all__ = [
    "CLIENT_DISCONNECT",
    "CLIENT_WRITE_TIMEOUT",
    "GATEWAY_OVERLOADED",
    "KEY_REFUSED",
    "OK",
    "Failed",
    "Opened",
    "describe",
    "report",
    "report_uncounted",
]

OK = Outcome("success", "ok")
CLIENT_DISCONNECT = Outcome("neutral", "client_disconnect")
#: The client stopped reading a stream for longer than `client-write-timeout`: its fault, not the upstream's.
CLIENT_WRITE_TIMEOUT = Outcome("neutral", "client_write_timeout")
#: Reason of the neutral outcome when cliproxy itself ran out of descriptors, buffers or memory.
GATEWAY_OVERLOADED = "gateway_overloaded"
#: Reason of an attempt whose key the upstream refused (`key-scope-statuses`): the key is out, the pair not counted.
KEY_REFUSED = "key_refused"


@dataclass(slots=True)
class Opened:
    """A successful upstream answer the client will get (with its first chunk when streaming)."""

    pair: Pair
    response: aiohttp.ClientResponse
    first_chunk: bytes
    #: Sent to a pair the tracker holds unavailable, by `on-all-disabled: best-effort`.
    degraded: bool = False
    #: The index in `api-key-entries` of the key the attempt used; None without keys.
    key_index: int | None = None
    #: What was sent when it was not the request `forward` got (an Anthropic-format pair's passthrough):
    #: the relay reads its translator (none) from it.
    sent: ProxiedRequest | None = None


@dataclass(slots=True)
class Failed:
    """An upstream error before any byte reached the client. Countable ones fail over; neutral ones
    (the client's own fault) go back to the client as they came."""

    pair: Pair
    outcome: Outcome
    status: int | None = None
    body: bytes = b""
    headers: CIMultiDict[str] | None = None
    timeout: bool = False
    degraded: bool = False
    #: The index in `api-key-entries` of the key the attempt used; None without keys.
    key_index: int | None = None
    #: The answer said the key is bad (`key-scope-statuses`): the key is out, the pair was not counted.
    key_refused: bool = False


def report(sink: OutcomeSink, info: AccessInfo, pair: Pair, outcome: Outcome) -> None:
    """The one way an attempt's outcome is told: to the failure tracker, and to the access line and metrics."""
    sink.record_outcome(pair.key, outcome)
    report_uncounted(info, pair, outcome)


def report_uncounted(info: AccessInfo, pair: Pair, outcome: Outcome) -> None:
    """The access line and metrics only: a refused key (key scope) was told to the tracker as such, not counted for the pair."""
    info.outcomes.append(outcome.reason)
    if info.traffic is not None:
        info.traffic.record(pair.key, failed=outcome.kind == "failure")


def describe(exc: BaseException) -> str:
    name = type(exc).__name__
    text = str(exc)
    return f"{name}: {text}" if text else name
