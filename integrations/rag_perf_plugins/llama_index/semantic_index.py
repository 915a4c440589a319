"""A semantic-cache index over a LlamaIndex vector store (``PGVectorStore`` for many hosts).

Example::

    from llama_index.vector_stores.postgres import PGVectorStore
    from rag_perf_plugins.cache.semantic import SemanticCache
    from rag_perf_plugins.llama_index import VectorStoreSemanticIndex

    store = PGVectorStore.from_params(..., table_name="rag_perf_semantic", embed_dim=384)
    semantic = SemanticCache(perf_embedding.service, config=config,
                             index=VectorStoreSemanticIndex(store))

Each prompt is one ``TextNode`` with our vector as its embedding and metadata holding the
partition id, the exact cache key of the answer and the vector (float32, base64). A search
queries the store with an exact-match metadata filter on the partition and recomputes the
cosine similarity from the stored vector, so the threshold keeps one meaning whatever the
store's score is. Nodes whose vector is missing, unreadable or of another dimension are
skipped, and a node of another partition (a store that ignored the filter) never counts.
"""

from __future__ import annotations

from typing import Any

from llama_index.core.schema import TextNode
from llama_index.core.vector_stores.types import (
    BasePydanticVectorStore,
    ExactMatchFilter,
    MetadataFilters,
    VectorStoreQuery,
)
from rag_perf_plugins._signature import checked_kwargs
from rag_perf_plugins.cache.semantic import (
    PARTITION_FIELD,
    Candidate,
    Vector,
    nearest,
    stored_metadata,
)

__all__ = ["VectorStoreSemanticIndex"]


class VectorStoreSemanticIndex:
    """A :class:`~rag_perf_plugins.cache.semantic.SemanticIndex` over a LlamaIndex store.

    Args:
        store: A ``BasePydanticVectorStore`` that stores embeddings and applies
            ``MetadataFilters`` (PGVectorStore, Chroma, Qdrant do).
        fetch: Nodes asked of the store per search (at least ``k``).
    """

    __slots__ = ("added", "fetch", "store")

    @checked_kwargs
    def __init__(self, store: BasePydanticVectorStore, *, fetch: int = 8) -> None:
        if not isinstance(store, BasePydanticVectorStore):
            msg = f"store must be a LlamaIndex vector store, got {type(store).__name__}"
            raise TypeError(msg)
        if fetch < 1:
            msg = f"fetch must be >= 1, got {fetch}"
            raise ValueError(msg)
        self.store = store
        self.fetch = fetch
        self.added = 0

    def __repr__(self) -> str:
        return f"<VectorStoreSemanticIndex [{type(self.store).__name__} | added: {self.added}]>"

    def _query(self, partition: str, vector: Vector, k: int) -> VectorStoreQuery:
        filters = MetadataFilters(filters=[ExactMatchFilter(key=PARTITION_FIELD, value=partition)])
        return VectorStoreQuery(
            query_embedding=vector.tolist(), similarity_top_k=max(k, self.fetch), filters=filters
        )

    @staticmethod
    def _candidates(result: Any, partition: str, vector: Vector, k: int) -> list[Candidate]:
        nodes = result.nodes or []
        return nearest(
            ((node.metadata, node.get_content()) for node in nodes), partition, vector, k
        )

    def search(self, partition: str, vector: Vector, k: int) -> list[Candidate]:
        """The ``k`` nearest prompts of ``partition`` by cosine similarity (computed here)."""
        result = self.store.query(self._query(partition, vector, k))
        return self._candidates(result, partition, vector, k)

    async def asearch(self, partition: str, vector: Vector, k: int) -> list[Candidate]:
        """Async twin of :meth:`search` (the store's ``aquery``)."""
        result = await self.store.aquery(self._query(partition, vector, k))
        return self._candidates(result, partition, vector, k)

    @staticmethod
    def _node(partition: str, vector: Vector, prompt: str, key: str) -> TextNode:
        metadata = stored_metadata(partition, vector, key)
        return TextNode(
            text=prompt,
            embedding=vector.tolist(),
            metadata=metadata,
            excluded_embed_metadata_keys=list(metadata),
            excluded_llm_metadata_keys=list(metadata),
        )

    def add(self, partition: str, vector: Vector, prompt: str, key: str, ttl: float | None) -> None:
        """One node for ``prompt`` (``ttl`` is not applied: the store keeps it)."""
        self.store.add([self._node(partition, vector, prompt, key)])
        self.added += 1

    async def aadd(
        self, partition: str, vector: Vector, prompt: str, key: str, ttl: float | None
    ) -> None:
        """Async twin of :meth:`add` (the store's ``async_add``)."""
        await self.store.async_add([self._node(partition, vector, prompt, key)])
        self.added += 1

    def info(self) -> dict[str, Any]:
        """For ``SemanticCache.info()``."""
        return {"index": type(self.store).__name__, "added": self.added}
