"""The live configuration: hot reload from the file, and changes written back to it.

`ConfigManager` is the one place that changes the running config. Every path ends the same way:
validate the whole file with the real loader, build a new `Runtime` and swap the `LiveRuntime` cell's
`current` as one reference (a request takes the runtime once, so requests in flight finish on the config they started
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

The operator's file wins over the API (issue 11). An API change starts from the file as it is on
disk, and only from a complete one: a file that changed since it was loaded must have held still
for `settle_seconds` and must validate (it is then loaded first, as a reload), otherwise the API
answers 409 `config_changed` and writes nothing. The write itself is a compare-and-swap
(`config_file.replace_if_unchanged`): when the file changed between the API's read and its rename, an
edit is redone on the new text (once), a PUT answers 409; an operator's save is never overwritten.

Reading, editing, parsing, validating and building the routing table run in a worker thread (a
10,000-pair file takes seconds of CPU); the thread only builds new immutable values, and the swap
onto the live cell happens back on the event loop, under the lock.

The manager knows nothing of the web layer: the app hands it the `LiveRuntime` cell it swaps, and
once the database is open the tracker (`attach`) that takes the new auto-disable rules and records
the events.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path as FilePath
from typing import Any

from cliproxy.core.config import Config, nothing_routes
from cliproxy.core.errors import NotFound, ProxyError
from cliproxy.core.eventlog import event_fields
from cliproxy.core.events import Event
from cliproxy.core.runtime import LiveRuntime
from cliproxy.services.config_build import BuiltConfig, build_config, collector_paused
from cliproxy.services.config_change import (
    ConfigChanged,
    ConfigRejected,
    NoConfigFile,
    rejected_event,
    reloaded_event,
    restart_required,
)
from cliproxy.services.config_file import FileChanged, FileVersion, current_version, read_version, replace_if_unchanged
from cliproxy.services.config_loader import ConfigError
from cliproxy.services.tracker import FailureTracker
from cliproxy.services.writeback import MissingPath, Path, WritebackError, edit_yaml, switch_edits, switch_state

# The errors are defined in config_change and re-exported: callers catch them as the manager's.
__all__ = ["ConfigChanged", "ConfigManager", "ConfigRejected", "NoConfigFile"]

log = logging.getLogger("cliproxy.reload")  # the name operators grep for; kept across the move

_StatKey = tuple[int, int, int]

#: How often an API edit is computed again when an operator's save lands between its read and its write.
EDIT_ATTEMPTS = 2

Edits = Sequence[tuple[Path, Any]] | Callable[[str], Sequence[tuple[Path, Any]]]


def _stat_key(version: FileVersion) -> _StatKey:
    return (version.mtime_ns, version.size, version.inode)


class ConfigManager:
    """Owns the running config of one app: reload, write-back, file watching."""

    def __init__(
        self,
        live: LiveRuntime,
        path: str | None,
        *,
        clock: Callable[[], float] = time.time,
        poll_interval: float = 0.5,
        settle_seconds: float = 0.5,
    ) -> None:
        #: The cell new requests take their `Runtime` from; a reload swaps its `current`.
        self._live = live
        #: Takes the auto-disable rules of each new config and records the events; None until `attach`.
        self._tracker: FailureTracker | None = None
        #: The config file; None when the app was built from an in-memory Config (edits then raise).
        self.path = path
        self.poll_interval = poll_interval
        #: How long a file changed on disk must have held still before an API change starts from it.
        self.settle_seconds = settle_seconds
        self._clock = clock
        #: The problems of the last rejected reload (masked), None once a good file loads.
        self.last_error: list[str] | None = None
        #: When the running config was loaded (wall clock).
        self.last_loaded_at: float = clock()
        self._lock = asyncio.Lock()
        #: The config the process started with: sockets and database come from it until a restart.
        self._started: Config = live.current.config
        self._seen_stat: _StatKey | None = self._stat()
        #: The file text the running config was built from (None: unknown, the next reload loads).
        self._loaded_text: str | None = None
        if path is not None:
            with contextlib.suppress(OSError):
                self._loaded_text = FilePath(path).read_text(encoding="utf-8")
        #: The file text last looked at (loaded or rejected): a PUT may replace only that text.
        self._seen_text: str | None = self._loaded_text
        #: (vendor, model or None) whose switch the file wrote as `enabled: true` (or `disabled:
        #: false`) before the API switched it off: switching back on writes the line back instead of
        #: removing it. In memory: after a restart the line is removed, which means the same.
        self._explicit_on: set[tuple[str, str | None]] = set()
        self._tasks: set[asyncio.Task[bool]] = set()

    def attach(self, tracker: FailureTracker) -> None:
        """From now on, hand each new config's auto-disable rules to `tracker` and record events through its journal
        (the app calls this once the database is open; before, changes are recorded nowhere)."""
        self._tracker = tracker

    # ------------------------------------------------------------------ views

    @property
    def restart_required(self) -> list[str]:
        """Settings of the running config that differ from those the process started with."""
        return restart_required(self._live.current.config, self._started)

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
            try:
                text, version = await asyncio.to_thread(read_version, self.path)
            except FileChanged:
                # Being written right now: its stat is not marked seen, so the watcher's next polls
                # find the change again and reload once it has held still.
                log.info("config reload (%s) put off: the file is being written", reason)
                return False
            except (OSError, UnicodeDecodeError) as exc:
                self._seen_stat = self._stat()
                if isinstance(exc, FileNotFoundError):
                    self._seen_text = ""  # seen missing: a PUT may write it again
                message = exc.strerror if isinstance(exc, OSError) else str(exc)
                await self._reject([f"<file>: cannot read {self.path}: {message}"], reason, actor)
                return False
            self._seen_stat = _stat_key(version)
            if text == self._loaded_text:
                self._seen_text = text
                if self.last_error is not None:
                    log.info("config file is back to the running configuration (%s)", reason)
                    self.last_error = None
                return True
            try:
                built = await asyncio.to_thread(self._build, text)
            except ConfigError as error:
                self._seen_text = text
                await self._reject(error.problems, reason, actor)
                return False
            previous = self._install(built)
            await self._record(self._reloaded_event(previous, built.config, reason=reason, actor=actor))
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
        edits: Edits,
        *,
        actor: str,
        kind: str,
        vendor: str | None = None,
        model: str | None = None,
        detail: dict | None = None,
        reason: str | None = None,
    ) -> Config:
        """Edit the file in place (see `cliproxy.services.writeback.edit_yaml`), validate, write, swap, record ONE event.

        Raises `ConfigRejected` (400) when the result would be invalid, `NotFound` (404) when an
        edit's path does not exist in the file, `ConfigChanged` (409) when the file is being changed
        on disk (see the module docstring), `NoConfigFile` (503) without a file; nothing is written
        then.

        `edits` may also be a function of the current file text returning the edits, called under
        the lock (in a worker thread: it must be pure): paths found with `vendor_path`/`model_path`
        then cannot go stale between reading the file and writing it (a `MissingPath` it raises
        becomes NotFound too). An edit that changes nothing writes nothing and still records its
        event (with `config_changed: false` in the detail): the operator's action is history either way.
        """
        path = self._require_path()
        async with self._lock:
            for _ in range(EDIT_ATTEMPTS):
                text, version = await self._read_complete(path)
                new_text, built = await self._edited(text, edits)
                changed = new_text != text
                if changed:
                    try:
                        await self._write(path, version, new_text)
                    except FileChanged:
                        continue  # an operator saved meanwhile: compute the edit again on their text
                if built is not None:
                    self._install(built)
                detail = dict(detail or {})
                if not changed:
                    detail["config_changed"] = False
                await self._record(
                    Event(
                        kind=kind, at=self._clock(), vendor=vendor, model=model, reason=reason, actor=actor, detail=detail or None
                    )
                )
                return self._live.current.config
            raise ConfigChanged(
                "config.yaml was saved by someone else while this change was being written, "
                f"{EDIT_ATTEMPTS} times in a row; nothing was written: retry"
            )

    async def replace_text(self, text: str, *, actor: str, check: Callable[[Config], None] | None = None) -> Config:
        """Replace the whole file (PUT /api/config.yaml): validate first (and `check` the result,
        which may raise), then write, swap, record `config-reloaded`.

        Raises `ConfigChanged` (409) when the file on disk is not the text cliproxy last read (an
        operator's save not yet loaded, or one landing before the rename): the PUT would overwrite it.
        """
        path = self._require_path()
        async with self._lock:
            base_text, version = await self._read(path)
            if base_text != self._seen_text:
                raise ConfigChanged(
                    "config.yaml was changed on disk since cliproxy last read it, and replacing it would lose "
                    "that change; nothing was written: read it again (GET /api/config.yaml) once it is "
                    "loaded, and retry"
                )
            try:
                built = await asyncio.to_thread(self._build, text)
            except ConfigError as error:
                raise ConfigRejected(self._mask(error.problems)) from None
            if check is not None:
                check(built.config)
            try:
                await self._write(path, version, text)
            except FileChanged:
                raise ConfigChanged(
                    "config.yaml was saved by someone else while it was being replaced; nothing was written: "
                    "read it again and retry"
                ) from None
            previous = self._install(built)
            await self._record(self._reloaded_event(previous, built.config, reason="api", actor=actor))
            return built.config

    def switch(self, vendor: str, model: str | None, enabled: bool) -> Callable[[str], list[tuple[Path, Any]]]:
        """The edits (a function of the file text, for `apply_edits`) that switch a vendor or a model
        entry on or off: off writes `enabled: false`, on removes that line again, or writes it back
        as `enabled: true` when the file said so before (see `writeback.switch_edits`)."""
        key = (vendor, model)

        def edits(text: str) -> list[tuple[Path, Any]]:
            # Runs in apply_edits' worker thread while the lock is held: nothing else touches the set
            # then. Called again when the edit is redone on an operator's newer text, so it only
            # ever records what the text shows, never consumes the memory.
            if not enabled:
                said = switch_state(text, vendor, model)
                if said is True:
                    self._explicit_on.add(key)
                elif said is None:
                    self._explicit_on.discard(key)  # on by omission: nothing to write back later
            return switch_edits(text, vendor, model, enabled, keep_line=key in self._explicit_on)

        return edits

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

    def _build(self, text: str) -> BuiltConfig:
        """The file's `text` validated and built (run off the loop; raises `ConfigError`)."""
        return build_config(text, self.path)

    def _mask(self, problems: Sequence[str]) -> list[str]:
        masker = self._live.current.masker
        return [masker.mask(problem) for problem in problems]

    async def _read(self, path: str) -> tuple[str, FileVersion | None]:
        """The file's text and version (missing: empty, None); 409 while someone is writing it."""
        try:
            return await asyncio.to_thread(read_version, path)
        except FileNotFoundError:
            return "", None
        except FileChanged:
            raise ConfigChanged("config.yaml is being written by someone else; nothing was written: retry") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ProxyError(f"cannot read the config file: {getattr(exc, 'strerror', None) or exc}") from None

    async def _read_complete(self, path: str) -> tuple[str, FileVersion | None]:
        """The file as an API edit starts from it: the running config's text, or a newer, complete one.

        A file that changed since it was loaded may be an editor's save caught half-way (a truncated
        file is often valid YAML: cut between two vendors, it validates and drops every vendor
        after the cut). So it must have held still for `settle_seconds` and validate; it is then
        loaded first, as a reload, and the edit applies on top of it. Otherwise 409.
        """
        text, version = await self._read(path)
        if text == self._loaded_text and version is not None:
            return text, version
        if version is None:
            # Deleted, or between an editor's delete and create: an empty config is not a base to edit.
            raise ConfigChanged("config.yaml is missing; nothing was written: retry once it is back")
        # File times are the filesystem's wall clock, so they are compared with time.time(), not with
        # the injected clock (which only stamps events).
        age = time.time() - version.mtime_ns / 1e9
        if age < self.settle_seconds:
            await asyncio.sleep(self.settle_seconds - max(age, 0.0))
            if await asyncio.to_thread(current_version, path) != version:
                raise ConfigChanged("config.yaml is being written by someone else; nothing was written: retry")
        try:
            built = await asyncio.to_thread(self._build, text)
        except ConfigError as error:
            problems = self._mask(error.problems)
            raise ConfigChanged(
                "config.yaml was changed on disk and is not a valid configuration (yet), so no change can start "
                "from it; nothing was written: fix the file, or retry once it is saved whole. Problems: " + "; ".join(problems)
            ) from None
        if version is not None:
            self._seen_stat = _stat_key(version)
        previous = self._install(built)
        await self._record(self._reloaded_event(previous, built.config, reason="file-changed", actor=None))
        return text, version

    async def _edited(self, text: str, edits: Edits) -> tuple[str, BuiltConfig | None]:
        """The edited text and, when it differs from the running config's, its validated build (off the loop)."""
        loaded = self._loaded_text

        def work() -> tuple[str, BuiltConfig | None]:
            with collector_paused():
                new_text = edit_yaml(text, edits(text) if callable(edits) else edits)
            return new_text, None if new_text == loaded else self._build(new_text)

        try:
            return await asyncio.to_thread(work)
        except MissingPath as error:
            raise NotFound(str(error), code="not_in_config_file") from None
        except WritebackError as error:
            raise ConfigRejected([str(error)]) from None
        except ConfigError as error:
            raise ConfigRejected(self._mask(error.problems)) from None

    async def _write(self, path: str, expected: FileVersion | None, text: str) -> None:
        """Write `text` over the file if it is still `expected` (raises `FileChanged` otherwise)."""
        try:
            # fsync may take a while on a busy disk; the event loop keeps relaying streams meanwhile
            written = await asyncio.to_thread(replace_if_unchanged, path, expected, text)
        except OSError as exc:
            raise ProxyError(f"cannot write the config file: {exc.strerror or exc}") from None
        # Our own write is not a change for the watcher; the stat of what WE wrote, not of whatever
        # is at the path now (an operator's save right after ours must still be seen).
        self._seen_stat = (written.st_mtime_ns, written.st_size, written.st_ino)

    def _install(self, built: BuiltConfig) -> Config:
        """Swap in a config built off the loop; returns the config it replaced. On the loop, under the lock."""
        previous = self._live.current.config
        self._live.current = built.runtime  # new requests take it; requests in flight keep theirs
        if self._tracker is not None:
            self._tracker.update_settings(built.settings)
            self._tracker.update_peers(built.runtime.table.peers)
            self._tracker.update_keys(built.runtime.table)
        self._loaded_text = self._seen_text = built.text
        self.last_error = None
        self.last_loaded_at = self._clock()
        if (why := nothing_routes(built.config)) is not None:
            log.warning("%s", why)
        return previous

    def _reloaded_event(self, previous: Config, config: Config, *, reason: str, actor: str | None) -> Event:
        event = reloaded_event(previous, config, self._started, reason=reason, actor=actor, at=self._clock())
        detail = event.detail or {}
        if restart := detail.get("restart_required"):
            log.warning("config changes of %s take effect only after a restart", ", ".join(restart))
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
        event = rejected_event(masked, reason=reason, actor=actor, at=self._clock())
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
        """Append to the audit history through the journal's ordered, retrying writer (never blocks
        on a slow or failing database; the in-memory config is authoritative)."""
        if self._tracker is not None:
            self._tracker.journal.record(event)

    async def _reload_logged(self, reason: str) -> bool:
        try:
            return await self.reload(reason=reason)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("config reload (%s) failed", reason)
            return False
