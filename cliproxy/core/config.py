"""The configuration as frozen, typed values.

Pure: nothing here reads files or the environment. `cliproxy.services.config_loader` turns YAML into these
objects; everything past the loader sees only these types, never a dict.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

__all__ = [
    "API_FORMATS",
    "ApiFormat",
    "AutoDisableOverrides",
    "ProbeSpec",
    "RecoveryMode",
    "AutoDisableSettings",
    "DEFAULT_AUTO_DISABLE",
    "DEFAULT_COUNT_STATUSES",
    "DEFAULT_KEY_SCOPE_STATUSES",
    "ApiKeyEntry",
    "DEFAULT_TIMEOUTS",
    "LoggingSettings",
    "MetricsSettings",
    "NOTIFY_EVENTS",
    "NotifyTarget",
    "Config",
    "ModelEntry",
    "PairKey",
    "RemoteManagement",
    "SettingLevel",
    "Timeouts",
    "Vendor",
    "nothing_routes",
    "OnAllDisabled",
    "resolve_auto_disable",
]

#: A (vendor name, model entry's upstream name) pair: the unit that is tracked, disabled and reported.
PairKey = tuple[str, str]

SettingLevel = Literal["default", "global", "vendor", "model"]

#: What to do when every pair of a model is unavailable by the tracker: the spec's 503, or the pair back soonest.
OnAllDisabled = Literal["fail", "best-effort"]
#: How an auto-disabled pair comes back when its disable ends (see `cliproxy.core.failures`).
RecoveryMode = Literal["timer", "half-open", "probe"]
#: The API a vendor speaks (`api-format`).
ApiFormat = Literal["openai", "anthropic"]
API_FORMATS: tuple[ApiFormat, ...] = ("openai", "anthropic")

#: Upstream HTTP statuses that count as failures unless configured otherwise: 401, 403, 404, 408, 429 and 5xx.
#: 404 counts because cliproxy forwards only models it was configured with: a 404 means the pair is
#: misconfigured (a wrong base URL) or the vendor dropped the model, not that the client erred.
DEFAULT_COUNT_STATUSES: frozenset[int] = frozenset({401, 403, 404, 408, 429, *range(500, 600)})
#: Answers that say the vendor's key is bad, not the model (issue 14, key scope): with `api-key-entries`,
#: the key leaves the vendor's rotation and the pair is not counted (`cliproxy.core.key_scope`).
DEFAULT_KEY_SCOPE_STATUSES: frozenset[int] = frozenset({401, 402, 403})


@dataclass(frozen=True, slots=True)
class ProbeSpec:
    """The request of `recovery: probe`: `POST {path}` with `body` (JSON text); None: the default chat probe."""

    path: str = "/chat/completions"
    body: str | None = None


@dataclass(frozen=True, slots=True)
class AutoDisableOverrides:
    """What one level (global, vendor or model) of `auto-disable` sets; None means inherit."""

    failure_threshold: int | None = None
    time_window_seconds: float | None = None
    disable_duration_seconds: float | None = None
    count_statuses: frozenset[int] | None = None
    # Signals (issue 13, part A): an upstream's Retry-After and rate-limit reset headers.
    honor_retry_after: bool | None = None
    max_retry_after_seconds: float | None = None
    # issue 13, part C: slow start and the policies
    slow_start_seconds: float | None = None
    on_all_disabled: OnAllDisabled | None = None
    enforce: bool | None = None
    #: Global only (the schema accepts it at the top level alone).
    max_disabled_fraction: float | None = None
    # recovery: backoff and how a pair comes back (issue 13, part B)
    backoff_multiplier: float | None = None
    max_disable_duration_seconds: float | None = None
    recovery: RecoveryMode | None = None
    half_open_requests: int | None = None
    probe: ProbeSpec | None = None
    probe_timeout_seconds: float | None = None
    # key scope (issue 14): answers that put the vendor's key out, not the pair
    key_scope_statuses: frozenset[int] | None = None


@dataclass(frozen=True, slots=True)
class AutoDisableSettings:
    """The effective auto-disable rule of one pair, each field resolved on its own."""

    failure_threshold: int
    time_window_seconds: float
    disable_duration_seconds: float
    count_statuses: frozenset[int]
    # recovery: backoff and how a pair comes back (issue 13, part B); the defaults are the spec's timer
    backoff_multiplier: float = 1.0
    max_disable_duration_seconds: float = 86400.0
    recovery: RecoveryMode = "timer"
    half_open_requests: int = 1
    probe: ProbeSpec = ProbeSpec()
    probe_timeout_seconds: float = 10.0
    #: Which level each field came from: {"failure_threshold": "model", ...}.
    sources: tuple[tuple[str, SettingLevel], ...] = ()
    # Signals (issue 13, part A). A 429/503 with a Retry-After (or rate-limit reset) hint makes the
    # pair `rate-limited` until then at once, the hint clamped to `max_retry_after_seconds`.
    honor_retry_after: bool = True
    max_retry_after_seconds: float = 3600.0
    # issue 13, part C: slow start and the policies
    #: Seconds over which a re-enabled pair's weight in its tier rises from 10% to 100% (0: off).
    slow_start_seconds: float = 0.0
    #: `best-effort`: when every pair of a model is unavailable by the tracker, use the one back soonest.
    on_all_disabled: OnAllDisabled = "fail"
    #: False: a dry run; trips are recorded as `would-disable` events and not enforced.
    enforce: bool = True
    #: A trip that would leave more than this fraction of a model's pairs unavailable is not enforced.
    max_disabled_fraction: float = 1.0
    #: Key scope (issue 14): such an answer puts the key used out of the vendor's rotation instead of counting the pair.
    key_scope_statuses: frozenset[int] = DEFAULT_KEY_SCOPE_STATUSES

    @property
    def enabled(self) -> bool:
        """`failure-threshold: 0` switches auto-disable off for the scope."""
        return self.failure_threshold > 0

    def source_of(self, field_name: str) -> SettingLevel:
        return dict(self.sources).get(field_name, "default")


DEFAULT_AUTO_DISABLE = AutoDisableOverrides(
    failure_threshold=5,
    time_window_seconds=60.0,
    disable_duration_seconds=300.0,
    count_statuses=DEFAULT_COUNT_STATUSES,
    honor_retry_after=True,
    max_retry_after_seconds=3600.0,
    slow_start_seconds=0.0,
    on_all_disabled="fail",
    enforce=True,
    max_disabled_fraction=1.0,
    backoff_multiplier=1.0,
    max_disable_duration_seconds=86400.0,
    recovery="timer",
    half_open_requests=1,
    probe=ProbeSpec(),
    probe_timeout_seconds=10.0,
    key_scope_statuses=DEFAULT_KEY_SCOPE_STATUSES,
)

#: The spec's fields, whose sources are always listed (the later ones only when a level sets them).
_SPEC_FIELDS = ("failure_threshold", "time_window_seconds", "disable_duration_seconds", "count_statuses")

_AUTO_DISABLE_FIELDS = (
    "failure_threshold",
    "time_window_seconds",
    "disable_duration_seconds",
    "count_statuses",
    "honor_retry_after",
    "max_retry_after_seconds",
    # issue 13, part C
    "slow_start_seconds",
    "on_all_disabled",
    "enforce",
    "max_disabled_fraction",
    # issue 13, part B
    "backoff_multiplier",
    "max_disable_duration_seconds",
    "recovery",
    "half_open_requests",
    "probe",
    "probe_timeout_seconds",
    # issue 14, key scope
    "key_scope_statuses",
)


def resolve_auto_disable(
    global_: AutoDisableOverrides, vendor: AutoDisableOverrides, model: AutoDisableOverrides
) -> AutoDisableSettings:
    """Model over vendor over global over the defaults, field by field."""
    values: dict[str, object] = {}
    sources: list[tuple[str, SettingLevel]] = []
    levels: tuple[tuple[SettingLevel, AutoDisableOverrides], ...] = (
        ("model", model),
        ("vendor", vendor),
        ("global", global_),
        ("default", DEFAULT_AUTO_DISABLE),
    )
    for name in _AUTO_DISABLE_FIELDS:
        for level, overrides in levels:
            value = getattr(overrides, name)
            if value is not None:
                values[name] = value
                if level != "default" or name in _SPEC_FIELDS:  # `source_of` says "default" for the others
                    sources.append((name, level))
                break
    return AutoDisableSettings(**values, sources=tuple(sources))  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Seconds. `connect`: TCP+TLS; `first_byte`: until the response headers; `stream_idle`: between chunks;
    `first_token`: from the start of a streaming attempt until its first chunk with content (None: `stream_idle`)."""

    connect: float | None = None
    first_byte: float | None = None
    stream_idle: float | None = None
    first_token: float | None = None

    def over(self, base: Timeouts) -> Timeouts:
        """These values where set, `base` elsewhere."""
        return Timeouts(
            connect=self.connect if self.connect is not None else base.connect,
            first_byte=self.first_byte if self.first_byte is not None else base.first_byte,
            stream_idle=self.stream_idle if self.stream_idle is not None else base.stream_idle,
            first_token=self.first_token if self.first_token is not None else base.first_token,
        )

    @property
    def first_token_seconds(self) -> float | None:
        """The first-token timeout in force: `first-token` where set, else the `stream-idle` value."""
        return self.first_token if self.first_token is not None else self.stream_idle


DEFAULT_TIMEOUTS = Timeouts(connect=10.0, first_byte=120.0, stream_idle=120.0)


@dataclass(frozen=True, slots=True)
class ApiKeyEntry:
    api_key: str
    proxy_url: str | None = None

    def __repr__(self) -> str:  # never let a key reach a log line through repr()
        return f"ApiKeyEntry(api_key='***', proxy_url={self.proxy_url!r})"


@dataclass(frozen=True, slots=True)
class ModelEntry:
    name: str
    alias: str | None = None
    enabled: bool = True
    auto_disable: AutoDisableOverrides = AutoDisableOverrides()

    @property
    def public_name(self) -> str:
        """The client-facing name: the alias, or the upstream name when there is none."""
        return self.alias or self.name


@dataclass(frozen=True, slots=True)
class Vendor:
    name: str
    base_url: str
    enabled: bool = True
    priority: int = 0
    prefix: str | None = None
    api_key_entries: tuple[ApiKeyEntry, ...] = ()
    headers: tuple[tuple[str, str], ...] = ()
    timeouts: Timeouts = Timeouts()
    auto_disable: AutoDisableOverrides = AutoDisableOverrides()
    models: tuple[ModelEntry, ...] = ()
    #: The API the vendor speaks: `openai` (chat completions and the rest), or `anthropic` (the
    #: Messages API: its pairs serve only `/v1/messages`, passed through untranslated).
    api_format: ApiFormat = "openai"

    @property
    def missing_key(self) -> bool:
        """Key entries are configured but every one is empty (its environment variable is unset)."""
        return bool(self.api_key_entries) and not any(e.api_key for e in self.api_key_entries)

    @property
    def routable(self) -> bool:
        return self.enabled and not self.missing_key

    def __repr__(self) -> str:
        return f"Vendor(name={self.name!r}, base_url={self.base_url!r}, enabled={self.enabled})"


@dataclass(frozen=True, slots=True)
class RemoteManagement:
    secret_key: str | None = None
    allow_remote: bool = False
    trusted_proxies: tuple[str, ...] = ()

    def __repr__(self) -> str:
        return f"RemoteManagement(secret_key={'***' if self.secret_key else None}, allow_remote={self.allow_remote})"


@dataclass(frozen=True, slots=True)
class MetricsSettings:
    #: When true, /metrics needs the management key like the management API.
    require_auth: bool = False


@dataclass(frozen=True, slots=True)
class LoggingSettings:
    level: str = "INFO"
    format: Literal["text", "json"] = "text"


#: The transitions a `notify` receiver can be sent (its `events` filter; all of them by default).
NOTIFY_EVENTS: tuple[str, ...] = ("disabled", "enabled", "rate-limited", "would-disable", "key-disabled", "config-rejected")


@dataclass(frozen=True, slots=True)
class NotifyTarget:
    """One `notify` receiver: where transitions are POSTed, which ones, and the HMAC key that signs them."""

    url: str
    events: frozenset[str] = frozenset(NOTIFY_EVENTS)
    #: Signs each body (HMAC-SHA256) when set; a secret like the management key: masked, never logged.
    secret: str | None = None

    def wants(self, kind: str) -> bool:
        return kind in self.events

    def __repr__(self) -> str:  # the secret, and a webhook URL's token (its path), never reach a log line
        return f"NotifyTarget(events={sorted(self.events)}, secret={'***' if self.secret else None})"


@dataclass(frozen=True, slots=True)
class Config:
    host: str = "127.0.0.1"
    port: int = 8317
    api_keys: tuple[str, ...] = ()
    proxy_url: str | None = None
    request_retry: int = 3
    database: str = "./cliproxy.db"
    max_body_bytes: int = 32 * 1024 * 1024
    #: Seconds a client has to send its whole request body (a slow or stalled client is cut off).
    body_timeout: float = 60.0
    #: Seconds a client has to send its request line and headers (a slowloris is cut off).
    client_header_timeout: float = 10.0
    #: Seconds an idle keep-alive client connection is kept open.
    keepalive_timeout: float = 75.0
    #: Client connections held at once; beyond it new ones are answered 503 and closed without a handler.
    max_connections: int = 1024
    #: Seconds a client may stop reading a stream before its upstream request is cancelled.
    client_write_timeout: float = 60.0
    shutdown_grace_seconds: float = 30.0
    #: Browser origins (`https://app.example.com`, or `*`) allowed to call /v1; empty: no browser may.
    cors_allow_origins: tuple[str, ...] = ()
    logging: LoggingSettings = LoggingSettings()
    metrics: MetricsSettings = MetricsSettings()
    remote_management: RemoteManagement = RemoteManagement()
    timeouts: Timeouts = DEFAULT_TIMEOUTS
    auto_disable: AutoDisableOverrides = AutoDisableOverrides()
    vendors: tuple[Vendor, ...] = ()
    #: Webhook receivers of state transitions (`cliproxy.web.notifier`).
    notify: tuple[NotifyTarget, ...] = ()
    #: Where this config was read from (None when built in code); write-back and reload use it.
    path: str | None = field(default=None, compare=False)

    def __repr__(self) -> str:
        return f"Config(host={self.host!r}, port={self.port}, vendors={[v.name for v in self.vendors]})"


def nothing_routes(config: Config) -> str | None:
    """Why no request can be served, when every vendor is switched off; None when one is on.

    The gateway still starts (an operator may be switching vendors one at a time), but every
    request would get 503, so start-up and every reload say so.
    """
    if not config.vendors:
        return "no vendor is configured (openai-compatibility is empty): every request gets 503"
    if any(vendor.routable for vendor in config.vendors):
        return None
    return (
        "every vendor is switched off (enabled: false, or no api-key because its environment variable "
        "is unset): every request gets 503"
    )
