"""`/v1/messages` end to end: the official `anthropic` SDK -> cliproxy -> fake OpenAI-compatible upstreams."""

from __future__ import annotations

import anthropic
import pytest

from cliproxy.fake_upstream import Fault
from tests.helpers import vendor


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
