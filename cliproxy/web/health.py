"""Probes and scrapes: `GET /healthz`, `GET /readyz`, `GET /metrics`.

- `/healthz`: the process answers (no auth, no I/O). For liveness checks.
- `/readyz`: the configuration is loaded, the database answers a query within 2 s (and its path
  still names the writable file the server has open: see `cliproxy.services.store`), and the tracker's
  writes are being committed; otherwise 503 with the reasons. For load balancers.
- `/metrics`: Prometheus text. Open by default; with `metrics.require-auth: true` it is guarded
  exactly like the management API (`cliproxy.web.admin.auth.decide`: the management key as Bearer or
  `X-Management-Key` compared in constant time, loopback unless `allow-remote`, the same
  lock-out), except that without a `secret-key` the answer is 403 with a message saying so.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from cliproxy.core.errors import Forbidden
from cliproxy.web.admin.auth import authorize
from cliproxy.web.keys import JOURNAL, METRICS, RUNTIME, STORE
from cliproxy.web.metrics import CONTENT_TYPE

__all__ = ["routes", "readiness_problems"]

routes = web.RouteTableDef()

PING_TIMEOUT = 2.0


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readiness_problems(app: web.Application) -> list[str]:
    """Why the app should not get traffic now; empty when it is ready."""
    problems: list[str] = []
    if RUNTIME not in app:
        problems.append("the configuration is not loaded")
    store = app.get(STORE)
    if store is None:
        problems.append("the database is not open")
    else:
        try:
            ok = await asyncio.wait_for(store.ping(), PING_TIMEOUT)
        except TimeoutError:
            ok = False
        if not ok:
            problem = getattr(store, "file_problem", None)  # deleted, replaced or unwritable under us
            problems.append(problem or "the database does not answer")
    journal = app.get(JOURNAL)
    if journal is not None and not journal.persist_healthy:
        problems.append(f"writes to the database are failing ({journal.pending_writes} pending)")
    return problems


@routes.get("/readyz")
async def readyz(request: web.Request) -> web.Response:
    problems = await readiness_problems(request.app)
    if problems:
        message = "not ready: " + "; ".join(problems)
        return web.json_response(
            {
                "status": "unavailable",
                "reasons": problems,
                "error": {"message": message, "type": "service_unavailable", "param": None, "code": "not_ready"},
            },
            status=503,
        )
    return web.json_response({"status": "ready"})


def _check_metrics_access(request: web.Request) -> None:
    settings = request.app[RUNTIME].current.config.remote_management
    if not settings.secret_key:
        raise Forbidden(
            "metrics.require-auth is on but remote-management.secret-key is not set: /metrics is closed",
            code="metrics_auth_unconfigured",
        )
    authorize(request)


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    if request.app[RUNTIME].current.config.metrics.require_auth:
        _check_metrics_access(request)
    body = request.app[METRICS].render()
    response = web.Response(body=body)
    response.headers["Content-Type"] = CONTENT_TYPE
    return response
