"""The errors cliproxy makes itself, and their OpenAI shape.

    ProxyError                     500 internal_error
    +-- InvalidRequest             400 invalid_request_error
    +-- Unauthorized               401 authentication_error
    +-- Forbidden                  403 permission_error
    +-- NotFound                   404 not_found
    |   +-- ModelNotFound          404 model_not_found
    +-- RequestTimeout             408 request_timeout (the body did not arrive in time)
    +-- PayloadTooLarge            413 request_too_large
    +-- MisdirectedRequest         421 misdirected_request (a loopback gateway asked for another host)
    +-- TooManyRequests            429 rate_limit_exceeded
    +-- UpstreamUnavailable        502 upstream_error (every attempt failed without an HTTP answer)
    |   +-- UpstreamTimeout        504 upstream_timeout
    +-- NoVendorAvailable          503 no_available_vendor
    +-- ServiceUnavailable         503 service_unavailable
        +-- GatewayOverloaded      503 gateway_overloaded (cliproxy itself ran out; Retry-After: 1)

One middleware (`cliproxy.app`) renders each as `{"error": {"message", "type", "param", "code"}}`
with its status. The `openai` SDK picks its exception class from the status, so statuses are honest.
A stream that breaks once its 200 has gone out ends with the same shape as its last SSE event
(`error_event`): `error_body` is the one place that shape is written.

Clients of Anthropic's Messages API (`/v1/messages*`) get the same errors in Anthropic's shape,
`{"type": "error", "error": {"type", "message"}}` (`anthropic_body`), with the types the anthropic
SDK maps to its exceptions; "nothing can serve this now" is Anthropic's own 529 `overloaded_error`.
Pure: no aiohttp import; the middleware turns `headers` into response headers.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from cliproxy.core.times import format_duration

__all__ = [
    "ProxyError",
    "InvalidRequest",
    "Unauthorized",
    "Forbidden",
    "NotFound",
    "ModelNotFound",
    "RequestTimeout",
    "PayloadTooLarge",
    "MisdirectedRequest",
    "TooManyRequests",
    "UpstreamUnavailable",
    "UpstreamTimeout",
    "NoVendorAvailable",
    "Unavailability",
    "ServiceUnavailable",
    "GatewayOverloaded",
    "error_body",
    "error_event",
    "is_anthropic_error",
    "anthropic_error_body",
    "anthropic_error_type",
    "upstream_error_message",
]

#: The error type Anthropic's SDKs expect for each status (any other 5xx: `api_error`).
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}


class ProxyError(Exception):
    status = 500
    error_type = "internal_error"
    code = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.headers = headers or {}

    #: The status an Anthropic client gets (None: `status`).
    anthropic_status: int | None = None

    def body(self) -> bytes:
        return error_body(self.message, self.error_type, self.code, self.param)

    def anthropic_body(self) -> bytes:
        return anthropic_error_body(self.anthropic_status or self.status, self.message)


class InvalidRequest(ProxyError):
    status = 400
    error_type = "invalid_request_error"
    code = "invalid_request"


class Unauthorized(ProxyError):
    status = 401
    error_type = "authentication_error"
    code = "invalid_api_key"


class Forbidden(ProxyError):
    status = 403
    error_type = "permission_error"
    code = "forbidden"


class NotFound(ProxyError):
    status = 404
    error_type = "invalid_request_error"
    code = "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"


class RequestTimeout(ProxyError):
    status = 408
    error_type = "invalid_request_error"
    code = "request_timeout"


class PayloadTooLarge(ProxyError):
    status = 413
    error_type = "invalid_request_error"
    code = "request_too_large"


class MisdirectedRequest(ProxyError):
    status = 421
    error_type = "invalid_request_error"
    code = "misdirected_request"


class TooManyRequests(ProxyError):
    status = 429
    error_type = "rate_limit_error"
    code = "rate_limit_exceeded"


class UpstreamUnavailable(ProxyError):
    status = 502
    error_type = "upstream_error"
    code = "upstream_unreachable"


class UpstreamTimeout(UpstreamUnavailable):
    status = 504
    code = "upstream_timeout"


@dataclass(frozen=True, slots=True)
class Unavailability:
    """Why none of a model's pairs could take a request, each cause counted apart."""

    vendors_off: int = 0
    vendors_without_key: int = 0
    models_off: int = 0
    #: Seconds until each auto-disabled pair comes back.
    auto_disabled: tuple[float, ...] = ()
    #: Seconds until each pair disabled by an operator comes back; None: until enabled.
    manually_disabled: tuple[float | None, ...] = ()
    #: Seconds until each pair the upstream rate-limited (Retry-After) comes back.
    rate_limited: tuple[float, ...] = ()


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


class NoVendorAvailable(ProxyError):
    status = 503
    anthropic_status = 529  # Anthropic's "overloaded": its clients wait Retry-After and try again
    error_type = "service_unavailable"
    code = "no_available_vendor"

    @classmethod
    def for_model(cls, name: str, why: Unavailability) -> NoVendorAvailable:
        """`no vendor available for model 'x': 1 vendor switched off, 2 pairs auto-disabled (first back
        in 42s)`, with Retry-After when some pair comes back by itself. Built only on the 503."""
        causes: list[str] = []
        if why.vendors_off:
            causes.append(_count(why.vendors_off, "vendor switched off", "vendors switched off"))
        if why.vendors_without_key:
            causes.append(_count(why.vendors_without_key, "vendor without an api key", "vendors without an api key"))
        if why.models_off:
            causes.append(_count(why.models_off, "model switched off", "models switched off"))
        if why.auto_disabled:
            first = format_duration(min(why.auto_disabled))
            causes.append(f"{_count(len(why.auto_disabled), 'pair', 'pairs')} auto-disabled (first back in {first})")
        if why.manually_disabled:
            timed = [w for w in why.manually_disabled if w is not None]
            when = f"first back in {format_duration(min(timed))}" if timed else "until enabled"
            causes.append(f"{_count(len(why.manually_disabled), 'pair', 'pairs')} disabled by an operator ({when})")
        if why.rate_limited:
            first = format_duration(min(why.rate_limited))
            causes.append(
                f"{_count(len(why.rate_limited), 'pair', 'pairs')} rate-limited by the upstream (first back in {first})"
            )
        waits = [*why.auto_disabled, *(w for w in why.manually_disabled if w is not None), *why.rate_limited]
        headers = {"Retry-After": str(max(1, math.ceil(min(waits))))} if waits else {}
        return cls(f"no vendor available for model '{name}': {', '.join(causes) or 'no pair serves it'}", headers=headers)


class ServiceUnavailable(ProxyError):
    status = 503
    anthropic_status = 529
    error_type = "service_unavailable"
    code = "service_unavailable"


class GatewayOverloaded(ServiceUnavailable):
    """The gateway's own limits (file descriptors, socket buffers, memory, connection caps) were hit.

    Nothing is wrong with the upstream, so nothing is counted against it; the client retries shortly.
    """

    code = "gateway_overloaded"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message, headers={"Retry-After": "1", **(headers or {})})


def error_body(message: str, error_type: str, code: str, param: str | None = None) -> bytes:
    """The OpenAI error shape, `{"error": {"message", "type", "param", "code"}}`, as a JSON body."""
    return json.dumps({"error": {"message": message, "type": error_type, "param": param, "code": code}}).encode()


def error_event(message: str, error_type: str, code: str, param: str | None = None) -> bytes:
    """The same error as the last event of an SSE stream that cannot go on (its status has already been sent)."""
    return b"data: " + error_body(message, error_type, code, param) + b"\n\n"


def anthropic_error_type(status: int) -> str:
    return _ANTHROPIC_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")


def anthropic_error_body(status: int, message: str) -> bytes:
    """Anthropic's error shape, `{"type": "error", "error": {"type", "message"}}`, as a JSON body."""
    return json.dumps({"type": "error", "error": {"type": anthropic_error_type(status), "message": message}}).encode()


def is_anthropic_error(body: bytes) -> bool:
    """Whether an upstream's error body is already in Anthropic's shape (an `api-format: anthropic` vendor's)."""
    if b'"type"' not in body:
        return False  # one scan: an OpenAI-shaped error is not parsed
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return False
    return isinstance(data, dict) and data.get("type") == "error" and isinstance(data.get("error"), dict)


def upstream_error_message(body: bytes) -> str | None:
    """The `message` of an upstream's JSON error body (OpenAI's or Anthropic's shape), when it has one."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return None
    error = data.get("error") if isinstance(data, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    return message if isinstance(message, str) else None
