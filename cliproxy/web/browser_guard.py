"""Browsers at the edge: CORS for the client API, and what a web page must not be able to do.

A gateway on the operator's machine is in reach of every web page the operator opens. A page can
get at it two ways, and both are refused here, before any handler (or the management key check)
runs:

- **DNS rebinding.** A name the page controls re-resolves to 127.0.0.1; the browser then takes
  the gateway for the page's own origin and lets it read the answers. The request still names the
  page's host in `Host`, so a connection made to a loopback address must name a loopback host
  (`localhost`, `*.localhost`, `127.0.0.1`, `[::1]`, any port): otherwise 421.
- **Cross-origin requests.** A browser sends some of them without asking first (a form POST), and
  says where they come from in `Origin`. On `/v1`, `/api` and `/metrics` a request whose `Origin`
  is not in `cors-allow-origins` is refused with 403. A request without `Origin` (curl, SDKs,
  servers: anything that is not a browser) is not affected.

CORS proper, for browser-based clients of origins the operator listed: a preflight `OPTIONS` on
`/v1/...` is answered with 204 and the allowed methods and headers, and every `/v1` answer to such
an origin carries `Access-Control-Allow-Origin` (the origin itself) and `Vary: Origin`. The
management API and `/metrics` never send CORS headers: no web page may read them.

The decisions (`is_loopback_host`, `origin_allowed`) are pure; the middleware and the
`on_response_prepare` hook are the shell. The allowed origins are a frozenset built once per
config load (`Runtime.cors_origins`): a request pays one lookup, and only when it has an `Origin`.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Awaitable, Callable

from aiohttp import web

from cliproxy.core.errors import Forbidden, MisdirectedRequest
from cliproxy.web.admin.auth import is_loopback
from cliproxy.web.keys import CORS_ORIGIN, RUNTIME

__all__ = ["browser_guard_middleware", "cors_response_headers", "is_loopback_host", "origin_allowed"]

#: Where a foreign `Origin` is refused. /healthz and /readyz say nothing a page could use.
_GUARDED = ("/v1/", "/api/")
#: The management API: the dashboard (served from this gateway, /ui/) calls it from its own origin.
_MANAGEMENT = "/api/"
_GUARDED_EXACT = frozenset({"/v1", "/api", "/metrics"})
_CLIENT_API = "/v1/"

_ALLOW_METHODS = "GET, POST, OPTIONS"
#: What the client API reads, and what the official SDKs send (openai-node sends its x-stainless-* set).
_ALLOW_HEADERS = ", ".join(
    (
        "authorization",
        "content-type",
        "x-api-key",
        "x-request-id",
        "openai-organization",
        "openai-project",
        "openai-beta",
        "x-stainless-arch",
        "x-stainless-lang",
        "x-stainless-os",
        "x-stainless-package-version",
        "x-stainless-retry-count",
        "x-stainless-runtime",
        "x-stainless-runtime-version",
        "x-stainless-timeout",
    )
)
#: What a page may read of an answer besides the CORS-safelisted headers (see cliproxy.web.upstream's allow-list).
_EXPOSE_HEADERS = ", ".join(
    (
        "x-request-id",
        "x-cliproxy-vendor",
        "x-cliproxy-model",
        "x-cliproxy-attempts",
        "x-cliproxy-degraded",
        "retry-after",
        "retry-after-ms",
        "request-id",
        "openai-request-id",
        "openai-model",
        "openai-organization",
        "openai-processing-ms",
        "openai-version",
        "x-ratelimit-limit-requests",
        "x-ratelimit-limit-tokens",
        "x-ratelimit-remaining-requests",
        "x-ratelimit-remaining-tokens",
        "x-ratelimit-reset-requests",
        "x-ratelimit-reset-tokens",
    )
)
#: Seconds a browser may reuse a preflight answer. Short: an origin removed from the config is
#: refused on its next request anyway (the check does not depend on the preflight).
_MAX_AGE = "600"
_ORIGIN_LIMIT = 200  # client text quoted in an error message


@functools.lru_cache(maxsize=256)
def is_loopback_host(host: str) -> bool:
    """`Host` names this machine: `localhost`, `*.localhost`, a loopback address; with or without a port.

    Cached (bounded): every request asks it of the same few `Host` values, and parsing the address
    was 5 us of each request; a client that varies its `Host` only evicts older answers.
    """
    host = host.strip().lower()
    if host.startswith("["):  # [::1] or [::1]:8317
        end = host.find("]")
        rest = host[end + 1 :]
        if end < 0 or (rest and not (rest[0] == ":" and rest[1:].isdigit())):
            return False
        name = host[1:end]
    else:
        name, colon, port = host.partition(":")
        if colon and not port.isdigit():
            return False
    name = name.removesuffix(".")
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def origin_allowed(origin: str, allowed: frozenset[str]) -> bool:
    """`origin` (as the browser sent it) is listed, or `*` is. Compared lower-case, as the config is stored."""
    return "*" in allowed or origin.lower() in allowed


def _guarded(path: str) -> bool:
    return path.startswith(_GUARDED) or path in _GUARDED_EXACT


def _arrived_on_loopback(request: web.Request) -> bool:
    """The connection was made to a loopback address (always so when `host` is one)."""
    transport = request.transport
    sockname = transport.get_extra_info("sockname") if transport is not None else None
    return isinstance(sockname, tuple) and is_loopback(str(sockname[0]))


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def browser_guard_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refuse rebound `Host`s and foreign `Origin`s; answer CORS preflights on /v1."""
    host = request.headers.get("Host")
    if host is not None and not is_loopback_host(host) and _arrived_on_loopback(request):
        raise MisdirectedRequest(
            "this gateway listens on a loopback address and answers only requests for localhost, "
            "127.0.0.1 or [::1]; the Host header names another server"
        )
    origin = request.headers.get("Origin")
    if origin is None or not _guarded(request.path):
        return await handler(request)
    if request.path.startswith(_MANAGEMENT) and origin == f"{request.scheme}://{request.host}":
        return await handler(request)  # the dashboard at /ui/, same origin (its calls still need the key)
    if not origin_allowed(origin, request.app[RUNTIME].current.cors_origins):
        raise Forbidden(
            f"requests from the web origin {origin[:_ORIGIN_LIMIT]!r} are not allowed (see cors-allow-origins)",
            code="origin_not_allowed",
        )
    if not request.path.startswith(_CLIENT_API):
        return await handler(request)  # allowed, but the management API and /metrics send no CORS headers
    request[CORS_ORIGIN] = origin
    if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
        return web.Response(
            status=204,
            headers={
                "Access-Control-Allow-Methods": _ALLOW_METHODS,
                "Access-Control-Allow-Headers": _ALLOW_HEADERS,
                "Access-Control-Max-Age": _MAX_AGE,
            },
        )
    return await handler(request)


async def cors_response_headers(request: web.Request, response: web.StreamResponse) -> None:
    """`on_response_prepare`: an allowed origin's /v1 answer (streams, errors and preflights included) says so."""
    if "Origin" not in request.headers:
        return  # API clients send none: no lookup that misses (a KeyError inside Mapping.get)
    origin = request.get(CORS_ORIGIN)
    if origin is None:
        return
    headers = response.headers
    headers["Access-Control-Allow-Origin"] = origin
    headers["Access-Control-Expose-Headers"] = _EXPOSE_HEADERS
    vary = headers.get("Vary")
    headers["Vary"] = f"{vary}, Origin" if vary else "Origin"
