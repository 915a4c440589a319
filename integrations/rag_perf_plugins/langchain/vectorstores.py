"""PerfVectorStore: a LangChain ``VectorStore`` whose searches are cached until the next write.

Example::

    store = PerfVectorStore(InMemoryVectorStore(embeddings), name="docs")
    store.add_texts(["RAG pairs retrieval with generation."])
    store.similarity_search("what is rag?", k=2)        # searched, then cached
    store.similarity_search("what is rag?", k=2)        # from the cache: no embedding call
    store.add_texts(["another text"])                    # bumps the version: cache invalid
    retriever = store.as_retriever(search_kwargs={"k": 2})

Cached: ``similarity_search``, ``similarity_search_with_score``,
``similarity_search_with_relevance_scores``, ``similarity_search_by_vector``,
``max_marginal_relevance_search``, ``max_marginal_relevance_search_by_vector`` and their
async twins (and, through them, ``search`` and the retriever). Scores keep their type
(FAISS's numpy float32 comes back as float32). Passed through: ``get_by_ids``, the
embeddings, the relevance function. Methods a store adds beyond LangChain's
``VectorStore`` (``FAISS.save_local``, ``Chroma.update_documents``) are not wrapped: call
them on ``inner`` and call :meth:`invalidate` after a write there. The key
holds the operation, the query (or a hash of the float32 query vector), ``k``, ``filter``,
every other search parameter, the store's name and its write version.

The write version lives in the cache's shared tier (a namespace of its own, versioned by
:meth:`CacheManager.bump_namespace`), so a write through any ``PerfVectorStore`` with the
same ``name`` and cache storage invalidates the cached searches of all of them: at once in
this process, within ``version_check_interval`` seconds (1 s by default) in the others,
which re-read it no more often than that (async searches read it off the event loop).
``add_texts``, ``add_documents``, ``delete`` and their async twins bump it. The caching
itself is :class:`rag_perf_plugins.services.search.SearchCache`, shared with LlamaIndex.

Per-call control: ``cache_control(...)`` around any call, or LangChain config metadata
``{"rag_perf": {"cache": "bypass"}}`` for the retriever from :meth:`as_retriever`.

Not done here: writes that bypass the wrapper (straight to the inner store or its
database) are invisible; search parameters that cannot be keyed (arbitrary objects) make
that call uncached; two processes bumping at the same instant may both write the same
version (their searches stay correct only once each write is done).
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, TypeVar

import numpy as np
from langchain_core.callbacks import (
    AsyncCallbackManagerForRetrieverRun,
    CallbackManagerForRetrieverRun,
)
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.vectorstores import InMemoryVectorStore, VectorStore, VectorStoreRetriever
from typing_extensions import override

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

from .control import applied, control_from_metadata

__all__ = ["PerfVectorStore"]

R = TypeVar("R")
VST = TypeVar("VST", bound="PerfVectorStore")


def _doc_out(doc: Document) -> dict[str, Any]:
    return {"c": doc.page_content, "m": doc.metadata, "i": doc.id}


def _doc_in(data: dict[str, Any]) -> Document:
    return Document(page_content=data["c"], metadata=data["m"] or {}, id=data.get("i"))


def _docs_out(docs: list[Document]) -> list[Any]:
    return [_doc_out(d) for d in docs]


def _docs_in(data: list[Any]) -> list[Document]:
    return [_doc_in(d) for d in data]


# Scores keep their type through the cache: FAISS returns numpy float32, most stores a
# Python float. The value is stored as a float64 (exact for a float32) with its dtype.
_SCORE_TYPES: dict[str, Callable[[float], Any]] = {"f4": np.float32, "f8": np.float64}


def _score_out(score: Any) -> list[Any]:
    if isinstance(score, np.floating):
        return [float(score), score.dtype.str[1:]]
    return [float(score)]


def _scored_out(pairs: list[tuple[Document, float]]) -> list[Any]:
    return [[_doc_out(d), *_score_out(s)] for d, s in pairs]


def _scored_in(data: list[Any]) -> list[tuple[Document, float]]:
    out: list[tuple[Document, float]] = []
    for item in data:
        score = float(item[1])
        if len(item) > 2:
            score = _SCORE_TYPES[item[2]](score)
        out.append((_doc_in(item[0]), score))
    return out


def _vector_digest(embedding: Sequence[float]) -> str:
    raw = np.asarray(embedding, dtype="<f4").tobytes()
    return "vec:" + hashlib.blake2b(raw, digest_size=16).hexdigest()


class PerfVectorStore(SearchCacheViews, VectorStore):
    """Wrap a LangChain vector store: cached searches, version-based invalidation, stats.

    Example: ``PerfVectorStore(Chroma(...), name="kb-prod")``.

    Args:
        inner: The vector store that really searches.
        config: ``enable_caching``, ``retrieval_ttl`` (seconds), ``version_check_interval``
            (seconds), ``enable_metrics``, and the cache's directory, tiers and Redis;
            ``None`` means ``PerformanceConfig.load()``.
        cache: The cache manager; ``None`` uses the one for ``config``'s cache settings.
        name: The store's identity in keys and in the shared version. Give the same name
            to wrappers of the same data in other processes so their writes invalidate
            each other's searches. ``None``: the data's own name (class, location and
            collection, ``store_identity``), or for an in-memory store a name tied to that
            object, shared by every wrapper of it (``object_identity``): wrappers of one
            store see each other's writes, and never serve another store's results.
        ttl: Seconds a cached search lives (``None``: ``config.retrieval_ttl``, whatever
            the cache manager's own default is).
        tracker: Statistics sink (``vectorstore.<operation>``); ``None``: the process
            tracker when metrics are on.
        clock: Seconds, monotonic, for latency statistics.

    All the caching is :class:`rag_perf_plugins.services.search.SearchCache`'s (the one the
    LlamaIndex wrapper uses too); this class translates LangChain's calls.
    """

    @checked_kwargs
    def __init__(
        self,
        inner: VectorStore,
        config: PerformanceConfig | None = None,
        *,
        cache: CacheManager | None = None,
        name: str | None = None,
        ttl: float | None = None,
        tracker: PerformanceTracker | None = None,
        clock: Clock = monotonic,
    ) -> None:
        if not isinstance(inner, VectorStore):
            msg = f"inner must be a LangChain VectorStore, got {type(inner).__name__}"
            raise TypeError(msg)
        if isinstance(inner, PerfVectorStore):
            msg = "inner is already a PerfVectorStore; wrap the underlying store once"
            raise TypeError(msg)
        self.inner = inner
        self._searches = SearchCache(
            config,
            name=name,
            default_name=store_identity(inner) or object_identity(inner),
            random_prefix=type(inner).__name__,
            cache=cache,
            ttl=ttl,
            tracker=tracker,
            clock=clock,
        )

    # --- identity and delegation ----------------------------------------------------
    @property
    @override
    def embeddings(self) -> Embeddings | None:
        return self.inner.embeddings

    @override
    def _select_relevance_score_fn(self) -> Callable[[float], float]:
        return self.inner._select_relevance_score_fn()

    @override
    def _similarity_search_with_relevance_scores(
        self, query: str, k: int = 4, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        return self.inner._similarity_search_with_relevance_scores(query, k, **kwargs)

    @override
    async def _asimilarity_search_with_relevance_scores(
        self, query: str, k: int = 4, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        return await self.inner._asimilarity_search_with_relevance_scores(query, k, **kwargs)

    @override
    def get_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        return self.inner.get_by_ids(ids)

    @override
    async def aget_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        return await self.inner.aget_by_ids(ids)

    # --- writes: delegate, then bump ------------------------------------------------
    # unasync: generated from aadd_texts
    @override
    def add_texts(
        self,
        texts: Iterable[str],
        metadatas: list[dict[Any, Any]] | None = None,
        *,
        ids: list[str] | None = None,
        **kwargs: Any,
    ) -> list[str]:
        return self.searches.write(
            "add", lambda: self.inner.add_texts(texts, metadatas, ids=ids, **kwargs)
        )

    @override
    async def aadd_texts(
        self,
        texts: Iterable[str],
        metadatas: list[dict[Any, Any]] | None = None,
        *,
        ids: list[str] | None = None,
        **kwargs: Any,
    ) -> list[str]:
        return await self.searches.awrite(
            "add", lambda: self.inner.aadd_texts(texts, metadatas, ids=ids, **kwargs)
        )

    # unasync: generated from aadd_documents
    @override
    def add_documents(self, documents: list[Document], **kwargs: Any) -> list[str]:
        return self.searches.write("add", lambda: self.inner.add_documents(documents, **kwargs))

    @override
    async def aadd_documents(self, documents: list[Document], **kwargs: Any) -> list[str]:
        return await self.searches.awrite(
            "add", lambda: self.inner.aadd_documents(documents, **kwargs)
        )

    # unasync: generated from adelete
    @override
    def delete(self, ids: list[str] | None = None, **kwargs: Any) -> bool | None:
        return self.searches.write("delete", lambda: self.inner.delete(ids, **kwargs))

    @override
    async def adelete(self, ids: list[str] | None = None, **kwargs: Any) -> bool | None:
        return await self.searches.awrite("delete", lambda: self.inner.adelete(ids, **kwargs))

    # --- the translation of one search ----------------------------------------------
    @staticmethod
    def _fields(query: str, k: int, kwargs: dict[str, Any]) -> dict[str, Any]:
        params = dict(kwargs)
        filters = params.pop("filter", None)
        return {"query": query, "k": k, "filters": filters, **params}

    # unasync: generated from _acached
    def _cached(
        self,
        operation: str,
        query: str,
        k: int,
        kwargs: dict[str, Any],
        search: Callable[[], R],
        dump: Callable[[R], Any],
        load: Callable[[Any], R],
    ) -> R:
        fields = self._fields(query, k, kwargs)
        return self.searches.search(operation, fields, search, dump, load)

    async def _acached(
        self,
        operation: str,
        query: str,
        k: int,
        kwargs: dict[str, Any],
        search: Callable[[], Awaitable[R]],
        dump: Callable[[R], Any],
        load: Callable[[Any], R],
    ) -> R:
        fields = self._fields(query, k, kwargs)
        return await self.searches.asearch(operation, fields, search, dump, load)

    # --- cached searches ------------------------------------------------------------
    # unasync: generated from asimilarity_search
    @override
    def similarity_search(self, query: str, k: int = 4, **kwargs: Any) -> list[Document]:
        return self._cached(
            "similarity_search",
            query,
            k,
            kwargs,
            lambda: self.inner.similarity_search(query, k=k, **kwargs),
            _docs_out,
            _docs_in,
        )

    @override
    async def asimilarity_search(self, query: str, k: int = 4, **kwargs: Any) -> list[Document]:
        return await self._acached(
            "similarity_search",
            query,
            k,
            kwargs,
            lambda: self.inner.asimilarity_search(query, k=k, **kwargs),
            _docs_out,
            _docs_in,
        )

    # unasync: generated from asimilarity_search_with_score
    @override
    def similarity_search_with_score(
        self, query: str, k: int = 4, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        return self._cached(
            "similarity_search_with_score",
            query,
            k,
            kwargs,
            lambda: self.inner.similarity_search_with_score(query, k=k, **kwargs),
            _scored_out,
            _scored_in,
        )

    @override
    async def asimilarity_search_with_score(
        self, query: str, k: int = 4, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        return await self._acached(
            "similarity_search_with_score",
            query,
            k,
            kwargs,
            lambda: self.inner.asimilarity_search_with_score(query, k=k, **kwargs),
            _scored_out,
            _scored_in,
        )

    # unasync: generated from asimilarity_search_by_vector
    @override
    def similarity_search_by_vector(
        self, embedding: list[float], k: int = 4, **kwargs: Any
    ) -> list[Document]:
        return self._cached(
            "similarity_search_by_vector",
            _vector_digest(embedding),
            k,
            kwargs,
            lambda: self.inner.similarity_search_by_vector(embedding, k=k, **kwargs),
            _docs_out,
            _docs_in,
        )

    @override
    async def asimilarity_search_by_vector(
        self, embedding: list[float], k: int = 4, **kwargs: Any
    ) -> list[Document]:
        return await self._acached(
            "similarity_search_by_vector",
            _vector_digest(embedding),
            k,
            kwargs,
            lambda: self.inner.asimilarity_search_by_vector(embedding, k=k, **kwargs),
            _docs_out,
            _docs_in,
        )

    # unasync: generated from amax_marginal_relevance_search
    @override
    def max_marginal_relevance_search(
        self,
        query: str,
        k: int = 4,
        fetch_k: int = 20,
        lambda_mult: float = 0.5,
        **kwargs: Any,
    ) -> list[Document]:
        params = {"fetch_k": fetch_k, "lambda_mult": lambda_mult, **kwargs}
        return self._cached(
            "max_marginal_relevance_search",
            query,
            k,
            params,
            lambda: self.inner.max_marginal_relevance_search(
                query, k=k, fetch_k=fetch_k, lambda_mult=lambda_mult, **kwargs
            ),
            _docs_out,
            _docs_in,
        )

    @override
    async def amax_marginal_relevance_search(
        self,
        query: str,
        k: int = 4,
        fetch_k: int = 20,
        lambda_mult: float = 0.5,
        **kwargs: Any,
    ) -> list[Document]:
        params = {"fetch_k": fetch_k, "lambda_mult": lambda_mult, **kwargs}
        return await self._acached(
            "max_marginal_relevance_search",
            query,
            k,
            params,
            lambda: self.inner.amax_marginal_relevance_search(
                query, k=k, fetch_k=fetch_k, lambda_mult=lambda_mult, **kwargs
            ),
            _docs_out,
            _docs_in,
        )

    # unasync: generated from amax_marginal_relevance_search_by_vector
    @override
    def max_marginal_relevance_search_by_vector(
        self,
        embedding: list[float],
        k: int = 4,
        fetch_k: int = 20,
        lambda_mult: float = 0.5,
        **kwargs: Any,
    ) -> list[Document]:
        params = {"fetch_k": fetch_k, "lambda_mult": lambda_mult, **kwargs}
        return self._cached(
            "max_marginal_relevance_search_by_vector",
            _vector_digest(embedding),
            k,
            params,
            lambda: self.inner.max_marginal_relevance_search_by_vector(
                embedding, k=k, fetch_k=fetch_k, lambda_mult=lambda_mult, **kwargs
            ),
            _docs_out,
            _docs_in,
        )

    @override
    async def amax_marginal_relevance_search_by_vector(
        self,
        embedding: list[float],
        k: int = 4,
        fetch_k: int = 20,
        lambda_mult: float = 0.5,
        **kwargs: Any,
    ) -> list[Document]:
        params = {"fetch_k": fetch_k, "lambda_mult": lambda_mult, **kwargs}
        return await self._acached(
            "max_marginal_relevance_search_by_vector",
            _vector_digest(embedding),
            k,
            params,
            lambda: self.inner.amax_marginal_relevance_search_by_vector(
                embedding, k=k, fetch_k=fetch_k, lambda_mult=lambda_mult, **kwargs
            ),
            _docs_out,
            _docs_in,
        )

    # unasync: generated from asimilarity_search_with_relevance_scores
    @override
    def similarity_search_with_relevance_scores(
        self, query: str, k: int = 4, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        return self._cached(
            "similarity_search_with_relevance_scores",
            query,
            k,
            kwargs,
            lambda: self.inner.similarity_search_with_relevance_scores(query, k=k, **kwargs),
            _scored_out,
            _scored_in,
        )

    @override
    async def asimilarity_search_with_relevance_scores(
        self, query: str, k: int = 4, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        return await self._acached(
            "similarity_search_with_relevance_scores",
            query,
            k,
            kwargs,
            lambda: self.inner.asimilarity_search_with_relevance_scores(query, k=k, **kwargs),
            _scored_out,
            _scored_in,
        )

    # --- retriever and construction -------------------------------------------------
    @override
    def as_retriever(self, **kwargs: Any) -> VectorStoreRetriever:
        """A retriever over the cached searches; honours ``rag_perf`` config metadata."""
        tags = kwargs.pop("tags", None) or [*self._get_retriever_tags()]
        return _PerfRetriever(vectorstore=self, tags=tags, **kwargs)

    @override
    def _get_retriever_tags(self) -> list[str]:
        return [type(self).__name__, *self.inner._get_retriever_tags()]

    @classmethod
    @override
    def from_texts(
        cls: type[VST],
        texts: list[str],
        embedding: Embeddings,
        metadatas: list[dict[Any, Any]] | None = None,
        *,
        ids: list[str] | None = None,
        **kwargs: Any,
    ) -> VST:
        """Build an ``InMemoryVectorStore`` (or ``inner_cls=``) from texts and wrap it.

        Example: ``PerfVectorStore.from_texts(texts, embeddings, name="kb")``. Keyword
        arguments ``config``, ``cache``, ``name``, ``ttl`` go to the wrapper, the rest to
        ``inner_cls.from_texts``.
        """
        wrapper_kwargs = {
            name: kwargs.pop(name)
            for name in ("config", "cache", "name", "ttl", "tracker", "clock")
            if name in kwargs
        }
        inner_cls: type[VectorStore] = kwargs.pop("inner_cls", InMemoryVectorStore)
        inner = inner_cls.from_texts(texts, embedding, metadatas, ids=ids, **kwargs)
        return cls(inner, **wrapper_kwargs)

    def __repr__(self) -> str:
        return f"<PerfVectorStore name={self.name!r} inner={type(self.inner).__name__}>"


class _PerfRetriever(VectorStoreRetriever):
    """``VectorStoreRetriever`` that applies ``{"rag_perf": {...}}`` run metadata."""

    @override
    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun, **kwargs: Any
    ) -> list[Document]:
        with applied(control_from_metadata(run_manager.metadata)):
            return super()._get_relevant_documents(query, run_manager=run_manager, **kwargs)

    @override
    async def _aget_relevant_documents(
        self, query: str, *, run_manager: AsyncCallbackManagerForRetrieverRun, **kwargs: Any
    ) -> list[Document]:
        with applied(control_from_metadata(run_manager.metadata)):
            return await super()._aget_relevant_documents(query, run_manager=run_manager, **kwargs)
