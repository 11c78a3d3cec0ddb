"""Who may use the management API: the pure rules as tables (peer address and clock passed in), then end to end."""

from __future__ import annotations

import pytest

from cliproxy.core.config import RemoteManagement
from cliproxy.web.admin import ENDPOINTS
from cliproxy.web.admin.auth import (
    BLOCK_SECONDS,
    Lockout,
    client_address,
    decide,
    is_loopback,
    presented_key,
)
from cliproxy.web.admin.openapi import openapi_path
from cliproxy.web.keys import CONFIG_MANAGER
from tests.helpers import MGMT_KEY, Admin, FakeClock, make_config, vendor

KEY = "mgmt-secret-key-0123456789"
T0 = 1_800_000_000.0

LOCAL = RemoteManagement(secret_key=KEY)
REMOTE_OK = RemoteManagement(secret_key=KEY, allow_remote=True)
BEHIND_PROXY = RemoteManagement(secret_key=KEY, trusted_proxies=("10.0.0.5", "192.168.0.0/16"))


def run(
    settings: RemoteManagement,
    *,
    peer: str = "127.0.0.1",
    xff: str | None = None,
    key: str | None = KEY,
    lockout: Lockout | None = None,
    now: float = T0,
):
    return decide(settings, peer=peer, forwarded_for=xff, key=key, lockout=lockout if lockout is not None else Lockout(), now=now)


class TestClientAddress:
    """The client is the socket peer; X-Forwarded-For counts only from a trusted proxy, up to the last untrusted hop."""

    @pytest.mark.parametrize(
        ("peer", "xff", "trusted", "expected"),
        [
            ("203.0.113.9", None, (), "203.0.113.9"),
            ("203.0.113.9", "127.0.0.1", (), "203.0.113.9"),  # spoofed header from an untrusted peer: ignored
            ("127.0.0.1", "203.0.113.9", (), "127.0.0.1"),  # no trusted proxies: the header is never believed
            ("10.0.0.5", "203.0.113.9", ("10.0.0.5",), "203.0.113.9"),
            ("10.0.0.5", "127.0.0.1, 203.0.113.9", ("10.0.0.5",), "203.0.113.9"),  # left of the real hop is client text
            ("10.0.0.5", "203.0.113.9, 192.168.1.1", ("10.0.0.5", "192.168.0.0/16"), "203.0.113.9"),  # proxy chain
            ("10.0.0.5", "192.168.1.2, 192.168.1.1", ("10.0.0.5", "192.168.0.0/16"), "192.168.1.2"),  # all trusted: leftmost
            ("10.0.0.5", "", ("10.0.0.5",), "10.0.0.5"),
            ("10.0.0.5", " , ", ("10.0.0.5",), "10.0.0.5"),
            ("::ffff:10.0.0.5", "203.0.113.9", ("10.0.0.5",), "203.0.113.9"),
            (None, None, (), "unknown"),
        ],
    )
    def test_table(self, peer, xff, trusted, expected):
        assert client_address(peer, xff, trusted) == expected

    @pytest.mark.parametrize(
        ("address", "loopback"),
        [
            ("127.0.0.1", True),
            ("127.8.9.10", True),
            ("::1", True),
            ("::ffff:127.0.0.1", True),
            ("[::1]:8080", True),
            ("127.0.0.1:5555", True),
            ("203.0.113.9", False),
            ("localhost", False),
            ("garbage", False),
            ("", False),
        ],
    )
    def test_loopback(self, address, loopback):
        assert is_loopback(address) is loopback


class TestDecide:
    """Off is 404; remote without allow-remote is 403; a wrong or missing key is 401; the right key passes."""

    def test_off_without_a_secret_key(self):
        assert run(RemoteManagement(secret_key=None)).status == 404
        assert run(RemoteManagement(secret_key=None), key=None, peer="203.0.113.9").status == 404

    def test_loopback_with_the_key(self):
        decision = run(LOCAL)
        assert (decision.status, decision.address) == (200, "127.0.0.1")

    @pytest.mark.parametrize("key", [None, "", "wrong", KEY + "x", KEY[:-1]])
    def test_wrong_or_missing_key(self, key):
        assert run(LOCAL, key=key).status == 401

    def test_remote_peer_is_403_even_with_a_spoofed_loopback_header(self):
        assert run(LOCAL, peer="203.0.113.9").status == 403
        assert run(LOCAL, peer="203.0.113.9", xff="127.0.0.1").status == 403

    def test_remote_client_behind_a_trusted_proxy_is_403(self):
        decision = run(BEHIND_PROXY, peer="10.0.0.5", xff="203.0.113.9")
        assert (decision.status, decision.address) == (403, "203.0.113.9")

    def test_allow_remote(self):
        decision = run(REMOTE_OK, peer="203.0.113.9")
        assert (decision.status, decision.address) == (200, "203.0.113.9")
        assert run(REMOTE_OK, peer="203.0.113.9", key="wrong").status == 401

    @pytest.mark.parametrize(
        ("authorization", "header", "expected"),
        [
            ("Bearer abc", None, "abc"),
            ("bearer  abc ", None, "abc"),
            (None, "abc", "abc"),
            ("Basic xyz", "abc", "abc"),
            ("Bearer ", None, None),
            (None, None, None),
            (None, "  ", None),
        ],
    )
    def test_presented_key(self, authorization, header, expected):
        assert presented_key(authorization, header) == expected


class TestLockout:
    """5 failures within 60 s block an address for 600 s; the right key does not lift it; memory stays bounded."""

    def test_fifth_failure_blocks_loopback_too(self):
        lockout = Lockout()
        for i in range(5):
            assert run(LOCAL, key="wrong", lockout=lockout, now=T0 + i).status == 401
        blocked = run(LOCAL, key=KEY, lockout=lockout, now=T0 + 5)
        assert blocked.status == 429 and blocked.retry_after == 599
        assert run(LOCAL, key=KEY, lockout=lockout, now=T0 + 4 + BLOCK_SECONDS - 0.5).status == 429
        assert run(LOCAL, key=KEY, lockout=lockout, now=T0 + 4 + BLOCK_SECONDS).status == 200

    def test_failures_spread_over_more_than_a_minute_do_not_block(self):
        lockout = Lockout()
        for i in range(10):
            assert run(LOCAL, key="wrong", lockout=lockout, now=T0 + i * 15).status == 401
        assert run(LOCAL, lockout=lockout, now=T0 + 150).status == 200

    def test_attempts_during_the_block_neither_count_nor_extend_it(self):
        lockout = Lockout()
        for _ in range(5):
            run(LOCAL, key="wrong", lockout=lockout, now=T0)
        for i in range(20):
            run(LOCAL, key="wrong", lockout=lockout, now=T0 + 300 + i)
        assert run(LOCAL, lockout=lockout, now=T0 + BLOCK_SECONDS).status == 200
        assert run(LOCAL, key="wrong", lockout=lockout, now=T0 + BLOCK_SECONDS + 1).status == 401  # a fresh count

    def test_other_addresses_are_not_blocked(self):
        lockout = Lockout()
        for _ in range(5):
            run(REMOTE_OK, peer="203.0.113.9", key="wrong", lockout=lockout)
        assert run(REMOTE_OK, peer="203.0.113.9", lockout=lockout).status == 429
        assert run(REMOTE_OK, peer="203.0.113.10", lockout=lockout).status == 200
        assert run(REMOTE_OK, peer="127.0.0.1", lockout=lockout).status == 200

    def test_bounded_memory(self):
        lockout = Lockout(capacity=100)
        for i in range(1000):
            lockout.record_failure(f"198.51.{i // 256}.{i % 256}", T0)
        assert len(lockout) == 100

    def test_10050_failing_addresses_do_not_evict_a_blocked_one(self):
        """Through a trusted proxy an attacker has as many addresses as it likes; none unblocks it."""
        proxied = RemoteManagement(secret_key=KEY, allow_remote=True, trusted_proxies=("10.0.0.5",))
        lockout = Lockout()
        for _ in range(5):
            run(proxied, peer="10.0.0.5", xff="203.0.113.9", key="wrong", lockout=lockout, now=T0)
        for i in range(10_050):
            assert (
                run(proxied, peer="10.0.0.5", xff=f"198.51.{i // 256}.{i % 256}", key="wrong", lockout=lockout, now=T0 + 1).status
                == 401
            )
        assert len(lockout) <= 10_000
        assert run(proxied, peer="10.0.0.5", xff="203.0.113.9", lockout=lockout, now=T0 + 2).status == 429

    def test_a_table_full_of_blocks_refuses_new_failing_addresses(self):
        lockout = Lockout(capacity=3)
        for n in range(3):
            for _ in range(5):
                lockout.record_failure(f"203.0.113.{n}", T0 + n)
        refused = run(REMOTE_OK, peer="198.51.100.7", key="wrong", lockout=lockout, now=T0 + 10)
        assert (refused.status, refused.retry_after) == (429, BLOCK_SECONDS - 10)
        assert "198.51.100.7" not in lockout and len(lockout) == 3
        assert run(REMOTE_OK, peer="198.51.100.7", lockout=lockout, now=T0 + 10).status == 200  # the right key still works
        assert all(lockout.blocked_for(f"203.0.113.{n}", T0 + 10) is not None for n in range(3))
        # The first block ends: its place goes to the next failing address.
        assert run(REMOTE_OK, peer="198.51.100.7", key="wrong", lockout=lockout, now=T0 + BLOCK_SECONDS).status == 401

    def test_watched_addresses_make_room_before_blocked_ones(self):
        lockout = Lockout(capacity=2)
        for _ in range(5):
            lockout.record_failure("203.0.113.9", T0)
        lockout.record_failure("198.51.100.1", T0)
        lockout.record_failure("198.51.100.2", T0)  # forgets 198.51.100.1, keeps the block
        assert "198.51.100.1" not in lockout and "198.51.100.2" in lockout
        assert lockout.blocked_for("203.0.113.9", T0) == BLOCK_SECONDS

    def test_a_key_that_is_not_utf8_is_a_counted_401(self):
        lockout = Lockout()
        not_utf8 = b"\xff\xfekey".decode("utf-8", "surrogateescape")  # how aiohttp hands over header bytes 0xff
        for i in range(5):
            assert run(LOCAL, key=not_utf8, lockout=lockout, now=T0 + i).status == 401
        assert run(LOCAL, lockout=lockout, now=T0 + 5).status == 429

    def test_blocked_entry_forgotten_once_over(self):
        lockout = Lockout()
        for _ in range(5):
            lockout.record_failure("203.0.113.9", T0)
        assert lockout.blocked_for("203.0.113.9", T0 + 1) == pytest.approx(BLOCK_SECONDS - 1)
        assert lockout.blocked_for("203.0.113.9", T0 + BLOCK_SECONDS) is None
        assert len(lockout) == 0


# ---------------------------------------------------------------------------------------------
# End to end through the real app (the aiohttp test client connects from 127.0.0.1)
# ---------------------------------------------------------------------------------------------


def _concrete(template: str) -> str:
    return openapi_path(template).replace("{model}", "m").replace("{name}", "a")


def _config(url: str, **remote: object) -> dict:
    return {
        "remote-management": {"secret-key": MGMT_KEY, **remote},
        "openai-compatibility": [vendor("a", url, ["m"])],
    }


class TestMiddlewareEndToEnd:
    """The middleware guards every /api path, reads the live config per request and leaves /v1 alone."""

    async def test_off_means_every_api_path_is_404(self, admin, upstreams):
        up = await upstreams()
        a = await admin({"remote-management": {"secret-key": ""}, "openai-compatibility": [vendor("a", up.url, ["m"])]})
        for path in ("/api/models/disabled", "/api/openapi.json", "/api/nope", "/api"):
            reply = await a.get(path)
            assert reply.status == 404 and reply.json["error"]["code"] == "not_found"
        assert (await a.gw.client.get("/v1/models")).status == 200

    async def test_every_endpoint_needs_the_key_and_is_off_without_one(self, admin, upstreams, gateway, tmp_path):
        up = await upstreams()
        clock = FakeClock()
        a = await admin(_config(up.url), clock=clock)
        for ep in ENDPOINTS:
            for key in (None, "wrong"):
                reply = await a.call(ep.method, _concrete(ep.path), key=key)
                assert reply.status == 401, (ep.method, ep.path)
            clock.advance(61)  # stay under the lock-out's 5 failures a minute
        off = Admin(
            await gateway(
                make_config({"database": str(tmp_path / "off.db"), "openai-compatibility": [vendor("a", up.url, ["m"])]})
            ),
            None,
        )
        for ep in ENDPOINTS:
            assert (await off.call(ep.method, _concrete(ep.path))).status == 404, (ep.method, ep.path)

    async def test_key_in_either_header(self, admin, upstreams):
        up = await upstreams()
        a = await admin(_config(up.url))
        assert (await a.get("/api/vendors")).status == 200
        assert (await a.get("/api/vendors", key=None, headers={"X-Management-Key": MGMT_KEY})).status == 200
        for key in (None, "wrong"):
            reply = await a.get("/api/vendors", key=key)
            assert reply.status == 401 and reply.json["error"]["type"] == "authentication_error"
            assert MGMT_KEY not in reply.text

    async def test_spoofed_forwarded_for_from_an_untrusted_peer_is_ignored(self, admin, upstreams):
        up = await upstreams()
        a = await admin(_config(up.url))
        reply = await a.post("/api/models/m/disable", json={"duration_seconds": 5}, headers={"X-Forwarded-For": "203.0.113.9"})
        assert reply.status == 200
        [event] = await a.events(kind="manual-disable")
        assert event.actor == "127.0.0.1"

    async def test_remote_client_behind_a_trusted_proxy_is_403_without_allow_remote(self, admin, upstreams):
        up = await upstreams()
        a = await admin(_config(up.url, **{"trusted-proxies": ["127.0.0.1"]}))
        reply = await a.get("/api/vendors", headers={"X-Forwarded-For": "203.0.113.9"})
        assert reply.status == 403 and reply.json["error"]["type"] == "permission_error"
        assert (await a.get("/api/vendors", headers={"X-Forwarded-For": "127.0.0.1"})).status == 200

    async def test_allow_remote_serves_it_and_records_the_real_client_as_actor(self, admin, upstreams):
        up = await upstreams()
        a = await admin(_config(up.url, **{"trusted-proxies": ["127.0.0.1"], "allow-remote": True}))
        reply = await a.post(
            "/api/models/m/disable", json={"duration_seconds": 5}, headers={"X-Forwarded-For": "127.0.0.1, 203.0.113.9"}
        )
        assert reply.status == 200
        assert reply.json["pairs"][0]["manual_disable"]["actor"] == "203.0.113.9"
        [event] = await a.events(kind="manual-disable")
        assert event.actor == "203.0.113.9"

    async def test_lockout_with_an_injected_clock(self, admin, upstreams):
        up = await upstreams()
        clock = FakeClock()
        a = await admin(_config(up.url), clock=clock)
        for _ in range(5):
            assert (await a.get("/api/vendors", key="wrong")).status == 401
        reply = await a.get("/api/vendors")  # the right key does not lift the block
        assert reply.status == 429 and reply.headers["Retry-After"] == "600"
        assert reply.json["error"]["code"] == "rate_limit_exceeded"
        assert (await a.gw.client.get("/v1/models")).status == 200  # the client API is not affected
        clock.advance(599)
        assert (await a.get("/api/vendors")).status == 429
        clock.advance(1)
        assert (await a.get("/api/vendors")).status == 200

    @pytest.mark.parametrize("failing_on", ["/metrics", "/api/vendors"])
    async def test_metrics_with_require_auth_shares_the_lockout(self, admin, upstreams, failing_on):
        """/metrics (a gateway route) and the management sub-application count failed keys in one lock-out."""
        up = await upstreams()
        a = await admin({**_config(up.url), "metrics": {"require-auth": True}}, clock=FakeClock())
        for _ in range(5):
            assert (await a.gw.client.get(failing_on, headers={"Authorization": "Bearer wrong"})).status == 401
        right = {"Authorization": f"Bearer {MGMT_KEY}"}
        assert (await a.gw.client.get("/metrics", headers=right)).status == 429
        assert (await a.get("/api/vendors")).status == 429

    async def test_key_change_by_reload_applies_to_the_next_request(self, admin, upstreams):
        up = await upstreams()
        a = await admin(_config(up.url))
        new = a.file().replace(MGMT_KEY, "the-new-management-key-42")
        reply = await a.call("PUT", "/api/config.yaml", data=new.encode(), headers={"Content-Type": "application/yaml"})
        assert reply.status == 200
        assert (await a.get("/api/vendors")).status == 401
        a.key = "the-new-management-key-42"
        assert (await a.get("/api/vendors")).status == 200
        # Switching the API off takes an edit on the host (a PUT that would do it is refused)...
        off = a.file().replace("secret-key: the-new-management-key-42", "secret-key: ''")
        assert (
            await a.call("PUT", "/api/config.yaml", data=off.encode(), headers={"Content-Type": "application/yaml"})
        ).status == 400
        a.config_path.write_text(off, encoding="utf-8")
        assert await a.app[CONFIG_MANAGER].reload(reason="test") is True
        assert (await a.get("/api/vendors")).status == 404  # ...and applies to the next request
