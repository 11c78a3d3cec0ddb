"""The pure Anthropic <-> OpenAI translation (cliproxy.core.anthropic): table tests, no sockets."""

from __future__ import annotations

import json
from typing import Any

import pytest

from cliproxy.core.anthropic import StreamTranslator, anthropic_message, chat_request
from cliproxy.core.errors import InvalidRequest


def sse(*chunks: dict[str, Any] | str) -> list[bytes]:
    return [f"data: {c if isinstance(c, str) else json.dumps(c)}\n\n".encode() for c in chunks]


def choice(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> dict[str, Any]:
    return {"id": "chatcmpl-1", "choices": [{"index": 0, "delta": delta, "finish_reason": finish, **extra}]}


USAGE = {"id": "chatcmpl-1", "choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}}


def events(frames: list[bytes], *, split: bool = False, **kwargs: Any) -> list[tuple[str, dict[str, Any]]]:
    """What the translator writes for `frames`, parsed back into (event, data); `split`: fed byte by byte."""
    translator = StreamTranslator("claude-x", input_tokens=3, new_id=lambda: "gen", **kwargs)
    raw = b"".join(frames)
    pieces = [raw[i : i + 1] for i in range(len(raw))] if split else frames
    out = b"".join(translator.feed(p) for p in pieces) + translator.end()
    parsed = []
    for block in out.decode().split("\n\n"):
        if block:
            name, data = block.split("\n")
            assert name.startswith("event: ") and data.startswith("data: ")
            payload = json.loads(data[6:])
            assert payload["type"] == name[7:]
            parsed.append((name[7:], payload))
    return parsed


def start() -> tuple[str, dict[str, Any]]:
    message = {
        "id": "msg_chatcmpl-1",
        "type": "message",
        "role": "assistant",
        "model": "claude-x",
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": 3, "output_tokens": 0},
    }
    return ("message_start", {"type": "message_start", "message": message})


def block_start(index: int, block: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    return ("content_block_start", {"type": "content_block_start", "index": index, "content_block": block})


def delta(index: int, d: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    return ("content_block_delta", {"type": "content_block_delta", "index": index, "delta": d})


def stop(index: int) -> tuple[str, dict[str, Any]]:
    return ("content_block_stop", {"type": "content_block_stop", "index": index})


def end(reason: str, usage: dict[str, int] | None = None, sequence: str | None = None) -> list[tuple[str, dict[str, Any]]]:
    return [
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": reason, "stop_sequence": sequence},
                "usage": usage or {"output_tokens": 0},
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    ]


TEXT = {"type": "text", "text": ""}


class TestStreamTranslator:
    @pytest.mark.parametrize("split", [False, True], ids=["whole-events", "byte-by-byte"])
    def test_text_then_usage_only_last_chunk(self, split):
        frames = sse(
            choice({"role": "assistant", "content": ""}),
            choice({"content": "Hel"}),
            choice({"content": "lo"}, "stop"),
            USAGE,
            "[DONE]",
        )
        assert events(frames, split=split) == [
            start(),
            block_start(0, TEXT),
            delta(0, {"type": "text_delta", "text": "Hel"}),
            delta(0, {"type": "text_delta", "text": "lo"}),
            stop(0),
            *end("end_turn", {"input_tokens": 11, "output_tokens": 7}),
        ]

    def test_reasoning_then_text(self):
        frames = sse(
            choice({"reasoning_content": "think"}),
            choice({"reasoning_content": "ing"}),
            choice({"content": "answer"}),
            choice({}, "length"),
            "[DONE]",
        )
        assert events(frames) == [
            start(),
            block_start(0, {"type": "thinking", "thinking": "", "signature": ""}),
            delta(0, {"type": "thinking_delta", "thinking": "think"}),
            delta(0, {"type": "thinking_delta", "thinking": "ing"}),
            stop(0),
            block_start(1, TEXT),
            delta(1, {"type": "text_delta", "text": "answer"}),
            stop(1),
            *end("max_tokens"),
        ]

    def test_tool_call_with_id_and_name_in_separate_chunks(self):
        frames = sse(
            choice({"tool_calls": [{"index": 0, "id": "call_a", "type": "function", "function": {"arguments": ""}}]}),
            choice({"tool_calls": [{"index": 0, "function": {"arguments": '{"ci'}}]}),
            choice({"tool_calls": [{"index": 0, "function": {"name": "weather"}}]}),
            choice({"tool_calls": [{"index": 0, "function": {"arguments": 'ty":"Paris"}'}}]}),
            choice({}, "tool_calls"),
            "[DONE]",
        )
        assert events(frames) == [
            start(),
            block_start(0, {"type": "tool_use", "id": "call_a", "name": "weather", "input": {}}),
            delta(0, {"type": "input_json_delta", "partial_json": '{"ci'}),
            delta(0, {"type": "input_json_delta", "partial_json": 'ty":"Paris"}'}),
            stop(0),
            *end("tool_use"),
        ]

    def test_two_parallel_tool_calls_after_text(self):
        frames = sse(
            choice({"content": "calling"}),
            choice({"tool_calls": [{"index": 0, "id": "c0", "function": {"name": "a", "arguments": "{}"}}]}),
            choice({"tool_calls": [{"index": 1, "id": "c1", "function": {"name": "b", "arguments": '{"y"'}}]}),
            choice({"tool_calls": [{"index": 1, "function": {"arguments": ":2}"}}]}),
            choice({}, "tool_calls"),
            USAGE,
            "[DONE]",
        )
        assert events(frames) == [
            start(),
            block_start(0, TEXT),
            delta(0, {"type": "text_delta", "text": "calling"}),
            stop(0),
            block_start(1, {"type": "tool_use", "id": "c0", "name": "a", "input": {}}),
            delta(1, {"type": "input_json_delta", "partial_json": "{}"}),
            stop(1),
            block_start(2, {"type": "tool_use", "id": "c1", "name": "b", "input": {}}),
            delta(2, {"type": "input_json_delta", "partial_json": '{"y"'}),
            delta(2, {"type": "input_json_delta", "partial_json": ":2}"}),
            stop(2),
            *end("tool_use", {"input_tokens": 11, "output_tokens": 7}),
        ]

    def test_a_tool_call_without_an_id_gets_one(self):
        frames = sse(choice({"tool_calls": [{"index": 0, "function": {"name": "a", "arguments": "{}"}}]}, "tool_calls"), "[DONE]")
        assert events(frames)[1] == block_start(0, {"type": "tool_use", "id": "toolu_gen", "name": "a", "input": {}})

    def test_content_and_finish_reason_in_one_chunk_and_a_matched_stop_sequence(self):
        frames = sse(choice({"content": "all of it"}, "stop", stop_reason="END"), "[DONE]")
        assert events(frames, stop_sequences=("END",)) == [
            start(),
            block_start(0, TEXT),
            delta(0, {"type": "text_delta", "text": "all of it"}),
            stop(0),
            *end("stop_sequence", sequence="END"),
        ]

    def test_an_error_event_midway_ends_the_stream_with_an_anthropic_error(self):
        frames = sse(
            choice({"content": "a"}), {"error": {"message": "overloaded", "type": "server_error"}}, choice({"content": "never"})
        )
        out = events(frames)
        assert out[-1] == ("error", {"type": "error", "error": {"type": "api_error", "message": "overloaded"}})
        assert not any(name == "message_stop" for name, _ in out)

    def test_no_done_still_ends_the_message(self):
        assert events(sse(choice({"content": "a"}, "stop")))[-2:] == end("end_turn")


class TestRequest:
    def test_full_mapping(self):
        body = {
            "model": "claude-x",
            "max_tokens": 100,
            "system": "sys",
            "temperature": 0.5,
            "top_p": 0.9,
            "top_k": 3,
            "stop_sequences": ["X"],
            "metadata": {"user_id": "u"},
            "thinking": {"type": "enabled", "budget_tokens": 20000},
            "tools": [{"name": "t", "input_schema": {"type": "object"}}, {"type": "web_search_20250305", "name": "web_search"}],
            "tool_choice": {"type": "tool", "name": "t", "disable_parallel_tool_use": True},
            "stream": True,
            "messages": [
                {"role": "user", "content": "q"},
                {
                    "role": "assistant",
                    "content": [
                        {"type": "thinking", "thinking": "from another vendor", "signature": "sig"},
                        {"type": "redacted_thinking", "data": "xx"},
                        {"type": "text", "text": "let me"},
                        {"type": "tool_use", "id": "tu1", "name": "t", "input": {"a": 1}},
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "tool_result",
                            "tool_use_id": "tu1",
                            "content": [{"type": "text", "text": "boom"}],
                            "is_error": True,
                        }
                    ],
                },
            ],
        }
        request = chat_request(body)
        assert request.stream and request.stop_sequences == ("X",)
        assert request.chat_body == {
            "model": "claude-x",
            "messages": [
                {"role": "system", "content": "sys"},
                {"role": "user", "content": "q"},
                {
                    "role": "assistant",
                    "content": "let me",
                    "tool_calls": [{"id": "tu1", "type": "function", "function": {"name": "t", "arguments": '{"a":1}'}}],
                },
                {"role": "tool", "tool_call_id": "tu1", "content": "Error: boom"},
            ],
            "max_tokens": 100,
            "temperature": 0.5,
            "top_p": 0.9,
            "stop": ["X"],
            "user": "u",
            "reasoning_effort": "high",
            "tools": [{"type": "function", "function": {"name": "t", "parameters": {"type": "object"}}}],
            "tool_choice": {"type": "function", "function": {"name": "t"}},
            "parallel_tool_calls": False,
            "stream": True,
            "stream_options": {"include_usage": True},
        }

    @pytest.mark.parametrize(("choice", "expected"), [("auto", "auto"), ("any", "required"), ("none", "none")])
    def test_tool_choice(self, choice, expected):
        body = {"model": "m", "messages": [], "tools": [{"name": "t", "input_schema": {}}], "tool_choice": {"type": choice}}
        assert chat_request(body).chat_body["tool_choice"] == expected

    @pytest.mark.parametrize(
        "body", [{"messages": []}, {"model": "m"}, {"model": "m", "messages": [{"role": "system", "content": "x"}]}]
    )
    def test_not_a_messages_request(self, body):
        with pytest.raises(InvalidRequest):
            chat_request(body)


class TestResponse:
    def test_full_mapping(self):
        chat = {
            "id": "chatcmpl-9",
            "choices": [
                {
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": "hi",
                        "reasoning_content": "hmm",
                        "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "not json"}}],
                    },
                    "finish_reason": "tool_calls",
                }
            ],
            "usage": {"prompt_tokens": 10, "completion_tokens": 4, "prompt_tokens_details": {"cached_tokens": 6}},
        }
        assert anthropic_message(chat, "claude-x") == {
            "id": "msg_chatcmpl-9",
            "type": "message",
            "role": "assistant",
            "model": "claude-x",
            "content": [
                {"type": "thinking", "thinking": "hmm", "signature": ""},
                {"type": "text", "text": "hi"},
                {"type": "tool_use", "id": "c", "name": "f", "input": {"arguments": "not json"}},
            ],
            "stop_reason": "tool_use",
            "stop_sequence": None,
            "usage": {"input_tokens": 4, "output_tokens": 4, "cache_read_input_tokens": 6},
        }

    @pytest.mark.parametrize(
        ("finish", "reason"), [("stop", "end_turn"), ("length", "max_tokens"), ("content_filter", "refusal"), (None, "end_turn")]
    )
    def test_stop_reasons(self, finish, reason):
        chat = {"choices": [{"message": {"content": "x"}, "finish_reason": finish}]}
        assert anthropic_message(chat, "m")["stop_reason"] == reason
