"""A fake OpenAI-compatible upstream with failure injection.

Used in-process by the test-suite (``FakeUpstream``) and as a subprocess by the
benchmark and demos (`cliproxy.fake_upstream.cli`). Faults are chosen per request
from the request body's ``model`` and can be installed from Python
(``FakeUpstream.fail``) or over HTTP (``POST /_fake/faults``); what they are and
how they break a connection is `cliproxy.fake_upstream.faults`, the bodies a
healthy answer carries `cliproxy.fake_upstream.payloads`.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from aiohttp import web

from cliproxy.fake_upstream.faults import (
    FAULT_HEADERS,
    HTML_PAGE,
    MALFORMED_BODY,
    Fault,
    FaultEntry,
    SelfReset,
    abort_with_rst,
    add_fault_headers,
)
from cliproxy.fake_upstream.payloads import (
    SSE_DONE,
    BadInput,
    ChatScript,
    dumps,
    full_body,
    messages_body,
    messages_error,
    messages_events,
    stream_frames,
)
from cliproxy.fake_upstream.responses import (
    IN_200_MESSAGE,
    JSON,
    RequestState,
    error_body,
    error_response,
    fault_status_response,
    json_response,
    role_frame,
    write_big_body,
    write_partial_body,
    write_stream,
)

__all__ = ["DEFAULT_MODELS", "IN_200_MESSAGE", "FakeUpstream", "RecordedRequest"]

DEFAULT_MODELS: tuple[str, ...] = ("gpt-4o-mini", "gpt-4o", "text-embedding-3-small")


@dataclass
class RecordedRequest:
    """One request as the fake received it."""

    method: str
    path: str
    headers: dict[str, str]
    json: Any | None
    model: str | None

    @property
    def is_probe(self) -> bool:
        """The shape of cliproxy's default recovery probe: one user message `ping` and `max_tokens: 1`."""
        return is_probe_body(self.json)


def is_probe_body(body: Any) -> bool:
    """True for the body of cliproxy's default recovery probe (`recovery: probe`)."""
    return (
        isinstance(body, dict) and body.get("messages") == [{"role": "user", "content": "ping"}] and body.get("max_tokens") == 1
    )


def _int_header(request: web.Request, name: str, default: int) -> int:
    raw = request.headers.get(name)
    if raw is None:
        return default
    try:
        return max(1, int(raw))
    except ValueError:
        return default


def _float_header(request: web.Request, name: str, default: float) -> float:
    raw = request.headers.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        return default
    return value if math.isfinite(value) and value >= 0 else default


class FakeUpstream:
    """An in-process OpenAI-compatible server whose misbehaviour tests can script."""

    def __init__(
        self,
        *,
        chunks: int = 5,
        chunk_delay: float = 0.0,
        name: str = "fake",
        seed: int | None = None,
        models: Sequence[str] = DEFAULT_MODELS,
        record: bool = True,
        embedding_dim: int = 8,
    ) -> None:
        self.chunks = max(1, chunks)
        self.chunk_delay = chunk_delay
        self.name = name
        self.models = list(models)
        self.record = record
        self.embedding_dim = embedding_dim
        self.url = ""
        self.port = 0
        self.requests: list[RecordedRequest] = []
        self.request_count = 0
        #: Requests shaped like cliproxy's default recovery probe (see `is_probe_body`).
        self.probe_count = 0
        self.streams_in_flight = 0
        self.disconnects = 0
        self.completed_streams = 0
        self.faults_applied = 0
        self._faults: list[FaultEntry] = []
        #: API keys this upstream refuses with a 401 `invalid_api_key` (see `revoke_key`).
        self.revoked_keys: set[str] = set()
        #: Requests refused for a revoked key.
        self.refused_keys = 0
        self._rng = random.Random(seed)
        self._ids = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stopping = False
        self.app = self._make_app()

    # ---------------------------------------------------------------- control

    def fail(self, model: str | None, fault: Fault) -> None:
        """Install ``fault`` for requests naming ``model`` (None: every model)."""
        self._faults.append(FaultEntry(model, fault, fault.times))

    def clear_faults(self) -> None:
        self._faults.clear()

    def revoke_key(self, api_key: str) -> None:
        """Answer every API request sent with `Authorization: Bearer <api_key>` with a 401
        `invalid_api_key` (OpenAI's shape), before any fault: a key revoked at the vendor."""
        self.revoked_keys.add(api_key)

    def restore_key(self, api_key: str) -> None:
        self.revoked_keys.discard(api_key)

    def reset_stats(self) -> None:
        """Forget recorded requests and zero the counters (not streams_in_flight)."""
        self.requests.clear()
        self.request_count = 0
        self.probe_count = 0
        self.disconnects = 0
        self.completed_streams = 0
        self.faults_applied = 0

    def stats(self) -> dict[str, int]:
        return {
            "requests": self.request_count,
            "disconnects": self.disconnects,
            "streams_in_flight": self.streams_in_flight,
            "completed_streams": self.completed_streams,
            "faults_applied": self.faults_applied,
            "faults_installed": len(self._faults),
        }

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Listen on ``host:port`` (0 = any free port) and return the /v1 base URL."""
        self._stopping = False
        # handler_cancellation: a client that goes away cancels its handler, so
        # stalls end and `disconnects` is counted even when nothing is being written.
        runner = web.AppRunner(self.app, access_log=None, handler_cancellation=True, shutdown_timeout=0.1)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        self._runner = runner
        self.port = runner.addresses[0][1]
        url_host = f"[{host}]" if ":" in host else host
        self.url = f"http://{url_host}:{self.port}/v1"
        return self.url

    async def stop(self) -> None:
        """Stop quickly: in-flight (e.g. stalled) handlers are cancelled, not awaited."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        self._stopping = True
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=1.0)
        await runner.cleanup()

    async def __aenter__(self) -> FakeUpstream:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ------------------------------------------------------------- internals

    def _make_app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        for path, kind in (
            ("/v1/chat/completions", "chat"),
            ("/v1/completions", "completions"),
            ("/v1/responses", "responses"),
            ("/v1/embeddings", "embeddings"),
            ("/v1/messages", "messages"),  # Anthropic's Messages API: an `api-format: anthropic` vendor
        ):
            app.router.add_post(path, self._api_handler(kind))
        app.router.add_get("/v1/models", self._list_models)
        app.router.add_post("/_fake/faults", self._add_fault)
        app.router.add_delete("/_fake/faults", self._clear_faults)
        app.router.add_get("/_fake/stats", self._get_stats)
        app.router.add_delete("/_fake/stats", self._delete_stats)
        app.on_response_prepare.append(add_fault_headers)
        return app

    def _pick_fault(self, model: str | None) -> Fault | None:
        for entry in self._faults:
            if entry.model is not None and entry.model != model:
                continue
            fault = entry.fault
            if fault.probability < 1.0 and self._rng.random() >= fault.probability:
                continue
            if entry.remaining is not None:
                entry.remaining -= 1
                if entry.remaining <= 0:
                    self._faults.remove(entry)
            self.faults_applied += 1
            return fault
        return None

    def _next_id(self, prefix: str) -> str:
        return f"{prefix}-{self.name}{next(self._ids)}"

    async def _read_body(self, request: web.Request) -> tuple[dict[str, Any] | None, web.Response | None]:
        """Parse and record the body; return (body, None) or (None, 400 response)."""
        self.request_count += 1
        raw = await request.read()
        body: Any = None
        error: str | None = None
        try:
            body = json.loads(raw)
        except ValueError:
            error = "We could not parse the JSON body of your request."
        if error is None and not isinstance(body, dict):
            error = "The request body must be a JSON object."
        model = body.get("model") if isinstance(body, dict) else None
        if is_probe_body(body):
            self.probe_count += 1
        if self.record:
            self.requests.append(
                RecordedRequest(
                    request.method,
                    request.path,
                    dict(request.headers),
                    body,
                    model if isinstance(model, str) else None,
                )
            )
        if error is None and not isinstance(model, str):
            error = "you must provide a model parameter"
        if error is not None:
            return None, error_response(400, error)
        return body, None

    async def _guarded(self, request: web.Request, body: dict[str, Any], kind: str) -> web.StreamResponse:
        """Run one API request with fault handling and disconnect accounting."""
        model: str = body["model"]
        if kind == "messages" and not request.headers.get("x-api-key"):
            # Anthropic's API takes its key in x-api-key only (an Authorization header is not one).
            return json_response(messages_error(401, "x-api-key header is required"), status=401)
        if kind == "messages" and not request.headers.get("anthropic-version"):
            return json_response(messages_error(400, "anthropic-version: header is required"), status=400)
        if self.revoked_keys and request.headers.get("Authorization", "").removeprefix("Bearer ") in self.revoked_keys:
            self.refused_keys += 1
            return json_response(
                error_body("Incorrect API key provided.", "invalid_request_error", "invalid_api_key"), status=401
            )
        fault = self._pick_fault(model) if self._faults else None
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        state = RequestState()
        if fault is not None and fault.headers:
            request[FAULT_HEADERS] = fault.headers
        try:
            return await self._serve(request, body, kind, model, fault, state)
        except asyncio.CancelledError:
            # handler_cancellation: the client went away (or stop() cancelled us).
            if not (self._stopping or state.self_reset or state.finished):
                self.disconnects += 1
            raise
        except ConnectionResetError:
            # A write hit a closed transport before the cancellation arrived.
            if not (self._stopping or state.self_reset):
                self.disconnects += 1
            return self._quiet_response(state)
        except SelfReset:
            return self._quiet_response(state)
        finally:
            if state.streaming:
                self.streams_in_flight -= 1
            if task is not None:
                self._tasks.discard(task)

    @staticmethod
    def _quiet_response(state: RequestState) -> web.StreamResponse:
        # Returning (rather than raising) after the connection is gone makes
        # aiohttp's own write fail with ConnectionError, which it treats as a
        # quiet client disconnect; raising would log "Error handling request".
        return state.response or web.Response()

    async def _serve(
        self,
        request: web.Request,
        body: dict[str, Any],
        kind: str,
        model: str,
        fault: Fault | None,
        state: RequestState,
    ) -> web.StreamResponse:
        stream = kind != "embeddings" and bool(body.get("stream"))
        if fault is not None:
            if fault.stall_before_headers > 0:
                await asyncio.sleep(fault.stall_before_headers)
            if fault.reset_before_headers:
                state.self_reset = True
                abort_with_rst(request)
                raise SelfReset
            if fault.status is not None:
                if kind == "messages" and fault.body is None:
                    fault = replace(fault, body=messages_error(fault.status, f"fake upstream injected HTTP {fault.status}"))
                return fault_status_response(fault)
            if fault.malformed_json:
                return web.Response(body=MALFORMED_BODY, content_type=JSON)
            if fault.html_200:
                return web.Response(body=HTML_PAGE, content_type="text/html")
            if fault.error_in_200:
                error = fault.body if fault.body is not None else error_body(IN_200_MESSAGE, "server_error", "upstream_error")
                if not stream:
                    return json_response(error)
                return await write_stream(request, [f"data: {dumps(error)}\n\n".encode()], SSE_DONE, 0.0, None, state, self)
            if fault.big_body_bytes is not None:
                return await write_big_body(request, model, fault.big_body_bytes, state)
            if fault.empty_stream and stream:
                return await write_stream(request, [b": ping\n\n", role_frame(model)], SSE_DONE, 0.0, fault, state, self)

        chunks = _int_header(request, "x-fake-chunks", self.chunks)
        if kind == "messages":
            if not stream:
                return json_response(messages_body(body, model, chunks, next_id=self._next_id))
            delay = _float_header(request, "x-fake-chunk-delay", self.chunk_delay)
            frames = messages_events(body, model, chunks, next_id=self._next_id)
            return await write_stream(request, frames[:-1], frames[-1], delay, fault, state, self)
        script = ChatScript()
        if fault is not None and (fault.reasoning is not None or fault.tool_calls):
            script = ChatScript(fault.reasoning, tuple(fault.tool_calls or ()))
        if not stream:
            try:
                full = full_body(
                    kind,
                    body,
                    model,
                    chunks,
                    name=self.name,
                    next_id=self._next_id,
                    embedding_dim=self.embedding_dim,
                    script=script,
                )
            except BadInput as exc:
                return error_response(400, str(exc))
            payload = dumps(full).encode()
            if fault is not None and (fault.reset_after_chunks is not None or fault.stall_after_chunks is not None):
                return await write_partial_body(request, payload, fault, state)
            return web.Response(body=payload, content_type=JSON)

        delay = _float_header(request, "x-fake-chunk-delay", self.chunk_delay)
        frames, terminator = stream_frames(kind, body, model, chunks, name=self.name, next_id=self._next_id, script=script)
        if fault is not None and fault.role_chunk_first:
            frames = [role_frame(model), *frames]
        return await write_stream(request, frames, terminator, delay, fault, state, self)

    # --------------------------------------------------------------- handlers

    def _api_handler(self, kind: str) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handler(request: web.Request) -> web.StreamResponse:
            body, error = await self._read_body(request)
            if error is not None:
                return error
            assert body is not None
            return await self._guarded(request, body, kind)

        return handler

    async def _list_models(self, request: web.Request) -> web.Response:
        self.request_count += 1
        if self.record:
            self.requests.append(RecordedRequest(request.method, request.path, dict(request.headers), None, None))
        data = [{"id": m, "object": "model", "created": 1700000000, "owned_by": self.name} for m in self.models]
        return json_response({"object": "list", "data": data})

    async def _add_fault(self, request: web.Request) -> web.Response:
        try:
            data = await request.json()
            if not isinstance(data, dict):
                raise ValueError("body must be a JSON object")
            model = data.pop("model", None)
            if model is not None and not isinstance(model, str):
                raise ValueError("'model' must be a string or null")
            fault = Fault.from_dict(data)
        except (ValueError, TypeError) as exc:
            return error_response(400, str(exc))
        self.fail(model, fault)
        return json_response({"ok": True, "faults_installed": len(self._faults)}, status=201)

    async def _clear_faults(self, request: web.Request) -> web.Response:
        self.clear_faults()
        return json_response({"ok": True, "faults_installed": 0})

    async def _get_stats(self, request: web.Request) -> web.Response:
        return json_response(self.stats())

    async def _delete_stats(self, request: web.Request) -> web.Response:
        self.reset_stats()
        return json_response(self.stats())
