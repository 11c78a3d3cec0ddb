"""What an upstream attempt's answer means for its pair: the one place failures are told from answers.

Pure: the relay (`cliproxy.web.upstream`) hands over what it saw (a status, a small whole body, the
leading events of a stream) and gets back a reason, which it turns into an `Outcome`. Real upstreams
fail in ways the status hides: an error object inside a 200, a stream whose first event is an error,
a stream that ends without a single token, a 404 or 400 for a model the vendor no longer serves.
Each of those is a countable failure here, and fails over while nothing has reached the client.

Every countable reason maps to a coarse `ErrorKind` (`KIND_OF`), carried in `ErrorInfo.kind`: the
bounded vocabulary of the API's `last_error.kind` and the events.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from cliproxy.core.events import ErrorInfo, Outcome

__all__ = [
    "ErrorKind",
    "FIRST_TOKEN_HOLD_BYTES",
    "FIRST_TOKEN_HOLD_EVENTS",
    "KIND_OF",
    "MODEL_NOT_FOUND_CODES",
    "SMALL_BODY_LIMIT",
    "StreamStart",
    "classify_body",
    "classify_status",
    "error_message",
    "event_verdict",
    "failure",
]

ErrorKind = Literal[
    "http_status",
    "connect",
    "timeout",
    "first_token_timeout",
    "stream_idle",
    "stream_error",
    "error_in_200",
    "empty_stream",
    "model_not_found",
]

#: Each countable outcome reason (the metrics `reason` label, the access line's `outcome`) and its kind.
KIND_OF: dict[str, ErrorKind] = {
    "http_status": "http_status",
    "connect_error": "connect",
    "connect_timeout": "connect",
    "first_byte_timeout": "timeout",
    "first_token_timeout": "first_token_timeout",
    "stream_idle_timeout": "stream_idle",
    "stream_error": "stream_error",
    "error_in_200": "error_in_200",
    "empty_stream": "empty_stream",
    "model_not_found": "model_not_found",
}

#: Error codes (OpenAI's `error.code`, or `error.type` where a vendor puts it there) saying the model does not exist.
MODEL_NOT_FOUND_CODES = frozenset({"model_not_found", "model_not_available"})

#: A non-stream 2xx body is looked into only when it is whole within this many bytes. Error objects
#: are a few hundred bytes; a real answer this small costs one `in` scan (and a parse only when it
#: mentions "error"); a larger one is relayed as it streams, never parsed.
SMALL_BODY_LIMIT = 64 * 1024

#: Leading stream events that carry no content are held back (so a stall before the first token can
#: still fail over) up to this many events or bytes; past either, the stream is relayed as it is.
FIRST_TOKEN_HOLD_EVENTS = 32
FIRST_TOKEN_HOLD_BYTES = 16 * 1024


def failure(reason: str, status: int | None, message: str) -> Outcome:
    """A countable failure with its kind (the reason must be one of `KIND_OF`)."""
    return Outcome("failure", reason, ErrorInfo(status, message, KIND_OF[reason]))


def classify_status(status: int, count_statuses: frozenset[int], body: bytes = b"") -> Outcome | None:
    """The outcome of an upstream HTTP status (with its error body, when one was read): None for
    2xx/3xx (decided by the body), else a failure or neutral.

    A 404 counted by `count-statuses`, and a 400 whose error code says the model does not exist, are
    `model_not_found`: cliproxy forwards only models it was configured with, so either means the pair
    is misconfigured or the vendor dropped the model, not that the client erred.
    """
    if status < 400:
        return None
    if (status == 404 and status in count_statuses) or (status in (400, 404) and _names_missing_model(body)):
        return failure("model_not_found", status, "")
    if status in count_statuses:
        return failure("http_status", status, "")
    return Outcome("neutral", "client_error", ErrorInfo(status, ""))


def classify_body(body: bytes) -> str | None:
    """The failure reason of a whole, small non-stream 2xx body: `error_in_200` (or `model_not_found`)
    when it is a JSON error object with no `choices`/`data`/`output`; None for anything else."""
    if b'"error"' not in body:
        return None  # the usual answer: one scan, no parse
    return _error_reason(_json_object(body))


EventVerdict = Literal["content", "empty", "error", "done"]


def event_verdict(event: bytes) -> tuple[EventVerdict, dict[str, Any] | None]:
    """What one SSE event (its lines, without the blank line that ends it) carries, and its JSON.

    `empty`: nothing a user would see yet (a comment or ping, a role-only delta, empty `choices`, a
    usage-only chunk, a Responses API lifecycle event). `error`: an error object. `done`: `[DONE]`.
    Anything unknown is `content`: when unsure, relay.
    """
    name = b""
    data: list[bytes] = []
    for line in event.splitlines():
        if line.startswith(b"data:"):
            data.append(line[5:].removeprefix(b" "))
        elif line.startswith(b"event:"):
            name = line[6:].strip()
    if not data:
        return "empty", None  # a comment (`: ping`), or an event with no data
    payload = b"\n".join(data)
    if payload.strip() == b"[DONE]":
        return "done", None
    obj = _json_object(payload)
    if obj is None:
        return "content", None
    if name == b"error" or _error_reason(obj) is not None or obj.get("type") in ("error", "response.failed"):
        return "error", obj
    if _carries_content(obj):
        return "content", obj
    return "empty", obj


_EVENT_END = re.compile(rb"\r\n\r\n|\n\n|\r\r")


@dataclass(slots=True)
class StreamStart:
    """The first-token watch of one streaming attempt: fed the stream's chunks until it decides.

    `feed` answers None while everything so far is held back (no content yet, within the bounds);
    `content` once an event carries content; `overflow` when the hold bounds are reached first (the
    stream is relayed from then on, undecided); `error` when the first data event is an error object;
    `empty_stream` at `[DONE]` with no content. `end()` is the verdict at EOF.
    """

    held_events: int = 0
    held_bytes: int = 0
    _rest: bytes = b""
    #: The error object of an `error` verdict (for the excerpt).
    error: dict[str, Any] | None = field(default=None)

    def feed(self, chunk: bytes) -> Literal["content", "overflow", "error", "empty_stream"] | None:
        self.held_bytes += len(chunk)
        data = self._rest + chunk if self._rest else chunk
        # Event by event, stopping at the first that decides: a fast upstream's first read often
        # holds the whole stream, and splitting all of it to judge the first two events cost more
        # than judging them.
        position = 0
        while (end := _EVENT_END.search(data, position)) is not None:
            event = data[position : end.start()]
            position = end.end()
            if not event.strip():
                continue
            verdict, obj = event_verdict(event)
            if verdict == "content":
                return "content"
            if verdict == "error":
                self.error = obj
                return "error"
            if verdict == "done":
                return "empty_stream"
            self.held_events += 1
        self._rest = data[position:]
        if self.held_events >= FIRST_TOKEN_HOLD_EVENTS or self.held_bytes >= FIRST_TOKEN_HOLD_BYTES:
            return "overflow"
        return None

    def end(self) -> Literal["content", "error", "empty_stream"]:
        """At EOF: an unterminated last event still counts; otherwise the stream had no content."""
        if self._rest.strip():
            verdict, obj = event_verdict(self._rest)
            self._rest = b""
            if verdict == "content":
                return "content"
            if verdict == "error":
                self.error = obj
                return "error"
        return "empty_stream"

    def error_reason(self) -> str:
        """`model_not_found` when the error event's code says so, else `error_in_200`."""
        return _error_reason(self.error) or "error_in_200"


def error_message(obj: dict[str, Any] | None) -> str:
    """The message of an error object, as the upstream put it (masked by the caller)."""
    if obj is None:
        return ""
    error = obj.get("error", obj)
    if isinstance(error, dict):
        message = error.get("message")
        return message if isinstance(message, str) else json.dumps(error)[:200]
    return str(error)[:200]


# ---------------------------------------------------------------------------------------------


def _json_object(data: bytes) -> dict[str, Any] | None:
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError):
        return None
    return obj if isinstance(obj, dict) else None


def _error_reason(obj: dict[str, Any] | None) -> str | None:
    """`error_in_200`/`model_not_found` for an error object; None for an answer (or an empty `error`)."""
    if obj is None or not obj.get("error") or any(key in obj for key in ("choices", "data", "output")):
        return None
    error = obj["error"]
    if isinstance(error, dict) and (error.get("code") in MODEL_NOT_FOUND_CODES or error.get("type") in MODEL_NOT_FOUND_CODES):
        return "model_not_found"
    return "error_in_200"


def _names_missing_model(body: bytes) -> bool:
    if b"model_not" not in body:
        return False  # one scan; only a body that names the code is parsed
    return _error_reason(_json_object(body)) == "model_not_found"


_CONTENT_FIELDS = ("content", "reasoning_content", "reasoning", "tool_calls", "function_call", "refusal", "audio")
#: Responses API events before the first output: nothing a user sees.
_LIFECYCLE_EVENTS = frozenset(
    {
        "response.created",
        "response.in_progress",
        "response.queued",
        "response.output_item.added",
        "response.content_part.added",
        # Anthropic's Messages stream (`api-format: anthropic` vendors): the envelope before the first token
        "message_start",
        "ping",
    }
)


def _carries_content(obj: dict[str, Any]) -> bool:
    choices = obj.get("choices")
    if isinstance(choices, list):
        return any(_choice_has_content(choice) for choice in choices) or bool(obj.get("data"))
    kind = obj.get("type")
    if isinstance(kind, str) and kind in _LIFECYCLE_EVENTS:
        return False
    return True  # embeddings' `data`, and shapes unknown here: relay


def _choice_has_content(choice: Any) -> bool:
    if not isinstance(choice, dict):
        return False
    if choice.get("text") or choice.get("message"):
        return True
    delta = choice.get("delta")
    if isinstance(delta, dict):
        for name in _CONTENT_FIELDS:  # a plain loop: this runs on the first events of every stream
            if delta.get(name):
                return True
    return False
