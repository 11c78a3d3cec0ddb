"""Every error cliproxy makes itself has the OpenAI shape and an honest status (one module walks them all)."""

from __future__ import annotations

import asyncio
import json

import openai
import pytest

from cliproxy.fake_upstream import Fault
from tests.helpers import vendor


def assert_openai_shape(body: dict, code: str) -> None:
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["code"] == code
    assert body["error"]["message"]


@pytest.fixture
async def gw(upstreams, gateway):
    up = await upstreams()
    return await gateway(
        {"api-keys": ["client-key"], "max-body-bytes": 1000, "openai-compatibility": [vendor("a", up.url, ["m"])]}
    )


class TestClientErrors:
    """Bad requests get 4xx with the OpenAI error shape; the SDK maps each to its exception class."""

    async def test_missing_key_is_401(self, gw):
        resp = await gw.client.post("/v1/chat/completions", json={"model": "m"})
        assert resp.status == 401
        assert_openai_shape(await resp.json(), "invalid_api_key")

    async def test_wrong_key_is_401_for_the_sdk(self, gw, upstreams):
        bad = openai.AsyncOpenAI(base_url=gw.url, api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            await bad.chat.completions.create(model="m", messages=[])
        await bad.close()

    async def test_x_api_key_header_is_accepted(self, gw):
        resp = await gw.client.post(
            "/v1/chat/completions", json={"model": "m", "messages": []}, headers={"x-api-key": "client-key"}
        )
        assert resp.status == 200

    @pytest.mark.parametrize(
        ("body", "code"),
        [
            (b"{not json", "invalid_json"),
            (b"[1, 2]", "invalid_json"),
            (b"", "invalid_json"),
            (b'{"messages": []}', "missing_model"),
            (b'{"model": 5}', "invalid_model"),
            (b'{"model": "m", "stream": "yes"}', "invalid_type"),
        ],
    )
    async def test_malformed_bodies_are_400(self, gw, body, code):
        resp = await gw.client.post("/v1/chat/completions", data=body, headers={"Authorization": "Bearer client-key"})
        assert resp.status == 400
        assert_openai_shape(await resp.json(), code)

    async def test_unknown_model_is_404_model_not_found(self, gw):
        with pytest.raises(openai.NotFoundError) as caught:
            await gw.sdk.chat.completions.create(model="nope", messages=[])
        assert caught.value.body["code"] == "model_not_found"

    async def test_oversized_body_is_413(self, gw):
        resp = await gw.client.post(
            "/v1/chat/completions",
            json={"model": "m", "messages": [{"content": "x" * 2000}]},
            headers={"Authorization": "Bearer client-key"},
        )
        assert resp.status == 413
        assert_openai_shape(await resp.json(), "request_too_large")

    async def test_unknown_route_is_404_in_openai_shape(self, gw):
        resp = await gw.client.get("/v1/nothing-here")
        assert resp.status == 404
        assert_openai_shape(await resp.json(), "not_found")

    async def test_wrong_method_is_405(self, gw):
        resp = await gw.client.get("/v1/chat/completions")
        assert resp.status == 405
        assert_openai_shape(await resp.json(), "method_not_allowed")


class TestUpstreamErrors:
    """When no upstream answers, the client gets 502/504/503 in the OpenAI shape with the x-cliproxy headers."""

    async def test_all_connections_refused_is_502(self, gateway, unused_tcp_port):
        gw = await gateway({"openai-compatibility": [vendor("dead", f"http://127.0.0.1:{unused_tcp_port}/v1", ["m"])]})
        resp = await gw.client.post("/v1/chat/completions", json={"model": "m", "messages": []})
        assert resp.status == 502
        assert_openai_shape(await resp.json(), "upstream_unreachable")
        assert resp.headers["x-cliproxy-vendor"] == "dead"

    async def test_all_timeouts_is_504(self, upstreams, gateway):
        up = await upstreams()
        up.fail(None, Fault(stall_before_headers=5))
        gw = await gateway({"timeouts": {"first-byte": 0.1}, "openai-compatibility": [vendor("slow", up.url, ["m"])]})
        resp = await gw.client.post("/v1/chat/completions", json={"model": "m", "messages": []})
        assert resp.status == 504
        assert_openai_shape(await resp.json(), "upstream_timeout")

    async def test_model_with_every_pair_switched_off_is_503(self, upstreams, gateway):
        up = await upstreams()
        gw = await gateway({"openai-compatibility": [vendor("a", up.url, [{"name": "m", "enabled": False}])]})
        resp = await gw.client.post("/v1/chat/completions", json={"model": "m", "messages": []})
        assert resp.status == 503
        assert_openai_shape(await resp.json(), "no_available_vendor")

    async def test_upstream_keys_never_in_error_messages(self, upstreams, gateway):
        up = await upstreams()
        up.fail(None, Fault(status=401, body={"error": {"message": "invalid key sk-a-upstream-key-0001 provided"}}))
        gw = await gateway({"openai-compatibility": [vendor("a", up.url, ["m"])]})
        resp = await gw.client.post("/v1/chat/completions", json={"model": "m", "messages": []})
        assert resp.status == 401
        assert b"sk-a-upstream-key-0001" not in await resp.read()

    async def test_a_broken_stream_ends_with_an_event_in_the_same_shape(self, upstreams, gateway):
        """Once the 200 is out, the error is the last SSE event, shaped like every JSON error."""
        up = await upstreams(chunks=5)
        up.fail(None, Fault(reset_after_chunks=2))
        gw = await gateway({"openai-compatibility": [vendor("a", up.url, ["m"])]})
        resp = await gw.client.post("/v1/chat/completions", json={"model": "m", "stream": True, "messages": []})
        assert resp.status == 200
        last = (await resp.read()).decode().rstrip("\n").split("\n\n")[-1]
        assert last.startswith("data: ")
        error = json.loads(last[len("data: ") :])
        assert_openai_shape(error, "stream_error")
        assert error["error"]["type"] == "upstream_error" and error["error"]["param"] is None


class TestSlowClients:
    """A client that stalls while sending its body is cut off with 408 once `body-timeout` has passed."""

    async def test_stalled_body_is_408(self, upstreams, gateway):
        up = await upstreams()
        gw = await gateway({"body-timeout": 0.3, "openai-compatibility": [vendor("a", up.url, ["m"])]})
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.client.port)
        writer.write(
            b'POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"model":'
        )
        await writer.drain()
        head, _, body = (await asyncio.wait_for(reader.read(65536), 5)).partition(b"\r\n\r\n")
        writer.close()
        assert head.startswith(b"HTTP/1.1 408")
        assert_openai_shape(json.loads(body), "request_timeout")
        assert not up.requests
        assert (await gw.client.post("/v1/chat/completions", json={"model": "m", "messages": []})).status == 200
