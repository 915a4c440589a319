"""PerformanceTracker: accuracy, concurrency, decorators, streams, exporters."""

from __future__ import annotations

import asyncio
import gc
import json
import math
import threading
from collections.abc import AsyncIterator, Generator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from rag_perf_plugins._clock import FakeClock
from rag_perf_plugins.config import PerformanceConfig
from rag_perf_plugins.errors import ConfigError
from rag_perf_plugins.tracking import (
    STATS_SCHEMA,
    LogHistogram,
    OTelExporter,
    PerformanceTracker,
    get_performance_tracker,
    set_performance_tracker,
    track,
    track_performance,
)

QUANTILES = (0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999)


# --- histogram ----------------------------------------------------------------------------
def _sample(distribution: str, rng: np.random.Generator, n: int) -> Any:
    if distribution == "lognormal":
        return rng.lognormal(-3.0, 1.2, n)
    if distribution == "exponential":
        return rng.exponential(0.05, n)
    if distribution == "uniform":
        return rng.uniform(0.001, 2.0, n)
    if distribution == "pareto":
        return (rng.pareto(1.5, n) + 1) * 0.01
    return np.concatenate([rng.normal(0.02, 0.002, n // 2), rng.normal(1.5, 0.1, n // 2)])


def _points(metric: Any) -> list[Any]:
    return list(metric.data.data_points)


@pytest.mark.parametrize(
    "distribution",
    ["lognormal", "exponential", "uniform", "pareto", "bimodal"],
)
def test_percentiles_within_one_percent_of_exact(distribution: str) -> None:
    rng = np.random.default_rng(7)
    n = 50_000
    samples = _sample(distribution, rng, n)
    samples = np.abs(samples) + 1e-6
    h = LogHistogram()
    for x in samples.tolist():
        h.add(x)
    for q in QUANTILES:
        exact = float(np.quantile(samples, q, method="lower"))
        assert abs(h.quantile(q) - exact) / exact <= 0.01, (q, h.quantile(q), exact)
    assert h.quantile(1.0) == samples.max()
    assert h.quantile(0.0) == samples.min()
    assert h.count == n
    assert h.mean == pytest.approx(samples.mean())


def test_histogram_merge_equals_one_histogram_of_everything() -> None:
    rng = np.random.default_rng(3)
    a, b = rng.lognormal(-2, 1, 10_000), rng.lognormal(0, 0.5, 10_000)
    ha, hb, hall = LogHistogram(), LogHistogram(), LogHistogram()
    for x in a.tolist():
        ha.add(x)
        hall.add(x)
    for x in b.tolist():
        hb.add(x)
        hall.add(x)
    ha.merge(hb)
    merged, single = ha.to_dict(), hall.to_dict()
    assert merged["buckets"] == single["buckets"]
    assert (merged["count"], merged["min"], merged["max"]) == (
        single["count"],
        single["min"],
        single["max"],
    )
    assert merged["sum"] == pytest.approx(single["sum"])
    for q in QUANTILES:
        assert ha.quantile(q) == hall.quantile(q)
    restored = LogHistogram.from_dict(json.loads(json.dumps(ha.to_dict())))
    assert restored.quantile(0.99) == ha.quantile(0.99)
    with pytest.raises(ValueError, match="relative_accuracy"):
        ha.merge(LogHistogram(relative_accuracy=0.01))


def test_histogram_memory_is_bounded_by_range_not_count() -> None:
    h = LogHistogram()
    for i in range(20_001):
        h.add(10 ** (i / 20_000 * 12 - 9))  # every bucket from 1 ns to 1000 s
    before = h.bucket_count
    for i in range(200_000):
        h.add(10 ** ((i % 997) / 997 * 12 - 9))  # ten times more values, same range
    assert h.bucket_count == before
    assert before < 3000  # ~1 % steps over 12 decades
    h.add(0.0)
    h.add(1e12)  # clamped into the top bucket, max stays exact
    assert h.max == 1e12
    assert h.quantile(0.0) == 0.0


def test_histogram_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="relative_accuracy"):
        LogHistogram(relative_accuracy=0.0)
    with pytest.raises(ValueError, match="q must be"):
        LogHistogram().quantile(1.5)
    assert math.isnan(LogHistogram().quantile(0.5))
    assert "empty" in repr(LogHistogram())


# --- tracker ------------------------------------------------------------------------------
def test_record_fills_every_statistic(fake_clock: FakeClock) -> None:
    tracker = PerformanceTracker(clock=fake_clock, window_s=10.0)
    for i in range(10):
        fake_clock.advance(0.5)
        tracker.record(
            "llm",
            0.1 * (i + 1),
            error=i == 0,
            tokens_in=100,
            tokens_out=10,
            cache_hit=i % 2 == 0,
            queue_wait_s=0.01,
            batch_size=4,
            retries=1 if i < 3 else 0,
            tokens_saved=5,
            ttft_s=0.05,
        )
    tracker.incr("cache.errors", operation="llm")
    tracker.incr("pool.opened", 3)
    s = tracker.get_operation_stats("llm")
    assert (s.count, s.errors, s.tokens_in, s.tokens_out) == (10, 1, 1000, 100)
    assert s.success_rate == 0.9
    assert (s.cache_hits, s.cache_misses, s.cache_hit_rate) == (5, 5, 0.5)
    assert (s.retries, s.tokens_saved, s.batches, s.batch_size_mean) == (3, 50, 10, 4.0)
    assert s.latency_max_s == pytest.approx(1.0)
    assert s.latency_p50_s == pytest.approx(0.5, rel=0.01)
    assert s.queue_wait_p95_s == pytest.approx(0.01, rel=0.01)
    assert s.ttft_p50_s == pytest.approx(0.05, rel=0.01)
    assert s.counters == {"cache.errors": 1}
    # 10 calls over the last 5 s of a 10 s window -> 2 calls/s
    assert s.throughput_per_s == pytest.approx(2.0, rel=0.15)
    metrics = tracker.get_metrics()
    assert metrics["counters"] == {"pool.opened": 3}
    assert metrics["operations"]["llm"]["count"] == 10
    assert metrics["process"]["rss_bytes"] > 0
    assert tracker.get_metrics("llm")["errors"] == 1
    assert "operations: 1, calls: 10" in repr(tracker)


def test_counters_given_to_record_add_up_as_incr_does() -> None:
    recorded, incremented = PerformanceTracker(), PerformanceTracker()
    for n in (1, 3):
        recorded.record("embed", 0.01, counters={"cache.hits": n, "coalesced": 1})
        incremented.record("embed", 0.01)
        incremented.incr("cache.hits", n, operation="embed")
        incremented.incr("coalesced", 1, operation="embed")
    recorded.record("embed", 0.01, counters={})
    incremented.record("embed", 0.01)
    assert recorded.get_operation_stats("embed").counters == {"cache.hits": 4, "coalesced": 2}
    strip = {"latency", "throughput"}
    mine, theirs = recorded.get_metrics("embed"), incremented.get_metrics("embed")
    assert {k: v for k, v in mine.items() if not any(s in k for s in strip)} == {
        k: v for k, v in theirs.items() if not any(s in k for s in strip)
    }
    assert recorded.counters() == {}  # operation counters, not process-wide ones


def test_throughput_window_slides(fake_clock: FakeClock) -> None:
    tracker = PerformanceTracker(clock=fake_clock, window_s=60.0)
    for _ in range(120):
        tracker.record("op", 0.001)
        fake_clock.advance(0.5)  # 2 calls/s for 60 s
    assert tracker.get_operation_stats("op").throughput_per_s == pytest.approx(2.0, rel=0.05)
    fake_clock.advance(120.0)  # nothing for two windows
    assert tracker.get_operation_stats("op").throughput_per_s == 0.0


def test_unknown_operation_and_reset(fake_clock: FakeClock) -> None:
    tracker = PerformanceTracker(clock=fake_clock)
    empty = tracker.get_operation_stats("never")
    assert empty.count == 0 and math.isnan(empty.latency_p50_s)
    assert tracker.get_metrics("never")["latency_p50_s"] is None
    tracker.record("op", 0.2)
    tracker.incr("x")
    tracker.reset()
    assert tracker.operations == [] and tracker.counters() == {}


def test_disabled_tracker_records_nothing_and_calls_through() -> None:
    tracker = PerformanceTracker.from_config(PerformanceConfig.load(env={}, enable_metrics=False))
    calls = []

    @track_performance("op", tracker=tracker)
    def f(x: int) -> int:
        calls.append(x)
        return x * 2

    assert f(2) == 4 and calls == [2]
    tracker.record("op", 1.0)
    tracker.incr("c")
    with tracker.track("op"):
        pass
    assert tracker.operations == [] and tracker.counters() == {}


def test_bad_arguments_have_clear_messages() -> None:
    with pytest.raises(ValueError, match="window_s"):
        PerformanceTracker(window_s=0)
    with pytest.raises(ValueError, match="operation"):
        track_performance("")
    with pytest.raises(ValueError, match="operation"):
        PerformanceTracker().record("", 0.1)
    with pytest.raises(TypeError, match="PerformanceTracker"):
        set_performance_tracker("nope")  # type: ignore[arg-type]


def test_eight_threads_lose_no_count() -> None:
    tracker = PerformanceTracker()
    per_thread, threads = 20_000, 8
    barrier = threading.Barrier(threads)

    def work(i: int) -> None:
        barrier.wait()
        for j in range(per_thread):
            tracker.record(f"op{j % 3}", 0.001, tokens_in=1, cache_hit=True)
            tracker.incr("events")
            tracker.incr("events", operation="op0")

    pool = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    total = sum(tracker.get_operation_stats(op).count for op in tracker.operations)
    tokens = sum(tracker.get_operation_stats(op).tokens_in for op in tracker.operations)
    assert total == tokens == per_thread * threads
    assert tracker.counters() == {"events": per_thread * threads}
    assert tracker.get_operation_stats("op0").counters == {"events": per_thread * threads}
    assert tracker.histograms("op1")["latency"].count == tracker.get_operation_stats("op1").count


async def test_five_hundred_tasks_lose_no_count() -> None:
    tracker = PerformanceTracker()

    @track_performance("task", tracker=tracker)
    async def step(i: int) -> int:
        await asyncio.sleep(0)
        return i

    async def worker(i: int) -> None:
        for _ in range(20):
            await step(i)
            async with tracker.track("block") as call:
                await asyncio.sleep(0)
                call.tokens_out = 2

    await asyncio.gather(*(worker(i) for i in range(500)))
    assert tracker.get_operation_stats("task").count == 10_000
    assert tracker.get_operation_stats("block").tokens_out == 20_000


# --- decorators and context managers ------------------------------------------------------
def test_sync_function_timed_and_errors_counted(fake_clock: FakeClock) -> None:
    tracker = PerformanceTracker(clock=fake_clock)

    @track_performance("work", tracker=tracker)
    def work(fail: bool) -> str:
        fake_clock.advance(0.25)
        if fail:
            raise RuntimeError("boom")
        return "ok"

    assert work(False) == "ok"
    with pytest.raises(RuntimeError):
        work(True)
    s = tracker.get_operation_stats("work")
    assert (s.count, s.errors) == (2, 1)
    assert s.latency_max_s == pytest.approx(0.25)
    assert work.__name__ == "work"


async def test_async_function_timed(fake_clock: FakeClock) -> None:
    tracker = PerformanceTracker(clock=fake_clock)

    @track_performance("fetch", tracker=tracker)
    async def fetch() -> int:
        await fake_clock.asleep(0.5)
        return 1

    assert await fetch() == 1
    assert tracker.get_operation_stats("fetch").latency_max_s == pytest.approx(0.5)


def test_sync_generator_ttft_and_completion(fake_clock: FakeClock) -> None:
    tracker = PerformanceTracker(clock=fake_clock)

    @track_performance("stream", tracker=tracker)
    def stream(n: int) -> Iterator[int]:
        for i in range(n):
            fake_clock.advance(0.1 if i == 0 else 0.01)
            yield i

    assert list(stream(5)) == [0, 1, 2, 3, 4]
    s = tracker.get_operation_stats("stream")
    assert (s.count, s.errors, s.streams_abandoned) == (1, 0, 0)
    assert s.ttft_p50_s == pytest.approx(0.1, rel=0.01)
    assert s.latency_max_s == pytest.approx(0.14)


def test_sync_generator_abandoned_and_failed(fake_clock: FakeClock) -> None:
    tracker = PerformanceTracker(clock=fake_clock)
    closed: list[bool] = []

    @track_performance("stream", tracker=tracker)
    def stream() -> Generator[int, None, None]:
        try:
            for i in range(100):
                fake_clock.advance(0.01)
                if i == 50:
                    raise ValueError("broken stream")
                yield i
        finally:
            closed.append(True)

    gen = stream()
    for i in gen:
        if i == 2:
            break
    gen.close()
    assert closed == [True]  # the wrapped generator was closed too
    s = tracker.get_operation_stats("stream")
    assert (s.count, s.streams_abandoned, s.errors) == (1, 1, 0)
    assert s.latency_max_s == pytest.approx(0.03)

    abandoned_by_gc = stream()
    next(abandoned_by_gc)
    del abandoned_by_gc
    gc.collect()
    assert tracker.get_operation_stats("stream").streams_abandoned == 2

    with pytest.raises(ValueError, match="broken"):
        list(stream())
    s = tracker.get_operation_stats("stream")
    assert (s.count, s.errors, s.streams_abandoned) == (3, 1, 2)


async def test_async_generator_ttft_abandoned_and_failed(fake_clock: FakeClock) -> None:
    tracker = PerformanceTracker(clock=fake_clock)

    @track_performance("astream", tracker=tracker)
    async def astream(n: int, fail_at: int = -1) -> AsyncIterator[str]:
        for i in range(n):
            await fake_clock.asleep(0.2 if i == 0 else 0.05)
            if i == fail_at:
                raise ConnectionError("dropped")
            yield f"tok{i}"

    assert [t async for t in astream(3)] == ["tok0", "tok1", "tok2"]
    agen = astream(10)
    async for tok in agen:
        if tok == "tok1":
            break
    await agen.aclose()  # type: ignore[attr-defined]
    with pytest.raises(ConnectionError):
        async for _ in astream(5, fail_at=2):
            pass
    s = tracker.get_operation_stats("astream")
    assert (s.count, s.errors, s.streams_abandoned) == (3, 1, 1)
    assert s.ttft_p50_s == pytest.approx(0.2, rel=0.01)
    assert s.latency_max_s == pytest.approx(0.3, rel=0.01)


async def test_track_handle_records_details(fake_clock: FakeClock) -> None:
    tracker = PerformanceTracker(clock=fake_clock)
    with tracker.track("embed") as call:
        fake_clock.advance(0.04)
        call.batch_size = 32
        call.queue_wait_s = 0.003
        call.tokens_in = 640
        call.cache_hit = False
        call.first_token()
    async with tracker.track("embed") as call:
        call.cache_hit = True
        call.tokens_saved = 640
    with pytest.raises(KeyError), tracker.track("embed"):
        raise KeyError("x")
    s = tracker.get_operation_stats("embed")
    assert (s.count, s.errors, s.cache_hits, s.cache_misses, s.tokens_saved) == (3, 1, 1, 1, 640)
    assert s.batch_size_max == 32
    assert s.queue_wait_p50_s == pytest.approx(0.003, rel=0.01)
    assert s.ttft_p50_s == pytest.approx(0.04, rel=0.01)
    assert "done" in repr(call)


def test_global_tracker_is_swappable() -> None:
    mine = PerformanceTracker()
    previous = set_performance_tracker(mine)
    try:

        @track_performance("g")
        def g() -> None:
            pass

        g()
        with track("h"):
            pass
        assert get_performance_tracker() is mine
        assert mine.operations == ["g", "h"]
    finally:
        set_performance_tracker(previous)


def test_the_process_tracker_is_built_from_the_loaded_config(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # As get_cache_manager() does: the file and RAG_PERF_* variables apply, so
    # metrics_window_seconds and enable_metrics reach the tracker every component shares.
    previous = set_performance_tracker(None)
    try:
        default = get_performance_tracker()
        assert (default.enabled, default.window_s) == (True, 60.0)
        assert get_performance_tracker() is default  # built once

        monkeypatch.setenv("RAG_PERF_METRICS_WINDOW_SECONDS", "10")
        monkeypatch.setenv("RAG_PERF_ENABLE_METRICS", "false")
        assert set_performance_tracker(None) is default
        tracker = get_performance_tracker()
        assert (tracker.enabled, tracker.window_s) == (False, 10.0)

        @track_performance("off")
        def off() -> None:
            pass

        off()
        assert tracker.operations == []  # enable_metrics: false records nothing

        monkeypatch.delenv("RAG_PERF_ENABLE_METRICS")
        monkeypatch.delenv("RAG_PERF_METRICS_WINDOW_SECONDS")
        path = tmp_path / "perf.yaml"
        path.write_text("metrics_window_seconds: 30\n")
        monkeypatch.setenv("RAG_PERF_CONFIG", str(path))
        set_performance_tracker(None)
        assert get_performance_tracker().window_s == 30.0

        monkeypatch.setenv("RAG_PERF_METRICS_WINDOW_SECONDS", "-1")
        set_performance_tracker(None)
        with pytest.raises(ConfigError, match="metrics_window_seconds"):
            get_performance_tracker()
        monkeypatch.delenv("RAG_PERF_METRICS_WINDOW_SECONDS")
        assert get_performance_tracker().window_s == 30.0  # nothing was kept: tried again
    finally:
        set_performance_tracker(previous)


# --- exporters ----------------------------------------------------------------------------
def _busy_tracker(clock: FakeClock) -> PerformanceTracker:
    tracker = PerformanceTracker(clock=clock)
    for i in range(100):
        clock.advance(0.1)
        tracker.record(
            'llm "chat"\n',  # label escaping
            0.01 * (i + 1),
            error=i % 10 == 0,
            tokens_in=10,
            tokens_out=2,
            cache_hit=i % 4 == 0,
            ttft_s=0.005,
        )
    tracker.record("embed", 0.02, batch_size=8, queue_wait_s=0.001)
    tracker.incr("cache.errors")
    tracker.incr("coalesced", 4, operation="embed")
    return tracker


def test_json_export_round_trips(fake_clock: FakeClock) -> None:
    tracker = _busy_tracker(fake_clock)
    data = json.loads(json.dumps(tracker.to_dict(), allow_nan=False))
    assert data["schema"] == STATS_SCHEMA
    llm = data["operations"]['llm "chat"\n']
    assert llm["count"] == 100 and llm["errors"] == 10 and llm["tokens_in"] == 1000
    hist = LogHistogram.from_dict(llm["histograms"]["latency"])
    assert hist.quantile(0.5) == pytest.approx(0.5, rel=0.01)
    assert data["counters"] == {"cache.errors": 1}


def test_prometheus_text_parses(fake_clock: FakeClock) -> None:
    from rag_perf_plugins.metrics import to_prometheus

    text = to_prometheus(_busy_tracker(fake_clock))
    families = {f.name: f for f in text_string_to_metric_families(text)}
    latency = families["rag_perf_operation_latency_seconds"]
    assert latency.type == "summary"
    samples = {
        (
            s.name,
            s.labels.get("operation"),
            s.labels.get("cache"),
            s.labels.get("quantile"),
        ): s.value
        for s in latency.samples
    }
    op = 'llm "chat"\n'
    assert samples[("rag_perf_operation_latency_seconds_count", op, "all", None)] == 100
    assert samples[("rag_perf_operation_latency_seconds", op, "all", "0.5")] == pytest.approx(
        0.5, rel=0.01
    )
    tokens = {
        s.labels["direction"]: s.value
        for s in families["rag_perf_tokens"].samples
        if s.labels["operation"] == op and s.name.endswith("_total")
    }
    assert tokens == {"input": 1000, "output": 200}
    calls = {
        s.labels["cache"]: s.value
        for s in families["rag_perf_calls"].samples
        if s.labels["operation"] == op and s.name.endswith("_total")
    }
    assert calls == {"hit": 25, "miss": 75, "none": 0}
    events = {
        (s.labels["event"], s.labels.get("operation")): s.value
        for s in families["rag_perf_events"].samples
        if s.name.endswith("_total")
    }
    assert events == {("cache.errors", ""): 1, ("coalesced", "embed"): 4}
    assert families["process_resident_memory_bytes"].samples[0].value > 0


def test_opentelemetry_exporter_uses_genai_names(fake_clock: FakeClock) -> None:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    tracker = PerformanceTracker(clock=fake_clock)
    tracker.record("before", 0.1, cache_hit=True)
    exporter = OTelExporter(tracker, meter_provider=provider)
    try:
        for _ in range(5):
            tracker.record("chat", 0.2, tokens_in=30, tokens_out=7, ttft_s=0.05, cache_hit=False)
        tracker.record("chat", 0.3, error=True)
        data = reader.get_metrics_data()
        assert data is not None
        metrics = {
            m.name: m for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics
        }
        duration = metrics["gen_ai.client.operation.duration"]
        assert duration.unit == "s"
        counts = {(p.attributes or {}).get("error.type"): p.count for p in _points(duration)}
        assert counts == {None: 5, "_OTHER": 1}
        usage = {
            (p.attributes or {})["gen_ai.token.type"]: p.sum
            for p in _points(metrics["gen_ai.client.token.usage"])
        }
        assert usage == {"input": 150, "output": 35}
        assert "gen_ai.client.operation.time_to_first_chunk" in metrics
        lookups = {
            (
                (p.attributes or {})["gen_ai.operation.name"],
                (p.attributes or {})["rag_perf.cache.result"],
            ): p.value
            for p in _points(metrics["rag_perf.cache.lookups"])
        }
        assert lookups[("before", "hit")] == 1 and lookups[("chat", "miss")] == 5
        assert "process.memory.usage" in metrics
        assert "attached" in repr(exporter)
    finally:
        exporter.close()
        provider.shutdown()
    tracker.record("chat", 0.1)  # no longer forwarded; must not fail after shutdown
    assert "closed" in repr(exporter)


# --- memory -------------------------------------------------------------------------------
def _record_many(tracker: PerformanceTracker, start: int, stop: int) -> None:
    import random

    rng = random.Random(1)
    latencies = [rng.lognormvariate(-4.0, 1.5) for _ in range(4096)]
    names = ["llm", "embed", "retrieve", "cache.get"]
    record = tracker.record
    for i in range(start, stop):
        record(
            names[i & 3],
            latencies[i & 4095],
            tokens_in=i & 255,
            cache_hit=(i & 7) == 0,
            queue_wait_s=latencies[(i * 7) & 4095],
            ttft_s=latencies[(i * 13) & 4095] if (i & 3) == 0 else None,
        )


def test_traced_memory_does_not_grow_per_call() -> None:
    # The 100,000 -> 1,000,000 figure is `rag-perf bench --only tracker` (tracemalloc makes
    # each call ~50x slower); here the same loop over a shorter stretch. Any per-call
    # allocation that survives (even 1 byte) would show up as >= 20 KB.
    import tracemalloc

    tracker = PerformanceTracker()
    tracemalloc.start()
    try:
        _record_many(tracker, 0, 5_000)
        gc.collect()
        before, _ = tracemalloc.get_traced_memory()
        _record_many(tracker, 5_000, 25_000)
        gc.collect()
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert after - before < 4 * 1024


def test_histogram_storage_is_fixed_after_warm_up() -> None:
    tracker = PerformanceTracker()
    _record_many(tracker, 0, 20_000)

    def storage() -> list[int]:
        return [h.nbytes for op in tracker.operations for h in tracker.histograms(op).values()]

    warm = storage()
    _record_many(tracker, 20_000, 300_000)
    assert storage() == warm
    assert sum(tracker.get_operation_stats(op).count for op in tracker.operations) == 300_000
