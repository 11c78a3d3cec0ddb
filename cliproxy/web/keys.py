"""The typed application keys: everything the handlers share lives on the app under one of these."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web

from cliproxy.core.events import OutcomeSink
from cliproxy.core.runtime import LiveRuntime
from cliproxy.core.traffic import PairTraffic
from cliproxy.services.journal import Journal
from cliproxy.services.store import Store
from cliproxy.services.tracker import FailureTracker
from cliproxy.web.access import AccessInfo
from cliproxy.web.inflight import InFlight
from cliproxy.web.metrics import Metrics
from cliproxy.web.overload import OverloadLog
from cliproxy.web.proxied_request import ProxiedRequest

if TYPE_CHECKING:  # reload.py imports these keys; the type is only for checkers
    from cliproxy.services.config_manager import ConfigManager

__all__ = [
    "RUNTIME",
    "CLIENT_SESSION",
    "OUTCOMES",
    "ACCESS_INFO",
    "STORE",
    "JOURNAL",
    "TRACKER",
    "CLOCK",
    "ADMIN_ACTOR",
    "METRICS",
    "REQUEST_ID",
    "CONFIG_MANAGER",
    "OVERLOAD_LOG",
    "CORS_ORIGIN",
    "IN_FLIGHT",
    "RELAYED_STATUS",
    "PROXIED_REQUEST",
    "PAIR_TRAFFIC",
]

#: The live cell holding the current config and routing table (`.current`); a reload swaps it.
RUNTIME = web.AppKey("runtime", LiveRuntime)
#: One upstream connection pool for the whole process.
CLIENT_SESSION = web.AppKey("client_session", aiohttp.ClientSession)
#: Where every attempt reports its outcome: the failure tracker (the same object as TRACKER).
OUTCOMES = web.AppKey("outcomes", OutcomeSink)
#: The failure tracker: per-pair state, auto and timed manual disables.
TRACKER = web.AppKey("tracker", FailureTracker)
#: The SQLite store behind the tracker and the audit history.
STORE = web.AppKey("store", Store)
#: The ordered write-behind queue into the audit history (the tracker's effects, config events).
JOURNAL = web.AppKey("journal", Journal)
#: What the access log line and metrics read about a proxied request once its handler is done.
ACCESS_INFO = web.RequestKey("access_info", AccessInfo)
#: The /v1 request as read and validated (its model, for the access line and the metrics); absent
#: when it was refused before its body was parsed.
PROXIED_REQUEST = web.RequestKey("proxied_request", ProxiedRequest)
#: Wall-clock seconds; injected so tests can drive auto-disable time.
CLOCK: web.AppKey[Callable[[], float]] = web.AppKey("clock")
#: The management client's address as decided by the auth rule; the `actor` of its changes.
ADMIN_ACTOR = web.RequestKey("admin_actor", str)
#: This app's Prometheus registry and the label children it caches.
METRICS = web.AppKey("metrics", Metrics)
#: The request's id: the client's sane `x-request-id`, else a new one; echoed in the response.
REQUEST_ID = web.RequestKey("request_id", str)
#: The browser origin of a /v1 request that `cors-allow-origins` allows; its answer gets the CORS headers.
CORS_ORIGIN = web.RequestKey("cors_origin", str)
#: The live config: hot reload (file watching, SIGHUP) and write-back of management changes.
CONFIG_MANAGER: web.AppKey[ConfigManager] = web.AppKey("config_manager")
#: One throttled log line per interval when cliproxy runs out of descriptors, buffers or memory.
OVERLOAD_LOG = web.AppKey("overload_log", OverloadLog)

#: The requests being handled now: the shutdown waits for them for the grace, then cuts them.
IN_FLIGHT = web.AppKey("in_flight", InFlight)

#: The status of a response once its headers have gone out (what the client was told).
RELAYED_STATUS = web.RequestKey("relayed_status", int)
#: Requests and countable failures per pair per minute over the last hour, in memory (the dashboard's sparklines).
PAIR_TRAFFIC = web.AppKey("pair_traffic", PairTraffic)
