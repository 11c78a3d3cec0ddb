"""What the fake upstream answers when nothing goes wrong: OpenAI-shaped bodies and SSE frames for
chat, completions, responses and embeddings. Pure: values in, bytes and dicts out."""

from __future__ import annotations

import base64
import itertools
import json
import math
import struct
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["BadInput", "ChatScript", "SSE_DONE", "dumps", "full_body", "stream_frames"]

# One compact encoder reused for every payload (json.dumps with separators= builds a new one per call).
dumps = json.JSONEncoder(separators=(",", ":")).encode
#: The frame that ends a chat or completions stream.
SSE_DONE = b"data: [DONE]\n\n"


class BadInput(ValueError):
    """A request the fake answers with 400 (the message is the error's)."""


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


@dataclass(frozen=True)
class ChatScript:
    """What a chat answer says besides its text: reasoning first, or tool calls instead of the text."""

    reasoning: str | None = None
    tool_calls: tuple[dict[str, Any], ...] = ()


def _arguments(call: Mapping[str, Any]) -> str:
    arguments = call.get("arguments", {})
    return arguments if isinstance(arguments, str) else dumps(arguments)


def _stopped(body: Mapping[str, Any], pieces: list[str]) -> tuple[list[str], str | None]:
    """The pieces up to the first of the request's `stop` strings, and the one matched (as vLLM says in `stop_reason`)."""
    stop = body.get("stop")
    stops = [stop] if isinstance(stop, str) else [s for s in stop if isinstance(s, str) and s] if isinstance(stop, list) else []
    text = "".join(pieces)
    hits = [(text.find(s), s) for s in stops if s in text]
    if not hits:
        return pieces, None
    at, matched = min(hits)
    kept: list[str] = []
    size = 0
    for piece in pieces:
        if size + len(piece) >= at:
            if at > size:
                kept.append(piece[: at - size])
            break
        kept.append(piece)
        size += len(piece)
    return kept, matched


def full_body(
    kind: str,
    body: Mapping[str, Any],
    model: str,
    chunks: int,
    *,
    name: str,
    next_id: Callable[[str], str],
    embedding_dim: int,
    script: ChatScript = ChatScript(),
) -> dict[str, Any]:
    """The non-stream JSON object for ``kind`` (`BadInput` for bad embeddings input)."""
    if kind == "embeddings":
        return _embedding_object(body, model, embedding_dim)
    text = "".join(_pieces(model, chunks))
    prompt_tokens = _prompt_tokens(body)
    created = int(time.time())
    if kind == "chat":
        pieces, matched = _stopped(body, _pieces(model, chunks))
        message: dict[str, Any] = {"role": "assistant", "content": "".join(pieces), "refusal": None}
        finish = "stop"
        if script.reasoning is not None:
            message["reasoning_content"] = script.reasoning
        if script.tool_calls:
            message["content"] = None
            message["tool_calls"] = [
                {"id": f"call_{i}", "type": "function", "function": {"name": c["name"], "arguments": _arguments(c)}}
                for i, c in enumerate(script.tool_calls)
            ]
            finish, matched = "tool_calls", None
        choice: dict[str, Any] = {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}
        if matched is not None:
            choice["stop_reason"] = matched
        return {
            "id": next_id("chatcmpl"),
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [choice],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": chunks,
                "total_tokens": prompt_tokens + chunks,
            },
            "system_fingerprint": f"fp_{name}",
        }
    if kind == "completions":
        return {
            "id": next_id("cmpl"),
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
    return _response_object(next_id("resp"), model, text, prompt_tokens, chunks, created)


def _response_object(rid: str, model: str, text: str | None, prompt_tokens: int, chunks: int, created: int) -> dict[str, Any]:
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


def stream_frames(
    kind: str,
    body: Mapping[str, Any],
    model: str,
    chunks: int,
    *,
    name: str,
    next_id: Callable[[str], str],
    script: ChatScript = ChatScript(),
) -> tuple[list[bytes], bytes]:
    """SSE frames (each one write) and the terminating frame for a stream."""
    pieces = _pieces(model, chunks)
    created = int(time.time())
    model_json = dumps(model)
    last = len(pieces) - 1
    if kind == "responses":
        return _response_frames(model, pieces, _prompt_tokens(body), created, next_id=next_id)
    if kind == "chat":
        # Static parts are formatted once per request; only the delta varies.
        base = (
            f'data: {{"id":"{next_id("chatcmpl")}","object":"chat.completion.chunk",'
            f'"created":{created},"model":{model_json},"system_fingerprint":"fp_{name}",'
        )
        head = base + '"choices":[{"index":0,"delta":'
        frames: list[bytes] = []
        if script.reasoning is not None or script.tool_calls or body.get("stop"):
            frames = _scripted_chat_frames(head, body, pieces, script)
        for i, piece in enumerate(pieces if not frames else ()):
            delta = {"role": "assistant", "content": piece} if i == 0 else {"content": piece}
            finish = '"stop"' if i == last else "null"
            frames.append(f'{head}{dumps(delta)},"logprobs":null,"finish_reason":{finish}}}]}}\n\n'.encode())
    else:
        base = f'data: {{"id":"{next_id("cmpl")}","object":"text_completion","created":{created},"model":{model_json},'
        head = base + '"choices":[{"text":'
        frames = []
        for i, piece in enumerate(pieces):
            finish = '"stop"' if i == last else "null"
            frames.append(f'{head}{dumps(piece)},"index":0,"logprobs":null,"finish_reason":{finish}}}]}}\n\n'.encode())
    options = body.get("stream_options")
    if isinstance(options, dict) and options.get("include_usage"):
        prompt_tokens = _prompt_tokens(body)
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": chunks,
            "total_tokens": prompt_tokens + chunks,
        }
        frames.append(f'{base}"choices":[],"usage":{dumps(usage)}}}\n\n'.encode())
    return frames, SSE_DONE


def _scripted_chat_frames(head: str, body: Mapping[str, Any], pieces: list[str], script: ChatScript) -> list[bytes]:
    """Chat chunks as upstreams that think and call tools send them: reasoning deltas, then text
    (cut at a `stop` string, which `stop_reason` names), or tool calls whose id and name come in
    separate chunks and whose arguments come in two pieces; the finish reason in a chunk of its own."""

    def frame(delta: dict[str, Any], finish: str | None = None, extra: str = "") -> bytes:
        return f'{head}{dumps(delta)},"logprobs":null,"finish_reason":{dumps(finish)}{extra}}}]}}\n\n'.encode()

    frames = [frame({"role": "assistant", "content": ""})]
    if script.reasoning is not None:
        half = len(script.reasoning) // 2
        frames += [frame({"reasoning_content": part}) for part in (script.reasoning[:half], script.reasoning[half:]) if part]
    if script.tool_calls:
        for i, call in enumerate(script.tool_calls):
            arguments = _arguments(call)
            half = len(arguments) // 2
            frames.append(
                frame({"tool_calls": [{"index": i, "id": f"call_{i}", "type": "function", "function": {"arguments": ""}}]})
            )
            frames.append(frame({"tool_calls": [{"index": i, "function": {"name": call["name"]}}]}))
            for part in (arguments[:half], arguments[half:]):
                frames.append(frame({"tool_calls": [{"index": i, "function": {"arguments": part}}]}))
        frames.append(frame({}, "tool_calls"))
        return frames
    kept, matched = _stopped(body, pieces)
    frames += [frame({"content": piece}) for piece in kept]
    frames.append(frame({}, "stop", f',"stop_reason":{dumps(matched)}' if matched is not None else ""))
    return frames


def _response_frames(
    model: str, pieces: list[str], prompt_tokens: int, created: int, *, next_id: Callable[[str], str]
) -> tuple[list[bytes], bytes]:
    rid = next_id("resp")
    item_id = f"msg_{rid}"
    seq = itertools.count()
    text = "".join(pieces)

    def event(type_: str, **data: Any) -> bytes:
        payload = {"type": type_, "sequence_number": next(seq), **data}
        return f"event: {type_}\ndata: {dumps(payload)}\n\n".encode()

    in_progress = _response_object(rid, model, None, prompt_tokens, len(pieces), created)
    item = {"type": "message", "id": item_id, "status": "in_progress", "role": "assistant", "content": []}
    part = {"type": "output_text", "text": "", "annotations": []}
    loc = {"item_id": item_id, "output_index": 0, "content_index": 0}
    frames = [
        event("response.created", response=in_progress),
        event("response.output_item.added", output_index=0, item=item),
        event("response.content_part.added", part=part, **loc),
    ]
    frames += [event("response.output_text.delta", delta=p, **loc) for p in pieces]
    full = _response_object(rid, model, text, prompt_tokens, len(pieces), created)
    frames += [
        event("response.output_text.done", text=text, **loc),
        event("response.content_part.done", part={**part, "text": text}, **loc),
        event("response.output_item.done", output_index=0, item=full["output"][0]),
    ]
    return frames, event("response.completed", response=full)


def _embedding_object(body: Mapping[str, Any], model: str, embedding_dim: int) -> dict[str, Any]:
    inputs = body.get("input")
    if isinstance(inputs, str) or (isinstance(inputs, list) and inputs and all(isinstance(t, int) for t in inputs)):
        inputs = [inputs]
    if not isinstance(inputs, list) or not inputs:
        raise BadInput("'input' must be a non-empty string or array")
    dim = body.get("dimensions")
    dim = dim if isinstance(dim, int) and 0 < dim <= 4096 else embedding_dim
    as_base64 = body.get("encoding_format") == "base64"
    data = []
    for index, item in enumerate(inputs):
        # Deterministic per input so callers can compare vectors.
        seed = sum(map(ord, str(item))) % 997
        vector = [round(math.sin(seed + k) * 0.5, 6) for k in range(dim)]
        embedding: Any = base64.b64encode(struct.pack(f"<{dim}f", *vector)).decode() if as_base64 else vector
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    tokens = sum(len(str(i)) for i in inputs) // 4 + 1
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


# ------------------------------------------------------------ Anthropic's Messages API (minimal)


def messages_body(body: Mapping[str, Any], model: str, chunks: int, *, next_id: Callable[[str], str]) -> dict[str, Any]:
    """A non-stream Messages answer: one text block, the pieces a chat answer would have."""
    return {
        "id": next_id("msg"),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": "".join(_pieces(model, chunks))}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": _prompt_tokens(body), "output_tokens": chunks},
    }


def messages_events(body: Mapping[str, Any], model: str, chunks: int, *, next_id: Callable[[str], str]) -> list[bytes]:
    """A streamed Messages answer as Anthropic sends it: named events, one text block, one delta per piece."""

    def event(name: str, data: dict[str, Any]) -> bytes:
        return f"event: {name}\ndata: {dumps({'type': name, **data})}\n\n".encode()

    start = {**messages_body(body, model, chunks, next_id=next_id), "content": [], "stop_reason": None}
    start["usage"] = {"input_tokens": start["usage"]["input_tokens"], "output_tokens": 0}
    pieces = _pieces(model, chunks)
    return [
        event("message_start", {"message": start}),
        event("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}),
        event("ping", {}),
        *(event("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": p}}) for p in pieces),
        event("content_block_stop", {"index": 0}),
        event(
            "message_delta",
            {"delta": {"stop_reason": "end_turn", "stop_sequence": None}, "usage": {"output_tokens": len(pieces)}},
        ),
        event("message_stop", {}),
    ]


def messages_error(status: int, message: str) -> dict[str, Any]:
    """Anthropic's error shape, with the type its API gives `status`."""
    kind = {
        400: "invalid_request_error",
        401: "authentication_error",
        403: "permission_error",
        404: "not_found_error",
        429: "rate_limit_error",
        529: "overloaded_error",
    }.get(status, "api_error")
    return {"type": "error", "error": {"type": kind, "message": message}}
