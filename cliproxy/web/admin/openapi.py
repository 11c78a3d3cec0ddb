"""The OpenAPI 3.1 document of the management API, generated from the endpoint registry.

Every body, query and response schema in it is the marshmallow schema the handler validates or
serialises with (through apispec's MarshmallowPlugin), so the document describes what is served.
It reads only the registry (`cliproxy.web.admin.registry`), never a handler module; built once and
served at `GET /api/openapi.json`.
"""

from __future__ import annotations

import functools
import re
from typing import Any

from aiohttp import web
from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin

from cliproxy.web.admin.registry import COMMON_ERRORS, ENDPOINTS, Endpoint, endpoint
from cliproxy.web.admin.schemas import ErrorSchema

__all__ = ["OPENAPI_VERSION", "build_document", "openapi_json", "openapi_path"]

OPENAPI_VERSION = "3.1.0"

_ERROR_TEXT = {
    400: "Invalid request: the message names every problem, `param` the first field",
    401: "Missing or wrong management key",
    403: "Not a loopback client and `remote-management.allow-remote` is false",
    404: "Unknown vendor or model (or the management API is off: no `remote-management.secret-key`)",
    409: "config.yaml is being changed on disk (being written, saved meanwhile, or changed and not valid): "
    "code `config_changed`, nothing was written; retry",
    429: "Too many failed key attempts from this address: blocked, see Retry-After",
    503: "The database is not accepting writes (disabled state is not reported before it is committed), "
    "or the gateway was not started from a config file (code `no_config_file`) for a change written to config.yaml",
}

_PATH_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(?::[^}]*)?\}")

_PATH_PARAM_TEXT = {
    "model": "A model name: alias, upstream name or prefix/alias. May contain `/` and `:`, URL-encoded or not.",
    "name": "A vendor name.",
}


def openapi_path(aiohttp_path: str) -> str:
    """`/api/models/{model:.+}/status` -> `/api/models/{model}/status`."""
    return _PATH_PARAM.sub(lambda m: "{" + m.group(1) + "}", aiohttp_path)


def _operation(ep: Endpoint) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": ep.summary,
        "description": ep.description,
        "operationId": ep.handler.__name__,
        "tags": list(ep.tags),
        "parameters": [
            {
                "in": "path",
                "name": name,
                "required": True,
                "schema": {"type": "string"},
                "description": _PATH_PARAM_TEXT.get(name, ""),
            }
            for name in _PATH_PARAM.findall(ep.path)
        ],
        "responses": {},
    }
    if ep.query is not None:
        op["parameters"].append({"in": "query", "schema": ep.query})
    if ep.body is not None:
        op["requestBody"] = {"required": ep.body_required, "content": {ep.body_content: {"schema": ep.body}}}
    elif ep.body_content != "application/json":  # raw bodies (PUT /api/config.yaml); bodiless POSTs have none
        op["requestBody"] = {"required": ep.body_required, "content": {ep.body_content: {"schema": {"type": "string"}}}}
    if ep.response is not None:
        ok_schema: Any = ep.response
    elif ep.response_content == "application/json":
        ok_schema = {"type": "object"}
    else:
        ok_schema = {"type": "string"}
    op["responses"]["200"] = {"description": "OK", "content": {ep.response_content: {"schema": ok_schema}}}
    for status in sorted({*COMMON_ERRORS, *ep.errors}):
        response: dict[str, Any] = {
            "description": _ERROR_TEXT[status],
            "content": {"application/json": {"schema": ErrorSchema}},
        }
        if status in (429, 503):
            response["headers"] = {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds"}}
        op["responses"][str(status)] = response
    return op


@functools.cache
def build_document() -> dict[str, Any]:
    """The whole document (built once: the endpoints are fixed once `cliproxy.web.admin` is imported)."""
    spec = APISpec(
        title="cliproxy management API",
        version="1",
        openapi_version=OPENAPI_VERSION,
        plugins=[MarshmallowPlugin()],
        info={
            "description": (
                "Off unless `remote-management.secret-key` is set. Send the key as `Authorization: Bearer <key>` "
                "or `X-Management-Key: <key>`. Loopback clients only unless `allow-remote: true`. Errors have the "
                'OpenAI shape `{"error": {"message", "type", "param", "code"}}`. Times are ISO-8601 UTC.'
            )
        },
    )
    spec.components.security_scheme("bearer", {"type": "http", "scheme": "bearer"})
    spec.components.security_scheme("managementKey", {"type": "apiKey", "in": "header", "name": "X-Management-Key"})
    operations: dict[str, dict[str, Any]] = {}
    for ep in ENDPOINTS:
        operations.setdefault(openapi_path(ep.path), {})[ep.method.lower()] = _operation(ep)
    for path, ops in operations.items():
        spec.path(path=path, operations=ops)
    document = spec.to_dict()
    document["security"] = [{"bearer": []}, {"managementKey": []}]
    return document


@endpoint("GET", "/api/openapi.json", summary="This document", response=None, response_content="application/json", tags=("meta",))
async def openapi_json(request: web.Request) -> web.Response:
    """The OpenAPI 3.1 description of the management API, generated from the schemas the handlers use."""
    return web.json_response(build_document())
