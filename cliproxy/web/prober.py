"""The prober of `recovery: probe`: when a pair's disable ends, cliproxy itself asks the vendor.

The tracker decides (`FailureTracker.pairs_due_for_probe`, `probes_due`); this module only does the
HTTP, which the services layer may not. One probe per pair at a time: `POST {probe.path}` at the
vendor's base URL with the vendor's headers and the next key of its rotation, the configured body
(the pair's upstream model filled in when the body names none) or by default one user message
`ping` with `max_tokens: 1`, within `probe-timeout-seconds`. An `api-format: anthropic` vendor is
asked in its own API: the key as `x-api-key`, an `anthropic-version`, and by default `POST /messages`
(the default body is a valid Messages request too). A 2xx answer ends the disable; anything
else (another status, a timeout, a refused connection) re-disables the pair at the next backoff
level. The probe is built from the config alone: it never carries a client's data.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from cliproxy.core.anthropic import DEFAULT_ANTHROPIC_VERSION, MESSAGES_PATH
from cliproxy.core.config import ProbeSpec
from cliproxy.core.events import ErrorInfo
from cliproxy.core.redact import excerpt
from cliproxy.core.routing import Pair
from cliproxy.web.keys import CLIENT_SESSION, RUNTIME, TRACKER

__all__ = ["probe_body", "probe_path", "prober_context", "send_probe"]

_log = logging.getLogger("cliproxy.tracker")
_ERROR_BODY_LIMIT = 4096
_DEFAULT_PROBE_PATH = ProbeSpec().path


def probe_body(pair: Pair) -> bytes:
    """The probe's JSON body for `pair`: the configured one (with the pair's upstream model when it
    names none), or the default chat probe."""
    spec = pair.auto_disable.probe
    if spec.body is None:
        body: dict[str, object] = {"model": pair.model.name, "messages": [{"role": "user", "content": "ping"}], "max_tokens": 1}
    else:
        body = json.loads(spec.body)
        body.setdefault("model", pair.model.name)
    return json.dumps(body, separators=(",", ":")).encode()


def probe_path(pair: Pair) -> str:
    """Where the probe goes under the vendor's base URL: the configured path; for an Anthropic-format
    vendor left at the default (a chat completions path it does not serve), its Messages endpoint."""
    path = pair.auto_disable.probe.path
    if pair.vendor.api_format == "anthropic" and path == _DEFAULT_PROBE_PATH:
        return MESSAGES_PATH
    return path


async def send_probe(pair: Pair, session: aiohttp.ClientSession) -> ErrorInfo | None:
    """Send one probe to `pair`; None on a 2xx answer, else what went wrong (masked of secrets)."""
    settings = pair.auto_disable
    headers = CIMultiDict({"Content-Type": "application/json"})
    headers.update(pair.vendor.headers)
    anthropic = pair.vendor.api_format == "anthropic"
    if anthropic:
        headers.setdefault("anthropic-version", DEFAULT_ANTHROPIC_VERSION)
    picked = pair.keys.next()
    key = picked[1] if picked is not None else None
    if key is not None:
        if anthropic:
            headers["x-api-key"] = key.api_key  # Anthropic's own header; its API ignores Authorization
        else:
            headers["Authorization"] = f"Bearer {key.api_key}"
    proxy = (key.proxy_url if key is not None else None) or pair.proxy_url
    try:
        async with asyncio.timeout(settings.probe_timeout_seconds):
            async with session.post(
                pair.base_url + probe_path(pair),
                data=probe_body(pair),
                headers=headers,
                proxy=proxy,
                allow_redirects=False,
            ) as response:
                if 200 <= response.status < 300:
                    return None
                body = await response.content.read(_ERROR_BODY_LIMIT)
                text = body.decode("utf-8", "replace")
                return ErrorInfo(response.status, excerpt(text, pair.secrets))
    except TimeoutError:
        return ErrorInfo(None, f"probe timed out after {settings.probe_timeout_seconds:g}s")
    except (aiohttp.ClientError, OSError) as exc:
        described = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        return ErrorInfo(None, excerpt(described, pair.secrets))


async def _probe_one(app: web.Application, key: tuple[str, str]) -> None:
    tracker = app[TRACKER]
    pair = app[RUNTIME].current.table.pairs.get(key)
    if pair is None:
        return  # no longer configured: the tracker drops it from the due list
    tracker.probe_started(key)
    try:
        error = await send_probe(pair, app[CLIENT_SESSION])
    except asyncio.CancelledError:
        tracker.probe_abandoned(key)  # shutting down: no verdict; the next start probes again
        raise
    except Exception:
        tracker.probe_abandoned(key)
        _log.exception("probe of vendor=%s model=%s failed in cliproxy itself", *key)
        return
    tracker.probe_result(key, error)


async def _run(app: web.Application, poll_seconds: float) -> None:
    tracker = app[TRACKER]
    probes: set[asyncio.Task[None]] = set()
    try:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(poll_seconds):
                    await tracker.probes_due.wait()
            for key in tracker.pairs_due_for_probe():
                task = asyncio.create_task(_probe_one(app, key), name=f"probe {key[0]}/{key[1]}")
                probes.add(task)
                task.add_done_callback(probes.discard)
    finally:
        for task in list(probes):
            task.cancel()


async def prober_context(app: web.Application, poll_seconds: float = 0.5) -> AsyncIterator[None]:
    """A cleanup context (after the tracker and the client session): the prober runs while the app does."""
    runner = asyncio.create_task(_run(app, poll_seconds), name="prober")
    yield
    runner.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await runner
