"""The Redis tier: envelope bytes shared by every process and host that uses one Redis.

Example::

    tier = RedisTier("redis://127.0.0.1:6379/0", prefix="my-app", timeout=0.25)
    cache = CacheManager(config, tiers=[MemoryTier(...), tier, DiskTier(...)])
    # or simply: PerformanceConfig(redis_url="redis://127.0.0.1:6379/0",
    #                              redis_position="before-disk")  -> CacheManager(config)

It stores the same envelope bytes as the disk tier (see :mod:`.serialize`; nothing is
pickled, nothing is interpreted here), under ``{prefix}:c:{{key}}`` (the key as a Redis
Cluster hash tag, :class:`~rag_perf_plugins.redis.keys.RedisKeys`), so two applications
with different ``cache_namespace_prefix`` values never see each other's entries. Redis
drops an entry when its lifetime (``expires_at - created_at`` read from the envelope header,
or the ``ttl`` hint for a blob that has none) has passed since it was written; the manager
also checks ``expires_at`` on every read. Reads are one ``MGET`` per 500 keys, all in one
pipelined round trip (in a cluster: one ``MGET`` per slot, pipelined to every node at
once); writes are one pipeline. Standalone, Cluster and Sentinel are reached alike
(:class:`~rag_perf_plugins.redis.client.RedisTarget`).

Outages: every call has a socket timeout (``timeout``, seconds, from ``redis_timeout``) and
redis-py's own retries are off. A connection error or timeout opens a
:class:`CircuitBreaker`: the failing call raises :class:`RedisUnavailable` (the manager
counts it, warns once and carries on with its local tiers); for the next
``retry_interval`` seconds reads are misses and writes are skipped without touching the
network (counted as ``skipped``); then one call probes Redis and, if it answers, the tier
is back (counted as ``recoveries``). Invalidations (delete, clear, purge) are never skipped
silently: while the breaker is open they raise, so the manager reports them.

Cross-process single-flight: :meth:`RedisTier.try_lease` takes the lease of a key
(``SET NX PX`` beside the entry, in its slot) that the cache manager holds while one
process computes a miss (``cross_process_lease``).

Not done: an asyncio client. The manager runs blocking tiers (this one included) in its
small thread pool, so the event loop never waits on Redis. Nor client-side caching
(RESP3 tracking), or bounding Redis memory: set ``maxmemory`` and an eviction policy on
the server; ``evictions`` in :meth:`RedisTier.stats` is the server's ``evicted_keys``
counter (every application on that server).
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, TypeVar

from ..redis.client import (
    OUTAGE_ERRORS,
    CircuitBreaker,
    Lease,
    RedisTarget,
    RedisUnavailable,
    describe_error,
    mget,
    own_or_given,
    redis,
    try_lease,
)
from ..redis.keys import RedisKeys
from .serialize import _HEADER, HEADER_SIZE, MAGIC

__all__ = ["RedisTier"]

log = logging.getLogger("rag_perf_plugins.redis")

T = TypeVar("T")

_MGET_CHUNK: Final = 500


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "\\*?[]" else c for c in text)


def _summed(info: Any, field: str) -> int:
    """``field`` of an ``INFO`` answer: one dict, or (cluster) one dict per node, summed."""
    if isinstance(info, dict) and field in info:
        return int(info[field])
    if isinstance(info, dict):
        return sum(int(v.get(field, 0)) for v in info.values() if isinstance(v, dict))
    return 0


def _lifetime_ms(blob: bytes, ttl: float | None) -> int | None:
    """Milliseconds Redis should keep ``blob``: its envelope lifetime, else ``ttl``; None: keep."""
    seconds = ttl
    if len(blob) >= HEADER_SIZE and blob[:3] == MAGIC:
        _magic, _schema, _kind, _reserved, created_at, expires_at = _HEADER.unpack_from(blob)
        seconds = None if math.isinf(expires_at) else expires_at - created_at
    if seconds is None or math.isinf(seconds) or math.isnan(seconds):
        return None
    return max(1, math.ceil(seconds * 1000))


class RedisTier:
    """A :class:`~rag_perf_plugins.cache.tiers.Tier` in Redis, shared by processes and hosts.

    Example::

        tier = RedisTier("redis://127.0.0.1:6379/0", prefix="tenant-a", timeout=0.25)
        tier.set_many({"llm:1:ab12": blob}, ttl=3600.0, tag="gpt-4o-mini")
        tier.get_many(["llm:1:ab12", "llm:1:cd34"])      # {"llm:1:ab12": blob}, one round trip

    Args:
        url: ``redis://[:password@]host:port/db`` (also ``rediss://``, ``unix://``), or a
            :class:`~rag_perf_plugins.redis.client.RedisTarget` (cluster, sentinel).
        prefix: Key prefix of this application or tenant (``cache_namespace_prefix``).
        timeout: Seconds per connect and per reply (``redis_timeout``).
        retry_interval: Seconds the breaker stays open before one call probes Redis again.
        clock: Monotonic seconds of the breaker; inject a ``FakeClock`` in tests.
        max_connections: Size of redis-py's connection pool (per process).
        client: An existing redis-py client to use instead of building one from ``url``.

    Tags (model names, for :meth:`purge_tag`) are kept in one Redis set of keys per tag,
    added to by every tagged write and emptied only when the tag is purged or the tier
    cleared. So, unlike the memory and disk tiers (which keep the tag of a key's last
    write), a key stays in every tag it was ever stored with: :meth:`purge_tag` also
    deletes it after a rewrite under another tag or none (such as a copy the manager
    promoted, untagged, from a lower tier). A member whose key is gone costs a few bytes.
    :meth:`stats` scans nothing: its ``items`` and ``bytes`` are the whole database's
    (``DBSIZE`` and ``used_memory``, summed over the masters of a cluster), every prefix
    included; :meth:`scan_stats` counts this prefix exactly with a ``SCAN`` (``O(keys)``,
    for ``rag-perf cache info`` and reports, never per request or per metrics scrape).
    Does not: sign entries, or shield them from a writer who can already write to Redis.
    """

    __slots__ = (
        "_client",
        "_lock",
        "_owns_client",
        "_value_prefix",
        "breaker",
        "errors",
        "keys",
        "prefix",
        "skipped",
        "target",
        "timeout",
        "url",
    )

    name = "redis"

    @property
    def identity(self) -> tuple[str, ...]:
        """``("redis", mode, url..., prefix)``: one server (or cluster) and database, one prefix."""
        return ("redis", *self.target.identity, self.prefix)

    blocking = True

    def __init__(
        self,
        url: str | RedisTarget,
        *,
        prefix: str = "rag-perf",
        timeout: float = 0.25,
        retry_interval: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        max_connections: int = 32,
        client: Any | None = None,
    ) -> None:
        self.keys = RedisKeys(prefix)  # checks the prefix
        self.target = RedisTarget.of(url)
        self.url = self.target.url
        self.prefix = prefix
        self.timeout = timeout
        self._client, self._owns_client = own_or_given(
            self.target, client, timeout=timeout, max_connections=max_connections
        )
        self._value_prefix = f"{prefix}:c:"
        self.breaker = CircuitBreaker(retry_interval=retry_interval, clock=clock)
        self._lock = threading.Lock()
        self.errors = 0
        self.skipped = 0

    @classmethod
    def from_config(cls, config: Any, **options: Any) -> RedisTier:
        """The tier of ``redis_url`` (any ``redis_mode``), the config's prefix and timeout."""
        if not config.redis_url:
            msg = "from_config needs redis_url set (e.g. redis://127.0.0.1:6379/0)"
            raise ValueError(msg)
        return cls(
            RedisTarget.from_config(config),
            prefix=config.cache_namespace_prefix,
            timeout=config.redis_timeout,
            **options,
        )

    # --- the breaker around every call --------------------------------------------------
    def _call(self, op: str, fn: Callable[[Any], T], skip: T | None = None) -> T:
        """Run ``fn`` on the client; while the breaker is open return ``skip`` or raise."""
        if not self.breaker.allow():
            with self._lock:
                self.skipped += 1
            if skip is None:
                msg = f"redis tier at {self.target.describe()} is unavailable; {op} not applied"
                raise RedisUnavailable(msg)
            return skip
        try:
            result = fn(self._client)
        except OUTAGE_ERRORS as exc:
            with self._lock:
                self.errors += 1
            self.breaker.failure()
            msg = (
                f"redis at {self.target.describe()} did not answer {op} ({describe_error(exc)}); "
                f"skipping it for {self.breaker.retry_interval:g} s at a time"
            )
            raise RedisUnavailable(msg) from exc
        if self.breaker.success():
            log.info("redis tier at %s answers again; using it", self.target.describe())
        return result

    # --- reads ----------------------------------------------------------------------------
    def get_many(self, keys: Sequence[str]) -> dict[str, bytes]:
        """Blobs of the keys found: one pipelined round trip of ``MGET`` per 500 keys.

        In a cluster: one ``MGET`` per slot, sent to every node before any answer is read.
        """
        if not keys:
            return {}
        value = self.keys.value

        def run(client: Any) -> list[Any]:
            if isinstance(client, redis.cluster.RedisCluster):
                return [mget(client, [value(k) for k in keys])]
            if len(keys) <= _MGET_CHUNK:
                return [client.mget([value(k) for k in keys])]
            pipe = client.pipeline(transaction=False)
            for start in range(0, len(keys), _MGET_CHUNK):
                pipe.mget([value(k) for k in keys[start : start + _MGET_CHUNK]])
            return list(pipe.execute())

        chunks: list[Any] = self._call("get", run, skip=[])
        found: dict[str, bytes] = {}
        index = 0
        for values in chunks:
            for value in values:
                if value is not None:
                    found[keys[index]] = bytes(value)
                index += 1
        return found

    # --- writes ---------------------------------------------------------------------------
    def set_many(
        self, items: Mapping[str, bytes], *, ttl: float | None = None, tag: str | None = None
    ) -> None:
        """Store items in one pipeline, each expiring after its envelope lifetime (or ``ttl``)."""
        if not items:
            return
        value = self.keys.value

        def run(client: Any) -> bool:
            pipe = client.pipeline(transaction=False)
            for key, blob in items.items():
                px = _lifetime_ms(blob, ttl)
                pipe.set(value(key), blob, px=px)
            if tag is not None:
                pipe.sadd(self._tag_key(tag), *items.keys())
            pipe.execute()
            return True

        self._call("set", run, skip=False)

    def _tag_key(self, tag: str) -> str:
        return self.keys.tag(tag)

    def delete_many(self, keys: Sequence[str]) -> int:
        """Delete keys; returns how many existed. Raises while Redis is unavailable.

        In a cluster redis-py splits the ``DEL`` per slot and adds the counts.
        """
        if not keys:
            return 0
        value = self.keys.value
        return self._call("delete", lambda c: int(c.delete(*[value(k) for k in keys])))

    def _delete_matching(self, client: Any, pattern: str) -> int:
        n = 0
        batch: list[bytes] = []
        for key in client.scan_iter(match=pattern, count=1000):
            batch.append(key)
            if len(batch) >= 500:
                n += int(client.unlink(*batch))
                batch.clear()
        if batch:
            n += int(client.unlink(*batch))
        return n

    def clear(self, prefix: str | None = None) -> int:
        """Delete every entry of this tier's prefix, or those whose key starts with ``prefix``.

        A ``SCAN`` of the prefix (``O(keys in the database)``; every master of a cluster),
        then ``UNLINK`` in batches.
        """
        pattern = _glob_escape(self._value_prefix + "{" + (prefix or "")) + "*"

        def run(client: Any) -> int:
            n = self._delete_matching(client, pattern)
            if prefix is None:
                self._delete_matching(client, self.keys.kind_pattern("tag"))
            return n

        return self._call("clear", run)

    def purge_tag(self, tag: str) -> int:
        """Delete every entry stored with ``tag``; returns how many existed."""
        tag_key = self._tag_key(tag)
        value = self.keys.value

        def run(client: Any) -> int:
            members = [m.decode() for m in client.smembers(tag_key)]
            n = 0
            for start in range(0, len(members), 500):
                chunk = members[start : start + 500]
                n += int(client.delete(*[value(k) for k in chunk]))
            client.delete(tag_key)
            return n

        return self._call("purge", run)

    # --- cross-process single-flight -----------------------------------------------------
    def try_lease(self, key: str, ttl: float) -> Lease | None:
        """Take the single-flight lease of ``key`` for ``ttl`` seconds (renewed until released).

        ``None`` when another process holds it. Raises :class:`RedisUnavailable` while
        Redis is away (the caller computes without a lease).
        """
        return self._call("lease", lambda c: try_lease(c, self.keys.lease(key), ttl=ttl))

    def lease_held(self, key: str) -> bool:
        """True while some process holds the lease of ``key``."""
        return self._call("lease", lambda c: bool(c.exists(self.keys.lease(key))))

    # --- inspection -----------------------------------------------------------------------
    def _counters(self) -> dict[str, Any]:
        return {
            "state": self.breaker.state,
            "trips": self.breaker.trips,
            "recoveries": self.breaker.recoveries,
            "skipped": self.skipped,
            "redis_errors": self.errors,
            "prefix": self.prefix,
            "url": self.target.describe(),
            "mode": self.target.mode,
        }

    def stats(self) -> dict[str, Any]:
        """Server figures without a scan, breaker state and counters.

        ``items``: keys in the database (``DBSIZE``, every prefix; summed over a cluster's
        masters); ``bytes``: the server's ``used_memory``; ``evictions``: its
        ``evicted_keys``. One or two small commands per master: cheap enough for every
        metrics scrape. While the breaker is open nothing is asked and they are 0.
        """

        def run(client: Any) -> dict[str, Any]:
            if isinstance(client, redis.cluster.RedisCluster):
                primaries = redis.cluster.RedisCluster.PRIMARIES
                size: Any = client.dbsize(target_nodes=primaries)
                info: Any = client.info(target_nodes=primaries)
                items = int(size) if isinstance(size, int) else sum(int(v) for v in size.values())
            else:
                items = int(client.dbsize())
                info = client.info()
            return {
                "items": items,
                "bytes": _summed(info, "used_memory"),
                "evictions": _summed(info, "evicted_keys"),
            }

        sizes = {"items": 0, "bytes": 0, "evictions": 0}
        if self.breaker.state == "closed":
            with contextlib.suppress(RedisUnavailable):
                sizes = self._call("stats", run)
        return {**sizes, **self._counters()}

    def scan_stats(self) -> dict[str, Any]:
        """Items and payload bytes under this prefix exactly: a ``SCAN`` (``O(keys)``).

        For reports (``rag-perf cache info``), never per request. Raises
        :class:`RedisUnavailable` while Redis is away.
        """

        def run(client: Any) -> dict[str, Any]:
            pattern = self.keys.kind_pattern("c")
            keys = list(client.scan_iter(match=pattern, count=1000))
            total = 0
            for start in range(0, len(keys), 500):
                pipe = client.pipeline(transaction=False)
                for key in keys[start : start + 500]:
                    pipe.strlen(key)
                total += sum(int(n) for n in pipe.execute())
            return {"items": len(keys), "bytes": total}

        return {**self._call("scan", run), **self._counters()}

    def ping(self) -> bool:
        """True when Redis answers now (goes through the breaker; never raises)."""
        try:
            return bool(self._call("ping", lambda c: c.ping()))
        except RedisUnavailable:
            return False

    def reset_lock(self) -> None:
        """Replace locks after ``fork()``; redis-py reconnects in a new process by itself."""
        self._lock = threading.Lock()
        self.breaker.reset_lock()

    def close(self) -> None:
        """Close the connection pool (when this tier built the client); idempotent."""
        if self._owns_client:
            self._client.close()

    def __repr__(self) -> str:
        return (
            f"RedisTier({self.target.describe()!r}, prefix={self.prefix!r}, "
            f"state={self.breaker.state}, skipped={self.skipped}, errors={self.errors})"
        )
