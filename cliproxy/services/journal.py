"""The journal: the one ordered, retrying write-behind queue into the audit history, and its listeners.

Everything that goes into the history passes through here: the tracker's effects (disables,
enables, with their current-state rows) and the config manager's events (reloads, rejections,
operator edits). `append` never awaits and never touches the disk: the effect is told to the
`listeners` and queued for ONE writer task that calls `store.record` in order, retrying a failing
write with backoff, so an event that happens while the database is failing is written once it is
back, in order. `flush()` waits for what has been queued so far to be committed.

Acknowledged means durable: what reports show is the COMMITTED view. `committed_rows()` holds the
current-state rows whose write has returned from `store.record` (seeded from the store at
`start`), and `committed_listeners` (metrics) hear each event once it is committed. Waiting
(`flush`) only for the writes queued before a report began, then reading the committed view, can
neither report an uncommitted transition nor starve behind a stream of new ones.

Its log lines go to `cliproxy.tracker`, where they were before the journal was its own module:
operators grep that name.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections import deque
from collections.abc import Callable

from cliproxy.core.events import BackoffRecord, DisabledRecord, Effect, Event, KeyId, KeyRecord, RowKey
from cliproxy.services.store import Store

__all__ = ["Journal"]

_log = logging.getLogger("cliproxy.tracker")  # the name operators grep for; kept across the move


class Journal:
    """Appends effects to the store in order, in the background; knows what has been committed."""

    def __init__(
        self,
        store: Store,
        *,
        logger: logging.Logger = _log,
        retry_initial: float = 0.05,
        retry_max: float = 5.0,
        close_timeout: float = 5.0,
    ) -> None:
        self._store = store
        self._log = logger
        self._retry_initial = retry_initial
        self._retry_max = retry_max
        self._close_timeout = close_timeout

        #: Called synchronously with each event when it is appended (not yet committed). Exceptions are logged.
        self.listeners: list[Callable[[Event], None]] = []
        #: Called with each event once its write has been committed to the store, with its id there (metrics, notifications).
        self.committed_listeners: list[Callable[[Event], None]] = []

        # (vendor, model, reason) -> the row as committed to the store; what reports show.
        self._committed_rows: dict[RowKey, DisabledRecord] = {}
        # (vendor, model) -> the backoff level of a pair back in service, as committed.
        self._committed_backoff: dict[tuple[str, str], BackoffRecord] = {}
        # (vendor, key index) -> a key out of its vendor's rotation, as committed (key scope).
        self._committed_keys: dict[KeyId, KeyRecord] = {}
        self._pending: deque[Effect] = deque()
        self._enqueued = 0
        self._committed = 0
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._wakeup = asyncio.Event()
        self._healthy = True
        self._writer: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ views

    @property
    def persist_healthy(self) -> bool:
        """False while the writer is failing to commit to the store."""
        return self._healthy

    @property
    def pending_writes(self) -> int:
        """Effects appended and not yet committed to the store."""
        return len(self._pending)

    def committed_rows(self) -> list[DisabledRecord]:
        """Every current-state row as committed to the store (ended or not: the reader has the clock)."""
        return list(self._committed_rows.values())

    def committed_row(self, key: RowKey) -> DisabledRecord | None:
        """The committed current-state row of (vendor, model, reason), or None."""
        return self._committed_rows.get(key)

    async def events_since(self, kind: str, since: float, page: int = 1000) -> list[Event]:
        """Every committed event of `kind` at or after `since`, newest first (read at start-up)."""
        out: list[Event] = []
        before_id: int | None = None
        while True:
            batch = await self._store.events(kind=kind, since=since, before_id=before_id, limit=page)
            out.extend(batch)
            if len(batch) < page:
                return out
            before_id = min(e.id for e in batch if e.id is not None)

    def committed_backoff(self) -> list[BackoffRecord]:
        """Every backoff level of a pair back in service, as committed to the store."""
        return list(self._committed_backoff.values())

    def committed_level(self, pair: tuple[str, str]) -> BackoffRecord | None:
        """The committed backoff level of `pair` back in service, or None."""
        return self._committed_backoff.get(pair)

    def committed_keys(self) -> list[KeyRecord]:
        """Every key out of its vendor's rotation as committed (ended or not: the reader has the clock)."""
        return list(self._committed_keys.values())

    def committed_key(self, key: KeyId) -> KeyRecord | None:
        """The committed `disabled_keys` row of (vendor, key index), or None."""
        return self._committed_keys.get(key)

    # ------------------------------------------------------------------ appending (sync, O(1))

    def append(self, effect: Effect) -> None:
        """Tell the listeners, queue the write. The caller has already applied it in memory and logged it."""
        for listener in list(self.listeners):
            try:
                listener(effect.event)
            except Exception:
                self._log.exception("journal listener %r failed on %s", listener, effect.event.kind)
        self._pending.append(effect)
        self._enqueued += 1
        self._wakeup.set()

    def record(self, event: Event) -> None:
        """Append an audit event that changes no current-state row (config reloads, operator edits)."""
        self.append(Effect(event))

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Seed the committed view from the store's current-state rows, then start the writer."""
        if self._writer is not None:
            raise RuntimeError("Journal already started")
        records = await self._store.load_disabled()
        self._committed_rows = {(r.vendor, r.model, r.reason): r for r in records}
        load_backoff = getattr(self._store, "load_backoff", None)  # a store that keeps no levels has none
        if load_backoff is not None:
            self._committed_backoff = {(r.vendor, r.model): r for r in await load_backoff()}
        load_keys = getattr(self._store, "load_disabled_keys", None)  # a store that keeps no keys has none
        if load_keys is not None:
            self._committed_keys = {r.key: r for r in await load_keys()}
        self._writer = asyncio.create_task(self._write_loop(), name="journal-writer")

    async def close(self) -> None:
        """Flush pending writes (bounded by `close_timeout`), stop the writer. The store is its owner's to close."""
        if self._writer is not None and not await self.flush(self._close_timeout):
            self._log.warning("journal closed with %d writes not committed", len(self._pending))
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer

    async def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything queued so far is committed (True) or `timeout` passed (False).

        False at once when something is pending and the writer is not running (before `start`,
        after `close`).
        """
        target = self._enqueued
        if self._committed >= target:
            return True
        if self._writer is None or self._writer.done():
            return False  # not started or closed: nothing will commit it
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((target, future))
        try:
            await asyncio.wait_for(future, timeout)  # cancels the future on timeout
        except TimeoutError:
            return False
        return True

    # ------------------------------------------------------------------ the writer

    async def _write_loop(self) -> None:
        while True:
            if not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            effect = self._pending[0]
            attempts, event_id = await self._write(effect)
            self._pending.popleft()
            self._apply_committed(effect, event_id)
            self._committed += 1
            if not self._healthy:
                self._log.info("store writes recovered after %d attempts", attempts)
            self._healthy = True
            self._wake_waiters()

    async def _write(self, effect: Effect) -> tuple[int, int]:
        """Write one effect, retrying with backoff until the store takes it; returns the attempts made and the event's id."""
        delay = self._retry_initial
        attempt = 0
        while True:
            attempt += 1
            try:
                # `set_backoff` only when there is one: a store that keeps no levels never sees it
                extra: dict[str, object] = {"set_backoff": effect.set_backoff} if effect.set_backoff is not None else {}
                # likewise the key-scope rows (`disabled_keys`): only when the effect has one
                if effect.set_disabled_key is not None:
                    extra["set_disabled_key"] = effect.set_disabled_key
                if effect.clear_disabled_key is not None:
                    extra["clear_disabled_key"] = effect.clear_disabled_key
                event_id = await self._store.record(
                    effect.event, set_disabled=effect.set_disabled, clear_disabled=effect.clear_disabled, **extra
                )
                return attempt, event_id
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._healthy = False
                self._log.warning(
                    "store write failed (attempt %d, %d pending, retry in %.2fs): event=%s vendor=%s model=%s: %r",
                    attempt,
                    len(self._pending),
                    delay,
                    effect.event.kind,
                    effect.event.vendor,
                    effect.event.model,
                    exc,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._retry_max)

    def _apply_committed(self, effect: Effect, event_id: int) -> None:
        """The write is in the store: update the committed view the same way, tell the committed listeners
        (the event with its id in the store, as `GET /api/events` shows it)."""
        if effect.clear_disabled is not None:
            self._committed_rows.pop(effect.clear_disabled, None)
        record = effect.set_disabled
        if record is not None:
            self._committed_rows[(record.vendor, record.model, record.reason)] = record
        level = effect.set_backoff
        if level is not None:
            self._committed_backoff[(level.vendor, level.model)] = level
        if effect.clear_disabled_key is not None:
            self._committed_keys.pop(effect.clear_disabled_key, None)
        if effect.set_disabled_key is not None:
            self._committed_keys[effect.set_disabled_key.key] = effect.set_disabled_key
        event = dataclasses.replace(effect.event, id=event_id)
        for listener in list(self.committed_listeners):
            try:
                listener(event)
            except Exception:
                self._log.exception("journal committed listener %r failed on %s", listener, effect.event.kind)

    def _wake_waiters(self) -> None:
        still: list[tuple[int, asyncio.Future[None]]] = []
        for target, future in self._waiters:
            if future.done():
                continue
            if target <= self._committed:
                future.set_result(None)
            else:
                still.append((target, future))
        self._waiters = still
