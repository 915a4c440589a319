"""PerfVectorStore: LangChain's standard suite, cached searches, invalidation across processes."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from langchain_core.embeddings import DeterministicFakeEmbedding
from langchain_core.vectorstores import InMemoryVectorStore, VectorStore
from langchain_tests.integration_tests import VectorStoreIntegrationTests
from rag_perf_plugins.langchain import PerfEmbeddings, PerfVectorStore

from rag_perf_plugins.cache import CacheManager, cache_control
from rag_perf_plugins.config import PerformanceConfig
from rag_perf_plugins.simulator import Simulator
from rag_perf_plugins.tracking import PerformanceTracker

MakeEmbeddings = Any
CountRequests = Any


def _manager(path: Path) -> CacheManager:
    return CacheManager(
        PerformanceConfig(cache_dir=str(path), cache_shards=1, enable_metrics=False)
    )


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[CacheManager]:
    cache = _manager(tmp_path / "cache")
    yield cache
    cache.close()


class TestPerfVectorStoreStandard(VectorStoreIntegrationTests):
    @pytest.fixture
    def vectorstore(self, tmp_path: Path) -> Iterator[VectorStore]:
        cache = _manager(tmp_path / "cache")
        yield PerfVectorStore(InMemoryVectorStore(self.get_embeddings()), cache=cache)
        cache.close()


class CountingStore(InMemoryVectorStore):
    """InMemoryVectorStore that counts the searches reaching it; dict filters match metadata."""

    searches = 0

    def _similarity_search_with_score_by_vector(
        self, embedding: list[float], k: int = 4, filter: Any = None
    ) -> Any:
        type(self).searches += 1
        if isinstance(filter, dict):
            wanted = dict(filter)
            filter = lambda doc: all(doc.metadata.get(f) == v for f, v in wanted.items())  # noqa: E731
        return super()._similarity_search_with_score_by_vector(embedding, k, filter)


def _store(manager: CacheManager, **options: Any) -> PerfVectorStore:
    CountingStore.searches = 0
    inner = CountingStore(DeterministicFakeEmbedding(size=8))
    inner.add_texts(
        ["apples are red", "bananas are yellow", "cherries are dark"],
        metadatas=[{"kind": "a"}, {"kind": "b"}, {"kind": "a"}],
    )
    return PerfVectorStore(inner, cache=manager, tracker=PerformanceTracker(), **options)


def test_warm_searches_skip_the_store_and_match(manager: CacheManager) -> None:
    store = _store(manager)
    cold = store.similarity_search_with_score("red fruit", k=2)
    warm = store.similarity_search_with_score("red fruit", k=2)
    assert warm == cold and CountingStore.searches == 1
    assert store.similarity_search("red fruit", k=2) == [d for d, _ in cold]


@pytest.mark.parametrize(
    "change",
    [{"k": 1}, {"filter": lambda d: d.metadata["kind"] == "a"}, {"query": "yellow"}],
    ids=["k", "filter", "query"],
)
def test_must_miss(manager: CacheManager, change: dict[str, Any]) -> None:
    store = _store(manager)
    store.similarity_search("red fruit", k=2)
    args: dict[str, Any] = {"query": "red fruit", "k": 2, **change}
    store.similarity_search(**args)
    # A filter callable cannot be keyed: that call is searched and not cached.
    assert CountingStore.searches == 2


def test_keyable_filters_are_part_of_the_key(manager: CacheManager) -> None:
    store = _store(manager)
    store.similarity_search("red", k=2, filter={"kind": "a"})
    store.similarity_search("red", k=2, filter={"kind": "b"})
    store.similarity_search("red", k=2, filter={"kind": "a"})
    assert CountingStore.searches == 2


def test_writes_invalidate(manager: CacheManager) -> None:
    store = _store(manager)
    store.similarity_search("red", k=2)
    ids = store.add_texts(["strawberries are red"])
    texts = [d.page_content for d in store.similarity_search("red", k=2)]
    assert len(texts) == 2 and CountingStore.searches == 2
    store.delete(ids)
    store.similarity_search("red", k=2)
    assert CountingStore.searches == 3


async def test_async_twins_are_cached(manager: CacheManager) -> None:
    store = _store(manager)
    first = await store.asimilarity_search("dark", k=1)
    assert await store.asimilarity_search("dark", k=1) == first
    mmr = await store.amax_marginal_relevance_search("dark", k=1, fetch_k=2)
    assert await store.amax_marginal_relevance_search("dark", k=1, fetch_k=2) == mmr
    vec = [0.1] * 8
    by_vec = await store.asimilarity_search_by_vector(vec, k=1)
    assert store.similarity_search_by_vector(vec, k=1) == by_vec
    assert CountingStore.searches == 3  # search, mmr, by-vector: one miss each
    await store.aadd_texts(["more"])
    await store.asimilarity_search("dark", k=1)
    assert CountingStore.searches == 4


def test_retriever_and_metadata_control(manager: CacheManager) -> None:
    store = _store(manager)
    retriever = store.as_retriever(search_kwargs={"k": 1})
    retriever.invoke("red")
    retriever.invoke("red")
    assert CountingStore.searches == 1
    retriever.invoke("red", config={"metadata": {"rag_perf": {"cache": "bypass"}}})
    assert CountingStore.searches == 2
    with cache_control("refresh"):
        retriever.invoke("red")
    assert CountingStore.searches == 3


def test_warm_searches_make_zero_provider_calls(
    simulator: Simulator,
    manager: CacheManager,
    openai_embeddings: MakeEmbeddings,
    embedding_requests: CountRequests,
) -> None:
    embeddings = PerfEmbeddings(openai_embeddings(simulator), tracker=PerformanceTracker())
    store = PerfVectorStore(InMemoryVectorStore(embeddings), cache=manager)
    store.add_texts([f"passage about topic {i}" for i in range(20)])
    cold = store.similarity_search("topic 3", k=3)
    before = embedding_requests(simulator)
    assert store.similarity_search("topic 3", k=3) == cold
    assert store.as_retriever(search_kwargs={"k": 3}).invoke("topic 3") == cold
    assert embedding_requests(simulator) == before


def test_a_write_in_another_process_invalidates(tmp_path: Path) -> None:
    cache_dir = tmp_path / "shared"
    manager = _manager(cache_dir)
    try:
        store = _store(manager, name="kb")
        store.similarity_search("red", k=1)
        store.similarity_search("red", k=1)
        assert CountingStore.searches == 1
        script = textwrap.dedent(
            f"""
            from langchain_core.embeddings import DeterministicFakeEmbedding
            from langchain_core.vectorstores import InMemoryVectorStore
            from rag_perf_plugins.cache import CacheManager
            from rag_perf_plugins.config import PerformanceConfig
            from rag_perf_plugins.langchain import PerfVectorStore

            cache = CacheManager(PerformanceConfig(cache_dir={str(cache_dir)!r}, cache_shards=1,
                                                   enable_metrics=False))
            store = PerfVectorStore(InMemoryVectorStore(DeterministicFakeEmbedding(size=8)),
                                    cache=cache, name="kb")
            store.add_texts(["written elsewhere"])
            cache.close()
            """
        )
        subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
        store.similarity_search("red", k=1)
        assert CountingStore.searches == 2
    finally:
        manager.close()


def test_bad_arguments_are_named(manager: CacheManager) -> None:
    with pytest.raises(TypeError, match="inner must be a LangChain VectorStore"):
        PerfVectorStore("nope", cache=manager)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="ttl must be > 0"):
        PerfVectorStore(
            InMemoryVectorStore(DeterministicFakeEmbedding(size=2)), cache=manager, ttl=0
        )


def test_memory_only_cache_stops_serving_a_deleted_document(tmp_path: Path) -> None:
    """With the disk tier off the write version lives in memory; a delete must still bump it."""
    cache = CacheManager(
        PerformanceConfig(cache_dir=str(tmp_path / "c"), cache_disk_enabled=False),
        tracker=None,
    )
    store = _store(cache)
    [doc_id] = store.add_texts(["strawberries are red"], ids=["straw"])
    first = [d.id for d in store.similarity_search("strawberries are red", k=1)]
    assert first == [doc_id]
    store.delete([doc_id])
    after = [d.id for d in store.similarity_search("strawberries are red", k=1)]
    unwrapped = [d.id for d in store.inner.similarity_search("strawberries are red", k=1)]
    assert after == unwrapped and doc_id not in after
    cache.close()


@pytest.mark.parametrize("asynchronous", [False, True])
def test_config_retrieval_ttl_expires_cached_searches(
    tmp_path: Path, fake_clock: Any, asynchronous: bool
) -> None:
    """The wrapper's ``retrieval_ttl`` decides, even over a manager with a longer default."""
    import asyncio

    cache = CacheManager(
        PerformanceConfig(cache_dir=str(tmp_path / "c"), cache_ttl=3600.0), clock=fake_clock
    )
    store = _store(cache, config=PerformanceConfig(retrieval_ttl=1.0, cache_ttl=3600.0))

    def search() -> Any:
        if asynchronous:
            return asyncio.run(store.asimilarity_search("red", k=2))
        return store.similarity_search("red", k=2)

    search()
    search()
    assert CountingStore.searches == 1
    fake_clock.advance(1.5)
    search()
    assert CountingStore.searches == 2
    cache.close()
