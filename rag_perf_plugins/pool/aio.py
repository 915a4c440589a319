"""AsyncConnectionPool: a generic pool of connections for one event loop.

The bookkeeping is the same :class:`~rag_perf_plugins.pool.core.PoolCore` the blocking
:class:`~rag_perf_plugins.pool.ConnectionPool` uses; this shell only awaits: the factory
(sync or async), ``validate`` and ``close`` hooks, and a future per waiter.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import time
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Generic, TypeVar, cast

from .._clock import Clock
from .._signature import checked_kwargs
from ..errors import PoolClosed, PoolTimeout
from .core import (
    CREATE,
    ConnectionPoolConfig,
    Entry,
    PoolCore,
    PoolStats,
    Waiter,
    _Create,
)

__all__ = ["DEFAULT_ABROKEN_ON", "AsyncConnectionPool"]

T = TypeVar("T")

#: Exceptions that, raised inside ``async with pool.connection()``, mark the connection
#: broken: ``OSError`` (so ``ConnectionError`` and ``TimeoutError``), ``EOFError``, and
#: ``asyncio.CancelledError``, because a task cancelled mid-exchange leaves the
#: connection with a half-sent request or an unread answer.
DEFAULT_ABROKEN_ON: tuple[type[BaseException], ...] = (OSError, EOFError, asyncio.CancelledError)


def _no_wake() -> None:
    """Wake-up of a borrower that never queued (replaced when it does)."""


def _resolve_future(future: asyncio.Future[None]) -> None:
    if not future.done():  # a cancelled borrower's future is done already
        future.set_result(None)


async def _resolve(value: object) -> object:
    return await value if inspect.isawaitable(value) else value


async def _aclose_quietly(conn: object, close: Callable[[object], object] | None) -> None:
    # A connection that fails to close is gone either way; never let it fail the caller.
    try:
        if close is not None:
            await _resolve(close(conn))
            return
        for name in ("aclose", "close"):
            closer = getattr(conn, name, None)
            if callable(closer):
                await _resolve(closer())
                return
    except Exception:
        pass


class AsyncConnectionPool(Generic[T]):
    """A bounded pool of connections for coroutines on one event loop.

    Borrowers beyond ``max_connections`` wait in FIFO order; reused connections can be
    checked by ``validate``; broken ones are closed and replaced::

        pool = AsyncConnectionPool(open_connection, ConnectionPoolConfig(max_connections=10))
        async with pool:                          # creates min_connections up front
            async with pool.connection() as conn:    # OSError or cancellation marks it broken
                await conn.send(b"...")
            print(pool.get_stats().reuse_ratio)
        # leaving the block ran await pool.aclose()

    Args:
        factory: Makes one connection; a plain function or a coroutine function.
        config: Limits (``ConnectionPoolConfig``); the defaults when ``None``.
        validate: Checks a reused connection (may be async); ``False`` or an exception
            discards it and a new one is made in its slot. Only when
            ``config.validate_on_borrow``; never called on fresh connections.
        close: Closes one connection (may be async); by default its ``aclose()`` or
            ``close()`` method.
        broken_on: Exception types that mark a connection broken inside :meth:`connection`
            (default: :data:`DEFAULT_ABROKEN_ON`).
        clock: Seconds, monotonic; ages, idle expiry and wait statistics use it.

    Limitations: one event loop per pool, and not thread-safe (use
    :class:`~rag_perf_plugins.pool.ConnectionPool` across threads). ``min_connections``
    are created by ``await pool.open()`` (or ``async with pool``, or the first borrow),
    since a constructor cannot await. ``connection_timeout`` is waited on the event
    loop's clock. No background health checks: expiry and validation run on borrow and
    return.
    """

    __slots__ = (
        "_broken_on",
        "_close",
        "_core",
        "_factory",
        "_filled",
        "_validate",
        "clock",
    )

    @checked_kwargs
    def __init__(
        self,
        factory: Callable[[], T] | Callable[[], Awaitable[T]],
        config: ConnectionPoolConfig | None = None,
        *,
        validate: Callable[[T], bool] | Callable[[T], Awaitable[bool]] | None = None,
        close: Callable[[T], object] | None = None,
        broken_on: tuple[type[BaseException], ...] = DEFAULT_ABROKEN_ON,
        clock: Clock = time.monotonic,
    ) -> None:
        if not callable(factory):
            msg = f"factory must be a callable returning a connection, got {factory!r}"
            raise TypeError(msg)
        self._factory = factory
        self._core: PoolCore[T] = PoolCore(config or ConnectionPoolConfig())
        self._validate = validate if self._core.config.validate_on_borrow else None
        self._close = close
        self._broken_on = broken_on
        self._filled = False
        self.clock = clock

    @property
    def config(self) -> ConnectionPoolConfig:
        """The pool's limits."""
        return self._core.config

    async def open(self) -> None:
        """Create the ``min_connections`` up front (also done by the first borrow)."""
        self._filled = True
        missing = self._core.reserve_min()
        made = 0
        try:
            for made in range(missing):  # noqa: B007 - read in the except clause
                conn = cast(T, await _resolve(self._factory()))
                self._core.created_idle(conn, self.clock())
        except BaseException:
            for _ in range(missing - made):
                self._core.create_failed()
            raise

    async def get_connection(self, *, timeout: float | None = None) -> T:
        """Borrow a connection, waiting up to ``timeout`` seconds for a free one.

        Args:
            timeout: Seconds to wait; ``config.connection_timeout`` when ``None``.

        Raises:
            PoolTimeout: none became free in time; says how many are in use and how long
                it waited.
            PoolClosed: the pool is closed (also raised to waiters when it closes).
            Exception: whatever ``factory`` raised (the slot is freed first).
        """
        if not self._filled:
            await self.open()
        limit = self._core.config.connection_timeout if timeout is None else timeout
        waiter: Waiter[T] = Waiter(self.clock(), _no_wake)
        grant, to_close = self._core.borrow(waiter.since, waiter)
        future = None
        if grant is None:
            # Made only when queued, before any await, so no grant can come before it.
            future = asyncio.get_running_loop().create_future()
            waiter.wake = functools.partial(_resolve_future, future)
        if to_close:
            await self._close_all(to_close)
        if future is not None:
            grant = await self._wait(future, waiter, limit)
        while True:
            if grant is CREATE:
                return await self._create()
            assert isinstance(grant, Entry)
            if self._validate is None or await self._is_valid(grant.conn):
                return grant.conn
            # Replace the invalid connection in the same slot: the borrower keeps its turn.
            await _aclose_quietly(self._core.failed_validation(grant), self._close)  # type: ignore[arg-type]
            grant = CREATE

    async def return_connection(self, conn: T, *, broken: bool = False) -> None:
        """Give ``conn`` back; ``broken=True`` closes it and frees its slot for a new one.

        Raises:
            PoolError: ``conn`` is not checked out from this pool (returned twice, or
                borrowed from another pool).
        """
        await self._close_all(self._release(conn, broken=broken))

    def _release(self, conn: T, *, broken: bool) -> list[T]:
        # Bookkeeping and wake-up only; the caller closes what comes back.
        waiter, to_close = self._core.release(conn, now=self.clock(), broken=broken)
        if waiter is not None:
            waiter.wake()
        return to_close

    def connection(self, *, timeout: float | None = None) -> _Lease[T]:
        """``async with pool.connection() as conn:`` borrows and returns ``conn``.

        An exception of a ``broken_on`` type inside the block (by default also
        cancellation) marks the connection broken: it is closed and replaced. Other
        exceptions return it healthy. The exception propagates either way.
        """
        return _Lease(self, timeout)

    async def aclose(self) -> None:
        """Close idle connections now, and in-use ones as they are returned.

        Waiting borrowers get ``PoolClosed``; later borrows raise it. Idempotent.
        """
        waiters, to_close = self._core.close()
        for waiter in waiters:
            waiter.wake()
        await self._close_all(to_close)

    def get_stats(self) -> PoolStats:
        """Counters and gauges: created, reused, reuse ratio, in use, idle, waits, ..."""
        return self._core.stats()

    async def __aenter__(self) -> AsyncConnectionPool[T]:
        if not self._filled:
            await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return self._core.describe(type(self).__name__)

    # --- internals ---------------------------------------------------------------------
    async def _wait(
        self, future: asyncio.Future[None], waiter: Waiter[T], limit: float
    ) -> Entry[T] | _Create:
        # A timer on our own future rather than asyncio.wait_for: on Python 3.10/3.11
        # wait_for can swallow a cancellation that races with the result, and a grant
        # that reaches a cancelled borrower must be handed on, not lost.
        timed_out = False

        def on_timeout() -> None:
            nonlocal timed_out
            if not future.done():
                timed_out = True
                future.set_result(None)

        timer = asyncio.get_running_loop().call_later(limit, on_timeout)
        try:
            await future
        except asyncio.CancelledError:
            # Cancelled while queued: leave the queue, or hand on what reached us.
            if self._core.gave_up(waiter, self.clock(), timed_out=False):
                next_waiter, to_close = self._core.give_back(waiter, self.clock())
                if next_waiter is not None:
                    next_waiter.wake()
                await asyncio.shield(self._close_all(to_close))
            raise
        finally:
            timer.cancel()
        if timed_out and not self._core.gave_up(waiter, self.clock(), timed_out=True):
            message = self._core.timeout_message(self.clock() - waiter.since, limit)
            raise PoolTimeout(message)
        grant = self._core.claimed(waiter, self.clock())
        if isinstance(grant, (Entry, _Create)):
            return grant
        msg = "the pool was closed while waiting for a connection"
        raise PoolClosed(msg)

    async def _create(self) -> T:
        try:
            conn = cast(T, await _resolve(self._factory()))
        except BaseException:
            waiter = self._core.create_failed()
            if waiter is not None:
                waiter.wake()
            raise
        self._core.created(conn, self.clock())
        if self._core.closed:
            # aclose() ran while the factory worked: do not hand out a connection that
            # nobody will close.
            await self.return_connection(conn)
            msg = "the pool was closed while a connection was being created"
            raise PoolClosed(msg)
        return conn

    async def _is_valid(self, conn: T) -> bool:
        assert self._validate is not None
        try:
            return bool(await _resolve(self._validate(conn)))
        except Exception:
            return False

    async def _close_all(self, conns: list[T]) -> None:
        for conn in conns:
            await _aclose_quietly(conn, self._close)  # type: ignore[arg-type]


class _Lease(Generic[T]):
    """What ``pool.connection()`` returns: borrows on enter, returns on exit.

    A class rather than ``@asynccontextmanager``: this is the hot path, and the return is
    synchronous bookkeeping unless something must be closed (only then is a shielded
    await needed, so a second cancellation cannot skip the close).
    """

    __slots__ = ("_conn", "_pool", "_timeout")

    def __init__(self, pool: AsyncConnectionPool[T], timeout: float | None) -> None:
        self._pool = pool
        self._timeout = timeout

    async def __aenter__(self) -> T:
        self._conn = await self._pool.get_connection(timeout=self._timeout)
        return self._conn

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        broken = exc is not None and isinstance(exc, self._pool._broken_on)
        to_close = self._pool._release(self._conn, broken=broken)
        if to_close:
            await asyncio.shield(self._pool._close_all(to_close))
