"""The headers a client gets with an upstream's answer: the allow-list of the upstream's, and cliproxy's stamp."""

from __future__ import annotations

from collections.abc import Iterator

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy

from cliproxy.core.routing import Pair
from cliproxy.web.proxied_request import connection_options

__all__ = ["SSE", "relayable", "relayable_headers", "stamp"]

# The only upstream response headers a client gets: what it needs to read the answer and to pace
# itself. An allow-list, not a deny-list: an upstream (or a CDN in front of it) also sends cookies,
# CORS and HSTS policies, Alt-Svc and hop-by-hop headers that would act on the client as if cliproxy
# had said them. Framing (length, encoding) is cliproxy's own, and so is `x-request-id` (the
# client's, or a new one: see cliproxy.web.logs).
_RELAY_RESPONSE = frozenset(
    {
        "content-type",
        "request-id",
        "openai-request-id",
        "retry-after",
        "retry-after-ms",
        "openai-model",
        "openai-organization",
        "openai-processing-ms",
        "openai-version",
    }
)
_RELAY_RESPONSE_PREFIX = "x-ratelimit-"
_SSE_CACHE_CONTROL = "cache-control"  # relayed on streams only: `no-cache` keeps proxies from buffering them
SSE = "text/event-stream"


def relayable(headers: CIMultiDictProxy[str] | CIMultiDict[str], stream: bool) -> Iterator[tuple[str, str]]:
    """The upstream headers on the allow-list; O(headers), one lower() each, as the deny-list was."""
    named = connection_options(headers)
    for k, v in headers.items():
        name = k.lower()
        if (
            name in _RELAY_RESPONSE or name.startswith(_RELAY_RESPONSE_PREFIX) or (stream and name == _SSE_CACHE_CONTROL)
        ) and name not in named:
            yield k, v


def relayable_headers(upstream: aiohttp.ClientResponse, pair: Pair, attempts: int, degraded: bool) -> CIMultiDict[str]:
    stream = upstream.headers.get("content-type", "").startswith(SSE)
    headers = CIMultiDict(relayable(upstream.headers, stream))
    stamp(headers, pair.vendor.name, pair.model.name, attempts, degraded)
    return headers


def stamp(headers: CIMultiDict[str] | dict[str, str], vendor: str, model: str, attempts: int, degraded: bool = False) -> None:
    """The three headers that answer "why did my request go there" without logs (four on a best-effort answer)."""
    headers["x-cliproxy-vendor"] = vendor
    headers["x-cliproxy-model"] = model
    headers["x-cliproxy-attempts"] = str(attempts)
    if degraded:
        headers["x-cliproxy-degraded"] = "true"
