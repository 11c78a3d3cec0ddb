"""The management API's marshmallow schemas: what each endpoint answers, and the bodies and queries it accepts.

Every response is produced by `Schema().dump(...)` of the schema its endpoint declares
(`cliproxy.web.admin.registry`), and the OpenAPI document is generated from the same classes, so
the two cannot drift. Request schemas reject unknown keys (`StrictBody`). The config's own shape
is not written here: `cliproxy.web.admin.config_view` derives it from the loader's schema.
"""

from __future__ import annotations

import re
import typing
from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields, validate

from cliproxy.core.events import EventKind
from cliproxy.core.pair_state import PAIR_STATES
from cliproxy.web.admin.config_view import ConfigViewSchema

#: Longest timed manual disable (longer ones are what the permanent disable is for).
MAX_DURATION_SECONDS = 10 * 365 * 86400.0
_MAX_ID = 2**63 - 1


# --- responses --------------------------------------------------------------------------------


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
    status = fields.Integer(
        required=True, allow_none=True, metadata={"description": "upstream HTTP status; null for transport errors"}
    )
    message = fields.String(required=True, metadata={"description": "a short, masked excerpt"})
    kind = fields.String(
        required=True,
        allow_none=True,
        metadata={
            "description": "http_status | connect | timeout | first_token_timeout | stream_idle | stream_error | "
            "error_in_200 | empty_stream | model_not_found; null when not recorded (older rows)"
        },
    )


_REASONS = ("auto", "manual", "rate-limited")
_SOURCES = ("auto-disable", "timed", "model-config", "vendor-config", "retry-after")
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
            "model-config / vendor-config: `enabled: false` in config.yaml; retry-after: the upstream's "
            "429/503 said when to come back (reason rate-limited)"
        },
    )
    disabled_at = _ts(
        "when it was disabled; for a config-file disable, from the management call that wrote it "
        "(null when the file was edited by hand)"
    )
    disabled_until = _ts("when it ends; null when it has no end")
    remaining_seconds = fields.Float(required=True, allow_none=True, metadata={"description": "null when it has no end"})
    failure_count = fields.Integer(required=True)
    last_failure_at = _ts("the pair's last counted failure; null when none is known")
    last_error = fields.Nested(LastErrorSchema, required=True, allow_none=True)
    actor = fields.String(required=True, allow_none=True, metadata={"description": "the management client that disabled it"})
    in_config = fields.Boolean(
        required=True, metadata={"description": "false for a pair no longer in config.yaml (it routes nothing)"}
    )
    state = fields.String(
        required=True,
        validate=validate.OneOf(["disabled", "half-open", "probing"]),
        metadata={
            "description": "disabled: in force; half-open / probing: the automatic disable is over and the "
            "pair's recovery waits for its verdict (a request that succeeds, or cliproxy's probe)"
        },
    )


class DisabledListSchema(Schema):
    disabled = fields.List(fields.Nested(DisabledPairSchema), required=True)


class EffectiveAutoDisableSchema(Schema):
    enabled = fields.Boolean(required=True, metadata={"description": "false when failure-threshold is 0"})
    failure_threshold = fields.Integer(required=True)
    time_window_seconds = fields.Float(required=True)
    disable_duration_seconds = fields.Float(required=True)
    count_statuses = fields.List(fields.Integer(), required=True)
    honor_retry_after = fields.Boolean(required=True)
    max_retry_after_seconds = fields.Float(required=True)
    slow_start_seconds = fields.Float(required=True)
    on_all_disabled = fields.String(required=True, validate=validate.OneOf(["fail", "best-effort"]))
    enforce = fields.Boolean(required=True, metadata={"description": "false: a dry run (trips are only recorded)"})
    max_disabled_fraction = fields.Float(required=True)
    backoff_multiplier = fields.Float(required=True)
    max_disable_duration_seconds = fields.Float(required=True)
    recovery = fields.String(required=True, validate=validate.OneOf(["timer", "half-open", "probe"]))
    half_open_requests = fields.Integer(required=True)
    probe_path = fields.String(required=True, metadata={"description": "the path `recovery: probe` sends its probe to"})
    probe_timeout_seconds = fields.Float(required=True)
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
    state = fields.String(
        required=True,
        validate=validate.OneOf(PAIR_STATES),
        metadata={
            "description": "the pair's recovery state, first that holds: switched-off (config), disabled "
            "(automatic or timed manual disable), rate-limited (the upstream's Retry-After), enabled"
        },
    )
    rate_limited_until = _ts("end of the rate limit the upstream asked for (Retry-After); null when none")
    config_enabled = fields.Boolean(required=True, metadata={"description": "the model entry's `enabled` in config.yaml"})
    vendor_enabled = fields.Boolean(required=True, metadata={"description": "the vendor entry's `enabled` in config.yaml"})
    missing_key = fields.Boolean(
        required=True, metadata={"description": "every api-key of the vendor is empty (its variable is unset)"}
    )
    auto_disabled = fields.Boolean(required=True)
    failure_count = fields.Integer(required=True, metadata={"description": "failures in the current counting window"})
    window_started_at = _ts("start of the current counting window")
    last_failure_at = _ts(
        "the pair's last counted failure; null when none is known (not kept across restarts unless it tripped a disable)"
    )
    disabled_at = _ts("start of the automatic disable")
    disabled_until = _ts("end of the automatic disable")
    remaining_seconds = fields.Float(required=True, allow_none=True, metadata={"description": "of the automatic disable"})
    last_error = fields.Nested(LastErrorSchema, required=True, allow_none=True)
    manual_disable = fields.Nested(
        ManualDisableSchema, required=True, allow_none=True, metadata={"description": "a timed manual disable in force"}
    )
    auto_disable = fields.Nested(EffectiveAutoDisableSchema, required=True)
    state = fields.String(
        required=True,
        validate=validate.OneOf(PAIR_STATES),
        metadata={"description": "one word: enabled, disabled, rate-limited, half-open, probing, slow-start or switched-off"},
    )
    slow_start_until = _ts("when the slow start after the last re-enable ends; null when the pair is not slow-starting")
    disable_level = fields.Integer(
        required=True,
        metadata={"description": "backoff level: the disables in a row (decayed while it serves); 0 without backoff settings"},
    )


class ModelStatusSchema(Schema):
    model = fields.String(required=True, metadata={"description": "the name asked for"})
    pairs = fields.List(fields.Nested(PairStatusSchema), required=True)


class EnabledPairSchema(Schema):
    vendor = fields.String(required=True)
    model = fields.String(required=True, metadata={"description": "the upstream model name"})
    reason = fields.String(required=True, validate=validate.OneOf(_REASONS), metadata={"description": "the disable cleared"})


class EnableAllSchema(Schema):
    enabled = fields.List(
        fields.Nested(EnabledPairSchema),
        required=True,
        metadata={"description": "each disable cleared (a pair under two disables appears twice), by vendor, model, reason"},
    )


class ApiKeyEntryViewSchema(Schema):
    api_key = fields.String(required=True, metadata={"description": "masked"})
    proxy_url = fields.String(required=True, allow_none=True, metadata={"description": "password masked"})


class VendorKeyViewSchema(Schema):
    """One of a vendor's `api-key-entries` as key scope sees it (issue 14)."""

    index = fields.Integer(required=True, metadata={"description": "its position in `api-key-entries` (0-based)"})
    api_key = fields.String(required=True, metadata={"description": "masked"})
    state = fields.String(
        required=True,
        validate=validate.OneOf(["in", "out", "unset"]),
        metadata={"description": "`in` the rotation, `out` (the upstream refused it: until `until`), `unset` (empty value)"},
    )
    until = _ts("when a key that is out comes back; null when it is in")
    disable_level = fields.Integer(required=True, metadata={"description": "the backoff level of its time out; 0 when in"})
    last_error = fields.String(required=True, allow_none=True, metadata={"description": "the refusal (masked); null when in"})


class VendorKeysSchema(Schema):
    """`POST /api/vendors/{name}/keys/{index}/enable`: whether a key was out, and every key of the vendor now."""

    cleared = fields.Boolean(required=True, metadata={"description": "true when the key was out and is back in now"})
    keys = fields.List(fields.Nested(VendorKeyViewSchema), required=True)


class TimeoutsViewSchema(Schema):
    connect = fields.Float(required=True, allow_none=True)
    first_byte = fields.Float(required=True, allow_none=True)
    stream_idle = fields.Float(required=True, allow_none=True)


class AutoDisableOverridesViewSchema(Schema):
    failure_threshold = fields.Integer(required=True, allow_none=True)
    time_window_seconds = fields.Float(required=True, allow_none=True)
    disable_duration_seconds = fields.Float(required=True, allow_none=True)
    count_statuses = fields.List(fields.Integer(), required=True, allow_none=True)
    honor_retry_after = fields.Boolean(required=True, allow_none=True)
    max_retry_after_seconds = fields.Float(required=True, allow_none=True)


class VendorModelViewSchema(Schema):
    name = fields.String(required=True)
    alias = fields.String(required=True, allow_none=True)
    names = fields.List(fields.String(), required=True)
    enabled = fields.Boolean(required=True, metadata={"description": "routable now"})
    config_enabled = fields.Boolean(required=True)
    auto_disabled = fields.Boolean(required=True)
    manual_disabled = fields.Boolean(required=True, metadata={"description": "a timed manual disable is in force"})
    auto_disable = fields.Nested(
        AutoDisableOverridesViewSchema, required=True, metadata={"description": "this entry's own overrides"}
    )


class VendorViewSchema(Schema):
    name = fields.String(required=True)
    enabled = fields.Boolean(required=True, metadata={"description": "the vendor entry's `enabled` in config.yaml"})
    routable = fields.Boolean(required=True, metadata={"description": "enabled and not waiting for an unset key"})
    missing_key = fields.Boolean(required=True)
    priority = fields.Integer(required=True)
    prefix = fields.String(required=True, allow_none=True)
    base_url = fields.String(required=True)
    api_key_entries = fields.List(fields.Nested(ApiKeyEntryViewSchema), required=True)
    keys = fields.List(
        fields.Nested(VendorKeyViewSchema),
        required=True,
        metadata={"description": "each key's state (key scope): out of the rotation after the upstream refused it"},
    )
    headers = fields.Dict(keys=fields.String(), values=fields.String(), required=True, metadata={"description": "values masked"})
    timeouts = fields.Nested(TimeoutsViewSchema, required=True, metadata={"description": "this vendor's own overrides"})
    auto_disable = fields.Nested(
        AutoDisableOverridesViewSchema, required=True, metadata={"description": "this vendor's own overrides"}
    )
    models = fields.List(fields.Nested(VendorModelViewSchema), required=True)


class VendorListSchema(Schema):
    vendors = fields.List(fields.Nested(VendorViewSchema), required=True)


class ConfigResponseSchema(Schema):
    path = fields.String(required=True, allow_none=True, metadata={"description": "the config file; null when built in code"})
    loaded_at = _ts("when the running config was loaded", nullable=False)
    last_reload_error = fields.List(
        fields.String(),
        required=True,
        allow_none=True,
        metadata={"description": "every problem of the last rejected reload, until a good file loads; null when none"},
    )
    restart_required = fields.List(
        fields.String(),
        required=True,
        metadata={"description": "settings changed since start-up that take effect only after a restart (host, port, ...)"},
    )
    config = fields.Nested(
        ConfigViewSchema, required=True, metadata={"description": "keys as in config.yaml, `${VAR}` expanded, secrets masked"}
    )


class EventSchema(Schema):
    id = fields.Integer(required=True)
    kind = fields.String(required=True)
    at = _ts("when it happened", nullable=False)
    vendor = fields.String(required=True, allow_none=True)
    model = fields.String(required=True, allow_none=True)
    reason = fields.String(required=True, allow_none=True, metadata={"description": "auto | manual | rate-limited, for disables"})
    cause = fields.String(
        required=True, allow_none=True, metadata={"description": "expired | manual | startup-expired, for enables"}
    )
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
        required=True,
        allow_none=True,
        metadata={"description": "pass as before_id for the next (older) page; null on the last page"},
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
        metadata={
            "description": "a timed disable of this many seconds (kept in SQLite); omitted: permanent, "
            "written as `enabled: false` on the model entry of config.yaml"
        },
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
    time_window_seconds = fields.Float(
        allow_none=True, data_key="time-window-seconds", validate=validate.Range(min=0, min_inclusive=False)
    )
    disable_duration_seconds = fields.Float(
        allow_none=True, data_key="disable-duration-seconds", validate=validate.Range(min=0, min_inclusive=False)
    )
    count_statuses = fields.List(
        fields.Raw(metadata={"oneOf": [{"type": "integer"}, {"type": "string"}]}),
        allow_none=True,
        data_key="count-statuses",
        validate=_statuses,
        metadata={"description": "HTTP statuses such as 429 or classes such as '5xx'"},
    )
    # Issue 13's settings (the loader validates the whole file after the edit, as for the keys above).
    honor_retry_after = fields.Boolean(allow_none=True, data_key="honor-retry-after")
    max_retry_after_seconds = fields.Float(
        allow_none=True, data_key="max-retry-after-seconds", validate=validate.Range(min=0, min_inclusive=False)
    )
    backoff_multiplier = fields.Float(allow_none=True, data_key="backoff-multiplier", validate=validate.Range(min=1))
    max_disable_duration_seconds = fields.Float(
        allow_none=True, data_key="max-disable-duration-seconds", validate=validate.Range(min=0, min_inclusive=False)
    )
    recovery = fields.String(allow_none=True, data_key="recovery", validate=validate.OneOf(["timer", "half-open", "probe"]))
    half_open_requests = fields.Integer(
        strict=True, allow_none=True, data_key="half-open-requests", validate=validate.Range(min=1)
    )
    probe = fields.Dict(keys=fields.String(), allow_none=True, data_key="probe", metadata={"description": "{path, body}"})
    probe_timeout_seconds = fields.Float(
        allow_none=True, data_key="probe-timeout-seconds", validate=validate.Range(min=0, min_inclusive=False)
    )
    slow_start_seconds = fields.Float(allow_none=True, data_key="slow-start-seconds", validate=validate.Range(min=0))
    on_all_disabled = fields.String(allow_none=True, data_key="on-all-disabled", validate=validate.OneOf(["fail", "best-effort"]))
    enforce = fields.Boolean(allow_none=True, data_key="enforce")


class TimeoutsPatchSchema(StrictBody):
    connect = fields.Float(allow_none=True, validate=validate.Range(min=0, min_inclusive=False))
    first_byte = fields.Float(allow_none=True, data_key="first-byte", validate=validate.Range(min=0, min_inclusive=False))
    stream_idle = fields.Float(allow_none=True, data_key="stream-idle", validate=validate.Range(min=0, min_inclusive=False))


class VendorPatchSchema(StrictBody):
    """Keys as in config.yaml; each one set is written to the vendor's entry, null removes it."""

    enabled = _bool()
    priority = fields.Integer(strict=True, allow_none=True)
    prefix = fields.String(allow_none=True, validate=validate.Regexp(r"^[^/\s]+$", error="must be one word without '/'"))
    base_url = fields.String(
        data_key="base-url", validate=validate.Regexp(r"^https?://[^/\s]+", error="must be an http:// or https:// URL")
    )
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


class EnableAllQuerySchema(StrictBody):
    vendor = fields.String(validate=validate.Length(min=1), metadata={"description": "only the pairs of this vendor"})
    reason = fields.String(
        validate=validate.OneOf(_REASONS),
        metadata={"description": "only the disables of this reason: auto, manual (timed) or rate-limited"},
    )


_EVENT_KINDS = typing.get_args(EventKind)


class EventsQuerySchema(StrictBody):
    vendor = fields.String()
    model = fields.String(metadata={"description": "the upstream model name"})
    kind = fields.String(validate=validate.OneOf(_EVENT_KINDS))
    since = fields.String(
        metadata={"description": "an ISO-8601 date or time, or a duration back from now: 90 (seconds), 90s, 30m, 1h30m, 24h, 7d"}
    )
    limit = fields.Integer(load_default=100, validate=validate.Range(min=1, max=1000))
    before_id = fields.Integer(
        validate=validate.Range(min=1, max=_MAX_ID), metadata={"description": "next_before_id of the previous page"}
    )
