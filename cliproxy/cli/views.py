"""What the operator CLI shows: pair states, durations, times and aligned tables.

Pure: no I/O, no clock. The `cliproxy.cli` commands read the config and the database and pass `now` in;
everything here turns those values into states, text and JSON-ready dicts.

A configured pair's state, by precedence (the first that holds is the state; the others that
also hold are named in the detail):

    vendor-off          the vendor has `enabled: false`
    no-key              the vendor's api-key entries are all empty (`${VAR:-}` with VAR unset)
    manually-disabled   the model entry has `enabled: false` (permanent), or a manual disable
                        row in the database is in force (timed, or without an end)
    auto-disabled       an automatic disable row is in force
    rate-limited        a rate-limited row is in force: the upstream's 429/503 said when to come
                        back (Retry-After and friends), and that time has not come
    half-open, probing  none of the above, and an automatic disable is over but the pair's
                        `recovery` (half-open, probe) still waits for its verdict: the server
                        keeps the row until a request (half-open) or its probe passes
    slow-start          none of the above, and the pair's last `enabled` event is less than its
                        `slow-start-seconds` ago: its share of its tier is still ramping up
    enabled             none of the above; when a disable row exists but its `disabled_until`
                        has passed, the human label says "enabled (expired, not yet recorded)":
                        routing already ignores it, the server writes the `enabled` event on its
                        next sweep (or at start-up when it is stopped)

A key that comes from a `${VAR}` not set where the CLI runs (the server's unit reads it from a
file the operator's shell does not) is unknown, not missing: the pair is not shown as `no-key`;
its detail says `key from ${VAR} (not set here; assumed set for the server)`.

`--json` also gives each configured pair's `recovery_state`, the one word the management API's
status calls `state` (`cliproxy.core.pair_state`: switched-off | disabled | half-open | probing |
slow-start | rate-limited | enabled).
The CLI's own `state` keeps its finer vocabulary above, which scripts already read.

Rows in the database for pairs that are no longer configured are reported apart, as
`not-configured`: the server keeps them and ignores them.

The history's views are `cliproxy.cli.history_view`, the management calls' paths and confirmation
lines `cliproxy.cli.confirmations`, the shared table and time formatting `cliproxy.cli.formatting`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cliproxy.cli.formatting import iso, one_line, render_table
from cliproxy.core.config import PairKey, RecoveryMode, Vendor
from cliproxy.core.events import DisabledRecord, KeyRecord
from cliproxy.core.pair_state import PairView, pair_state
from cliproxy.core.redact import mask_key
from cliproxy.core.routing import RoutingTable
from cliproxy.core.times import format_duration, format_time, format_timestamp, parse_duration, parse_iso, parse_since

__all__ = [
    "DisableView",
    "PairStatus",
    "format_duration",
    "format_time",
    "iso",
    "keys_out_lines",
    "pair_statuses",
    "parse_duration",
    "parse_iso",
    "parse_since",
    "render_table",
    "status_json",
    "status_table",
    "summary",
]

#: Human labels of the state slugs used in JSON.
LABELS: Mapping[str, str] = {
    "enabled": "enabled",
    "auto-disabled": "auto-disabled",
    "half-open": "half-open",
    "probing": "probing",
    "slow-start": "slow-start",
    "rate-limited": "rate-limited",
    "manually-disabled": "manually disabled",
    "vendor-off": "vendor off",
    "no-key": "no key",
    "not-configured": "not configured",
}
EXPIRED_LABEL = "enabled (expired, not yet recorded)"

# --------------------------------------------------------------------------------------------
# Pair states
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DisableView:
    """One `disabled_pairs` row as seen at `now`."""

    record: DisabledRecord
    #: Seconds until it ends (0 when over); None when it has no end.
    remaining_seconds: float | None

    @property
    def expired(self) -> bool:
        return self.remaining_seconds is not None and self.remaining_seconds <= 0

    @property
    def in_force(self) -> bool:
        return not self.expired

    @classmethod
    def at(cls, record: DisabledRecord, now: float) -> DisableView:
        until = record.disabled_until
        return cls(record, None if until is None else max(0.0, until - now))


@dataclass(frozen=True, slots=True)
class PairStatus:
    """One pair's state for `cliproxy status`."""

    vendor: str
    model: str
    names: tuple[str, ...]
    state: str  # a key of LABELS
    label: str
    detail: str
    configured: bool
    #: Routable now: configured, switched on in the config, and no disable in force.
    routable: bool
    vendor_enabled: bool | None = None
    model_enabled: bool | None = None
    missing_key: bool | None = None
    disables: tuple[DisableView, ...] = ()
    #: The unset variables the vendor's key comes from, when that is why it looks empty here.
    key_variables: tuple[str, ...] = ()
    #: `cliproxy.core.pair_state.pair_state` of a configured pair (the API's `state`); None when not configured.
    recovery_state: str | None = None


def _describe(view: DisableView, *, name: bool) -> str:
    """`4m12s left, until ..., 5 failures, last error: ...`; with `name`, prefixed by what the disable is."""
    record = view.record
    what = {"auto": "auto-disabled", "manual": "manually disabled", "rate-limited": "rate-limited"}.get(
        record.reason, record.reason
    )
    if record.disabled_until is None:
        parts = ["no end"]
    elif view.expired:
        parts = [f"ended {format_timestamp(record.disabled_until)}"]
    else:
        assert view.remaining_seconds is not None
        parts = [f"{format_duration(view.remaining_seconds)} left", f"until {format_timestamp(record.disabled_until)}"]
    if name or view.expired:
        parts[0] = f"{what} {parts[0]}" if view.expired else f"{what}, {parts[0]}"
    if record.reason == "auto" and record.failure_count:
        parts.append(f"{record.failure_count} failures")
    if record.actor:
        parts.append(f"by {record.actor}")
    if record.last_error is not None:
        status = record.last_error.status
        parts.append(
            f"last error: {status if status is not None else 'transport'} {one_line(record.last_error.message, 60)}".rstrip()
        )
    return ", ".join(parts)


def _status_of(
    key: PairKey,
    names: tuple[str, ...],
    views: list[DisableView],
    *,
    configured: bool,
    vendor_enabled: bool | None = None,
    model_enabled: bool | None = None,
    missing_key: bool | None = None,
    key_variables: tuple[str, ...] = (),
    now: float = 0.0,
    recovery: RecoveryMode = "timer",
    slow_start_until: float | None = None,
) -> PairStatus:
    in_force = [v for v in views if v.in_force]
    manual = [v for v in in_force if v.record.reason == "manual"]
    auto = [v for v in in_force if v.record.reason not in ("manual", "rate-limited")]
    limited = [v for v in in_force if v.record.reason == "rate-limited"]
    conditions: list[tuple[str, str]] = []  # (state, detail) in precedence order
    if configured:
        if vendor_enabled is False:
            conditions.append(("vendor-off", "vendor enabled: false in the config"))
        if missing_key:
            conditions.append(("no-key", "every api-key entry of the vendor is empty (environment variable unset?)"))
        if model_enabled is False:
            conditions.append(("manually-disabled", "permanent: enabled: false in the config"))
    # The first condition is the state, so its detail need not repeat what it is; the others say it.
    # Rows of pairs that are not configured are all named: their state is `not-configured`.
    conditions.extend(("manually-disabled", _describe(v, name=bool(conditions) or not configured)) for v in manual)
    conditions.extend(("auto-disabled", _describe(v, name=bool(conditions) or not configured)) for v in auto)
    conditions.extend(("rate-limited", _describe(v, name=bool(conditions) or not configured)) for v in limited)
    expired = [v for v in views if v.expired]
    # An automatic disable that is over but, with `recovery: half-open` or `probe`, waits for its
    # verdict: the server holds its row until then (not "re-enabled at the next sweep").
    awaiting = recovery != "timer" and configured and not conditions
    waiting = [v for v in expired if awaiting and v.record.reason == "auto"]
    if waiting:
        expired = [v for v in expired if v not in waiting]
        phase = "half-open" if recovery == "half-open" else "probing"
        conditions.append(
            (phase, f"auto-disable ended {format_timestamp(waiting[0].record.disabled_until or now)}; {_AWAITING[phase]}")
        )
    if configured and not conditions and slow_start_until is not None:
        conditions.append(
            ("slow-start", f"re-enabled, its share of the tier ramps up until {format_timestamp(slow_start_until)}")
        )
    if not configured:
        state, label = "not-configured", LABELS["not-configured"]
        details = [d for _, d in conditions]
    elif conditions:
        state = conditions[0][0]
        label = LABELS[state]
        details = [d for _, d in conditions]
    else:
        state = "enabled"
        label = EXPIRED_LABEL if expired else LABELS["enabled"]
        details = []
    if key_variables:
        sources = ", ".join(f"${{{variable}}}" for variable in key_variables)
        details.append(f"key from {sources} (not set here; assumed set for the server)")
    if expired:
        details.extend(
            f"{_describe(v, name=True)} (the server records the re-enable at its next sweep or start-up)" for v in expired
        )
    return PairStatus(
        vendor=key[0],
        model=key[1],
        names=names,
        state=state,
        label=label,
        detail="; ".join(details),
        configured=configured,
        # A half-open pair takes (a few) requests, a slow-starting one its growing share; a probing
        # one none until cliproxy's probe passes.
        routable=configured and (not conditions or conditions[0][0] in ("half-open", "slow-start")),
        vendor_enabled=vendor_enabled,
        model_enabled=model_enabled,
        missing_key=missing_key,
        disables=tuple(views),
        key_variables=key_variables,
        recovery_state=_recovery_state(views, vendor_enabled, model_enabled, missing_key, now, recovery, slow_start_until)
        if configured
        else None,
    )


_AWAITING = {
    "half-open": "recovery: half-open, the next requests test it (a success brings it back, a failure disables it again)",
    "probing": "recovery: probe, no client request goes there until cliproxy's probe passes",
}


def _recovery_state(
    views: list[DisableView],
    vendor_enabled: bool | None,
    model_enabled: bool | None,
    missing_key: bool | None,
    now: float,
    recovery: RecoveryMode = "timer",
    slow_start_until: float | None = None,
) -> str:
    """The API's one-word `state` (`pair_state`), from the rows and the config as the CLI sees them."""
    by_reason = {v.record.reason: v.record for v in views}
    auto, timed, limited = by_reason.get("auto"), by_reason.get("manual"), by_reason.get("rate-limited")
    view = PairView(
        switched_off=vendor_enabled is False or model_enabled is False or missing_key is True,
        auto_disabled_until=auto.disabled_until if auto else None,
        recovery=recovery,
        manually_disabled=timed is not None,
        manually_disabled_until=timed.disabled_until if timed else None,
        rate_limited_until=limited.disabled_until if limited else None,
        slow_start_until=slow_start_until,
    )
    return pair_state(view, now)


def _slow_start_until(slow_start_seconds: float, reenabled_at: float | None, now: float) -> float | None:
    """When the slow start that began at `reenabled_at` ends, while it runs; None otherwise."""
    if reenabled_at is None or slow_start_seconds <= 0:
        return None
    until = reenabled_at + slow_start_seconds
    return until if now < until else None


def pair_statuses(
    table: RoutingTable,
    disabled: Iterable[DisabledRecord],
    now: float,
    unset_key_variables: Mapping[str, tuple[str, ...]] | None = None,
    reenabled_at: Mapping[PairKey, float] | None = None,
) -> tuple[list[PairStatus], list[PairStatus]]:
    """(every configured pair in config order, pairs with database rows that are not configured).

    `unset_key_variables`: vendor name -> the unset `${VAR}`s its api-keys come from (a lenient
    load); such a vendor's key is unknown here, not missing. `reenabled_at`: pair -> the time of its
    last `enabled` event (recent ones: what a slow start runs from).
    """
    unknown = unset_key_variables or {}

    def key_of(vendor: Vendor) -> tuple[bool | None, tuple[str, ...]]:
        """(missing_key, the variables it comes from): None and the names when only the shell lacks them."""
        variables = unknown.get(vendor.name, ())
        if vendor.missing_key and variables:
            return None, variables
        return vendor.missing_key, ()

    rows: dict[PairKey, list[DisableView]] = {}
    for record in disabled:
        rows.setdefault((record.vendor, record.model), []).append(DisableView.at(record, now))
    configured = [
        _status_of(
            key,
            table.names_of.get(key, (pair.model.public_name,)),
            rows.get(key, []),
            configured=True,
            vendor_enabled=pair.vendor.enabled,
            model_enabled=pair.model.enabled,
            missing_key=key_of(pair.vendor)[0],
            key_variables=key_of(pair.vendor)[1],
            now=now,
            recovery=pair.auto_disable.recovery,
            slow_start_until=_slow_start_until(pair.auto_disable.slow_start_seconds, (reenabled_at or {}).get(key), now),
        )
        for key, pair in table.pairs.items()
    ]
    orphans = [_status_of(key, (), views, configured=False) for key, views in sorted(rows.items()) if key not in table.pairs]
    return configured, orphans


def status_table(statuses: Sequence[PairStatus]) -> str:
    return render_table(
        ("VENDOR", "MODEL", "NAMES", "STATE", "DETAIL"),
        ((s.vendor, s.model, ", ".join(s.names), s.label, s.detail) for s in statuses),
    )


def summary(statuses: Sequence[PairStatus]) -> str:
    """`5 pairs: 3 enabled, 1 auto-disabled, 1 vendor off`."""
    counts: dict[str, int] = {}
    for s in statuses:
        label = LABELS[s.state]  # "enabled (expired, not yet recorded)" counts as enabled
        counts[label] = counts.get(label, 0) + 1
    parts = ", ".join(f"{counts[label]} {label}" for label in LABELS.values() if label in counts)
    return f"{len(statuses)} pair{'s' if len(statuses) != 1 else ''}" + (f": {parts}" if parts else "")


def _disable_json(view: DisableView) -> dict[str, Any]:
    r = view.record
    return {
        "reason": r.reason,
        "disabled_at": iso(r.disabled_at),
        "disabled_until": iso(r.disabled_until),
        "remaining_seconds": None if view.remaining_seconds is None else round(view.remaining_seconds, 3),
        "expired": view.expired,
        "failure_count": r.failure_count,
        "window_started_at": iso(r.window_started_at),
        "last_failure_at": iso(r.last_failure_at),
        "last_status": r.last_error.status if r.last_error else None,
        "last_error": r.last_error.message if r.last_error else None,
        "actor": r.actor,
    }


def status_json(statuses: Iterable[PairStatus]) -> list[dict[str, Any]]:
    return [
        {
            "vendor": s.vendor,
            "model": s.model,
            "names": list(s.names),
            "state": s.state,
            "label": s.label,
            "detail": s.detail,
            "configured": s.configured,
            "routable": s.routable,
            "vendor_enabled": s.vendor_enabled,
            "model_enabled": s.model_enabled,
            "missing_key": s.missing_key,
            "key_variables_unset": list(s.key_variables),
            "recovery_state": s.recovery_state,
            "disables": [_disable_json(v) for v in s.disables],
        }
        for s in statuses
    ]


def keys_out_lines(table: RoutingTable, records: Iterable[KeyRecord], now: float) -> list[str]:
    """`cliproxy status`: each key out of its vendor's rotation now (key scope), as the server sees it:
    in force by the clock, and still the key at its index (same hash); `credentials` when it was the vendor's last."""
    lines: list[str] = []
    out_by_vendor: dict[str, int] = {}
    shown: list[tuple[KeyRecord, str]] = []
    for record in sorted(records, key=lambda r: (r.vendor, r.index)):
        rotation = table.keys.get(record.vendor)
        if rotation is None or now >= record.disabled_until:
            continue
        current = dict(zip(rotation.indexes, zip(rotation.hashes, rotation.entries)))
        if record.index not in current or current[record.index][0] != record.key_hash:
            continue
        out_by_vendor[record.vendor] = out_by_vendor.get(record.vendor, 0) + 1
        shown.append((record, mask_key(current[record.index][1].api_key)))
    for record, masked in shown:
        every = out_by_vendor[record.vendor] >= len(table.keys[record.vendor].indexes)
        why = record.last_error.message if record.last_error is not None else ""
        lines.append(
            f"  {record.vendor} key {record.index} ({masked}): out until {format_timestamp(record.disabled_until)}"
            f" ({format_duration(record.disabled_until - now)} left, level {record.disable_level})"
            + (" - every key of the vendor is out: its pairs are unavailable (credentials)" if every else "")
            + (f": {why}" if why else "")
        )
    return lines
