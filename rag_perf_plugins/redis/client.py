"""Redis clients as every Redis user here needs them: timeouts, no retries, a breaker.

Example::

    client = make_redis_client("redis://127.0.0.1:6379/0", timeout=0.25)
    aclient = make_async_redis_client("redis://127.0.0.1:6379/0", timeout=0.25)  # one loop
    redact_url("redis://:secret@host:6379/0")     # "redis://:***@host:6379/0"
    breaker = CircuitBreaker(retry_interval=2.0)

The cache tier (:mod:`rag_perf_plugins.cache.redis_tier`) and the shared budget
(:mod:`rag_perf_plugins.admission.redis_store`) build their clients here, so both behave
the same way during an outage: one ``timeout`` per call (seconds), no redis-py retries, and
a breaker that turns the next ``retry_interval`` seconds into fast local fallbacks.

Needs the ``redis`` extra (``pip install 'rag-perf-plugins[redis]'``).
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable
from typing import Final, Literal

from .._secrets import describe_error, redact_url
from ..errors import CacheError

try:
    import redis
    import redis.asyncio
    from redis.asyncio.retry import Retry as AsyncRetry
    from redis.backoff import NoBackoff
    from redis.retry import Retry
except ImportError as exc:  # pragma: no cover - the extra is installed in development
    msg = "Redis support needs redis-py: pip install 'rag-perf-plugins[redis]'"
    raise ImportError(msg) from exc

__all__ = [
    # redis-py itself, imported once here behind the install hint; the cache tier and the
    # budget store take it from here so a missing extra is always named.
    "redis",
    "OUTAGE_ERRORS",
    "CircuitBreaker",
    "RedisUnavailable",
    "describe_error",
    "live_breakers",
    "make_async_redis_client",
    "make_redis_client",
    "own_or_given",
    "redact_url",
]


# Errors that mean "Redis is not there or too slow", as opposed to a refused command.
OUTAGE_ERRORS: Final = (redis.ConnectionError, redis.TimeoutError, OSError)


class RedisUnavailable(CacheError):
    """Redis did not answer (refused, reset, timed out) or its circuit breaker is open."""


def make_redis_client(url: str, *, timeout: float, max_connections: int = 32) -> redis.Redis:
    """A pooled redis-py client with ``timeout`` seconds per connect and per reply, no retries.

    At most ``max_connections`` connections per process; more concurrent callers wait up to
    ``timeout`` seconds for one.

    redis-py retries connection errors three times with back-off by default, which turns
    one outage into seconds of waiting per call; here a slow or absent server costs one
    ``timeout`` and the caller's circuit breaker takes over.
    """
    if not timeout > 0:
        msg = f"timeout must be > 0 seconds, got {timeout!r}"
        raise ValueError(msg)
    if max_connections < 1:
        msg = f"max_connections must be >= 1, got {max_connections}"
        raise ValueError(msg)
    # A blocking pool: past max_connections a caller waits (up to timeout) for a free
    # connection instead of failing with "Too many connections", which would trip the
    # breaker although Redis is fine.
    pool = redis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=timeout,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
    )
    client = redis.Redis(connection_pool=pool)
    client.auto_close_connection_pool = True  # close() also closes the pool we made
    return client


def own_or_given(
    url: str, client: redis.Redis | None, *, timeout: float, max_connections: int
) -> tuple[redis.Redis, bool]:
    """``client`` when given, else :func:`make_redis_client` of ``url``; and who closes it.

    Example: ``self._client, self._owns_client = own_or_given(url, client, timeout=0.25,
    max_connections=32)``. The second value is ``True`` when the client was made here (its
    owner closes it), ``False`` for a client the caller passed (the caller closes it).
    """
    if client is not None:
        return client, False
    return make_redis_client(url, timeout=timeout, max_connections=max_connections), True


def live_breakers() -> list[CircuitBreaker]:
    """Every :class:`CircuitBreaker` still in use in this process (the metrics endpoint's)."""
    return list(_BREAKERS)


class CircuitBreaker:
    """Closed while calls succeed; open for ``retry_interval`` seconds after a failure.

    Example::

        breaker = CircuitBreaker(retry_interval=2.0, clock=fake_clock)
        breaker.allow()       # True: closed
        breaker.failure()     # True: this failure opened it (a trip)
        breaker.allow()       # False until 2.0 s later, then True once (the probe)
        breaker.success()     # True: it was open and is closed again (a recovery)

    While open, :meth:`allow` lets one probe through every ``retry_interval`` seconds (on
    ``clock``, seconds, monotonic); every other caller is refused at once. Thread-safe.
    Does not: count successes or failures in a window (one failure opens it).
    """

    __slots__ = (
        "__weakref__",
        "_clock",
        "_lock",
        "_open_until",
        "_probe_at",
        "recoveries",
        "retry_interval",
        "trips",
    )

    def __init__(self, *, retry_interval: float = 2.0, clock: Callable[[], float] = time.monotonic):
        if not retry_interval > 0:
            msg = f"retry_interval must be > 0 seconds, got {retry_interval!r}"
            raise ValueError(msg)
        self.retry_interval = retry_interval
        self._clock = clock
        self._lock = threading.Lock()
        self._open_until: float | None = None  # None: closed
        self._probe_at: float | None = None  # when the current probe was let through
        self.recoveries = 0
        self.trips = 0
        _BREAKERS.add(self)

    @property
    def state(self) -> Literal["closed", "open"]:
        """``"closed"`` (calls go to Redis) or ``"open"`` (calls are skipped or fall back)."""
        return "closed" if self._open_until is None else "open"

    def allow(self) -> bool:
        """True when a call may go to Redis now (closed, or this caller is the probe)."""
        if self._open_until is None:
            return True
        with self._lock:
            if self._open_until is None:
                return True
            now = self._clock()
            if now < self._open_until:
                return False
            # One probe per interval; a probe that never reports back expires with it.
            if self._probe_at is not None and now - self._probe_at < self.retry_interval:
                return False
            self._probe_at = now
            return True

    def success(self) -> bool:
        """Record an answer; True when this closed an open breaker."""
        if self._open_until is None:
            return False
        with self._lock:
            if self._open_until is None:
                return False
            self._open_until = None
            self._probe_at = None
            self.recoveries += 1
            return True

    def failure(self) -> bool:
        """Record an outage; True when this opened a closed breaker."""
        with self._lock:
            tripped = self._open_until is None
            if tripped:
                self.trips += 1
            self._open_until = self._clock() + self.retry_interval
            self._probe_at = None
            return tripped

    def reset_lock(self) -> None:
        """Replace the lock (after ``fork()``, another thread may have held it)."""
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return (
            f"<CircuitBreaker {self.state} | trips: {self.trips}, recoveries: "
            f"{self.recoveries} | retry_interval={self.retry_interval:g}s>"
        )


def make_async_redis_client(
    url: str, *, timeout: float, max_connections: int = 32
) -> redis.asyncio.Redis:
    """The asyncio twin of :func:`~rag_perf_plugins.cache.redis_tier.make_redis_client`.

    Example: ``client = make_async_redis_client(url, timeout=0.25)``, then
    ``await client.aclose()`` on the same event loop.

    ``timeout`` seconds per connect, per reply and per wait for a free connection (at most
    ``max_connections``), no redis-py retries. The client and its pool belong to the event
    loop that first uses them: never share one between loops (its pool's condition and
    sockets are bound to that loop).
    """
    pool = redis.asyncio.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=timeout,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=AsyncRetry(NoBackoff(), 0),
    )
    return redis.asyncio.Redis.from_pool(pool)  # closing the client closes the pool


_BREAKERS: weakref.WeakSet[CircuitBreaker] = weakref.WeakSet()
