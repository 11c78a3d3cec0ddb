"""The failure tracker: the imperative shell around `cliproxy.core.failures`.

It owns the clock, the per-pair state, the background tasks and the writes to the store.

Two independent axes make a pair unavailable:

- the automatic disable (`failures.PairState`), tripped by the counting-window rule and ended by
  expiry or by `manual_enable`;
- an operator's timed manual disable (`manual_disable(pair, duration, actor)`), ended by its own
  expiry or by `manual_enable`. An automatic re-enable never ends a manual disable. The permanent
  operator switch lives in the config file and is not handled here.

The hot path (`record_outcome`, `is_available`, `seconds_until_available`) is synchronous and O(1):
no awaiting, no disk. Every transition is applied in memory first (memory is authoritative), told
to the `listeners`, and queued for ONE writer task that calls `store.record` in order, retrying a
failing write with backoff. `flush()` waits for what has been queued so far to be committed.

Reports read the COMMITTED view, never memory: `committed_disabled_pairs()` / `committed_record()`
hold the disables whose write has returned from `store.record` (seeded from the store at start),
and `committed_listeners` hear each event once it is committed. Memory may already hold newer
transitions (routing uses them at once); after kill -9 those would be gone, so nothing reports them
until they are in SQLite. Waiting (`flush`) only for the writes queued before a report began, then
reading the committed view, can neither report an uncommitted transition nor starve behind a
stream of new ones.

Because asyncio runs one callback at a time and `record_outcome` never awaits, any number of
concurrent failing requests trip exactly one disable.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal, Protocol

from cliproxy.core import failures
from cliproxy.core.config import AutoDisableSettings, PairKey
from cliproxy.core.eventlog import log_event
from cliproxy.core.events import DisabledRecord, Event, Outcome, OutcomeSink
from cliproxy.core.failures import DisableTransition, EnableTransition, PairState

__all__ = ["DisableStore", "FailureTracker"]

_log = logging.getLogger("cliproxy.tracker")  # the name operators grep for; kept across the move

_AUTO = "auto"
_MANUAL = "manual"


class DisableStore(Protocol):
    """The part of `cliproxy.services.store.Store` the tracker uses."""

    async def record(
        self,
        event: Event,
        *,
        set_disabled: DisabledRecord | None = None,
        clear_disabled: tuple[str, str, str] | None = None,
    ) -> int: ...

    async def load_disabled(self) -> list[DisabledRecord]: ...


@dataclass(frozen=True, slots=True)
class _Write:
    event: Event
    set_disabled: DisabledRecord | None = None
    clear_disabled: tuple[str, str, str] | None = None


class FailureTracker(OutcomeSink):
    """Counts failures per (vendor, model) pair, disables and re-enables pairs, persists the history."""

    def __init__(
        self,
        store: DisableStore,
        settings: Mapping[PairKey, AutoDisableSettings],
        *,
        clock: Callable[[], float] = time.time,
        logger: logging.Logger = _log,
        sweep_interval: float = 0.5,
        idle_seconds: float = 3600.0,
        cleanup_every_seconds: float = 60.0,
        retry_initial: float = 0.05,
        retry_max: float = 5.0,
        close_timeout: float = 5.0,
    ) -> None:
        self._store = store
        self._settings: dict[PairKey, AutoDisableSettings] = dict(settings)
        self._clock = clock
        self._log = logger
        self._sweep_interval = sweep_interval
        self._idle_seconds = idle_seconds
        self._cleanup_every = cleanup_every_seconds
        self._retry_initial = retry_initial
        self._retry_max = retry_max
        self._close_timeout = close_timeout

        #: Called synchronously with each transition event, when it is applied in memory (not yet
        #: committed). Exceptions are logged.
        self.listeners: list[Callable[[Event], None]] = []
        #: Called with each event once its write has been committed to the store (metrics).
        self.committed_listeners: list[Callable[[Event], None]] = []

        self._states: dict[PairKey, PairState] = {}
        # (vendor, model, reason) -> the disable as committed to the store; what reports show.
        self._committed_view: dict[tuple[str, str, str], DisabledRecord] = {}
        self._manual: dict[PairKey, DisabledRecord] = {}
        # (disabled_until, vendor, model, reason); entries that no longer match the state are skipped.
        self._deadlines: list[tuple[float, str, str, str]] = []
        self._last_cleanup: float | None = None

        self._pending: deque[_Write] = deque()
        self._enqueued = 0
        self._committed = 0
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._wakeup = asyncio.Event()
        self._persist_healthy = True
        self._writer: asyncio.Task[None] | None = None
        self._sweeper: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ settings and views

    def update_settings(self, settings: Mapping[PairKey, AutoDisableSettings]) -> None:
        """Swap in the settings of a reloaded config; all state and counts are kept."""
        self._settings = dict(settings)

    def settings_for(self, pair: PairKey) -> AutoDisableSettings | None:
        """The effective rule of a configured pair, None for a pair not in the config."""
        return self._settings.get(pair)

    def state(self, pair: PairKey) -> PairState | None:
        """The pair's automatic-disable state as of now (an expired disable shows as ended), or None."""
        state = self._states.get(pair)
        if state is None:
            return None
        return failures.expire(state, self._clock())[0]

    def manual_record(self, pair: PairKey) -> DisabledRecord | None:
        """The pair's timed manual disable while it is in force, or None."""
        record = self._manual.get(pair)
        if record is None or not self._in_force(record, self._clock()):
            return None
        return record

    def disabled_pairs(self) -> list[DisabledRecord]:
        """Every disable in force now, both axes (reason auto | manual), sorted by vendor, model, reason.

        Pairs no longer in the config are included; `settings_for(pair) is None` tells them apart.
        """
        now = self._clock()
        out: list[DisabledRecord] = []
        for pair, state in self._states.items():
            if failures.is_disabled(state, now):
                record = failures.auto_record(pair, state)
                assert record is not None
                out.append(record)
        out.extend(r for r in self._manual.values() if self._in_force(r, now))
        out.sort(key=lambda r: (r.vendor, r.model, r.reason))
        return out

    def committed_record(self, pair: PairKey, reason: str) -> DisabledRecord | None:
        """The pair's disable of `reason` (auto | manual) as committed to the store, while in force."""
        record = self._committed_view.get((pair[0], pair[1], reason))
        if record is None or not self._in_force(record, self._clock()):
            return None
        return record

    def committed_disabled_pairs(self) -> list[DisabledRecord]:
        """Like `disabled_pairs()`, but only disables whose write has been committed (what reports show).

        A committed disable whose time has passed is left out: a restart would end it too.
        """
        now = self._clock()
        out = [r for r in self._committed_view.values() if self._in_force(r, now)]
        out.sort(key=lambda r: (r.vendor, r.model, r.reason))
        return out

    @property
    def persist_healthy(self) -> bool:
        """False while the writer is failing to commit to the store."""
        return self._persist_healthy

    @property
    def pending_writes(self) -> int:
        """Transitions applied in memory and not yet committed to the store."""
        return len(self._pending)

    # ------------------------------------------------------------------ hot path (sync, O(1))

    def record_outcome(self, pair: PairKey, outcome: Outcome) -> None:
        """Apply one attempt's outcome. Neutral outcomes and pairs not in the config are ignored."""
        if outcome.kind == "neutral":
            return
        settings = self._settings.get(pair)
        if settings is None:
            return
        state = self._states.get(pair)
        if state is None:
            if outcome.kind == "success":
                return  # nothing to reset; keep memory to pairs that have failed
            state = failures.EMPTY
        new, transitions = failures.apply_outcome(state, outcome, settings, self._now())
        if new is not state:
            self._states[pair] = new
        for transition in transitions:
            self._on_auto_transition(pair, transition)

    def is_available(self, pair: PairKey) -> bool:
        """False while the pair is auto-disabled or under a timed manual disable.

        Computed from the clock, so a pair whose time has passed is routable at once, before the
        sweep records the re-enable. Pairs not in the config are not judged here (always True).
        """
        if pair not in self._settings:
            return True
        now = self._clock()
        state = self._states.get(pair)
        if state is not None and failures.is_disabled(state, now):
            return False
        manual = self._manual.get(pair)
        return manual is None or not self._in_force(manual, now)

    def seconds_until_available(self, pair: PairKey) -> float | None:
        """Seconds until both axes have ended; 0.0 when available now, None when never or unknown."""
        if pair not in self._settings:
            return None
        now = self._clock()
        wait = 0.0
        state = self._states.get(pair)
        if state is not None:
            wait = failures.remaining(state, now)
        manual = self._manual.get(pair)
        if manual is not None and self._in_force(manual, now):
            if manual.disabled_until is None:
                return None
            wait = max(wait, manual.disabled_until - now)
        return wait

    def disabled_by(self, pair: PairKey) -> Literal["auto", "manual"] | None:
        """"manual" while an operator's timed disable is in force, else "auto" while auto-disabled, else None."""
        if pair not in self._settings:
            return None
        now = self._clock()
        manual = self._manual.get(pair)
        if manual is not None and self._in_force(manual, now):
            return "manual"
        state = self._states.get(pair)
        return "auto" if state is not None and failures.is_disabled(state, now) else None

    # ------------------------------------------------------------------ operator actions

    async def manual_disable(self, pair: PairKey, duration_seconds: float | None, actor: str) -> None:
        """An operator's disable. With a duration: held here and in the store (reason manual).

        Without one only a `manual-disable` event is recorded: the permanent switch is the config's.
        Applied in memory at once and queued; `await flush()` to know it is committed. A duration
        that is not > 0 raises ValueError. Outcomes keep counting towards the auto-disable meanwhile.
        """
        if duration_seconds is not None and not duration_seconds > 0:
            raise ValueError(f"duration_seconds must be > 0 or None, got {duration_seconds!r}")
        vendor, model = pair
        now = self._now()
        if duration_seconds is None:
            event = Event(kind="manual-disable", at=now, vendor=vendor, model=model, reason=_MANUAL, actor=actor)
            self._emit(event, _Write(event))
            return
        until = failures.ms(now + duration_seconds)
        record = DisabledRecord(
            vendor=vendor, model=model, reason=_MANUAL, disabled_at=now, disabled_until=until, actor=actor
        )
        self._manual[pair] = record
        heapq.heappush(self._deadlines, (until, vendor, model, _MANUAL))
        event = Event(
            kind="manual-disable",
            at=now,
            vendor=vendor,
            model=model,
            reason=_MANUAL,
            disabled_at=now,
            disabled_until=until,
            actor=actor,
            detail={"duration_seconds": duration_seconds},
        )
        self._emit(event, _Write(event, set_disabled=record))

    async def manual_enable(self, pair: PairKey, actor: str, *, record_if_nothing_cleared: bool = True) -> bool:
        """Clear the auto-disable and the timed manual disable and reset the failure count.

        One `enabled` event (cause manual) per disable cleared, or one `manual-enable` event when
        nothing was disabled (not with `record_if_nothing_cleared=False`: the caller records the
        action itself, e.g. as the config write-back that switches the pair back on). A disable
        whose time had already passed is recorded as expired first. True when a disable was cleared.
        """
        vendor, model = pair
        now = self._now()
        self._expire_pair(pair, now)
        cleared = False
        state = self._states.get(pair)
        if state is not None:
            if state.disabled_until is not None:
                assert state.disabled_at is not None
                self._on_auto_transition(
                    pair, EnableTransition("manual", state.disabled_at, state.disabled_until), actor=actor
                )
                cleared = True
            self._states[pair] = failures.reset(self._states[pair])
        manual = self._manual.pop(pair, None)
        if manual is not None:
            event = failures.enabled_event(
                pair,
                at=now,
                reason=_MANUAL,
                cause="manual",
                disabled_at=manual.disabled_at,
                disabled_until=manual.disabled_until,
                actor=actor,
            )
            self._emit(event, _Write(event, clear_disabled=(vendor, model, _MANUAL)))
            cleared = True
        if not cleared and record_if_nothing_cleared:
            event = Event(kind="manual-enable", at=now, vendor=vendor, model=model, actor=actor)
            self._emit(event, _Write(event))
        return cleared

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Restore the persisted disables, then start the writer and the expiry/cleanup sweep.

        Disables keep their ORIGINAL timestamps; those already over are re-enabled now with cause
        `startup-expired`. Records of pairs not in the config are kept (memory and store) but do
        not affect routing.
        """
        if self._writer is not None:
            raise RuntimeError("FailureTracker already started")
        records = await self._store.load_disabled()
        self._committed_view = {(r.vendor, r.model, r.reason): r for r in records}
        now = self._now()
        for record in records:
            self._restore(record, now)
        self._last_cleanup = now
        self._writer = asyncio.create_task(self._write_loop(), name="failure-tracker-writer")
        self._sweeper = asyncio.create_task(self._sweep_loop(), name="failure-tracker-sweep")

    async def close(self) -> None:
        """Stop the sweep, flush pending writes (bounded by `close_timeout`), stop the writer.

        The store is not closed: its owner does that.
        """
        sweeper, self._sweeper = self._sweeper, None
        if sweeper is not None:
            sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeper
        if self._writer is not None and not await self.flush(self._close_timeout):
            self._log.warning("failure tracker closed with %d writes not committed", len(self._pending))
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

    def expire_due(self) -> int:
        """Record the end of every disable (both axes) whose time has come; returns how many.

        The background sweep calls this; it pops a heap of deadlines, so a tick costs O(expired).
        """
        now = self._now()
        count = 0
        while self._deadlines and self._deadlines[0][0] <= now:
            until, vendor, model, reason = heapq.heappop(self._deadlines)
            pair = (vendor, model)
            if reason == _AUTO:
                state = self._states.get(pair)
                if state is not None and state.disabled_until == until:
                    count += self._expire_pair(pair, now)
            else:
                manual = self._manual.get(pair)
                if manual is not None and manual.disabled_until == until:
                    count += self._expire_pair(pair, now)
        return count

    def drop_idle(self) -> int:
        """Forget pairs that are not disabled and have had no failure for `idle_seconds`."""
        now = self._clock()
        idle = [p for p, s in self._states.items() if failures.is_idle(s, now, self._idle_seconds)]
        for pair in idle:
            del self._states[pair]
        return len(idle)

    # ------------------------------------------------------------------ internals

    def _now(self) -> float:
        return failures.ms(self._clock())

    @staticmethod
    def _in_force(record: DisabledRecord, now: float) -> bool:
        return record.disabled_until is None or now < record.disabled_until

    def _restore(self, record: DisabledRecord, now: float) -> None:
        pair = (record.vendor, record.model)
        if record.reason == _AUTO:
            if record.disabled_until is None:
                self._log.warning("ignoring auto-disable row without an end vendor=%s model=%s", *pair)
                return
            if record.disabled_until <= now:
                self._on_auto_transition(
                    pair, EnableTransition("startup-expired", record.disabled_at, record.disabled_until)
                )
                return
            self._states[pair] = failures.restore(record)
            heapq.heappush(self._deadlines, (record.disabled_until, record.vendor, record.model, _AUTO))
        elif record.reason == _MANUAL:
            if record.disabled_until is not None and record.disabled_until <= now:
                self._end_manual(pair, record, now, cause="startup-expired")
                return
            self._manual[pair] = record
            if record.disabled_until is not None:
                heapq.heappush(self._deadlines, (record.disabled_until, record.vendor, record.model, _MANUAL))
        else:
            self._log.warning(
                "ignoring disabled row with unknown reason vendor=%s model=%s reason=%s", *pair, record.reason
            )

    def _expire_pair(self, pair: PairKey, now: float) -> int:
        """End whichever of the pair's disables are over; returns how many ended."""
        count = 0
        state = self._states.get(pair)
        if state is not None:
            new, ended = failures.expire(state, now)
            if ended is not None:
                self._states[pair] = new
                self._on_auto_transition(pair, ended)
                count += 1
        manual = self._manual.get(pair)
        if manual is not None and not self._in_force(manual, now):
            del self._manual[pair]
            self._end_manual(pair, manual, now, cause="expired")
            count += 1
        return count

    def _end_manual(self, pair: PairKey, record: DisabledRecord, now: float, *, cause: str) -> None:
        event = failures.enabled_event(
            pair,
            at=now,
            reason=_MANUAL,
            cause=cause,
            disabled_at=record.disabled_at,
            disabled_until=record.disabled_until,
        )
        self._emit(event, _Write(event, clear_disabled=(record.vendor, record.model, _MANUAL)))

    def _on_auto_transition(
        self, pair: PairKey, transition: DisableTransition | EnableTransition, *, actor: str | None = None
    ) -> None:
        vendor, model = pair
        if isinstance(transition, DisableTransition):
            event = failures.disabled_event(pair, transition)
            record = failures.auto_record(pair, self._states[pair])
            heapq.heappush(self._deadlines, (transition.disabled_until, vendor, model, _AUTO))
            self._emit(event, _Write(event, set_disabled=record))
        else:
            event = failures.enabled_event(
                pair,
                at=self._now(),
                reason=_AUTO,
                cause=transition.cause,
                disabled_at=transition.disabled_at,
                disabled_until=transition.disabled_until,
                actor=actor,
            )
            self._emit(event, _Write(event, clear_disabled=(vendor, model, _AUTO)))

    def record_event(self, event: Event) -> None:
        """Queue an audit event that is not a pair transition (config reloads, operator edits).

        It goes through the same ordered, retrying writer as the transitions, so an event that
        happens while the database is failing is written once it is back, in order. Listeners
        (metrics) see it too; the caller logs it.
        """
        self._notify_listeners(event)
        self._pending.append(_Write(event))
        self._enqueued += 1
        self._wakeup.set()

    def _emit(self, event: Event, write: _Write) -> None:
        """Log, tell the listeners, queue the write. Memory has already been updated."""
        self._log_event(event)
        self._notify_listeners(event)
        self._pending.append(write)
        self._enqueued += 1
        self._wakeup.set()

    def _notify_listeners(self, event: Event) -> None:
        for listener in list(self.listeners):
            try:
                listener(event)
            except Exception:
                self._log.exception("failure-tracker listener %r failed on %s", listener, event.kind)

    def _log_event(self, event: Event) -> None:
        log_event(event, self._log)

    def _notify_committed(self) -> None:
        still: list[tuple[int, asyncio.Future[None]]] = []
        for target, future in self._waiters:
            if future.done():
                continue
            if target <= self._committed:
                future.set_result(None)
            else:
                still.append((target, future))
        self._waiters = still

    async def _write_loop(self) -> None:
        while True:
            if not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            write = self._pending[0]
            delay = self._retry_initial
            attempt = 0
            while True:
                attempt += 1
                try:
                    await self._store.record(
                        write.event, set_disabled=write.set_disabled, clear_disabled=write.clear_disabled
                    )
                    break
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    self._persist_healthy = False
                    self._log.warning(
                        "store write failed (attempt %d, %d pending, retry in %.2fs): event=%s vendor=%s model=%s: %r",
                        attempt,
                        len(self._pending),
                        delay,
                        write.event.kind,
                        write.event.vendor,
                        write.event.model,
                        exc,
                    )
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self._retry_max)
            self._pending.popleft()
            self._apply_committed(write)
            self._committed += 1
            if not self._persist_healthy:
                self._log.info("store writes recovered after %d attempts", attempt)
            self._persist_healthy = True
            self._notify_committed()

    def _apply_committed(self, write: _Write) -> None:
        """The write is in the store: update the committed view the same way, tell the committed listeners."""
        if write.clear_disabled is not None:
            self._committed_view.pop(write.clear_disabled, None)
        record = write.set_disabled
        if record is not None:
            self._committed_view[(record.vendor, record.model, record.reason)] = record
        for listener in list(self.committed_listeners):
            try:
                listener(write.event)
            except Exception:
                self._log.exception("failure-tracker committed listener %r failed on %s", listener, write.event.kind)

    async def _sweep_loop(self) -> None:
        while True:
            try:
                self.expire_due()
                now = self._clock()
                if self._last_cleanup is None or now - self._last_cleanup >= self._cleanup_every:
                    self._last_cleanup = now
                    dropped = self.drop_idle()
                    if dropped:
                        self._log.debug("dropped %d idle failure records", dropped)
            except Exception:
                self._log.exception("failure-tracker sweep failed")
            await asyncio.sleep(self._sweep_interval)
