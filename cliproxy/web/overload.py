"""When the gateway itself runs out (descriptors, socket buffers, memory, its own connection cap).

Such an error says nothing about the upstream: counting it against a pair would let any client
that can hold sockets open (a slowloris) auto-disable a healthy vendor. So the outcome is neutral,
the client gets 503 `gateway_overloaded` with `Retry-After: 1`, and the log gets one line per
interval with a count instead of one traceback per request (a storm of those would itself fill
the disk).

`local_resource_error` and `LogThrottle` are pure; `OverloadLog` is the thin shell that logs.
"""

from __future__ import annotations

import asyncio
import errno
import logging
from dataclasses import dataclass

__all__ = ["LOCAL_RESOURCE_ERRNOS", "LogThrottle", "OverloadLog", "local_resource_error"]

#: errno values that describe this machine, never the peer: no descriptor, buffer or memory for a socket.
LOCAL_RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
#: Seconds between two log lines about the same kind of overload.
LOG_INTERVAL_SECONDS = 10.0

log = logging.getLogger("cliproxy")


def local_resource_error(exc: BaseException) -> OSError | None:
    """The `OSError` in `exc`'s chain that says the gateway ran out of a local resource, else None.

    aiohttp's `ClientConnectorError` is itself an `OSError` carrying the errno of the failed
    `socket()`/`connect()`; other wrappers keep it as their cause.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in LOCAL_RESOURCE_ERRNOS:
            return current
        current = current.__cause__ or current.__context__
    return None


@dataclass(slots=True)
class LogThrottle:
    """At most one report per `interval` seconds; occurrences in between are counted into the next one."""

    interval: float = LOG_INTERVAL_SECONDS
    last_report: float | None = None
    pending: int = 0

    def note(self, now: float) -> int | None:
        """One occurrence at `now`: how many to report now (this one included), or None to stay quiet."""
        self.pending += 1
        if self.last_report is not None and now - self.last_report < self.interval:
            return None
        return self._take(now)

    def flush(self, now: float) -> int | None:
        """What is still unreported once the interval is over (called by a timer), or None."""
        if not self.pending or (self.last_report is not None and now - self.last_report < self.interval):
            return None
        return self._take(now)

    def _take(self, now: float) -> int:
        count, self.pending, self.last_report = self.pending, 0, now
        return count


class OverloadLog:
    """One WARNING per interval and kind ("upstream connect", "accept"), with how many happened.

    A timer reports what came in after the last line, so the count of a storm's tail is not lost.
    """

    def __init__(self, interval: float = LOG_INTERVAL_SECONDS) -> None:
        self.interval = interval
        self._throttles: dict[str, LogThrottle] = {}
        self._last_error: dict[str, str] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}

    def note(self, kind: str, error: OSError) -> None:
        loop = asyncio.get_running_loop()
        throttle = self._throttles.setdefault(kind, LogThrottle(self.interval))
        self._last_error[kind] = error.strerror or str(error)
        count = throttle.note(loop.time())
        if count is not None:
            self._write(kind, count)
        elif kind not in self._timers:
            assert throttle.last_report is not None
            self._timers[kind] = loop.call_at(throttle.last_report + self.interval, self._flush, kind)

    def close(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()

    def _flush(self, kind: str) -> None:
        self._timers.pop(kind, None)
        count = self._throttles[kind].flush(asyncio.get_running_loop().time())
        if count is not None:
            self._write(kind, count)

    def _write(self, kind: str, count: int) -> None:
        log.warning(
            "gateway_overloaded: %d %s attempt(s) failed for lack of local resources (%s) since the last such line "
            "(at most one per %gs); not counted against any vendor",
            count,
            kind,
            self._last_error[kind],
            self.interval,
        )
