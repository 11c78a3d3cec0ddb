"""One client request as cliproxy forwards it: read, validated and built once by the /v1 handler.

`forward`, `choose_upstream` and each attempt read it and never change it; what happened to the
request (attempts, outcomes, bytes) is telemetry and lives apart, in `cliproxy.web.access`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from cliproxy.core.body import ClientRequest, Span
from cliproxy.core.config import ApiFormat, Config

__all__ = ["AnswerTranslator", "ProxiedRequest", "connection_options"]

# Never forwarded upstream: hop-by-hop headers, the client's own credentials, and what aiohttp sets itself.
_DROP_REQUEST = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        "authorization",
        "x-api-key",
        "x-management-key",
        "cookie",
        "accept-encoding",
        "expect",
        "content-encoding",  # aiohttp has decoded the body: the header no longer describes the bytes we send
    }
)
_PLAIN_CONNECTION = frozenset({"keep-alive", "close"})


class AnswerTranslator(Protocol):
    """Rewrites the chosen upstream's answer for a client that speaks another API (Anthropic's
    Messages), after classification judged it: `relay` writes what it returns instead of the bytes."""

    #: Collect the whole body and write `end()` once (a JSON answer), instead of chunk by chunk.
    buffered: bool
    #: The client's status and content type (read by `relay` once `end()` returned, when buffered).
    status: int
    content_type: str

    def feed(self, chunk: bytes) -> bytes: ...

    def end(self) -> bytes: ...

    def fail(self, message: str) -> bytes: ...


@dataclass(frozen=True, slots=True)
class ProxiedRequest:
    """What every upstream attempt of one client request is made from."""

    #: The model the client asked for (the routing key; each attempt rewrites it to its pair's name).
    model: str
    stream: bool
    body: bytes
    #: Byte spans of the body's top-level `model` values, when parsing found them (saves a rescan per attempt).
    model_spans: tuple[Span, ...] | None
    method: str
    #: The client's path after `/v1`, appended to each vendor's base URL.
    path: str
    query: str
    #: The client's headers that may go upstream; each attempt copies them and adds its vendor's.
    headers: CIMultiDict[str]
    #: 1 + `request-retry` of the config the request started with (it finishes on that config).
    max_attempts: int
    #: `client-write-timeout`: a client that stops reading a stream this long is given up.
    client_write_timeout: float
    #: For a client of another API: makes the translator of the answer (given whether it is an SSE
    #: stream). None for OpenAI clients, whose answers are relayed byte for byte.
    translator: Callable[[bool], AnswerTranslator] | None = None
    #: The same request as an `api-format: anthropic` vendor gets it: the client's own Messages body
    #: (path `/messages`, its `anthropic-*` headers, no translator), built once by the handler. None
    #: when the client spoke OpenAI's API: such a request never goes to an Anthropic-format pair.
    passthrough: ProxiedRequest | None = None

    def for_format(self, api_format: ApiFormat) -> ProxiedRequest | None:
        """What an attempt on a vendor of `api_format` sends (O(1), chosen per attempt); None when
        that vendor cannot serve this request."""
        return self.passthrough if api_format == "anthropic" else self

    @classmethod
    def of(cls, request: web.Request, body: bytes, parsed: ClientRequest, config: Config) -> ProxiedRequest:
        return cls(
            model=parsed.model,
            stream=parsed.stream,
            body=body,
            model_spans=parsed.model_spans,
            method=request.method,
            path=request.match_info.get("subpath") or request.path[len("/v1") :],
            query=request.query_string,
            headers=_forwardable_headers(request),
            max_attempts=1 + config.request_retry,
            client_write_timeout=config.client_write_timeout,
        )


def connection_options(headers: CIMultiDict[str] | CIMultiDictProxy[str]) -> frozenset[str] | tuple[()]:
    """The header names a `Connection` header lists: hop-by-hop for this one connection (RFC 9110 7.6.1)."""
    values = headers.getall("connection", ())
    if not values or (len(values) == 1 and values[0].lower() in _PLAIN_CONNECTION):
        return ()  # the usual case names no other header: nothing to build
    return frozenset(token.strip().lower() for value in values for token in value.split(","))


def _forwardable_headers(request: web.Request) -> CIMultiDict[str]:
    named = connection_options(request.headers)  # `Connection: keep-alive, X-Secret-Hop` drops X-Secret-Hop
    return CIMultiDict(
        [(k, v) for k, v in request.headers.items() if (name := k.lower()) not in _DROP_REQUEST and name not in named]
    )
