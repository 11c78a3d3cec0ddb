"""The client API under /v1: authenticate -> read and validate the body -> route -> forward."""

from __future__ import annotations

import asyncio

from aiohttp import web
from aiohttp.web_urldispatcher import _default_expect_handler  # aiohttp's own 100-continue

from cliproxy.core.body import parse_client_body
from cliproxy.core.errors import InvalidRequest, ModelNotFound, PayloadTooLarge, RequestTimeout, Unauthorized, error_body
from cliproxy.core.runtime import Runtime
from cliproxy.web.access import AccessInfo
from cliproxy.web.keys import ACCESS_INFO, CLIENT_SESSION, OUTCOMES, OVERLOAD_LOG, PAIR_TRAFFIC, PROXIED_REQUEST, RUNTIME
from cliproxy.web.proxied_request import ProxiedRequest
from cliproxy.web.upstream import forward

__all__ = ["routes", "check_client_key", "read_body", "PROXIED_PATHS"]

routes = web.RouteTableDef()

#: The OpenAI endpoints we proxy; all take a JSON body with a `model`.
PROXIED_PATHS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses")


def _presented_key(request: web.Request) -> str | None:
    auth = request.headers.get("Authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    return request.headers.get("x-api-key")


def check_client_key(request: web.Request, runtime: Runtime) -> None:
    if runtime.open_access:
        return
    presented = _presented_key(request)
    if not presented or not runtime.client_key_valid(presented):
        raise Unauthorized("invalid or missing API key: send 'Authorization: Bearer <key>' or 'x-api-key: <key>'")


async def read_body(request: web.Request, limit: int, deadline: float) -> bytes:
    """The whole body within `deadline` seconds, refusing early when it is larger than `limit`
    (declared or actual): a client that sends slowly or stalls does not hold a handler for ever."""
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"the request body is larger than the limit of {limit} bytes")
    content = request.content
    chunks: list[bytes] = []
    size = 0
    try:
        if content.is_eof():
            # The usual case: the whole body came with the headers. Taken at once, no timer armed
            # (a deadline costs a timer handle per request, ~3% of the hop's CPU).
            body = content.read_nowait()
            if len(body) > limit:
                raise PayloadTooLarge(f"the request body is larger than the limit of {limit} bytes")
            return body
        async with asyncio.timeout(deadline):
            async for chunk in content.iter_any():
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLarge(f"the request body is larger than the limit of {limit} bytes")
                chunks.append(chunk)
    except TimeoutError:
        raise RequestTimeout(f"the request body did not arrive within {deadline:g} s (body-timeout)") from None
    except web.RequestPayloadError as exc:
        # A body aiohttp cannot decode (a bad `Content-Encoding: gzip`, a broken chunk): the client's fault.
        raise InvalidRequest(f"the request body could not be read: {exc.__cause__ or exc}", code="invalid_body") from None
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def proxy(request: web.Request) -> web.StreamResponse:
    app = request.app
    runtime = app[RUNTIME].current  # taken once: the request finishes on the config it started with
    info = AccessInfo(traffic=app[PAIR_TRAFFIC])
    request[ACCESS_INFO] = info
    check_client_key(request, runtime)
    body = await read_body(request, runtime.config.max_body_bytes, runtime.config.body_timeout)
    proxied = ProxiedRequest.of(request, body, parse_client_body(body), runtime.config)
    request[PROXIED_REQUEST] = proxied  # the access line names the model, routed or not
    route = runtime.table.route(proxied.model)
    if route is None:
        raise ModelNotFound(f"the model '{proxied.model}' does not exist", param="model")
    return await forward(
        request, proxied, route, info, session=app[CLIENT_SESSION], sink=app[OUTCOMES], overload=app[OVERLOAD_LOG]
    )


async def expect_handler(request: web.Request) -> web.StreamResponse | None:
    """aiohttp answers an `Expect` other than 100-continue with a plain-text 417 before any middleware runs."""
    expect = request.headers.get("Expect", "")
    if expect.lower() == "100-continue":
        await _default_expect_handler(request)  # writes the interim 100 response
        return None
    return web.Response(
        status=417,
        body=error_body(
            f"unsupported Expect: {expect[:100]!r}; only 100-continue is", "invalid_request_error", "expectation_failed"
        ),
        content_type="application/json",
    )


for _path in PROXIED_PATHS:
    routes.post(_path, expect_handler=expect_handler)(proxy)


def _model_object(name: str, created: int) -> dict[str, object]:
    return {"id": name, "object": "model", "created": created, "owned_by": "cliproxy"}


@routes.get("/v1/models")
async def list_models(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME].current
    check_client_key(request, runtime)
    created = int(runtime.config_loaded_at)
    return web.json_response({"object": "list", "data": [_model_object(name, created) for name in runtime.table.public_models]})


@routes.get("/v1/models/{model:.+}")
async def get_model(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME].current
    check_client_key(request, runtime)
    name = request.match_info["model"]
    route = runtime.table.route(name)
    if route is None or not route.tiers:
        raise ModelNotFound(f"the model '{name}' does not exist", param="model")
    return web.json_response(_model_object(name, int(runtime.config_loaded_at)))
