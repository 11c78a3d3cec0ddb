"""The core gateway end to end: the official SDK -> cliproxy -> fake upstreams."""

from __future__ import annotations

import openai
import pytest

from cliproxy.fake_upstream import Fault
from cliproxy.web.keys import TRACKER
from tests.helpers import eventually, vendor


class TestBasicProxying:
    """Chat, streaming, embeddings and the model list work through the gateway with the official SDK."""

    async def test_chat_non_stream_reaches_upstream_with_upstream_name(self, upstreams, gateway):
        up = await upstreams()
        gw = await gateway({"openai-compatibility": [vendor("a", up.url, [{"name": "gpt-4o-mini", "alias": "small"}])]})
        reply = await gw.sdk.chat.completions.with_raw_response.create(
            model="small", messages=[{"role": "user", "content": "hi"}]
        )
        completion = reply.parse()
        assert "gpt-4o-mini" in completion.choices[0].message.content
        assert up.requests[-1].model == "gpt-4o-mini"
        assert reply.headers["x-cliproxy-vendor"] == "a"
        assert reply.headers["x-cliproxy-model"] == "gpt-4o-mini"
        assert reply.headers["x-cliproxy-attempts"] == "1"

    async def test_upstream_gets_vendor_key_and_headers_not_client_credentials(self, upstreams, gateway):
        up = await upstreams()
        gw = await gateway(
            {
                "api-keys": ["client-key"],
                "openai-compatibility": [vendor("a", up.url, ["m"], headers={"X-Title": "cliproxy"})],
            }
        )
        await gw.sdk.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}], extra_headers={"x-api-key": "client-key", "Cookie": "s=1"}
        )
        headers = {k.lower(): v for k, v in up.requests[-1].headers.items()}
        assert headers["authorization"] == "Bearer sk-a-upstream-key-0001"
        assert headers["x-title"] == "cliproxy"
        assert "x-api-key" not in headers and "cookie" not in headers
        assert "client-key" not in str(headers)

    async def test_body_is_forwarded_unchanged_except_model(self, upstreams, gateway):
        up = await upstreams()
        gw = await gateway({"openai-compatibility": [vendor("a", up.url, [{"name": "up-model", "alias": "m"}])]})
        body = b'{"messages": [{"role": "user", "content": "\\"model\\": \\"x\\""}], "model": "m", "temperature": 0.25, "unknown_param": {"model": "keep"}}'
        resp = await gw.client.post("/v1/chat/completions", data=body, headers={"Content-Type": "application/json"})
        assert resp.status == 200
        sent = up.requests[-1].json
        assert sent == {
            "messages": [{"role": "user", "content": '"model": "x"'}],
            "model": "up-model",
            "temperature": 0.25,
            "unknown_param": {"model": "keep"},
        }

    async def test_stream_relays_chunks_and_done(self, upstreams, gateway):
        up = await upstreams(chunks=4)
        gw = await gateway({"openai-compatibility": [vendor("a", up.url, ["m"])]})
        stream = await gw.sdk.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], stream=True)
        pieces = [chunk.choices[0].delta.content async for chunk in stream if chunk.choices and chunk.choices[0].delta.content]
        assert len(pieces) == 4
        assert "m" in "".join(pieces)

    async def test_first_chunk_arrives_before_upstream_finishes(self, upstreams, gateway):
        up = await upstreams(chunks=3, chunk_delay=0.3)
        gw = await gateway({"openai-compatibility": [vendor("a", up.url, ["m"])]})
        stream = await gw.sdk.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], stream=True)
        first = await stream.__anext__()
        assert first is not None
        assert up.streams_in_flight == 1  # the upstream is still generating
        await stream.close()

    async def test_embeddings_and_completions_and_responses(self, upstreams, gateway):
        up = await upstreams()
        gw = await gateway({"openai-compatibility": [vendor("a", up.url, ["emb", "m"])]})
        emb = await gw.sdk.embeddings.create(model="emb", input=["a", "b"])
        assert len(emb.data) == 2
        comp = await gw.sdk.completions.create(model="m", prompt="hello")
        assert comp.choices[0].text
        resp = await gw.sdk.responses.create(model="m", input="hello")
        assert "m" in resp.output_text

    async def test_models_list_has_aliases_and_prefixed_names(self, upstreams, gateway):
        up = await upstreams()
        gw = await gateway(
            {
                "openai-compatibility": [
                    vendor("a", up.url, [{"name": "x", "alias": "small"}, {"name": "off", "enabled": False}], prefix="pa"),
                    vendor("b", up.url, ["y"], enabled=False),
                ]
            }
        )
        models = [m.id async for m in gw.sdk.models.list()]
        assert models == ["pa/small", "small"]
        assert (await gw.sdk.models.retrieve("pa/small")).id == "pa/small"
        with pytest.raises(openai.NotFoundError):
            await gw.sdk.models.retrieve("y")


class TestRouting:
    """Aliases, prefixes, pools, priority tiers, round robin and key rotation."""

    async def test_prefix_selects_one_vendor(self, upstreams, gateway):
        a, b = await upstreams(), await upstreams()
        gw = await gateway(
            {
                "openai-compatibility": [
                    vendor("a", a.url, [{"name": "ma", "alias": "m"}], prefix="pa"),
                    vendor("b", b.url, [{"name": "mb", "alias": "m"}], prefix="pb"),
                ]
            }
        )
        for _ in range(3):
            await gw.sdk.chat.completions.create(model="pb/m", messages=[])
        assert len(b.requests) == 3 and not a.requests

    async def test_pool_round_robin_within_a_tier(self, upstreams, gateway):
        a, b = await upstreams(), await upstreams()
        gw = await gateway(
            {
                "openai-compatibility": [
                    vendor("a", a.url, [{"name": "ma", "alias": "m"}]),
                    vendor("b", b.url, [{"name": "mb", "alias": "m"}]),
                ]
            }
        )
        for _ in range(4):
            await gw.sdk.chat.completions.create(model="m", messages=[])
        assert len(a.requests) == 2 and len(b.requests) == 2

    async def test_a_503_takes_one_turn_of_the_round_robin_and_its_retry_after_none(self, upstreams, gateway):
        """Every request moves the round robin one step, whatever its answer; explaining a 503
        (its causes, its Retry-After) looks at the pairs without moving it again."""
        up = await upstreams()
        gw = await gateway({"openai-compatibility": [vendor(name, up.url, ["m"]) for name in ("a", "b", "c")]})
        served = [
            (await gw.client.post("/v1/chat/completions", json={"model": "m", "messages": []})).headers["x-cliproxy-vendor"]
        ]
        tracker = gw.app[TRACKER]
        for name in ("a", "b", "c"):
            await tracker.manual_disable((name, "m"), 60, "test")
        refused = await gw.client.post("/v1/chat/completions", json={"model": "m", "messages": []})
        assert refused.status == 503 and refused.headers["Retry-After"] == "60"  # the turn of b
        for name in ("a", "b", "c"):
            await tracker.manual_enable((name, "m"), "test")
        for _ in range(3):
            served.append(
                (await gw.client.post("/v1/chat/completions", json={"model": "m", "messages": []})).headers["x-cliproxy-vendor"]
            )
        assert served == ["a", "c", "a", "b"]

    async def test_higher_priority_wins(self, upstreams, gateway):
        low, high = await upstreams(), await upstreams()
        gw = await gateway(
            {"openai-compatibility": [vendor("low", low.url, ["m"]), vendor("high", high.url, ["m"], priority=10)]}
        )
        for _ in range(3):
            await gw.sdk.chat.completions.create(model="m", messages=[])
        assert len(high.requests) == 3 and not low.requests

    async def test_api_keys_rotate(self, upstreams, gateway):
        up = await upstreams()
        v = vendor("a", up.url, ["m"])
        v["api-key-entries"] = [{"api-key": "sk-one-0000000001"}, {"api-key": "sk-two-0000000002"}]
        gw = await gateway({"openai-compatibility": [v]})
        for _ in range(4):
            await gw.sdk.chat.completions.create(model="m", messages=[])
        keys = [r.headers.get("Authorization") for r in up.requests]
        assert keys == ["Bearer sk-one-0000000001", "Bearer sk-two-0000000002"] * 2

    async def test_switched_off_vendor_and_model_are_not_routed(self, upstreams, gateway):
        a, b = await upstreams(), await upstreams()
        gw = await gateway(
            {
                "openai-compatibility": [
                    vendor("a", a.url, ["m"], enabled=False),
                    vendor("b", b.url, [{"name": "m", "enabled": False}, "n"]),
                ]
            }
        )
        with pytest.raises(openai.InternalServerError) as caught:
            await gw.sdk.chat.completions.create(model="m", messages=[])
        assert caught.value.status_code == 503
        assert caught.value.body["code"] == "no_available_vendor"
        assert "switched off" in caught.value.body["message"]
        await gw.sdk.chat.completions.create(model="n", messages=[])
        assert not a.requests


class TestFailover:
    """Countable failures before the first byte move on to the next vendor; client errors do not."""

    @pytest.mark.parametrize(
        "fault",
        [Fault(status=500), Fault(status=429, headers={"Retry-After": "3"}), Fault(reset_before_headers=True)],
        ids=["500", "429", "reset"],
    )
    async def test_fails_over_to_next_vendor(self, upstreams, gateway, fault):
        bad, good = await upstreams(), await upstreams()
        bad.fail(None, fault)
        gw = await gateway({"openai-compatibility": [vendor("bad", bad.url, ["m"], priority=1), vendor("good", good.url, ["m"])]})
        reply = await gw.sdk.chat.completions.with_raw_response.create(model="m", messages=[])
        assert reply.headers["x-cliproxy-vendor"] == "good"
        assert reply.headers["x-cliproxy-attempts"] == "2"
        assert len(bad.requests) >= 1

    async def test_connection_refused_fails_over(self, upstreams, gateway, unused_tcp_port):
        good = await upstreams()
        gw = await gateway(
            {
                "openai-compatibility": [
                    vendor("dead", f"http://127.0.0.1:{unused_tcp_port}/v1", ["m"], priority=1),
                    vendor("good", good.url, ["m"]),
                ]
            }
        )
        reply = await gw.sdk.chat.completions.with_raw_response.create(model="m", messages=[])
        assert reply.headers["x-cliproxy-vendor"] == "good"

    async def test_first_byte_timeout_fails_over(self, upstreams, gateway):
        slow, good = await upstreams(), await upstreams()
        slow.fail(None, Fault(stall_before_headers=5))
        gw = await gateway(
            {
                "timeouts": {"first-byte": 0.2},
                "openai-compatibility": [vendor("slow", slow.url, ["m"], priority=1), vendor("good", good.url, ["m"])],
            }
        )
        reply = await gw.sdk.chat.completions.with_raw_response.create(model="m", messages=[])
        assert reply.headers["x-cliproxy-vendor"] == "good"

    async def test_stream_failure_before_first_chunk_fails_over(self, upstreams, gateway):
        bad, good = await upstreams(), await upstreams()
        bad.fail(None, Fault(reset_after_chunks=0))
        gw = await gateway({"openai-compatibility": [vendor("bad", bad.url, ["m"], priority=1), vendor("good", good.url, ["m"])]})
        reply = await gw.client.post("/v1/chat/completions", json={"model": "m", "stream": True, "messages": []})
        assert reply.headers["x-cliproxy-vendor"] == "good"
        assert b"[DONE]" in await reply.read()

    async def test_400_is_relayed_without_failover(self, upstreams, gateway):
        bad, good = await upstreams(), await upstreams()
        bad.fail(
            None, Fault(status=400, body={"error": {"message": "bad temperature", "type": "invalid_request_error", "code": None}})
        )
        gw = await gateway({"openai-compatibility": [vendor("bad", bad.url, ["m"], priority=1), vendor("good", good.url, ["m"])]})
        with pytest.raises(openai.BadRequestError) as caught:
            await gw.sdk.chat.completions.create(model="m", messages=[])
        assert "bad temperature" in caught.value.message
        assert caught.value.response.headers["x-cliproxy-vendor"] == "bad"
        assert not good.requests

    async def test_last_upstream_error_when_every_attempt_fails(self, upstreams, gateway):
        a, b = await upstreams(), await upstreams()
        a.fail(None, Fault(status=502))
        b.fail(None, Fault(status=503, headers={"Retry-After": "9"}))
        gw = await gateway({"openai-compatibility": [vendor("a", a.url, ["m"], priority=1), vendor("b", b.url, ["m"])]})
        resp = await gw.client.post("/v1/chat/completions", json={"model": "m", "messages": []})
        assert resp.status == 503
        assert resp.headers["Retry-After"] == "9"
        assert resp.headers["x-cliproxy-attempts"] == "2"
        assert "error" in await resp.json()

    async def test_request_retry_bounds_the_attempts(self, upstreams, gateway):
        ups = [await upstreams() for _ in range(4)]
        for up in ups:
            up.fail(None, Fault(status=500))
        gw = await gateway(
            {"request-retry": 1, "openai-compatibility": [vendor(f"v{i}", up.url, ["m"]) for i, up in enumerate(ups)]}
        )
        resp = await gw.client.post("/v1/chat/completions", json={"model": "m", "messages": []})
        assert resp.status == 500
        assert resp.headers["x-cliproxy-attempts"] == "2"
        assert sum(len(u.requests) for u in ups) == 2


class TestStreamingFailures:
    """Errors after the stream started end it with an SSE error event; a client disconnect cancels upstream."""

    async def test_mid_stream_reset_ends_with_error_event(self, upstreams, gateway):
        up = await upstreams(chunks=5)
        up.fail(None, Fault(reset_after_chunks=2))
        gw = await gateway({"openai-compatibility": [vendor("a", up.url, ["m"])]})
        resp = await gw.client.post("/v1/chat/completions", json={"model": "m", "stream": True, "messages": []})
        text = (await resp.read()).decode()
        assert resp.status == 200
        assert text.rstrip().endswith('"code": "stream_error"}}')
        assert "[DONE]" not in text

    async def test_stall_past_idle_timeout_ends_with_error_event(self, upstreams, gateway):
        up = await upstreams(chunks=5)
        up.fail(None, Fault(stall_after_chunks=1, stall_seconds=5))
        gw = await gateway({"timeouts": {"stream-idle": 0.2}, "openai-compatibility": [vendor("a", up.url, ["m"])]})
        resp = await gw.client.post("/v1/chat/completions", json={"model": "m", "stream": True, "messages": []})
        text = (await resp.read()).decode()
        assert "stream_idle_timeout" in text

    async def test_client_disconnect_cancels_upstream(self, upstreams, gateway):
        up = await upstreams(chunks=50, chunk_delay=0.05)
        gw = await gateway({"openai-compatibility": [vendor("a", up.url, ["m"])]})
        resp = await gw.client.post("/v1/chat/completions", json={"model": "m", "stream": True, "messages": []})
        await resp.content.readany()
        resp.close()
        await eventually(lambda: up.disconnects, "the upstream request to be cancelled")
        assert up.disconnects == 1
        assert up.streams_in_flight == 0
