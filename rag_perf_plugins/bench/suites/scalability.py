"""Scalability: disk-tier cost per ``get`` and ``set`` as the cache grows to 1M entries.

Run with ``rag-perf bench --only scalability`` (``--quick``: up to 30,000 entries). The
other two curves of the seed's "scalability" category live with the code they measure and
are not repeated here: throughput and p95 at concurrency 1..128 (``concurrency``,
``concurrency_throughput_qps``) and tracker cost at 1 to 1,000 operation names
(``tracker``, ``tracker_cost_at_1000_names_us``).

The workload (documented in ``docs/benchmarks.md``, "Scalability curves"): a real
:class:`~rag_perf_plugins.cache.CacheManager` in a temporary directory with the memory tier
off (``cache_size=0``), so every call reaches the diskcache tier; it is filled to 1,000,
10,000, 100,000 and 1,000,000 entries (``set_many`` batches of 10,000; values are 100-byte
strings in the ``query`` namespace, keys are SHA-256 hex digests). At each size:

- ``get``: single ``manager.get`` calls of existing keys drawn uniformly at random, timed
  in batches of :data:`BATCH` calls; the figure is the median batch's µs per call;
- ``set``: single ``manager.set`` calls of new keys, timed the same way.

Each point also records the bulk-load cost (``fill_us_per_entry``: ``set_many`` seconds per
entry added to reach that size). How cost grows is summarised by the least-squares slope
``b`` of log(cost) against log(entries) (cost ~ entries**b; 0 is flat). Not measured: the
memory tier (constant-time dict), eviction at the size bound (the bound is set far above the
data), or a cold OS page cache (the files were just written, so they are in it).
"""

from __future__ import annotations

import hashlib
import math
import random
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from ...cache import CacheManager
from ...config import PerformanceConfig
from ..registry import BenchContext, Result, benchmark, curve

__all__ = ["BATCH", "growth_exponent", "median_batch_us"]

SIZES = (1_000, 10_000, 100_000, 1_000_000)
QUICK_SIZES = (1_000, 3_000, 10_000, 30_000)
BATCH = 50
FILL_BATCH = 10_000
NAMESPACE = "query"
VALUE = "v" * 100


def _key(i: int) -> str:
    return hashlib.sha256(b"scalability %d" % i).hexdigest()


def growth_exponent(sizes: Sequence[float], costs: Sequence[float]) -> float:
    """Least-squares slope of log(cost) on log(size): cost grows like size**slope.

    Example: ``growth_exponent([1e3, 1e4], [2.0, 4.0])`` is about 0.30.

    Raises:
        ValueError: fewer than two points, lengths differ, or a value is not positive.
    """
    if len(sizes) != len(costs) or len(sizes) < 2:
        msg = f"need two or more (size, cost) pairs, got {len(sizes)} sizes, {len(costs)} costs"
        raise ValueError(msg)
    if min(sizes) <= 0 or min(costs) <= 0:
        msg = "sizes and costs must be positive"
        raise ValueError(msg)
    slope, _intercept = np.polyfit(np.log(sizes), np.log(costs), 1)
    return float(slope)


def median_batch_us(fn: Callable[[int], object], args: Sequence[int], *, batch: int) -> float:
    """Median over batches of ``batch`` calls of ``fn(arg)``: µs per call (wall time).

    The median of short batches keeps a preempted batch on a shared machine from deciding
    the figure. ``args`` are consumed in order, one per call.
    """
    if batch < 1 or len(args) < batch:
        msg = f"need at least one batch of {batch} calls, got {len(args)} arguments"
        raise ValueError(msg)
    per_call: list[float] = []
    for start in range(0, len(args) - batch + 1, batch):
        chunk = args[start : start + batch]
        t0 = time.perf_counter()
        for a in chunk:
            fn(a)
        per_call.append((time.perf_counter() - t0) / batch * 1e6)
    return float(np.median(per_call))


def _reader(manager: CacheManager, keys: Sequence[str]) -> Callable[[int], object]:
    return lambda j: manager.get(keys[j], namespace=NAMESPACE)


def _writer(manager: CacheManager, keys: Sequence[str]) -> Callable[[int], object]:
    return lambda j: manager.set(keys[j], VALUE, namespace=NAMESPACE)


def _grow_curve(ctx: BenchContext) -> list[dict[str, Any]]:
    sizes = QUICK_SIZES if ctx.quick else SIZES
    ops = ctx.scale(2_000, quick=500)
    directory = ctx.workdir / "scalability-disk"
    shutil.rmtree(directory, ignore_errors=True)
    manager = CacheManager(
        PerformanceConfig(
            cache_dir=str(directory),
            cache_size=0,
            cache_ttl=None,
            cache_max_bytes=16 * 2**30,
            enable_metrics=False,
        )
    )
    rng = random.Random(15)
    points: list[dict[str, Any]] = []
    filled = 0  # entries 0..filled-1 hold VALUE
    extra_keys = 0  # keys written by the set measurements, on top of filled
    try:
        for size in sizes:
            target = size - extra_keys
            added = max(0, target - filled)
            fill_started = time.perf_counter()
            while filled < target:
                upto = min(target, filled + FILL_BATCH)
                manager.set_many({_key(i): VALUE for i in range(filled, upto)}, namespace=NAMESPACE)
                filled = upto
                ctx.progress(f"filling the disk tier: {filled + extra_keys:,} / {size:,}")
            fill_s = time.perf_counter() - fill_started
            ctx.progress(f"{size:,} entries: {ops} gets, {ops // 4} sets")
            reads = [rng.randrange(filled) for _ in range(ops)]
            keys = [_key(i) for i in reads]
            missing = sum(manager.get(k, namespace=NAMESPACE) is None for k in keys[:BATCH])
            if missing:
                msg = f"{missing} of {BATCH} filled keys missing at {size} entries (evicted?)"
                raise RuntimeError(msg)
            get_us = median_batch_us(
                _reader(manager, keys),
                range(ops),
                batch=BATCH,
            )
            sets = ops // 4
            new = [f"new-{size}-{j}" for j in range(sets)]
            set_us = median_batch_us(
                _writer(manager, new),
                range(sets),
                batch=BATCH,
            )
            extra_keys += sets
            points.append(
                {
                    "entries": size,
                    "get_us": round(get_us, 2),
                    "set_us": round(set_us, 2),
                    "fill_s": round(fill_s, 2),
                    # set_many in batches of FILL_BATCH: bulk-load cost per entry added.
                    "fill_us_per_entry": round(fill_s / added * 1e6, 2) if added else None,
                }
            )
    finally:
        manager.close()
        shutil.rmtree(directory, ignore_errors=True)
    return points


@benchmark("scalability", "disk-tier get/set cost at 1k, 10k, 100k and 1M entries")
def disk_cache_growth(ctx: BenchContext) -> Iterator[Result]:
    """µs per disk-tier get and set as the entry count grows (curve in extra)."""
    points = _grow_curve(ctx)
    sizes = [float(p["entries"]) for p in points]
    gets = [float(p["get_us"]) for p in points]
    sets = [float(p["set_us"]) for p in points]
    b_get, b_set = growth_exponent(sizes, gets), growth_exponent(sizes, sets)
    largest, smallest = int(sizes[-1]), int(sizes[0])
    data = curve(
        sizes,
        {"get": gets, "set": sets},
        x_label="entries in the disk tier",
        y_label="µs per call",
        log_x=True,
        log_y=True,
    )
    span = math.log10(largest / smallest)
    for name, costs, b in (("get", gets, b_get), ("set", sets, b_set)):
        extra: dict[str, Any] = {"growth_exponent": round(b, 4), "points": points}
        if name == "get":
            extra["curve"] = data  # one plot with both series, drawn once
        yield Result.compare(
            f"disk_cache_{name}_us",
            costs[-1],
            "µs/call",
            baseline=(f"same tier at {smallest:,} entries", costs[0]),
            better="lower",
            notes=(
                f"single manager.{name}() at {largest:,} entries, memory tier off; "
                f"cost ~ entries^{b:.3f} over {span:.0f} decades "
                f"(x{costs[-1] / costs[0]:.2f} from {smallest:,} to {largest:,})"
            ),
            **extra,
        )
