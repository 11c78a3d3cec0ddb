"""Regressions: one test per bug the reliability suites found (fixed alongside)."""

from __future__ import annotations

import gzip

import aiohttp
import pytest
from aiohttp import web

from cliproxy.core.body import parse_client_body
from cliproxy.core.errors import InvalidRequest
from cliproxy.services.config_loader import ConfigError, load_config, parse_config
from cliproxy.web.keys import TRACKER
from tests.helpers import (
    GOOD_BODY,
    assert_openai_error,
    assert_still_answers,
    plain_gateway_config,
    raw_request,
    request_head,
    vendor,
)


@pytest.fixture
async def gw(upstreams, gateway):
    up = await upstreams(chunks=2)
    return await gateway(plain_gateway_config(up.url))


class TestClientApiRegressions:
    """Hostile client input that gets a 5xx, a wrong message or a wrong forward today."""

    @pytest.mark.parametrize(
        "header", [(b"Authorization", b"Bearer \xff\xfe"), (b"x-api-key", b"\xff")], ids=["authorization", "x_api_key"]
    )
    async def test_invalid_utf8_credential_is_401_not_500(self, gw, header):
        resp = await raw_request(gw.client.port, request_head([header], len(GOOD_BODY)), GOOD_BODY)
        assert resp.status == 401, resp.body
        assert_openai_error(resp.body, "invalid_api_key")

    async def test_undecodable_gzip_body_is_400_not_500(self, gw):
        head = request_head([(b"Authorization", b"Bearer client-key"), (b"Content-Encoding", b"gzip")], 5)
        resp = await raw_request(gw.client.port, head, b"abcde")
        assert resp.status == 400, resp.body
        assert_openai_error(resp.body)
        await assert_still_answers(gw)

    async def test_gzip_body_is_forwarded_decoded_without_its_content_encoding(self, upstreams, gateway):
        up = await upstreams()
        gw = await gateway({"openai-compatibility": [vendor("a", up.url, ["m"])]})
        resp = await gw.client.post("/v1/chat/completions", data=gzip.compress(GOOD_BODY), headers={"Content-Encoding": "gzip"})
        assert resp.status == 200, await resp.read()
        assert "content-encoding" not in {k.lower() for k in up.requests[-1].headers}
        assert gw.app[TRACKER].state(("a", "m")) is None  # the client's encoding never counts against the pair

    async def test_unknown_expect_is_417_in_openai_shape(self, gw):
        head = request_head([(b"Authorization", b"Bearer client-key"), (b"Expect", b"something")], len(GOOD_BODY))
        resp = await raw_request(gw.client.port, head, GOOD_BODY)
        assert resp.status == 417
        assert_openai_error(resp.body)

    @pytest.mark.parametrize(
        ("body", "words"),
        [(b'{"model":"m\xff"}', "UTF-8"), (b'{"model":"m","n":' + b"9" * 5000 + b"}", "digits")],
        ids=["invalid_utf8", "int_over_4300_digits"],
    )
    def test_parse_error_names_the_real_reason(self, body, words):
        with pytest.raises(InvalidRequest) as caught:
            parse_client_body(body)
        assert "too deeply nested" not in caught.value.message
        assert words in caught.value.message

    def test_utf16_body_is_refused_as_not_utf8(self):
        body = '{"model":"small","messages":[]}'.encode("utf-16")  # JSON on the wire is UTF-8 (RFC 8259)
        with pytest.raises(InvalidRequest) as caught:
            parse_client_body(body)
        assert (caught.value.code, caught.value.message) == ("invalid_json", "the request body is not valid UTF-8 (byte 0)")

    async def test_utf16_body_is_a_400_through_the_gateway(self, gw):
        body = '{"model":"m","messages":[]}'.encode("utf-16")
        resp = await raw_request(gw.client.port, request_head([(b"Authorization", b"Bearer client-key")], len(body)), body)
        assert resp.status == 400, resp.body
        assert_openai_error(resp.body, "invalid_json")
        await assert_still_answers(gw)

    async def test_stream_request_answered_with_json_cut_short_is_not_ended_cleanly(self, gateway, aiohttp_server):
        async def half_json(request: web.Request) -> web.StreamResponse:
            resp = web.StreamResponse(headers={"Content-Type": "application/json"})
            # Over the 64 KiB a plain body is read whole before relaying (a shorter one cut short fails over).
            resp.content_length = 200_000
            await resp.prepare(request)
            await resp.write(b'{"id": "x", "choices": [' + b" " * 100_000)
            request.transport.close()
            return resp

        app = web.Application()
        app.router.add_post("/v1/chat/completions", half_json)
        server = await aiohttp_server(app)
        gw = await gateway({"openai-compatibility": [vendor("a", str(server.make_url("/v1")), ["m"])]})
        resp = await gw.client.post("/v1/chat/completions", json={"model": "m", "stream": True, "messages": []})
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "application/json"  # relayed as the JSON it is, not as SSE
        # Cut short and closed, like a plain body: the client cannot take it for whole. (The bug was
        # a clean end: the JSON prefix followed by an SSE error event, read without any error.)
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()


class TestConfigRegressions:
    """Config files that crash `check-config` (or the gateway at start) with a traceback today."""

    @pytest.mark.parametrize(
        ("text", "env", "host"),
        [
            ("host: ${P:-[}\n", {}, "["),
            ("host: ${P:-*x}\n", {}, "*x"),
            ("host: ${P:-!!python/object:os.system}\n", {}, "!!python/object:os.system"),
            ("host: ${K}\n", {"K": "@x"}, "@x"),
            ("host: ${K}\n", {"K": "*abc"}, "*abc"),
            ("host: ${K}\n", {"K": "a: b: c"}, "a: b: c"),
            ("host: ${K}\n", {"K": "`x"}, "`x"),
        ],
        ids=["default_unclosed", "default_alias", "default_tag", "value_at", "value_alias", "value_mapping", "value_backtick"],
    )
    def test_placeholder_that_is_not_yaml_is_text(self, text, env, host):
        assert parse_config(text, env=env).host == host

    @pytest.mark.parametrize("default", ["[", "*x", "!!python/object:os.system"], ids=["unclosed", "alias", "tag"])
    def test_placeholder_text_where_a_number_belongs_is_a_config_error_naming_the_key(self, default):
        with pytest.raises(ConfigError) as caught:
            parse_config(f"port: ${{P:-{default}}}\n", env={})
        assert "port: Not a valid integer." in str(caught.value)

    @pytest.mark.parametrize(
        "text",
        [
            "x: &a [*a]\n",
            "openai-compatibility: &a [*a]\n",
            "timeouts: &a {connect: *a}\n",
            "x: " + "[" * 3000 + "]" * 3000 + "\n",
        ],
        ids=["self_alias", "self_alias_known_key", "self_alias_mapping", "3000_levels"],
    )
    def test_self_reference_and_deep_nesting_are_config_errors(self, text):
        with pytest.raises(ConfigError):
            parse_config(text, env={})

    def test_lone_surrogate_is_refused_before_it_crashes_the_start(self):
        text = 'api-keys: ["a\\udc80"]\n'
        with pytest.raises(ConfigError) as caught:
            parse_config(text, env={})
        assert "api-keys[0]: '\\udc80' is a lone surrogate, not text" in str(caught.value)

    def test_non_utf8_file_is_a_config_error(self, tmp_path):
        path = tmp_path / "latin1.yaml"
        path.write_bytes(b'host: "\xff"\n')
        with pytest.raises(ConfigError):
            load_config(path, env={})
