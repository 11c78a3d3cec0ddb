"""Handlers of `/api/pairs...`: every pair's status in one call, and its traffic over the last hour.

The dashboard (`/ui/`) draws its table from `GET /api/pairs` and its sparklines from
`GET /api/pairs/stats`; both are plain management endpoints, as usable from curl.
"""

from __future__ import annotations

from aiohttp import web
from marshmallow import Schema, fields

from cliproxy.core.routing import Pair
from cliproxy.core.runtime import Runtime
from cliproxy.web.admin.exchange import committed, json_reply
from cliproxy.web.admin.registry import endpoint
from cliproxy.web.admin.schemas import PairStatusSchema
from cliproxy.web.admin.views import pair_status
from cliproxy.web.keys import CLOCK, PAIR_TRAFFIC, RUNTIME, TRACKER

__all__ = ["PairListSchema", "PairStatsSchema", "list_pairs", "pair_stats"]


class PairEntrySchema(PairStatusSchema):
    priority = fields.Integer(required=True, metadata={"description": "the vendor's priority (higher is tried first)"})


class PairListSchema(Schema):
    pairs = fields.List(
        fields.Nested(PairEntrySchema),
        required=True,
        metadata={"description": "every configured pair, by client-facing name (alias), then priority order"},
    )


class PairSeriesSchema(Schema):
    vendor = fields.String(required=True)
    model = fields.String(required=True, metadata={"description": "the upstream model name"})
    requests = fields.List(
        fields.Integer(), required=True, metadata={"description": "attempts per minute, oldest first; the last is this minute"}
    )
    failures = fields.List(
        fields.Integer(), required=True, metadata={"description": "attempts per minute that counted towards auto-disable"}
    )


class PairStatsSchema(Schema):
    minutes = fields.Integer(required=True, metadata={"description": "length of each series (60: the last hour)"})
    pairs = fields.List(fields.Nested(PairSeriesSchema), required=True)


@endpoint("GET", "/api/pairs", summary="Every pair's status", response=PairListSchema, errors=(503,), tags=("models",))
async def list_pairs(request: web.Request) -> web.Response:
    """The status of every configured pair (the same entries as `GET /api/models/{model}/status`),
    grouped by alias: the dashboard's table in one call."""
    await committed(request)
    runtime = request.config_dict[RUNTIME].current
    tracker = request.config_dict[TRACKER]
    now = request.config_dict[CLOCK]()
    entries = [{**pair_status(p, runtime, tracker, now), "priority": p.vendor.priority} for p in _in_order(runtime)]
    return json_reply(PairListSchema, {"pairs": entries})


@endpoint("GET", "/api/pairs/stats", summary="Traffic per pair over the last hour", response=PairStatsSchema, tags=("models",))
async def pair_stats(request: web.Request) -> web.Response:
    """Requests and countable failures per pair per minute for the last 60 minutes, from in-memory
    counters (O(1) per attempt, never written to disk: a restart starts them from zero). Every
    configured pair is listed, with zeros when it has had no traffic."""
    runtime = request.config_dict[RUNTIME].current
    traffic = request.config_dict[PAIR_TRAFFIC]
    series = [traffic.series(pair.key) for pair in _in_order(runtime)]
    return json_reply(
        PairStatsSchema,
        {
            "minutes": len(series[0].requests) if series else 60,
            "pairs": [{"vendor": s.vendor, "model": s.model, "requests": s.requests, "failures": s.failures} for s in series],
        },
    )


def _in_order(runtime: Runtime) -> list[Pair]:
    """Every configured pair, by client-facing name, then priority (highest first), then vendor."""
    return sorted(runtime.table.pairs.values(), key=lambda p: (p.model.public_name, -p.vendor.priority, p.vendor.name))
