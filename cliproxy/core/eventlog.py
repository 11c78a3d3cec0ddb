"""Log lines for audit events, with the same fields as their row in the events table.

Used by the failure tracker for pair transitions; kept apart from `cliproxy.web.logs` (the logging
setup and access shell) so that the tracker does not import the web layer.
"""

from __future__ import annotations

import logging
from typing import Any

from cliproxy.core.events import Event
from cliproxy.core.times import format_timestamp

__all__ = ["event_fields", "log_event", "render_fields"]


def render_fields(fields: dict[str, Any]) -> str:
    """`key='text' key=number ...`, None values left out: the text format of structured fields."""
    return " ".join(f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}" for k, v in fields.items() if v is not None)


def event_fields(event: Event) -> dict[str, Any]:
    """The fields of an event as the tracker logs them (times as in the database: `...T23:59:01.123Z`)."""

    def iso(t: float | None) -> str | None:
        return None if t is None else format_timestamp(t)

    fields: dict[str, Any] = {
        "event": event.kind,
        "vendor": event.vendor,
        "model": event.model,
        "reason": event.reason,
        "cause": event.cause,
        "failure_count": event.failure_count,
        "window_started_at": iso(event.window_started_at),
        "disabled_at": iso(event.disabled_at),
        "disabled_until": iso(event.disabled_until),
        "actor": event.actor,
    }
    if event.last_error is not None:
        fields["last_error_status"] = event.last_error.status
        fields["last_error"] = event.last_error.message
        if event.last_error.kind:
            fields["last_error_kind"] = event.last_error.kind
    if event.detail:
        fields["detail"] = event.detail
    return fields


def log_event(event: Event, logger: logging.Logger, level: int | None = None) -> None:
    """Log an audit event: `pair disabled vendor='a' model='m' ...` (fields as in its event row).

    WARNING for disables and rejected configs, INFO otherwise, unless `level` says.
    """
    if level is None:
        level = logging.WARNING if event.kind in ("disabled", "manual-disable", "config-rejected") else logging.INFO
    if not logger.isEnabledFor(level):
        return
    fields = event_fields(event)
    subject = "pair " if event.vendor is not None and event.model is not None else ""
    logger.log(
        level,
        "%s%s %s",
        subject,
        event.kind,
        render_fields({k: v for k, v in fields.items() if k != "event"}),
        extra={"cliproxy_event": fields},
    )
