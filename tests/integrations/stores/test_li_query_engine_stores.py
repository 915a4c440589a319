"""A LlamaIndex query engine over each real store, wrapped and not, on the simulator.

``VectorStoreIndex`` + ``as_query_engine()`` over FAISS, Chroma, Qdrant (local) and
pgvector: the wrapped pipeline (``PerfEmbedding``, ``wrap_llm``, ``PerfVectorStore``) gives
the unwrapped pipeline's answers and sources, and the same questions asked again make no
provider request and no query of the inner store.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from llama_index.core import Document, StorageContext, VectorStoreIndex
from rag_perf_plugins.llama_index import (
    PerfEmbedding,
    PerfVectorStore,
    pooled_openai_embedding,
    pooled_openai_llm,
    wrap_llm,
)

from rag_perf_plugins.bench.postgres import LocalPostgres
from rag_perf_plugins.config import PerformanceConfig
from rag_perf_plugins.simulator import Simulator
from rag_perf_plugins.tracking import PerformanceTracker

from .conftest import DIM, STORES, aclose_li_store, li_store

pytestmark = pytest.mark.filterwarnings("ignore:Payload indexes have no effect in the local Qdrant")

TOPICS = ["solar power", "river deltas", "bread baking", "chess openings", "tide pools"]
QUESTIONS = ["How does solar power work?", "What lives in tide pools?"]


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


def _documents() -> list[Document]:
    return [
        Document(text=f"Document {i} is about {TOPICS[i % 5]}.", id_=f"doc-{i}") for i in range(10)
    ]


def _answers(engine: Any) -> list[tuple[str, list[str]]]:
    out = []
    for question in QUESTIONS:
        response = engine.query(question)
        out.append((str(response), sorted(n.node.get_content() for n in response.source_nodes)))
    return out


@pytest.mark.parametrize("kind", STORES)
def test_wrapped_query_engine_answers_as_unwrapped_and_a_rerun_is_free(
    kind: str, simulator: Simulator, tmp_path: Path, postgres: LocalPostgres
) -> None:
    config = PerformanceConfig(cache_dir=str(tmp_path / "cache"), enable_metrics=False)

    def models() -> tuple[Any, Any]:
        embed = pooled_openai_embedding(
            api_base=simulator.base_url, api_key="sk-test", dimensions=DIM, config=config
        )
        llm = pooled_openai_llm(api_base=simulator.base_url, api_key="sk-test", config=config)
        return embed, llm

    def engine(store: Any, embed: Any, llm: Any) -> Any:
        context = StorageContext.from_defaults(vector_store=store)
        index = VectorStoreIndex.from_documents(
            _documents(), storage_context=context, embed_model=embed
        )
        return index.as_query_engine(llm=llm, similarity_top_k=2)

    plain_inner = li_store(kind, tmp_path / "plain", postgres)
    embed, llm = models()
    plain = _answers(engine(plain_inner, embed, llm))

    inner = li_store(kind, tmp_path / "wrapped", postgres)
    tracker = PerformanceTracker()
    store = PerfVectorStore(inner, config, tracker=tracker)
    embed, llm = models()
    wrapped_engine = engine(store, PerfEmbedding(embed, config), wrap_llm(llm, config))
    assert _answers(wrapped_engine) == plain

    simulator.reset_stats()
    misses = tracker.get_operation_stats("vectorstore.query").cache_misses
    assert _answers(wrapped_engine) == plain
    assert int(simulator.stats()["requests_total"]) == 0
    assert tracker.get_operation_stats("vectorstore.query").cache_misses == misses
    asyncio.get_event_loop().run_until_complete(aclose_li_store(kind, plain_inner))
    asyncio.get_event_loop().run_until_complete(aclose_li_store(kind, inner))
