"""Anthropic's Messages API (`/v1/messages`) on the same vendors, routing and failover as `/v1/chat/completions`.

The handler translates the request into a chat completion (`cliproxy.core.anthropic`), builds the
same `ProxiedRequest` the OpenAI endpoints build, with a translator of the answer on it, and runs
the same `forward`: pairs are chosen, failed over and auto-disabled on what the upstream answered
(classification judges the chat completion), and only what is relayed is translated.

An `api-format: anthropic` vendor gets the client's own body instead (`ProxiedRequest.passthrough`,
built once here; each attempt picks the body its vendor speaks), and its answer goes back untranslated.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from aiohttp import web

from cliproxy.core.anthropic import (
    DEFAULT_ANTHROPIC_VERSION,
    MESSAGES_PATH,
    MessagesRequest,
    StreamTranslator,
    anthropic_message,
    chat_request,
    estimate_input_tokens,
)
from cliproxy.core.body import parse_client_body
from cliproxy.core.config import Config
from cliproxy.core.errors import InvalidRequest, ModelNotFound, anthropic_error_body
from cliproxy.web.access import AccessInfo
from cliproxy.web.keys import ACCESS_INFO, CLIENT_SESSION, OUTCOMES, OVERLOAD_LOG, PAIR_TRAFFIC, PROXIED_REQUEST, RUNTIME
from cliproxy.web.proxied_request import AnswerTranslator, ProxiedRequest
from cliproxy.web.proxy_api import check_client_key, expect_handler, read_body
from cliproxy.web.upstream import forward

__all__ = ["ANTHROPIC_PATH", "routes"]

#: Everything under it answers errors in Anthropic's shape (the error middleware in cliproxy.app).
ANTHROPIC_PATH = "/v1/messages"
_CHAT_PATH = "/chat/completions"
#: Anthropic's own headers: an OpenAI-compatible vendor has no use for them.
_ANTHROPIC_HEADERS = ("anthropic-version", "anthropic-beta", "anthropic-dangerous-direct-browser-access")

routes = web.RouteTableDef()
_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


class _MessagesAnswer:
    """The chat completion answer of one `/v1/messages` request, rewritten as Anthropic's (see `AnswerTranslator`)."""

    def __init__(self, messages: MessagesRequest, is_sse: bool, input_tokens: int) -> None:
        self.buffered = not is_sse
        self.status = 200
        self.content_type = "text/event-stream" if is_sse else "application/json"
        self._messages = messages
        self._stream = (
            StreamTranslator(messages.model, stop_sequences=messages.stop_sequences, input_tokens=input_tokens)
            if is_sse
            else None
        )
        self._body = bytearray()

    def feed(self, chunk: bytes) -> bytes:
        if self._stream is not None:
            return self._stream.feed(chunk)
        self._body += chunk
        return b""

    def end(self) -> bytes:
        if self._stream is not None:
            return self._stream.end()
        try:
            chat = json.loads(self._body)
        except (ValueError, RecursionError):
            chat = None
        if not isinstance(chat, dict) or not isinstance(chat.get("choices"), list):
            self.status = 502
            return anthropic_error_body(502, "the upstream's answer was not a chat completion")
        return _dumps(anthropic_message(chat, self._messages.model, self._messages.stop_sequences)).encode()

    def fail(self, message: str) -> bytes:
        return self._stream.fail(message) if self._stream is not None else b""


def _json_object(raw: bytes) -> dict[str, Any]:
    parse_client_body(raw)  # the same checks as every /v1 body: JSON, UTF-8, one string `model`
    payload = json.loads(raw)
    assert isinstance(payload, dict)
    return payload


@routes.post(ANTHROPIC_PATH, expect_handler=expect_handler)
async def messages(request: web.Request) -> web.StreamResponse:
    runtime = request.app[RUNTIME].current  # taken once: the request finishes on the config it started with
    info = AccessInfo(traffic=request.app[PAIR_TRAFFIC])
    request[ACCESS_INFO] = info
    check_client_key(request, runtime)
    raw = await read_body(request, runtime.config.max_body_bytes, runtime.config.body_timeout)
    payload = _json_object(raw)
    translated = chat_request(payload)
    body = _dumps(translated.chat_body).encode()
    passthrough = _passthrough(request, raw, runtime.config)
    proxied = ProxiedRequest.of(request, body, parse_client_body(body), runtime.config)
    for name in _ANTHROPIC_HEADERS:
        proxied.headers.popall(name, None)
    input_tokens = estimate_input_tokens(payload)
    proxied = replace(
        proxied,
        path=_CHAT_PATH,
        translator=lambda is_sse: _answer(translated, is_sse, input_tokens),
        passthrough=passthrough,
    )
    request[PROXIED_REQUEST] = proxied  # the access line names the model, routed or not
    route = runtime.table.route(proxied.model)
    if route is None:
        raise ModelNotFound(f"the model '{proxied.model}' does not exist", param="model")
    app = request.app
    return await forward(
        request, proxied, route, info, session=app[CLIENT_SESSION], sink=app[OUTCOMES], overload=app[OVERLOAD_LOG]
    )


def _passthrough(request: web.Request, raw: bytes, config: Config) -> ProxiedRequest:
    """The request as an `api-format: anthropic` vendor gets it: the client's bytes (only `model`
    is rewritten per pair), its `anthropic-*` headers, and the answer relayed untranslated."""
    proxied = ProxiedRequest.of(request, raw, parse_client_body(raw), config)
    proxied.headers.setdefault("anthropic-version", DEFAULT_ANTHROPIC_VERSION)
    return replace(proxied, path=MESSAGES_PATH)


def _answer(messages: MessagesRequest, is_sse: bool, input_tokens: int) -> AnswerTranslator:
    return _MessagesAnswer(messages, is_sse, input_tokens)


@routes.post(ANTHROPIC_PATH + "/count_tokens", expect_handler=expect_handler)
async def count_tokens(request: web.Request) -> web.Response:
    """An estimate (about four characters a token), documented as one: no tokenizer is downloaded,
    and clients that call it before each request (to decide when to compact) keep working."""
    runtime = request.app[RUNTIME].current
    check_client_key(request, runtime)
    payload = _json_object(await read_body(request, runtime.config.max_body_bytes, runtime.config.body_timeout))
    if not isinstance(payload.get("messages"), list):
        raise InvalidRequest("'messages' must be a list of messages", param="messages", code="invalid_messages")
    model = payload["model"]
    route = runtime.table.route(model)
    if route is None:
        raise ModelNotFound(f"the model '{model}' does not exist", param="model")
    return web.json_response({"input_tokens": estimate_input_tokens(payload)})
