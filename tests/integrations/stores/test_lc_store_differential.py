"""LangChain: the wrapper answers exactly as the real store does, after every write.

For each store (FAISS, Chroma, Qdrant local, pgvector), sync and async, with the default
cache (memory + disk), a memory-only cache and memory + Redis: a seeded sequence of adds,
upserts (the same id again) and deletes through the wrapper; after each write every kind
of search runs through the wrapper twice (a miss, then a hit) and once on the inner store,
and the three answers must be equal: documents, ids, metadata, scores and the scores'
types. With Redis, a second wrapper with its own manager over the same Redis (another
process) answers each search too and must agree: the write's version reaches it through
Redis.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
from langchain_core.documents import Document
from langchain_core.embeddings import DeterministicFakeEmbedding
from rag_perf_plugins.langchain import PerfVectorStore

from rag_perf_plugins.bench.postgres import LocalPostgres
from rag_perf_plugins.tracking import PerformanceTracker

from .conftest import (
    CACHES,
    DIM,
    STORES,
    aclose_lc_store,
    cache_managers,
    close_lc_store,
    lc_filter,
    lc_store,
)

WORDS = [
    "apple",
    "banana",
    "cherry",
    "date",
    "elder",
    "fig",
    "grape",
    "honeydew",
    "kiwi",
    "lemon",
    "mango",
]
QUERIES = ["apple banana", "cherry", "kiwi lemon mango", "fig"]


def _same(a: Any, b: Any) -> bool:
    """Equal values with equal types, element by element (0.5 != np.float32(0.5))."""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, Document) and isinstance(b, Document):
        return (a.page_content, a.metadata, a.id) == (b.page_content, b.metadata, b.id)
    return type(a) is type(b) and a == b


def _searches(kind: str, vector: list[float]) -> list[tuple[str, tuple[Any, ...], dict[str, Any]]]:
    out: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []
    for q in QUERIES:
        out += [
            ("similarity_search", (q,), {"k": 3}),
            ("similarity_search_with_score", (q,), {"k": 3}),
            ("similarity_search_with_relevance_scores", (q,), {"k": 3}),
            ("max_marginal_relevance_search", (q,), {"k": 2, "fetch_k": 5}),
        ]
    out += [
        ("similarity_search", (QUERIES[0],), {"k": 3, "filter": lc_filter(kind, "even")}),
        ("similarity_search_by_vector", (vector,), {"k": 3}),
        ("max_marginal_relevance_search_by_vector", (vector,), {"k": 2, "fetch_k": 5}),
    ]
    return out


def _ops(seed: int) -> list[tuple[str, Any]]:
    rng = random.Random(seed)
    ops: list[tuple[str, Any]] = []
    live: list[str] = []
    for step in range(6):
        choice = rng.random()
        if step < 2 or choice < 0.5 or not live:
            ids = [_id(rng.randrange(40)) for _ in range(rng.randint(1, 4))]
            ids = list(dict.fromkeys(ids))  # an id again later is an upsert
            texts = [" ".join(rng.sample(WORDS, 3)) for _ in ids]
            ops.append(("add", (texts, ids)))
            live += [i for i in ids if i not in live]
        else:
            gone = rng.sample(live, min(len(live), rng.randint(1, 2)))
            live = [i for i in live if i not in gone]
            ops.append(("delete", gone))
    return ops


def _id(n: int) -> str:
    """A UUID spelling every store accepts as an id (Qdrant takes UUIDs or integers only)."""
    return f"00000000-0000-0000-0000-{n:012d}"


def _metadatas(ids: list[str]) -> list[dict[str, Any]]:
    return [{"tag": "even" if int(i[-12:]) % 2 == 0 else "odd", "n": i} for i in ids]


def _upsert(kind: str, store: Any, texts: list[str], ids: list[str]) -> None:
    if kind == "faiss":  # FAISS refuses an id it holds: delete first, as an upsert does
        present = [i for i in ids if i in store.inner.index_to_docstore_id.values()]
        if present:
            store.delete(present)
    store.add_texts(texts, _metadatas(ids), ids=ids)


async def _aupsert(kind: str, store: Any, texts: list[str], ids: list[str]) -> None:
    if kind == "faiss":
        present = [i for i in ids if i in store.inner.index_to_docstore_id.values()]
        if present:
            await store.adelete(present)
    await store.aadd_texts(texts, _metadatas(ids), ids=ids)


# The fake vectors are not unit length: FAISS's L2 relevance falls below 0, and LangChain
# warns (on the inner store's calls; a cached answer does not warn again).
@pytest.mark.filterwarnings("ignore:Relevance scores must be between")
@pytest.mark.parametrize("cache", list(CACHES))
@pytest.mark.parametrize("kind", STORES)
def test_every_search_equals_the_inner_store_after_each_write(
    kind: str, cache: str, tmp_path: Path, postgres: LocalPostgres, request: pytest.FixtureRequest
) -> None:
    embeddings = DeterministicFakeEmbedding(size=DIM)
    manager, peer_manager = cache_managers(request, tmp_path, cache)
    tracker = PerformanceTracker()
    store = PerfVectorStore(
        lc_store(kind, embeddings, tmp_path, postgres), cache=manager, tracker=tracker
    )
    peer = PerfVectorStore(store.inner, cache=peer_manager) if peer_manager else None
    vector = embeddings.embed_query("grape")
    compared = 0
    for op, args in _ops(seed=STORES.index(kind)):
        if op == "add":
            _upsert(kind, store, *args)
        else:
            store.delete(args)
        for name, call_args, kwargs in _searches(kind, vector):
            first = getattr(store, name)(*call_args, **kwargs)
            again = getattr(store, name)(*call_args, **kwargs)
            truth = getattr(store.inner, name)(*call_args, **kwargs)
            assert _same(first, truth), (kind, op, name, call_args)
            assert _same(again, truth), (kind, op, name, call_args, "cached")
            if peer is not None:
                shared = getattr(peer, name)(*call_args, **kwargs)
                assert _same(shared, truth), (kind, op, name, call_args, "other process")
            compared += 1
    hits = tracker.get_operation_stats("vectorstore.similarity_search").cache_hits
    assert compared > 0 and hits > 0
    if peer_manager is not None:
        assert peer_manager.get_stats()["tiers"]["redis"]["hits"] > 0  # came through Redis
        assert manager.get_stats()["errors"] == peer_manager.get_stats()["errors"] == 0
        peer_manager.close()
    manager.close()
    close_lc_store(kind, store.inner)


# The fake vectors are not unit length: FAISS's L2 relevance falls below 0, and LangChain
# warns (on the inner store's calls; a cached answer does not warn again).
@pytest.mark.filterwarnings("ignore:Relevance scores must be between")
@pytest.mark.parametrize("cache", list(CACHES))
@pytest.mark.parametrize("kind", STORES)
async def test_every_async_search_equals_the_inner_store_after_each_write(
    kind: str, cache: str, tmp_path: Path, postgres: LocalPostgres, request: pytest.FixtureRequest
) -> None:
    embeddings = DeterministicFakeEmbedding(size=DIM)
    manager, peer_manager = cache_managers(request, tmp_path, cache)
    inner = lc_store(kind, embeddings, tmp_path, postgres, async_mode=True)
    store = PerfVectorStore(inner, cache=manager, tracker=PerformanceTracker())
    peer = PerfVectorStore(inner, cache=peer_manager) if peer_manager else None
    vector = embeddings.embed_query("grape")
    for op, args in _ops(seed=STORES.index(kind) + 1):
        if op == "add":
            await _aupsert(kind, store, *args)
        else:
            await store.adelete(args)
        for name, call_args, kwargs in _searches(kind, vector):
            first = await getattr(store, "a" + name)(*call_args, **kwargs)
            again = await getattr(store, "a" + name)(*call_args, **kwargs)
            truth = await getattr(store.inner, "a" + name)(*call_args, **kwargs)
            assert _same(first, truth), (kind, op, name, call_args)
            assert _same(again, truth), (kind, op, name, call_args, "cached")
            if peer is not None:
                shared = await getattr(peer, "a" + name)(*call_args, **kwargs)
                assert _same(shared, truth), (kind, op, name, call_args, "other process")
    if peer_manager is not None:
        assert peer_manager.get_stats()["tiers"]["redis"]["hits"] > 0
        assert manager.get_stats()["errors"] == peer_manager.get_stats()["errors"] == 0
        peer_manager.close()
    manager.close()
    await aclose_lc_store(kind, inner)
