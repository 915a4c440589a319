"""PerfVectorStore: cached queries keyed by the whole query and the shared write version."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from llama_index.core import Document, StorageContext, VectorStoreIndex
from llama_index.core.bridge.pydantic import PrivateAttr
from llama_index.core.schema import BaseNode, TextNode
from llama_index.core.vector_stores import SimpleVectorStore
from llama_index.core.vector_stores.types import (
    MetadataFilter,
    MetadataFilters,
    VectorStoreQuery,
    VectorStoreQueryMode,
    VectorStoreQueryResult,
)
from rag_perf_plugins.llama_index import PerfVectorStore

from rag_perf_plugins.cache import CacheManager
from rag_perf_plugins.config import PerformanceConfig
from rag_perf_plugins.tracking import PerformanceTracker
from tests.integrations.llama_index.li_models import CountingEmbedding, vector_of


class CountingStore(SimpleVectorStore):
    """SimpleVectorStore that counts queries and, with ``keep_text``, returns nodes too."""

    _queries: int = PrivateAttr(default=0)
    _nodes: dict[str, BaseNode] = PrivateAttr(default_factory=dict)

    def add(self, nodes: Sequence[BaseNode], **kwargs: Any) -> list[str]:
        for node in nodes:
            self._nodes[node.node_id] = node
        return super().add(nodes, **kwargs)

    def query(self, query: VectorStoreQuery, **kwargs: Any) -> VectorStoreQueryResult:
        self._queries += 1
        result = super().query(query, **kwargs)
        if self.stores_text:
            result.nodes = [self._nodes[i] for i in result.ids or []]
        return result

    @property
    def queries(self) -> int:
        return self._queries


def _node(i: int, topic: str = "a") -> TextNode:
    return TextNode(
        text=f"node {i} about {topic}",
        id_=f"n{i}",
        embedding=vector_of(f"node {i}", 8),
        metadata={"topic": topic, "i": i},
    )


def _query(text: str = "q", k: int = 2, **kw: Any) -> VectorStoreQuery:
    return VectorStoreQuery(query_embedding=vector_of(text, 8), similarity_top_k=k, **kw)


@pytest.fixture
def config(cache_dir: Path) -> PerformanceConfig:
    return PerformanceConfig(cache_dir=str(cache_dir), enable_metrics=False)


@pytest.fixture
def inner() -> CountingStore:
    store = CountingStore()
    store.add([_node(i, "a" if i % 2 else "b") for i in range(6)])
    return store


def test_second_identical_query_is_served_from_the_cache(
    inner: CountingStore, config: PerformanceConfig
) -> None:
    tracker = PerformanceTracker()
    store = PerfVectorStore(inner, config, tracker=tracker)
    first = store.query(_query())
    second = store.query(_query())
    assert inner.queries == 1
    assert second.ids == first.ids
    assert second.similarities == pytest.approx(first.similarities)
    stats = tracker.get_operation_stats("vectorstore.query")
    assert (stats.count, stats.cache_hits, stats.cache_misses) == (2, 1, 1)


@pytest.mark.parametrize(
    "other",
    [
        _query("other text"),
        _query(k=3),
        _query(filters=MetadataFilters(filters=[MetadataFilter(key="topic", value="a")])),
        _query(mode=VectorStoreQueryMode.MMR),
        _query(node_ids=["n1", "n2"]),
        VectorStoreQuery(query_embedding=vector_of("q", 8), similarity_top_k=2, query_str="x"),
    ],
)
def test_any_change_to_the_query_misses(
    inner: CountingStore, config: PerformanceConfig, other: VectorStoreQuery
) -> None:
    store = PerfVectorStore(inner, config)
    store.query(_query())
    store.query(other)
    assert inner.queries == 2


def test_writes_bump_the_version_and_invalidate(
    inner: CountingStore, config: PerformanceConfig
) -> None:
    tracker = PerformanceTracker()
    store = PerfVectorStore(inner, config, tracker=tracker)
    before = store.version
    store.query(_query("node 9"))
    store.add([_node(9)])
    assert store.version == before + 1
    result = store.query(_query("node 9"))
    assert inner.queries == 2
    assert result.ids is not None and result.ids[0] == "n9"
    store.delete("n9")  # SimpleVectorStore deletes by ref_doc_id; still a write
    store.delete_nodes(["n9"])
    assert store.version == before + 3
    assert tracker.get_operation_stats("vectorstore.add").count == 1
    assert tracker.get_operation_stats("vectorstore.delete").count == 2


class FailingStore(CountingStore):
    def add(self, nodes: Sequence[BaseNode], **kwargs: Any) -> list[str]:
        super().add(nodes[:1], **kwargs)  # half written, then the database fails
        raise RuntimeError("write failed")


def test_a_failed_write_still_bumps(config: PerformanceConfig) -> None:
    tracker = PerformanceTracker()
    store = PerfVectorStore(FailingStore(), config, tracker=tracker)
    before = store.version
    with pytest.raises(RuntimeError, match="write failed"):
        store.add([_node(1), _node(2)])
    assert store.version == before + 1
    store.clear()
    assert store.version == before + 2
    add = tracker.get_operation_stats("vectorstore.add")
    assert (add.count, add.errors) == (1, 1)
    assert tracker.get_operation_stats("vectorstore.delete").count == 1


def test_a_write_through_another_manager_on_the_same_directory_invalidates(
    inner: CountingStore, config: PerformanceConfig
) -> None:
    # Two managers on one directory: they share one write version, so the reader sees the
    # writer's bump at once (another process sees it within version_check_interval).
    reader_cache, writer_cache = CacheManager(config), CacheManager(config)
    reader = PerfVectorStore(inner, config, cache=reader_cache, name="kb")
    writer = PerfVectorStore(CountingStore(), config, cache=writer_cache, name="kb")
    reader.query(_query())
    reader.query(_query())
    assert inner.queries == 1
    writer.add([_node(7)])
    reader.query(_query())
    assert inner.queries == 2
    reader_cache.close()
    writer_cache.close()


def test_nodes_round_trip_without_their_embedding(config: PerformanceConfig) -> None:
    inner = CountingStore()
    inner.stores_text = True  # SimpleVectorStore's __init__ drops the keyword
    inner.add([_node(i) for i in range(4)])
    store = PerfVectorStore(inner, config)
    assert store.stores_text
    first = store.query(_query())
    second = store.query(_query())
    assert inner.queries == 1
    assert first.nodes is not None and second.nodes is not None
    assert [n.node_id for n in second.nodes] == [n.node_id for n in first.nodes]
    assert [n.get_content() for n in second.nodes] == [n.get_content() for n in first.nodes]
    assert [n.metadata for n in second.nodes] == [n.metadata for n in first.nodes]
    assert all(n.embedding is None for n in second.nodes)


def test_aquery_is_cached_like_query(inner: CountingStore, config: PerformanceConfig) -> None:
    store = PerfVectorStore(inner, config)

    async def run() -> tuple[VectorStoreQueryResult, VectorStoreQueryResult]:
        first = await store.aquery(_query())
        await store.async_add([_node(8)])
        await store.aquery(_query())
        return first, await store.aquery(_query())

    first, last = asyncio.run(run())
    assert inner.queries == 2
    assert last.ids is not None and first.ids is not None


def test_caching_off_always_asks_the_inner_store(inner: CountingStore, cache_dir: Path) -> None:
    store = PerfVectorStore(
        inner, PerformanceConfig(cache_dir=str(cache_dir), enable_caching=False)
    )
    store.query(_query())
    store.query(_query())
    assert inner.queries == 2


def test_retriever_over_an_index_uses_the_cache_and_sees_inserts(
    config: PerformanceConfig,
) -> None:
    inner = CountingStore()
    store = PerfVectorStore(inner, config)
    embed = CountingEmbedding(model_name="counting-8", dim=8)
    docs = [Document(text=f"text number {i}", id_=f"d{i}") for i in range(5)]
    index = VectorStoreIndex.from_documents(
        docs, storage_context=StorageContext.from_defaults(vector_store=store), embed_model=embed
    )
    plain = VectorStoreIndex.from_documents(docs, embed_model=embed)
    retriever = index.as_retriever(similarity_top_k=2)
    expected = [n.node.get_content() for n in plain.as_retriever(similarity_top_k=2).retrieve("x")]
    assert [n.node.get_content() for n in retriever.retrieve("x")] == expected
    assert [n.node.get_content() for n in retriever.retrieve("x")] == expected
    assert inner.queries == 1
    index.insert(Document(text="text number 99", id_="d99"))
    retriever.retrieve("x")
    assert inner.queries == 2
    index.delete_ref_doc("d99")
    retriever.retrieve("x")
    assert inner.queries == 3


def test_bad_arguments_are_refused(inner: CountingStore) -> None:
    with pytest.raises(TypeError):
        PerfVectorStore(object())  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        PerfVectorStore(PerfVectorStore(inner))
    with pytest.raises(ValueError, match="ttl"):
        PerfVectorStore(inner, ttl=0)
    with pytest.raises(ValueError, match="name"):
        PerfVectorStore(inner, name="")


def test_memory_only_cache_stops_serving_a_deleted_node(
    inner: CountingStore, cache_dir: Path
) -> None:
    """With the disk tier off the write version lives in memory; a delete must still bump it."""
    config = PerformanceConfig(cache_dir=str(cache_dir), cache_disk_enabled=False)
    store = PerfVectorStore(inner, config, tracker=PerformanceTracker())
    store.add([_node(9)])
    assert (store.query(_query("node 9", k=1)).ids or [])[0] == "n9"
    store.delete_nodes(["n9"])
    after = store.query(_query("node 9", k=1)).ids
    assert after == inner.query(_query("node 9", k=1)).ids and "n9" not in (after or [])


def test_config_retrieval_ttl_expires_cached_queries(
    inner: CountingStore, cache_dir: Path, fake_clock: Any
) -> None:
    """The wrapper's ``retrieval_ttl`` decides, even over a manager with a longer default."""
    cache = CacheManager(
        PerformanceConfig(cache_dir=str(cache_dir), cache_ttl=3600.0), clock=fake_clock
    )
    store = PerfVectorStore(inner, PerformanceConfig(retrieval_ttl=1.0), cache=cache)
    store.query(_query())
    store.query(_query())
    assert inner.queries == 1
    fake_clock.advance(1.5)
    asyncio.run(store.aquery(_query()))
    assert inner.queries == 2
    cache.close()
