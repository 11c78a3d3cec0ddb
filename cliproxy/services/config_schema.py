"""The configuration file's schema: marshmallow fields for every key, each `post_load` building the frozen
`cliproxy.core.config` values.

Strict: an unknown key is an error with a "did you mean" hint; every key is kebab-case in YAML.
`cliproxy.services.config_loader` reads the YAML and expands `${VAR}` before this runs.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Mapping
from typing import Any

from marshmallow import (
    EXCLUDE,
    Schema,
    ValidationError,
    fields,
    post_load,
    validate,
    validates_schema,
)

from cliproxy.core.config import (
    API_FORMATS,
    DEFAULT_TIMEOUTS,
    NOTIFY_EVENTS,
    ApiKeyEntry,
    AutoDisableOverrides,
    Config,
    LoggingSettings,
    MetricsSettings,
    ModelEntry,
    NotifyTarget,
    ProbeSpec,
    RemoteManagement,
    Timeouts,
    Vendor,
)

__all__ = ["ConfigSchema", "StatusSet", "StrictSchema"]


class StrictSchema(Schema):
    """Rejects unknown keys with a "did you mean" hint; every key is kebab-case in YAML."""

    class Meta:
        unknown = EXCLUDE  # unknown keys are reported by `_reject_unknown`, with a suggestion

    @validates_schema(pass_original=True, skip_on_field_errors=False)
    def _reject_unknown(self, data: Any, original: Any, **kwargs: Any) -> None:
        if not isinstance(original, Mapping):
            return
        known = [f.data_key or name for name, f in self.fields.items()]
        errors: dict[str, list[str]] = {}
        for key in original:
            if key not in known:
                close = difflib.get_close_matches(str(key), known, n=1, cutoff=0.6)
                hint = f"; did you mean '{close[0]}'?" if close else f"; known keys: {', '.join(sorted(known))}"
                errors[str(key)] = [f"unknown key{hint}"]
        if errors:
            raise ValidationError(errors)


def _kebab(name: str) -> str:
    return name.replace("_", "-")


def Int(name: str, *, minimum: int | None = 0, maximum: int | None = None, **kw: Any) -> fields.Integer:
    return fields.Integer(data_key=_kebab(name), strict=True, validate=validate.Range(min=minimum, max=maximum), **kw)


def Seconds(name: str, **kw: Any) -> fields.Float:
    return fields.Float(data_key=_kebab(name), validate=validate.Range(min=0, min_inclusive=False), **kw)


def Str(name: str, **kw: Any) -> fields.String:
    return fields.String(data_key=_kebab(name), **kw)


def Bool(name: str, **kw: Any) -> fields.Boolean:
    # truthy/falsy restricted to real booleans: `enabled: "no"` is almost always a mistake.
    return fields.Boolean(data_key=_kebab(name), truthy={True}, falsy={False}, **kw)


_STATUS_CLASS = re.compile(r"^([1-5])xx$")


class StatusSet(fields.Field):
    """A list of HTTP statuses: integers, or classes like `5xx`."""

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> frozenset[int]:
        if not isinstance(value, list):
            raise ValidationError("must be a list of HTTP statuses such as [429, '5xx']")
        statuses: set[int] = set()
        for item in value:
            if isinstance(item, bool):
                raise ValidationError(f"{item!r} is not an HTTP status")
            if isinstance(item, int) and 100 <= item <= 599:
                statuses.add(item)
                continue
            match = _STATUS_CLASS.match(str(item))
            if not match:
                raise ValidationError(f"{item!r} is not an HTTP status or class like '5xx'")
            first = int(match.group(1)) * 100
            statuses.update(range(first, first + 100))
        return frozenset(statuses)


class AutoDisableSchema(StrictSchema):
    failure_threshold = Int("failure_threshold")
    time_window_seconds = Seconds("time_window_seconds")
    disable_duration_seconds = Seconds("disable_duration_seconds")
    count_statuses = StatusSet(data_key="count-statuses")
    # Signals (issue 13, part A)
    honor_retry_after = Bool("honor_retry_after")
    max_retry_after_seconds = Seconds("max_retry_after_seconds")
    # issue 13, part C: slow start and the policies
    slow_start_seconds = fields.Float(data_key="slow-start-seconds", validate=validate.Range(min=0))
    on_all_disabled = Str("on_all_disabled", validate=validate.OneOf(["fail", "best-effort"]))
    enforce = Bool("enforce")
    # Global only: named here so that a vendor or model setting it is told where it goes.
    max_disabled_fraction = fields.Raw(data_key="max-disabled-fraction", validate=lambda _: _global_only())
    # recovery: backoff and how a pair comes back (issue 13, part B)
    backoff_multiplier = fields.Float(data_key="backoff-multiplier", validate=validate.Range(min=1))
    max_disable_duration_seconds = Seconds("max_disable_duration_seconds")
    recovery = fields.String(data_key="recovery", validate=validate.OneOf(["timer", "half-open", "probe"]))
    half_open_requests = Int("half_open_requests", minimum=1)
    probe = fields.Nested(lambda: ProbeSchema(), data_key="probe")
    probe_timeout_seconds = Seconds("probe_timeout_seconds")
    # key scope (issue 14)
    key_scope_statuses = StatusSet(data_key="key-scope-statuses")

    @post_load
    def make(self, data: dict[str, Any], **kwargs: Any) -> AutoDisableOverrides:
        return AutoDisableOverrides(**data)


def _global_only() -> bool:
    raise ValidationError("a global setting: set it in the top-level auto-disable, not for a vendor or model")


class GlobalAutoDisableSchema(AutoDisableSchema):
    """The top-level `auto-disable`: the per-scope keys, and those that only make sense for the whole gateway."""

    # A fraction of a model's pairs: above 1.0 would mean no limit, which 1.0 already says.
    max_disabled_fraction = fields.Float(  # type: ignore[assignment]  # replaces the refusal of the other levels
        data_key="max-disabled-fraction", validate=validate.Range(min=0, max=1)
    )


class ProbeSchema(StrictSchema):
    """`probe: {path, body}`: the request `recovery: probe` sends; the body is sent as JSON, as written."""

    path = fields.String(data_key="path", validate=validate.Regexp(r"^/", error="must start with '/', e.g. /embeddings"))
    body = fields.Dict(data_key="body", keys=fields.String())

    @post_load
    def make(self, data: dict[str, Any], **kwargs: Any) -> ProbeSpec:
        body = data.get("body")
        return ProbeSpec(
            path=data.get("path", "/chat/completions"),
            body=None if body is None else json.dumps(body, separators=(",", ":"), sort_keys=True),
        )


class TimeoutsSchema(StrictSchema):
    connect = Seconds("connect")
    first_byte = Seconds("first_byte")
    stream_idle = Seconds("stream_idle")
    first_token = Seconds("first_token")

    @post_load
    def make(self, data: dict[str, Any], **kwargs: Any) -> Timeouts:
        return Timeouts(**data)


def _duplicate_names(items: Any, list_key: str) -> dict[int, Any]:
    """Errors for entries of a raw list whose `name` repeats an earlier entry's."""
    if not isinstance(items, list):
        return {}
    seen: dict[str, int] = {}
    errors: dict[int, Any] = {}
    for index, item in enumerate(items):
        name = item.get("name") if isinstance(item, Mapping) else None
        if not isinstance(name, str):
            continue
        if name in seen:
            errors[index] = {"name": [f"duplicate name '{name}' (first at {list_key}[{seen[name]}])"]}
        seen.setdefault(name, index)
    return errors


class ApiKeyEntrySchema(StrictSchema):
    # May be empty: `${OPENROUTER_API_KEY:-}` keeps a vendor off until its key is set.
    api_key = Str("api_key", required=True)
    proxy_url = Str("proxy_url", allow_none=True)

    @post_load
    def make(self, data: dict[str, Any], **kwargs: Any) -> ApiKeyEntry:
        return ApiKeyEntry(**data)


class ModelSchema(StrictSchema):
    name = Str("name", required=True, validate=validate.Length(min=1))
    alias = Str("alias", allow_none=True, validate=validate.Length(min=1))
    enabled = Bool("enabled")
    auto_disable = fields.Nested(AutoDisableSchema, data_key="auto-disable")

    @post_load
    def make(self, data: dict[str, Any], **kwargs: Any) -> ModelEntry:
        return ModelEntry(**data)


_ORIGIN = re.compile(r"^(https?)://([^/\s?#@]+?)(?::([0-9]{1,5}))?$", re.IGNORECASE)
_DEFAULT_PORTS = {"http": "80", "https": "443"}


class Origin(fields.String):
    """A browser origin as the `Origin` header spells it: `scheme://host[:port]`, or `*` for any.

    Lower-cased and without a default port, so that the comparison with the header is exact."""

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> str:
        text = super()._deserialize(value, attr, data, **kwargs).strip()
        if text == "*":
            return text
        match = _ORIGIN.match(text)
        if not match:
            raise ValidationError(f"{text!r} is not an origin: write scheme://host[:port] (no path, no trailing slash), or '*'")
        scheme, host, port = match.group(1).lower(), match.group(2).lower(), match.group(3)
        if port is None or port == _DEFAULT_PORTS[scheme]:
            return f"{scheme}://{host}"
        return f"{scheme}://{host}:{port}"


def _url(value: str) -> None:
    if not re.match(r"^https?://[^/\s]+", value):
        raise ValidationError("must be an http:// or https:// URL")


class VendorSchema(StrictSchema):
    name = Str("name", required=True, validate=validate.Length(min=1))
    enabled = Bool("enabled")
    disabled = Bool("disabled")  # CLIProxyAPI's spelling; the inverse of `enabled`
    base_url = Str("base_url", required=True, validate=_url)
    priority = Int("priority", minimum=None)
    prefix = Str("prefix", allow_none=True, validate=validate.Regexp(r"^[^/\s]+$", error="must be one word without '/'"))
    api_key_entries = fields.List(fields.Nested(ApiKeyEntrySchema), data_key="api-key-entries")
    headers = fields.Dict(keys=fields.String(), values=fields.String(), data_key="headers")
    timeouts = fields.Nested(TimeoutsSchema, data_key="timeouts")
    auto_disable = fields.Nested(AutoDisableSchema, data_key="auto-disable")
    models = fields.List(fields.Nested(ModelSchema), data_key="models")
    api_format = Str("api_format", validate=validate.OneOf(API_FORMATS))

    @validates_schema(pass_original=True, skip_on_field_errors=False)
    def _check(self, data: dict[str, Any], original: Any, **kwargs: Any) -> None:
        if not isinstance(original, Mapping):
            return
        errors: dict[str, Any] = {}
        if "enabled" in original and "disabled" in original:
            errors["disabled"] = ["set either 'enabled' or CLIProxyAPI's 'disabled', not both"]
        duplicates = _duplicate_names(original.get("models"), "models")
        if duplicates:
            errors["models"] = duplicates
        if errors:
            raise ValidationError(errors)

    @post_load
    def make(self, data: dict[str, Any], **kwargs: Any) -> Vendor:
        disabled = data.pop("disabled", None)
        if disabled is not None:
            data["enabled"] = not disabled
        data["api_key_entries"] = tuple(data.get("api_key_entries") or ())
        data["headers"] = tuple((data.get("headers") or {}).items())
        data["models"] = tuple(data.get("models") or ())
        return Vendor(**data)


class RemoteManagementSchema(StrictSchema):
    secret_key = Str("secret_key", allow_none=True)
    allow_remote = Bool("allow_remote")
    trusted_proxies = fields.List(fields.String(), data_key="trusted-proxies")

    @post_load
    def make(self, data: dict[str, Any], **kwargs: Any) -> RemoteManagement:
        data["trusted_proxies"] = tuple(data.get("trusted_proxies") or ())
        if not data.get("secret_key"):
            data["secret_key"] = None
        return RemoteManagement(**data)


class MetricsSchema(StrictSchema):
    require_auth = Bool("require_auth")

    @post_load
    def make(self, data: dict[str, Any], **kwargs: Any) -> MetricsSettings:
        return MetricsSettings(**data)


class NotifySchema(StrictSchema):
    url = Str("url", required=True, validate=_url)
    events = fields.List(
        fields.String(validate=validate.OneOf(NOTIFY_EVENTS)),
        data_key="events",
        validate=validate.Length(min=1, error="list at least one event, or leave `events` out for all of them"),
    )
    secret = Str("secret", allow_none=True)

    @post_load
    def make(self, data: dict[str, Any], **kwargs: Any) -> NotifyTarget:
        if "events" in data:
            data["events"] = frozenset(data["events"])
        if not data.get("secret"):
            data["secret"] = None  # `${VAR:-}` unset: unsigned, like no secret
        return NotifyTarget(**data)


class ConfigSchema(StrictSchema):
    host = Str("host", validate=validate.Length(min=1))
    port = Int("port", minimum=1, maximum=65535)
    api_keys = fields.List(fields.String(validate=validate.Length(min=1)), data_key="api-keys")
    proxy_url = Str("proxy_url", allow_none=True)
    request_retry = Int("request_retry")
    database = Str("database", validate=validate.Length(min=1))
    max_body_bytes = Int("max_body_bytes", minimum=1)
    body_timeout = Seconds("body_timeout")
    client_header_timeout = Seconds("client_header_timeout")
    keepalive_timeout = Seconds("keepalive_timeout")
    max_connections = Int("max_connections", minimum=1)
    client_write_timeout = Seconds("client_write_timeout")
    shutdown_grace_seconds = fields.Float(data_key="shutdown-grace-seconds", validate=validate.Range(min=0))
    cors_allow_origins = fields.List(Origin(), data_key="cors-allow-origins")
    log_format = Str("log_format", validate=validate.OneOf(["text", "json"]))
    log_level = Str(
        "log_level", validate=validate.OneOf(["DEBUG", "INFO", "WARNING", "ERROR", "debug", "info", "warning", "error"])
    )
    metrics = fields.Nested(MetricsSchema, data_key="metrics")
    remote_management = fields.Nested(RemoteManagementSchema, data_key="remote-management")
    timeouts = fields.Nested(TimeoutsSchema, data_key="timeouts")
    auto_disable = fields.Nested(GlobalAutoDisableSchema, data_key="auto-disable")
    vendors = fields.List(fields.Nested(VendorSchema), data_key="openai-compatibility")
    notify = fields.List(fields.Nested(NotifySchema), data_key="notify")

    @validates_schema(pass_original=True, skip_on_field_errors=False)
    def _unique_vendors(self, data: dict[str, Any], original: Any, **kwargs: Any) -> None:
        if not isinstance(original, Mapping):
            return
        duplicates = _duplicate_names(original.get("openai-compatibility"), "openai-compatibility")
        if duplicates:
            raise ValidationError({"openai-compatibility": duplicates})

    @post_load
    def make(self, data: dict[str, Any], **kwargs: Any) -> Config:
        data["api_keys"] = tuple(data.get("api_keys") or ())
        data["vendors"] = tuple(data.get("vendors") or ())
        data["notify"] = tuple(data.get("notify") or ())
        data["cors_allow_origins"] = tuple(dict.fromkeys(data.get("cors_allow_origins") or ()))
        if "timeouts" in data:
            data["timeouts"] = data["timeouts"].over(DEFAULT_TIMEOUTS)
        log_level = data.pop("log_level", None)
        log_format = data.pop("log_format", None)
        if log_level or log_format:
            data["logging"] = LoggingSettings(level=(log_level or "INFO").upper(), format=log_format or "text")
        return Config(**data)
