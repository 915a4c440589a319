"""Single-flight: concurrent identical misses compute once, across threads and tasks.

Example::

    flight = SingleFlight()
    value = flight.do("key", compute)              # threads: one runs compute(), others wait
    value = await flight.ado("key", acompute)      # tasks: one runs acompute(), others await

    lead, follow = flight.claim(["a", "b", "c"])   # many keys at once (the embedding path)
    flight.settle(lead, {"a": va, "b": vb}, None, release=True)

The one single-flight of the project: the cache manager (``get_or_compute``), the LLM
service and the embedding service (per text) all use this class. Semantics:

- While a computation for a key is running, later callers wait for it instead of starting
  another: threads block on it, tasks await it without blocking their loop, and a thread
  and a task (or tasks of two loops) asking for one key at once share one computation.
- Once it is settled (and, for :meth:`claim`, released), the key is forgotten: the next
  caller starts afresh. An exception reaches every caller waiting at that moment and is
  never remembered (errors are never cached), so a later call retries.
- :meth:`ado` runs the computation in its own task and every caller, the first included,
  waits through ``asyncio.shield``: a caller that is cancelled (a timeout, a client gone)
  stops waiting without cancelling the work the others wait for. If every caller leaves,
  the task still finishes.
- A blocking caller never waits for a flight led by a task of the event loop running in
  its own thread (sync code called from a coroutine): that task could never run while the
  thread waits, so the caller computes on its own instead (counted in ``computed``).
- Bookkeeping is one table behind one lock. A key costs one small slot object; the
  ``concurrent.futures.Future`` that followers wait on is made only when a follower comes,
  so an uncontended call makes no synchronisation object at all.

Not done: coalescing across processes (a shared lease in Redis; see the operations docs);
re-entrance (a computation that asks for its own key waits for itself).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Generic, TypeVar, cast

__all__ = ["Flight", "SingleFlight"]

T = TypeVar("T")
V = TypeVar("V")


class Flight(Generic[V]):
    """One key being computed by a leader. Its future exists once a follower waits on it."""

    __slots__ = ("error", "future", "loop", "settled", "value")

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.loop = loop  # the event loop of an async leader, None for a thread
        self.future: concurrent.futures.Future[V] | None = None
        self.settled = False
        self.value: V | None = None
        self.error: BaseException | None = None

    def resolve(self, future: concurrent.futures.Future[V]) -> None:
        """Hand the settled value (or error) to ``future``."""
        if self.error is not None:
            future.set_exception(self.error)
        else:
            future.set_result(cast(V, self.value))


class SingleFlight(Generic[V]):
    """Coalesce concurrent computations by key, for threads (:meth:`do`) and tasks (:meth:`ado`).

    Example: ``SingleFlight().do("k", lambda: expensive())``. ``computed`` counts leaders
    (computations started), ``coalesced`` callers that waited on another's computation.
    """

    __slots__ = ("_lock", "_table", "coalesced", "computed")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._table: dict[str, Flight[V]] = {}
        self.computed = 0
        self.coalesced = 0

    # --- the I/O-free core: claim and settle ------------------------------------------
    def claim(
        self, keys: Iterable[str], *, blocking: bool
    ) -> tuple[dict[str, Flight[V]], dict[str, concurrent.futures.Future[V]]]:
        """Lead the keys nobody computes yet; get a future for each of the others.

        ``blocking``: the caller will wait with ``future.result()`` (a thread), not await
        (a task). A key a blocking caller must not wait for is led privately (see the
        module docstring): it is in ``lead`` but not shared.
        """
        lead: dict[str, Flight[V]] = {}
        follow: dict[str, concurrent.futures.Future[V]] = {}
        here = _loop_of_this_thread()
        with self._lock:
            for key in keys:
                claimed = self._claim(key, blocking, here)
                if isinstance(claimed, Flight):
                    lead[key] = claimed
                else:
                    follow[key] = claimed
        return lead, follow

    def claim_one(self, key: str, *, blocking: bool) -> Flight[V] | concurrent.futures.Future[V]:
        """:meth:`claim` of one key: a new flight to lead, or the future of a running one."""
        here = _loop_of_this_thread()
        with self._lock:
            return self._claim(key, blocking, here)

    def _claim(
        self, key: str, blocking: bool, here: asyncio.AbstractEventLoop | None
    ) -> Flight[V] | concurrent.futures.Future[V]:
        # Called with the lock held. `here`: the event loop running in this thread, if any.
        flight = self._table.get(key)
        if flight is None:
            flight = self._table[key] = Flight(None if blocking else here)
            self.computed += 1
            return flight
        if blocking and here is not None and flight.loop is here:
            self.computed += 1
            return Flight()  # led privately: waiting would block the leader's own loop
        self.coalesced += 1
        future = flight.future
        if future is None:
            future = flight.future = concurrent.futures.Future()
            if flight.settled:
                flight.resolve(future)
        return future

    def settle(
        self,
        lead: Mapping[str, Flight[V]],
        results: Mapping[str, V] | None,
        error: BaseException | None,
        *,
        release: bool = False,
    ) -> None:
        """Give each led flight its value from ``results`` (or ``error``).

        ``release`` also forgets the keys at once; without it they stay claimed (a caller
        that comes now waits, and gets the settled value) until :meth:`release`, so a
        leader can store its results before a new caller would look them up.
        """
        waited: list[Flight[V]] = []
        with self._lock:
            for key, flight in lead.items():
                if release and self._table.get(key) is flight:
                    del self._table[key]
                if flight.settled:
                    continue
                flight.settled = True
                if results is not None and key in results:
                    flight.value = results[key]
                else:
                    flight.error = error or RuntimeError(f"no value computed for {key!r}")
                if flight.future is not None:
                    waited.append(flight)
        for flight in waited:  # outside the lock: done-callbacks may run here
            assert flight.future is not None
            flight.resolve(flight.future)

    def settle_one(
        self, key: str, flight: Flight[V], value: V | None, error: BaseException | None
    ) -> None:
        """:meth:`settle` of one led flight, released at once."""
        with self._lock:
            if self._table.get(key) is flight:
                del self._table[key]
            if flight.settled:
                return
            flight.settled = True
            if error is None:
                flight.value = value
            else:
                flight.error = error
            future = flight.future
        if future is not None:  # outside the lock: done-callbacks may run here
            flight.resolve(future)

    def release(self, lead: Mapping[str, Flight[V]]) -> None:
        """Forget led keys that :meth:`settle` left claimed."""
        with self._lock:
            for key, flight in lead.items():
                if self._table.get(key) is flight:
                    del self._table[key]

    # --- the shells -----------------------------------------------------------------
    def do(self, key: str, fn: Callable[[], T]) -> T:
        """Run ``fn()`` once for concurrent callers with the same ``key``; return its result."""
        claimed = cast(
            "Flight[T] | concurrent.futures.Future[T]", self.claim_one(key, blocking=True)
        )
        if not isinstance(claimed, Flight):
            return claimed.result()
        flights = cast("SingleFlight[T]", self)
        try:
            value = fn()
        except BaseException as exc:
            flights.settle_one(key, claimed, None, exc)
            raise
        flights.settle_one(key, claimed, value, None)
        return value

    async def ado(self, key: str, fn: Callable[[], Awaitable[T]]) -> T:
        """Await ``fn()`` once for concurrent callers with the same ``key``.

        The computation runs in a task of its own, shielded from the callers' cancellation.
        """
        claimed = cast(
            "Flight[T] | concurrent.futures.Future[T]", self.claim_one(key, blocking=False)
        )
        if not isinstance(claimed, Flight):
            return await asyncio.shield(asyncio.wrap_future(claimed))
        flights = cast("SingleFlight[T]", self)

        async def lead() -> T:
            try:
                value = await fn()
            except BaseException as exc:
                flights.settle_one(key, claimed, None, exc)
                raise
            flights.settle_one(key, claimed, value, None)
            return value

        task = asyncio.ensure_future(lead())
        task.add_done_callback(_retrieve)
        return await asyncio.shield(task)

    def reset(self) -> None:
        """Forget every flight (after ``fork()``: the child has no such threads or tasks)."""
        self._lock = threading.Lock()
        self._table = {}

    def __len__(self) -> int:
        return len(self._table)

    def __repr__(self) -> str:
        return (
            f"<SingleFlight [in flight: {len(self._table)} | computed: {self.computed}, "
            f"coalesced: {self.coalesced}]>"
        )


def _loop_of_this_thread() -> asyncio.AbstractEventLoop | None:
    """The event loop running in this thread, or ``None``."""
    # asyncio's own lookup without get_running_loop()'s RuntimeError: raising and catching
    # it cost about a microsecond on every blocking claim (a thread has no loop).
    return asyncio._get_running_loop()


def _retrieve(task: asyncio.Future[Any]) -> None:
    # Mark the outcome retrieved: the callers got it, or nobody was left to care.
    if not task.cancelled():
        task.exception()
