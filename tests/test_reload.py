"""Hot reload and write-back through the real app: real config files, fake upstreams, the SQLite store."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from cliproxy.app import create_app
from cliproxy.core.errors import InvalidRequest, NotFound
from cliproxy.fake_upstream import Fault
from cliproxy.services.config_file import atomic_write
from cliproxy.services.config_loader import load_config
from cliproxy.services.config_manager import ConfigChanged, ConfigManager, ConfigRejected, NoConfigFile
from cliproxy.services.writeback import model_path, vendor_enabled_edits
from cliproxy.web.keys import CONFIG_MANAGER, JOURNAL, RUNTIME, STORE, TRACKER
from tests.helpers import Gateway, changed_lines, eventually, vendor
from tests.processes import GatewayProcess, free_port

PAIR = ("v", "m")
NO_WATCHER = 3600.0  # a poll interval that keeps the watcher out of tests that reload by hand


def write_yaml(path: Path, data: dict[str, Any]) -> None:
    path.write_text(yaml.safe_dump(data, sort_keys=False))


class Files:
    """The config file of one test, written from dicts."""

    def __init__(self, tmp_path: Path) -> None:
        self.path = tmp_path / "config.yaml"
        self.database = str(tmp_path / "cliproxy.db")

    def write(self, data: dict[str, Any]) -> None:
        write_yaml(self.path, {"database": self.database, **data})


@pytest.fixture
def files(tmp_path: Path) -> Files:
    return Files(tmp_path)


@pytest.fixture
def start(gateway: Callable[..., Awaitable[Gateway]], files: Files) -> Callable[..., Awaitable[Gateway]]:
    """Write the config file, load it like `cliproxy serve` does, start the real app on it."""

    async def start_(data: dict[str, Any], *, poll_interval: float = NO_WATCHER, **kwargs: Any) -> Gateway:
        files.write(data)
        app = create_app(load_config(files.path))
        app[CONFIG_MANAGER].poll_interval = poll_interval
        return await gateway(app[RUNTIME].current.config, app=app, **kwargs)

    return start_


def manager(gw: Gateway) -> ConfigManager:
    return gw.app[CONFIG_MANAGER]


async def chat(gw: Gateway, model: str = "m", key: str | None = None) -> int:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    resp = await gw.client.post(
        "/v1/chat/completions", json={"model": model, "messages": [{"role": "user", "content": "hi"}]}, headers=headers
    )
    await resp.read()
    return resp.status


async def events(gw: Gateway, kind: str) -> list[Any]:
    await gw.app[TRACKER].flush(timeout=5)  # audit events are queued on the tracker's writer
    return await gw.app[STORE].events(kind=kind)


async def until(condition: Callable[[], Awaitable[bool]], seconds: float = 3.0) -> float:
    """Poll `condition` until it holds; returns the seconds it took. Fails after `seconds`."""
    began = time.monotonic()
    await eventually(condition, timeout=seconds)
    return time.monotonic() - began


class TestFileWatching:
    """Edits to the file take effect within 2 seconds, with the default poll interval."""

    async def test_edit_on_disk_routes_by_the_new_config(self, start, files, upstreams):
        first, second = await upstreams(), await upstreams()
        gw = await start({"openai-compatibility": [vendor("v", first.url, ["m"])]}, poll_interval=0.5)
        assert await chat(gw) == 200 and first.request_count == 1
        files.write({"openai-compatibility": [vendor("v", second.url, ["m"])]})

        async def on_second() -> bool:
            return await chat(gw) == 200 and second.request_count > 0

        assert await until(on_second) < 2.0
        reloaded = await events(gw, "config-reloaded")
        assert len(reloaded) == 1 and reloaded[0].detail["reason"] == "file-changed"

    async def test_invalid_edit_on_disk_is_rejected_and_old_config_serves(self, start, files, upstreams):
        up = await upstreams()
        gw = await start({"openai-compatibility": [vendor("v", up.url, ["m"])]}, poll_interval=0.05)
        files.write({"openai-compatibility": [vendor("v", up.url, ["m"], priorty=1)]})

        async def rejected() -> bool:
            return bool(await events(gw, "config-rejected"))

        await until(rejected)
        assert manager(gw).last_error == ["openai-compatibility[0].priorty: unknown key; did you mean 'priority'?"]
        assert await chat(gw) == 200
        files.write({"openai-compatibility": [vendor("v", up.url, ["m"], priority=1)]})

        async def recovered() -> bool:
            return manager(gw).last_error is None

        await until(recovered)
        assert gw.app[RUNTIME].current.config.vendors[0].priority == 1

    async def test_touching_the_file_is_not_a_reload(self, start, files, upstreams):
        up = await upstreams()
        gw = await start({"openai-compatibility": [vendor("v", up.url, ["m"])]}, poll_interval=0.02)
        before = gw.app[RUNTIME].current
        os.utime(files.path, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
        await asyncio.sleep(0.1)
        assert gw.app[RUNTIME].current is before
        assert await events(gw, "config-reloaded") == []

    async def test_own_edits_do_not_trigger_a_second_reload(self, start, files, upstreams):
        up = await upstreams()
        gw = await start({"openai-compatibility": [vendor("v", up.url, ["m", "n"])]}, poll_interval=0.02)
        mgr = manager(gw)
        text = mgr.read_text()
        await mgr.apply_edits([((*model_path(text, "v", "n"), "enabled"), False)], actor="127.0.0.1", kind="model-changed")
        await asyncio.sleep(0.1)  # five polls
        assert await events(gw, "config-reloaded") == []
        assert len(await events(gw, "model-changed")) == 1


class TestReload:
    """A reload validates first, swaps the whole runtime, and records what happened."""

    async def test_invalid_file_keeps_running_config_and_records_every_problem(self, start, files, upstreams, caplog):
        up = await upstreams()
        gw = await start({"openai-compatibility": [vendor("v", up.url, ["m"])]})
        running = gw.app[RUNTIME].current
        files.write({"port": "eighty", "openai-compatibility": [vendor("v", "ftp://x", ["m"])]})
        with caplog.at_level(logging.WARNING, logger="cliproxy.reload"):
            assert await manager(gw).reload(reason="test") is False
        problems = ["port: Not a valid integer.", "openai-compatibility[0].base-url: must be an http:// or https:// URL"]
        assert sorted(manager(gw).last_error or []) == sorted(problems)
        assert gw.app[RUNTIME].current is running
        assert await chat(gw) == 200
        [event] = await events(gw, "config-rejected")
        assert event.detail == {"problems": manager(gw).last_error, "reason": "test"}
        logged = "\n".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
        assert all(problem in logged for problem in problems)

    async def test_yaml_syntax_error_and_missing_file_are_rejected(self, start, files, upstreams):
        up = await upstreams()
        gw = await start({"openai-compatibility": [vendor("v", up.url, ["m"])]})
        files.path.write_text("openai-compatibility: [\n")
        assert await manager(gw).reload(reason="test") is False
        assert "YAML syntax error" in (manager(gw).last_error or [""])[0]
        files.path.unlink()
        assert await manager(gw).reload(reason="test") is False
        assert "cannot read" in (manager(gw).last_error or [""])[0]
        assert await chat(gw) == 200

    async def test_unchanged_content_is_a_no_op(self, start, upstreams):
        up = await upstreams()
        gw = await start({"openai-compatibility": [vendor("v", up.url, ["m"])]})
        running = gw.app[RUNTIME].current
        assert await manager(gw).reload(reason="test") is True
        assert gw.app[RUNTIME].current is running
        assert await events(gw, "config-reloaded") == []

    async def test_reload_log_lines_carry_the_event_fields(self, start, files, upstreams, caplog):
        up = await upstreams()
        gw = await start({"openai-compatibility": [vendor("v", up.url, ["m"])]})
        files.write({"port": -1, "openai-compatibility": [vendor("v", up.url, ["m"])]})
        with caplog.at_level(logging.INFO, logger="cliproxy.reload"):
            assert await manager(gw).reload(reason="test") is False
            files.write({"openai-compatibility": [vendor("v", up.url, ["m", "n"])]})
            assert await manager(gw).reload(reason="test") is True
        fields = [r.cliproxy_event for r in caplog.records if hasattr(r, "cliproxy_event")]
        assert [f["event"] for f in fields] == ["config-rejected", "config-reloaded"]
        assert fields[0]["detail"]["problems"] == ["port: Must be greater than or equal to 1 and less than or equal to 65535."]
        assert fields[1]["detail"]["pairs"] == 2

    async def test_secrets_never_reach_the_problems(self, start, files, upstreams, monkeypatch, caplog):
        secret = "live-upstream-secret-0123456789"
        monkeypatch.setenv("UP_KEY", secret)
        up = await upstreams()
        keyed = {**vendor("v", up.url, ["m"]), "api-key-entries": [{"api-key": "${UP_KEY}"}]}
        gw = await start({"openai-compatibility": [keyed]})
        # A mistake that makes the loader quote the expanded value back.
        files.write({"auto-disable": {"count-statuses": ["${UP_KEY}"]}, "openai-compatibility": [keyed]})
        with caplog.at_level(logging.DEBUG):
            assert await manager(gw).reload(reason="test") is False
        assert manager(gw).last_error == ["auto-disable.count-statuses: '***' is not an HTTP status or class like '5xx'"]
        [event] = await events(gw, "config-rejected")
        assert secret not in repr(event) and secret not in caplog.text

    async def test_host_port_database_changes_say_they_need_a_restart(self, start, files, upstreams, caplog):
        up = await upstreams()
        gw = await start({"port": 8317, "openai-compatibility": [vendor("v", up.url, ["m"])]})
        files.write({"port": 8318, "openai-compatibility": [vendor("v", up.url, ["m"])]})
        with caplog.at_level(logging.WARNING, logger="cliproxy.reload"):
            assert await manager(gw).reload(reason="test") is True
        [event] = await events(gw, "config-reloaded")
        assert event.detail == {"reason": "test", "vendors": 1, "pairs": 1, "restart_required": ["port"]}
        assert manager(gw).restart_required == ["port"]
        assert "port take effect only after a restart" in caplog.text

    async def test_a_locked_store_does_not_block_a_reload(self, start, files, upstreams):
        first, second = await upstreams(), await upstreams()
        gw = await start({"openai-compatibility": [vendor("v", first.url, ["m"])]})
        lock = sqlite3.connect(gw.app[RUNTIME].current.config.database, isolation_level=None)
        lock.execute("BEGIN EXCLUSIVE")  # another process holds the database
        try:
            files.write({"openai-compatibility": [vendor("v", second.url, ["m"])]})
            assert await asyncio.wait_for(manager(gw).reload(reason="test"), 1.0) is True
            assert await chat(gw) == 200 and second.request_count == 1
            assert gw.app[JOURNAL].pending_writes == 1  # the event waits in the queue
        finally:
            lock.execute("ROLLBACK")
            lock.close()
        assert len(await events(gw, "config-reloaded")) == 1  # and lands once the database is free

    async def test_requests_in_flight_finish_on_their_config(self, start, files, upstreams):
        up = await upstreams(chunks=4, chunk_delay=0.05)
        gw = await start({"openai-compatibility": [vendor("v", up.url, ["m"])]})
        stream = await gw.sdk.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], stream=True)
        pieces = [await stream.__anext__()]
        files.write({"openai-compatibility": [vendor("v", up.url, ["other"])]})
        assert await manager(gw).reload(reason="test") is True
        pieces += [chunk async for chunk in stream]
        assert sum(1 for c in pieces if c.choices and c.choices[0].delta.content) == 4
        assert await chat(gw, "m") == 404
        assert await chat(gw, "other") == 200


class TestSighup:
    """SIGHUP runs the same reload; the signal handler is `request_reload`."""

    async def test_sighup_handler_reloads(self, start, files, upstreams):
        first, second = await upstreams(), await upstreams()
        gw = await start({"openai-compatibility": [vendor("v", first.url, ["m"])]})
        files.write({"openai-compatibility": [vendor("v", second.url, ["m"])]})
        assert await manager(gw).request_reload("SIGHUP") is True
        assert await chat(gw) == 200 and second.request_count == 1
        [event] = await events(gw, "config-reloaded")
        assert event.detail["reason"] == "SIGHUP"

    async def test_sighup_without_a_file_does_nothing(self, gateway, upstreams):
        up = await upstreams()
        gw = await gateway({"openai-compatibility": [vendor("v", up.url, ["m"])]})
        assert manager(gw).path is None
        assert await manager(gw).request_reload("SIGHUP") is False
        with pytest.raises(NoConfigFile):
            await manager(gw).apply_edits([(("port",), 1)], actor="x", kind="vendor-changed")
        with pytest.raises(NoConfigFile):
            manager(gw).read_text()


class TestStateAcrossReloads:
    """Failure counts and disables survive a reload; new thresholds apply from the next failure."""

    async def test_counts_survive_and_new_threshold_applies_from_next_failure(self, start, files, upstreams):
        up = await upstreams()
        up.fail("m", Fault(status=503))
        data = {
            "request-retry": 0,
            "auto-disable": {"failure-threshold": 3},
            "openai-compatibility": [vendor("v", up.url, ["m"])],
        }
        gw = await start(data)
        tracker = gw.app[TRACKER]
        assert [await chat(gw), await chat(gw)] == [503, 503]
        assert tracker.state(PAIR).failure_count == 2
        files.write({**data, "auto-disable": {"failure-threshold": 2}})
        assert await manager(gw).reload(reason="test") is True
        assert tracker.settings_for(PAIR).failure_threshold == 2
        assert tracker.state(PAIR).failure_count == 2 and tracker.is_available(PAIR)
        await chat(gw)
        assert not tracker.is_available(PAIR)

    async def test_disabled_pair_stays_disabled(self, start, files, upstreams):
        up = await upstreams()
        up.fail("m", Fault(status=503))
        data = {
            "request-retry": 0,
            "auto-disable": {"failure-threshold": 1},
            "openai-compatibility": [vendor("v", up.url, ["m"])],
        }
        gw = await start(data)
        await chat(gw)
        tracker = gw.app[TRACKER]
        disabled_until = tracker.state(PAIR).disabled_until
        assert disabled_until is not None
        files.write({**data, "openai-compatibility": [vendor("v", up.url, ["m", "n"])]})
        assert await manager(gw).reload(reason="test") is True
        assert not tracker.is_available(PAIR) and tracker.state(PAIR).disabled_until == disabled_until
        assert up.request_count == 1
        assert await chat(gw) == 503 and up.request_count == 1  # not tried: still disabled

    async def test_removed_client_key_is_refused(self, start, files, upstreams):
        up = await upstreams()
        data = {"api-keys": ["key-one", "key-two"], "openai-compatibility": [vendor("v", up.url, ["m"])]}
        gw = await start(data)
        assert await chat(gw, key="key-two") == 200
        files.write({**data, "api-keys": ["key-one"]})
        assert await manager(gw).reload(reason="test") is True
        assert await chat(gw, key="key-two") == 401
        assert await chat(gw, key="key-one") == 200


class TestApplyEdits:
    """Management changes are written to the file (only the changed line), swapped in, recorded once."""

    async def test_vendor_switched_off(self, start, files, upstreams):
        up = await upstreams()
        gw = await start({"openai-compatibility": [vendor("v", up.url, ["m"])]})
        mgr = manager(gw)
        before = files.path.read_text()
        config = await mgr.apply_edits(
            vendor_enabled_edits(before, "v", False),
            actor="127.0.0.1",
            kind="vendor-changed",
            vendor="v",
            detail={"enabled": False},
        )
        assert changed_lines(before, files.path.read_text()) == ([], ["  enabled: false"])
        assert config.vendors[0].enabled is False and gw.app[RUNTIME].current.config is config
        assert await chat(gw) == 503
        [event] = await events(gw, "vendor-changed")
        assert (event.actor, event.vendor, event.model, event.detail) == ("127.0.0.1", "v", None, {"enabled": False})
        assert await events(gw, "config-reloaded") == []

    async def test_invalid_result_is_refused_and_nothing_written(self, start, files, upstreams):
        up = await upstreams()
        gw = await start({"openai-compatibility": [vendor("v", up.url, ["m"])]})
        before = files.path.read_text()
        running = gw.app[RUNTIME].current
        with pytest.raises(ConfigRejected) as caught:
            await manager(gw).apply_edits(
                [(("openai-compatibility", 0, "base-url"), "nope"), (("port",), 0)], actor="127.0.0.1", kind="vendor-changed"
            )
        assert isinstance(caught.value, InvalidRequest) and caught.value.status == 400
        assert sorted(caught.value.problems) == [
            "openai-compatibility[0].base-url: must be an http:// or https:// URL",
            "port: Must be greater than or equal to 1 and less than or equal to 65535.",
        ]
        assert files.path.read_text() == before and gw.app[RUNTIME].current is running
        assert await events(gw, "vendor-changed") == []

    async def test_path_not_in_file_is_not_found(self, start, upstreams):
        up = await upstreams()
        gw = await start({"openai-compatibility": [vendor("v", up.url, ["m"])]})
        with pytest.raises(NotFound):
            await manager(gw).apply_edits([(("openai-compatibility", 3, "enabled"), False)], actor="x", kind="vendor-changed")

    async def test_edits_computed_from_the_current_text_under_the_lock(self, start, files, upstreams):
        up = await upstreams()
        gw = await start({"openai-compatibility": [vendor("v", up.url, ["m"]), vendor("w", up.url, ["n"])]})
        config = await manager(gw).apply_edits(
            lambda text: vendor_enabled_edits(text, "w", False), actor="x", kind="vendor-changed", vendor="w"
        )
        assert [v.enabled for v in config.vendors] == [True, False]
        with pytest.raises(NotFound):
            await manager(gw).apply_edits(
                lambda text: vendor_enabled_edits(text, "gone", False), actor="x", kind="vendor-changed"
            )

    async def test_edit_that_changes_nothing_writes_nothing_but_is_recorded(self, start, files, upstreams):
        up = await upstreams()
        gw = await start({"openai-compatibility": [vendor("v", up.url, ["m"], enabled=True)]})
        stat_before = files.path.stat()
        await manager(gw).apply_edits(
            [(("openai-compatibility", 0, "enabled"), True)], actor="x", kind="manual-enable", vendor="v", model="m"
        )
        assert files.path.stat().st_mtime_ns == stat_before.st_mtime_ns
        [event] = await events(gw, "manual-enable")
        assert event.detail == {"config_changed": False} and event.model == "m"

    async def test_concurrent_edits_are_serialised(self, start, files, upstreams):
        up = await upstreams()
        gw = await start({"openai-compatibility": [vendor("v", up.url, ["a", "b", "c", "d"])]})
        mgr = manager(gw)
        await asyncio.gather(
            *(
                mgr.apply_edits([(("openai-compatibility", 0, "models", i, "enabled"), False)], actor="x", kind="model-changed")
                for i in range(4)
            )
        )
        assert [m.enabled for m in load_config(files.path).vendors[0].models] == [False] * 4
        assert [m.enabled for m in gw.app[RUNTIME].current.config.vendors[0].models] == [False] * 4


class TestReplaceText:
    """PUT of the whole file: validated first, then written, swapped and recorded with the caller."""

    async def test_valid_text_replaces_the_file(self, start, files, upstreams):
        first, second = await upstreams(), await upstreams()
        gw = await start({"openai-compatibility": [vendor("v", first.url, ["m"])]})
        text = f"# new\ndatabase: {files.database}\nopenai-compatibility:\n  - name: w\n    base-url: {second.url}\n    models: [{{name: m}}]\n"
        config = await manager(gw).replace_text(text, actor="127.0.0.1")
        assert files.path.read_text() == text and config.vendors[0].name == "w"
        assert await chat(gw) == 200 and second.request_count == 1
        [event] = await events(gw, "config-reloaded")
        assert event.actor == "127.0.0.1"
        assert event.detail == {"reason": "api", "vendors": 1, "pairs": 1, "vendors_added": ["w"], "vendors_removed": ["v"]}

    async def test_invalid_text_is_refused_with_every_problem(self, start, files, upstreams):
        up = await upstreams()
        gw = await start({"openai-compatibility": [vendor("v", up.url, ["m"])]})
        before = files.path.read_text()
        with pytest.raises(ConfigRejected) as caught:
            await manager(gw).replace_text("port: x\nhots: 1\n", actor="127.0.0.1")
        assert len(caught.value.problems) == 2
        assert files.path.read_text() == before
        assert await events(gw, "config-reloaded") == []


BILLION_LAUGHS = """\
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
"""


def backdate(path: Path, seconds: float = 60.0) -> None:
    """Make a file look saved a while ago (it has held still: no settle wait)."""
    then = time.time() - seconds
    os.utime(path, (then, then))


def three_vendors(url: str) -> dict[str, Any]:
    return {"openai-compatibility": [vendor("v", url, ["m"]), vendor("w", url, ["n"]), vendor("x", url, ["o"])]}


class TestOperatorsFileWins:
    """An API change never saves a half-written file and never overwrites an operator's save (issue 11)."""

    async def test_a_file_cut_by_an_editor_mid_save_is_not_saved(self, start, files, upstreams):
        up = await upstreams()
        gw = await start(three_vendors(up.url))
        whole = files.path.read_text()
        cut = whole[: whole.index("- name: w")]  # in-place rewrite caught after vendor v: valid YAML, valid config
        files.path.write_text(cut)
        running = gw.app[RUNTIME].current

        async def editor_finishes() -> None:
            await asyncio.sleep(0.1)
            with open(files.path, "a") as handle:
                handle.write(whole[len(cut) :])

        finishing = asyncio.create_task(editor_finishes())
        with pytest.raises(ConfigChanged) as caught:
            await manager(gw).apply_edits(lambda text: vendor_enabled_edits(text, "v", False), actor="x", kind="vendor-changed")
        await finishing
        assert caught.value.status == 409 and caught.value.code == "config_changed"
        assert files.path.read_text() == whole and gw.app[RUNTIME].current is running
        assert await events(gw, "vendor-changed") == []
        # retried once the save is whole: every vendor is still there
        backdate(files.path)
        config = await manager(gw).apply_edits(
            lambda text: vendor_enabled_edits(text, "v", False), actor="x", kind="vendor-changed"
        )
        assert [(v.name, v.enabled) for v in config.vendors] == [("v", False), ("w", True), ("x", True)]

    async def test_a_file_still_being_written_gives_409_and_loses_nothing(self, start, files, upstreams):
        up = await upstreams()
        gw = await start(three_vendors(up.url))
        writing = True

        async def editor() -> None:
            n = 0
            while writing:
                with open(files.path, "a") as handle:
                    handle.write(f"# line {n}\n")
                n += 1
                await asyncio.sleep(0.02)

        task = asyncio.create_task(editor())
        try:
            with pytest.raises(ConfigChanged):
                await manager(gw).apply_edits([(("openai-compatibility", 0, "enabled"), False)], actor="x", kind="vendor-changed")
        finally:
            writing = False
            await task
        text = files.path.read_text()
        assert "enabled: false" not in text and "# line 0\n" in text
        assert gw.app[RUNTIME].current.config.vendors[0].enabled is True

    async def test_a_changed_file_that_does_not_validate_gives_409(self, start, files, upstreams):
        up = await upstreams()
        gw = await start(three_vendors(up.url))
        whole = files.path.read_text()
        cut = whole[: whole.index("base-url", whole.index("- name: w"))]  # vendor w has no base-url yet
        files.path.write_text(cut)
        backdate(files.path)
        with pytest.raises(ConfigChanged) as caught:
            await manager(gw).apply_edits([(("port",), 9000)], actor="x", kind="vendor-changed")
        assert "base-url" in caught.value.message and "sk-" not in caught.value.message
        assert files.path.read_text() == cut
        assert [v.name for v in gw.app[RUNTIME].current.config.vendors] == ["v", "w", "x"]

    async def test_a_changed_complete_file_is_loaded_first_then_edited(self, start, files, upstreams):
        up = await upstreams()
        gw = await start({"openai-compatibility": [vendor("v", up.url, ["m"])]})
        files.write(three_vendors(up.url))  # the operator added two vendors; the watcher has not run yet
        operator = files.path.read_text()
        backdate(files.path)
        config = await manager(gw).apply_edits(
            lambda text: vendor_enabled_edits(text, "x", False), actor="x", kind="vendor-changed"
        )
        assert [(v.name, v.enabled) for v in config.vendors] == [("v", True), ("w", True), ("x", False)]
        assert changed_lines(operator, files.path.read_text()) == ([], ["  enabled: false"])
        [reloaded] = await events(gw, "config-reloaded")
        assert reloaded.detail["reason"] == "file-changed" and reloaded.detail["vendors_added"] == ["w", "x"]

    async def test_a_save_between_read_and_rename_is_kept_and_the_edit_redone_on_it(self, start, files, upstreams):
        up = await upstreams()
        gw = await start(three_vendors(up.url))
        operator = files.path.read_text().replace("- name: x", "- name: y")
        calls: list[str] = []

        def edits(text: str) -> Any:
            calls.append(text)
            if len(calls) == 1:  # the operator's editor saves while the API computes its edit
                atomic_write(files.path, operator)
                backdate(files.path)
            return vendor_enabled_edits(text, "v", False)

        config = await manager(gw).apply_edits(edits, actor="x", kind="vendor-changed")
        assert calls[1] == operator
        assert changed_lines(operator, files.path.read_text()) == ([], ["  enabled: false"])
        assert [(v.name, v.enabled) for v in config.vendors] == [("v", False), ("w", True), ("y", True)]

    async def test_an_operator_saving_at_every_attempt_gets_409_and_keeps_the_last_save(self, start, files, upstreams):
        up = await upstreams()
        gw = await start(three_vendors(up.url))
        saves: list[str] = []

        def edits(text: str) -> Any:
            saves.append(text.replace("port", "port") + f"# save {len(saves)}\n")
            atomic_write(files.path, saves[-1])
            backdate(files.path)
            return vendor_enabled_edits(text, "v", False)

        with pytest.raises(ConfigChanged):
            await manager(gw).apply_edits(edits, actor="x", kind="vendor-changed")
        assert files.path.read_text() == saves[-1] and len(saves) == 2
        assert await events(gw, "vendor-changed") == []

    async def test_put_refused_while_an_operators_save_is_not_loaded(self, start, files, upstreams):
        up = await upstreams()
        gw = await start({"openai-compatibility": [vendor("v", up.url, ["m"])]})
        files.write(three_vendors(up.url))
        operator = files.path.read_text()
        put = f"database: {files.database}\nopenai-compatibility: []\n"
        with pytest.raises(ConfigChanged):
            await manager(gw).replace_text(put, actor="x")
        assert files.path.read_text() == operator
        assert await manager(gw).reload(reason="test") is True
        await manager(gw).replace_text(put, actor="x")  # the PUT now replaces what was read
        assert files.path.read_text() == put

    async def test_put_refused_when_a_save_lands_before_its_rename(self, start, files, upstreams):
        up = await upstreams()
        gw = await start({"openai-compatibility": [vendor("v", up.url, ["m"])]})
        operator = files.path.read_text() + "# the operator's note\n"

        def operator_saves(config: Any) -> None:  # runs after validation, before the write
            atomic_write(files.path, operator)

        with pytest.raises(ConfigChanged):
            await manager(gw).replace_text(f"database: {files.database}\n", actor="x", check=operator_saves)
        assert files.path.read_text() == operator
        assert await events(gw, "config-reloaded") == []

    async def test_the_api_answers_409_openai_shaped(self, start, files, upstreams):
        up = await upstreams()
        key = "mgmt-key-409-test-0001"
        data = {"remote-management": {"secret-key": key}, **three_vendors(up.url)}
        gw = await start(data)
        files.write({**data, "port": "not a port"})  # the operator's save, not valid
        backdate(files.path)
        broken = files.path.read_text()
        headers = {"Authorization": f"Bearer {key}"}
        for method, path, body in (
            ("PATCH", "/api/vendors/v", {"json": {"enabled": False}}),
            ("POST", "/api/models/m/disable", {}),
            ("PUT", "/api/config.yaml", {"data": broken.replace("not a port", "8318")}),
        ):
            resp = await gw.client.request(method, path, headers=headers, **body)
            payload = await resp.json()
            assert resp.status == 409, (path, payload)
            assert payload["error"]["code"] == "config_changed" and payload["error"]["type"] == "invalid_request_error"
            assert key not in json.dumps(payload)
        assert files.path.read_text() == broken

    async def test_a_missing_file_is_not_a_base_for_an_edit_but_may_be_put_back(self, start, files, upstreams):
        up = await upstreams()
        gw = await start({"openai-compatibility": [vendor("v", up.url, ["m"])]})
        original = files.path.read_text()
        files.path.unlink()
        with pytest.raises(ConfigChanged):
            await manager(gw).apply_edits([(("port",), 9000)], actor="x", kind="vendor-changed")
        assert not files.path.exists() and [v.name for v in gw.app[RUNTIME].current.config.vendors] == ["v"]
        with pytest.raises(ConfigChanged):  # not yet seen missing: the file may be mid-replace
            await manager(gw).replace_text(original, actor="x")
        assert await manager(gw).reload(reason="test") is False
        await manager(gw).replace_text(original, actor="x")
        assert files.path.read_text() == original

    async def test_put_may_replace_a_file_that_was_read_and_rejected(self, start, files, upstreams):
        up = await upstreams()
        gw = await start({"openai-compatibility": [vendor("v", up.url, ["m"])]})
        files.path.write_text("port: [\n")
        assert await manager(gw).reload(reason="test") is False
        fixed = f"database: {files.database}\n"
        await manager(gw).replace_text(fixed, actor="x")
        assert files.path.read_text() == fixed and manager(gw).last_error is None


class TestAliasBomb:
    """A document whose aliases expand past the bound is refused before it is expanded, everywhere."""

    async def test_put_and_reload_refuse_the_billion_laughs(self, start, files, upstreams):
        up = await upstreams()
        gw = await start({"openai-compatibility": [vendor("v", up.url, ["m"])]})
        before = files.path.read_text()
        began = time.monotonic()
        with pytest.raises(ConfigRejected) as caught:
            await manager(gw).replace_text(BILLION_LAUGHS, actor="x")
        [problem] = caught.value.problems
        assert "aliases" in problem and "alias bomb" in problem
        assert files.path.read_text() == before
        files.path.write_text(BILLION_LAUGHS)
        assert await manager(gw).reload(reason="test") is False
        assert manager(gw).last_error == [problem]
        assert time.monotonic() - began < 2.0  # refused, not expanded (expanding takes minutes)
        assert await chat(gw) == 200


class TestSwitchingBackOn:
    """Switching a vendor or a model back on through the API gives the file back byte for byte."""

    async def test_off_then_on_returns_the_original_bytes(self, start, files, upstreams):
        up = await upstreams()
        gw = await start(
            {
                "openai-compatibility": [
                    vendor("v", up.url, ["m", {"name": "n", "enabled": True}]),
                    vendor("w", up.url, ["o"], enabled=True),
                    vendor("x", up.url, ["p"], disabled=False),
                ]
            }
        )
        mgr = manager(gw)
        original = files.path.read_text()
        for name, model in (("v", None), ("v", "m"), ("v", "n"), ("w", None), ("x", None)):
            await mgr.apply_edits(mgr.switch(name, model, False), actor="x", kind="vendor-changed")
            assert files.path.read_text() != original
            await mgr.apply_edits(mgr.switch(name, model, True), actor="x", kind="vendor-changed")
            assert files.path.read_text() == original, (name, model)

    async def test_an_explicit_on_line_survives_a_second_switch_off_and_a_redone_switch_on(self, start, files, upstreams):
        up = await upstreams()
        gw = await start({"openai-compatibility": [vendor("v", up.url, ["m"], enabled=True)]})
        mgr = manager(gw)
        original = files.path.read_text()
        await mgr.apply_edits(mgr.switch("v", None, False), actor="x", kind="vendor-changed")
        await mgr.apply_edits(mgr.switch("v", None, False), actor="x", kind="vendor-changed")  # already off
        switch_on = mgr.switch("v", None, True)
        saved = False

        def edits(text: str) -> Any:
            nonlocal saved
            if not saved:  # an operator's save lands meanwhile: the switch is computed twice
                saved = True
                atomic_write(files.path, text + "# note\n")
                backdate(files.path)
            return switch_on(text)

        await mgr.apply_edits(edits, actor="x", kind="vendor-changed")
        assert files.path.read_text() == original + "# note\n"


class TestNothingRoutesWarning:
    """A config in which no vendor is on is loaded, with a warning saying every request gets 503."""

    async def test_reload_warns_when_every_vendor_is_off(self, start, files, upstreams, caplog):
        up = await upstreams()
        gw = await start({"openai-compatibility": [vendor("v", up.url, ["m"])]})
        caplog.set_level(logging.WARNING, logger="cliproxy.reload")
        files.write({"openai-compatibility": [vendor("v", up.url, ["m"], enabled=False)]})
        assert await manager(gw).reload(reason="test") is True
        assert any("every vendor is switched off" in r.getMessage() for r in caplog.records)
        caplog.clear()
        files.write({"openai-compatibility": []})
        assert await manager(gw).reload(reason="test") is True
        assert any("no vendor is configured" in r.getMessage() for r in caplog.records)
        caplog.clear()
        files.write({"openai-compatibility": [vendor("v", up.url, ["m"])]})
        assert await manager(gw).reload(reason="test") is True
        assert not [r for r in caplog.records if "503" in r.getMessage()]

    async def test_start_up_warns_when_every_vendor_is_off(self, tmp_path):
        gw = GatewayProcess(
            tmp_path,
            {
                "openai-compatibility": [
                    vendor("v", "http://127.0.0.1:9/v1", ["m"], enabled=False),
                    {**vendor("w", "http://127.0.0.1:9/v1", ["n"]), "api-key-entries": [{"api-key": "${UNSET_IN_THIS_TEST:-}"}]},
                ]
            },
        )
        gw.start()
        try:
            await eventually(lambda: "listening" in gw.log(), "the gateway to listen", timeout=10)
        finally:
            assert gw.stop() == 0
        assert "every vendor is switched off" in gw.log()


MGMT = "mgmt-key-for-the-big-config-test"
BIG_VENDORS, BIG_MODELS = 100, 100  # 10,000 pairs
STREAM_CHUNKS, CHUNK_DELAY = 500, 0.02  # a 10 s stream paced at 20 ms


def _wait_listening(port: int, process: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "the process exited"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {port}")


@pytest.fixture
def paced_upstream() -> Any:
    """`cliproxy fake-upstream` in its own process: every stream is STREAM_CHUNKS chunks, CHUNK_DELAY apart."""
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cliproxy.cli",
            "fake-upstream",
            "--port",
            str(port),
            "--chunks",
            str(STREAM_CHUNKS),
            "--chunk-delay",
            str(CHUNK_DELAY),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_listening(port, process)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=10)


@pytest.mark.slow  # a 10 s paced stream over 10,000 pairs
class TestLargeConfigOffTheLoop:
    """With 10,000 pairs, a PATCH and a reload run off the event loop: streams and /healthz do not stall."""

    async def test_streams_and_healthz_keep_flowing_during_a_patch_and_a_reload(self, tmp_path, paced_upstream):
        import aiohttp

        gw = GatewayProcess(
            tmp_path,
            {
                "remote-management": {"secret-key": MGMT},
                "openai-compatibility": [
                    {"name": f"v{i}", "base-url": paced_upstream, "models": [{"name": f"m{j}"} for j in range(BIG_MODELS)]}
                    for i in range(BIG_VENDORS)
                ],
            },
        )
        gw.start(timeout=60)
        auth = {"Authorization": f"Bearer {MGMT}"}
        chunk_times: list[float] = []
        health_latencies: list[float] = []
        streaming = asyncio.Event()
        try:
            async with aiohttp.ClientSession() as session:

                async def stream() -> None:
                    body = {"model": "m1", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
                    async with session.post(gw.url + "/v1/chat/completions", json=body) as resp:
                        assert resp.status == 200
                        async for line in resp.content:
                            if line.startswith(b"data: ") and line.strip() != b"data: [DONE]":
                                chunk_times.append(time.monotonic())
                                streaming.set()

                async def healthz() -> None:
                    while True:
                        began = time.monotonic()
                        async with session.get(gw.url + "/healthz") as resp:
                            assert resp.status == 200
                            await resp.read()
                        health_latencies.append(time.monotonic() - began)
                        await asyncio.sleep(0.02)

                async def reloads() -> int:
                    async with session.get(gw.url + "/api/events?kind=config-reloaded&limit=1000", headers=auth) as resp:
                        assert resp.status == 200
                        return len((await resp.json())["events"])

                streamer = asyncio.create_task(stream())
                poller = asyncio.create_task(healthz())
                await asyncio.wait_for(streaming.wait(), 10)
                began = time.monotonic()
                async with session.patch(gw.url + "/api/vendors/v50/models/m7", json={"enabled": False}, headers=auth) as resp:
                    assert resp.status == 200, await resp.text()
                patched = time.monotonic()
                text = gw.config_path.read_text()
                await asyncio.to_thread(gw.config_path.write_text, text + "# edited by hand\n")
                await eventually(reloads, "the edit on disk to be reloaded", timeout=20, interval=0.1)
                reloaded = time.monotonic()
                await streamer
                poller.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await poller
        finally:
            gw.stop()
        assert reloaded < chunk_times[-1], "the PATCH and the reload must both happen while the stream flows"
        gaps = [b - a for a, b in zip(chunk_times, chunk_times[1:])]
        print(
            f"\nPATCH {patched - began:.2f}s, reload seen after {reloaded - patched:.2f}s; {len(chunk_times)} chunks, "
            f"largest gap {max(gaps) * 1000:.0f} ms; {len(health_latencies)} /healthz, slowest {max(health_latencies) * 1000:.0f} ms"
        )
        assert len(chunk_times) == STREAM_CHUNKS
        assert max(gaps) < 0.100
        assert max(health_latencies) < 0.100
        assert "enabled: false" in gw.config_path.read_text()
