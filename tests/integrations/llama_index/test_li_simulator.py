"""PerfEmbedding over LlamaIndex's real OpenAIEmbedding, counted at the simulator."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from llama_index.embeddings.openai import OpenAIEmbedding  # type: ignore[import-untyped, unused-ignore]
from rag_perf_plugins.llama_index import PerfEmbedding

from rag_perf_plugins.config import PerformanceConfig
from rag_perf_plugins.simulator import Simulator

MakeModel = Callable[..., OpenAIEmbedding]


def embedding_requests(sim: Simulator) -> int:
    return int(sim.stats()["requests_by_endpoint"].get("/v1/embeddings", 0))


@pytest.fixture
async def openai_embedding(simulator: Simulator) -> AsyncIterator[MakeModel]:
    """Builds OpenAIEmbedding models pointed at the simulator; closes their clients."""
    made: list[OpenAIEmbedding] = []

    def make(**kw: Any) -> OpenAIEmbedding:
        model = OpenAIEmbedding(api_base=simulator.base_url, api_key="sk-test", max_retries=0, **kw)
        made.append(model)
        return model

    yield make
    for model in made:
        if model._aclient is not None:
            await model._aclient.close()
        if model._client is not None:
            model._client.close()


async def test_100_identical_concurrent_queries_make_one_request(
    simulator: Simulator, openai_embedding: MakeModel
) -> None:
    config = PerformanceConfig(enable_caching=False, batch_size=16)
    wrapped = PerfEmbedding(openai_embedding(model="text-embedding-3-small"), config)
    vectors = await asyncio.gather(
        *(wrapped.aget_query_embedding("what is rag?") for _ in range(100))
    )
    assert embedding_requests(simulator) == 1
    assert all(v == vectors[0] for v in vectors)
    assert len(vectors[0]) == 1536


async def test_100_distinct_concurrent_queries_are_batched(
    simulator: Simulator, openai_embedding: MakeModel
) -> None:
    batch_size = 16
    config = PerformanceConfig(enable_caching=False, batch_size=batch_size, max_wait_time=0.020)
    wrapped = PerfEmbedding(openai_embedding(model="text-embedding-3-small"), config)
    await asyncio.gather(*(wrapped.aget_query_embedding(f"question {i}") for i in range(100)))
    assert embedding_requests(simulator) <= math.ceil(100 / batch_size) + 1


async def test_llamaindex_alone_makes_one_request_per_query(
    simulator: Simulator, openai_embedding: MakeModel
) -> None:
    # The baseline the two tests above beat: no coalescing in LlamaIndex itself.
    plain = openai_embedding(model="text-embedding-3-small")
    await asyncio.gather(*(plain.aget_query_embedding("what is rag?") for _ in range(20)))
    assert embedding_requests(simulator) == 20


def test_sync_batch_of_many_texts_uses_our_batch_size(
    simulator: Simulator, openai_embedding: MakeModel
) -> None:
    config = PerformanceConfig(enable_caching=False, batch_size=50)
    wrapped = PerfEmbedding(openai_embedding(model="text-embedding-3-small"), config)
    vectors = wrapped.get_text_embedding_batch([f"chunk {i}" for i in range(500)])
    assert len(vectors) == 500
    # OpenAIEmbedding alone: embed_batch_size 100 -> 5 requests; ours: config.batch_size.
    assert embedding_requests(simulator) == math.ceil(500 / 50)
