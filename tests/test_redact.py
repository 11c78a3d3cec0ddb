"""`cliproxy.core.redact.SecretMasker`: every secret, in every form text carries it in, with a cost that does not grow with the keys."""

from __future__ import annotations

import base64
import json
import random
import re
import string
import time
from urllib.parse import quote, quote_plus

import pytest

from cliproxy.core.redact import SecretMasker, config_secrets, mask_secrets
from tests.helpers import make_config

SECRET = 'Ab+/c"d\\e=fGhIjKlMnOp'


class TestForms:
    """A secret is masked as written, JSON-escaped, URL-encoded and as base64, also inside a longer base64 value."""

    @pytest.mark.parametrize(
        "form",
        [
            SECRET,
            json.dumps(SECRET)[1:-1],
            json.dumps(SECRET)[1:-1].replace("/", "\\/"),
            quote(SECRET, safe=""),
            re.sub(r"%[0-9A-F]{2}", lambda m: m.group(0).lower(), quote(SECRET, safe="")),  # lower-case hex digits
            quote_plus(SECRET, safe=""),
            base64.b64encode(SECRET.encode()).decode().rstrip("="),
            base64.urlsafe_b64encode(SECRET.encode()).decode().rstrip("="),
        ],
    )
    def test_form_is_masked(self, form):
        masked = SecretMasker([SECRET]).mask(f"before {form} after")
        assert masked.startswith("before ") and masked.endswith(" after") and "***" in masked
        assert form not in masked

    @pytest.mark.parametrize("prefix", ["", "u:", "us:", "use:"])
    def test_base64_at_every_alignment(self, prefix):
        blob = base64.b64encode(f"{prefix}{SECRET}:tail".encode()).decode()
        assert "***" in SecretMasker([SECRET]).mask(f"Basic {blob}")

    def test_longest_secret_wins_and_short_ones_only_as_written(self):
        masker = SecretMasker(["abcd1234", "abcd12345678", "xyz"])  # "xyz" is too short to be masked at all
        assert masker.mask("abcd12345678 abcd1234 xyz") == "*** *** xyz"
        assert mask_secrets("abcd1234", masker) == "***"
        assert "abcd" not in repr(masker)

    def test_config_secrets_cover_keys_headers_and_proxy_passwords(self):
        config = make_config(
            {
                "api-keys": ["client-key-0001"],
                "remote-management": {"secret-key": "mgmt-key-0001"},
                "proxy-url": "http://u:GlobalProxyPass1@proxy:3128",
                "openai-compatibility": [
                    {
                        "name": "a",
                        "base-url": "http://x/v1",
                        "api-key-entries": [{"api-key": "upstream-key-0001", "proxy-url": "http://u:KeyProxyPass1@p:1"}],
                        "headers": {"X-Auth-Key": "short", "X-Token-Ish": "LongOpaqueValue0123456789", "X-Title": "my app"},
                        "models": [{"name": "m"}],
                    }
                ],
            }
        )
        assert set(config_secrets(config)) == {
            "client-key-0001",
            "mgmt-key-0001",
            "upstream-key-0001",
            "GlobalProxyPass1",
            "KeyProxyPass1",
            "short",
            "LongOpaqueValue0123456789",
        }


class TestCost:
    """Built once, the masker's cost per text does not grow with the number of secrets (one compiled trie pattern)."""

    def test_64k_body_with_1000_secrets(self):
        rnd = random.Random(7)
        secrets = ["sk-" + "".join(rnd.choices(string.ascii_letters + string.digits, k=40)) for _ in range(1000)]
        started = time.perf_counter()
        masker = SecretMasker(secrets)
        built = time.perf_counter() - started
        words = ("the", "invalid", "request", "error", "model", "token", '"message":', "sk-abc", "12345", "{", "}")
        body = " ".join(rnd.choice(words) for _ in range(20_000))[:60_000]
        body += " " + secrets[500] + " " + quote(secrets[9]) + " " + base64.b64encode(b"u:" + secrets[3].encode()).decode()
        body = body.ljust(64 * 1024, "x")
        runs = 10
        started = time.perf_counter()
        for _ in range(runs):
            masked = masker.mask(body)
        per_body = (time.perf_counter() - started) / runs
        assert secrets[500] not in masked and quote(secrets[9]) not in masked and masked.count("***") >= 3
        small = SecretMasker(secrets[:1])
        started = time.perf_counter()
        for _ in range(runs):
            small.mask(body)
        per_body_one = (time.perf_counter() - started) / runs
        print(
            f"\nmasker: built for 1000 secrets in {built * 1000:.0f} ms; 64 KiB body {per_body * 1000:.2f} ms "
            f"(1 secret: {per_body_one * 1000:.2f} ms)"
        )
        # Generous bound (2 shared cores): the 1,000-key masker costs a small multiple of the 1-key one, not 1,000x.
        assert per_body < max(20 * per_body_one, 0.05)
