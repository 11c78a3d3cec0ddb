"""What the fake upstream does wrong: the `Fault` a test installs, and the connection-level
misbehaviours that carry it out (a TCP reset, a close mid-body, extra headers on any answer)."""

from __future__ import annotations

import socket
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from aiohttp import web

__all__ = [
    "FAULT_HEADERS",
    "Fault",
    "FaultEntry",
    "HTML_PAGE",
    "MALFORMED_BODY",
    "SelfReset",
    "abort_with_rst",
    "add_fault_headers",
    "close_gracefully",
]

#: What `html_200` answers: an error page from a proxy in front of the upstream, with status 200.
HTML_PAGE = (
    b"<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head>"
    b"<body><h1>502 Bad Gateway</h1><p>cloudflare</p></body></html>"
)
#: What `malformed_json` answers: a JSON body cut off half-way.
MALFORMED_BODY = b'{"id": "chatcmpl-broken", "object": "chat.completion", "choices": [{"mess'


@dataclass
class Fault:
    """What to do wrong for one request; the first installed fault that matches and fires wins.

    Applied in this order: ``stall_before_headers`` (then continue), then the
    first set of ``reset_before_headers``, ``status``, ``malformed_json``,
    ``html_200``, ``error_in_200``, ``big_body_bytes``, ``empty_stream`` (streams
    only); otherwise a normal response shaped by ``role_chunk_first`` (streams)
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
    #: A 200 whose body (or, streaming, first data event) is an error object: ``body``, or an OpenAI-shaped one.
    error_in_200: bool = False
    #: A stream of a comment and a role-only chunk and nothing else (then ``[DONE]`` unless ``no_done``).
    empty_stream: bool = False
    #: A stream opens with a role-only chunk (no content) before its content frames; "chunks" count it.
    role_chunk_first: bool = False
    big_body_bytes: int | None = None
    #: Not a fault: chat answers think first, with this text as `reasoning_content` (in its own chunks when streaming).
    reasoning: str | None = None
    #: Not a fault: chat answers call these tools (each `{"name", "arguments"}`) instead of answering in text,
    #: with `finish_reason: tool_calls`; streamed as upstreams do, each call's id and name in separate
    #: chunks and its arguments in two pieces.
    tool_calls: list[dict[str, Any]] | None = None
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
class FaultEntry:
    model: str | None
    fault: Fault
    remaining: int | None


class SelfReset(Exception):
    """Raised inside a handler after the fake dropped the connection on purpose."""


def abort_with_rst(request: web.BaseRequest) -> None:
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


def close_gracefully(request: web.BaseRequest) -> None:
    """Drop the connection with a FIN after flushing what was already written.

    Used mid-body instead of an RST: an RST can make the peer's kernel discard
    data it has received but not yet handed to the client, and the point of a
    mid-stream drop is that the client sees the partial data first and then a
    payload error (the chunked terminator / Content-Length is never satisfied).
    """
    if request.transport is not None:
        request.transport.close()  # asyncio flushes its write buffer first


FAULT_HEADERS = web.RequestKey("fault_headers", dict)


async def add_fault_headers(request: web.Request, response: web.StreamResponse) -> None:
    """`on_response_prepare`: the firing fault's extra headers, on every kind of answer (streams too)."""
    for name, value in request.get(FAULT_HEADERS, {}).items():
        response.headers[name] = value
