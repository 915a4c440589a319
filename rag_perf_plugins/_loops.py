"""One resource per event loop, closed on that loop while it shuts down.

Example::

    clients = PerLoop(make=lambda: AsyncClient(...), close=lambda c: c.aclose())
    client = clients.current() or await clients.open()   # the running loop's own
    clients.close_from_sync()                             # at exit, from no loop

asyncio resources (HTTP connection pools, Redis clients) belong to the loop that made them,
but the objects users keep (a framework's SDK client, a process-wide budget store) outlive
loops: ``asyncio.run()`` twice, one loop per thread. So each loop gets its own resource,
made at first use on it. At that moment a tiny async generator (a *sentinel*) is started
on the loop; ``loop.shutdown_asyncgens()`` (run by ``asyncio.run``, ``asyncio.Runner`` and
pytest-asyncio before closing the loop) finalises it, which closes the resource on its own
loop. A loop closed without ``shutdown_asyncgens()`` (a bare ``loop.close()``) has its
resource dropped, not closed, the next time another loop opens one.

The HTTP loop-routing transport (:mod:`rag_perf_plugins.pool.http`) and the Redis budget
store (:mod:`rag_perf_plugins.admission.redis_store`) both keep their per-loop resources
here. Thread-safe: loops of several threads share one ``PerLoop``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Generic, TypeVar

__all__ = ["PerLoop"]

T = TypeVar("T")


class _Entry(Generic[T]):
    __slots__ = ("loop", "resource", "sentinel")

    def __init__(self, loop: asyncio.AbstractEventLoop, resource: T) -> None:
        self.loop = loop
        self.resource = resource
        self.sentinel: AsyncGenerator[None, None] | None = None


class PerLoop(Generic[T]):
    """A resource of each running event loop, made on first use, closed at loop shutdown.

    Args:
        make: Builds the resource (called with no loop-bound I/O; it may be lazy).
        close: Closes one resource; awaited on the resource's own loop.

    Does not: move a resource between loops (impossible: sockets belong to one loop).
    """

    __slots__ = ("_close", "_entries", "_forked", "_lock", "_make", "closed")

    def __init__(self, make: Callable[[], T], close: Callable[[T], Awaitable[object]]) -> None:
        self._make = make
        self._close = close
        # A plain dict, not weak: a resource refers to its loop anyway, so entries leave
        # only through their sentinel or _drop().
        self._entries: dict[asyncio.AbstractEventLoop, _Entry[T]] = {}
        self._lock = threading.Lock()
        self._forked: list[_Entry[T]] = []
        self.closed = False

    def current(self) -> T | None:
        """The running loop's resource, or ``None`` when it has none yet (no I/O)."""
        entry = self._entries.get(asyncio.get_running_loop())
        return None if entry is None else entry.resource

    async def get(self) -> T:
        """The running loop's resource, made (and its sentinel started) on first use."""
        entry = self._entries.get(asyncio.get_running_loop())
        return entry.resource if entry is not None else await self.open()

    async def open(self) -> T:
        """Make the running loop's resource (or return the one another task just made).

        Raises:
            RuntimeError: :meth:`aclose` or :meth:`close_from_sync` was called.
        """
        if self.closed:
            msg = "closed: no new per-loop resource can be made"
            raise RuntimeError(msg)
        loop = asyncio.get_running_loop()
        self._drop_dead_loops()
        with self._lock:
            existing = self._entries.get(loop)
            if existing is not None:
                return existing.resource
            entry = self._entries[loop] = _Entry(loop, self._make())
        sentinel = self._sentinel(entry)
        entry.sentinel = sentinel
        # The first step registers the generator with this loop's asyncgen hooks, so
        # shutdown_asyncgens() runs its `finally` (closing the resource) on this loop.
        await sentinel.__anext__()
        return entry.resource

    def resources(self) -> list[T]:
        """Every loop's resource, for statistics."""
        with self._lock:
            return [e.resource for e in self._entries.values()]

    def __len__(self) -> int:
        return len(self._entries)

    async def aclose_current(self) -> None:
        """Close the running loop's resource now (a later :meth:`get` makes a new one)."""
        entry = self._entries.get(asyncio.get_running_loop())
        if entry is not None and entry.sentinel is not None:
            await entry.sentinel.aclose()

    async def aclose(self) -> None:
        """Close every resource and refuse new ones: this loop's now, others on their loops."""
        self.closed = True
        loop = asyncio.get_running_loop()
        with self._lock:
            entries = list(self._entries.values())
        for entry in entries:
            if entry.loop is loop:
                await self._finish(entry)
            else:
                self._close_elsewhere(entry)

    def close_from_sync(self, timeout: float = 5.0) -> None:
        """Close every resource from code with no running loop (e.g. at exit); refuse new ones.

        Resources of loops running in other threads are closed on those loops (waiting up
        to ``timeout`` seconds each); those of closed loops are dropped. A resource of a
        loop that is neither running nor closed is closed when that loop shuts down.
        """
        self.closed = True
        with self._lock:
            entries = list(self._entries.values())
        for entry in entries:
            future = self._close_elsewhere(entry)
            if future is not None:
                with contextlib.suppress(Exception):
                    future.result(timeout)

    def forget(self) -> None:
        """Start afresh after ``fork()``: the parent's loops and sockets are not ours.

        The old entries stay referenced, never finalised: closing them would act on the
        parent's loops and connections.
        """
        self._lock = threading.Lock()
        self._forked.extend(self._entries.values())
        self._entries = {}

    # --- internals ----------------------------------------------------------------------
    async def _sentinel(self, entry: _Entry[T]) -> AsyncGenerator[None, None]:
        try:
            yield
        finally:
            with self._lock:
                if self._entries.get(entry.loop) is entry:
                    del self._entries[entry.loop]
            if not entry.loop.is_closed():
                await self._close(entry.resource)

    async def _finish(self, entry: _Entry[T]) -> None:
        if entry.sentinel is not None:
            await entry.sentinel.aclose()

    def _close_elsewhere(self, entry: _Entry[T]) -> concurrent.futures.Future[None] | None:
        if entry.loop.is_closed():
            self._drop(entry)
            return None
        if entry.loop.is_running() and entry.sentinel is not None:
            return asyncio.run_coroutine_threadsafe(self._finish(entry), entry.loop)
        return None

    def _drop_dead_loops(self) -> None:
        with self._lock:
            dead = [e for e in self._entries.values() if e.loop.is_closed()]
        for entry in dead:
            self._drop(entry)

    def _drop(self, entry: _Entry[T]) -> None:
        # The loop was closed without shutdown_asyncgens(): its sockets cannot be closed on
        # it any more. Finish the sentinel by hand (its `finally` skips the await on a
        # closed loop), so its finaliser does not schedule work on a closed loop.
        sentinel, entry.sentinel = entry.sentinel, None
        with self._lock:
            if self._entries.get(entry.loop) is entry:
                del self._entries[entry.loop]
        if sentinel is not None:
            closing = sentinel.aclose()
            with contextlib.suppress(StopIteration, RuntimeError):
                closing.send(None)
            closing.close()
