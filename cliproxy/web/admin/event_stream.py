"""`GET /api/events/stream`: the audit history as Server-Sent Events, live.

Each subscriber waits on its own wake-up flag, which the journal's committed listener sets: an
event is sent once it is in SQLite, never before (what the stream shows is durable). On waking,
the subscriber reads the events after the last id it sent from the store, so the live part and a
resume (`Last-Event-ID`) are the same code and an event is never sent twice or skipped. The
listener does O(subscribers) work per committed event and never touches the disk; subscribers
are bounded (`MAX_SUBSCRIBERS`, 503 past it) because each holds a connection and reads the store.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

from aiohttp import web

from cliproxy.core.errors import InvalidRequest, ServiceUnavailable
from cliproxy.core.events import Event
from cliproxy.services.journal import Journal
from cliproxy.services.store import Store
from cliproxy.web.admin.registry import endpoint
from cliproxy.web.admin.schemas import EventSchema
from cliproxy.web.admin.views import event_view
from cliproxy.web.keys import JOURNAL, RUNTIME, STORE

__all__ = ["EVENT_FEED", "MAX_SUBSCRIBERS", "EventFeed", "event_feed", "stream_events"]

#: Open streams at most; one more is refused with 503.
MAX_SUBSCRIBERS = 16
#: A resume replays at most this many missed events (the newest); older ones are in `GET /api/events`.
MAX_REPLAY = 1000
#: A comment line this often keeps proxies and browsers from timing an idle stream out.
KEEPALIVE_SECONDS = 15.0
_PAGE = 200


class EventFeed:
    """The open streams' wake-up flags, set by the journal whenever an event is committed."""

    def __init__(self, max_subscribers: int = MAX_SUBSCRIBERS) -> None:
        self.max_subscribers = max_subscribers
        self._wakeups: set[asyncio.Event] = set()
        self.closed = False

    def __len__(self) -> int:
        return len(self._wakeups)

    def attach(self, journal: Journal) -> None:
        journal.committed_listeners.append(self._committed)

    def subscribe(self) -> asyncio.Event | None:
        """A new stream's flag, or None when `max_subscribers` streams are open."""
        if len(self._wakeups) >= self.max_subscribers or self.closed:
            return None
        wakeup = asyncio.Event()
        self._wakeups.add(wakeup)
        return wakeup

    def unsubscribe(self, wakeup: asyncio.Event) -> None:
        self._wakeups.discard(wakeup)

    def close(self) -> None:
        """Shutting down: wake every stream so it ends."""
        self.closed = True
        for wakeup in self._wakeups:
            wakeup.set()

    def _committed(self, _event: Event) -> None:
        for wakeup in self._wakeups:
            wakeup.set()


#: The gateway's event feed (attached to its journal at start-up).
EVENT_FEED = web.AppKey("event_feed", EventFeed)


async def event_feed(app: web.Application) -> AsyncIterator[None]:
    """Cleanup context (after the journal is up): listen to it; at shutdown end every stream."""
    feed = app[EVENT_FEED]

    feed.attach(app[JOURNAL])
    yield
    feed.close()


async def events_after(store: Store, last_id: int) -> list[Event]:
    """The events with an id above `last_id`, oldest first (at most the newest `MAX_REPLAY`)."""
    newest_first: list[Event] = []
    before: int | None = None
    while len(newest_first) < MAX_REPLAY:
        page = await store.events(before_id=before, limit=_PAGE)
        fresh = [e for e in page if e.id is not None and e.id > last_id]
        newest_first.extend(fresh)
        if len(fresh) < len(page) or len(page) < _PAGE:
            break
        before = page[-1].id
    return list(reversed(newest_first[:MAX_REPLAY]))


async def _newest_id(store: Store) -> int:
    page = await store.events(limit=1)
    return page[0].id if page and page[0].id is not None else 0


@endpoint(
    "GET",
    "/api/events/stream",
    summary="The audit history, live, as Server-Sent Events",
    response=None,
    response_content="text/event-stream",
    errors=(400, 503),
    tags=("events",),
)
async def stream_events(request: web.Request) -> web.StreamResponse:
    """One `event: audit` message per committed event, oldest first, `id:` its event id and `data:`
    the event as `GET /api/events` shows it (`EventSchema`). Without `Last-Event-ID` the stream starts
    with the next event; with it, the events after that id are sent first (at most the newest 1000).
    At most 16 streams are open at once (503 past it). A comment line every 15 s keeps it alive."""
    header = request.headers.get("Last-Event-ID")
    store = request.config_dict[STORE]
    if header is not None:
        try:
            last_id = int(header.strip())
        except ValueError:
            raise InvalidRequest("Last-Event-ID must be an event id (an integer)", param="Last-Event-ID") from None
    feed = request.config_dict[EVENT_FEED]
    wakeup = feed.subscribe()
    if wakeup is None:
        raise ServiceUnavailable(
            f"too many open event streams (at most {feed.max_subscribers}); try again later", headers={"Retry-After": "5"}
        )
    try:
        if header is None:
            last_id = await _newest_id(store)
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        )
        await response.prepare(request)
        await response.write(b": stream open\n\n")
        schema = EventSchema()
        while not feed.closed:
            wakeup.clear()  # before reading: an event committed while we read wakes the next round
            secrets = request.config_dict[RUNTIME].current.masker
            for event in await events_after(store, last_id):
                data = json.dumps(schema.dump(event_view(event, secrets)), separators=(",", ":"))
                await response.write(f"id: {event.id}\nevent: audit\ndata: {data}\n\n".encode())
                last_id = event.id or last_id
            try:
                await asyncio.wait_for(wakeup.wait(), KEEPALIVE_SECONDS)
            except TimeoutError:
                await response.write(b": keep-alive\n\n")
        return response
    finally:
        feed.unsubscribe(wakeup)
