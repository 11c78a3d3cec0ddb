"""The live configuration: hot reload from the file, and changes written back to it.

`ConfigManager` is the one place that changes the running config. Every path ends the same way:
validate the whole file with the real loader, build a new `Runtime` and swap `app[RUNTIME].current` as one
reference (a request takes the runtime once, so requests in flight finish on the config they started
with), hand the new auto-disable rules to the tracker (its states and counts stay), and record one
event in the audit history. A file that does not validate never replaces the running config.

Ways in:

- `run_watcher()`: polls the file's (mtime, size, inode) and reloads once a change has held for one
  poll (an editor still writing is not caught half-way). Polling needs no dependency and keeps the
  "within 2 seconds" promise with the default 0.5 s interval.
- `request_reload("SIGHUP")`: what the signal handler calls.
- `apply_edits(...)` / `replace_text(...)`: the management API's changes, written atomically to the
  file first, so the file stays the single source of truth and survives restarts.

An `asyncio.Lock` serialises them all; a reload that finds the content it already runs is a no-op,
so the watcher does not reload again what an edit has just written.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path as FilePath
from typing import Any

from aiohttp import web

from .config import Config
from .errors import InvalidRequest, NotFound, ProxyError, ServiceUnavailable
from .eventlog import event_fields
from .events import Event
from .keys import RUNTIME, TRACKER
from .redact import mask_secrets
from .runtime import Runtime
from .settings import ConfigError, parse_config
from .writeback import MissingPath, Path, WritebackError, atomic_write, edit_yaml

__all__ = ["ConfigManager", "ConfigRejected", "NoConfigFile", "RESTART_FIELDS", "swap_runtime"]

log = logging.getLogger("cliproxy.reload")

#: Settings read once at start-up (sockets, database, logging, runner): a change needs a restart.
RESTART_FIELDS: tuple[tuple[str, Callable[[Config], Any]], ...] = (
    ("host", lambda c: c.host),
    ("port", lambda c: c.port),
    ("database", lambda c: c.database),
    ("shutdown-grace-seconds", lambda c: c.shutdown_grace_seconds),
    ("client-header-timeout", lambda c: c.client_header_timeout),
    ("keepalive-timeout", lambda c: c.keepalive_timeout),
    ("max-connections", lambda c: c.max_connections),
    ("log-level", lambda c: c.logging.level),
    ("log-format", lambda c: c.logging.format),
)

_StatKey = tuple[int, int, int]


class ConfigRejected(InvalidRequest):
    """A change that would make the configuration invalid; nothing was written. 400 with every problem."""

    code = "invalid_config"

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("the configuration would be invalid: " + "; ".join(problems))


class NoConfigFile(ServiceUnavailable):
    """The app was built from an in-memory `Config`: there is no file to read, edit or reload."""

    code = "no_config_file"

    def __init__(self) -> None:
        super().__init__("the configuration was not read from a file, so it cannot be read or changed at run time")


def swap_runtime(app: web.Application, runtime: Runtime) -> None:
    """Make `runtime` the one new requests take; requests in flight keep theirs."""
    app[RUNTIME].current = runtime


class ConfigManager:
    """Owns the running config of one app: reload, write-back, file watching."""

    def __init__(
        self,
        app: web.Application,
        path: str | None,
        *,
        clock: Callable[[], float] = time.time,
        poll_interval: float = 0.5,
    ) -> None:
        self._app = app
        #: The config file; None when the app was built from an in-memory Config (edits then raise).
        self.path = path
        self.poll_interval = poll_interval
        self._clock = clock
        #: The problems of the last rejected reload (masked), None once a good file loads.
        self.last_error: list[str] | None = None
        #: When the running config was loaded (wall clock).
        self.last_loaded_at: float = clock()
        self._lock = asyncio.Lock()
        #: The config the process started with: sockets and database come from it until a restart.
        self._started: Config = app[RUNTIME].current.config
        self._seen_stat: _StatKey | None = self._stat()
        #: The file text the running config was built from (None: unknown, the next reload loads).
        self._loaded_text: str | None = None
        if path is not None:
            with contextlib.suppress(OSError):
                self._loaded_text = FilePath(path).read_text(encoding="utf-8")
        self._tasks: set[asyncio.Task[bool]] = set()

    # ------------------------------------------------------------------ views

    @property
    def restart_required(self) -> list[str]:
        """Settings of the running config that differ from those the process started with."""
        return self._restart_fields(self._app[RUNTIME].current.config)

    def read_text(self) -> str:
        """The config file as it is on disk now (for GET /api/config.yaml)."""
        return FilePath(self._require_path()).read_text(encoding="utf-8")

    # ------------------------------------------------------------------ reload

    async def reload(self, *, reason: str, actor: str | None = None) -> bool:
        """Load the file if it changed. True when the running config now matches it, False when rejected."""
        if self.path is None:
            log.warning("config reload (%s) ignored: the configuration was not read from a file", reason)
            return False
        async with self._lock:
            seen = self._stat()  # before reading: a change after the read is seen by the next poll
            try:
                text = FilePath(self.path).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                self._seen_stat = seen
                message = exc.strerror if isinstance(exc, OSError) else str(exc)
                await self._reject([f"<file>: cannot read {self.path}: {message}"], reason, actor)
                return False
            self._seen_stat = seen
            if text == self._loaded_text:
                if self.last_error is not None:
                    log.info("config file is back to the running configuration (%s)", reason)
                    self.last_error = None
                return True
            try:
                config = self._parse(text)
            except ConfigError as error:
                await self._reject(error.problems, reason, actor)
                return False
            previous = self._install(config, text)
            await self._record(self._reloaded_event(previous, config, reason=reason, actor=actor))
            return True

    def request_reload(self, reason: str = "SIGHUP") -> asyncio.Task[bool]:
        """Schedule `reload(reason=...)` from synchronous code (the SIGHUP handler); returns its task."""
        task = asyncio.get_running_loop().create_task(self._reload_logged(reason), name=f"config-reload-{reason}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def run_watcher(self) -> None:
        """Poll the file until cancelled; reload once a change has held for one poll."""
        if self.path is None:
            return
        nothing = object()  # no change pending (a stat of None means "file missing")
        pending: object = nothing
        while True:
            await asyncio.sleep(self.poll_interval)
            current = self._stat()
            if current == self._seen_stat:
                pending = nothing
                continue
            if current != pending:
                pending = current  # changed since the last look: let the writer finish first
                continue
            pending = nothing
            await self._reload_logged("file-changed")

    async def close(self) -> None:
        """Cancel reloads still scheduled (shutdown)."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # ------------------------------------------------------------------ changes through the API

    async def apply_edits(
        self,
        edits: Sequence[tuple[Path, Any]] | Callable[[str], Sequence[tuple[Path, Any]]],
        *,
        actor: str,
        kind: str,
        vendor: str | None = None,
        model: str | None = None,
        detail: dict | None = None,
        reason: str | None = None,
    ) -> Config:
        """Edit the file in place (see `cliproxy.writeback.edit_yaml`), validate, write, swap, record ONE event.

        Raises `ConfigRejected` (400) when the result would be invalid, `NotFound` (404) when an
        edit's path does not exist in the file, `NoConfigFile` (503) without a file; nothing is
        written then.

        `edits` may also be a function of the current file text returning the edits, called under
        the lock: paths found with `vendor_path`/`model_path` then cannot go stale between reading
        the file and writing it (a `MissingPath` it raises becomes NotFound too). An edit that changes nothing writes nothing and still records its event
        (with `config_changed: false` in the detail): the operator's action is history either way.
        """
        path = self._require_path()
        async with self._lock:
            text = self._read_for_change(path)
            try:
                new_text = edit_yaml(text, edits(text) if callable(edits) else edits)
            except MissingPath as error:
                raise NotFound(str(error), code="not_in_config_file") from None
            except WritebackError as error:
                raise ConfigRejected([str(error)]) from None
            config = self._validate(new_text)
            changed = new_text != text
            if changed:
                await self._write(path, new_text)
            if new_text != self._loaded_text:
                self._install(config, new_text)
            detail = dict(detail or {})
            if not changed:
                detail["config_changed"] = False
            await self._record(
                Event(kind=kind, at=self._clock(), vendor=vendor, model=model, reason=reason, actor=actor, detail=detail or None)
            )
            return self._app[RUNTIME].current.config

    async def replace_text(
        self, text: str, *, actor: str, check: Callable[[Config], None] | None = None
    ) -> Config:
        """Replace the whole file (PUT /api/config.yaml): validate first (and `check` the result,
        which may raise), then write, swap, record `config-reloaded`."""
        path = self._require_path()
        async with self._lock:
            config = self._validate(text)
            if check is not None:
                check(config)
            await self._write(path, text)
            previous = self._install(config, text)
            await self._record(self._reloaded_event(previous, config, reason="api", actor=actor))
            return config

    # ------------------------------------------------------------------ internals

    def _require_path(self) -> str:
        if self.path is None:
            raise NoConfigFile()
        return self.path

    def _stat(self) -> _StatKey | None:
        if self.path is None:
            return None
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _parse(self, text: str) -> Config:
        return replace(parse_config(text, source=self.path), path=self.path)

    def _mask(self, problems: Sequence[str]) -> list[str]:
        secrets = self._app[RUNTIME].current.secrets
        return [mask_secrets(problem, secrets) for problem in problems]

    def _validate(self, text: str) -> Config:
        try:
            return self._parse(text)
        except ConfigError as error:
            raise ConfigRejected(self._mask(error.problems)) from None

    def _read_for_change(self, path: str) -> str:
        try:
            return FilePath(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ProxyError(f"cannot read the config file: {getattr(exc, 'strerror', None) or exc}") from None

    async def _write(self, path: str, text: str) -> None:
        try:
            # fsync may take a while on a busy disk; the event loop keeps relaying streams meanwhile
            await asyncio.to_thread(atomic_write, path, text)
        except OSError as exc:
            raise ProxyError(f"cannot write the config file: {exc.strerror or exc}") from None
        self._seen_stat = self._stat()  # our own write is not a change for the watcher

    def _install(self, config: Config, text: str) -> Config:
        """Swap in `config`; returns the config it replaced."""
        previous = self._app[RUNTIME].current.config
        runtime = Runtime.build(config)
        swap_runtime(self._app, runtime)
        tracker = self._app.get(TRACKER)
        if tracker is not None:
            tracker.update_settings(runtime.table.auto_disable_settings())
        self._loaded_text = text
        self.last_error = None
        self.last_loaded_at = self._clock()
        return previous

    def _restart_fields(self, config: Config) -> list[str]:
        fields = [name for name, get in RESTART_FIELDS if get(config) != get(self._started)]
        if config.max_body_bytes > self._started.max_body_bytes:
            fields.append("max-body-bytes")  # the server's body limit is fixed when it starts
        return fields

    def _reloaded_event(self, previous: Config, config: Config, *, reason: str, actor: str | None) -> Event:
        old_names = {v.name for v in previous.vendors}
        new_names = {v.name for v in config.vendors}
        detail: dict[str, Any] = {
            "reason": reason,
            "vendors": len(config.vendors),
            "pairs": sum(len(v.models) for v in config.vendors),
        }
        if added := sorted(new_names - old_names):
            detail["vendors_added"] = added
        if removed := sorted(old_names - new_names):
            detail["vendors_removed"] = removed
        restart = self._restart_fields(config)
        if restart:
            detail["restart_required"] = restart
            log.warning("config changes of %s take effect only after a restart", ", ".join(restart))
        event = Event(kind="config-reloaded", at=self._clock(), actor=actor, detail=detail)
        log.info(
            "config reloaded (%s): %d vendor(s), %d pair(s)%s",
            reason,
            detail["vendors"],
            detail["pairs"],
            f", actor={actor}" if actor else "",
            extra={"cliproxy_event": event_fields(event)},  # the JSON format shows the event's fields
        )
        return event

    async def _reject(self, problems: Sequence[str], reason: str, actor: str | None) -> None:
        masked = self._mask(problems)
        event = Event(kind="config-rejected", at=self._clock(), actor=actor, detail={"problems": masked, "reason": reason})
        log.warning(
            "config reload (%s) rejected, the running config stays: %d problem(s)",
            reason,
            len(masked),
            extra={"cliproxy_event": event_fields(event)},  # the JSON format shows the event's fields
        )
        for problem in masked:
            log.warning("config problem: %s", problem)
        self.last_error = masked
        await self._record(event)

    async def _record(self, event: Event) -> None:
        """Append to the audit history through the tracker's ordered, retrying writer (never blocks
        on a slow or failing database; the in-memory config is authoritative)."""
        tracker = self._app.get(TRACKER)
        if tracker is not None:
            tracker.record_event(event)

    async def _reload_logged(self, reason: str) -> bool:
        try:
            return await self.reload(reason=reason)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("config reload (%s) failed", reason)
            return False
