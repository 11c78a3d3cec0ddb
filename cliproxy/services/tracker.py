"""The failure tracker: the imperative shell around the pure rules `cliproxy.core.failures` and
`cliproxy.core.manual`.

It owns the clock, the per-pair state and the expiry/cleanup sweep. Each rule returns a
`Decision` (new state + effects); the tracker applies the state in memory (memory is
authoritative: routing uses it at once), logs each effect's event, and appends the effects to the
`Journal`, whose one writer commits them to the store in order.

Two independent axes make a pair unavailable:

- the automatic disable (`failures.PairState`), tripped by the counting-window rule and ended by
  expiry or by `manual_enable`;
- an operator's timed manual disable (`manual_disable(pair, duration, actor)`), ended by its own
  expiry or by `manual_enable`. An automatic re-enable never ends a manual disable. The permanent
  operator switch lives in the config file and is not handled here;
- the upstream's rate limit (`cliproxy.core.rate_limit`): a 429/503 with a Retry-After hint makes
  the pair unavailable until then at once, ended by expiry or by `manual_enable`.

The hot path (`record_outcome`, `is_available`, `seconds_until_available`) is synchronous and O(1):
no awaiting, no disk.

Reports read the COMMITTED view, never memory: `committed_disabled_pairs()` / `committed_record()`
are the journal's committed rows still in force by this tracker's clock. Memory may already hold
newer transitions; after kill -9 those would be gone, so nothing reports them until they are in
SQLite (see `cliproxy.services.journal`).

Because asyncio runs one callback at a time and `record_outcome` never awaits, any number of
concurrent failing requests trip exactly one disable.

Recovery (`cliproxy.core.failures`): a pair under `recovery: half-open` whose disable's time has
come admits at most `half-open-requests` requests at a time: `admit(pair)` takes a slot and the
request's owner gives it back with `release(pair)` whatever happens to it (memory only: after a
restart no request holds one). A pair under `recovery: probe` whose time has come is probing: no
request is admitted, and `pairs_due_for_probe()` lists it for the prober (`cliproxy.web.prober`,
which does the HTTP), which reports back through `probe_result`.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import time
from collections.abc import Callable, Mapping
from typing import Literal

from cliproxy.core import failures, manual, policies
from cliproxy.core.config import AutoDisableSettings, PairKey
from cliproxy.core.eventlog import log_event
from cliproxy.core.events import BackoffRecord, Decision, DisabledRecord, Effect, ErrorInfo, KeyRecord, Outcome
from cliproxy.core.failures import AUTO, PairState
from cliproxy.core.manual import MANUAL
from cliproxy.core.rate_limit import RATE_LIMITED
from cliproxy.core.routing import RoutingTable
from cliproxy.services.journal import Journal
from cliproxy.services.key_tracker import KeyTracker
from cliproxy.services.rate_limits import RateLimits
from cliproxy.services.slow_starts import SlowStarts

__all__ = ["FailureTracker"]

_log = logging.getLogger("cliproxy.tracker")  # the name operators grep for; kept across the move


class FailureTracker:
    """Counts failures per (vendor, model) pair, disables and re-enables pairs; an `OutcomeSink`."""

    def __init__(
        self,
        journal: Journal,
        settings: Mapping[PairKey, AutoDisableSettings],
        *,
        clock: Callable[[], float] = time.time,
        logger: logging.Logger = _log,
        sweep_interval: float = 0.5,
        idle_seconds: float = 3600.0,
        cleanup_every_seconds: float = 60.0,
    ) -> None:
        #: Where the effects of every transition go (in order, retried, committed in the background).
        self.journal = journal
        self._settings: dict[PairKey, AutoDisableSettings] = dict(settings)
        self._clock = clock
        self._log = logger
        self._sweep_interval = sweep_interval
        self._idle_seconds = idle_seconds
        self._cleanup_every = cleanup_every_seconds

        self._states: dict[PairKey, PairState] = {}
        self._manual: dict[PairKey, DisabledRecord] = {}
        # (disabled_until, vendor, model, reason); entries that no longer match the state are skipped.
        self._deadlines: list[tuple[float, str, str, str]] = []
        self._last_cleanup: float | None = None
        self._sweeper: asyncio.Task[None] | None = None
        #: Slow start: when each recently re-enabled pair came back, in memory and as committed.
        self.slow_starts = SlowStarts(journal, settings_for=self.settings_for, clock=clock)
        #: For `max-disabled-fraction`: each pair's peers by name (`RoutingTable.peers`), set by `update_peers`.
        self._peers: Mapping[PairKey, tuple[tuple[PairKey, ...], ...]] = {}
        # recovery: half-open slots taken, pairs waiting for a probe and those whose probe is under way
        self._half_open_taken: dict[PairKey, int] = {}
        self._probing: set[PairKey] = set()
        self._probe_in_flight: set[PairKey] = set()
        #: Set when a pair starts waiting for a probe; the prober waits on it.
        self.probes_due = asyncio.Event()
        #: The upstream's rate limits (reason rate-limited); their ends go on this tracker's heap.
        self.rate_limits = RateLimits(
            settings_for=self.settings_for, now=self._now, carry_out=self._carry_out, on_deadline=self._push_rate_limit_deadline
        )
        #: The key scope (issue 14): each vendor's keys out of the rotation.
        self.keys = KeyTracker(journal, settings_for=self.settings_for, clock=clock, now=self._now, carry_out=self._carry_out)

    # ------------------------------------------------------------------ settings and views

    def update_settings(self, settings: Mapping[PairKey, AutoDisableSettings]) -> None:
        """Swap in the settings of a reloaded config; all state and counts are kept.

        A pair left half-open or probing by a reload to `recovery: timer` is re-enabled now (expired).
        """
        self._settings = dict(settings)
        now = self._now()
        for pair in [p for p, s in self._states.items() if s.disabled_until is not None and s.disabled_until <= now]:
            self._expire_pair(pair, now)
            self._note_probe_due(pair)

    def update_peers(self, peers: Mapping[PairKey, tuple[tuple[PairKey, ...], ...]]) -> None:
        """Swap in which pairs serve each pair's names (`RoutingTable.peers`), read only when a pair trips."""
        self._peers = peers

    def settings_for(self, pair: PairKey) -> AutoDisableSettings | None:
        """The effective rule of a configured pair, None for a pair not in the config."""
        return self._settings.get(pair)

    def state(self, pair: PairKey) -> PairState | None:
        """The pair's automatic-disable state as of now (an expired disable shows as ended), or None."""
        state = self._states.get(pair)
        if state is None:
            return None
        return failures.as_of(state, self._clock(), self._settings.get(pair))

    def recovery_phase(self, pair: PairKey) -> str | None:
        """`half-open` or `probing` while the pair waits for its recovery verdict, else None."""
        state, settings = self._states.get(pair), self._settings.get(pair)
        if state is None or settings is None:
            return None
        return failures.recovery_phase(state, settings, self._clock())

    def disable_level(self, pair: PairKey) -> int:
        """The pair's backoff level now (0: none), as held in memory."""
        state, settings = self._states.get(pair), self._settings.get(pair)
        if state is None or settings is None:
            return 0
        return failures.current_level(state, settings, self._clock())

    def committed_level(self, pair: PairKey) -> int:
        """The pair's backoff level now as committed to the store: the auto row's while it is held,
        else the decayed level of the pair back in service (0: none)."""
        row = self.journal.committed_row((pair[0], pair[1], AUTO))
        if row is not None:
            return row.disable_level
        level, settings = self.journal.committed_level(pair), self._settings.get(pair)
        if level is None or settings is None:
            return 0
        return failures.current_level(_level_state(level), settings, self._clock())

    def committed_recovery_phase(self, pair: PairKey) -> str | None:
        """`half-open` or `probing` from the committed auto row (its time passed, the recovery mode not timer)."""
        row, settings = self.journal.committed_row((pair[0], pair[1], AUTO)), self._settings.get(pair)
        if row is None or settings is None or row.disabled_until is None:
            return None
        return failures.recovery_phase(PairState(disabled_until=row.disabled_until), settings, self._clock())

    def manual_record(self, pair: PairKey) -> DisabledRecord | None:
        """The pair's timed manual disable while it is in force, or None."""
        record = self._manual.get(pair)
        if record is None or not manual.in_force(record, self._clock()):
            return None
        return record

    def rate_limit_record(self, pair: PairKey) -> DisabledRecord | None:
        """The pair's rate limit while it is in force, or None."""
        return self.rate_limits.in_force(pair, self._clock())

    def disabled_pairs(self) -> list[DisabledRecord]:
        """Every disable in force now, every axis (reason auto | manual | rate-limited), sorted by vendor, model, reason.

        Pairs no longer in the config are included; `settings_for(pair) is None` tells them apart.
        """
        now = self._clock()
        out: list[DisabledRecord] = []
        for pair, state in self._states.items():
            if failures.is_disabled(state, now):
                record = failures.auto_record(pair, state)
                assert record is not None
                out.append(record)
        out.extend(r for r in self._manual.values() if manual.in_force(r, now))
        out.extend(self.rate_limits.all_in_force(now))
        out.sort(key=lambda r: (r.vendor, r.model, r.reason))
        return out

    def committed_record(self, pair: PairKey, reason: str) -> DisabledRecord | None:
        """The pair's disable of `reason` (auto | manual) as committed to the store, while in force."""
        record = self.journal.committed_row((pair[0], pair[1], reason))
        if record is None or not manual.in_force(record, self._clock()):
            return None
        return record

    def committed_disabled_pairs(self) -> list[DisabledRecord]:
        """Like `disabled_pairs()`, but only disables whose write has been committed (what reports show).

        A committed disable whose time has passed is left out: a restart would end it too.
        """
        now = self._clock()
        out = [r for r in self.journal.committed_rows() if manual.in_force(r, now)]
        out.sort(key=lambda r: (r.vendor, r.model, r.reason))
        return out

    def committed_awaiting_recovery(self) -> list[tuple[DisabledRecord, str]]:
        """Committed automatic disables whose time has passed but whose `recovery` (half-open, probe)
        still waits for a verdict, each with its phase (`half-open` or `probing`); by vendor, model."""
        out: list[tuple[DisabledRecord, str]] = []
        for row in self.journal.committed_rows():
            if row.reason == AUTO and (phase := self.committed_recovery_phase((row.vendor, row.model))) is not None:
                out.append((row, phase))
        out.sort(key=lambda item: (item[0].vendor, item[0].model))
        return out

    # ------------------------------------------------------------------ hot path (sync, O(1))

    def record_outcome(self, pair: PairKey, outcome: Outcome) -> None:
        """Apply one attempt's outcome. Neutral outcomes and pairs not in the config are ignored,
        except that any 429/503 carrying a Retry-After hint rate-limits the pair (counted or not)."""
        if outcome.retry_headers:
            self.rate_limits.note_outcome(pair, outcome)
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
        now = self._now()
        decision = failures.apply_outcome(pair, state, outcome, settings, now)
        self._apply_auto(pair, self._apply_policies(pair, decision, settings, now))

    def _apply_policies(
        self, pair: PairKey, decision: Decision[PairState], settings: AutoDisableSettings, now: float
    ) -> Decision[PairState]:
        """A trip held back by `enforce: false` or by `max-disabled-fraction` becomes a `would-disable`.

        Runs only when the pair trips, and then costs O(pairs serving its names), never per request.
        """
        if not policies.trips(decision):
            return decision
        if not settings.enforce:
            return policies.restrain(decision, policies.DRY_RUN)
        if settings.max_disabled_fraction >= 1.0:
            return decision
        for members in self._peers.get(pair, ()):
            others = sum(1 for key in members if key != pair and not self.is_available(key))
            if policies.would_exceed(others, len(members), settings.max_disabled_fraction):
                detail = {"unavailable": others, "pairs": len(members), "max_disabled_fraction": settings.max_disabled_fraction}
                return policies.restrain(decision, policies.MAX_DISABLED_FRACTION, detail)
        return decision

    def is_available(self, pair: PairKey) -> bool:
        """False while the pair is auto-disabled or under a timed manual disable.

        Computed from the clock, so a pair whose time has passed is routable at once, before the
        sweep records the re-enable. Pairs not in the config are not judged here (always True).
        """
        settings = self._settings.get(pair)
        if settings is None:
            return True
        if self.credentials_out(pair[0]):
            return False
        now = self._clock()
        state = self._states.get(pair)
        if state is not None and failures.is_disabled(state, now):
            return False
        timed = self._manual.get(pair)
        if timed is not None and manual.in_force(timed, now):
            return False
        if self.rate_limits.in_force(pair, now) is not None:
            return False
        if state is not None and failures.awaiting_recovery(state, settings, now):
            return settings.recovery == "half-open" and self._half_open_taken.get(pair, 0) < settings.half_open_requests
        return True

    def weight(self, pair: PairKey) -> float:
        """The pair's weight in its priority tier: 1.0, or less while it slow-starts after a re-enable. O(1)."""
        return self.slow_starts.weight(pair, self._states.get(pair))

    def slow_starting_pairs(self) -> list[PairKey]:
        """The pairs slow-starting now, as committed, sorted (for the metrics, at scrape)."""
        return self.slow_starts.committed_pairs()

    def slow_start_until(self, pair: PairKey) -> float | None:
        """When the pair's slow start ends, as committed (what reports show); None when it is not slow-starting."""
        return self.slow_starts.until(pair)

    def admit(self, pair: PairKey) -> bool:
        """`is_available`, and a half-open pair's slot taken for the caller (give it back with `release`)."""
        if not self.is_available(pair):
            return False
        if self.recovery_phase(pair) == "half-open":
            self._half_open_taken[pair] = self._half_open_taken.get(pair, 0) + 1
        return True

    def half_open_waiting(self, pair: PairKey) -> bool:
        """True when the pair is half-open with every slot taken: a request may still go there when
        nothing else can serve it (without a slot)."""
        settings = self._settings.get(pair)
        if settings is None or self.recovery_phase(pair) != "half-open" or self.disabled_by(pair) == "manual":
            return False
        return self._half_open_taken.get(pair, 0) >= settings.half_open_requests

    def release(self, pair: PairKey) -> None:
        """Give back a half-open slot `admit` took (a no-op once the pair has left half-open)."""
        taken = self._half_open_taken.get(pair, 0)
        if taken <= 1:
            self._half_open_taken.pop(pair, None)
        else:
            self._half_open_taken[pair] = taken - 1

    def seconds_until_available(self, pair: PairKey) -> float | None:
        """Seconds until both axes have ended; 0.0 when available now, None when never or unknown."""
        if pair not in self._settings:
            return None
        now = self._clock()
        wait = 0.0
        state = self._states.get(pair)
        if state is not None:
            wait = failures.remaining(state, now)
        timed = self._manual.get(pair)
        if timed is not None and manual.in_force(timed, now):
            if timed.disabled_until is None:
                return None
            wait = max(wait, timed.disabled_until - now)
        limited = self.rate_limits.in_force(pair, now)
        if limited is not None and limited.disabled_until is not None:
            wait = max(wait, limited.disabled_until - now)
        if self.credentials_out(pair[0]):
            wait = max(wait, self.keys.first_key_back(pair[0], now))
        settings = self._settings[pair]
        if wait == 0.0 and state is not None and failures.recovery_phase(state, settings, now) == "probing":
            return settings.probe_timeout_seconds  # the probe's verdict comes within its timeout
        return wait

    def disabled_by(self, pair: PairKey) -> Literal["auto", "manual", "rate-limited", "credentials"] | None:
        """ "manual" while an operator's timed disable is in force, else "auto" while auto-disabled, else
        "rate-limited" while the upstream's rate limit holds, else None."""
        if pair not in self._settings:
            return None
        now = self._clock()
        timed = self._manual.get(pair)
        if timed is not None and manual.in_force(timed, now):
            return "manual"
        state = self._states.get(pair)
        if state is not None and failures.is_disabled(state, now):
            return "auto"
        if self.rate_limits.in_force(pair, now) is not None:
            return "rate-limited"
        if self.credentials_out(pair[0]):
            return "credentials"
        if state is not None and not self.is_available(pair):
            return "auto"  # probing, or half-open with every slot taken
        return None

    # ------------------------------------------------------------------ operator actions

    async def manual_disable(self, pair: PairKey, duration_seconds: float | None, actor: str) -> None:
        """An operator's disable. With a duration: held here and in the store (reason manual).

        Without one only a `manual-disable` event is recorded: the permanent switch is the config's.
        Applied in memory at once and queued; `await flush()` to know it is committed. A duration
        that is not > 0 raises ValueError. Outcomes keep counting towards the auto-disable meanwhile.
        """
        self._apply_manual(pair, manual.disable(pair, self._manual.get(pair), duration_seconds, actor, self._now()))

    async def manual_enable(self, pair: PairKey, actor: str, *, record_if_nothing_cleared: bool = True) -> bool:
        """Clear the auto-disable and the timed manual disable and reset the failure count.

        One `enabled` event (cause manual) per disable cleared, or one `manual-enable` event when
        nothing was disabled (not with `record_if_nothing_cleared=False`: the caller records the
        action itself, e.g. as the config write-back that switches the pair back on). A disable
        whose time had already passed is recorded as expired first. True when a disable was cleared.
        """
        now = self._now()
        limited = self.rate_limits.end_by_operator(pair, now, actor)
        limit_cleared = manual.cleared(limited.effects)
        axes = manual.Axes(self._states.get(pair), self._manual.get(pair))
        decision = manual.enable(
            pair,
            axes,
            actor,
            now,
            record_if_nothing_cleared=record_if_nothing_cleared and not limit_cleared,
            settings=self._settings.get(pair),
        )
        if decision.state.auto is not None:
            self._states[pair] = decision.state.auto
        self._manual.pop(pair, None)
        self._carry_out(decision.effects)
        self.rate_limits.apply(pair, limited)
        return limit_cleared or manual.cleared(decision.effects)

    async def clear_disable(self, pair: PairKey, reason: str, actor: str) -> bool:
        """End the pair's disable of one `reason` (auto | manual | rate-limited) by an operator: one
        `enabled` event (cause manual) when it was in force, the others left alone (enable-all's filter).
        One whose time had already passed is recorded as expired. True when a disable was cleared."""
        now = self._now()
        if reason == AUTO:
            state = self._states.get(pair)
            if state is None:
                return False
            expired = failures.expire(pair, state, now)
            ended = failures.end_by_operator(pair, expired.state, now, actor)
            assert ended.state is not None
            self._apply_auto(pair, Decision(ended.state, (*expired.effects, *ended.effects)))
            return manual.cleared(ended.effects)
        if reason == MANUAL:
            expired_manual = manual.expire(pair, self._manual.get(pair), now)
            timed = expired_manual.state
            if timed is None:
                self._apply_manual(pair, expired_manual)
                return False
            effect = failures.ended_effect(
                pair, MANUAL, timed.disabled_at, timed.disabled_until, now, cause="manual", actor=actor
            )
            self._apply_manual(pair, Decision(None, (effect,)))
            return True
        if reason == RATE_LIMITED:
            decision = self.rate_limits.end_by_operator(pair, now, actor)
            self.rate_limits.apply(pair, decision)
            return manual.cleared(decision.effects)
        raise ValueError(f"unknown disable reason {reason!r}")

    # ------------------------------------------------------------------ key scope (issue 14): see `KeyTracker`

    def update_keys(self, table: RoutingTable) -> None:
        """Learn each vendor's keys and models from a (re)loaded config (before `start`, and on each reload)."""
        self.keys.update_keys(table)

    def key_usable(self, vendor: str, index: int) -> bool:
        """False while the vendor's key at `index` is out of the rotation; O(1), by the clock."""
        return self.keys.key_usable(vendor, index)

    def record_key_failure(self, pair: PairKey, index: int, outcome: Outcome) -> bool:
        """The vendor's key at `index` goes out of the rotation; False when the pair or key is not in the config."""
        return self.keys.record_key_failure(pair, index, outcome)

    def credentials_out(self, vendor: str) -> bool:
        """True while every key of a vendor that has keys is out (its pairs: reason `credentials`)."""
        return self.keys.credentials_out(vendor)

    async def enable_key(self, vendor: str, index: int, actor: str) -> bool:
        """An operator puts the key back in the rotation now. True when it was out."""
        return await self.keys.enable_key(vendor, index, actor)

    def keys_of(self, vendor: str) -> dict[int, str]:
        """The vendor's keys with a value: index in `api-key-entries` -> hash of the value."""
        return self.keys.keys_of(vendor)

    def committed_key(self, vendor: str, index: int) -> KeyRecord | None:
        """The key's time out as committed to the store while it is in force, or None."""
        return self.keys.committed_key(vendor, index)

    def key_vendors(self) -> list[str]:
        """The vendors that have keys, sorted."""
        return self.keys.key_vendors()

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Restore the disables the journal holds as committed, then start the expiry/cleanup sweep.

        Start the journal first. Disables keep their ORIGINAL timestamps; those already over are
        re-enabled now with cause `startup-expired`. Records of pairs not in the config are kept
        (memory and store) but do not affect routing.
        """
        if self._sweeper is not None:
            raise RuntimeError("FailureTracker already started")
        now = self._now()
        await self.slow_starts.restore(max((s.slow_start_seconds for s in self._settings.values()), default=0.0), now)
        for level in self.journal.committed_backoff():
            self._restore_level(level, now)
        for record in self.journal.committed_rows():
            self._restore(record, now)
        self.keys.restore(now)
        self._last_cleanup = now
        self._sweeper = asyncio.create_task(self._sweep_loop(), name="failure-tracker-sweep")

    async def close(self) -> None:
        """Stop the sweep. The journal (which flushes what is queued) is its owner's to close."""
        sweeper, self._sweeper = self._sweeper, None
        if sweeper is not None:
            sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeper

    async def flush(self, timeout: float | None = None) -> bool:
        """Wait until every transition applied so far is committed (True) or `timeout` passed (False);
        see `Journal.flush`."""
        return await self.journal.flush(timeout)

    def expire_due(self) -> int:
        """Record the end of every disable (both axes) whose time has come; returns how many.

        The background sweep calls this; it pops a heap of deadlines, so a tick costs O(expired).
        """
        now = self._now()
        count = 0
        while self._deadlines and self._deadlines[0][0] <= now:
            until, vendor, model, reason = heapq.heappop(self._deadlines)
            pair = (vendor, model)
            if reason == AUTO:
                state = self._states.get(pair)
                if state is not None and state.disabled_until == until:
                    count += self._expire_pair(pair, now)
                    self._note_probe_due(pair)
            elif reason == RATE_LIMITED:
                limited = self.rate_limits.held(pair)
                if limited is not None and limited.disabled_until == until:
                    count += self._expire_pair(pair, now)
            else:
                timed = self._manual.get(pair)
                if timed is not None and timed.disabled_until == until:
                    count += self._expire_pair(pair, now)
        return count + self.keys.expire_due(now)

    def drop_idle(self) -> int:
        """Forget pairs that are not disabled and have had no failure for `idle_seconds`."""
        now = self._clock()
        idle = [p for p, s in self._states.items() if failures.is_idle(s, now, self._idle_seconds, self._settings.get(p))]
        for pair in idle:
            del self._states[pair]
        self.slow_starts.drop_over(now)
        return len(idle)

    # ------------------------------------------------------------------ probes (recovery: probe)

    def pairs_due_for_probe(self) -> list[PairKey]:
        """Pairs probing now with no probe under way (the prober sends one to each)."""
        now = self._clock()
        due: list[PairKey] = []
        for pair in list(self._probing):
            state, settings = self._states.get(pair), self._settings.get(pair)
            if state is None or settings is None or failures.recovery_phase(state, settings, now) != "probing":
                self._probing.discard(pair)  # resolved meanwhile (an operator, a reload)
            elif pair not in self._probe_in_flight:
                due.append(pair)
        self.probes_due.clear()
        return sorted(due)

    def probe_started(self, pair: PairKey) -> None:
        """The prober sends a probe to `pair` now: it is not due again until `probe_result`."""
        self._probe_in_flight.add(pair)

    def probe_abandoned(self, pair: PairKey) -> None:
        """The probe of `pair` ended without a verdict (cancelled): it is due again."""
        self._probe_in_flight.discard(pair)
        if pair in self._probing:
            self.probes_due.set()

    def probe_result(self, pair: PairKey, error: ErrorInfo | None) -> None:
        """The probe of `pair` answered 2xx (`error` None), or failed with `error`."""
        self._probe_in_flight.discard(pair)
        self._probing.discard(pair)
        state, settings = self._states.get(pair), self._settings.get(pair)
        if state is None or settings is None:
            return
        now = self._now()
        if error is None:
            self._apply_auto(pair, failures.probe_succeeded(pair, state, settings, now))
        else:
            self._apply_auto(pair, failures.probe_failed(pair, state, settings, error, now))

    def _note_probe_due(self, pair: PairKey) -> None:
        state, settings = self._states.get(pair), self._settings.get(pair)
        if state is not None and settings is not None and failures.recovery_phase(state, settings, self._clock()) == "probing":
            self._probing.add(pair)
            self.probes_due.set()

    # ------------------------------------------------------------------ applying decisions

    def _now(self) -> float:
        return failures.ms(self._clock())

    def _apply_auto(self, pair: PairKey, decision: Decision[PairState] | Decision[PairState | None]) -> None:
        """Memory first (the state, and the deadline of a disable it starts), then the effects."""
        old, new = self._states.get(pair), decision.state
        if new is None:
            self._states.pop(pair, None)
        elif new is not old:
            self._states[pair] = new
            if new.disabled_until is not None and (old is None or old.disabled_until != new.disabled_until):
                heapq.heappush(self._deadlines, (new.disabled_until, pair[0], pair[1], AUTO))
        self._carry_out(decision.effects)

    def _apply_manual(self, pair: PairKey, decision: Decision[DisabledRecord | None]) -> None:
        old, new = self._manual.get(pair), decision.state
        if new is None:
            self._manual.pop(pair, None)
        elif new is not old:
            self._manual[pair] = new
            if new.disabled_until is not None:
                heapq.heappush(self._deadlines, (new.disabled_until, pair[0], pair[1], MANUAL))
        self._carry_out(decision.effects)

    def _push_rate_limit_deadline(self, pair: PairKey, until: float) -> None:
        heapq.heappush(self._deadlines, (until, pair[0], pair[1], RATE_LIMITED))

    def _carry_out(self, effects: tuple[Effect, ...]) -> None:
        """Log each effect's event and hand it to the journal. Memory has already been updated."""
        for effect in effects:
            self.slow_starts.note_applied(effect.event)
            log_event(effect.event, self._log)
            self.journal.append(effect)

    def _restore(self, record: DisabledRecord, now: float) -> None:
        pair = (record.vendor, record.model)
        if record.reason == AUTO:
            if record.disabled_until is None:
                self._log.warning("ignoring auto-disable row without an end vendor=%s model=%s", *pair)
                return
            self._apply_auto(pair, failures.restore(record, now, self._settings.get(pair)))
            self._note_probe_due(pair)
        elif record.reason == MANUAL:
            self._apply_manual(pair, manual.restore(record, now))
        elif record.reason == RATE_LIMITED:
            self.rate_limits.restore(record, now)
        else:
            self._log.warning("ignoring disabled row with unknown reason vendor=%s model=%s reason=%s", *pair, record.reason)

    def _restore_level(self, level: BackoffRecord, now: float) -> None:
        """A backoff level of a pair back in service, read back at start-up (the auto rows come after)."""
        pair = (level.vendor, level.model)
        settings = self._settings.get(pair)
        if settings is None or failures.current_level(_level_state(level), settings, now) == 0:
            return  # decayed (or no longer configured): nothing to hold
        self._states[pair] = failures.restore_level(level.disable_level, level.level_since, self._states.get(pair))

    def _expire_pair(self, pair: PairKey, now: float) -> int:
        """End whichever of the pair's disables are over; returns how many ended."""
        count = 0
        state = self._states.get(pair)
        if state is not None:
            decision = failures.expire(pair, state, now, self._settings.get(pair))
            count += len(decision.effects)
            self._apply_auto(pair, decision)
        decision_manual = manual.expire(pair, self._manual.get(pair), now)
        count += len(decision_manual.effects)
        self._apply_manual(pair, decision_manual)
        count += self.rate_limits.expire(pair, now)
        return count

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


def _level_state(level: BackoffRecord) -> PairState:
    """A pair back in service at a committed backoff level, to compute its decay."""
    return PairState(disable_level=level.disable_level, level_since=level.level_since)
