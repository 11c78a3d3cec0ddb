"""Operations in-process: /healthz, /readyz, /metrics, the access log, the formatters, sd_notify, the unit files.

The real-process halves (notify protocol, signals, stderr) are in `test_ops_process.py`.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import shutil
import socket
import subprocess
import uuid
from pathlib import Path
from typing import Any

import prometheus_client
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from cliproxy.app import create_app
from cliproxy.core import eventlog
from cliproxy.core.config import LoggingSettings
from cliproxy.core.events import ErrorInfo, Event
from cliproxy.fake_upstream import Fault
from cliproxy.sdnotify import notify
from cliproxy.services.config_loader import load_config
from cliproxy.web import logs
from cliproxy.web.keys import CONFIG_MANAGER, METRICS, STORE, TRACKER
from tests.helpers import FakeClock, eventually, make_config, vendor

ROOT = Path(__file__).resolve().parent.parent
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
STREAM = {**CHAT, "stream": True}


async def scrape(gw: Any, **headers: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """/metrics as {(sample name, sorted labels): value}."""
    resp = await gw.client.get("/metrics", headers=headers)
    assert resp.status == 200, await resp.text()
    assert resp.headers["Content-Type"].startswith("text/plain")
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(await resp.text()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def names_with(samples: dict, name: str, label: str) -> set[str]:
    return {dict(lbls)[label] for (n, lbls) in samples if n == name}


class TestHealth:
    """/healthz answers without auth; /readyz is 503 with reasons while the database or its writes fail."""

    async def test_healthz_needs_no_key(self, upstreams, gateway):
        up = await upstreams()
        gw = await gateway({"api-keys": ["client-key"], "openai-compatibility": [vendor("a", up.url, ["m"])]})
        resp = await gw.client.get("/healthz")
        assert resp.status == 200
        assert await resp.json() == {"status": "ok"}
        assert (await gw.client.post("/v1/chat/completions", json=CHAT)).status == 401  # the API still is guarded

    async def test_readyz_ready(self, gateway):
        gw = await gateway({})
        resp = await gw.client.get("/readyz")
        assert resp.status == 200
        assert await resp.json() == {"status": "ready"}

    async def test_readyz_503_when_database_is_gone(self, gateway):
        gw = await gateway({})
        await gw.app[STORE].close()
        resp = await gw.client.get("/readyz")
        assert resp.status == 503
        body = await resp.json()
        assert body["status"] == "unavailable"
        assert body["reasons"] == ["the database does not answer"]
        assert body["error"]["code"] == "not_ready"

    async def test_readyz_503_while_writes_fail_then_recovers(self, gateway, monkeypatch):
        gw = await gateway({"openai-compatibility": [vendor("a", "http://127.0.0.1:9/v1", ["m"])]})
        store, tracker = gw.app[STORE], gw.app[TRACKER]
        real_record = store.record

        async def broken(*args: Any, **kwargs: Any) -> int:
            raise OSError("disk full")

        monkeypatch.setattr(store, "record", broken)
        await tracker.manual_disable(("a", "m"), 60, "test")
        for _ in range(100):
            resp = await gw.client.get("/readyz")
            if resp.status == 503:
                break
            await asyncio.sleep(0.02)
        body = await resp.json()
        assert resp.status == 503
        assert body["reasons"] == ["writes to the database are failing (1 pending)"]
        monkeypatch.setattr(store, "record", real_record)
        assert await tracker.flush(timeout=10)
        assert (await gw.client.get("/readyz")).status == 200


class TestMetrics:
    """/metrics counts requests, attempts, failures, latencies, streams and transitions, with bounded labels."""

    async def test_requests_by_model_vendor_and_status_class(self, upstreams, gateway):
        up = await upstreams()
        gw = await gateway({"openai-compatibility": [vendor("a", up.url, ["m"])]})
        for _ in range(2):
            assert (await gw.client.post("/v1/chat/completions", json=CHAT)).status == 200
        assert (await gw.client.post("/v1/chat/completions", json={**CHAT, "model": "nope"})).status == 404
        samples = await scrape(gw)
        assert value(samples, "cliproxy_requests_total", model="m", vendor="a", status_class="2xx") == 2
        assert value(samples, "cliproxy_requests_total", model="unknown", vendor="none", status_class="4xx") == 1
        assert value(samples, "cliproxy_upstream_attempts_total", model="m") == 2
        assert value(samples, "cliproxy_upstream_latency_seconds_count", model="m", vendor="a") == 2
        assert value(samples, "cliproxy_upstream_ttfb_seconds_count", model="m", vendor="a") == 2
        assert value(samples, "cliproxy_streams_in_flight") == 0

    async def test_config_reloads_by_result(self, upstreams, gateway, tmp_path):
        up = await upstreams()
        path = tmp_path / "config.yaml"
        config = {"database": str(tmp_path / "c.db"), "openai-compatibility": [vendor("a", up.url, ["m"])]}
        path.write_text(yaml.safe_dump(config))
        gw = await gateway(load_config(path, env={}))
        manager = gw.app[CONFIG_MANAGER]
        path.write_text(yaml.safe_dump({**config, "request-retry": 1}))
        assert await manager.reload(reason="test") is True
        path.write_text("port: -1\n")
        assert await manager.reload(reason="test") is False
        assert await gw.app[TRACKER].flush(timeout=5)  # /metrics counts an event once it is committed
        samples = await scrape(gw)
        assert value(samples, "cliproxy_config_reloads_total", result="reloaded") == 1
        assert value(samples, "cliproxy_config_reloads_total", result="rejected") == 1

    async def test_unknown_model_names_share_one_label(self, upstreams, gateway):
        up = await upstreams()
        gw = await gateway({"openai-compatibility": [vendor("a", up.url, ["m"])]})
        for _ in range(30):
            await gw.client.post("/v1/chat/completions", json={**CHAT, "model": uuid.uuid4().hex})
        samples = await scrape(gw)
        assert names_with(samples, "cliproxy_requests_total", "model") == {"unknown"}
        assert value(samples, "cliproxy_requests_total", model="unknown", vendor="none", status_class="4xx") == 30

    async def test_failover_attempts_and_failure_reasons(self, upstreams, gateway):
        bad, good = await upstreams(), await upstreams()
        bad.fail(None, Fault(status=500))
        gw = await gateway(
            {
                "auto-disable": {"failure-threshold": 0},
                "openai-compatibility": [vendor("bad", bad.url, ["m"], priority=1), vendor("good", good.url, ["m"])],
            }
        )
        resp = await gw.client.post("/v1/chat/completions", json=CHAT)
        assert resp.status == 200
        samples = await scrape(gw)
        assert value(samples, "cliproxy_requests_total", model="m", vendor="good", status_class="2xx") == 1
        assert value(samples, "cliproxy_upstream_attempts_total", model="m") == 2
        assert value(samples, "cliproxy_failovers_total", model="m") == 1
        assert value(samples, "cliproxy_upstream_failures_total", model="m", reason="http_status") == 1

    async def test_client_errors_are_not_failures(self, upstreams, gateway):
        up = await upstreams()
        up.fail(None, Fault(status=400))
        gw = await gateway({"openai-compatibility": [vendor("a", up.url, ["m"])]})
        assert (await gw.client.post("/v1/chat/completions", json=CHAT)).status == 400
        samples = await scrape(gw)
        assert value(samples, "cliproxy_requests_total", model="m", vendor="a", status_class="4xx") == 1
        assert not names_with(samples, "cliproxy_upstream_failures_total", "reason")

    async def test_streams_in_flight(self, upstreams, gateway):
        up = await upstreams(chunks=5, chunk_delay=0.2)
        gw = await gateway({"openai-compatibility": [vendor("a", up.url, ["m"])]})
        resp = await gw.client.post("/v1/chat/completions", json=STREAM)
        assert resp.status == 200
        await resp.content.readany()
        assert value(await scrape(gw), "cliproxy_streams_in_flight") == 1
        assert (await resp.read()).endswith(b"data: [DONE]\n\n")

        async def no_stream_in_flight() -> bool:  # the handler finishes just after the last byte
            return value(await scrape(gw), "cliproxy_streams_in_flight") == 0

        await eventually(no_stream_in_flight, "cliproxy_streams_in_flight to be 0")
        samples = await scrape(gw)
        assert value(samples, "cliproxy_streams_in_flight") == 0
        assert value(samples, "cliproxy_upstream_ttfb_seconds_count", model="m", vendor="a") == 1

    async def test_client_disconnect_counts_the_stream_out(self, upstreams, gateway):
        up = await upstreams(chunks=50, chunk_delay=0.1)
        gw = await gateway({"openai-compatibility": [vendor("a", up.url, ["m"])]})
        resp = await gw.client.post("/v1/chat/completions", json=STREAM)
        await resp.content.readany()
        resp.close()
        for _ in range(100):
            samples = await scrape(gw)
            if value(samples, "cliproxy_requests_total", model="m", vendor="a", status_class="4xx") == 1:
                break
            await asyncio.sleep(0.02)
        assert value(samples, "cliproxy_streams_in_flight") == 0
        assert value(samples, "cliproxy_requests_total", model="m", vendor="a", status_class="4xx") == 1  # 499

    async def test_disable_enable_events_and_disabled_now(self, upstreams, gateway):
        up = await upstreams()
        up.fail(None, Fault(status=500))
        clock = FakeClock()
        gw = await gateway(
            {
                "auto-disable": {"failure-threshold": 1, "disable-duration-seconds": 30},
                "openai-compatibility": [vendor("a", up.url, ["m"])],
            },
            clock=clock,
        )
        assert (await gw.client.post("/v1/chat/completions", json=CHAT)).status == 500
        assert await gw.app[TRACKER].flush(timeout=5)  # /metrics reports a transition once it is committed
        samples = await scrape(gw)
        assert value(samples, "cliproxy_pair_disables_total", vendor="a", model="m", reason="auto") == 1
        assert value(samples, "cliproxy_pairs_disabled", reason="auto") == 1
        assert value(samples, "cliproxy_pair_disabled", vendor="a", model="m", reason="auto") == 1
        assert value(samples, "cliproxy_store_writes_healthy") == 1
        clock.advance(30)
        gw.app[TRACKER].expire_due()
        assert await gw.app[TRACKER].flush(timeout=5)
        samples = await scrape(gw)
        assert value(samples, "cliproxy_pair_enables_total", vendor="a", model="m", cause="expired") == 1
        assert value(samples, "cliproxy_pairs_disabled", reason="auto") == 0
        assert not names_with(samples, "cliproxy_pair_disabled", "vendor")

    async def test_half_open_then_slow_start_are_recovering_series(self, upstreams, gateway):
        up = await upstreams()
        up.fail(None, Fault(status=500, times=1))
        clock = FakeClock()
        auto_disable = {"failure-threshold": 1, "disable-duration-seconds": 30, "recovery": "half-open", "slow-start-seconds": 60}
        gw = await gateway({"auto-disable": auto_disable, "openai-compatibility": [vendor("a", up.url, ["m"])]}, clock=clock)
        assert (await gw.client.post("/v1/chat/completions", json=CHAT)).status == 500
        assert await gw.app[TRACKER].flush(timeout=5)
        assert not names_with(await scrape(gw), "cliproxy_pair_recovering", "state")  # disabled: not recovering yet
        clock.advance(30)
        samples = await scrape(gw)
        assert names_with(samples, "cliproxy_pair_recovering", "state") == {"half-open"}
        assert value(samples, "cliproxy_pair_recovering", vendor="a", model="m", state="half-open") == 1
        assert (await gw.client.post("/v1/chat/completions", json=CHAT)).status == 200  # the test request succeeds
        assert await gw.app[TRACKER].flush(timeout=5)
        samples = await scrape(gw)
        assert names_with(samples, "cliproxy_pair_recovering", "state") == {"slow-start"}
        assert value(samples, "cliproxy_pair_recovering", vendor="a", model="m", state="slow-start") == 1
        clock.advance(60)
        assert not names_with(await scrape(gw), "cliproxy_pair_recovering", "state")  # back to full weight

    async def test_each_app_has_its_own_registry(self, upstreams, gateway):
        up = await upstreams()
        config = {"openai-compatibility": [vendor("a", up.url, ["m"])]}
        one, two = await gateway(config), await gateway(config)
        await one.client.post("/v1/chat/completions", json=CHAT)
        assert value(await scrape(one), "cliproxy_requests_total", model="m", vendor="a", status_class="2xx") == 1
        assert value(await scrape(two), "cliproxy_requests_total", model="m", vendor="a", status_class="2xx") == 0
        assert not [m for m in prometheus_client.REGISTRY.collect() if m.name.startswith("cliproxy")]

    async def test_event_listener_counts_reloads(self):
        metrics = create_app(make_config({}))[METRICS]
        metrics.on_event(Event(kind="config-reloaded", at=0.0))
        metrics.on_event(Event(kind="config-rejected", at=0.0))
        text = metrics.render().decode()
        assert 'cliproxy_config_reloads_total{result="reloaded"} 1.0' in text
        assert 'cliproxy_config_reloads_total{result="rejected"} 1.0' in text


class TestMetricsAuth:
    """With metrics.require-auth, /metrics wants the management key, like the management API."""

    SECRET = "mgmt-key-for-metrics-0001"

    def config(self, **metrics: Any) -> dict[str, Any]:
        return {"metrics": {"require-auth": True, **metrics}, "remote-management": {"secret-key": self.SECRET}}

    async def test_open_by_default(self, gateway):
        gw = await gateway({"remote-management": {"secret-key": self.SECRET}})
        assert (await gw.client.get("/metrics")).status == 200

    async def test_key_as_bearer_or_header(self, gateway):
        gw = await gateway(self.config())
        assert (await gw.client.get("/metrics", headers={"Authorization": f"Bearer {self.SECRET}"})).status == 200
        assert (await gw.client.get("/metrics", headers={"X-Management-Key": self.SECRET})).status == 200

    async def test_missing_or_wrong_key_is_401(self, gateway):
        gw = await gateway(self.config())
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"X-Management-Key": self.SECRET + "x"}):
            resp = await gw.client.get("/metrics", headers=headers)
            assert resp.status == 401
            body = await resp.json()
            assert body["error"]["type"] == "authentication_error"
            assert "cliproxy_" not in await resp.text()

    async def test_no_management_key_configured_is_403(self, gateway):
        gw = await gateway({"metrics": {"require-auth": True}})
        resp = await gw.client.get("/metrics")
        assert resp.status == 403
        assert "secret-key" in (await resp.json())["error"]["message"]

    async def test_probes_stay_open(self, gateway):
        gw = await gateway(self.config())
        assert (await gw.client.get("/healthz")).status == 200
        assert (await gw.client.get("/readyz")).status == 200


def access_records(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [r.cliproxy_access for r in caplog.records if r.name == "cliproxy.access"]


class TestAccessLog:
    """One access line per request with its fields; the request id goes in and comes back out."""

    async def test_one_line_per_request_with_fields(self, upstreams, gateway, caplog):
        caplog.set_level(logging.INFO)
        up = await upstreams(chunks=3)
        gw = await gateway({"openai-compatibility": [vendor("a", up.url, [{"name": "up-m", "alias": "m"}])]})
        resp = await gw.client.post("/v1/chat/completions", json=STREAM, headers={"x-request-id": "req-123"})
        body = await resp.read()
        await asyncio.sleep(0.05)
        [line] = access_records(caplog)
        assert line == {
            "method": "POST",
            "path": "/v1/chat/completions",
            "status": 200,
            "model": "m",
            "vendor": "a",
            "upstream_model": "up-m",
            "attempts": 1,
            "latency_ms": line["latency_ms"],
            "ttfb_ms": line["ttfb_ms"],
            "bytes": len(body),
            "outcome": "ok",
            "request_id": "req-123",
        }
        assert 0 < line["ttfb_ms"] <= line["latency_ms"]
        [record] = [r for r in caplog.records if r.name == "cliproxy.access"]
        assert record.levelno == logging.INFO
        assert record.getMessage().startswith("method='POST' path='/v1/chat/completions' status=200 model='m'")

    async def test_errors_get_a_line_too(self, gateway, caplog):
        caplog.set_level(logging.INFO)
        gw = await gateway({"api-keys": ["client-key"]})
        assert (await gw.client.post("/v1/chat/completions", json=CHAT)).status == 401
        assert (await gw.client.get("/nowhere")).status == 404
        lines = access_records(caplog)
        assert [(x["path"], x["status"]) for x in lines] == [("/v1/chat/completions", 401), ("/nowhere", 404)]
        assert lines[0]["attempts"] == 0 and lines[1]["attempts"] is None

    async def test_client_gone_before_the_upstream_answered_is_a_499_client_disconnect(self, upstreams, gateway, caplog):
        """The client leaves while the upstream has not sent its headers yet: the access line and the
        metrics still show the request, as 499 with outcome client_disconnect, and nothing counts against the pair."""
        caplog.set_level(logging.INFO)
        up = await upstreams()
        up.fail(None, Fault(stall_before_headers=30))
        gw = await gateway({"auto-disable": {"failure-threshold": 1}, "openai-compatibility": [vendor("a", up.url, ["m"])]})
        sent = asyncio.create_task(gw.client.post("/v1/chat/completions", json=CHAT, headers={"x-request-id": "gone-1"}))
        deadline = asyncio.get_running_loop().time() + 10
        while not up.requests:  # the attempt is open upstream, its headers not yet back
            assert asyncio.get_running_loop().time() < deadline, "the upstream never got the request"
            await asyncio.sleep(0.01)
        sent.cancel()  # the client closes its connection
        with pytest.raises(asyncio.CancelledError):
            await sent
        while not [x for x in access_records(caplog) if x["request_id"] == "gone-1"]:
            assert asyncio.get_running_loop().time() < deadline, "no access line for the client that left"
            await asyncio.sleep(0.01)
        [line] = [x for x in access_records(caplog) if x["request_id"] == "gone-1"]
        assert (line["status"], line["outcome"], line["vendor"], line["attempts"]) == (499, "client_disconnect", "a", 1)
        samples = await scrape(gw)
        assert value(samples, "cliproxy_requests_total", model="m", vendor="a", status_class="4xx") == 1
        assert value(samples, "cliproxy_upstream_attempts_total", model="m") == 1
        assert not names_with(samples, "cliproxy_upstream_failures_total", "reason")
        assert gw.app[TRACKER].is_available(("a", "m"))

    async def test_request_id_echoed_or_made(self, upstreams, gateway):
        up = await upstreams()
        gw = await gateway({"openai-compatibility": [vendor("a", up.url, ["m"])]})
        given = await gw.client.post("/v1/chat/completions", json=CHAT, headers={"x-request-id": "abc-1"})
        assert given.headers["x-request-id"] == "abc-1"
        made = await gw.client.post("/v1/chat/completions", json=STREAM)
        assert re.fullmatch(r"[0-9a-f]{16}", made.headers["x-request-id"])
        hostile = await gw.client.get("/healthz", headers={"x-request-id": 'a b" or 1=1' + "x" * 300})
        assert re.fullmatch(r"[0-9a-f]{16}", hostile.headers["x-request-id"])
        error = await gw.client.post("/v1/chat/completions", json={**CHAT, "model": "nope"}, headers={"x-request-id": "e-2"})
        assert error.status == 404 and error.headers["x-request-id"] == "e-2"
        assert len({made.headers["x-request-id"], hostile.headers["x-request-id"]}) == 2

    async def test_probes_are_logged_at_debug(self, gateway, caplog):
        caplog.set_level(logging.INFO)
        gw = await gateway({})
        for path in ("/healthz", "/readyz", "/metrics"):
            assert (await gw.client.get(path)).status == 200
        assert access_records(caplog) == []
        caplog.set_level(logging.DEBUG)
        await gw.client.get("/healthz")
        assert [x["path"] for x in access_records(caplog)] == ["/healthz"]

    async def test_nothing_is_built_when_the_level_filters_the_line(self, upstreams, gateway, caplog, monkeypatch):
        caplog.set_level(logging.WARNING)

        def must_not_be_called(*args: Any) -> None:
            raise AssertionError("an access line was built although it is filtered out")

        monkeypatch.setattr(logs, "_AccessLine", must_not_be_called)
        up = await upstreams()
        gw = await gateway({"openai-compatibility": [vendor("a", up.url, ["m"])]})
        assert (await gw.client.post("/v1/chat/completions", json=CHAT)).status == 200
        assert access_records(caplog) == []

    async def test_prompts_and_completions_are_not_logged(self, upstreams, gateway, caplog):
        caplog.set_level(logging.DEBUG)
        up = await upstreams()
        gw = await gateway({"openai-compatibility": [vendor("a", up.url, ["m"])]})
        prompt = "the-secret-prompt-text-4711"
        resp = await gw.client.post("/v1/chat/completions", json={**CHAT, "messages": [{"role": "user", "content": prompt}]})
        completion = (await resp.json())["choices"][0]["message"]["content"]
        assert prompt not in caplog.text
        assert completion not in caplog.text


def _record(msg: str, *args: Any, name: str = "cliproxy", level: int = logging.INFO, **extra: Any) -> logging.LogRecord:
    record = logging.LogRecord(name, level, __file__, 1, msg, args, None)
    record.__dict__.update(extra)
    return record


class TestFormatters:
    """Text and JSON lines carry the structured fields and never a configured or credential-shaped secret."""

    SECRETS = ("client-key-abcdef123", "upstream-XYZ-98765")

    def test_text_line(self):
        formatter = logs.TextFormatter(lambda: self.SECRETS)
        line = formatter.format(_record("hello %s", "world"))
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z INFO cliproxy hello world", line)

    def test_text_masks_secrets_and_tracebacks(self):
        formatter = logs.TextFormatter(lambda: self.SECRETS)
        try:
            raise ValueError("refused key upstream-XYZ-98765")
        except ValueError:
            import sys

            record = logging.LogRecord(
                "cliproxy",
                logging.ERROR,
                __file__,
                1,
                "with %s and %s",
                ("client-key-abcdef123", "Bearer sk-live-1234567890"),
                sys.exc_info(),
            )
        line = formatter.format(record)
        for secret in (*self.SECRETS, "sk-live-1234567890"):
            assert secret not in line
        assert "Traceback" in line and "refused key ***" in line

    def test_json_access_line(self):
        formatter = logs.JsonFormatter(lambda: self.SECRETS)
        # Access fields are masked against the configured keys when the line is built (per request,
        # only where client text could hold one); the formatter adds the credential-shape check.
        fields = {"method": "GET", "path": "/x/Bearer abcdefghijkl", "status": 200, "request_id": "r"}
        line = json.loads(formatter.format(_record("%s", "ignored", name="cliproxy.access", cliproxy_access=fields)))
        assert line["message"] == "access"
        assert line["logger"] == "cliproxy.access" and line["level"] == "INFO"
        assert (line["method"], line["path"], line["status"], line["request_id"]) == ("GET", "/x/Bearer ***", 200, "r")
        assert line["time"].endswith("Z")

    def test_json_event_line_has_the_event_fields(self):
        stream = io.StringIO()
        logger = logging.getLogger("cliproxy.test-json-event")
        logger.propagate = False
        handler = logging.StreamHandler(stream)
        handler.setFormatter(logs.JsonFormatter())
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        try:
            event = Event(
                kind="disabled",
                at=1_800_000_000.0,
                vendor="a",
                model="m",
                reason="auto",
                failure_count=3,
                disabled_at=1_800_000_000.0,
                disabled_until=1_800_000_300.0,
                last_error=ErrorInfo(500, "boom"),
            )
            eventlog.log_event(event, logger)
            eventlog.log_event(Event(kind="config-rejected", at=1_800_000_000.0, detail={"problems": ["port: bad"]}), logger)
        finally:
            logger.removeHandler(handler)
        disabled, rejected = [json.loads(x) for x in stream.getvalue().splitlines()]
        assert disabled["level"] == "WARNING" and disabled["message"] == "disabled"
        assert (disabled["vendor"], disabled["model"], disabled["reason"], disabled["failure_count"]) == ("a", "m", "auto", 3)
        assert disabled["disabled_until"] == "2027-01-15T08:05:00.000Z"
        assert (disabled["last_error_status"], disabled["last_error"]) == (500, "boom")
        assert rejected["level"] == "WARNING" and rejected["detail"] == {"problems": ["port: bad"]}

    async def test_tracker_transitions_are_json_lines(self, upstreams, gateway):
        stream = io.StringIO()
        handler = logs.configure_logging(LoggingSettings(level="INFO", format="json"), stream=stream)
        try:
            up = await upstreams()
            up.fail(None, Fault(status=500))
            gw = await gateway({"auto-disable": {"failure-threshold": 1}, "openai-compatibility": [vendor("a", up.url, ["m"])]})
            await gw.client.post("/v1/chat/completions", json=CHAT)
        finally:
            logging.getLogger().removeHandler(handler)
        lines = [json.loads(x) for x in stream.getvalue().splitlines()]
        [disabled] = [x for x in lines if x.get("event") == "disabled"]
        assert (disabled["logger"], disabled["level"], disabled["vendor"], disabled["model"]) == (
            "cliproxy.tracker",
            "WARNING",
            "a",
            "m",
        )
        assert disabled["failure_count"] == 1 and disabled["last_error_status"] == 500
        [access] = [x for x in lines if x["message"] == "access"]
        assert (access["status"], access["vendor"], access["outcome"]) == (500, "a", "http_status")

    def test_configure_logging_replaces_only_its_own_handler(self):
        root = logging.getLogger()
        level = root.level
        other = logging.NullHandler()
        root.addHandler(other)
        try:
            first = logs.configure_logging(LoggingSettings(level="WARNING"), stream=io.StringIO())
            second = logs.configure_logging(LoggingSettings(level="DEBUG", format="json"), stream=io.StringIO())
            assert first not in root.handlers and second in root.handlers and other in root.handlers
            assert isinstance(second.formatter, logs.JsonFormatter)
            assert root.level == logging.DEBUG
        finally:
            root.removeHandler(second)
            root.removeHandler(other)
            root.setLevel(level)


class TestSdNotify:
    """The notify datagram reaches a path or an abstract socket, and is a no-op without $NOTIFY_SOCKET."""

    def test_without_socket_does_nothing(self):
        assert notify("READY=1", env={}) is False

    def test_unreachable_socket_is_not_an_error(self, tmp_path):
        assert notify("READY=1", env={"NOTIFY_SOCKET": str(tmp_path / "nobody")}) is False

    def test_path_socket(self, tmp_path):
        path = str(tmp_path / "notify.sock")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind(path)
            assert notify("READY=1\nSTATUS=up", env={"NOTIFY_SOCKET": path})
            assert sock.recv(4096) == b"READY=1\nSTATUS=up"

    def test_abstract_socket(self):
        name = f"cliproxy-test-{uuid.uuid4().hex}"
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind("\0" + name)
            assert notify("STOPPING=1", env={"NOTIFY_SOCKET": "@" + name})
            assert sock.recv(4096) == b"STOPPING=1"


def unit_directives(text: str) -> dict[str, list[str]]:
    directives: dict[str, list[str]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, val = line.partition("=")
            directives.setdefault(key.strip(), []).append(val.strip())
    return directives


class TestServiceFiles:
    """The systemd unit and its installer say what the operations issue asks for."""

    def test_unit(self):
        unit = unit_directives((ROOT / "scripts" / "cliproxy.service").read_text())
        assert unit["Type"] == ["notify"]
        assert unit["ExecStart"][0].endswith("cliproxy serve --config /etc/cliproxy/config.yaml")
        assert unit["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
        assert unit["Restart"] == ["on-failure"]
        # `cliproxy serve` exits 2 on an invalid config, 3 on a database it cannot use: both permanent.
        assert unit["RestartPreventExitStatus"] == ["2 3"]
        assert unit["StateDirectory"] == ["cliproxy"]
        assert unit["User"] == ["cliproxy"] and unit["Group"] == ["cliproxy"]
        assert unit["NoNewPrivileges"] == ["yes"] and unit["PrivateTmp"] == ["yes"]
        assert unit["ProtectSystem"] == ["strict"]
        writable = " ".join(unit["ReadWritePaths"]).split()
        assert "/var/lib/cliproxy" in writable and "/etc/cliproxy" in writable
        stop = int(unit["TimeoutStopSec"][0])
        assert stop > 30 + 5  # shutdown-grace-seconds (default 30) plus the tracker's final flush

    @pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
    def test_systemd_accepts_the_unit(self, tmp_path):
        unit = (ROOT / "scripts" / "cliproxy.service").read_text()
        unit = re.sub(r"(?m)^ExecStart=\S+", "ExecStart=/bin/true", unit)  # verify wants an existing binary
        (tmp_path / "cliproxy.service").write_text(unit)
        result = subprocess.run(["systemd-analyze", "verify", str(tmp_path / "cliproxy.service")], capture_output=True, text=True)
        assert result.returncode == 0 and result.stderr == "", result.stderr

    def test_installer_stops_at_the_first_failing_step(self, tmp_path):
        """A step that fails without a check of its own (a file stands where the state directory goes)
        ends the run non-zero, and nothing after it is written: `set -e` is at work. What a full run
        writes is checked in tests/test_install.py."""
        script = ROOT / "scripts" / "install-service.sh"
        prefix = tmp_path / "prefix"
        (prefix / "var" / "lib").mkdir(parents=True)
        (prefix / "var" / "lib" / "cliproxy").write_text("a file, not a directory\n")
        stub = tmp_path / "cliproxy"  # --bin: no venv to build, the run reaches the directories at once
        stub.write_text("#!/bin/sh\nexit 0\n")
        stub.chmod(0o755)
        result = subprocess.run(
            ["bash", str(script), "--prefix", str(prefix), "--no-systemd", "--bin", str(stub)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode != 0, result.stdout
        assert "cliproxy" in result.stderr  # install(1) says which directory it could not make
        assert "installed" in result.stdout and (prefix / "etc" / "cliproxy" / "config.yaml").is_file()  # the steps before it ran
        assert not (prefix / "etc" / "systemd").exists()  # the unit, the step after it, did not

    def test_installer_rewrites_the_database_key(self, tmp_path):
        """The installer's database rewrite, run on a sample config (the only part that runs without root)."""
        script = ROOT / "scripts" / "install-service.sh"
        config = tmp_path / "config.yaml"
        config.write_text("port: 8317\ndatabase: ./cliproxy.db\nopenai-compatibility: []\n")
        subprocess.run(["bash", str(script), "--set-database-only", str(config)], check=True)
        subprocess.run(["bash", str(script), "--set-database-only", str(config)], check=True)  # idempotent
        assert make_config_from(config).database == "/var/lib/cliproxy/cliproxy.db"
        config.write_text("port: 8317\nopenai-compatibility: []\n")
        subprocess.run(["bash", str(script), "--set-database-only", str(config)], check=True)
        assert make_config_from(config).database == "/var/lib/cliproxy/cliproxy.db"


def make_config_from(path: Path):
    from cliproxy.services.config_loader import load_config

    return load_config(path, env={})
