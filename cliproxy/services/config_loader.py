"""Reading the configuration: YAML -> `${VAR}` expansion -> marshmallow (`config_schema`) -> frozen `Config`.

Every problem is collected with its key path (`openai-compatibility[1].models[0].alias: ...`) and
raised together as one `ConfigError`, so an operator fixes a file in one pass. Nothing past this
module sees a dict.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml
from marshmallow import ValidationError

from cliproxy.core.config import Config
from cliproxy.services.config_schema import ConfigSchema

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
            problems.append(
                f"{path or '<root>'}: environment variable {name} is not set (use ${{{name}:-default}} for a default)"
            )
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
        expanded_list = [
            expand_env(v, env, f"{path}[{i}]", problems, unset=unset, leave_out=leave_out) for i, v in enumerate(value)
        ]
        return [v for v in expanded_list if v is not _LEAVE_OUT]
    return value


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


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
            raise ConfigError(
                [
                    f"<root>: YAML aliases (*name) would expand the document from {written} to {expanded} nodes; "
                    f'at most {MAX_ALIAS_EXPANSION} more than written are allowed (an "alias bomb"?)'
                ]
            )
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


def parse_config_leniently(text: str, *, env: Mapping[str, str] | None = None, source: str | None = None) -> LenientConfig:
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
