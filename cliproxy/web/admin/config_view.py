"""The running config as `GET /api/config` shows it: dumped through the loader's own schema, then masked.

The config's shape is written once, in the loader's `ConfigSchema` (the file's kebab-case keys): a
second hand-kept copy here drifted (it missed `body-timeout` and the keys after it). So the view is
`ConfigSchema().dump(...)` of the running `Config`, with every secret masked after the dump, and
`ConfigViewSchema`, which documents the view in /api/openapi.json, is derived from the same
schema: every key the dump produces, required, nullable where the default config holds null.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import re
from collections.abc import Callable, Mapping
from typing import Any

from marshmallow import Schema, fields

from cliproxy.core.config import ApiKeyEntry, Config, ModelEntry, NotifyTarget, Vendor
from cliproxy.core.redact import mask_key
from cliproxy.services.config_loader import ConfigSchema
from cliproxy.web.admin.views import mask_url

__all__ = ["ConfigViewSchema", "SECRETS", "config_view"]

_Mask = Callable[[str], "str | None"]

#: Where the dumped config holds secrets, and how each is masked. `*` is every item of a list or
#: every value of a mapping. Header values are masked whatever the header is called:
#: `Ocp-Apim-Subscription-Key`, `X-Auth-Key` and friends are credentials, and no list of names catches them all.
SECRETS: tuple[tuple[tuple[str, ...], _Mask], ...] = (
    (("api-keys", "*"), mask_key),
    (("proxy-url",), mask_url),
    (("remote-management", "secret-key"), mask_key),
    (("openai-compatibility", "*", "api-key-entries", "*", "api-key"), mask_key),
    (("openai-compatibility", "*", "api-key-entries", "*", "proxy-url"), mask_url),
    (("openai-compatibility", "*", "headers", "*"), mask_key),
    (("notify", "*", "secret"), mask_key),
    (("notify", "*", "url"), mask_url),
)

#: Keys whose dumped form is not what the loader reads: `count-statuses` is read as `[429, "5xx"]`
#: and held (and shown) as the set of statuses it means.
_SHOWN_AS: dict[str, Callable[[], fields.Field]] = {"count-statuses": lambda: fields.List(fields.Integer())}


def _dumpable(config: Config) -> dict[str, Any]:
    """`config` as plain values under the loader's attribute names (its log settings are flat in the file)."""
    data = _plain(dataclasses.asdict(config))
    data["log_level"], data["log_format"] = config.logging.level, config.logging.format
    for vendor, typed in zip(data["vendors"], config.vendors, strict=True):
        vendor["headers"] = dict(typed.headers)
    for auto_disable in _auto_disable_levels(data):
        auto_disable["probe"] = _probe_shown(auto_disable.get("probe"))
    return data


def _auto_disable_levels(data: dict[str, Any]) -> list[dict[str, Any]]:
    """The `auto-disable` of every level: global, each vendor, each model entry."""
    levels = [data["auto_disable"]]
    for vendor in data["vendors"]:
        levels.append(vendor["auto_disable"])
        levels.extend(model["auto_disable"] for model in vendor["models"])
    return levels


def _probe_shown(probe: Mapping[str, Any] | None) -> dict[str, Any]:
    """`probe` as the file writes it (`body` a mapping, held as JSON text); not set: both keys null."""
    if probe is None:
        return {"path": None, "body": None}
    body = probe.get("body")
    return {"path": probe.get("path"), "body": None if body is None else json.loads(body)}


def _plain(value: Any) -> Any:
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _mask_at(tree: Any, path: tuple[str, ...], mask: _Mask) -> Any:
    if not path:
        return tree if tree is None else mask(tree)
    head, rest = path[0], path[1:]
    if head == "*":
        if isinstance(tree, list):
            return [_mask_at(item, rest, mask) for item in tree]
        if isinstance(tree, Mapping):
            return {k: _mask_at(v, rest, mask) for k, v in tree.items()}
        return tree
    if isinstance(tree, Mapping) and head in tree:
        return {**tree, head: _mask_at(tree[head], rest, mask)}
    return tree


def config_view(config: Config) -> dict[str, Any]:
    """The running config in the file's shape (`${VAR}` expanded), every secret masked."""
    view: dict[str, Any] = ConfigSchema().dump(_dumpable(config))
    for path, mask in SECRETS:
        view = _mask_at(view, path, mask)
    return view


# --- the document's schema, derived ------------------------------------------------------------

#: One of everything the view can hold, so that every key of the dump (nested ones too) is seen.
_SAMPLE = config_view(
    Config(
        vendors=(Vendor(name="v", base_url="http://v", api_key_entries=(ApiKeyEntry("k"),), models=(ModelEntry("m"),)),),
        notify=(NotifyTarget("http://n"),),  # no secret: the view shows null, so the schema says nullable
    )
)
_MASKED = {tuple(p for p in path if p != "*") for path, _ in SECRETS}


def _component(key: str) -> str:
    return "".join(part.capitalize() for part in re.split(r"[-_]", key))


def _view_field(field: fields.Field, sample: Any, name: str, path: tuple[str, ...]) -> fields.Field:
    key = path[-1]
    shown: fields.Field
    if key in _SHOWN_AS:
        shown = _SHOWN_AS[key]()
    elif isinstance(field, fields.Nested) and isinstance(field.schema, Schema):
        shown = fields.Nested(_view_schema(field.schema, sample or {}, name, path))
    elif isinstance(field, fields.List) and isinstance(field.inner, fields.Nested):
        item = sample[0] if sample else {}
        shown = fields.List(fields.Nested(_view_schema(field.inner.schema, item, name, path)))
    else:
        shown = copy.copy(field)  # the loader's type, format and bounds, named by its file key
        shown.data_key = None
    shown.required = True
    shown.allow_none = sample is None
    if path in _MASKED:
        shown.metadata = {**shown.metadata, "description": "masked"}
    return shown


def _view_schema(schema: Schema, sample: Mapping[str, Any], name: str, path: tuple[str, ...] = ()) -> type[Schema]:
    """A schema of the dumped view: fields named by their file keys; a key the dump never produces
    (`disabled`, CLIProxyAPI's spelling of `enabled`, read but shown as `enabled`) is left out."""
    declared: dict[str, fields.Field] = {}
    for attr, field in schema.fields.items():
        key = field.data_key or attr
        if key in sample:
            declared[key] = _view_field(field, sample[key], name + _component(key), (*path, key))
    return Schema.from_dict(declared, name=name)


#: `GET /api/config`'s `config`: the loader's schema as the view shows it.
ConfigViewSchema = _view_schema(ConfigSchema(), _SAMPLE, "ConfigView")
ConfigViewSchema.__doc__ = "The running configuration, keys as in config.yaml, `${VAR}` expanded, secrets masked."
