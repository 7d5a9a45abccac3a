"""Requests held while no engine is ready: a bounded queue, first come first served, each with its own
deadline. A request that cannot join (the queue is full) is told so at once (the app answers 429 with
Retry-After), never dropped silently."""

from __future__ import annotations

import asyncio
from collections import deque


class Full(Exception):
    """The queue holds as many requests as it may."""


class Hold:
    def __init__(self, size: int) -> None:
        self.size = size
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    async def wait(self, seconds: float) -> bool:
        """Wait until :meth:`release` lets this request go (True) or ``seconds`` pass (False).
        Raises :class:`Full` when the queue is full."""
        if len(self._waiters) >= self.size:
            raise Full
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(future)
        try:
            await asyncio.wait_for(asyncio.shield(future), seconds)
            return True
        except TimeoutError:
            return False
        finally:
            if future in self._waiters:
                self._waiters.remove(future)
            if not future.done():
                future.cancel()

    def release(self, count: int | None = None) -> None:
        """Let ``count`` waiters go, oldest first (all of them when None)."""
        n = len(self._waiters) if count is None else min(count, len(self._waiters))
        for _ in range(n):
            future = self._waiters.popleft()
            if not future.done():
                future.set_result(None)
