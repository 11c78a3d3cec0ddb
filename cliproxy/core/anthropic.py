"""Anthropic's Messages API onto OpenAI chat completions, and back: the names of both halves in one place.

The request side is `cliproxy.core.anthropic_request`, the answer and stream side
`cliproxy.core.anthropic_response`; this module only re-exports them for callers that want both.
"""

from __future__ import annotations

from cliproxy.core.anthropic_request import MessagesRequest, chat_request, estimate_input_tokens
from cliproxy.core.anthropic_response import StreamTranslator, anthropic_message, error_event, stop_reason

__all__ = [
    "DEFAULT_ANTHROPIC_VERSION",
    "MESSAGES_PATH",
    "MessagesRequest",
    "StreamTranslator",
    "error_event",
    "anthropic_message",
    "chat_request",
    "estimate_input_tokens",
    "stop_reason",
]

#: Appended to an `api-format: anthropic` vendor's base URL (which ends in `/v1`, as OpenAI's do).
MESSAGES_PATH = "/messages"
#: Sent to an Anthropic-format vendor when nobody named a version (its API requires one): a
#: client that named none, and cliproxy's own recovery probe.
DEFAULT_ANTHROPIC_VERSION = "2023-06-01"
