"""Single-flight: concurrent identical misses compute once.

Example::

    flight = SingleFlight()
    value = flight.do("key", compute)              # threads: one runs compute(), others wait
    value = await flight.ado("key", acompute)      # tasks: one runs acompute(), others await

Semantics, for both twins:

- While a computation for ``key`` is running, later callers wait for it instead of
  starting another. Once it finishes, the key is forgotten: the next caller starts afresh.
- An exception reaches every caller waiting at that moment and is never remembered
  (the manager never caches errors), so a later call retries.
- Async: the computation runs in its own task and every caller, the first included, awaits
  it through ``asyncio.shield``: a caller that is cancelled (a timeout, a client gone) stops
  waiting without cancelling the work the others wait for. If every caller leaves, the
  task still finishes (and its result is stored by the manager).
- Async flights are per event loop; thread flights are per process. A thread and a task
  asking for the same key at once each compute (they cannot wait on each other safely).

Not done: coalescing across processes (use the shared Redis tier's lock for that).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

__all__ = ["SingleFlight"]

T = TypeVar("T")


class _Call:
    __slots__ = ("done", "error", "result", "waiters")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None
        self.waiters = 0


class SingleFlight:
    """Coalesce concurrent calls by key, for threads (:meth:`do`) and tasks (:meth:`ado`)."""

    __slots__ = ("_calls", "_lock", "_tasks", "coalesced", "computed")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: dict[str, _Call] = {}
        # (loop, key) -> task; loops differ between threads and asyncio.run() calls.
        self._tasks: dict[tuple[int, str], asyncio.Task[Any]] = {}
        self.computed = 0  # computations started
        self.coalesced = 0  # callers that waited on another's computation

    def do(self, key: str, fn: Callable[[], T]) -> T:
        """Run ``fn()`` once for concurrent callers with the same ``key``; return its result."""
        with self._lock:
            call = self._calls.get(key)
            leader = call is None
            if call is None:
                call = self._calls[key] = _Call()
                self.computed += 1
            else:
                call.waiters += 1
                self.coalesced += 1
        if not leader:
            call.done.wait()
            if call.error is not None:
                raise call.error
            return call.result  # type: ignore[no-any-return]
        try:
            call.result = fn()
        except BaseException as exc:
            call.error = exc
            raise
        finally:
            with self._lock:
                del self._calls[key]
            call.done.set()
        return call.result  # type: ignore[no-any-return]

    async def ado(self, key: str, fn: Callable[[], Awaitable[T]]) -> T:
        """Await ``fn()`` once for concurrent tasks with the same ``key`` on this loop."""
        loop = asyncio.get_running_loop()
        slot = (id(loop), key)
        task = self._tasks.get(slot)
        if task is None or task.get_loop() is not loop:
            task = loop.create_task(_run(fn))
            self._tasks[slot] = task
            self.computed += 1
            task.add_done_callback(lambda t: self._forget(slot, t))
        else:
            self.coalesced += 1
        return await asyncio.shield(task)

    def _forget(self, slot: tuple[int, str], task: asyncio.Task[Any]) -> None:
        if self._tasks.get(slot) is task:
            del self._tasks[slot]
        if not task.cancelled():
            task.exception()  # mark retrieved: waiters got it, or nobody was left to care

    def reset(self) -> None:
        """Forget every flight (after ``fork()``: the child has no such threads or tasks)."""
        self._lock = threading.Lock()
        self._calls = {}
        self._tasks = {}

    def __repr__(self) -> str:
        return (
            f"SingleFlight(in_flight={len(self._calls) + len(self._tasks)}, "
            f"computed={self.computed}, coalesced={self.coalesced})"
        )


async def _run(fn: Callable[[], Awaitable[T]]) -> T:
    return await fn()
