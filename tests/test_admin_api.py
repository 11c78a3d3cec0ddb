"""The management API end to end: the real app on a real config file, fake upstreams, a fake clock.

Every reply goes through `Admin.call`, which checks its status and body against the served
`/api/openapi.json`, and keeps every body so tests can grep them for secrets.
"""

from __future__ import annotations

import re
import sqlite3
from typing import Any

import pytest
from openapi_spec_validator import validate as validate_openapi

from cliproxy.core.times import parse_since
from cliproxy.fake_upstream import Fault
from cliproxy.services.config_loader import ConfigSchema
from cliproxy.services.store import format_timestamp, read_disabled, read_events
from cliproxy.web.admin import ENDPOINTS, exchange
from cliproxy.web.admin.openapi import build_document, openapi_path
from cliproxy.web.keys import CONFIG_MANAGER, STORE, TRACKER
from tests.helpers import CHAT, MGMT_KEY, Admin, FakeClock, Reply, vendor

_DOC = build_document()
UPSTREAM_KEYS = ("sk-bad-upstream-key-0001", "sk-good-upstream-key-0001")


def two_vendors(bad_url: str, good_url: str, **extra: Any) -> dict[str, Any]:
    return {
        "auto-disable": {"failure-threshold": 2, "time-window-seconds": 60, "disable-duration-seconds": 30},
        "openai-compatibility": [vendor("bad", bad_url, ["m"], priority=1), vendor("good", good_url, ["m"])],
        **extra,
    }


async def trip(admin: Admin, times: int = 2) -> None:
    """Send failing requests until the bad vendor's pair is auto-disabled."""
    for _ in range(times):
        resp = await admin.chat()
        assert resp.headers["x-cliproxy-vendor"] == "good"


def pair_of(reply: Reply, vendor_name: str) -> dict[str, Any]:
    [pair] = [p for p in reply.json["pairs"] if p["vendor"] == vendor_name]
    return pair


class TestLastFailure:
    """The time of a pair's last counted failure: in its status, the disabled list and the `disabled` event."""

    async def test_last_failure_at_everywhere(self, admin, upstreams):
        bad, good = await upstreams(), await upstreams()
        bad.fail(None, Fault(status=500))
        clock = FakeClock()
        a = await admin(two_vendors(bad.url, good.url), clock=clock)
        assert pair_of(await a.get("/api/models/m/status"), "bad")["last_failure_at"] is None
        await a.chat()  # one failure: counted, not yet disabled
        first = format_timestamp(clock())
        assert pair_of(await a.get("/api/models/m/status"), "bad")["last_failure_at"] == first
        clock.advance(7)
        await a.chat()  # the second trips the disable
        tripped = format_timestamp(clock())
        status = pair_of(await a.get("/api/models/m/status"), "bad")
        assert status["auto_disabled"] and status["last_failure_at"] == tripped
        [row] = (await a.get("/api/models/disabled")).json["disabled"]
        assert row["last_failure_at"] == tripped
        [event] = (await a.get("/api/events?kind=disabled")).json["events"]
        assert event["last_failure_at"] == tripped
        assert read_disabled(a.gw.app[STORE].path)[0].last_failure_at == clock()  # in the table, for restarts and the CLI


# ---------------------------------------------------------------------------------------------
# The document
# ---------------------------------------------------------------------------------------------


class TestOpenApiDocument:
    """`/api/openapi.json` is valid OpenAPI 3.1 and documents every management route the app serves."""

    async def test_served_document_is_valid_and_complete(self, admin, upstreams):
        up = await upstreams()
        a = await admin({"openai-compatibility": [vendor("a", up.url, ["m"])]})
        reply = await a.get("/api/openapi.json")
        assert reply.status == 200
        validate_openapi(reply.json)
        assert reply.json == _DOC
        served = {
            (route.method, openapi_path(route.resource.canonical))
            for route in a.app.router.routes()
            if route.resource is not None and route.resource.canonical.startswith("/api") and route.method != "HEAD"
        }
        documented = {(m.upper(), p) for p, ops in reply.json["paths"].items() for m in ops}
        assert served == documented

    def test_every_endpoint_names_its_response_schema(self):
        for ep in ENDPOINTS:
            op = _DOC["paths"][openapi_path(ep.path)][ep.method.lower()]
            assert op["description"], ep.path
            if ep.response is not None:
                name = ep.response.__name__.removesuffix("Schema")
                assert op["responses"]["200"]["content"]["application/json"]["schema"] == {"$ref": f"#/components/schemas/{name}"}
            if ep.body is not None:
                name = ep.body.__name__.removesuffix("Schema")
                assert op["requestBody"]["content"]["application/json"]["schema"] == {"$ref": f"#/components/schemas/{name}"}

    def test_body_schemas_reject_unknown_fields_in_the_document_too(self):
        for name in ("DisableBody", "VendorPatch", "ModelPatch", "AutoDisablePatch"):
            assert _DOC["components"]["schemas"][name]["additionalProperties"] is False


# ---------------------------------------------------------------------------------------------
# Reading state
# ---------------------------------------------------------------------------------------------


class TestDisabledList:
    """`GET /api/models/disabled` lists every disable in force: automatic, timed and in the config file."""

    async def test_empty_when_nothing_is_disabled(self, admin, upstreams):
        up = await upstreams()
        a = await admin({"openai-compatibility": [vendor("a", up.url, ["m"])]})
        reply = await a.get("/api/models/disabled")
        assert (reply.status, reply.json) == (200, {"disabled": []})

    async def test_auto_disabled_pair_with_times_and_last_error(self, admin, upstreams):
        bad, good = await upstreams(), await upstreams()
        bad.fail(None, Fault(status=500))
        clock = FakeClock()
        a = await admin(two_vendors(bad.url, good.url), clock=clock)
        await trip(a)
        clock.advance(10)
        [row] = (await a.get("/api/models/disabled")).json["disabled"]
        assert row["vendor"] == "bad" and row["model"] == "m" and row["alias"] is None
        assert (row["reason"], row["source"], row["in_config"]) == ("auto", "auto-disable", True)
        assert row["failure_count"] == 2
        assert row["remaining_seconds"] == pytest.approx(20.0)
        assert row["disabled_at"].endswith("Z") and row["disabled_until"].endswith("Z")
        assert row["last_error"]["status"] == 500

    async def test_a_pair_removed_from_the_config_is_listed_as_not_in_config(self, admin, upstreams):
        up = await upstreams()
        a = await admin({"openai-compatibility": [vendor("a", up.url, ["m", "gone"])]})
        await a.post("/api/models/gone/disable", json={"duration_seconds": 60})
        new = a.file().replace("  - name: gone\n", "")
        assert (
            await a.call("PUT", "/api/config.yaml", data=new.encode(), headers={"Content-Type": "application/yaml"})
        ).status == 200
        [row] = (await a.get("/api/models/disabled")).json["disabled"]
        assert (row["model"], row["alias"], row["in_config"], row["source"]) == ("gone", None, False, "timed")
        assert (await a.get("/api/models/gone/status")).status == 404

    async def test_config_disables_are_listed_without_an_end(self, admin, upstreams):
        up = await upstreams()
        a = await admin(
            {
                "openai-compatibility": [
                    vendor("a", up.url, [{"name": "off", "enabled": False}, "on"]),
                    vendor("b", up.url, ["x"], enabled=False),
                ]
            }
        )
        rows = (await a.get("/api/models/disabled")).json["disabled"]
        assert [
            (r["vendor"], r["model"], r["reason"], r["source"], r["disabled_until"], r["remaining_seconds"]) for r in rows
        ] == [
            ("a", "off", "manual", "model-config", None, None),
            ("b", "x", "manual", "vendor-config", None, None),
        ]


class TestModelStatus:
    """`GET /api/models/{model}/status` finds pairs by alias, upstream name or prefix/alias, with `/` and `:` in names."""

    async def _start(self, admin, upstreams):
        up = await upstreams()
        return await admin(
            {
                "auto-disable": {"failure-threshold": 4},
                "openai-compatibility": [
                    vendor(
                        "local",
                        up.url,
                        [{"name": "qwen2.5:7b", "alias": "qwen"}],
                        prefix="local",
                        **{"auto-disable": {"time-window-seconds": 30}},
                    ),
                    vendor(
                        "router",
                        up.url,
                        [
                            {
                                "name": "meta-llama/llama-3.1-8b-instruct",
                                "alias": "llama",
                                "auto-disable": {"disable-duration-seconds": 900},
                            }
                        ],
                    ),
                    vendor("other", up.url, [{"name": "qwen2.5:7b", "alias": "qwen"}]),
                ],
            }
        )

    @pytest.mark.parametrize(
        "path",
        [
            "/api/models/meta-llama/llama-3.1-8b-instruct/status",
            "/api/models/meta-llama%2Fllama-3.1-8b-instruct/status",
            "/api/models/meta-llama%2fllama-3.1-8b-instruct/status",
            "/api/models/llama/status",
        ],
    )
    async def test_slash_names_plain_or_encoded(self, admin, upstreams, path):
        a = await self._start(admin, upstreams)
        reply = await a.get(path)
        assert reply.status == 200
        [pair] = reply.json["pairs"]
        assert (pair["vendor"], pair["model"], pair["alias"]) == ("router", "meta-llama/llama-3.1-8b-instruct", "llama")
        assert pair["enabled"] is True and pair["config_enabled"] is True and pair["auto_disabled"] is False
        assert pair["manual_disable"] is None and pair["failure_count"] == 0

    @pytest.mark.parametrize(
        "path", ["/api/models/qwen2.5:7b/status", "/api/models/qwen2.5%3A7b/status", "/api/models/qwen/status"]
    )
    async def test_colon_names_and_pools(self, admin, upstreams, path):
        a = await self._start(admin, upstreams)
        reply = await a.get(path)
        assert sorted(p["vendor"] for p in reply.json["pairs"]) == ["local", "other"]
        narrowed = await a.get(path + "?vendor=local")
        [pair] = narrowed.json["pairs"]
        assert pair["names"] == ["qwen", "local/qwen"]

    async def test_prefixed_name_and_setting_levels(self, admin, upstreams):
        a = await self._start(admin, upstreams)
        [pair] = (await a.get("/api/models/local%2Fqwen/status")).json["pairs"]
        settings = pair["auto_disable"]
        assert (settings["failure_threshold"], settings["time_window_seconds"], settings["disable_duration_seconds"]) == (
            4,
            30,
            300,
        )
        assert settings["sources"] == {
            "failure_threshold": "global",
            "time_window_seconds": "vendor",
            "disable_duration_seconds": "default",
            "count_statuses": "default",
        }
        assert 503 in settings["count_statuses"] and settings["enabled"] is True
        [llama] = (await a.get("/api/models/llama/status")).json["pairs"]
        assert llama["auto_disable"]["sources"]["disable_duration_seconds"] == "model"

    async def test_unknown_model_and_vendor_are_404(self, admin, upstreams):
        a = await self._start(admin, upstreams)
        reply = await a.get("/api/models/nope/status")
        assert (
            reply.status == 404 and reply.json["error"]["code"] == "model_not_found" and reply.json["error"]["param"] == "model"
        )
        reply = await a.get("/api/models/qwen/status?vendor=nope")
        assert reply.status == 404 and reply.json["error"]["param"] == "vendor"
        reply = await a.get("/api/models/llama/status?vendor=local")
        assert reply.status == 404 and reply.json["error"]["code"] == "model_not_found"

    @pytest.mark.parametrize(
        "path",
        [
            "/api/models/a%00b/status",
            "/api/models/%2E%2E/status",
            "/api/models/x%2F..%2Fconfig/status",
            "/api/models/.%2Fx/status",
        ],
    )
    async def test_nul_and_dot_segments_are_400(self, admin, upstreams, path):
        a = await self._start(admin, upstreams)
        reply = await a.call("GET", path)
        assert reply.status == 400
        assert (reply.json["error"]["type"], reply.json["error"]["param"]) == ("invalid_request_error", "model")

    async def test_unencoded_dot_segments_are_normalised_away_to_404(self, admin, upstreams):
        a = await self._start(admin, upstreams)
        reply = await a.call("GET", "/api/models/./status")
        assert reply.status == 404 and reply.json["error"]["code"] == "not_found"

    async def test_unknown_query_parameter_is_400_naming_it(self, admin, upstreams):
        a = await self._start(admin, upstreams)
        reply = await a.get("/api/models/qwen/status?vendr=local")
        assert reply.status == 400 and reply.json["error"]["param"] == "vendr"


# ---------------------------------------------------------------------------------------------
# Enable / disable
# ---------------------------------------------------------------------------------------------


class TestTimedDisable:
    """`POST .../disable` with a duration holds a manual disable in the tracker and SQLite, with the caller as actor."""

    async def test_timed_disable_routes_around_and_expires(self, admin, upstreams):
        bad, good = await upstreams(), await upstreams()
        clock = FakeClock()
        a = await admin(two_vendors(bad.url, good.url), clock=clock)
        reply = await a.post("/api/models/m/disable?vendor=bad", json={"duration_seconds": 120})
        assert reply.status == 200
        pair = pair_of(reply, "bad")
        assert pair["enabled"] is False and pair["config_enabled"] is True and pair["auto_disabled"] is False
        assert pair["manual_disable"]["remaining_seconds"] == 120 and pair["manual_disable"]["actor"] == "127.0.0.1"
        assert (await a.chat()).headers["x-cliproxy-vendor"] == "good"
        [event] = await a.events(kind="manual-disable")
        assert (event.vendor, event.model, event.actor, event.detail) == ("bad", "m", "127.0.0.1", {"duration_seconds": 120})
        [row] = (await a.get("/api/models/disabled")).json["disabled"]
        assert (row["reason"], row["source"], row["actor"]) == ("manual", "timed", "127.0.0.1")
        clock.advance(120)
        assert (await a.chat()).headers["x-cliproxy-vendor"] == "bad"
        assert "enabled: false" not in a.file()

    @pytest.mark.parametrize(
        ("body", "param"),
        [
            ({"duration_seconds": -1}, "duration_seconds"),
            ({"duration_seconds": 0}, "duration_seconds"),
            ({"duration_seconds": "soon"}, "duration_seconds"),
            ({"duration_seconds": 1e12}, "duration_seconds"),
            ({"duration_seconds": True}, "duration_seconds"),
            ({"duration": 60}, "duration"),
        ],
    )
    async def test_bad_bodies_are_400_naming_the_field(self, admin, upstreams, body, param):
        up = await upstreams()
        a = await admin({"openai-compatibility": [vendor("a", up.url, ["m"])]})
        reply = await a.post("/api/models/m/disable", json=body)
        assert reply.status == 400
        assert reply.json["error"]["param"] == param and param in reply.json["error"]["message"]

    @pytest.mark.parametrize("data", [b"{", b"[1]", b"\xff\xfe", b"null"])
    async def test_malformed_json_is_400(self, admin, upstreams, data):
        up = await upstreams()
        a = await admin({"openai-compatibility": [vendor("a", up.url, ["m"])]})
        reply = await a.post("/api/models/m/disable", data=data, headers={"Content-Type": "application/json"})
        assert reply.status == 400 and reply.json["error"]["type"] == "invalid_request_error"


class TestPermanentDisableAndEnable:
    """Without a duration a disable is `enabled: false` in config.yaml; enable clears the tracker and writes it back."""

    CONFIG = """\
# operator's notes stay
database: {db}
remote-management:
  secret-key: {key}
openai-compatibility:
  - name: main   # the main vendor
    base-url: {url}
    api-key-entries:
      - api-key: ${{MAIN_UPSTREAM_KEY}}
    models:
      - name: qwen2.5:7b
        alias: qwen   # short name
      - name: other
"""

    async def _start(self, admin, upstreams, tmp_path, monkeypatch, **kw):
        monkeypatch.setenv("MAIN_UPSTREAM_KEY", "sk-main-env-secret-0001")
        up = await upstreams()
        text = self.CONFIG.format(db=tmp_path / "cliproxy.db", key=MGMT_KEY, url=up.url)
        return await admin(text, **kw), text

    async def test_permanent_disable_changes_exactly_one_line(self, admin, upstreams, tmp_path, monkeypatch):
        a, before = await self._start(admin, upstreams, tmp_path, monkeypatch)
        reply = await a.post("/api/models/qwen2.5%3A7b/disable")
        assert reply.status == 200
        [pair] = reply.json["pairs"]
        assert pair["enabled"] is False and pair["config_enabled"] is False and pair["manual_disable"] is None
        after = a.file()
        added = [line for line in after.splitlines() if line not in before.splitlines()]
        assert added == ["        enabled: false"]
        assert "${MAIN_UPSTREAM_KEY}" in after and "sk-main-env-secret-0001" not in after
        assert "# operator's notes stay" in after and "alias: qwen   # short name" in after
        models = (await a.gw.client.get("/v1/models")).status, await (await a.gw.client.get("/v1/models")).json()
        assert "qwen" not in [m["id"] for m in models[1]["data"]]
        [event] = await a.events(kind="manual-disable")
        assert (event.vendor, event.model, event.actor) == ("main", "qwen2.5:7b", "127.0.0.1")
        rows = (await a.get("/api/models/disabled")).json["disabled"]
        assert [(r["model"], r["source"]) for r in rows] == [("qwen2.5:7b", "model-config")]

    async def test_enable_removes_the_off_line_and_clears_the_tracker(self, admin, upstreams, tmp_path, monkeypatch):
        a, before = await self._start(admin, upstreams, tmp_path, monkeypatch)
        await a.post("/api/models/qwen/disable")
        await a.post("/api/models/qwen/disable", json={"duration_seconds": 600})
        reply = await a.post("/api/models/qwen/enable")
        assert reply.status == 200
        [pair] = reply.json["pairs"]
        assert pair["enabled"] is True and pair["config_enabled"] is True and pair["manual_disable"] is None
        assert a.file() == before  # on is the default, written by omission: the file is back to its bytes
        assert (await a.get("/api/models/disabled")).json["disabled"] == []
        kinds = [e.kind for e in await a.events()]
        assert "manual-enable" in kinds and "enabled" in kinds
        assert (await a.chat("qwen")).status == 200

    async def test_enabling_a_pair_switched_off_in_the_config_writes_one_event(self, admin, upstreams, tmp_path, monkeypatch):
        a, _ = await self._start(admin, upstreams, tmp_path, monkeypatch)
        assert (await a.post("/api/models/qwen/disable")).status == 200
        assert (await a.post("/api/models/qwen/enable")).status == 200
        events = [(e.kind, e.vendor, e.model) for e in await a.events()]
        assert events.count(("manual-enable", "main", "qwen2.5:7b")) == 1, events
        assert (await a.post("/api/models/qwen/enable")).status == 200  # nothing to clear: still one event per call
        events = [(e.kind, e.vendor, e.model) for e in await a.events()]
        assert events.count(("manual-enable", "main", "qwen2.5:7b")) == 2, events

    async def test_config_disables_show_when_and_who_from_their_event(self, admin, upstreams, tmp_path, monkeypatch):
        a, _ = await self._start(admin, upstreams, tmp_path, monkeypatch)
        assert (await a.post("/api/models/qwen/disable")).status == 200
        [event] = await a.events(kind="manual-disable")
        assert (event.reason, event.disabled_until) == ("manual", None)  # like a timed one, without an end
        assert (await a.call("PATCH", "/api/vendors/main/models/other", json={"enabled": False})).status == 200
        [model_changed] = await a.events(kind="model-changed")
        rows = {r["model"]: r for r in (await a.get("/api/models/disabled")).json["disabled"]}
        assert (rows["qwen2.5:7b"]["disabled_at"], rows["qwen2.5:7b"]["actor"]) == (format_timestamp(event.at), "127.0.0.1")
        assert (rows["other"]["disabled_at"], rows["other"]["actor"]) == (format_timestamp(model_changed.at), "127.0.0.1")
        both_off = a.file()
        # Switched back on through the API (which removes the off line), then off again by hand: no event did that.
        assert (await a.post("/api/models/qwen/enable")).status == 200
        assert a.file() != both_off
        a.config_path.write_text(both_off)
        assert await a.app[CONFIG_MANAGER].reload(reason="test")
        rows = {r["model"]: r for r in (await a.get("/api/models/disabled")).json["disabled"]}
        assert (rows["qwen2.5:7b"]["disabled_at"], rows["qwen2.5:7b"]["actor"]) == (None, None)
        assert (await a.call("PATCH", "/api/vendors/main/models/other", json={"enabled": True})).status == 200
        assert (await a.call("PATCH", "/api/vendors/main", json={"enabled": False})).status == 200
        [vendor_changed] = await a.events(kind="vendor-changed")
        vendor_rows = [r for r in (await a.get("/api/models/disabled")).json["disabled"] if r["source"] == "vendor-config"]
        assert vendor_rows and all(
            (r["disabled_at"], r["actor"]) == (format_timestamp(vendor_changed.at), "127.0.0.1") for r in vendor_rows
        )

    async def test_without_a_config_file_a_permanent_disable_is_503(self, gateway, upstreams, tmp_path):
        up = await upstreams()
        from tests.helpers import make_config

        config = make_config(
            {
                "database": str(tmp_path / "x.db"),
                "remote-management": {"secret-key": MGMT_KEY},
                "openai-compatibility": [vendor("a", up.url, ["m"])],
            }
        )
        a = Admin(await gateway(config), None)
        reply = await a.post("/api/models/m/disable")
        assert reply.status == 503 and reply.json["error"]["code"] == "no_config_file"
        assert (await a.post("/api/models/m/disable", json={"duration_seconds": 5})).status == 200
        assert (await a.get("/api/config.yaml")).status == 503


# ---------------------------------------------------------------------------------------------
# The interplay of the two axes, through the real gateway
# ---------------------------------------------------------------------------------------------


class TestInterplay:
    """An automatic action never undoes an operator's; an operator's enable ends the automatic disable."""

    async def test_auto_then_timed_manual_then_auto_expiry_stays_disabled(self, admin, upstreams):
        bad, good = await upstreams(), await upstreams()
        bad.fail(None, Fault(status=500, times=2))
        clock = FakeClock()
        a = await admin(two_vendors(bad.url, good.url), clock=clock)
        await trip(a)
        await a.post("/api/models/m/disable?vendor=bad", json={"duration_seconds": 100})
        rows = (await a.get("/api/models/disabled")).json["disabled"]
        assert [(r["vendor"], r["reason"]) for r in rows] == [("bad", "auto"), ("bad", "manual")]
        clock.advance(31)  # the automatic disable is over, the operator's is not
        a.app[TRACKER].expire_due()
        pair = pair_of(await a.get("/api/models/m/status"), "bad")
        assert pair["auto_disabled"] is False and pair["manual_disable"] is not None and pair["enabled"] is False
        assert (await a.chat()).headers["x-cliproxy-vendor"] == "good"
        rows = (await a.get("/api/models/disabled")).json["disabled"]
        assert [(r["vendor"], r["reason"]) for r in rows] == [("bad", "manual")]
        clock.advance(70)
        assert (await a.chat()).headers["x-cliproxy-vendor"] == "bad"

    async def test_manual_enable_during_auto_disable_clears_it(self, admin, upstreams):
        bad, good = await upstreams(), await upstreams()
        bad.fail(None, Fault(status=500, times=2))
        clock = FakeClock()
        a = await admin(two_vendors(bad.url, good.url), clock=clock)
        await trip(a)
        assert pair_of(await a.get("/api/models/m/status"), "bad")["auto_disabled"] is True
        reply = await a.post("/api/models/m/enable?vendor=bad")
        pair = pair_of(reply, "bad")
        assert pair["enabled"] is True and pair["auto_disabled"] is False and pair["failure_count"] == 0
        assert (await a.chat()).headers["x-cliproxy-vendor"] == "bad"
        [event] = await a.events(kind="enabled")
        assert (event.cause, event.actor) == ("manual", "127.0.0.1")
        assert "enabled:" not in a.file()  # nothing to write: the entry was never off in the file

    async def test_vendor_off_hides_all_its_pairs(self, admin, upstreams):
        bad, good = await upstreams(), await upstreams()
        data = two_vendors(bad.url, good.url)
        data["openai-compatibility"][0]["models"].append({"name": "only-bad"})
        a = await admin(data)
        reply = await a.patch("/api/vendors/bad", json={"enabled": False})
        assert reply.status == 200
        assert reply.json["enabled"] is False and reply.json["routable"] is False
        assert all(m["enabled"] is False and m["config_enabled"] is True for m in reply.json["models"])
        ids = [m["id"] for m in (await (await a.gw.client.get("/v1/models")).json())["data"]]
        assert "only-bad" not in ids and "m" in ids
        assert (await a.chat()).headers["x-cliproxy-vendor"] == "good"
        assert (await a.chat("only-bad")).status == 503
        rows = (await a.get("/api/models/disabled")).json["disabled"]
        assert {(r["model"], r["source"]) for r in rows} == {("m", "vendor-config"), ("only-bad", "vendor-config")}
        [event] = await a.events(kind="vendor-changed")
        assert (event.vendor, event.actor, event.detail) == ("bad", "127.0.0.1", {"enabled": False})
        assert re.search(r"^ +enabled: false$", a.file(), re.M)
        back = await a.patch("/api/vendors/bad", json={"enabled": True})
        assert back.json["routable"] is True
        assert (await a.chat()).headers["x-cliproxy-vendor"] == "bad"


# ---------------------------------------------------------------------------------------------
# Vendors and model entries
# ---------------------------------------------------------------------------------------------


class TestVendors:
    """`GET /api/vendors` shows vendors with masked keys; PATCH writes vendor and model entries into config.yaml."""

    async def test_list_masks_keys_and_shows_model_state(self, admin, upstreams):
        bad, good = await upstreams(), await upstreams()
        bad.fail(None, Fault(status=500))
        data = two_vendors(bad.url, good.url)
        data["openai-compatibility"][1]["headers"] = {"X-Title": "cliproxy", "Authorization": "Bearer sk-header-secret-0001"}
        data["openai-compatibility"][1]["api-key-entries"][0]["proxy-url"] = "http://user:proxy-pass-0001@proxy:3128"
        a = await admin(data)
        await trip(a)
        vendors = (await a.get("/api/vendors")).json["vendors"]
        assert [v["name"] for v in vendors] == ["bad", "good"]
        assert vendors[0]["api_key_entries"] == [{"api_key": "sk...01", "proxy_url": None}]
        assert vendors[0]["models"][0]["enabled"] is False and vendors[0]["models"][0]["auto_disabled"] is True
        assert vendors[0]["models"][0]["config_enabled"] is True
        assert vendors[1]["headers"] == {"X-Title": "***", "Authorization": "Be...01"}  # every header value is masked
        assert vendors[1]["api_key_entries"][0]["proxy_url"] == "http://user:***@proxy:3128"
        body = (await a.get("/api/vendors")).text
        for secret in (*UPSTREAM_KEYS, "sk-header-secret-0001", "proxy-pass-0001", MGMT_KEY):
            assert secret not in body

    async def test_patch_sets_the_recovery_settings(self, admin, upstreams):
        up = await upstreams()
        a = await admin({"openai-compatibility": [vendor("a", up.url, ["m"])]})
        settings = {
            "honor-retry-after": False,
            "backoff-multiplier": 2,
            "recovery": "probe",
            "probe": {"path": "/embeddings", "body": {"input": "ping"}},
            "slow-start-seconds": 30,
            "on-all-disabled": "best-effort",
        }
        reply = await a.patch("/api/vendors/a", json={"auto-disable": settings})
        assert reply.status == 200, reply.json
        assert "recovery: probe" in a.file() and "slow-start-seconds: 30" in a.file()
        [pair] = (await a.get("/api/models/m/status")).json["pairs"]
        effective = pair["auto_disable"]
        assert (effective["honor_retry_after"], effective["backoff_multiplier"], effective["recovery"]) == (False, 2, "probe")
        assert (effective["probe_path"], effective["slow_start_seconds"], effective["on_all_disabled"]) == (
            "/embeddings",
            30,
            "best-effort",
        )
        assert effective["sources"]["recovery"] == "vendor"
        bad = await a.patch("/api/vendors/a", json={"auto-disable": {"recovery": "sometimes"}})
        assert bad.status == 400 and "recovery" in bad.json["error"]["param"]

    async def test_patch_vendor_fields(self, admin, upstreams):
        up = await upstreams()
        a = await admin({"openai-compatibility": [vendor("a", up.url, ["m"])]})
        reply = await a.patch(
            "/api/vendors/a",
            json={
                "priority": 7,
                "prefix": "aa",
                "timeouts": {"first-byte": 30},
                "auto-disable": {"failure-threshold": 9, "count-statuses": [429, "5xx"]},
            },
        )
        assert reply.status == 200
        assert (reply.json["priority"], reply.json["prefix"], reply.json["timeouts"]["first_byte"]) == (7, "aa", 30)
        assert reply.json["auto_disable"]["failure_threshold"] == 9
        assert reply.json["models"][0]["names"] == ["m", "aa/m"]
        assert (await a.chat("aa/m")).status == 200
        assert "failure-threshold: 9" in a.file()
        [event] = await a.events(kind="vendor-changed")
        assert event.detail["priority"] == 7
        reply = await a.patch("/api/vendors/a", json={"prefix": None, "auto-disable": None})
        assert reply.json["prefix"] is None and reply.json["auto_disable"]["failure_threshold"] is None
        assert "prefix" not in a.file()

    @pytest.mark.parametrize(
        ("body", "param"),
        [
            ({"enabled": "no"}, "enabled"),
            ({"priority": "high"}, "priority"),
            ({"base-url": "ftp://x"}, "base-url"),
            ({"auto-disable": {"failure-threshold": -1}}, "auto-disable.failure-threshold"),
            ({"auto-disable": {"count-statuses": [999]}}, "auto-disable.count-statuses"),
            ({"auto-disable": {"threshold": 1}}, "auto-disable.threshold"),
            ({"name": "renamed"}, "name"),
            ({"api-key-entries": []}, "api-key-entries"),
        ],
    )
    async def test_patch_vendor_bad_bodies(self, admin, upstreams, body, param):
        up = await upstreams()
        a = await admin({"openai-compatibility": [vendor("a", up.url, ["m"])]})
        before = a.file()
        reply = await a.patch("/api/vendors/a", json=body)
        assert reply.status == 400 and reply.json["error"]["param"] == param
        assert a.file() == before

    async def test_patch_enabled_keeps_cliproxyapis_disabled_spelling(self, admin, upstreams):
        up = await upstreams()
        a = await admin({"openai-compatibility": [vendor("a", up.url, ["m"], disabled=True)]})
        assert (await a.get("/api/vendors")).json["vendors"][0]["enabled"] is False
        reply = await a.patch("/api/vendors/a", json={"enabled": True})
        assert reply.status == 200 and reply.json["enabled"] is True
        # on is the default: the operator's `disabled: true` line goes, and no `enabled:` is added beside it
        assert "disabled" not in a.file() and "enabled:" not in a.file()
        assert (await a.chat()).status == 200

    async def test_patch_unknown_vendor_or_model_is_404_and_empty_body_400(self, admin, upstreams):
        up = await upstreams()
        a = await admin({"openai-compatibility": [vendor("a", up.url, ["m"])]})
        assert (await a.patch("/api/vendors/zz", json={"enabled": False})).status == 404
        assert (await a.patch("/api/vendors/a/models/zz", json={"enabled": False})).status == 404
        assert (await a.patch("/api/vendors/zz/models/m", json={"enabled": False})).status == 404
        reply = await a.patch("/api/vendors/a", json={})
        assert reply.status == 400

    async def test_patch_model_entry_by_upstream_name_with_slash(self, admin, upstreams):
        up = await upstreams()
        a = await admin(
            {"openai-compatibility": [vendor("r", up.url, [{"name": "meta-llama/llama-3.1-8b-instruct", "alias": "llama"}, "x"])]}
        )
        reply = await a.patch(
            "/api/vendors/r/models/meta-llama%2Fllama-3.1-8b-instruct",
            json={"enabled": False, "auto-disable": {"failure-threshold": 0}},
        )
        assert reply.status == 200
        assert (reply.json["name"], reply.json["enabled"], reply.json["config_enabled"]) == (
            "meta-llama/llama-3.1-8b-instruct",
            False,
            False,
        )
        assert reply.json["auto_disable"]["failure_threshold"] == 0
        status = (await a.get("/api/models/llama/status")).json["pairs"][0]
        assert status["auto_disable"]["enabled"] is False and status["auto_disable"]["sources"]["failure_threshold"] == "model"
        [event] = await a.events(kind="model-changed")
        assert (event.vendor, event.model, event.actor) == ("r", "meta-llama/llama-3.1-8b-instruct", "127.0.0.1")
        reply = await a.patch("/api/vendors/r/models/llama", json={"enabled": True, "alias": "ll"})
        assert (reply.json["enabled"], reply.json["names"]) == (True, ["ll"])

    async def test_patch_that_makes_the_config_invalid_is_400_and_writes_nothing(self, admin, upstreams):
        up = await upstreams()
        a = await admin({"openai-compatibility": [vendor("a", up.url, [{"name": "m", "alias": "x"}, {"name": "n"}])]})
        before = a.file()
        reply = await a.patch("/api/vendors/a/models/n", json={"alias": ""})
        assert reply.status == 400 and reply.json["error"]["param"] == "alias"
        assert a.file() == before


# ---------------------------------------------------------------------------------------------
# The configuration
# ---------------------------------------------------------------------------------------------


class TestConfigEndpoints:
    """`/api/config` is the running config masked; `/api/config.yaml` is the file; PUT validates before writing."""

    async def test_config_json_is_masked(self, admin, upstreams, monkeypatch):
        bad, good = await upstreams(), await upstreams()
        a = await admin(
            two_vendors(
                bad.url, good.url, **{"api-keys": ["client-key-secret-0001"], "proxy-url": "http://u:pw-secret-01@p:8080"}
            )
        )
        reply = await a.get("/api/config")
        assert reply.status == 200
        config = reply.json["config"]
        assert config["openai-compatibility"][0]["api-key-entries"][0]["api-key"] == "sk...01"
        assert config["remote-management"]["secret-key"] == mask_like(MGMT_KEY)
        assert config["api-keys"] == [mask_like("client-key-secret-0001")]
        assert config["proxy-url"] == "http://u:***@p:8080"
        assert config["auto-disable"]["failure-threshold"] == 2
        assert reply.json["path"] == str(a.config_path) and reply.json["last_reload_error"] is None
        for secret in (*UPSTREAM_KEYS, MGMT_KEY, "client-key-secret-0001", "pw-secret-01"):
            assert secret not in reply.text

    async def test_config_yaml_is_the_file_with_placeholders(self, admin, upstreams, tmp_path, monkeypatch):
        monkeypatch.setenv("UP_KEY", "sk-from-env-secret-0001")
        up = await upstreams()
        text = f"# comment\ndatabase: {tmp_path / 'c.db'}\nremote-management:\n  secret-key: {MGMT_KEY}\nopenai-compatibility:\n  - name: a\n    base-url: {up.url}\n    api-key-entries:\n      - api-key: ${{UP_KEY}}\n    models: [{{name: m}}]\n"
        a = await admin(text)
        reply = await a.get("/api/config.yaml")
        assert reply.status == 200 and reply.text == text
        assert "sk-from-env-secret-0001" not in (await a.get("/api/config")).text

    async def test_put_invalid_yaml_lists_every_problem_and_writes_nothing(self, admin, upstreams):
        up = await upstreams()
        a = await admin({"openai-compatibility": [vendor("a", up.url, ["m"])]})
        before = a.file()
        bad = before.replace("name: a", "name: a\n  priority: high").replace("port:", "prot:") + "\nlog-level: LOUD\n"
        reply = await a.call("PUT", "/api/config.yaml", data=bad.encode(), headers={"Content-Type": "application/yaml"})
        assert reply.status == 400
        message = reply.json["error"]["message"]
        assert "priority" in message and "log-level" in message
        assert a.file() == before

    async def test_put_cannot_switch_the_management_api_off(self, admin, upstreams):
        up = await upstreams()
        a = await admin({"openai-compatibility": [vendor("a", up.url, ["m"])]})
        before = a.file()
        reply = await a.call("PUT", "/api/config.yaml", data=b"{}", headers={"Content-Type": "application/yaml"})
        assert reply.status == 400
        assert reply.json["error"]["param"] == "remote-management.secret-key"
        assert a.file() == before
        assert (await a.get("/api/vendors")).status == 200

    async def test_put_valid_yaml_replaces_and_reloads(self, admin, upstreams):
        up = await upstreams()
        a = await admin({"openai-compatibility": [vendor("a", up.url, ["m"])]})
        new = a.file().replace("name: m", "name: m2")
        reply = await a.call("PUT", "/api/config.yaml", data=new.encode(), headers={"Content-Type": "application/yaml"})
        assert reply.status == 200
        assert reply.json["config"]["openai-compatibility"][0]["models"][0]["name"] == "m2"
        assert a.file() == new
        assert reply.json["restart_required"] == []
        assert (await a.chat("m2")).status == 200
        moved = (
            await a.call(
                "PUT",
                "/api/config.yaml",
                data=new.replace("database:", "port: 9999\ndatabase:").encode(),
                headers={"Content-Type": "application/yaml"},
            )
        ).json
        assert moved["restart_required"] == ["port"] and moved["config"]["port"] == 9999
        events = await a.events(kind="config-reloaded")
        assert len(events) == 2 and all(e.actor == "127.0.0.1" for e in events)

    async def test_rejected_reload_is_shown_until_a_good_file_loads(self, admin, upstreams):
        up = await upstreams()
        a = await admin({"openai-compatibility": [vendor("a", up.url, ["m"])]})
        good = a.file()
        a.config_path.write_text(good + "log-level: LOUD\nbogus-key: 1\n", encoding="utf-8")
        manager = a.app[CONFIG_MANAGER]
        assert await manager.reload(reason="test") is False
        reply = await a.get("/api/config")
        errors = reply.json["last_reload_error"]
        assert any("log-level" in e for e in errors) and any("bogus-key" in e for e in errors)
        assert reply.json["config"]["log-level"] == "INFO"  # the running config stays
        a.config_path.write_text(good.replace("name: m", "name: m2"), encoding="utf-8")
        assert await manager.reload(reason="test") is True
        reply = await a.get("/api/config")
        assert reply.json["last_reload_error"] is None
        assert reply.json["config"]["openai-compatibility"][0]["models"][0]["name"] == "m2"

    async def test_non_utf8_put_is_400(self, admin, upstreams):
        up = await upstreams()
        a = await admin({"openai-compatibility": [vendor("a", up.url, ["m"])]})
        reply = await a.call("PUT", "/api/config.yaml", data=b"\xff\xfe", headers={"Content-Type": "application/yaml"})
        assert reply.status == 400

    async def test_config_json_shows_every_key_the_file_may_hold(self, admin, upstreams):
        """Every key of the loader's schema, nested ones included, is in `GET /api/config`: the view is not a
        second copy of the config's shape that can fall behind (it once lacked `body-timeout`)."""
        up = await upstreams()
        a = await admin({"openai-compatibility": [vendor("a", up.url, ["m"])], "notify": [{"url": "http://127.0.0.1:9/hook"}]})
        shown = (await a.get("/api/config")).json["config"]
        # Read but shown under another key: CLIProxyAPI's `disabled` is the inverse of `enabled`.
        shown_as_another = {("openai-compatibility", "disabled")}
        missing = [
            ".".join(path)
            for path, present in _schema_keys(ConfigSchema(), shown, ())
            if not present and path not in shown_as_another
        ]
        assert missing == []
        assert shown["body-timeout"] == 60 and shown["client-header-timeout"] == 10


def _schema_keys(schema: Any, shown: Any, path: tuple[str, ...]) -> list[tuple[tuple[str, ...], bool]]:
    """(key path, whether `shown` has it) for every key of a marshmallow schema, walking nested schemas and
    lists of them (into the first item shown)."""
    from marshmallow import fields as mfields

    out: list[tuple[tuple[str, ...], bool]] = []
    for attr, field_ in schema.fields.items():
        key = field_.data_key or attr
        present = isinstance(shown, dict) and key in shown
        out.append(((*path, key), present))
        value = shown.get(key) if present else None
        if isinstance(field_, mfields.Nested):
            out += _schema_keys(field_.schema, value, (*path, key))
        elif isinstance(field_, mfields.List) and isinstance(field_.inner, mfields.Nested):
            out += _schema_keys(field_.inner.schema, value[0] if value else None, (*path, key))
    return out


def mask_like(key: str) -> str:
    from cliproxy.core.redact import mask_key

    return mask_key(key)


# ---------------------------------------------------------------------------------------------
# Events
# ---------------------------------------------------------------------------------------------


class TestEvents:
    """`GET /api/events` pages newest first and filters by vendor, model, kind and since."""

    async def _with_events(self, admin, upstreams, clock):
        up = await upstreams()
        a = await admin({"openai-compatibility": [vendor("a", up.url, ["m", "n"]), vendor("b", up.url, ["m"])]}, clock=clock)
        for _ in range(5):
            await a.post("/api/models/m/disable?vendor=a", json={"duration_seconds": 10})
            clock.advance(3600)
        await a.post("/api/models/n/disable", json={"duration_seconds": 10})
        await a.post("/api/models/m/disable?vendor=b", json={"duration_seconds": 10})
        return a

    async def test_paging_newest_first(self, admin, upstreams):
        clock = FakeClock()
        a = await self._with_events(admin, upstreams, clock)
        seen: list[int] = []
        reply = await a.get("/api/events?limit=3")
        while True:
            ids = [e["id"] for e in reply.json["events"]]
            seen += ids
            if reply.json["next_before_id"] is None:
                break
            assert reply.json["next_before_id"] == ids[-1]
            reply = await a.get(f"/api/events?limit=3&before_id={ids[-1]}")
        assert seen == sorted(seen, reverse=True) and len(seen) == len(set(seen))
        everything = (await a.get("/api/events?limit=1000")).json["events"]
        assert [e["id"] for e in everything] == seen

    async def test_filters(self, admin, upstreams):
        clock = FakeClock()
        a = await self._with_events(admin, upstreams, clock)
        rows = (await a.get("/api/events?vendor=a&model=m&kind=manual-disable")).json["events"]
        assert len(rows) == 5 and all((r["vendor"], r["model"], r["actor"]) == ("a", "m", "127.0.0.1") for r in rows)
        assert all(r["at"].endswith("Z") for r in rows)
        assert len((await a.get("/api/events?vendor=b")).json["events"]) == 1
        recent = (await a.get("/api/events?since=90m&kind=manual-disable")).json["events"]
        assert {(r["vendor"], r["model"]) for r in recent} == {("a", "m"), ("a", "n"), ("b", "m")}
        iso = (await a.get("/api/events?since=2020-01-01T00:00:00Z")).json["events"]
        assert len(iso) >= 7

    @pytest.mark.parametrize(
        ("query", "param"),
        [
            ("since=yesterday", "since"),
            ("kind=nope", "kind"),
            ("limit=0", "limit"),
            ("limit=x", "limit"),
            ("before_id=-3", "before_id"),
            ("before_id=99999999999999999999999", "before_id"),
            ("vendorr=a", "vendorr"),
            ("since=1d&since=2d", "since"),
        ],
    )
    async def test_bad_queries_are_400(self, admin, upstreams, query, param):
        up = await upstreams()
        a = await admin({"openai-compatibility": [vendor("a", up.url, ["m"])]})
        reply = await a.get(f"/api/events?{query}")
        assert reply.status == 400 and reply.json["error"]["param"] == param

    def test_since_parsing(self):
        now = 1_800_000_000.0
        assert parse_since("24h", now) == now - 86400
        assert parse_since("30m", now) == now - 1800
        assert parse_since("7d", now) == now - 7 * 86400
        assert parse_since("1.5h", now) == now - 5400
        assert parse_since("2027-01-15T08:00:00Z", now) == 1_800_000_000.0
        assert parse_since("2027-01-15T08:00:00", now) == 1_800_000_000.0
        with pytest.raises(ValueError):
            parse_since("soon", now)


# ---------------------------------------------------------------------------------------------
# A database that does not take writes
# ---------------------------------------------------------------------------------------------


class TestDatabaseNotAcceptingWrites:
    """While SQLite refuses writes, state-reporting and changing calls answer 503; once it recovers the disable is listed."""

    async def test_disabled_list_503_then_listed(self, admin, upstreams, tmp_path, monkeypatch):
        monkeypatch.setattr(exchange, "COMMIT_TIMEOUT_SECONDS", 0.3)
        bad, good = await upstreams(), await upstreams()
        bad.fail(None, Fault(status=500))
        a = await admin(two_vendors(bad.url, good.url))
        blocker = sqlite3.connect(tmp_path / "cliproxy.db", isolation_level=None, timeout=0)
        blocker.execute("BEGIN IMMEDIATE")  # holds the write lock: the tracker's writer waits
        try:
            await trip(a)
            for call in (
                a.get("/api/models/disabled"),
                a.get("/api/models/m/status"),
                a.get("/api/vendors"),
                a.post("/api/models/m/enable?vendor=bad"),
                a.post("/api/models/m/disable?vendor=good", json={"duration_seconds": 5}),
            ):
                reply = await call
                assert reply.status == 503
                assert reply.json["error"]["code"] == "service_unavailable"
                assert "database is not accepting writes" in reply.json["error"]["message"]
                assert reply.headers["Retry-After"]
            assert (await a.chat()).headers["x-cliproxy-vendor"] == "good"  # memory is authoritative meanwhile
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        monkeypatch.setattr(exchange, "COMMIT_TIMEOUT_SECONDS", 10)
        [row] = (await a.get("/api/models/disabled")).json["disabled"]
        assert (row["vendor"], row["reason"]) == ("bad", "auto")
        [event] = await a.events(kind="disabled")
        assert event.vendor == "bad"

    async def test_put_config_yaml_answers_once_its_event_is_committed(self, admin, upstreams, tmp_path, monkeypatch):
        monkeypatch.setattr(exchange, "COMMIT_TIMEOUT_SECONDS", 0.3)
        up = await upstreams()
        a = await admin({"openai-compatibility": [vendor("a", up.url, ["m"])]})
        new = a.file().replace("name: m", "name: m2")
        blocker = sqlite3.connect(tmp_path / "cliproxy.db", isolation_level=None, timeout=0)
        blocker.execute("BEGIN IMMEDIATE")
        try:
            reply = await a.call("PUT", "/api/config.yaml", data=new.encode(), headers={"Content-Type": "application/yaml"})
            assert reply.status == 503, reply.text
            assert "database is not accepting writes" in reply.json["error"]["message"]
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        monkeypatch.setattr(exchange, "COMMIT_TIMEOUT_SECONDS", 10)
        reply = await a.call(
            "PUT", "/api/config.yaml", data=new.replace("m2", "m3").encode(), headers={"Content-Type": "application/yaml"}
        )
        assert reply.status == 200
        stored = read_events(tmp_path / "cliproxy.db", kind="config-reloaded")  # the file itself, no flush
        assert [e.detail.get("reason") for e in stored] == ["api", "api"]  # both in SQLite once answered


# ---------------------------------------------------------------------------------------------
# Secrets never leave unmasked
# ---------------------------------------------------------------------------------------------


class TestNoSecretInAnyResponse:
    """No reply of any endpoint, success or error, contains an upstream key, the management key or a client key."""

    async def test_every_endpoint(self, admin, upstreams, monkeypatch):
        monkeypatch.setenv("GOOD_KEY", "sk-good-env-secret-0001")
        bad, good = await upstreams(), await upstreams()
        # the upstream echoes its key in the error body: it reaches last_error only masked
        bad.fail(None, Fault(status=500, body={"error": {"message": "bad key sk-bad-upstream-key-0001"}}))
        data = two_vendors(bad.url, good.url, **{"api-keys": ["client-key-secret-0001"]})
        data["openai-compatibility"][1]["api-key-entries"] = [{"api-key": "${GOOD_KEY}"}]
        a = await admin(data)
        for _ in range(2):
            await a.gw.client.post("/v1/chat/completions", json=CHAT, headers={"Authorization": "Bearer client-key-secret-0001"})
        await a.get("/api/models/disabled")
        await a.get("/api/models/m/status")
        await a.post("/api/models/m/disable?vendor=good", json={"duration_seconds": 5})
        await a.post("/api/models/m/enable?vendor=good")
        await a.get("/api/vendors")
        await a.patch("/api/vendors/bad", json={"priority": 2})
        await a.patch("/api/vendors/bad/models/m", json={"alias": "mm"})
        await a.patch("/api/vendors/bad", json={"base-url": "not a url"})
        await a.get("/api/config")
        await a.get("/api/events?limit=1000")
        await a.get("/api/openapi.json")
        await a.get("/api/models/nope/status")
        await a.get("/api/models/disabled", key="wrong")
        await a.call(
            "PUT",
            "/api/config.yaml",
            data=a.file().replace("${GOOD_KEY}", "${GOOD_KEY"),
            headers={"Content-Type": "application/yaml"},
        )
        everything = "\n".join(a.bodies)
        assert len(a.bodies) >= 14
        for secret in ("sk-bad-upstream-key-0001", "sk-good-env-secret-0001", MGMT_KEY, "client-key-secret-0001"):
            assert secret not in everything
