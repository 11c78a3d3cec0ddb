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

The grace is kept here (`cliproxy.web.inflight`), not by aiohttp's `shutdown_timeout`: aiohttp waits
that long, then asks the request to stop (a streaming handler does not notice) and waits that long
again before cancelling, so a 1 s grace cut a stream at about 2 s.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import signal
from collections.abc import Callable
from typing import Any

from aiohttp import web

from cliproxy.app import create_app
from cliproxy.core.config import Config, nothing_routes
from cliproxy.core.errors import error_body
from cliproxy.sdnotify import notify
from cliproxy.services.config_file import remove_leftover_temp_files
from cliproxy.web.keys import CONFIG_MANAGER, IN_FLIGHT, OVERLOAD_LOG, RUNTIME
from cliproxy.web.logs import configure_logging
from cliproxy.web.overload import OverloadLog, local_resource_error

__all__ = ["serve"]

log = logging.getLogger("cliproxy")


def _quiet_when_out_of_resources(overload: OverloadLog) -> Callable[[asyncio.AbstractEventLoop, dict[str, Any]], None]:
    """asyncio logs every failed `accept()` (EMFILE: out of descriptors) as an ERROR with a traceback,
    once per pending connection; under a descriptor-exhaustion attack that is thousands of lines a
    second. It already pauses accepting for a second and retries; we only count it (one line per interval)."""

    def handle(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        local = local_resource_error(exc) if isinstance(exc, BaseException) else None
        if local is not None:
            overload.note("accept", local)
            return
        loop.default_exception_handler(context)

    return handle


_REFUSAL = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
    b"Connection: close\r\nContent-Length: %d\r\n\r\n%s"
)


def _refusal() -> bytes:
    body = error_body(
        "cliproxy holds max-connections client connections; retry shortly", "service_unavailable", "gateway_overloaded"
    )
    return _REFUSAL % (len(body), body)


class _Refused(asyncio.Protocol):
    """A connection past `max-connections`: answered 503 and closed at once, no handler, no parsing."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.write(_refusal())
        transport.close()


class _Guarded(asyncio.Protocol):
    """aiohttp's protocol for one client connection, plus what aiohttp lacks: a deadline for the
    request line and headers (aiohttp waits for them as long as the keep-alive timeout, which a
    slowloris resets with nothing). Everything else is passed through to aiohttp's handler."""

    def __init__(self, gate: _ConnectionGate, inner: asyncio.Protocol) -> None:
        self._gate = gate
        self._inner = inner
        self._tail = b""
        self._deadline: asyncio.TimerHandle | None = None
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._deadline = asyncio.get_running_loop().call_later(self._gate.header_timeout, self._headers_too_slow)
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._deadline is not None:
            # Headers end at the first blank line; the tail keeps a CRLFCRLF split across reads.
            window = self._tail + data
            if b"\r\n\r\n" in window:
                self._deadline.cancel()
                self._deadline = None
                self._tail = b""
            else:
                self._tail = window[-3:]
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._gate.open -= 1
        self._inner.connection_lost(exc)

    def _headers_too_slow(self) -> None:
        self._deadline = None
        if self._transport is not None:
            self._transport.abort()


class _ConnectionGate:
    """The protocol factory of the listening socket: at most `limit` client connections at once."""

    def __init__(self, handler_factory: Callable[[], asyncio.Protocol], limit: int, header_timeout: float) -> None:
        self._handler_factory = handler_factory
        self.limit = limit
        self.header_timeout = header_timeout
        self.open = 0

    def __call__(self) -> asyncio.Protocol:
        if self.open >= self.limit:
            return _Refused()
        self.open += 1
        return _Guarded(self, self._handler_factory())


class _GuardedSite(web.TCPSite):
    """aiohttp's TCP site, listening through a `_ConnectionGate`."""

    def __init__(self, runner: web.BaseRunner, host: str, port: int, *, limit: int, header_timeout: float) -> None:
        super().__init__(runner, host, port)
        self._limit = limit
        self._header_timeout = header_timeout

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with the runner (stopped by runner.cleanup)
        server = self._runner.server
        assert server is not None
        gate = _ConnectionGate(server, self._limit, self._header_timeout)
        self._server = await asyncio.get_running_loop().create_server(gate, self._host, self._port, backlog=self._backlog)


async def serve(config: Config) -> int:
    """Serve `config` until SIGTERM or SIGINT; 0 after a clean shutdown, 1 when start-up failed."""
    app = create_app(config)
    # Secrets are read from the live app on every line, so a reloaded config is masked too.
    configure_logging(config.logging, secrets=lambda: app[RUNTIME].current.masker)
    _remove_leftover_temp_files(config)
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
    loop.set_exception_handler(_quiet_when_out_of_resources(app[OVERLOAD_LOG]))
    # SIGHUP: re-read the config file (validated first; an invalid one keeps the running config).
    loop.add_signal_handler(signal.SIGHUP, app[CONFIG_MANAGER].request_reload, "SIGHUP")

    runner = web.AppRunner(
        app,
        handler_cancellation=True,  # a client that goes away cancels its upstream request at once
        access_log=None,  # cliproxy.web.logs writes the access line
        # `_drain` has kept the grace and cut what was left: aiohttp only closes connections.
        shutdown_timeout=_AFTER_CUT_SECONDS,
        keepalive_timeout=config.keepalive_timeout,
    )
    try:
        await runner.setup()  # opens and migrates the database, restores the disabled pairs
    except Exception:
        log.exception("cliproxy could not start")
        await runner.cleanup()
        return 1
    try:
        site = _GuardedSite(
            runner, config.host, config.port, limit=config.max_connections, header_timeout=config.client_header_timeout
        )
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
    _warn_if_descriptors_short(config.max_connections)
    if (why := nothing_routes(config)) is not None:
        log.warning("%s", why)
    log.info("cliproxy listening on http://%s:%s", config.host, config.port)
    notify(f"READY=1\nSTATUS=listening on {config.host}:{config.port}")

    await stop.wait()
    notify("STOPPING=1\nSTATUS=shutting down")
    log.info("shutting down: letting requests in flight finish for up to %ss", config.shutdown_grace_seconds)
    await _drain(runner, config.shutdown_grace_seconds)
    await runner.cleanup()
    log.info("cliproxy stopped")
    return 0


#: Descriptors a proxied request holds: its client connection and its upstream socket.
_DESCRIPTORS_PER_CONNECTION = 2
#: Descriptors the process holds besides connections: the database and its WAL, logs, the listener...
_DESCRIPTORS_RESERVED = 64


def _warn_if_descriptors_short(max_connections: int) -> None:
    """`max-connections` above what the descriptor limit can serve turns a busy hour into 503
    gateway_overloaded answers long before the configured cap: say so at start-up."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return
    needed = max_connections * _DESCRIPTORS_PER_CONNECTION + _DESCRIPTORS_RESERVED
    if needed > soft:
        log.warning(
            "max-connections is %d but the descriptor limit (ulimit -n) is %d: %d connections with their upstream "
            "sockets need about %d; raise LimitNOFILE (systemd) or lower max-connections to %d",
            max_connections,
            soft,
            max_connections,
            needed,
            max(1, (soft - _DESCRIPTORS_RESERVED) // _DESCRIPTORS_PER_CONNECTION),
        )


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


def _remove_leftover_temp_files(config: Config) -> None:
    """A write-back cut by kill -9 leaves its temporary copy of config.yaml behind: remove it now."""
    if not config.path:
        return
    try:
        removed = remove_leftover_temp_files(config.path)
    except OSError as exc:
        log.warning("could not look for leftover temporary config files beside %s: %s", config.path, exc.strerror or exc)
        return
    for path in removed:
        log.warning("removed %s, left by a config write-back that was interrupted", path)
