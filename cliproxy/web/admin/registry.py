"""The endpoint registry: every management route declared once, with the schemas it validates and serialises with.

Handlers declare themselves with `@endpoint(...)`; the sub-application (`cliproxy.web.admin`) mounts
every declaration and `cliproxy.web.admin.openapi` describes them, so what is documented is what is
served. This module imports no handler: the handler modules import it (the list is complete once
`cliproxy.web.admin` is imported, which imports every handler module).
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from marshmallow import Schema

__all__ = ["API_PREFIX", "COMMON_ERRORS", "ENDPOINTS", "Endpoint", "Handler", "endpoint"]

#: Where the management API is mounted; every declared path starts with it.
API_PREFIX = "/api"

#: Errors any management endpoint may answer (the access rules of cliproxy.web.admin.auth).
COMMON_ERRORS = (401, 403, 404, 429)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One management route and the schemas it validates and serialises with."""

    method: str
    path: str  # aiohttp form, as clients see it: `/api/models/{model:.+}/status`
    summary: str
    handler: Handler
    response: type[Schema] | None  # None: a non-JSON body (see `response_content`)
    body: type[Schema] | None = None
    query: type[Schema] | None = None
    description: str = ""
    errors: tuple[int, ...] = ()
    body_content: str = "application/json"
    body_required: bool = True
    response_content: str = "application/json"
    tags: tuple[str, ...] = field(default=())

    @property
    def subapp_path(self) -> str:
        """The path inside the sub-application mounted at `API_PREFIX`."""
        return self.path.removeprefix(API_PREFIX)


ENDPOINTS: list[Endpoint] = []


def endpoint(
    method: str,
    path: str,
    *,
    summary: str,
    response: type[Schema] | None,
    body: type[Schema] | None = None,
    query: type[Schema] | None = None,
    errors: tuple[int, ...] = (),
    **extra: Any,
) -> Callable[[Handler], Handler]:
    """Declare `handler` as the management route `method path`; its docstring is the route's description."""
    if not path.startswith(API_PREFIX + "/"):
        raise ValueError(f"a management route lives under {API_PREFIX}/: {path}")

    def register(handler: Handler) -> Handler:
        ENDPOINTS.append(
            Endpoint(
                method=method,
                path=path,
                summary=summary,
                handler=handler,
                response=response,
                body=body,
                query=query,
                description=inspect.cleandoc(handler.__doc__ or ""),
                errors=errors,
                **extra,
            )
        )
        return handler

    return register
