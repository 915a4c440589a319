"""pooled_openai_embedding(): LlamaIndex's OpenAIEmbedding on the shared pooled clients."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from rag_perf_plugins.llama_index import PerfEmbedding, pooled_openai_embedding

from rag_perf_plugins.config import PerformanceConfig
from rag_perf_plugins.pool.http import get_async_http_client, get_http_client
from rag_perf_plugins.simulator import Simulator


def test_uses_the_registry_clients_with_retries_off(simulator: Simulator) -> None:
    config = PerformanceConfig(connection_pool_size=3)
    model = pooled_openai_embedding(api_base=simulator.base_url, api_key="sk-test", config=config)
    assert model.max_retries == 0
    assert model._http_client is get_http_client(simulator.base_url, config=config)
    assert model._async_http_client is get_async_http_client(simulator.base_url, config=config)
    assert model._get_client().max_retries == 0


def test_refuses_options_it_owns(simulator: Simulator) -> None:
    owned: dict[str, Any] = {"max_retries": 3, "http_client": None, "async_http_client": None}
    for name, value in owned.items():
        with pytest.raises(ValueError, match=name):
            pooled_openai_embedding(api_base=simulator.base_url, **{name: value})


def test_many_requests_share_a_bounded_pool_across_loops(simulator: Simulator) -> None:
    config = PerformanceConfig(connection_pool_size=4, enable_caching=False, batch_size=1)
    inner = pooled_openai_embedding(
        api_base=simulator.base_url, api_key="sk-test", dimensions=32, config=config
    )
    wrapped = PerfEmbedding(inner, config, batching=False)

    async def burst(tag: str) -> None:
        await asyncio.gather(*(wrapped.aget_text_embedding(f"{tag} {i}") for i in range(40)))

    # Two asyncio.run() calls: LlamaIndex keeps its SDK client; the pooled client routes
    # each loop's requests to that loop's own pool, so the second run works too.
    asyncio.run(burst("first"))
    asyncio.run(burst("second"))
    wrapped.get_text_embedding_batch([f"sync {i}" for i in range(10)])
    stats = simulator.stats()
    assert stats["requests_by_endpoint"]["/v1/embeddings"] == 90
    # At most pool-size connections per event loop (2 loops) plus the sync client's pool.
    assert stats["connections_opened"] <= 3 * 4
