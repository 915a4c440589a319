"""Micro-batching: counts of processor calls, per-caller results, errors, cancellation, close."""

from __future__ import annotations

import asyncio
import math
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rag_perf_plugins.batching import (
    PROFILES,
    AsyncBatchProcessor,
    BatcherClosed,
    BatchProcessor,
    BatchResultMismatch,
    ProviderProfile,
    is_batch_too_large,
)
from rag_perf_plugins.config import PerformanceConfig
from rag_perf_plugins.errors import ProviderError
from rag_perf_plugins.tracking import PerformanceTracker, get_performance_tracker


class Recorder:
    """A processor that records every batch it receives and doubles each item."""

    def __init__(self) -> None:
        self.batches: list[list[Any]] = []
        self.threads: list[int] = []
        self.lock = threading.Lock()

    def __call__(self, items: list[Any]) -> list[Any]:
        with self.lock:
            self.batches.append(list(items))
            self.threads.append(threading.get_ident())
        return [("out", item) for item in items]


class AsyncRecorder(Recorder):
    async def run(self, items: list[Any]) -> list[Any]:
        await asyncio.sleep(0)
        return self(items)


# --- async -------------------------------------------------------------------------------


async def test_100_concurrent_submits_make_at_most_ceil_plus_one_batches() -> None:
    rec = AsyncRecorder()
    batcher: AsyncBatchProcessor[int, Any] = AsyncBatchProcessor(10, 0.05, rec.run)
    results = await asyncio.gather(*(batcher.submit(i) for i in range(100)))
    await batcher.aclose()
    assert results == [("out", i) for i in range(100)]
    assert len(rec.batches) <= math.ceil(100 / 10) + 1
    assert sorted(x for b in rec.batches for x in b) == list(range(100))
    assert batcher.stats.batches == len(rec.batches)
    assert batcher.stats.flush_reasons["size"] == 10


async def test_100_identical_items_are_sent_as_one() -> None:
    rec = AsyncRecorder()
    tracker = PerformanceTracker()
    batcher: AsyncBatchProcessor[str, Any] = AsyncBatchProcessor(10, 0.01, rec.run, tracker=tracker)
    results = await asyncio.gather(*(batcher.submit("same") for _ in range(100)))
    await batcher.aclose()
    assert rec.batches == [["same"]]
    assert results == [("out", "same")] * 100
    assert batcher.stats.dedup_saved == 99
    stats = tracker.get_operation_stats("batch")
    assert stats.counters == {"batch.dedup_saved": 99}
    assert (stats.batches, stats.batch_size_max) == (1, 1)


async def test_equal_but_differently_typed_items_are_not_merged() -> None:
    rec = AsyncRecorder()
    batcher: AsyncBatchProcessor[object, Any] = AsyncBatchProcessor(10, 0.01, rec.run)
    results = await asyncio.gather(batcher.submit(1), batcher.submit(1.0), batcher.submit(True))
    await batcher.aclose()
    assert [type(r[1]) for r in results] == [int, float, bool]
    assert len(rec.batches[0]) == 3


async def test_unhashable_items_are_sent_one_per_caller() -> None:
    rec = AsyncRecorder()
    batcher: AsyncBatchProcessor[list[int], Any] = AsyncBatchProcessor(10, 0.01, rec.run)
    results = await asyncio.gather(batcher.submit([1]), batcher.submit([1]))
    await batcher.aclose()
    assert rec.batches == [[[1], [1]]]
    assert list(results) == [("out", [1]), ("out", [1])]


async def test_max_wait_flushes_a_partial_batch() -> None:
    rec = AsyncRecorder()
    batcher: AsyncBatchProcessor[int, Any] = AsyncBatchProcessor(100, 0.001, rec.run)
    assert await batcher.submit(7) == ("out", 7)
    assert batcher.stats.flush_reasons == {"time": 1}
    await batcher.aclose()


async def test_errors_reach_exactly_the_callers_of_that_batch() -> None:
    def fail_on_13(items: list[int]) -> list[int]:
        if 13 in items:
            raise RuntimeError("provider broke")
        return [i * 2 for i in items]

    batcher: AsyncBatchProcessor[int, int] = AsyncBatchProcessor(5, 10.0, fail_on_13)
    outcomes = await asyncio.gather(*(batcher.submit(i) for i in range(20)), return_exceptions=True)
    await batcher.aclose()
    for i, outcome in enumerate(outcomes):
        if 10 <= i < 15:
            assert isinstance(outcome, RuntimeError)
        else:
            assert outcome == i * 2
    assert batcher.stats.errors == 1


async def test_wrong_number_of_results_is_a_clear_error() -> None:
    batcher: AsyncBatchProcessor[int, int] = AsyncBatchProcessor(
        3, 10.0, lambda items: list(items)[:-1]
    )
    outcomes = await asyncio.gather(
        *(batcher.submit(i, f"id{i}") for i in range(3)), return_exceptions=True
    )
    await batcher.aclose()
    assert all(isinstance(o, BatchResultMismatch) for o in outcomes)
    assert "returned 2 results for a batch of 3 items" in str(outcomes[0])
    assert "id0" in str(outcomes[0])


async def test_a_caller_cancelled_before_the_flush_is_dropped_from_the_batch() -> None:
    rec = AsyncRecorder()
    batcher: AsyncBatchProcessor[str, Any] = AsyncBatchProcessor(10, 10.0, rec.run)
    tasks = [asyncio.create_task(batcher.submit(x)) for x in ("a", "b", "c")]
    await asyncio.sleep(0)
    assert batcher.pending == 3
    tasks[1].cancel()
    await asyncio.sleep(0)
    await batcher.aclose()
    assert rec.batches == [["a", "c"]]
    assert tasks[0].result() == ("out", "a")
    assert tasks[2].result() == ("out", "c")
    assert tasks[1].cancelled()


async def test_a_caller_cancelled_while_the_batch_runs_does_not_break_it() -> None:
    started = asyncio.Event()
    release = asyncio.Event()

    async def slow(items: list[str]) -> list[str]:
        started.set()
        await release.wait()
        return [x.upper() for x in items]

    batcher: AsyncBatchProcessor[str, str] = AsyncBatchProcessor(3, 10.0, slow)
    tasks = [asyncio.create_task(batcher.submit(x)) for x in ("a", "b", "c")]
    await started.wait()
    assert batcher.in_flight == 1
    tasks[0].cancel()
    release.set()
    assert await tasks[1] == "B"
    assert await tasks[2] == "C"
    assert tasks[0].cancelled()
    await batcher.aclose()


async def test_a_shared_item_stays_when_one_of_its_callers_cancels() -> None:
    rec = AsyncRecorder()
    batcher: AsyncBatchProcessor[str, Any] = AsyncBatchProcessor(10, 10.0, rec.run)
    first = asyncio.create_task(batcher.submit("x"))
    second = asyncio.create_task(batcher.submit("x"))
    await asyncio.sleep(0)
    first.cancel()
    await asyncio.sleep(0)
    await batcher.aclose()
    assert rec.batches == [["x"]]
    assert second.result() == ("out", "x")


async def test_aclose_flushes_pending_then_refuses() -> None:
    rec = AsyncRecorder()
    batcher: AsyncBatchProcessor[int, Any] = AsyncBatchProcessor(100, 3600.0, rec.run)
    tasks = [asyncio.create_task(batcher.submit(i)) for i in range(5)]
    await asyncio.sleep(0)
    assert rec.batches == []
    await batcher.aclose()
    assert [t.result() for t in tasks] == [("out", i) for i in range(5)]
    assert batcher.stats.flush_reasons == {"close": 1}
    with pytest.raises(BatcherClosed, match="closed"):
        await batcher.submit(1)
    assert "closed" in repr(batcher)


async def test_sync_processor_runs_off_the_event_loop() -> None:
    rec = Recorder()
    async with AsyncBatchProcessor(4, 0.001, rec) as batcher:
        await asyncio.gather(*(batcher.submit(i) for i in range(4)))
    assert rec.threads and threading.get_ident() not in rec.threads


async def test_submit_many_keeps_order_and_batches_by_size() -> None:
    rec = AsyncRecorder()
    async with AsyncBatchProcessor(4, 0.01, rec.run) as batcher:
        results = await batcher.submit_many(list(range(10)))
    assert results == [("out", i) for i in range(10)]
    assert [len(b) for b in rec.batches] == [4, 4, 2]


async def test_token_cap_cuts_batches() -> None:
    rec = AsyncRecorder()
    batcher: AsyncBatchProcessor[str, Any] = AsyncBatchProcessor(
        100, 0.01, rec.run, max_batch_tokens=10, token_counter=len
    )
    await asyncio.gather(*(batcher.submit(f"{i:04d}") for i in range(6)))
    await batcher.aclose()
    assert [len(b) for b in rec.batches] == [2, 2, 2]
    assert batcher.stats.flush_reasons["tokens"] == 2


async def test_default_token_estimate_and_openai_profile() -> None:
    rec = AsyncRecorder()
    batcher: AsyncBatchProcessor[str, Any] = AsyncBatchProcessor(
        5000, 10.0, rec.run, profile="openai"
    )
    assert batcher.batch_size == 2048
    assert batcher.max_batch_tokens == 300_000
    await batcher.aclose()
    with pytest.raises(TypeError, match="token_counter"):
        await AsyncBatchProcessor(10, 0.0, rec.run, max_batch_tokens=5).submit(123)


async def test_split_on_too_large_retries_halves() -> None:
    calls: list[int] = []

    async def limited(items: list[int]) -> list[int]:
        calls.append(len(items))
        if len(items) > 2:
            raise ProviderError("400: too many inputs in one request", status_code=400)
        return [i + 1 for i in items]

    batcher: AsyncBatchProcessor[int, int] = AsyncBatchProcessor(
        8, 10.0, limited, split_when=is_batch_too_large
    )
    results = await asyncio.gather(*(batcher.submit(i) for i in range(8)))
    await batcher.aclose()
    assert results == [i + 1 for i in range(8)]
    assert calls == [8, 4, 2, 2, 4, 2, 2]
    assert batcher.stats.splits == 3


async def test_repr_shows_live_state() -> None:
    batcher: AsyncBatchProcessor[int, Any] = AsyncBatchProcessor(64, 0.02, AsyncRecorder().run)
    task = asyncio.create_task(batcher.submit(1))
    await asyncio.sleep(0)
    assert repr(batcher) == (
        "<AsyncBatchProcessor [pending: 1, in flight: 0 | batch_size=64, max_wait_time=0.02]>"
    )
    await batcher.aclose()
    await task


@settings(max_examples=60, deadline=None)
@given(
    items=st.lists(st.integers(min_value=0, max_value=15), max_size=60),
    batch_size=st.integers(min_value=1, max_value=12),
    cancel=st.sets(st.integers(min_value=0, max_value=59), max_size=10),
)
def test_results_never_cross_callers_async(
    items: list[int], batch_size: int, cancel: set[int]
) -> None:
    async def scenario() -> None:
        async def shuffle_free(batch: list[int]) -> list[tuple[str, int]]:
            await asyncio.sleep(0)
            return [("r", x) for x in batch]

        batcher: AsyncBatchProcessor[int, tuple[str, int]] = AsyncBatchProcessor(
            batch_size, 0.0005, shuffle_free
        )
        tasks = [asyncio.create_task(batcher.submit(x)) for x in items]
        await asyncio.sleep(0)
        for i in cancel:
            if i < len(tasks):
                tasks[i].cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await batcher.aclose()
        for i, (task, x) in enumerate(zip(tasks, items, strict=True)):
            if task.cancelled():
                assert i in cancel
            else:
                assert task.result() == ("r", x)

    asyncio.run(scenario())


# --- sync --------------------------------------------------------------------------------


def _in_threads(n: int, fn: Any) -> list[Any]:
    barrier = threading.Barrier(n)

    def run(i: int) -> Any:
        barrier.wait()
        return fn(i)

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(run, range(n)))


def test_sync_100_concurrent_submits_make_at_most_ceil_plus_one_batches() -> None:
    rec = Recorder()
    # 100 distinct items fill ten batches by size; the long wait only guards stragglers.
    processor: BatchProcessor[int, Any] = BatchProcessor(10, 5.0, rec)
    results = _in_threads(100, processor.submit)
    processor.close()
    assert results == [("out", i) for i in range(100)]
    assert len(rec.batches) <= math.ceil(100 / 10) + 1
    assert sorted(x for b in rec.batches for x in b) == list(range(100))


def test_sync_100_identical_items_are_sent_as_one() -> None:
    rec = Recorder()
    processor: BatchProcessor[str, Any] = BatchProcessor(10, 3600.0, rec)
    with ThreadPoolExecutor(100) as pool:
        futures = [pool.submit(processor.submit, "same") for _ in range(100)]
        while processor.pending < 100:  # every caller has joined the one open batch
            threading.Event().wait(0.001)
        processor.close()
        results = [f.result(timeout=10) for f in futures]
    assert results == [("out", "same")] * 100
    assert rec.batches == [["same"]]
    assert processor.stats.dedup_saved == 99


def test_sync_seed_api_single_caller_waits_for_max_wait() -> None:
    def process_batch(items: list[str]) -> list[str]:
        return [f"processed_{item}" for item in items]

    processor = BatchProcessor(batch_size=10, max_wait_time=0.01, processor_func=process_batch)
    assert processor.submit("item1", "id1") == "processed_item1"
    assert processor.stats.flush_reasons == {"time": 1}
    processor.close()


def test_sync_errors_reach_exactly_the_batch_callers() -> None:
    def fail_on_odd_batch(items: list[int]) -> list[int]:
        if any(i % 2 for i in items):
            raise ValueError("odd")
        return list(items)

    processor: BatchProcessor[int, int] = BatchProcessor(2, 10.0, fail_on_odd_batch)
    evens = [2, 4]
    mixed = [6, 7]
    assert _in_threads(2, lambda i: _outcome(processor.submit, evens[i])) == [2, 4]
    failed = _in_threads(2, lambda i: _outcome(processor.submit, mixed[i]))
    assert all(isinstance(o, ValueError) for o in failed)
    assert _in_threads(2, lambda i: _outcome(processor.submit, evens[i] + 10)) == [12, 14]
    processor.close()
    assert processor.stats.errors == 1


def _outcome(fn: Any, arg: Any) -> Any:
    try:
        return fn(arg)
    except Exception as exc:
        return exc


def test_sync_close_flushes_a_waiting_leader_and_refuses() -> None:
    rec = Recorder()
    processor: BatchProcessor[int, Any] = BatchProcessor(100, 3600.0, rec)
    with ThreadPoolExecutor(1) as pool:
        fut = pool.submit(processor.submit, 5)
        while processor.pending == 0:
            threading.Event().wait(0.001)
        processor.close()
        assert fut.result(timeout=5) == ("out", 5)
    assert processor.stats.flush_reasons == {"close": 1}
    with pytest.raises(BatcherClosed):
        processor.submit(1)


def test_sync_submit_many_and_token_profile() -> None:
    rec = Recorder()
    with BatchProcessor(500, 0.01, rec, profile=ProviderProfile("tiny", max_inputs=3)) as p:
        assert p.submit_many(list(range(7))) == [("out", i) for i in range(7)]
    assert [len(b) for b in rec.batches] == [3, 3, 1]


def test_sync_split_on_too_large() -> None:
    calls: list[int] = []

    def limited(items: list[int]) -> list[int]:
        calls.append(len(items))
        if len(items) > 2:
            raise ProviderError("request exceeds max tokens", status_code=400)
        return [-i for i in items]

    with BatchProcessor(4, 10.0, limited, split_when=is_batch_too_large) as p:
        assert p.submit_many([1, 2, 3, 4]) == [-1, -2, -3, -4]
    assert calls == [4, 2, 2]


@settings(max_examples=15, deadline=None)
@given(
    items=st.lists(st.integers(min_value=0, max_value=6), min_size=1, max_size=24),
    batch_size=st.integers(min_value=1, max_value=8),
)
def test_results_never_cross_callers_sync(items: list[int], batch_size: int) -> None:
    processor: BatchProcessor[int, tuple[str, int]] = BatchProcessor(
        batch_size, 0.002, lambda batch: [("r", x) for x in batch]
    )
    results = _in_threads(len(items), lambda i: processor.submit(items[i]))
    processor.close()
    assert results == [("r", x) for x in items]


# --- options -----------------------------------------------------------------------------


def test_bad_options_are_named() -> None:
    rec = Recorder()
    with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
        BatchProcessor(0, 1.0, rec)
    with pytest.raises(ValueError, match="max_wait_time must be a number of seconds"):
        BatchProcessor(1, -1.0, rec)
    with pytest.raises(ValueError, match="profile must be one of cohere, custom, openai, voyage"):
        BatchProcessor(1, 1.0, rec, profile="azure")
    with pytest.raises(ValueError, match="max_batch_tokens"):
        BatchProcessor(1, 1.0, rec, max_batch_tokens=0)
    with pytest.raises(TypeError, match="use AsyncBatchProcessor"):
        BatchProcessor(1, 1.0, AsyncRecorder().run)  # type: ignore[arg-type]


def test_profiles_and_from_config() -> None:
    assert {name: (p.max_inputs, p.max_tokens) for name, p in PROFILES.items()} == {
        "openai": (2048, 300_000),
        "cohere": (96, None),
        "voyage": (128, None),
        "custom": (None, None),
    }
    config = PerformanceConfig(batch_size=500, max_wait_time=0.007, provider_profile="cohere")
    processor = BatchProcessor.from_config(config, Recorder())
    assert (processor.batch_size, processor.max_wait_time) == (96, 0.007)
    assert processor.max_batch_tokens == config.batch_max_tokens
    processor.close()


def test_from_config_records_nothing_when_metrics_are_off() -> None:
    quiet = BatchProcessor.from_config(
        PerformanceConfig(enable_metrics=False), Recorder(), operation="quiet-batch"
    )
    quiet.submit_many(["a", "b"])
    quiet.close()
    assert get_performance_tracker().get_operation_stats("quiet-batch").count == 0
    tracker = PerformanceTracker()
    chosen = BatchProcessor.from_config(
        PerformanceConfig(enable_metrics=False), Recorder(), operation="mine", tracker=tracker
    )
    chosen.submit_many(["a"])
    chosen.close()
    assert tracker.get_operation_stats("mine").count == 1


def test_stats_snapshot_and_the_real_tracker() -> None:
    rec = Recorder()
    tracker = PerformanceTracker()
    with BatchProcessor(3, 0.01, rec, tracker=tracker, operation="embed") as p:
        p.submit_many(["a", "b", "a", "c", "d"])
    snap = p.stats.as_dict()
    assert snap["batches"] == 2
    assert snap["items_sent"] == 4
    assert snap["dedup_saved"] == 1
    assert snap["batch_sizes"] == {1: 1, 3: 1}
    stats = tracker.get_operation_stats("embed")
    assert stats.count == 2 and stats.batches == 2 and stats.batch_size_max == 3
    assert stats.counters == {"batch.dedup_saved": 1}


def test_split_batches_applies_the_provider_limits() -> None:
    from rag_perf_plugins.batching import PROFILES, split_batches

    texts = [f"text number {i}" for i in range(200)]
    items, tokens = PROFILES["cohere"].limits(200, None)
    assert [len(b) for b in split_batches(texts, max_items=items, max_tokens=tokens)] == [96, 96, 8]
    items, tokens = PROFILES["openai"].limits(50, 300_000)
    assert [len(b) for b in split_batches(texts, max_items=items, max_tokens=tokens)] == [50] * 4
    tight = split_batches(["a " * 30, "b " * 30, "c"], max_items=10, max_tokens=40)
    assert [len(b) for b in tight] == [1, 2]  # token cap: the long texts do not share
    assert [t for batch in tight for t in batch] == ["a " * 30, "b " * 30, "c"]


def test_unbatched_embedding_calls_respect_the_provider_profile() -> None:
    from rag_perf_plugins import EmbeddingService, PerformanceConfig

    sizes: list[int] = []

    def embed(texts: list[str]) -> list[list[float]]:
        sizes.append(len(texts))
        return [[1.0] for _ in texts]

    config = PerformanceConfig(
        provider_profile="cohere", batch_size=200, enable_caching=False, enable_metrics=False
    )
    service = EmbeddingService(
        embed, provider="p", model="m", symmetric=True, config=config, batching=False
    )
    assert len(service.embed_documents([f"t{i}" for i in range(200)])) == 200
    assert sizes == [96, 96, 8]  # Cohere takes at most 96 texts per request
