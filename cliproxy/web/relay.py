"""Relaying the chosen upstream answer to the client chunk by chunk.

Once `cliproxy.web.upstream` has chosen a pair, `relay` copies its answer as it arrives; a failure
from then on can no longer fail over and ends the client's stream with an error event.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from cliproxy.core.errors import UpstreamUnavailable, error_event
from cliproxy.core.events import ErrorInfo, Outcome, OutcomeSink
from cliproxy.core.redact import excerpt
from cliproxy.web.access import AccessInfo
from cliproxy.web.answer_headers import SSE, relayable_headers
from cliproxy.web.attempts import CLIENT_DISCONNECT, CLIENT_WRITE_TIMEOUT, OK, Opened, describe, report
from cliproxy.web.proxied_request import AnswerTranslator, ProxiedRequest

__all__ = ["relay"]


async def relay(
    request: web.Request,
    opened: Opened,
    proxied: ProxiedRequest,
    info: AccessInfo,
    sink: OutcomeSink,
) -> web.StreamResponse:
    """Copy the chosen answer to the client as it arrives; failures now end the stream with an error event."""
    upstream = opened.response
    pair = opened.pair
    headers = relayable_headers(upstream, pair, info.attempts, opened.degraded)
    is_sse = upstream.headers.get("content-type", "").startswith(SSE)
    if (
        not is_sse
        and upstream.status == 200
        and proxied.translator is None
        and upstream.content.at_eof()
        and not _write_may_block(request.transport, opened.first_chunk)
    ):
        return await _relay_whole(request, opened, headers, info, sink)
    client = _ClientResponse(status=upstream.status, headers=headers)
    if not proxied.stream and "content-encoding" not in upstream.headers and upstream.content_length is not None:
        client.content_length = upstream.content_length
    idle = pair.timeouts.stream_idle
    content = upstream.content
    outcome: Outcome = OK
    # A client that stops reading fills its socket buffer and `write` waits for ever, holding the
    # upstream stream open: past this many seconds it is given up (its fault, not the upstream's).
    write_timeout = proxied.client_write_timeout
    translator = proxied.translator(is_sse) if proxied.translator is not None else None
    if translator is not None:
        client.content_length = None
        client.content_type = translator.content_type
    transport = request.transport
    try:
        if translator is None or not translator.buffered:
            await client.prepare(request)
        chunk = opened.first_chunk  # what `_open` already read; then each chunk as it arrives
        while True:
            if translator is not None and chunk:
                chunk = translator.feed(chunk)
            if chunk:
                if info.ttfb is None:
                    info.ttfb = time.perf_counter() - info.started
                if _write_may_block(transport, chunk):
                    async with asyncio.timeout(write_timeout):
                        await client.write(chunk)
                else:
                    await client.write(chunk)
                info.bytes_out += len(chunk)
            try:
                # What has already arrived is taken at once; only a real wait arms the idle timer.
                chunk = content.read_nowait()
                if not chunk and not content.at_eof():
                    async with asyncio.timeout(idle):
                        chunk = await content.readany()
            except TimeoutError:
                outcome = Outcome("failure", "stream_idle_timeout", ErrorInfo(None, "upstream stream idle timeout"))
                break
            except (aiohttp.ClientError, OSError) as exc:
                outcome = Outcome("failure", "stream_error", ErrorInfo(upstream.status, excerpt(describe(exc), pair.secrets)))
                break
            if not chunk:
                break
        if outcome.kind == "failure":
            upstream.close()
            if is_sse:
                await client.write(_sse_error(outcome) if translator is None else translator.fail(_sse_error_message(outcome)))
            elif translator is not None and translator.buffered:
                # Nothing was sent yet (a translated body goes out whole): the client gets an error.
                report(sink, info, pair, outcome)
                raise UpstreamUnavailable(f"the upstream answer was cut short ({outcome.reason})")
            else:
                # A plain body cut short: the client must not take it for a whole answer.
                if request.transport is not None:
                    request.transport.close()
                report(sink, info, pair, outcome)
                return client
        else:
            upstream.release()
        if translator is not None:
            async with asyncio.timeout(write_timeout):
                await _write_translated_end(request, client, translator, info)
        await client.write_eof()
    except TimeoutError:
        # Only the client writes are under a timeout here (upstream reads handle their own above).
        upstream.close()
        if request.transport is not None:
            request.transport.abort()
        report(sink, info, pair, CLIENT_WRITE_TIMEOUT)
        return client
    except asyncio.CancelledError:
        upstream.close()
        report(sink, info, pair, CLIENT_DISCONNECT)
        raise
    except ConnectionResetError:  # aiohttp's ClientConnectionResetError too: the client reset the connection
        # Answered, not raised: raised, aiohttp logs an ERROR with a traceback for each such client.
        upstream.close()
        report(sink, info, pair, CLIENT_DISCONNECT)
        return client
    report(sink, info, pair, outcome)
    return client


async def _relay_whole(
    request: web.Request, opened: Opened, headers: CIMultiDict[str], info: AccessInfo, sink: OutcomeSink
) -> web.StreamResponse:
    """A JSON answer `_open` has already read whole (up to `SMALL_BODY_LIMIT`), going where the
    socket takes it without waiting: one `web.Response`, its headers and body in one write. (Never
    an SSE stream, even one that had ended: a stream goes out chunk by chunk.) The streaming
    path's prepare, write and write_eof cost more CPU for the same bytes on the wire (with the
    first-token watch's `read_nowait`, 8% of a non-streaming request's, measured under wrk)."""
    upstream, body = opened.response, opened.first_chunk
    upstream.release()
    client = web.Response(status=200, headers=headers, body=body)
    info.ttfb = time.perf_counter() - info.started
    try:
        await client.prepare(request)
        await client.write_eof()
    except asyncio.CancelledError:
        report(sink, info, opened.pair, CLIENT_DISCONNECT)
        raise
    except ConnectionResetError:  # answered, not raised: see `relay`
        report(sink, info, opened.pair, CLIENT_DISCONNECT)
        return client
    info.bytes_out += len(body)
    report(sink, info, opened.pair, OK)
    return client


# Room for the response headers (sent with the first chunk) and the chunked-encoding framing.
_WRITE_OVERHEAD = 8192


def _write_may_block(transport: asyncio.BaseTransport | None, chunk: bytes) -> bool:
    """Whether writing `chunk` to the client could wait, so that the write timeout must be armed.

    A write waits only when the transport's buffer goes past its high-water mark (the client is not
    reading fast enough): below it, `write` hands the bytes over and returns without yielding. Arming
    a timer for every chunk (a TimerHandle each, the cost of one `asyncio.timeout`) is the
    exception: a client that stops reading lets its buffer fill, and from then on each write is timed.
    """
    if not isinstance(transport, asyncio.WriteTransport):
        return True  # no transport to ask (closing): the timeout decides, as before
    return transport.get_write_buffer_size() + len(chunk) + _WRITE_OVERHEAD > transport.get_write_buffer_limits()[1]


class _ClientResponse(web.StreamResponse):
    """The client's answer; its headers leave with the first body bytes, in one send instead of two.

    `relay` prepares it only once it holds the first chunk of a stream, so holding the headers
    back delays nothing (aiohttp's `web.Response` does the same with its body).
    """

    _send_headers_immediately = False


async def _write_translated_end(
    request: web.Request, client: _ClientResponse, translator: AnswerTranslator, info: AccessInfo
) -> None:
    """What the translator holds back to the end: the whole answer when buffered (its status known
    only now, so the response is prepared only now), the closing events of a stream."""
    tail = translator.end()
    if translator.buffered:
        client.set_status(translator.status)
        client.content_length = len(tail)
        await client.prepare(request)
    if tail:
        if info.ttfb is None:
            info.ttfb = time.perf_counter() - info.started
        await client.write(tail)
        info.bytes_out += len(tail)


def _sse_error_message(outcome: Outcome) -> str:
    if outcome.reason == "stream_idle_timeout":
        return "the upstream stream stalled past the idle timeout"
    return "the upstream stream was interrupted"


def _sse_error(outcome: Outcome) -> bytes:
    """The last event of a stream the upstream broke: the OpenAI error shape, `code` the outcome's reason."""
    return error_event(_sse_error_message(outcome), "upstream_error", outcome.reason)
