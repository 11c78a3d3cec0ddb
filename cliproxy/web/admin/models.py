"""Handlers of `/api/models/...`: the disabled pairs, a model's pairs' status, and switching them on and off.

Two axes make a pair unavailable, kept apart as in the tracker:

- the operator's: `enabled: false` on the model or vendor entry of config.yaml (permanent, written
  back through the config manager), or a timed manual disable held by the failure tracker;
- the tracker's automatic disable.

`enabled` in a response means "routable now" (every axis allows it); `config_enabled` is what the
model entry of config.yaml says. Every handler that reports or changes disabled state answers from
the tracker's committed view once its writes are in SQLite (`exchange.committed`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from aiohttp import web

from cliproxy.core.config import PairKey
from cliproxy.core.errors import ModelNotFound, NotFound
from cliproxy.core.routing import Pair
from cliproxy.core.runtime import Runtime
from cliproxy.services.config_manager import ConfigManager
from cliproxy.web.admin.exchange import committed, json_body, json_reply, load, path_name, query
from cliproxy.web.admin.registry import endpoint
from cliproxy.web.admin.schemas import (
    DisableBodySchema,
    DisabledListSchema,
    EnableAllQuerySchema,
    EnableAllSchema,
    ModelStatusSchema,
    VendorQuerySchema,
)
from cliproxy.web.admin.views import disabled_list, iso, pair_status, switched_off_by
from cliproxy.web.keys import ADMIN_ACTOR, CLOCK, CONFIG_MANAGER, RUNTIME, STORE, TRACKER

__all__ = ["disable_model", "enable_all", "enable_model", "list_disabled", "model_status"]

#: How far back in a pair's (or vendor's) history the event that switched it off in the config is looked for.
_CONFIG_SWITCH_LOOKBACK = 50


@endpoint(
    "GET", "/api/models/disabled", summary="Every disabled pair", response=DisabledListSchema, errors=(503,), tags=("models",)
)
async def list_disabled(request: web.Request) -> web.Response:
    """Every disable in force: automatic and timed manual ones (from the tracker) and `enabled: false`
    in config.yaml (model or vendor). A pair under two disables appears once per disable."""
    await committed(request)
    entries = disabled_list(request.config_dict[RUNTIME].current, request.config_dict[TRACKER], request.config_dict[CLOCK]())
    await _config_switch_events(request.config_dict[STORE], entries)
    return json_reply(DisabledListSchema, {"disabled": entries})


@endpoint(
    "POST",
    "/api/models/enable-all",
    summary="Clear every disable the tracker holds, optionally of one vendor or reason",
    response=EnableAllSchema,
    query=EnableAllQuerySchema,
    errors=(400, 503),
    tags=("models",),
)
async def enable_all(request: web.Request) -> web.Response:
    """Ends every automatic, timed manual and rate-limited disable in force (`?vendor=` and `?reason=`
    narrow it), one `enabled` event (cause manual) per disable cleared, and answers with the list once
    it is in SQLite. `enabled: false` in config.yaml is left alone: that is the operator's own switch,
    cleared pair by pair with `POST /api/models/{model}/enable`."""
    filters = query(request, EnableAllQuerySchema())
    vendor, reason = filters.get("vendor"), filters.get("reason")
    await committed(request)
    tracker = request.config_dict[TRACKER]
    rows = tracker.committed_disabled_pairs()
    known = {v.name for v in request.config_dict[RUNTIME].current.config.vendors} | {r.vendor for r in rows}
    if vendor is not None and vendor not in known:
        raise NotFound(f"no vendor named '{vendor}'", param="vendor")
    actor = request[ADMIN_ACTOR]
    cleared: list[dict[str, str]] = []
    for row in rows:  # sorted by vendor, model, reason
        if (vendor is None or row.vendor == vendor) and (reason is None or row.reason == reason):
            if await tracker.clear_disable((row.vendor, row.model), row.reason, actor):
                cleared.append({"vendor": row.vendor, "model": row.model, "reason": row.reason})
    await committed(request, after_change=True)
    return json_reply(EnableAllSchema, {"enabled": cleared})


@endpoint(
    "GET",
    "/api/models/{model:.+}/status",
    summary="Status of the pairs serving a model",
    response=ModelStatusSchema,
    query=VendorQuerySchema,
    errors=(400, 503),
    tags=("models",),
)
async def model_status(request: web.Request) -> web.Response:
    """Every pair `{model}` names (an alias, an upstream name or `prefix/alias`; `/` and `:` allowed,
    URL-encoded or not), with both axes of its state and its effective auto-disable settings."""
    runtime = request.config_dict[RUNTIME].current
    name, pairs = _pairs_for(request, runtime)
    await committed(request)
    return _status_response(request, name, [p.key for p in pairs])


@endpoint(
    "POST",
    "/api/models/{model:.+}/enable",
    summary="Make the pairs serving a model routable",
    response=ModelStatusSchema,
    query=VendorQuerySchema,
    errors=(400, 409, 503),
    tags=("models",),
)
async def enable_model(request: web.Request) -> web.Response:
    """Clears the automatic and the timed manual disable and resets the failure count (tracker), and
    writes `enabled: false` on the model entry back to true (config.yaml). Does not touch the vendor's `enabled`."""
    runtime = request.config_dict[RUNTIME].current
    name, pairs = _pairs_for(request, runtime)
    await committed(request)
    actor = request[ADMIN_ACTOR]
    tracker = request.config_dict[TRACKER]
    for pair in pairs:
        # A pair switched off in the config gets its one `manual-enable` event from the write-back below.
        await tracker.manual_enable(pair.key, actor, record_if_nothing_cleared=pair.model.enabled)
    await _write_enabled(request.config_dict[CONFIG_MANAGER], pairs, True, actor, kind="manual-enable")
    await committed(request, after_change=True)
    return _status_response(request, name, [p.key for p in pairs])


async def _write_enabled(manager: ConfigManager, pairs: Sequence[Pair], enabled: bool, actor: str, *, kind: str) -> None:
    """Write `enabled` on each model entry of config.yaml that does not already say so (one event each)."""
    for pair in pairs:
        if pair.model.enabled == enabled:
            continue
        await manager.apply_edits(
            manager.switch(pair.vendor.name, pair.model.name, enabled),
            actor=actor,
            kind=kind,
            vendor=pair.vendor.name,
            model=pair.model.name,
            reason=None if enabled else "manual",  # a permanent manual-disable, like a timed one
        )


@endpoint(
    "POST",
    "/api/models/{model:.+}/disable",
    summary="Disable the pairs serving a model",
    response=ModelStatusSchema,
    query=VendorQuerySchema,
    body=DisableBodySchema,
    body_required=False,
    errors=(400, 409, 503),
    tags=("models",),
)
async def disable_model(request: web.Request) -> web.Response:
    """With `duration_seconds`: a timed manual disable, kept in SQLite (survives restarts; an automatic
    re-enable never ends it). Without: permanent, written as `enabled: false` on the model entry of config.yaml."""
    runtime = request.config_dict[RUNTIME].current
    name, pairs = _pairs_for(request, runtime)
    body = load(DisableBodySchema(), await json_body(request, optional=True))
    duration = body.get("duration_seconds")
    await committed(request)
    actor = request[ADMIN_ACTOR]
    if duration is not None:
        tracker = request.config_dict[TRACKER]
        for pair in pairs:
            await tracker.manual_disable(pair.key, duration, actor)
    else:
        await _write_enabled(request.config_dict[CONFIG_MANAGER], pairs, False, actor, kind="manual-disable")
    await committed(request, after_change=True)
    return _status_response(request, name, [p.key for p in pairs])


async def _config_switch_events(store: Any, entries: list[dict[str, Any]]) -> None:
    """Fill `disabled_at` and `actor` of the config-file disables from the audit events that made them."""
    for entry in entries:
        if entry["source"] == "model-config":
            events = await store.events(vendor=entry["vendor"], model=entry["model"], limit=_CONFIG_SWITCH_LOOKBACK)
            event = switched_off_by([e for e in events if e.kind != "vendor-changed"], "enabled")
        elif entry["source"] == "vendor-config":
            events = await store.events(vendor=entry["vendor"], kind="vendor-changed", limit=_CONFIG_SWITCH_LOOKBACK)
            event = switched_off_by(events, "enabled")
        else:
            continue
        if event is not None:
            entry["disabled_at"], entry["actor"] = iso(event.at), event.actor


def _pairs_for(request: web.Request, runtime: Runtime) -> tuple[str, list[Pair]]:
    """The pairs a model route means: `{model}` (alias, upstream name or prefix/alias), `?vendor=` narrowing."""
    name = path_name(request, "model")
    vendor = query(request, VendorQuerySchema()).get("vendor")
    if vendor is not None and not any(v.name == vendor for v in runtime.config.vendors):
        raise NotFound(f"no vendor named '{vendor}'", param="vendor")
    pairs = runtime.table.pairs_named(name, vendor)
    if not pairs:
        where = f" at vendor '{vendor}'" if vendor else ""
        raise ModelNotFound(f"no configured model named '{name}'{where}", param="model")
    return name, pairs


def _status_response(request: web.Request, name: str, keys: Sequence[PairKey]) -> web.Response:
    runtime = request.config_dict[RUNTIME].current
    tracker = request.config_dict[TRACKER]
    now = request.config_dict[CLOCK]()
    pairs = [runtime.table.pairs[k] for k in keys if k in runtime.table.pairs]
    return json_reply(ModelStatusSchema, {"model": name, "pairs": [pair_status(p, runtime, tracker, now) for p in pairs]})
