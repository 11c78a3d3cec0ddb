"""Anthropic's Messages API onto OpenAI chat completions, and back: the names of both halves in one place.

The request side is `cliproxy.core.anthropic_request`, the answer and stream side
`cliproxy.core.anthropic_response`; this module only re-exports them for callers that want both.
"""

from __future__ import annotations

from cliproxy.core.anthropic_request import MessagesRequest, chat_request, estimate_input_tokens
from cliproxy.core.anthropic_response import StreamTranslator, anthropic_message, error_event, stop_reason

__all__ = [
    "MessagesRequest",
    "StreamTranslator",
    "error_event",
    "anthropic_message",
    "chat_request",
    "estimate_input_tokens",
    "stop_reason",
]
