"""Masking secrets out of text that may reach logs, events or API responses. Pure."""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = ["mask_secrets", "mask_key", "excerpt"]

# Things that look like credentials even when we do not know them: bearer tokens and common key shapes.
_LOOKS_SECRET = re.compile(
    r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]{8,}|\b(sk|pk|rk|gsk|xai|key)-[A-Za-z0-9_-]{8,}\b"
)


def mask_key(key: str) -> str:
    """A recognisable but useless form of a key: `sk-a...f9` (never more than 4 real characters)."""
    if len(key) <= 8:
        return "***"
    return f"{key[:2]}...{key[-2:]}"


def mask_secrets(text: str, secrets: Iterable[str] = ()) -> str:
    """Replace every known secret and anything shaped like a credential with `***`."""
    for secret in secrets:
        if secret and len(secret) >= 4 and secret in text:
            text = text.replace(secret, "***")
    return _LOOKS_SECRET.sub(lambda m: (m.group(1) or "") + "***", text)


def excerpt(raw: bytes | str, secrets: Iterable[str] = (), limit: int = 200) -> str:
    """A short, single-line, masked excerpt of an upstream error body for events and logs."""
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    text = " ".join(text.split())
    masked = mask_secrets(text[: limit * 4], secrets)
    return masked if len(masked) <= limit else masked[: limit - 1] + "…"
