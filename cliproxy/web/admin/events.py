"""Handler of `/api/events`: the audit history, newest first, filtered and paged; every detail masked."""

from __future__ import annotations

from aiohttp import web

from cliproxy.core.errors import InvalidRequest
from cliproxy.core.times import parse_since
from cliproxy.web.admin.exchange import committed, json_reply, query
from cliproxy.web.admin.registry import endpoint
from cliproxy.web.admin.schemas import EventPageSchema, EventsQuerySchema
from cliproxy.web.admin.views import event_view
from cliproxy.web.keys import CLOCK, RUNTIME, STORE

__all__ = ["event_view", "list_events"]


@endpoint(
    "GET",
    "/api/events",
    summary="The audit history, newest first",
    response=EventPageSchema,
    query=EventsQuerySchema,
    errors=(400, 503),
    tags=("events",),
)
async def list_events(request: web.Request) -> web.Response:
    """Filtered by vendor, model (upstream name), kind and since; `limit` per page (1-1000, default 100);
    pass `next_before_id` as `before_id` for the next page."""
    params = query(request, EventsQuerySchema())
    since = None
    if "since" in params:
        try:
            since = parse_since(params["since"], request.config_dict[CLOCK]())
        except (ValueError, OverflowError) as exc:
            raise InvalidRequest(f"invalid query: since: {exc}", param="since") from None
    await committed(request)
    limit = params["limit"]
    events = await request.config_dict[STORE].events(
        vendor=params.get("vendor"),
        model=params.get("model"),
        kind=params.get("kind"),
        since=since,
        before_id=params.get("before_id"),
        limit=limit,
    )
    secrets = request.config_dict[RUNTIME].current.masker
    out = [event_view(event, secrets) for event in events]
    next_before = events[-1].id if len(events) == limit and events else None
    return json_reply(EventPageSchema, {"events": out, "next_before_id": next_before})
