"""An upstream's "come back later" hint, read from its response headers. Pure: `now` is passed in.

Upstreams say how long to wait in several ways; `retry_hint` reads them in this order and the first
one that parses wins (garbage in one falls through to the next):

1. `retry-after-ms: 1500`: milliseconds (OpenAI, Azure);
2. `Retry-After: 30` or `Retry-After: Wed, 21 Oct 2026 07:28:00 GMT`: seconds or an HTTP date (RFC 9110);
3. on a 429 only, `x-ratelimit-reset-requests` / `x-ratelimit-reset-tokens`: OpenAI's durations
   (`1s`, `6m0s`, `1m30.5s`, `20ms`, `2h`): when `x-ratelimit-remaining-requests` /
   `-tokens` says which budget is exhausted (`0`), that budget's reset; otherwise the later of the two.
   They are sent on every answer, so only a 429 makes them a reason to stop.

Only a 429 or a 503 carries a hint that counts. A hint of zero, a date in the past, a negative,
NaN or infinite value means nothing. The hint is returned unclamped: the caller applies
`max-retry-after-seconds` and records both.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

__all__ = ["HINT_HEADERS", "RETRY_STATUSES", "RetryHint", "hint_headers", "parse_reset_duration", "retry_hint"]

#: The statuses whose hints are honoured.
RETRY_STATUSES = frozenset({429, 503})

_MS = "retry-after-ms"
_RETRY_AFTER = "retry-after"
_RESETS = (
    ("x-ratelimit-reset-requests", "x-ratelimit-remaining-requests"),
    ("x-ratelimit-reset-tokens", "x-ratelimit-remaining-tokens"),
)
#: Every (lower-case) header name `retry_hint` reads; the upstream error path keeps only these.
HINT_HEADERS = frozenset({_MS, _RETRY_AFTER, *(name for pair in _RESETS for name in pair)})

# `1h2m3.5s`, `6m0s`, `20ms`, `1.5s`: Go's time.Duration text, which OpenAI's headers use.
_DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m(?!s))?(?:(\d+(?:\.\d+)?)s)?(?:(\d+(?:\.\d+)?)ms)?")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")


@dataclass(frozen=True, slots=True)
class RetryHint:
    """Seconds to wait from `now` (> 0, unclamped) and the header that said so."""

    seconds: float
    header: str


def hint_headers(headers: Iterable[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    """The headers `retry_hint` reads, names lower-cased; everything else is dropped (O(headers))."""
    return tuple((name.lower(), value) for name, value in headers if name.lower() in HINT_HEADERS)


def parse_reset_duration(text: str) -> float | None:
    """Seconds in an OpenAI reset header (`1s`, `6m0s`, `1m30.5s`, `20ms`, `2h`, or a bare number of
    seconds); None for anything else."""
    text = text.strip()
    if _NUMBER.fullmatch(text):
        return float(text)
    match = _DURATION.fullmatch(text)
    if match is None or not text:
        return None
    hours, minutes, seconds, millis = (float(g) if g else 0.0 for g in match.groups())
    return hours * 3600 + minutes * 60 + seconds + millis / 1000


def retry_hint(status: int | None, headers: Iterable[tuple[str, str]], now: float) -> RetryHint | None:
    """How long the upstream asks to be left alone, or None (see the module docstring for the order)."""
    if status not in RETRY_STATUSES:
        return None
    found = {name.lower(): value for name, value in headers}
    for read in (_from_ms, _from_retry_after):
        hint = read(found, now)
        if hint is not None:
            return hint
    return _from_resets(found) if status == 429 else None


def _positive(seconds: float | None, header: str) -> RetryHint | None:
    if seconds is None or not math.isfinite(seconds) or seconds <= 0:
        return None
    return RetryHint(seconds, header)


def _from_ms(found: dict[str, str], now: float) -> RetryHint | None:
    text = found.get(_MS, "").strip()
    return _positive(float(text) / 1000, _MS) if _NUMBER.fullmatch(text) else None


def _from_retry_after(found: dict[str, str], now: float) -> RetryHint | None:
    text = found.get(_RETRY_AFTER, "").strip()
    if not text:
        return None
    if _NUMBER.fullmatch(text):
        return _positive(float(text), _RETRY_AFTER)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT; a date without a zone is not one
        return None
    return _positive(when.timestamp() - now, _RETRY_AFTER)


def _from_resets(found: dict[str, str]) -> RetryHint | None:
    resets: list[tuple[float, str, bool]] = []  # (seconds, header, the budget is known to be exhausted)
    for reset, remaining in _RESETS:
        seconds = parse_reset_duration(found.get(reset, ""))
        hint = _positive(seconds, reset)
        if hint is not None:
            resets.append((hint.seconds, reset, found.get(remaining, "").strip() == "0"))
    exhausted = [r for r in resets if r[2]] or resets
    if not exhausted:
        return None
    seconds, header, _ = max(exhausted)
    return RetryHint(seconds, header)
