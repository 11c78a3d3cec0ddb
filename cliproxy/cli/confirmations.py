"""What `cliproxy enable` / `disable` send to the management API and the line they print on success. Pure."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from cliproxy.core.times import format_duration, format_timestamp, parse_iso

__all__ = ["confirmation", "enable_all_confirmation", "enable_all_path", "management_path"]


def management_path(action: str, vendor: str, model: str) -> str:
    """`/api/models/{model}/{action}?vendor={vendor}`, the model percent-encoded whole (`/` and `:` too)."""
    return f"/api/models/{quote(model, safe='')}/{action}?vendor={quote(vendor, safe='')}"


def enable_all_path(vendor: str | None, reason: str | None) -> str:
    """`/api/models/enable-all`, with `?vendor=` and `?reason=` when given."""
    filters = [f"{name}={quote(value, safe='')}" for name, value in (("vendor", vendor), ("reason", reason)) if value]
    return "/api/models/enable-all" + ("?" + "&".join(filters) if filters else "")


def enable_all_confirmation(response: Any) -> str:
    """`enabled 2 disables: acme/gpt-x (auto), acme/gpt-x (rate-limited)`, from enable-all's answer."""
    items = response.get("enabled") if isinstance(response, dict) else None
    items = [i for i in items if isinstance(i, dict)] if isinstance(items, list) else []
    if not items:
        return "nothing to enable: no disable matched"
    listed = ", ".join(f"{i.get('vendor')}/{i.get('model')} ({i.get('reason')})" for i in items)
    return f"enabled {len(items)} disable{'s' if len(items) != 1 else ''}: {listed}"


def confirmation(action: str, vendor: str, model: str, duration: float | None, response: Any, now: float) -> str:
    """The one line `enable` / `disable` print on success.

    `response` is the server's decoded JSON (the model status: `{"model", "pairs": [...]}`), used
    for the end time it reports and to name the pairs when `model` meant several (an alias pool);
    anything else falls back to what was asked.
    """
    pairs = response.get("pairs") if isinstance(response, dict) else None
    pairs = [p for p in pairs if isinstance(p, dict)] if isinstance(pairs, list) else []
    served = [f"{p.get('vendor')}/{p.get('model')}" for p in pairs]
    if action == "enable":
        text = f"{vendor} {model}: enabled"
    elif duration is None:
        text = f"{vendor} {model}: disabled until enabled again"
    else:
        until = now + duration
        for pair in pairs:
            manual = pair.get("manual_disable")
            if isinstance(manual, dict) and isinstance(manual.get("disabled_until"), str):
                try:
                    until = parse_iso(manual["disabled_until"])
                except ValueError:
                    pass
                break
        text = f"{vendor} {model}: disabled for {format_duration(duration)}, until {format_timestamp(until)}"
    if len(served) > 1 or (served and served[0] != f"{vendor}/{model}"):
        text += f" ({len(served)} pair{'s' if len(served) != 1 else ''}: {', '.join(served)})"
    return text
