"""ConnectionPool (blocking, thread-safe) with fake connections that count themselves."""

from __future__ import annotations

import itertools
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from rag_perf_plugins._clock import FakeClock
from rag_perf_plugins.config import PerformanceConfig
from rag_perf_plugins.pool import (
    ConnectionPool,
    ConnectionPoolConfig,
    PoolClosed,
    PoolError,
    PoolTimeout,
)


class Conn:
    """A fake connection: knows whether it is closed and counts how often it was used."""

    def __init__(self, number: int) -> None:
        self.number = number
        self.closed = False
        self.uses = 0
        self.healthy = True

    def close(self) -> None:
        assert not self.closed, f"connection {self.number} closed twice"
        self.closed = True

    def __repr__(self) -> str:
        return f"<Conn {self.number}>"


class Factory:
    """Makes Conns and tracks how many are alive at once (thread-safe)."""

    def __init__(self, *, delay: float = 0.0) -> None:
        self.made: list[Conn] = []
        self.lock = threading.Lock()
        self.counter = itertools.count(1)
        self.delay = delay
        self.fail_next = 0

    def __call__(self) -> Conn:
        if self.delay:
            time.sleep(self.delay)
        with self.lock:
            if self.fail_next:
                self.fail_next -= 1
                raise ConnectionRefusedError("cannot connect")
            conn = Conn(next(self.counter))
            self.made.append(conn)
            return conn

    @property
    def alive(self) -> int:
        with self.lock:
            return sum(not c.closed for c in self.made)


def make_pool(factory: Factory, **options: object) -> ConnectionPool[Conn]:
    return ConnectionPool(factory, ConnectionPoolConfig(**options))  # type: ignore[arg-type]


def test_reuses_one_connection_and_counts_it() -> None:
    factory = Factory()
    pool = make_pool(factory, max_connections=3)
    for _ in range(5):
        with pool.connection() as conn:
            conn.uses += 1
    stats = pool.get_stats()
    assert len(factory.made) == 1 and factory.made[0].uses == 5
    assert (stats.created, stats.reused, stats.borrows) == (1, 4, 5)
    assert stats.reuse_ratio == pytest.approx(0.8)
    assert (stats.in_use, stats.idle, stats.waits, stats.timeouts) == (0, 1, 0, 0)
    assert repr(pool) == "<ConnectionPool [in use: 0, idle: 1, waiting: 0 | max: 3]>"
    pool.close()
    assert factory.alive == 0


def test_seed_api_get_and_return() -> None:
    factory = Factory()
    pool = make_pool(factory, max_connections=10, min_connections=2, connection_timeout=30.0)
    assert len(factory.made) == 2, "min_connections are created up front"
    first = pool.get_connection()
    second = pool.get_connection()
    third = pool.get_connection()
    assert repr(pool) == "<ConnectionPool [in use: 3, idle: 0, waiting: 0 | max: 10]>"
    for conn in (first, second, third):
        pool.return_connection(conn)
    assert pool.get_stats().as_dict()["created"] == 3
    pool.close()
    assert factory.alive == 0


def test_sixteen_threads_never_exceed_max_connections() -> None:
    factory = Factory()
    pool = make_pool(factory, max_connections=4, connection_timeout=30.0)
    in_use = 0
    peak = 0
    lock = threading.Lock()

    def work(i: int) -> None:
        nonlocal in_use, peak
        with pool.connection() as conn:
            with lock:
                in_use += 1
                peak = max(peak, in_use)
                assert factory.alive <= 4
            assert not conn.closed
            time.sleep(0.0005 * (i % 3))  # hold it a little, so borrowers queue
            with lock:
                in_use -= 1

    with ThreadPoolExecutor(max_workers=16) as executor:
        list(executor.map(work, range(800)))
    stats = pool.get_stats()
    assert stats.borrows == 800
    assert stats.created <= 4 and len(factory.made) <= 4
    assert peak <= 4
    assert stats.waits > 0, "16 threads on 4 connections must have queued"
    assert (stats.in_use, stats.waiting, stats.timeouts) == (0, 0, 0)
    pool.close()
    assert factory.alive == 0


def test_validation_failure_is_replaced_in_the_same_turn() -> None:
    factory = Factory()
    pool = ConnectionPool(
        factory, ConnectionPoolConfig(max_connections=1), validate=lambda c: c.healthy
    )
    conn = pool.get_connection()
    pool.return_connection(conn)
    conn.healthy = False
    replacement = pool.get_connection()
    assert replacement is not conn and conn.closed
    stats = pool.get_stats()
    assert (stats.created, stats.discarded, stats.validation_failures, stats.reused) == (2, 1, 1, 0)
    pool.return_connection(replacement)
    pool.close()


def test_validation_that_raises_counts_as_invalid() -> None:
    factory = Factory()

    def validate(conn: Conn) -> bool:
        raise ConnectionResetError("ping failed")

    pool = ConnectionPool(factory, ConnectionPoolConfig(max_connections=2), validate=validate)
    pool.return_connection(pool.get_connection())
    pool.return_connection(pool.get_connection())
    assert pool.get_stats().validation_failures == 1
    pool.close()
    assert factory.alive == 0


def test_validate_on_borrow_false_skips_the_hook() -> None:
    calls: list[Conn] = []
    config = ConnectionPoolConfig(max_connections=1, validate_on_borrow=False)

    def validate(conn: Conn) -> bool:
        calls.append(conn)
        return True

    pool = ConnectionPool(Factory(), config, validate=validate)
    pool.return_connection(pool.get_connection())
    pool.return_connection(pool.get_connection())
    assert calls == [] and pool.get_stats().reused == 1
    pool.close()


def test_connection_error_inside_block_discards_other_errors_do_not() -> None:
    factory = Factory()
    pool = make_pool(factory, max_connections=2)
    with pytest.raises(ConnectionResetError), pool.connection():
        raise ConnectionResetError("peer went away")
    assert factory.made[0].closed and pool.get_stats().discarded == 1
    with pytest.raises(ValueError), pool.connection():
        raise ValueError("a bug in the caller, not the connection")
    assert not factory.made[1].closed
    assert pool.get_stats().idle == 1
    pool.close()


def test_timeout_says_how_many_in_use_and_how_long(fake_clock: FakeClock) -> None:
    factory = Factory()
    pool = ConnectionPool(
        factory, ConnectionPoolConfig(max_connections=2, connection_timeout=0.02), clock=fake_clock
    )
    held = [pool.get_connection(), pool.get_connection()]
    with pytest.raises(PoolTimeout) as info:
        pool.get_connection()
    message = str(info.value)
    assert "2 of max_connections=2 in use" in message
    assert "connection_timeout=0.02 s" in message and "after waiting" in message
    assert isinstance(info.value, TimeoutError)
    stats = pool.get_stats()
    assert (stats.timeouts, stats.waits, stats.waiting) == (1, 1, 0)
    for conn in held:
        pool.return_connection(conn)
    pool.close()


def test_waiters_are_served_first_in_first_out() -> None:
    pool = make_pool(Factory(), max_connections=1)
    held = pool.get_connection()
    order: list[int] = []
    threads = []

    def borrow(i: int) -> None:
        conn = pool.get_connection()
        order.append(i)
        pool.return_connection(conn)

    for i in range(4):
        thread = threading.Thread(target=borrow, args=(i,))
        thread.start()
        threads.append(thread)
        # Wait until this borrower is queued before starting the next one.
        while pool.get_stats().waiting < i + 1:
            time.sleep(0.001)
    pool.return_connection(held)
    for thread in threads:
        thread.join()
    assert order == [0, 1, 2, 3]
    pool.close()


def test_factory_failure_frees_the_slot() -> None:
    factory = Factory()
    pool = make_pool(factory, max_connections=1)
    factory.fail_next = 1
    with pytest.raises(ConnectionRefusedError):
        pool.get_connection()
    conn = pool.get_connection()  # the slot was not leaked
    assert pool.get_stats().created == 1
    pool.return_connection(conn)
    pool.close()


def test_double_return_and_wrong_pool_are_clear_errors() -> None:
    pool, other = make_pool(Factory()), make_pool(Factory())
    conn = pool.get_connection()
    pool.return_connection(conn)
    with pytest.raises(PoolError, match="returned twice"):
        pool.return_connection(conn)
    with pytest.raises(PoolError, match="not checked out from this pool"):
        other.return_connection(conn)
    with pytest.raises(PoolError, match="not checked out from this pool"):
        pool.return_connection(Conn(99))
    pool.close()
    other.close()


def test_close_closes_idle_now_and_in_use_on_return() -> None:
    factory = Factory()
    pool = make_pool(factory, max_connections=3, min_connections=1)
    held = pool.get_connection()
    idle = pool.get_connection()
    pool.return_connection(idle)
    pool.close()
    assert idle.closed and not held.closed
    with pytest.raises(PoolClosed):
        pool.get_connection()
    pool.return_connection(held)
    assert held.closed and factory.alive == 0
    assert repr(pool) == "<ConnectionPool closed [in use: 0, idle: 0, waiting: 0 | max: 3]>"
    pool.close()  # idempotent


def test_close_wakes_waiters_with_pool_closed() -> None:
    pool = make_pool(Factory(), max_connections=1)
    held = pool.get_connection()
    errors: list[BaseException] = []

    def borrow() -> None:
        try:
            pool.get_connection()
        except PoolClosed as exc:
            errors.append(exc)

    thread = threading.Thread(target=borrow)
    thread.start()
    while pool.get_stats().waiting < 1:
        time.sleep(0.001)
    pool.close()
    thread.join()
    assert len(errors) == 1 and "closed while waiting" in str(errors[0])
    pool.return_connection(held)
    assert held.closed


def test_idle_timeout_and_max_lifetime_use_the_injected_clock(fake_clock: FakeClock) -> None:
    factory = Factory()
    config = ConnectionPoolConfig(max_connections=5, idle_timeout=10.0, max_lifetime=100.0)
    pool = ConnectionPool(factory, config, clock=fake_clock)
    first = pool.get_connection()
    pool.return_connection(first)
    fake_clock.advance(9.0)
    assert pool.get_connection() is first  # idle 9 s < 10 s: reused
    pool.return_connection(first)
    fake_clock.advance(10.0)
    second = pool.get_connection()  # idle 10 s: expired, closed, replaced
    assert second is not first and first.closed
    fake_clock.advance(100.0)
    pool.return_connection(second)  # 100 s old: closed on return
    assert second.closed
    assert pool.get_stats().discarded == 2
    pool.close()


def test_idle_expiry_keeps_min_connections(fake_clock: FakeClock) -> None:
    factory = Factory()
    config = ConnectionPoolConfig(max_connections=5, min_connections=1, idle_timeout=1.0)
    pool = ConnectionPool(factory, config, clock=fake_clock)
    a, b = pool.get_connection(), pool.get_connection()
    pool.return_connection(a)
    pool.return_connection(b)
    fake_clock.advance(5.0)
    conn = pool.get_connection()
    assert sum(c.closed for c in factory.made) == 1, "one expired, one kept for min_connections"
    pool.return_connection(conn)
    pool.close()


def test_config_checks_and_from_config() -> None:
    with pytest.raises(ValueError, match="max_connections must be >= 1, got 0"):
        ConnectionPoolConfig(max_connections=0)
    with pytest.raises(ValueError, match="min_connections must be between 0 and"):
        ConnectionPoolConfig(max_connections=2, min_connections=3)
    with pytest.raises(ValueError, match="connection_timeout must be a number of seconds > 0"):
        ConnectionPoolConfig(connection_timeout=0)
    with pytest.raises(ValueError, match=r"idle_timeout must be .* or None"):
        ConnectionPoolConfig(idle_timeout=-1.0)
    with pytest.raises(TypeError, match="factory must be a callable"):
        ConnectionPool(42)  # type: ignore[arg-type]
    config = ConnectionPoolConfig.from_config(
        PerformanceConfig(connection_pool_size=7, connection_timeout=3.0, min_connections=2)
    )
    assert (config.max_connections, config.min_connections, config.connection_timeout) == (
        7,
        2,
        3.0,
    )
