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
queries of all of them: at once in the writing process, within
``CacheManager.NAMESPACE_REFRESH_S`` (1 s) in the others, which re-read it at most that
often (the async path reads it off the event loop). ``add``, ``async_add``,
``delete``, ``adelete``, ``delete_nodes``, ``adelete_nodes``, ``clear`` and ``aclear``
bump it, even when they fail (a failed batch may be half written).

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

import asyncio
import hashlib
import math
import uuid
from collections.abc import Awaitable, Callable, Sequence
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
from rag_perf_plugins.cache import CacheManager, cache_manager_for, retrieval_key
from rag_perf_plugins.config import PerformanceConfig, resolve_config
from rag_perf_plugins.errors import CacheError
from rag_perf_plugins.tracking import PerformanceTracker, get_performance_tracker

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


def _node_out(node: BaseNode) -> dict[str, Any]:
    data = doc_to_json(node)
    data["__data__"]["embedding"] = None  # no full vector in the cache entry
    return data


def _result_out(result: VectorStoreQueryResult) -> dict[str, Any]:
    return {
        "n": None if result.nodes is None else [_node_out(n) for n in result.nodes],
        "s": None if result.similarities is None else [float(s) for s in result.similarities],
        "i": None if result.ids is None else list(result.ids),
    }


def _result_in(data: dict[str, Any]) -> VectorStoreQueryResult:
    nodes = data["n"]
    return VectorStoreQueryResult(
        nodes=None if nodes is None else [json_to_doc(n) for n in nodes],
        similarities=data["s"],
        ids=data["i"],
    )


class PerfVectorStore(BasePydanticVectorStore):
    """Wrap a LlamaIndex vector store: cached queries, version-based invalidation, timings.

    Example: ``PerfVectorStore(ChromaVectorStore(...), name="kb-prod")``; pass it as
    ``StorageContext.from_defaults(vector_store=...)`` or to
    ``VectorStoreIndex.from_vector_store(...)``.

    Args:
        inner: The vector store that really stores and searches.
        config: ``enable_caching``, ``cache_ttl`` (seconds), cache directory and tiers,
            ``enable_metrics``; ``None`` means ``PerformanceConfig.load()``.
        cache: The cache manager; ``None`` uses the one shared by every wrapper built with
            an equal config (the process-wide one when the config matches it).
        name: The store's identity in keys and in the shared write version. Give the same
            name to wrappers of the same data in other processes so their writes invalidate
            each other's queries. ``None``: a fresh random name, so this wrapper never
            serves another store's results (right for in-memory stores).
        ttl: Seconds a cached query lives (``None``: ``config.cache_ttl``, whatever the
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
    _config: PerformanceConfig = PrivateAttr()
    _cache: CacheManager = PrivateAttr()
    _name: str = PrivateAttr()
    _version_ns: str = PrivateAttr()
    _ttl: float | None = PrivateAttr()
    _tracker: PerformanceTracker | None = PrivateAttr()
    _clock: Clock = PrivateAttr()

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
        if ttl is not None and not ttl > 0:
            msg = f"ttl must be > 0 seconds or None, got {ttl!r}"
            raise ValueError(msg)
        if name is not None and (not isinstance(name, str) or not name):
            msg = f"name must be a non-empty str or None, got {name!r}"
            raise ValueError(msg)
        super().__init__(stores_text=inner.stores_text, is_embedding_query=inner.is_embedding_query)
        config = resolve_config(config)
        self._inner = inner
        self._config = config
        self._cache = cache if cache is not None else cache_manager_for(config)
        self._name = name if name is not None else f"{type(inner).__name__}/{uuid.uuid4().hex}"
        digest = hashlib.blake2b(self._name.encode(), digest_size=10).hexdigest()
        self._version_ns = f"vs.{digest}"  # characters the manager accepts in a namespace
        # The wrapper's config decides how long its queries live, not the manager's.
        self._ttl = (
            ttl if ttl is not None else (math.inf if config.cache_ttl is None else config.cache_ttl)
        )
        if tracker is None and config.enable_metrics:
            tracker = get_performance_tracker()
        self._tracker = tracker
        self._clock = clock

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

    @property
    def name(self) -> str:
        """The identity used in keys and in the shared write version."""
        return self._name

    @property
    def cache(self) -> CacheManager:
        """The cache manager holding the queries and the write version."""
        return self._cache

    @property
    def version(self) -> int:
        """The store's write version, read from the shared tier."""
        return self._cache.namespace_version(self._version_ns)

    def invalidate(self) -> int:
        """Bump the write version (as every write does); returns the new version."""
        return self._cache.bump_namespace(self._version_ns)

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

    # --- timing ---------------------------------------------------------------------
    def _record(self, operation: str, started: float, hit: bool | None, error: bool) -> None:
        if self._tracker is not None:
            self._tracker.record(
                f"vectorstore.{operation}", self._clock() - started, cache_hit=hit, error=error
            )

    def _write(self, operation: str, call: Callable[[], R]) -> R:
        started = self._clock()
        error = True
        try:
            result = call()
            error = False
            return result
        finally:
            self.invalidate()
            self._record(operation, started, None, error)

    async def _awrite(self, operation: str, call: Callable[[], Awaitable[R]]) -> R:
        started = self._clock()
        error = True
        try:
            result = await call()
            error = False
            return result
        finally:
            self.invalidate()
            self._record(operation, started, None, error)

    # --- writes: delegate, then bump ------------------------------------------------
    def add(self, nodes: Sequence[BaseNode], **kwargs: Any) -> list[str]:
        """Add nodes to the inner store, then bump the version."""
        return self._write("add", lambda: self._inner.add(nodes, **kwargs))

    async def async_add(self, nodes: Sequence[BaseNode], **kwargs: Any) -> list[str]:
        """Async :meth:`add`."""
        return await self._awrite("add", lambda: self._inner.async_add(nodes, **kwargs))

    def delete(self, ref_doc_id: str, **delete_kwargs: Any) -> None:
        """Delete a document's nodes from the inner store, then bump the version."""
        self._write("delete", lambda: self._inner.delete(ref_doc_id, **delete_kwargs))

    async def adelete(self, ref_doc_id: str, **delete_kwargs: Any) -> None:
        """Async :meth:`delete`."""
        await self._awrite("delete", lambda: self._inner.adelete(ref_doc_id, **delete_kwargs))

    def delete_nodes(
        self,
        node_ids: list[str] | None = None,
        filters: MetadataFilters | None = None,
        **delete_kwargs: Any,
    ) -> None:
        """Delete nodes from the inner store, then bump the version."""
        self._write("delete", lambda: self._inner.delete_nodes(node_ids, filters, **delete_kwargs))

    async def adelete_nodes(
        self,
        node_ids: list[str] | None = None,
        filters: MetadataFilters | None = None,
        **delete_kwargs: Any,
    ) -> None:
        """Async :meth:`delete_nodes`."""
        await self._awrite(
            "delete", lambda: self._inner.adelete_nodes(node_ids, filters, **delete_kwargs)
        )

    def clear(self) -> None:
        """Clear the inner store, then bump the version."""
        self._write("delete", self._inner.clear)

    async def aclear(self) -> None:
        """Async :meth:`clear`."""
        await self._awrite("delete", self._inner.aclear)

    # --- cached queries -------------------------------------------------------------
    def _cached_version(self) -> int | None:
        # The manager keeps each namespace version for NAMESPACE_REFRESH_S seconds; a
        # write through this process updates it at once.
        return self._cache._cached_version(self._version_ns)

    def _key(self, query: VectorStoreQuery, kwargs: dict[str, Any], version: int) -> str | None:
        try:
            fields = _query_fields(query, kwargs)
            return retrieval_key(
                store=self._name,
                query=fields.pop("store_query") or "",
                k=query.similarity_top_k,
                filters=_filters(query.filters),
                store_version=version,
                **fields,
            )
        except (CacheError, TypeError, ValueError):
            if self._tracker is not None:
                self._tracker.incr("cache.unkeyable", operation="vectorstore.query")
            return None

    def _dump(self, result: VectorStoreQueryResult) -> dict[str, Any] | None:
        try:
            return _result_out(result)
        except (TypeError, ValueError, AttributeError):
            self._count_unstorable()
            return None

    def _count_unstorable(self) -> None:
        if self._tracker is not None:
            self._tracker.incr("cache.unstorable", operation="vectorstore.query")

    def query(self, query: VectorStoreQuery, **kwargs: Any) -> VectorStoreQueryResult:
        """The inner store's result for ``query``, from the cache when this version has it."""
        started = self._clock()
        key = None
        if self._cache.enabled:
            version = self._cached_version()
            key = self._key(query, kwargs, self.version if version is None else version)
        if key is not None:
            data = self._cache.get(key, namespace=NAMESPACE)
            if data is not None:
                self._record("query", started, True, False)
                return _result_in(data)
        try:
            result = self._inner.query(query, **kwargs)
        except BaseException:
            self._record("query", started, None if key is None else False, True)
            raise
        if key is not None:
            dumped = self._dump(result)
            if dumped is not None:
                try:
                    self._cache.set(key, dumped, self._ttl, namespace=NAMESPACE)
                except CacheError:  # metadata msgpack cannot store: stays uncached
                    self._count_unstorable()
        self._record("query", started, None if key is None else False, False)
        return result

    async def aquery(self, query: VectorStoreQuery, **kwargs: Any) -> VectorStoreQueryResult:
        """Async :meth:`query` (cache reads off the loop, in the cache's thread pool)."""
        started = self._clock()
        key = None
        if self._cache.enabled:
            version = self._cached_version()
            if version is None:  # a read of the shared tier: off the loop
                version = await asyncio.get_running_loop().run_in_executor(
                    None, self._cache.namespace_version, self._version_ns
                )
            key = self._key(query, kwargs, version)
        if key is not None:
            data = await self._cache.aget(key, namespace=NAMESPACE)
            if data is not None:
                self._record("query", started, True, False)
                return _result_in(data)
        try:
            result = await self._inner.aquery(query, **kwargs)
        except BaseException:
            self._record("query", started, None if key is None else False, True)
            raise
        if key is not None:
            dumped = self._dump(result)
            if dumped is not None:
                try:
                    await self._cache.aset(key, dumped, self._ttl, namespace=NAMESPACE)
                except CacheError:
                    self._count_unstorable()
        self._record("query", started, None if key is None else False, False)
        return result

    def __repr__(self) -> str:
        return f"<PerfVectorStore name={self._name!r} inner={type(self._inner).__name__}>"

    __str__ = __repr__
