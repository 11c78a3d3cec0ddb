"""The config loader: typed values, ${VAR} expansion, and every problem reported with its key path."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cliproxy.core.config import DEFAULT_COUNT_STATUSES
from cliproxy.services.config_loader import ConfigError, load_config, parse_config

REPO = Path(__file__).resolve().parent.parent


def problems(text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, env=env or {})
    return caught.value.problems


class TestDefaults:
    """An empty file is a valid config with the documented defaults."""

    def test_empty_file(self):
        config = parse_config("", env={})
        assert (config.host, config.port, config.request_retry, config.database) == ("127.0.0.1", 8317, 3, "./cliproxy.db")
        assert config.max_body_bytes == 32 * 1024 * 1024
        assert config.vendors == ()

    def test_vendor_and_model_defaults(self):
        config = parse_config("openai-compatibility: [{name: a, base-url: 'http://x/v1', models: [{name: m}]}]", env={})
        vendor = config.vendors[0]
        assert (vendor.enabled, vendor.priority, vendor.prefix) == (True, 0, None)
        assert (vendor.models[0].enabled, vendor.models[0].public_name) == (True, "m")

    def test_cliproxyapi_disabled_is_the_inverse_of_enabled(self):
        config = parse_config("openai-compatibility: [{name: a, base-url: 'http://x/v1', disabled: true}]", env={})
        assert config.vendors[0].enabled is False

    def test_count_statuses_classes(self):
        config = parse_config("auto-disable: {count-statuses: [429, 5xx]}", env={})
        assert config.auto_disable.count_statuses == frozenset({429, *range(500, 600)})
        assert 401 in DEFAULT_COUNT_STATUSES


class TestEnvironment:
    """`${VAR}` and `${VAR:-default}` expand from the environment; an unset one is an error naming the key."""

    def test_expansion_and_default(self):
        text = "port: ${PORT:-9000}\napi-keys: ['${KEY}']\nopenai-compatibility: [{name: a, base-url: '${BASE}/v1'}]"
        config = parse_config(text, env={"KEY": "secret-1", "BASE": "http://h:1"})
        assert config.port == 9000
        assert config.api_keys == ("secret-1",)
        assert config.vendors[0].base_url == "http://h:1/v1"

    def test_unset_variable_names_the_key(self):
        text = "openai-compatibility: [{name: a, base-url: 'http://x', api-key-entries: [{api-key: '${OR_KEY}'}]}]"
        assert problems(text) == [
            "openai-compatibility[0].api-key-entries[0].api-key: environment variable OR_KEY is not set (use ${OR_KEY:-default} for a default)"
        ]

    def test_empty_key_switches_the_vendor_off(self):
        config = parse_config(
            "openai-compatibility: [{name: a, base-url: 'http://x', api-key-entries: [{api-key: '${K:-}'}]}]", env={}
        )
        assert config.vendors[0].missing_key and not config.vendors[0].routable


class TestProblems:
    """Every problem at once, each with its key path."""

    def test_every_problem_with_its_path(self):
        text = """
port: -1
hots: x
request-retry: "3"
auto-disable: {failure-threshold: -1}
openai-compatibility:
  - name: a
    base-url: http://x/v1
    enabled: true
    disabled: false
    models: [{name: m1}, {name: m1}, {name: m2, alias: 3}]
  - name: a
    models: [{name: m, alais: x}]
"""
        found = problems(text)
        expected_paths = [
            "port:",
            "hots: unknown key; did you mean 'host'?",
            "request-retry:",
            "auto-disable.failure-threshold:",
            "openai-compatibility[0].disabled:",
            "openai-compatibility[0].models[1].name: duplicate name 'm1'",
            "openai-compatibility[0].models[2].alias:",
            "openai-compatibility[1].base-url:",
            "openai-compatibility[1].models[0].alais: unknown key; did you mean 'alias'?",
            "openai-compatibility[1].name: duplicate name 'a'",
        ]
        for prefix in expected_paths:
            assert any(p.startswith(prefix) for p in found), (prefix, found)
        assert len(found) == len(expected_paths)

    def test_yaml_syntax_error_names_the_line(self):
        assert problems("port: [1\n")[0].startswith("line 2")

    def test_bad_url(self):
        assert problems("openai-compatibility: [{name: a, base-url: 'ftp://x'}]") == [
            "openai-compatibility[0].base-url: must be an http:// or https:// URL"
        ]


class TestCheckConfigCommand:
    """`cliproxy check-config` validates only, and a bad file exits non-zero with no traceback."""

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "cliproxy.cli", "check-config", *args],
            capture_output=True,
            text=True,
            timeout=60,
            env={"PATH": "/usr/bin:/bin"},
        )

    def test_shipped_config_is_valid_without_environment(self):
        result = self.run("--config", str(REPO / "config.yaml"))
        assert result.returncode == 0, result.stderr
        assert "OK" in result.stdout

    def test_bad_config_exits_2_with_key_paths(self, tmp_path):
        path = tmp_path / "bad.yaml"
        path.write_text("openai-compatibility:\n  - name: a\n    base-url: http://x\n    models: [{name: m, alias: 3}]\n")
        result = self.run("--config", str(path))
        assert result.returncode == 2
        assert "openai-compatibility[0].models[0].alias: Not a valid string." in result.stderr
        assert "Traceback" not in result.stderr

    def test_missing_file(self, tmp_path):
        result = self.run("--config", str(tmp_path / "none.yaml"))
        assert result.returncode == 2
        assert "cannot read" in result.stderr and "Traceback" not in result.stderr

    def test_load_config_remembers_the_path(self, tmp_path):
        path = tmp_path / "c.yaml"
        path.write_text("port: 1234\n")
        assert load_config(path, env={}).path == str(path)
