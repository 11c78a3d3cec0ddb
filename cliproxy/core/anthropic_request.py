"""Anthropic's Messages API request onto an OpenAI chat completion request. Pure: dicts in and out.

`chat_request` turns a `/v1/messages` body into the chat completion body cliproxy sends to an
OpenAI-compatible vendor (the way back is `cliproxy.core.anthropic_response`).

What has no equivalent is dropped, never failed on: Claude Code sends fields such as
`context_management` and `output_config`, and a history that went through another vendor carries
`thinking` blocks whose signatures no OpenAI-compatible upstream can check.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cliproxy.core.errors import InvalidRequest

__all__ = ["MessagesRequest", "chat_request", "estimate_input_tokens"]

# One compact encoder (json.dumps with separators= builds a new one per call).
_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode

#: `thinking.budget_tokens` up to this many is `reasoning_effort: low`, up to the next `medium`, above `high`.
_EFFORT_LOW_UP_TO = 4096
_EFFORT_MEDIUM_UP_TO = 16384


@dataclass(frozen=True, slots=True)
class MessagesRequest:
    """A `/v1/messages` request as cliproxy forwards it to an OpenAI-compatible vendor."""

    model: str
    stream: bool
    #: The chat completion body (the routing key in its `model`, rewritten per attempt like any other).
    chat_body: dict[str, Any]
    #: The client's `stop_sequences`: a matched one is reported as `stop_reason: stop_sequence`.
    stop_sequences: tuple[str, ...] = ()


# ------------------------------------------------------------------------------------ requests


def chat_request(body: Mapping[str, Any]) -> MessagesRequest:
    """The chat completion equivalent of an Anthropic Messages request (`InvalidRequest` when it is
    not one: no model, or messages that are not a list of role/content objects)."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("'model' must be a non-empty string", param="model", code="invalid_model")
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise InvalidRequest("'messages' must be a list of messages", param="messages", code="invalid_messages")
    stream = body.get("stream") is True
    chat: dict[str, Any] = {"model": model}
    out: list[dict[str, Any]] = []
    system = _system_text(body.get("system"))
    if system:
        out.append({"role": "system", "content": system})
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
            raise InvalidRequest(
                f"messages[{index}] must be an object with 'role' user or assistant",
                param=f"messages.{index}",
                code="invalid_messages",
            )
        if message["role"] == "user":
            out.extend(_user_messages(message.get("content")))
        else:
            out.extend(_assistant_messages(message.get("content")))
    chat["messages"] = out
    for name in ("max_tokens", "temperature", "top_p"):
        if isinstance(body.get(name), (int, float)) and not isinstance(body.get(name), bool):
            chat[name] = body[name]
    stops = body.get("stop_sequences")
    stop_sequences = tuple(s for s in stops if isinstance(s, str)) if isinstance(stops, list) else ()
    if stop_sequences:
        chat["stop"] = list(stop_sequences)
    metadata = body.get("metadata")
    if isinstance(metadata, dict) and isinstance(metadata.get("user_id"), str):
        chat["user"] = metadata["user_id"]
    effort = _reasoning_effort(body.get("thinking"))
    if effort is not None:
        chat["reasoning_effort"] = effort
    tools = [t for t in map(_tool, body.get("tools") or ()) if t is not None] if isinstance(body.get("tools"), list) else []
    if tools:
        chat["tools"] = tools
        choice = body.get("tool_choice")
        if isinstance(choice, dict):
            mapped = _tool_choice(choice)
            if mapped is not None:
                chat["tool_choice"] = mapped
            if choice.get("disable_parallel_tool_use") is True:
                chat["parallel_tool_calls"] = False
    if stream:
        chat["stream"] = True
        # Without it most upstreams send no usage in a stream, and `message_delta` must carry some.
        chat["stream_options"] = {"include_usage": True}
    return MessagesRequest(model=model, stream=stream, chat_body=chat, stop_sequences=stop_sequences)


def _system_text(system: Any) -> str:
    if isinstance(system, str):
        return system
    if isinstance(system, list):
        return "\n\n".join(b["text"] for b in system if isinstance(b, dict) and isinstance(b.get("text"), str))
    return ""


def _blocks(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if isinstance(content, list):
        return [b for b in content if isinstance(b, dict)]
    return []


def _image_part(block: Mapping[str, Any]) -> dict[str, Any] | None:
    source = block.get("source")
    if not isinstance(source, dict):
        return None
    if source.get("type") == "base64" and isinstance(source.get("data"), str):
        media = source.get("media_type") if isinstance(source.get("media_type"), str) else "image/png"
        return {"type": "image_url", "image_url": {"url": f"data:{media};base64,{source['data']}"}}
    if source.get("type") == "url" and isinstance(source.get("url"), str):
        return {"type": "image_url", "image_url": {"url": source["url"]}}
    return None


def _tool_result_text(block: Mapping[str, Any]) -> str:
    content = block.get("content")
    text = (
        content if isinstance(content, str) else "\n".join(b.get("text", "") for b in _blocks(content) if b.get("type") == "text")
    )
    # OpenAI's tool message has no error flag: the model is told in words.
    return f"Error: {text}" if block.get("is_error") is True else text


def _user_messages(content: Any) -> list[dict[str, Any]]:
    """One user turn: its `tool_result` blocks become `tool` messages first (the answers to the
    assistant's calls must come right after them), then the rest as one user message."""
    tool_messages: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for block in _blocks(content):
        kind = block.get("type")
        if kind == "text" and isinstance(block.get("text"), str):
            parts.append({"type": "text", "text": block["text"]})
        elif kind == "image":
            image = _image_part(block)
            if image is not None:
                parts.append(image)
        elif kind == "tool_result":
            tool_messages.append(
                {"role": "tool", "tool_call_id": str(block.get("tool_use_id", "")), "content": _tool_result_text(block)}
            )
        # documents, thinking carried over from another vendor, cache hints: no chat equivalent
    if not parts:
        return tool_messages
    if all(p["type"] == "text" for p in parts):
        user: dict[str, Any] = {"role": "user", "content": "\n".join(p["text"] for p in parts)}
    else:
        user = {"role": "user", "content": parts}
    return [*tool_messages, user]


def _assistant_messages(content: Any) -> list[dict[str, Any]]:
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in _blocks(content):
        kind = block.get("type")
        if kind == "text" and isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif kind == "tool_use":
            arguments = _dumps(block.get("input") if isinstance(block.get("input"), dict) else {})
            calls.append(
                {
                    "id": str(block.get("id", "")),
                    "type": "function",
                    "function": {"name": str(block.get("name", "")), "arguments": arguments},
                }
            )
        # `thinking` / `redacted_thinking`: signed by the vendor that made them, meaningless to another
    if not texts and not calls:
        return []
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts else None}
    if calls:
        message["tool_calls"] = calls
    return [message]


def _tool(tool: Any) -> dict[str, Any] | None:
    """A client tool as an OpenAI function; Anthropic's server tools (web search, code execution,
    which have no `input_schema`) have no equivalent upstream and are dropped."""
    if not isinstance(tool, dict) or not isinstance(tool.get("name"), str) or not isinstance(tool.get("input_schema"), dict):
        return None
    function: dict[str, Any] = {"name": tool["name"], "parameters": tool["input_schema"]}
    if isinstance(tool.get("description"), str):
        function["description"] = tool["description"]
    return {"type": "function", "function": function}


def _tool_choice(choice: Mapping[str, Any]) -> str | dict[str, Any] | None:
    kind = choice.get("type")
    if kind in ("auto", "none"):
        return str(kind)
    if kind == "any":
        return "required"
    if kind == "tool" and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}
    return None


def _reasoning_effort(thinking: Any) -> str | None:
    if not isinstance(thinking, dict) or thinking.get("type") != "enabled":
        return None
    budget = thinking.get("budget_tokens")
    if not isinstance(budget, int):
        return "medium"
    if budget <= _EFFORT_LOW_UP_TO:
        return "low"
    return "medium" if budget <= _EFFORT_MEDIUM_UP_TO else "high"


def estimate_input_tokens(body: Mapping[str, Any]) -> int:
    """An estimate, not a count: about four characters of the JSON text of the system prompt, the
    messages and the tools per token (no tokenizer is downloaded). Good enough for a client deciding
    whether to compact its context; never exact."""
    size = sum(len(_dumps(body[k])) for k in ("system", "messages", "tools") if k in body)
    return max(1, size // 4)
