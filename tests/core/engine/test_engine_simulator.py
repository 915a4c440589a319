"""The engine over real HTTP to the simulator: what the provider saw, counted by the simulator."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from rag_perf_plugins._clock import FakeClock
from rag_perf_plugins.bench.suites import concurrency
from rag_perf_plugins.bench.suites.concurrency import SimulatorPipeline
from rag_perf_plugins.cache import CacheManager
from rag_perf_plugins.config import PerformanceConfig
from rag_perf_plugins.engine import AsyncRAGEngine, QueryResult, process_queries_concurrently
from rag_perf_plugins.simulator import Simulator
from rag_perf_plugins.simulator.testing import SimulatorFactory

CHAT = "/v1/chat/completions"


@pytest.fixture
def cache(cache_dir: Path, fake_clock: FakeClock) -> Iterator[CacheManager]:
    manager = CacheManager(
        PerformanceConfig(cache_dir=str(cache_dir), cache_shards=1, enable_metrics=False),
        clock=fake_clock,
    )
    yield manager
    manager.close()


@pytest.fixture
async def pipe(simulator: Simulator) -> AsyncIterator[SimulatorPipeline]:
    pipeline = SimulatorPipeline(simulator.base_url)
    yield pipeline
    await pipeline.aclose()


def _config(**overrides: object) -> PerformanceConfig:
    return PerformanceConfig(enable_metrics=False, **overrides)  # type: ignore[arg-type]


async def test_answers_are_grounded_and_identical_queries_reach_the_provider_once(
    simulator: Simulator, pipe: SimulatorPipeline, cache: CacheManager
) -> None:
    async with AsyncRAGEngine(
        _config(), retriever=pipe.aretrieve, generator=pipe.agenerate, cache=cache, top_k=2
    ) as engine:
        results = await asyncio.gather(
            *(engine.query("What is the capital of France?") for _ in range(20))
        )
        again = await engine.query("What is the capital of France?")
    assert "Paris is the capital of France" in results[0].answer
    assert results[0].sources[0] == "Paris is the capital of France."
    assert {r.answer for r in results} == {again.answer}
    assert again.cached
    assert simulator.stats()["requests_by_endpoint"].get(CHAT) == 1


async def test_process_queries_concurrently_bounds_what_the_provider_sees(
    simulator_factory: SimulatorFactory,
) -> None:
    sim = simulator_factory(latency_ms=20.0)
    pipeline = SimulatorPipeline(sim.base_url)
    queries = [f"What does question {i} say about rate limits?" for i in range(24)]
    try:
        async with AsyncRAGEngine(
            _config(enable_caching=False),
            retriever=pipeline.aretrieve,
            generator=pipeline.agenerate,
        ) as engine:
            results = await process_queries_concurrently(engine, queries, max_concurrent=4)
    finally:
        await pipeline.aclose()
    stats = sim.stats()
    assert stats["requests_by_endpoint"].get(CHAT) == 24
    assert stats["peak_inflight"] <= 4
    assert all(isinstance(r, QueryResult) and r.ok for r in results)
    assert [r.query for r in results] == queries


async def test_provider_errors_fall_back_to_a_stale_answer(
    simulator_factory: SimulatorFactory, cache: CacheManager, fake_clock: FakeClock
) -> None:
    healthy = simulator_factory()
    broken = simulator_factory(error_rate=1.0)
    pipeline = SimulatorPipeline(healthy.base_url)
    config = _config(
        cache_ttl=60.0,
        retry_max_attempts=2,
        retry_initial_backoff=0.0,
        degrade_serve_stale=True,
    )
    try:
        async with AsyncRAGEngine(
            config, retriever=pipeline.aretrieve, generator=pipeline.agenerate, cache=cache
        ) as engine:
            fresh = await engine.query("How do rate limits work?")
            pipeline.base_url = broken.base_url.rstrip("/")
            fake_clock.advance(61.0)  # the fresh entry expired; its stale copy lives on
            stale = await engine.query("How do rate limits work?")
    finally:
        await pipeline.aclose()
    assert not fresh.stale and stale.stale and stale.answer == fresh.answer
    assert broken.stats()["errors_injected_total"] == 2  # one call, retried once
    assert engine.stats.stale_served == 1


async def test_concurrency_curve_runs_bare_then_engine_per_level(simulator: Simulator) -> None:
    # The bench's Little's-law curve: each level sends its queries twice (the bare pipeline,
    # then the engine), after one warm-up at the top level; every point carries both runs.
    levels = (1, 3)
    curve = await concurrency._curve(simulator.base_url, os.getpid(), 2, levels)
    sent = simulator.stats()["requests_by_endpoint"].get(CHAT)
    assert sent == max(levels) + 2 * sum(c * 2 for c in levels)
    assert [p["concurrency"] for p in curve] == list(levels)
    assert [p["queries"] for p in curve] == [2, 6]
    for point in curve:
        for key in (
            "fraction_of_bound",
            "bare_fraction_of_bound",
            "client_cpu_us_per_query",
            "bare_client_cpu_us_per_query",
            "engine_cpu_us_per_query",
            "simulator_cpu_us_per_query",
        ):
            assert isinstance(point[key], float), key
    alone = await concurrency._engine_alone(4, 20, 1)
    assert set(alone) == {"engine_alone_us_per_query", "calls_alone_us_per_query"}
    assert simulator.stats()["requests_by_endpoint"].get(CHAT) == sent  # alone: no HTTP
