"""Pure view builders: typed config and tracker state -> the dicts the response schemas dump. No aiohttp.

Disables come from the tracker's committed view (what SQLite holds), never from memory, which may
already hold a newer transition that kill -9 would lose; counts are live (never persisted). Upstream
keys, header values and proxy passwords only ever leave masked.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from cliproxy.core.config import AutoDisableOverrides, AutoDisableSettings, Timeouts, Vendor
from cliproxy.core.events import DisabledRecord, Event
from cliproxy.core.pair_state import PairView, pair_state
from cliproxy.core.redact import SecretMasker, mask_key, mask_secrets
from cliproxy.core.routing import Pair, RoutingTable
from cliproxy.core.runtime import Runtime
from cliproxy.core.times import format_timestamp
from cliproxy.services.tracker import FailureTracker

__all__ = [
    "disabled_list",
    "event_view",
    "iso",
    "last_error",
    "key_views",
    "mask_headers",
    "mask_url",
    "masked",
    "pair_status",
    "switched_off_by",
    "vendor_view",
]


def iso(t: float | None) -> str | None:
    return None if t is None else format_timestamp(t)


def remaining(until: float | None, now: float) -> float | None:
    return None if until is None else round(max(0.0, until - now), 3)


def last_error(info: Any) -> dict[str, Any] | None:
    return None if info is None else {"status": info.status, "message": info.message, "kind": info.kind or None}


def mask_url(url: str | None) -> str | None:
    """A proxy URL with its password (if any) masked."""
    if not url:
        return url
    try:
        parts = urlsplit(url)
    except ValueError:
        return "***"
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


def mask_headers(headers: Sequence[tuple[str, str]]) -> dict[str, str]:
    """Vendor header values, masked whatever the header is called: `Ocp-Apim-Subscription-Key`,
    `X-Auth-Key` and friends are credentials, and no list of names catches them all."""
    return {name: mask_key(value) if isinstance(value, str) else value for name, value in headers}


def masked(value: Any, secrets: Sequence[str] | SecretMasker) -> Any:
    """Every string in a JSON-like tree with known secrets and credential-shaped text masked."""
    if isinstance(value, str):
        return mask_secrets(value, secrets)
    if isinstance(value, Mapping):
        return {k: masked(v, secrets) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [masked(v, secrets) for v in value]
    return value


def event_view(event: Event, secrets: Sequence[str] | SecretMasker) -> dict[str, Any]:
    """One event as `GET /api/events` lists it (and a `notify` receiver is sent it): times as ISO text, detail masked."""
    detail = None if event.detail is None else masked(event.detail, secrets)
    if isinstance(detail, dict) and isinstance(detail.get("headers"), Mapping):
        # rows written before header values were masked at the source
        detail["headers"] = mask_headers(list(detail["headers"].items()))
    return {
        "id": event.id,
        "kind": event.kind,
        "at": iso(event.at),
        "vendor": event.vendor,
        "model": event.model,
        "reason": event.reason,
        "cause": event.cause,
        "disabled_at": iso(event.disabled_at),
        "disabled_until": iso(event.disabled_until),
        "failure_count": event.failure_count,
        "window_started_at": iso(event.window_started_at),
        "last_failure_at": iso(event.last_failure_at),
        "settings": event.settings,
        "last_error": last_error(event.last_error),
        "actor": event.actor,
        "detail": detail,
    }


def _overrides(o: AutoDisableOverrides) -> dict[str, Any]:
    return {
        "failure_threshold": o.failure_threshold,
        "time_window_seconds": o.time_window_seconds,
        "disable_duration_seconds": o.disable_duration_seconds,
        "count_statuses": None if o.count_statuses is None else sorted(o.count_statuses),
        "honor_retry_after": o.honor_retry_after,
        "max_retry_after_seconds": o.max_retry_after_seconds,
    }


def _timeouts(t: Timeouts) -> dict[str, Any]:
    return {"connect": t.connect, "first_byte": t.first_byte, "stream_idle": t.stream_idle}


def _effective(settings: AutoDisableSettings) -> dict[str, Any]:
    return {
        "enabled": settings.enabled,
        "failure_threshold": settings.failure_threshold,
        "time_window_seconds": settings.time_window_seconds,
        "disable_duration_seconds": settings.disable_duration_seconds,
        "count_statuses": sorted(settings.count_statuses),
        "honor_retry_after": settings.honor_retry_after,
        "max_retry_after_seconds": settings.max_retry_after_seconds,
        "slow_start_seconds": settings.slow_start_seconds,
        "on_all_disabled": settings.on_all_disabled,
        "enforce": settings.enforce,
        "max_disabled_fraction": settings.max_disabled_fraction,
        "backoff_multiplier": settings.backoff_multiplier,
        "max_disable_duration_seconds": settings.max_disable_duration_seconds,
        "recovery": settings.recovery,
        "half_open_requests": settings.half_open_requests,
        "probe_path": settings.probe.path,
        "probe_timeout_seconds": settings.probe_timeout_seconds,
        # The spec's four settings always; later ones only when a level sets them (absent: default).
        "sources": {
            **{
                name: settings.source_of(name)
                for name in ("failure_threshold", "time_window_seconds", "disable_duration_seconds", "count_statuses")
            },
            **dict(settings.sources),
        },
    }


def pair_status(pair: Pair, runtime: Runtime, tracker: FailureTracker, now: float) -> dict[str, Any]:
    # Disables come from the tracker's committed view (what SQLite holds), never from memory, which
    # may already hold a newer transition that kill -9 would lose. Counts are live (never persisted).
    key = pair.key
    state = tracker.state(key)
    auto = tracker.committed_record(key, "auto")
    manual = tracker.committed_record(key, "manual")
    limited = tracker.committed_record(key, "rate-limited")
    slow_start_until = tracker.slow_start_until(key)
    # The auto row as committed even once its time has passed: half-open and probing keep it until their verdict.
    auto_row = tracker.journal.committed_row((pair.vendor.name, pair.model.name, "auto"))
    view = PairView(
        switched_off=not pair.enabled_in_config,
        auto_disabled_until=auto_row.disabled_until if auto_row is not None else None,
        recovery=pair.auto_disable.recovery,
        manually_disabled=manual is not None,
        manually_disabled_until=manual.disabled_until if manual else None,
        rate_limited_until=limited.disabled_until if limited else None,
        slow_start_until=slow_start_until,
    )
    return {
        "vendor": pair.vendor.name,
        "model": pair.model.name,
        "alias": pair.model.alias,
        "names": list(runtime.table.names_of.get(key, ())),
        "enabled": pair.enabled_in_config and auto is None and manual is None and limited is None,
        "state": pair_state(view, now),
        "rate_limited_until": iso(limited.disabled_until) if limited else None,
        "config_enabled": pair.model.enabled,
        "vendor_enabled": pair.vendor.enabled,
        "missing_key": pair.vendor.missing_key,
        "auto_disabled": auto is not None,
        "failure_count": state.failure_count if state else 0,
        "window_started_at": iso(state.window_started_at) if state else None,
        "last_failure_at": iso(_last_failure_at(state, auto)),
        "disabled_at": iso(auto.disabled_at) if auto else None,
        "disabled_until": iso(auto.disabled_until) if auto else None,
        "remaining_seconds": remaining(auto.disabled_until, now) if auto else None,
        "last_error": last_error(state.last_error) if state else None,
        "manual_disable": None
        if manual is None
        else {
            "disabled_at": iso(manual.disabled_at),
            "disabled_until": iso(manual.disabled_until),
            "remaining_seconds": remaining(manual.disabled_until, now),
            "actor": manual.actor,
        },
        "auto_disable": _effective(pair.auto_disable),
        "slow_start_until": iso(slow_start_until),
        "disable_level": tracker.committed_level(key),
    }


def _last_failure_at(state: Any, record: Any) -> float | None:
    """The later of the live count's last failure and the one a committed disable recorded."""
    times = [t for t in (state.last_failure_at if state else None, record.last_failure_at if record else None) if t is not None]
    return max(times) if times else None


#: The `source` of a tracker-held disable, by its reason.
_SOURCE_OF_REASON = {"auto": "auto-disable", "manual": "timed", "rate-limited": "retry-after"}


def disabled_list(runtime: Runtime, tracker: FailureTracker, now: float) -> list[dict[str, Any]]:
    table = runtime.table
    out: list[dict[str, Any]] = [
        _tracker_entry(record, table, tracker, now, "disabled") for record in tracker.committed_disabled_pairs()
    ]
    out.extend(_tracker_entry(record, table, tracker, now, phase) for record, phase in tracker.committed_awaiting_recovery())
    for pair in table.pairs.values():
        if pair.model.enabled and pair.vendor.enabled:
            continue
        state = tracker.state(pair.key)
        out.append(
            {
                "vendor": pair.vendor.name,
                "model": pair.model.name,
                "alias": pair.model.alias,
                "reason": "manual",
                "source": "model-config" if not pair.model.enabled else "vendor-config",
                "disabled_at": None,
                "disabled_until": None,
                "remaining_seconds": None,
                "failure_count": state.failure_count if state else 0,
                "last_failure_at": iso(_last_failure_at(state, None)),
                "last_error": last_error(state.last_error) if state else None,
                "actor": None,
                "in_config": True,
                "state": "disabled",
            }
        )
    out.sort(key=lambda r: (r["vendor"], r["model"], r["reason"], r["source"]))
    return out


def _tracker_entry(
    record: DisabledRecord, table: RoutingTable, tracker: FailureTracker, now: float, state: str
) -> dict[str, Any]:
    """A disable the tracker holds, as `GET /api/models/disabled` lists it; `state` is `disabled`
    while it is in force, `half-open` / `probing` once it is over and waits for its verdict."""
    pair = table.pairs.get((record.vendor, record.model))
    return {
        "vendor": record.vendor,
        "model": record.model,
        "alias": pair.model.alias if pair else None,
        "reason": record.reason,
        "source": _SOURCE_OF_REASON.get(record.reason, "timed"),
        "disabled_at": iso(record.disabled_at),
        "disabled_until": iso(record.disabled_until),
        "remaining_seconds": remaining(record.disabled_until, now),
        "failure_count": record.failure_count,
        "last_failure_at": iso(_last_failure_at(tracker.state((record.vendor, record.model)), record)),
        "last_error": last_error(record.last_error),
        "actor": record.actor,
        "in_config": pair is not None,
        "state": state,
    }


def switched_off_by(events: Sequence[Any], key: str) -> Any | None:
    """The event that wrote `enabled: false` (as `key`), if it is the latest event that set it; None
    when the latest one switched it on, or there is none (the file was edited by hand)."""
    for event in events:  # newest first
        detail = event.detail or {}
        if event.kind == "manual-disable" and event.disabled_until is None:
            return event
        if event.kind == "manual-enable":
            return None
        if event.kind in ("model-changed", "vendor-changed") and key in detail:
            return event if detail[key] is False else None
    return None


def key_views(vendor: Vendor, tracker: FailureTracker) -> list[dict[str, Any]]:
    """Each of the vendor's keys (key scope), from the committed view: index, masked value, in or out and until when."""
    out: list[dict[str, Any]] = []
    for index, entry in enumerate(vendor.api_key_entries):
        record = tracker.committed_key(vendor.name, index) if entry.api_key else None
        state = "unset" if not entry.api_key else "out" if record is not None else "in"
        out.append(
            {
                "index": index,
                "api_key": mask_key(entry.api_key),
                "state": state,
                "until": iso(record.disabled_until) if record is not None else None,
                "disable_level": record.disable_level if record is not None else 0,
                "last_error": record.last_error.message if record is not None and record.last_error is not None else None,
            }
        )
    return out


def vendor_view(vendor: Vendor, runtime: Runtime, tracker: FailureTracker, now: float) -> dict[str, Any]:
    models = []
    for model in vendor.models:
        key = (vendor.name, model.name)
        auto_disabled = tracker.committed_record(key, "auto") is not None  # committed view, as in pair_status
        manual_disabled = tracker.committed_record(key, "manual") is not None
        rate_limited = tracker.committed_record(key, "rate-limited") is not None
        models.append(
            {
                "name": model.name,
                "alias": model.alias,
                "names": list(runtime.table.names_of.get(key, ())),
                "enabled": vendor.routable and model.enabled and not auto_disabled and not manual_disabled and not rate_limited,
                "config_enabled": model.enabled,
                "auto_disabled": auto_disabled,
                "manual_disabled": manual_disabled,
                "auto_disable": _overrides(model.auto_disable),
            }
        )
    return {
        "name": vendor.name,
        "enabled": vendor.enabled,
        "routable": vendor.routable,
        "missing_key": vendor.missing_key,
        "priority": vendor.priority,
        "prefix": vendor.prefix,
        "base_url": vendor.base_url,
        "api_key_entries": [{"api_key": mask_key(e.api_key), "proxy_url": mask_url(e.proxy_url)} for e in vendor.api_key_entries],
        "keys": key_views(vendor, tracker),
        "headers": mask_headers(vendor.headers),
        "timeouts": _timeouts(vendor.timeouts),
        "auto_disable": _overrides(vendor.auto_disable),
        "models": models,
    }
