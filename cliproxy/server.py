"""Running the app on a socket until a signal: start-up, readiness, graceful shutdown.

Start-up: the database is opened and migrated and the disabled pairs restored (the app's
start-up, in `runner.setup()`), then the port is bound, and only then is systemd told
`READY=1`, so a unit that depends on cliproxy finds it answering.

SIGTERM or SIGINT: `STOPPING=1`; the listening sockets close at once (new connections are
refused) and keep-alive connections are told to close once their request is done; requests in
flight (streams included) get up to `shutdown-grace-seconds` to finish, and what is left is
cancelled and logged with outcome `shutdown`. Then `runner.cleanup()` runs the app's cleanup:
the upstream session is closed, the tracker flushes its pending writes (bounded) and the database
is closed. The exit status is 0.

The grace is kept here (`cliproxy.inflight`), not by aiohttp's `shutdown_timeout`: aiohttp waits
that long, then asks the request to stop (a streaming handler does not notice) and waits that long
again before cancelling, so a 1 s grace cut a stream at about 2 s.
"""

from __future__ import annotations

import asyncio
import logging
import signal

from aiohttp import web

from .app import create_app
from .config import Config
from .keys import CONFIG_MANAGER, IN_FLIGHT, RUNTIME
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
        # `_drain` has kept the grace and cut what was left: aiohttp only closes connections.
        shutdown_timeout=_AFTER_CUT_SECONDS,
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
    log.info("cliproxy listening on http://%s:%s", config.host, config.port)
    notify(f"READY=1\nSTATUS=listening on {config.host}:{config.port}")

    await stop.wait()
    notify("STOPPING=1\nSTATUS=shutting down")
    log.info("shutting down: letting requests in flight finish for up to %ss", config.shutdown_grace_seconds)
    await _drain(runner, config.shutdown_grace_seconds)
    await runner.cleanup()
    log.info("cliproxy stopped")
    return 0


#: How long requests cancelled at the end of the grace get to unwind (close their upstream, log).
_AFTER_CUT_SECONDS = 0.5


async def _drain(runner: web.AppRunner, grace: float) -> None:
    """Refuse new connections, let requests in flight finish for up to `grace` seconds, cut the rest."""
    for site in list(runner.sites):
        await site.stop()
    if runner.server is not None:
        runner.server.pre_shutdown()  # keep-alive connections close once their request is done
    in_flight = runner.app[IN_FLIGHT]
    if await in_flight.wait_idle(grace):
        return
    log.warning("shutdown grace of %ss is over: cutting %d request(s) still in flight", grace, in_flight.cut())
    await in_flight.wait_idle(_AFTER_CUT_SECONDS)
