"""Shared fixtures: real fake upstreams on real ports, the real gateway app, the official `openai` SDK,
the management client. What tests import (factories, `eventually`, clients) is in tests/helpers.py."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import openai
import pytest
from aiohttp import web

from cliproxy.app import create_app
from cliproxy.core.config import Config
from cliproxy.fake_upstream import FakeUpstream
from tests.helpers import Admin, Gateway, admin_starter, make_config


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

    async def start(
        data: dict[str, Any] | Config, *, api_key: str = "client-key", app: web.Application | None = None, **create_kwargs: Any
    ) -> Gateway:
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


@pytest.fixture
def admin(gateway: Callable[..., Awaitable[Gateway]], tmp_path: Any) -> Callable[..., Awaitable[Admin]]:
    """Start the gateway on a config file written from a dict (or text); returns an `Admin`."""
    return admin_starter(gateway, tmp_path)
