"""Config write-back: surgical YAML edits (only the changed lines differ) and the atomic file write."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from cliproxy.services.config_file import FileChanged, _write_temp, atomic_write, read_version, replace_if_unchanged
from cliproxy.services.config_loader import load_config, parse_config
from cliproxy.services.writeback import (
    MissingPath,
    WritebackError,
    dump_scalar,
    edit_yaml,
    model_index,
    model_path,
    switch_edits,
    switch_state,
    vendor_enabled_edits,
    vendor_index,
    vendor_path,
)
from tests.helpers import changed_lines

CLIENT_SECRET = "client-secret-XYZ123456"
UPSTREAM_SECRET = "sk-or-SECRET-98765432"
ENV = {"CLIENT_KEY": CLIENT_SECRET, "OPENROUTER_KEY": UPSTREAM_SECRET, "LOCAL_NAME": "local"}

CONFIG = textwrap.dedent(
    """\
    # cliproxy test config: the comments, quoting and placeholders must all survive an edit.
    host: 127.0.0.1   # loopback only
    port: 8317

    api-keys:
      - ${CLIENT_KEY}       # from the environment

    auto-disable:
      failure-threshold: 5
      count-statuses: [429, "5xx"]   # quoted on purpose

    openai-compatibility:
      # A local server.
      - name: ${LOCAL_NAME}
        base-url: http://127.0.0.1:11434/v1
        models:
          - name: qwen2.5:7b   # upstream id
            alias: qwen

          - name: llama3.1:8b
            enabled: true   # operator's switch
            auto-disable:
              failure-threshold: 3
      - name: 'openrouter'
        base-url: "https://openrouter.ai/api/v1"
        api-key-entries:
          - api-key: ${OPENROUTER_KEY}
        models: [{name: m1}, {name: "m2", alias: two}]
    """
)


def parse(text: str):  # type: ignore[no-untyped-def]
    return parse_config(text, env=ENV)


class TestReplaceInPlace:
    """Changing an existing value rewrites that value and nothing else."""

    def test_one_edit_changes_exactly_one_line(self):
        out = edit_yaml(CONFIG, [(("openai-compatibility", 0, "models", 1, "enabled"), False)])
        removed, added = changed_lines(CONFIG, out)
        assert removed == ["        enabled: true   # operator's switch"]
        assert added == ["        enabled: false   # operator's switch"]

    def test_the_result_is_the_old_config_with_one_value_changed(self):
        before = parse(CONFIG)
        after = parse(edit_yaml(CONFIG, [(("openai-compatibility", 0, "models", 1, "enabled"), False)]))
        local = before.vendors[0]
        models = (local.models[0], replace(local.models[1], enabled=False))
        assert after == replace(before, vendors=(replace(local, models=models), before.vendors[1]))

    def test_placeholders_stay_and_no_environment_secret_is_written(self):
        edits = [
            (("openai-compatibility", 1, "priority"), 3),
            (("openai-compatibility", 1, "base-url"), "https://example.test/v1"),
            (("auto-disable", "failure-threshold"), 7),
            (("port",), 9000),
        ]
        out = edit_yaml(CONFIG, edits)
        assert CLIENT_SECRET not in out and UPSTREAM_SECRET not in out
        assert "- ${CLIENT_KEY}       # from the environment" in out
        assert "- api-key: ${OPENROUTER_KEY}" in out
        assert "- name: ${LOCAL_NAME}" in out
        config = parse(out)
        assert config.api_keys == (CLIENT_SECRET,)
        assert config.vendors[1].api_key_entries[0].api_key == UPSTREAM_SECRET
        assert (config.port, config.auto_disable.failure_threshold, config.vendors[1].priority) == (9000, 7, 3)

    def test_other_lines_keep_their_quoting_and_comments(self):
        out = edit_yaml(CONFIG, [(("port",), 9000)])
        removed, added = changed_lines(CONFIG, out)
        assert (removed, added) == (["port: 8317"], ["port: 9000"])
        assert 'count-statuses: [429, "5xx"]   # quoted on purpose' in out
        assert "- name: 'openrouter'" in out

    def test_a_value_in_a_nested_mapping(self):
        out = edit_yaml(CONFIG, [(("openai-compatibility", 0, "models", 1, "auto-disable", "failure-threshold"), 9)])
        assert changed_lines(CONFIG, out) == (["          failure-threshold: 3"], ["          failure-threshold: 9"])

    def test_a_list_value_becomes_a_flow_sequence(self):
        out = edit_yaml(CONFIG, [(("auto-disable", "count-statuses"), [429, "5xx", 503])])
        assert changed_lines(CONFIG, out) == (
            ['  count-statuses: [429, "5xx"]   # quoted on purpose'],
            ["  count-statuses: [429, 5xx, 503]   # quoted on purpose"],
        )
        assert parse(out).auto_disable.count_statuses == frozenset({429, *range(500, 600)})

    def test_a_block_replaced_by_a_scalar_takes_its_lines_with_it(self):
        out = edit_yaml(CONFIG, [(("api-keys",), [])])
        assert changed_lines(CONFIG, out) == (["api-keys:", "  - ${CLIENT_KEY}       # from the environment"], ["api-keys: []"])

    def test_a_dict_merges_into_an_existing_mapping(self):
        out = edit_yaml(
            CONFIG,
            [(("openai-compatibility", 0, "models", 1, "auto-disable"), {"failure-threshold": 4, "time-window-seconds": 30})],
        )
        removed, added = changed_lines(CONFIG, out)
        assert removed == ["          failure-threshold: 3"]
        assert added == ["          failure-threshold: 4", "          time-window-seconds: 30"]

    @pytest.mark.parametrize(
        "value",
        ["plain", "a, b", "{x}", "x: y", "#hash", "123", "true", "null", "", "multi\nline", "é ü", "- dash", "'q'", '"d"'],
    )
    def test_strings_read_back_unchanged(self, value):
        out = edit_yaml(CONFIG, [(("openai-compatibility", 1, "models", 0, "alias"), value), (("host",), value)])
        config = parse_config(out, env=ENV) if value else None
        if config is not None:  # an empty alias is (rightly) invalid; the YAML still reads back
            assert config.vendors[1].models[0].alias == value
        raw = yaml.safe_load(out)
        assert raw["host"] == value
        assert raw["openai-compatibility"][1]["models"][0]["alias"] == value

    @pytest.mark.parametrize("value", [True, False, 0, -3, 1.5, None, [1, "5xx"], {"a": 1}])
    def test_dump_scalar_round_trips(self, value):
        assert yaml.safe_load(dump_scalar(value)) == value


class TestInsert:
    """A missing key gets one new line at its mapping's indentation, after the mapping's last entry."""

    def test_missing_enabled_adds_exactly_one_line(self):
        out = edit_yaml(CONFIG, [(("openai-compatibility", 0, "models", 0, "enabled"), False)])
        removed, added = changed_lines(CONFIG, out)
        assert (removed, added) == ([], ["        enabled: false"])
        lines = out.splitlines()
        assert lines[lines.index("        enabled: false") - 1] == "        alias: qwen"
        config = parse(out)
        assert [m.enabled for m in config.vendors[0].models] == [False, True]

    def test_missing_key_of_a_vendor(self):
        out = edit_yaml(CONFIG, [(("openai-compatibility", 1, "enabled"), False)])
        assert changed_lines(CONFIG, out) == ([], ["    enabled: false"])
        config = parse(out)
        assert [v.enabled for v in config.vendors] == [True, False]

    def test_missing_parents_are_created(self):
        out = edit_yaml(CONFIG, [(("openai-compatibility", 0, "models", 0, "auto-disable", "failure-threshold"), 2)])
        assert changed_lines(CONFIG, out) == ([], ["        auto-disable:", "          failure-threshold: 2"])
        assert parse(out).vendors[0].models[0].auto_disable.failure_threshold == 2

    def test_missing_top_level_key_goes_to_the_end(self):
        out = edit_yaml(CONFIG, [(("request-retry",), 1)])
        assert changed_lines(CONFIG, out) == ([], ["request-retry: 1"])
        assert parse(out).request_retry == 1

    def test_a_null_value_becomes_a_flow_mapping(self):
        text = "openai-compatibility:\n  - name: v\n    base-url: http://x\n    auto-disable:\n"
        out = edit_yaml(text, [(("openai-compatibility", 0, "auto-disable", "failure-threshold"), 2)])
        assert changed_lines(text, out) == (["    auto-disable:"], ["    auto-disable: {failure-threshold: 2}"])

    def test_crlf_file_keeps_its_line_breaks(self):
        text = CONFIG.replace("\n", "\r\n")
        out = edit_yaml(
            text,
            [
                (("openai-compatibility", 0, "models", 0, "enabled"), False),
                (("api-keys",), []),
                (("openai-compatibility", 0, "models", 1, "auto-disable", "failure-threshold"), None),
            ],
        )
        assert "\n" not in out.replace("\r\n", "")
        assert out.replace("\r\n", "\n") == edit_yaml(
            CONFIG,
            [
                (("openai-compatibility", 0, "models", 0, "enabled"), False),
                (("api-keys",), []),
                (("openai-compatibility", 0, "models", 1, "auto-disable", "failure-threshold"), None),
            ],
        )

    def test_file_without_final_newline(self):
        text = "port: 1"
        assert edit_yaml(text, [(("host",), "h")]) == "port: 1\nhost: h\n"


class TestFlowStyle:
    """Entries written as flow mappings (`{name: m1}`) are edited inside that flow mapping."""

    def test_insert_into_flow_mapping(self):
        out = edit_yaml(CONFIG, [(("openai-compatibility", 1, "models", 0, "enabled"), False)])
        assert changed_lines(CONFIG, out) == (
            ['    models: [{name: m1}, {name: "m2", alias: two}]'],
            ['    models: [{name: m1, enabled: false}, {name: "m2", alias: two}]'],
        )
        assert [m.enabled for m in parse(out).vendors[1].models] == [False, True]

    def test_replace_and_remove_in_flow_mapping(self):
        out = edit_yaml(CONFIG, [(("openai-compatibility", 1, "models", 1, "alias"), "deux")])
        assert '{name: "m2", alias: deux}' in out
        out = edit_yaml(out, [(("openai-compatibility", 1, "models", 1, "alias"), None)])
        assert 'models: [{name: m1}, {name: "m2"}]' in out
        assert parse(out).vendors[1].models[1].alias is None

    def test_empty_flow_mapping(self):
        out = edit_yaml("a: {}\n", [(("a", "b"), 1)])
        assert out == "a: {b: 1}\n"


class TestRemove:
    """A value of None removes the key's line(s); a missing key stays missing."""

    def test_remove_a_key_line(self):
        out = edit_yaml(CONFIG, [(("openai-compatibility", 0, "models", 1, "enabled"), None)])
        assert changed_lines(CONFIG, out) == (["        enabled: true   # operator's switch"], [])

    def test_remove_a_nested_block(self):
        out = edit_yaml(CONFIG, [(("openai-compatibility", 0, "models", 1, "auto-disable"), None)])
        assert changed_lines(CONFIG, out) == (["        auto-disable:", "          failure-threshold: 3"], [])

    def test_removing_the_last_key_of_a_mapping_leaves_an_empty_mapping(self):
        out = edit_yaml(CONFIG, [(("openai-compatibility", 0, "models", 1, "auto-disable", "failure-threshold"), None)])
        assert changed_lines(CONFIG, out) == (
            ["        auto-disable:", "          failure-threshold: 3"],
            ["        auto-disable: {}"],
        )
        assert parse(out).vendors[0].models[1].auto_disable.failure_threshold is None

    def test_remove_the_first_key_of_a_list_entry(self):
        text = "xs:\n  - enabled: false\n    name: m\n"
        assert edit_yaml(text, [(("xs", 0, "enabled"), None)]) == "xs:\n  - name: m\n"

    def test_removing_a_missing_key_changes_nothing(self):
        assert edit_yaml(CONFIG, [(("openai-compatibility", 0, "priority"), None)]) == CONFIG


class TestMissingPaths:
    """Paths that do not exist raise instead of writing something somewhere else."""

    @pytest.mark.parametrize(
        "path",
        [
            ("openai-compatibility", 2, "enabled"),
            ("openai-compatibility", -1, "enabled"),
            ("openai-compatibility", 0, "models", 5, "enabled"),
            ("host", "x"),
            ("auto-disable", 0),
            ("no-such-list", 0, "enabled"),
        ],
    )
    def test_raises(self, path):
        with pytest.raises(MissingPath):
            edit_yaml(CONFIG, [(path, False)])

    def test_not_yaml(self):
        with pytest.raises(WritebackError):
            edit_yaml("a: [unclosed\n", [(("a",), 1)])

    def test_removing_list_entries_is_refused(self):
        with pytest.raises(WritebackError):
            edit_yaml(CONFIG, [(("openai-compatibility", 0), None)])


class TestLookups:
    """Vendors and models are found by name in the raw text, so an edit lands on the right list entry."""

    def test_vendor_and_model_indexes(self):
        assert vendor_index(CONFIG, "openrouter") == 1
        assert vendor_index(CONFIG, "local", env=ENV) == 0  # `name: ${LOCAL_NAME}`
        assert model_index(CONFIG, "openrouter", "m2") == 1
        assert model_index(CONFIG, "local", "llama3.1:8b", env=ENV) == 1
        assert vendor_path(CONFIG, "openrouter") == ("openai-compatibility", 1)
        assert model_path(CONFIG, "openrouter", "m1") == ("openai-compatibility", 1, "models", 0)

    def test_unknown_names_raise(self):
        with pytest.raises(MissingPath):
            vendor_index(CONFIG, "nope")
        with pytest.raises(MissingPath):
            model_index(CONFIG, "openrouter", "qwen2.5:7b")
        with pytest.raises(MissingPath):
            vendor_index("port: 1\n", "openrouter")

    def test_vendor_enabled_keeps_cliproxyapi_spelling(self):
        text = "openai-compatibility:\n  - name: a\n    base-url: http://a\n    disabled: true\n"
        edits = vendor_enabled_edits(text, "a", True)
        assert edits == [(("openai-compatibility", 0, "disabled"), False)]
        assert parse_config(edit_yaml(text, edits), env={}).vendors[0].enabled is True
        assert vendor_enabled_edits(CONFIG, "openrouter", False) == [(("openai-compatibility", 1, "enabled"), False)]


class TestAtomicWrite:
    """The file is replaced whole or not at all, keeping its mode."""

    def test_replaces_content_and_keeps_mode(self, tmp_path):
        target = tmp_path / "config.yaml"
        target.write_text(CONFIG)
        target.chmod(0o640)
        atomic_write(target, "port: 1\n")
        assert target.read_text() == "port: 1\n"
        assert stat.S_IMODE(target.stat().st_mode) == 0o640
        assert os.listdir(tmp_path) == ["config.yaml"]  # no temporary file left behind

    def test_symlink_target_is_replaced_and_link_kept(self, tmp_path):
        real = tmp_path / "real.yaml"
        real.write_text("port: 1\n")
        link = tmp_path / "config.yaml"
        link.symlink_to(real)
        atomic_write(link, "port: 2\n")
        assert link.is_symlink() and real.read_text() == "port: 2\n"

    def test_stopping_before_the_rename_leaves_the_old_file_whole(self, tmp_path):
        target = tmp_path / "config.yaml"
        target.write_text(CONFIG)
        new_text = edit_yaml(CONFIG, [(("port",), 9000)])
        temp = _write_temp(str(target), new_text)  # the first half of atomic_write; no rename
        assert target.read_text() == CONFIG
        assert Path(temp).read_text() == new_text and Path(temp).parent == tmp_path
        assert load_config(target, env=ENV).port == 8317

    def test_process_killed_before_the_rename_leaves_the_old_file_whole(self, tmp_path):
        target = tmp_path / "config.yaml"
        target.write_text(CONFIG)
        # A real crash: the child process dies (os._exit, no cleanup) at the moment it would rename.
        child = textwrap.dedent(
            """
            import os, sys
            from cliproxy.services import config_file
            os.replace = lambda *args: os._exit(17)
            config_file.atomic_write(sys.argv[1], "port: 9000\\n" * 1000)
            """
        )
        result = subprocess.run([sys.executable, "-c", child, str(target)], cwd=Path(__file__).parent.parent, timeout=30)
        assert result.returncode == 17
        assert target.read_text() == CONFIG
        assert load_config(target, env=ENV) == parse(CONFIG)
        leftovers = [p for p in tmp_path.iterdir() if p.name != "config.yaml"]
        assert len(leftovers) == 1 and leftovers[0].read_text() == "port: 9000\n" * 1000  # whole, never renamed


SWITCHES = textwrap.dedent(
    """\
    openai-compatibility:
      - name: plain        # no switch line
        base-url: http://127.0.0.1:1/v1
        models:
          - name: m1
          - name: m2
            enabled: true   # written by the operator
      - name: legacy
        base-url: http://127.0.0.1:2/v1
        disabled: false    # CLIProxyAPI's spelling
        models: [{name: m3}]
      - name: shut
        base-url: http://127.0.0.1:3/v1
        disabled: true
        models: [{name: m4}]
    """
)


class TestSwitchEdits:
    """Off writes the switch in the file's spelling; on removes the off line again (unless the file said on)."""

    def switched(self, text, vendor, model, enabled, **kw):
        return edit_yaml(text, switch_edits(text, vendor, model, enabled, **kw))

    def test_off_then_on_gives_back_the_original_bytes(self):
        for vendor, model in (("plain", None), ("plain", "m1")):
            off = self.switched(SWITCHES, vendor, model, False)
            assert changed_lines(SWITCHES, off)[0] == [] and len(changed_lines(SWITCHES, off)[1]) == 1
            assert self.switched(off, vendor, model, True) == SWITCHES

    def test_an_explicit_on_line_is_written_back_when_asked_to_keep_it(self):
        assert switch_state(SWITCHES, "plain", "m2") is True and switch_state(SWITCHES, "plain", "m1") is None
        assert switch_state(SWITCHES, "legacy") is True and switch_state(SWITCHES, "shut") is False
        for vendor, model in (("plain", "m2"), ("legacy", None)):
            off = self.switched(SWITCHES, vendor, model, False)
            assert parse(off) != parse(SWITCHES)
            assert self.switched(off, vendor, model, True, keep_line=True) == SWITCHES
            assert self.switched(off, vendor, model, True) != SWITCHES  # removed: on by omission

    def test_cliproxyapi_disabled_true_is_removed_when_switched_on(self):
        on = self.switched(SWITCHES, "shut", None, True)
        assert changed_lines(SWITCHES, on) == (["    disabled: true"], [])
        assert [v.enabled for v in parse(on).vendors] == [True, True, True]
        assert switch_edits(on, "plain", "m1", True) == []  # already on by omission: nothing to write


class TestCompareAndSwap:
    """`replace_if_unchanged` writes only over the version its text was computed from."""

    def test_unchanged_file_is_replaced(self, tmp_path):
        target = tmp_path / "config.yaml"
        target.write_text(CONFIG)
        text, version = read_version(target)
        assert text == CONFIG
        replace_if_unchanged(target, version, "port: 2\n")
        assert target.read_text() == "port: 2\n"

    def test_a_save_renamed_into_place_meanwhile_is_kept(self, tmp_path):
        target = tmp_path / "config.yaml"
        target.write_text(CONFIG)
        _, version = read_version(target)
        atomic_write(target, "port: 7\n")  # the operator's editor saves (temp + rename)
        with pytest.raises(FileChanged):
            replace_if_unchanged(target, version, "port: 2\n")
        assert target.read_text() == "port: 7\n"
        assert [p.name for p in tmp_path.iterdir()] == ["config.yaml"]  # the temporary file is gone

    def test_a_same_size_rewrite_in_place_within_one_timestamp_is_kept(self, tmp_path):
        target = tmp_path / "config.yaml"
        target.write_text("port: 1\n")
        _, version = read_version(target)
        with open(target, "r+") as handle:  # same inode, same size
            handle.write("port: 9\n")
        os.utime(target, ns=(version.mtime_ns, version.mtime_ns))  # a coarse clock: same mtime
        with pytest.raises(FileChanged):
            replace_if_unchanged(target, version, "port: 2\n")
        assert target.read_text() == "port: 9\n"

    def test_a_file_created_meanwhile_is_kept(self, tmp_path):
        target = tmp_path / "config.yaml"
        target.write_text("port: 5\n")
        with pytest.raises(FileChanged):
            replace_if_unchanged(target, None, "port: 2\n")  # computed when there was no file
        assert target.read_text() == "port: 5\n"
