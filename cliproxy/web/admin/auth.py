"""Who may use the management API (`/api/...`): the key, the loopback rule and the lock-out.

The decision is pure (`decide`, `client_address`, `Lockout`): the peer address, the headers and
`now` are passed in, so the rules are tested as tables without sockets or sleeping. The shell at
the bottom (`authorize`, and the management sub-application's middleware over it) reads the live
config from the gateway's `RUNTIME` on every request (a hot reload swaps it), asks `decide`, and
raises the error the gateway's error middleware renders. `/metrics` with `require-auth` goes
through the same `authorize`, so it shares the key and the lock-out.

The rules, in the order they are applied:

1. No `remote-management.secret-key` set: the management API does not exist (404, the same
   answer as any unknown path).
2. The client address is the socket's peer. Only when the peer is listed in
   `remote-management.trusted-proxies` is `X-Forwarded-For` believed, and then only up to the
   last hop that is not itself a trusted proxy: entries to the left of it were written by the
   client and may be spoofed.
3. An address that failed the key check 5 times within 60 s is blocked for 600 s: 429 with
   `Retry-After`, loopback included. While blocked its requests are refused before the key is
   looked at, so a correct key does not lift the block early (and attempts during the block
   neither count nor extend it). Blocked addresses are never forgotten to make room for new
   ones (at most 10,000 addresses are remembered); when every place holds a block, a new address
   that fails the key is refused with 429 too, while the right key still gets in.
4. A client that is not loopback gets 403 unless `allow-remote: true`.
5. The key, from `Authorization: Bearer <key>` or `X-Management-Key: <key>`, compared in
   constant time; wrong or missing (or not even UTF-8): 401, and one failure counted against the address.
   Except a request that presents a valid client key and no management key (Claude Code sends
   `HEAD /api/hello` with its client key at every start): it is no attempt at the management key,
   so it is answered (401, or 404 for a path the management API does not have) and not counted.
"""

from __future__ import annotations

import hmac
import ipaddress
import math
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Literal

from aiohttp import web

from cliproxy.core.config import RemoteManagement
from cliproxy.core.errors import Forbidden, TooManyRequests, Unauthorized
from cliproxy.core.runtime import Runtime
from cliproxy.web.keys import ADMIN_ACTOR, CLOCK, RUNTIME

__all__ = [
    "ADMIN_LOCKOUT",
    "MAX_FAILURES",
    "FAILURE_WINDOW_SECONDS",
    "BLOCK_SECONDS",
    "Decision",
    "Lockout",
    "client_address",
    "decide",
    "is_loopback",
    "authorize",
    "management_auth_middleware",
    "presented_key",
]

MAX_FAILURES = 5
FAILURE_WINDOW_SECONDS = 60.0
BLOCK_SECONDS = 600.0
#: Addresses remembered at most; beyond it the least recently seen are forgotten first.
LOCKOUT_CAPACITY = 10_000

_Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def _parse(text: str) -> _Address | None:
    text = text.strip()
    if text.startswith("[") and "]" in text:  # "[::1]:1234" or "[::1]"
        text = text[1 : text.index("]")]
    elif text.count(":") == 1:  # "1.2.3.4:5678"
        text = text.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def is_loopback(address: str) -> bool:
    """127.0.0.0/8, ::1 and IPv4-mapped loopback; anything unparsable is not loopback."""
    parsed = _parse(address)
    return parsed is not None and parsed.is_loopback


def _trusted(address: str, proxies: Iterable[str]) -> bool:
    parsed = _parse(address)
    for proxy in proxies:
        proxy = proxy.strip()
        if not proxy:
            continue
        try:
            network = ipaddress.ip_network(proxy, strict=False)
        except ValueError:
            if proxy == address:
                return True
            continue
        if parsed is not None and parsed.version == network.version and parsed in network:
            return True
    return False


def client_address(peer: str | None, forwarded_for: str | None, trusted_proxies: Iterable[str]) -> str:
    """The address that made the request: the peer, or, when the peer is a trusted proxy, the
    right-most `X-Forwarded-For` hop that is not itself a trusted proxy."""
    proxies = tuple(trusted_proxies)
    address = (peer or "").strip() or "unknown"
    if not forwarded_for or not _trusted(address, proxies):
        return address
    hops = [hop.strip() for hop in forwarded_for.split(",") if hop.strip()]
    for hop in reversed(hops):
        address = hop[:64]  # the header is client text: keep what we remember and log short
        if not _trusted(address, proxies):
            break
    return address


class Lockout:
    """Failed key checks per address, and the addresses blocked because of them; bounded in memory.

    Two tables: addresses with recent failures (least recently seen forgotten first when the bound
    is reached) and blocked addresses, which are never forgotten to make room: evicting one would
    let an attacker with many source addresses (through a trusted proxy) unblock itself. When
    both together reach `capacity` and no watched address is left to forget, a new failing address
    is refused outright (`record_failure` says so). Blocks all last `block_seconds`, so the blocked
    table is in expiry order and ended blocks are dropped from its front.

    Not thread-safe and needs no lock: asyncio runs one handler step at a time and nothing here awaits.
    """

    def __init__(
        self,
        *,
        max_failures: int = MAX_FAILURES,
        window_seconds: float = FAILURE_WINDOW_SECONDS,
        block_seconds: float = BLOCK_SECONDS,
        capacity: int = LOCKOUT_CAPACITY,
    ) -> None:
        self.max_failures = max_failures
        self.window_seconds = window_seconds
        self.block_seconds = block_seconds
        self.capacity = capacity
        self._watched: OrderedDict[str, deque[float]] = OrderedDict()
        self._blocked: OrderedDict[str, float] = OrderedDict()  # address -> blocked until

    def __len__(self) -> int:
        return len(self._watched) + len(self._blocked)

    def blocked_for(self, address: str, now: float) -> float | None:
        """Seconds the address stays blocked, or None when it is not blocked."""
        self._drop_ended_blocks(now)
        until = self._blocked.get(address)
        return None if until is None else until - now

    def __contains__(self, address: object) -> bool:
        return address in self._watched or address in self._blocked

    def table_full(self, now: float) -> bool:
        """No room for a new address: every place is held by a block that has not ended."""
        self._drop_ended_blocks(now)
        return len(self) >= self.capacity and not self._watched

    def record_failure(self, address: str, now: float) -> float | None:
        """Count one failed attempt; returns the block's length when this failure starts one.

        A new address finds no place when `table_full`: nothing is recorded (the caller refuses it).
        """
        failures = self._watched.get(address)
        if failures is None:
            if not self._make_room(now):
                return None
            failures = self._watched[address] = deque(maxlen=self.max_failures)
        else:
            self._watched.move_to_end(address)
        failures.append(now)
        if len(failures) >= self.max_failures and now - failures[0] < self.window_seconds:
            del self._watched[address]
            self._blocked[address] = now + self.block_seconds
            return self.block_seconds
        return None

    def full_for(self, now: float) -> float:
        """Seconds until the earliest block ends and frees a place (for Retry-After)."""
        return next(iter(self._blocked.values())) - now if self._blocked else 0.0

    def _make_room(self, now: float) -> bool:
        """Room for one more address: ended blocks go first, then the least recently seen watched one."""
        self._drop_ended_blocks(now)
        while len(self) >= self.capacity:
            if not self._watched:
                return False
            self._watched.popitem(last=False)
        return True

    def _drop_ended_blocks(self, now: float) -> None:
        while self._blocked:
            address, until = next(iter(self._blocked.items()))
            if now < until:
                return
            del self._blocked[address]  # block over: its failures were forgotten when it started


Status = Literal[200, 401, 403, 404, 429]


@dataclass(frozen=True, slots=True)
class Decision:
    """What to answer: 200 lets the request through, acting as `address`."""

    status: Status
    address: str
    message: str = ""
    retry_after: int | None = None
    #: False for a 401 that did not count toward the lock-out (a client key, not a management key attempt).
    counted: bool = True


def presented_key(authorization: str | None, management_key: str | None) -> str | None:
    """The key from `Authorization: Bearer <key>`, else from `X-Management-Key`."""
    if authorization and authorization[:7].lower() == "bearer ":
        return authorization[7:].strip() or None
    return (management_key or "").strip() or None


def decide(
    settings: RemoteManagement,
    *,
    peer: str | None,
    forwarded_for: str | None,
    key: str | None,
    lockout: Lockout,
    now: float,
    client_only: bool = False,
) -> Decision:
    """Apply the rules of the module docstring, in order. Records a failure in `lockout` on a bad key,
    unless `client_only` (the request presented a valid client key and no management key)."""
    address = client_address(peer, forwarded_for, settings.trusted_proxies)
    if not settings.secret_key:
        return Decision(404, address, "Not Found")
    blocked = lockout.blocked_for(address, now)
    if blocked is not None:
        return Decision(
            429,
            address,
            "too many failed management key attempts from this address; try again later",
            retry_after=max(1, math.ceil(blocked)),
        )
    if not settings.allow_remote and not is_loopback(address):
        return Decision(
            403, address, "the management API serves only loopback clients (set remote-management.allow-remote to change this)"
        )
    # surrogateescape: aiohttp decodes header bytes that are not UTF-8 (0xff) to lone surrogates;
    # such a key is simply wrong (401, counted), not a crash.
    if key is None or not hmac.compare_digest(key.encode("utf-8", "surrogateescape"), settings.secret_key.encode()):
        if client_only:
            return Decision(401, address, "this is the management API; a client API key does not open it", counted=False)
        if address not in lockout and lockout.table_full(now):
            return Decision(
                429,
                address,
                "too many addresses are failing the management key; try again later",
                retry_after=max(1, math.ceil(lockout.full_for(now))),
            )
        lockout.record_failure(address, now)  # the 5th failure still gets its 401; the block applies after it
        return Decision(
            401, address, "invalid or missing management key: send 'Authorization: Bearer <key>' or 'X-Management-Key: <key>'"
        )
    return Decision(200, address)


# --- the shell ---------------------------------------------------------------------------------

#: Failed management-key attempts per client address, and the addresses blocked for them (on the gateway:
#: the management API and /metrics share it).
ADMIN_LOCKOUT = web.AppKey("admin_lockout", Lockout)


def authorize(request: web.Request) -> str:
    """Apply the management access rule to `request`; the caller's address, or raise the refusal.

    The one shell over `decide` for every guarded route (the management API and, when configured,
    /metrics). Reads the gateway's keys through `config_dict`, from its own routes and the sub-application's alike.
    """
    runtime = request.config_dict[RUNTIME].current
    settings = runtime.config.remote_management
    authorization = request.headers.get("Authorization")
    management_key = request.headers.get("X-Management-Key")
    decision = decide(
        settings,
        peer=request.remote,
        # Every X-Forwarded-For line: a proxy may add its own line instead of appending to the client's.
        forwarded_for=", ".join(request.headers.getall("X-Forwarded-For", ())) or None,
        key=presented_key(authorization, management_key),
        lockout=request.config_dict[ADMIN_LOCKOUT],
        now=request.config_dict[CLOCK](),
        client_only=_client_key_only(request, runtime, authorization, management_key),
    )
    if decision.status == 404 or (not decision.counted and request.match_info.http_exception is not None):
        raise web.HTTPNotFound()
    if decision.status == 429:
        raise TooManyRequests(decision.message, headers={"Retry-After": str(decision.retry_after)})
    if decision.status == 403:
        raise Forbidden(decision.message)
    if decision.status == 401:
        raise Unauthorized(decision.message, code="invalid_management_key")
    return decision.address


def _client_key_only(request: web.Request, runtime: Runtime, authorization: str | None, management_key: str | None) -> bool:
    """Does the request present a valid client key (as the /v1 API takes it) and no management key?"""
    if management_key or runtime.open_access:
        return False
    client_key = presented_key(authorization, None) if authorization else request.headers.get("x-api-key")
    return bool(client_key) and runtime.client_key_valid(client_key or "")


@web.middleware
async def management_auth_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """The management sub-application's guard: every path under `/api` (known or not) passes the rule first."""
    request[ADMIN_ACTOR] = authorize(request)
    return await handler(request)
