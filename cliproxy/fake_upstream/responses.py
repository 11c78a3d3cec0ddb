"""How the fake upstream writes its answers: whole, or broken as a fault says (cut, stalled, oversized).

The server (`cliproxy.fake_upstream.server`) decides what to answer; these write it, keeping the
per-request `RequestState` the server's guard reads to tell a client's disconnect from its own reset.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Protocol

from aiohttp import web

from cliproxy.fake_upstream.faults import Fault, SelfReset, close_gracefully
from cliproxy.fake_upstream.payloads import dumps

__all__ = [
    "IN_200_MESSAGE",
    "RequestState",
    "StreamCounters",
    "write_big_body",
    "error_body",
    "error_response",
    "fault_status_response",
    "json_response",
    "write_partial_body",
    "role_frame",
    "write_stream",
]

JSON = "application/json"
_SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
_BIG_BLOCK = b"x" * 65536


def error_body(message: str, type_: str, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


#: The message of the error object `Fault(error_in_200=True)` answers with.
IN_200_MESSAGE = "fake upstream injected an error inside a 200"


def role_frame(model: str) -> bytes:
    """A chat chunk that carries no content: the role-only delta many upstreams open a stream with."""
    chunk = {"object": "chat.completion.chunk", "model": model, "choices": [{"index": 0, "delta": {"role": "assistant"}}]}
    return f"data: {dumps(chunk)}\n\n".encode()


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=dumps(data).encode(), status=status, content_type=JSON)


def error_response(status: int, message: str, type_: str = "invalid_request_error") -> web.Response:
    return json_response(error_body(message, type_), status=status)


class StreamCounters(Protocol):
    """The fake's stream counters `write_stream` keeps."""

    streams_in_flight: int
    completed_streams: int


@dataclass
class RequestState:
    """Per-request bookkeeping shared between the guard and the writers."""

    response: web.StreamResponse | None = None
    streaming: bool = False
    self_reset: bool = False
    finished: bool = False


def fault_status_response(fault: Fault) -> web.Response:
    assert fault.status is not None
    headers = dict(fault.headers)
    body = fault.body
    if body is None:
        type_ = "server_error" if fault.status >= 500 else "invalid_request_error"
        if fault.status == 429:
            type_ = "rate_limit_exceeded"
        body = error_body(f"fake upstream injected HTTP {fault.status}", type_)
    if isinstance(body, (dict, list)):
        data = dumps(body).encode()
        headers.setdefault("Content-Type", JSON)
    elif isinstance(body, str):
        data = body.encode()
        headers.setdefault("Content-Type", "text/plain")
    else:
        data = bytes(body)
        headers.setdefault("Content-Type", "application/octet-stream")
    return web.Response(status=fault.status, body=data, headers=headers)


async def write_big_body(request: web.Request, model: str, size: int, state: RequestState) -> web.StreamResponse:
    # Valid JSON of exactly `size` bytes (when size allows), written in 64 KiB
    # blocks so the fake never holds the whole body in memory.
    prefix = b'{"object":"chat.completion","model":' + dumps(model).encode() + b',"padding":"'
    suffix = b'"}'
    resp = web.StreamResponse(headers={"Content-Type": JSON})
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


async def write_partial_body(request: web.Request, payload: bytes, fault: Fault, state: RequestState) -> web.StreamResponse:
    """Non-stream reset/stall: announce the full length, send half, then drop or stall."""
    resp = web.StreamResponse(headers={"Content-Type": JSON})
    resp.content_length = len(payload)
    state.response = resp
    await resp.prepare(request)
    half = len(payload) // 2
    await resp.write(payload[:half])
    if fault.reset_after_chunks is not None:
        state.self_reset = True
        close_gracefully(request)
        raise SelfReset
    await asyncio.sleep(fault.stall_seconds)
    await resp.write(payload[half:])
    await resp.write_eof()
    state.finished = True
    return resp


async def write_stream(
    request: web.Request,
    frames: list[bytes],
    terminator: bytes,
    delay: float,
    fault: Fault | None,
    state: RequestState,
    counters: StreamCounters,
) -> web.StreamResponse:
    """The frames one write each (then the terminator unless `no_done`), broken as `fault` says."""
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
    counters.streams_in_flight += 1
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
        close_gracefully(request)
        raise SelfReset
    if stall_at is not None and stall_at >= len(frames):
        await asyncio.sleep(stall_seconds)
    await resp.write_eof()
    state.finished = True
    counters.completed_streams += 1
    return resp
