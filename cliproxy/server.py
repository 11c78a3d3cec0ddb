"""Running the app on a socket until a signal: start-up, readiness, graceful shutdown.

Start-up: the database is opened and migrated and the disabled pairs restored (the app's
start-up, in `runner.setup()`), then the port is bound, and only then is systemd told
`READY=1`, so a unit that depends on cliproxy finds it answering.

SIGTERM or SIGINT: `STOPPING=1`, then `runner.cleanup()`, which (aiohttp 3.14) closes the
listening socket at once (new connections are refused), closes idle keep-alive connections,
waits up to `shutdown_timeout` for each request in flight (streams included) to finish, then
cancels what is left and runs the app's cleanup: the upstream session is closed, the tracker
flushes its pending writes (bounded) and the database is closed. The exit status is 0.
"""

from __future__ import annotations

import asyncio
import logging
import signal

from aiohttp import web

from .app import create_app
from .config import Config, nothing_routes
from .keys import CONFIG_MANAGER, RUNTIME
from .logs import configure_logging
from .sdnotify import notify

__all__ = ["serve"]

log = logging.getLogger("cliproxy")


async def serve(config: Config) -> int:
    """Serve `config` until SIGTERM or SIGINT; 0 after a clean shutdown, 1 when start-up failed."""
    app = create_app(config)
    # Secrets are read from the live app on every line, so a reloaded config is masked too.
    configure_logging(config.logging, secrets=lambda: app[RUNTIME].current.secrets)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def on_stop_signal(signum: int) -> None:
        if stop.is_set():
            log.warning("%s again: already shutting down", signal.Signals(signum).name)
            return
        log.info("%s received", signal.Signals(signum).name)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_stop_signal, sig)
    # SIGHUP: re-read the config file (validated first; an invalid one keeps the running config).
    loop.add_signal_handler(signal.SIGHUP, app[CONFIG_MANAGER].request_reload, "SIGHUP")

    runner = web.AppRunner(
        app,
        handler_cancellation=True,  # a client that goes away cancels its upstream request at once
        access_log=None,  # cliproxy.logs writes the access line
        shutdown_timeout=config.shutdown_grace_seconds,
    )
    try:
        await runner.setup()  # opens and migrates the database, restores the disabled pairs
    except Exception:
        log.exception("cliproxy could not start")
        await runner.cleanup()
        return 1
    try:
        site = web.TCPSite(runner, config.host, config.port)
        await site.start()
    except OSError as exc:
        log.error("cliproxy cannot listen on %s:%s: %s", config.host, config.port, exc.strerror or exc)
        await runner.cleanup()
        return 1

    if not config.api_keys:
        log.warning("api-keys is empty: the gateway accepts requests from anyone who can reach %s:%s", config.host, config.port)
    for vendor in config.vendors:
        if vendor.enabled and vendor.missing_key:
            log.warning("vendor %s is off: every api-key of it is empty (is its environment variable set?)", vendor.name)
    if (why := nothing_routes(config)) is not None:
        log.warning("%s", why)
    log.info("cliproxy listening on http://%s:%s", config.host, config.port)
    notify(f"READY=1\nSTATUS=listening on {config.host}:{config.port}")

    await stop.wait()
    notify("STOPPING=1\nSTATUS=shutting down")
    log.info("shutting down: letting requests in flight finish for up to %ss", config.shutdown_grace_seconds)
    await runner.cleanup()
    log.info("cliproxy stopped")
    return 0

