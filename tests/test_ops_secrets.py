"""Upstream, client and management keys never reach a log line, the event table or a response.

The same traffic runs twice: in-process, where every log record is captured (caplog, DEBUG,
before any formatter could mask anything), and through a real `cliproxy serve` whose whole stderr
is read. Both then grep the events table and every response (status, headers and body).
The secrets are shaped unlike credentials on purpose, so that no generic pattern hides them.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from cliproxy.fake_upstream import FakeUpstream, Fault
from cliproxy.services.store import read_events
from cliproxy.web.keys import STORE, TRACKER
from tests.helpers import make_config
from tests.processes import GatewayProcess

UPSTREAM_KEY = "UpstreamSecret7Qx2Lm9Vb"
CLIENT_KEY = "ClientSecret4Hd8Pw1Zr"
MANAGEMENT_KEY = "ManagementSecret6Tn3Ky5Cs"
SECRETS = (UPSTREAM_KEY, CLIENT_KEY, MANAGEMENT_KEY)
ENV = {"UPSTREAM_KEY": UPSTREAM_KEY, "CLIENT_KEY": CLIENT_KEY, "MANAGEMENT_KEY": MANAGEMENT_KEY}
PROMPT = "a prompt that must not be logged 5521"


def config(good: FakeUpstream, bad: FakeUpstream) -> dict[str, Any]:
    """Every secret through `${VAR}`, so the config file itself holds none."""
    return {
        "api-keys": ["${CLIENT_KEY}"],
        "remote-management": {"secret-key": "${MANAGEMENT_KEY}"},
        "metrics": {"require-auth": True},
        "auto-disable": {"failure-threshold": 2, "disable-duration-seconds": 600},
        "openai-compatibility": [
            {
                "name": "bad",
                "base-url": bad.url,
                "priority": 1,
                "api-key-entries": [{"api-key": "${UPSTREAM_KEY}"}],
                "models": [{"name": "m"}],
            },
            {
                "name": "good",
                "base-url": good.url,
                "api-key-entries": [{"api-key": "${UPSTREAM_KEY}"}],
                "models": [{"name": "m"}],
            },
        ],
    }


async def drive(base: str) -> list[str]:
    """Traffic, failures and management calls against `base`; every response as text."""
    seen: list[str] = []
    chat = {"model": "m", "messages": [{"role": "user", "content": PROMPT}]}
    client = {"Authorization": f"Bearer {CLIENT_KEY}"}
    management = {"Authorization": f"Bearer {MANAGEMENT_KEY}"}
    calls: list[tuple[str, str, dict[str, str], Any]] = [
        ("POST", "/v1/chat/completions", client, chat),  # bad fails (echoing its key), good answers
        ("POST", "/v1/chat/completions", {"x-api-key": CLIENT_KEY}, {**chat, "stream": True}),
        ("POST", f"/v1/chat/completions?key={CLIENT_KEY}", client, chat),  # bad is disabled by now
        ("POST", "/v1/chat/completions", {"Authorization": f"Bearer {CLIENT_KEY}x"}, chat),  # wrong key
        ("POST", "/v1/chat/completions", {"Authorization": f"Bearer {MANAGEMENT_KEY}"}, chat),  # wrong kind of key
        ("GET", "/v1/models", client, None),
        ("GET", "/metrics", management, None),
        ("GET", "/metrics", {"X-Management-Key": MANAGEMENT_KEY + "x"}, None),
        ("GET", "/readyz", {}, None),
        ("GET", "/api/config", management, None),
        ("GET", "/api/config.yaml", management, None),
        ("GET", "/api/vendors", management, None),
        ("GET", "/api/models/disabled", management, None),
        ("POST", "/api/models/m/disable", management, {"duration_seconds": 60}),
        ("GET", "/api/models/m/status", management, None),
        ("POST", "/api/models/m/enable", management, None),
        ("GET", "/api/events", management, None),
        ("GET", "/api/events", {"X-Management-Key": UPSTREAM_KEY}, None),  # wrong management key
    ]
    async with aiohttp.ClientSession() as session:
        for method, path, headers, body in calls:
            async with session.request(method, base + path, headers=headers, json=body) as resp:
                text = await resp.text(errors="replace")
                seen.append(f"{method} {path.split('?')[0]} -> {resp.status}\n{dict(resp.headers)}\n{text}")
        # A client that sends its own key as the model name gets its text back in the 404 (it is
        # its own); the log must still not keep it.
        async with session.post(base + "/v1/chat/completions", headers=client, json={**chat, "model": CLIENT_KEY}) as resp:
            assert resp.status == 404
        # Secrets in paths: a dynamic route and an unknown one; the access line must mask both.
        for path in (f"/v1/models/{CLIENT_KEY}", f"/no-such-route/{MANAGEMENT_KEY}"):
            async with session.get(base + path, headers=client) as resp:
                assert resp.status == 404
    return seen


def assert_clean(where: str, text: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"{where} contains a secret:\n{text}"
    assert PROMPT not in text, f"{where} contains the prompt"


async def start_upstreams(upstreams: Any) -> tuple[FakeUpstream, FakeUpstream]:
    good, bad = await upstreams(), await upstreams()
    bad.fail(None, Fault(status=500, body={"error": {"message": f"upstream refused key {UPSTREAM_KEY}"}}))
    return good, bad


class TestSecretsNeverLeak:
    """Traffic, failures and management calls leave no key and no prompt in logs, events or responses."""

    async def test_in_process(self, upstreams, gateway, caplog, tmp_path):
        caplog.set_level(logging.DEBUG)
        good, bad = await start_upstreams(upstreams)
        data = {"database": str(tmp_path / "cliproxy.db"), **config(good, bad)}
        gw = await gateway(make_config(data, env=ENV))
        responses = await drive(str(gw.client.make_url("")).rstrip("/"))
        assert any(r.startswith("GET /metrics -> 200") for r in responses)
        assert any(r.startswith("POST /v1/chat/completions -> 401") for r in responses)
        assert await gw.app[TRACKER].flush(timeout=5)
        events = await gw.app[STORE].events(limit=1000)
        assert any(e.kind == "disabled" and e.vendor == "bad" for e in events)
        for response in responses:
            assert_clean("a response", response)
        assert_clean("the events", repr(events))
        # aiohttp's own access log (with query strings) is on only in the test server; `serve`
        # turns it off, which the real-process test below checks.
        records = [r for r in caplog.records if r.name != "aiohttp.access"]
        assert any(r.name == "cliproxy.access" for r in records)
        for record in records:
            assert_clean("a log record", record.getMessage())
            assert_clean("a log record's fields", repr(record.__dict__))

    @pytest.mark.parametrize("log_format", ["text", "json"])
    async def test_real_process_stderr(self, upstreams, tmp_path: Path, log_format):
        good, bad = await start_upstreams(upstreams)
        gw = GatewayProcess(tmp_path, {"log-level": "DEBUG", "log-format": log_format, **config(good, bad)}, env=ENV)
        assert not any(s in gw.config_path.read_text() for s in SECRETS)
        gw.start()
        try:
            responses = await drive(gw.url)
        finally:
            assert gw.stop() == 0
        assert any(r.startswith("GET /metrics -> 200") for r in responses)
        for response in responses:
            assert_clean("a response", response)
        log = gw.log()
        assert "/v1/chat/completions" in log and "disabled" in log
        assert_clean("stderr", log)
        events = read_events(tmp_path / "cliproxy.db", limit=1000)
        assert any(e.kind == "disabled" for e in events)
        assert_clean("the events", repr(events))
        assert_clean("the config file", gw.config_path.read_text())
