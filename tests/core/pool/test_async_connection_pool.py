"""AsyncConnectionPool with fake connections: limits, fairness, cancellation, close."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from rag_perf_plugins._clock import FakeClock
from rag_perf_plugins.pool import (
    AsyncConnectionPool,
    ConnectionPoolConfig,
    PoolClosed,
    PoolError,
    PoolTimeout,
)


class AConn:
    """A fake async connection with an ``aclose()`` that must run exactly once."""

    def __init__(self, number: int) -> None:
        self.number = number
        self.closed = False
        self.healthy = True

    async def aclose(self) -> None:
        assert not self.closed, f"connection {self.number} closed twice"
        await asyncio.sleep(0)
        self.closed = True

    def __repr__(self) -> str:
        return f"<AConn {self.number}>"


class AFactory:
    """An async factory that counts what it made; ``fail_next`` makes it raise."""

    def __init__(self) -> None:
        self.made: list[AConn] = []
        self.counter = itertools.count(1)
        self.fail_next = 0

    async def __call__(self) -> AConn:
        await asyncio.sleep(0)  # a real await: other tasks run while we "connect"
        if self.fail_next:
            self.fail_next -= 1
            raise ConnectionRefusedError("cannot connect")
        conn = AConn(next(self.counter))
        self.made.append(conn)
        return conn

    @property
    def alive(self) -> int:
        return sum(not c.closed for c in self.made)


def make_pool(factory: AFactory, **options: object) -> AsyncConnectionPool[AConn]:
    return AsyncConnectionPool(factory, ConnectionPoolConfig(**options))  # type: ignore[arg-type]


async def test_two_hundred_tasks_never_exceed_max_connections() -> None:
    factory = AFactory()
    pool = make_pool(factory, max_connections=8)
    in_use = peak = 0

    async def work(i: int) -> None:
        nonlocal in_use, peak
        async with pool.connection() as conn:
            in_use += 1
            peak = max(peak, in_use)
            assert factory.alive <= 8 and not conn.closed
            for _ in range(1 + i % 4):
                await asyncio.sleep(0)
            in_use -= 1

    await asyncio.gather(*(work(i) for i in range(200)))
    stats = pool.get_stats()
    assert peak == 8, "200 tasks should fill all 8 connections"
    assert stats.created == 8 and len(factory.made) == 8
    assert stats.borrows == 200 and stats.reused == 192
    assert stats.waits > 0 and stats.in_use == 0 and stats.waiting == 0
    await pool.aclose()
    assert factory.alive == 0


async def test_min_connections_on_open_and_sync_factory() -> None:
    made: list[AConn] = []

    def sync_factory() -> AConn:
        made.append(AConn(len(made)))
        return made[-1]

    pool = AsyncConnectionPool(
        sync_factory, ConnectionPoolConfig(max_connections=4, min_connections=3)
    )
    assert made == [], "a constructor cannot await; connections come with open()"
    async with pool:
        assert len(made) == 3
        assert repr(pool) == "<AsyncConnectionPool [in use: 0, idle: 3, waiting: 0 | max: 4]>"
        async with pool.connection() as conn:
            assert conn in made
            assert repr(pool) == "<AsyncConnectionPool [in use: 1, idle: 2, waiting: 0 | max: 4]>"
    assert all(c.closed for c in made)


async def test_validation_failure_is_replaced() -> None:
    factory = AFactory()

    async def validate(conn: AConn) -> bool:
        await asyncio.sleep(0)
        return conn.healthy

    config = ConnectionPoolConfig(max_connections=1)
    pool = AsyncConnectionPool(factory, config, validate=validate)
    async with pool.connection() as first:
        pass
    first.healthy = False
    async with pool.connection() as second:
        assert second is not first and first.closed
    stats = pool.get_stats()
    assert (stats.created, stats.validation_failures, stats.discarded) == (2, 1, 1)
    await pool.aclose()
    assert factory.alive == 0


async def test_broken_on_error_and_on_cancellation() -> None:
    factory = AFactory()
    pool = make_pool(factory, max_connections=2)
    with pytest.raises(ConnectionResetError):
        async with pool.connection():
            raise ConnectionResetError
    assert factory.made[0].closed

    started = asyncio.Event()

    async def hold() -> None:
        async with pool.connection():
            started.set()
            await asyncio.sleep(3600)

    task = asyncio.create_task(hold())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert factory.made[1].closed, "a cancelled exchange leaves the connection unusable"
    with pytest.raises(KeyError):
        async with pool.connection():
            raise KeyError("caller bug")
    assert pool.get_stats().discarded == 2 and pool.get_stats().idle == 1
    await pool.aclose()
    assert factory.alive == 0


async def test_timeout_on_the_loop_clock_and_message() -> None:
    pool = make_pool(AFactory(), max_connections=1, connection_timeout=0.01)
    async with pool.connection():
        with pytest.raises(PoolTimeout, match="1 of max_connections=1 in use"):
            await pool.get_connection()
    stats = pool.get_stats()
    assert (stats.timeouts, stats.waiting) == (1, 0)
    await pool.aclose()


async def test_fifo_and_cancelled_waiter_keeps_no_slot() -> None:
    pool = make_pool(AFactory(), max_connections=1)
    held = await pool.get_connection()
    order: list[int] = []

    async def borrow(i: int) -> None:
        async with pool.connection():
            order.append(i)
            await asyncio.sleep(0)

    tasks = [asyncio.create_task(borrow(i)) for i in range(5)]
    for _ in range(5):
        await asyncio.sleep(0)
    assert pool.get_stats().waiting == 5
    tasks[2].cancel()  # leaves the queue without taking a slot
    await asyncio.sleep(0)
    await pool.return_connection(held)
    await asyncio.gather(*tasks, return_exceptions=True)
    assert order == [0, 1, 3, 4]
    stats = pool.get_stats()
    assert (stats.in_use, stats.idle, stats.waiting, stats.created) == (0, 1, 0, 1)
    await pool.aclose()


async def test_cancelled_after_grant_hands_the_connection_on() -> None:
    factory = AFactory()
    pool = make_pool(factory, max_connections=1)
    held = await pool.get_connection()
    first = asyncio.create_task(pool.get_connection())
    second = asyncio.create_task(pool.get_connection())
    await asyncio.sleep(0)
    await pool.return_connection(held)  # granted to `first`, which has not run yet
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    assert await second is held
    await pool.return_connection(held)
    assert pool.get_stats().in_use == 0
    await pool.aclose()


async def test_factory_failure_frees_the_slot() -> None:
    factory = AFactory()
    pool = make_pool(factory, max_connections=1)
    factory.fail_next = 1
    with pytest.raises(ConnectionRefusedError):
        await pool.get_connection()
    async with pool.connection():
        pass
    assert pool.get_stats().created == 1
    await pool.aclose()


async def test_close_wakes_waiters_and_closes_returned_later() -> None:
    factory = AFactory()
    pool = make_pool(factory, max_connections=1)
    held = await pool.get_connection()
    waiter = asyncio.create_task(pool.get_connection())
    await asyncio.sleep(0)
    await pool.aclose()
    with pytest.raises(PoolClosed, match="closed while waiting"):
        await waiter
    with pytest.raises(PoolClosed):
        await pool.get_connection()
    assert not held.closed
    await pool.return_connection(held)
    assert held.closed and factory.alive == 0


async def test_double_return_and_wrong_pool() -> None:
    pool, other = make_pool(AFactory()), make_pool(AFactory())
    conn = await pool.get_connection()
    await pool.return_connection(conn)
    with pytest.raises(PoolError, match="returned twice"):
        await pool.return_connection(conn)
    with pytest.raises(PoolError, match="another pool"):
        await other.return_connection(conn)
    await pool.aclose()
    await other.aclose()


async def test_expiry_with_fake_clock(fake_clock: FakeClock) -> None:
    factory = AFactory()
    config = ConnectionPoolConfig(max_connections=2, idle_timeout=5.0)
    pool: AsyncConnectionPool[AConn] = AsyncConnectionPool(factory, config, clock=fake_clock)
    async with pool.connection() as first:
        pass
    fake_clock.advance(5.0)
    async with pool.connection() as second:
        assert second is not first and first.closed
    assert pool.get_stats().discarded == 1
    await pool.aclose()
