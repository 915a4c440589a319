"""A semantic-cache index over a LangChain ``VectorStore`` (pgvector for many hosts).

Example::

    from langchain_postgres import PGVector
    from rag_perf_plugins.cache.semantic import SemanticCache
    from rag_perf_plugins.langchain import VectorStoreSemanticIndex

    store = PGVector(embeddings, connection=url, collection_name="rag_perf_semantic")
    semantic = SemanticCache(perf_embeddings, config=config,
                             index=VectorStoreSemanticIndex(store))

Each prompt is one document: its text, and metadata holding the partition id, the exact
cache key of the answer and the prompt's unit vector (float32, base64). A search asks the
store for the ``k`` nearest documents *with the partition as a metadata filter*, then
computes the cosine similarity itself from the stored vector: whatever the store's score
means (a distance, a relevance in 0..1, an inner product), the threshold is always on one
scale. Documents whose vector is missing, unreadable or of another dimension are skipped.

The store should index the same vectors we give it: ``add_embeddings`` (PGVector, FAISS,
Chroma, Qdrant have it) stores our vector as it is; a store without it embeds the prompt
with its own embedding model, which must then be the semantic cache's.

Not done here: a bound on the number of prompts (the store keeps them; delete the
collection, or call :meth:`SemanticCache.reindex`, which changes every partition id so
old documents are never matched again).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from langchain_core.vectorstores import VectorStore

from rag_perf_plugins._signature import checked_kwargs
from rag_perf_plugins.cache.semantic import (
    PARTITION_FIELD,
    Candidate,
    Vector,
    nearest,
    stored_metadata,
)

__all__ = ["VectorStoreSemanticIndex"]


def _equal(partition: str) -> dict[str, Any]:
    return {PARTITION_FIELD: partition}


class VectorStoreSemanticIndex:
    """A :class:`~rag_perf_plugins.cache.semantic.SemanticIndex` over a LangChain VectorStore.

    Args:
        store: Any ``VectorStore`` that filters by metadata in ``similarity_search_by_vector``.
        filter_of: The store's filter for one partition; the default,
            ``{"rag_perf_partition": partition}``, suits PGVector, Chroma and FAISS (Qdrant
            needs a ``models.Filter``).
        fetch: Documents asked of the store per search (at least ``k``): more leaves room
            for documents skipped as unreadable.
    """

    __slots__ = ("added", "fetch", "filter_of", "store")

    @checked_kwargs
    def __init__(
        self,
        store: VectorStore,
        *,
        filter_of: Callable[[str], Any] = _equal,
        fetch: int = 8,
    ) -> None:
        if not isinstance(store, VectorStore):
            msg = f"store must be a LangChain VectorStore, got {type(store).__name__}"
            raise TypeError(msg)
        if fetch < 1:
            msg = f"fetch must be >= 1, got {fetch}"
            raise ValueError(msg)
        self.store = store
        self.filter_of = filter_of
        self.fetch = fetch
        self.added = 0

    def __repr__(self) -> str:
        return f"<VectorStoreSemanticIndex [{type(self.store).__name__} | added: {self.added}]>"

    def search(self, partition: str, vector: Vector, k: int) -> list[Candidate]:
        """The ``k`` nearest prompts of ``partition`` by cosine similarity (computed here)."""
        docs = self.store.similarity_search_by_vector(
            vector.tolist(), k=max(k, self.fetch), filter=self.filter_of(partition)
        )
        return nearest(((doc.metadata, doc.page_content) for doc in docs), partition, vector, k)

    async def asearch(self, partition: str, vector: Vector, k: int) -> list[Candidate]:
        """Async :meth:`search` (the store's blocking client runs in a worker thread)."""
        return await asyncio.to_thread(self.search, partition, vector, k)

    def add(self, partition: str, vector: Vector, prompt: str, key: str, ttl: float | None) -> None:
        """One document for ``prompt`` (``ttl`` is not applied: the store keeps it)."""
        metadata = stored_metadata(partition, vector, key)
        add_embeddings = getattr(self.store, "add_embeddings", None)
        if callable(add_embeddings):
            add_embeddings([prompt], [vector.tolist()], metadatas=[metadata])
        else:
            self.store.add_texts([prompt], metadatas=[metadata])
        self.added += 1

    async def aadd(
        self, partition: str, vector: Vector, prompt: str, key: str, ttl: float | None
    ) -> None:
        """Async :meth:`add`."""
        await asyncio.to_thread(self.add, partition, vector, prompt, key, ttl)

    def info(self) -> dict[str, Any]:
        """For ``SemanticCache.info()``."""
        return {"index": type(self.store).__name__, "added": self.added}
