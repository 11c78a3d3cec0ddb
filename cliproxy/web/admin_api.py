"""The management API under `/api`: handlers and the marshmallow schemas that validate and serialise them.

Every endpoint is declared once with `@endpoint(...)`, naming its body, query and response
schemas; `cliproxy.web.openapi` builds `/api/openapi.json` from the same declarations, and every
response is produced by `Schema().dump(...)` of the declared schema, so the document cannot drift
from what is served. Access is decided before any handler runs (`cliproxy.web.admin_auth`).

Two axes make a pair unavailable, kept apart as in the tracker:

- the operator's: `enabled: false` on the model or vendor entry of config.yaml (permanent, written
  back through the config manager), or a timed manual disable held by the failure tracker;
- the tracker's automatic disable.

`enabled` in a response means "routable now" (every axis allows it); `config_enabled` is what the
model entry of config.yaml says. A disable is committed before it is reported: every handler that
reports or changes disabled state first waits for the tracker's writes queued so far to reach
SQLite (503 when the database does not take them within `COMMIT_TIMEOUT_SECONDS`), then builds its
answer from the tracker's committed view, so a transition that happened meanwhile and is not yet
committed is not shown either.

Upstream keys only ever leave masked (`redact.mask_key`); `GET /api/config.yaml` returns the file
as it is on disk, which holds `${VAR}` placeholders rather than their values (a key written
literally into the file by the operator is shown as written).
"""

from __future__ import annotations

import inspect
import json
import math
import re
import typing
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from aiohttp import web
from marshmallow import RAISE, Schema, ValidationError, fields, validate

from cliproxy.core.config import AutoDisableOverrides, AutoDisableSettings, Config, PairKey, Timeouts, Vendor
from cliproxy.core.errors import InvalidRequest, ModelNotFound, NotFound, ServiceUnavailable
from cliproxy.core.events import EventKind
from cliproxy.web.keys import ADMIN_ACTOR, CLOCK, CONFIG_MANAGER, RUNTIME, STORE, TRACKER
from cliproxy.core.redact import SecretMasker, mask_key, mask_secrets
from cliproxy.core.routing import Pair
from cliproxy.services.config_manager import ConfigManager
from cliproxy.core.runtime import Runtime
from cliproxy.core.times import format_timestamp, parse_since
from cliproxy.services.tracker import FailureTracker
from cliproxy.services.writeback import model_path, vendor_path

__all__ = ["COMMIT_TIMEOUT_SECONDS", "ENDPOINTS", "Endpoint", "routes"]

#: How long a management call waits for the tracker's writes to be committed before answering 503.
COMMIT_TIMEOUT_SECONDS = 5.0
#: Longest timed manual disable (longer ones are what the permanent disable is for).
MAX_DURATION_SECONDS = 10 * 365 * 86400.0
_MAX_ID = 2**63 - 1

routes = web.RouteTableDef()


# =============================================================================================
# Endpoint declarations (shared with cliproxy.web.openapi)
# =============================================================================================


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One management route and the schemas it validates and serialises with."""

    method: str
    path: str  # aiohttp form: `/api/models/{model:.+}/status`
    summary: str
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    response: type[Schema] | None  # None: a non-JSON body (see `response_content`)
    body: type[Schema] | None = None
    query: type[Schema] | None = None
    description: str = ""
    errors: tuple[int, ...] = ()
    body_content: str = "application/json"
    body_required: bool = True
    response_content: str = "application/json"
    tags: tuple[str, ...] = field(default=())


ENDPOINTS: list[Endpoint] = []

#: Errors any management endpoint may answer (the access rules of cliproxy.web.admin_auth).
COMMON_ERRORS = (401, 403, 404, 429)


def endpoint(
    method: str,
    path: str,
    *,
    summary: str,
    response: type[Schema] | None,
    body: type[Schema] | None = None,
    query: type[Schema] | None = None,
    errors: tuple[int, ...] = (),
    **extra: Any,
) -> Callable[[Callable[[web.Request], Awaitable[web.StreamResponse]]], Callable[[web.Request], Awaitable[web.StreamResponse]]]:
    def register(handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        ENDPOINTS.append(
            Endpoint(
                method=method,
                path=path,
                summary=summary,
                handler=handler,
                response=response,
                body=body,
                query=query,
                description=inspect.cleandoc(handler.__doc__ or ""),
                errors=errors,
                **extra,
            )
        )
        routes.route(method, path)(handler)
        return handler

    return register


# =============================================================================================
# Schemas
# =============================================================================================


def _ts(description: str, *, nullable: bool = True) -> fields.String:
    return fields.String(
        required=True, allow_none=nullable, metadata={"format": "date-time", "description": description + " (ISO-8601 UTC)"}
    )


class ErrorDetailSchema(Schema):
    message = fields.String(required=True)
    type = fields.String(required=True)
    param = fields.String(required=True, allow_none=True)
    code = fields.String(required=True)


class ErrorSchema(Schema):
    """The OpenAI error shape every error answer has."""

    error = fields.Nested(ErrorDetailSchema, required=True)


class LastErrorSchema(Schema):
    status = fields.Integer(required=True, allow_none=True, metadata={"description": "upstream HTTP status; null for transport errors"})
    message = fields.String(required=True, metadata={"description": "a short, masked excerpt"})


_REASONS = ("auto", "manual")
_SOURCES = ("auto-disable", "timed", "model-config", "vendor-config")
_LEVELS = ("default", "global", "vendor", "model")


class DisabledPairSchema(Schema):
    vendor = fields.String(required=True)
    model = fields.String(required=True, metadata={"description": "the upstream model name"})
    alias = fields.String(required=True, allow_none=True)
    reason = fields.String(required=True, validate=validate.OneOf(_REASONS))
    source = fields.String(
        required=True,
        validate=validate.OneOf(_SOURCES),
        metadata={
            "description": "auto-disable: the tracker tripped it; timed: POST .../disable with a duration; "
            "model-config / vendor-config: `enabled: false` in config.yaml"
        },
    )
    disabled_at = _ts("when it was disabled; for a config-file disable, from the management call that wrote it "
                      "(null when the file was edited by hand)")
    disabled_until = _ts("when it ends; null when it has no end")
    remaining_seconds = fields.Float(required=True, allow_none=True, metadata={"description": "null when it has no end"})
    failure_count = fields.Integer(required=True)
    last_failure_at = _ts("the pair's last counted failure; null when none is known")
    last_error = fields.Nested(LastErrorSchema, required=True, allow_none=True)
    actor = fields.String(required=True, allow_none=True, metadata={"description": "the management client that disabled it"})
    in_config = fields.Boolean(required=True, metadata={"description": "false for a pair no longer in config.yaml (it routes nothing)"})


class DisabledListSchema(Schema):
    disabled = fields.List(fields.Nested(DisabledPairSchema), required=True)


class EffectiveAutoDisableSchema(Schema):
    enabled = fields.Boolean(required=True, metadata={"description": "false when failure-threshold is 0"})
    failure_threshold = fields.Integer(required=True)
    time_window_seconds = fields.Float(required=True)
    disable_duration_seconds = fields.Float(required=True)
    count_statuses = fields.List(fields.Integer(), required=True)
    sources = fields.Dict(
        keys=fields.String(),
        values=fields.String(validate=validate.OneOf(_LEVELS)),
        required=True,
        metadata={"description": "the level each setting came from: default, global, vendor or model"},
    )


class ManualDisableSchema(Schema):
    disabled_at = _ts("when the operator disabled it", nullable=False)
    disabled_until = _ts("when it ends", nullable=False)
    remaining_seconds = fields.Float(required=True)
    actor = fields.String(required=True, allow_none=True)


class PairStatusSchema(Schema):
    vendor = fields.String(required=True)
    model = fields.String(required=True, metadata={"description": "the upstream model name"})
    alias = fields.String(required=True, allow_none=True)
    names = fields.List(fields.String(), required=True, metadata={"description": "the client-facing names of the pair"})
    enabled = fields.Boolean(required=True, metadata={"description": "routable now: every axis allows it"})
    config_enabled = fields.Boolean(required=True, metadata={"description": "the model entry's `enabled` in config.yaml"})
    vendor_enabled = fields.Boolean(required=True, metadata={"description": "the vendor entry's `enabled` in config.yaml"})
    missing_key = fields.Boolean(required=True, metadata={"description": "every api-key of the vendor is empty (its variable is unset)"})
    auto_disabled = fields.Boolean(required=True)
    failure_count = fields.Integer(required=True, metadata={"description": "failures in the current counting window"})
    window_started_at = _ts("start of the current counting window")
    last_failure_at = _ts("the pair's last counted failure; null when none is known (not kept across restarts unless it tripped a disable)")
    disabled_at = _ts("start of the automatic disable")
    disabled_until = _ts("end of the automatic disable")
    remaining_seconds = fields.Float(required=True, allow_none=True, metadata={"description": "of the automatic disable"})
    last_error = fields.Nested(LastErrorSchema, required=True, allow_none=True)
    manual_disable = fields.Nested(
        ManualDisableSchema, required=True, allow_none=True, metadata={"description": "a timed manual disable in force"}
    )
    auto_disable = fields.Nested(EffectiveAutoDisableSchema, required=True)


class ModelStatusSchema(Schema):
    model = fields.String(required=True, metadata={"description": "the name asked for"})
    pairs = fields.List(fields.Nested(PairStatusSchema), required=True)


class ApiKeyEntryViewSchema(Schema):
    api_key = fields.String(required=True, metadata={"description": "masked"})
    proxy_url = fields.String(required=True, allow_none=True, metadata={"description": "password masked"})


class TimeoutsViewSchema(Schema):
    connect = fields.Float(required=True, allow_none=True)
    first_byte = fields.Float(required=True, allow_none=True)
    stream_idle = fields.Float(required=True, allow_none=True)


class AutoDisableOverridesViewSchema(Schema):
    failure_threshold = fields.Integer(required=True, allow_none=True)
    time_window_seconds = fields.Float(required=True, allow_none=True)
    disable_duration_seconds = fields.Float(required=True, allow_none=True)
    count_statuses = fields.List(fields.Integer(), required=True, allow_none=True)


class VendorModelViewSchema(Schema):
    name = fields.String(required=True)
    alias = fields.String(required=True, allow_none=True)
    names = fields.List(fields.String(), required=True)
    enabled = fields.Boolean(required=True, metadata={"description": "routable now"})
    config_enabled = fields.Boolean(required=True)
    auto_disabled = fields.Boolean(required=True)
    manual_disabled = fields.Boolean(required=True, metadata={"description": "a timed manual disable is in force"})
    auto_disable = fields.Nested(AutoDisableOverridesViewSchema, required=True, metadata={"description": "this entry's own overrides"})


class VendorViewSchema(Schema):
    name = fields.String(required=True)
    enabled = fields.Boolean(required=True, metadata={"description": "the vendor entry's `enabled` in config.yaml"})
    routable = fields.Boolean(required=True, metadata={"description": "enabled and not waiting for an unset key"})
    missing_key = fields.Boolean(required=True)
    priority = fields.Integer(required=True)
    prefix = fields.String(required=True, allow_none=True)
    base_url = fields.String(required=True)
    api_key_entries = fields.List(fields.Nested(ApiKeyEntryViewSchema), required=True)
    headers = fields.Dict(keys=fields.String(), values=fields.String(), required=True, metadata={"description": "values masked"})
    timeouts = fields.Nested(TimeoutsViewSchema, required=True, metadata={"description": "this vendor's own overrides"})
    auto_disable = fields.Nested(AutoDisableOverridesViewSchema, required=True, metadata={"description": "this vendor's own overrides"})
    models = fields.List(fields.Nested(VendorModelViewSchema), required=True)


class VendorListSchema(Schema):
    vendors = fields.List(fields.Nested(VendorViewSchema), required=True)


# --- config.yaml shaped (kebab-case keys, as in the file) -------------------------------------


def _k(field_: fields.Field, key: str, *, nullable: bool = False) -> fields.Field:
    field_.data_key = key
    field_.required = True
    field_.allow_none = nullable
    return field_


class ConfigTimeoutsSchema(Schema):
    connect = _k(fields.Float(), "connect", nullable=True)
    first_byte = _k(fields.Float(), "first-byte", nullable=True)
    stream_idle = _k(fields.Float(), "stream-idle", nullable=True)


class ConfigAutoDisableSchema(Schema):
    failure_threshold = _k(fields.Integer(), "failure-threshold", nullable=True)
    time_window_seconds = _k(fields.Float(), "time-window-seconds", nullable=True)
    disable_duration_seconds = _k(fields.Float(), "disable-duration-seconds", nullable=True)
    count_statuses = _k(fields.List(fields.Integer()), "count-statuses", nullable=True)


class ConfigApiKeyEntrySchema(Schema):
    api_key = _k(fields.String(metadata={"description": "masked"}), "api-key")
    proxy_url = _k(fields.String(), "proxy-url", nullable=True)


class ConfigModelSchema(Schema):
    name = _k(fields.String(), "name")
    alias = _k(fields.String(), "alias", nullable=True)
    enabled = _k(fields.Boolean(), "enabled")
    auto_disable = _k(fields.Nested(ConfigAutoDisableSchema), "auto-disable")


class ConfigVendorSchema(Schema):
    name = _k(fields.String(), "name")
    base_url = _k(fields.String(), "base-url")
    enabled = _k(fields.Boolean(), "enabled")
    priority = _k(fields.Integer(), "priority")
    prefix = _k(fields.String(), "prefix", nullable=True)
    api_key_entries = _k(fields.List(fields.Nested(ConfigApiKeyEntrySchema)), "api-key-entries")
    headers = _k(fields.Dict(keys=fields.String(), values=fields.String()), "headers")
    timeouts = _k(fields.Nested(ConfigTimeoutsSchema), "timeouts")
    auto_disable = _k(fields.Nested(ConfigAutoDisableSchema), "auto-disable")
    models = _k(fields.List(fields.Nested(ConfigModelSchema)), "models")


class ConfigRemoteManagementSchema(Schema):
    secret_key = _k(fields.String(metadata={"description": "masked"}), "secret-key", nullable=True)
    allow_remote = _k(fields.Boolean(), "allow-remote")
    trusted_proxies = _k(fields.List(fields.String()), "trusted-proxies")


class ConfigMetricsSchema(Schema):
    require_auth = _k(fields.Boolean(), "require-auth")


class ConfigViewSchema(Schema):
    """The running configuration, keys as in config.yaml, `${VAR}` expanded, secrets masked."""

    host = _k(fields.String(), "host")
    port = _k(fields.Integer(), "port")
    api_keys = _k(fields.List(fields.String(), metadata={"description": "masked"}), "api-keys")
    proxy_url = _k(fields.String(), "proxy-url", nullable=True)
    request_retry = _k(fields.Integer(), "request-retry")
    database = _k(fields.String(), "database")
    max_body_bytes = _k(fields.Integer(), "max-body-bytes")
    shutdown_grace_seconds = _k(fields.Float(), "shutdown-grace-seconds")
    cors_allow_origins = _k(fields.List(fields.String()), "cors-allow-origins")
    log_level = _k(fields.String(), "log-level")
    log_format = _k(fields.String(), "log-format")
    timeouts = _k(fields.Nested(ConfigTimeoutsSchema), "timeouts")
    auto_disable = _k(fields.Nested(ConfigAutoDisableSchema), "auto-disable")
    remote_management = _k(fields.Nested(ConfigRemoteManagementSchema), "remote-management")
    metrics = _k(fields.Nested(ConfigMetricsSchema), "metrics")
    vendors = _k(fields.List(fields.Nested(ConfigVendorSchema)), "openai-compatibility")


class ConfigResponseSchema(Schema):
    path = fields.String(required=True, allow_none=True, metadata={"description": "the config file; null when built in code"})
    loaded_at = _ts("when the running config was loaded", nullable=False)
    last_reload_error = fields.List(
        fields.String(), required=True, allow_none=True,
        metadata={"description": "every problem of the last rejected reload, until a good file loads; null when none"},
    )
    restart_required = fields.List(
        fields.String(), required=True,
        metadata={"description": "settings changed since start-up that take effect only after a restart (host, port, ...)"},
    )
    config = fields.Nested(ConfigViewSchema, required=True)


class EventSchema(Schema):
    id = fields.Integer(required=True)
    kind = fields.String(required=True)
    at = _ts("when it happened", nullable=False)
    vendor = fields.String(required=True, allow_none=True)
    model = fields.String(required=True, allow_none=True)
    reason = fields.String(required=True, allow_none=True, metadata={"description": "auto | manual, for disables"})
    cause = fields.String(required=True, allow_none=True, metadata={"description": "expired | manual | startup-expired, for enables"})
    disabled_at = _ts("start of the disable concerned")
    disabled_until = _ts("end of the disable concerned")
    failure_count = fields.Integer(required=True, allow_none=True)
    window_started_at = _ts("start of the counting window")
    last_failure_at = _ts("the pair's last counted failure (on `disabled` events)")
    settings = fields.Dict(required=True, allow_none=True, metadata={"description": "the auto-disable settings in force"})
    last_error = fields.Nested(LastErrorSchema, required=True, allow_none=True)
    actor = fields.String(required=True, allow_none=True, metadata={"description": "the management client's address"})
    detail = fields.Dict(required=True, allow_none=True)


class EventPageSchema(Schema):
    events = fields.List(fields.Nested(EventSchema), required=True)
    next_before_id = fields.Integer(
        required=True, allow_none=True, metadata={"description": "pass as before_id for the next (older) page; null on the last page"}
    )


# --- requests ---------------------------------------------------------------------------------


class StrictBody(Schema):
    class Meta:
        unknown = RAISE


def _bool() -> fields.Boolean:
    return fields.Boolean(truthy={True}, falsy={False})


class DisableBodySchema(StrictBody):
    duration_seconds = fields.Float(
        validate=validate.Range(min=0, max=MAX_DURATION_SECONDS, min_inclusive=False),
        allow_none=True,
        metadata={"description": "a timed disable of this many seconds (kept in SQLite); omitted: permanent, "
                  "written as `enabled: false` on the model entry of config.yaml"},
    )


_STATUS_ITEM = re.compile(r"^[1-5]xx$")


def _statuses(value: Any) -> None:
    for item in value:
        if isinstance(item, bool) or not (
            (isinstance(item, int) and 100 <= item <= 599) or (isinstance(item, str) and _STATUS_ITEM.match(item))
        ):
            raise ValidationError(f"{item!r} is not an HTTP status or class like '5xx'")


class AutoDisablePatchSchema(StrictBody):
    """Each key set replaces the entry's own value; null removes it (inherit from the level above)."""

    failure_threshold = fields.Integer(strict=True, allow_none=True, data_key="failure-threshold", validate=validate.Range(min=0))
    time_window_seconds = fields.Float(allow_none=True, data_key="time-window-seconds", validate=validate.Range(min=0, min_inclusive=False))
    disable_duration_seconds = fields.Float(
        allow_none=True, data_key="disable-duration-seconds", validate=validate.Range(min=0, min_inclusive=False)
    )
    count_statuses = fields.List(
        fields.Raw(metadata={"oneOf": [{"type": "integer"}, {"type": "string"}]}),
        allow_none=True, data_key="count-statuses", validate=_statuses,
        metadata={"description": "HTTP statuses such as 429 or classes such as '5xx'"},
    )


class TimeoutsPatchSchema(StrictBody):
    connect = fields.Float(allow_none=True, validate=validate.Range(min=0, min_inclusive=False))
    first_byte = fields.Float(allow_none=True, data_key="first-byte", validate=validate.Range(min=0, min_inclusive=False))
    stream_idle = fields.Float(allow_none=True, data_key="stream-idle", validate=validate.Range(min=0, min_inclusive=False))


class VendorPatchSchema(StrictBody):
    """Keys as in config.yaml; each one set is written to the vendor's entry, null removes it."""

    enabled = _bool()
    priority = fields.Integer(strict=True, allow_none=True)
    prefix = fields.String(allow_none=True, validate=validate.Regexp(r"^[^/\s]+$", error="must be one word without '/'"))
    base_url = fields.String(data_key="base-url", validate=validate.Regexp(r"^https?://[^/\s]+", error="must be an http:// or https:// URL"))
    headers = fields.Dict(keys=fields.String(), values=fields.String(), allow_none=True)
    timeouts = fields.Nested(TimeoutsPatchSchema, allow_none=True)
    auto_disable = fields.Nested(AutoDisablePatchSchema, allow_none=True, data_key="auto-disable")


class ModelPatchSchema(StrictBody):
    """Keys as in config.yaml; each one set is written to the model entry, null removes it."""

    enabled = _bool()
    alias = fields.String(allow_none=True, validate=validate.Length(min=1))
    auto_disable = fields.Nested(AutoDisablePatchSchema, allow_none=True, data_key="auto-disable")


class VendorQuerySchema(StrictBody):
    vendor = fields.String(validate=validate.Length(min=1), metadata={"description": "only the pairs of this vendor"})


_EVENT_KINDS = typing.get_args(EventKind)


class EventsQuerySchema(StrictBody):
    vendor = fields.String()
    model = fields.String(metadata={"description": "the upstream model name"})
    kind = fields.String(validate=validate.OneOf(_EVENT_KINDS))
    since = fields.String(metadata={"description": "an ISO-8601 date or time, or a duration back from now: 90 (seconds), 90s, 30m, 1h30m, 24h, 7d"})
    limit = fields.Integer(load_default=100, validate=validate.Range(min=1, max=1000))
    before_id = fields.Integer(validate=validate.Range(min=1, max=_MAX_ID), metadata={"description": "next_before_id of the previous page"})


# =============================================================================================
# Helpers
# =============================================================================================


def _flatten(messages: Any, path: str = "") -> list[tuple[str, str]]:
    if isinstance(messages, Mapping):
        out: list[tuple[str, str]] = []
        for key, value in messages.items():
            sub = path if key == "_schema" else (f"{path}[{key}]" if isinstance(key, int) else (f"{path}.{key}" if path else str(key)))
            out.extend(_flatten(value, sub))
        return out
    if isinstance(messages, list):
        return [pair for m in messages for pair in _flatten(m, path)]
    return [(path, str(messages))]


def _load(schema: Schema, data: Any, *, what: str = "body") -> dict[str, Any]:
    """Validate with a schema; 400 naming every field (the first one as `param`)."""
    try:
        return schema.load(data)
    except ValidationError as exc:
        problems = _flatten(exc.messages)
        text = "; ".join(f"{p or what}: {m}" for p, m in problems)
        raise InvalidRequest(f"invalid {what}: {text}", param=problems[0][0] or None) from None


async def _json_body(request: web.Request, *, optional: bool = False) -> dict[str, Any]:
    raw = await request.read()
    if not raw.strip():
        if optional:
            return {}
        raise InvalidRequest("the body must be a JSON object")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise InvalidRequest("the body is not valid JSON") from None
    if not isinstance(data, dict):
        raise InvalidRequest("the body must be a JSON object")
    return data


def _query(request: web.Request, schema: Schema) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for key in request.query:
        values = request.query.getall(key)
        if len(values) > 1:
            raise InvalidRequest(f"invalid query: {key}: given more than once", param=key)
        data[key] = values[0]
    return _load(schema, data, what="query")


def _path_name(request: web.Request, key: str) -> str:
    """A name from the path (already URL-decoded by aiohttp); NUL and `.`/`..` segments are refused."""
    name = request.match_info[key]
    if not name or "\x00" in name or any(segment in (".", "..") for segment in name.split("/")):
        raise InvalidRequest(f"invalid {key} name in the path", param=key)
    return name


async def _committed(request: web.Request, *, after_change: bool = False) -> None:
    """Wait until every disable and enable the tracker holds is in SQLite; 503 when it does not get there."""
    if await request.app[TRACKER].flush(timeout=COMMIT_TIMEOUT_SECONDS):
        return
    if after_change:
        message = (
            "the database is not accepting writes: the change is in force in memory but not yet committed "
            "(it is retried until the database recovers)"
        )
    else:
        message = "the database is not accepting writes: disabled state cannot be reported until it has been committed"
    raise ServiceUnavailable(message, headers={"Retry-After": str(math.ceil(COMMIT_TIMEOUT_SECONDS))})


def _iso(t: float | None) -> str | None:
    return None if t is None else format_timestamp(t)


def _remaining(until: float | None, now: float) -> float | None:
    return None if until is None else round(max(0.0, until - now), 3)


def _last_error(info: Any) -> dict[str, Any] | None:
    return None if info is None else {"status": info.status, "message": info.message}


def _mask_url(url: str | None) -> str | None:
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


def _mask_headers(headers: Sequence[tuple[str, str]]) -> dict[str, str]:
    """Vendor header values, masked whatever the header is called: `Ocp-Apim-Subscription-Key`,
    `X-Auth-Key` and friends are credentials, and no list of names catches them all."""
    return {name: mask_key(value) if isinstance(value, str) else value for name, value in headers}


def _masked(value: Any, secrets: Sequence[str] | SecretMasker) -> Any:
    """Every string in a JSON-like tree with known secrets and credential-shaped text masked."""
    if isinstance(value, str):
        return mask_secrets(value, secrets)
    if isinstance(value, Mapping):
        return {k: _masked(v, secrets) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_masked(v, secrets) for v in value]
    return value


def _overrides(o: AutoDisableOverrides) -> dict[str, Any]:
    return {
        "failure_threshold": o.failure_threshold,
        "time_window_seconds": o.time_window_seconds,
        "disable_duration_seconds": o.disable_duration_seconds,
        "count_statuses": None if o.count_statuses is None else sorted(o.count_statuses),
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
        "sources": {name: settings.source_of(name) for name in
                    ("failure_threshold", "time_window_seconds", "disable_duration_seconds", "count_statuses")},
    }


# =============================================================================================
# Views: typed config + tracker state -> dicts the response schemas dump
# =============================================================================================


def _pair_status(pair: Pair, runtime: Runtime, tracker: FailureTracker, now: float) -> dict[str, Any]:
    # Disables come from the tracker's committed view (what SQLite holds), never from memory, which
    # may already hold a newer transition that kill -9 would lose. Counts are live (never persisted).
    key = pair.key
    state = tracker.state(key)
    auto = tracker.committed_record(key, "auto")
    manual = tracker.committed_record(key, "manual")
    return {
        "vendor": pair.vendor.name,
        "model": pair.model.name,
        "alias": pair.model.alias,
        "names": list(runtime.table.names_of.get(key, ())),
        "enabled": pair.enabled_in_config and auto is None and manual is None,
        "config_enabled": pair.model.enabled,
        "vendor_enabled": pair.vendor.enabled,
        "missing_key": pair.vendor.missing_key,
        "auto_disabled": auto is not None,
        "failure_count": state.failure_count if state else 0,
        "window_started_at": _iso(state.window_started_at) if state else None,
        "last_failure_at": _iso(_last_failure_at(state, auto)),
        "disabled_at": _iso(auto.disabled_at) if auto else None,
        "disabled_until": _iso(auto.disabled_until) if auto else None,
        "remaining_seconds": _remaining(auto.disabled_until, now) if auto else None,
        "last_error": _last_error(state.last_error) if state else None,
        "manual_disable": None if manual is None else {
            "disabled_at": _iso(manual.disabled_at),
            "disabled_until": _iso(manual.disabled_until),
            "remaining_seconds": _remaining(manual.disabled_until, now),
            "actor": manual.actor,
        },
        "auto_disable": _effective(pair.auto_disable),
    }


def _last_failure_at(state: Any, record: Any) -> float | None:
    """The later of the live count's last failure and the one a committed disable recorded."""
    times = [t for t in (state.last_failure_at if state else None, record.last_failure_at if record else None) if t is not None]
    return max(times) if times else None


def _disabled_list(runtime: Runtime, tracker: FailureTracker, now: float) -> list[dict[str, Any]]:
    table = runtime.table
    out: list[dict[str, Any]] = []
    for record in tracker.committed_disabled_pairs():
        pair = table.pairs.get((record.vendor, record.model))
        out.append({
            "vendor": record.vendor,
            "model": record.model,
            "alias": pair.model.alias if pair else None,
            "reason": record.reason,
            "source": "auto-disable" if record.reason == "auto" else "timed",
            "disabled_at": _iso(record.disabled_at),
            "disabled_until": _iso(record.disabled_until),
            "remaining_seconds": _remaining(record.disabled_until, now),
            "failure_count": record.failure_count,
            "last_failure_at": _iso(_last_failure_at(tracker.state((record.vendor, record.model)), record)),
            "last_error": _last_error(record.last_error),
            "actor": record.actor,
            "in_config": pair is not None,
        })
    for pair in table.pairs.values():
        if pair.model.enabled and pair.vendor.enabled:
            continue
        state = tracker.state(pair.key)
        out.append({
            "vendor": pair.vendor.name,
            "model": pair.model.name,
            "alias": pair.model.alias,
            "reason": "manual",
            "source": "model-config" if not pair.model.enabled else "vendor-config",
            "disabled_at": None,
            "disabled_until": None,
            "remaining_seconds": None,
            "failure_count": state.failure_count if state else 0,
            "last_failure_at": _iso(_last_failure_at(state, None)),
            "last_error": _last_error(state.last_error) if state else None,
            "actor": None,
            "in_config": True,
        })
    out.sort(key=lambda r: (r["vendor"], r["model"], r["reason"], r["source"]))
    return out


#: How far back in a pair's (or vendor's) history the event that switched it off in the config is looked for.
_CONFIG_SWITCH_LOOKBACK = 50


def _switched_off_by(events: Sequence[Any], key: str) -> Any | None:
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


async def _config_switch_events(store: Any, entries: list[dict[str, Any]]) -> None:
    """Fill `disabled_at` and `actor` of the config-file disables from the audit events that made them."""
    for entry in entries:
        if entry["source"] == "model-config":
            events = await store.events(vendor=entry["vendor"], model=entry["model"], limit=_CONFIG_SWITCH_LOOKBACK)
            event = _switched_off_by([e for e in events if e.kind != "vendor-changed"], "enabled")
        elif entry["source"] == "vendor-config":
            events = await store.events(vendor=entry["vendor"], kind="vendor-changed", limit=_CONFIG_SWITCH_LOOKBACK)
            event = _switched_off_by(events, "enabled")
        else:
            continue
        if event is not None:
            entry["disabled_at"], entry["actor"] = _iso(event.at), event.actor


def _vendor_view(vendor: Vendor, runtime: Runtime, tracker: FailureTracker, now: float) -> dict[str, Any]:
    models = []
    for model in vendor.models:
        key = (vendor.name, model.name)
        auto_disabled = tracker.committed_record(key, "auto") is not None  # committed view, as in _pair_status
        manual_disabled = tracker.committed_record(key, "manual") is not None
        models.append({
            "name": model.name,
            "alias": model.alias,
            "names": list(runtime.table.names_of.get(key, ())),
            "enabled": vendor.routable and model.enabled and not auto_disabled and not manual_disabled,
            "config_enabled": model.enabled,
            "auto_disabled": auto_disabled,
            "manual_disabled": manual_disabled,
            "auto_disable": _overrides(model.auto_disable),
        })
    return {
        "name": vendor.name,
        "enabled": vendor.enabled,
        "routable": vendor.routable,
        "missing_key": vendor.missing_key,
        "priority": vendor.priority,
        "prefix": vendor.prefix,
        "base_url": vendor.base_url,
        "api_key_entries": [{"api_key": mask_key(e.api_key), "proxy_url": _mask_url(e.proxy_url)} for e in vendor.api_key_entries],
        "headers": _mask_headers(vendor.headers),
        "timeouts": _timeouts(vendor.timeouts),
        "auto_disable": _overrides(vendor.auto_disable),
        "models": models,
    }


def _config_view(runtime: Runtime) -> dict[str, Any]:
    config = runtime.config
    rm = config.remote_management
    return {
        "host": config.host,
        "port": config.port,
        "api_keys": [mask_key(k) for k in config.api_keys],
        "proxy_url": _mask_url(config.proxy_url),
        "request_retry": config.request_retry,
        "database": config.database,
        "max_body_bytes": config.max_body_bytes,
        "shutdown_grace_seconds": config.shutdown_grace_seconds,
        "cors_allow_origins": list(config.cors_allow_origins),
        "log_level": config.logging.level,
        "log_format": config.logging.format,
        "timeouts": _timeouts(config.timeouts),
        "auto_disable": _overrides(config.auto_disable),
        "remote_management": {
            "secret_key": None if rm.secret_key is None else mask_key(rm.secret_key),
            "allow_remote": rm.allow_remote,
            "trusted_proxies": list(rm.trusted_proxies),
        },
        "metrics": {"require_auth": config.metrics.require_auth},
        "vendors": [
            {
                "name": v.name,
                "base_url": v.base_url,
                "enabled": v.enabled,
                "priority": v.priority,
                "prefix": v.prefix,
                "api_key_entries": [{"api_key": mask_key(e.api_key), "proxy_url": _mask_url(e.proxy_url)} for e in v.api_key_entries],
                "headers": _mask_headers(v.headers),
                "timeouts": _timeouts(v.timeouts),
                "auto_disable": _overrides(v.auto_disable),
                "models": [
                    {"name": m.name, "alias": m.alias, "enabled": m.enabled, "auto_disable": _overrides(m.auto_disable)}
                    for m in v.models
                ],
            }
            for v in config.vendors
        ],
    }


def _config_response(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME].current
    manager = request.app[CONFIG_MANAGER]
    data = {
        "path": manager.path,
        "loaded_at": _iso(manager.last_loaded_at),
        "last_reload_error": list(manager.last_error) if manager.last_error else None,
        "restart_required": manager.restart_required,
        "config": _config_view(runtime),
    }
    return _json(ConfigResponseSchema, data)


def _json(schema: type[Schema], data: Any, *, status: int = 200) -> web.Response:
    return web.json_response(schema().dump(data), status=status)


def _pairs_for(request: web.Request, runtime: Runtime) -> tuple[str, list[Pair]]:
    """The pairs a model route means: `{model}` (alias, upstream name or prefix/alias), `?vendor=` narrowing."""
    name = _path_name(request, "model")
    vendor = _query(request, VendorQuerySchema()).get("vendor")
    if vendor is not None and not any(v.name == vendor for v in runtime.config.vendors):
        raise NotFound(f"no vendor named '{vendor}'", param="vendor")
    pairs = runtime.table.pairs_named(name, vendor)
    if not pairs:
        where = f" at vendor '{vendor}'" if vendor else ""
        raise ModelNotFound(f"no configured model named '{name}'{where}", param="model")
    return name, pairs


def _status_response(request: web.Request, name: str, keys: Sequence[PairKey]) -> web.Response:
    runtime = request.app[RUNTIME].current
    tracker = request.app[TRACKER]
    now = request.app[CLOCK]()
    pairs = [runtime.table.pairs[k] for k in keys if k in runtime.table.pairs]
    return _json(ModelStatusSchema, {"model": name, "pairs": [_pair_status(p, runtime, tracker, now) for p in pairs]})


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


# =============================================================================================
# Handlers
# =============================================================================================


@endpoint("GET", "/api/models/disabled", summary="Every disabled pair", response=DisabledListSchema, errors=(503,), tags=("models",))
async def list_disabled(request: web.Request) -> web.Response:
    """Every disable in force: automatic and timed manual ones (from the tracker) and `enabled: false`
    in config.yaml (model or vendor). A pair under two disables appears once per disable."""
    await _committed(request)
    entries = _disabled_list(request.app[RUNTIME].current, request.app[TRACKER], request.app[CLOCK]())
    await _config_switch_events(request.app[STORE], entries)
    return _json(DisabledListSchema, {"disabled": entries})


@endpoint("GET", "/api/models/{model:.+}/status", summary="Status of the pairs serving a model", response=ModelStatusSchema,
          query=VendorQuerySchema, errors=(400, 503), tags=("models",))
async def model_status(request: web.Request) -> web.Response:
    """Every pair `{model}` names (an alias, an upstream name or `prefix/alias`; `/` and `:` allowed,
    URL-encoded or not), with both axes of its state and its effective auto-disable settings."""
    runtime = request.app[RUNTIME].current
    name, pairs = _pairs_for(request, runtime)
    await _committed(request)
    return _status_response(request, name, [p.key for p in pairs])


@endpoint("POST", "/api/models/{model:.+}/enable", summary="Make the pairs serving a model routable", response=ModelStatusSchema,
          query=VendorQuerySchema, errors=(400, 409, 503), tags=("models",))
async def enable_model(request: web.Request) -> web.Response:
    """Clears the automatic and the timed manual disable and resets the failure count (tracker), and
    writes `enabled: false` on the model entry back to true (config.yaml). Does not touch the vendor's `enabled`."""
    runtime = request.app[RUNTIME].current
    name, pairs = _pairs_for(request, runtime)
    await _committed(request)
    actor = request[ADMIN_ACTOR]
    tracker = request.app[TRACKER]
    for pair in pairs:
        # A pair switched off in the config gets its one `manual-enable` event from the write-back below.
        await tracker.manual_enable(pair.key, actor, record_if_nothing_cleared=pair.model.enabled)
    await _write_enabled(request.app[CONFIG_MANAGER], pairs, True, actor, kind="manual-enable")
    await _committed(request, after_change=True)
    return _status_response(request, name, [p.key for p in pairs])


async def _write_enabled(manager: ConfigManager, pairs: Sequence[Pair], enabled: bool, actor: str, *, kind: str) -> None:
    """Write `enabled` on each model entry of config.yaml that does not already say so (one event each)."""
    for pair in pairs:
        if pair.model.enabled == enabled:
            continue
        await manager.apply_edits(
            manager.switch(pair.vendor.name, pair.model.name, enabled),
            actor=actor, kind=kind, vendor=pair.vendor.name, model=pair.model.name,
            reason=None if enabled else "manual",  # a permanent manual-disable, like a timed one
        )


@endpoint("POST", "/api/models/{model:.+}/disable", summary="Disable the pairs serving a model", response=ModelStatusSchema,
          query=VendorQuerySchema, body=DisableBodySchema, body_required=False, errors=(400, 409, 503), tags=("models",))
async def disable_model(request: web.Request) -> web.Response:
    """With `duration_seconds`: a timed manual disable, kept in SQLite (survives restarts; an automatic
    re-enable never ends it). Without: permanent, written as `enabled: false` on the model entry of config.yaml."""
    runtime = request.app[RUNTIME].current
    name, pairs = _pairs_for(request, runtime)
    body = _load(DisableBodySchema(), await _json_body(request, optional=True))
    duration = body.get("duration_seconds")
    await _committed(request)
    actor = request[ADMIN_ACTOR]
    if duration is not None:
        tracker = request.app[TRACKER]
        for pair in pairs:
            await tracker.manual_disable(pair.key, duration, actor)
    else:
        await _write_enabled(request.app[CONFIG_MANAGER], pairs, False, actor, kind="manual-disable")
    await _committed(request, after_change=True)
    return _status_response(request, name, [p.key for p in pairs])


@endpoint("GET", "/api/vendors", summary="Every vendor with its models and their state", response=VendorListSchema,
          errors=(503,), tags=("vendors",))
async def list_vendors(request: web.Request) -> web.Response:
    """Vendors as configured (keys masked), each model with `enabled` (routable now) and `config_enabled`."""
    await _committed(request)
    runtime, tracker, now = request.app[RUNTIME].current, request.app[TRACKER], request.app[CLOCK]()
    return _json(VendorListSchema, {"vendors": [_vendor_view(v, runtime, tracker, now) for v in runtime.config.vendors]})


@endpoint("PATCH", "/api/vendors/{name}", summary="Change a vendor's entry in config.yaml", response=VendorViewSchema,
          body=VendorPatchSchema, errors=(400, 409, 503), tags=("vendors",))
async def patch_vendor(request: web.Request) -> web.Response:
    """Writes each key of the body into the vendor's entry of config.yaml (comments and `${VAR}` kept),
    reloads, and records one `vendor-changed` event. `enabled: false` removes every pair of the vendor from routing."""
    name = _path_name(request, "name")
    _vendor_named(request.app[RUNTIME].current, name)
    raw = await _json_body(request)
    schema = VendorPatchSchema()
    data = _load(schema, raw)
    if not data:
        raise InvalidRequest("the body sets no field")
    await _committed(request)
    detail = _raw(raw, schema, data)
    if isinstance(detail.get("headers"), Mapping):  # the audit row shows them as GET /api/vendors does
        detail["headers"] = _mask_headers(list(detail["headers"].items()))
    enabled = data.pop("enabled", None)
    manager = request.app[CONFIG_MANAGER]
    # `enabled` in the spelling the file uses (CLIProxyAPI's inverse `disabled:` is kept); on removes the off line
    switch = manager.switch(name, None, enabled) if enabled is not None else (lambda text: [])

    def edits(text: str) -> list[tuple[tuple[str | int, ...], Any]]:
        return switch(text) + (_edits(vendor_path(text, name), schema, data) if data else [])

    await manager.apply_edits(
        edits, actor=request[ADMIN_ACTOR], kind="vendor-changed", vendor=name, detail=detail
    )
    await _committed(request, after_change=True)
    runtime = request.app[RUNTIME].current
    return _json(VendorViewSchema, _vendor_view(_vendor_named(runtime, name), runtime, request.app[TRACKER], request.app[CLOCK]()))


@endpoint("PATCH", "/api/vendors/{name}/models/{model:.+}", summary="Change a model entry in config.yaml",
          response=VendorModelViewSchema, body=ModelPatchSchema, errors=(400, 409, 503), tags=("vendors",))
async def patch_model(request: web.Request) -> web.Response:
    """`{model}` is the entry's upstream name (or its alias when that is unique in the vendor). Writes each
    key of the body into the entry, reloads, records one `model-changed` event. It does not clear the
    tracker's disables: `POST /api/models/{model}/enable` does."""
    name = _path_name(request, "name")
    model_name = _path_name(request, "model")
    vendor = _vendor_named(request.app[RUNTIME].current, name)
    entry = next((m for m in vendor.models if m.name == model_name), None)
    if entry is None:
        by_alias = [m for m in vendor.models if m.alias == model_name]
        entry = by_alias[0] if len(by_alias) == 1 else None
    if entry is None:
        raise ModelNotFound(f"vendor '{name}' has no model entry named '{model_name}'", param="model")
    raw = await _json_body(request)
    schema = ModelPatchSchema()
    data = _load(schema, raw)
    if not data:
        raise InvalidRequest("the body sets no field")
    await _committed(request)
    detail = _raw(raw, schema, data)
    enabled = data.pop("enabled", None)
    manager = request.app[CONFIG_MANAGER]
    switch = manager.switch(name, entry.name, enabled) if enabled is not None else (lambda text: [])
    await manager.apply_edits(
        lambda text: switch(text) + (_edits(model_path(text, name, entry.name), schema, data) if data else []),
        actor=request[ADMIN_ACTOR], kind="model-changed", vendor=name, model=entry.name, detail=detail,
    )
    await _committed(request, after_change=True)
    runtime = request.app[RUNTIME].current
    view = _vendor_view(_vendor_named(runtime, name), runtime, request.app[TRACKER], request.app[CLOCK]())
    [model_view] = [m for m in view["models"] if m["name"] == entry.name]
    return _json(VendorModelViewSchema, model_view)


@endpoint("GET", "/api/config", summary="The running configuration, secrets masked", response=ConfigResponseSchema, tags=("config",))
async def get_config(request: web.Request) -> web.Response:
    """The running config as JSON (keys as in config.yaml, `${VAR}` expanded, every key masked), the file it
    came from, and the errors of the last rejected reload until a good file loads."""
    return _config_response(request)


@endpoint("GET", "/api/config.yaml", summary="The config file as it is", response=None, response_content="application/yaml",
          errors=(503,), tags=("config",))
async def get_config_yaml(request: web.Request) -> web.Response:
    """The file byte for byte: `${VAR}` placeholders, not their values. A key the operator wrote literally
    into the file is returned as written."""
    return web.Response(text=request.app[CONFIG_MANAGER].read_text(), content_type="application/yaml")


@endpoint("PUT", "/api/config.yaml", summary="Replace the config file", response=ConfigResponseSchema, body=None,
          body_content="application/yaml", errors=(400, 409, 503), tags=("config",))
async def put_config_yaml(request: web.Request) -> web.Response:
    """Validated first: an invalid file gives 400 listing every problem and nothing is written. Otherwise
    written atomically and loaded at once; answers like `GET /api/config` once its audit event is
    committed (503 when the database does not take it: the new file is in force meanwhile)."""
    manager = request.app[CONFIG_MANAGER]
    raw = await request.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRequest("the body must be UTF-8 text") from None
    await manager.replace_text(text, actor=request[ADMIN_ACTOR], check=_keeps_management_on)
    await _committed(request, after_change=True)  # 200 only once its config-reloaded event is in SQLite
    return _config_response(request)


def _keeps_management_on(config: Config) -> None:
    """A PUT cannot switch the management API off: that one call would lock the operator out."""
    if not config.remote_management.secret_key:
        raise InvalidRequest(
            "the new file has no remote-management.secret-key, which would switch the management API off; "
            "to do that, edit the file on the host",
            param="remote-management.secret-key",
            code="would_disable_management",
        )


@endpoint("GET", "/api/events", summary="The audit history, newest first", response=EventPageSchema, query=EventsQuerySchema,
          errors=(400, 503), tags=("events",))
async def list_events(request: web.Request) -> web.Response:
    """Filtered by vendor, model (upstream name), kind and since; `limit` per page (1-1000, default 100);
    pass `next_before_id` as `before_id` for the next page."""
    query = _query(request, EventsQuerySchema())
    since = None
    if "since" in query:
        try:
            since = parse_since(query["since"], request.app[CLOCK]())
        except (ValueError, OverflowError) as exc:
            raise InvalidRequest(f"invalid query: since: {exc}", param="since") from None
    await _committed(request)
    limit = query["limit"]
    events = await request.app[STORE].events(
        vendor=query.get("vendor"), model=query.get("model"), kind=query.get("kind"),
        since=since, before_id=query.get("before_id"), limit=limit,
    )
    secrets = request.app[RUNTIME].current.masker
    out = []
    for event in events:
        detail = None if event.detail is None else _masked(event.detail, secrets)
        if isinstance(detail, dict) and isinstance(detail.get("headers"), Mapping):
            # rows written before header values were masked at the source
            detail["headers"] = _mask_headers(list(detail["headers"].items()))
        out.append({
            "id": event.id, "kind": event.kind, "at": _iso(event.at), "vendor": event.vendor, "model": event.model,
            "reason": event.reason, "cause": event.cause, "disabled_at": _iso(event.disabled_at),
            "disabled_until": _iso(event.disabled_until), "failure_count": event.failure_count,
            "window_started_at": _iso(event.window_started_at), "last_failure_at": _iso(event.last_failure_at),
            "settings": event.settings,
            "last_error": _last_error(event.last_error), "actor": event.actor, "detail": detail,
        })
    next_before = events[-1].id if len(events) == limit and events else None
    return _json(EventPageSchema, {"events": out, "next_before_id": next_before})


@endpoint("GET", "/api/openapi.json", summary="This document", response=None, response_content="application/json", tags=("meta",))
async def openapi_json(request: web.Request) -> web.Response:
    """The OpenAPI 3.1 description of the management API, generated from the schemas the handlers use."""
    from cliproxy.web.openapi import build_document

    return web.json_response(build_document())
