"""The pure bookkeeping shared by ConnectionPool and AsyncConnectionPool.

Nothing here does I/O, sleeps, waits or takes a lock: every method is a quick state change
that tells its caller what to do next (create a connection, wake a waiter, close these
connections). The sync pool calls it under a ``threading.Lock``; the async pool calls it
from its one event loop. Both shells then do the I/O outside the bookkeeping, so a slow
factory or ``close()`` never blocks other borrowers (the httpcore pool is built the same
way: ``_assign_requests_to_connections`` decides, the shell connects).

Invariant: ``len(idle) + len(in_use) + creating <= max_connections`` at every return.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Generic, TypeVar

from ..config import PerformanceConfig
from ..errors import PoolClosed, PoolError

__all__ = ["CREATE", "ConnectionPoolConfig", "PoolCore", "PoolStats", "Waiter"]

T = TypeVar("T")


class _Create:
    """Permission to create one new connection (a slot is already reserved for it)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "CREATE"


class _Closed:
    """The pool closed while the borrower waited."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "CLOSED"


CREATE: Final = _Create()
CLOSED: Final = _Closed()


@dataclass(frozen=True, slots=True)
class ConnectionPoolConfig:
    """Limits of a generic connection pool, all times in seconds.

    Example::

        config = ConnectionPoolConfig(max_connections=10, min_connections=2,
                                      connection_timeout=30.0)
        config = ConnectionPoolConfig.from_config(PerformanceConfig())   # from the seed keys

    Args:
        max_connections: Most connections alive at once (idle, in use and being created).
        min_connections: Connections created up front and kept through idle expiry.
        connection_timeout: Longest wait for a free connection before ``PoolTimeout``.
        idle_timeout: An idle connection older than this (since its last return) is closed
            on the next borrow; ``None`` keeps idle connections forever.
        max_lifetime: A connection older than this (since creation) is closed when returned
            or found idle; ``None`` means no limit.
        validate_on_borrow: Run the pool's ``validate`` hook on each reused connection.

    Raises:
        ValueError: a limit is out of range (the message names it).
    """

    max_connections: int = 10
    min_connections: int = 0
    connection_timeout: float = 30.0
    idle_timeout: float | None = 300.0
    max_lifetime: float | None = None
    validate_on_borrow: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.max_connections, bool) or not isinstance(self.max_connections, int):
            msg = f"max_connections must be an int >= 1, got {self.max_connections!r}"
            raise ValueError(msg)
        if self.max_connections < 1:
            msg = f"max_connections must be >= 1, got {self.max_connections}"
            raise ValueError(msg)
        if isinstance(self.min_connections, bool) or not isinstance(self.min_connections, int):
            msg = f"min_connections must be an int >= 0, got {self.min_connections!r}"
            raise ValueError(msg)
        if not 0 <= self.min_connections <= self.max_connections:
            msg = (
                f"min_connections must be between 0 and max_connections "
                f"({self.max_connections}), got {self.min_connections}"
            )
            raise ValueError(msg)
        _check_seconds("connection_timeout", self.connection_timeout, optional=False)
        _check_seconds("idle_timeout", self.idle_timeout, optional=True)
        _check_seconds("max_lifetime", self.max_lifetime, optional=True)

    @classmethod
    def from_config(cls, config: PerformanceConfig) -> ConnectionPoolConfig:
        """Map the seed keys: ``connection_pool_size`` becomes ``max_connections``.

        Example: ``ConnectionPoolConfig.from_config(PerformanceConfig(connection_pool_size=5))``.
        ``min_connections``, ``connection_timeout``, ``idle_timeout`` and ``max_lifetime``
        keep their names.
        """
        return cls(
            max_connections=config.connection_pool_size,
            min_connections=min(config.min_connections, config.connection_pool_size),
            connection_timeout=config.connection_timeout,
            idle_timeout=config.idle_timeout,
            max_lifetime=config.max_lifetime,
        )


def _check_seconds(name: str, value: float | None, *, optional: bool) -> None:
    if value is None and optional:
        return
    allowed = "a number of seconds > 0" + (" or None" if optional else "")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        msg = f"{name} must be {allowed}, got {value!r}"
        raise ValueError(msg)
    if not value > 0 or math.isnan(value):
        msg = f"{name} must be {allowed}, got {value!r}"
        raise ValueError(msg)


@dataclass(frozen=True, slots=True)
class PoolStats:
    """A snapshot of a pool's counters (``pool.get_stats()``).

    Attributes:
        created: Connections the factory made, since the pool opened.
        reused: Borrows served by an existing connection.
        borrows: Successful borrows (``reused`` plus borrows that created a connection).
        reuse_ratio: ``reused / borrows``; 0.0 before the first borrow.
        in_use: Connections borrowed and not yet returned.
        idle: Connections waiting in the pool.
        waiting: Borrowers waiting for a connection right now.
        waits: Borrows that had to wait (including those that then timed out).
        total_wait_time: Seconds spent waiting, summed over ``waits``.
        timeouts: Borrows that gave up after ``connection_timeout``.
        discarded: Connections closed because they were broken, failed validation, or
            passed ``idle_timeout`` / ``max_lifetime``.
        validation_failures: Reused connections that failed the ``validate`` hook.
        closed: Whether ``close()`` was called.
    """

    created: int
    reused: int
    borrows: int
    reuse_ratio: float
    in_use: int
    idle: int
    waiting: int
    waits: int
    total_wait_time: float
    timeouts: int
    discarded: int
    validation_failures: int
    closed: bool

    def as_dict(self) -> dict[str, Any]:
        """The snapshot as a plain dict (for JSON, logs and the seed's ``print(stats)``)."""
        return {name: getattr(self, name) for name in self.__slots__}


class Entry(Generic[T]):
    """One live connection and its ages (seconds on the pool's clock)."""

    __slots__ = ("conn", "created_at", "last_used_at")

    def __init__(self, conn: T, now: float) -> None:
        self.conn = conn
        self.created_at = now
        self.last_used_at = now


class Waiter(Generic[T]):
    """A queued borrower. The core fills ``grant``; the shell wakes the borrower."""

    __slots__ = ("grant", "since", "wake")

    def __init__(self, since: float, wake: Callable[[], object]) -> None:
        self.grant: Entry[T] | _Create | _Closed | None = None
        self.since = since
        self.wake = wake  # set by the shell: threading.Event.set, or resolving a future


class PoolCore(Generic[T]):
    """State of one pool: who holds what, who waits, and the counters. Not thread-safe."""

    __slots__ = (
        "_borrows",
        "_created",
        "_discarded",
        "_reused",
        "_timeouts",
        "_total_wait",
        "_validation_failures",
        "_waits",
        "closed",
        "config",
        "creating",
        "idle",
        "in_use",
        "next_expiry",
        "waiters",
    )

    def __init__(self, config: ConnectionPoolConfig) -> None:
        self.config = config
        # LIFO reuse (pop from the right) keeps few connections warm and lets the
        # rest age out on the left; FIFO would spread work over every connection.
        self.idle: deque[Entry[T]] = deque()
        # Keyed by id(): connections need not be hashable. The entry keeps the
        # object alive, so its id cannot be reused while it is checked out.
        self.in_use: dict[int, Entry[T]] = {}
        self.waiters: deque[Waiter[T]] = deque()
        self.creating = 0
        self.closed = False
        # Earliest time an idle connection may expire; borrows before it skip the scan,
        # which keeps the hot path O(1) with idle_timeout / max_lifetime set.
        self.next_expiry = math.inf
        self._created = self._reused = self._borrows = 0
        self._waits = self._timeouts = self._discarded = self._validation_failures = 0
        self._total_wait = 0.0

    # --- borrowing ---------------------------------------------------------------------
    @property
    def total(self) -> int:
        """Connections alive or being created."""
        return len(self.idle) + len(self.in_use) + self.creating

    def borrow(self, now: float, waiter: Waiter[T]) -> tuple[Entry[T] | _Create | None, list[T]]:
        """Take an idle connection, reserve a slot to create one, or queue ``waiter``.

        Returns ``(grant, to_close)``: ``grant`` is an entry (now in use), ``CREATE``, or
        ``None`` when ``waiter`` was queued; ``to_close`` are expired idle connections the
        caller must close.

        Raises:
            PoolClosed: the pool is closed.
        """
        self._check_open()
        to_close = self._expire_idle(now)
        # Queued borrowers go first (FIFO): a newcomer never takes a connection that a
        # waiter is owed, even when it arrives between a return and the waiter waking.
        if not self.waiters:
            if self.idle:
                entry = self.idle.pop()
                self.in_use[id(entry.conn)] = entry
                self._reused += 1
                self._borrows += 1
                return entry, to_close
            if self.total < self.config.max_connections:
                self.creating += 1
                return CREATE, to_close
        self.waiters.append(waiter)
        self._waits += 1
        return None, to_close

    def claimed(self, waiter: Waiter[T], now: float) -> Entry[T] | _Create | _Closed:
        """A woken waiter takes its grant; records the wait and, for an entry, the reuse."""
        grant = waiter.grant
        assert grant is not None, "claimed() called on a waiter that was not granted"
        self._total_wait += max(0.0, now - waiter.since)
        if isinstance(grant, Entry):
            self._reused += 1
            self._borrows += 1
        return grant

    def gave_up(self, waiter: Waiter[T], now: float, *, timed_out: bool) -> bool:
        """A waiter stops waiting (timeout or cancellation).

        Returns ``False`` when it was still queued (it is removed and, on timeout,
        counted); ``True`` when a grant reached it first, which the caller must then
        use or hand back with :meth:`give_back`.
        """
        if waiter.grant is not None:
            return True
        self.waiters.remove(waiter)
        self._total_wait += max(0.0, now - waiter.since)
        if timed_out:
            self._timeouts += 1
        return False

    def give_back(self, waiter: Waiter[T], now: float) -> tuple[Waiter[T] | None, list[T]]:
        """Hand an unused grant back (the borrower was cancelled after being granted)."""
        grant = waiter.grant
        if isinstance(grant, Entry):
            return self.release(grant.conn, now=now, broken=False)
        if isinstance(grant, _Create):
            return self.create_failed(), []
        return None, []

    def created(self, conn: T, now: float) -> Entry[T]:
        """The factory made ``conn`` for a reserved slot; it is now in use."""
        self.creating -= 1
        entry = Entry(conn, now)
        self.in_use[id(conn)] = entry
        self._created += 1
        self._borrows += 1
        return entry

    def created_idle(self, conn: T, now: float) -> None:
        """A connection made up front (``min_connections``) for a reserved slot."""
        self.creating -= 1
        entry = Entry(conn, now)
        self.idle.appendleft(entry)
        self.next_expiry = min(self.next_expiry, self._expiry(entry))
        self._created += 1

    def reserve_min(self) -> int:
        """Reserve slots for the connections missing below ``min_connections``."""
        if self.closed:
            return 0
        missing = max(0, self.config.min_connections - self.total)
        self.creating += missing
        return missing

    def create_failed(self) -> Waiter[T] | None:
        """The factory raised: free the slot, or pass it on to the first waiter."""
        self.creating -= 1
        return self._pass_slot_on()

    def failed_validation(self, entry: Entry[T]) -> T:
        """A reused connection failed ``validate``: drop it and keep its slot for a new one.

        The borrower keeps its place: the returned connection must be closed and a new one
        created in the same slot (the caller proceeds as after ``CREATE``).
        """
        del self.in_use[id(entry.conn)]
        self._reused -= 1
        self._borrows -= 1
        self._discarded += 1
        self._validation_failures += 1
        self.creating += 1
        return entry.conn

    # --- returning ---------------------------------------------------------------------
    def release(self, conn: T, *, now: float, broken: bool) -> tuple[Waiter[T] | None, list[T]]:
        """Take ``conn`` back. Returns ``(waiter to wake, connections to close)``.

        A healthy connection goes straight to the first waiter, else to the idle stack. A
        broken or too-old one is closed and its slot goes to the first waiter as
        ``CREATE``. After ``close()`` every returned connection is closed.

        Raises:
            PoolError: ``conn`` is not checked out from this pool.
        """
        entry = self.in_use.pop(id(conn), None)
        if entry is None or entry.conn is not conn:
            if entry is not None:  # pragma: no cover - ids are unique while held
                self.in_use[id(conn)] = entry
            if any(idle.conn is conn for idle in self.idle):
                msg = f"connection {conn!r} was returned twice (it is already idle in the pool)"
            else:
                msg = (
                    f"connection {conn!r} is not checked out from this pool "
                    "(returned twice, or borrowed from another pool)"
                )
            raise PoolError(msg)
        if self.closed:
            return None, [conn]
        if broken or self._too_old(entry, now):
            self._discarded += 1
            return self._pass_slot_on(), [conn]
        entry.last_used_at = now
        if self.waiters:
            waiter = self.waiters.popleft()
            self.in_use[id(conn)] = entry
            waiter.grant = entry
            return waiter, []
        self.idle.append(entry)
        self.next_expiry = min(self.next_expiry, self._expiry(entry))
        return None, []

    def close(self) -> tuple[list[Waiter[T]], list[T]]:
        """Close the pool: returns the waiters to wake (with ``CLOSED``) and idle conns."""
        self.closed = True
        waiters = list(self.waiters)
        self.waiters.clear()
        for waiter in waiters:
            waiter.grant = CLOSED
        to_close = [entry.conn for entry in self.idle]
        self.idle.clear()
        return waiters, to_close

    # --- inspection --------------------------------------------------------------------
    def stats(self) -> PoolStats:
        """A consistent snapshot of the counters."""
        return PoolStats(
            created=self._created,
            reused=self._reused,
            borrows=self._borrows,
            reuse_ratio=self._reused / self._borrows if self._borrows else 0.0,
            in_use=len(self.in_use),
            idle=len(self.idle),
            waiting=len(self.waiters),
            waits=self._waits,
            total_wait_time=self._total_wait,
            timeouts=self._timeouts,
            discarded=self._discarded,
            validation_failures=self._validation_failures,
            closed=self.closed,
        )

    def describe(self, name: str) -> str:
        """The repr of a pool: ``<ConnectionPool [in use: 3, idle: 5, waiting: 0 | max: 10]>``."""
        state = " closed" if self.closed else ""
        return (
            f"<{name}{state} [in use: {len(self.in_use)}, idle: {len(self.idle)}, "
            f"waiting: {len(self.waiters)} | max: {self.config.max_connections}]>"
        )

    def timeout_message(self, waited: float, limit: float) -> str:
        """Why a borrower gave up, with the numbers that explain it.

        ``limit`` is the timeout the borrower waited: ``connection_timeout``, or the
        ``timeout=`` of that call, which the message then names instead.
        """
        name = "connection_timeout" if limit == self.config.connection_timeout else "timeout"
        return (
            f"no connection free after waiting {waited:.3f} s ({name}={limit:g} s): "
            f"{len(self.in_use)} of max_connections={self.config.max_connections} in use, "
            f"{len(self.waiters)} other borrowers waiting"
        )

    # --- internals ---------------------------------------------------------------------
    def _check_open(self) -> None:
        if self.closed:
            msg = "the pool is closed; no more connections can be borrowed"
            raise PoolClosed(msg)

    def _pass_slot_on(self) -> Waiter[T] | None:
        if self.waiters and not self.closed:
            waiter = self.waiters.popleft()
            self.creating += 1
            waiter.grant = CREATE
            return waiter
        return None

    def _too_old(self, entry: Entry[T], now: float) -> bool:
        lifetime = self.config.max_lifetime
        return lifetime is not None and now - entry.created_at >= lifetime

    def _expiry(self, entry: Entry[T]) -> float:
        idle_timeout, lifetime = self.config.idle_timeout, self.config.max_lifetime
        return min(
            math.inf if idle_timeout is None else entry.last_used_at + idle_timeout,
            math.inf if lifetime is None else entry.created_at + lifetime,
        )

    def _expire_idle(self, now: float) -> list[T]:
        if now < self.next_expiry:
            return []
        idle_timeout = self.config.idle_timeout
        kept: deque[Entry[T]] = deque()
        to_close: list[T] = []
        for entry in self.idle:
            stale = idle_timeout is not None and now - entry.last_used_at >= idle_timeout
            # Idle expiry stops at min_connections; max_lifetime applies to all.
            if self._too_old(entry, now) or (
                stale and self.total - len(to_close) > self.config.min_connections
            ):
                to_close.append(entry.conn)
            else:
                kept.append(entry)
        # Entries kept at min_connections may be stale already; their expiry is in the
        # past, so the next borrow scans again (cheap: at most min_connections entries).
        self.next_expiry = min((self._expiry(e) for e in kept), default=math.inf)
        if to_close:
            self.idle = kept
            self._discarded += len(to_close)
        return to_close
