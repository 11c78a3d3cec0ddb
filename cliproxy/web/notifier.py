"""Webhook notifications: each committed state transition POSTed as JSON to the `notify` receivers.

Fed by a journal *committed* listener (`Notifier.on_event`): a receiver is only ever told what
SQLite holds, with the event's id there, in the shape `GET /api/events` lists it. Nothing here is
on the request path: the listener runs in the journal's writer task, does a few dict operations and
appends to a bounded queue; one sender task per receiver does the HTTP, on its own ClientSession,
with a timeout on every POST. A receiver that hangs or answers 500 holds up only its own queue.

Per receiver and per pair, at most one message per `window_seconds` (a minute). A transition
inside the window is held; a later one replaces it (the replaced one is *coalesced*); when the
window ends the held one is sent with `"coalesced": N`, the number of transitions it replaced.
So a receiver always hears the pair's latest state within a minute, and a flapping pair costs it
two messages a minute at most. `Coalescer` is that rule, pure and clock-driven.

Counted in `cliproxy_notifications_total{result}`: `sent` (2xx), `failed` (every attempt failed:
refused, timed out, or answered an error), `dropped` (its receiver's queue was full, or the
receiver left the config or the gateway stopped before it was sent), `coalesced` (replaced by a
later transition of the same pair).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web

from cliproxy.core.config import NOTIFY_EVENTS, NotifyTarget
from cliproxy.core.events import Event
from cliproxy.core.runtime import LiveRuntime
from cliproxy.web.admin.views import event_view

__all__ = ["Coalescer", "NOTIFIER", "NotifyTiming", "Notifier", "SIGNATURE_HEADER", "sign"]

_log = logging.getLogger("cliproxy.notify")

#: The header that carries `sha256=<hex HMAC-SHA256 of the body>` when the receiver has a `secret`.
SIGNATURE_HEADER = "x-cliproxy-signature"
_KINDS = frozenset(NOTIFY_EVENTS)

#: A notification's pair: (vendor, model); (None, None) for config events.
PairKey = tuple[str | None, str | None]


def sign(secret: str, body: bytes) -> str:
    """The `x-cliproxy-signature` value of `body`: `sha256=` and the hex HMAC-SHA256 keyed by `secret`."""
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


@dataclass(frozen=True, slots=True)
class NotifyTiming:
    """How the notifier paces itself (not config keys: the defaults suit every receiver; tests shorten them)."""

    #: At most one message per pair and receiver in this many seconds (the clock's).
    window_seconds: float = 60.0
    #: The whole POST, connect to answer.
    timeout_seconds: float = 5.0
    #: Tries per message, the first included; then it is counted `failed`.
    attempts: int = 4
    #: Seconds before the first retry, doubled each time up to `retry_max`.
    retry_initial: float = 1.0
    retry_max: float = 30.0
    #: Messages waiting per receiver; beyond it the oldest is dropped (the newest state matters most).
    queue_size: int = 256
    #: How often (real seconds) held messages are checked against the clock.
    tick_seconds: float = 1.0
    #: At shutdown, how long queued messages may still be sent.
    close_seconds: float = 2.0


class Coalescer:
    """Pure: at most one message per pair per window; a held transition is replaced by a later one."""

    __slots__ = ("window", "_last_sent", "_held")

    def __init__(self, window: float) -> None:
        self.window = window
        self._last_sent: dict[PairKey, float] = {}
        #: pair -> (the latest transition held back, how many earlier ones it replaced)
        self._held: dict[PairKey, tuple[dict[str, Any], int]] = {}

    def offer(self, pair: PairKey, item: dict[str, Any], now: float) -> tuple[dict[str, Any] | None, int]:
        """(the message to send now or None when held, how many held transitions this one replaced: 0 or 1)."""
        held = self._held.get(pair)
        if held is not None:
            self._held[pair] = (item, held[1] + 1)
            return None, 1
        last = self._last_sent.get(pair)
        if last is not None and now - last < self.window:
            self._held[pair] = (item, 0)
            return None, 0
        self._last_sent[pair] = now
        return {**item, "coalesced": 0}, 0

    def due(self, now: float) -> list[dict[str, Any]]:
        """The held messages whose pair's window has ended, each with its `coalesced` count; forgets old pairs."""
        out: list[dict[str, Any]] = []
        for pair, (item, replaced) in list(self._held.items()):
            if now - self._last_sent[pair] >= self.window:
                del self._held[pair]
                self._last_sent[pair] = now
                out.append({**item, "coalesced": replaced})
        for pair, at in list(self._last_sent.items()):
            if now - at >= self.window and pair not in self._held:
                del self._last_sent[pair]  # bounded by the pairs active in the last window
        return out

    @property
    def holding(self) -> int:
        return len(self._held)


def _origin(url: str) -> str:
    """What a log line may say about a receiver: scheme and host. A webhook URL's path and query
    often hold its token (Slack, Discord), and its user part a password."""
    try:
        parts = urlsplit(url)
        return f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    except ValueError:
        return "<invalid url>"


class _Channel:
    """One receiver: its coalescer, its bounded queue and its sender task."""

    def __init__(self, target: NotifyTarget, timing: NotifyTiming) -> None:
        self.target = target
        self.coalescer = Coalescer(timing.window_seconds)
        self.queue: deque[dict[str, Any]] = deque()
        self.wakeup = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        #: Set while nothing is queued or being sent (what a shutdown waits for).
        self.idle = asyncio.Event()
        self.idle.set()


class Notifier:
    """Sends committed transitions to the `notify` receivers of the running config (reloads apply at once)."""

    def __init__(
        self,
        runtime: LiveRuntime,
        *,
        count: Callable[[str], None],
        clock: Callable[[], float],
        timing: NotifyTiming = NotifyTiming(),
        logger: logging.Logger = _log,
    ) -> None:
        self._runtime = runtime
        self._count = count
        self._clock = clock
        self.timing = timing
        self._log = logger
        self._targets: tuple[NotifyTarget, ...] = ()
        self._channels: list[_Channel] = []
        self._session: aiohttp.ClientSession | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._closed = False
        self._reconcile(runtime.current.config.notify)

    # ------------------------------------------------------------------ the listener (sync, no I/O)

    def on_event(self, event: Event) -> None:
        """A journal committed listener: queue `event` for every receiver that wants it."""
        if self._closed:
            return
        runtime = self._runtime.current
        if runtime.config.notify is not self._targets:
            self._reconcile(runtime.config.notify)  # a reload: O(receivers), once per new config
        if event.kind not in _KINDS or not self._channels:
            return
        item: dict[str, Any] | None = None
        pair = (event.vendor, event.model)
        now = self._clock()
        for channel in self._channels:
            if not channel.target.wants(event.kind):
                continue
            if item is None:
                item = event_view(event, runtime.masker)
            message, replaced = channel.coalescer.offer(pair, item, now)
            if replaced:
                self._count("coalesced")
            if message is not None:
                self._enqueue(channel, message)

    def _enqueue(self, channel: _Channel, message: dict[str, Any]) -> None:
        if len(channel.queue) >= self.timing.queue_size:
            channel.queue.popleft()
            self._count("dropped")
            self._log.warning("notification dropped: the queue of %s is full", _origin(channel.target.url))
        channel.queue.append(message)
        channel.idle.clear()
        channel.wakeup.set()

    def _reconcile(self, targets: tuple[NotifyTarget, ...]) -> None:
        """Keep the channels of receivers still configured (unchanged), open new ones, close the others."""
        kept: list[_Channel] = []
        old = list(self._channels)
        for target in targets:
            same = next((c for c in old if c.target == target), None)
            if same is not None:
                old.remove(same)
                kept.append(same)
            else:
                channel = _Channel(target, self.timing)
                kept.append(channel)
                if self._session is not None:
                    channel.task = asyncio.create_task(self._send_loop(channel), name="notify-sender")
        for gone in old:
            self._drop_channel(gone)
        self._channels = kept
        self._targets = targets

    def _drop_channel(self, channel: _Channel) -> None:
        lost = len(channel.queue) + channel.coalescer.holding
        if lost:
            self._count_n("dropped", lost)
        channel.queue.clear()
        if channel.task is not None:
            channel.task.cancel()

    def _count_n(self, result: str, n: int) -> None:
        for _ in range(n):
            self._count(result)

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Open the session and start a sender per receiver and the ticker that releases held messages."""
        # Its own session: a receiver's slowness never takes a connection the proxy needs, and no cookies.
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.timing.timeout_seconds), cookie_jar=aiohttp.DummyCookieJar()
        )
        for channel in self._channels:
            channel.task = asyncio.create_task(self._send_loop(channel), name="notify-sender")
        self._ticker = asyncio.create_task(self._tick_loop(), name="notify-ticker")

    async def close(self) -> None:
        """Give queued messages `close_seconds` to go out, then stop; what is left is counted `dropped`."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*(c.idle.wait() for c in self._channels)), self.timing.close_seconds)
        self._closed = True
        tasks = [t for t in (self._ticker, *(c.task for c in self._channels)) if t is not None]
        for channel in self._channels:
            self._drop_channel(channel)
        if self._ticker is not None:
            self._ticker.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._session is not None:
            await self._session.close()

    # ------------------------------------------------------------------ the senders

    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(self.timing.tick_seconds)
            now = self._clock()
            for channel in self._channels:
                if channel.coalescer.holding:
                    for message in channel.coalescer.due(now):
                        self._enqueue(channel, message)

    async def _send_loop(self, channel: _Channel) -> None:
        while True:
            if not channel.queue:
                channel.idle.set()
                channel.wakeup.clear()
                await channel.wakeup.wait()
                continue
            message = channel.queue.popleft()
            delivered = await self._deliver(channel.target, message)
            self._count("sent" if delivered else "failed")

    async def _deliver(self, target: NotifyTarget, message: dict[str, Any]) -> bool:
        """POST one message, retrying with backoff on a refused connection, a timeout, a 429 or a 5xx."""
        assert self._session is not None
        body = json.dumps(message, separators=(",", ":")).encode("utf-8")
        headers = {"Content-Type": "application/json", "User-Agent": "cliproxy-notify", "x-cliproxy-event": message["kind"]}
        if target.secret:
            headers[SIGNATURE_HEADER] = sign(target.secret, body)
        delay = self.timing.retry_initial
        problem = ""
        for attempt in range(1, self.timing.attempts + 1):
            try:
                async with self._session.post(target.url, data=body, headers=headers, allow_redirects=False) as answer:
                    await answer.read()
                    if 200 <= answer.status < 300:
                        return True
                    problem = f"answered {answer.status}"
                    if answer.status != 429 and answer.status < 500:
                        break  # the receiver refuses this message; sending it again will not change that
            except asyncio.CancelledError:
                raise
            except TimeoutError:
                problem = f"no answer within {self.timing.timeout_seconds:g}s"
            except aiohttp.ClientError as exc:
                problem = type(exc).__name__
            if attempt < self.timing.attempts:
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.timing.retry_max)
        self._log.warning(
            "notification failed: %s %s (event=%s vendor=%s model=%s)",
            _origin(target.url),
            problem,
            message["kind"],
            message.get("vendor"),
            message.get("model"),
        )
        return False


#: The app's notifier. Here rather than in `cliproxy.web.keys`: no handler uses it, and the keys
#: module is imported by the management API whose event view this module uses.
NOTIFIER = web.AppKey("notifier", Notifier)
