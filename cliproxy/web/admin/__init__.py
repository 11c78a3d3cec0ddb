"""The management API under `/api/`: an aiohttp sub-application, off unless `remote-management.secret-key` is set.

- `registry`: every endpoint declared once (`@endpoint`), with its schemas; `openapi` builds
  `/api/openapi.json` from the registry alone.
- `schemas`: the marshmallow request and response schemas; `config_view`: the config's view,
  derived from the loader's schema rather than written twice.
- `views`: pure builders from config and tracker state to the dicts the schemas dump.
- `exchange`: validated input, dumped output and the wait for the tracker's writes to be committed.
- one module of handlers per resource: `models`, `pairs`, `vendors`, `config`, `events`, `event_stream`.
- `auth`: who may call it (the key, the loopback rule, the lock-out), shared with `/metrics`.

The sub-application's one middleware applies `auth` to every path under `/api` (known or not: when
the management API is off, each answers 404 like an unknown path), after the gateway's own
middlewares (access log, error shape, browser guard). Handlers read the gateway's keys through
`request.config_dict`.
"""

from __future__ import annotations

from aiohttp import web

# Each handler module declares its endpoints in the registry when imported, in this order (the document's).
from cliproxy.web.admin import config, event_stream, events, models, openapi, pairs, vendors  # noqa: F401, I001
from cliproxy.web.admin.auth import management_auth_middleware
from cliproxy.web.admin.registry import API_PREFIX, ENDPOINTS, Endpoint

__all__ = ["API_PREFIX", "ENDPOINTS", "Endpoint", "management_app"]


def management_app() -> web.Application:
    """A new management sub-application, to mount at `API_PREFIX` with `add_subapp` (one per gateway)."""
    app = web.Application(middlewares=[management_auth_middleware])
    for ep in ENDPOINTS:
        app.router.add_route(ep.method, ep.subapp_path, ep.handler)
    return app
