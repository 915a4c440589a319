"""PerfEmbeddings: a LangChain ``Embeddings`` that runs every call through our core.

All the work (per-text cache with one batched lookup, single-flight, micro-batching across
concurrent callers, admission gate and retry for real provider calls, statistics) is done by
:class:`rag_perf_plugins.services.embeddings.EmbeddingService`; this class only translates
LangChain's four methods into service calls::

    from rag_perf_plugins.langchain import PerfEmbeddings, pooled_openai_embeddings

    embeddings = PerfEmbeddings(pooled_openai_embeddings(model="text-embedding-3-small"))
    store = InMemoryVectorStore(embeddings)

What it adds to LangChain's ``CacheBackedEmbeddings``: keys carry model, dimensions and role;
float32 storage (cold and warm calls return identical vectors); one lookup per call;
de-duplication within and across concurrent calls; query caching on by default; true async
(the inner model's native ``aembed_*`` when it has them, else a worker thread, still
batched); statistics per call (LangChain has no embedding callbacks).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

from langchain_core.embeddings import DeterministicFakeEmbedding, Embeddings
from typing_extensions import override

from rag_perf_plugins._signature import checked_kwargs
from rag_perf_plugins.config import PerformanceConfig, resolve_config
from rag_perf_plugins.resilience import Breakers
from rag_perf_plugins.services.defaults import (
    api_key_of,
    default_embedding_store,
    default_gate,
    default_retry,
    default_target,
)
from rag_perf_plugins.services.embeddings import (
    EmbeddingFallback,
    EmbeddingService,
    EmbeddingStore,
)
from rag_perf_plugins.services.protocols import AdmissionGateLike, RetryPolicyLike
from rag_perf_plugins.tracking import PerformanceTracker

__all__ = ["PerfEmbeddings", "is_symmetric"]

# Classes whose embed_query is embed_documents([text])[0]: queries may share batches.
_SYMMETRIC = ("OpenAIEmbeddings", "AzureOpenAIEmbeddings")


def is_symmetric(inner: Embeddings) -> bool:
    """Whether ``inner`` embeds a query exactly as it embeds a one-text document list.

    Example: ``is_symmetric(OpenAIEmbeddings(...)) is True``. Known symmetric classes are
    LangChain's OpenAI and Azure OpenAI embeddings and ``DeterministicFakeEmbedding``;
    anything else is treated as asymmetric (only identical queries coalesce) unless the
    caller passes ``symmetric=True``.
    """
    if isinstance(inner, DeterministicFakeEmbedding):
        return True
    return any(cls.__name__ in _SYMMETRIC for cls in type(inner).__mro__)


def _overrides(inner: Embeddings, name: str) -> bool:
    return getattr(type(inner), name, None) is not getattr(Embeddings, name)


def _identity(inner: Embeddings) -> tuple[str, str, int | None]:
    """(provider, model, dimensions) of the inner model, read from its public fields."""
    cls = type(inner)
    model = getattr(inner, "model", None) or getattr(inner, "model_name", None)
    dims = getattr(inner, "dimensions", None) or getattr(inner, "size", None)
    # The endpoint is part of the provider: two servers may serve different vectors
    # under one model name. Credentials and timeouts are not (they do not change vectors).
    extra = {
        name: getattr(inner, name)
        for name in ("openai_api_base", "base_url", "deployment", "embedding_ctx_length")
        if isinstance(getattr(inner, name, None), (str, int))
    }
    fingerprint = hashlib.blake2b(json.dumps(extra, sort_keys=True).encode(), digest_size=6)
    provider = f"langchain/{cls.__module__}.{cls.__qualname__}/{fingerprint.hexdigest()}"
    return provider, str(model or cls.__name__), dims if isinstance(dims, int) else None


def _fallback(inner: Embeddings, config: PerformanceConfig, symmetric: bool) -> EmbeddingFallback:
    if not isinstance(inner, Embeddings) or isinstance(inner, PerfEmbeddings):
        msg = f"fallbacks must be unwrapped LangChain Embeddings, got {type(inner).__name__}"
        raise TypeError(msg)
    provider, model, dims = _identity(inner)
    gate = default_gate(config, provider=provider, model=model, api_key=api_key_of(inner))
    return EmbeddingFallback(
        default_target(gate, provider, model),
        model=model,
        dimensions=dims,
        embed_many=inner.embed_documents,
        aembed_many=inner.aembed_documents if _overrides(inner, "aembed_documents") else None,
        embed_query=None if symmetric else inner.embed_query,
        aembed_query=(
            inner.aembed_query if not symmetric and _overrides(inner, "aembed_query") else None
        ),
    )


class PerfEmbeddings(Embeddings):
    """Wrap any LangChain ``Embeddings`` with our cache, batching, gate, retry and stats.

    Example::

        embeddings = PerfEmbeddings(OpenAIEmbeddings(model="text-embedding-3-small",
                                                     check_embedding_ctx_length=False))
        await asyncio.gather(*(embeddings.aembed_query(q) for q in questions))
        # 100 distinct questions -> at most ceil(100 / batch_size) + 1 requests

    Args:
        inner: The embedding model that really calls the provider.
        config: Batch size and wait, cache switches and TTL, limits; ``None`` means
            ``PerformanceConfig.load()`` (file, environment, defaults).
        store: Per-text vector store; ``None`` uses the core cache's embeddings namespace
            when the cache package is available, else no caching.
        gate: Admission gate for provider calls; ``None`` builds one per
            (provider, model, API key) from ``config``.
        retry: Retry policy for provider calls; ``None`` builds one from ``config``.
            Turn the inner model's own retries off (``max_retries=0``), or they stack.
        tracker: Statistics sink; defaults to the process tracker.
        symmetric: Override :func:`is_symmetric`.
        batching: ``False`` sends each call's misses on their own.
        provider, model, dimensions: Override the identity read from ``inner`` (every
            cache key includes it).
        fallbacks: Other deployments of the *same* model (same ``model`` and
            ``dimensions``: two regions, two Azure deployments), tried in order when
            ``inner`` fails or its circuit breaker is open. Another model is refused with
            ``ValueError``: its vectors would not match the ones already in your index.
        breakers: The circuit breakers; ``None``: the process-wide ones of ``config``.

    Not done here: LangChain callbacks for embeddings (LangChain has none); the statistics
    go to the tracker as ``embedding.document`` and ``embedding.query``.
    """

    @checked_kwargs
    def __init__(
        self,
        inner: Embeddings,
        config: PerformanceConfig | None = None,
        *,
        store: EmbeddingStore | None = None,
        gate: AdmissionGateLike | None = None,
        retry: RetryPolicyLike | None = None,
        tracker: PerformanceTracker | None = None,
        symmetric: bool | None = None,
        batching: bool = True,
        provider: str | None = None,
        model: str | None = None,
        dimensions: int | None = None,
        fallbacks: Sequence[Embeddings] = (),
        breakers: Breakers | None = None,
    ) -> None:
        if not isinstance(inner, Embeddings):
            msg = f"inner must be a LangChain Embeddings, got {type(inner).__name__}"
            raise TypeError(msg)
        if isinstance(inner, PerfEmbeddings):
            msg = "inner is already a PerfEmbeddings; wrap the underlying model once"
            raise TypeError(msg)
        config = resolve_config(config)
        found_provider, found_model, found_dims = _identity(inner)
        provider = provider or found_provider
        model = model or found_model
        dims = dimensions if dimensions is not None else found_dims
        sym = is_symmetric(inner) if symmetric is None else symmetric
        self.inner = inner
        self.config = config
        if gate is None:
            gate = default_gate(config, provider=provider, model=model, api_key=api_key_of(inner))
        self.service = EmbeddingService(
            inner.embed_documents,
            aembed_many=inner.aembed_documents if _overrides(inner, "aembed_documents") else None,
            embed_query=None if sym else inner.embed_query,
            aembed_query=(
                inner.aembed_query if not sym and _overrides(inner, "aembed_query") else None
            ),
            provider=provider,
            model=model,
            dimensions=dims,
            symmetric=sym,
            config=config,
            store=store if store is not None else default_embedding_store(config),
            gate=gate,
            retry=retry if retry is not None else default_retry(config),
            tracker=tracker,
            batching=batching,
            operation="embedding",
            target=default_target(gate, provider, model),
            fallbacks=[_fallback(f, config, sym) for f in fallbacks],
            breakers=breakers,
        )

    @override
    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self.service.embed_documents(texts)

    @override
    def embed_query(self, text: str) -> list[float]:
        return self.service.embed_query(text)

    @override
    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        return await self.service.aembed_documents(texts)

    @override
    async def aembed_query(self, text: str) -> list[float]:
        return await self.service.aembed_query(text)

    def __repr__(self) -> str:
        return f"PerfEmbeddings({type(self.inner).__name__}, {self.service!r})"

    def __getattr__(self, name: str) -> Any:
        # Fields of the inner model (``model``, ``dimensions`` ...) read through, so code
        # that inspects the embeddings object keeps working. Only called on a miss.
        if name in ("inner", "service", "config"):
            raise AttributeError(name)
        return getattr(self.inner, name)
