"""Async twins: memory hits inline, disk reads batched in the pool, control and errors."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest

from rag_perf_plugins._clock import FakeClock
from rag_perf_plugins.cache import CacheManager, DiskTier, cache_control
from rag_perf_plugins.config import PerformanceConfig


def make(cache_dir: Path, clock: Any = None, **overrides: Any) -> CacheManager:
    config = PerformanceConfig(cache_dir=str(cache_dir), **overrides)
    return CacheManager(config, clock=clock or FakeClock(1000.0), tracker=None)


async def test_async_roundtrip_and_ttl(cache_dir: Path) -> None:
    clock = FakeClock(1000.0)
    cache = make(cache_dir, clock)
    await cache.aset("k", {"v": 1}, ttl=5.0)
    assert await cache.aget("k") == {"v": 1}
    await cache.aset_many({"a": 1, "b": 2}, namespace="retrieval")
    assert await cache.aget_many(["a", "b", "c"], namespace="retrieval") == {"a": 1, "b": 2}
    vecs = await cache.aset_vectors({"e": [0.1, 0.2]})
    assert await cache.aget_vectors(["e"]) == vecs
    clock.advance(5.0)
    assert await cache.aget("k") is None
    assert await cache.adelete("a", namespace="retrieval") is True
    assert await cache.aclear() >= 2
    await cache.aclose()


async def test_memory_hits_need_no_thread(cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = make(cache_dir)
    await cache.aset("k", "v")
    await cache.aget("k")  # the namespace version is now cached

    def no_disk(*_args: Any) -> Any:
        raise AssertionError("disk tier touched on a memory hit")

    monkeypatch.setattr(DiskTier, "get_many", no_disk)
    for _ in range(10):
        assert await cache.aget("k") == "v"
    assert cache.get_stats()["namespaces"]["default"]["hits"]["memory"] == 11
    await cache.aclose()


async def test_concurrent_disk_reads_are_batched(cache_dir: Path) -> None:
    writer = make(cache_dir, cache_size=0)
    writer.set_vectors({f"k{i}": [float(i)] * 8 for i in range(300)})
    writer.close()
    cache = make(cache_dir, cache_size=0)
    threads: set[str] = set()
    real = DiskTier.get_many

    def spy(self: DiskTier, keys: Any) -> dict[str, bytes]:
        threads.add(threading.current_thread().name)
        return real(self, keys)

    DiskTier.get_many = spy  # type: ignore[method-assign]
    try:
        got = await asyncio.gather(
            *(cache.aget(f"k{i}", namespace="embeddings") for i in range(300))
        )
    finally:
        DiskTier.get_many = real  # type: ignore[method-assign]
    assert got == [[float(i)] * 8 for i in range(300)]
    reader = next(iter(cache._batchers.values()))
    assert reader.batches <= 2  # version read aside, one batch for 300 callers
    assert threads and all(name.startswith("rag-perf-cache") for name in threads)
    assert cache.get_stats()["namespaces"]["embeddings"]["hits"] == {"disk": 300}
    await cache.aclose()


async def test_async_control_and_degradation(
    cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = make(cache_dir, cache_size=0)
    await cache.aset("k", "v")
    with cache_control("bypass"):
        assert await cache.aget("k") is None

    def broken(*_args: Any) -> Any:
        raise OSError("disk I/O error")

    monkeypatch.setattr(DiskTier, "get_many", broken)
    assert await cache.aget("k", "fallback") == "fallback"
    assert cache.get_stats()["errors_by_kind"] == {"io": 1}
    await cache.aclose()
