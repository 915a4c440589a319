"""LlamaIndex: the wrapper answers exactly as the real store does, after every write.

For each store (FAISS, Chroma, Qdrant local, pgvector), sync and async, with the default
cache, a memory-only cache and memory + Redis: seeded adds, upserts, ``delete`` (by document) and
``delete_nodes`` through the wrapper; after each write every query (plain, top-k, metadata
filter) runs through the wrapper twice (a miss, then a hit) and once on the inner store:
ids, similarities (with their types), node ids, texts and metadata must be equal. With
Redis, a second wrapper with its own manager over the same Redis (another process) answers
each query too and must agree.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from llama_index.core.schema import NodeRelationship, RelatedNodeInfo, TextNode
from llama_index.core.vector_stores.types import (
    MetadataFilter,
    MetadataFilters,
    VectorStoreQuery,
    VectorStoreQueryResult,
)
from rag_perf_plugins.llama_index import PerfVectorStore

from rag_perf_plugins.bench.postgres import LocalPostgres
from rag_perf_plugins.cache import CacheManager
from rag_perf_plugins.tracking import PerformanceTracker

from .conftest import CACHES, DIM, STORES, aclose_li_store, cache_managers, li_store

pytestmark = pytest.mark.filterwarnings("ignore:Payload indexes have no effect in the local Qdrant")

# FAISS's LlamaIndex store keeps no ids of its own: it deletes nothing and filters nothing.
DELETES = {"faiss": False}
FILTERS = {"faiss": False}


def _vector(rng: random.Random) -> list[float]:
    v = np.asarray([rng.gauss(0, 1) for _ in range(DIM)])
    return [float(x) for x in v / np.linalg.norm(v)]


def _node(rng: random.Random, n: int, doc: str) -> TextNode:
    return TextNode(
        id_=f"00000000-0000-0000-0000-{n:012d}",
        text=f"chunk {n} of {doc}",
        embedding=_vector(rng),
        metadata={"tag": "even" if n % 2 == 0 else "odd", "doc": doc},
        relationships={NodeRelationship.SOURCE: RelatedNodeInfo(node_id=doc)},
    )


def _queries(kind: str, rng: random.Random) -> list[VectorStoreQuery]:
    queries = [VectorStoreQuery(query_embedding=_vector(rng), similarity_top_k=k) for k in (1, 3)]
    if FILTERS.get(kind, True):
        tag = MetadataFilters(filters=[MetadataFilter(key="tag", value="even")])
        queries.append(
            VectorStoreQuery(query_embedding=_vector(rng), similarity_top_k=3, filters=tag)
        )
    return queries


def _plain(result: VectorStoreQueryResult) -> Any:
    nodes = None
    if result.nodes is not None:
        nodes = [(n.node_id, n.get_content(), n.metadata) for n in result.nodes]
    sims = None
    if result.similarities is not None:
        sims = [(type(s).__name__, s) for s in result.similarities]
    return nodes, sims, result.ids


def _ops(kind: str, seed: int) -> list[tuple[str, Any]]:
    rng = random.Random(seed)
    ops: list[tuple[str, Any]] = []
    n = 0
    for step in range(6):
        if step < 2 or not DELETES.get(kind, True) or rng.random() < 0.5:
            doc = f"doc-{step}"
            nodes = [_node(rng, n + i, doc) for i in range(rng.randint(1, 3))]
            n += len(nodes)
            ops.append(("add", nodes))
        elif rng.random() < 0.5:
            ops.append(("delete", f"doc-{rng.randrange(step)}"))
        else:
            ops.append(("delete_nodes", [f"00000000-0000-0000-0000-{rng.randrange(n):012d}"]))
    return ops


def _check_peer(manager: CacheManager, peer_manager: CacheManager | None) -> None:
    """The other process's answers came through Redis, and neither manager saw an error."""
    if peer_manager is not None:
        assert peer_manager.get_stats()["tiers"]["redis"]["hits"] > 0
        assert manager.get_stats()["errors"] == peer_manager.get_stats()["errors"] == 0
        peer_manager.close()


@pytest.mark.parametrize("cache", list(CACHES))
@pytest.mark.parametrize("kind", STORES)
async def test_every_query_equals_the_inner_store_after_each_write(
    kind: str, cache: str, tmp_path: Path, postgres: LocalPostgres, request: pytest.FixtureRequest
) -> None:
    manager, peer_manager = cache_managers(request, tmp_path, cache)
    inner = li_store(kind, tmp_path, postgres)
    tracker = PerformanceTracker()
    store = PerfVectorStore(inner, cache=manager, tracker=tracker)
    peer = PerfVectorStore(inner, cache=peer_manager) if peer_manager else None
    rng = random.Random(7)
    for op, arg in _ops(kind, STORES.index(kind)):
        if op == "add":
            store.add(arg)
        elif op == "delete":
            store.delete(arg)
        else:
            store.delete_nodes(arg)
        for query in _queries(kind, rng):
            first, again = store.query(query), store.query(query)
            truth = inner.query(query)
            assert _plain(first) == _plain(truth), (kind, op)
            assert _plain(again) == _plain(truth), (kind, op, "cached")
            if peer is not None:
                assert _plain(peer.query(query)) == _plain(truth), (kind, op, "other process")
    _check_peer(manager, peer_manager)
    assert tracker.get_operation_stats("vectorstore.query").cache_hits > 0
    manager.close()
    await aclose_li_store(kind, inner)


@pytest.mark.parametrize("cache", list(CACHES))
@pytest.mark.parametrize("kind", STORES)
async def test_every_async_query_equals_the_inner_store_after_each_write(
    kind: str, cache: str, tmp_path: Path, postgres: LocalPostgres, request: pytest.FixtureRequest
) -> None:
    manager, peer_manager = cache_managers(request, tmp_path, cache)
    inner = li_store(kind, tmp_path, postgres, asynchronous=True)
    store = PerfVectorStore(inner, cache=manager, tracker=PerformanceTracker())
    peer = PerfVectorStore(inner, cache=peer_manager) if peer_manager else None
    rng = random.Random(8)
    for op, arg in _ops(kind, STORES.index(kind) + 10):
        if op == "add":
            await store.async_add(arg)
        elif op == "delete":
            await store.adelete(arg)
        else:
            await store.adelete_nodes(arg)
        for query in _queries(kind, rng):
            first, again = await store.aquery(query), await store.aquery(query)
            truth = await inner.aquery(query)
            assert _plain(first) == _plain(truth), (kind, op)
            assert _plain(again) == _plain(truth), (kind, op, "cached")
            if peer is not None:
                shared = await peer.aquery(query)
                assert _plain(shared) == _plain(truth), (kind, op, "other process")
    _check_peer(manager, peer_manager)
    manager.close()
    await aclose_li_store(kind, inner)
