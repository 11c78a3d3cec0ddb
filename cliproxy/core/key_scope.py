"""Key scope (issue 14): a bad API key is a fact about the key, not the model. Pure; the clock is passed in.

An upstream answer of `key-scope-statuses` (401, 402, 403 by default) to a request sent with one of
a vendor's `api-key-entries` puts that key out of the vendor's rotation for the pair's disable
duration (with its backoff: the k-th disable in a row lasts `disable_seconds(k)`), and counts no
pair: the request is retried at once with the vendor's next key. When the last key of a vendor goes
out, every pair of the vendor is unavailable with reason `credentials`: the `key-disabled` event of
that key says so (reason `credentials`, the models in its detail), one event and not one per model.

A key is known by (vendor, index in `api-key-entries`) and by `key_hash(value)`: a row whose hash
no longer matches the key at its index (the key was replaced, or the list reordered) is dropped
(`key-enabled`, cause `key-changed`) instead of holding out a key that was never refused.

Each rule returns a `Decision`: the new `KeyState` (None: nothing held) and the effects (the event,
with the `disabled_keys` row to write or clear) for the shell (`cliproxy.services.tracker`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from cliproxy.core.config import AutoDisableSettings
from cliproxy.core.events import Decision, Effect, ErrorInfo, Event, KeyId, KeyRecord
from cliproxy.core.failures import disable_seconds, ms

__all__ = [
    "CREDENTIALS",
    "KeyState",
    "decayed_level",
    "disable",
    "end_by_operator",
    "expire",
    "is_out",
    "key_hash",
    "restore",
    "forget_changed",
]

#: The reason of a pair unavailable because every key of its vendor is out.
CREDENTIALS = "credentials"
#: The reason of a `key-disabled` event that leaves the vendor other keys.
KEY = "key"


def key_hash(api_key: str) -> str:
    """A short, stable fingerprint of a key's value (never the value): 16 hex digits of its SHA-256."""
    return hashlib.sha256(api_key.encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class KeyState:
    """What the tracker holds about one key: `record` while it is out, and the backoff level it went
    back into service with (decaying by one per `disable-duration-seconds` served since `level_since`)."""

    key_hash: str
    record: KeyRecord | None = None
    disable_level: int = 0
    level_since: float | None = None


def is_out(state: KeyState | None, now: float) -> bool:
    """True while the key is out of the rotation: `now < disabled_until` (at exactly then it is back)."""
    return state is not None and state.record is not None and now < state.record.disabled_until


def decayed_level(state: KeyState | None, settings: AutoDisableSettings, now: float) -> int:
    """The key's backoff level at `now`: while out, the level in force; back in service, one less per
    `disable-duration-seconds` served."""
    if state is None:
        return 0
    if state.record is not None:
        return state.record.disable_level
    if state.level_since is None or state.disable_level == 0:
        return state.disable_level
    served = max(0.0, now - state.level_since)
    return max(0, state.disable_level - int(served // settings.disable_duration_seconds))


def disable(
    key: KeyId,
    hash_: str,
    state: KeyState | None,
    error: ErrorInfo | None,
    settings: AutoDisableSettings,
    now: float,
    *,
    keys_left: int,
    models: tuple[str, ...] = (),
) -> Decision[KeyState]:
    """Put the key out for the disable duration of its next backoff level. `keys_left`: the vendor's
    keys still in the rotation after this one; 0 makes the event's reason `credentials` and lists
    the vendor's `models` (all unavailable now). A key already out is left as it is (no event)."""
    now = ms(now)
    if is_out(state, now):
        assert state is not None
        return Decision(state)
    level = decayed_level(state if state is not None and state.key_hash == hash_ else None, settings, now) + 1
    until = ms(now + disable_seconds(level, settings))
    record = KeyRecord(key[0], key[1], hash_, now, until, level, error)
    detail: dict[str, object] = {"key_index": key[1], "key_hash": hash_, "disable_level": level, "keys_available": keys_left}
    if keys_left == 0:
        detail["models"] = list(models)
    event = Event(
        kind="key-disabled",
        at=now,
        vendor=key[0],
        reason=CREDENTIALS if keys_left == 0 else KEY,
        disabled_at=now,
        disabled_until=until,
        last_error=error,
        detail=detail,
    )
    return Decision(KeyState(hash_, record, level, None), (Effect(event, set_disabled_key=record),))


def _enabled(record: KeyRecord, now: float, cause: str, actor: str | None = None) -> Effect:
    event = Event(
        kind="key-enabled",
        at=now,
        vendor=record.vendor,
        cause=cause,
        disabled_at=record.disabled_at,
        disabled_until=record.disabled_until,
        actor=actor,
        detail={"key_index": record.index, "key_hash": record.key_hash},
    )
    return Effect(event, clear_disabled_key=record.key)


def expire(state: KeyState | None, now: float, cause: str = "expired") -> Decision[KeyState | None]:
    """End a key's time out that is over (`disabled_until <= now`); it keeps its backoff level from then."""
    now = ms(now)
    if state is None or state.record is None or now < state.record.disabled_until:
        return Decision(state)
    record = state.record
    back = KeyState(state.key_hash, None, record.disable_level, record.disabled_until)
    return Decision(back, (_enabled(record, now, cause),))


def end_by_operator(state: KeyState | None, now: float, actor: str) -> Decision[KeyState | None]:
    """`POST /api/vendors/{name}/keys/{index}/enable`: back now, cause `manual`, the backoff level cleared.
    A key not out changes nothing (no event); one whose time had passed is recorded as expired."""
    now = ms(now)
    if state is None or state.record is None:
        return Decision(state)
    if now >= state.record.disabled_until:
        return expire(state, now)
    return Decision(KeyState(state.key_hash), (_enabled(state.record, now, "manual", actor),))


def restore(record: KeyRecord, current_hash: str | None, now: float) -> Decision[KeyState | None]:
    """A `disabled_keys` row read back at start-up, with its original timestamps. One whose key is no
    longer at its index (`current_hash` differs; None: no such key now) is dropped, cause `key-changed`;
    one whose time passed while the server was down comes back, cause `startup-expired`."""
    now = ms(now)
    state = KeyState(record.key_hash, record, record.disable_level, None)
    if current_hash != record.key_hash:
        return Decision(None, (_enabled(record, now, "key-changed"),))
    if now >= record.disabled_until:
        return expire(state, now, cause="startup-expired")
    return Decision(state)


def forget_changed(state: KeyState, current_hash: str | None, now: float) -> Decision[KeyState | None]:
    """After a reload: a key held for an index whose value changed (or is gone) is let go, so the
    new key there is not held out for the old one's refusal. Cause `key-changed` when it was out."""
    if current_hash == state.key_hash:
        return Decision(state)
    if state.record is None:
        return Decision(None)
    return Decision(None, (_enabled(state.record, ms(now), "key-changed"),))
