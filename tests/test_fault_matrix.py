"""The upstream fault matrix: every misbehaviour of the fake upstream, streaming and not, with and without a fallback.

Each case runs the real gateway against a faulty vendor `v` (priority 1) and, below it, a healthy
vendor `ok`; then again with `v` alone for the model (`ok` only serves `h`, the health probe). For
each it holds what the client receives, whether the attempt counted towards auto-disable (the
threshold is 100 so nothing trips), and that afterwards the gateway answers, holds no upstream
connection and has no task left over.

What the gateway can and cannot see:

- Failures before any byte reached the client (refused, reset, first-byte timeout, countable
  statuses, a 404 or a 400 `model_not_found`, an error object in a 200 or as a stream's first event,
  a stream that ends without content or stalls before its first token, a plain body of at most
  64 KiB that breaks before its end) fail over, and alone come back as an OpenAI-shaped error:
  cliproxy's own (502/504) or the upstream's as it came (404/429/5xx).
- Failures after the answer started cannot fail over: a stream ends with a final
  `data: {"error": ...}` event (a plain body over 64 KiB is cut short and the connection closed, so
  the client gets a payload error rather than a truncated JSON it could take for whole).
- A 200 with a malformed JSON or HTML body, or a stream without `[DONE]`, is relayed as the
  upstream's answer and counts as a success: it is no error object, and it carried content.

The faults the gateway judges (the first two groups) run again for Anthropic clients
(`/v1/messages`, the answers translated): the same failover and counting, Anthropic-shaped errors.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest

from cliproxy.fake_upstream import FakeUpstream, Fault
from cliproxy.fake_upstream.faults import HTML_PAGE, MALFORMED_BODY
from cliproxy.web.keys import CLIENT_SESSION, TRACKER
from tests.helpers import eventually, vendor

PAIR = ("v", "m")
BIG = 50 * 1024 * 1024
SETTLE_SECONDS = 3.0


# --------------------------------------------------------------------------------- expectations


@dataclass(frozen=True)
class FailsOver:
    """A countable failure before the first byte: the next vendor answers; alone, the client gets this error."""

    status: int
    code: str | None  # cliproxy's own error code; None: the upstream's error relayed as it came
    retry_after: str | None = None
    kind: str | None = None  # the failure's `last_error.kind` (checked where given)


@dataclass(frozen=True)
class EndsWithErrorEvent:
    """The stream started, then broke: the client gets `frames` data frames, then a final SSE error event."""

    code: str
    frames: int


@dataclass(frozen=True)
class Truncated:
    """A plain body broke after the headers: cut short and the connection closed (a payload error for the client)."""


@dataclass(frozen=True)
class RelayedAsSuccess:
    """A 200 the gateway cannot judge without parsing the body: relayed as it came, counted as a success."""

    content_type: str
    check: Callable[[bytes], bool] = field(default=lambda body: True)


Expect = FailsOver | EndsWithErrorEvent | Truncated | RelayedAsSuccess


@dataclass(frozen=True)
class Case:
    fault: Fault | None  # None: connection refused (the vendor points at an unused port)
    stream: Expect
    plain: Expect
    timeouts: dict[str, float] = field(default_factory=dict)  # the faulty vendor's only


def _sse_frames(body: bytes) -> list[bytes]:
    return [f for f in body.split(b"\n\n") if f.strip()]


def _whole_chat_json(body: bytes) -> bool:
    return json.loads(body)["object"] == "chat.completion"


def _stream_without_done(body: bytes) -> bool:
    frames = _sse_frames(body)
    return len(frames) == 5 and b"[DONE]" not in body and b'"error"' not in body


def _same(expect: Expect) -> dict[str, Expect]:
    return {"stream": expect, "plain": expect}


def _status(code: int, **kw: Any) -> Case:
    return Case(Fault(status=code, **kw), **_same(FailsOver(code, None, kw.get("headers", {}).get("Retry-After"))))


CASES: dict[str, Case] = {
    "connection_refused": Case(None, **_same(FailsOver(502, "upstream_unreachable"))),
    "reset_before_headers": Case(Fault(reset_before_headers=True), **_same(FailsOver(502, "upstream_unreachable"))),
    # Headers, then a FIN: before the first SSE frame (streams can still fail over), or half a plain body.
    # A plain body of at most 64 KiB is read whole before the client sees it, so a break still fails over.
    "reset_mid_body": Case(
        Fault(reset_after_chunks=0),
        stream=FailsOver(502, "upstream_unreachable", kind="stream_error"),
        plain=FailsOver(502, "upstream_unreachable", kind="stream_error"),
    ),
    "reset_mid_stream": Case(
        Fault(reset_after_chunks=2),
        stream=EndsWithErrorEvent("stream_error", 2),
        plain=FailsOver(502, "upstream_unreachable", kind="stream_error"),
    ),
    "first_byte_timeout": Case(
        Fault(stall_before_headers=5), **_same(FailsOver(504, "upstream_timeout")), timeouts={"first-byte": 0.2}
    ),
    "stall_past_stream_idle": Case(
        Fault(stall_after_chunks=1, stall_seconds=5),
        stream=EndsWithErrorEvent("stream_idle_timeout", 1),
        plain=FailsOver(504, "upstream_timeout", kind="stream_idle"),
        timeouts={"stream-idle": 0.2},
    ),
    # issue 14: failures the status hides.
    "error_in_200": Case(Fault(error_in_200=True), **_same(FailsOver(502, "upstream_unreachable", kind="error_in_200"))),
    "model_not_found_in_200": Case(
        Fault(error_in_200=True, body={"error": {"message": "no such model", "type": "x", "code": "model_not_found"}}),
        **_same(FailsOver(502, "upstream_unreachable", kind="model_not_found")),
    ),
    # A plain request has no stream to be empty: the fault does not apply, the answer is whole.
    "empty_stream": Case(
        Fault(empty_stream=True),
        stream=FailsOver(502, "upstream_unreachable", kind="empty_stream"),
        plain=RelayedAsSuccess("application/json", _whole_chat_json),
    ),
    "empty_stream_without_done": Case(
        Fault(empty_stream=True, no_done=True),
        stream=FailsOver(502, "upstream_unreachable", kind="empty_stream"),
        plain=RelayedAsSuccess("application/json", _whole_chat_json),
    ),
    # A role-only chunk, then a stall before the first token: held back, so it still fails over.
    "role_chunk_then_stall": Case(
        Fault(role_chunk_first=True, stall_after_chunks=1, stall_seconds=5),
        stream=FailsOver(504, "upstream_timeout", kind="first_token_timeout"),
        plain=FailsOver(504, "upstream_timeout", kind="stream_idle"),
        timeouts={"first-token": 0.3, "stream-idle": 0.3},
    ),
    "404": Case(Fault(status=404), **_same(FailsOver(404, None, kind="model_not_found"))),
    "400_model_not_found": Case(
        Fault(
            status=400,
            body={
                "error": {
                    "message": "fake upstream injected: no such model",
                    "type": "x",
                    "param": None,
                    "code": "model_not_found",
                }
            },
        ),
        **_same(FailsOver(400, None, kind="model_not_found")),
    ),
    "429_retry_after": _status(429, headers={"Retry-After": "7"}),
    "500": _status(500),
    "502": _status(502),
    "503": _status(503),
    "504": _status(504),
    "malformed_json_200": Case(
        Fault(malformed_json=True), **_same(RelayedAsSuccess("application/json", lambda body: body == MALFORMED_BODY))
    ),
    # A plain request has no stream to end early: the fault does not apply, the answer is whole.
    "sse_without_done": Case(
        Fault(no_done=True),
        stream=RelayedAsSuccess("text/event-stream", _stream_without_done),
        plain=RelayedAsSuccess("application/json", _whole_chat_json),
    ),
    "html_200": Case(Fault(html_200=True), **_same(RelayedAsSuccess("text/html", lambda body: body == HTML_PAGE))),
    "body_50mb": Case(Fault(big_body_bytes=BIG), **_same(RelayedAsSuccess("application/json"))),
}


# ------------------------------------------------------------------------------------- helpers


def assert_openai_shape(body: Any) -> None:
    assert isinstance(body, dict) and set(body) == {"error"}, body
    assert set(body["error"]) == {"message", "type", "param", "code"}, body
    assert body["error"]["message"]


def _vm_rss() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _stray(tasks: set[asyncio.Task[Any]]) -> list[str]:
    """Tasks that are not idle keep-alive connections (a `RequestHandler.start` waits for the next request)."""
    names = []
    for task in tasks:
        if task.done():
            continue
        name = task.get_coro().__qualname__
        if name != "RequestHandler.start":
            names.append(name)
    return names


async def _read_counting(resp: aiohttp.ClientResponse) -> tuple[int, bytes, int]:
    """(size, last bytes, peak RSS while reading) of a body read 64 KiB at a time, never held whole."""
    size, tail, peak = 0, b"", _vm_rss()
    async for chunk in resp.content.iter_chunked(65536):
        size += len(chunk)
        tail = (tail + chunk)[-64:]
        if size % (4 * 1024 * 1024) < len(chunk):
            peak = max(peak, _vm_rss())
    return size, tail, max(peak, _vm_rss())


async def _matrix_gateway(
    case: Case, with_fallback: bool, upstreams: Any, gateway: Any, unused_port: int
) -> tuple[Any, FakeUpstream | None]:
    """The gateway of one case: the faulty vendor `v` (priority 1) and the healthy `ok` below it,
    which serves `m` too only `with_fallback` (always `h`); and the faulty upstream (None: refused)."""
    healthy = await upstreams(chunks=5)
    faulty: FakeUpstream | None = None
    if case.fault is None:
        faulty_url = f"http://127.0.0.1:{unused_port}/v1"
    else:
        faulty = await upstreams(chunks=5)
        faulty.fail(None, case.fault)
        faulty_url = faulty.url
    bad = vendor("v", faulty_url, ["m"], priority=1)
    if case.timeouts:
        bad["timeouts"] = case.timeouts
    gw = await gateway(
        {
            "auto-disable": {"failure-threshold": 100},
            "openai-compatibility": [bad, vendor("ok", healthy.url, ["m", "h"] if with_fallback else ["h"])],
        }
    )
    return gw, faulty


# ------------------------------------------------------------------------------------- the matrix


class TestFaultMatrix:
    """Every upstream fault, streaming and not, with a healthy fallback and alone: the documented answer, honest counting, nothing leaked."""

    @pytest.mark.parametrize("topology", ["with_fallback", "alone"])
    @pytest.mark.parametrize("mode", ["stream", "plain"])
    @pytest.mark.parametrize("name", list(CASES))
    async def test_fault(self, name, mode, topology, upstreams, gateway, unused_tcp_port, caplog):
        case = CASES[name]
        expect: Expect = getattr(case, mode)
        stream = mode == "stream"
        with_fallback = topology == "with_fallback"

        gw, faulty = await _matrix_gateway(case, with_fallback, upstreams, gateway, unused_tcp_port)
        connector = gw.app[CLIENT_SESSION].connector
        tracker = gw.app[TRACKER]
        tasks_before = set(asyncio.all_tasks())
        caplog.set_level(logging.WARNING)

        request = {"model": "m", "stream": stream, "messages": [{"role": "user", "content": "hi"}]}
        rss_before = _vm_rss()
        resp = await gw.client.post("/v1/chat/completions", json=request)
        counted = 1

        if isinstance(expect, FailsOver) and with_fallback:
            body = await resp.read()
            assert resp.status == 200, body
            assert resp.headers["x-cliproxy-vendor"] == "ok"
            assert resp.headers["x-cliproxy-attempts"] == "2"
            if stream:
                assert body.rstrip().endswith(b"data: [DONE]")
            else:
                assert _whole_chat_json(body)
        elif isinstance(expect, FailsOver):
            body = await resp.read()
            assert resp.status == expect.status, body
            assert resp.headers["x-cliproxy-vendor"] == "v"
            assert resp.headers["x-cliproxy-attempts"] == "1"
            payload = json.loads(body)
            assert_openai_shape(payload)
            if expect.code is not None:
                assert payload["error"]["code"] == expect.code
            else:
                assert "fake upstream injected" in payload["error"]["message"]  # the upstream's own error
            assert resp.headers.get("Retry-After") == expect.retry_after
        elif isinstance(expect, EndsWithErrorEvent):
            body = await resp.read()
            assert resp.status == 200
            assert resp.headers["x-cliproxy-attempts"] == "1"
            frames = _sse_frames(body)
            assert len(frames) == expect.frames + 1, body
            assert b"[DONE]" not in body
            last = frames[-1]
            assert last.startswith(b"data: ")
            payload = json.loads(last[len(b"data: ") :])
            assert_openai_shape(payload)
            assert payload["error"]["code"] == expect.code
        elif isinstance(expect, Truncated):
            assert resp.status == 200
            assert resp.headers["x-cliproxy-attempts"] == "1"
            declared = resp.content_length
            assert declared is not None and declared > 0
            with pytest.raises(aiohttp.ClientPayloadError):
                await resp.read()
        else:
            assert isinstance(expect, RelayedAsSuccess)
            counted = 0
            assert resp.status == 200
            assert resp.headers["x-cliproxy-vendor"] == "v"
            assert resp.headers["x-cliproxy-attempts"] == "1"
            assert resp.headers["Content-Type"].startswith(expect.content_type)
            if name == "body_50mb":
                # Streamed through, never held whole: the whole process (fake, gateway and this
                # client all in one) grows by far less than the 50 MB that went through it.
                size, tail, peak = await _read_counting(resp)
                assert size == BIG
                assert tail.endswith(b'"}')
                assert peak - rss_before < 30 * 1024 * 1024, f"RSS grew by {(peak - rss_before) >> 20} MB"
            else:
                assert expect.check(await resp.read())
        resp.release()
        if faulty is not None:
            assert faulty.faults_applied == 1

        def state_count() -> int:
            state = tracker.state(PAIR)
            return 0 if state is None else state.failure_count

        await eventually(lambda: state_count() == counted, "the attempts counted towards auto-disable", timeout=SETTLE_SECONDS)
        if isinstance(expect, FailsOver) and expect.kind is not None:
            state = tracker.state(PAIR)
            assert state is not None and state.last_error is not None
            assert state.last_error.kind == expect.kind, state.last_error
        assert tracker.state(("ok", "m")) is None  # the fallback only ever succeeded
        rows = [(r.vendor, r.model, r.reason, round(r.disabled_until - r.disabled_at)) for r in tracker.disabled_pairs()]
        if name == "429_retry_after":  # the upstream said when to come back: rate-limited until then at once
            assert rows == [(*PAIR, "rate-limited", 7)]
        else:
            assert rows == []

        # No upstream connection held and no task left behind (idle keep-alive connections aside).
        await eventually(
            lambda: not connector._acquired and not _stray(set(asyncio.all_tasks()) - tasks_before),
            "upstream connections and tasks to be released",
            timeout=SETTLE_SECONDS,
        )
        assert len(connector._acquired) == 0, "upstream connections still acquired"  # private, fine in a test
        assert _stray(set(asyncio.all_tasks()) - tasks_before) == []

        # And the gateway still answers.
        again = await gw.client.post("/v1/chat/completions", json={"model": "h", "messages": []})
        assert again.status == 200
        assert _whole_chat_json(await again.read())
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


# ------------------------------------------------------------------ the matrix, for Anthropic clients

#: (case, mode) of every fault the gateway judges before or while relaying: the ones an Anthropic
#: client (`/v1/messages`, its answers translated from the OpenAI-format vendors) must see the same way.
_JUDGED = [
    (name, mode)
    for name, case in CASES.items()
    for mode in ("stream", "plain")
    if isinstance(getattr(case, mode), (FailsOver, EndsWithErrorEvent))
]


def _assert_anthropic_error(body: Any) -> None:
    assert isinstance(body, dict) and body.get("type") == "error", body
    assert set(body["error"]) == {"type", "message"} and body["error"]["message"], body


def _sse_events(body: bytes) -> list[str]:
    return [line[len(b"event: ") :].decode() for line in body.splitlines() if line.startswith(b"event: ")]


class TestFaultMatrixForAnthropicClients:
    """The same faults under `/v1/messages`: failover and honest counting as for OpenAI clients, and
    every error in Anthropic's shape (a JSON error, or an `error` event once the stream started)."""

    @pytest.mark.parametrize("topology", ["with_fallback", "alone"])
    @pytest.mark.parametrize(("name", "mode"), _JUDGED)
    async def test_fault(self, name, mode, topology, upstreams, gateway, unused_tcp_port, caplog):
        case = CASES[name]
        expect = getattr(case, mode)
        stream = mode == "stream"
        with_fallback = topology == "with_fallback"

        gw, _ = await _matrix_gateway(case, with_fallback, upstreams, gateway, unused_tcp_port)
        connector = gw.app[CLIENT_SESSION].connector
        tracker = gw.app[TRACKER]
        tasks_before = set(asyncio.all_tasks())
        caplog.set_level(logging.WARNING)

        message = {"model": "m", "max_tokens": 50, "stream": stream, "messages": [{"role": "user", "content": "hi"}]}
        resp = await gw.client.post("/v1/messages", json=message)
        body = await resp.read()
        if isinstance(expect, FailsOver) and with_fallback:
            assert resp.status == 200, body
            assert (resp.headers["x-cliproxy-vendor"], resp.headers["x-cliproxy-attempts"]) == ("ok", "2")
            if stream:
                events = _sse_events(body)
                assert events[0] == "message_start" and events[-1] == "message_stop", body
            else:
                assert json.loads(body)["type"] == "message", body
        elif isinstance(expect, FailsOver):
            assert resp.status == expect.status, body
            assert (resp.headers["x-cliproxy-vendor"], resp.headers["x-cliproxy-attempts"]) == ("v", "1")
            _assert_anthropic_error(json.loads(body))
            assert resp.headers.get("Retry-After") == expect.retry_after
        else:
            assert isinstance(expect, EndsWithErrorEvent) and stream
            assert resp.status == 200 and resp.headers["x-cliproxy-attempts"] == "1"
            events = _sse_events(body)
            assert events[0] == "message_start" and events[-1] == "error" and "message_stop" not in events, body
            last = body.rstrip().rsplit(b"\n", 1)[-1]
            _assert_anthropic_error(json.loads(last[len(b"data: ") :]))
        resp.release()

        def state_count() -> int:
            state = tracker.state(PAIR)
            return 0 if state is None else state.failure_count

        await eventually(lambda: state_count() == 1, "the failure counted towards auto-disable", timeout=SETTLE_SECONDS)
        if isinstance(expect, FailsOver) and expect.kind is not None:
            state = tracker.state(PAIR)
            assert state is not None and state.last_error is not None and state.last_error.kind == expect.kind
        assert tracker.state(("ok", "m")) is None  # the fallback only ever succeeded
        await eventually(
            lambda: not connector._acquired and not _stray(set(asyncio.all_tasks()) - tasks_before),
            "upstream connections and tasks to be released",
            timeout=SETTLE_SECONDS,
        )
        again = await gw.client.post("/v1/messages", json={"model": "h", "max_tokens": 5, "messages": message["messages"]})
        assert again.status == 200 and json.loads(await again.read())["type"] == "message"
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
