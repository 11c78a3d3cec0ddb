"""What `cliproxy history` shows: the events, newest first, as a table or JSON-ready dicts. Pure."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from cliproxy.cli.formatting import iso, one_line, render_table
from cliproxy.core.events import Event
from cliproxy.core.times import format_timestamp

__all__ = ["event_json", "history_table"]


def _reason_cause(event: Event) -> str:
    return "/".join(p for p in (event.reason, event.cause) if p)


def _last_error(event: Event, width: int) -> str:
    if event.last_error is None:
        return ""
    status = event.last_error.status
    return one_line(f"{status if status is not None else 'transport'} {event.last_error.message}", width)


def history_table(events: Iterable[Event], *, error_width: int = 60) -> str:
    """Events as given (newest first), one line each."""
    return render_table(
        ("TIME", "KIND", "VENDOR", "MODEL", "REASON/CAUSE", "FAILURES", "DISABLED UNTIL", "ACTOR", "LAST ERROR"),
        (
            (
                format_timestamp(e.at),
                e.kind,
                e.vendor,
                e.model,
                _reason_cause(e),
                e.failure_count,
                format_timestamp(e.disabled_until) if e.disabled_until is not None else None,
                e.actor,
                _last_error(e, error_width),
            )
            for e in events
        ),
    )


def event_json(event: Event) -> dict[str, Any]:
    """An event with ISO timestamps; `disabled_seconds` is how long the disable was set to last."""
    disabled_seconds = None
    if event.disabled_at is not None and event.disabled_until is not None:
        disabled_seconds = round(event.disabled_until - event.disabled_at, 3)
    return {
        "id": event.id,
        "at": iso(event.at),
        "kind": event.kind,
        "vendor": event.vendor,
        "model": event.model,
        "reason": event.reason,
        "cause": event.cause,
        "disabled_at": iso(event.disabled_at),
        "disabled_until": iso(event.disabled_until),
        "disabled_seconds": disabled_seconds,
        "failure_count": event.failure_count,
        "window_started_at": iso(event.window_started_at),
        "settings": event.settings,
        "last_status": event.last_error.status if event.last_error else None,
        "last_error": event.last_error.message if event.last_error else None,
        "actor": event.actor,
        "detail": event.detail,
    }
