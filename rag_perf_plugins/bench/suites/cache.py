"""Cache benchmarks: batched disk reads in a fresh process, memory overhead, event-loop lag.

Run with ``rag-perf bench --only cache``. The LangChain ``CacheBackedEmbeddings`` comparison
lives in ``bench/peers/cache_langchain.py`` (same category).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ...cache import CacheManager, embedding_key
from ...config import PerformanceConfig
from ..registry import BenchContext, Result, Target, benchmark

DIM = 384


def _keys(n: int, prefix: str = "doc") -> list[str]:
    return [
        embedding_key(
            provider="sim", model="m", dimensions=DIM, role="document", text=f"{prefix} {i}"
        )
        for i in range(n)
    ]


def _vectors(n: int) -> np.ndarray[Any, Any]:
    return np.random.default_rng(0).standard_normal((n, DIM)).astype(np.float32)


def _disk_only(directory: Path, **overrides: Any) -> CacheManager:
    config = PerformanceConfig(
        cache_dir=str(directory), cache_size=0, enable_metrics=False, **overrides
    )
    return CacheManager(config)


_FRESH_READER = """
import json, sys, time
from rag_perf_plugins.cache import CacheManager
from rag_perf_plugins.config import PerformanceConfig
directory, keys = sys.argv[1], json.loads(sys.stdin.read())
m = CacheManager(PerformanceConfig(cache_dir=directory, cache_size=0, enable_metrics=False))
t0 = time.perf_counter()
batched = m.get_vectors(keys)
t1 = time.perf_counter()
for k in keys:
    m.get(k, namespace="embeddings")
t2 = time.perf_counter()
assert len(batched) == len(keys), len(batched)
print(json.dumps({"batched_ms": (t1 - t0) * 1e3, "per_key_ms": (t2 - t1) * 1e3}))
m.close()
"""


@benchmark("cache", "1,000 cached embeddings read from disk in a fresh process")
def fresh_process_batched_read(ctx: BenchContext) -> Iterator[Result]:
    """One ``get_vectors`` of 1,000 keys, memory tier off, in a new interpreter."""
    n = 1000
    directory = ctx.workdir / "cache-fresh-read"
    keys = _keys(n)
    writer = _disk_only(directory)
    writer.set_vectors(dict(zip(keys, _vectors(n), strict=True)), model="m")
    writer.close()
    runs = []
    for _ in range(ctx.scale(5, quick=2)):
        out = subprocess.run(
            [sys.executable, "-c", _FRESH_READER, str(directory)],
            input=json.dumps(keys),
            capture_output=True,
            text=True,
            check=True,
        )
        runs.append(json.loads(out.stdout))
    batched = float(np.median([r["batched_ms"] for r in runs]))
    per_key = float(np.median([r["per_key_ms"] for r in runs]))
    yield Result.compare(
        "cache_fresh_process_1000_vectors_from_disk_ms",
        batched,
        "ms",
        baseline=("1,000 single get() calls, same process", per_key),
        better="lower",
        target=Target.value_at_most(10.0),
        notes=f"median of {len(runs)} fresh processes; memory tier off; 384-d float32",
    )


@benchmark("cache", "memory-tier overhead per cached item")
def memory_overhead(ctx: BenchContext) -> Iterator[Result]:
    """Tracemalloc over N items in the memory tier; overhead = allocated/N - payload."""
    n = ctx.scale(100_000, quick=10_000)
    payload = "x" * 100  # the user's value: 100 bytes
    keys = _keys(n, prefix="mem")
    config = PerformanceConfig(
        cache_disk_enabled=False,
        cache_size=n,
        cache_memory_max_bytes=4 * 2**30,
        enable_metrics=False,
    )
    manager = CacheManager(config)
    items = {k: payload for k in keys}
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    manager.set_many(items, namespace="query")
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    allocated = sum(s.size_diff for s in after.compare_to(before, "filename"))
    per_item = allocated / n
    assert manager.tiers[0].stats()["items"] == n
    yield Result.compare(
        "memory_overhead_per_cached_item_bytes",
        per_item - len(payload),
        "bytes",
        better="lower",
        target=Target.value_below(1024.0),
        notes=(
            f"{n:,} items of a {len(payload)}-byte value; includes the 22-byte envelope "
            f"header, the storage key and the LRU slot; allocated {per_item:.0f} B/item"
        ),
    )
    manager.close()


async def _lag_during(
    work: Callable[[], Awaitable[Any]], ticks_after: float = 0.0
) -> tuple[list[float], float]:
    """Run ``work`` beside a 1 ms ticker; returns the ticker's lateness (s) and work time."""
    lags: list[float] = []
    stop = False

    async def ticker() -> None:
        loop = asyncio.get_running_loop()
        while not stop:
            start = loop.time()
            await asyncio.sleep(0.001)
            lags.append(loop.time() - start - 0.001)

    tick = asyncio.create_task(ticker())
    await asyncio.sleep(0.01)
    t0 = time.perf_counter()
    await work()
    elapsed = time.perf_counter() - t0
    await asyncio.sleep(ticks_after)
    stop = True
    await tick
    return lags, elapsed


@benchmark("cache", "event-loop lag while 1,000 concurrent aget calls hit the disk tier")
def event_loop_lag(ctx: BenchContext) -> Iterator[Result]:
    """p99 lateness of a 1 ms ticker while 1,000 ``aget`` calls read from disk.

    Baseline, same run: the same ticker while 1,000 no-op coroutines are gathered, which
    is asyncio's own floor for "1,000 things at once" on this machine.
    """
    n = 1000
    directory = ctx.workdir / "cache-loop-lag"
    keys = _keys(n, prefix="lag")
    writer = _disk_only(directory)
    writer.set_vectors(dict(zip(keys, _vectors(n), strict=True)), model="m")
    writer.close()
    ours: list[float] = []
    floor: list[float] = []
    elapsed: list[float] = []
    batches = 0

    async def noop() -> None:
        await asyncio.sleep(0)

    for _ in range(ctx.scale(5, quick=2)):
        manager = _disk_only(directory)
        manager.namespace_version("embeddings")  # a running service has it cached

        async def gets(m: CacheManager = manager) -> None:
            got = await asyncio.gather(*(m.aget(k, namespace="embeddings") for k in keys))
            assert all(v is not None for v in got)

        lags, took = asyncio.run(_lag_during(gets))
        batches += sum(r.batches for r in manager._batchers.values())
        manager.close()
        ours += lags
        elapsed.append(took)

        async def noops() -> None:
            await asyncio.gather(*(noop() for _ in range(n)))

        floor += asyncio.run(_lag_during(noops, ticks_after=took))[0]
    p99 = float(np.percentile(np.array(ours) * 1e3, 99))
    p99_floor = float(np.percentile(np.array(floor) * 1e3, 99))
    yield Result.compare(
        "cache_event_loop_lag_p99_ms",
        p99,
        "ms",
        baseline=("1,000 gathered no-op coroutines (asyncio floor)", p99_floor),
        better="lower",
        target=Target.value_below(1.0),
        notes=(
            f"1 ms ticker, {len(ours)} ticks, p50 {np.median(ours) * 1e3:.2f} ms; 1,000 aget "
            f"per run took median {np.median(elapsed) * 1e3:.1f} ms in {batches} batched "
            "disk reads in total; disk I/O and decoding in a 2-thread pool"
        ),
    )
