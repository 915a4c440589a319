"""Tracker benchmarks: added cost per tracked call, memory over 1,000,000 calls, cardinality.

Run with ``rag-perf bench --only tracker`` (``--quick`` for a few seconds).

- ``tracker_added_cost_us``: the same tiny function called plain and through
  ``@track_performance`` in interleaved batches of 1,000 calls in the same run; the p50
  per-call time of each, and their difference (goal: at most 5 µs).
- ``tracker_record_us``: one ``tracker.record(...)`` with every field set (what the cache,
  gate and batcher call), and the added cost of a decorator on a disabled tracker.
- ``tracker_memory_growth_kb``: tracemalloc's traced memory between call 100,000 and call
  1,000,000 of ``record`` across 4 operations and realistic latency spread (goal: < 64 KB).
- ``tracker_cost_at_1000_names``: ``record`` cost with 1, 10, 100 and 1,000 operation
  names in rotation (the curve is in ``extra["curve"]``).

Per-call costs are this thread's CPU time (``time.thread_time``) per batch, not wall time:
on a shared, oversubscribed machine a 3 ms batch is preempted far more often than a 0.1 ms
one, which would bill the scheduler's waits to the tracker. Read p50s, not single runs.
"""

from __future__ import annotations

import gc
import random
import statistics
import time
import tracemalloc
from collections.abc import Callable, Iterator

from ...tracking import PerformanceTracker, track_performance
from ..registry import BenchContext, Result, Target, benchmark, curve

_TRACKER_CODE = tracemalloc.Filter(True, "*rag_perf_plugins*tracking*")
BATCH = 1_000  # calls per timed batch: long enough to dwarf perf_counter's own cost
NAME_COUNTS = (1, 10, 100, 1_000)


def _work(x: int) -> int:
    return x + 1


def _batch_us(fn: Callable[[int], int]) -> float:
    """CPU microseconds per call over one batch of BATCH calls (this thread only)."""
    start = time.thread_time()
    for i in range(BATCH):
        fn(i)
    return (time.thread_time() - start) / BATCH * 1e6


def _interleaved_p50(fns: list[Callable[[int], int]], rounds: int) -> list[float]:
    """p50 of per-call µs for each function, batches interleaved so noise hits all alike."""
    samples: list[list[float]] = [[] for _ in fns]
    for fn in fns:  # warm-up: first calls create operation state, fill caches
        _batch_us(fn)
    gc_was_enabled = gc.isenabled()
    gc.disable()  # a collection landing in one batch would skew only that function
    try:
        for _ in range(rounds):
            for i, fn in enumerate(fns):
                samples[i].append(_batch_us(fn))
    finally:
        if gc_was_enabled:
            gc.enable()
    return [statistics.median(s) for s in samples]


@benchmark("tracker", "added cost per tracked call vs the same untracked function")
def added_cost(ctx: BenchContext) -> Iterator[Result]:
    """Decorator overhead, record() cost and the disabled tracker's cost."""
    rounds = ctx.scale(400, quick=40)
    tracker = PerformanceTracker()
    disabled = PerformanceTracker(enabled=False)
    tracked = track_performance("bench.tracked", tracker=tracker)(_work)
    off = track_performance("bench.disabled", tracker=disabled)(_work)

    def record_full(i: int) -> int:
        tracker.record(
            "bench.record",
            0.0123,
            tokens_in=100,
            tokens_out=20,
            cache_hit=i & 1 == 0,
            queue_wait_s=0.001,
            batch_size=16,
            tokens_saved=5,
        )
        return i

    ctx.progress(f"{rounds} interleaved batches of {BATCH} calls")
    plain_us, tracked_us, off_us, record_us = _interleaved_p50(
        [_work, tracked, off, record_full], rounds
    )
    added = tracked_us - plain_us
    counted = tracker.get_operation_stats("bench.tracked").count
    yield Result.compare(
        "tracked_call_us",
        tracked_us,
        "µs/call",
        baseline=("same function untracked", plain_us),
        better="lower",
        notes=f"thread CPU time, p50 of {rounds} batches of {BATCH}; {counted:,} calls recorded",
    )
    yield Result.compare(
        "tracker_added_cost_us",
        added,
        "µs/call",
        better="lower",
        target=Target.value_at_most(5.0),
        notes="p50(tracked) - p50(untracked), thread CPU time, same run, interleaved batches",
        untracked_us=plain_us,
        tracked_us=tracked_us,
    )
    yield Result.compare(
        "tracker_record_us",
        record_us - plain_us,
        "µs/call",
        better="lower",
        target=Target.value_at_most(5.0),
        notes="tracker.record() with tokens, cache hit, queue wait, batch size set",
    )
    yield Result.compare(
        "tracker_disabled_added_cost_us",
        off_us - plain_us,
        "µs/call",
        better="lower",
        target=Target.value_at_most(1.0),
        notes="decorator on a tracker with enable_metrics=False",
    )


@benchmark("tracker", "memory growth over 1,000,000 recorded calls (tracemalloc)")
def memory_growth(ctx: BenchContext) -> Iterator[Result]:
    """Traced memory between call 100,000 and call 1,000,000 (quick: 5,000 and 50,000)."""
    total = ctx.scale(1_000_000, quick=50_000)
    mark = total // 10
    rng = random.Random(42)
    # Precomputed inputs: the loop itself must not allocate anything that survives.
    latencies = [rng.lognormvariate(-4.0, 1.5) for _ in range(4096)]
    names = ["llm.chat", "embed", "retrieve", "cache.get"]
    tracker = PerformanceTracker()
    record = tracker.record

    def calls(start: int, stop: int) -> None:
        for i in range(start, stop):
            record(
                names[i & 3],
                latencies[i & 4095],
                tokens_in=i & 255,
                cache_hit=(i & 7) == 0,
                queue_wait_s=latencies[(i * 7) & 4095],
                ttft_s=latencies[(i * 13) & 4095] if (i & 3) == 0 else None,
            )

    tracemalloc.start()
    try:
        ctx.progress(f"{mark:,} calls before the first snapshot")
        calls(0, mark)
        gc.collect()
        before, _ = tracemalloc.get_traced_memory()
        first = tracemalloc.take_snapshot().filter_traces([_TRACKER_CODE])
        ctx.progress(f"{total - mark:,} more calls")
        calls(mark, total)
        gc.collect()
        after, peak = tracemalloc.get_traced_memory()
        second = tracemalloc.take_snapshot().filter_traces([_TRACKER_CODE])
    finally:
        tracemalloc.stop()
    # The total includes everything this process allocated meanwhile (e.g. the progress
    # bar's refresh thread); the tracker-only figure counts memory allocated by its code.
    tracker_growth = sum(stat.size_diff for stat in second.compare_to(first, "filename"))
    counted = sum(tracker.get_operation_stats(n).count for n in names)
    growth_kb = (after - before) / 1024
    yield Result.compare(
        "tracker_memory_growth_kb",
        growth_kb,
        "KB",
        better="lower",
        target=Target.value_below(64.0),
        notes=f"whole process, between call {mark:,} and {total:,} ({counted:,} recorded); "
        f"allocated by tracker code: {tracker_growth / 1024:+.1f} KB; "
        f"peak traced {peak / 1024:.0f} KB",
        calls=total,
        traced_before_bytes=before,
        traced_after_bytes=after,
        tracker_code_growth_bytes=tracker_growth,
    )


@benchmark("tracker", "record() cost at 1, 10, 100, 1,000 operation names")
def cardinality(ctx: BenchContext) -> Iterator[Result]:
    """Per-call cost with K operation names in rotation; curve over K."""
    rounds = ctx.scale(200, quick=20)
    costs: list[float] = []
    for k in NAME_COUNTS:
        tracker = PerformanceTracker()
        names = [f"op{i}" for i in range(k)]
        record = tracker.record

        def call(
            i: int, names: list[str] = names, k: int = k, record: Callable[..., None] = record
        ) -> int:
            record(names[i % k], 0.004)
            return i

        def plain(i: int, names: list[str] = names, k: int = k) -> int:
            _ = names[i % k]
            return i

        ctx.progress(f"{k} names")
        plain_us, call_us = _interleaved_p50([plain, call], rounds)
        costs.append(call_us - plain_us)
    yield Result.compare(
        "tracker_cost_at_1000_names_us",
        costs[-1],
        "µs/call",
        baseline=("same tracker, 1 name", costs[0]),
        better="lower",
        target=Target.value_at_most(5.0),
        notes="record() cost net of the loop; "
        + ", ".join(f"{k} names: {c:.2f} µs" for k, c in zip(NAME_COUNTS, costs, strict=True)),
        curve=curve(
            list(NAME_COUNTS),
            {"record()": costs},
            x_label="operation names",
            y_label="µs per call",
            log_x=True,
        ),
    )
