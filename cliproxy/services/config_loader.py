"""Reading the configuration: YAML -> `${VAR}` expansion -> marshmallow -> frozen `Config`.

Every problem is collected with its key path (`openai-compatibility[1].models[0].alias: ...`) and
raised together as one `ConfigError`, so an operator fixes a file in one pass. Nothing past this
module sees a dict.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml
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
    DEFAULT_TIMEOUTS,
    ApiKeyEntry,
    AutoDisableOverrides,
    Config,
    LoggingSettings,
    MetricsSettings,
    ModelEntry,
    RemoteManagement,
    Timeouts,
    Vendor,
)

__all__ = [
    "ConfigError",
    "ENV_PATTERN",
    "LENIENT_NEEDED",
    "LenientConfig",
    "MAX_ALIAS_EXPANSION",
    "expand_env",
    "load_config",
    "load_config_leniently",
    "parse_config",
    "parse_config_leniently",
]


class ConfigError(Exception):
    """A configuration that cannot be used; `problems` holds one `path: message` line each."""

    def __init__(self, problems: list[str], source: str | None = None) -> None:
        self.problems = problems
        self.source = source
        where = f" in {source}" if source else ""
        super().__init__(f"invalid configuration{where}:\n" + "\n".join(f"  {p}" for p in problems))


# ---------------------------------------------------------------------------------------------
# ${VAR} and ${VAR:-default}
# ---------------------------------------------------------------------------------------------

ENV_PATTERN = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


#: In a lenient load, the keys whose value must still be known: an unset variable there is an error.
LENIENT_NEEDED = frozenset({"database", "host", "port"})

# A whole-value placeholder whose variable is unset, in the second pass of a lenient load: the key
# is left out, so its default applies (`port: ${PORT}` reads as no `port` at all).
_LEAVE_OUT = object()


def expand_env(
    value: Any,
    env: Mapping[str, str],
    path: str,
    problems: list[str],
    *,
    unset: dict[str, list[str]] | None = None,
    leave_out: frozenset[str] = frozenset(),
) -> Any:
    """Expand `${VAR}` in every string of a parsed YAML tree; unset variables without a default are problems.

    With `unset` (a lenient load), an unset variable outside `LENIENT_NEEDED` is no problem: it
    expands to "" and its name is recorded under the value's key path. A whole-value placeholder
    at a path in `leave_out` drops its key instead.
    """
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            problems.append(f"{path or '<root>'}: {value[exc.start]!r} is a lone surrogate, not text")
            return value

        def substitute(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            if unset is not None and path.split(".", 1)[0].split("[", 1)[0] not in LENIENT_NEEDED:
                unset.setdefault(path, []).append(name)
                return ""
            problems.append(f"{path or '<root>'}: environment variable {name} is not set (use ${{{name}:-default}} for a default)")
            return ""

        expanded = ENV_PATTERN.sub(substitute, value)
        if path in leave_out and ENV_PATTERN.fullmatch(value):
            return _LEAVE_OUT
        if expanded != value and ENV_PATTERN.fullmatch(value):
            # A whole-value placeholder may stand for a number or a boolean: `port: ${PORT:-8317}`.
            # Anything else (`*abc`, `@x`, `[`, `a: b`) stays the text it is.
            if not expanded.strip():
                return ""
            try:
                typed = yaml.safe_load(expanded)
            except yaml.YAMLError:
                return expanded
            return typed if typed is None or isinstance(typed, (bool, int, float)) else expanded
        return expanded
    if isinstance(value, dict):
        expanded_items = {
            k: expand_env(v, env, _join(path, str(k)), problems, unset=unset, leave_out=leave_out) for k, v in value.items()
        }
        return {k: v for k, v in expanded_items.items() if v is not _LEAVE_OUT}
    if isinstance(value, list):
        expanded_list = [expand_env(v, env, f"{path}[{i}]", problems, unset=unset, leave_out=leave_out) for i, v in enumerate(value)]
        return [v for v in expanded_list if v is not _LEAVE_OUT]
    return value


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


# ---------------------------------------------------------------------------------------------
# Schemas
# ---------------------------------------------------------------------------------------------


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
    return fields.Integer(
        data_key=_kebab(name), strict=True, validate=validate.Range(min=minimum, max=maximum), **kw
    )


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

    @post_load
    def make(self, data: dict[str, Any], **kwargs: Any) -> AutoDisableOverrides:
        return AutoDisableOverrides(**data)


class TimeoutsSchema(StrictSchema):
    connect = Seconds("connect")
    first_byte = Seconds("first_byte")
    stream_idle = Seconds("stream_idle")

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
    log_level = Str("log_level", validate=validate.OneOf(["DEBUG", "INFO", "WARNING", "ERROR", "debug", "info", "warning", "error"]))
    metrics = fields.Nested(MetricsSchema, data_key="metrics")
    remote_management = fields.Nested(RemoteManagementSchema, data_key="remote-management")
    timeouts = fields.Nested(TimeoutsSchema, data_key="timeouts")
    auto_disable = fields.Nested(AutoDisableSchema, data_key="auto-disable")
    vendors = fields.List(fields.Nested(VendorSchema), data_key="openai-compatibility")

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
        data["cors_allow_origins"] = tuple(dict.fromkeys(data.get("cors_allow_origins") or ()))
        if "timeouts" in data:
            data["timeouts"] = data["timeouts"].over(DEFAULT_TIMEOUTS)
        log_level = data.pop("log_level", None)
        log_format = data.pop("log_format", None)
        if log_level or log_format:
            data["logging"] = LoggingSettings(
                level=(log_level or "INFO").upper(), format=log_format or "text"
            )
        return Config(**data)


# ---------------------------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------------------------


def _flatten(messages: Any, path: str = "") -> list[str]:
    """marshmallow's nested error dict -> `a.b[1].c: message` lines (list indexes in brackets)."""
    if isinstance(messages, Mapping):
        lines: list[str] = []
        for key, value in messages.items():
            if isinstance(key, int):
                sub = f"{path}[{key}]"
            elif key == "_schema":
                sub = path
            else:
                sub = _join(path, str(key))
            lines.extend(_flatten(value, sub))
        return lines
    if isinstance(messages, list) and all(isinstance(m, str) for m in messages):
        return [f"{path or '<root>'}: {m}" for m in messages]
    if isinstance(messages, list):
        return [line for m in messages for line in _flatten(m, path)]
    return [f"{path or '<root>'}: {messages}"]


# ---------------------------------------------------------------------------------------------
# Aliases: refused before they are expanded
# ---------------------------------------------------------------------------------------------

#: How many nodes YAML aliases (`*name`) may add to a document once expanded. Reusing an anchor for
#: shared settings or a shared model list adds a few thousand; the "billion laughs" document of a few
#: hundred bytes adds 10^9, and walking those froze the gateway for seconds.
MAX_ALIAS_EXPANSION = 100_000


def _expanded_nodes(root: yaml.Node) -> tuple[int, int]:
    """(nodes as written, nodes once every alias is expanded), counted over the composed graph, where an
    alias is a second reference to the same node: linear in what is written, whatever it expands to.
    Iterative, so a deep document cannot exhaust the stack here. Raises `_SelfReference` on a cycle."""
    sizes: dict[int, int] = {}
    entered: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        children: list[yaml.Node] = []
        if isinstance(node, yaml.MappingNode):
            children = [part for pair in node.value for part in pair]
        elif isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        if children_done:
            sizes[id(node)] = 1 + sum(sizes[id(child)] for child in children)
            continue
        if id(node) in sizes:
            continue
        if id(node) in entered:  # reached again while its own children are being counted
            raise _SelfReference()
        entered.add(id(node))
        stack.append((node, True))
        stack.extend((child, False) for child in children if id(child) not in sizes)
    return len(sizes), sizes[id(root)]


class _SelfReference(Exception):
    pass


def _safe_load(text: str) -> Any:
    """`yaml.safe_load`, refusing a document whose aliases would expand it past `MAX_ALIAS_EXPANSION`.

    Composing does not expand aliases (each is one more reference to a node), constructing does not
    either (Python objects are shared), but everything after the loader walks the tree as a tree. So
    the expanded size is counted on the composed graph before anything is built.
    """
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        try:
            written, expanded = _expanded_nodes(node)
        except _SelfReference:
            raise ConfigError(["<root>: an alias (*name) refers to the node it is part of"]) from None
        if expanded - written > MAX_ALIAS_EXPANSION:
            raise ConfigError([
                f"<root>: YAML aliases (*name) would expand the document from {written} to {expanded} nodes; "
                f"at most {MAX_ALIAS_EXPANSION} more than written are allowed (an \"alias bomb\"?)"
            ])
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _load_yaml(text: str, source: str | None) -> dict[str, Any]:
    try:
        raw = _safe_load(text)
    except ConfigError as error:
        raise ConfigError(error.problems, source) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "<root>"
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([f"{where}: YAML syntax error: {problem}"], source) from None
    except RecursionError:
        raise ConfigError(["<root>: the document is nested too deeply"], source) from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(["<root>: the configuration must be a mapping of keys"], source)
    return raw


def _validate(
    raw: dict[str, Any],
    env: Mapping[str, str],
    *,
    unset: dict[str, list[str]] | None = None,
    leave_out: frozenset[str] = frozenset(),
) -> tuple[Config | None, list[str]]:
    """(the config, []) or (None, every problem as a `path: message` line)."""
    problems: list[str] = []
    try:
        expanded = expand_env(raw, env, "", problems, unset=unset, leave_out=leave_out)
        config = ConfigSchema().load(expanded)
    except ValidationError as exc:
        problems.extend(_flatten(exc.messages))
        config = None
    except RecursionError:
        problems = ["<root>: the document is nested too deeply, or an alias (*name) refers to itself"]
        config = None
    if problems or config is None:
        return None, sorted(set(problems), key=problems.index)
    return config, []


def parse_config(text: str, *, env: Mapping[str, str] | None = None, source: str | None = None) -> Config:
    """Validate a YAML document; raise `ConfigError` listing every problem."""
    config, problems = _validate(_load_yaml(text, source), os.environ if env is None else env)
    if config is None:
        raise ConfigError(problems, source)
    return config


@dataclass(frozen=True, slots=True)
class LenientConfig:
    """A config read without some of its environment, and which values that left unknown."""

    config: Config
    #: Key path (`openai-compatibility[1].api-key-entries[0].api-key`) -> the unset variables in it.
    unset: Mapping[str, tuple[str, ...]]

    def unset_key_variables(self, vendor_index: int) -> tuple[str, ...]:
        """The unset variables in the `api-key`s of the vendor at this position of `openai-compatibility`."""
        prefix = f"openai-compatibility[{vendor_index}].api-key-entries["
        return tuple(dict.fromkeys(n for path, names in self.unset.items() if path.startswith(prefix) for n in names))


def parse_config_leniently(
    text: str, *, env: Mapping[str, str] | None = None, source: str | None = None
) -> LenientConfig:
    """Like `parse_config`, for commands that read the config only for the database, host and port
    (`cliproxy status`, `history`, `enable`, `disable`): an unset `${VAR}` is no error except in
    those keys. It reads as "" (an `api-key` then looks empty: `LenientConfig.unset` says why), or,
    where "" is not a valid value (`request-retry: ${RETRIES}`), as if the key were absent."""
    raw = _load_yaml(text, source)
    environment = os.environ if env is None else env
    unset: dict[str, list[str]] = {}
    config, problems = _validate(raw, environment, unset=unset)
    if config is None and unset:
        refused = frozenset(line.split(": ", 1)[0] for line in problems) & unset.keys()
        if refused:
            config, problems = _validate(raw, environment, unset={}, leave_out=refused)
    if config is None:
        raise ConfigError(problems, source)
    return LenientConfig(config, {path: tuple(names) for path, names in unset.items()})


def _read_text(path: str | os.PathLike[str]) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"<file>: cannot read {path}: {exc.strerror}"], str(path)) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([f"<file>: {path} is not UTF-8 text (byte {exc.start})"], str(path)) from None


def load_config(path: str | os.PathLike[str], *, env: Mapping[str, str] | None = None) -> Config:
    """Read and validate a config file; the resulting `Config` remembers its path."""
    config = parse_config(_read_text(path), env=env, source=str(path))
    return replace(config, path=str(path))


def load_config_leniently(path: str | os.PathLike[str], *, env: Mapping[str, str] | None = None) -> LenientConfig:
    """`parse_config_leniently` on a file; the `Config` remembers its path."""
    loaded = parse_config_leniently(_read_text(path), env=env, source=str(path))
    return replace(loaded, config=replace(loaded.config, path=str(path)))
