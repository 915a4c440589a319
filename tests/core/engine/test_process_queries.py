"""process_queries_concurrently: bounded in-flight, order kept, failures captured in their slot."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from rag_perf_plugins.config import PerformanceConfig
from rag_perf_plugins.engine import AsyncRAGEngine, QueryResult, process_queries_concurrently


class CountingEngine:
    """Any object with an async query(q): counts how many run at once."""

    def __init__(self, fail: set[str] | None = None) -> None:
        self.in_flight = 0
        self.peak = 0
        self.started: list[str] = []
        self.fail = fail or set()

    async def query(self, q: str) -> str:
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        self.started.append(q)
        try:
            # Yield a few times so every worker gets to start before any finishes.
            for _ in range(3):
                await asyncio.sleep(0)
            if q in self.fail:
                raise RuntimeError(f"failed on {q}")
            return q.upper()
        finally:
            self.in_flight -= 1


async def test_60_queries_at_most_10_in_flight_in_order_with_a_failure_captured() -> None:
    queries = [f"q{i}" for i in range(60)]
    engine = CountingEngine(fail={"q17"})
    results = await process_queries_concurrently(engine, queries, max_concurrent=10)
    assert engine.peak == 10
    assert len(results) == 60
    for i, result in enumerate(results):
        if i == 17:
            assert isinstance(result, QueryResult)
            assert not result.ok and result.query == "q17"
            assert isinstance(result.error, RuntimeError)
            with pytest.raises(RuntimeError, match="failed on q17"):
                result.raise_for_error()
        else:
            assert result == f"Q{i}"
    assert sorted(engine.started) == sorted(queries)


async def test_with_the_rag_engine_every_slot_is_a_query_result() -> None:
    async def retriever(query: str, top_k: int) -> list[str]:
        await asyncio.sleep(0)
        return [query] * top_k

    async def generator(query: str, passages: Sequence[str]) -> str:
        if query == "bad":
            raise ValueError("generator refused")
        await asyncio.sleep(0)
        return f"A:{query}"

    async with AsyncRAGEngine(
        PerformanceConfig(enable_caching=False, enable_metrics=False),
        retriever=retriever,
        generator=generator,
        retry=False,
    ) as engine:
        results = await process_queries_concurrently(engine, ["a", "bad", "c"], max_concurrent=2)
    assert all(isinstance(r, QueryResult) for r in results)
    assert [r.ok for r in results] == [True, False, True]
    assert [r.answer for r in results] == ["A:a", None, "A:c"]
    assert engine.stats.errors == 1


async def test_fewer_queries_than_workers_and_empty_input() -> None:
    engine = CountingEngine()
    assert await process_queries_concurrently(engine, ["x"], max_concurrent=50) == ["X"]
    assert await process_queries_concurrently(engine, [], max_concurrent=5) == []


async def test_cancelling_the_batch_cancels_queries_in_flight() -> None:
    blocked = asyncio.Event()

    class Blocking:
        def __init__(self) -> None:
            self.cancelled = 0

        async def query(self, q: str) -> str:
            try:
                await blocked.wait()
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
            return q

    engine = Blocking()
    task = asyncio.create_task(process_queries_concurrently(engine, list("abcdef"), 3))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert engine.cancelled == 3


async def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="max_concurrent must be an int >= 1"):
        await process_queries_concurrently(CountingEngine(), ["q"], max_concurrent=0)
    with pytest.raises(TypeError, match="engine must have an async query"):
        await process_queries_concurrently(object(), ["q"])  # type: ignore[arg-type]
