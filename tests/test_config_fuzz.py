"""Config files fuzzed: any YAML gives a valid `Config` or a `ConfigError` whose every line names where, never another exception.

Documents are generated from the real schema (`cliproxy.services.config_schema.ConfigSchema`, walked at import
time, so keys added later are fuzzed too): nested mappings under the real key names with random
types, right-shaped values and unknown keys, `${VAR}` placeholders, and raw text. In-process
through `parse_config` for speed, plus a handful through the real `cliproxy check-config`.
"""

from __future__ import annotations

import copy
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from marshmallow import Schema, fields

from cliproxy.core.config import Config
from cliproxy.core.runtime import Runtime
from cliproxy.services.config_loader import ConfigError, parse_config
from cliproxy.services.config_schema import ConfigSchema, StatusSet

REPO = Path(__file__).resolve().parent.parent

_BOUNDED = settings(deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def fuzz(examples: int) -> settings:
    return settings(_BOUNDED, max_examples=examples)


# ------------------------------------------------------------------------------------ the schema

#: A key name as the generator writes unknown keys: no dots, brackets or spaces, so a path stays readable.
_KEY = r"[^\s.\[\]:]+"
PROBLEM = re.compile(rf"^(?:<root>|line \d+, column \d+|(?P<path>{_KEY}(?:\.{_KEY}|\[\d+\])*)): \S")


def _shape(schema: Schema) -> dict[str, Any]:
    """{yaml key: nested shape dict | ("list", shape) | field} for every field of `schema`."""
    out: dict[str, Any] = {}
    for name, field in schema.fields.items():
        key = field.data_key or name
        if isinstance(field, fields.Nested):
            out[key] = _shape(field.schema)
        elif isinstance(field, fields.List) and isinstance(field.inner, fields.Nested):
            out[key] = ("list", _shape(field.inner.schema))
        else:
            out[key] = field
    return out


SHAPE = _shape(ConfigSchema())
SHIPPED = yaml.safe_load((REPO / "config.yaml").read_text())

# ------------------------------------------------------------------------------------ strategies

#: Values an environment variable may hold in the committed fuzz. Values that are not YAML scalars
#: (`*x`, `@x`, `[`, `a: b: c`) crash the loader today: RELIABILITY_NOTES.md, pending tests.
env_values = st.sampled_from(
    ["", "8317", "0", "-1", "1.5", "true", "no", "null", "http://127.0.0.1:9/v1", "sk-abc", "5xx", "text", "~"]
)
ENV_NAMES = ("A", "PORT", "KEY", "UNSET_HERE")

placeholders = st.builds(
    lambda name, default, prefix, suffix: prefix + "${" + name + (f":-{default}" if default is not None else "") + "}" + suffix,
    st.sampled_from(ENV_NAMES),
    st.none() | env_values,
    st.sampled_from(["", "http://", "x-"]),
    st.sampled_from(["", "/v1", "0"]),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(-(10**30), 10**30),
    st.floats(),
    st.text(max_size=12),
    st.sampled_from(
        ["5xx", "6xx", "xx", "http://127.0.0.1:1/v1", "https://x", "ftp://x", "DEBUG", "json", "text", "a/b", "", " ", "0"]
    ),
    placeholders,
)
_unknown_key = st.from_regex(r"\A[a-z][a-z-]{0,10}\Z")
anything = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_unknown_key | st.integers(0, 3), inner, max_size=3),
    max_leaves=10,
)


def shaped(shape: dict[str, Any], depth: int = 0) -> st.SearchStrategy[dict[Any, Any]]:
    """A mapping with some of `shape`'s keys (right-shaped or random values) and now and then an unknown key."""
    entries: dict[Any, st.SearchStrategy[Any]] = {}
    for key, sub in shape.items():
        if isinstance(sub, dict):
            right = shaped(sub, depth + 1)
        elif isinstance(sub, tuple):
            right = st.lists(shaped(sub[1], depth + 1), max_size=3)
        else:
            right = scalars | st.lists(scalars, max_size=3)
        entries[key] = right | anything
    return st.builds(
        lambda known, extra: {**known, **extra},
        st.fixed_dictionaries({}, optional=entries),
        st.dictionaries(_unknown_key | st.sampled_from([1, True, None]), anything, max_size=1 if depth else 2),
    )


def plausible(key: str, field: fields.Field) -> st.SearchStrategy[Any]:
    """A value of the field's own type, mostly valid."""
    if key in ("base-url", "proxy-url"):
        return st.sampled_from(["http://127.0.0.1:9/v1", "https://api.example.com/v1", "http://[::1]:8/v1"])
    if key == "log-format":
        return st.sampled_from(["text", "json"])
    if key == "log-level":
        return st.sampled_from(["DEBUG", "info", "WARNING", "error"])
    if isinstance(field, fields.Boolean):
        return st.booleans()
    if isinstance(field, fields.Integer):
        return st.integers(-2, 65535)
    if isinstance(field, fields.Float):
        return st.floats(0.001, 1e6)
    if isinstance(field, StatusSet):
        return st.lists(st.integers(100, 599) | st.sampled_from(["4xx", "5xx"]), max_size=4)
    if isinstance(field, fields.Dict):
        return st.dictionaries(st.from_regex(r"\AX-[A-Za-z]{1,8}\Z"), st.text(max_size=10), max_size=2)
    if isinstance(field, fields.List):
        return st.lists(st.text(st.characters(codec="utf-8"), min_size=1, max_size=10), max_size=3)
    return st.text(st.characters(codec="utf-8"), min_size=1, max_size=12)


def plausibly_shaped(shape: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    """A mapping of right-shaped, mostly valid values: reaches the routing table with odd names and numbers."""
    entries: dict[str, st.SearchStrategy[Any]] = {}
    for key, sub in shape.items():
        if isinstance(sub, dict):
            entries[key] = plausibly_shaped(sub)
        elif isinstance(sub, tuple):
            entries[key] = st.lists(plausibly_shaped(sub[1]), max_size=3)
        else:
            entries[key] = plausible(key, sub)
    return st.fixed_dictionaries({}, optional=entries)


documents = shaped(SHAPE)
plausible_documents = plausibly_shaped(SHAPE)
environments = st.dictionaries(st.sampled_from(ENV_NAMES[:-1]), env_values, max_size=3)


def _dump(document: Any, flow: bool | None, unicode: bool) -> str:
    return yaml.safe_dump(document, sort_keys=False, default_flow_style=flow, allow_unicode=unicode)


# ------------------------------------------------------------------------------------ the check


def check(text: str, env: dict[str, str], *, readable_keys: bool = True) -> Config | ConfigError:
    """Parse and check the outcome: a Config the gateway can build, or problems that each say where.

    With `readable_keys` off (raw text, where a key may be `:` or `a.b`) a line only has to be
    `where: what`; otherwise `where` must be a key path, a position or `<root>`.
    """
    try:
        config = parse_config(text, env=env)
    except ConfigError as error:
        event("ConfigError")
        assert error.problems, "a ConfigError without problems"
        for line in error.problems:
            if readable_keys:
                assert PROBLEM.match(line), f"problem without a key path or position: {line!r}"
            else:
                assert isinstance(line, str) and re.match(r"^.+?: \S", line), f"unreadable problem: {line!r}"
        return error
    event("valid Config")
    assert isinstance(config, Config)
    Runtime.build(config).table.auto_disable_settings()  # what the gateway does with it at start-up
    return config


def _first_segment(path: str) -> str:
    return re.split(r"[.\[]", path, maxsplit=1)[0]


class TestParseConfigFuzz:
    """Generated documents: a valid Config or a ConfigError whose lines start with a key path, a position or <root>."""

    @fuzz(150)
    @given(document=documents, env=environments, flow=st.sampled_from([None, True, False]), unicode=st.booleans())
    def test_schema_shaped_documents(self, document, env, flow, unicode):
        result = check(_dump(document, flow, unicode), env)
        if isinstance(result, ConfigError):
            top = {str(k) for k in document}
            for line in result.problems:
                path = PROBLEM.match(line).group("path")
                if path is not None:
                    assert _first_segment(path) in top | set(SHAPE), line

    @fuzz(150)
    @given(document=plausible_documents)
    def test_plausible_documents(self, document):
        check(_dump(document, None, True), {})

    @fuzz(300)
    @given(document=anything, env=environments)
    def test_any_yaml_value_at_the_root(self, document, env):
        check(yaml.safe_dump(document), env)

    @fuzz(300)
    @given(
        text=st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=80)
        | st.lists(
            st.sampled_from(
                [
                    "port: ",
                    "- ",
                    "  ",
                    "\n",
                    "{",
                    "}",
                    "[",
                    "]",
                    ": ",
                    "&a ",
                    "*a",
                    "!!str ",
                    "? ",
                    "---\n",
                    "'",
                    '"',
                    "#",
                    "${A}",
                    "\t",
                    "openai-compatibility:",
                    "name: x",
                ]
            ),
            max_size=20,
        ).map("".join),
    )
    def test_raw_text(self, text):
        check(text, {"A": "1"}, readable_keys=False)

    @fuzz(120)
    @given(path_choice=st.randoms(use_true_random=False), value=anything)
    def test_one_mutation_of_the_shipped_config(self, path_choice, value):
        # The shipped config is valid; replace one node anywhere in it with a random value.
        base = copy.deepcopy(SHIPPED)
        nodes: list[tuple[Any, Any]] = []

        def walk(node: Any) -> None:
            items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
            for key, child in items:
                nodes.append((node, key))
                walk(child)

        walk(base)
        parent, key = path_choice.choice(nodes)
        parent[key] = value
        check(yaml.safe_dump(base, sort_keys=False), {})


CHECK_CONFIG_FILES = {
    "valid": "port: 8318\nopenai-compatibility: [{name: a, base-url: 'http://127.0.0.1:9/v1', models: [{name: m}]}]\n",
    "wrong_types": "port: [1]\nhost: {a: 1}\napi-keys: 3\nopenai-compatibility: {name: a}\n",
    "nested_wrong": "openai-compatibility:\n  - name: [x]\n    base-url: 7\n    timeouts: {connect: -1, first-byte: .nan}\n    models: [{name: m, auto-disable: {count-statuses: [99, 7xx, true]}}, 3]\n",
    "syntax_error": "port: [1\nhost: 'x\n",
    "not_a_mapping": "- a\n- b\n",
    "unknown_keys": "prot: 1\nopenai-compatibility: [{nmae: a, base-url: 'http://x'}]\n",
    "unset_variable": "port: ${NOT_SET_IN_THIS_ENV}\n",
    "alias_bomb": "".join(
        f"{name}: &{name} [{', '.join([f'*{prev}'] * 9) if prev else ', '.join(['lol'] * 9)}]\n"
        for prev, name in zip([None, *"abcdefgh"], "abcdefghi")
    ),
}


class TestCheckConfigCommand:
    """A handful of bad files through the real `cliproxy check-config`: exit 0 or 2, never a traceback."""

    def test_exit_codes_and_no_traceback(self, tmp_path):
        procs = {}
        for name, text in CHECK_CONFIG_FILES.items():
            path = tmp_path / f"{name}.yaml"
            path.write_text(text)
            procs[name] = subprocess.Popen(
                [sys.executable, "-m", "cliproxy.cli", "check-config", "--config", str(path)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env={"PATH": "/usr/bin:/bin"},
            )
        try:
            for name, proc in procs.items():
                out, err = proc.communicate(timeout=60)
                assert "Traceback" not in err, (name, err)
                expected = 0 if name == "valid" else 2
                assert proc.returncode == expected, (name, out, err)
                if expected == 2:
                    lines = [line.strip() for line in err.splitlines()[1:] if line.strip()]
                    assert lines and all(PROBLEM.match(line) for line in lines), (name, err)
        finally:
            for proc in procs.values():
                if proc.poll() is None:
                    proc.kill()
                    proc.communicate()


class TestAliasExpansion:
    """YAML aliases are counted on the composed graph and refused past the bound, before anything walks them."""

    def test_billion_laughs_is_refused_at_once_naming_the_problem(self):
        began = time.monotonic()
        with pytest.raises(ConfigError) as caught:
            parse_config(CHECK_CONFIG_FILES["alias_bomb"], env={}, source="bomb.yaml")
        assert time.monotonic() - began < 1.0
        [problem] = caught.value.problems
        assert problem.startswith("<root>: YAML aliases (*name) would expand the document from ")
        assert "alias bomb" in problem and caught.value.source == "bomb.yaml"

    def test_anchors_reused_within_the_bound_still_load(self):
        models = "\n".join(f"  - {{name: m{i}}}" for i in range(500))
        text = f"openai-compatibility:\n  - name: v0\n    base-url: 'http://127.0.0.1:9/v1'\n    models: &models\n{models.replace('  - ', '      - ')}\n"
        text += "".join(f"  - {{name: v{i}, base-url: 'http://127.0.0.1:9/v1', models: *models}}\n" for i in range(1, 20))
        config = parse_config(text, env={})
        assert sum(len(v.models) for v in config.vendors) == 20 * 500

    def test_an_alias_inside_its_own_anchor_is_refused(self):
        for text in ("a: &x [*x]\n", "a: &x {b: *x}\n"):
            with pytest.raises(ConfigError) as caught:
                parse_config(text, env={})
            assert caught.value.problems == ["<root>: an alias (*name) refers to the node it is part of"]
