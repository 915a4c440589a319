"""Injectable clocks, so tests move time forward instead of sleeping.

Production code takes ``clock=time.monotonic`` (seconds, float) and, where it waits,
``sleep=asyncio.sleep`` or ``sleep=time.sleep``. Tests pass a :class:`FakeClock`::

    clock = FakeClock()
    cache = CacheManager(clock=clock)
    cache.set("k", "v", ttl=10.0)
    clock.advance(10.5)            # no sleeping
    assert cache.get("k") is None

A :class:`FakeClock` is also a sync and an async sleep function that advance it, so code
that backs off "sleeps" instantly and tests can read how long it asked to wait.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Awaitable, Callable

__all__ = ["AsyncSleep", "Clock", "FakeClock", "Sleep", "monotonic"]

Clock = Callable[[], float]
Sleep = Callable[[float], None]
AsyncSleep = Callable[[float], Awaitable[None]]

monotonic: Clock = time.monotonic


class FakeClock:
    """A manual clock in seconds: call it for the time, :meth:`advance` to move it.

    Example::

        clock = FakeClock(start=100.0)
        clock()              # 100.0
        clock.advance(0.25)
        clock()              # 100.25
        clock.sleep(1.0)     # returns at once, clock() == 101.25, clock.slept == [1.0]

    Thread-safe. Does not wake coroutines that wait on the real event-loop clock.
    """

    __slots__ = ("_lock", "_now", "slept")

    def __init__(self, start: float = 0.0) -> None:
        self._now = float(start)
        self._lock = threading.Lock()
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        """Move the clock forward by ``seconds`` (must not be negative)."""
        if seconds < 0:
            msg = f"cannot move a clock backwards: advance({seconds})"
            raise ValueError(msg)
        with self._lock:
            self._now += seconds

    def sleep(self, seconds: float) -> None:
        """A ``time.sleep`` stand-in: records the request and advances the clock."""
        self.slept.append(seconds)
        self.advance(max(0.0, seconds))

    async def asleep(self, seconds: float) -> None:
        """An ``asyncio.sleep`` stand-in: records, advances, and yields to the loop once."""
        import asyncio

        self.sleep(seconds)
        await asyncio.sleep(0)

    def __repr__(self) -> str:
        return f"<FakeClock now={self._now:.6f} sleeps={len(self.slept)}>"
