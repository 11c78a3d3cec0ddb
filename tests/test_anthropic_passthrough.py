"""`api-format: anthropic` vendors: `/v1/messages` passed through untranslated (only `model` rewritten),
a pool mixing both kinds failing over between them, and OpenAI requests never reaching such a vendor.

The official `anthropic` SDK -> cliproxy -> the fake upstream's minimal Messages endpoint (which
refuses a request without `x-api-key`, as Anthropic's API does)."""

from __future__ import annotations

import anthropic
import openai
import pytest

from cliproxy.fake_upstream import Fault
from tests.helpers import vendor

USER = [{"role": "user", "content": "hi"}]


def _sdk(gw, api_key: str = "client-key") -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=str(gw.client.make_url("")), api_key=api_key, max_retries=0, timeout=10)


def _anthropic_vendor(name: str, url: str, models: list, **extra) -> dict:
    return vendor(name, url, models, **{"api-format": "anthropic", **extra})


class TestPassthrough:
    async def test_body_goes_through_unchanged_but_model_with_the_key_as_x_api_key(self, upstreams, gateway):
        up = await upstreams()
        gw = await gateway(
            {
                "api-keys": ["client-key"],
                "openai-compatibility": [_anthropic_vendor("anth", up.url, [{"name": "claude-real", "alias": "claude-x"}])],
            }
        )
        async with _sdk(gw) as sdk:
            raw = await sdk.messages.with_raw_response.create(
                model="claude-x",
                max_tokens=100,
                messages=USER,
                extra_body={"top_k": 5, "context_management": {"edits": []}},  # dropped by the translation, kept here
                extra_headers={"anthropic-version": "2024-10-22", "anthropic-beta": "tools-2024-04-04"},
            )
        message = await raw.parse()
        assert message.content[0].text == "hello from claude-real chunk1 chunk2 chunk3 chunk4"
        assert message.model == "claude-real"  # the vendor's answer, as it came
        assert raw.headers["x-cliproxy-vendor"] == "anth"
        sent = up.requests[-1]
        assert sent.path == "/v1/messages"
        assert sent.json == {
            "model": "claude-real",
            "max_tokens": 100,
            "messages": USER,
            "top_k": 5,
            "context_management": {"edits": []},
        }
        headers = {k.lower(): v for k, v in sent.headers.items()}
        assert headers["x-api-key"] == "sk-anth-upstream-key-0001"
        assert "authorization" not in headers
        assert headers["anthropic-version"] == "2024-10-22"
        assert headers["anthropic-beta"] == "tools-2024-04-04"

    async def test_default_anthropic_version_when_the_client_sent_none(self, upstreams, gateway):
        up = await upstreams()
        gw = await gateway({"openai-compatibility": [_anthropic_vendor("anth", up.url, ["claude-real"])]})
        resp = await gw.client.post(
            "/v1/messages",
            json={"model": "claude-real", "max_tokens": 10, "messages": USER},
            headers={"Authorization": "Bearer client-key", "anthropic-version": "2099-01-01"},
        )
        assert resp.status == 200
        assert up.requests[-1].headers["anthropic-version"] == "2099-01-01"  # the client's own, forwarded
        resp = await gw.client.post(
            "/v1/messages",
            json={"model": "claude-real", "max_tokens": 10, "messages": USER},
            headers={"Authorization": "Bearer client-key"},
        )
        assert resp.status == 200 and (await resp.json())["type"] == "message"
        assert up.requests[-1].headers["anthropic-version"] == "2023-06-01"

    async def test_stream_is_relayed_event_for_event(self, upstreams, gateway):
        up = await upstreams()
        gw = await gateway({"openai-compatibility": [_anthropic_vendor("anth", up.url, ["claude-real"])]})
        async with _sdk(gw) as sdk:
            async with sdk.messages.stream(model="claude-real", max_tokens=10, messages=USER) as stream:
                text = "".join([piece async for piece in stream.text_stream])
                final = await stream.get_final_message()
        assert text == "hello from claude-real chunk1 chunk2 chunk3 chunk4"
        assert final.stop_reason == "end_turn"
        assert up.requests[-1].path == "/v1/messages" and up.requests[-1].json["stream"] is True
        # Byte for byte: the upstream's own events (its `ping` too, which the translation never makes).
        resp = await gw.client.post(
            "/v1/messages",
            json={"model": "claude-real", "max_tokens": 10, "messages": USER, "stream": True},
            headers={"x-api-key": "client-key"},
        )
        body = await resp.read()
        assert resp.status == 200 and resp.headers["content-type"].startswith("text/event-stream")
        names = [line[len(b"event: ") :] for line in body.split(b"\n") if line.startswith(b"event: ")]
        assert names == [
            b"message_start",
            b"content_block_start",
            b"ping",
            *[b"content_block_delta"] * 5,
            b"content_block_stop",
            b"message_delta",
            b"message_stop",
        ]

    async def test_an_upstream_error_is_relayed_in_its_own_anthropic_shape(self, upstreams, gateway):
        up = await upstreams()
        gw = await gateway({"openai-compatibility": [_anthropic_vendor("anth", up.url, ["claude-real"])]})
        error = {
            "type": "error",
            "error": {"type": "invalid_request_error", "message": "max_tokens: too large"},
            "request_id": "req_011",
        }
        up.fail(None, Fault(status=400, body=error, times=1))
        async with _sdk(gw) as sdk:
            with pytest.raises(anthropic.BadRequestError) as caught:
                await sdk.messages.create(model="claude-real", max_tokens=10, messages=USER)
        assert caught.value.status_code == 400
        assert caught.value.body == error


class TestMixedPool:
    async def test_fails_over_from_an_anthropic_pair_to_an_openai_one(self, upstreams, gateway):
        anth, oai = await upstreams(name="anth"), await upstreams(name="oai")
        gw = await gateway(
            {
                "openai-compatibility": [
                    _anthropic_vendor("anth", anth.url, [{"name": "claude-real", "alias": "pool"}], priority=10),
                    vendor("oai", oai.url, [{"name": "gpt-real", "alias": "pool"}]),
                ]
            }
        )
        anth.fail(None, Fault(status=503, times=1))
        async with _sdk(gw) as sdk:
            raw = await sdk.messages.with_raw_response.create(model="pool", max_tokens=10, messages=USER)
        message = await raw.parse()
        assert (raw.headers["x-cliproxy-vendor"], raw.headers["x-cliproxy-attempts"]) == ("oai", "2")
        assert message.type == "message" and message.id.startswith("msg_")  # translated from the chat completion
        assert message.content[0].text.startswith("hello from gpt-real")
        assert [r.path for r in anth.requests] == ["/v1/messages"]
        assert [r.path for r in oai.requests] == ["/v1/chat/completions"]
        # The next request goes to the anthropic pair again (its failure did not disable it), passed through.
        async with _sdk(gw) as sdk:
            raw = await sdk.messages.with_raw_response.create(model="pool", max_tokens=10, messages=USER)
        assert raw.headers["x-cliproxy-vendor"] == "anth"
        assert (await raw.parse()).content[0].text.startswith("hello from claude-real")

    async def test_stream_whose_first_event_is_an_error_fails_over(self, upstreams, gateway):
        anth, oai = await upstreams(name="anth"), await upstreams(name="oai")
        gw = await gateway(
            {
                "openai-compatibility": [
                    _anthropic_vendor("anth", anth.url, [{"name": "claude-real", "alias": "pool"}], priority=10),
                    vendor("oai", oai.url, [{"name": "gpt-real", "alias": "pool"}]),
                ]
            }
        )
        overloaded = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
        anth.fail(None, Fault(error_in_200=True, body=overloaded, times=1))
        async with _sdk(gw) as sdk:
            async with sdk.messages.stream(model="pool", max_tokens=10, messages=USER) as stream:
                text = "".join([piece async for piece in stream.text_stream])
        assert text.startswith("hello from gpt-real")
        assert len(anth.requests) == 1 and len(oai.requests) == 1

    async def test_an_openai_request_never_reaches_an_anthropic_pair(self, upstreams, gateway):
        anth, oai = await upstreams(name="anth"), await upstreams(name="oai")
        gw = await gateway(
            {
                "openai-compatibility": [
                    _anthropic_vendor("anth", anth.url, [{"name": "claude-real", "alias": "pool"}, "claude-only"], priority=10),
                    vendor("oai", oai.url, [{"name": "gpt-real", "alias": "pool"}]),
                ]
            }
        )
        for _ in range(3):
            raw = await gw.sdk.chat.completions.with_raw_response.create(model="pool", messages=USER)
            assert raw.headers["x-cliproxy-vendor"] == "oai"
        oai.fail(None, Fault(status=503))
        with pytest.raises(openai.APIStatusError) as caught:  # the openai pair down: still never the anthropic one
            await gw.sdk.chat.completions.create(model="pool", messages=USER)
        assert caught.value.status_code == 503
        with pytest.raises(openai.APIStatusError) as caught:
            await gw.sdk.chat.completions.create(model="claude-only", messages=USER)
        assert caught.value.status_code == 503
        assert anth.requests == []
