"""Values that cross the seam between the request path, the failure tracker and the store.

Pure: no I/O. Times are wall-clock seconds since the epoch (`time.time()`): monotonic values mean
nothing after a restart, and these are persisted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, Literal, Protocol, TypeVar

__all__ = [
    "AlwaysAvailable",
    "BackoffRecord",
    "Decision",
    "DisabledRecord",
    "Effect",
    "ErrorInfo",
    "Event",
    "KeyId",
    "KeyRecord",
    "EventKind",
    "Outcome",
    "OutcomeKind",
    "OutcomeSink",
    "RowKey",
]

OutcomeKind = Literal["success", "failure", "neutral"]


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    """The last error of a pair: an upstream status (None for transport errors) and a short excerpt.

    The excerpt is already masked of secrets when it is built (see `cliproxy.core.redact`).
    """

    status: int | None
    message: str
    #: What kind of failure it was (`cliproxy.core.classify.ErrorKind`: `http_status`, `connect`,
    #: `error_in_200`, ...); empty when unknown (errors recorded before kinds, or not an attempt's).
    kind: str = ""


@dataclass(frozen=True, slots=True)
class Outcome:
    """The one classification of one upstream attempt.

    `kind` says how auto-disable sees it: `failure` counts, `neutral` does not, `success` resets.
    `reason` is a stable label for metrics and logs: `ok`, `http_status`, `connect_error`,
    `connect_timeout`, `first_byte_timeout`, `stream_idle_timeout`, `stream_error`,
    `first_token_timeout`, `error_in_200`, `empty_stream`, `model_not_found` (see `cliproxy.core.classify`),
    `client_error`, `client_disconnect`, `client_write_timeout` (the client stopped reading),
    `gateway_overloaded` (cliproxy ran out of descriptors, buffers or memory), `rejected`.
    """

    kind: OutcomeKind
    reason: str
    error: ErrorInfo | None = None
    #: The answer's "come back later" headers (`cliproxy.core.retry_after.HINT_HEADERS`, names
    #: lower-cased): read by the rate-limit rule with the tracker's clock. Empty for most outcomes.
    retry_headers: tuple[tuple[str, str], ...] = ()


class OutcomeSink(Protocol):
    """The single seam through which every attempt reports its outcome for its pair, and routing
    asks whether a pair may be used. The failure tracker implements it; `AlwaysAvailable` stands in
    until the tracker is up."""

    def record_outcome(self, pair: tuple[str, str], outcome: Outcome) -> None:
        """Count one attempt's outcome for `pair`; synchronous and O(1) (it runs on the hot path)."""
        ...

    def is_available(self, pair: tuple[str, str]) -> bool:
        """False while the pair is disabled by the tracker or manually; routing skips it."""
        ...

    def seconds_until_available(self, pair: tuple[str, str]) -> float | None:
        """For Retry-After: seconds until the pair comes back, None when unknown or never."""
        ...

    def admit(self, pair: tuple[str, str]) -> bool:
        """`is_available`, and for a half-open pair one of its slots taken; the caller gives it back with `release`."""
        ...

    def release(self, pair: tuple[str, str]) -> None:
        """Give back the slot `admit` took; called exactly once per admitted attempt, whatever its end."""
        ...

    def half_open_waiting(self, pair: tuple[str, str]) -> bool:
        """True for a half-open pair with every slot taken: tried (without a slot) only when nothing else can serve."""
        ...

    def disabled_by(self, pair: tuple[str, str]) -> Literal["auto", "manual", "rate-limited", "credentials"] | None:
        """Why an unavailable pair is: "manual" (an operator's disable in force wins), "auto",
        "rate-limited" (the upstream asked to be left alone), "credentials" (every key of its vendor
        is out: key scope), or None."""
        ...

    def weight(self, pair: tuple[str, str]) -> float:
        """The pair's weight in its priority tier: 1.0, less while it slow-starts; O(1)."""
        ...

    def key_usable(self, vendor: str, index: int) -> bool:
        """False while the vendor's key at `index` of `api-key-entries` is out (key scope); O(1)."""
        ...

    def record_key_failure(self, pair: tuple[str, str], index: int, outcome: Outcome) -> bool:
        """An answer of `key-scope-statuses` to the key at `index`: the key leaves the vendor's
        rotation and the pair is not counted. False when the key could not be put out (unknown)."""
        ...


class AlwaysAvailable:
    """The `OutcomeSink` of a gateway without a tracker (yet): outcomes are dropped, every pair is available."""

    def record_outcome(self, pair: tuple[str, str], outcome: Outcome) -> None:
        return None

    def is_available(self, pair: tuple[str, str]) -> bool:
        return True

    def seconds_until_available(self, pair: tuple[str, str]) -> float | None:
        return None

    def admit(self, pair: tuple[str, str]) -> bool:
        return True

    def release(self, pair: tuple[str, str]) -> None:
        return None

    def half_open_waiting(self, pair: tuple[str, str]) -> bool:
        return False

    def disabled_by(self, pair: tuple[str, str]) -> Literal["auto", "manual", "rate-limited", "credentials"] | None:
        return None

    def weight(self, pair: tuple[str, str]) -> float:
        return 1.0

    def key_usable(self, vendor: str, index: int) -> bool:
        return True

    def record_key_failure(self, pair: tuple[str, str], index: int, outcome: Outcome) -> bool:
        return False


EventKind = Literal[
    "disabled",  # auto-disable tripped
    "enabled",  # cause: expired | manual | startup-expired
    "manual-disable",  # an operator disabled a pair (with or without duration)
    "manual-enable",
    "rate-limited",  # an upstream's Retry-After (or rate-limit reset) started or extended a rate limit
    "vendor-changed",  # PATCH of vendor fields (enabled, ...)
    "model-changed",  # PATCH of a model entry
    "config-reloaded",
    "config-rejected",
    "would-disable",  # a trip not enforced: `enforce: false` (dry run) or `max-disabled-fraction`
    "probe-failed",  # the probe of a pair under `recovery: probe` failed (the `disabled` that follows re-disables it)
    "key-disabled",  # a vendor's key answered `key-scope-statuses`: out of the rotation (reason `credentials`: the last one)
    "key-enabled",  # a key back in the rotation; cause: expired | manual | startup-expired | key-changed
]


@dataclass(frozen=True, slots=True)
class Event:
    """One row of the append-only audit history."""

    kind: str
    at: float
    vendor: str | None = None
    model: str | None = None
    reason: str | None = None  # auto | manual | rate-limited (for disables)
    cause: str | None = None  # expired | manual | startup-expired | half-open-success | probe-success (for enables)
    disabled_at: float | None = None
    disabled_until: float | None = None
    failure_count: int | None = None
    window_started_at: float | None = None
    settings: dict[str, Any] | None = None  # the auto-disable settings in force
    last_error: ErrorInfo | None = None
    actor: str | None = None  # management client address for manual actions
    detail: dict[str, Any] | None = None  # anything else, JSON-encoded in the store
    id: int | None = None  # set by the store when read back
    last_failure_at: float | None = None  # the pair's last counted failure (on `disabled` events)


@dataclass(frozen=True, slots=True)
class DisabledRecord:
    """A pair disabled now, as held by the current-state table."""

    vendor: str
    model: str
    reason: str  # auto | manual | rate-limited
    disabled_at: float
    disabled_until: float | None  # None: manual without an end
    failure_count: int = 0
    window_started_at: float | None = None
    last_error: ErrorInfo | None = None
    actor: str | None = None
    last_failure_at: float | None = None  # the last counted failure when an auto-disable tripped
    disable_level: int = 0  # an auto-disable's backoff level: its place in a run of disables (0 when unknown)


@dataclass(frozen=True, slots=True)
class BackoffRecord:
    """The backoff level of a pair back in service, as held by the `backoff_levels` table: the level of
    the disable that ended and when it ended (the level decays from then)."""

    vendor: str
    model: str
    disable_level: int
    level_since: float


#: The key of a current-state row: (vendor, model, reason).
RowKey = tuple[str, str, str]

#: A vendor's API key: (vendor, its index in `api-key-entries`).
KeyId = tuple[str, int]


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """A vendor's key out of the rotation now, as held by the `disabled_keys` table (issue 14, key scope).

    `key_hash` (`cliproxy.core.key_scope.key_hash`) ties the row to the key's value, never stored:
    a key replaced or moved to another index after a restart or a reload is not taken for this one.
    """

    vendor: str
    index: int
    key_hash: str
    disabled_at: float
    disabled_until: float
    disable_level: int = 1
    last_error: ErrorInfo | None = None

    @property
    def key(self) -> KeyId:
        return (self.vendor, self.index)


@dataclass(frozen=True, slots=True)
class Effect:
    """What one transition leaves behind for the shell to carry out: the audit `event` to append and,
    in the same transaction, the current-state row to clear (`clear_disabled`) and/or write
    (`set_disabled`), and the backoff level to keep (`set_backoff`)."""

    event: Event
    set_disabled: DisabledRecord | None = None
    clear_disabled: RowKey | None = None
    #: The backoff level a pair goes back into service with (written with an `enabled` event).
    set_backoff: BackoffRecord | None = None
    #: A key out of the rotation (written with a `key-disabled` event) / back in it (`key-enabled`).
    set_disabled_key: KeyRecord | None = None
    clear_disabled_key: KeyId | None = None


_S = TypeVar("_S")


@dataclass(frozen=True, slots=True)
class Decision(Generic[_S]):
    """A pure rule's answer: the new `state` and the `effects` the shell carries out, in order.

    The shell applies `state` in memory first (routing uses it at once), then queues `effects`.
    """

    state: _S
    effects: tuple[Effect, ...] = ()
