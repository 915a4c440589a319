"""PerfVectorStore: a LlamaIndex vector store whose queries are cached until the next write.

Example::

    from llama_index.core import StorageContext, VectorStoreIndex
    from llama_index.core.vector_stores import SimpleVectorStore
    from rag_perf_plugins.llama_index import PerfVectorStore

    store = PerfVectorStore(SimpleVectorStore(), name="kb")
    index = VectorStoreIndex.from_documents(
        documents, storage_context=StorageContext.from_defaults(vector_store=store)
    )
    retriever = index.as_retriever(similarity_top_k=3)
    retriever.retrieve("what is rag?")      # searched, then cached
    retriever.retrieve("what is rag?")      # from the cache: the inner store is not asked
    index.insert(another_document)          # a write bumps the version: the cache is invalid

Cached: ``query`` and ``aquery``. The key holds the store's name and write version, the
query embedding (a hash of its float32 bytes) and query string, ``similarity_top_k``, the
metadata filters, the query mode and every other field of the ``VectorStoreQuery`` (doc
and node ids, ``alpha``, ``mmr_threshold``, sparse and hybrid top-k, output fields), plus
the keyword arguments the retriever passes.

The write version lives in the cache's shared tier (a namespace of its own, bumped with
:meth:`CacheManager.bump_namespace`), so a write through any ``PerfVectorStore`` with the
same ``name`` and cache directory (or Redis), in any process, invalidates the cached
queries of all of them: at once in the writing process, within ``version_check_interval``
(1 s by default) in the others, which re-read it at most that often (the async path reads
it off the event loop). The caching itself is
:class:`rag_perf_plugins.services.search.SearchCache`, shared with the LangChain wrapper.
``add``, ``async_add``, ``delete``, ``adelete``, ``delete_nodes``, ``adelete_nodes``,
``clear`` and ``aclear`` bump it, even when they fail (a failed batch may be half written).

Timing: every ``add``/``query``/``delete`` (sync and async) is recorded in the tracker as
``vectorstore.add``, ``vectorstore.query`` (with its cache hit or miss) and
``vectorstore.delete``; LlamaIndex emits no spans for vector-store calls.

Not done here: writes that bypass the wrapper (straight to the inner store or its database)
are invisible to it; a query whose filters or keyword arguments cannot be keyed (arbitrary
objects) or whose nodes cannot be stored runs uncached and is counted
(``cache.unkeyable`` / ``cache.unstorable``); nodes come back from the cache without their
``embedding`` (the retriever and synthesizers never read it, and storing it would copy a
full vector per node); identical concurrent misses are not coalesced.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any, TypeVar

import numpy as np

from llama_index.core.bridge.pydantic import PrivateAttr
from llama_index.core.schema import BaseNode
from llama_index.core.storage.docstore.utils import doc_to_json, json_to_doc
from llama_index.core.vector_stores.types import (
    BasePydanticVectorStore,
    MetadataFilters,
    VectorStoreQuery,
    VectorStoreQueryResult,
)
from rag_perf_plugins._clock import Clock, monotonic
from rag_perf_plugins._signature import checked_kwargs
from rag_perf_plugins.cache import CacheManager
from rag_perf_plugins.config import PerformanceConfig
from rag_perf_plugins.services.search import (
    SearchCache,
    SearchCacheViews,
    object_identity,
    store_identity,
)
from rag_perf_plugins.tracking import PerformanceTracker

__all__ = ["PerfVectorStore"]

NAMESPACE = "retrieval"
R = TypeVar("R")


def _vector_digest(embedding: Sequence[float] | None) -> str | None:
    if embedding is None:
        return None
    raw = np.asarray(embedding, dtype="<f4").tobytes()
    return "vec:" + hashlib.blake2b(raw, digest_size=16).hexdigest()


def _filters(filters: MetadataFilters | None) -> Any:
    return None if filters is None else filters.model_dump(mode="json")


def _query_fields(query: VectorStoreQuery, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Everything of ``query`` (and the call's kwargs) that can change the result."""
    return {
        "store_query": query.query_str,
        "embedding": _vector_digest(query.query_embedding),
        "mode": str(getattr(query.mode, "value", query.mode)),
        "doc_ids": query.doc_ids,
        "node_ids": query.node_ids,
        "output_fields": query.output_fields,
        "embedding_field": query.embedding_field,
        "alpha": query.alpha,
        "mmr_threshold": query.mmr_threshold,
        "sparse_top_k": query.sparse_top_k,
        "hybrid_top_k": query.hybrid_top_k,
        "kwargs": kwargs,
    }


def _fields_of(query: VectorStoreQuery, kwargs: dict[str, Any]) -> dict[str, Any] | None:
    """The key fields of a query (see :class:`SearchCache`), ``None`` when not keyable."""
    try:
        fields = _query_fields(query, kwargs)
        return {
            "query": fields.pop("store_query") or "",
            "k": query.similarity_top_k,
            "filters": _filters(query.filters),
            **fields,
        }
    except (TypeError, ValueError, AttributeError):
        return None


def _node_out(node: BaseNode) -> dict[str, Any]:
    data = doc_to_json(node)
    data["__data__"]["embedding"] = None  # no full vector in the cache entry
    return data


# Scores keep their type through the cache (a numpy float32 stays one): stored as a float64,
# exact for a float32, with the numpy dtype when there was one.
_SCORE_TYPES: dict[str, Any] = {"f4": np.float32, "f8": np.float64}


def _score_out(score: Any) -> Any:
    if isinstance(score, np.floating):
        return [float(score), score.dtype.str[1:]]
    return float(score)


def _score_in(data: Any) -> Any:
    if isinstance(data, list):
        return _SCORE_TYPES[data[1]](data[0])
    return float(data)


def _result_out(result: VectorStoreQueryResult) -> dict[str, Any]:
    return {
        "n": None if result.nodes is None else [_node_out(n) for n in result.nodes],
        "s": None if result.similarities is None else [_score_out(s) for s in result.similarities],
        "i": None if result.ids is None else list(result.ids),
    }


def _result_in(data: dict[str, Any]) -> VectorStoreQueryResult:
    nodes = data["n"]
    return VectorStoreQueryResult(
        nodes=None if nodes is None else [json_to_doc(n) for n in nodes],
        similarities=None if data["s"] is None else [_score_in(s) for s in data["s"]],
        ids=data["i"],
    )


class PerfVectorStore(SearchCacheViews, BasePydanticVectorStore):
    """Wrap a LlamaIndex vector store: cached queries, version-based invalidation, timings.

    Example: ``PerfVectorStore(ChromaVectorStore(...), name="kb-prod")``; pass it as
    ``StorageContext.from_defaults(vector_store=...)`` or to
    ``VectorStoreIndex.from_vector_store(...)``.

    Args:
        inner: The vector store that really stores and searches.
        config: ``enable_caching``, ``retrieval_ttl`` (seconds), cache directory and tiers,
            ``enable_metrics``; ``None`` means ``PerformanceConfig.load()``.
        cache: The cache manager; ``None`` uses the one shared by every wrapper built with
            an equal config (the process-wide one when the config matches it).
        name: The store's identity in keys and in the shared write version. Give the same
            name to wrappers of the same data in other processes so their writes invalidate
            each other's queries. ``None``: the data's own name (class, location and
            collection, ``store_identity``), or for an in-memory store a name tied to that
            object, shared by every wrapper of it (``object_identity``): wrappers of one
            store see each other's writes, and never serve another store's results.
        ttl: Seconds a cached query lives (``None``: ``config.retrieval_ttl``, whatever the
            cache manager's own default is).
        tracker: Statistics sink; ``None`` means the process tracker when metrics are on.
        clock: Seconds, monotonic, for the timings.

    Raises:
        TypeError: ``inner`` is not a ``BasePydanticVectorStore`` or is a ``PerfVectorStore``.
        ValueError: ``ttl`` is not > 0, or ``name`` is empty.
    """

    stores_text: bool = False
    is_embedding_query: bool = True

    _inner: BasePydanticVectorStore = PrivateAttr()
    _searches: SearchCache = PrivateAttr()

    @checked_kwargs
    def __init__(
        self,
        inner: BasePydanticVectorStore,
        config: PerformanceConfig | None = None,
        *,
        cache: CacheManager | None = None,
        name: str | None = None,
        ttl: float | None = None,
        tracker: PerformanceTracker | None = None,
        clock: Clock = monotonic,
    ) -> None:
        if isinstance(inner, PerfVectorStore):
            msg = "inner is already a PerfVectorStore; wrap the underlying store once"
            raise TypeError(msg)
        if not isinstance(inner, BasePydanticVectorStore):
            msg = f"inner must be a LlamaIndex BasePydanticVectorStore, got {type(inner).__name__}"
            raise TypeError(msg)
        searches = SearchCache(
            config,
            name=name,
            default_name=store_identity(inner) or object_identity(inner),
            random_prefix=type(inner).__name__,
            cache=cache,
            ttl=ttl,
            tracker=tracker,
            clock=clock,
        )
        super().__init__(stores_text=inner.stores_text, is_embedding_query=inner.is_embedding_query)
        self._inner = inner
        self._searches = searches

    # --- identity and delegation ----------------------------------------------------
    @classmethod
    def class_name(cls) -> str:
        """Stable serialization name."""
        return "PerfVectorStore"

    @property
    def client(self) -> Any:
        """The inner store's client."""
        return self._inner.client

    @property
    def inner(self) -> BasePydanticVectorStore:
        """The wrapped store."""
        return self._inner

    def get_nodes(
        self, node_ids: list[str] | None = None, filters: MetadataFilters | None = None
    ) -> list[BaseNode]:
        """Delegated, uncached."""
        return self._inner.get_nodes(node_ids, filters)

    async def aget_nodes(
        self, node_ids: list[str] | None = None, filters: MetadataFilters | None = None
    ) -> list[BaseNode]:
        """Delegated, uncached."""
        return await self._inner.aget_nodes(node_ids, filters)

    def persist(self, persist_path: str, fs: Any = None) -> None:
        """Delegated: ``StorageContext.persist()`` saves the inner store."""
        self._inner.persist(persist_path, fs=fs)

    # --- writes: delegate, then bump ------------------------------------------------
    def add(self, nodes: Sequence[BaseNode], **kwargs: Any) -> list[str]:
        """Add nodes to the inner store, then bump the version."""
        return self._searches.write("add", lambda: self._inner.add(nodes, **kwargs))

    async def async_add(self, nodes: Sequence[BaseNode], **kwargs: Any) -> list[str]:
        """Async :meth:`add`."""
        return await self._searches.awrite("add", lambda: self._inner.async_add(nodes, **kwargs))

    def delete(self, ref_doc_id: str, **delete_kwargs: Any) -> None:
        """Delete a document's nodes from the inner store, then bump the version."""
        self._searches.write("delete", lambda: self._inner.delete(ref_doc_id, **delete_kwargs))

    async def adelete(self, ref_doc_id: str, **delete_kwargs: Any) -> None:
        """Async :meth:`delete`."""
        await self._searches.awrite(
            "delete", lambda: self._inner.adelete(ref_doc_id, **delete_kwargs)
        )

    def delete_nodes(
        self,
        node_ids: list[str] | None = None,
        filters: MetadataFilters | None = None,
        **delete_kwargs: Any,
    ) -> None:
        """Delete nodes from the inner store, then bump the version."""
        self._searches.write(
            "delete", lambda: self._inner.delete_nodes(node_ids, filters, **delete_kwargs)
        )

    async def adelete_nodes(
        self,
        node_ids: list[str] | None = None,
        filters: MetadataFilters | None = None,
        **delete_kwargs: Any,
    ) -> None:
        """Async :meth:`delete_nodes`."""
        await self._searches.awrite(
            "delete", lambda: self._inner.adelete_nodes(node_ids, filters, **delete_kwargs)
        )

    def clear(self) -> None:
        """Clear the inner store, then bump the version."""
        self._searches.write("delete", self._inner.clear)

    async def aclear(self) -> None:
        """Async :meth:`clear`."""
        await self._searches.awrite("delete", self._inner.aclear)

    # --- cached queries -------------------------------------------------------------
    def query(self, query: VectorStoreQuery, **kwargs: Any) -> VectorStoreQueryResult:
        """The inner store's result for ``query``, from the cache when this version has it."""
        return self._searches.search(
            "query",
            _fields_of(query, kwargs),
            lambda: self._inner.query(query, **kwargs),
            _result_out,
            _result_in,
        )

    async def aquery(self, query: VectorStoreQuery, **kwargs: Any) -> VectorStoreQueryResult:
        """Async :meth:`query` (the version and the cache are read off the event loop)."""
        return await self._searches.asearch(
            "query",
            _fields_of(query, kwargs),
            lambda: self._inner.aquery(query, **kwargs),
            _result_out,
            _result_in,
        )

    def __repr__(self) -> str:
        return f"<PerfVectorStore name={self.name!r} inner={type(self._inner).__name__}>"

    __str__ = __repr__
