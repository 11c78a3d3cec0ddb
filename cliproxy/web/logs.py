"""Logging: one stderr handler (text or JSON lines), the access line, and secret masking.

Global state, confined here: logging is process-wide, so `configure_logging` replaces the one
handler it installed on the root logger (calling it again, on reload, swaps format and level).

- **The access shell.** `access_middleware` (outermost) gives each request an id (a sane
  `x-request-id` from the client, else a new one), and after the handler writes one access line
  and feeds the metrics from the request's `AccessInfo` (and the model of its `ProxiedRequest`).
  `stamp_response` (an `on_response_prepare` hook) puts the id on the response before its headers leave, streams
  included, and counts the streams in flight. When the access logger is filtered out by the level,
  no line is built at all.
- **What is logged.** Method, path, status, model, vendor, upstream model, attempts, latency,
  time to first byte, bytes, outcome and request id. Never headers, bodies, prompts or completions.
- **Last line of defence.** Both formatters mask every configured secret (upstream, client and
  management keys, read live from the app so a reload is covered) and anything shaped like a
  credential from the final text, tracebacks included, before it is written.
- **Transitions.** The failure tracker logs its own events (`cliproxy.services.tracker`, with the event's
  fields in `extra["cliproxy_event"]`); `log_event` logs other events (config reloaded or
  rejected) the same way. The JSON formatter turns those fields into keys of the line.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import sys
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import IO, Any

import aiohttp
from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage

from cliproxy.core.config import LoggingSettings
from cliproxy.core.redact import SecretMasker, mask_secrets
from cliproxy.core.times import format_timestamp
from cliproxy.web.keys import (
    ACCESS_INFO,
    IN_FLIGHT,
    METRICS,
    PROXIED_REQUEST,
    RELAYED_STATUS,
    REQUEST_ID,
    RUNTIME,
)

__all__ = [
    "JsonFormatter",
    "TextFormatter",
    "access_middleware",
    "configure_logging",
    "stamp_response",
]

access_log = logging.getLogger("cliproxy.access")

#: Probes and scrapes: logged at DEBUG so they do not drown the access log.
_QUIET_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
#: A client's request id is kept only when it is short and plain (it goes into logs and headers).
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:/+=@-]{1,128}")
_SSE = "text/event-stream"
_FIELD_LIMIT = 200  # client-controlled text (path, model) is cut to this many characters

SecretSource = Callable[[], Iterable[str] | SecretMasker]


def _no_secrets() -> tuple[str, ...]:
    return ()


# ---------------------------------------------------------------------------------------------
# Formatters
# ---------------------------------------------------------------------------------------------


# What the credential-shape pattern of `cliproxy.core.redact` needs to find anything; text (lowercased)
# with none of these skips that (comparatively slow) regex.
_CREDENTIAL_MARKERS = ("bearer", "sk-", "pk-", "rk-", "xai-", "key-")


def _mask(text: str, secrets: Iterable[str] | SecretMasker) -> str:
    """`redact.mask_secrets`, with a fast path for the common line that holds nothing to mask."""
    if isinstance(secrets, SecretMasker):
        # One compiled pattern, every form of every key (a JSON line escapes a key's `"` and `\\`).
        return _mask_shapes(secrets.mask_known(text))
    for secret in secrets:
        if secret and len(secret) >= 4 and secret in text:
            text = text.replace(secret, "***")
    return _mask_shapes(text)


def _mask_shapes(text: str) -> str:
    """Only the credential-shape check: cost independent of how many keys are configured."""
    lowered = text.lower()
    for marker in _CREDENTIAL_MARKERS:  # a plain loop: a third cheaper than any() over a generator
        if marker in lowered:
            return mask_secrets(text)
    return text


class TextFormatter(logging.Formatter):
    """`2025-01-01T12:00:00.000Z INFO cliproxy.access message`, masked."""

    def __init__(self, secrets: SecretSource = _no_secrets) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")
        self._secrets = secrets

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802 - logging's name
        return format_timestamp(record.created)

    def format(self, record: logging.LogRecord) -> str:
        access = getattr(record, "cliproxy_access", None)
        if access is not None:
            return self.format_access(record.created, record.levelname, record.name, access)
        return _mask(super().format(record), self._secrets())

    def format_access(self, created: float, level: str, logger: str, fields: dict[str, Any]) -> str:
        """The access line of `fields`, as `format` renders its record (also without one: `_after`).

        The fields were masked when the line was built (`_after`); scanning the line for every
        configured key again would make each request cost O(keys).
        """
        return _mask_shapes(f"{format_timestamp(created)} {level} {logger} {_access_message(fields)}")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and the structured fields as keys; masked."""

    def __init__(self, secrets: SecretSource = _no_secrets) -> None:
        super().__init__()
        self._secrets = secrets

    def format(self, record: logging.LogRecord) -> str:
        access = getattr(record, "cliproxy_access", None)
        if access is not None and not record.exc_info and not record.stack_info:
            return self.format_access(record.created, record.levelname, record.name, access)
        line: dict[str, Any] = {"time": format_timestamp(record.created), "level": record.levelname, "logger": record.name}
        event = getattr(record, "cliproxy_event", None)
        if access is not None:
            line["message"] = "access"
            line.update(access)
        elif event is not None:
            line["message"] = str(event.get("event"))
            line.update({k: v for k, v in event.items() if v is not None})
        else:
            line["message"] = record.getMessage()
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        text = json.dumps(line, default=str, ensure_ascii=False)
        return _mask_shapes(text) if access is not None else _mask(text, self._secrets())

    def format_access(self, created: float, level: str, logger: str, fields: dict[str, Any]) -> str:
        """The access line of `fields`, as `format` renders its record (also without one: `_after`)."""
        line: dict[str, Any] = {"time": format_timestamp(created), "level": level, "logger": logger, "message": "access"}
        line.update(fields)
        return _mask_shapes(json.dumps(line, default=str, ensure_ascii=False))


class _QuietMalformedRequests(logging.Filter):
    """aiohttp logs every request its parser refuses as an ERROR with a traceback, so any anonymous
    client could fill the log. Such a request is the client's fault: one INFO line says what it was."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, BadHttpMessage):
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.msg, record.args, record.exc_info, record.exc_text = (
                "refused a malformed HTTP request: %s",
                (type(exc).__name__,),
                None,
                None,
            )
        return True


class _Handler(logging.StreamHandler):
    """The handler `configure_logging` owns (and replaces on a second call).

    On the event loop's thread, lines are written once per turn of the loop: under load a turn ends
    many requests, and one write of all their access lines replaces a write (a system call) each.
    Nothing waits for a timer: the lines leave at the end of the turn that logged them. Other
    threads (the executor, the database's) write at once, after whatever the loop still holds.
    """

    def __init__(self, stream: IO[str]) -> None:
        super().__init__(stream)
        self._pending: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is None:
            self._write_pending()
            super().emit(record)
            return
        try:
            line = self.format(record)
        except Exception:  # noqa: BLE001 - logging's own contract: report the record, never raise
            self.handleError(record)
            return
        self._queue(loop, line)

    def _queue(self, loop: asyncio.AbstractEventLoop, line: str) -> None:
        """On the loop's thread, with the lock held: `line` leaves at the end of this turn of the loop."""
        if not self._pending:
            loop.call_soon(self._write_pending_locked)
        self._pending.append(line + self.terminator)

    def emit_access(self, level: int, fields: dict[str, Any]) -> None:
        """An access line without a `LogRecord` (on the loop, when `_sole_handler` chose this handler):
        the same text `emit` writes for the record `_after` would make, at a third of the cost."""
        formatter = self.formatter
        assert isinstance(formatter, (TextFormatter, JsonFormatter))
        line = formatter.format_access(time.time(), logging.getLevelName(level), access_log.name, fields)
        with self.lock:  # type: ignore[union-attr]  # created by Handler.__init__
            self._queue(asyncio.get_running_loop(), line)

    def _write_pending_locked(self) -> None:
        with self.lock:  # type: ignore[union-attr]  # created by Handler.__init__
            self._write_pending()

    def _write_pending(self) -> None:
        if not self._pending:
            return
        text, self._pending = "".join(self._pending), []
        try:
            self.stream.write(text)
            self.flush()
        except Exception:  # noqa: BLE001 - as StreamHandler.emit: a broken stderr must not break serving
            self.handleError(logging.makeLogRecord({"msg": "could not write %d log line(s)", "args": (text.count("\n"),)}))

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            if self._pending:
                self._write_pending()
            super().flush()

    def close(self) -> None:
        self.flush()
        super().close()


def configure_logging(
    settings: LoggingSettings, *, secrets: SecretSource = _no_secrets, stream: IO[str] | None = None
) -> logging.Handler:
    """Log to stderr (or `stream`) in `settings.format` at `settings.level`, masking `secrets()`.

    Replaces the handler of an earlier call and leaves any other handler alone (pytest's caplog).
    """
    # Nothing here prints thread or process names; skipping them makes every LogRecord cheaper
    # (the access line is built once per request).
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _Handler)]:
        root.removeHandler(old)
        old.close()
    handler = _Handler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter(secrets) if settings.format == "json" else TextFormatter(secrets))
    root.addHandler(handler)
    server_log = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, _QuietMalformedRequests) for f in server_log.filters):
        server_log.addFilter(_QuietMalformedRequests())
    level = logging.getLevelName(settings.level.upper())
    root.setLevel(level if isinstance(level, int) else logging.INFO)
    # aiosqlite narrates every call at DEBUG; that is never what an operator wants to read.
    logging.getLogger("aiosqlite").setLevel(max(root.level, logging.INFO))
    return handler


# ---------------------------------------------------------------------------------------------
# The access shell
# ---------------------------------------------------------------------------------------------


class _AccessLine:
    """The message of an access record, rendered only if a text formatter asks for it."""

    __slots__ = ("fields",)

    def __init__(self, fields: dict[str, Any]) -> None:
        self.fields = fields

    def __str__(self) -> str:
        return _access_message(self.fields)


def _access_message(fields: dict[str, Any]) -> str:
    """`key=value` pairs, strings quoted, None left out: the message of the text access line."""
    return " ".join([f"{k}={v!r}" if v.__class__ is str else f"{k}={v}" for k, v in fields.items() if v is not None])


def _sole_handler(level: int) -> _Handler | None:
    """The handler `configure_logging` installed, when an access record at `level` would reach it
    and nothing else: no other handler or filter on the way, the formatter ours. Then `_after` hands
    it the fields directly, without a `LogRecord` (13 -> 4 us per request); anything else (pytest's
    caplog, an operator's extra handler) gets the record as before."""
    logger: logging.Logger | None = access_log
    while logger is not None and logger.parent is not None:
        if logger.handlers or logger.filters or logger.disabled or not logger.propagate:
            return None
        logger = logger.parent
    if logger is None or len(logger.handlers) != 1:
        return None
    handler = logger.handlers[0]
    if handler.__class__ is not _Handler or handler.filters or level < handler.level:
        return None
    if not isinstance(handler.formatter, (TextFormatter, JsonFormatter)):
        return None
    return handler


def _request_id(request: web.Request) -> str:
    given = request.headers.get("x-request-id")
    if given is not None and _REQUEST_ID.fullmatch(given):
        return given
    return os.urandom(8).hex()


async def stamp_response(request: web.Request, response: web.StreamResponse) -> None:
    """`on_response_prepare`: the request id goes out with the headers; a starting SSE stream is counted."""
    request_id = request.get(REQUEST_ID)
    if request_id is not None:
        response.headers["x-request-id"] = request_id
    request[RELAYED_STATUS] = response.status
    if response.headers.get("Content-Type", "").startswith(_SSE) and ACCESS_INFO in request:
        metrics = request.app.get(METRICS)
        if metrics is not None:
            metrics.stream_started()
            request[ACCESS_INFO].stream_counted = True


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def access_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Outermost: request id in, then one access line and the metrics once the handler is done."""
    started = time.perf_counter()
    request[REQUEST_ID] = _request_id(request)
    in_flight = request.app[IN_FLIGHT]
    in_flight.enter(request)
    status = 500
    response: web.StreamResponse | None = None
    cut_by_shutdown = False
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:  # redirects and the like pass the error middleware as exceptions
        status = exc.status
        raise
    except asyncio.CancelledError:
        cut_by_shutdown = in_flight.was_cut(request)
        # Cut by the shutdown: the status the client was given; else the client went away (nginx's 499).
        status = request.get(RELAYED_STATUS, 503) if cut_by_shutdown else 499
        raise
    except (ConnectionResetError, aiohttp.ClientConnectionResetError):
        status = 499
        raise
    finally:
        in_flight.leave(request)
        _after(request, response, status, time.perf_counter() - started, cut_by_shutdown=cut_by_shutdown)


def _after(
    request: web.Request, response: web.StreamResponse | None, status: int, elapsed: float, *, cut_by_shutdown: bool = False
) -> None:
    info = request.get(ACCESS_INFO)
    model = None
    app = request.app
    if info is not None:
        proxied = request.get(PROXIED_REQUEST)
        if proxied is not None:
            model = proxied.model
        metrics = app.get(METRICS)
        if metrics is not None:
            if info.stream_counted:
                metrics.stream_ended()
            metrics.observe_request(info, model, status, elapsed, app[RUNTIME].current.table.routes)
    level = logging.DEBUG if request.path in _QUIET_PATHS else logging.INFO
    if not access_log.isEnabledFor(level):
        return
    if info is not None:
        size: int | None = info.bytes_out or _body_size(response)  # an error answer is not relayed
        ttfb = None if info.ttfb is None else round(info.ttfb * 1000, 1)
        runtime = app[RUNTIME].current
        if model is not None and model not in runtime.table.routes:
            model = mask_secrets(model[:_FIELD_LIMIT], runtime.masker)  # client text: it may hold anything
    else:
        size, ttfb = _body_size(response), None
    path = request.path[:_FIELD_LIMIT]
    resource = request.match_info.route.resource
    if resource is None or resource.canonical != request.path:
        # Client text that no static route vouches for (a 404, `/v1/models/{model}`): mask it.
        path = _mask(path, app[RUNTIME].current.masker)
    fields: dict[str, Any] = {
        "method": request.method,
        "path": path,
        "status": status,
        "model": model,
        "vendor": None if info is None else info.vendor,
        "upstream_model": None if info is None else info.upstream_model,
        "attempts": None if info is None else info.attempts,
        "latency_ms": round(elapsed * 1000, 1),
        "ttfb_ms": ttfb,
        "bytes": size,
        "outcome": "shutdown" if cut_by_shutdown else info.outcomes[-1] if info is not None and info.outcomes else None,
        "request_id": request[REQUEST_ID],
    }
    handler = _sole_handler(level)
    if handler is not None:
        handler.emit_access(level, fields)
        return
    # makeRecord + handle: what `log()` does, minus the stack walk that finds the caller's line.
    access_log.handle(
        access_log.makeRecord(
            access_log.name, level, __file__, 0, "%s", (_AccessLine(fields),), None, None, {"cliproxy_access": fields}
        )
    )


def _body_size(response: web.StreamResponse | None) -> int | None:
    if response is None:
        return None
    body = getattr(response, "body", None)
    if isinstance(body, (bytes, bytearray)):
        return len(body)
    return response.body_length or None
