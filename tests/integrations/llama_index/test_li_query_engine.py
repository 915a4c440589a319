"""Issue 14 acceptance: a query engine over VectorStoreIndex, wrapped and not, on the simulator.

The simulator runs in thread mode (its own loop in a background thread): LlamaIndex's
``from_documents`` and ``query`` are sync. Provider requests are counted at the simulator.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from llama_index.core import Document, Settings, StorageContext, VectorStoreIndex
from llama_index.core.base.response.schema import StreamingResponse
from llama_index.core.llms import ChatMessage
from llama_index.core.vector_stores import SimpleVectorStore
from rag_perf_plugins.llama_index import (
    PerfEmbedding,
    PerfFunctionCallingLLM,
    PerfVectorStore,
    configure_settings,
    pooled_openai_embedding,
    pooled_openai_llm,
    restore_settings,
)

from rag_perf_plugins.config import PerformanceConfig
from rag_perf_plugins.simulator import Simulator
from rag_perf_plugins.tracking import PerformanceTracker, set_performance_tracker

TOPICS = ["solar power", "river deltas", "bread baking", "chess openings", "tide pools"]
QUESTIONS = ["How does solar power work?", "What lives in tide pools?", "Why bake bread?"]


def corpus(n: int) -> list[Document]:
    return [
        Document(
            text=f"Document {i} is about {TOPICS[i % 5]}. It explains {TOPICS[i % 5]} plainly.",
            id_=f"doc-{i}",
        )
        for i in range(n)
    ]


def requests(sim: Simulator) -> int:
    return int(sim.stats()["requests_total"])


@pytest.fixture(autouse=True)
def _owned_event_loop() -> Iterator[None]:
    # LlamaIndex's sync query path calls asyncio.get_event_loop(); give it one we close.
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        yield
    finally:
        asyncio.set_event_loop(None)
        loop.close()


@pytest.fixture
def tracker() -> Iterator[PerformanceTracker]:
    tracker = PerformanceTracker()
    previous = set_performance_tracker(tracker)
    yield tracker
    set_performance_tracker(previous)


@pytest.fixture
def settings(simulator: Simulator, cache_dir: Path) -> Iterator[PerformanceConfig]:
    saved = (Settings._llm, Settings._embed_model)
    config = PerformanceConfig(cache_dir=str(cache_dir))
    Settings.llm = pooled_openai_llm(api_base=simulator.base_url, api_key="sk-test", config=config)
    Settings.embed_model = pooled_openai_embedding(
        api_base=simulator.base_url, api_key="sk-test", config=config
    )
    yield config
    restore_settings()
    Settings._llm, Settings._embed_model = saved


def _engine(config: PerformanceConfig | None) -> Any:
    docs = corpus(20)
    if config is None:
        index = VectorStoreIndex.from_documents(docs)
    else:
        store = PerfVectorStore(SimpleVectorStore(), config, name="kb")
        context = StorageContext.from_defaults(vector_store=store)
        index = VectorStoreIndex.from_documents(docs, storage_context=context)
    return index.as_query_engine(similarity_top_k=2)


def _answers(engine: Any) -> list[str]:
    return [str(engine.query(q)) for q in QUESTIONS]


def test_query_engine_same_answers_and_a_warm_run_makes_no_provider_request(
    simulator: Simulator, settings: PerformanceConfig, tracker: PerformanceTracker
) -> None:
    plain = _answers(_engine(None))
    state = configure_settings(settings)
    assert isinstance(Settings.llm, PerfFunctionCallingLLM)
    assert isinstance(Settings.embed_model, PerfEmbedding)
    assert state.instrumentation is not None
    assert _answers(_engine(settings)) == plain
    simulator.reset_stats()
    engine = _engine(settings)  # a rebuild: every text embedding comes from the cache
    assert _answers(engine) == plain  # the rebuild bumped the store version: searched again
    tracker.reset()
    assert _answers(engine) == plain  # the same questions again: every stage from a cache
    assert requests(simulator) == 0

    # Every stage, with durations; hit rates where a cache answers.
    for stage in ("query", "retrieval", "embedding", "synthesis", "llm"):
        stats = tracker.get_operation_stats(f"llama_index.{stage}")
        assert stats.count >= len(QUESTIONS), stage
        assert stats.latency_p50_s > 0, stage
    assert tracker.get_operation_stats("llama_index.llm").cache_hit_rate == 1.0
    assert tracker.get_operation_stats("llm").cache_hit_rate == 1.0
    assert tracker.get_operation_stats("vectorstore.query").cache_hit_rate == 1.0
    assert tracker.get_operation_stats("embedding.query").cache_hit_rate == 1.0


def test_stream_chat_and_astream_chat_replay_from_the_cache(
    simulator: Simulator, settings: PerformanceConfig
) -> None:
    configure_settings(settings)
    llm = Settings.llm
    messages = [ChatMessage(role="user", content="Summarise tide pools in a sentence.")]
    live = [c.delta for c in llm.stream_chat(messages)]
    assert len(live) > 1
    simulator.reset_stats()
    assert [c.delta for c in llm.stream_chat(messages)] == live

    async def replay() -> list[Any]:
        return [c.delta async for c in await llm.astream_chat(messages)]

    assert asyncio.run(replay()) == live
    assert requests(simulator) == 0


def test_streaming_query_engine_replays(simulator: Simulator, settings: PerformanceConfig) -> None:
    configure_settings(settings)
    index = VectorStoreIndex.from_documents(corpus(10))
    engine = index.as_query_engine(similarity_top_k=2, streaming=True)
    first = _streamed(engine.query(QUESTIONS[0]))
    simulator.reset_stats()
    again = _streamed(engine.query(QUESTIONS[0]))
    assert again == first
    assert requests(simulator) == 0


def _streamed(response: object) -> str:
    assert isinstance(response, StreamingResponse)
    return "".join(response.response_gen)
