"""The cache manager: namespaces, tiers, envelopes, expiry, single-flight, stats, degradation.

Example (the seed API)::

    from rag_perf_plugins.cache import get_cache_manager

    cache = get_cache_manager()                 # memory LRU in front of a diskcache directory
    cache.set("key", "value", ttl=3600.0)
    cache.get("key")                            # "value", also in the next process
    cache.get_many(["a", "b"], namespace="embeddings")   # one SQL query per shard
    answer = cache.get_or_compute(key, lambda: call_llm(prompt), namespace="llm", model="m")
    await cache.aget("key")                     # memory hits inline; disk in a small thread pool
    cache.get_stats()["hit_rate"]

Lookups walk the tiers in order (memory, then disk; a Redis tier slots in where it is
put); a hit in a later tier is copied into the earlier ones. Writes go to every tier.

What it guarantees:

- Nothing stored is ever unpickled; a corrupt, foreign or planted entry reads as a miss,
  is counted under ``errors_by_kind["corrupt"]`` and deleted.
- Expiry is checked here, against ``clock`` (seconds, default ``time.time``: wall time,
  because entries outlive processes).
- A storage fault (full disk, lock timeout, I/O error) never fails a call: that call goes
  on uncached, ``errors`` rises, and one warning per tier and fault kind is logged.
- ``fork()``-safe: a child gets a fresh thread pool, locks and flights; diskcache
  reopens its SQLite connections.

Namespaces (``llm``, ``embeddings``, ``retrieval``, ``query``, ``default`` or any name
of letters, digits, ``_``, ``-``, ``.``) are cleared one at a time, and bumping a
namespace's version (:meth:`CacheManager.bump_namespace`) invalidates it for every
process sharing the directory: the version is stored in the persistent tiers and re-read
at most every ``version_check_interval`` seconds (see ``PerformanceConfig``).

Cross-process single-flight (``cross_process_lease`` > 0 and a Redis tier): a miss that
this process leads also takes a lease in Redis (:meth:`CacheManager.shared_flight`), so
identical misses in other processes wait for its answer instead of computing it again.

Not done: stale-while-revalidate serving, entry signing.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import os
import re
import sqlite3
import threading
import time
import weakref
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Final, Literal, TypeVar, cast, overload

import diskcache
import numpy as np

from .._secrets import describe_error
from .._signature import checked_kwargs
from ..config import PerformanceConfig, resolve_config
from ..errors import CacheError
from ..tracking.tracker import PerformanceTracker, resolve_tracker
from .control import current_control
from .keys import is_sampled
from .serialize import (
    EXPIRED,
    CorruptEntry,
    PackedVector,
    VectorDtype,
    decode,
    decode_live,
    encode,
    encode_vector,
    round_vectors,
)
from .singleflight import SingleFlight
from .tiers import CORRUPT, DiskTier, MemoryTier, Tier

__all__ = ["NAMESPACES", "CacheManager", "default_cache_dir"]

log = logging.getLogger("rag_perf_plugins.cache")

T = TypeVar("T")
NAMESPACES: Final = ("llm", "embeddings", "retrieval", "query", "default")
_NS_RE: Final = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
_MISSING: Final[Any] = object()
_VERSION_KEY: Final = "__ns__:{}"


def default_cache_dir() -> Path:
    """The user's cache directory (platformdirs), e.g. ``~/.cache/rag-perf-plugins``."""
    import platformdirs

    return Path(platformdirs.user_cache_dir("rag-perf-plugins", appauthor=False))


def _fault_kind(exc: BaseException) -> str:
    if isinstance(exc, diskcache.Timeout | TimeoutError):
        return "timeout"
    text = str(exc).lower()
    if "locked" in text or "busy" in text:
        return "timeout"
    if "full" in text or "no space" in text:
        return "full"
    if isinstance(exc, sqlite3.DatabaseError) and "malformed" in text:
        return "corrupt"
    return "io"


_ABSENT: Final[Any] = object()  # no value (a miss is still "default" for the caller)


class CacheManager:
    """Tiered, persistent, pickle-free cache with namespaces, TTL and single-flight.

    Args:
        config: Settings (``enable_caching``, ``cache_size``, ``cache_memory_max_bytes``,
            ``cache_ttl`` (seconds), ``cache_dir``, ``cache_disk_enabled``,
            ``cache_max_bytes``, ``cache_shards``, ``cache_disk_timeout`` (seconds),
            ``cache_vector_dtype``, ``cache_skip_sampled``, ``enable_metrics``); defaults to
            ``PerformanceConfig.load()``.
        clock: Seconds for created/expires times; inject a ``FakeClock`` in tests.
        tiers: The tiers in lookup order; default built from ``config`` (memory tier when
            ``cache_size > 0``, disk tier when ``cache_disk_enabled``, Redis tier when
            ``redis_url`` is set, placed by ``redis_position``).
        executor_threads: Threads that run blocking tier I/O for the ``a*`` methods.
        tracker: A ``PerformanceTracker`` to feed counters to; ``None``: the process-wide
            one when ``enable_metrics`` is on; ``NullTracker()``: none.
    """

    GIL_SHARE_EVERY: Final = 16

    @checked_kwargs
    def __init__(
        self,
        config: PerformanceConfig | None = None,
        *,
        clock: Callable[[], float] = time.time,
        tiers: Sequence[Tier] | None = None,
        executor_threads: int = 2,
        tracker: PerformanceTracker | None = None,
    ) -> None:
        if executor_threads < 1:
            msg = f"executor_threads must be >= 1, got {executor_threads}"
            raise ValueError(msg)
        self.config = resolve_config(config)
        self.clock = clock
        self.enabled = self.config.enable_caching
        self._executor_threads = executor_threads
        self._executor: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._warned: set[tuple[str, str]] = set()
        self._flight: SingleFlight[Any] = SingleFlight()
        self._closed = False
        self._counts: dict[tuple[str, ...], int] = {}
        self._tracker = resolve_tracker(tracker, self.config)
        self._batchers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopBatcher] = (
            weakref.WeakKeyDictionary()
        )
        self._last_batcher: _LoopBatcher | None = None
        if tiers is None:
            tiers = self._default_tiers()
        self.tiers: list[Tier] = list(tiers)
        self._shared: tuple[Tier, ...] = tuple(t for t in self.tiers if t.blocking)
        # Managers whose shared tiers are the same storage share one namespace version;
        # managers without a shared tier share the process's (see _VersionBook).
        self._scope: tuple[tuple[str, ...], ...] = tuple(t.identity for t in self._shared) or (
            ("process",),
        )
        self._first_blocking = next(
            (i for i, t in enumerate(self.tiers) if t.blocking), len(self.tiers)
        )
        _MANAGERS.add(self)

    # --- construction ---------------------------------------------------------------------
    def _default_tiers(self) -> list[Tier]:
        cfg = self.config
        tiers: list[Tier] = []
        if cfg.cache_size > 0 and cfg.cache_memory_max_bytes > 0:
            tiers.append(MemoryTier(max_items=cfg.cache_size, max_bytes=cfg.cache_memory_max_bytes))
        redis_only = bool(cfg.redis_url) and cfg.redis_position == "instead-of-disk"
        if cfg.cache_disk_enabled and self.enabled and not redis_only:
            directory = Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir()
            try:
                tiers.append(
                    DiskTier(
                        directory,
                        shards=cfg.cache_shards,
                        timeout=cfg.cache_disk_timeout,
                        size_limit=cfg.cache_max_bytes,
                    )
                )
            except Exception as exc:  # unwritable or broken directory: run memory-only
                self._fault("disk", "open", exc)
        if cfg.redis_url and self.enabled:
            from .redis_tier import RedisTier  # redis-py is an optional extra

            # Behind memory; in front of the disk tier, behind it, or in its place.
            shared = RedisTier.from_config(cfg)
            disk = [i for i, t in enumerate(tiers) if isinstance(t, DiskTier)]
            if disk and cfg.redis_position == "before-disk":
                tiers.insert(disk[0], shared)
            else:
                tiers.append(shared)
        return tiers

    @property
    def tracker(self) -> PerformanceTracker:
        """The tracker counters go to (a ``NullTracker`` when metrics are off)."""
        return self._tracker

    def _count(self, *key: str, n: int = 1) -> None:
        with self._lock:
            self._counts[key] = self._counts.get(key, 0) + n

    def _emit(self, counter: str, n: int) -> None:
        if n:
            self._tracker.incr(counter, n)

    def _fault(self, tier: str, op: str, exc: BaseException, *, kind: str | None = None) -> None:
        kind = kind or _fault_kind(exc)
        self._count("error", tier, kind)
        self._emit("cache.errors", 1)
        with self._lock:
            first = (tier, kind) not in self._warned
            self._warned.add((tier, kind))
        if first:
            # Logged, not warnings.warn: a cache fault must never become an exception
            # under -W error, and it is reported once per tier and kind, not per call.
            log.warning(
                "cache %s tier failed during %s (%s); continuing without it for this "
                "call. Further %s faults of this tier are counted in get_stats() only.",
                tier,
                op,
                describe_error(exc),
                kind,
            )

    def _pool(self) -> ThreadPoolExecutor:
        pool = self._executor
        if pool is None:
            with self._lock:
                if self._executor is None:
                    self._executor = ThreadPoolExecutor(
                        self._executor_threads, thread_name_prefix="rag-perf-cache"
                    )
                pool = self._executor
        return pool

    # --- namespaces -----------------------------------------------------------------------
    @staticmethod
    def _check_ns(namespace: str) -> str:
        if namespace in NAMESPACES:
            return namespace
        if not isinstance(namespace, str) or not _NS_RE.match(namespace):
            msg = (
                f"namespace must be 1-64 letters, digits, '_', '-' or '.', got {namespace!r} "
                f"(built in: {', '.join(NAMESPACES)})"
            )
            raise ValueError(msg)
        return namespace

    def _shared_tiers(self) -> tuple[Tier, ...]:
        return self._shared

    def _cached_version(self, namespace: str) -> int | None:
        """The version of ``namespace`` if read within ``version_check_interval``, else None.

        No I/O. Without a shared tier the version lives in this process and is always known.
        """
        entry = _VERSIONS.get(self._scope, namespace)
        if entry is not None and (
            not self._shared_tiers()
            or time.monotonic() - entry[1] < self.config.version_check_interval
        ):
            return entry[0]
        if not self._shared_tiers():
            return 1
        return None

    def _load_version(self, namespace: str) -> int:
        """Read the version of ``namespace`` from the shared tiers (blocking) and keep it."""
        shared = self._shared_tiers()
        if not shared:
            # No shared tier: the version lives only in this process, and a bump must still
            # advance it (else a memory-only cache keeps serving what a write invalidated).
            entry = _VERSIONS.get(self._scope, namespace)
            return entry[0] if entry is not None else 1
        version = 1
        key = _VERSION_KEY.format(namespace)
        for tier in shared:
            try:
                blob = tier.get_many([key]).get(key)
                if blob:
                    version = max(version, int(decode(blob).value))
            except (CorruptEntry, ValueError, TypeError) as exc:
                self._fault(tier.name, "namespace version", exc, kind="corrupt")
            except Exception as exc:
                self._fault(tier.name, "namespace version", exc)
        _VERSIONS.put(self._scope, namespace, version)
        return version

    def _prefix(self, namespace: str) -> str:
        version = self._cached_version(self._check_ns(namespace))
        if version is None:
            version = self._load_version(namespace)
        return f"{namespace}:{version}:"

    async def _aprefix(self, namespace: str) -> str:
        version = self._cached_version(self._check_ns(namespace))
        if version is None:
            loop = asyncio.get_running_loop()

            def load() -> Awaitable[int]:
                return loop.run_in_executor(self._pool(), self._load_version, namespace)

            # Concurrent first calls share one read of the version.
            version = await self._flight.ado(f"\x00version\x00{namespace}", load)
        return f"{namespace}:{version}:"

    def namespace_version(self, namespace: str) -> int:
        """The current version of ``namespace`` (starts at 1).

        Read from the shared tiers when the one this process holds is older than
        ``version_check_interval`` seconds, so another process's bump is seen within it.
        """
        version = self._cached_version(self._check_ns(namespace))
        return self._load_version(namespace) if version is None else version

    async def anamespace_version(self, namespace: str) -> int:
        """Async :meth:`namespace_version`: a read of the shared tiers runs off the loop."""
        return _version_of(await self._aprefix(namespace))

    def bump_namespace(self, namespace: str) -> int:
        """Invalidate every entry of ``namespace`` at once by moving to a new version.

        Old entries stay on disk until evicted or cleared. Every manager of this process
        on the same storage sees the bump at once; other processes within
        ``version_check_interval`` seconds. Returns the new version.
        """
        version = self._load_version(self._check_ns(namespace)) + 1
        blob = encode(version, created_at=self.clock(), expires_at=None)
        key = _VERSION_KEY.format(namespace)
        for tier in self._shared_tiers():
            try:
                tier.set_many({key: blob})
            except Exception as exc:
                self._fault(tier.name, "bump namespace", exc)
        _VERSIONS.put(self._scope, namespace, version)
        return version

    async def abump_namespace(self, namespace: str) -> int:
        """Async :meth:`bump_namespace` (the shared tiers are written off the loop)."""
        self._check_ns(namespace)
        if not self._shared_tiers():
            return self.bump_namespace(namespace)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool(), self.bump_namespace, namespace)

    # --- the pure core --------------------------------------------------------------------
    def _expires_at(self, ttl: float | None, now: float) -> float | None:
        control_ttl = current_control().ttl
        if control_ttl is not None:
            ttl = control_ttl
        elif ttl is None:
            ttl = self.config.cache_ttl
        if ttl is None or ttl == math.inf:
            return None
        if not ttl > 0:
            msg = f"ttl must be > 0 seconds (or None for the default), got {ttl!r}"
            raise ValueError(msg)
        return now + ttl

    def _accept(
        self,
        tier: Tier,
        blobs: Mapping[str, bytes],
        now: float,
        *,
        share_gil: bool = False,
        defer_vectors: bool = False,
    ) -> tuple[dict[str, Any], list[str]]:
        """Decode blobs from one tier: (storage key -> value, keys to delete). No I/O.

        With ``share_gil`` (pool threads serving the event loop), the GIL is offered to
        other threads every :attr:`GIL_SHARE_EVERY` entries. With ``defer_vectors``,
        vectors stay :class:`PackedVector` (checked, not yet Python floats).
        """
        values: dict[str, Any] = {}
        doomed: list[str] = []
        for n, (skey, blob) in enumerate(blobs.items(), 1):
            if share_gil and n % self.GIL_SHARE_EVERY == 0:
                time.sleep(0)
            if blob is CORRUPT or not blob:
                self._fault(tier.name, "read", CorruptEntry("refused row"), kind="corrupt")
                doomed.append(skey)
                continue
            try:
                value = decode_live(blob, now, defer_vectors=defer_vectors)
            except CorruptEntry as exc:
                self._fault(tier.name, "read", exc, kind="corrupt")
                doomed.append(skey)
                continue
            if value is EXPIRED:
                doomed.append(skey)
                continue
            values[skey] = value
        return values, doomed

    def _account(self, namespace: str, hits_by_tier: Mapping[str, int], misses: int) -> None:
        total = 0
        for tier, n in hits_by_tier.items():
            if n:
                self._count("hit", tier, namespace, n=n)
                total += n
        if misses:
            self._count("miss", namespace, n=misses)
        self._emit("cache.hits", total)
        self._emit("cache.misses", misses)

    def _encode_many(
        self, items: Mapping[str, Any], ttl: float | None, *, vector: bool
    ) -> dict[str, bytes]:
        now = self.clock()
        expires_at = self._expires_at(ttl, now)
        try:
            if vector:
                dtype = self.config.cache_vector_dtype
                return {
                    k: encode_vector(v, created_at=now, expires_at=expires_at, dtype=dtype)
                    for k, v in items.items()
                }
            return {k: encode(v, created_at=now, expires_at=expires_at) for k, v in items.items()}
        except (TypeError, ValueError) as exc:
            raise CacheError(str(exc)) from exc

    # --- sync shell -----------------------------------------------------------------------
    def _walk(
        self,
        start: int,
        stop: int,
        pending: list[str],
        now: float,
        share_gil: bool = False,
        defer_vectors: bool = False,
    ) -> tuple[dict[str, Any], dict[str, str]]:
        """Look ``pending`` up in tiers[start:stop]: (storage key -> value, -> tier name).

        Decodes, drops expired and corrupt entries, and copies hits into earlier tiers.
        Runs inline for sync calls and for the memory tier, in the pool for disk tiers.
        ``defer_vectors``: vectors come back as :class:`PackedVector` (see :func:`_unpack`).
        """
        found: dict[str, Any] = {}
        where: dict[str, str] = {}
        for i in range(start, stop):
            if not pending:
                break
            tier = self.tiers[i]
            try:
                blobs = tier.get_many(pending)
            except Exception as exc:
                self._fault(tier.name, "get", exc)
                continue
            values, doomed = self._accept(
                tier, blobs, now, share_gil=share_gil, defer_vectors=defer_vectors
            )
            if doomed:
                self._delete_quietly(tier, doomed)
            if values:
                found.update(values)
                where.update(dict.fromkeys(values, tier.name))
                self._promote(i, {k: blobs[k] for k in values})
                pending = [k for k in pending if k not in values]
        return found, where

    def _finish(
        self, namespace: str, prefix: str, wanted: int, found: dict[str, Any], where: dict[str, str]
    ) -> dict[str, Any]:
        hits: dict[str, int] = {}
        for tier_name in where.values():
            hits[tier_name] = hits.get(tier_name, 0) + 1
        self._account(namespace, hits, wanted - len(found))
        cut = len(prefix)
        return {k[cut:]: v for k, v in found.items()}

    def _lookup(
        self, namespace: str, keys: Sequence[str], *, as_numpy: bool = False
    ) -> dict[str, Any]:
        if not self.enabled or not keys or not current_control().read:
            if self.enabled and keys:
                self._count("bypass", namespace, n=len(keys))
            return {}
        prefix = self._prefix(namespace)
        pending = [prefix + k for k in keys]
        found, where = self._walk(0, len(self.tiers), pending, self.clock(), False, as_numpy)
        if as_numpy:
            _unpack(found, as_numpy=True)
        return self._finish(namespace, prefix, len(keys), found, where)

    def _promote(self, index: int, blobs: dict[str, bytes]) -> None:
        for tier in self.tiers[:index]:
            self._promote_into(tier, blobs)

    def _promote_into(self, tier: Tier, blobs: dict[str, bytes]) -> None:
        try:
            tier.set_many(blobs)
        except Exception as exc:
            self._fault(tier.name, "promote", exc)

    def _delete_quietly(self, tier: Tier, keys: Sequence[str]) -> None:
        try:
            tier.delete_many(keys)
        except Exception as exc:
            self._fault(tier.name, "delete", exc)

    def _store(
        self,
        namespace: str,
        blobs: dict[str, bytes],
        ttl: float | None,
        model: str | None,
        vectors: Mapping[str, list[float]] | None = None,
    ) -> None:
        """Write ``blobs`` to every tier; ``vectors``: their decoded floats, for the memory tier."""
        prefix = self._prefix(namespace)
        stored = {prefix + k: b for k, b in blobs.items()}
        for tier in self.tiers:
            try:
                tier.set_many(stored, ttl=ttl, tag=model)
            except Exception as exc:
                self._fault(tier.name, "set", exc)
        if vectors:
            self._keep(stored, prefix, vectors)
        self._count("set", namespace, n=len(blobs))
        self._emit("cache.sets", len(blobs))

    def _memory_get(
        self, namespace: str, key: str, accept: Callable[[Any], bool] | None = None
    ) -> Any:
        """A live value of ``key`` in the leading memory tier, counted as a hit; else _ABSENT.

        The hit path of :meth:`get` / :meth:`aget` (one key: no lists or dicts built, no
        walk). Anything else (absent, expired, unreadable, a bypass, an unknown namespace
        version, a value ``accept`` refuses) is :data:`_ABSENT` with nothing counted: the
        general lookup that follows reads, deletes and counts as usual.
        """
        if not self._first_blocking or not self.enabled or not current_control().read:
            return _ABSENT
        version = self._cached_version(self._check_ns(namespace))
        if version is None:
            return _ABSENT
        tier = self.tiers[0]
        skey = f"{namespace}:{version}:{key}"
        try:
            blob = tier.get_many((skey,)).get(skey)
            if not blob or blob is CORRUPT:
                return _ABSENT
            value = decode_live(blob, self.clock())
        except Exception:  # the general lookup meets it again, and counts it
            return _ABSENT
        if value is EXPIRED or (accept is not None and not accept(value)):
            return _ABSENT
        self._account(namespace, {tier.name: 1}, 0)
        return value

    def peek(
        self,
        key: str,
        default: Any = None,
        *,
        namespace: str = "default",
        accept: Callable[[Any], bool] | None = None,
    ) -> Any:
        """The value of ``key`` if the memory tier holds it live, else ``default``; no I/O.

        Example: ``cache.peek(key, namespace="llm", accept=lambda v: isinstance(v, dict))``.
        A value found counts as a hit, as :meth:`get` counts it; ``default`` counts nothing
        (no miss), so a caller can take its general path afterwards (which looks up every
        tier and counts once). ``accept``: a value it returns false for (one the caller
        cannot use) is ``default`` too, uncounted. Safe inside an event loop: it never
        reads disk or Redis.
        """
        found = self._memory_get(namespace, key, accept)
        return default if found is _ABSENT else found

    # unasync: generated from aget
    def get(self, key: str, default: Any = None, *, namespace: str = "default") -> Any:
        """The value stored under ``key``, or ``default`` on a miss or an expired entry."""
        found = self._memory_get(namespace, key)
        if found is not _ABSENT:
            return found
        return self._lookup(namespace, [key]).get(key, default)

    # unasync: generated from aget_many
    def get_many(self, keys: Iterable[str], *, namespace: str = "default") -> dict[str, Any]:
        """The values found, by key (misses are left out); one batched read per tier."""
        return self._lookup(namespace, list(dict.fromkeys(keys)))

    # unasync: generated from aset
    def set(
        self,
        key: str,
        value: Any,
        ttl: float | None = None,
        *,
        namespace: str = "default",
        model: str | None = None,
    ) -> None:
        """Store ``value`` for ``ttl`` seconds (``None``: ``cache_ttl``; ``math.inf``: never).

        ``model`` tags the entry for :meth:`purge_model`. Raises :class:`CacheError` for a
        value msgpack cannot store; storage faults are absorbed and counted.
        """
        self.set_many({key: value}, ttl, namespace=namespace, model=model)

    # unasync: generated from aset_many
    def set_many(
        self,
        items: Mapping[str, Any],
        ttl: float | None = None,
        *,
        namespace: str = "default",
        model: str | None = None,
    ) -> None:
        """Store several values in one transaction per disk shard."""
        if not self.enabled or not items or not current_control().write:
            return
        self._store(namespace, self._encode_many(items, ttl, vector=False), ttl, model)

    @overload
    def get_vectors(
        self,
        keys: Iterable[str],
        *,
        namespace: str = ...,
        as_numpy: Literal[False] = ...,
    ) -> dict[str, list[float]]: ...

    @overload
    def get_vectors(
        self, keys: Iterable[str], *, namespace: str = ..., as_numpy: Literal[True]
    ) -> dict[str, np.ndarray[Any, Any]]: ...

    def get_vectors(
        self, keys: Iterable[str], *, namespace: str = "embeddings", as_numpy: bool = False
    ) -> dict[str, list[float]] | dict[str, np.ndarray[Any, Any]]:
        """Cached vectors by key (misses left out), exactly as :meth:`set_vectors` returned them.

        Example: ``cache.get_vectors(keys)`` (lists of Python floats) or
        ``cache.get_vectors(keys, as_numpy=True)``: read-only one-dimensional numpy views
        of the stored bytes (``cache_vector_dtype``: float32 by default), with no Python
        float made per element; 1,000 384-d vectors decode in ~0.5 ms instead of ~12 ms.
        The values are equal either way (``array.tolist()`` gives the list). A non-vector
        entry stored in the namespace comes back as stored, in both forms.
        """
        return self._lookup(namespace, list(dict.fromkeys(keys)), as_numpy=as_numpy)

    def memory_vectors(
        self, keys: Sequence[str], *, namespace: str = "embeddings"
    ) -> list[list[float]] | None:
        """Every one of ``keys`` from the memory tier, as new lists in order; else ``None``.

        Example: ``cache.memory_vectors([key])`` is ``[[0.1, ...]]`` when the memory tier
        holds a live vector for the key, ``None`` otherwise (then call :meth:`get_vectors`).
        The hit path of a warm embedding call: no I/O, no thread hop, and the floats come
        from the memory tier's decoded copy (see :meth:`MemoryTier.get_vectors_kept`)
        instead of being made from bytes again. Hits are counted as :meth:`get_vectors`
        counts them; a ``None`` counts nothing (the general lookup that follows does).
        """
        if not self._first_blocking or not self.enabled or not keys:
            return None
        tier = self.tiers[0]
        kept = getattr(tier, "get_vectors_kept", None)
        if kept is None or not current_control().read:
            return None
        version = self._cached_version(self._check_ns(namespace))
        if version is None:
            return None
        prefix = f"{namespace}:{version}:"
        try:
            found: list[list[float]] | None = kept([prefix + k for k in keys], self.clock())
        except Exception as exc:
            self._fault(tier.name, "get", exc)
            return None
        if found is not None:  # what _account counts for hits in one tier
            n = len(keys)
            self._count("hit", tier.name, namespace, n=n)
            self._emit("cache.hits", n)
        return found

    def set_vectors(
        self,
        items: Mapping[str, Sequence[float]],
        ttl: float | None = None,
        *,
        namespace: str = "embeddings",
        model: str | None = None,
        rounded: bool = False,
        keep: bool | None = None,
    ) -> dict[str, list[float]]:
        """Store vectors as raw ``cache_vector_dtype`` and return them rounded the same way.

        Return the result to the caller on the miss path: it equals what a later hit gives.
        Example: ``vecs = cache.set_vectors({key: [0.1, 0.2]}, model="m")``.

        ``rounded=True`` says the vectors are already lists of floats rounded to
        ``cache_vector_dtype`` (as :class:`~rag_perf_plugins.services.embeddings.EmbeddingService`
        rounds them): they are returned as given instead of being rounded a second time.
        Storage does not depend on it: the stored bytes are always the raw dtype.

        ``keep``: whether the memory tier may keep the returned floats as the answer of the
        next hits (instead of decoding the blob at the first one). ``None``: only when this
        method rounded them (``rounded=False``), so they are exactly what a decode gives;
        ``True``: the caller vouches for that with ``rounded=True`` (the embedding
        service's store does: its floats come from ``round_vectors``).
        """
        out = _rounded(items, self.config.cache_vector_dtype, already=rounded)
        if self.enabled and out and current_control().write:
            kept = out if _keepable(rounded, keep) else None
            self._store(namespace, self._encode_many(out, ttl, vector=True), ttl, model, kept)
        return out

    def delete(self, key: str, *, namespace: str = "default") -> bool:
        """Remove ``key`` from every tier; True when some tier had it."""
        skey = self._prefix(namespace) + key
        found = False
        for tier in self.tiers:
            try:
                found = bool(tier.delete_many([skey])) or found
            except Exception as exc:
                self._fault(tier.name, "delete", exc)
        return found

    def clear(self, namespace: str | None = None) -> int:
        """Delete everything, or one namespace (all its versions); returns entries removed."""
        prefix = None if namespace is None else self._check_ns(namespace) + ":"
        removed = 0
        for tier in self.tiers:
            try:
                removed += tier.clear(prefix)
            except Exception as exc:
                self._fault(tier.name, "clear", exc)
        if namespace is None:
            _VERSIONS.forget(self._scope)
        return removed

    def purge_model(self, model: str) -> int:
        """Delete every entry stored with ``model=model``, in every namespace and tier.

        Returns the tagged entries removed. A copy promoted from a shared tier into this
        manager's memory tier carries no tag, so the memory tier's untagged entries are
        dropped too (an answer of the purged model must not be served from them; they are
        read again from the shared tiers). Other processes' memory tiers keep their copies
        until they expire: bump a namespace to reach them.
        """
        removed = 0
        for tier in self.tiers:
            try:
                removed += tier.purge_tag(model)
                if isinstance(tier, MemoryTier):
                    tier.drop_untagged()
            except Exception as exc:
                self._fault(tier.name, "purge", exc)
        return removed

    def should_cache_llm(self, params: Mapping[str, Any]) -> bool:
        """Policy for LLM calls: cache all, unless ``cache_skip_sampled`` and the call samples."""
        return self.enabled and not (self.config.cache_skip_sampled and is_sampled(params))

    def get_or_compute(
        self,
        key: str,
        fn: Callable[[], T],
        ttl: float | None = None,
        *,
        namespace: str = "default",
        model: str | None = None,
    ) -> T:
        """The cached value, or ``fn()`` computed once for concurrent callers and stored.

        The returned value on a miss is the stored form (msgpack round trip: tuples become
        lists), so a later hit returns an equal value. ``fn``'s errors propagate to the
        callers waiting at that moment and are never cached.
        """
        control = current_control()
        if not self.enabled or control.mode == "bypass":
            return fn()
        if control.read:
            hit = self.get(key, _MISSING, namespace=namespace)
            if hit is not _MISSING:
                return hit  # type: ignore[no-any-return]

        def compute() -> T:
            if control.read:
                # A leader that finished between our lookup and our claim has stored it.
                late = self.get(key, _MISSING, namespace=namespace)
                if late is not _MISSING:
                    return late  # type: ignore[no-any-return]
            with self.shared_flight(key, namespace=namespace, enabled=control.read) as lead:
                if not lead:  # another process computed and stored it
                    stored = self.get(key, _MISSING, namespace=namespace)
                    if stored is not _MISSING:
                        return stored  # type: ignore[no-any-return]
                value = fn()
                return self._store_computed(key, value, ttl, namespace, model, write=control.write)

        return self._flight.do(f"{namespace}\x00{key}", compute)

    # --- cross-process single-flight ------------------------------------------------------
    def _lease_tier(self) -> Any:
        """The tier that holds leases (the Redis tier), or None when leases are off."""
        if self.config.cross_process_lease <= 0 or not self.enabled:
            return None
        return next((t for t in self.tiers if hasattr(t, "try_lease")), None)

    def _lease_step(self, tier: Any, stored: str, *, waiting: bool) -> tuple[str, Any]:
        """One look at the shared flight of ``stored``; blocking, raises when Redis is away.

        ("lead", lease) when this process takes it, ("ready", None) when the value is
        stored, ("wait", None) while another process holds the lease.
        """
        if waiting:
            if tier.get_many([stored]):
                return "ready", None
            if tier.lease_held(stored):
                return "wait", None
        lease = tier.try_lease(stored, self.config.cross_process_lease)
        if lease is None:
            return "wait", None
        if tier.get_many([stored]):  # stored by a leader that just released its lease
            lease.release()
            return "ready", None
        return "lead", lease

    def _lease_outcome(self, state: str, lease: Any) -> bool:
        self._count("xp", {"lead": "led", "ready": "followed"}.get(state, "alone"))
        return state != "ready"

    @contextlib.contextmanager
    def shared_flight(
        self, key: str, *, namespace: str = "default", enabled: bool = True
    ) -> Iterator[bool]:
        """Lead the computation of ``key`` across processes, or wait for the process that does.

        Example::

            with cache.shared_flight(key, namespace="llm") as lead:
                if not lead:                          # another process stored it meanwhile
                    value = cache.get(key, namespace="llm")
                ...                                   # else compute and store it here

        Yields ``True`` when the caller should compute (it holds the lease, renewed until
        the block ends, or leases are off, or Redis is away: then it computes alone), and
        ``False`` once another process has stored ``key``. A follower polls every
        ``min(0.05, lease / 10)`` seconds while the leader holds the lease; a leader that
        died loses it within ``cross_process_lease`` seconds and a follower then leads.
        So a follower waits at most the leader's call plus ``cross_process_lease`` seconds.
        Use it inside the local single-flight: one caller per process reaches Redis.
        """
        tier = self._lease_tier() if enabled else None
        if tier is None:
            yield True
            return
        stored = self._prefix(namespace) + key
        poll = min(0.05, self.config.cross_process_lease / 10)
        state, lease, waiting = "wait", None, False
        try:
            while state == "wait":
                state, lease = self._lease_step(tier, stored, waiting=waiting)
                if state == "wait":
                    waiting = True
                    time.sleep(poll)
        except Exception as exc:  # Redis away: compute without a lease
            self._fault(tier.name, "lease", exc)
            state = "alone"
        try:
            yield self._lease_outcome(state, lease)
        finally:
            if lease is not None:
                lease.release()

    @contextlib.asynccontextmanager
    async def ashared_flight(
        self, key: str, *, namespace: str = "default", enabled: bool = True
    ) -> AsyncIterator[bool]:
        """Async :meth:`shared_flight`: Redis calls run in the manager's thread pool."""
        tier = self._lease_tier() if enabled else None
        if tier is None:
            yield True
            return
        loop = asyncio.get_running_loop()
        stored = await self._aprefix(namespace) + key
        poll = min(0.05, self.config.cross_process_lease / 10)
        state, lease, waiting = "wait", None, False
        try:
            while state == "wait":
                step = functools.partial(self._lease_step, tier, stored, waiting=waiting)
                state, lease = await loop.run_in_executor(self._pool(), step)
                if state == "wait":
                    waiting = True
                    await asyncio.sleep(poll)
        except Exception as exc:  # Redis away: compute without a lease
            self._fault(tier.name, "lease", exc)
            state = "alone"
        try:
            yield self._lease_outcome(state, lease)
        finally:
            if lease is not None:
                await loop.run_in_executor(self._pool(), lease.release)

    def _store_computed(
        self,
        key: str,
        value: T,
        ttl: float | None,
        namespace: str,
        model: str | None,
        *,
        write: bool,
    ) -> T:
        try:
            blobs = self._encode_many({key: value}, ttl, vector=False)
        except CacheError as exc:
            self._fault("encode", "set", exc, kind="unserializable")
            return value
        if write:
            self._store(namespace, blobs, ttl, model)
        return decode(blobs[key]).value  # type: ignore[no-any-return]

    # --- async shell ----------------------------------------------------------------------
    async def _alookup(
        self, namespace: str, keys: Sequence[str], *, as_numpy: bool = False
    ) -> dict[str, Any]:
        if not self.enabled or not keys or not current_control().read:
            if self.enabled and keys:
                self._count("bypass", namespace, n=len(keys))
            return {}
        # Fast path without a coroutine frame: the version is cached nearly always.
        version = self._cached_version(self._check_ns(namespace))
        prefix = (
            f"{namespace}:{version}:" if version is not None else await self._aprefix(namespace)
        )
        pending = [prefix + k for k in keys]
        now = self.clock()
        # Leading non-blocking tiers (memory) answer inline, without a thread hop.
        first_blocking = self._first_blocking
        if first_blocking:
            found, where = self._walk(0, first_blocking, pending, now, False, as_numpy)
            if as_numpy:
                _unpack(found, as_numpy=True)
        else:
            found, where = {}, {}
        if len(found) < len(pending) and first_blocking < len(self.tiers):
            rest = [k for k in pending if k not in found]
            more, more_where = await self._batcher().read(rest, first_blocking, now, as_numpy)
            found.update(more)
            where.update(more_where)
        return self._finish(namespace, prefix, len(keys), found, where)

    def _batcher(self) -> _LoopBatcher:
        loop = asyncio.get_running_loop()
        last = self._last_batcher
        if last is not None and last._loop_ref() is loop:
            return last
        batcher = self._batchers.get(loop)
        if batcher is None:
            batcher = self._batchers[loop] = _LoopBatcher(self, loop)
        self._last_batcher = batcher
        return batcher

    def _store_groups(self, groups: list[_Group]) -> None:
        """Write batched ``aset`` groups to the blocking tiers, in order (pool thread)."""
        for stored, ttl, model in groups:
            for tier in self.tiers:
                if tier.blocking:
                    self._store_tier(tier, stored, ttl, model)

    def _keep(
        self, stored: dict[str, bytes], prefix: str, vectors: Mapping[str, list[float]]
    ) -> None:
        """Hand the leading memory tier the floats of vectors it just stored (no decode later)."""
        tier = self.tiers[0] if self.tiers else None
        keep = None if tier is None or tier.blocking else getattr(tier, "keep_vectors", None)
        if keep is None:
            return
        try:  # lists only: a numpy array's items are numpy scalars, not a decode's floats
            keep(
                {prefix + k: (stored[prefix + k], v) for k, v in vectors.items() if type(v) is list}
            )
        except Exception as exc:
            self._fault(tier.name, "set", exc)  # type: ignore[union-attr]

    def _store_tier(
        self, tier: Tier, stored: dict[str, bytes], ttl: float | None, model: str | None
    ) -> None:
        try:
            tier.set_many(stored, ttl=ttl, tag=model)
        except Exception as exc:
            self._fault(tier.name, "set", exc)

    async def _astore(
        self,
        namespace: str,
        blobs: dict[str, bytes],
        ttl: float | None,
        model: str | None,
        vectors: Mapping[str, list[float]] | None = None,
    ) -> None:
        prefix = await self._aprefix(namespace)
        stored = {prefix + k: b for k, b in blobs.items()}
        blocking = False
        for tier in self.tiers:
            if tier.blocking:
                blocking = True
            else:
                self._store_tier(tier, stored, ttl, model)  # memory: inline
        if vectors:
            self._keep(stored, prefix, vectors)
        if blocking:
            # Concurrent writes of one loop iteration share one pool job.
            await self._batcher().write(stored, ttl, model)
        self._count("set", namespace, n=len(blobs))
        self._emit("cache.sets", len(blobs))

    async def aget(self, key: str, default: Any = None, *, namespace: str = "default") -> Any:
        """Async :meth:`get`: memory hits inline, disk reads in the cache's thread pool."""
        found = self._memory_get(namespace, key)
        if found is not _ABSENT:
            return found
        return (await self._alookup(namespace, [key])).get(key, default)

    async def aget_many(self, keys: Iterable[str], *, namespace: str = "default") -> dict[str, Any]:
        """Async :meth:`get_many`."""
        return await self._alookup(namespace, list(dict.fromkeys(keys)))

    async def aset(
        self,
        key: str,
        value: Any,
        ttl: float | None = None,
        *,
        namespace: str = "default",
        model: str | None = None,
    ) -> None:
        """Async :meth:`set`; returns once every tier has the value."""
        await self.aset_many({key: value}, ttl, namespace=namespace, model=model)

    async def aset_many(
        self,
        items: Mapping[str, Any],
        ttl: float | None = None,
        *,
        namespace: str = "default",
        model: str | None = None,
    ) -> None:
        """Async :meth:`set_many`."""
        if not self.enabled or not items or not current_control().write:
            return
        await self._astore(namespace, self._encode_many(items, ttl, vector=False), ttl, model)

    @overload
    async def aget_vectors(
        self,
        keys: Iterable[str],
        *,
        namespace: str = ...,
        as_numpy: Literal[False] = ...,
    ) -> dict[str, list[float]]: ...

    @overload
    async def aget_vectors(
        self, keys: Iterable[str], *, namespace: str = ..., as_numpy: Literal[True]
    ) -> dict[str, np.ndarray[Any, Any]]: ...

    async def aget_vectors(
        self, keys: Iterable[str], *, namespace: str = "embeddings", as_numpy: bool = False
    ) -> dict[str, list[float]] | dict[str, np.ndarray[Any, Any]]:
        """Async :meth:`get_vectors` (same ``as_numpy`` flag)."""
        return await self._alookup(namespace, list(dict.fromkeys(keys)), as_numpy=as_numpy)

    async def aset_vectors(
        self,
        items: Mapping[str, Sequence[float]],
        ttl: float | None = None,
        *,
        namespace: str = "embeddings",
        model: str | None = None,
        rounded: bool = False,
        keep: bool | None = None,
    ) -> dict[str, list[float]]:
        """Async :meth:`set_vectors` (same ``rounded`` and ``keep`` flags)."""
        out = _rounded(items, self.config.cache_vector_dtype, already=rounded)
        if self.enabled and out and current_control().write:
            kept = out if _keepable(rounded, keep) else None
            blobs = self._encode_many(out, ttl, vector=True)
            await self._astore(namespace, blobs, ttl, model, kept)
        return out

    async def adelete(self, key: str, *, namespace: str = "default") -> bool:
        """Async :meth:`delete`."""
        return await asyncio.get_running_loop().run_in_executor(
            self._pool(), lambda: self.delete(key, namespace=namespace)
        )

    async def aclear(self, namespace: str | None = None) -> int:
        """Async :meth:`clear`."""
        return await asyncio.get_running_loop().run_in_executor(self._pool(), self.clear, namespace)

    async def aget_or_compute(
        self,
        key: str,
        fn: Callable[[], Awaitable[T]],
        ttl: float | None = None,
        *,
        namespace: str = "default",
        model: str | None = None,
    ) -> T:
        """Async :meth:`get_or_compute`; the computation is shielded from callers' cancellation."""
        control = current_control()
        if not self.enabled or control.mode == "bypass":
            return await fn()
        if control.read:
            hit = await self.aget(key, _MISSING, namespace=namespace)
            if hit is not _MISSING:
                return hit  # type: ignore[no-any-return]

        async def compute() -> T:
            if control.read:
                # A leader that finished between our lookup and our claim has stored it.
                late = await self.aget(key, _MISSING, namespace=namespace)
                if late is not _MISSING:
                    return late  # type: ignore[no-any-return]
            async with self.ashared_flight(key, namespace=namespace, enabled=control.read) as lead:
                if not lead:  # another process computed and stored it
                    stored = await self.aget(key, _MISSING, namespace=namespace)
                    if stored is not _MISSING:
                        return stored  # type: ignore[no-any-return]
                value = await fn()
                try:
                    blobs = self._encode_many({key: value}, ttl, vector=False)
                except CacheError as exc:
                    self._fault("encode", "set", exc, kind="unserializable")
                    return value
                if control.write:
                    await self._astore(namespace, blobs, ttl, model)
                return decode(blobs[key]).value  # type: ignore[no-any-return]

        return await self._flight.ado(f"{namespace}\x00{key}", compute)

    # --- stats and lifecycle --------------------------------------------------------------
    def get_stats(self) -> dict[str, Any]:
        """Hits and misses per tier and namespace, hit rate, sets, evictions, errors, sizes.

        Example: ``cache.get_stats()["namespaces"]["embeddings"]["hit_rate"]``.
        """
        with self._lock:
            counts = dict(self._counts)
        namespaces: dict[str, dict[str, Any]] = {}
        tiers: dict[str, dict[str, Any]] = {}
        errors_by_kind: dict[str, int] = {}
        for key, n in counts.items():
            what = key[0]
            if what == "hit":
                _, tier, ns = key
                entry = namespaces.setdefault(
                    ns, {"hits": {}, "misses": 0, "sets": 0, "bypassed": 0}
                )
                entry["hits"][tier] = entry["hits"].get(tier, 0) + n
                tiers.setdefault(tier, {"hits": 0})["hits"] = (
                    tiers.setdefault(tier, {"hits": 0}).get("hits", 0) + n
                )
            elif what in ("miss", "set", "bypass"):
                entry = namespaces.setdefault(
                    key[1], {"hits": {}, "misses": 0, "sets": 0, "bypassed": 0}
                )
                entry[{"miss": "misses", "set": "sets", "bypass": "bypassed"}[what]] += n
            elif what == "error":
                _, tier, kind = key
                errors_by_kind[kind] = errors_by_kind.get(kind, 0) + n
                slot = tiers.setdefault(tier, {"hits": 0})
                slot["errors"] = slot.get("errors", 0) + n
        for tier_obj in self.tiers:
            slot = tiers.setdefault(tier_obj.name, {"hits": 0})
            slot.setdefault("errors", 0)
            try:
                slot.update(tier_obj.stats())
            except Exception as exc:
                self._fault(tier_obj.name, "stats", exc)
        hits = misses = sets = 0
        for entry in namespaces.values():
            h = sum(entry["hits"].values())
            entry["hit_rate"] = h / (h + entry["misses"]) if h + entry["misses"] else 0.0
            hits += h
            misses += entry["misses"]
            sets += entry["sets"]
        return {
            "enabled": self.enabled,
            "hits": hits,
            "misses": misses,
            "hit_rate": hits / (hits + misses) if hits + misses else 0.0,
            "sets": sets,
            "errors": sum(errors_by_kind.values()),
            "errors_by_kind": errors_by_kind,
            "evictions": {
                name: int(t.get("evictions", 0)) for name, t in tiers.items() if "evictions" in t
            },
            "tiers": tiers,
            "namespaces": namespaces,
            "single_flight": {
                "computed": self._flight.computed,
                "coalesced": self._flight.coalesced,
                **{
                    f"cross_process_{what}": counts.get(("xp", what), 0)
                    for what in ("led", "followed", "alone")
                },
            },
        }

    def close(self) -> None:
        """Stop the thread pool and close every tier; idempotent."""
        if self._closed:
            return
        self._closed = True
        pool, self._executor = self._executor, None
        if pool is not None:
            pool.shutdown(wait=True)
        for tier in self.tiers:
            try:
                tier.close()
            except Exception as exc:
                self._fault(tier.name, "close", exc)

    async def aclose(self) -> None:
        """Async :meth:`close` (the pool shuts down in a thread, off the loop)."""
        await asyncio.to_thread(self.close)

    def __enter__(self) -> CacheManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _after_fork_in_child(self) -> None:
        # The parent's pool threads, locks held by other threads and in-flight
        # computations do not exist here; start clean. diskcache reopens SQLite itself.
        self._executor = None
        self._lock = threading.Lock()
        self._batchers = weakref.WeakKeyDictionary()
        self._last_batcher = None
        self._flight.reset()
        for tier in self.tiers:
            reset = getattr(tier, "reset_lock", None)
            if reset is not None:
                reset()

    def __repr__(self) -> str:
        with self._lock:
            hits = sum(n for k, n in self._counts.items() if k[0] == "hit")
            misses = sum(n for k, n in self._counts.items() if k[0] == "miss")
            errors = sum(n for k, n in self._counts.items() if k[0] == "error")
        names = "+".join(t.name for t in self.tiers) or "none"
        return (
            f"CacheManager(tiers={names}, enabled={self.enabled}, hits={hits}, "
            f"misses={misses}, errors={errors})"
        )


class _LoopBatcher:
    """Merges the disk reads, and the disk writes, of concurrent async calls on one loop.

    Reads: every lookup issued in the same loop iteration joins one batch, and one pool
    job reads all their keys (one query per shard), checks the envelopes, decodes the
    structures and copies hits into the memory tier, off the loop. Vectors stay packed in
    that job: making ~400,000 Python floats for 1,000 vectors in a pool thread holds the
    GIL for ~12 ms, and a thread that gives the GIL up with ``sleep(0)`` mostly takes it
    straight back before the loop thread wakes (which then waits out the interpreter's
    5 ms switch interval). Each caller's vectors are unpacked on the loop as its result is
    delivered instead, and delivery stops after :attr:`SLICE_S` seconds of work per loop
    iteration (at least one vector each time; one caller's many vectors may span several
    iterations), so the loop is held only briefly however many callers wait, however
    many keys each asked for and however large the vectors.

    Writes: the ``aset`` calls of one loop iteration share one pool job that writes them
    in call order (consecutive calls with the same ``ttl`` and ``model`` as one
    ``set_many``: one transaction per shard). A job that cannot run (the pool is shut
    down) fails the calls of that batch only.
    """

    SLICE_S: Final = 0.00015

    __slots__ = (
        "_loop_ref",
        "_manager",
        "_pending",
        "_writes",
        "batches",
        "deliveries",
        "write_batches",
    )

    def __init__(self, manager: CacheManager, loop: asyncio.AbstractEventLoop) -> None:
        self._manager = manager
        # Weak: the manager keeps its batchers in a WeakKeyDictionary keyed by the loop,
        # and a strong reference here would keep every finished loop alive.
        self._loop_ref = weakref.ref(loop)
        self._pending: list[_Waiter] = []
        self._writes: list[tuple[dict[str, bytes], float | None, str | None, _Done]] = []
        self.batches = 0
        """Read jobs sent to the pool (one per loop iteration that had disk lookups)."""
        self.deliveries = 0
        """Loop callbacks that handed read results to waiting callers."""
        self.write_batches = 0
        """Write jobs sent to the pool (one per loop iteration that had disk writes)."""

    @property
    def _loop(self) -> asyncio.AbstractEventLoop:
        loop = self._loop_ref()
        if loop is None:  # unreachable: callbacks run on their own, living loop
            raise RuntimeError("the event loop of this batcher is gone")
        return loop

    # --- reads ----------------------------------------------------------------------------
    def read(
        self, keys: list[str], start: int, now: float, as_numpy: bool = False
    ) -> asyncio.Future[tuple[dict[str, Any], dict[str, str]]]:
        """Future of (storage key -> value, storage key -> tier name) for ``keys``."""
        future: asyncio.Future[tuple[dict[str, Any], dict[str, str]]] = self._loop.create_future()
        if not self._pending:
            self._loop.call_soon(self._flush)
        self._pending.append((keys, start, now, as_numpy, future))
        return future

    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        self.batches += 1
        manager = self._manager
        start = min(b[1] for b in batch)
        now = max(b[2] for b in batch)
        keys = list(dict.fromkeys(k for b in batch for k in b[0]))
        try:
            job = self._loop.run_in_executor(
                manager._pool(), manager._walk, start, len(manager.tiers), keys, now, True, True
            )
        except Exception as exc:  # a closed pool: these callers miss, nobody else
            job = self._loop.create_future()
            job.set_exception(exc)
        job.add_done_callback(lambda done: self._deliver(done, batch, 0))

    def _deliver(
        self,
        done: asyncio.Future[tuple[dict[str, Any], dict[str, str]]],
        batch: list[_Waiter],
        offset: int,
        progress: tuple[dict[str, Any], int] | None = None,
    ) -> None:
        """Hand results to waiters from ``batch[offset]`` on, for at most :attr:`SLICE_S`.

        ``progress`` is (values so far, next key index) of ``batch[offset]`` when the last
        slice ended inside one caller's keys (one ``aget_many`` of many vectors).
        """
        self.deliveries += 1
        error = None if done.cancelled() else done.exception()
        if error is not None and offset == 0 and progress is None:
            # _walk absorbs storage faults, so this is a bug or a closed pool: fail soft.
            self._manager._fault("disk", "get", error)
        ok = error is None and not done.cancelled()
        found, where = done.result() if ok else ({}, {})
        clock = time.perf_counter
        deadline = clock() + self.SLICE_S
        mine, pos = progress if progress is not None else ({}, 0)
        end = offset
        while end < len(batch):
            keys, _start, _now, as_numpy, future = batch[end]
            if not future.done():  # else the caller was cancelled
                while pos < len(keys):
                    key = keys[pos]
                    pos += 1
                    value = found.get(key, _MISSING)
                    if value is _MISSING:
                        continue
                    if type(value) is PackedVector:
                        value = value.array() if as_numpy else value.tolist()
                    mine[key] = value
                    if pos < len(keys) and clock() >= deadline:
                        self._loop.call_soon(self._deliver, done, batch, end, (mine, pos))
                        return
                future.set_result((mine, {k: where[k] for k in keys if k in where}))
            end += 1
            mine, pos = {}, 0
            if clock() >= deadline:
                break
        if end < len(batch):
            self._loop.call_soon(self._deliver, done, batch, end)

    # --- writes ---------------------------------------------------------------------------
    def write(self, stored: dict[str, bytes], ttl: float | None, model: str | None) -> _Done:
        """Future that is done once the blocking tiers hold ``stored`` (storage keys)."""
        future: _Done = self._loop.create_future()
        if not self._writes:
            self._loop.call_soon(self._flush_writes)
        self._writes.append((stored, ttl, model, future))
        return future

    def _flush_writes(self) -> None:
        batch, self._writes = self._writes, []
        self.write_batches += 1
        groups: list[_Group] = []
        for stored, ttl, model, _future in batch:
            if groups and groups[-1][1] == ttl and groups[-1][2] == model:
                groups[-1][0].update(stored)  # a later write of a key wins, as unbatched
            else:
                groups.append((dict(stored), ttl, model))
        manager = self._manager
        try:
            job = self._loop.run_in_executor(manager._pool(), manager._store_groups, groups)
        except Exception as exc:  # a closed pool: these callers fail, nobody else
            job = self._loop.create_future()
            job.set_exception(exc)
        job.add_done_callback(lambda done: self._written(done, batch))

    @staticmethod
    def _written(
        done: asyncio.Future[None],
        batch: list[tuple[dict[str, bytes], float | None, str | None, _Done]],
    ) -> None:
        error = None if done.cancelled() else done.exception()
        for *_, future in batch:
            if future.done():
                continue  # the caller was cancelled (its write still went out)
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(None)


_Done = asyncio.Future[None]
_Group = tuple[dict[str, bytes], float | None, str | None]
_Waiter = tuple[list[str], int, float, bool, "asyncio.Future[Any]"]


def _unpack(values: dict[str, Any], *, as_numpy: bool) -> None:
    """Turn :class:`PackedVector` values into numpy views or new float lists, in place."""
    for key, value in values.items():
        if type(value) is PackedVector:
            values[key] = value.array() if as_numpy else value.tolist()


# --- namespace versions and fork safety -------------------------------------------------------
class _VersionBook:
    """Namespace versions by (storage scope, namespace), shared by the managers of a process.

    A scope is the identities of a manager's shared tiers (``(("disk", dir),)``), or
    ``(("process",),)`` for managers without one. Each entry is (version, when it was read,
    monotonic seconds); each manager decides from its own ``version_check_interval``
    whether an entry is fresh enough.
    """

    __slots__ = ("_entries", "_lock")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[tuple[tuple[tuple[str, ...], ...], str], tuple[int, float]] = {}

    def get(self, scope: tuple[tuple[str, ...], ...], namespace: str) -> tuple[int, float] | None:
        return self._entries.get((scope, namespace))

    def put(self, scope: tuple[tuple[str, ...], ...], namespace: str, version: int) -> None:
        with self._lock:
            self._entries[(scope, namespace)] = (version, time.monotonic())

    def forget(self, scope: tuple[tuple[str, ...], ...]) -> None:
        with self._lock:
            for entry in [e for e in self._entries if e[0] == scope]:
                del self._entries[entry]

    def reset(self) -> None:
        self._lock = threading.Lock()


_VERSIONS = _VersionBook()
_MANAGERS: weakref.WeakSet[CacheManager] = weakref.WeakSet()


def _version_of(prefix: str) -> int:
    """The version in a storage prefix ``"<namespace>:<version>:"``."""
    return int(prefix.rsplit(":", 2)[1])


def _after_fork_in_child() -> None:
    _VERSIONS.reset()
    for manager in list(_MANAGERS):
        manager._after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _keepable(rounded: bool, keep: bool | None) -> bool:
    """:meth:`CacheManager.set_vectors`'s ``keep`` rule: by default, only floats it rounded."""
    return keep if keep is not None else not rounded


def _rounded(
    items: Mapping[str, Sequence[float]], dtype: VectorDtype, *, already: bool
) -> dict[str, list[float]]:
    """``items`` rounded to ``dtype`` as a hit returns them; as given when ``already``."""
    if already:
        return cast(dict[str, list[float]], dict(items))
    keys = list(items)
    return dict(zip(keys, round_vectors([items[k] for k in keys], dtype), strict=True))
