"""The semantic cache with its index in pgvector on the real PostgreSQL (both frameworks).

Two SemanticCache/LLMService pairs over one PGVector collection stand for two hosts: what
one stored, the other finds. Partitions are metadata filters in SQL; the similarity is
recomputed as cosine from the stored vector, whatever PGVector's score means.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from langchain_core.embeddings import DeterministicFakeEmbedding
from rag_perf_plugins.langchain import VectorStoreSemanticIndex
from rag_perf_plugins.llama_index import VectorStoreSemanticIndex as LIVectorStoreSemanticIndex

from rag_perf_plugins.bench.postgres import LocalPostgres
from rag_perf_plugins.bench.suites.semantic import simulator_embed
from rag_perf_plugins.cache import CacheManager, cache_scope
from rag_perf_plugins.cache.semantic import SemanticCache
from rag_perf_plugins.config import PerformanceConfig
from rag_perf_plugins.services.embeddings import EmbeddingService
from rag_perf_plugins.services.llm import LLMRequest, LLMService

from .conftest import aclose_li_store, close_lc_store, lc_store, li_store

ASKED = "How do I reset my account password?"
PARAPHRASE = "how do I reset my account password, please?"


class Codec:
    def encode(self, value: str) -> Any:
        return value

    def decode(self, data: Any) -> str:
        return str(data)

    def usage(self, value: str) -> None:
        return None


@pytest.fixture
def store(tmp_path: Path, postgres: LocalPostgres) -> Any:
    inner = lc_store("pgvector", DeterministicFakeEmbedding(size=384), tmp_path, postgres, dim=384)
    yield inner
    close_lc_store("pgvector", inner)


def host(tmp_path: Path, name: str, store: Any, index_class: Any = None) -> LLMService:
    """One host: its own cache directory, the shared pgvector index."""
    config = PerformanceConfig(
        cache_dir=str(tmp_path / name),
        cache_shards=1,
        enable_metrics=False,
        semantic_cache=True,
        semantic_threshold=0.8,
    )
    embed = simulator_embed()
    embeddings = EmbeddingService(
        embed_many=lambda texts: embed(texts).tolist(),
        provider="sim",
        model="sim-384",
        config=config,
        store=None,
        symmetric=True,
    )
    manager = CacheManager(config)
    index = (index_class or VectorStoreSemanticIndex)(store)
    semantic = SemanticCache(embeddings, config=config, cache=manager, index=index, model="s")
    return LLMService(config=config, cache=manager, semantic=semantic)


def ask(svc: LLMService, text: str, model: str = "m") -> str:
    request = LLMRequest(
        model=model, messages=[{"role": "user", "content": text}], params={"temperature": 0.0}
    )
    answer: str = svc.generate(request, lambda: f"answer to {text}", Codec())
    return answer


def test_pgvector_index_serves_paraphrases_and_keeps_partitions(tmp_path: Path, store: Any) -> None:
    svc = host(tmp_path, "a", store)
    ask(svc, ASKED)
    assert ask(svc, PARAPHRASE) == f"answer to {ASKED}"
    assert ask(svc, PARAPHRASE, model="other") == f"answer to {PARAPHRASE}"  # other model
    assert ask(svc, "How do I not reset my account password?").startswith("answer to How do I not")
    with cache_scope("tenant-b"):
        assert ask(svc, PARAPHRASE) == f"answer to {PARAPHRASE}"
    assert svc.provider_calls == 4
    docs = store.similarity_search_by_vector([0.0] * 383 + [1.0], k=50)
    assert len({d.metadata["rag_perf_partition"] for d in docs}) == 3  # filters, not text


def test_pgvector_index_is_seen_by_another_host_sharing_the_answer_tier(
    tmp_path: Path, store: Any
) -> None:
    first = host(tmp_path, "shared", store)
    ask(first, ASKED)
    second = host(tmp_path, "shared", store)  # another process: same disk tier, same index
    assert ask(second, PARAPHRASE) == f"answer to {ASKED}"
    assert second.provider_calls == 0


def test_the_similarity_is_cosine_whatever_the_store_scores(tmp_path: Path, store: Any) -> None:
    index = VectorStoreSemanticIndex(store)
    x = np.zeros(384, np.float32)
    x[0] = 1.0
    y = np.zeros(384, np.float32)
    y[0], y[1] = 0.6, 0.8
    index.add("p", x, "x", "kx", None)
    (found,) = index.search("p", y, 4)
    assert found.similarity == pytest.approx(0.6)  # PGVector's own score is a distance, 0.4
    assert index.search("other", y, 4) == []


@pytest.fixture
def li_pgvector(tmp_path: Path, postgres: LocalPostgres) -> Any:
    inner = li_store("pgvector", tmp_path, postgres, dim=384)
    yield inner
    asyncio.run(aclose_li_store("pgvector", inner))


def test_llama_index_pgvector_store_as_the_index(tmp_path: Path, li_pgvector: Any) -> None:
    svc = host(tmp_path, "li", li_pgvector, LIVectorStoreSemanticIndex)
    ask(svc, ASKED)
    assert ask(svc, PARAPHRASE) == f"answer to {ASKED}"
    assert ask(svc, PARAPHRASE, model="other") == f"answer to {PARAPHRASE}"
    assert ask(svc, "How do I not reset my account password?").startswith("answer to How do I not")
    other = host(tmp_path, "li", li_pgvector, LIVectorStoreSemanticIndex)  # a second process
    assert ask(other, "please, how do I reset my account password?") == f"answer to {ASKED}"
    assert svc.provider_calls == 3 and other.provider_calls == 0
    index = LIVectorStoreSemanticIndex(li_pgvector)
    x = np.zeros(384, np.float32)
    x[0] = 1.0
    y = np.zeros(384, np.float32)
    y[0], y[1] = 0.6, 0.8
    index.add("p", x, "x", "kx", None)
    (found,) = index.search("p", y, 4)
    assert found.similarity == pytest.approx(0.6)  # cosine, not the store's score


def test_llama_index_pgvector_async(tmp_path: Path, postgres: LocalPostgres) -> None:
    x = np.zeros(384, np.float32)
    x[2] = 1.0

    async def run() -> list[Any]:
        # Built, used and closed on one event loop: its async engine's connections belong
        # to that loop.
        store = li_store("pgvector", tmp_path, postgres, dim=384)
        try:
            index = LIVectorStoreSemanticIndex(store)
            await index.aadd("q", x, "x", "kx", None)
            return await index.asearch("q", x, 4)
        finally:
            await aclose_li_store("pgvector", store)

    (found,) = asyncio.run(run())
    assert found.prompt == "x" and found.similarity == pytest.approx(1.0)
