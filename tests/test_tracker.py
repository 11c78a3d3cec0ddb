"""The failure tracker shell: real asyncio, a FakeClock, an in-memory store (and the real SQLite one)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import replace
from pathlib import Path

import pytest

from cliproxy.core.config import DEFAULT_COUNT_STATUSES, AutoDisableSettings, PairKey
from cliproxy.core.events import DisabledRecord, ErrorInfo, Event, Outcome
from cliproxy.services.journal import Journal
from cliproxy.services.tracker import FailureTracker
from tests.helpers import FakeClock, eventually

T0 = 1_700_000_000.0
PAIR: PairKey = ("acme", "gpt-x")
OTHER: PairKey = ("acme", "gpt-y")
FAIL = Outcome("failure", "http_status", ErrorInfo(503, "upstream down"))
OK = Outcome("success", "ok")


def rule(threshold: int = 3, window: float = 60.0, duration: float = 300.0) -> AutoDisableSettings:
    return AutoDisableSettings(
        failure_threshold=threshold,
        time_window_seconds=window,
        disable_duration_seconds=duration,
        count_statuses=DEFAULT_COUNT_STATUSES,
    )


SETTINGS: dict[PairKey, AutoDisableSettings] = {PAIR: rule(), OTHER: rule()}


class MemoryStore:
    """An in-memory `Store`: events in a list, current-state rows in a dict.

    `fail_next` makes that many `record` calls raise; `gate`, when set, holds every `record` until
    it is opened.
    """

    def __init__(self) -> None:
        self.history: list[Event] = []
        self.rows: dict[tuple[str, str, str], DisabledRecord] = {}
        self.fail_next = 0
        self.calls = 0
        self.gate: asyncio.Event | None = None

    async def record(
        self,
        event: Event,
        *,
        set_disabled: DisabledRecord | None = None,
        clear_disabled: tuple[str, str, str] | None = None,
    ) -> int:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.fail_next > 0:
            self.fail_next -= 1
            raise OSError("database is locked")
        event_id = len(self.history) + 1
        self.history.append(replace(event, id=event_id))
        if clear_disabled is not None:
            self.rows.pop(clear_disabled, None)
        if set_disabled is not None:
            self.rows[(set_disabled.vendor, set_disabled.model, set_disabled.reason)] = set_disabled
        return event_id

    async def load_disabled(self) -> list[DisabledRecord]:
        return [self.rows[k] for k in sorted(self.rows)]

    async def events(
        self,
        *,
        vendor: str | None = None,
        model: str | None = None,
        kind: str | None = None,
        since: float | None = None,
        before_id: int | None = None,
        limit: int = 100,
    ) -> list[Event]:
        out = [
            e
            for e in reversed(self.history)
            if (vendor is None or e.vendor == vendor)
            and (model is None or e.model == model)
            and (kind is None or e.kind == kind)
            and (since is None or e.at >= since)
            and (before_id is None or (e.id or 0) < before_id)
        ]
        return out[:limit]

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        return None

    def kinds(self) -> list[str]:
        return [e.kind for e in self.history]


MakeTracker = Callable[..., Awaitable[FailureTracker]]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


@pytest.fixture
async def make_tracker(clock: FakeClock) -> AsyncIterator[MakeTracker]:
    """Build and start trackers on their own journals with fast background loops; close them all at the end."""
    made: list[FailureTracker] = []

    async def make(
        store: object,
        settings: Mapping[PairKey, AutoDisableSettings] = SETTINGS,
        *,
        start: bool = True,
        **kwargs: object,
    ) -> FailureTracker:
        journal_options: dict[str, object] = {"retry_initial": 0.001, "retry_max": 0.004, "close_timeout": 1.0}
        options: dict[str, object] = {"clock": clock, "sweep_interval": 0.002}
        for key, value in kwargs.items():
            (journal_options if key in journal_options else options)[key] = value
        journal = Journal(store, **journal_options)  # type: ignore[arg-type]
        tracker = FailureTracker(journal, settings, **options)  # type: ignore[arg-type]
        made.append(tracker)
        if start:
            await begin(tracker)
        return tracker

    yield make
    for tracker in made:
        await shut(tracker)


async def begin(tracker: FailureTracker) -> None:
    """Start as the app does: the journal (seeding its committed view from the store), then the tracker."""
    await tracker.journal.start()
    await tracker.start()


async def shut(tracker: FailureTracker) -> None:
    """Close as the app does: the tracker's sweep, then the journal (flushing what is queued)."""
    await tracker.close()
    await tracker.journal.close()


def trip(tracker: FailureTracker, pair: PairKey = PAIR, n: int = 3) -> None:
    for _ in range(n):
        tracker.record_outcome(pair, FAIL)


class TestAutoDisable:
    """Reaching the threshold disables the pair at once and persists one `disabled` event and row."""

    async def test_disable_is_recorded(self, store: MemoryStore, make_tracker: MakeTracker, clock: FakeClock) -> None:
        tracker = await make_tracker(store)
        tracker.record_outcome(PAIR, FAIL)
        clock.advance(1.5)
        trip(tracker, n=2)
        assert not tracker.is_available(PAIR)
        assert tracker.is_available(OTHER)
        assert tracker.seconds_until_available(PAIR) == pytest.approx(300.0)
        assert await tracker.flush(1.0)
        (event,) = store.history
        assert (event.kind, event.vendor, event.model, event.reason) == ("disabled", "acme", "gpt-x", "auto")
        assert (event.failure_count, event.window_started_at) == (3, T0)
        assert (event.disabled_at, event.disabled_until) == (T0 + 1.5, T0 + 301.5)
        assert event.settings == {"failure_threshold": 3, "time_window_seconds": 60.0, "disable_duration_seconds": 300.0}
        assert event.last_error == ErrorInfo(503, "upstream down")
        assert store.rows[("acme", "gpt-x", "auto")] == DisabledRecord(
            vendor="acme",
            model="gpt-x",
            reason="auto",
            disabled_at=T0 + 1.5,
            disabled_until=T0 + 301.5,
            failure_count=3,
            window_started_at=T0,
            last_error=ErrorInfo(503, "upstream down"),
            last_failure_at=T0 + 1.5,
        )
        assert event.last_failure_at == T0 + 1.5  # the failure that tripped it
        assert tracker.disabled_pairs() == [store.rows[("acme", "gpt-x", "auto")]]

    async def test_stamps_are_rounded_to_the_millisecond(self, store: MemoryStore, make_tracker: MakeTracker) -> None:
        tracker = await make_tracker(store, clock=FakeClock(T0 + 0.123456789))
        trip(tracker)
        state = tracker.state(PAIR)
        assert state is not None
        assert (state.disabled_at, state.disabled_until) == (T0 + 0.123, T0 + 300.123)

    async def test_neutral_success_and_unknown_pairs(self, store: MemoryStore, make_tracker: MakeTracker) -> None:
        tracker = await make_tracker(store)
        unknown = ("nobody", "nothing")
        trip(tracker, unknown, n=10)
        assert tracker.state(unknown) is None and tracker.is_available(unknown)
        tracker.record_outcome(PAIR, OK)
        assert tracker.state(PAIR) is None  # a success on a clean pair keeps nothing
        trip(tracker, n=2)
        for _ in range(5):
            tracker.record_outcome(PAIR, Outcome("neutral", "client_error"))
        assert tracker.state(PAIR).failure_count == 2  # type: ignore[union-attr]
        tracker.record_outcome(PAIR, OK)
        trip(tracker, n=2)
        assert tracker.is_available(PAIR)
        assert await tracker.flush(1.0) and store.history == []

    async def test_update_settings_keeps_counts(self, store: MemoryStore, make_tracker: MakeTracker) -> None:
        tracker = await make_tracker(store, {PAIR: rule(threshold=5)})
        trip(tracker, n=3)
        tracker.update_settings({PAIR: rule(threshold=4, duration=10.0)})
        assert tracker.state(PAIR).failure_count == 3  # type: ignore[union-attr]
        assert tracker.settings_for(PAIR) == rule(threshold=4, duration=10.0)
        tracker.record_outcome(PAIR, FAIL)
        assert not tracker.is_available(PAIR)
        assert tracker.seconds_until_available(PAIR) == pytest.approx(10.0)

    async def test_threshold_zero_never_disables(self, store: MemoryStore, make_tracker: MakeTracker) -> None:
        tracker = await make_tracker(store, {PAIR: rule(threshold=0)})
        trip(tracker, n=100)
        assert tracker.is_available(PAIR)
        assert await tracker.flush(1.0) and store.history == []

    async def test_listeners_and_logs(
        self, store: MemoryStore, make_tracker: MakeTracker, clock: FakeClock, caplog: pytest.LogCaptureFixture
    ) -> None:
        tracker = await make_tracker(store)
        seen: list[str] = []

        def broken(event: Event) -> None:
            raise RuntimeError("listener bug")

        tracker.journal.listeners.append(broken)
        tracker.journal.listeners.append(lambda e: seen.append(e.kind))
        with caplog.at_level(logging.INFO, logger="cliproxy.tracker"):
            trip(tracker)
            assert seen == ["disabled"]  # synchronously, before anything was awaited
            clock.advance(300.0)
            await eventually(lambda: seen == ["disabled", "enabled"], timeout=2.0, interval=0.002)
        disabled = [r for r in caplog.records if r.levelno == logging.WARNING and "pair disabled" in r.getMessage()]
        enabled = [r for r in caplog.records if r.levelno == logging.INFO and "pair enabled" in r.getMessage()]
        assert len(disabled) == 1 and len(enabled) == 1
        message = disabled[0].getMessage()
        for part in ("vendor='acme'", "model='gpt-x'", "failure_count=3", "disabled_until='2023-11-14T22:18:20.000Z'"):
            assert part in message
        assert "cause='expired'" in enabled[0].getMessage()
        assert any(r.levelno == logging.ERROR and "listener" in r.getMessage() for r in caplog.records)


class TestExpiry:
    """A disable ends at exactly disabled_until: routable at once, recorded by the sweep with zero failures."""

    async def test_sweep_records_the_re_enable(self, store: MemoryStore, make_tracker: MakeTracker, clock: FakeClock) -> None:
        tracker = await make_tracker(store)
        trip(tracker)
        clock.advance(299.999)
        await asyncio.sleep(0.01)
        assert not tracker.is_available(PAIR)
        assert store.kinds() == ["disabled"]
        clock.advance(0.001)
        await eventually(lambda: store.kinds() == ["disabled", "enabled"], timeout=2.0, interval=0.002)
        enabled = store.history[1]
        assert (enabled.cause, enabled.reason, enabled.at) == ("expired", "auto", T0 + 300.0)
        assert (enabled.disabled_at, enabled.disabled_until) == (T0, T0 + 300.0)
        assert store.rows == {}
        state = tracker.state(PAIR)
        assert state is not None and state.failure_count == 0 and state.disabled_until is None
        assert tracker.is_available(PAIR) and tracker.disabled_pairs() == []

    async def test_routable_before_the_sweep_runs(self, store: MemoryStore, make_tracker: MakeTracker, clock: FakeClock) -> None:
        tracker = await make_tracker(store, sweep_interval=3600.0)
        trip(tracker)
        await tracker.flush(1.0)
        clock.advance(300.0)
        assert tracker.is_available(PAIR)
        assert tracker.seconds_until_available(PAIR) == 0.0
        assert tracker.state(PAIR).failure_count == 0  # type: ignore[union-attr]
        assert tracker.disabled_pairs() == []
        assert store.kinds() == ["disabled"]  # not yet recorded
        tracker.record_outcome(PAIR, FAIL)  # the next outcome records the expiry, then counts from 1
        assert await tracker.flush(1.0)
        assert store.kinds() == ["disabled", "enabled"]
        assert tracker.state(PAIR).failure_count == 1  # type: ignore[union-attr]

    async def test_late_outcomes_while_disabled_are_ignored(
        self, store: MemoryStore, make_tracker: MakeTracker, clock: FakeClock
    ) -> None:
        tracker = await make_tracker(store)
        trip(tracker)
        before = tracker.state(PAIR)
        clock.advance(10.0)
        trip(tracker, n=10)
        tracker.record_outcome(PAIR, OK)
        assert tracker.state(PAIR) == before
        assert tracker.seconds_until_available(PAIR) == pytest.approx(290.0)

    async def test_disable_again_after_expiry(self, store: MemoryStore, make_tracker: MakeTracker, clock: FakeClock) -> None:
        tracker = await make_tracker(store)
        trip(tracker)
        clock.advance(300.0)
        await eventually(lambda: len(store.history) == 2, timeout=2.0, interval=0.002)
        trip(tracker)
        assert await tracker.flush(1.0)
        assert store.kinds() == ["disabled", "enabled", "disabled"]
        assert store.rows[("acme", "gpt-x", "auto")].disabled_until == T0 + 600.0


class TestRestart:
    """A new tracker on the same store restores disables with their original timestamps."""

    async def test_identical_timestamps(self, store: MemoryStore, make_tracker: MakeTracker, clock: FakeClock) -> None:
        first = await make_tracker(store)
        clock.advance(0.5)
        trip(first)
        await shut(first)
        clock.advance(100.0)
        second = await make_tracker(store)
        assert second.state(PAIR) == first.state(PAIR)
        assert not second.is_available(PAIR)
        assert second.seconds_until_available(PAIR) == pytest.approx(200.0)
        assert second.disabled_pairs() == first.disabled_pairs()
        clock.advance(200.0)
        await eventually(lambda: store.kinds() == ["disabled", "enabled"], timeout=2.0, interval=0.002)
        assert store.history[-1].cause == "expired"

    async def test_startup_expired(self, store: MemoryStore, make_tracker: MakeTracker, clock: FakeClock) -> None:
        first = await make_tracker(store)
        trip(first)
        await shut(first)
        clock.advance(1000.0)
        second = await make_tracker(store)
        assert second.is_available(PAIR)
        assert await second.flush(1.0)
        assert store.kinds() == ["disabled", "enabled"]
        enabled = store.history[1]
        assert (enabled.cause, enabled.at, enabled.disabled_at, enabled.disabled_until) == (
            "startup-expired",
            T0 + 1000.0,
            T0,
            T0 + 300.0,
        )
        assert store.rows == {}

    async def test_records_of_unconfigured_pairs_are_kept(
        self, store: MemoryStore, make_tracker: MakeTracker, clock: FakeClock
    ) -> None:
        first = await make_tracker(store)
        trip(first)
        await shut(first)
        second = await make_tracker(store, {OTHER: rule()})
        assert second.is_available(PAIR)  # not routed by this tracker
        assert [(r.vendor, r.model) for r in second.disabled_pairs()] == [PAIR]
        second.update_settings(SETTINGS)  # configured again: the disable still holds
        assert not second.is_available(PAIR)
        assert await second.flush(1.0)
        assert store.kinds() == ["disabled"] and ("acme", "gpt-x", "auto") in store.rows

    async def test_rows_written_by_others(self, store: MemoryStore, make_tracker: MakeTracker) -> None:
        """A manual row without an end blocks routing until manual_enable; an unknown reason is ignored."""
        store.rows[("acme", "gpt-x", "manual")] = DisabledRecord("acme", "gpt-x", "manual", T0 - 10.0, None, actor="cli")
        store.rows[("acme", "gpt-y", "weird")] = DisabledRecord("acme", "gpt-y", "weird", T0 - 10.0, T0 + 10.0)
        tracker = await make_tracker(store)
        assert not tracker.is_available(PAIR)
        assert tracker.seconds_until_available(PAIR) is None
        assert tracker.is_available(OTHER)
        await tracker.manual_enable(PAIR, actor="ops")
        assert tracker.is_available(PAIR)
        assert await tracker.flush(1.0)
        assert list(store.rows) == [("acme", "gpt-y", "weird")]

    async def test_with_sqlite(self, tmp_path: Path, make_tracker: MakeTracker, clock: FakeClock) -> None:
        from cliproxy.services.store import SQLiteStore

        clock.t = T0 + 0.987654
        db = await SQLiteStore.open(tmp_path / "x.db")
        try:
            first = await make_tracker(db)
            trip(first)
            await first.manual_disable(OTHER, 600.0, actor="127.0.0.1")
            assert await first.flush(2.0)
            await shut(first)
            clock.advance(100.0)
            second = await make_tracker(db)
            assert second.state(PAIR) == first.state(PAIR)
            assert second.disabled_pairs() == first.disabled_pairs()
            assert not second.is_available(PAIR) and not second.is_available(OTHER)
            clock.advance(200.0)  # the auto-disable is over, the manual one is not
            await eventually(
                lambda: second.journal.pending_writes == 0 and second.is_available(PAIR), timeout=2.0, interval=0.002
            )
            assert await second.flush(2.0)
            events = await db.events()
            assert [e.kind for e in reversed(events)] == ["disabled", "manual-disable", "enabled"]
            assert events[0].disabled_at == first.state(PAIR).disabled_at  # type: ignore[union-attr]
            await shut(second)
            clock.advance(1000.0)
            third = await make_tracker(db)
            assert third.is_available(OTHER)
            assert await third.flush(2.0)
            assert (await db.events(limit=1))[0].cause == "startup-expired"
            assert await db.load_disabled() == []
        finally:
            await db.close()


class TestManual:
    """An operator's timed disable is a separate axis that auto re-enables never clear."""

    async def test_timed_manual_disable(self, store: MemoryStore, make_tracker: MakeTracker, clock: FakeClock) -> None:
        tracker = await make_tracker(store)
        await tracker.manual_disable(PAIR, 60.0, actor="10.0.0.1")
        assert not tracker.is_available(PAIR)
        assert tracker.seconds_until_available(PAIR) == pytest.approx(60.0)
        assert await tracker.flush(1.0)
        (event,) = store.history
        assert (event.kind, event.reason, event.actor, event.disabled_until) == (
            "manual-disable",
            "manual",
            "10.0.0.1",
            T0 + 60.0,
        )
        assert store.rows[("acme", "gpt-x", "manual")].actor == "10.0.0.1"
        clock.advance(60.0)
        assert tracker.is_available(PAIR)
        await eventually(lambda: len(store.history) == 2, timeout=2.0, interval=0.002)
        assert (store.history[1].kind, store.history[1].reason, store.history[1].cause) == ("enabled", "manual", "expired")
        assert store.rows == {}

    @pytest.mark.parametrize("duration", [0.0, -5.0])
    async def test_manual_duration_must_be_positive(self, store: MemoryStore, make_tracker: MakeTracker, duration: float) -> None:
        tracker = await make_tracker(store)
        with pytest.raises(ValueError):
            await tracker.manual_disable(PAIR, duration, actor="ops")
        assert tracker.is_available(PAIR) and tracker.journal.pending_writes == 0

    async def test_manual_disable_without_duration_only_records(self, store: MemoryStore, make_tracker: MakeTracker) -> None:
        tracker = await make_tracker(store)
        await tracker.manual_disable(PAIR, None, actor="ops")
        assert tracker.is_available(PAIR)
        assert await tracker.flush(1.0)
        assert store.kinds() == ["manual-disable"] and store.history[0].disabled_until is None
        assert store.rows == {}

    async def test_auto_then_manual_then_expiry_leaves_disabled(
        self, store: MemoryStore, make_tracker: MakeTracker, clock: FakeClock
    ) -> None:
        tracker = await make_tracker(store)
        trip(tracker)
        await tracker.manual_disable(PAIR, 600.0, actor="ops")
        assert tracker.seconds_until_available(PAIR) == pytest.approx(600.0)
        assert len(tracker.disabled_pairs()) == 2
        clock.advance(300.0)
        await eventually(lambda: len(store.history) == 3, timeout=2.0, interval=0.002)
        assert (store.history[2].kind, store.history[2].reason) == ("enabled", "auto")
        assert not tracker.is_available(PAIR)
        assert tracker.seconds_until_available(PAIR) == pytest.approx(300.0)
        assert list(store.rows) == [("acme", "gpt-x", "manual")]

    async def test_manual_enable_during_auto(self, store: MemoryStore, make_tracker: MakeTracker, clock: FakeClock) -> None:
        tracker = await make_tracker(store)
        trip(tracker)
        clock.advance(10.0)
        await tracker.manual_enable(PAIR, actor="ops")
        assert tracker.is_available(PAIR)
        assert tracker.state(PAIR).failure_count == 0  # type: ignore[union-attr]
        assert await tracker.flush(1.0)
        enabled = store.history[-1]
        assert (enabled.kind, enabled.cause, enabled.reason, enabled.actor) == ("enabled", "manual", "auto", "ops")
        assert (enabled.disabled_at, enabled.disabled_until, enabled.at) == (T0, T0 + 300.0, T0 + 10.0)
        assert store.rows == {}
        trip(tracker, n=2)  # counting starts over
        assert tracker.is_available(PAIR)

    async def test_manual_enable_clears_both_axes(self, store: MemoryStore, make_tracker: MakeTracker) -> None:
        tracker = await make_tracker(store)
        trip(tracker)
        await tracker.manual_disable(PAIR, 600.0, actor="ops")
        await tracker.manual_enable(PAIR, actor="ops")
        assert tracker.is_available(PAIR) and tracker.disabled_pairs() == []
        assert await tracker.flush(1.0)
        assert [(e.kind, e.reason, e.cause) for e in store.history] == [
            ("disabled", "auto", None),
            ("manual-disable", "manual", None),
            ("enabled", "auto", "manual"),
            ("enabled", "manual", "manual"),
        ]
        assert store.rows == {}

    async def test_manual_enable_of_an_available_pair(self, store: MemoryStore, make_tracker: MakeTracker) -> None:
        tracker = await make_tracker(store)
        trip(tracker, n=2)
        await tracker.manual_enable(PAIR, actor="ops")
        assert tracker.state(PAIR).failure_count == 0  # type: ignore[union-attr]
        assert await tracker.flush(1.0)
        assert [(e.kind, e.actor) for e in store.history] == [("manual-enable", "ops")]


class TestPersistence:
    """Writes go through one ordered writer, retried with backoff; memory stays authoritative."""

    async def test_failing_store_is_retried(
        self, store: MemoryStore, make_tracker: MakeTracker, clock: FakeClock, caplog: pytest.LogCaptureFixture
    ) -> None:
        store.fail_next = 4
        tracker = await make_tracker(store)
        with caplog.at_level(logging.WARNING, logger="cliproxy.tracker"):
            trip(tracker)
            clock.advance(300.0)
            tracker.record_outcome(PAIR, FAIL)  # records the expiry, queued behind the disable
            assert tracker.is_available(PAIR)
            assert tracker.journal.pending_writes == 2
            await eventually(lambda: store.calls >= 2, timeout=2.0, interval=0.002)
            assert not tracker.journal.persist_healthy
            assert await tracker.flush(1.0)
        assert tracker.journal.persist_healthy and tracker.journal.pending_writes == 0
        assert store.calls == 6
        assert store.kinds() == ["disabled", "enabled"]  # each once, in order
        retries = [r for r in caplog.records if "store write failed" in r.getMessage()]
        assert len(retries) == 4 and all(r.levelno == logging.WARNING for r in retries)

    async def test_routing_never_waits_for_the_store(self, store: MemoryStore, make_tracker: MakeTracker) -> None:
        store.gate = asyncio.Event()
        tracker = await make_tracker(store)
        trip(tracker)
        assert not tracker.is_available(PAIR)  # in memory at once
        assert not await tracker.flush(0.01)
        assert tracker.journal.pending_writes == 1
        trip(tracker, OTHER)
        assert tracker.journal.pending_writes == 2
        store.gate.set()
        assert await tracker.flush(1.0)
        assert store.kinds() == ["disabled", "disabled"]

    async def test_config_events_share_the_one_order(
        self, store: MemoryStore, make_tracker: MakeTracker, clock: FakeClock
    ) -> None:
        """An event the config manager records through the journal is written between the transitions around it."""
        store.fail_next = 2
        tracker = await make_tracker(store)
        trip(tracker)
        tracker.journal.record(Event(kind="config-reloaded", at=clock(), detail={"reason": "test"}))
        await tracker.manual_enable(PAIR, actor="ops")
        assert tracker.journal.pending_writes == 3
        assert await tracker.flush(1.0)
        assert store.kinds() == ["disabled", "config-reloaded", "enabled"]
        assert tracker.committed_disabled_pairs() == []

    async def test_flush_waits_only_for_what_was_queued(self, store: MemoryStore, make_tracker: MakeTracker) -> None:
        tracker = await make_tracker(store)
        assert await tracker.flush(0.0)  # nothing queued
        trip(tracker)
        waiter = asyncio.create_task(tracker.flush())
        assert await asyncio.wait_for(waiter, 1.0)
        assert store.kinds() == ["disabled"]

    async def test_close_flushes(self, store: MemoryStore, make_tracker: MakeTracker) -> None:
        store.fail_next = 2
        tracker = await make_tracker(store)
        trip(tracker)
        await shut(tracker)
        assert store.kinds() == ["disabled"]
        assert tracker.journal.pending_writes == 0

    async def test_flush_without_a_writer(self, store: MemoryStore, make_tracker: MakeTracker) -> None:
        tracker = await make_tracker(store, start=False)
        assert await tracker.flush()
        trip(tracker)
        assert not await tracker.flush()
        assert not tracker.is_available(PAIR) and tracker.journal.pending_writes == 1
        await begin(tracker)
        assert await tracker.flush(1.0)
        assert store.kinds() == ["disabled"]

    async def test_close_is_bounded(self, store: MemoryStore, make_tracker: MakeTracker) -> None:
        store.gate = asyncio.Event()
        tracker = await make_tracker(store, close_timeout=0.01)
        trip(tracker)
        await asyncio.wait_for(shut(tracker), 1.0)
        assert tracker.journal.pending_writes == 1
        assert store.history == []


class TestConcurrency:
    """Many concurrent failing requests trip exactly one disable."""

    async def test_500_concurrent_failures(self, store: MemoryStore, make_tracker: MakeTracker) -> None:
        tracker = await make_tracker(store, {PAIR: rule(threshold=5)})

        async def request() -> None:
            await asyncio.sleep(0)
            tracker.record_outcome(PAIR, FAIL)

        await asyncio.gather(*(request() for _ in range(500)))
        assert await tracker.flush(1.0)
        assert store.kinds() == ["disabled"]
        assert store.history[0].failure_count == 5
        assert not tracker.is_available(PAIR)


class TestCleanup:
    """Records of pairs without a failure for an hour are dropped; disabled ones never are."""

    async def test_idle_records_dropped(self, store: MemoryStore, make_tracker: MakeTracker, clock: FakeClock) -> None:
        tracker = await make_tracker(store, cleanup_every_seconds=1.0)
        trip(tracker, n=1)
        trip(tracker, OTHER, n=1)
        clock.advance(3599.0)
        tracker.record_outcome(OTHER, FAIL)
        await asyncio.sleep(0.01)
        assert tracker.state(PAIR) is not None
        clock.advance(1.0)
        await eventually(lambda: tracker.state(PAIR) is None, timeout=2.0, interval=0.002)
        assert tracker.state(OTHER) is not None

    async def test_disabled_records_are_kept(self, store: MemoryStore, make_tracker: MakeTracker, clock: FakeClock) -> None:
        tracker = await make_tracker(store, {PAIR: rule(duration=7200.0)}, cleanup_every_seconds=1.0)
        trip(tracker)
        clock.advance(3700.0)
        await asyncio.sleep(0.01)
        assert tracker.state(PAIR) is not None and not tracker.is_available(PAIR)
        clock.advance(3600.0)  # expired by the sweep, then idle for long enough
        await eventually(lambda: tracker.state(PAIR) is None, timeout=2.0, interval=0.002)
        assert await tracker.flush(1.0)  # the enable is queued before the record is dropped
        assert store.kinds() == ["disabled", "enabled"]


class TestCommittedView:
    """Reports read what the store has committed, never memory that kill -9 would lose."""

    async def test_uncommitted_disable_and_enable_are_not_reported(
        self, store: MemoryStore, make_tracker: MakeTracker, clock: FakeClock
    ) -> None:
        store.gate = asyncio.Event()
        tracker = await make_tracker(store)
        committed: list[str] = []
        tracker.journal.committed_listeners.append(lambda e: committed.append(e.kind))
        trip(tracker)
        await asyncio.sleep(0.01)  # the writer is inside store.record, held by the gate
        assert not tracker.is_available(PAIR)  # routing uses memory at once
        assert tracker.committed_disabled_pairs() == [] and tracker.committed_record(PAIR, "auto") is None
        assert committed == []
        store.gate.set()
        assert await tracker.flush(1.0)
        [record] = tracker.committed_disabled_pairs()
        assert (record.vendor, record.model, record.reason) == (*PAIR, "auto")
        assert tracker.committed_record(PAIR, "auto") == record and committed == ["disabled"]
        store.gate.clear()
        await tracker.manual_enable(PAIR, "ops")  # in memory at once, held at the gate
        await asyncio.sleep(0.01)
        assert tracker.is_available(PAIR)
        assert tracker.committed_record(PAIR, "auto") == record  # the enable is not committed yet
        store.gate.set()
        assert await tracker.flush(1.0)
        assert tracker.committed_disabled_pairs() == [] and committed == ["disabled", "enabled"]

    async def test_seeded_from_the_store_and_ended_by_the_clock(
        self, store: MemoryStore, make_tracker: MakeTracker, clock: FakeClock
    ) -> None:
        record = DisabledRecord(
            vendor=PAIR[0], model=PAIR[1], reason="manual", disabled_at=T0, disabled_until=T0 + 10, actor="ops"
        )
        store.rows[(*PAIR, "manual")] = record
        tracker = await make_tracker(store, sweep_interval=3600.0)
        assert tracker.committed_record(PAIR, "manual") == record
        clock.advance(10.0)
        assert tracker.committed_disabled_pairs() == []  # over: a restart would end it too
