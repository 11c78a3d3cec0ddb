"""The operator's dashboard at `/ui/`: three static files shipped in the package, served from memory.

The page carries no secret and no data: the operator types the management key into its login form
(kept in `sessionStorage`), and every figure on it comes from `/api` with that key. So the files
themselves are served under the management API's address rules only (`cliproxy.web.admin.auth`):
404 when the management API is off, 429 while the address is locked out, 403 for a remote client
unless `allow-remote`. Every answer carries a strict Content-Security-Policy (nothing inline, nothing
from elsewhere, no framing), `nosniff` and `no-referrer`. The files are read once when the routes are
built: serving them touches no disk.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from importlib.resources import files

from aiohttp import web

from cliproxy.core.errors import Forbidden, TooManyRequests
from cliproxy.web.admin.auth import ADMIN_LOCKOUT, client_address, is_loopback
from cliproxy.web.keys import CLOCK, RUNTIME

__all__ = ["UI_PREFIX", "SECURITY_HEADERS", "dashboard_routes"]

UI_PREFIX = "/ui"

#: On every /ui/ answer. `connect-src 'self'`: the page talks to this gateway's /api and nothing else.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",
}

_FILES = {
    "index.html": "text/html",
    "app.js": "text/javascript",
    "app.css": "text/css",
}


def _check_access(request: web.Request) -> None:
    """The management API's address rules without the key (the page has none yet): raise the refusal."""
    settings = request.config_dict[RUNTIME].current.config.remote_management
    if not settings.secret_key:
        raise web.HTTPNotFound()
    forwarded = ", ".join(request.headers.getall("X-Forwarded-For", ())) or None
    address = client_address(request.remote, forwarded, settings.trusted_proxies)
    blocked = request.config_dict[ADMIN_LOCKOUT].blocked_for(address, request.config_dict[CLOCK]())
    if blocked is not None:
        raise TooManyRequests(
            "too many failed management key attempts from this address; try again later",
            headers={"Retry-After": str(max(1, math.ceil(blocked)))},
        )
    if not settings.allow_remote and not is_loopback(address):
        raise Forbidden("the dashboard serves only loopback clients (set remote-management.allow-remote to change this)")


def dashboard_routes() -> list[web.RouteDef]:
    """The /ui routes, with the static files loaded now (once per gateway)."""
    static = files(__package__).joinpath("static")
    bodies = {name: static.joinpath(name).read_bytes() for name in _FILES}

    def serve(name: str) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handler(request: web.Request) -> web.Response:
            _check_access(request)
            return web.Response(body=bodies[name], content_type=_FILES[name], charset="utf-8", headers=SECURITY_HEADERS)

        return handler

    async def to_index(request: web.Request) -> web.Response:
        _check_access(request)
        raise web.HTTPFound(UI_PREFIX + "/")

    return [
        web.get(UI_PREFIX, to_index),
        web.get(UI_PREFIX + "/", serve("index.html")),
        *(web.get(f"{UI_PREFIX}/{name}", serve(name)) for name in _FILES if name != "index.html"),
    ]
