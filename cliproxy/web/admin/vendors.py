"""Handlers of `/api/vendors/...`: every vendor with its models' state, and changes to their entries in config.yaml.

A PATCH writes each key of its body into the entry (comments and `${VAR}` kept), reloads, and records
one audit event; upstream keys and header values only ever leave masked.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiohttp import web
from marshmallow import Schema, fields

from cliproxy.core.config import Vendor
from cliproxy.core.errors import InvalidRequest, ModelNotFound, NotFound
from cliproxy.core.runtime import Runtime
from cliproxy.services.writeback import model_path, vendor_path
from cliproxy.web.admin.exchange import committed, json_body, json_reply, load, path_name
from cliproxy.web.admin.registry import endpoint
from cliproxy.web.admin.schemas import (
    ModelPatchSchema,
    VendorKeysSchema,
    VendorListSchema,
    VendorModelViewSchema,
    VendorPatchSchema,
    VendorViewSchema,
)
from cliproxy.web.admin.views import key_views, mask_headers, vendor_view
from cliproxy.web.keys import ADMIN_ACTOR, CLOCK, CONFIG_MANAGER, RUNTIME, TRACKER

__all__ = ["enable_key", "list_vendors", "patch_model", "patch_vendor"]


@endpoint(
    "GET",
    "/api/vendors",
    summary="Every vendor with its models and their state",
    response=VendorListSchema,
    errors=(503,),
    tags=("vendors",),
)
async def list_vendors(request: web.Request) -> web.Response:
    """Vendors as configured (keys masked), each model with `enabled` (routable now) and `config_enabled`."""
    await committed(request)
    runtime, tracker, now = request.config_dict[RUNTIME].current, request.config_dict[TRACKER], request.config_dict[CLOCK]()
    return json_reply(VendorListSchema, {"vendors": [vendor_view(v, runtime, tracker, now) for v in runtime.config.vendors]})


@endpoint(
    "PATCH",
    "/api/vendors/{name}",
    summary="Change a vendor's entry in config.yaml",
    response=VendorViewSchema,
    body=VendorPatchSchema,
    errors=(400, 409, 503),
    tags=("vendors",),
)
async def patch_vendor(request: web.Request) -> web.Response:
    """Writes each key of the body into the vendor's entry of config.yaml (comments and `${VAR}` kept),
    reloads, and records one `vendor-changed` event. `enabled: false` removes every pair of the vendor from routing."""
    name = path_name(request, "name")
    _vendor_named(request.config_dict[RUNTIME].current, name)
    raw = await json_body(request)
    schema = VendorPatchSchema()
    data = load(schema, raw)
    if not data:
        raise InvalidRequest("the body sets no field")
    await committed(request)
    detail = _raw(raw, schema, data)
    if isinstance(detail.get("headers"), Mapping):  # the audit row shows them as GET /api/vendors does
        detail["headers"] = mask_headers(list(detail["headers"].items()))
    enabled = data.pop("enabled", None)
    manager = request.config_dict[CONFIG_MANAGER]
    # `enabled` in the spelling the file uses (CLIProxyAPI's inverse `disabled:` is kept); on removes the off line
    switch = manager.switch(name, None, enabled) if enabled is not None else (lambda text: [])

    def edits(text: str) -> list[tuple[tuple[str | int, ...], Any]]:
        return switch(text) + (_edits(vendor_path(text, name), schema, data) if data else [])

    await manager.apply_edits(edits, actor=request[ADMIN_ACTOR], kind="vendor-changed", vendor=name, detail=detail)
    await committed(request, after_change=True)
    runtime = request.config_dict[RUNTIME].current
    return json_reply(
        VendorViewSchema,
        vendor_view(_vendor_named(runtime, name), runtime, request.config_dict[TRACKER], request.config_dict[CLOCK]()),
    )


@endpoint(
    "PATCH",
    "/api/vendors/{name}/models/{model:.+}",
    summary="Change a model entry in config.yaml",
    response=VendorModelViewSchema,
    body=ModelPatchSchema,
    errors=(400, 409, 503),
    tags=("vendors",),
)
async def patch_model(request: web.Request) -> web.Response:
    """`{model}` is the entry's upstream name (or its alias when that is unique in the vendor). Writes each
    key of the body into the entry, reloads, records one `model-changed` event. It does not clear the
    tracker's disables: `POST /api/models/{model}/enable` does."""
    name = path_name(request, "name")
    model_name = path_name(request, "model")
    vendor = _vendor_named(request.config_dict[RUNTIME].current, name)
    entry = next((m for m in vendor.models if m.name == model_name), None)
    if entry is None:
        by_alias = [m for m in vendor.models if m.alias == model_name]
        entry = by_alias[0] if len(by_alias) == 1 else None
    if entry is None:
        raise ModelNotFound(f"vendor '{name}' has no model entry named '{model_name}'", param="model")
    raw = await json_body(request)
    schema = ModelPatchSchema()
    data = load(schema, raw)
    if not data:
        raise InvalidRequest("the body sets no field")
    await committed(request)
    detail = _raw(raw, schema, data)
    enabled = data.pop("enabled", None)
    manager = request.config_dict[CONFIG_MANAGER]
    switch = manager.switch(name, entry.name, enabled) if enabled is not None else (lambda text: [])
    await manager.apply_edits(
        lambda text: switch(text) + (_edits(model_path(text, name, entry.name), schema, data) if data else []),
        actor=request[ADMIN_ACTOR],
        kind="model-changed",
        vendor=name,
        model=entry.name,
        detail=detail,
    )
    await committed(request, after_change=True)
    runtime = request.config_dict[RUNTIME].current
    view = vendor_view(_vendor_named(runtime, name), runtime, request.config_dict[TRACKER], request.config_dict[CLOCK]())
    [model_view] = [m for m in view["models"] if m["name"] == entry.name]
    return json_reply(VendorModelViewSchema, model_view)


@endpoint(
    "POST",
    "/api/vendors/{name}/keys/{index}/enable",
    summary="Put a vendor's key back in its rotation",
    response=VendorKeysSchema,
    errors=(404, 503),
    tags=("vendors",),
)
async def enable_key(request: web.Request) -> web.Response:
    """Ends the time out of the key at `{index}` of the vendor's `api-key-entries` (0-based) that the
    upstream refused (key scope): one `key-enabled` event, cause manual. A key already in changes nothing."""
    name = path_name(request, "name")
    vendor = _vendor_named(request.config_dict[RUNTIME].current, name)
    raw_index = request.match_info.get("index", "")
    if not raw_index.isdigit() or int(raw_index) >= len(vendor.api_key_entries):
        raise NotFound(f"vendor '{name}' has no key at index {raw_index!r} (it has {len(vendor.api_key_entries)})", param="index")
    await committed(request)
    tracker = request.config_dict[TRACKER]
    cleared = await tracker.enable_key(name, int(raw_index), request[ADMIN_ACTOR])
    await committed(request, after_change=True)
    return json_reply(VendorKeysSchema, {"cleared": cleared, "keys": key_views(vendor, tracker)})


def _vendor_named(runtime: Runtime, name: str) -> Vendor:
    for vendor in runtime.config.vendors:
        if vendor.name == name:
            return vendor
    raise NotFound(f"no vendor named '{name}'", param="vendor")


def _edits(prefix: tuple[str | int, ...], schema: Schema, data: Mapping[str, Any]) -> list[tuple[tuple[str | int, ...], Any]]:
    """A validated PATCH body -> (config path, value) edits, keys as in config.yaml; nested mappings edited key by key."""
    edits: list[tuple[tuple[str | int, ...], Any]] = []
    for attr, value in data.items():
        field_ = schema.fields[attr]
        key = field_.data_key or attr
        if isinstance(field_, fields.Nested) and isinstance(value, Mapping):
            inner = field_.schema
            edits.extend(_edits((*prefix, key), inner, value))
        else:
            edits.append(((*prefix, key), value))
    return edits


def _raw(body: Mapping[str, Any], schema: Schema, data: Mapping[str, Any]) -> dict[str, Any]:
    """The loaded values in the body's own spelling, for the audit event's detail."""
    return {(schema.fields[a].data_key or a): body.get(schema.fields[a].data_key or a) for a in data}
