"""The classification table (`cliproxy.core.classify`): every case of what an answer means for its pair."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest

from cliproxy.core.classify import (
    FIRST_TOKEN_HOLD_BYTES,
    FIRST_TOKEN_HOLD_EVENTS,
    KIND_OF,
    StreamStart,
    classify_body,
    classify_status,
    event_verdict,
    failure,
)
from cliproxy.core.config import DEFAULT_COUNT_STATUSES
from cliproxy.fake_upstream import Fault
from cliproxy.fake_upstream.server import IN_200_MESSAGE
from cliproxy.web.keys import STORE, TRACKER
from tests.helpers import vendor

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def _error(code: str | None = None, message: str = "boom") -> bytes:
    return json.dumps({"error": {"message": message, "type": "x", "param": None, "code": code}}).encode()


def _data(obj: object) -> bytes:
    return b"data: " + json.dumps(obj).encode()


def _chunk(**delta: object) -> bytes:
    return _data({"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta}]})


STATUS_CASES = [
    # (status, body, kind, reason)
    (200, b"", None, None),
    (302, b"", None, None),
    (400, _error("invalid_value"), "neutral", "client_error"),
    (400, _error("model_not_found"), "failure", "model_not_found"),
    (400, _error("model_not_available"), "failure", "model_not_found"),
    (400, b"model_not_found but not JSON", "neutral", "client_error"),
    (401, _error(), "failure", "http_status"),
    (403, b"", "failure", "http_status"),
    (404, b"", "failure", "model_not_found"),
    (404, _error("model_not_found"), "failure", "model_not_found"),
    (408, b"", "failure", "http_status"),
    (422, b"", "neutral", "client_error"),
    (429, b"", "failure", "http_status"),
    (500, b"", "failure", "http_status"),
    (503, b"", "failure", "http_status"),
]


@pytest.mark.parametrize(("status", "body", "kind", "reason"), STATUS_CASES)
def test_classify_status(status, body, kind, reason):
    outcome = classify_status(status, DEFAULT_COUNT_STATUSES, body)
    if kind is None:
        assert outcome is None
        return
    assert outcome is not None
    assert (outcome.kind, outcome.reason) == (kind, reason)
    assert outcome.error is not None and outcome.error.status == status
    assert outcome.error.kind == KIND_OF.get(reason, "")


def test_404_not_counted_when_count_statuses_leaves_it_out():
    outcome = classify_status(404, frozenset({500}))
    assert outcome is not None and (outcome.kind, outcome.reason) == ("neutral", "client_error")
    # ...but a body naming the missing model still counts: cliproxy only forwards configured models.
    outcome = classify_status(404, frozenset({500}), _error("model_not_found"))
    assert outcome is not None and outcome.reason == "model_not_found"


BODY_CASES = [
    (_error(), "error_in_200"),
    (_error("model_not_found"), "model_not_found"),
    (b'{"error": "quota exhausted"}', "error_in_200"),
    (json.dumps({"object": "chat.completion", "choices": [{"message": {"content": "an error"}}]}).encode(), None),
    (json.dumps({"choices": [], "error": {"message": "partial"}}).encode(), None),  # an answer that also reports
    (json.dumps({"object": "list", "data": [], "error": {"message": "x"}}).encode(), None),
    (json.dumps({"output": [], "error": {"message": "x"}}).encode(), None),
    (b'{"error": null, "choices": []}', None),
    (b'{"error": null}', None),
    (b'{"id": "x", "object": "chat.completion"}', None),
    (b'<html>"error"</html>', None),
    (b'{"error": {"message": "cut', None),
    (b'["error"]', None),
    (b"", None),
]


@pytest.mark.parametrize(("body", "reason"), BODY_CASES)
def test_classify_body(body, reason):
    assert classify_body(body) == reason


EVENT_CASES = [
    (_chunk(role="assistant", content="Hi"), "content"),
    (_chunk(content="Hi"), "content"),
    (_chunk(reasoning_content="thinking"), "content"),
    (_chunk(reasoning="thinking"), "content"),
    (_chunk(tool_calls=[{"index": 0, "function": {"name": "f"}}]), "content"),
    (_chunk(refusal="no"), "content"),
    (_data({"choices": [{"text": "Hi", "index": 0}]}), "content"),
    (_data({"type": "response.output_text.delta", "delta": "Hi"}), "content"),
    (_data({"object": "list", "data": [{"embedding": [0.1]}]}), "content"),
    (b"data: not json at all", "content"),  # unknown: relayed
    (_chunk(role="assistant"), "empty"),
    (_chunk(role="assistant", content=""), "empty"),
    (_data({"choices": []}), "empty"),
    (_data({"choices": [], "usage": {"total_tokens": 3}}), "empty"),
    (_data({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}), "empty"),
    (b"event: response.created\n" + _data({"type": "response.created", "response": {}}), "empty"),
    (_data({"type": "response.in_progress"}), "empty"),
    (b"event: message_start\n" + _data({"type": "message_start", "message": {"id": "msg_1", "content": []}}), "empty"),
    (b"event: ping\n" + _data({"type": "ping"}), "empty"),
    (_data({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}}), "content"),
    (b": ping", "empty"),
    (b"event: ping", "empty"),
    (b"data: [DONE]", "done"),
    (b"data:[DONE]", "done"),
    (b"data: " + _error(), "error"),
    (b"event: error\n" + _data({"message": "overloaded"}), "error"),
    (_data({"type": "error", "message": "overloaded"}), "error"),
    (_data({"type": "response.failed", "response": {}}), "error"),
    (b'data: {"error": {\ndata: "message": "split over lines"}}', "error"),
]


@pytest.mark.parametrize(("event", "verdict"), EVENT_CASES)
def test_event_verdict(event, verdict):
    assert event_verdict(event)[0] == verdict


class TestStreamStart:
    def test_held_until_content_then_content(self):
        watch = StreamStart()
        assert watch.feed(b": ping\n\n") is None
        assert watch.feed(_chunk(role="assistant") + b"\n\n") is None
        assert watch.feed(_chunk(content="Hi") + b"\n\n") == "content"

    def test_content_split_across_chunks(self):
        frame = _chunk(content="Hi") + b"\n\n"
        watch = StreamStart()
        assert watch.feed(frame[:10]) is None
        assert watch.feed(frame[10:]) == "content"

    def test_crlf_event_ends(self):
        watch = StreamStart()
        assert watch.feed(_chunk(role="assistant") + b"\r\n\r\n" + _chunk(content="x") + b"\r\n\r\n") == "content"

    def test_first_event_error(self):
        watch = StreamStart()
        assert watch.feed(b"data: " + _error(message="overloaded") + b"\n\n") == "error"
        assert watch.error_reason() == "error_in_200"
        watch = StreamStart()
        assert watch.feed(b"data: " + _error("model_not_found") + b"\n\n") == "error"
        assert watch.error_reason() == "model_not_found"

    def test_done_without_content_is_empty_stream(self):
        watch = StreamStart()
        assert watch.feed(_chunk(role="assistant") + b"\n\n") is None
        assert watch.feed(b"data: [DONE]\n\n") == "empty_stream"

    def test_eof_without_content_is_empty_stream(self):
        watch = StreamStart()
        assert watch.feed(_chunk(role="assistant") + b"\n\n") is None
        assert watch.end() == "empty_stream"
        assert StreamStart().end() == "empty_stream"

    def test_eof_with_unterminated_content_event_is_content(self):
        watch = StreamStart()
        assert watch.feed(_chunk(content="Hi")) is None  # no blank line yet: undecided
        assert watch.end() == "content"

    def test_hold_bounded_by_events(self):
        watch = StreamStart()
        frame = b": ping\n\n"
        verdicts = [watch.feed(frame) for _ in range(FIRST_TOKEN_HOLD_EVENTS)]
        assert verdicts[:-1] == [None] * (FIRST_TOKEN_HOLD_EVENTS - 1)
        assert verdicts[-1] == "overflow"

    def test_hold_bounded_by_bytes(self):
        watch = StreamStart()
        assert watch.feed(b": " + b"x" * FIRST_TOKEN_HOLD_BYTES) == "overflow"


def test_failure_carries_its_kind():
    for reason, kind in KIND_OF.items():
        outcome = failure(reason, None, "m")
        assert (outcome.kind, outcome.reason) == ("failure", reason)
        assert outcome.error is not None and outcome.error.kind == kind
    assert set(KIND_OF.values()) == {
        "http_status",
        "connect",
        "timeout",
        "first_token_timeout",
        "stream_idle",
        "stream_error",
        "error_in_200",
        "empty_stream",
        "model_not_found",
    }


# ------------------------------------------------------------------ through the real gateway


class TestKindEverywhere:
    """A failure the status hides counts with its kind: tracker, events (read back from SQLite), the
    management API, the metrics `reason` label and the access line."""

    async def test_error_in_200_trips_with_its_kind(self, admin, upstreams):
        bad, good = await upstreams(), await upstreams()
        bad.fail(None, Fault(error_in_200=True))
        a = await admin(
            {
                "auto-disable": {"failure-threshold": 2},
                "openai-compatibility": [vendor("bad", bad.url, ["m"], priority=1), vendor("good", good.url, ["m"])],
            }
        )
        for _ in range(2):
            resp = await a.chat()
            assert (resp.status, resp.headers["x-cliproxy-vendor"], resp.headers["x-cliproxy-attempts"]) == (200, "good", "2")
        [event] = await a.events(kind="disabled")
        assert event.last_error.kind == "error_in_200"
        assert event.last_error.status == 200
        assert IN_200_MESSAGE in event.last_error.message
        [row] = (await a.get("/api/models/disabled")).json["disabled"]
        assert row["last_error"]["kind"] == "error_in_200"
        [api_event] = [e for e in (await a.get("/api/events")).json["events"] if e["kind"] == "disabled"]
        assert api_event["last_error"]["kind"] == "error_in_200"
        metrics = await (await a.gw.client.get("/metrics")).text()
        assert 'cliproxy_upstream_failures_total{model="m",reason="error_in_200"} 2.0' in metrics

    async def test_kind_is_stored_with_the_event_and_the_row(self, admin, upstreams, caplog):
        bad = await upstreams()
        bad.fail(None, Fault(status=404))
        a = await admin({"auto-disable": {"failure-threshold": 1}, "openai-compatibility": [vendor("bad", bad.url, ["m"])]})
        caplog.set_level(logging.INFO, logger="cliproxy.access")
        resp = await a.chat()
        assert resp.status == 404  # the upstream's own answer, relayed: no vendor was left
        [access] = [r.cliproxy_access for r in caplog.records if r.name == "cliproxy.access"]
        assert access["outcome"] == "model_not_found"
        [event] = await a.events(kind="disabled")
        assert (event.last_error.status, event.last_error.kind) == (404, "model_not_found")
        [record] = await a.app[STORE].load_disabled()  # as a restart reads it back
        assert record.last_error.kind == "model_not_found"


class TestFirstToken:
    """The first-token timeout runs from the attempt's start, not from the last chunk."""

    async def test_pings_do_not_reset_the_first_token_clock(self, upstreams, gateway):
        # A role-only chunk every 0.1 s keeps `stream-idle` (0.5 s) from firing; `first-token` (0.4 s) still does.
        bad, good = await upstreams(chunks=3), await upstreams()
        bad.fail(None, Fault(role_chunk_first=True, stall_after_chunks=1, stall_seconds=5))
        gw = await gateway(
            {
                "openai-compatibility": [
                    {**vendor("bad", bad.url, ["m"], priority=1), "timeouts": {"first-token": 0.4, "stream-idle": 5}},
                    vendor("good", good.url, ["m"]),
                ]
            }
        )
        resp = await gw.client.post("/v1/chat/completions", json={**CHAT, "stream": True})
        body = await resp.read()
        assert (resp.status, resp.headers["x-cliproxy-vendor"]) == (200, "good")
        assert body.rstrip().endswith(b"data: [DONE]")
        state = gw.app[TRACKER].state(("bad", "m"))
        assert state is not None and state.last_error is not None and state.last_error.kind == "first_token_timeout"

    async def test_content_is_relayed_before_the_stream_ends(self, upstreams, gateway):
        # Held back only until the first content: the client has the first token while the upstream still streams.
        up = await upstreams(chunks=3)
        up.fail(None, Fault(role_chunk_first=True, stall_after_chunks=2, stall_seconds=5))
        gw = await gateway({"openai-compatibility": [vendor("a", up.url, ["m"])]})
        resp = await gw.client.post("/v1/chat/completions", json={**CHAT, "stream": True})
        assert resp.status == 200
        first = b""
        async with asyncio.timeout(3):
            while b'"content"' not in first:
                first += await resp.content.readany()
        assert b'"role"' in first  # the held role-only chunk went out with it, in order
        resp.close()
