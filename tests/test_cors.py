"""CORS for browser-based clients through the real gateway (`cliproxy.web.browser_guard`), and its config key."""

from __future__ import annotations

import pytest

from cliproxy.services.config_loader import ConfigError, parse_config
from cliproxy.web.browser_guard import is_loopback_host
from tests.helpers import vendor

APP = "https://app.example.com"
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
PREFLIGHT = {
    "Origin": APP,
    "Access-Control-Request-Method": "POST",
    "Access-Control-Request-Headers": "authorization, content-type, x-stainless-os",
}
MGMT = {"remote-management": {"secret-key": "MgmtKeyForCorsTests1"}}


def _lower(headers) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {k.lower(): v for k, v in headers.items()}


class TestPreflight:
    """An allowed origin's preflight on /v1 is 204 with the origin, methods, headers, max-age and Vary: Origin."""

    @pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/embeddings", "/v1/models"])
    async def test_allowed_origin(self, upstreams, gateway, path):
        up = await upstreams()
        gw = await gateway({"cors-allow-origins": [APP], "openai-compatibility": [vendor("a", up.url, ["m"])]})
        resp = await gw.client.options(path, headers=PREFLIGHT)
        assert resp.status == 204
        got = _lower(resp.headers)
        assert got["access-control-allow-origin"] == APP
        assert {"GET", "POST", "OPTIONS"} <= {m.strip() for m in got["access-control-allow-methods"].split(",")}
        allowed = {h.strip() for h in got["access-control-allow-headers"].split(",")}
        assert {"authorization", "content-type", "x-api-key", "x-stainless-os"} <= allowed
        assert int(got["access-control-max-age"]) > 0
        assert "Origin" in got["vary"]
        assert up.request_count == 0  # answered by the gateway

    async def test_star_allows_any_origin_and_echoes_it(self, upstreams, gateway):
        up = await upstreams()
        gw = await gateway({"cors-allow-origins": ["*"], "openai-compatibility": [vendor("a", up.url, ["m"])]})
        origin = "http://localhost:5173"
        resp = await gw.client.options("/v1/chat/completions", headers={**PREFLIGHT, "Origin": origin})
        assert resp.status == 204 and resp.headers["Access-Control-Allow-Origin"] == origin

    async def test_origin_not_listed_is_403_without_cors_headers(self, upstreams, gateway):
        up = await upstreams()
        gw = await gateway({"cors-allow-origins": [APP], "openai-compatibility": [vendor("a", up.url, ["m"])]})
        resp = await gw.client.options("/v1/chat/completions", headers={**PREFLIGHT, "Origin": "https://other.example"})
        assert resp.status == 403
        assert (await resp.json())["error"]["code"] == "origin_not_allowed"
        assert not any(k.lower().startswith("access-control-") for k in resp.headers)


class TestCorsResponses:
    """An allowed origin's /v1 answers (plain, streamed, errors) carry Access-Control-Allow-Origin and Vary: Origin."""

    async def test_plain_stream_and_error(self, upstreams, gateway):
        up = await upstreams()
        gw = await gateway(
            {"api-keys": ["client-key"], "cors-allow-origins": [APP], "openai-compatibility": [vendor("a", up.url, ["m"])]}
        )
        auth = {"Authorization": "Bearer client-key", "Origin": APP}
        for body, status in ((CHAT, 200), ({**CHAT, "stream": True}, 200)):
            resp = await gw.client.post("/v1/chat/completions", json=body, headers=auth)
            await resp.read()
            got = _lower(resp.headers)
            assert resp.status == status
            assert got["access-control-allow-origin"] == APP and "Origin" in got["vary"]
            assert "x-cliproxy-vendor" in got["access-control-expose-headers"]
        resp = await gw.client.post(
            "/v1/chat/completions", json=CHAT, headers={"Origin": APP}
        )  # no key: 401, readable by the page
        assert resp.status == 401 and resp.headers["Access-Control-Allow-Origin"] == APP
        resp = await gw.sdk.with_options(default_headers={"Origin": APP}).models.with_raw_response.list()
        assert resp.headers["access-control-allow-origin"] == APP

    async def test_no_cors_headers_by_default(self, upstreams, gateway):
        up = await upstreams()
        gw = await gateway({"openai-compatibility": [vendor("a", up.url, ["m"])]})
        resp = await gw.client.post("/v1/chat/completions", json=CHAT)
        assert resp.status == 200
        assert not any(k.lower().startswith("access-control-") for k in resp.headers)
        resp = await gw.client.options("/v1/chat/completions", headers=PREFLIGHT)  # no origin is allowed
        assert resp.status == 403
        assert not any(k.lower().startswith("access-control-") for k in resp.headers)

    async def test_no_origin_no_cors_headers(self, upstreams, gateway):
        up = await upstreams()
        gw = await gateway({"cors-allow-origins": [APP], "openai-compatibility": [vendor("a", up.url, ["m"])]})
        resp = await gw.client.post("/v1/chat/completions", json=CHAT)
        assert resp.status == 200
        assert "Access-Control-Allow-Origin" not in resp.headers


class TestManagementAndMetricsNeverCors:
    """/api and /metrics never send CORS headers, to an allowed origin or to `*`, and answer no preflight."""

    @pytest.mark.parametrize("origins", [[APP], ["*"]])
    async def test_no_cors_headers(self, upstreams, gateway, origins):
        up = await upstreams()
        gw = await gateway({**MGMT, "cors-allow-origins": origins, "openai-compatibility": [vendor("a", up.url, ["m"])]})
        key = {"Authorization": "Bearer MgmtKeyForCorsTests1", "Origin": APP}
        for path in ("/api/vendors", "/metrics"):
            resp = await gw.client.get(path, headers=key)
            assert resp.status == 200, path
            assert not any(k.lower().startswith("access-control-") for k in resp.headers), path
            resp = await gw.client.options(path, headers={**PREFLIGHT, **key})
            assert resp.status != 204, path
            assert not any(k.lower().startswith("access-control-") for k in resp.headers), path


class TestCorsConfig:
    """`cors-allow-origins` takes exact origins (normalised as browsers send them) and `*`; anything else names its key path."""

    def test_valid_origins_are_normalised(self):
        config = parse_config(
            'cors-allow-origins: ["https://App.Example.com:443", "http://localhost:5173", "*", "http://[::1]:3000"]', env={}
        )
        assert config.cors_allow_origins == ("https://app.example.com", "http://localhost:5173", "*", "http://[::1]:3000")
        assert parse_config("{}", env={}).cors_allow_origins == ()

    @pytest.mark.parametrize(
        "bad", ["https://app.example.com/", "app.example.com", "ftp://x.example", "https://x.example/path", "", "null"]
    )
    def test_invalid_origin_names_the_key(self, bad):
        with pytest.raises(ConfigError) as error:
            parse_config(f'cors-allow-origins: ["{APP}", "{bad}"]', env={})
        assert error.value.problems[0].startswith("cors-allow-origins[1]: ")


class TestLoopbackHostNames:
    """Which `Host` values name this machine (the DNS-rebinding rule); the real-process check is in test_security."""

    @pytest.mark.parametrize(
        "host",
        [
            "localhost",
            "LOCALHOST:8317",
            "127.0.0.1",
            "127.0.0.1:1",
            "127.9.9.9",
            "[::1]",
            "[::1]:8317",
            "app.localhost",
            "a.b.localhost:3",
            "localhost.",
        ],
    )
    def test_loopback(self, host):
        assert is_loopback_host(host)

    @pytest.mark.parametrize(
        "host",
        [
            "evil.example",
            "evil.example:8317",
            "localhost.evil.example",
            "127.0.0.1.nip.io",
            "[::1]x",
            "[::2]",
            "localhost:abc",
            "0.0.0.0",
            "::1",
            "",
            "[::1",
            "10.0.0.1",
        ],
    )
    def test_not_loopback(self, host):
        assert not is_loopback_host(host)
