"""Config write-back: surgical edits of the operator's YAML text.

`edit_yaml` never re-serialises the document. It composes the ORIGINAL text with pyyaml (which
gives every node its start and end position) and splices new values into exactly those spans, so
comments, key order, blank lines, quoting elsewhere and `${VAR}` placeholders stay as written, and a
`diff` of the file shows only the changed lines. Because only the raw text is ever looked at, a value
expanded from the environment (an API key) can never end up in the file.

An edit is `(path, value)`, the path walking mappings by key and lists by index:
`("openai-compatibility", 1, "models", 0, "enabled")`. What each value does:

- a scalar (bool, int, float, str) replaces the value in place, or, when the key is missing, adds one
  `key: value` line at the mapping's indentation after its last entry (or `, key: value` inside a
  flow mapping such as `{name: m1}`); missing parent mappings are created on the way;
- `None` removes the key (a missing key is left missing);
- a dict is merged key by key into an existing mapping (`None` inside it removes that key); where
  there is no mapping yet it is written as a new block or, replacing a scalar, as a flow mapping;
- a list replaces the value with a flow sequence (`[429, "5xx"]`).

Switching an entry on or off (`switch_edits`) writes the spelling the file already uses, and
switching it back on removes the line that switched it off: the default is expressed by omission,
so a disable and an enable give back the original bytes.

Pure: text in, text out. Writing the result to disk (atomically, compare-and-swap) is
`cliproxy.services.config_file`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from cliproxy.services.config_loader import ENV_PATTERN

__all__ = [
    "MissingPath",
    "Path",
    "WritebackError",
    "dump_scalar",
    "edit_yaml",
    "model_index",
    "model_path",
    "switch_edits",
    "switch_state",
    "vendor_enabled_edits",
    "vendor_index",
    "vendor_path",
]

#: Where a value lives: mapping keys and list indexes, e.g. ("openai-compatibility", 1, "models", 0, "enabled").
Path = tuple[str | int, ...]

VENDORS_KEY = "openai-compatibility"

_NULLS = frozenset({"", "~", "null", "Null", "NULL"})
_INDENT_STEP = 2


class WritebackError(ValueError):
    """An edit that cannot be applied: the text is not YAML, or a value cannot be written."""


class MissingPath(WritebackError):
    """The edit names a list index, vendor or model that the file does not have."""


# ---------------------------------------------------------------------------------------------
# Rendering values
# ---------------------------------------------------------------------------------------------


def dump_scalar(value: Any) -> str:
    """A value as YAML text that reads back as the same value, on one line.

    Rendered in flow context (inside a flow sequence, then unwrapped), so strings with `,` `[` `{`
    are quoted and the text is valid both in a block and in a flow mapping.
    """
    if isinstance(value, str) and any(ord(c) < 0x20 or c in "\x7f\u2028\u2029" for c in value):
        return json.dumps(value)  # a YAML double-quoted scalar; keeps `\n` on one line
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{dump_scalar(k)}: {dump_scalar(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(dump_scalar(v) for v in value) + "]"
    if not isinstance(value, (str, int, float, bool)) and value is not None:
        raise WritebackError(f"cannot write a value of type {type(value).__name__} to YAML")
    text = yaml.safe_dump([value], default_flow_style=True, width=float("inf"), allow_unicode=True)
    return text.strip()[1:-1]


def _block_lines(key: str, value: Any, indent: int) -> str:
    """`key: value` line(s) for a block mapping at `indent`; a non-empty dict becomes a nested block."""
    pad = " " * indent
    if isinstance(value, Mapping) and value:
        children = "".join(_block_lines(str(k), v, indent + _INDENT_STEP) for k, v in value.items())
        return f"{pad}{dump_scalar(key)}:\n{children}"
    return f"{pad}{dump_scalar(key)}: {dump_scalar(value)}\n"


def _nest(keys: Sequence[str | int], value: Any) -> Any:
    for key in reversed(keys):
        value = {key: value}
    return value


def _show(path: Sequence[str | int]) -> str:
    out = ""
    for step in path:
        out += f"[{step}]" if isinstance(step, int) else (f".{step}" if out else str(step))
    return out or "<root>"


# ---------------------------------------------------------------------------------------------
# Positions in the original text
# ---------------------------------------------------------------------------------------------


def _compose(text: str) -> Node | None:
    try:
        return yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        raise WritebackError(f"the config file is not valid YAML: {exc}") from None


def _line_start(text: str, index: int) -> int:
    return text.rfind("\n", 0, index) + 1


def _after_line(text: str, index: int) -> int:
    """The index just past the newline ending the line that holds `index` (or the end of the text)."""
    newline = text.find("\n", index)
    return len(text) if newline == -1 else newline + 1


def _line_content_end(text: str, index: int) -> int:
    """The end of the line that holds `index`, before its line break (`\n` or `\r\n`)."""
    end = text.find("\n", index)
    if end == -1:
        return len(text)
    return end - 1 if end > index and text[end - 1] == "\r" else end


def _newline(text: str) -> str:
    """The file's own line break, for the lines we add."""
    return "\r\n" if "\r\n" in text else "\n"


def _content_end(text: str, node: Node) -> int:
    """Where a node's own text ends: block collections and block scalars without trailing blank or comment lines."""
    if isinstance(node, ScalarNode):
        end = node.end_mark.index
        if node.style in ("|", ">"):
            while end > node.start_mark.index and text[end - 1] in " \t\r\n":
                end -= 1
        return end
    if getattr(node, "flow_style", None) or not node.value:
        return node.end_mark.index
    last = node.value[-1]
    return _content_end(text, last[1] if isinstance(node, MappingNode) else last)


def _is_null(node: Node) -> bool:
    return isinstance(node, ScalarNode) and node.style is None and node.value in _NULLS


def _find_key(mapping: MappingNode, key: str) -> int | None:
    for index, (key_node, _) in enumerate(mapping.value):
        if isinstance(key_node, ScalarNode) and key_node.value == key:
            return index
    return None


def _splice(text: str, start: int, end: int, new: str) -> str:
    return text[:start] + new + text[end:]


# ---------------------------------------------------------------------------------------------
# Edits
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Slot:
    """Where a path led: the value node, its key node (None for a list item) and the mapping/list holding it."""

    node: Node
    key: ScalarNode | None
    parent: Node
    parent_key: ScalarNode | None  # the key whose value `parent` is (None for the root or a list item)


def edit_yaml(text: str, edits: Sequence[tuple[Path, Any]]) -> str:
    """`text` with each edit applied in order; only the lines of the changed values differ."""
    for path, value in edits:
        text = _edit(text, tuple(path), value)
    return text


def _edit(text: str, path: Path, value: Any) -> str:
    if not path:
        raise WritebackError("an edit needs a non-empty path")
    root = _compose(text)
    if root is None:  # an empty document (only comments): a mapping with no keys yet
        if not all(isinstance(step, str) for step in path):
            raise MissingPath(f"{_show(path)} does not exist")
        if value is None:
            return text
        sep = "" if not text or text.endswith("\n") else _newline(text)
        return text + sep + _block_lines(str(path[0]), _nest(path[1:], value), 0).replace("\n", _newline(text))
    node: Node = root
    key_node: ScalarNode | None = None
    parent: Node | None = None
    parent_key: ScalarNode | None = None
    for depth, step in enumerate(path):
        here = path[: depth + 1]
        if isinstance(step, bool) or not isinstance(step, (str, int)):
            raise WritebackError(f"bad path step {step!r} in {_show(path)}")
        if isinstance(step, int):
            if not isinstance(node, SequenceNode):
                raise MissingPath(f"{_show(path[:depth])} is not a list, so {_show(here)} does not exist")
            if not 0 <= step < len(node.value):
                raise MissingPath(f"{_show(here)} does not exist ({len(node.value)} entries)")
            parent_key, parent = key_node, node
            key_node, node = None, node.value[step]
            continue
        rest = path[depth + 1 :]
        if _is_null(node) and all(isinstance(s, str) for s in rest):
            # `auto-disable:` with no value yet: the new keys replace the null as a flow mapping.
            if value is None:
                return text
            return _replace(text, node, key_node, dump_scalar(_prune(_nest(path[depth:], value))))
        if not isinstance(node, MappingNode):
            raise MissingPath(f"{_show(path[:depth])} is not a mapping, so {_show(here)} does not exist")
        index = _find_key(node, step)
        if index is None:
            if not all(isinstance(s, str) for s in rest):
                raise MissingPath(f"{_show(here)} does not exist")
            if value is None:
                return text  # removing what is not there
            return _insert(text, node, step, _prune(_nest(rest, value)))
        parent_key, parent = key_node, node
        key_node, node = node.value[index]
    assert parent is not None
    slot = _Slot(node, key_node, parent, parent_key)
    if value is None:
        if key_node is None:
            raise WritebackError(f"removing list entries is not supported ({_show(path)})")
        return _remove(text, slot)
    if isinstance(value, Mapping) and isinstance(node, MappingNode):
        for key, sub in value.items():
            text = _edit(text, (*path, str(key)), sub)
        return text
    return _replace(text, node, key_node, dump_scalar(_prune(value)))


def _prune(value: Any) -> Any:
    """A new value as it is written: `None` inside a dict means "no such key", so those keys are left out."""
    if isinstance(value, Mapping):
        return {k: _prune(v) for k, v in value.items() if v is not None}
    return value


def _replace(text: str, node: Node, key_node: ScalarNode | None, new: str) -> str:
    """Put `new` where `node` is written."""
    if key_node is None:
        return _splice(text, node.start_mark.index, _content_end(text, node), new)
    colon = text.index(":", key_node.end_mark.index)
    if _is_null(node) and node.value == "":  # `key:` with nothing after it
        return _splice(text, colon + 1, colon + 1, " " + new)
    if isinstance(node, (MappingNode, SequenceNode)) and not node.flow_style:
        # A block below the key: the new value goes after the colon (keeping the key line's comment)
        # and the block's lines go, their comments with them.
        key_line_end = _line_content_end(text, colon)
        tail = text[colon + 1 : key_line_end]
        block_end = _line_content_end(text, _content_end(text, node))
        return _splice(text, colon + 1, block_end, " " + new + (tail if tail.strip() else ""))
    return _splice(text, node.start_mark.index, _content_end(text, node), new)


def _insert(text: str, mapping: MappingNode, key: str, value: Any) -> str:
    """Add `key: value` to a mapping that lacks the key."""
    if mapping.flow_style:
        if mapping.value:
            position = _content_end(text, mapping.value[-1][1])
            return _splice(text, position, position, f", {dump_scalar(key)}: {dump_scalar(value)}")
        position = mapping.start_mark.index + 1  # just after "{"
        return _splice(text, position, position, f"{dump_scalar(key)}: {dump_scalar(value)}")
    indent = mapping.value[0][0].start_mark.column
    position = _after_line(text, _content_end(text, mapping.value[-1][1]))
    newline = _newline(text)
    lead = "" if position == 0 or text[position - 1] == "\n" else newline
    return _splice(text, position, position, lead + _block_lines(key, value, indent).replace("\n", newline))


def _remove(text: str, slot: _Slot) -> str:
    mapping = slot.parent
    assert isinstance(mapping, MappingNode) and slot.key is not None
    pairs = mapping.value
    index = next(i for i, (k, _) in enumerate(pairs) if k is slot.key)
    if mapping.flow_style:
        if index > 0:  # ", key: value"
            start = _content_end(text, pairs[index - 1][1])
            return _splice(text, start, _content_end(text, slot.node), "")
        if len(pairs) > 1:  # "key: value, "
            return _splice(text, slot.key.start_mark.index, pairs[1][0].start_mark.index, "")
        return _splice(text, slot.key.start_mark.index, _content_end(text, slot.node), "")
    if len(pairs) == 1 and slot.parent_key is not None:
        # The last key of a nested mapping: the mapping becomes `{}` rather than an accidental null.
        return _replace(text, mapping, slot.parent_key, "{}")
    line_start = _line_start(text, slot.key.start_mark.index)
    if text[line_start : slot.key.start_mark.index].strip():
        # The key shares its line with a list dash (`- enabled: false`): pull the next key up instead.
        if len(pairs) == 1:
            raise WritebackError("cannot remove the only key of a list entry")
        return _splice(text, slot.key.start_mark.index, pairs[index + 1][0].start_mark.index, "")
    return _splice(text, line_start, _after_line(text, _content_end(text, slot.node)), "")


# ---------------------------------------------------------------------------------------------
# Finding vendors and models by name in the raw text
# ---------------------------------------------------------------------------------------------


def _name_matches(raw: str, name: str, env: Mapping[str, str]) -> bool:
    if raw == name:
        return True
    if "${" not in raw:
        return False

    def substitute(match: Any) -> str:
        return env.get(match.group(1), match.group(2) or "")

    return ENV_PATTERN.sub(substitute, raw) == name


def _named_index(items: Node | None, name: str, what: str, env: Mapping[str, str]) -> int:
    if isinstance(items, SequenceNode):
        for index, item in enumerate(items.value):
            if not isinstance(item, MappingNode):
                continue
            found = _find_key(item, "name")
            if found is None:
                continue
            name_node = item.value[found][1]
            if isinstance(name_node, ScalarNode) and _name_matches(name_node.value, name, env):
                return index
    raise MissingPath(f"no {what} named {name!r} in the config file")


def _vendors(root: Node | None) -> Node | None:
    if not isinstance(root, MappingNode):
        return None
    index = _find_key(root, VENDORS_KEY)
    return None if index is None else root.value[index][1]


def vendor_index(text: str, name: str, *, env: Mapping[str, str] | None = None) -> int:
    """The list index of the vendor called `name` under `openai-compatibility` in the raw YAML.

    A name written as a `${VAR}` placeholder matches its expansion in `env` (default: os.environ).
    Raises `WritebackError` when there is no such vendor.
    """
    return _named_index(_vendors(_compose(text)), name, "vendor", os.environ if env is None else env)


def model_index(text: str, vendor_name: str, model_name: str, *, env: Mapping[str, str] | None = None) -> int:
    """The list index of the model entry with upstream name `model_name` in the vendor's `models`."""
    env = os.environ if env is None else env
    vendors = _vendors(_compose(text))
    vendor = _named_index(vendors, vendor_name, "vendor", env)
    assert isinstance(vendors, SequenceNode)
    entry = vendors.value[vendor]
    assert isinstance(entry, MappingNode)
    found = _find_key(entry, "models")
    models = None if found is None else entry.value[found][1]
    return _named_index(models, model_name, f"model of vendor {vendor_name!r}", env)


def vendor_path(text: str, name: str, *, env: Mapping[str, str] | None = None) -> Path:
    """`("openai-compatibility", i)` for the vendor called `name`."""
    return (VENDORS_KEY, vendor_index(text, name, env=env))


def model_path(text: str, vendor_name: str, model_name: str, *, env: Mapping[str, str] | None = None) -> Path:
    """`("openai-compatibility", i, "models", j)` for one model entry of one vendor."""
    return (
        VENDORS_KEY,
        vendor_index(text, vendor_name, env=env),
        "models",
        model_index(text, vendor_name, model_name, env=env),
    )


def vendor_enabled_edits(
    text: str, vendor_name: str, enabled: bool, *, env: Mapping[str, str] | None = None
) -> list[tuple[Path, Any]]:
    """The edit that switches a vendor on or off, in the spelling the file already uses.

    A vendor written with CLIProxyAPI's `disabled:` key keeps it (inverted); writing `enabled:` next
    to it would make the file invalid ("set either 'enabled' or 'disabled'").
    """
    path = vendor_path(text, vendor_name, env=env)
    vendors = _vendors(_compose(text))
    assert isinstance(vendors, SequenceNode)
    entry = vendors.value[path[1]]
    assert isinstance(entry, MappingNode)
    if _find_key(entry, "disabled") is not None:
        return [((*path, "disabled"), not enabled)]
    return [((*path, "enabled"), enabled)]


def _entry(text: str, vendor_name: str, model_name: str | None, env: Mapping[str, str] | None) -> tuple[Path, MappingNode]:
    """The path and node of a vendor's entry, or of one of its model entries (the text composed once)."""
    env = os.environ if env is None else env
    vendors = _vendors(_compose(text))
    index = _named_index(vendors, vendor_name, "vendor", env)
    assert isinstance(vendors, SequenceNode)
    entry = vendors.value[index]
    assert isinstance(entry, MappingNode)
    path: Path = (VENDORS_KEY, index)
    if model_name is None:
        return path, entry
    found = _find_key(entry, "models")
    models = None if found is None else entry.value[found][1]
    index = _named_index(models, model_name, f"model of vendor {vendor_name!r}", env)
    assert isinstance(models, SequenceNode)
    model = models.value[index]
    assert isinstance(model, MappingNode)
    return (*path, "models", index), model


def _switch_key(entry: MappingNode, *, vendor: bool) -> str:
    """The key that switches the entry: CLIProxyAPI's inverse `disabled:` where a vendor uses it, else `enabled:`."""
    return "disabled" if vendor and _find_key(entry, "disabled") is not None else "enabled"


def switch_state(
    text: str, vendor_name: str, model_name: str | None = None, *, env: Mapping[str, str] | None = None
) -> bool | None:
    """What the entry's switch line says: True for on in so many words (`enabled: true`, `disabled:
    false`), False for off (or a value that is not a plain boolean), None when there is no such line."""
    _, entry = _entry(text, vendor_name, model_name, env)
    key = _switch_key(entry, vendor=model_name is None)
    found = _find_key(entry, key)
    if found is None:
        return None
    node = entry.value[found][1]
    if not isinstance(node, ScalarNode) or node.style is not None:
        return False
    said = yaml.SafeLoader.bool_values.get(node.value.lower())
    return said is (key == "enabled")


def switch_edits(
    text: str,
    vendor_name: str,
    model_name: str | None,
    enabled: bool,
    *,
    keep_line: bool = False,
    env: Mapping[str, str] | None = None,
) -> list[tuple[Path, Any]]:
    """The edit that switches a vendor (`model_name` None) or one of its model entries on or off.

    Off: `enabled: false`, or `disabled: true` where the vendor already uses CLIProxyAPI's spelling
    (writing `enabled:` beside it would make the file invalid). On: the line that switched it off is
    removed, since on is the default and the default is expressed by omission, so off-then-on gives
    back the file's original bytes. `keep_line` (the file said `enabled: true` before the switch
    off) writes the on-value instead. An entry already on by omission needs no edit.
    """
    path, entry = _entry(text, vendor_name, model_name, env)
    key = _switch_key(entry, vendor=model_name is None)
    present = _find_key(entry, key) is not None
    if enabled and not present:
        return []
    if enabled and not keep_line:
        return [((*path, key), None)]
    return [((*path, key), enabled if key == "enabled" else not enabled)]
