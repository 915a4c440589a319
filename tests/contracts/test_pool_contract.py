"""The connection pool contract, run against ConnectionPool and AsyncConnectionPool.

One suite (``TestPoolContract``) is written once, in blocking style, and runs on both
twins through a small driver: :class:`SyncDriver` calls the thread-safe pool directly and
queues waiting borrowers in threads; :class:`AsyncDriver` runs the async pool's coroutines
on a private event loop and queues waiting borrowers as tasks of that loop. Both pools
share one bookkeeping core, so everything here must come out the same, number for number:
limits, FIFO waiters, ``min_connections``, validation, broken connections, ``PoolTimeout``
and ``PoolError`` messages, closing, and expiry on an injected ``FakeClock``.

Only public methods are used (``get_connection``, ``return_connection``, ``connection()``,
``get_stats``, ``close``/``aclose``, ``open`` for the async twin). The drivers wait for a
borrower to be queued by reading ``get_stats().waiting``, never by sleeping; the only real
waits are the ``PoolTimeout`` tests' few hundredths of a second, because both pools wait
for a free connection on the real clock (a thread's ``Event.wait``, the loop's timer).

To add a twin, write a driver and add it to ``DRIVERS``.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any, Protocol, TypeVar

import pytest

from rag_perf_plugins._clock import FakeClock
from rag_perf_plugins.pool import (
    AsyncConnectionPool,
    ConnectionPool,
    ConnectionPoolConfig,
    PoolClosed,
    PoolError,
    PoolStats,
    PoolTimeout,
)

R = TypeVar("R")

# Seconds a PoolTimeout test really waits (both twins wait on the real clock).
SHORT = 0.03


class Conn:
    """A fake connection: numbered, ``healthy`` for validation, closed exactly once."""

    def __init__(self, number: int) -> None:
        self.number = number
        self.healthy = True
        self.closed = False

    def close(self) -> None:
        assert not self.closed, f"connection {self.number} closed twice"
        self.closed = True

    def __repr__(self) -> str:
        return f"<Conn {self.number}>"


class Factory:
    """Makes numbered connections; ``fail_next`` makes the next calls raise."""

    def __init__(self) -> None:
        self.made: list[Conn] = []
        self.fail_next = 0
        self.validated: list[Conn] = []

    def make(self) -> Conn:
        if self.fail_next:
            self.fail_next -= 1
            raise ConnectionRefusedError("cannot connect")
        conn = Conn(len(self.made) + 1)
        self.made.append(conn)
        return conn

    def validate(self, conn: Conn) -> bool:
        self.validated.append(conn)
        if conn.number < 0:
            raise RuntimeError("validation itself failed")
        return conn.healthy

    @property
    def alive(self) -> list[Conn]:
        return [conn for conn in self.made if not conn.closed]


class Pending(Protocol):
    """A borrower that was queued: ``result()`` waits for its connection or its error."""

    def result(self) -> Conn: ...


class Driver(Protocol):
    """One pool twin behind blocking calls. See the module docstring."""

    name: str
    clock: FakeClock
    factory: Factory

    def open(self) -> None: ...
    def borrow(self, timeout: float | None = None) -> Conn: ...
    def give_back(self, conn: Conn, *, broken: bool = False) -> None: ...
    def lease(self, timeout: float | None = None) -> AbstractContextManager[Conn]: ...
    def start_borrow(self, timeout: float | None = None) -> Pending: ...
    def stats(self) -> PoolStats: ...
    def close(self) -> None: ...
    def describe(self) -> str: ...
    def finish(self) -> None: ...


def _wait_until(predicate: Callable[[], bool], what: str) -> None:
    # Waits for another thread to reach a state: a synchronisation, not a timing.
    deadline = time.monotonic() + 10.0
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.0005)


class ThreadPending:
    def __init__(self, target: Callable[[], Conn]) -> None:
        self._outcome: list[Any] = []
        self.thread = threading.Thread(target=self._run, args=(target,), daemon=True)
        self.thread.start()

    def _run(self, target: Callable[[], Conn]) -> None:
        try:
            self._outcome.append(("ok", target()))
        except BaseException as exc:  # handed to result()
            self._outcome.append(("error", exc))

    def result(self) -> Conn:
        self.thread.join(10.0)
        assert not self.thread.is_alive(), "the borrower is still waiting"
        kind, value = self._outcome[0]
        if kind == "error":
            raise value
        conn: Conn = value
        return conn


class SyncDriver:
    """:class:`ConnectionPool`: blocking calls, waiting borrowers in threads."""

    name = "sync"

    def __init__(self, config: ConnectionPoolConfig, *, validate: bool) -> None:
        self.clock = FakeClock(start=1000.0)
        self.factory = Factory()
        self.pool: ConnectionPool[Conn] = ConnectionPool(
            self.factory.make,
            config,
            validate=self.factory.validate if validate else None,
            clock=self.clock,
        )
        self.pending: list[ThreadPending] = []

    def open(self) -> None:
        """Nothing to do: the constructor made ``min_connections`` already."""

    def borrow(self, timeout: float | None = None) -> Conn:
        return self.pool.get_connection(timeout=timeout)

    def give_back(self, conn: Conn, *, broken: bool = False) -> None:
        self.pool.return_connection(conn, broken=broken)

    def lease(self, timeout: float | None = None) -> AbstractContextManager[Conn]:
        return self.pool.connection(timeout=timeout)

    def start_borrow(self, timeout: float | None = None) -> Pending:
        before = self.pool.get_stats().waiting
        pending = ThreadPending(lambda: self.pool.get_connection(timeout=timeout))
        self.pending.append(pending)
        _wait_until(
            lambda: not pending.thread.is_alive() or self.pool.get_stats().waiting > before,
            "the borrower to queue",
        )
        return pending

    def stats(self) -> PoolStats:
        return self.pool.get_stats()

    def close(self) -> None:
        self.pool.close()

    def describe(self) -> str:
        return repr(self.pool)

    def finish(self) -> None:
        self.pool.close()
        for pending in self.pending:
            pending.thread.join(10.0)


class TaskPending:
    def __init__(self, driver: AsyncDriver, task: asyncio.Task[Conn]) -> None:
        self.driver = driver
        self.task = task

    def result(self) -> Conn:
        return self.driver.run(self.task)


class AsyncDriver:
    """:class:`AsyncConnectionPool` on a private event loop; waiting borrowers are tasks."""

    name = "async"

    def __init__(self, config: ConnectionPoolConfig, *, validate: bool) -> None:
        self.clock = FakeClock(start=1000.0)
        self.factory = Factory()
        self.loop = asyncio.new_event_loop()

        async def make() -> Conn:
            await asyncio.sleep(0)  # a real await: other tasks run while it "connects"
            return self.factory.make()

        async def check(conn: Conn) -> bool:
            await asyncio.sleep(0)
            return self.factory.validate(conn)

        self.pool: AsyncConnectionPool[Conn] = AsyncConnectionPool(
            make, config, validate=check if validate else None, clock=self.clock
        )
        self.tasks: list[asyncio.Task[Conn]] = []

    def run(self, awaitable: Coroutine[Any, Any, R] | asyncio.Future[R]) -> R:
        return self.loop.run_until_complete(awaitable)

    def open(self) -> None:
        self.run(self.pool.open())

    def borrow(self, timeout: float | None = None) -> Conn:
        return self.run(self.pool.get_connection(timeout=timeout))

    def give_back(self, conn: Conn, *, broken: bool = False) -> None:
        self.run(self.pool.return_connection(conn, broken=broken))

    @contextmanager
    def lease(self, timeout: float | None = None) -> Iterator[Conn]:
        lease = self.pool.connection(timeout=timeout)
        conn = self.run(lease.__aenter__())
        try:
            yield conn
        except BaseException as exc:
            self.run(lease.__aexit__(type(exc), exc, exc.__traceback__))
            raise
        self.run(lease.__aexit__(None, None, None))

    def start_borrow(self, timeout: float | None = None) -> Pending:
        before = self.pool.get_stats().waiting
        task = self.loop.create_task(self.pool.get_connection(timeout=timeout))
        self.tasks.append(task)

        async def queued() -> None:
            # Loop turns, not time: until the task waits in the pool or is done.
            for _ in range(10_000):
                if task.done() or self.pool.get_stats().waiting > before:
                    return
                await asyncio.sleep(0)
            raise AssertionError("the borrower never queued")

        self.run(queued())
        return TaskPending(self, task)

    def stats(self) -> PoolStats:
        return self.pool.get_stats()

    def close(self) -> None:
        self.run(self.pool.aclose())

    def describe(self) -> str:
        return repr(self.pool)

    def finish(self) -> None:
        try:
            self.run(self.pool.aclose())
            for task in self.tasks:
                task.cancel()
            if self.tasks:
                self.run(asyncio.wait(self.tasks))
            self.run(self.loop.shutdown_asyncgens())
        finally:
            self.loop.close()


DRIVERS: list[Callable[..., Driver]] = [SyncDriver, AsyncDriver]


@pytest.fixture(params=DRIVERS, ids=lambda cls: cls.name)
def make(request: pytest.FixtureRequest) -> Iterator[Callable[..., Driver]]:
    """``make(validate=False, **ConnectionPoolConfig fields)`` -> an opened driver."""
    made: list[Driver] = []

    def build(*, validate: bool = False, opened: bool = True, **limits: Any) -> Driver:
        limits.setdefault("idle_timeout", None)
        driver: Driver = request.param(ConnectionPoolConfig(**limits), validate=validate)
        made.append(driver)
        if opened:
            driver.open()
        return driver

    yield build
    for driver in made:
        driver.finish()


class TestPoolContract:
    """What both pool twins do, through their public methods."""

    # --- borrowing and returning --------------------------------------------------------
    def test_a_returned_connection_is_reused(self, make: Callable[..., Driver]) -> None:
        pool = make(max_connections=2)
        first = pool.borrow()
        pool.give_back(first)
        assert pool.borrow() is first
        stats = pool.stats()
        assert (stats.created, stats.reused, stats.borrows, stats.reuse_ratio) == (1, 1, 2, 0.5)
        assert (stats.in_use, stats.idle, stats.waiting, stats.closed) == (1, 0, 0, False)

    def test_the_context_manager_borrows_and_returns(self, make: Callable[..., Driver]) -> None:
        pool = make(max_connections=2)
        with pool.lease() as conn:
            assert pool.stats().in_use == 1
            assert not conn.closed
        assert (pool.stats().in_use, pool.stats().idle) == (0, 1)
        with pool.lease() as again:
            assert again is conn
        assert pool.factory.made == [conn]

    def test_repr_shows_live_state(self, make: Callable[..., Driver]) -> None:
        pool = make(max_connections=3)
        conn = pool.borrow()
        name = {"sync": "ConnectionPool", "async": "AsyncConnectionPool"}[pool.name]
        assert pool.describe() == f"<{name} [in use: 1, idle: 0, waiting: 0 | max: 3]>"
        pool.give_back(conn)
        pool.close()
        assert pool.describe() == f"<{name} closed [in use: 0, idle: 0, waiting: 0 | max: 3]>"

    # --- bounds and waiting -------------------------------------------------------------
    def test_bounded_by_max_connections(self, make: Callable[..., Driver]) -> None:
        pool = make(max_connections=3, connection_timeout=SHORT)
        held = [pool.borrow() for _ in range(3)]
        assert len({id(conn) for conn in held}) == 3
        with pytest.raises(PoolTimeout):
            pool.borrow()
        stats = pool.stats()
        assert (stats.created, stats.in_use, stats.timeouts, stats.waits) == (3, 3, 1, 1)
        assert stats.waiting == 0 and len(pool.factory.made) == 3

    def test_pool_timeout_names_the_in_use_count_and_the_wait(
        self, make: Callable[..., Driver]
    ) -> None:
        pool = make(max_connections=2, connection_timeout=SHORT)
        held = [pool.borrow(), pool.borrow()]
        pending = pool.start_borrow()
        pool.clock.advance(SHORT)  # the pool's clock measures the wait
        with pytest.raises(PoolTimeout) as caught:
            pending.result()
        message = str(caught.value)
        assert f"after waiting {SHORT:.3f} s (connection_timeout={SHORT:g} s)" in message
        assert "2 of max_connections=2 in use, 0 other borrowers waiting" in message
        assert pool.stats().total_wait_time == pytest.approx(SHORT)
        assert not any(conn.closed for conn in held)

    def test_a_per_call_timeout_overrides_the_config(self, make: Callable[..., Driver]) -> None:
        pool = make(max_connections=1, connection_timeout=60.0)
        pool.borrow()
        started = time.monotonic()
        with pytest.raises(PoolTimeout) as caught:
            pool.borrow(timeout=SHORT)
        assert time.monotonic() - started < 30.0  # not the config's 60 s
        # The message names the timeout that was waited, not the config's.
        assert f"(timeout={SHORT:g} s): 1 of max_connections=1 in use" in str(caught.value)
        assert pool.stats().timeouts == 1

    def test_waiters_are_served_first_come_first_served(self, make: Callable[..., Driver]) -> None:
        pool = make(max_connections=1)
        conn = pool.borrow()
        first, second, third = (pool.start_borrow() for _ in range(3))
        assert pool.stats().waiting == 3
        pool.give_back(conn)
        assert first.result() is conn
        assert pool.stats().waiting == 2
        pool.give_back(conn)
        assert second.result() is conn
        pool.give_back(conn)
        assert third.result() is conn
        pool.give_back(conn)
        stats = pool.stats()
        assert (stats.created, stats.borrows, stats.reused, stats.waits) == (1, 4, 3, 3)
        assert (stats.waiting, stats.in_use, stats.idle) == (0, 0, 1)

    def test_a_newcomer_does_not_take_what_a_waiter_is_owed(
        self, make: Callable[..., Driver]
    ) -> None:
        pool = make(max_connections=1)
        conn = pool.borrow()
        waiter = pool.start_borrow()
        pool.give_back(conn)  # handed to the waiter, even before it runs again
        with pytest.raises(PoolTimeout):
            pool.borrow(timeout=SHORT)
        assert waiter.result() is conn

    def test_wait_time_is_measured_on_the_pool_clock(self, make: Callable[..., Driver]) -> None:
        pool = make(max_connections=1)
        conn = pool.borrow()
        waiter = pool.start_borrow()
        pool.clock.advance(2.5)
        pool.give_back(conn)
        assert waiter.result() is conn
        stats = pool.stats()
        assert (stats.waits, stats.total_wait_time) == (1, 2.5)

    # --- min_connections ----------------------------------------------------------------
    def test_min_connections_are_made_up_front(self, make: Callable[..., Driver]) -> None:
        pool = make(max_connections=4, min_connections=2, opened=False)
        if pool.name == "async":
            # Documented difference: a constructor cannot await, so the async pool makes
            # them in open() (or `async with pool`, or the first borrow).
            assert pool.stats().created == 0
        pool.open()
        stats = pool.stats()
        assert (stats.created, stats.idle, stats.in_use, stats.borrows) == (2, 2, 0, 0)
        made = list(pool.factory.made)
        assert {id(pool.borrow()), id(pool.borrow())} == {id(c) for c in made}
        assert pool.stats().reused == 2
        pool.borrow()
        assert pool.stats().created == 3

    def test_idle_expiry_keeps_min_connections(self, make: Callable[..., Driver]) -> None:
        pool = make(max_connections=3, min_connections=1, idle_timeout=5.0)
        held = [pool.borrow() for _ in range(3)]
        for conn in held:
            pool.give_back(conn)
        pool.clock.advance(5.0)
        kept = pool.borrow()
        assert kept in held and not kept.closed
        assert sum(conn.closed for conn in held) == 2  # down to min_connections, no lower
        stats = pool.stats()
        assert (stats.discarded, stats.created, stats.idle) == (2, 3, 0)

    # --- validation and broken connections ----------------------------------------------
    def test_an_invalid_connection_is_replaced(self, make: Callable[..., Driver]) -> None:
        pool = make(max_connections=1, validate=True)
        first = pool.borrow()
        assert pool.factory.validated == []  # never on a fresh connection
        pool.give_back(first)
        first.healthy = False
        second = pool.borrow()
        assert second is not first and first.closed and not second.closed
        assert pool.factory.validated == [first]
        stats = pool.stats()
        assert (stats.created, stats.reused, stats.borrows) == (2, 0, 2)
        assert (stats.validation_failures, stats.discarded, stats.in_use) == (1, 1, 1)

    def test_a_validator_that_raises_counts_as_invalid(self, make: Callable[..., Driver]) -> None:
        pool = make(max_connections=1, validate=True)
        first = pool.borrow()
        pool.give_back(first)
        first.number = -1  # Factory.validate raises for it
        assert pool.borrow() is not first
        assert first.closed and pool.stats().validation_failures == 1

    def test_a_valid_connection_is_reused(self, make: Callable[..., Driver]) -> None:
        pool = make(max_connections=1, validate=True)
        first = pool.borrow()
        pool.give_back(first)
        assert pool.borrow() is first
        assert pool.factory.validated == [first]
        assert pool.stats().validation_failures == 0

    def test_a_broken_connection_is_closed_and_replaced(self, make: Callable[..., Driver]) -> None:
        pool = make(max_connections=1)
        first = pool.borrow()
        pool.give_back(first, broken=True)
        assert first.closed
        second = pool.borrow()
        assert second is not first
        stats = pool.stats()
        assert (stats.created, stats.discarded, stats.in_use, stats.idle) == (2, 1, 1, 0)

    def test_a_broken_connection_frees_its_slot_for_a_waiter(
        self, make: Callable[..., Driver]
    ) -> None:
        pool = make(max_connections=1)
        first = pool.borrow()
        waiter = pool.start_borrow()
        pool.give_back(first, broken=True)
        fresh = waiter.result()
        assert fresh is not first and first.closed and not fresh.closed
        assert pool.stats().created == 2

    def test_an_os_error_in_the_block_marks_the_connection_broken(
        self, make: Callable[..., Driver]
    ) -> None:
        pool = make(max_connections=1)
        with pytest.raises(ConnectionResetError), pool.lease() as conn:
            raise ConnectionResetError("peer went away")
        assert conn.closed and pool.stats().discarded == 1
        with pytest.raises(ValueError), pool.lease() as healthy:
            raise ValueError("the caller's own error")
        assert not healthy.closed and healthy is not conn
        with pool.lease() as again:
            assert again is healthy

    def test_a_failing_factory_frees_the_slot(self, make: Callable[..., Driver]) -> None:
        pool = make(max_connections=1)
        pool.factory.fail_next = 1
        with pytest.raises(ConnectionRefusedError):
            pool.borrow()
        assert (pool.stats().in_use, pool.stats().created) == (0, 0)
        conn = pool.borrow(timeout=SHORT)  # the slot is free again: no wait
        assert conn is pool.factory.made[0]

    def test_a_failing_factory_passes_the_slot_to_a_waiter(
        self, make: Callable[..., Driver]
    ) -> None:
        pool = make(max_connections=1)
        conn = pool.borrow()
        waiter = pool.start_borrow()
        pool.factory.fail_next = 1
        pool.give_back(conn, broken=True)  # the waiter is given the slot, and fails ...
        with pytest.raises(ConnectionRefusedError):
            waiter.result()
        fresh = pool.borrow(timeout=SHORT)  # ... and the slot is free again
        assert fresh is not conn and pool.stats().in_use == 1

    # --- misuse -------------------------------------------------------------------------
    def test_a_double_return_is_refused(self, make: Callable[..., Driver]) -> None:
        pool = make(max_connections=2)
        conn = pool.borrow()
        pool.give_back(conn)
        with pytest.raises(PoolError, match=r"returned twice \(it is already idle"):
            pool.give_back(conn)
        assert (pool.stats().idle, pool.stats().in_use) == (1, 0)

    def test_a_foreign_connection_is_refused(self, make: Callable[..., Driver]) -> None:
        pool, other = make(max_connections=2), make(max_connections=2)
        theirs = other.borrow()
        with pytest.raises(PoolError, match="not checked out from this pool"):
            pool.give_back(theirs)
        with pytest.raises(PoolError, match="not checked out from this pool"):
            pool.give_back(Conn(99))
        other.give_back(theirs)
        assert pool.stats().idle == 0 and other.stats().idle == 1

    # --- closing ------------------------------------------------------------------------
    def test_close_refuses_new_borrows(self, make: Callable[..., Driver]) -> None:
        pool = make(max_connections=3, min_connections=1)
        held = pool.borrow()
        idle = pool.borrow()
        pool.give_back(idle)
        pool.close()
        assert idle.closed and not held.closed  # idle now, in use when returned
        with pytest.raises(PoolClosed):
            pool.borrow()
        with pytest.raises(PoolClosed), pool.lease():
            pass
        pool.give_back(held)
        assert held.closed
        assert pool.factory.alive == []
        stats = pool.stats()
        assert (stats.closed, stats.in_use, stats.idle) == (True, 0, 0)
        pool.close()  # idempotent

    def test_close_wakes_waiters_with_pool_closed(self, make: Callable[..., Driver]) -> None:
        pool = make(max_connections=1)
        conn = pool.borrow()
        waiters = [pool.start_borrow() for _ in range(2)]
        pool.close()
        for waiter in waiters:
            with pytest.raises(PoolClosed):
                waiter.result()
        assert pool.stats().waiting == 0
        pool.give_back(conn)
        assert conn.closed

    # --- expiry on the pool's clock -----------------------------------------------------
    def test_idle_timeout(self, make: Callable[..., Driver]) -> None:
        pool = make(max_connections=2, idle_timeout=5.0)
        first = pool.borrow()
        pool.give_back(first)
        pool.clock.advance(4.9)
        assert pool.borrow() is first  # idle 4.9 s: kept
        pool.give_back(first)  # idle again from now
        pool.clock.advance(4.9)
        assert pool.borrow() is first
        pool.give_back(first)
        pool.clock.advance(5.0)
        second = pool.borrow()  # idle 5 s: closed on this borrow, a new one made
        assert second is not first and first.closed
        stats = pool.stats()
        assert (stats.created, stats.reused, stats.discarded) == (2, 2, 1)

    def test_max_lifetime_on_return(self, make: Callable[..., Driver]) -> None:
        pool = make(max_connections=2, max_lifetime=10.0)
        first = pool.borrow()
        pool.clock.advance(9.9)
        pool.give_back(first)
        assert pool.borrow() is first  # 9.9 s old: kept
        pool.clock.advance(0.1)
        pool.give_back(first)  # 10 s old: closed when returned
        assert first.closed
        assert (pool.stats().idle, pool.stats().discarded) == (0, 1)
        assert pool.borrow() is not first

    def test_max_lifetime_of_an_idle_connection(self, make: Callable[..., Driver]) -> None:
        pool = make(max_connections=2, min_connections=1, max_lifetime=10.0)
        first = pool.borrow()
        pool.give_back(first)
        pool.clock.advance(10.0)
        # max_lifetime applies below min_connections too: the old one is closed on borrow.
        second = pool.borrow()
        assert second is not first and first.closed
        assert pool.stats().discarded == 1
