"""What the tests share: `eventually()`, the factories (configs, vendors, a fake clock), a raw-HTTP
client for requests aiohttp's client will not send, and `Admin`, the management client that checks
every reply against the served OpenAPI document.

Subprocess gateways (`GatewayProcess`, `free_port`) are in tests/processes.py; the fixtures that
start things (`upstreams`, `gateway`, `admin`) are in tests/conftest.py.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

import jsonschema
import openai
import yaml
from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient
from yarl import URL

from cliproxy.core.config import Config
from cliproxy.services.config_loader import load_config, parse_config
from cliproxy.web.admin.openapi import build_document
from cliproxy.web.keys import STORE, TRACKER

T = TypeVar("T")

# ---------------------------------------------------------------------------------------------
# Polling
# ---------------------------------------------------------------------------------------------


async def eventually(
    condition: Callable[[], T | Awaitable[T]], what: str = "the condition", *, timeout: float = 5.0, interval: float = 0.02
) -> T:
    """Poll `condition` (a plain or an async function) until it returns something truthy, and return that.

    A condition may also assert: an AssertionError counts as "not yet". After `timeout` seconds the
    test fails, naming `what` it waited for and the last value (or assertion) seen, so a timeout
    says what was wrong rather than only that time ran out. The deadline is the monotonic clock's:
    the only clock a poll of another process or of background tasks can use.
    """
    deadline = time.monotonic() + timeout
    while True:
        last: Any
        try:
            value = condition()
            if inspect.isawaitable(value):
                value = await value
            if value:
                return value  # type: ignore[return-value]
            last = value
        except AssertionError as failed:
            last = failed
        if time.monotonic() >= deadline:
            shown = f"{type(last).__name__}: {last}" if isinstance(last, AssertionError) else repr(last)
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {shown[-3000:]}")
        await asyncio.sleep(interval)


# ---------------------------------------------------------------------------------------------
# Factories
# ---------------------------------------------------------------------------------------------


class FakeClock:
    """Wall-clock seconds that move only when told to."""

    def __init__(self, t: float = 1_800_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


def make_config(data: dict[str, Any], env: dict[str, str] | None = None) -> Config:
    """A `Config` through the real loader, from a dict written as YAML."""
    return parse_config(yaml.safe_dump(data, sort_keys=False), env=env or {})


def vendor(name: str, url: str, models: list[Any], **extra: Any) -> dict[str, Any]:
    """A vendor entry; models given as names or as dicts."""
    entries = [m if isinstance(m, dict) else {"name": m} for m in models]
    return {
        "name": name,
        "base-url": url,
        "api-key-entries": [{"api-key": f"sk-{name}-upstream-key-0001"}],
        "models": entries,
        **extra,
    }


@dataclass
class Gateway:
    """The real gateway app on a real port (the `gateway` fixture): an aiohttp client and an SDK client."""

    app: web.Application
    client: TestClient
    sdk: openai.AsyncOpenAI

    @property
    def url(self) -> str:
        return str(self.client.make_url("/v1"))


def changed_lines(before: str, after: str) -> tuple[list[str], list[str]]:
    """(removed, added) lines, from difflib."""
    import difflib

    removed: list[str] = []
    added: list[str] = []
    for line in difflib.ndiff(before.splitlines(), after.splitlines()):
        if line.startswith("- "):
            removed.append(line[2:])
        elif line.startswith("+ "):
            added.append(line[2:])
    return removed, added


# ---------------------------------------------------------------------------------------------
# Raw HTTP: requests the aiohttp client would refuse to send, answers read byte by byte
# ---------------------------------------------------------------------------------------------

#: The client key of `plain_gateway_config` and a valid chat body for it.
AUTH = {"Authorization": "Bearer client-key"}
GOOD_BODY = b'{"model":"m","messages":[{"role":"user","content":"hi"}]}'
#: `max-body-bytes` of `plain_gateway_config`.
BODY_LIMIT = 1024 * 1024


def plain_gateway_config(upstream_url: str) -> dict[str, Any]:
    """One vendor `a` serving `m`, client key `client-key`, a 1 MiB body limit."""
    return {"api-keys": ["client-key"], "max-body-bytes": BODY_LIMIT, "openai-compatibility": [vendor("a", upstream_url, ["m"])]}


def assert_openai_error(body: bytes, code: str | None = None) -> dict[str, Any]:
    payload = json.loads(body)
    assert isinstance(payload, dict) and set(payload) == {"error"}, payload
    error = payload["error"]
    assert set(error) == {"message", "type", "param", "code"}, payload
    assert isinstance(error["message"], str) and error["message"]
    if code is not None:
        assert error["code"] == code, payload
    return error


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    out = []
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        if size == 0:
            await reader.readuntil(b"\r\n")
            return b"".join(out)
        out.append(await reader.readexactly(size))
        await reader.readexactly(2)


async def raw_request(
    port: int, head: bytes, body: bytes = b"", *, piece: int = 0, pause: float = 0.0, timeout: float = 10.0
) -> RawResponse:
    """Send bytes as they are (`piece` bytes every `pause` seconds when given) and read one answer.

    The answer is framed by its own headers, not by EOF: after refusing a body it has not read,
    aiohttp keeps the connection open for a while to drain it.
    """
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        async with asyncio.timeout(timeout):
            writer.write(head)
            if piece:
                for start in range(0, len(body), piece):
                    writer.write(body[start : start + piece])
                    await writer.drain()
                    await asyncio.sleep(pause)
            else:
                writer.write(body)
            await writer.drain()
            header_block = await reader.readuntil(b"\r\n\r\n")
            lines = header_block[:-4].split(b"\r\n")
            status = int(lines[0].split()[1])
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                headers[name.decode("latin-1").strip().lower()] = value.decode("latin-1").strip()
            if headers.get("transfer-encoding") == "chunked":
                content = await _read_chunked(reader)
            elif "content-length" in headers:
                content = await reader.readexactly(int(headers["content-length"]))
            else:
                content = await reader.read()
    finally:
        writer.close()
    return RawResponse(status, headers, content)


def request_head(headers: list[tuple[bytes, bytes]], length: int | None, path: bytes = b"/v1/chat/completions") -> bytes:
    lines = [b"POST " + path + b" HTTP/1.1", b"Host: localhost", b"Connection: close"]
    if length is not None:
        lines.append(b"Content-Length: " + str(length).encode())
    lines += [name + b": " + value for name, value in headers]
    return b"\r\n".join(lines) + b"\r\n\r\n"


async def assert_still_answers(gw: Gateway) -> None:
    """A good request after whatever the test sent is answered 200 with a chat completion."""
    resp = await gw.client.post("/v1/chat/completions", data=GOOD_BODY, headers=AUTH)
    assert resp.status == 200
    assert json.loads(await resp.read())["object"] == "chat.completion"


# ---------------------------------------------------------------------------------------------
# The management API: a config file, the app on it, a client that checks every reply against the document
# ---------------------------------------------------------------------------------------------

MGMT_KEY = "mgmt-secret-key-0123456789"
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def write_config(tmp_path: Path, data: dict[str, Any] | str) -> Config:
    """A config file in tmp_path (YAML from a dict, or text as given) loaded by the real loader."""
    path = tmp_path / "config.yaml"
    if isinstance(data, dict):
        data = {
            "database": str(tmp_path / "cliproxy.db"),
            "remote-management": {"secret-key": MGMT_KEY},
            **data,
        }
        data = yaml.safe_dump(data, sort_keys=False)
    path.write_text(data, encoding="utf-8")
    return load_config(path)


def _template_regex(template: str) -> re.Pattern[str]:
    pattern = re.escape(template).replace(r"\{model\}", ".+").replace(r"\{name\}", "[^/]+").replace(r"\{index\}", "[^/]+")
    return re.compile(f"^{pattern}$")


@cache
def _document() -> tuple[dict[str, Any], list[tuple[re.Pattern[str], str]]]:
    """The served OpenAPI document and its path templates as regexes (built once, on first use)."""
    doc = build_document()
    return doc, [(_template_regex(p), p) for p in doc["paths"]]


def doc_schema_for(method: str, raw_path: str, status: int, content_type: str) -> dict[str, Any] | None:
    """The documented schema of this reply; fails the test when the reply is not documented."""
    doc, all_templates = _document()
    templates = [t for regex, t in all_templates if regex.match(raw_path)]
    if not templates:  # an unknown /api path: only the access rules' answers, in the error shape
        assert status in (401, 403, 404, 429), f"{raw_path} is not in the OpenAPI document and answered {status}"
        return {"$ref": "#/components/schemas/Error"}
    operation = doc["paths"][templates[0]].get(method.lower())
    assert operation is not None, f"{method} {templates[0]} is not documented"
    response = operation["responses"].get(str(status))
    assert response is not None, f"{method} {templates[0]} answered {status}, which is not documented"
    content = response["content"]
    assert content_type in content, f"{method} {templates[0]} {status}: {content_type} not documented ({list(content)})"
    return content[content_type]["schema"]


def check_against_document(method: str, raw_path: str, status: int, content_type: str, body: Any) -> None:
    schema = doc_schema_for(method, raw_path, status, content_type)
    if content_type != "application/json":
        assert isinstance(body, str)
        return
    jsonschema.Draft202012Validator({**schema, "components": _document()[0]["components"]}).validate(body)


@dataclass
class Reply:
    status: int
    headers: Any
    text: str
    json: Any = None


@dataclass
class Admin:
    """A management client for one gateway; validates every reply against the OpenAPI document."""

    gw: Any
    config_path: Path | None
    key: str | None = MGMT_KEY
    bodies: list[str] = field(default_factory=list)

    @property
    def app(self) -> Any:
        return self.gw.app

    async def call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        data: Any = None,
        headers: dict[str, str] | None = None,
        key: str | None = "default",
    ) -> Reply:
        sent = dict(headers or {})
        key = self.key if key == "default" else key
        if key is not None:
            sent.setdefault("Authorization", f"Bearer {key}")
        url = URL(path, encoded=True)
        resp: ClientResponse = await self.gw.client.request(method, url, json=json, data=data, headers=sent)
        text = await resp.text()
        self.bodies.append(text)
        content_type = resp.content_type
        body: Any = text
        if content_type == "application/json":
            import json as _json

            body = _json.loads(text)
        if path.startswith("/api"):
            check_against_document(method, url.raw_path, resp.status, content_type, body)
        return Reply(resp.status, resp.headers, text, body if content_type == "application/json" else None)

    async def get(self, path: str, **kw: Any) -> Reply:
        return await self.call("GET", path, **kw)

    async def post(self, path: str, **kw: Any) -> Reply:
        return await self.call("POST", path, **kw)

    async def patch(self, path: str, **kw: Any) -> Reply:
        return await self.call("PATCH", path, **kw)

    async def chat(self, model: str = "m") -> ClientResponse:
        resp = await self.gw.client.post("/v1/chat/completions", json={**CHAT, "model": model})
        await resp.read()
        return resp

    async def events(self, **filters: Any) -> list[Any]:
        await self.app[TRACKER].flush(timeout=5)
        return await self.app[STORE].events(**filters)

    def file(self) -> str:
        assert self.config_path is not None
        return self.config_path.read_text(encoding="utf-8")


def admin_starter(gateway: Any, tmp_path: Path) -> Any:
    """What the `admin` fixture gives: start the gateway on a config file written from a dict (or text)."""

    async def start(data: dict[str, Any] | str, **create_kwargs: Any) -> Admin:
        config = write_config(tmp_path, data)
        gw = await gateway(config, **create_kwargs)
        return Admin(gw, Path(config.path) if config.path else None)

    return start
