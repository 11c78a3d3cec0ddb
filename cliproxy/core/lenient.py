"""Reading fields of untrusted JSON without failing on them: a value of the wrong type reads as empty."""

from __future__ import annotations

from typing import Any

__all__ = ["as_dict", "as_int", "as_list"]


def as_dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def as_int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []
