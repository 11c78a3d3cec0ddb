"""Retry-After and the `rate-limited` state, at the core: the header table, the rule `(outcomes, now) ->
state`, `pair_state`, and migration 0003 on a database that already holds disables."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path

import pytest

from cliproxy.core import rate_limit
from cliproxy.core.config import DEFAULT_COUNT_STATUSES, AutoDisableSettings, PairKey
from cliproxy.core.events import DisabledRecord, ErrorInfo, Outcome
from cliproxy.core.pair_state import PairView, pair_state
from cliproxy.core.retry_after import RetryHint, hint_headers, parse_reset_duration, retry_hint
from cliproxy.services.store import apply_migrations, default_migrations_dir, format_timestamp

T0 = 1_800_000_000.0
PAIR: PairKey = ("acme", "gpt-x")


def http_date(t: float) -> str:
    return format_datetime(datetime.fromtimestamp(t, UTC), usegmt=True)


class TestRetryHintHeaders:
    """Every form of hint is read, in order, and garbage in one header falls through to the next."""

    @pytest.mark.parametrize(
        ("status", "headers", "expected"),
        [
            (429, [("Retry-After", "30")], RetryHint(30.0, "retry-after")),
            (503, [("retry-after", " 2.5 ")], RetryHint(2.5, "retry-after")),
            (429, [("Retry-After", http_date(T0 + 120))], RetryHint(120.0, "retry-after")),
            (429, [("retry-after-ms", "1500")], RetryHint(1.5, "retry-after-ms")),
            # retry-after-ms is the more precise of the two and wins
            (429, [("Retry-After", "2"), ("retry-after-ms", "1500")], RetryHint(1.5, "retry-after-ms")),
            # garbage in retry-after-ms: Retry-After is used
            (429, [("retry-after-ms", "soon"), ("Retry-After", "7")], RetryHint(7.0, "retry-after")),
            (429, [("x-ratelimit-reset-requests", "1s")], RetryHint(1.0, "x-ratelimit-reset-requests")),
            (429, [("x-ratelimit-reset-tokens", "6m0s")], RetryHint(360.0, "x-ratelimit-reset-tokens")),
            (429, [("x-ratelimit-reset-tokens", "1m30.5s")], RetryHint(90.5, "x-ratelimit-reset-tokens")),
            # both resets, no remaining-* headers: the later one
            (
                429,
                [("x-ratelimit-reset-requests", "2s"), ("x-ratelimit-reset-tokens", "20ms")],
                RetryHint(2.0, "x-ratelimit-reset-requests"),
            ),
            # the exhausted budget's reset, even when it is the shorter one
            (
                429,
                [
                    ("x-ratelimit-reset-requests", "2s"),
                    ("x-ratelimit-remaining-requests", "12"),
                    ("x-ratelimit-reset-tokens", "20ms"),
                    ("x-ratelimit-remaining-tokens", "0"),
                ],
                RetryHint(0.02, "x-ratelimit-reset-tokens"),
            ),
            # Retry-After wins over the reset headers
            (429, [("Retry-After", "9"), ("x-ratelimit-reset-tokens", "6m0s")], RetryHint(9.0, "retry-after")),
        ],
    )
    def test_forms(self, status: int, headers: list[tuple[str, str]], expected: RetryHint) -> None:
        hint = retry_hint(status, headers, T0)
        assert hint is not None
        assert (round(hint.seconds, 6), hint.header) == (expected.seconds, expected.header)

    @pytest.mark.parametrize(
        ("status", "headers"),
        [
            (500, [("Retry-After", "30")]),  # only 429 and 503 say "come back later"
            (200, [("Retry-After", "30")]),
            (None, [("Retry-After", "30")]),
            (503, [("x-ratelimit-reset-requests", "1s")]),  # reset headers only on a 429
            (429, []),
            (429, [("Retry-After", "")]),
            (429, [("Retry-After", "0")]),
            (429, [("Retry-After", "-5")]),
            (429, [("Retry-After", "nan")]),
            (429, [("Retry-After", "inf")]),
            (429, [("Retry-After", "1e9")]),
            (429, [("Retry-After", "soon")]),
            (429, [("Retry-After", http_date(T0 - 60))]),  # a date in the past
            (429, [("Retry-After", "Wed, 32 Foo 2026 99:99:99 GMT")]),
            (429, [("Retry-After", "2026-01-01T00:00:00Z")]),  # not an HTTP date
            (429, [("retry-after-ms", "-1")]),
            (429, [("x-ratelimit-reset-tokens", "6x")]),
            (429, [("x-ratelimit-reset-tokens", "m")]),
            (429, [("x-ratelimit-reset-tokens", "0s")]),
        ],
    )
    def test_garbage_is_ignored(self, status: int | None, headers: list[tuple[str, str]]) -> None:
        assert retry_hint(status, headers, T0) is None

    @pytest.mark.parametrize(
        ("text", "seconds"),
        [("1s", 1.0), ("6m0s", 360.0), ("1m30.5s", 90.5), ("20ms", 0.02), ("2h", 7200.0), ("1h2m3s", 3723.0), ("12", 12.0)],
    )
    def test_reset_durations(self, text: str, seconds: float) -> None:
        assert parse_reset_duration(text) == pytest.approx(seconds)

    def test_only_hint_headers_are_kept(self) -> None:
        kept = hint_headers(
            [("Retry-After", "3"), ("Set-Cookie", "a=b"), ("X-RateLimit-Reset-Tokens", "1s"), ("Authorization", "x")]
        )
        assert kept == (("retry-after", "3"), ("x-ratelimit-reset-tokens", "1s"))


def settings(*, honor: bool = True, cap: float = 3600.0) -> AutoDisableSettings:
    return AutoDisableSettings(
        failure_threshold=5,
        time_window_seconds=60.0,
        disable_duration_seconds=300.0,
        count_statuses=DEFAULT_COUNT_STATUSES,
        honor_retry_after=honor,
        max_retry_after_seconds=cap,
    )


def limited(seconds: str, status: int = 429) -> Outcome:
    return Outcome("failure", "http_status", ErrorInfo(status, "slow down"), retry_headers=(("retry-after", seconds),))


def run(
    outcomes: list[tuple[float, Outcome]], rule: AutoDisableSettings | None = None
) -> tuple[DisabledRecord | None, list[str]]:
    """Apply `(at, outcome)` in order; the held rate limit and the events, as `kind@until`."""
    held: DisabledRecord | None = None
    events: list[str] = []
    for at, outcome in outcomes:
        decision = rate_limit.note_outcome(PAIR, held, outcome, rule or settings(), at)
        held = decision.state
        events.extend(f"{e.event.kind}:{e.event.cause or ''}@{e.event.disabled_until}" for e in decision.effects)
    return held, events


class TestRateLimitRule:
    """A hint rate-limits the pair at once, clamped; longer hints extend it, shorter ones never shorten it."""

    def test_one_hint_limits_at_once(self) -> None:
        held, events = run([(T0, limited("30"))])
        assert held is not None and (held.reason, held.disabled_at, held.disabled_until) == ("rate-limited", T0, T0 + 30)
        assert events == [f"rate-limited:@{T0 + 30}"]

    def test_clamped_to_the_maximum(self) -> None:
        decision = rate_limit.note_outcome(PAIR, None, limited("86400"), settings(cap=600), T0)
        assert decision.state is not None and decision.state.disabled_until == T0 + 600
        detail = decision.effects[0].event.detail
        assert detail == {"retry_after_seconds": 86400.0, "header": "retry-after", "clamped": True, "extended": False}

    def test_shorter_hint_never_shortens(self) -> None:
        held, events = run([(T0, limited("60")), (T0 + 1, limited("5"))])
        assert held is not None and held.disabled_until == T0 + 60
        assert events == [f"rate-limited:@{T0 + 60}"]

    def test_longer_hint_extends_and_keeps_the_start(self) -> None:
        held, events = run([(T0, limited("60")), (T0 + 10, limited("120"))])
        assert held is not None and (held.disabled_at, held.disabled_until) == (T0, T0 + 130)
        assert events == [f"rate-limited:@{T0 + 60}", f"rate-limited:@{T0 + 130}"]

    def test_a_hint_after_the_end_starts_a_new_one(self) -> None:
        held, events = run([(T0, limited("10")), (T0 + 20, limited("5"))])
        assert held is not None and (held.disabled_at, held.disabled_until) == (T0 + 20, T0 + 25)
        assert events == [f"rate-limited:@{T0 + 10}", f"enabled:expired@{T0 + 10}", f"rate-limited:@{T0 + 25}"]

    def test_switched_off_by_honor_retry_after_false(self) -> None:
        assert run([(T0, limited("30"))], settings(honor=False)) == (None, [])

    def test_no_hint_or_wrong_status_changes_nothing(self) -> None:
        plain = Outcome("failure", "http_status", ErrorInfo(429, "x"))
        assert run([(T0, plain), (T0, limited("30", status=500))]) == (None, [])

    def test_expire_and_restore(self) -> None:
        held, _ = run([(T0, limited("30"))])
        assert rate_limit.expire(PAIR, held, T0 + 29.999).state is held
        ended = rate_limit.expire(PAIR, held, T0 + 30)
        assert ended.state is None and [(e.event.kind, e.event.reason, e.event.cause) for e in ended.effects] == [
            ("enabled", "rate-limited", "expired")
        ]
        assert held is not None
        assert rate_limit.restore(held, T0 + 5).state is held
        restored = rate_limit.restore(held, T0 + 31)
        assert restored.state is None and restored.effects[0].event.cause == "startup-expired"
        by_operator = rate_limit.end_by_operator(PAIR, held, T0 + 5, "127.0.0.1")
        assert by_operator.state is None and by_operator.effects[0].event.cause == "manual"


class TestPairState:
    """One word per pair: switched-off, then disabled, then rate-limited, else enabled."""

    @pytest.mark.parametrize(
        ("view", "now", "state"),
        [
            (PairView(), T0, "enabled"),
            (PairView(rate_limited_until=T0 + 5), T0, "rate-limited"),
            (PairView(rate_limited_until=T0 + 5), T0 + 5, "enabled"),
            (PairView(auto_disabled_until=T0 + 5, rate_limited_until=T0 + 50), T0, "disabled"),
            (PairView(auto_disabled_until=T0 + 5, rate_limited_until=T0 + 50), T0 + 6, "rate-limited"),
            (PairView(manually_disabled=True), T0, "disabled"),
            (PairView(manually_disabled=True, manually_disabled_until=T0 + 1), T0 + 1, "enabled"),
            (PairView(switched_off=True, auto_disabled_until=T0 + 5), T0, "switched-off"),
        ],
    )
    def test_table(self, view: PairView, now: float, state: str) -> None:
        assert pair_state(view, now) == state


class TestMigration0003:
    """0003 widens disabled_pairs.reason to rate-limited and keeps the rows already there."""

    def test_existing_rows_survive_and_rate_limited_is_accepted(self, tmp_path: Path) -> None:
        old = tmp_path / "old"
        old.mkdir()
        for name in ("0001_initial.sql", "0002_last_failure_at.sql"):
            (old / name).write_text((default_migrations_dir() / name).read_text())
        db = tmp_path / "cliproxy.db"
        apply_migrations(db, old)
        at, until = format_timestamp(T0), format_timestamp(T0 + 300)
        with closing(sqlite3.connect(db)) as conn:
            conn.execute("INSERT INTO events (at, kind) VALUES (?, 'disabled')", (at,))
            conn.execute(
                "INSERT INTO disabled_pairs (vendor, model, reason, disabled_at, disabled_until, failure_count, "
                "last_failure_at, event_id) VALUES ('v', 'm', 'auto', ?, ?, 5, ?, 1)",
                (at, until, at),
            )
            conn.commit()
            before = conn.execute("SELECT * FROM disabled_pairs").fetchall()
        (old / "0003_rate_limited.sql").write_text((default_migrations_dir() / "0003_rate_limited.sql").read_text())
        assert apply_migrations(db, old) == ["0003_rate_limited.sql"]
        with closing(sqlite3.connect(db)) as conn:
            assert conn.execute("SELECT * FROM disabled_pairs").fetchall() == before
            conn.execute(
                "INSERT INTO disabled_pairs (vendor, model, reason, disabled_at, disabled_until) "
                "VALUES ('v', 'm', 'rate-limited', ?, ?)",
                (at, until),
            )
            with pytest.raises(sqlite3.IntegrityError, match="CHECK"):
                conn.execute(
                    "INSERT INTO disabled_pairs (vendor, model, reason, disabled_at) VALUES ('v', 'm', 'bogus', ?)", (at,)
                )
            pk = {row[1]: row[5] for row in conn.execute("PRAGMA table_info(disabled_pairs)") if row[5]}
            assert pk == {"vendor": 1, "model": 2, "reason": 3}
