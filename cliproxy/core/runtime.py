"""The live configuration: a `Config` and the routing table built from it, swapped as one on reload.

A request takes the `Runtime` once when it starts and keeps it, so requests in flight finish on
the config they started with.
"""

from __future__ import annotations

import hmac
import time
from dataclasses import dataclass, field

from cliproxy.core.config import Config
from cliproxy.core.redact import SecretMasker, config_secrets
from cliproxy.core.routing import RoutingTable

__all__ = ["LiveRuntime", "Runtime"]


@dataclass(frozen=True, slots=True, eq=False)
class Runtime:
    config: Config
    table: RoutingTable
    _client_keys: tuple[bytes, ...] = field(default=())
    #: Every secret of this config (upstream, client and management keys, credential header values,
    #: proxy passwords), longest first, for masking text.
    secrets: tuple[str, ...] = field(default=())
    #: The same secrets as one compiled masker (every form of each); built once per config load.
    masker: SecretMasker = field(default_factory=SecretMasker)
    #: `cors-allow-origins`, for an O(1) check of a browser's `Origin`.
    cors_origins: frozenset[str] = field(default=frozenset())
    config_loaded_at: float = field(default_factory=time.time)

    @classmethod
    def build(cls, config: Config) -> Runtime:
        masker = SecretMasker(config_secrets(config))
        return cls(
            config=config,
            table=RoutingTable(config, masker),
            _client_keys=tuple(k.encode() for k in config.api_keys),
            secrets=masker.secrets,
            masker=masker,
            cors_origins=frozenset(config.cors_allow_origins),
        )

    @property
    def open_access(self) -> bool:
        return not self._client_keys

    def client_key_valid(self, presented: str) -> bool:
        """Constant-time comparison against every configured client key."""
        # Header values arrive decoded with surrogateescape (any byte is possible): compare the bytes as sent.
        candidate = presented.encode("utf-8", "surrogateescape")
        valid = False
        for key in self._client_keys:
            valid |= hmac.compare_digest(candidate, key)
        return valid


class LiveRuntime:
    """The app's one mutable cell: the `Runtime` that new requests take.

    A reload replaces `current` (one reference assignment, atomic for the event loop); a request
    reads it once and keeps its `Runtime`, so it finishes on the config it started with.
    """

    __slots__ = ("current",)

    def __init__(self, runtime: Runtime) -> None:
        self.current = runtime
