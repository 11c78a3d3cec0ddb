"""The management API's side of each exchange: validated input in, schema-dumped JSON out, and the commit wait.

A disable is committed before it is reported: every handler that reports or changes disabled state
first waits (`committed`) for the tracker's writes queued so far to reach SQLite, 503 when the
database does not take them within `COMMIT_TIMEOUT_SECONDS`, then builds its answer from the
tracker's committed view. Handlers read the gateway's keys through `request.config_dict`: they run
in the sub-application, the keys live on the gateway.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from aiohttp import web
from marshmallow import Schema, ValidationError

from cliproxy.core.errors import InvalidRequest, ServiceUnavailable
from cliproxy.web.keys import TRACKER

__all__ = ["COMMIT_TIMEOUT_SECONDS", "committed", "json_body", "json_reply", "load", "path_name", "query"]

#: How long a management call waits for the tracker's writes to be committed before answering 503.
COMMIT_TIMEOUT_SECONDS = 5.0


def _flatten(messages: Any, path: str = "") -> list[tuple[str, str]]:
    if isinstance(messages, Mapping):
        out: list[tuple[str, str]] = []
        for key, value in messages.items():
            sub = (
                path
                if key == "_schema"
                else (f"{path}[{key}]" if isinstance(key, int) else (f"{path}.{key}" if path else str(key)))
            )
            out.extend(_flatten(value, sub))
        return out
    if isinstance(messages, list):
        return [pair for m in messages for pair in _flatten(m, path)]
    return [(path, str(messages))]


def load(schema: Schema, data: Any, *, what: str = "body") -> dict[str, Any]:
    """Validate with a schema; 400 naming every field (the first one as `param`)."""
    try:
        return schema.load(data)
    except ValidationError as exc:
        problems = _flatten(exc.messages)
        text = "; ".join(f"{p or what}: {m}" for p, m in problems)
        raise InvalidRequest(f"invalid {what}: {text}", param=problems[0][0] or None) from None


async def json_body(request: web.Request, *, optional: bool = False) -> dict[str, Any]:
    raw = await request.read()
    if not raw.strip():
        if optional:
            return {}
        raise InvalidRequest("the body must be a JSON object")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise InvalidRequest("the body is not valid JSON") from None
    if not isinstance(data, dict):
        raise InvalidRequest("the body must be a JSON object")
    return data


def query(request: web.Request, schema: Schema) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for key in request.query:
        values = request.query.getall(key)
        if len(values) > 1:
            raise InvalidRequest(f"invalid query: {key}: given more than once", param=key)
        data[key] = values[0]
    return load(schema, data, what="query")


def path_name(request: web.Request, key: str) -> str:
    """A name from the path (already URL-decoded by aiohttp); NUL and `.`/`..` segments are refused."""
    name = request.match_info[key]
    if not name or "\x00" in name or any(segment in (".", "..") for segment in name.split("/")):
        raise InvalidRequest(f"invalid {key} name in the path", param=key)
    return name


async def committed(request: web.Request, *, after_change: bool = False) -> None:
    """Wait until every disable and enable the tracker holds is in SQLite; 503 when it does not get there."""
    if await request.config_dict[TRACKER].flush(timeout=COMMIT_TIMEOUT_SECONDS):
        return
    if after_change:
        message = (
            "the database is not accepting writes: the change is in force in memory but not yet committed "
            "(it is retried until the database recovers)"
        )
    else:
        message = "the database is not accepting writes: disabled state cannot be reported until it has been committed"
    raise ServiceUnavailable(message, headers={"Retry-After": str(math.ceil(COMMIT_TIMEOUT_SECONDS))})


def json_reply(schema: type[Schema], data: Any, *, status: int = 200) -> web.Response:
    return web.json_response(schema().dump(data), status=status)
