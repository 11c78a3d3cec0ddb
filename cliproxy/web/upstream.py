"""Forwarding a client request upstream: choose a pair (may fail over), then relay it (may not).

`choose_upstream` walks the candidates in routing order and opens the request (a `ProxiedRequest`,
built once by the handler) on each until one answers with something the client should see: a
success, or an error that is the client's own fault. Every attempt reports exactly one `Outcome`,
classified in `cliproxy.core.classify` (what the answer says) and at the exception handlers below
(what the transport did), and always through `report` (`cliproxy.web.attempts`),
which tells both the failure tracker (the `OutcomeSink` seam) and the request's access record.
Once a pair is chosen, `relay` (`cliproxy.web.relay`) copies the answer to the client chunk by
chunk; a failure from then on can no longer fail over and ends the client's stream with an error event.
The attempt's pieces are in `cliproxy.web.attempts` (results and how outcomes are told) and
`cliproxy.web.answer_headers` (what headers a client gets).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Collection, Iterator
from itertools import chain

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from cliproxy.core.body import rewrite_model
from cliproxy.core.classify import SMALL_BODY_LIMIT, StreamStart, classify_body, classify_status, error_message, failure
from cliproxy.core.config import ApiKeyEntry
from cliproxy.core.errors import (
    GatewayOverloaded,
    NoVendorAvailable,
    ProxyError,
    Unavailability,
    UpstreamTimeout,
    UpstreamUnavailable,
    anthropic_error_body,
    is_anthropic_error,
    upstream_error_message,
)
from cliproxy.core.events import ErrorInfo, Outcome, OutcomeSink
from cliproxy.core.redact import SecretMasker, excerpt, mask_secrets
from cliproxy.core.retry_after import RETRY_STATUSES, hint_headers
from cliproxy.core.routing import Pair, Route
from cliproxy.web.access import AccessInfo
from cliproxy.web.answer_headers import SSE, relayable, stamp
from cliproxy.web.attempts import (
    CLIENT_DISCONNECT,
    GATEWAY_OVERLOADED,
    KEY_REFUSED,
    Failed,
    Opened,
    describe,
    report,
    report_uncounted,
)
from cliproxy.web.overload import OverloadLog, local_resource_error
from cliproxy.web.proxied_request import ProxiedRequest
from cliproxy.web.relay import relay

__all__ = ["forward"]

_ERROR_BODY_LIMIT = 64 * 1024


async def forward(
    request: web.Request,
    proxied: ProxiedRequest,
    route: Route,
    info: AccessInfo,
    *,
    session: aiohttp.ClientSession,
    sink: OutcomeSink,
    overload: OverloadLog,
) -> web.StreamResponse:
    """Choose an upstream for the request, then relay its answer to the client.

    `session` is the upstream connection pool, `sink` the failure tracker every outcome goes to,
    `overload` the log of the gateway's own resource exhaustion.
    """
    admitted: list[Pair] = []  # every pair `sink.admit` let this request try: each released once, at the end
    try:
        opened = await choose_upstream(proxied, route, info, session=session, sink=sink, overload=overload, admitted=admitted)
        return await relay(request, opened, opened.sent or proxied, info, sink)
    finally:
        # A half-open slot goes back whatever happened: success, failure, neutral, disconnect, cancellation.
        for pair in admitted:
            sink.release(pair.key)


async def choose_upstream(
    proxied: ProxiedRequest,
    route: Route,
    info: AccessInfo,
    *,
    session: aiohttp.ClientSession,
    sink: OutcomeSink,
    overload: OverloadLog,
    admitted: list[Pair] | None = None,
) -> Opened:
    """Try candidates in routing order until one gives an answer for the client (fail over on countable failures).

    Each pair tried was admitted by `sink.admit` and is appended to `admitted`: the caller releases them.
    """
    last_failure: Failed | None = None
    admitted = admitted if admitted is not None else []
    for pair, overflow in _candidates(route, sink, proxied):
        if info.attempts >= proxied.max_attempts:
            break
        if not overflow:
            if not sink.admit(pair.key):
                continue
            admitted.append(pair)
        result = await _attempt(pair, proxied, info, session=session, sink=sink, overload=overload)
        # Key scope: a refused key is out; the vendor's next key is tried at once, before any other
        # vendor, until one answers or none is left (bounded by the vendor's key count).
        refused: set[int] = set()
        while isinstance(result, Failed) and result.key_refused and result.key_index is not None:
            refused.add(result.key_index)
            if pair.keys.next(functools.partial(sink.key_usable, pair.vendor.name), refused) is None:
                break
            result = await _attempt(pair, proxied, info, session=session, sink=sink, overload=overload, skip=refused)
        if isinstance(result, Opened):
            return result
        if result.outcome.kind != "failure":
            raise _final_error(result, proxied, info)  # the client's fault: no failover
        last_failure = result

    if last_failure is not None:
        raise _final_error(last_failure, proxied, info)
    fallback = _back_soonest(route, sink, proxied)
    if fallback is None or proxied.max_attempts < 1:
        raise _nothing_available(route, sink)
    # `on-all-disabled: best-effort`: every pair is unavailable by the tracker; a degraded answer
    # from the one back soonest beats the 503. Its outcome counts as usual (the rule ignores
    # outcomes while a pair is disabled, so it neither extends nor ends the disable).
    result = await _attempt(fallback, proxied, info, session=session, sink=sink, overload=overload)
    result.degraded = True
    if isinstance(result, Opened):
        return result
    raise _final_error(result, proxied, info)


async def _attempt(
    pair: Pair,
    proxied: ProxiedRequest,
    info: AccessInfo,
    *,
    session: aiohttp.ClientSession,
    sink: OutcomeSink,
    overload: OverloadLog,
    skip: Collection[int] = (),
) -> Opened | Failed:
    """One attempt on `pair`, counted and reported (an answer for the client is reported when relayed).

    With `api-key-entries`, the key is the rotation's next one that is in (and not in `skip`: those
    this request saw refused). An answer of `key-scope-statuses` puts that key out instead of
    counting the pair (`key_refused`), and the attempt fails over like a countable failure.
    """
    info.attempts += 1
    info.vendor, info.upstream_model = pair.vendor.name, pair.model.name
    # The body for the vendor's API: `_candidates` yields only pairs that can serve the request.
    sent = proxied.for_format(pair.vendor.api_format)
    assert sent is not None
    body = sent.body if pair.model.name == sent.model else rewrite_model(sent.body, pair.model.name, sent.model_spans)
    # Every key out (the pair is tried anyway, by best-effort): the rotation's next, as before.
    picked = pair.keys.next(functools.partial(sink.key_usable, pair.vendor.name), skip) or pair.keys.next()
    try:
        result = await _open(pair, sent, body, session, overload, picked)
    except asyncio.CancelledError:
        # The client went away before the upstream answered: neutral for the pair, and its
        # access line and metrics say why (499, outcome client_disconnect).
        report(sink, info, pair, CLIENT_DISCONNECT)
        raise
    if picked is not None:
        result.key_index = picked[0]
    if isinstance(result, Opened) and sent is not proxied:
        result.sent = sent
    if isinstance(result, Failed):
        if (
            picked is not None
            and result.status in pair.auto_disable.key_scope_statuses
            and sink.record_key_failure(pair.key, picked[0], result.outcome)
        ):
            result.key_refused = True
            result.outcome = Outcome("failure", KEY_REFUSED, result.outcome.error)
            report_uncounted(info, pair, result.outcome)
        else:
            report(sink, info, pair, result.outcome)
    return result


def _back_soonest(route: Route, sink: OutcomeSink, proxied: ProxiedRequest) -> Pair | None:
    """With `on-all-disabled: best-effort`, the pair the tracker will give back soonest; None when no
    pair of the route may be used so (an operator's disable, `fail`, or no end in sight).

    Called only when nothing was available: O(pairs of the route), never on a healthy request.
    """
    best: tuple[float, int, Pair] | None = None
    for order, pair in enumerate(chain.from_iterable(route.tiers)):
        if pair.auto_disable.on_all_disabled != "best-effort" or proxied.for_format(pair.vendor.api_format) is None:
            continue
        reason = sink.disabled_by(pair.key)
        if reason is None or reason == "manual":
            continue  # available (tried above) or switched off by an operator: never used
        wait = sink.seconds_until_available(pair.key)
        if wait is None:
            continue
        if best is None or (wait, order) < best[:2]:
            best = (wait, order, pair)
    return best[2] if best is not None else None


def _candidates(route: Route, sink: OutcomeSink, proxied: ProxiedRequest) -> Iterator[tuple[Pair, bool]]:
    """The pairs of `route` in routing order that may be tried now (overflow False); then, only if
    there were none, the half-open pairs whose slots were all taken (overflow True: tried without a
    slot, because nothing else can serve the request). A pair whose vendor's API cannot serve the
    request (an OpenAI request, an `api-format: anthropic` vendor) is never one."""
    waiting: list[Pair] = []
    tried = False
    for pair in route.ordered(sink.weight):
        if proxied.for_format(pair.vendor.api_format) is None:
            continue
        if sink.is_available(pair.key):
            tried = True
            yield pair, False
        elif sink.half_open_waiting(pair.key):
            waiting.append(pair)
    if not tried:
        for pair in waiting:
            yield pair, True


async def _open(
    pair: Pair,
    proxied: ProxiedRequest,
    body: bytes,
    session: aiohttp.ClientSession,
    overload: OverloadLog,
    picked: tuple[int, ApiKeyEntry] | None,
) -> Opened | Failed:
    """Send one attempt with the `picked` key and wait for its headers (and first chunk when streaming), within the timeouts."""
    headers = CIMultiDict(proxied.headers)
    for name, value in pair.vendor.headers:
        headers[name] = value
    key = picked[1] if picked is not None else None
    if key is not None:
        if pair.vendor.api_format == "anthropic":
            headers["x-api-key"] = key.api_key  # Anthropic's own header; its API ignores Authorization
        else:
            headers["Authorization"] = f"Bearer {key.api_key}"
    proxy = (key.proxy_url if key is not None else None) or pair.proxy_url
    timeouts = pair.timeouts
    url = pair.base_url + proxied.path
    if proxied.query:
        url = f"{url}?{proxied.query}"
    response: aiohttp.ClientResponse | None = None
    loop = asyncio.get_running_loop()
    started = loop.time()
    first_token = timeouts.first_token_seconds
    first_token_due = None if first_token is None else started + first_token
    try:
        async with asyncio.timeout(timeouts.first_byte):
            response = await session.request(
                proxied.method,
                url,
                data=body,
                headers=headers,
                proxy=proxy,
                timeout=_client_timeout(timeouts.connect),
                allow_redirects=False,
            )
        if response.status >= 400:
            # An upstream error: read it whole (bounded) so it can be classified, masked, excerpted and relayed.
            error_body = _mask_body(await _read_limited(response, timeouts.stream_idle), pair.secrets)
            response.release()
            verdict = classify_status(response.status, pair.auto_disable.count_statuses, error_body)
            assert verdict is not None
            message = excerpt(error_body, pair.secrets)
            # A 429/503 may say when to come back: those headers go to the tracker's rate-limit rule.
            retry = hint_headers(response.headers.items()) if response.status in RETRY_STATUSES else ()
            return Failed(
                pair,
                Outcome(
                    verdict.kind,
                    verdict.reason,
                    ErrorInfo(response.status, message, verdict.error.kind if verdict.error else ""),
                    retry_headers=retry,
                ),
                status=response.status,
                body=error_body,
                headers=CIMultiDict(response.headers),
            )
        if proxied.stream and response.headers.get("content-type", "").startswith(SSE):
            return await _open_stream(pair, response, started)
        return await _open_body(pair, response)  # also a stream request answered with one JSON body
    except TimeoutError:
        if response is not None:
            response.close()
        if response is None:
            reason = "first_byte_timeout"
        elif proxied.stream and first_token_due is not None and loop.time() >= first_token_due:
            reason = "first_token_timeout"
        else:
            reason = "stream_idle_timeout"
        return Failed(pair, failure(reason, None, f"upstream {reason.replace('_', ' ')}"), timeout=True)
    except aiohttp.ConnectionTimeoutError:
        return Failed(pair, failure("connect_timeout", None, "connect timeout"), timeout=True)
    except (aiohttp.ClientError, OSError) as exc:
        if response is not None:
            response.close()
        if (local := local_resource_error(exc)) is not None:
            # EMFILE on our own socket(): the gateway is out of descriptors; the upstream was never reached.
            overload.note("upstream connect", local)
            return Failed(pair, Outcome("neutral", GATEWAY_OVERLOADED, ErrorInfo(None, local.strerror or str(local))))
        reason = "connect_error" if response is None else "stream_error"
        return Failed(pair, failure(reason, None, excerpt(describe(exc), pair.secrets)))
    except asyncio.CancelledError:
        # The client went away while we waited (reported by the caller): nothing may stay open.
        if response is not None:
            response.close()
        raise


async def _open_stream(pair: Pair, response: aiohttp.ClientResponse, started: float) -> Opened | Failed:
    """Read a stream up to its first chunk with content, holding back the ones without (role-only
    deltas, empty `choices`, comments and pings: bounded by `StreamStart`), so that a stall before
    the first token, an error as the first event, or a stream with no content still fails over.

    Each read waits at most `stream-idle`, and all of them together until `first-token` seconds
    after the attempt started (a TimeoutError, told apart by the caller).
    """
    loop = asyncio.get_running_loop()
    timeouts = pair.timeouts
    first_token = timeouts.first_token_seconds
    due = None if first_token is None else started + first_token
    watch = StreamStart()
    held = bytearray()
    content = response.content
    while True:
        # What has already arrived is judged at once; only a real wait arms the timer.
        chunk = content.read_nowait()
        if not chunk and not content.at_eof():
            idle_due = None if timeouts.stream_idle is None else loop.time() + timeouts.stream_idle
            deadline = idle_due if due is None else due if idle_due is None else min(due, idle_due)
            async with asyncio.timeout_at(deadline):
                chunk = await content.readany()
        verdict = watch.feed(chunk) if chunk else watch.end()
        held += chunk
        if verdict in ("content", "overflow"):
            return Opened(pair, response, bytes(held))
        if verdict is None:
            continue
        response.release()
        if verdict == "error":
            message = excerpt(error_message(watch.error), pair.secrets)
            return Failed(pair, failure(watch.error_reason(), 200, f"error as the stream's first event: {message}"))
        what = "before any data" if not held else "without any content"
        return Failed(pair, failure("empty_stream", 200, f"upstream ended the stream {what}"))


async def _open_body(pair: Pair, response: aiohttp.ClientResponse) -> Opened | Failed:
    """Read the first `SMALL_BODY_LIMIT` bytes of a non-stream answer; when that is the whole body,
    it may be an error object in a 200 (`error_in_200`, which fails over). A larger body is relayed
    from what was read on, never parsed."""
    idle = pair.timeouts.stream_idle
    head = bytearray()
    content = response.content
    while len(head) <= SMALL_BODY_LIMIT:
        # What has arrived with the headers is taken at once; only a real wait arms the idle timer.
        chunk = content.read_nowait()
        if not chunk and not content.at_eof():
            async with asyncio.timeout(idle):
                chunk = await content.readany()
        if not chunk:
            reason = classify_body(bytes(head))
            if reason is None:
                break
            response.release()
            message = excerpt(_mask_body(bytes(head), pair.secrets), pair.secrets)
            return Failed(pair, failure(reason, response.status, message))
        head += chunk
    return Opened(pair, response, bytes(head))


@functools.lru_cache(maxsize=64)
def _client_timeout(connect: float | None) -> aiohttp.ClientTimeout:
    """aiohttp's timeout object for a connect timeout: one per distinct value, not one per attempt."""
    return aiohttp.ClientTimeout(total=None, sock_connect=connect)


async def _read_limited(response: aiohttp.ClientResponse, idle: float | None) -> bytes:
    """An error body, at most 64 KiB: enough to relay and excerpt, bounded against hostile upstreams."""
    try:
        async with asyncio.timeout(idle):
            return await response.content.read(_ERROR_BODY_LIMIT)
    except (TimeoutError, aiohttp.ClientError, OSError):
        return b""


def _mask_body(body: bytes, secrets: SecretMasker | tuple[str, ...]) -> bytes:
    """Upstreams echo keys in errors ("Incorrect API key provided: sk-..."); the client must not see them."""
    text = body.decode("utf-8", "surrogateescape")
    masked = mask_secrets(text, secrets)
    return body if masked == text else masked.encode("utf-8", "surrogateescape")


class _RelayedUpstreamError(ProxyError):
    """The last upstream error, given back to the client as it came (status, body, content type)."""

    def __init__(self, failure: Failed, headers: dict[str, str]) -> None:
        super().__init__(failure.outcome.error.message if failure.outcome.error else "upstream error", headers=headers)
        self.status = failure.status or 502
        self.raw_body = failure.body

    def body(self) -> bytes:
        return self.raw_body

    def anthropic_body(self) -> bytes:
        if is_anthropic_error(self.raw_body):
            return self.raw_body  # an Anthropic-format vendor's own error: relayed as it came
        return anthropic_error_body(self.status, upstream_error_message(self.raw_body) or self.message)


def _final_error(failure: Failed, proxied: ProxiedRequest, info: AccessInfo) -> ProxyError:
    headers: dict[str, str] = {}
    stamp(headers, failure.pair.vendor.name, failure.pair.model.name, info.attempts, failure.degraded)
    if failure.outcome.reason == GATEWAY_OVERLOADED:
        return GatewayOverloaded(
            "cliproxy is out of local resources (connections or file descriptors); retry shortly", headers=headers
        )
    if failure.status is not None:
        # An upstream's 429 is relayed with its rate-limit headers, so the client can pace itself.
        for name, value in relayable(failure.headers or CIMultiDict(), stream=False):
            # spelled as the error middleware looks it up, however the upstream spelled it
            headers.setdefault("Content-Type" if name.lower() == "content-type" else name, value)
        return _RelayedUpstreamError(failure, headers)
    error = failure.outcome.error
    detail = f" ({error.message})" if error and error.message else ""
    message = f"all {info.attempts} upstream attempt(s) for '{proxied.model}' failed; last: {failure.outcome.reason}{detail}"
    if failure.timeout:
        return UpstreamTimeout(message, headers=headers)
    return UpstreamUnavailable(message, headers=headers)


def _nothing_available(route: Route, sink: OutcomeSink) -> ProxyError:
    """The 503 when no pair of `route` could be tried, each cause counted apart (built only here)."""
    vendors_off = {p.vendor.name for p in route.switched_off_pairs if not p.vendor.enabled}
    keyless = {p.vendor.name for p in route.switched_off_pairs if p.vendor.enabled and p.vendor.missing_key}
    models_off = sum(1 for p in route.switched_off_pairs if p.vendor.routable and not p.model.enabled)
    auto: list[float] = []
    manual: list[float | None] = []
    limited: list[float] = []
    # The tiers as they are: `route.ordered()` would move the round robin for the next request.
    for pair in chain.from_iterable(route.tiers):
        reason = sink.disabled_by(pair.key)
        wait = sink.seconds_until_available(pair.key)
        if reason == "manual":
            manual.append(wait)
        elif reason in ("auto", "credentials"):  # credentials: every key of its vendor is out, back by the clock too
            auto.append(wait or 0.0)
        elif reason == "rate-limited":
            limited.append(wait or 0.0)
    why = Unavailability(len(vendors_off), len(keyless), models_off, tuple(auto), tuple(manual), tuple(limited))
    return NoVendorAvailable.for_model(route.name, why)
