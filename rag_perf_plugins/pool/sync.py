"""ConnectionPool: a thread-safe generic pool of blocking connections.

Hand-written, not generated: the shell is a thin loop around the shared, I/O-free
:class:`~rag_perf_plugins.pool.core.PoolCore`, and its waiting (a ``threading.Event``
per waiter) and factory calls differ from the async twin's in every line that is not
bookkeeping, so an unasync rewrite would save little and hide the differences.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Generic, TypeVar

from .._clock import Clock
from .._signature import checked_kwargs
from ..errors import PoolClosed, PoolTimeout
from .core import CREATE, ConnectionPoolConfig, Entry, PoolCore, PoolStats, Waiter, _Create

__all__ = ["DEFAULT_BROKEN_ON", "ConnectionPool"]

T = TypeVar("T")

#: Exceptions that, raised inside ``with pool.connection()``, mark the connection broken:
#: socket and OS errors (``ConnectionError``, ``TimeoutError`` and ``BrokenPipeError``
#: are all ``OSError``) and ``EOFError``. Anything else is the caller's own error and the
#: connection goes back to the pool.
DEFAULT_BROKEN_ON: tuple[type[BaseException], ...] = (OSError, EOFError)


def _close_quietly(conn: object, close: Callable[[object], object] | None) -> None:
    # A connection that fails to close is gone either way; never let it fail the caller.
    try:
        if close is not None:
            close(conn)
        else:
            closer = getattr(conn, "close", None)
            if callable(closer):
                closer()
    except Exception:
        pass


def _no_wake() -> None:
    """Wake-up of a borrower that never queued (replaced when it does)."""


class ConnectionPool(Generic[T]):
    """A bounded, thread-safe pool of connections made by ``factory``.

    Borrowers beyond ``max_connections`` wait in FIFO order; reused connections can be
    checked by ``validate``; broken ones are closed and replaced::

        pool = ConnectionPool(make_connection, ConnectionPoolConfig(max_connections=10),
                              validate=lambda conn: conn.ping())
        with pool.connection() as conn:       # an OSError inside marks conn broken
            conn.send(b"...")

        conn = pool.get_connection()          # the seed's explicit API
        try:
            conn.send(b"...")
        finally:
            pool.return_connection(conn)      # broken=True to discard it
        print(pool.get_stats().reuse_ratio)
        pool.close()

    Args:
        factory: Makes one new connection; called without the pool's lock held.
        config: Limits (``ConnectionPoolConfig``); the defaults when ``None``.
        validate: Returns ``False`` (or raises) for a reused connection that is no longer
            usable; called on each borrow of an idle connection when
            ``config.validate_on_borrow``. Never called on fresh connections.
        close: Closes one connection; by default its ``close()`` method, if it has one.
        broken_on: Exception types that mark a connection broken inside
            :meth:`connection` (default: :data:`DEFAULT_BROKEN_ON`).
        clock: Seconds, monotonic; ages, idle expiry and wait statistics use it.

    ``min_connections`` are created here, in the constructor. Not done: background
    health checks or refilling (expiry and validation happen on borrow and return);
    keeping connections per thread; detecting a connection returned twice when another
    borrower already holds it again (the pool sees the same object checked out).
    """

    __slots__ = ("_broken_on", "_close", "_core", "_factory", "_lock", "_validate", "clock")

    @checked_kwargs
    def __init__(
        self,
        factory: Callable[[], T],
        config: ConnectionPoolConfig | None = None,
        *,
        validate: Callable[[T], bool] | None = None,
        close: Callable[[T], object] | None = None,
        broken_on: tuple[type[BaseException], ...] = DEFAULT_BROKEN_ON,
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
        self._lock = threading.Lock()
        self.clock = clock
        self._fill()

    @property
    def config(self) -> ConnectionPoolConfig:
        """The pool's limits."""
        return self._core.config

    def get_connection(self, *, timeout: float | None = None) -> T:
        """Borrow a connection, waiting up to ``timeout`` seconds for a free one.

        Args:
            timeout: Seconds to wait; ``config.connection_timeout`` when ``None``.

        Raises:
            PoolTimeout: none became free in time; says how many are in use and how long
                it waited.
            PoolClosed: the pool is closed (also raised to waiters when it closes).
            Exception: whatever ``factory`` raised (the slot is freed first).
        """
        limit = self._core.config.connection_timeout if timeout is None else timeout
        waiter: Waiter[T] = Waiter(self.clock(), _no_wake)
        event = None
        with self._lock:
            grant, to_close = self._core.borrow(waiter.since, waiter)
            if grant is None:
                # One Event per queued borrower (not one shared Condition), so a return
                # wakes exactly the waiter it was handed to, in FIFO order. Made only
                # when needed, under the lock (no grant can come before it exists):
                # an Event costs more than the whole uncontended borrow.
                event = threading.Event()
                waiter.wake = event.set
        if to_close:
            self._close_all(to_close)
        if event is not None:
            grant = self._wait(event, waiter, limit)
        while True:
            if grant is CREATE:
                return self._create()
            assert isinstance(grant, Entry)
            if self._validate is None or self._is_valid(grant.conn):
                return grant.conn
            # Replace the invalid connection in the same slot: the borrower keeps its turn.
            with self._lock:
                bad = self._core.failed_validation(grant)
            _close_quietly(bad, self._close)  # type: ignore[arg-type]
            grant = CREATE

    def return_connection(self, conn: T, *, broken: bool = False) -> None:
        """Give ``conn`` back; ``broken=True`` closes it and frees its slot for a new one.

        Raises:
            PoolError: ``conn`` is not checked out from this pool (returned twice, or
                borrowed from another pool).
        """
        with self._lock:
            waiter, to_close = self._core.release(conn, now=self.clock(), broken=broken)
        if to_close:
            self._close_all(to_close)
        if waiter is not None:
            waiter.wake()

    @contextmanager
    def connection(self, *, timeout: float | None = None) -> Iterator[T]:
        """``with pool.connection() as conn:`` borrows and returns ``conn``.

        An exception of a ``broken_on`` type inside the block marks the connection
        broken (it is closed and replaced); other exceptions return it healthy. The
        exception propagates either way.
        """
        conn = self.get_connection(timeout=timeout)
        broken = False
        try:
            yield conn
        except self._broken_on:
            broken = True
            raise
        finally:
            self.return_connection(conn, broken=broken)

    def close(self) -> None:
        """Close idle connections now, and in-use ones as they are returned.

        Waiting borrowers get ``PoolClosed``; later borrows raise it. Idempotent.
        """
        with self._lock:
            waiters, to_close = self._core.close()
        for waiter in waiters:
            waiter.wake()
        self._close_all(to_close)

    def get_stats(self) -> PoolStats:
        """Counters and gauges: created, reused, reuse ratio, in use, idle, waits, ..."""
        with self._lock:
            return self._core.stats()

    def __enter__(self) -> ConnectionPool[T]:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return self._core.describe(type(self).__name__)

    # --- internals ---------------------------------------------------------------------
    def _wait(self, event: threading.Event, waiter: Waiter[T], limit: float) -> Entry[T] | _Create:
        signalled = event.wait(limit)
        with self._lock:
            now = self.clock()
            if not signalled and not self._core.gave_up(waiter, now, timed_out=True):
                message = self._core.timeout_message(now - waiter.since, limit)
                raise PoolTimeout(message)
            grant = self._core.claimed(waiter, now)
        if isinstance(grant, (Entry, _Create)):
            return grant
        msg = "the pool was closed while waiting for a connection"
        raise PoolClosed(msg)

    def _create(self) -> T:
        try:
            conn = self._factory()
        except BaseException:
            with self._lock:
                waiter = self._core.create_failed()
            if waiter is not None:
                waiter.wake()
            raise
        with self._lock:
            self._core.created(conn, self.clock())
            closed = self._core.closed
        if closed:
            # close() ran while the factory worked: do not hand out a connection that
            # nobody will close.
            self.return_connection(conn)
            msg = "the pool was closed while a connection was being created"
            raise PoolClosed(msg)
        return conn

    def _fill(self) -> None:
        with self._lock:
            missing = self._core.reserve_min()
        for made in range(missing):
            try:
                conn = self._factory()
            except BaseException:
                with self._lock:
                    for _ in range(missing - made):
                        self._core.create_failed()
                raise
            with self._lock:
                self._core.created_idle(conn, self.clock())

    def _is_valid(self, conn: T) -> bool:
        assert self._validate is not None
        try:
            return bool(self._validate(conn))
        except Exception:
            return False

    def _close_all(self, conns: list[T]) -> None:
        for conn in conns:
            _close_quietly(conn, self._close)  # type: ignore[arg-type]
