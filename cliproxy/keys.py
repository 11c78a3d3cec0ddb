"""The typed application keys: everything the handlers share lives on the app under one of these."""

from __future__ import annotations

import aiohttp
from aiohttp import web

from .events import OutcomeSink
from .runtime import Runtime
from .upstream import AccessInfo

__all__ = ["RUNTIME", "CLIENT_SESSION", "OUTCOMES", "ACCESS_INFO"]

#: The current config and routing table; swapped whole on reload.
RUNTIME = web.AppKey("runtime", Runtime)
#: One upstream connection pool for the whole process.
CLIENT_SESSION = web.AppKey("client_session", aiohttp.ClientSession)
#: Where every attempt reports its outcome; the failure tracker when auto-disable is on.
OUTCOMES = web.AppKey("outcomes", OutcomeSink)
#: What the access log line and metrics read about a proxied request once its handler is done.
ACCESS_INFO = web.RequestKey("access_info", AccessInfo)
