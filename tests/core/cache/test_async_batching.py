"""Concurrent async calls share pool jobs: counts of jobs and reads, per-caller results.

Real disk tiers in temporary directories; the only stand-ins are spies that count calls
to the real methods, and a fault raised inside one batch's read.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rag_perf_plugins._clock import FakeClock
from rag_perf_plugins.cache import CacheManager, DiskTier, cache_control
from rag_perf_plugins.cache.manager import _LoopBatcher
from rag_perf_plugins.config import PerformanceConfig

N = 1000
DIM = 16


def make(cache_dir: Path, clock: Any = None, **overrides: Any) -> CacheManager:
    config = PerformanceConfig(cache_dir=str(cache_dir), **overrides)
    return CacheManager(config, clock=clock or FakeClock(1000.0), tracker=None)


def vector(i: int) -> list[float]:
    return [float(i) + d / 8 for d in range(DIM)]  # exact in float32


def fill(cache_dir: Path, n: int = N, clock: Any = None) -> None:
    writer = make(cache_dir, clock, cache_size=0)
    writer.set_vectors({f"k{i}": vector(i) for i in range(n)})
    writer.close()


def count_jobs(cache: CacheManager) -> list[str]:
    """Names of the functions submitted to the cache's (real) pool, in order."""
    pool: ThreadPoolExecutor = cache._pool()
    real = pool.submit
    jobs: list[str] = []

    def submit(fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        jobs.append(getattr(fn, "__name__", repr(fn)))
        return real(fn, *args, **kwargs)

    pool.submit = submit  # type: ignore[method-assign]
    return jobs


def spy_reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Number of keys of each DiskTier.get_many call (one SELECT per shard each)."""
    calls: list[int] = []
    real = DiskTier.get_many

    def get_many(self: DiskTier, keys: Any) -> dict[str, bytes]:
        calls.append(len(keys))
        return real(self, keys)

    monkeypatch.setattr(DiskTier, "get_many", get_many)
    return calls


async def test_1000_concurrent_agets_make_one_pool_job_and_one_batched_read(
    cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fill(cache_dir)
    cache = make(cache_dir, cache_size=0)
    cache.namespace_version("embeddings")  # version cached, as in a running service
    jobs = count_jobs(cache)
    reads = spy_reads(monkeypatch)
    got = await asyncio.gather(*(cache.aget(f"k{i}", namespace="embeddings") for i in range(N)))
    assert got == [vector(i) for i in range(N)]
    assert jobs == ["_walk"]
    assert reads == [N]  # one get_many: one SELECT per shard for all 1,000 callers
    batcher = next(iter(cache._batchers.values()))
    assert batcher.batches == 1
    assert 1 <= batcher.deliveries <= N
    assert cache.get_stats()["namespaces"]["embeddings"]["hits"] == {"disk": N}
    await cache.aclose()


async def test_callers_of_one_key_get_their_own_lists(cache_dir: Path) -> None:
    fill(cache_dir, 3)
    cache = make(cache_dir, cache_size=0)
    a, b, arrays = await asyncio.gather(
        cache.aget("k1", namespace="embeddings"),
        cache.aget("k1", namespace="embeddings"),
        cache.aget_vectors(["k1", "k2", "missing"], as_numpy=True),
    )
    assert a == b == vector(1)
    assert a is not b  # a caller may change its list without touching another's
    assert set(arrays) == {"k1", "k2"}
    assert arrays["k1"].dtype == np.float32 and arrays["k1"].tolist() == vector(1)
    assert not arrays["k1"].flags.writeable
    await cache.aclose()


def test_get_vectors_as_numpy_equals_the_list_form(cache_dir: Path) -> None:
    fill(cache_dir, 50)
    keys = [f"k{i}" for i in range(60)]
    for cache_size in (0, 1000):  # disk only; memory in front (second pass from memory)
        cache = make(cache_dir, cache_size=cache_size)
        for _ in range(2):
            lists = cache.get_vectors(keys)
            arrays = cache.get_vectors(keys, as_numpy=True)
            assert set(arrays) == set(lists) == {f"k{i}" for i in range(50)}
            assert all(arrays[k].shape == (DIM,) for k in arrays)
            assert {k: v.tolist() for k, v in arrays.items()} == lists
        cache.close()


async def test_a_fault_in_one_batch_reaches_its_callers_only(
    cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fill(cache_dir, 20)
    cache = make(cache_dir, cache_size=0)
    cache.namespace_version("embeddings")
    real = DiskTier.get_many

    def get_many(self: DiskTier, keys: Any) -> dict[str, bytes]:
        if any(k.endswith(":k0") for k in keys):
            raise OSError("disk I/O error")
        return real(self, keys)

    monkeypatch.setattr(DiskTier, "get_many", get_many)
    first = [
        asyncio.ensure_future(cache.aget(f"k{i}", "miss", namespace="embeddings"))
        for i in range(10)
    ]
    await asyncio.sleep(0)  # the first batch is sent; the next calls make a second one
    second = [
        asyncio.ensure_future(cache.aget(f"k{i}", "miss", namespace="embeddings"))
        for i in range(10, 20)
    ]
    assert await asyncio.gather(*first) == ["miss"] * 10  # degraded, not failed
    assert await asyncio.gather(*second) == [vector(i) for i in range(10, 20)]
    assert next(iter(cache._batchers.values())).batches == 2
    stats = cache.get_stats()
    assert stats["errors_by_kind"] == {"io": 1}  # one fault for the batch, not per caller
    assert stats["namespaces"]["embeddings"]["hits"] == {"disk": 10}
    assert stats["namespaces"]["embeddings"]["misses"] == 10
    await cache.aclose()


async def test_a_cancelled_waiter_leaves_the_others_alone(cache_dir: Path) -> None:
    fill(cache_dir, 10)
    cache = make(cache_dir, cache_size=0)
    cache.namespace_version("embeddings")
    tasks = [asyncio.create_task(cache.aget(f"k{i}", namespace="embeddings")) for i in range(10)]
    await asyncio.sleep(0)  # every task is waiting on the batch
    tasks[3].cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(results[3], asyncio.CancelledError)
    assert [r for i, r in enumerate(results) if i != 3] == [vector(i) for i in range(10) if i != 3]
    assert await cache.aget("k3", namespace="embeddings") == vector(3)  # still readable
    await cache.aclose()


async def test_batched_reads_keep_ttl_control_and_memory_promotion(cache_dir: Path) -> None:
    clock = FakeClock(1000.0)
    cache = make(cache_dir, clock, cache_size=100)
    await cache.aset_many({"short": 1}, ttl=5.0, namespace="query")
    await cache.aset_many({"long": 2}, ttl=500.0, namespace="query")
    cache.tiers[0].clear()  # memory empty: the next reads come from disk
    clock.advance(10.0)

    async def bypassed() -> Any:
        with cache_control("bypass"):
            return await cache.aget("long", namespace="query")

    short, long, skipped = await asyncio.gather(
        cache.aget("short", namespace="query"),
        cache.aget("long", namespace="query"),
        bypassed(),
    )
    assert (short, long, skipped) == (None, 2, None)
    assert cache.tiers[0].stats()["items"] == 1  # "long" copied into memory; "short" expired
    assert await cache.aget("long", namespace="query") == 2
    ns = cache.get_stats()["namespaces"]["query"]
    assert ns["hits"] == {"disk": 1, "memory": 1}
    assert (ns["misses"], ns["bypassed"]) == (1, 1)
    await cache.aclose()


async def test_1000_concurrent_asets_make_one_pool_job_and_one_write(
    cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = make(cache_dir, cache_size=0)
    cache.namespace_version("default")
    jobs = count_jobs(cache)
    writes: list[int] = []
    real = DiskTier.set_many

    def set_many(self: DiskTier, items: Any, **kwargs: Any) -> None:
        writes.append(len(items))
        real(self, items, **kwargs)

    monkeypatch.setattr(DiskTier, "set_many", set_many)
    await asyncio.gather(*(cache.aset(f"k{i}", i, ttl=60.0) for i in range(N)))
    assert jobs == ["_store_groups"]
    assert writes == [N]  # one set_many: one transaction per shard
    assert next(iter(cache._batchers.values())).write_batches == 1
    assert cache.get_stats()["namespaces"]["default"]["sets"] == N
    await cache.aclose()
    reader = make(cache_dir, cache_size=0)
    assert reader.get_many([f"k{i}" for i in range(N)]) == {f"k{i}": i for i in range(N)}
    reader.close()


async def test_batched_writes_keep_call_order(cache_dir: Path) -> None:
    cache = make(cache_dir, cache_size=0)
    await asyncio.gather(
        cache.aset("k", 1, ttl=10.0),
        cache.aset("k", 2, ttl=20.0),  # another ttl: a second group, written after
        cache.aset("k", 3, ttl=10.0),  # and a third: the last call wins
        cache.aset("other", "x", ttl=10.0, model="m"),
    )
    assert next(iter(cache._batchers.values())).write_batches == 1
    assert cache.get("k") == 3
    assert cache.purge_model("m") == 1  # the model tag went with its group
    await cache.aclose()


async def test_a_failed_write_batch_fails_its_callers_only(cache_dir: Path) -> None:
    cache = make(cache_dir, cache_size=0)
    cache.namespace_version("default")
    jobs = count_jobs(cache)
    pool = cache._pool()
    real = pool.submit
    refused = {"n": 0}

    def submit(fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        if fn.__name__ == "_store_groups" and not refused["n"]:
            refused["n"] += 1
            raise RuntimeError("cannot schedule new futures after shutdown")
        return real(fn, *args, **kwargs)

    pool.submit = submit  # type: ignore[method-assign]
    first = [asyncio.ensure_future(cache.aset(f"a{i}", i)) for i in range(5)]
    await asyncio.sleep(0)
    second = [asyncio.ensure_future(cache.aset(f"b{i}", i)) for i in range(5)]
    results = await asyncio.gather(*first, return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in results)
    assert await asyncio.gather(*second) == [None] * 5
    assert cache.get_many([f"b{i}" for i in range(5)]) == {f"b{i}": i for i in range(5)}
    assert cache.get_many([f"a{i}" for i in range(5)]) == {}
    assert jobs == ["_store_groups"]  # the refused batch never reached the pool
    await cache.aclose()


def test_finished_event_loops_are_not_kept_alive(cache_dir: Path) -> None:
    cache = make(cache_dir, cache_size=0)
    for _ in range(5):
        asyncio.run(cache.aget("k"))  # e.g. a sync wrapper running each call in a new loop
    gc.collect()
    assert len(cache._batchers) == 0
    cache.close()


async def test_one_callers_many_vectors_are_handed_over_in_slices(
    cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fill(cache_dir, 50)
    cache = make(cache_dir, cache_size=0)
    cache.namespace_version("embeddings")
    monkeypatch.setattr(_LoopBatcher, "SLICE_S", 0.0)  # every vector ends a slice
    keys = [f"k{i}" for i in range(60)]
    lists, arrays = await asyncio.gather(
        cache.aget_vectors(keys), cache.aget_vectors(keys, as_numpy=True)
    )
    assert lists == {f"k{i}": vector(i) for i in range(50)}
    assert {k: v.tolist() for k, v in arrays.items()} == lists
    batcher = next(iter(cache._batchers.values()))
    assert batcher.batches == 1
    # One loop callback per vector (none holds the loop for a whole caller), plus one per
    # caller for the slice that meets its 10 trailing misses and hands its result over.
    assert batcher.deliveries == 2 * (50 + 1)
    await cache.aclose()
