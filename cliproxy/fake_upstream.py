"""A fake OpenAI-compatible upstream with failure injection.

Used in-process by the test-suite (``FakeUpstream``) and as a subprocess by the
benchmark and demos::

    cliproxy fake-upstream --host 127.0.0.1 --port 9100 --chunks 20

Faults are chosen per request from the request body's ``model`` and can be
installed from Python (``FakeUpstream.fail``) or over HTTP (``POST /_fake/faults``).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import itertools
import json
import math
import random
import signal
import socket
import struct
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from aiohttp import web

__all__ = [
    "DEFAULT_MODELS",
    "Fault",
    "FakeUpstream",
    "RecordedRequest",
    "main",
]

DEFAULT_MODELS: tuple[str, ...] = ("gpt-4o-mini", "gpt-4o", "text-embedding-3-small")

_JSON = "application/json"
# One compact encoder reused for every payload (json.dumps with separators= builds a new one per call).
_dumps = json.JSONEncoder(separators=(",", ":")).encode
_SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
_DONE = b"data: [DONE]\n\n"
_BIG_BLOCK = b"x" * 65536
_HTML_PAGE = (
    b"<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head>"
    b"<body><h1>502 Bad Gateway</h1><p>cloudflare</p></body></html>"
)
_MALFORMED = b'{"id": "chatcmpl-broken", "object": "chat.completion", "choices": [{"mess'


def _error_body(message: str, type_: str, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


def _json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=_dumps(data).encode(), status=status, content_type=_JSON)


def _error_response(status: int, message: str, type_: str = "invalid_request_error") -> web.Response:
    return _json_response(_error_body(message, type_), status=status)


@dataclass
class Fault:
    """What to do wrong for one request; the first installed fault that matches and fires wins.

    Applied in this order: ``stall_before_headers`` (then continue), then the
    first set of ``reset_before_headers``, ``status``, ``malformed_json``,
    ``html_200``, ``big_body_bytes``; otherwise a normal response shaped by
    ``reset_after_chunks`` / ``stall_after_chunks`` / ``no_done``. "Chunks" are
    SSE frames; for non-stream bodies those two act at half the body.
    ``times`` counts requests the fault actually fired on. ``headers`` go out
    with whatever answer the fault gives (an error status, a normal body, a
    stream): a fault with only ``headers`` is a normal answer with extra headers.
    """

    status: int | None = None
    body: Any = None  # dict/list -> JSON, str/bytes -> raw; None -> OpenAI-shaped error
    headers: dict[str, str] = field(default_factory=dict)  # extra response headers, with any answer
    reset_before_headers: bool = False
    reset_after_chunks: int | None = None
    stall_before_headers: float = 0.0
    stall_after_chunks: int | None = None
    stall_seconds: float = 0.0
    malformed_json: bool = False
    html_200: bool = False
    no_done: bool = False
    big_body_bytes: int | None = None
    times: int | None = None
    probability: float = 1.0

    def __post_init__(self) -> None:
        # Fail at install time (also for POST /_fake/faults) rather than mid-request.
        if self.status is not None and not 100 <= self.status <= 599:
            raise ValueError(f"status must be an HTTP status code, got {self.status!r}")
        if self.times is not None and self.times < 1:
            raise ValueError("times must be >= 1 or None")
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError("probability must be within [0, 1]")
        for name in ("reset_after_chunks", "stall_after_chunks", "big_body_bytes"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.stall_before_headers < 0 or self.stall_seconds < 0:
            raise ValueError("stall durations must be >= 0")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Fault:
        """Build from JSON (the HTTP control API); unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown fault fields: {sorted(unknown)}")
        return cls(**data)


@dataclass
class RecordedRequest:
    """One request as the fake received it."""

    method: str
    path: str
    headers: dict[str, str]
    json: Any | None
    model: str | None


@dataclass
class _FaultEntry:
    model: str | None
    fault: Fault
    remaining: int | None


class _SelfReset(Exception):
    """Raised inside a handler after the fake dropped the connection on purpose."""


def _abort_with_rst(request: web.BaseRequest) -> None:
    """Drop the connection with a TCP RST, so the client sees a reset, not a clean EOF."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            # SO_LINGER(on, 0) turns close() into an RST instead of a FIN.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    transport.abort()


def _close_gracefully(request: web.BaseRequest) -> None:
    """Drop the connection with a FIN after flushing what was already written.

    Used mid-body instead of an RST: an RST can make the peer's kernel discard
    data it has received but not yet handed to the client, and the point of a
    mid-stream drop is that the client sees the partial data first and then a
    payload error (the chunked terminator / Content-Length is never satisfied).
    """
    if request.transport is not None:
        request.transport.close()  # asyncio flushes its write buffer first


_FAULT_HEADERS = web.RequestKey("fault_headers", dict)


async def _add_fault_headers(request: web.Request, response: web.StreamResponse) -> None:
    """`on_response_prepare`: the firing fault's extra headers, on every kind of answer (streams too)."""
    for name, value in request.get(_FAULT_HEADERS, {}).items():
        response.headers[name] = value


def _int_header(request: web.Request, name: str, default: int) -> int:
    raw = request.headers.get(name)
    if raw is None:
        return default
    try:
        return max(1, int(raw))
    except ValueError:
        return default


def _float_header(request: web.Request, name: str, default: float) -> float:
    raw = request.headers.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        return default
    return value if math.isfinite(value) and value >= 0 else default


def _pieces(model: str, n: int) -> list[str]:
    # The first piece names the model so tests can see which upstream model arrived.
    return [f"hello from {model}"] + [f" chunk{i}" for i in range(1, n)]


def _prompt_tokens(body: Mapping[str, Any]) -> int:
    # A crude but cheap estimate: about four characters per token.
    size = 0
    messages = body.get("messages")
    if isinstance(messages, list):
        for m in messages:
            if isinstance(m, dict):
                size += len(str(m.get("content", "")))
    for key in ("prompt", "input"):
        value = body.get(key)
        if value is not None:
            size += len(str(value))
    return size // 4 + 1


class FakeUpstream:
    """An in-process OpenAI-compatible server whose misbehaviour tests can script."""

    def __init__(
        self,
        *,
        chunks: int = 5,
        chunk_delay: float = 0.0,
        name: str = "fake",
        seed: int | None = None,
        models: Sequence[str] = DEFAULT_MODELS,
        record: bool = True,
        embedding_dim: int = 8,
    ) -> None:
        self.chunks = max(1, chunks)
        self.chunk_delay = chunk_delay
        self.name = name
        self.models = list(models)
        self.record = record
        self.embedding_dim = embedding_dim
        self.url = ""
        self.port = 0
        self.requests: list[RecordedRequest] = []
        self.request_count = 0
        self.streams_in_flight = 0
        self.disconnects = 0
        self.completed_streams = 0
        self.faults_applied = 0
        self._faults: list[_FaultEntry] = []
        self._rng = random.Random(seed)
        self._ids = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stopping = False
        self.app = self._make_app()

    # ---------------------------------------------------------------- control

    def fail(self, model: str | None, fault: Fault) -> None:
        """Install ``fault`` for requests naming ``model`` (None: every model)."""
        self._faults.append(_FaultEntry(model, fault, fault.times))

    def clear_faults(self) -> None:
        self._faults.clear()

    def reset_stats(self) -> None:
        """Forget recorded requests and zero the counters (not streams_in_flight)."""
        self.requests.clear()
        self.request_count = 0
        self.disconnects = 0
        self.completed_streams = 0
        self.faults_applied = 0

    def stats(self) -> dict[str, int]:
        return {
            "requests": self.request_count,
            "disconnects": self.disconnects,
            "streams_in_flight": self.streams_in_flight,
            "completed_streams": self.completed_streams,
            "faults_applied": self.faults_applied,
            "faults_installed": len(self._faults),
        }

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Listen on ``host:port`` (0 = any free port) and return the /v1 base URL."""
        self._stopping = False
        # handler_cancellation: a client that goes away cancels its handler, so
        # stalls end and `disconnects` is counted even when nothing is being written.
        runner = web.AppRunner(
            self.app, access_log=None, handler_cancellation=True, shutdown_timeout=0.1
        )
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        self._runner = runner
        self.port = runner.addresses[0][1]
        url_host = f"[{host}]" if ":" in host else host
        self.url = f"http://{url_host}:{self.port}/v1"
        return self.url

    async def stop(self) -> None:
        """Stop quickly: in-flight (e.g. stalled) handlers are cancelled, not awaited."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        self._stopping = True
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=1.0)
        await runner.cleanup()

    async def __aenter__(self) -> FakeUpstream:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ------------------------------------------------------------- internals

    def _make_app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        for path, kind in (
            ("/v1/chat/completions", "chat"),
            ("/v1/completions", "completions"),
            ("/v1/responses", "responses"),
            ("/v1/embeddings", "embeddings"),
        ):
            app.router.add_post(path, self._api_handler(kind))
        app.router.add_get("/v1/models", self._list_models)
        app.router.add_post("/_fake/faults", self._add_fault)
        app.router.add_delete("/_fake/faults", self._clear_faults)
        app.router.add_get("/_fake/stats", self._get_stats)
        app.router.add_delete("/_fake/stats", self._delete_stats)
        app.on_response_prepare.append(_add_fault_headers)
        return app

    def _pick_fault(self, model: str | None) -> Fault | None:
        for entry in self._faults:
            if entry.model is not None and entry.model != model:
                continue
            fault = entry.fault
            if fault.probability < 1.0 and self._rng.random() >= fault.probability:
                continue
            if entry.remaining is not None:
                entry.remaining -= 1
                if entry.remaining <= 0:
                    self._faults.remove(entry)
            self.faults_applied += 1
            return fault
        return None

    def _next_id(self, prefix: str) -> str:
        return f"{prefix}-{self.name}{next(self._ids)}"

    async def _read_body(self, request: web.Request) -> tuple[dict[str, Any] | None, web.Response | None]:
        """Parse and record the body; return (body, None) or (None, 400 response)."""
        self.request_count += 1
        raw = await request.read()
        body: Any = None
        error: str | None = None
        try:
            body = json.loads(raw)
        except ValueError:
            error = "We could not parse the JSON body of your request."
        if error is None and not isinstance(body, dict):
            error = "The request body must be a JSON object."
        model = body.get("model") if isinstance(body, dict) else None
        if self.record:
            self.requests.append(
                RecordedRequest(
                    request.method,
                    request.path,
                    dict(request.headers),
                    body,
                    model if isinstance(model, str) else None,
                )
            )
        if error is None and not isinstance(model, str):
            error = "you must provide a model parameter"
        if error is not None:
            return None, _error_response(400, error)
        return body, None

    async def _guarded(self, request: web.Request, body: dict[str, Any], kind: str) -> web.StreamResponse:
        """Run one API request with fault handling and disconnect accounting."""
        model: str = body["model"]
        fault = self._pick_fault(model) if self._faults else None
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        state = _ReqState()
        if fault is not None and fault.headers:
            request[_FAULT_HEADERS] = fault.headers
        try:
            return await self._serve(request, body, kind, model, fault, state)
        except asyncio.CancelledError:
            # handler_cancellation: the client went away (or stop() cancelled us).
            if not (self._stopping or state.self_reset or state.finished):
                self.disconnects += 1
            raise
        except ConnectionResetError:
            # A write hit a closed transport before the cancellation arrived.
            if not (self._stopping or state.self_reset):
                self.disconnects += 1
            return self._quiet_response(state)
        except _SelfReset:
            return self._quiet_response(state)
        finally:
            if state.streaming:
                self.streams_in_flight -= 1
            if task is not None:
                self._tasks.discard(task)

    @staticmethod
    def _quiet_response(state: _ReqState) -> web.StreamResponse:
        # Returning (rather than raising) after the connection is gone makes
        # aiohttp's own write fail with ConnectionError, which it treats as a
        # quiet client disconnect; raising would log "Error handling request".
        return state.response or web.Response()

    async def _serve(
        self,
        request: web.Request,
        body: dict[str, Any],
        kind: str,
        model: str,
        fault: Fault | None,
        state: _ReqState,
    ) -> web.StreamResponse:
        stream = kind != "embeddings" and bool(body.get("stream"))
        if fault is not None:
            if fault.stall_before_headers > 0:
                await asyncio.sleep(fault.stall_before_headers)
            if fault.reset_before_headers:
                state.self_reset = True
                _abort_with_rst(request)
                raise _SelfReset
            if fault.status is not None:
                return self._fault_status_response(fault)
            if fault.malformed_json:
                return web.Response(body=_MALFORMED, content_type=_JSON)
            if fault.html_200:
                return web.Response(body=_HTML_PAGE, content_type="text/html")
            if fault.big_body_bytes is not None:
                return await self._big_body(request, model, fault.big_body_bytes, state)

        chunks = _int_header(request, "x-fake-chunks", self.chunks)
        if not stream:
            full = self._build_full(kind, body, model, chunks)
            if isinstance(full, web.Response):
                return full
            payload = _dumps(full).encode()
            if fault is not None and (fault.reset_after_chunks is not None or fault.stall_after_chunks is not None):
                return await self._partial_body(request, payload, fault, state)
            return web.Response(body=payload, content_type=_JSON)

        delay = _float_header(request, "x-fake-chunk-delay", self.chunk_delay)
        frames, terminator = self._build_frames(kind, body, model, chunks)
        return await self._stream(request, frames, terminator, delay, fault, state)

    def _fault_status_response(self, fault: Fault) -> web.Response:
        assert fault.status is not None
        headers = dict(fault.headers)
        body = fault.body
        if body is None:
            type_ = "server_error" if fault.status >= 500 else "invalid_request_error"
            if fault.status == 429:
                type_ = "rate_limit_exceeded"
            body = _error_body(f"fake upstream injected HTTP {fault.status}", type_)
        if isinstance(body, (dict, list)):
            data = _dumps(body).encode()
            headers.setdefault("Content-Type", _JSON)
        elif isinstance(body, str):
            data = body.encode()
            headers.setdefault("Content-Type", "text/plain")
        else:
            data = bytes(body)
            headers.setdefault("Content-Type", "application/octet-stream")
        return web.Response(status=fault.status, body=data, headers=headers)

    async def _big_body(self, request: web.Request, model: str, size: int, state: _ReqState) -> web.StreamResponse:
        # Valid JSON of exactly `size` bytes (when size allows), written in 64 KiB
        # blocks so the fake never holds the whole body in memory.
        prefix = b'{"object":"chat.completion","model":' + _dumps(model).encode() + b',"padding":"'
        suffix = b'"}'
        resp = web.StreamResponse(headers={"Content-Type": _JSON})
        resp.content_length = size
        state.response = resp
        await resp.prepare(request)
        padding = size - len(prefix) - len(suffix)
        if padding < 0:
            await resp.write((prefix + suffix)[:size])
        else:
            await resp.write(prefix)
            while padding > 0:
                block = _BIG_BLOCK if padding >= len(_BIG_BLOCK) else _BIG_BLOCK[:padding]
                await resp.write(block)
                padding -= len(block)
            await resp.write(suffix)
        await resp.write_eof()
        state.finished = True
        return resp

    async def _partial_body(
        self, request: web.Request, payload: bytes, fault: Fault, state: _ReqState
    ) -> web.StreamResponse:
        """Non-stream reset/stall: announce the full length, send half, then drop or stall."""
        resp = web.StreamResponse(headers={"Content-Type": _JSON})
        resp.content_length = len(payload)
        state.response = resp
        await resp.prepare(request)
        half = len(payload) // 2
        await resp.write(payload[:half])
        if fault.reset_after_chunks is not None:
            state.self_reset = True
            _close_gracefully(request)
            raise _SelfReset
        await asyncio.sleep(fault.stall_seconds)
        await resp.write(payload[half:])
        await resp.write_eof()
        state.finished = True
        return resp

    async def _stream(
        self,
        request: web.Request,
        frames: list[bytes],
        terminator: bytes,
        delay: float,
        fault: Fault | None,
        state: _ReqState,
    ) -> web.StreamResponse:
        reset_at: int | None = None
        stall_at: int | None = None
        stall_seconds = 0.0
        if fault is not None:
            reset_at, stall_at, stall_seconds = fault.reset_after_chunks, fault.stall_after_chunks, fault.stall_seconds
        if fault is None or not fault.no_done:
            frames = [*frames, terminator]
        resp = web.StreamResponse(headers=_SSE_HEADERS)
        state.response = resp
        writer = await resp.prepare(request)
        assert writer is not None
        state.streaming = True
        self.streams_in_flight += 1
        for i, frame in enumerate(frames):
            if i == reset_at:
                break
            if i == stall_at:
                await asyncio.sleep(stall_seconds)
            elif i and delay > 0:
                await asyncio.sleep(delay)
            # One write and drain per frame: relays must see real chunk boundaries.
            await resp.write(frame)
            await writer.drain()
        if reset_at is not None:
            # Also when reset_at is past the last frame: the chunked terminator
            # is still missing, so the client sees an incomplete transfer.
            state.self_reset = True
            _close_gracefully(request)
            raise _SelfReset
        if stall_at is not None and stall_at >= len(frames):
            await asyncio.sleep(stall_seconds)
        await resp.write_eof()
        state.finished = True
        self.completed_streams += 1
        return resp

    # --------------------------------------------------------------- payloads

    def _build_full(
        self, kind: str, body: Mapping[str, Any], model: str, chunks: int
    ) -> dict[str, Any] | web.Response:
        """The non-stream JSON object for ``kind`` (or a 400 for bad embeddings input)."""
        if kind == "embeddings":
            return self._embedding_object(body, model)
        text = "".join(_pieces(model, chunks))
        prompt_tokens = _prompt_tokens(body)
        created = int(time.time())
        if kind == "chat":
            return {
                "id": self._next_id("chatcmpl"),
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text, "refusal": None},
                        "logprobs": None,
                        "finish_reason": "stop",
                    }
                ],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": chunks,
                    "total_tokens": prompt_tokens + chunks,
                },
                "system_fingerprint": f"fp_{self.name}",
            }
        if kind == "completions":
            return {
                "id": self._next_id("cmpl"),
                "object": "text_completion",
                "created": created,
                "model": model,
                "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": "stop"}],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": chunks,
                    "total_tokens": prompt_tokens + chunks,
                },
            }
        assert kind == "responses"
        return self._response_object(self._next_id("resp"), model, text, prompt_tokens, chunks, created)

    def _response_object(
        self, rid: str, model: str, text: str | None, prompt_tokens: int, chunks: int, created: int
    ) -> dict[str, Any]:
        done = text is not None
        output = (
            [
                {
                    "type": "message",
                    "id": f"msg_{rid}",
                    "status": "completed",
                    "role": "assistant",
                    "content": [{"type": "output_text", "text": text, "annotations": []}],
                }
            ]
            if done
            else []
        )
        return {
            "id": rid,
            "object": "response",
            "created_at": created,
            "status": "completed" if done else "in_progress",
            "model": model,
            "output": output,
            "parallel_tool_calls": True,
            "tool_choice": "auto",
            "tools": [],
            "usage": (
                {
                    "input_tokens": prompt_tokens,
                    "output_tokens": chunks,
                    "total_tokens": prompt_tokens + chunks,
                }
                if done
                else None
            ),
        }

    def _build_frames(
        self, kind: str, body: Mapping[str, Any], model: str, chunks: int
    ) -> tuple[list[bytes], bytes]:
        """SSE frames (each one write) and the terminating frame for a stream."""
        pieces = _pieces(model, chunks)
        created = int(time.time())
        model_json = _dumps(model)
        last = len(pieces) - 1
        if kind == "responses":
            return self._response_frames(model, pieces, _prompt_tokens(body), created)
        if kind == "chat":
            # Static parts are formatted once per request; only the delta varies.
            base = (
                f'data: {{"id":"{self._next_id("chatcmpl")}","object":"chat.completion.chunk",'
                f'"created":{created},"model":{model_json},"system_fingerprint":"fp_{self.name}",'
            )
            head = base + '"choices":[{"index":0,"delta":'
            frames: list[bytes] = []
            for i, piece in enumerate(pieces):
                delta = {"role": "assistant", "content": piece} if i == 0 else {"content": piece}
                finish = '"stop"' if i == last else "null"
                frames.append(
                    f'{head}{_dumps(delta)},"logprobs":null,"finish_reason":{finish}}}]}}\n\n'.encode()
                )
        else:
            base = (
                f'data: {{"id":"{self._next_id("cmpl")}","object":"text_completion",'
                f'"created":{created},"model":{model_json},'
            )
            head = base + '"choices":[{"text":'
            frames = []
            for i, piece in enumerate(pieces):
                finish = '"stop"' if i == last else "null"
                frames.append(
                    f'{head}{_dumps(piece)},"index":0,"logprobs":null,"finish_reason":{finish}}}]}}\n\n'.encode()
                )
        options = body.get("stream_options")
        if isinstance(options, dict) and options.get("include_usage"):
            prompt_tokens = _prompt_tokens(body)
            usage = {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": chunks,
                "total_tokens": prompt_tokens + chunks,
            }
            frames.append(f'{base}"choices":[],"usage":{_dumps(usage)}}}\n\n'.encode())
        return frames, _DONE

    def _response_frames(
        self, model: str, pieces: list[str], prompt_tokens: int, created: int
    ) -> tuple[list[bytes], bytes]:
        rid = self._next_id("resp")
        item_id = f"msg_{rid}"
        seq = itertools.count()
        text = "".join(pieces)

        def event(type_: str, **data: Any) -> bytes:
            payload = {"type": type_, "sequence_number": next(seq), **data}
            return f"event: {type_}\ndata: {_dumps(payload)}\n\n".encode()

        in_progress = self._response_object(rid, model, None, prompt_tokens, len(pieces), created)
        item = {"type": "message", "id": item_id, "status": "in_progress", "role": "assistant", "content": []}
        part = {"type": "output_text", "text": "", "annotations": []}
        loc = {"item_id": item_id, "output_index": 0, "content_index": 0}
        frames = [
            event("response.created", response=in_progress),
            event("response.output_item.added", output_index=0, item=item),
            event("response.content_part.added", part=part, **loc),
        ]
        frames += [event("response.output_text.delta", delta=p, **loc) for p in pieces]
        full = self._response_object(rid, model, text, prompt_tokens, len(pieces), created)
        frames += [
            event("response.output_text.done", text=text, **loc),
            event("response.content_part.done", part={**part, "text": text}, **loc),
            event("response.output_item.done", output_index=0, item=full["output"][0]),
        ]
        return frames, event("response.completed", response=full)

    def _embedding_object(self, body: Mapping[str, Any], model: str) -> dict[str, Any] | web.Response:
        inputs = body.get("input")
        if isinstance(inputs, str) or (
            isinstance(inputs, list) and inputs and all(isinstance(t, int) for t in inputs)
        ):
            inputs = [inputs]
        if not isinstance(inputs, list) or not inputs:
            return _error_response(400, "'input' must be a non-empty string or array")
        dim = body.get("dimensions")
        dim = dim if isinstance(dim, int) and 0 < dim <= 4096 else self.embedding_dim
        as_base64 = body.get("encoding_format") == "base64"
        data = []
        for index, item in enumerate(inputs):
            # Deterministic per input so callers can compare vectors.
            seed = sum(map(ord, str(item))) % 997
            vector = [round(math.sin(seed + k) * 0.5, 6) for k in range(dim)]
            embedding: Any = (
                base64.b64encode(struct.pack(f"<{dim}f", *vector)).decode() if as_base64 else vector
            )
            data.append({"object": "embedding", "index": index, "embedding": embedding})
        tokens = sum(len(str(i)) for i in inputs) // 4 + 1
        return {
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    # --------------------------------------------------------------- handlers

    def _api_handler(self, kind: str) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handler(request: web.Request) -> web.StreamResponse:
            body, error = await self._read_body(request)
            if error is not None:
                return error
            assert body is not None
            return await self._guarded(request, body, kind)

        return handler

    async def _list_models(self, request: web.Request) -> web.Response:
        self.request_count += 1
        if self.record:
            self.requests.append(RecordedRequest(request.method, request.path, dict(request.headers), None, None))
        data = [{"id": m, "object": "model", "created": 1700000000, "owned_by": self.name} for m in self.models]
        return _json_response({"object": "list", "data": data})

    async def _add_fault(self, request: web.Request) -> web.Response:
        try:
            data = await request.json()
            if not isinstance(data, dict):
                raise ValueError("body must be a JSON object")
            model = data.pop("model", None)
            if model is not None and not isinstance(model, str):
                raise ValueError("'model' must be a string or null")
            fault = Fault.from_dict(data)
        except (ValueError, TypeError) as exc:
            return _error_response(400, str(exc))
        self.fail(model, fault)
        return _json_response({"ok": True, "faults_installed": len(self._faults)}, status=201)

    async def _clear_faults(self, request: web.Request) -> web.Response:
        self.clear_faults()
        return _json_response({"ok": True, "faults_installed": 0})

    async def _get_stats(self, request: web.Request) -> web.Response:
        return _json_response(self.stats())

    async def _delete_stats(self, request: web.Request) -> web.Response:
        self.reset_stats()
        return _json_response(self.stats())


@dataclass
class _ReqState:
    """Per-request bookkeeping shared between the guard and the writers."""

    response: web.StreamResponse | None = None
    streaming: bool = False
    self_reset: bool = False
    finished: bool = False


# -------------------------------------------------------------------- CLI


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="cliproxy fake-upstream", description="Fake OpenAI-compatible upstream with fault injection."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    parser.add_argument("--chunks", type=int, default=5, help="content chunks per stream")
    parser.add_argument("--chunk-delay", type=float, default=0.0, help="seconds between stream chunks")
    parser.add_argument("--name", default="fake")
    parser.add_argument("--seed", type=int, default=None, help="seed for probabilistic faults")
    parser.add_argument("--fail-rate", type=float, default=0.0, help="probability of a global status fault")
    parser.add_argument("--fail-status", type=int, default=500, help="status used by --fail-rate")
    parser.add_argument(
        "--record", action="store_true", help="keep every request in memory (off: a long benchmark would grow)"
    )
    return parser.parse_args(argv)


async def _serve_forever(args: argparse.Namespace) -> None:
    fake = FakeUpstream(
        chunks=args.chunks, chunk_delay=args.chunk_delay, name=args.name, seed=args.seed, record=args.record
    )
    if args.fail_rate > 0:
        fake.fail(None, Fault(status=args.fail_status, probability=args.fail_rate))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await fake.start(args.host, args.port)
    print(f"listening on http://{args.host}:{fake.port}", flush=True)
    try:
        await stop.wait()
    finally:
        await fake.stop()


def main(argv: Sequence[str] | None = None) -> int:
    asyncio.run(_serve_forever(_parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
