"""`create_app(config)`: assembly only. Keys, cleanup contexts, middlewares and routes, in one place."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable

import aiohttp
from aiohttp import web

from cliproxy.core.config import Config
from cliproxy.core.errors import ProxyError, anthropic_error_body, error_body
from cliproxy.core.events import AlwaysAvailable
from cliproxy.core.runtime import LiveRuntime, Runtime
from cliproxy.core.traffic import PairTraffic
from cliproxy.services.config_manager import ConfigManager
from cliproxy.services.journal import Journal
from cliproxy.services.store import SQLiteStore
from cliproxy.services.tracker import FailureTracker
from cliproxy.web import anthropic_api, health, proxy_api
from cliproxy.web.admin import API_PREFIX, management_app
from cliproxy.web.admin.auth import ADMIN_LOCKOUT, Lockout
from cliproxy.web.admin.event_stream import EVENT_FEED, EventFeed, event_feed
from cliproxy.web.anthropic_api import ANTHROPIC_PATH
from cliproxy.web.browser_guard import browser_guard_middleware, cors_response_headers
from cliproxy.web.inflight import InFlight
from cliproxy.web.keys import (
    CLIENT_SESSION,
    CLOCK,
    CONFIG_MANAGER,
    IN_FLIGHT,
    JOURNAL,
    METRICS,
    OUTCOMES,
    OVERLOAD_LOG,
    PAIR_TRAFFIC,
    RUNTIME,
    STORE,
    TRACKER,
)
from cliproxy.web.logs import access_middleware, stamp_response
from cliproxy.web.metrics import Metrics
from cliproxy.web.notifier import NOTIFIER, Notifier, NotifyTiming
from cliproxy.web.overload import OverloadLog
from cliproxy.web.prober import prober_context
from cliproxy.web.ui import dashboard_routes

__all__ = ["create_app", "error_middleware"]

log = logging.getLogger("cliproxy")


def _error_response(error: ProxyError, anthropic: bool = False) -> web.Response:
    headers = dict(error.headers)
    content_type = headers.pop("Content-Type", None) or "application/json"
    if anthropic:
        status = error.anthropic_status or error.status
        return web.Response(status=status, body=error.anthropic_body(), headers=headers, content_type="application/json")
    return web.Response(status=error.status, body=error.body(), headers=headers, content_type=content_type.split(";")[0])


@web.middleware
async def error_middleware(request: web.Request, handler) -> web.StreamResponse:
    """Every error cliproxy makes leaves here in the OpenAI shape, with an honest status (Anthropic's
    shape under `/v1/messages`, whose clients read only that)."""
    anthropic = request.path.startswith(ANTHROPIC_PATH)
    try:
        return await handler(request)
    except ProxyError as error:
        return _error_response(error, anthropic)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}.get(exc.status, "http_error")
        return web.Response(
            status=exc.status,
            body=anthropic_error_body(exc.status, exc.reason)
            if anthropic
            else error_body(exc.reason, "invalid_request_error", code),
            content_type="application/json",
            headers={k: v for k, v in exc.headers.items() if k.lower() in ("allow", "retry-after")},
        )
    except (ConnectionResetError, aiohttp.ClientConnectionResetError):
        raise
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        message = "internal error in cliproxy; see its log"
        return web.Response(
            status=500,
            body=anthropic_error_body(500, message) if anthropic else error_body(message, "internal_error", "internal_error"),
            content_type="application/json",
        )


async def _persistence(app: web.Application) -> AsyncIterator[None]:
    """Open the database (migrating it), start the journal, restore disabled pairs, run the tracker;
    close in reverse (the journal flushes what is queued before the store closes)."""
    runtime = app[RUNTIME].current
    store = await SQLiteStore.open(runtime.config.database)
    journal = Journal(store)
    tracker = FailureTracker(journal, runtime.table.auto_disable_settings(), clock=app[CLOCK])
    tracker.update_peers(runtime.table.peers)  # for max-disabled-fraction
    tracker.update_keys(runtime.table)  # key scope: before start, which matches the stored keys against it
    app[METRICS].attach(tracker, journal)  # before start: re-enables of disables that expired while down count too
    journal.committed_listeners.append(app[NOTIFIER].on_event)  # receivers hear only what SQLite holds
    try:
        await journal.start()
        await tracker.start()
    except BaseException:
        await journal.close()
        await store.close()
        raise
    app[STORE] = store
    app[JOURNAL] = journal
    app[TRACKER] = tracker
    app[OUTCOMES] = tracker
    app[CONFIG_MANAGER].attach(tracker)  # reloads hand it their auto-disable rules and record through it
    yield
    await tracker.close()
    await journal.close()
    await store.close()


async def _notifications(app: web.Application) -> AsyncIterator[None]:
    """Webhook senders: started before the journal (which feeds them), closed after it, so that the
    transitions the journal flushes at shutdown still get their `close_seconds` to go out."""
    notifier = app[NOTIFIER]
    await notifier.start()
    yield
    await notifier.close()


async def _config_watcher(app: web.Application) -> AsyncIterator[None]:
    """Watch the config file for edits (when there is one); stop watching and drop pending reloads at shutdown."""
    manager = app[CONFIG_MANAGER]
    watcher = asyncio.create_task(manager.run_watcher(), name="config-watcher") if manager.path else None
    yield
    if watcher is not None:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
    await manager.close()


async def _client_session(app: web.Application) -> AsyncIterator[None]:
    # One pool for every upstream. No connection limit: the gateway must not queue requests that
    # the upstreams could serve (1,000 open streams are 1,000 connections).
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, ttl_dns_cache=300)
    # No cookie jar: cookies one upstream sets on one client's request must not ride along on the
    # requests of every other client.
    async with aiohttp.ClientSession(connector=connector, auto_decompress=True, cookie_jar=aiohttp.DummyCookieJar()) as session:
        app[CLIENT_SESSION] = session
        yield


async def _close_overload_log(app: web.Application) -> None:
    app[OVERLOAD_LOG].close()


def create_app(
    config: Config, *, clock: Callable[[], float] = time.time, notify_timing: NotifyTiming | None = None
) -> web.Application:
    """The gateway for `config`. `clock` (wall-clock seconds) drives auto-disable and the notifications'
    one-a-minute rule; tests pass a fake one, and shorter `notify_timing`."""
    # The browser guard before the management key check (the management sub-application's own
    # middleware, which runs after these): a web page's request is refused for what it is, and does
    # not count towards (or get caught by) the key lock-out.
    middlewares = [access_middleware, error_middleware, browser_guard_middleware]
    app = web.Application(middlewares=middlewares, client_max_size=config.max_body_bytes + 1)
    app[RUNTIME] = LiveRuntime(Runtime.build(config))
    app[CLOCK] = clock
    app[METRICS] = Metrics()
    app[OUTCOMES] = AlwaysAvailable()  # replaced by the tracker once the database is open
    app[CONFIG_MANAGER] = ConfigManager(app[RUNTIME], config.path, clock=clock)
    app[ADMIN_LOCKOUT] = Lockout()  # failed management-key attempts per address (cliproxy.web.admin.auth; /metrics too)
    app[OVERLOAD_LOG] = OverloadLog()  # out of descriptors: one log line per interval, not one per request
    app.on_cleanup.append(_close_overload_log)
    app[IN_FLIGHT] = InFlight()  # what a shutdown waits for, then cuts (cliproxy.server)
    app[NOTIFIER] = Notifier(
        app[RUNTIME], count=app[METRICS].count_notification, clock=clock, timing=notify_timing or NotifyTiming()
    )
    app.cleanup_ctx.append(_notifications)  # before the journal that feeds it
    app.cleanup_ctx.append(_persistence)
    app.cleanup_ctx.append(_client_session)
    app.cleanup_ctx.append(_config_watcher)  # after the store and tracker, which a reload uses
    app.cleanup_ctx.append(prober_context)  # recovery: probe; after the tracker and the client session
    app[PAIR_TRAFFIC] = PairTraffic(clock)  # per-minute traffic per pair for the dashboard (GET /api/pairs/stats)
    app[EVENT_FEED] = EventFeed()  # the open GET /api/events/stream streams
    app.cleanup_ctx.append(event_feed)  # after the journal it listens to; ends the streams at shutdown
    app.on_response_prepare.append(stamp_response)  # x-request-id on every answer, streams counted
    app.on_response_prepare.append(cors_response_headers)  # an allowed browser origin's /v1 answers say so
    app.add_routes(proxy_api.routes)
    app.add_routes(anthropic_api.routes)  # /v1/messages: Anthropic clients onto the same vendors
    app.add_routes(health.routes)
    app.add_routes(dashboard_routes())  # /ui/: the dashboard, under the management API's address rules
    app.add_subapp(API_PREFIX + "/", management_app())  # every path under /api, known or not, behind its access rule
    return app
