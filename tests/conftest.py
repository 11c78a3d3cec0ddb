"""Shared fixtures: real fake upstreams on real ports, the real gateway app, the official `openai` SDK."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import openai
import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestClient

from cliproxy.app import create_app
from cliproxy.core.config import Config
from cliproxy.services.config_loader import parse_config
from cliproxy.fake_upstream import FakeUpstream


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
    return {"name": name, "base-url": url, "api-key-entries": [{"api-key": f"sk-{name}-upstream-key-0001"}], "models": entries, **extra}


@dataclass
class Gateway:
    app: web.Application
    client: TestClient
    sdk: openai.AsyncOpenAI

    @property
    def url(self) -> str:
        return str(self.client.make_url("/v1"))


@pytest.fixture
async def upstreams() -> AsyncIterator[Callable[..., Awaitable[FakeUpstream]]]:
    """Start any number of fake upstreams; all are stopped after the test."""
    started: list[FakeUpstream] = []

    async def start(**kwargs: Any) -> FakeUpstream:
        fake = FakeUpstream(**kwargs)
        await fake.start()
        started.append(fake)
        return fake

    yield start
    for fake in started:
        await fake.stop()


@pytest.fixture
async def gateway(aiohttp_client: Any, tmp_path: Any) -> AsyncIterator[Callable[..., Awaitable[Gateway]]]:
    """Start the real gateway app on a real port for a config dict; gives an aiohttp client and an SDK client."""
    sdks: list[openai.AsyncOpenAI] = []

    async def start(data: dict[str, Any] | Config, *, api_key: str = "client-key", app: web.Application | None = None, **create_kwargs: Any) -> Gateway:
        if not isinstance(data, Config):
            data = {"database": str(tmp_path / "cliproxy.db"), **data}
        config = data if isinstance(data, Config) else make_config(data)
        application = app or create_app(config, **create_kwargs)
        client = await aiohttp_client(application)
        sdk = openai.AsyncOpenAI(base_url=str(client.make_url("/v1")), api_key=api_key, max_retries=0, timeout=10)
        sdks.append(sdk)
        return Gateway(application, client, sdk)

    yield start
    for sdk in sdks:
        await sdk.close()
