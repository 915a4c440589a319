"""PerfEmbeddings: LangChain's standard suites, and counts at the simulator."""

from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import Callable
from typing import Any

import pytest
from langchain_core.embeddings import DeterministicFakeEmbedding, Embeddings
from langchain_openai import OpenAIEmbeddings
from langchain_tests.integration_tests import EmbeddingsIntegrationTests
from langchain_tests.unit_tests import EmbeddingsUnitTests
from rag_perf_plugins.langchain import PerfEmbeddings
from rag_perf_plugins.langchain.embeddings import is_symmetric

from rag_perf_plugins.config import PerformanceConfig
from rag_perf_plugins.services.embeddings import EmbeddingStore
from rag_perf_plugins.simulator import Simulator
from rag_perf_plugins.tracking import PerformanceTracker


class TestPerfEmbeddingsUnit(EmbeddingsUnitTests):
    @property
    def embeddings_class(self) -> type[PerfEmbeddings]:
        return PerfEmbeddings

    @property
    def embedding_model_params(self) -> dict[str, Any]:
        return {"inner": DeterministicFakeEmbedding(size=8)}


class TestPerfEmbeddingsIntegration(EmbeddingsIntegrationTests):
    """The standard integration suite with the real OpenAIEmbeddings against the simulator."""

    @property
    def embeddings_class(self) -> type[PerfEmbeddings]:
        return PerfEmbeddings

    @pytest.fixture
    def model(self, simulator: Simulator, openai_embeddings: MakeEmbeddings) -> PerfEmbeddings:
        return PerfEmbeddings(openai_embeddings(simulator), tracker=PerformanceTracker())


class CountingEmbedding(DeterministicFakeEmbedding):
    """DeterministicFakeEmbedding that counts provider calls (thread-safe)."""

    calls: int = 0

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        with _LOCK:
            type(self).calls += 1
        return super().embed_documents(texts)


_LOCK = threading.Lock()
MakeEmbeddings = Callable[..., OpenAIEmbeddings]
CountRequests = Callable[[Simulator], int]


def test_symmetry_detection(simulator: Simulator, openai_embeddings: MakeEmbeddings) -> None:
    assert is_symmetric(openai_embeddings(simulator))
    assert is_symmetric(DeterministicFakeEmbedding(size=4))

    class Prefixed(Embeddings):
        def embed_documents(self, texts: list[str]) -> list[list[float]]:
            return [[1.0] for _ in texts]

        def embed_query(self, text: str) -> list[float]:
            return [2.0]

    assert not is_symmetric(Prefixed())


async def test_100_distinct_concurrent_queries_are_batched(
    simulator: Simulator, openai_embeddings: MakeEmbeddings, embedding_requests: CountRequests
) -> None:
    config = PerformanceConfig(batch_size=20, max_wait_time=0.020)
    embeddings = PerfEmbeddings(openai_embeddings(simulator), config, tracker=PerformanceTracker())
    vectors = await asyncio.gather(*(embeddings.aembed_query(f"question {i}") for i in range(100)))
    assert len({tuple(v) for v in vectors}) == 100
    assert embedding_requests(simulator) <= math.ceil(100 / 20) + 1


async def test_100_identical_concurrent_queries_make_one_request(
    simulator: Simulator, openai_embeddings: MakeEmbeddings, embedding_requests: CountRequests
) -> None:
    embeddings = PerfEmbeddings(openai_embeddings(simulator), tracker=PerformanceTracker())
    vectors = await asyncio.gather(*(embeddings.aembed_query("same question") for _ in range(100)))
    assert all(v == vectors[0] for v in vectors)
    assert embedding_requests(simulator) == 1


async def test_warm_calls_make_zero_requests_and_match_cold(
    simulator: Simulator,
    vector_store: EmbeddingStore,
    openai_embeddings: MakeEmbeddings,
    embedding_requests: CountRequests,
) -> None:
    inner = openai_embeddings(simulator)
    cold = PerfEmbeddings(inner, store=vector_store, tracker=PerformanceTracker())
    docs = [f"document number {i}" for i in range(30)]
    cold_vectors = await cold.aembed_documents(docs)
    cold_query = cold.embed_query("what is rag")
    before = embedding_requests(simulator)
    warm = PerfEmbeddings(inner, store=vector_store, tracker=PerformanceTracker())
    assert await warm.aembed_documents(docs) == cold_vectors
    assert warm.embed_documents(docs) == cold_vectors
    assert warm.embed_query("what is rag") == cold_query
    assert embedding_requests(simulator) == before


@pytest.mark.parametrize(
    "change",
    [{"model": "text-embedding-3-large"}, {"dimensions": 256}],
    ids=["another-model", "another-dimension"],
)
def test_must_miss(
    simulator: Simulator,
    vector_store: EmbeddingStore,
    change: dict[str, Any],
    openai_embeddings: MakeEmbeddings,
    embedding_requests: CountRequests,
) -> None:
    PerfEmbeddings(
        openai_embeddings(simulator), store=vector_store, tracker=PerformanceTracker()
    ).embed_documents(["a text"])
    before = embedding_requests(simulator)
    other = PerfEmbeddings(
        openai_embeddings(simulator, **change), store=vector_store, tracker=PerformanceTracker()
    )
    other.embed_documents(["a text"])
    assert embedding_requests(simulator) == before + 1


def test_query_and_document_roles_are_cached_apart(vector_store: EmbeddingStore) -> None:
    CountingEmbedding.calls = 0
    embeddings = PerfEmbeddings(
        CountingEmbedding(size=4), store=vector_store, tracker=PerformanceTracker()
    )
    embeddings.embed_documents(["t"])
    embeddings.embed_query("t")
    embeddings.embed_query("t")
    assert CountingEmbedding.calls == 2


def test_stats_are_recorded_per_call(vector_store: EmbeddingStore) -> None:
    tracker = PerformanceTracker()
    embeddings = PerfEmbeddings(
        DeterministicFakeEmbedding(size=4), store=vector_store, tracker=tracker
    )
    embeddings.embed_documents(["a", "b"])
    embeddings.embed_documents(["a", "b"])
    stats = tracker.get_operation_stats("embedding.document")
    assert (stats.count, stats.cache_hits, stats.cache_misses) == (2, 1, 1)


def test_bad_inner_is_refused() -> None:
    with pytest.raises(TypeError, match="inner must be a LangChain Embeddings"):
        PerfEmbeddings("not a model")  # type: ignore[arg-type]
    wrapped = PerfEmbeddings(DeterministicFakeEmbedding(size=4), tracker=PerformanceTracker())
    with pytest.raises(TypeError, match="already a PerfEmbeddings"):
        PerfEmbeddings(wrapped)


async def test_default_store_is_the_process_cache(
    simulator: Simulator, openai_embeddings: MakeEmbeddings, embedding_requests: CountRequests
) -> None:
    first = PerfEmbeddings(openai_embeddings(simulator), tracker=PerformanceTracker())
    cold = await first.aembed_documents(["alpha", "beta"])
    second = PerfEmbeddings(openai_embeddings(simulator), tracker=PerformanceTracker())
    assert await second.aembed_documents(["beta", "alpha"]) == [cold[1], cold[0]]
    assert embedding_requests(simulator) == 1
