"""Running the app on a socket until a signal: start-up, graceful shutdown."""

from __future__ import annotations

import asyncio
import logging
import signal

from aiohttp import web

from .app import create_app
from .config import Config
from .keys import CONFIG_MANAGER

__all__ = ["serve"]

log = logging.getLogger("cliproxy")


def configure_logging(config: Config) -> None:
    logging.basicConfig(
        level=getattr(logging, config.logging.level, logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )


async def serve(config: Config) -> int:
    configure_logging(config)
    app = create_app(config)
    runner = web.AppRunner(
        app,
        handler_cancellation=True,  # a client that goes away cancels its upstream request at once
        access_log=None,
        shutdown_timeout=config.shutdown_grace_seconds,
    )
    await runner.setup()
    site = web.TCPSite(runner, config.host, config.port)
    await site.start()
    if not config.api_keys:
        log.warning("api-keys is empty: the gateway accepts requests from anyone who can reach %s:%s", config.host, config.port)
    log.info("cliproxy listening on http://%s:%s", config.host, config.port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # SIGHUP: re-read the config file (validated first; an invalid one keeps the running config).
    loop.add_signal_handler(signal.SIGHUP, app[CONFIG_MANAGER].request_reload, "SIGHUP")
    await stop.wait()
    log.info("shutting down: letting requests in flight finish for up to %ss", config.shutdown_grace_seconds)
    await runner.cleanup()
    return 0
