"""What a change of the running config means: the errors an API change answers with, the settings that
need a restart to take effect, and the audit events a reload or a rejected file records.

Pure values and rules; `cliproxy.services.config_manager` decides when, logs them and records them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from cliproxy.core.config import Config
from cliproxy.core.errors import InvalidRequest, ProxyError, ServiceUnavailable
from cliproxy.core.events import Event

__all__ = [
    "ConfigChanged",
    "ConfigRejected",
    "NoConfigFile",
    "RESTART_FIELDS",
    "rejected_event",
    "reloaded_event",
    "restart_required",
]

#: Settings read once at start-up (sockets, database, logging, runner): a change needs a restart.
RESTART_FIELDS: tuple[tuple[str, Callable[[Config], Any]], ...] = (
    ("host", lambda c: c.host),
    ("port", lambda c: c.port),
    ("database", lambda c: c.database),
    ("shutdown-grace-seconds", lambda c: c.shutdown_grace_seconds),
    ("client-header-timeout", lambda c: c.client_header_timeout),
    ("keepalive-timeout", lambda c: c.keepalive_timeout),
    ("max-connections", lambda c: c.max_connections),
    ("log-level", lambda c: c.logging.level),
    ("log-format", lambda c: c.logging.format),
)


class ConfigRejected(InvalidRequest):
    """A change that would make the configuration invalid; nothing was written. 400 with every problem."""

    code = "invalid_config"

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("the configuration would be invalid: " + "; ".join(problems))


class ConfigChanged(ProxyError):
    """The file on disk is being changed by someone else (or was, and is not valid): nothing was written. 409; retry."""

    status = 409
    error_type = "invalid_request_error"
    code = "config_changed"


class NoConfigFile(ServiceUnavailable):
    """The app was built from an in-memory `Config`: there is no file to read, edit or reload."""

    code = "no_config_file"

    def __init__(self) -> None:
        super().__init__("the configuration was not read from a file, so it cannot be read or changed at run time")


def restart_required(config: Config, started: Config) -> list[str]:
    """Settings of `config` that differ from those the process `started` with (they wait for a restart)."""
    fields = [name for name, get in RESTART_FIELDS if get(config) != get(started)]
    if config.max_body_bytes > started.max_body_bytes:
        fields.append("max-body-bytes")  # the server's body limit is fixed when it starts
    return fields


def reloaded_event(previous: Config, config: Config, started: Config, *, reason: str, actor: str | None, at: float) -> Event:
    """`config-reloaded`: `config` replaced `previous` (counts, vendors added and removed, what waits for a restart)."""
    old_names = {v.name for v in previous.vendors}
    new_names = {v.name for v in config.vendors}
    detail: dict[str, Any] = {
        "reason": reason,
        "vendors": len(config.vendors),
        "pairs": sum(len(v.models) for v in config.vendors),
    }
    if added := sorted(new_names - old_names):
        detail["vendors_added"] = added
    if removed := sorted(old_names - new_names):
        detail["vendors_removed"] = removed
    if restart := restart_required(config, started):
        detail["restart_required"] = restart
    return Event(kind="config-reloaded", at=at, actor=actor, detail=detail)


def rejected_event(problems: Sequence[str], *, reason: str, actor: str | None, at: float) -> Event:
    """`config-rejected`: a file that did not validate (its `problems` already masked); the running config stays."""
    return Event(kind="config-rejected", at=at, actor=actor, detail={"problems": list(problems), "reason": reason})
