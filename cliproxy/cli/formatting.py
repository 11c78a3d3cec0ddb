"""How the operator CLI prints values: times as the database stores them, aligned tables, one-line cells. Pure."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from cliproxy.core.times import format_timestamp

__all__ = ["iso", "one_line", "render_table"]


def iso(epoch: float | None) -> str | None:
    """Epoch seconds -> ISO-8601 UTC with milliseconds, as the database stores it (None stays None)."""
    return None if epoch is None else format_timestamp(epoch)


def render_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """Columns left-aligned, two spaces apart, no trailing blanks; None and "" shown as `-`."""
    cells = [[str(h) for h in headers]]
    for row in rows:
        cells.append(["-" if v is None or v == "" else str(v) for v in row])
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    return "\n".join(lines)


def one_line(text: str, width: int) -> str:
    """Whitespace folded to single spaces, cut to `width` with `...`: an error message as a table cell."""
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 3] + "..."
