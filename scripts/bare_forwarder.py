"""The baseline of `scripts/bench.py`: a bare aiohttp reverse proxy, the practical floor in Python.

One shared `ClientSession`, read the body, forward it, stream the answer back. No routing, no
validation, no failover, no logging: whatever cliproxy costs beyond this is the price of its logic.

    python scripts/bare_forwarder.py --port 9200 --upstream http://127.0.0.1:9100
"""

from __future__ import annotations

import argparse
import sys

import aiohttp
from aiohttp import web

# The same hop-by-hop and framing headers cliproxy drops, so both do the same work on the wire.
_DROP = frozenset(
    {
        "connection",
        "keep-alive",
        "transfer-encoding",
        "upgrade",
        "te",
        "trailer",
        "host",
        "content-length",
        "accept-encoding",
        "expect",
        "content-encoding",
        "server",
        "date",
    }
)
SESSION = web.AppKey("session", aiohttp.ClientSession)
UPSTREAM = web.AppKey("upstream", str)


async def forward(request: web.Request) -> web.StreamResponse:
    body = await request.read()
    headers = {k: v for k, v in request.headers.items() if k.lower() not in _DROP}
    url = request.app[UPSTREAM] + request.path_qs
    async with request.app[SESSION].request(request.method, url, data=body, headers=headers) as upstream:
        client = web.StreamResponse(
            status=upstream.status, headers={k: v for k, v in upstream.headers.items() if k.lower() not in _DROP}
        )
        if upstream.content_length is not None:
            client.content_length = upstream.content_length
        await client.prepare(request)
        async for chunk in upstream.content.iter_any():
            await client.write(chunk)
        await client.write_eof()
        return client


async def _session(app: web.Application):  # type: ignore[no-untyped-def]
    # No connection limit, like cliproxy: 1,000 open streams are 1,000 upstream connections.
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0)
    async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as session:
        app[SESSION] = session
        yield


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9200)
    parser.add_argument("--upstream", required=True, help="scheme://host:port of the upstream; paths pass unchanged")
    args = parser.parse_args()
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[UPSTREAM] = args.upstream.rstrip("/")
    app.cleanup_ctx.append(_session)
    app.router.add_route("*", "/{tail:.*}", forward)
    web.run_app(app, host=args.host, port=args.port, access_log=None, print=None, handler_cancellation=True, shutdown_timeout=1.0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
