"""AsyncRAGEngine / RAGEngine: cache, single-flight, gate, retry, degradation, stats."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from rag_perf_plugins._clock import FakeClock
from rag_perf_plugins.admission import AdmissionGate, RetryPolicy
from rag_perf_plugins.cache import CacheManager
from rag_perf_plugins.config import PerformanceConfig
from rag_perf_plugins.engine import (
    AsyncRAGEngine,
    QueryResult,
    RAGEngine,
    is_provider_failure,
)
from rag_perf_plugins.errors import Overloaded, ProviderError
from rag_perf_plugins.tokens import estimate_tokens
from rag_perf_plugins.tracking import NULL_TRACKER, PerformanceTracker


@pytest.fixture
def cache(cache_dir: Path, fake_clock: FakeClock) -> Iterator[CacheManager]:
    """A real CacheManager (memory + diskcache in a fresh directory) on the fake clock."""
    config = PerformanceConfig(cache_dir=str(cache_dir), cache_shards=1, enable_metrics=False)
    manager = CacheManager(config, clock=fake_clock)
    yield manager
    manager.close()


class Pipeline:
    """Async retriever and generator that count their calls and can be made to fail."""

    def __init__(self) -> None:
        self.retrieved: list[tuple[str, int]] = []
        self.generated: list[str] = []
        self.fail_with: BaseException | None = None
        self.gate: asyncio.Event | None = None
        self.in_flight = 0
        self.peak = 0

    async def retriever(self, query: str, top_k: int) -> list[str]:
        self.retrieved.append((query, top_k))
        return [f"{query}#p{i}" for i in range(top_k)]

    async def generator(self, query: str, passages: Sequence[str]) -> str:
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            if self.gate is not None:
                await self.gate.wait()
            else:
                await asyncio.sleep(0)
            if self.fail_with is not None:
                raise self.fail_with
            self.generated.append(query)
            return f"answer to {query} from {len(passages)}"
        finally:
            self.in_flight -= 1


def make_engine(
    pipe: Pipeline, clock: FakeClock, cache: CacheManager, **config: Any
) -> AsyncRAGEngine:
    cfg = PerformanceConfig(**{"cache_ttl": 60.0, "enable_metrics": False, **config})
    return AsyncRAGEngine(
        cfg,
        retriever=pipe.retriever,
        generator=pipe.generator,
        cache=cache,
        gate=AdmissionGate(cfg, key="test-engine", tracker=NULL_TRACKER),
        retry=RetryPolicy(cfg, async_sleep=clock.asleep, sleep=clock.sleep, clock=clock),
        clock=clock,
    )


async def test_query_answers_then_hits_the_cache(
    fake_clock: FakeClock, cache: CacheManager
) -> None:
    pipe = Pipeline()
    engine = make_engine(pipe, fake_clock, cache)
    async with engine:
        first = await engine.query("What is RAG?", top_k=3)
        second = await engine.query("What is RAG?", top_k=3)
        other_k = await engine.query("What is RAG?", top_k=2)
    assert first.ok and first.answer == "answer to What is RAG? from 3"
    assert first.sources == ("What is RAG?#p0", "What is RAG?#p1", "What is RAG?#p2")
    assert not first.cached and second.cached and not other_k.cached
    assert second.answer == first.answer and second.sources == first.sources
    assert set(first.timings) == {"queue_s", "retrieve_s", "generate_s", "total_s"}
    assert pipe.retrieved == [("What is RAG?", 3), ("What is RAG?", 2)]
    assert engine.stats.as_dict()["cache_hits"] == 1
    with pytest.raises(RuntimeError, match="closed"):
        await engine.query("again")


async def test_identical_concurrent_queries_are_computed_once(
    fake_clock: FakeClock, cache: CacheManager
) -> None:
    pipe = Pipeline()
    engine = make_engine(pipe, fake_clock, cache)
    results = await asyncio.gather(*(engine.query("same") for _ in range(20)))
    assert pipe.generated == ["same"]
    assert [r.cached for r in results].count(False) == 1
    assert len({r.answer for r in results}) == 1


async def test_retry_covers_a_transient_provider_error(
    fake_clock: FakeClock, cache: CacheManager
) -> None:
    pipe = Pipeline()
    engine = make_engine(pipe, fake_clock, cache, retry_budget_ratio=1.0)
    calls = 0

    async def flaky(query: str, passages: Sequence[str]) -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ProviderError("503 from provider", status_code=503)
        return "ok"

    engine._generator = flaky
    result = await engine.query("q")
    assert result.answer == "ok" and calls == 2


async def test_stale_answer_is_served_on_provider_failure(
    fake_clock: FakeClock, cache: CacheManager
) -> None:
    pipe = Pipeline()
    engine = make_engine(pipe, fake_clock, cache, retry_max_attempts=1, degrade_serve_stale=True)
    fresh = await engine.query("news?")
    fake_clock.advance(61.0)  # the fresh entry expired; the stale copy lives on
    pipe.fail_with = ProviderError("provider down", status_code=503)
    stale = await engine.query("news?")
    assert stale.stale and stale.cached and stale.degraded == ("stale",)
    assert stale.answer == fresh.answer
    assert engine.stats.stale_served == 1
    with pytest.raises(ProviderError):
        await engine.query("never asked before")
    assert engine.stats.errors == 1


async def test_programming_errors_are_never_masked_by_stale(
    fake_clock: FakeClock, cache: CacheManager
) -> None:
    pipe = Pipeline()
    engine = make_engine(pipe, fake_clock, cache, retry_max_attempts=1, degrade_serve_stale=True)
    await engine.query("q")
    fake_clock.advance(61.0)
    pipe.fail_with = TypeError("bug in the generator")
    with pytest.raises(TypeError, match="bug"):
        await engine.query("q")
    assert engine.stats.stale_served == 0


@pytest.mark.parametrize("explicit", [True, False])
async def test_serve_stale_is_off_unless_asked(
    fake_clock: FakeClock, cache: CacheManager, explicit: bool
) -> None:
    """A RAG service must not change its answers under load unless asked to: off by default."""
    pipe = Pipeline()
    options: dict[str, Any] = {"degrade_serve_stale": False} if explicit else {}
    engine = make_engine(pipe, fake_clock, cache, retry_max_attempts=1, **options)
    await engine.query("q")
    assert cache.get_stats()["namespaces"]["query"]["sets"] == 1  # no stale copy written
    fake_clock.advance(61.0)
    pipe.fail_with = ProviderError("down", status_code=500)
    with pytest.raises(ProviderError):
        await engine.query("q")


async def test_overload_reduces_top_k(fake_clock: FakeClock, cache: CacheManager) -> None:
    pipe = Pipeline()
    pipe.gate = asyncio.Event()
    engine = make_engine(
        pipe, fake_clock, cache, max_concurrent_requests=2, degrade_top_k_factor=0.5
    )
    tasks = [asyncio.create_task(engine.query(f"q{i}", top_k=4)) for i in range(4)]
    for _ in range(5):
        await asyncio.sleep(0)
    pipe.gate.set()
    results = await asyncio.gather(*tasks)
    assert [r.top_k for r in results] == [4, 4, 2, 2]
    assert [r.degraded for r in results] == [(), (), ("top_k",), ("top_k",)]
    assert engine.stats.top_k_reduced == 2
    assert engine.stats.peak_active == 4


async def test_top_k_is_not_reduced_unless_asked(
    fake_clock: FakeClock, cache: CacheManager
) -> None:
    pipe = Pipeline()
    pipe.gate = asyncio.Event()
    engine = make_engine(pipe, fake_clock, cache, max_concurrent_requests=2)
    tasks = [asyncio.create_task(engine.query(f"q{i}", top_k=4)) for i in range(4)]
    for _ in range(5):
        await asyncio.sleep(0)
    pipe.gate.set()
    results = await asyncio.gather(*tasks)
    assert [r.top_k for r in results] == [4, 4, 4, 4]
    assert [r.degraded for r in results] == [(), (), (), ()]
    assert engine.stats.top_k_reduced == 0


async def test_overload_sheds_low_priority_queries(
    fake_clock: FakeClock, cache: CacheManager
) -> None:
    pipe = Pipeline()
    pipe.gate = asyncio.Event()
    engine = make_engine(
        pipe, fake_clock, cache, max_concurrent_requests=1, degrade_shed_below_priority=1
    )
    busy = asyncio.create_task(engine.query("important", priority=5))
    await asyncio.sleep(0)
    with pytest.raises(Overloaded, match="priority 0 is below degrade_shed_below_priority=1"):
        await engine.query("bulk job", priority=0)
    kept = asyncio.create_task(engine.query("also important", priority=1))
    await asyncio.sleep(0)
    pipe.gate.set()
    assert (await busy).ok and (await kept).ok
    assert engine.stats.shed == 1
    assert pipe.generated.count("bulk job") == 0


async def test_a_shed_query_gets_a_stale_answer_when_there_is_one(
    fake_clock: FakeClock, cache: CacheManager
) -> None:
    pipe = Pipeline()
    engine = make_engine(
        pipe,
        fake_clock,
        cache,
        max_concurrent_requests=1,
        degrade_shed_below_priority=1,
        degrade_serve_stale=True,
    )
    await engine.query("bulk job", priority=0)
    fake_clock.advance(61.0)
    pipe.gate = asyncio.Event()
    busy = asyncio.create_task(engine.query("important", priority=5))
    await asyncio.sleep(0)
    shed = await engine.query("bulk job", priority=0)
    assert shed.stale and engine.stats.shed == 1
    pipe.gate.set()
    await busy


async def test_gate_overload_falls_back_to_stale(
    fake_clock: FakeClock, cache: CacheManager
) -> None:
    pipe = Pipeline()
    engine = make_engine(
        pipe, fake_clock, cache, max_concurrent_requests=1, max_queue=0, degrade_serve_stale=True
    )
    await engine.query("popular")
    fake_clock.advance(61.0)
    pipe.gate = asyncio.Event()
    busy = asyncio.create_task(engine.query("slow one"))
    await asyncio.sleep(0)
    result = await engine.query("popular")  # the gate refuses at once: queue bound 0
    assert result.stale
    with pytest.raises(Overloaded):
        await engine.query("nobody asked this")
    pipe.gate.set()
    await busy


async def test_sources_codec_round_trips(fake_clock: FakeClock, cache: CacheManager) -> None:
    pipe = Pipeline()
    cfg = PerformanceConfig(enable_metrics=False)
    engine = AsyncRAGEngine(
        cfg,
        retriever=pipe.retriever,
        generator=pipe.generator,
        cache=cache,
        gate=False,
        retry=False,
        encode_sources=lambda ps: [{"text": p} for p in ps],
        decode_sources=lambda raw: [f"<{d['text']}>" for d in raw],
        clock=fake_clock,
    )
    await engine.query("q", top_k=1)
    hit = await engine.query("q", top_k=1)
    assert hit.cached and hit.sources == ("<q#p0>",)


async def test_tracker_sees_queries_and_degradation(
    fake_clock: FakeClock, cache: CacheManager
) -> None:
    pipe = Pipeline()
    tracker = PerformanceTracker()
    cfg = PerformanceConfig(cache_ttl=60.0, retry_max_attempts=1, degrade_serve_stale=True)
    engine = AsyncRAGEngine(
        cfg,
        retriever=pipe.retriever,
        generator=pipe.generator,
        cache=cache,
        gate=False,
        retry=False,
        tracker=tracker,
        clock=fake_clock,
    )
    await engine.query("q")
    await engine.query("q")
    fake_clock.advance(61)
    pipe.fail_with = ProviderError("down", status_code=502)
    await engine.query("q")
    stats = tracker.get_operation_stats("rag.query")
    assert (stats.count, stats.cache_hits, stats.cache_misses) == (3, 2, 1)
    assert stats.counters == {"rag.degrade.stale": 1}


async def test_without_cache_every_query_computes(
    fake_clock: FakeClock, cache: CacheManager
) -> None:
    pipe = Pipeline()
    engine = AsyncRAGEngine(
        PerformanceConfig(enable_caching=False, enable_metrics=False),
        retriever=pipe.retriever,
        generator=pipe.generator,
        gate=False,
        retry=False,
    )
    await engine.query("q")
    await engine.query("q")
    assert pipe.generated == ["q", "q"]
    assert "queries: 2" in repr(engine)


def test_bad_arguments_are_named() -> None:
    pipe = Pipeline()

    def sync_retriever(query: str, top_k: int) -> list[str]:
        return []

    with pytest.raises(TypeError, match="retriever must be an async callable"):
        AsyncRAGEngine(retriever=sync_retriever, generator=pipe.generator)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="generator must be a plain"):
        RAGEngine(retriever=sync_retriever, generator=pipe.generator)
    with pytest.raises(ValueError, match="top_k must be an int >= 1"):
        AsyncRAGEngine(retriever=pipe.retriever, generator=pipe.generator, top_k=0)


async def test_bad_query_arguments_are_named() -> None:
    pipe = Pipeline()
    engine = AsyncRAGEngine(
        PerformanceConfig(enable_caching=False, enable_metrics=False),
        retriever=pipe.retriever,
        generator=pipe.generator,
    )
    with pytest.raises(ValueError, match="query must be a non-empty str"):
        await engine.query("  ")
    with pytest.raises(ValueError, match="top_k must be an int >= 1"):
        await engine.query("q", top_k=0)
    with pytest.raises(ValueError, match="priority must be an int"):
        await engine.query("q", priority="high")  # type: ignore[arg-type]
    assert engine.stats.active == 0


def test_is_provider_failure() -> None:
    class APIConnectionError(Exception):
        pass

    class SdkError(Exception):
        status_code = 429

    assert is_provider_failure(Overloaded("x"))
    assert is_provider_failure(TimeoutError())
    assert is_provider_failure(APIConnectionError())
    assert is_provider_failure(SdkError())
    assert not is_provider_failure(ValueError("bad request"))
    assert is_provider_failure(ProviderError("gave up after 503s", status_code=503))
    assert not is_provider_failure(ProviderError("401 unauthorized", status_code=401))


# --- the sync twin ------------------------------------------------------------------------


def test_sync_engine_answers_caches_and_serves_stale(
    fake_clock: FakeClock, cache: CacheManager
) -> None:
    retrieved: list[int] = []
    failing: list[BaseException] = []

    def retriever(query: str, top_k: int) -> list[str]:
        retrieved.append(top_k)
        return [query.upper()] * top_k

    def generator(query: str, passages: Sequence[str]) -> str:
        if failing:
            raise failing[0]
        return f"{query}:{len(passages)}"

    cfg = PerformanceConfig(
        cache_ttl=60.0, enable_metrics=False, retry_max_attempts=1, degrade_serve_stale=True
    )
    with RAGEngine(
        cfg,
        retriever=retriever,
        generator=generator,
        cache=cache,
        gate=AdmissionGate(cfg, key="sync-engine", tracker=NULL_TRACKER),
        retry=RetryPolicy(cfg, sleep=fake_clock.sleep, clock=fake_clock),
        top_k=2,
        clock=fake_clock,
    ) as engine:
        first = engine.query("q")
        second = engine.query("q")
        fake_clock.advance(61)
        failing.append(ConnectionError("reset"))
        stale = engine.query("q")
    assert (first.answer, first.cached) == ("q:2", False)
    assert second.cached and stale.stale and stale.answer == "q:2"
    assert retrieved == [2, 2]
    assert QueryResult.failed("x", ValueError()).ok is False


class TokenSpyGate(AdmissionGate):
    """An AdmissionGate that records the tokens each admission asks for."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.asked: list[int] = []

    def aacquire(self, *, tokens: int = 0, **kwargs: Any) -> Any:
        self.asked.append(tokens)
        return super().aacquire(tokens=tokens, **kwargs)

    def acquire(self, *, tokens: int = 0, **kwargs: Any) -> Any:
        self.asked.append(tokens)
        return super().acquire(tokens=tokens, **kwargs)


class PlainGate:
    """A gate that is not an AdmissionGate: it gets the estimate whatever its limits."""

    def __init__(self) -> None:
        self.asked: list[int] = []

    def aacquire(self, *, tokens: int = 0, timeout: float | None = None) -> Any:
        self.asked.append(tokens)
        return contextlib.AsyncExitStack()

    def acquire(self, *, tokens: int = 0, timeout: float | None = None) -> Any:
        self.asked.append(tokens)
        return contextlib.ExitStack()


@pytest.mark.parametrize("tpm", [None, 90_000])
async def test_gate_is_told_tokens_only_when_it_charges_them(tpm: int | None) -> None:
    # An AdmissionGate without a TPM budget admits the same whatever the tokens, so the
    # engine skips the estimate; with one (or any other gate) it passes the estimate.
    query = "What is retrieval-augmented generation, in 2 lines?"
    cfg = PerformanceConfig(enable_metrics=False, tokens_per_minute=tpm, requests_per_minute=600)
    expected = 0 if tpm is None else estimate_tokens(query)
    pipe = Pipeline()
    gate = TokenSpyGate(cfg, key=f"tokens-{tpm}", tracker=NULL_TRACKER)
    plain = PlainGate()
    async with AsyncRAGEngine(
        cfg, retriever=pipe.retriever, generator=pipe.generator, cache=False, gate=gate
    ) as engine:
        answers = [await engine.query(f"{query} {i}") for i in range(3)]
    async with AsyncRAGEngine(
        cfg, retriever=pipe.retriever, generator=pipe.generator, cache=False, gate=plain
    ) as engine:
        await engine.query(query)

    def retrieve(q: str, k: int) -> list[str]:
        return [q]

    def generate(q: str, passages: Sequence[str]) -> str:
        return q

    sync_gate = TokenSpyGate(cfg, key=f"sync-tokens-{tpm}", tracker=NULL_TRACKER)
    with RAGEngine(cfg, retriever=retrieve, generator=generate, cache=False, gate=sync_gate) as e:
        e.query(query)
    estimates = [estimate_tokens(f"{query} {i}") for i in range(3)]
    assert gate.asked == ([0, 0, 0] if tpm is None else estimates)
    assert sync_gate.asked == [expected]
    assert plain.asked == [estimate_tokens(query)]
    assert gate.stats()["admitted"] == 3 and sync_gate.stats()["admitted"] == 1
    assert [a.answer for a in answers] == [f"answer to {query} {i} from 4" for i in range(3)]
