"""The requests being handled now, so a shutdown can keep its grace exactly and name what it cuts.

aiohttp's `runner.cleanup()` waits `shutdown_timeout` for a request in flight, then asks it to stop
(which a streaming handler does not notice) and waits `shutdown_timeout` again before cancelling
it: a 1 s grace cut a stream at about 2 s. `cliproxy.server` instead waits here for at most the
grace, then cuts what is left itself: each cut request is marked (`was_cut`) before its task is
cancelled, so the access line says `shutdown`, not that the client went away.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

__all__ = ["InFlight"]


class InFlight:
    """Handler tasks of the requests in flight (O(1) per request: one set add and discard)."""

    __slots__ = ("_tasks", "_idle", "_cut")

    def __init__(self) -> None:
        self._tasks: dict[asyncio.Task[object], web.Request] = {}
        self._idle = asyncio.Event()
        self._idle.set()
        self._cut: set[int] = set()

    def enter(self, request: web.Request) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks[task] = request
            self._idle.clear()

    def leave(self, request: web.Request) -> None:
        task = asyncio.current_task()
        if task is not None and self._tasks.pop(task, None) is not None and not self._tasks:
            self._idle.set()
        self._cut.discard(id(request))

    def __len__(self) -> int:
        return len(self._tasks)

    def was_cut(self, request: web.Request) -> bool:
        """True for a request the shutdown cancelled (checked only on the cancellation path)."""
        return id(request) in self._cut

    async def wait_idle(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for every request in flight to finish; True when they did."""
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True

    def cut(self) -> int:
        """Cancel every request still in flight (marked first); how many there were."""
        for task, request in list(self._tasks.items()):
            self._cut.add(id(request))
            task.cancel()
        return len(self._tasks)
