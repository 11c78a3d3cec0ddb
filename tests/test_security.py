"""Security through the real app: a `cliproxy serve` subprocess on loopback, raw HTTP where it matters.

What `test_admin_auth.py` proves as tables and in-process, checked here on the real process and
its real sockets, plus what only shows there:

- the management API refuses a non-loopback client without `allow-remote`, however its
  `X-Forwarded-For` is dressed up (the client address comes from a trusted proxy);
- `X-Forwarded-For` from an untrusted peer is ignored, for access, for the lock-out and for `actor`;
- brute force locks an address out, the right key included, and nothing else;
- path tricks in `{model}` and `{name}` are 400 or 404, never 500, and write nothing;
- a client key removed by a hot reload (file edit, `PUT /api/config.yaml`) is refused from the next
  request on, on a kept-alive connection too, and after a restart; a rejected reload that would have
  brought it back changes nothing;
- no secret (upstream, client, management keys, a proxy password; recognisable values that no
  credential pattern would mask) in any response, log line or event row after traffic, failures,
  management calls and rejected reloads.

Only loopback is used. A real non-loopback peer would need a second address on this machine (or a
network namespace), which a test cannot count on; the peer-is-remote case is reached through
`trusted-proxies`, the same code path (`cliproxy.web.admin.auth.client_address`) a remote peer takes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import sqlite3
import struct
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from cliproxy.fake_upstream import FakeUpstream, Fault
from cliproxy.services.config_loader import load_config
from cliproxy.web.admin import ENDPOINTS
from cliproxy.web.admin.openapi import openapi_path
from tests.helpers import eventually, vendor
from tests.processes import GatewayProcess

MGMT_KEY = "MgmtKeyQ7rT2wX9zL4v"
AUTH = {"Authorization": f"Bearer {MGMT_KEY}"}
REMOTE = "203.0.113.9"  # TEST-NET-3: only ever written into headers, never connected to
OTHER_REMOTE = "198.51.100.7"
DEAD = "http://127.0.0.1:9/v1"


@pytest.fixture
def processes() -> Any:
    started: list[GatewayProcess] = []
    yield started
    for proc in started:
        proc.stop(timeout=10)


def _start(
    processes: list[GatewayProcess], tmp_path: Path, config: dict[str, Any], env: dict[str, str] | None = None
) -> GatewayProcess:
    gw = GatewayProcess(tmp_path, config, env=env)
    processes.append(gw.start())
    return gw


def _management(**remote: Any) -> dict[str, Any]:
    return {"remote-management": {"secret-key": MGMT_KEY, **remote}, "openai-compatibility": [vendor("a", DEAD, ["m", "org/m2"])]}


def _concrete(template: str) -> str:
    return openapi_path(template).replace("{model}", "m").replace("{name}", "a")


async def raw_request(port: int, request: bytes, timeout: float = 10) -> tuple[int, dict[str, str], bytes]:
    """One request as raw bytes on a new connection; (status, headers, body) of the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), timeout)  # the request says Connection: close
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return status, headers, body


def http(method: str, path: str | bytes, headers: Sequence[tuple[str, str]] = (), body: bytes = b"") -> bytes:
    """A request as bytes, exactly as given: no normalisation, no encoding of the path, repeated headers kept."""
    raw_path = path if isinstance(path, bytes) else path.encode()
    lines = [method.encode() + b" " + raw_path + b" HTTP/1.1", b"Host: 127.0.0.1", b"Connection: close"]
    lines += [f"{k}: {v}".encode("latin-1") for k, v in headers]
    lines.append(f"Content-Length: {len(body)}".encode())
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


async def api(session: aiohttp.ClientSession, gw: GatewayProcess, method: str, path: str, **kw: Any) -> tuple[int, Any, str]:
    headers = {**AUTH, **kw.pop("headers", {})}
    async with session.request(method, gw.url + path, headers=headers, **kw) as resp:
        text = await resp.text()
        return resp.status, (json.loads(text) if resp.content_type == "application/json" else None), text


def _event_rows(db: Path) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(db, timeout=5)
    try:
        return conn.execute("SELECT * FROM events ORDER BY id").fetchall()
    finally:
        conn.close()


# =============================================================================================
# Who may manage
# =============================================================================================


class TestRemoteClientWithoutAllowRemote:
    """Behind a trusted proxy, a remote client is 403 on every endpoint with the right key, whatever else it claims."""

    SPOOFS: tuple[list[tuple[str, str]], ...] = (
        [("X-Forwarded-For", REMOTE)],
        [("X-Forwarded-For", f"127.0.0.1, {REMOTE}")],  # a loopback hop written by the client, then the proxy's
        [("X-Forwarded-For", f"::1, {REMOTE}")],
        [("X-Forwarded-For", f"{REMOTE}, 127.0.0.1")],  # a chain of trusted proxies: the client is the first untrusted hop
        [("X-Forwarded-For", f"localhost, {REMOTE}")],
        [("X-Forwarded-For", REMOTE), ("Forwarded", "for=127.0.0.1"), ("X-Real-IP", "127.0.0.1"), ("X-Client-IP", "::1")],
        [("X-Forwarded-For", "not-an-address")],  # unparsable: not loopback
        [("X-Forwarded-For", "x" * 5000)],
    )

    async def test_every_endpoint_every_spoof(self, tmp_path, processes) -> None:
        gw = _start(processes, tmp_path, _management(**{"trusted-proxies": ["127.0.0.1", "::1"]}))
        before = gw.config_path.read_bytes()
        tried = 0
        for spoof in self.SPOOFS:
            for ep in ENDPOINTS:
                body = b'{"enabled": false}' if ep.method == "PATCH" else b""
                status, _, text = await raw_request(
                    gw.port,
                    http(ep.method, _concrete(ep.path), [*AUTH.items(), *spoof, ("Content-Type", "application/json")], body),
                )
                tried += 1
                assert status == 403, (ep.method, ep.path, spoof, status, text[:300])
                assert json.loads(text)["error"]["type"] == "permission_error"
        assert tried == len(self.SPOOFS) * len(ENDPOINTS)
        assert gw.config_path.read_bytes() == before
        assert [row for row in _event_rows(tmp_path / "cliproxy.db")] == []  # nothing was changed, nothing recorded
        # The proxy's own loopback traffic (no forwarded client) is served.
        status, _, _ = await raw_request(gw.port, http("GET", "/api/vendors", list(AUTH.items())))
        assert status == 200

    async def test_client_line_before_the_proxys_own_line(self, tmp_path, processes) -> None:
        gw = _start(processes, tmp_path, _management(**{"trusted-proxies": ["127.0.0.1"]}))
        # Two header lines are one list (RFC 9110 5.3): "127.0.0.1, 203.0.113.9"; the client is 203.0.113.9.
        status, _, text = await raw_request(
            gw.port, http("GET", "/api/vendors", [*AUTH.items(), ("X-Forwarded-For", "127.0.0.1"), ("X-Forwarded-For", REMOTE)])
        )
        assert status == 403, text[:300]


class TestForwardedForFromAnUntrustedPeer:
    """Without trusted proxies X-Forwarded-For is ignored: loopback is served, `actor` is the peer, the lock-out keys on the peer."""

    async def test_ignored_for_access_actor_and_lockout(self, tmp_path, processes) -> None:
        gw = _start(processes, tmp_path, _management())
        async with aiohttp.ClientSession() as session:
            status, body, _ = await api(
                session, gw, "POST", "/api/models/m/disable", json={"duration_seconds": 60}, headers={"X-Forwarded-For": REMOTE}
            )
            assert status == 200
            assert body["pairs"][0]["manual_disable"]["actor"] == "127.0.0.1"
            status, body, _ = await api(session, gw, "GET", "/api/events?kind=manual-disable")
            assert [e["actor"] for e in body["events"]] == ["127.0.0.1"]
            # Rotating the header does not spread wrong keys over many "addresses".
            for n in range(5):
                status, _, _ = await api(
                    session,
                    gw,
                    "GET",
                    "/api/vendors",
                    headers={"Authorization": "Bearer wrong", "X-Forwarded-For": f"198.51.100.{n}"},
                )
                assert status == 401
            status, _, _ = await api(session, gw, "GET", "/api/vendors", headers={"X-Forwarded-For": "198.51.100.99"})
            assert status == 429


class TestBruteForce:
    """Five wrong keys block the address for 10 minutes, the right key included; other clients and /v1 are untouched."""

    WRONG: tuple[tuple[str, str], ...] = (
        ("Authorization", "Bearer wrong"),
        ("Authorization", f"Bearer {MGMT_KEY[:-1]}"),  # one character short
        ("X-Management-Key", MGMT_KEY.lower()),  # case matters
        ("Authorization", f"Basic {MGMT_KEY}"),  # the key, but not as a bearer token: no key presented
        ("X-Management-Key", f"{MGMT_KEY}x"),
    )

    async def test_lockout_on_the_real_process(self, tmp_path, processes) -> None:
        gw = _start(processes, tmp_path, _management())
        async with aiohttp.ClientSession() as session:
            for name, value in self.WRONG:
                status, body, _ = await api(session, gw, "GET", "/api/vendors", headers={"Authorization": "", name: value})
                assert status == 401, (name, value, body)
            for headers in (AUTH, {"X-Management-Key": MGMT_KEY}):
                async with session.get(gw.url + "/api/models/disabled", headers=headers) as resp:
                    assert resp.status == 429
                    assert 590 <= int(resp.headers["Retry-After"]) <= 600
                    assert (await resp.json())["error"]["code"] == "rate_limit_exceeded"
            async with session.get(gw.url + "/v1/models") as resp:
                assert resp.status == 200
        assert MGMT_KEY not in gw.log()

    async def test_a_key_with_bytes_that_are_not_utf8_is_a_counted_401(self, tmp_path, processes) -> None:
        gw = _start(processes, tmp_path, _management())
        keys = [("X-Management-Key", "\xff\xfe"), ("Authorization", "Bearer k\xffey")] * 3  # sent as raw bytes 0xff 0xfe
        answers = [await raw_request(gw.port, http("GET", "/api/vendors", [key])) for key in keys]
        assert [(status, json.loads(body)["error"]["code"]) for status, _, body in answers] == (
            [(401, "invalid_management_key")] * 5 + [(429, "rate_limit_exceeded")]
        )
        assert "Traceback" not in gw.log()

    async def test_lockout_is_per_client_behind_a_proxy(self, tmp_path, processes) -> None:
        gw = _start(processes, tmp_path, _management(**{"trusted-proxies": ["127.0.0.1"], "allow-remote": True}))
        async with aiohttp.ClientSession() as session:
            for _ in range(5):
                status, _, _ = await api(
                    session, gw, "GET", "/api/vendors", headers={"Authorization": "Bearer wrong", "X-Forwarded-For": REMOTE}
                )
                assert status == 401
            assert (await api(session, gw, "GET", "/api/vendors", headers={"X-Forwarded-For": REMOTE}))[0] == 429
            assert (await api(session, gw, "GET", "/api/vendors", headers={"X-Forwarded-For": OTHER_REMOTE}))[0] == 200
            assert (await api(session, gw, "GET", "/api/vendors"))[0] == 200  # the proxy itself


# =============================================================================================
# Path tricks
# =============================================================================================


TEMPLATES = [
    ("GET", "/api/models/{}/status"),
    ("POST", "/api/models/{}/enable"),
    ("POST", "/api/models/{}/disable"),  # no body: a permanent disable, written to config.yaml if a pair matched
    ("PATCH", "/api/vendors/{}"),
    ("PATCH", "/api/vendors/a/models/{}"),
    ("PATCH", "/api/vendors/{}/models/m"),
]
# As they go on the wire (percent-encoding kept): none of them names a configured vendor or model.
TRICKS = [
    "..",
    ".",
    "%2e%2e",
    "%2E%2E",
    "%2e",
    "..%2F..",
    "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "..%2F..%2Fconfig.yaml",
    "m%2F..%2F..%2Fconfig.yaml",
    "org%2F..%2Fm2",
    "org%2F.%2Fm2",
    "%2F",
    "%2F%2F",
    "%2Fm",
    "m%2F",
    "%00",
    "m%00",
    "m%00.yaml",
    "%00..",
    "%2500",
    "%252F",
    "..%252F..%252F",
    "%C0%AE%C0%AE",
    "%C0%AF",
    "%FF%FE",
    "%EF%BC%8E%EF%BC%8E",
    "%E2%80%AE%6D",
    "%F0%9F%92%A9",
    "m%CC%81",
    "%5C..%5C..%5Cconfig.yaml",
    "m%3Fvendor%3Da",
    "m%23x",
    "m;vendor=a",
    "m%0D%0AX-Injected:%201",
    "%09",
    "%20m",
    "~",
    "*",
    "%25",
    "config.yaml",
    "cliproxy.db",
    "a" * 4000,
    "%41" * 2000,
]
# Not even valid HTTP (raw bytes in the request line), or too long for the parser: refused before cliproxy.
RAW_TRICKS = [b"m\x00", b"\x00", b"m\xff\xfe", "modèle".encode(), "模型".encode(), b"m\r", b"a" * 9000]


class TestPathTricks:
    """Dot segments, encoded slashes, NUL, overlong and invalid UTF-8, very long and unicode names: 400/404, never 500, nothing written."""

    async def test_model_and_name_tricks(self, tmp_path, processes) -> None:
        gw = _start(processes, tmp_path, _management())
        before = gw.config_path.read_bytes()
        files_before = sorted(p.name for p in tmp_path.iterdir())
        seen: dict[int, int] = {}
        for method, template in TEMPLATES:
            for trick in TRICKS:
                body = b'{"enabled": false}' if method == "PATCH" else b""
                status, _, text = await raw_request(
                    gw.port, http(method, template.format(trick), [*AUTH.items(), ("Content-Type", "application/json")], body)
                )
                seen[status] = seen.get(status, 0) + 1
                assert status in (400, 404), (method, template.format(trick)[:120], status, text[:300])
                error = json.loads(text)["error"]  # cliproxy's own answer, in the OpenAI shape
                assert error["code"] and error["message"]
            for trick in RAW_TRICKS:
                raw = template.encode().replace(b"{}", trick)
                status, _, text = await raw_request(gw.port, http(method, raw, list(AUTH.items())))
                seen[status] = seen.get(status, 0) + 1
                assert status in (400, 404), (method, raw[:120], status, text[:300])
        assert seen.get(500, 0) == 0
        assert gw.config_path.read_bytes() == before
        assert sorted(p.name for p in tmp_path.iterdir()) == files_before
        assert _event_rows(tmp_path / "cliproxy.db") == []
        log = gw.log()
        assert "unhandled error" not in log, log[-3000:]
        # The requests that are not valid HTTP are refused by aiohttp's parser; each is one INFO line,
        # never an ERROR with a traceback (noise an anonymous client could cause).
        assert "Traceback" not in log and " ERROR " not in log, log[-3000:]
        assert "refused a malformed HTTP request" in log
        async with aiohttp.ClientSession() as session:  # still serving
            status, body, _ = await api(session, gw, "GET", "/api/models/org%2Fm2/status")
            assert status == 200 and body["pairs"][0]["model"] == "org/m2"
        print(
            f"\npath tricks: {sum(seen.values())} requests, statuses {dict(sorted(seen.items()))}, "
            f"{log.count('refused a malformed HTTP request')} refused by the HTTP parser"
        )


# =============================================================================================
# Client keys removed by a reload
# =============================================================================================


OLD_KEY, KEPT_KEY, NEW_KEY = "OldClientKeyP3mZ8", "KeptClientKeyR5nV1", "NewClientKeyT9kW4"


def _client_config(up: FakeUpstream, keys: list[str]) -> dict[str, Any]:
    return {"api-keys": keys, **_management(), "openai-compatibility": [vendor("a", up.url, ["m"])]}


async def _client_status(
    session: aiohttp.ClientSession, gw: GatewayProcess, method: str, path: str, headers: dict[str, str], body: Any = None
) -> int:
    async with session.request(method, gw.url + path, headers=headers, json=body) as resp:
        await resp.read()
        return resp.status


CLIENT_CALLS: list[tuple[str, str, Any]] = [
    ("POST", "/v1/chat/completions", {"model": "m", "messages": [{"role": "user", "content": "hi"}]}),
    ("POST", "/v1/chat/completions", {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}),
    ("POST", "/v1/completions", {"model": "m", "prompt": "hi"}),
    ("POST", "/v1/embeddings", {"model": "m", "input": "hi"}),
    ("POST", "/v1/responses", {"model": "m", "input": "hi"}),
    ("GET", "/v1/models", None),
    ("GET", "/v1/models/m", None),
]


def _presentations(key: str) -> list[dict[str, str]]:
    return [{"Authorization": f"Bearer {key}"}, {"Authorization": f"bearer {key}"}, {"x-api-key": key}]


class TestRemovedClientKeys:
    """A key removed by a reload is 401 from the next request on, on a kept-alive connection and after a restart."""

    @pytest.mark.slow  # about 5 s
    async def test_file_edit_put_rejected_reload_and_restart(self, upstreams, tmp_path, processes) -> None:
        up = await upstreams()
        gw = _start(processes, tmp_path, _client_config(up, [OLD_KEY, KEPT_KEY]))
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:  # one kept-alive pool throughout
            for method, path, body in CLIENT_CALLS:
                assert await _client_status(session, gw, method, path, {"Authorization": f"Bearer {OLD_KEY}"}, body) == 200
            # A stream that started with the old key finishes on the config it started with.
            slow = {"Authorization": f"Bearer {OLD_KEY}", "x-fake-chunks": "10", "x-fake-chunk-delay": "0.15"}
            stream = asyncio.ensure_future(_client_status(session, gw, *CLIENT_CALLS[1][:2], slow, CLIENT_CALLS[1][2]))
            await asyncio.sleep(0.2)

            # 1. An edit of the file on disk, written in place as an editor would.
            text = gw.config_path.read_text()
            gw.config_path.write_text(text.replace(f"- {OLD_KEY}\n", ""))

            async def old_key_refused() -> bool:
                return await _client_status(session, gw, "GET", "/v1/models", {"Authorization": f"Bearer {OLD_KEY}"}) == 401

            await eventually(old_key_refused, "the edit to be picked up (the removed key refused)", interval=0.1)
            assert await stream == 200
            await self._old_refused_kept_served(session, gw)

            # 2. A reload that would bring the key back but is invalid: rejected, nothing changes.
            gw.config_path.write_text(text.replace("remote-management:", "request-retry: many\nremote-management:"))

            async def reload_rejected() -> Any:
                return (await api(session, gw, "GET", "/api/config"))[1]["last_reload_error"]

            await eventually(reload_rejected, "the bad file to be looked at (a last_reload_error)", interval=0.1)
            await self._old_refused_kept_served(session, gw)

            # 3. PUT /api/config.yaml with a new key and the old one still gone.
            good = yaml.safe_load(text)
            good["api-keys"] = [KEPT_KEY, NEW_KEY]
            status, _, body = await api(
                session,
                gw,
                "PUT",
                "/api/config.yaml",
                data=yaml.safe_dump(good, sort_keys=False),
                headers={"Content-Type": "application/yaml"},
            )
            assert status == 200, body
            await self._old_refused_kept_served(session, gw)
            assert await _client_status(session, gw, "GET", "/v1/models", {"x-api-key": NEW_KEY}) == 200

        # 4. After kill -9 and a restart, the file decides.
        gw.kill9()
        gw.start()
        async with aiohttp.ClientSession() as session:
            await self._old_refused_kept_served(session, gw)
        log = gw.log()
        for key in (OLD_KEY, KEPT_KEY, NEW_KEY):
            assert key not in log

    @staticmethod
    async def _old_refused_kept_served(session: aiohttp.ClientSession, gw: GatewayProcess) -> None:
        for method, path, body in CLIENT_CALLS:
            for headers in _presentations(OLD_KEY):
                async with session.request(method, gw.url + path, headers=headers, json=body) as resp:
                    assert resp.status == 401, (method, path, headers)
                    assert (await resp.json())["error"]["code"] == "invalid_api_key"
            assert await _client_status(session, gw, method, path, {"Authorization": f"Bearer {KEPT_KEY}"}, body) == 200


# =============================================================================================
# No secret anywhere
# =============================================================================================

# Shaped unlike any credential pattern, so that only real masking hides them.
UPSTREAM_SECRET = "UpstreamSecretJ4qL8s"
CLIENT_SECRET = "ClientSecretB6wN2d"
PROXY_PASSWORD = "ProxyPasswordK1xC7f"
NEW_UPSTREAM_SECRET = "NewUpstreamSecretH3pY5"  # typed into files that are rejected
NEW_CLIENT_SECRET = "NewClientSecretM8tG6"
ENV = {"UP_KEY": UPSTREAM_SECRET, "CLIENT_KEY": CLIENT_SECRET, "MGMT_KEY": MGMT_KEY, "PROXY_PASSWORD": PROXY_PASSWORD}
RUNNING_SECRETS = (UPSTREAM_SECRET, CLIENT_SECRET, MGMT_KEY, PROXY_PASSWORD)
NEW_SECRETS = (NEW_UPSTREAM_SECRET, NEW_CLIENT_SECRET)


def _secret_config(bad: FakeUpstream, good: FakeUpstream) -> dict[str, Any]:
    def entry(name: str, url: str, **extra: Any) -> dict[str, Any]:
        return {"name": name, "base-url": url, "api-key-entries": [{"api-key": "${UP_KEY}", **extra}], "models": [{"name": "m"}]}

    return {
        "api-keys": ["${CLIENT_KEY}"],
        "remote-management": {"secret-key": "${MGMT_KEY}"},
        "auto-disable": {"failure-threshold": 2, "disable-duration-seconds": 600},
        "openai-compatibility": [
            {**entry("bad", bad.url), "priority": 2},
            {**entry("proxied", good.url, **{"proxy-url": "http://user:${PROXY_PASSWORD}@127.0.0.1:9"}), "priority": 1},
            entry("good", good.url),
        ],
    }


class TestNoSecretAnywhere:
    """After traffic, failures, management calls and rejected reloads: no key or proxy password in responses, stderr or events."""

    @pytest.mark.slow  # about 6 s
    async def test_rejected_reloads_and_changes(self, upstreams, tmp_path, processes) -> None:
        good, bad = await upstreams(), await upstreams()
        bad.fail(None, Fault(status=500, body={"error": {"message": f"invalid key {UPSTREAM_SECRET} for user x"}}))
        gw = _start(processes, tmp_path, {"log-level": "DEBUG", **_secret_config(bad, good)}, env=ENV)
        good_text = gw.config_path.read_text()
        seen: list[str] = []
        client = {"Authorization": f"Bearer {CLIENT_SECRET}"}

        async with aiohttp.ClientSession() as session:

            async def call(method: str, path: str, headers: dict[str, str], **kw: Any) -> int:
                async with session.request(method, gw.url + path, headers=headers, **kw) as resp:
                    text = await resp.text(errors="replace")
                    seen.append(f"{method} {path} -> {resp.status} {dict(resp.headers)}\n{text}")
                    return resp.status

            chat = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
            for _ in range(3):  # bad fails (echoing the key), proxied fails (dead proxy), good answers
                assert await call("POST", "/v1/chat/completions", client, json=chat) == 200
            assert await call("POST", "/v1/chat/completions", client, json={**chat, "stream": True}) == 200
            for path in (
                "/api/models/disabled",
                "/api/models/m/status",
                "/api/vendors",
                "/api/config",
                "/api/events?limit=1000",
                "/metrics",
            ):
                assert await call("GET", path, AUTH) == 200, path
            assert await call("PATCH", "/api/vendors/good", AUTH, json={"priority": 3, "headers": {"X-Trace": "on"}}) == 200
            assert await call("POST", "/api/models/m/disable?vendor=good", AUTH, json={"duration_seconds": 30}) == 200
            assert await call("POST", "/api/models/m/enable?vendor=good", AUTH) == 200
            assert await call("GET", "/api/vendors", {"Authorization": f"Bearer {UPSTREAM_SECRET}"}) == 401  # a wrong kind of key

            # Rejected reloads with new secrets typed literally into the file: a YAML error on a
            # secret's line, a wrong type beside one, and the running secrets written out literally.
            rejected = [
                good_text.replace("api-keys:", f'api-keys:\n- "{NEW_CLIENT_SECRET}\n- oops:'),
                good_text.replace("${UP_KEY}", NEW_UPSTREAM_SECRET, 1)
                .replace("priority: 2", "priority: high")
                .replace("${CLIENT_KEY}", CLIENT_SECRET)
                .replace("${UP_KEY}", UPSTREAM_SECRET)
                .replace("priority: 1", "priority: [1]"),
            ]

            async def reload_error(want: bool) -> None:
                async def looked_at() -> bool:
                    async with session.get(gw.url + "/api/config", headers=AUTH) as resp:
                        problems = (await resp.json())["last_reload_error"]
                        seen.append(json.dumps(problems))
                    return bool(problems) == want

                await eventually(looked_at, "the file to be looked at", interval=0.1)

            for text in rejected:  # through the file watcher (logged, recorded, shown in /api/config) ...
                gw.config_path.write_text(text)
                await reload_error(True)
                gw.config_path.write_text(good_text)
                await reload_error(False)
            for text in rejected:  # ... and through PUT /api/config.yaml
                assert (
                    await call("PUT", "/api/config.yaml", {**AUTH, "Content-Type": "application/yaml"}, data=text.encode()) == 400
                )
            assert await call("GET", "/api/config.yaml", AUTH) == 200  # the good file: ${VAR} placeholders only
            assert await call("GET", "/api/events?limit=1000", AUTH) == 200
            send_sighup(gw)
            await asyncio.sleep(0.5)

        assert gw.stop() == 0
        rows = _event_rows(tmp_path / "cliproxy.db")
        assert any("config-rejected" in row for row in rows)
        assert any("disabled" in row and "proxied" in row for row in rows)
        log = gw.log()
        assert "config reload" in log and "rejected" in log
        for secret in (*RUNNING_SECRETS, *NEW_SECRETS):
            for text in seen:
                assert secret not in text, f"a response holds {secret}:\n{text[:2000]}"
            assert secret not in log, f"stderr holds {secret}"
            assert secret not in repr(rows), f"the events table holds {secret}"
        assert not any(secret in good_text for secret in RUNNING_SECRETS)
        load_config(gw.config_path, env=ENV)

    async def test_secret_header_set_by_patch(self, upstreams, tmp_path, processes) -> None:
        good = await upstreams()
        gw = _start(processes, tmp_path, _management() | {"openai-compatibility": [vendor("azure", good.url, ["m"])]})
        header_secret = "AzureHeaderSecretZ2vQ9"
        async with aiohttp.ClientSession() as session:
            status, body, _ = await api(session, gw, "PATCH", "/api/vendors/azure", json={"headers": {"api-key": header_secret}})
            assert status == 200 and body["headers"]["api-key"] != header_secret  # masked in the vendor view
            _, _, events_text = await api(session, gw, "GET", "/api/events")
        rows = _event_rows(tmp_path / "cliproxy.db")
        assert header_secret not in events_text
        assert header_secret not in repr(rows)


# =============================================================================================
# Resource exhaustion: the gateway's own limits are never the upstream's failure
# =============================================================================================

CHAT = b'{"model":"m","messages":[{"role":"user","content":"hi"}]}'


def _keepalive_chat(body: bytes = CHAT) -> bytes:
    return (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )


async def _read_answer(reader: asyncio.StreamReader, timeout: float = 10) -> tuple[int, dict[str, str], bytes]:
    """One answer framed by its Content-Length (the connection stays open)."""
    async with asyncio.timeout(timeout):
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head[:-4].decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        body = await reader.readexactly(int(headers["content-length"]))
    return int(lines[0].split()[1]), headers, body


def _disabled_events(db: Path) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(db, timeout=5)
    try:
        return conn.execute("SELECT * FROM events WHERE kind = 'disabled'").fetchall()
    finally:
        conn.close()


class TestDescriptorExhaustion:
    """Idle clients that take every file descriptor make the gateway answer 503 gateway_overloaded; the healthy pair is never disabled."""

    NOFILE = 64

    async def test_out_of_descriptors_is_neutral(self, tmp_path, processes, upstreams) -> None:
        up = await upstreams()
        gw = GatewayProcess(
            tmp_path,
            {
                **_management(),
                "auto-disable": {"failure-threshold": 2},
                "openai-compatibility": [vendor("a", up.url, ["m"])],
            },
            nofile=self.NOFILE,
        )
        processes.append(gw.start())
        baseline = gw.open_descriptors()
        clients = [await asyncio.open_connection("127.0.0.1", gw.port) for _ in range(self.NOFILE + 20)]
        try:
            await eventually(
                lambda: gw.open_descriptors() >= self.NOFILE, "the gateway to run out of descriptors", timeout=15, interval=0.05
            )
            accepted = self.NOFILE - baseline
            assert accepted >= 5, accepted
            # Connections accepted first (FIFO) ask for a completion: the upstream socket cannot be opened.
            for reader, writer in clients[:5]:
                writer.write(_keepalive_chat())
                status, headers, body = await _read_answer(reader)
                assert status == 503, body
                assert headers["retry-after"] == "1"
                assert json.loads(body)["error"]["code"] == "gateway_overloaded"
        finally:
            for _, writer in clients:
                writer.close()
        await eventually(
            lambda: gw.open_descriptors() <= baseline + 2, "the idle connections to close", timeout=15, interval=0.05
        )
        async with aiohttp.ClientSession() as session:
            async with session.post(
                gw.url + "/v1/chat/completions", data=CHAT, headers={"Content-Type": "application/json"}
            ) as resp:
                assert resp.status == 200, await resp.text()
            status, body, _ = await api(session, gw, "GET", "/api/models/m/status")
            assert status == 200
            assert [(p["enabled"], p["auto_disabled"], p["failure_count"]) for p in body["pairs"]] == [(True, False, 0)], body
        assert _disabled_events(tmp_path / "cliproxy.db") == []
        log = gw.log()
        assert "Traceback" not in log
        # One line per interval with a count, not one per request (the next would come 10 s later).
        warnings = [
            line
            for line in log.splitlines()
            if "WARNING" in line and "gateway_overloaded:" in line and "upstream connect" in line
        ]
        assert len(warnings) == 1, log


class TestSlowAndIdleClients:
    """Slow headers are cut off after client-header-timeout; connections past max-connections get 503 and are closed."""

    @pytest.mark.parametrize(("nofile", "warned"), [(256, True), (4096, False)])
    async def test_a_descriptor_limit_below_max_connections_is_warned_at_start(self, tmp_path, processes, nofile, warned):
        gw = GatewayProcess(tmp_path, {**_management(), "max-connections": 1024}, nofile=nofile)
        processes.append(gw.start())
        await eventually(lambda: "listening on" in gw.log(), "the start-up lines")
        lines = [line for line in gw.log().splitlines() if "ulimit -n" in line]
        if warned:
            [line] = lines
            assert "WARNING" in line and "max-connections is 1024" in line and "is 256" in line, line
            assert "lower max-connections to 96" in line, line
        else:
            assert lines == []

    async def test_slowloris_headers_are_cut_off(self, tmp_path, processes) -> None:
        gw = _start(processes, tmp_path, {**_management(), "client-header-timeout": 1})
        head = _keepalive_chat()[: -len(CHAT) - 2]  # the header block without its final blank line
        slow = [await asyncio.open_connection("127.0.0.1", gw.port) for _ in range(20)]
        started = time.monotonic()
        closed_at: list[float] = []
        for i, byte in enumerate(head):  # noqa: B007 (i is checked after the loop)
            for reader, writer in slow:
                if not reader.at_eof():
                    try:
                        writer.write(bytes([byte]))
                        await writer.drain()
                    except ConnectionError:
                        pass
            await asyncio.sleep(0.05)
            if all(reader.at_eof() or reader.exception() for reader, _ in slow) or time.monotonic() - started > 5:
                break
        for reader, writer in slow:
            async with asyncio.timeout(5):
                with contextlib.suppress(ConnectionError):
                    assert await reader.read() == b""  # closed without an answer
            closed_at.append(time.monotonic() - started)
            writer.close()
        assert max(closed_at) < 3, closed_at  # 1 s timeout, well before the headers could have arrived
        assert i < len(head) - 1, "the slow client managed to send every header byte"
        async with aiohttp.ClientSession() as session:
            async with session.get(gw.url + "/v1/models") as resp:
                assert resp.status == 200

    async def test_connections_past_max_connections_get_503_and_are_closed(self, tmp_path, processes) -> None:
        gw = _start(processes, tmp_path, {**_management(), "max-connections": 5, "client-header-timeout": 30})
        # The start-up probe's connection counts until the gateway has seen it close, which under
        # load can come after the first held connections: then one of those five is the one refused.
        # So: five held, then the sixth, until the gateway has seen exactly those five.
        held: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

        async def sixth_is_refused() -> bytes:
            for _, w in held:
                w.close()
            held[:] = [await asyncio.open_connection("127.0.0.1", gw.port) for _ in range(5)]
            reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
            try:
                async with asyncio.timeout(1):
                    return await reader.read()  # the gateway closes it at once, before we send anything
            except TimeoutError:
                return b""
            finally:
                writer.close()

        answer = await eventually(sixth_is_refused, "the connection past max-connections to be answered and closed", timeout=15)
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 503"), answer
        assert b"Retry-After: 1" in head
        assert json.loads(body)["error"]["code"] == "gateway_overloaded"
        for _, w in held:
            w.close()

        async def served() -> bool:
            try:
                async with aiohttp.ClientSession() as session, session.get(gw.url + "/v1/models") as resp:
                    return resp.status == 200
            except aiohttp.ClientError:
                return False

        await eventually(served, "a connection to be served after the held ones closed", timeout=10, interval=0.05)

    async def test_a_client_that_stops_reading_has_its_upstream_request_cancelled(self, tmp_path, processes, upstreams) -> None:
        up = await upstreams()
        up.fail("m", Fault(big_body_bytes=200 * 1024 * 1024))  # far more than every buffer on the way holds
        gw = _start(
            processes,
            tmp_path,
            {
                **_management(),
                "client-write-timeout": 1,
                "auto-disable": {"failure-threshold": 1},
                "openai-compatibility": [vendor("a", up.url, ["m"])],
            },
        )
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", gw.port))
        await asyncio.get_running_loop().sock_sendall(sock, _keepalive_chat())
        try:
            await eventually(lambda: up.disconnects == 1, "the upstream request to be cancelled", timeout=30)
        finally:
            sock.close()
        async with aiohttp.ClientSession() as session:
            status, body, _ = await api(session, gw, "GET", "/api/models/m/status")
        assert [(p["enabled"], p["failure_count"]) for p in body["pairs"]] == [(True, 0)], body
        assert _disabled_events(tmp_path / "cliproxy.db") == []
        assert "client_write_timeout" in gw.log()

    @pytest.mark.slow  # about 5 s
    async def test_300_slowloris_connections_hold_nothing_past_the_header_timeout(self, tmp_path, processes) -> None:
        gw = _start(processes, tmp_path, {**_management(), "client-header-timeout": 1})
        baseline = gw.open_descriptors()
        head = _keepalive_chat()[: -len(CHAT) - 2]
        slow = [await asyncio.open_connection("127.0.0.1", gw.port) for _ in range(300)]
        started = time.monotonic()
        # Each keeps dripping a header byte every 200 ms, as a slowloris does to stay alive: past the
        # 1 s header timeout the gateway must have closed every one (reads below end with b"").
        byte = 0
        while time.monotonic() - started < 4:
            for reader, writer in slow:
                if not reader.at_eof():
                    with contextlib.suppress(ConnectionError):
                        writer.write(head[byte : byte + 1])
            byte += 1
            await asyncio.sleep(0.2)
        await eventually(lambda: gw.open_descriptors() <= baseline + 2, "the slow connections to be closed", timeout=10)
        async with asyncio.timeout(5):
            for reader, writer in slow:
                with contextlib.suppress(ConnectionError):
                    assert await reader.read() == b""  # closed without an answer
                writer.close()
        async with aiohttp.ClientSession() as session, session.get(gw.url + "/v1/models") as resp:
            assert resp.status == 200

    @pytest.mark.parametrize("stream", [True, False])
    async def test_a_client_that_resets_right_after_sending_is_an_info_line(self, tmp_path, processes, upstreams, stream) -> None:
        up = await upstreams()
        gw = _start(
            processes,
            tmp_path,
            {
                **_management(),
                "auto-disable": {"failure-threshold": 1},
                "openai-compatibility": [vendor("a", up.url, ["m"])],
            },
        )
        body = json.dumps({**CHAT_JSON, "stream": stream}).encode()
        resets = 0
        for delay in (0, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.01, 0.03):  # the race is narrow: many tries
            for _ in range(16):
                sock = socket.create_connection(("127.0.0.1", gw.port))
                sock.sendall(_keepalive_chat(body))
                if delay:
                    await asyncio.sleep(delay)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close = RST
                sock.close()
                resets += 1
        await eventually(
            lambda: gw.log().count("cliproxy.access") >= resets, "an access line per reset request", timeout=15, interval=0.05
        )
        log = gw.log()
        assert "Traceback" not in log and " ERROR " not in log, log
        assert all(" INFO " in line for line in log.splitlines() if "cliproxy.access" in line)
        async with aiohttp.ClientSession() as session:
            status, answer, _ = await api(session, gw, "GET", "/api/models/m/status")
        assert [(p["enabled"], p["failure_count"]) for p in answer["pairs"]] == [(True, 0)], answer
        assert _disabled_events(tmp_path / "cliproxy.db") == []


# =============================================================================================
# Headers at the edge
# =============================================================================================

CHAT_JSON = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


class TestConnectionNamedRequestHeaders:
    """Headers the client's `Connection` header names are hop-by-hop (RFC 9110 7.6.1): they never reach the upstream."""

    async def test_named_headers_stay_behind(self, upstreams, tmp_path, processes) -> None:
        up = await upstreams()
        gw = _start(processes, tmp_path, {"openai-compatibility": [vendor("a", up.url, ["m"])]})
        body = json.dumps(CHAT_JSON).encode()
        status, _, text = await raw_request(
            gw.port,
            http(
                "POST",
                "/v1/chat/completions",
                [
                    ("Content-Type", "application/json"),
                    ("Connection", "X-Hop-Secret, x-other-hop"),  # a second Connection line: one list with the first ("close")
                    ("X-Hop-Secret", "HopSecretV4lue"),
                    ("X-Other-Hop", "1"),
                    ("X-Kept", "kept"),
                ],
                body,
            ),
        )
        assert status == 200, text
        sent = {k.lower(): v for k, v in up.requests[-1].headers.items()}
        assert sent["x-kept"] == "kept"  # an ordinary header still goes through
        assert "x-hop-secret" not in sent and "x-other-hop" not in sent
        assert "HopSecretV4lue" not in repr(up.requests[-1])


# What an upstream (or the CDN in front of it) may send that must not act on the client as if cliproxy said it.
HOSTILE_RESPONSE_HEADERS = {
    "Set-Cookie": "session=UpstreamCookieV4l; Path=/; HttpOnly",
    "Set-Cookie2": "legacy=1",
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Credentials": "true",
    "Strict-Transport-Security": "max-age=31536000; includeSubDomains",
    "Alt-Svc": 'h3=":443"; ma=86400',
    "Keep-Alive": "timeout=5",
    "Proxy-Authenticate": "Basic realm=x",
    "X-Powered-By": "Express",
    "Connection": "keep-alive, x-ratelimit-hop",  # names an allow-listed-looking header: hop-by-hop after all
    "x-ratelimit-hop": "1",
}
RELAYED_RESPONSE_HEADERS = {
    "x-ratelimit-remaining-requests": "42",
    "x-ratelimit-reset-tokens": "6ms",
    "openai-processing-ms": "17",
    "openai-version": "2020-10-01",
    "openai-model": "gpt-4o-mini-2024-07-18",
    "openai-organization": "org-demo",
    "request-id": "req_upstream_1",
    "retry-after-ms": "250",
}


class TestUpstreamResponseHeaders:
    """Upstream response headers reach the client from an allow-list: cookies, CORS, HSTS, Alt-Svc, hop-by-hop stay behind."""

    @pytest.mark.parametrize("case", ["plain", "stream", "relayed 429"])
    async def test_only_allow_listed_headers_are_relayed(self, upstreams, tmp_path, processes, case) -> None:
        up = await upstreams()
        extra = {**HOSTILE_RESPONSE_HEADERS, **RELAYED_RESPONSE_HEADERS}
        up.fail(None, Fault(headers=extra, **({"status": 429} if case == "relayed 429" else {})))
        gw = _start(processes, tmp_path, {"openai-compatibility": [vendor("a", up.url, ["m"])]})
        async with aiohttp.ClientSession() as session:
            body = {**CHAT_JSON, "stream": case == "stream"}
            async with session.post(gw.url + "/v1/chat/completions", json=body) as resp:
                await resp.read()
                got = {k.lower(): v for k, v in resp.headers.items()}
                assert resp.status == (429 if case == "relayed 429" else 200)
        assert up.faults_applied == 1  # the upstream did send them
        for name, value in RELAYED_RESPONSE_HEADERS.items():
            assert got.get(name) == value, (name, got)
        for name in HOSTILE_RESPONSE_HEADERS:
            if name.lower() != "connection":
                assert name.lower() not in got, (name, got)
        assert got["x-cliproxy-vendor"] == "a" and got["x-request-id"]
        assert got["content-type"].startswith("text/event-stream" if case == "stream" else "application/json")
        assert ("cache-control" in got) == (case == "stream")  # the upstream's no-cache, on streams only


# =============================================================================================
# Web pages: DNS rebinding and foreign origins
# =============================================================================================


class TestWebPagesCannotUseALoopbackGateway:
    """On loopback, a Host that is not a loopback name is 421 and a foreign Origin is 403 (/v1, /api, /metrics); no Origin is fine."""

    LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "LOCALHOST", "app.localhost", "[::1]", "127.0.0.2")
    FOREIGN_HOSTS = ("evil.example", "localhost.evil.example", "127.0.0.1.nip.io", "attacker", "[::2]", "localhost:x")
    PATHS = (
        ("GET", "/v1/models"),
        ("POST", "/v1/chat/completions"),
        ("GET", "/api/vendors"),
        ("GET", "/metrics"),
        ("GET", "/healthz"),
    )

    async def test_rebound_host_is_421(self, upstreams, tmp_path, processes) -> None:
        up = await upstreams()
        gw = _start(processes, tmp_path, {**_management(), "openai-compatibility": [vendor("a", up.url, ["m"])]})
        body = json.dumps(CHAT_JSON).encode()
        for method, path in self.PATHS:
            data = body if method == "POST" else b""
            extra = [*AUTH.items(), ("Content-Type", "application/json")]
            for host in self.FOREIGN_HOSTS:
                for with_port in (f"{host}:{gw.port}", host):
                    request = http(method, path, extra, data).replace(b"Host: 127.0.0.1", f"Host: {with_port}".encode())
                    status, _, text = await raw_request(gw.port, request)
                    assert status == 421, (method, path, with_port, status, text[:300])
                    assert json.loads(text)["error"]["code"] == "misdirected_request"
            for host in self.LOOPBACK_HOSTS:
                request = http(method, path, extra, data).replace(b"Host: 127.0.0.1", f"Host: {host}:{gw.port}".encode())
                status, _, text = await raw_request(gw.port, request)
                assert status == 200, (method, path, host, status, text[:300])
        assert up.request_count == len(self.LOOPBACK_HOSTS)  # only the loopback-named chats went upstream

    async def test_foreign_origin_is_403_and_no_origin_is_served(self, upstreams, tmp_path, processes) -> None:
        up = await upstreams()
        gw = _start(
            processes,
            tmp_path,
            {
                **_management(),
                "cors-allow-origins": ["https://app.example.com"],
                "openai-compatibility": [vendor("a", up.url, ["m"])],
            },
        )
        foreign = (
            "https://evil.example",
            "http://app.example.com",
            "https://app.example.com.evil.example",
            "null",
            "http://localhost:3000",
        )
        async with aiohttp.ClientSession() as session:
            for method, path in self.PATHS[:4]:
                body = CHAT_JSON if method == "POST" else None
                for origin in foreign:
                    async with session.request(method, gw.url + path, headers={**AUTH, "Origin": origin}, json=body) as resp:
                        assert resp.status == 403, (method, path, origin, resp.status)
                        error = (await resp.json())["error"]
                        assert error["code"] == "origin_not_allowed" and error["type"] == "permission_error"
                        assert "access-control-allow-origin" not in {k.lower() for k in resp.headers}
                for headers in (AUTH, {**AUTH, "Origin": "https://app.example.com"}):  # no Origin, or an allowed one
                    async with session.request(method, gw.url + path, headers=headers, json=body) as resp:
                        assert resp.status == 200, (method, path, headers, resp.status)
            assert up.request_count == 2  # the refused chats never went upstream
            # Refused pages do not count as wrong management keys: the lock-out is untouched.
            for _ in range(10):
                async with session.get(
                    gw.url + "/api/vendors", headers={"Authorization": "Bearer wrong", "Origin": "https://evil.example"}
                ) as resp:
                    assert resp.status == 403
            status, _, _ = await api(session, gw, "GET", "/api/vendors")
            assert status == 200
        assert [row for row in _event_rows(tmp_path / "cliproxy.db")] == []


# =============================================================================================
# Vendor header values and upstream error text
# =============================================================================================

SUBSCRIPTION_KEY = "OcpSubscriptionV7bN3x"
AUTH_KEY_HEADER = "XAuthKeyValueL2mP8q"
PATCHED_HEADER = "PatchedHeaderK9wR4t"
PLAIN_HEADER = "just an app name"


class TestVendorHeaderValuesAreSecrets:
    """Vendor `headers` values are masked in GET /api/vendors, GET /api/config, PATCH answers, events and the log."""

    async def test_header_values_never_shown(self, upstreams, tmp_path, processes) -> None:
        up = await upstreams()
        headers = {"Ocp-Apim-Subscription-Key": SUBSCRIPTION_KEY, "X-Auth-Key": AUTH_KEY_HEADER, "X-Title": PLAIN_HEADER}
        gw = _start(
            processes,
            tmp_path,
            {"log-level": "DEBUG", **_management(), "openai-compatibility": [vendor("a", up.url, ["m"], headers=headers)]},
        )
        seen: list[str] = []
        async with aiohttp.ClientSession() as session:
            async with session.post(gw.url + "/v1/chat/completions", json=CHAT_JSON) as resp:
                assert resp.status == 200
            sent = {k.lower(): v for k, v in up.requests[-1].headers.items()}
            assert sent["ocp-apim-subscription-key"] == SUBSCRIPTION_KEY and sent["x-auth-key"] == AUTH_KEY_HEADER  # still sent
            for path in ("/api/vendors", "/api/config"):
                status, body, text = await api(session, gw, "GET", path)
                assert status == 200
                seen.append(text)
            vendors = json.loads(seen[0])["vendors"]
            assert set(vendors[0]["headers"]) == set(headers)  # the names are shown, the values are not
            status, body, text = await api(
                session, gw, "PATCH", "/api/vendors/a", json={"headers": {"X-Auth-Key": PATCHED_HEADER, "X-Title": PLAIN_HEADER}}
            )
            assert status == 200, text
            seen.append(text)
            async with session.post(gw.url + "/v1/chat/completions", json=CHAT_JSON) as resp:
                assert resp.status == 200
            assert {k.lower(): v for k, v in up.requests[-1].headers.items()}["x-auth-key"] == PATCHED_HEADER
            status, body, text = await api(session, gw, "GET", "/api/events")
            assert [e["kind"] for e in body["events"]] == ["vendor-changed"]
            seen.append(text)
        assert gw.stop() == 0
        rows = repr(_event_rows(tmp_path / "cliproxy.db"))
        log = gw.log()
        for value in (SUBSCRIPTION_KEY, AUTH_KEY_HEADER, PATCHED_HEADER, PLAIN_HEADER):
            for text in seen:
                assert value not in text, f"a response shows {value}:\n{text[:2000]}"
            assert value not in rows, f"the events table holds {value}"
            assert value not in log, f"the log holds {value}"


# Secrets shaped so that only real masking hides them, with characters that JSON and URL encoding change.
ECHO_CLIENT_KEY = "Client+Key/B6w=N2d&x"  # URL-encoded in the echo
ECHO_MGMT_KEY = 'Mgmt"Key\\Q7rT2wX9zL'  # JSON-escaped in the echo (a quote and a backslash)
ECHO_OWN_KEY = "OwnVendorKeyJ4qL8sWw"  # base64 inside Basic credentials in the echo
ECHO_OTHER_KEY = "OtherVendorKeyR5nV1x"  # another vendor's key, as written
ECHO_HEADER = "HeaderSecretZ2vQ9xyz"  # a vendor header value, as written
ECHO_ENV = {
    "ECHO_CLIENT": ECHO_CLIENT_KEY,
    "ECHO_MGMT": ECHO_MGMT_KEY,
    "ECHO_OWN": ECHO_OWN_KEY,
    "ECHO_OTHER": ECHO_OTHER_KEY,
    "ECHO_HEADER": ECHO_HEADER,
}


class TestUpstreamErrorTextIsMasked:
    """An upstream error is masked of every configured secret, as written, JSON-escaped, URL-encoded and base64, before it is relayed, stored or logged."""

    async def test_every_secret_in_every_form(self, upstreams, tmp_path, processes) -> None:
        from base64 import b64encode
        from urllib.parse import quote

        bad, other = await upstreams(), await upstreams()
        echoes = [
            quote(ECHO_CLIENT_KEY, safe=""),
            json.dumps(ECHO_MGMT_KEY)[1:-1],
            "Basic " + b64encode(f"user:{ECHO_OWN_KEY}".encode()).decode(),
            ECHO_OTHER_KEY,
            ECHO_HEADER,
        ]
        echo = "echo: " + " | ".join(echoes)
        assert len(echo) < 190  # all of it fits in the stored excerpt
        bad.fail(None, Fault(status=500, body=echo))
        config = {
            "api-keys": ["${ECHO_CLIENT}"],
            "remote-management": {"secret-key": "${ECHO_MGMT}"},
            "auto-disable": {"failure-threshold": 1},
            "openai-compatibility": [
                {
                    "name": "bad",
                    "base-url": bad.url,
                    "api-key-entries": [{"api-key": "${ECHO_OWN}"}],
                    "headers": {"X-Auth-Key": "${ECHO_HEADER}"},
                    "models": [{"name": "m"}],
                },
                {
                    "name": "other",
                    "base-url": other.url,
                    "api-key-entries": [{"api-key": "${ECHO_OTHER}"}],
                    "models": [{"name": "o"}],
                },
            ],
        }
        gw = _start(processes, tmp_path, config, env=ECHO_ENV)
        seen: list[str] = []
        auth = {"Authorization": f"Bearer {ECHO_MGMT_KEY}"}
        async with aiohttp.ClientSession() as session:
            async with session.post(
                gw.url + "/v1/chat/completions", json=CHAT_JSON, headers={"x-api-key": ECHO_CLIENT_KEY}
            ) as resp:
                assert resp.status == 500  # the last upstream error, relayed as it came ...
                relayed = await resp.text()
                assert relayed.startswith("echo: ") and relayed.count("***") == len(echoes)  # ... masked
                seen.append(relayed)
            for path in ("/api/models/disabled", "/api/events"):
                async with session.get(gw.url + path, headers=auth) as resp:
                    assert resp.status == 200
                    seen.append(await resp.text())
        assert "echo: " in seen[1] and "echo: " in seen[2]  # the stored excerpt is there (masked, below)
        assert gw.stop() == 0
        rows = repr(_event_rows(tmp_path / "cliproxy.db"))
        assert "echo: " in rows
        log = gw.log()
        assert "echo: " in log  # the disable's log line quotes the error
        for form in echoes:
            for text in (*seen, rows, log):
                assert form not in text, f"{form!r} leaked into:\n{text[:2000]}"


def send_sighup(gw: GatewayProcess) -> None:
    """SIGHUP: one more reload (of the good file: a no-op) through the signal path."""
    assert gw.process is not None
    gw.process.send_signal(signal.SIGHUP)


def test_the_config_written_by_the_tests_loads() -> None:
    """The helpers' configs are valid (a typo here would make the security tests pass for the wrong reason)."""
    from cliproxy.services.config_loader import parse_config

    parse_config(yaml.safe_dump(_management()), env={})
    parse_config(yaml.safe_dump(_management(**{"trusted-proxies": ["127.0.0.1"], "allow-remote": True})), env={})
    dummy = FakeUpstream()
    dummy.url = "http://127.0.0.1:9/v1"
    parse_config(yaml.safe_dump(_secret_config(dummy, dummy)), env=ENV)
    parse_config(yaml.safe_dump(_client_config(dummy, [OLD_KEY, KEPT_KEY])), env={})
