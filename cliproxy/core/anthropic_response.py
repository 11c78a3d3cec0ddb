"""OpenAI chat completions back into Anthropic's Messages answers and events. Pure: dicts and bytes in and out.

`anthropic_message` turns a vendor's chat completion into a Messages answer; `StreamTranslator`
does the same for a stream, fed the upstream's SSE bytes as they arrive and returning the Anthropic
events they make, so nothing is buffered to the end. (The request side is `cliproxy.core.anthropic_request`.)
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cliproxy.core.lenient import as_dict, as_int, as_list

__all__ = ["StreamTranslator", "anthropic_message", "error_event", "message_id", "stop_reason"]

# One compact encoder for every event (json.dumps with separators= builds a new one per call).
_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode

_FINISH_TO_STOP = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}


# ----------------------------------------------------------------------------------- responses


def message_id(upstream_id: Any) -> str:
    """`msg_...`, from the upstream's id when it has one (so logs on both sides can be matched)."""
    if isinstance(upstream_id, str) and upstream_id:
        return upstream_id if upstream_id.startswith("msg_") else f"msg_{upstream_id}"
    return f"msg_{uuid.uuid4().hex[:24]}"


def stop_reason(finish: Any, matched: Any, stop_sequences: tuple[str, ...]) -> tuple[str, str | None]:
    """(`stop_reason`, `stop_sequence`) for an OpenAI `finish_reason`. OpenAI does not say which stop
    sequence matched; upstreams that do (vLLM's `stop_reason`, SGLang's `matched_stop`) are believed
    when the string is one the client sent."""
    if finish == "stop" and isinstance(matched, str) and matched in stop_sequences:
        return "stop_sequence", matched
    return _FINISH_TO_STOP.get(finish, "end_turn") if isinstance(finish, str) else "end_turn", None


def _usage(usage: Any) -> dict[str, int]:
    if not isinstance(usage, dict):
        return {"input_tokens": 0, "output_tokens": 0}
    prompt = as_int(usage.get("prompt_tokens"))
    cached = as_int(as_dict(usage.get("prompt_tokens_details")).get("cached_tokens"))
    completion = usage.get("completion_tokens")
    out = {"input_tokens": max(0, prompt - cached), "output_tokens": completion if isinstance(completion, int) else 0}
    if cached:
        out["cache_read_input_tokens"] = cached  # Anthropic counts cache reads apart from input_tokens
    return out


def _tool_input(arguments: Any) -> Any:
    """The parsed arguments; arguments that are not a JSON object are kept, under `arguments`, not lost."""
    if isinstance(arguments, dict):
        return arguments
    try:
        parsed = json.loads(arguments) if isinstance(arguments, str) and arguments.strip() else {}
    except ValueError:
        return {"arguments": arguments}
    return parsed if isinstance(parsed, dict) else {"arguments": parsed}


def _reasoning(source: Mapping[str, Any]) -> str | None:
    value = source.get("reasoning_content", source.get("reasoning"))
    return value if isinstance(value, str) and value else None


def anthropic_message(chat: Mapping[str, Any], model: str, stop_sequences: tuple[str, ...] = ()) -> dict[str, Any]:
    """The Messages answer for a chat completion (`model`: what the client asked for)."""
    choices = chat.get("choices")
    choice = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else {}
    message = as_dict(choice.get("message"))
    content: list[dict[str, Any]] = []
    reasoning = _reasoning(message)
    if reasoning:
        content.append({"type": "thinking", "thinking": reasoning, "signature": ""})
    text = message.get("content")
    if isinstance(text, str) and text:
        content.append({"type": "text", "text": text})
    calls = as_list(message.get("tool_calls"))
    for call in calls:
        function = as_dict(call.get("function") if isinstance(call, dict) else None)
        content.append(
            {
                "type": "tool_use",
                "id": call.get("id") or f"toolu_{uuid.uuid4().hex[:24]}",
                "name": function.get("name", ""),
                "input": _tool_input(function.get("arguments")),
            }
        )
    reason, sequence = stop_reason(
        choice.get("finish_reason"), choice.get("stop_reason", choice.get("matched_stop")), stop_sequences
    )
    if calls and reason == "end_turn":
        reason = "tool_use"  # some upstreams say `stop` after tool calls
    return {
        "id": message_id(chat.get("id")),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": reason,
        "stop_sequence": sequence,
        "usage": _usage(chat.get("usage")),
    }


# ------------------------------------------------------------------------------------- errors


def _event(name: str, data: Mapping[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + _dumps(data).encode() + b"\n\n"


def error_event(message: str, error_type: str = "api_error") -> bytes:
    """The Anthropic `error` event that ends a stream which cannot go on."""
    return _event("error", {"type": "error", "error": {"type": error_type, "message": message}})


# ------------------------------------------------------------------------------------ streams


@dataclass(slots=True)
class _ToolCall:
    id: str = ""
    name: str = ""
    #: Argument text that arrived before the id and name did (the block cannot start without them).
    pending: list[str] = field(default_factory=list)
    block: int | None = None


class StreamTranslator:
    """Turns an OpenAI chat completion stream into Anthropic's event sequence, chunk by chunk.

    `feed` takes raw upstream bytes (events may be split across chunks) and returns the Anthropic
    events they complete; `end` what the end of the upstream stream adds (`message_delta`,
    `message_stop`), `fail` the `error` event for a stream broken after it started.
    The stop reason and usage wait for the end of the stream: a usage-only chunk comes after the
    one with the finish reason.
    """

    def __init__(
        self,
        model: str,
        *,
        stop_sequences: tuple[str, ...] = (),
        input_tokens: int = 0,
        new_id: Callable[[], str] = lambda: uuid.uuid4().hex[:24],
    ) -> None:
        self.model = model
        self.stop_sequences = stop_sequences
        self._input_estimate = input_tokens
        self._new_id = new_id
        self._buffer = b""
        self._started = False
        self._finished = False
        self._blocks = 0
        self._open: tuple[str, int] | None = None  # ("text"|"thinking"|"tool", tool index or -1)
        self._tools: dict[int, _ToolCall] = {}
        self._finish: Any = None
        self._matched: Any = None
        self._usage: Any = None
        self._id: str | None = None

    # -- the relay's side

    def feed(self, chunk: bytes) -> bytes:
        if self._finished:
            return b""
        self._buffer += chunk
        out: list[bytes] = []
        while True:
            end, size = _event_end(self._buffer)
            if end < 0:
                break
            raw, self._buffer = self._buffer[:end], self._buffer[end + size :]
            out.append(self._on_event(raw))
            if self._finished:
                break
        return b"".join(out)

    def end(self) -> bytes:
        """The upstream stream ended (after `[DONE]` or not): close what is open and stop the message."""
        if self._finished:
            return b""
        out = self._on_event(self._buffer) if self._buffer.strip() else b""
        return out + self._stop()

    def fail(self, message: str, error_type: str = "api_error") -> bytes:
        if self._finished:
            return b""
        self._finished = True
        return error_event(message, error_type)

    # -- events

    def _on_event(self, raw: bytes) -> bytes:
        data = [line[5:].removeprefix(b" ") for line in raw.splitlines() if line.startswith(b"data:")]
        if not data:
            return b""  # comments (`: ping`), bare `event:` lines
        payload = b"\n".join(data)
        if payload.strip() == b"[DONE]":
            return self._stop()
        try:
            chunk = json.loads(payload)
        except ValueError:
            return b""  # not JSON: nothing an Anthropic client could use
        if not isinstance(chunk, dict):
            return b""
        out = [self._start(chunk)]
        if "error" in chunk and not chunk.get("choices"):
            error = chunk["error"]
            message = error.get("message") if isinstance(error, dict) else None
            out.append(self.fail(message if isinstance(message, str) else "the upstream stream reported an error"))
            return b"".join(out)
        if isinstance(chunk.get("usage"), dict):
            self._usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue  # n > 1 has no Anthropic equivalent: the first choice is the message
            delta = as_dict(choice.get("delta"))
            reasoning = _reasoning(delta)
            if reasoning:
                out.append(self._text("thinking", reasoning))
            if isinstance(delta.get("content"), str) and delta["content"]:
                out.append(self._text("text", delta["content"]))
            for call in delta.get("tool_calls") or ():
                if isinstance(call, dict):
                    out.append(self._tool_delta(call))
            if choice.get("finish_reason"):
                # Content and the finish reason may share a chunk: the content went out first, above.
                self._finish = choice["finish_reason"]
                self._matched = choice.get("stop_reason", choice.get("matched_stop"))
                out.append(self._flush_tools() + self._close())
        return b"".join(out)

    def _start(self, chunk: Mapping[str, Any]) -> bytes:
        if self._started:
            return b""
        self._started = True
        self._id = message_id(chunk.get("id"))
        message: dict[str, Any] = {
            "id": self._id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": self._input_estimate, "output_tokens": 0},
        }
        return _event("message_start", {"type": "message_start", "message": message})

    def _open_block(self, kind: str, key: int, block: Mapping[str, Any]) -> bytes:
        out = self._close()
        index = self._blocks
        self._blocks += 1
        self._open = (kind, key)
        return out + _event("content_block_start", {"type": "content_block_start", "index": index, "content_block": block})

    def _close(self) -> bytes:
        if self._open is None:
            return b""
        self._open = None
        return _event("content_block_stop", {"type": "content_block_stop", "index": self._blocks - 1})

    def _text(self, kind: str, text: str) -> bytes:
        out = b""
        if self._open is None or self._open[0] != kind:
            out = self._flush_tools()
            block = {"type": "text", "text": ""} if kind == "text" else {"type": "thinking", "thinking": "", "signature": ""}
            out += self._open_block(kind, -1, block)
        delta = {"type": "text_delta", "text": text} if kind == "text" else {"type": "thinking_delta", "thinking": text}
        return out + _event("content_block_delta", {"type": "content_block_delta", "index": self._blocks - 1, "delta": delta})

    def _tool_delta(self, call: Mapping[str, Any]) -> bytes:
        index = call.get("index", 0) if isinstance(call.get("index"), int) else 0
        tool = self._tools.get(index)
        out = b""
        if tool is None:
            # A new call: any earlier one that still waits for its id or name starts now, as it is.
            out += self._flush_tools()
            tool = self._tools[index] = _ToolCall()
        function = as_dict(call.get("function"))
        if isinstance(call.get("id"), str) and call["id"]:
            tool.id = call["id"]
        if isinstance(function.get("name"), str) and function["name"]:
            tool.name += function["name"] if tool.block is None else ""
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            tool.pending.append(arguments)
        if tool.block is None and tool.id and tool.name:
            out += self._start_tool(index, tool)
        elif tool.block is not None and tool.pending and self._open == ("tool", index):
            out += self._arguments(tool)
        return out

    def _start_tool(self, index: int, tool: _ToolCall) -> bytes:
        if not tool.id:
            tool.id = f"toolu_{self._new_id()}"
        block = {"type": "tool_use", "id": tool.id, "name": tool.name, "input": {}}
        out = self._open_block("tool", index, block)
        tool.block = self._blocks - 1
        return out + self._arguments(tool)

    def _arguments(self, tool: _ToolCall) -> bytes:
        if not tool.pending:
            return b""
        partial, tool.pending = "".join(tool.pending), []
        delta = {"type": "input_json_delta", "partial_json": partial}
        return _event("content_block_delta", {"type": "content_block_delta", "index": tool.block, "delta": delta})

    def _flush_tools(self) -> bytes:
        """Start the calls still waiting for an id or a name (an upstream that never sends one)."""
        out = b""
        for index, tool in self._tools.items():
            if tool.block is None:
                out += self._start_tool(index, tool)
        return out

    def _stop(self) -> bytes:
        out = self._start({}) + self._flush_tools() + self._close()
        self._finished = True
        reason, sequence = stop_reason(self._finish, self._matched, self.stop_sequences)
        if self._tools and reason == "end_turn":
            reason = "tool_use"
        usage = _usage(self._usage) if self._usage is not None else {"output_tokens": 0}
        delta = {"type": "message_delta", "delta": {"stop_reason": reason, "stop_sequence": sequence}, "usage": usage}
        return out + _event("message_delta", delta) + _event("message_stop", {"type": "message_stop"})


def _event_end(buffer: bytes) -> tuple[int, int]:
    """Where the first complete SSE event in `buffer` ends, and the size of the blank line that ends it."""
    best = (-1, 0)
    for separator in (b"\n\n", b"\r\n\r\n", b"\r\r"):
        at = buffer.find(separator)
        if at >= 0 and (best[0] < 0 or at < best[0]):
            best = (at, len(separator))
    return best
