"""`/v1/messages` end to end: the official `anthropic` SDK -> cliproxy -> fake OpenAI-compatible upstreams."""

from __future__ import annotations

import anthropic
import pytest

from cliproxy.fake_upstream import Fault
from cliproxy.web.admin.auth import ADMIN_LOCKOUT
from cliproxy.web.keys import STORE, TRACKER
from tests.helpers import FakeClock, vendor


def _sdk(gw, api_key: str = "client-key") -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=str(gw.client.make_url("")), api_key=api_key, max_retries=0, timeout=10)


USER = [{"role": "user", "content": "hi"}]


class TestCreate:
    async def test_text_answer_in_anthropic_shape_via_x_api_key(self, upstreams, gateway):
        up = await upstreams()
        gw = await gateway(
            {
                "api-keys": ["client-key"],
                "openai-compatibility": [vendor("a", up.url, [{"name": "gpt-4o-mini", "alias": "claude-x"}])],
            }
        )
        async with _sdk(gw) as sdk:
            raw = await sdk.messages.with_raw_response.create(model="claude-x", max_tokens=100, messages=USER)
        message = await raw.parse()
        assert message.id.startswith("msg_")
        assert message.model == "claude-x"
        assert message.role == "assistant"
        assert [b.type for b in message.content] == ["text"]
        assert message.content[0].text.startswith("hello from gpt-4o-mini")
        assert message.stop_reason == "end_turn"
        assert message.usage.output_tokens == 5 and message.usage.input_tokens > 0
        assert raw.headers["x-cliproxy-vendor"] == "a"
        sent = up.requests[-1]
        assert sent.path == "/v1/chat/completions"
        assert sent.json["messages"] == [{"role": "user", "content": "hi"}]
        assert sent.json["max_tokens"] == 100
        assert sent.headers["Authorization"] == "Bearer sk-a-upstream-key-0001"
        assert not any(h.lower().startswith("anthropic-") or h.lower() == "x-api-key" for h in sent.headers)

    async def test_bearer_auth_works_and_a_wrong_key_is_authentication_error(self, upstreams, gateway):
        up = await upstreams()
        gw = await gateway({"api-keys": ["client-key"], "openai-compatibility": [vendor("a", up.url, ["m"])]})
        resp = await gw.client.post(
            "/v1/messages",
            json={"model": "m", "max_tokens": 10, "messages": USER},
            headers={"Authorization": "Bearer client-key", "anthropic-version": "2023-06-01", "anthropic-beta": "x-2025"},
        )
        assert resp.status == 200 and (await resp.json())["type"] == "message"
        async with _sdk(gw, api_key="wrong") as sdk:
            with pytest.raises(anthropic.AuthenticationError) as caught:
                await sdk.messages.create(model="m", max_tokens=10, messages=USER)
        assert caught.value.status_code == 401
        assert caught.value.body["error"]["type"] == "authentication_error"
        assert len(up.requests) == 1

    async def test_system_prompt_image_and_unknown_fields(self, upstreams, gateway):
        up = await upstreams()
        gw = await gateway({"openai-compatibility": [vendor("a", up.url, ["m"])]})
        async with _sdk(gw) as sdk:
            await sdk.messages.create(
                model="m",
                max_tokens=10,
                system=[{"type": "text", "text": "be brief"}, {"type": "text", "text": "be kind"}],
                messages=[
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "what is this?"},
                            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
                            {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.png"}},
                        ],
                    }
                ],
                metadata={"user_id": "u-1"},
                extra_body={"top_k": 5, "context_management": {"edits": []}, "output_config": {"effort": "high"}},
            )
        sent = up.requests[-1].json
        assert sent["messages"] == [
            {"role": "system", "content": "be brief\n\nbe kind"},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what is this?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                    {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
                ],
            },
        ]
        assert sent["user"] == "u-1"
        assert not {"top_k", "context_management", "output_config", "metadata", "system"} & set(sent)

    async def test_stop_sequence_is_reported(self, upstreams, gateway):
        up = await upstreams()
        gw = await gateway({"openai-compatibility": [vendor("a", up.url, ["m"])]})
        async with _sdk(gw) as sdk:
            message = await sdk.messages.create(model="m", max_tokens=10, messages=USER, stop_sequences=[" chunk2", "never"])
        assert up.requests[-1].json["stop"] == [" chunk2", "never"]
        assert message.content[0].text == "hello from m chunk1"
        assert (message.stop_reason, message.stop_sequence) == ("stop_sequence", " chunk2")

    async def test_tool_use_round_trip(self, upstreams, gateway):
        up = await upstreams()
        gw = await gateway({"openai-compatibility": [vendor("a", up.url, ["m"])]})
        up.fail(
            None, Fault(tool_calls=[{"name": "get_weather", "arguments": {"city": "Paris"}}], reasoning="let me look", times=1)
        )
        tools = [
            {
                "name": "get_weather",
                "description": "weather",
                "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
            }
        ]
        async with _sdk(gw) as sdk:
            first = await sdk.messages.create(
                model="m",
                max_tokens=100,
                messages=USER,
                tools=tools,
                tool_choice={"type": "any"},
                thinking={"type": "enabled", "budget_tokens": 2048},
            )
            assert [b.type for b in first.content] == ["thinking", "tool_use"]
            assert first.content[0].thinking == "let me look"
            call = first.content[1]
            assert (call.name, call.input) == ("get_weather", {"city": "Paris"})
            assert first.stop_reason == "tool_use"
            sent = up.requests[-1].json
            assert sent["tools"] == [
                {
                    "type": "function",
                    "function": {"name": "get_weather", "parameters": tools[0]["input_schema"], "description": "weather"},
                }
            ]
            assert sent["tool_choice"] == "required"
            assert sent["reasoning_effort"] == "low"
            second = await sdk.messages.create(
                model="m",
                max_tokens=100,
                tools=tools,
                messages=[
                    *USER,
                    {"role": "assistant", "content": [b.model_dump() for b in first.content]},
                    {
                        "role": "user",
                        "content": [
                            {"type": "tool_result", "tool_use_id": call.id, "content": "sunny"},
                            {"type": "text", "text": "thanks"},
                        ],
                    },
                ],
            )
        assert second.stop_reason == "end_turn"
        assert up.requests[-1].json["messages"] == [
            {"role": "user", "content": "hi"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": call.id, "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}
                ],
            },
            {"role": "tool", "tool_call_id": call.id, "content": "sunny"},
            {"role": "user", "content": "thanks"},
        ]


class TestStream:
    async def test_text_stream_with_usage(self, upstreams, gateway):
        up = await upstreams()
        gw = await gateway({"openai-compatibility": [vendor("a", up.url, ["m"])]})
        async with _sdk(gw) as sdk:
            async with sdk.messages.stream(model="m", max_tokens=10, messages=USER) as stream:
                texts = [text async for text in stream.text_stream]
                message = await stream.get_final_message()
        assert texts == ["hello from m", " chunk1", " chunk2", " chunk3", " chunk4"]
        assert up.requests[-1].json["stream_options"] == {"include_usage": True}
        assert message.stop_reason == "end_turn"
        assert message.usage.output_tokens == 5 and message.usage.input_tokens > 0
        assert message.content[0].text == "".join(texts)

    async def test_streamed_tool_calls_and_thinking(self, upstreams, gateway):
        up = await upstreams()
        gw = await gateway({"openai-compatibility": [vendor("a", up.url, ["m"])]})
        calls = [{"name": "a", "arguments": {"x": 1}}, {"name": "b", "arguments": {"y": [1, 2]}}]
        up.fail(None, Fault(tool_calls=calls, reasoning="two calls"))
        async with _sdk(gw) as sdk:
            async with sdk.messages.stream(model="m", max_tokens=10, messages=USER) as stream:
                message = await stream.get_final_message()
        assert [b.type for b in message.content] == ["thinking", "tool_use", "tool_use"]
        assert message.content[0].thinking == "two calls"
        assert [(b.name, b.input) for b in message.content[1:]] == [("a", {"x": 1}), ("b", {"y": [1, 2]})]
        assert message.stop_reason == "tool_use"

    async def test_a_stream_broken_midway_ends_with_an_error_event(self, upstreams, gateway):
        up = await upstreams()
        gw = await gateway({"openai-compatibility": [vendor("a", up.url, ["m"])]})
        up.fail(None, Fault(reset_after_chunks=3))
        async with _sdk(gw) as sdk:
            with pytest.raises(anthropic.APIStatusError) as caught:
                async with sdk.messages.stream(model="m", max_tokens=10, messages=USER) as stream:
                    async for _ in stream.text_stream:
                        pass
        assert caught.value.body["error"]["type"] == "api_error"
        assert "interrupted" in caught.value.body["error"]["message"]


class TestErrors:
    @pytest.mark.parametrize(
        ("status", "exception", "error_type"),
        [
            (400, anthropic.BadRequestError, "invalid_request_error"),
            (404, anthropic.NotFoundError, "not_found_error"),
            (413, anthropic.APIStatusError, "request_too_large"),
            (429, anthropic.RateLimitError, "rate_limit_error"),
        ],
    )
    async def test_upstream_client_errors_map_to_sdk_exceptions(self, upstreams, gateway, status, exception, error_type):
        up = await upstreams()
        gw = await gateway({"openai-compatibility": [vendor("a", up.url, ["m"])]})
        up.fail(None, Fault(status=status, body={"error": {"message": f"upstream says {status}", "type": "x"}}))
        async with _sdk(gw) as sdk:
            with pytest.raises(exception) as caught:
                await sdk.messages.create(model="m", max_tokens=10, messages=USER)
        assert caught.value.status_code == status
        assert caught.value.body == {"type": "error", "error": {"type": error_type, "message": f"upstream says {status}"}}

    async def test_unknown_model_is_not_found(self, upstreams, gateway):
        up = await upstreams()
        gw = await gateway({"openai-compatibility": [vendor("a", up.url, ["m"])]})
        async with _sdk(gw) as sdk:
            with pytest.raises(anthropic.NotFoundError) as caught:
                await sdk.messages.create(model="nope", max_tokens=10, messages=USER)
        assert caught.value.body["error"]["type"] == "not_found_error"

    async def test_bad_body_is_invalid_request(self, upstreams, gateway):
        up = await upstreams()
        gw = await gateway({"openai-compatibility": [vendor("a", up.url, ["m"])]})
        resp = await gw.client.post("/v1/messages", json={"model": "m", "messages": "hi"})
        assert resp.status == 400
        assert (await resp.json())["error"]["type"] == "invalid_request_error"
        resp = await gw.client.post("/v1/messages", data=b"{not json")
        assert resp.status == 400 and (await resp.json())["type"] == "error"

    async def test_upstream_server_errors_fail_over_then_api_error(self, upstreams, gateway):
        up = await upstreams()
        gw = await gateway({"openai-compatibility": [vendor("a", up.url, ["m"])]})
        up.fail(None, Fault(status=500))
        async with _sdk(gw) as sdk:
            with pytest.raises(anthropic.InternalServerError) as caught:
                await sdk.messages.create(model="m", max_tokens=10, messages=USER)
        assert caught.value.status_code == 500
        assert caught.value.body["error"]["type"] == "api_error"


class TestFailover:
    async def test_failover_and_auto_disable_then_overloaded(self, upstreams, gateway):
        bad, good = await upstreams(), await upstreams()
        bad.fail(None, Fault(status=500))
        gw = await gateway(
            {
                "auto-disable": {"failure-threshold": 2, "time-window-seconds": 60, "disable-duration-seconds": 30},
                "openai-compatibility": [vendor("bad", bad.url, ["m"], priority=1), vendor("good", good.url, ["m"])],
            },
            clock=FakeClock(),
        )
        async with _sdk(gw) as sdk:
            for _ in range(2):
                raw = await sdk.messages.with_raw_response.create(model="m", max_tokens=10, messages=USER)
                assert (raw.headers["x-cliproxy-vendor"], raw.headers["x-cliproxy-attempts"]) == ("good", "2")
            raw = await sdk.messages.with_raw_response.create(model="m", max_tokens=10, messages=USER)
            assert raw.headers["x-cliproxy-attempts"] == "1"
            assert len(bad.requests) == 2
            await gw.app[TRACKER].flush(timeout=5)
            [event] = await gw.app[STORE].events(kind="disabled")
            assert (event.vendor, event.model) == ("bad", "m")
            good.fail(None, Fault(status=500))
            for _ in range(2):
                with pytest.raises(anthropic.InternalServerError):
                    await sdk.messages.create(model="m", max_tokens=10, messages=USER)
            with pytest.raises(anthropic.OverloadedError) as caught:
                await sdk.messages.create(model="m", max_tokens=10, messages=USER)
        assert caught.value.status_code == 529
        assert caught.value.body["error"]["type"] == "overloaded_error"
        assert 1 <= int(caught.value.response.headers["retry-after"]) <= 30


class TestCountTokens:
    async def test_count_tokens_answers_an_estimate(self, upstreams, gateway):
        up = await upstreams()
        gw = await gateway({"openai-compatibility": [vendor("a", up.url, ["m"])]})
        async with _sdk(gw) as sdk:
            short = await sdk.messages.count_tokens(model="m", messages=USER)
            long = await sdk.messages.count_tokens(model="m", messages=[{"role": "user", "content": "word " * 400}])
        assert 0 < short.input_tokens < long.input_tokens
        assert 400 <= long.input_tokens <= 600  # about four characters a token
        assert up.requests == []


MGMT_KEY = "mgmt-secret-key-0123456789"


class TestClaudeCodeStart:
    """Claude Code sends `HEAD /api/hello` with its client key at every start: never a management lock-out."""

    async def test_client_key_on_api_paths_is_answered_and_never_counted(self, upstreams, gateway):
        up = await upstreams()
        gw = await gateway(
            {
                "api-keys": ["client-key"],
                "remote-management": {"secret-key": MGMT_KEY},
                "openai-compatibility": [vendor("a", up.url, ["m"])],
            }
        )
        for _ in range(12):  # more than the 5 failures that would block the address
            resp = await gw.client.head("/api/hello", headers={"x-api-key": "client-key"})
            assert resp.status == 404
            resp = await gw.client.get("/api/vendors", headers={"Authorization": "Bearer client-key"})
            assert resp.status == 401
        assert len(gw.app[ADMIN_LOCKOUT]) == 0
        resp = await gw.client.get("/api/vendors", headers={"Authorization": f"Bearer {MGMT_KEY}"})
        assert resp.status == 200

    async def test_a_wrong_key_beside_a_client_key_still_counts(self, upstreams, gateway):
        up = await upstreams()
        gw = await gateway(
            {
                "api-keys": ["client-key"],
                "remote-management": {"secret-key": MGMT_KEY},
                "openai-compatibility": [vendor("a", up.url, ["m"])],
            }
        )
        statuses = []
        for _ in range(6):
            resp = await gw.client.get("/api/vendors", headers={"x-api-key": "client-key", "X-Management-Key": "guess"})
            statuses.append(resp.status)
        assert statuses == [401] * 5 + [429]
        resp = await gw.client.head("/api/hello", headers={"x-api-key": "not-a-client-key"})
        assert resp.status == 429
