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

import math
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal
from urllib.parse import urlsplit

from .._secrets import describe_error, redact_url
from ..config import RedisMode, parse_sentinels
from ..errors import CacheError

try:
    import redis
    import redis.asyncio
    import redis.asyncio.cluster
    import redis.asyncio.sentinel
    import redis.cluster
    import redis.sentinel
    from redis.asyncio.retry import Retry as AsyncRetry
    from redis.backoff import NoBackoff
    from redis.connection import parse_url
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
    "Lease",
    "RedisTarget",
    "RedisUnavailable",
    "describe_error",
    "live_breakers",
    "make_async_redis_client",
    "make_redis_client",
    "mget",
    "own_or_given",
    "redact_url",
    "try_lease",
]


# Errors that mean "Redis is not there or too slow", as opposed to a refused command.
# A cluster whose slots are not all served yet (a master lost, its replica not yet
# promoted) and a Sentinel set with no master to name are outages too.
OUTAGE_ERRORS: Final = (
    redis.ConnectionError,
    redis.TimeoutError,
    OSError,
    redis.exceptions.ClusterDownError,
    redis.exceptions.RedisClusterException,
    redis.exceptions.ClusterError,
    redis.exceptions.TryAgainError,
    redis.exceptions.ReadOnlyError,
    redis.sentinel.MasterNotFoundError,
)


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
    url: str | RedisTarget, client: Any | None, *, timeout: float, max_connections: int
) -> tuple[Any, bool]:
    """``client`` when given, else a new client of ``url`` (any mode); and who closes it.

    Example: ``self._client, self._owns_client = own_or_given(target, client, timeout=0.25,
    max_connections=32)``. The second value is ``True`` when the client was made here (its
    owner closes it), ``False`` for a client the caller passed (the caller closes it).
    """
    if client is not None:
        return client, False
    target = RedisTarget.of(url)
    return target.client(timeout=timeout, max_connections=max_connections), True


@dataclass(frozen=True)
class RedisTarget:
    """Where Redis is and how to reach it: one server, a Cluster, or a Sentinel-watched master.

    Example::

        RedisTarget("redis://127.0.0.1:6379/0")                        # standalone
        RedisTarget("redis://127.0.0.1:7100/0", mode="cluster")        # any node of a cluster
        RedisTarget("redis://:secret@/0", mode="sentinel",
                    sentinels=(("127.0.0.1", 26379),), master_name="mymaster")
        target = RedisTarget.from_config(config)    # redis_url, redis_mode, redis_sentinels...
        client = target.client(timeout=0.25)        # redis.Redis, or RedisCluster in cluster mode
        aclient = target.async_client(timeout=0.25) # the asyncio twin (one event loop)

    Every Redis user of the package builds its clients here (the cache tier, the budget
    store, and anything that keeps shared state), so all of them accept the three modes and
    behave alike during an outage: ``timeout`` seconds per connect and per reply, no
    redis-py retries (the caller's :class:`CircuitBreaker` takes over).

    In sentinel mode the URL gives the master's password, username and database, and
    ``from_config`` takes its host:port as the one sentinel when ``redis_sentinels`` is
    empty; the sentinels name the master (again after a failover).
    In cluster mode the URL names any node; the others are discovered, and a failover to a
    replica is found again by redis-py's topology refresh.
    """

    url: str
    mode: RedisMode = "standalone"
    sentinels: tuple[tuple[str, int], ...] = ()
    master_name: str = "mymaster"

    def __post_init__(self) -> None:
        if self.mode not in ("standalone", "cluster", "sentinel"):
            msg = f"mode must be 'standalone', 'cluster' or 'sentinel', got {self.mode!r}"
            raise ValueError(msg)
        if self.mode == "sentinel" and not self.sentinels:
            msg = "mode 'sentinel' needs sentinels: ((host, port), ...)"
            raise ValueError(msg)

    @classmethod
    def of(cls, url: str | RedisTarget) -> RedisTarget:
        """``url`` itself when it is a target, else the standalone target of that URL."""
        return url if isinstance(url, RedisTarget) else cls(url)

    @classmethod
    def from_config(cls, config: Any) -> RedisTarget:
        """Target of ``redis_url``, ``redis_mode``, ``redis_sentinels``, ``redis_master_name``."""
        if not config.redis_url:
            msg = "redis_url is not set (e.g. redis://127.0.0.1:6379/0)"
            raise ValueError(msg)
        sentinels: tuple[tuple[str, int], ...] = ()
        if config.redis_sentinels:
            sentinels = parse_sentinels(config.redis_sentinels)
        elif config.redis_mode == "sentinel":  # the URL names the one sentinel
            parts = urlsplit(config.redis_url)
            sentinels = ((parts.hostname or "127.0.0.1", parts.port or 26379),)
        return cls(config.redis_url, config.redis_mode, sentinels, config.redis_master_name)

    @property
    def identity(self) -> tuple[str, ...]:
        """What names one storage: mode, URL (credentials included: never show it), master."""
        if self.mode == "sentinel":
            where = ",".join(f"{h}:{p}" for h, p in self.sentinels)
            return ("sentinel", where, self.master_name, self.url)
        return (self.mode, self.url)

    def describe(self) -> str:
        """The target as it may be shown (password masked)."""
        if self.mode == "sentinel":
            where = ",".join(f"{h}:{p}" for h, p in self.sentinels)
            return f"sentinel {self.master_name}@{where} ({redact_url(self.url)})"
        if self.mode == "cluster":
            return f"cluster {redact_url(self.url)}"
        return redact_url(self.url)

    def _master_kwargs(self) -> dict[str, Any]:
        parsed: dict[str, Any] = parse_url(self.url)  # type: ignore[no-untyped-call]
        return {k: parsed[k] for k in ("username", "password", "db") if k in parsed}

    def client(self, *, timeout: float, max_connections: int = 32) -> Any:
        """A blocking client: ``redis.Redis`` (standalone, sentinel) or ``RedisCluster``."""
        if self.mode == "standalone":
            return make_redis_client(self.url, timeout=timeout, max_connections=max_connections)
        _check_client_args(timeout, max_connections)
        common: dict[str, Any] = {
            "socket_timeout": timeout,
            "socket_connect_timeout": timeout,
        }
        if self.mode == "cluster":
            return redis.cluster.RedisCluster.from_url(
                self.url, max_connections=max_connections, retry=Retry(NoBackoff(), 0), **common
            )
        sentinel = redis.sentinel.Sentinel(
            list(self.sentinels), sentinel_kwargs=dict(common), **common, **self._master_kwargs()
        )
        return sentinel.master_for(
            self.master_name, max_connections=max_connections, retry=Retry(NoBackoff(), 0)
        )

    def async_client(self, *, timeout: float, max_connections: int = 32) -> Any:
        """The asyncio twin of :meth:`client`; it belongs to the event loop that uses it."""
        if self.mode == "standalone":
            return make_async_redis_client(
                self.url, timeout=timeout, max_connections=max_connections
            )
        _check_client_args(timeout, max_connections)
        common: dict[str, Any] = {
            "socket_timeout": timeout,
            "socket_connect_timeout": timeout,
        }
        if self.mode == "cluster":
            return redis.asyncio.cluster.RedisCluster.from_url(
                self.url,
                max_connections=max_connections,
                retry=AsyncRetry(NoBackoff(), 0),
                **common,
            )
        sentinel = redis.asyncio.sentinel.Sentinel(
            list(self.sentinels), sentinel_kwargs=dict(common), **common, **self._master_kwargs()
        )
        return sentinel.master_for(
            self.master_name, max_connections=max_connections, retry=AsyncRetry(NoBackoff(), 0)
        )

    def __repr__(self) -> str:
        return f"<RedisTarget {self.describe()}>"


def _check_client_args(timeout: float, max_connections: int) -> None:
    if not timeout > 0:
        msg = f"timeout must be > 0 seconds, got {timeout!r}"
        raise ValueError(msg)
    if max_connections < 1:
        msg = f"max_connections must be >= 1, got {max_connections}"
        raise ValueError(msg)


def mget(client: Any, keys: Sequence[str]) -> list[Any]:
    """``MGET`` of ``keys`` in order, on any client: per slot, all nodes at once, in a cluster.

    Example: ``mget(client, ["app:c:{a}", "app:c:{b}"])`` -> ``[b"...", None]``. A plain
    ``MGET`` across slots is refused by a cluster (``CROSSSLOT``); redis-py's
    ``mget_nonatomic`` groups the keys by slot and pipelines the groups to their nodes,
    writing to every node before reading any answer.
    """
    if isinstance(client, redis.cluster.RedisCluster):
        return list(client.mget_nonatomic(list(keys)))
    return list(client.mget(list(keys)))


# Lua: the holder's token is compared before the lease is renewed or deleted, so a lease
# that expired and was taken by another process is never extended or released by us.
_RENEW: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class Lease:
    """A lease held in Redis (``SET key token NX PX``), renewed by a thread until released.

    Example::

        lease = try_lease(client, keys.lease("llm:1:ab12"), ttl=10.0)
        if lease is not None:            # this process leads
            try:
                ...                       # the slow work; the lease is renewed meanwhile
            finally:
                lease.release()           # compare-and-delete: never someone else's lease

    The keeper thread renews the lease every ``ttl / 3`` seconds (``PEXPIRE`` if the token
    is still ours), so a slow holder keeps it while a dead process loses it within ``ttl``
    seconds. A renewal that finds the lease taken or gone sets :attr:`lost`; one that finds
    Redis away is retried at the next tick (the lease may then expire meanwhile).
    """

    __slots__ = ("_client", "_stop", "_thread", "key", "lost", "renewals", "token", "ttl")

    def __init__(self, client: Any, key: str, token: str, ttl: float) -> None:
        self._client = client
        self.key = key
        self.token = token
        self.ttl = ttl
        self.lost = False
        self.renewals = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._keep, name=f"rag-perf-lease {key[:40]}", daemon=True
        )
        self._thread.start()

    def _keep(self) -> None:
        px = max(1, int(self.ttl * 1000))
        while not self._stop.wait(self.ttl / 3):
            try:
                renewed = self._client.eval(_RENEW, 1, self.key, self.token, px)
            except (*OUTAGE_ERRORS, redis.RedisError):
                continue  # Redis away: the lease may lapse; the next tick tries again
            if not renewed:
                self.lost = True
                return
            self.renewals += 1

    def release(self) -> bool:
        """Stop renewing and delete the lease if it is still ours; True when deleted."""
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=1.0)
        try:
            return bool(self._client.eval(_RELEASE, 1, self.key, self.token))
        except (*OUTAGE_ERRORS, redis.RedisError):
            return False  # it expires within ttl seconds

    def __repr__(self) -> str:
        state = "lost" if self.lost else ("released" if self._stop.is_set() else "held")
        return f"<Lease {self.key!r} {state} | ttl={self.ttl:g}s, renewals={self.renewals}>"


def try_lease(client: Any, key: str, *, ttl: float) -> Lease | None:
    """Take the lease ``key`` for ``ttl`` seconds if nobody holds it; ``None`` when taken.

    Example: ``lease = try_lease(client, "app:l:{k}", ttl=10.0)``. Outage errors propagate.
    """
    if not ttl > 0:
        msg = f"ttl must be > 0 seconds, got {ttl!r}"
        raise ValueError(msg)
    token = uuid.uuid4().hex
    if not client.set(key, token, nx=True, px=max(1, int(ttl * 1000))):
        return None
    return Lease(client, key, token, ttl)


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
    ``aligned``: probes happen on multiples of ``retry_interval`` of ``clock`` (at least half
    an interval after the failure; ``time.monotonic`` is one clock for every process of a
    host), so processes that saw one outage at slightly different moments probe, and
    rejoin, together.
    Does not: count successes or failures in a window (one failure opens it).
    """

    __slots__ = (
        "__weakref__",
        "_clock",
        "_lock",
        "_open_until",
        "_probe_at",
        "aligned",
        "recoveries",
        "retry_interval",
        "trips",
    )

    def __init__(
        self,
        *,
        retry_interval: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        aligned: bool = False,
    ):
        if not retry_interval > 0:
            msg = f"retry_interval must be > 0 seconds, got {retry_interval!r}"
            raise ValueError(msg)
        self.retry_interval = retry_interval
        self.aligned = aligned
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
            now = self._clock()
            until = now + self.retry_interval
            if self.aligned:
                # The next multiple of the interval, at least half an interval away: a probe
                # that failed just after a boundary is retried at the next one, with the
                # other processes' probes, not an interval later than theirs.
                interval = self.retry_interval
                until = (math.floor(now / interval) + 1) * interval
                if until - now < interval / 2:
                    until += interval
            self._open_until = until
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
