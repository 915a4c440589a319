"""The one embedding request path that every framework adapter calls.

LangChain's ``PerfEmbeddings`` and LlamaIndex's ``PerfEmbedding`` both translate their
framework's calls into :class:`EmbeddingService` calls; nothing about caching, coalescing,
batching, admission or retries lives in the adapters::

    service = EmbeddingService(
        embed_many=client_embed,            # list[str] -> list[list[float]], one request
        aembed_many=client_aembed,          # optional async twin (else run off the loop)
        provider="openai", model="text-embedding-3-small", dimensions=1536,
        symmetric=True,                     # queries are embedded like documents
        store=my_store,                     # optional per-text vector store (EmbeddingStore)
    )
    vectors = service.embed_documents(["a", "b"])
    vector = await service.aembed_query("what is rag?")

One call goes through these steps (DESIGN.md, "The request path"):

1. Each distinct text gets a key from the store: provider, model, dimensions, role
   (``"document"`` or ``"query"``) and the text. All keys are looked up in ONE batched
   ``get_many`` call.
2. Misses are claimed in an in-flight table (single-flight): a text that another caller
   (thread or task) is already computing is awaited, not sent again. The leader's work runs
   in its own task, so a cancelled leader does not strand its followers. Errors reach the
   current waiters and are never stored. A key costs one dict entry; the future a follower
   waits on is made only when a follower comes.
3. The leader's texts go to the micro-batcher (:mod:`rag_perf_plugins.batching`), which
   merges concurrent callers' texts into provider-sized batches. Query texts join these
   batches only when ``symmetric=True``; for asymmetric models each distinct query is sent
   through ``embed_query`` on its own and only identical queries coalesce.
4. Each real provider call passes the admission gate and the retry policy (when given);
   cache hits never touch them. Tokens are estimated for the gate only when it has a token
   budget (``tokens_per_minute``).
5. Vectors are rounded to the store's dtype (float32 by default) on the miss path, so a cold
   call and a warm call return identical vectors; they are stored with one ``set_many``.
6. Every call is recorded in the tracker (``embedding.document`` / ``embedding.query``):
   latency, texts, cache hits, estimated tokens sent and saved. LangChain has no embedding
   callbacks, so this is the only record of embedding work.

A failing store degrades to "uncached" for that call: the error is counted
(``cache.errors``) and logged once, and the user's call goes on.

Not done here: splitting a text longer than the model's context (the provider decides), and
the storage itself (see :class:`EmbeddingStore`; the cache package provides the real tiers).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import weakref
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final, Literal, Protocol, TypeVar, cast, runtime_checkable

from .._clock import Clock, monotonic
from .._secrets import describe_error
from .._signature import checked_kwargs
from .._threads import run_blocking
from ..admission.gate import AdmissionGate, counts_tokens
from ..admission.retry import aobserve_failure, observe_failure
from ..batching import PROFILES, AsyncBatchProcessor, BatchProcessor, split_batches
from ..cache import (
    CacheManager,
    EmbeddingKeyer,
    cache_manager_for,
    current_control,
    get_cache_manager,
)
from ..cache.serialize import round_vectors
from ..cache.singleflight import Flight, SingleFlight
from ..config import PerformanceConfig, resolve_config
from ..cost import price_table
from ..cost.prices import registered_generation
from ..errors import ProviderUnavailable
from ..pool.http import listen, unlisten
from ..resilience import Admission, Breakers, Target, Transition, breakers_for, outcome_of
from ..resilience.breakers import failover_reason
from ..resilience.chain import OpenedMeanwhile, failed_note
from ..resilience.probe import arun_probe, in_thread, run_probe
from ..tokens import estimate_tokens
from ..tracking import PerformanceTracker, resolve_tracker, spans
from .llm import gate_listener, listeners_of
from .protocols import AdmissionGateLike, ProviderCalls, RetryPolicyLike

__all__ = [
    "EmbeddingFallback",
    "CacheEmbeddingStore",
    "EmbeddingIdentity",
    "EmbeddingService",
    "EmbeddingStore",
    "Role",
    "default_embedding_store",
]

logger = logging.getLogger(__name__)

Role = Literal["document", "query"]
Vector = list[float]
EmbedMany = Callable[[list[str]], Sequence[Sequence[float]]]
AEmbedMany = Callable[[list[str]], Awaitable[Sequence[Sequence[float]]]]
EmbedOne = Callable[[str], Sequence[float]]
AEmbedOne = Callable[[str], Awaitable[Sequence[float]]]

# The named counters of the common one-text records (read only, shared by every call).
_NO_COUNTERS: Final[Mapping[str, int]] = MappingProxyType({})
_HIT_ONE: Final[Mapping[str, int]] = MappingProxyType({"cache.hits": 1})
_COALESCED_ONE: Final[Mapping[str, int]] = MappingProxyType({"coalesced": 1})
_NO_SPEND: Final[Mapping[str, Any]] = MappingProxyType({})  # _spend without dollar budgets


@dataclass(frozen=True, slots=True)
class EmbeddingFallback:
    """Another deployment of the *same* embedding model, tried when the primary fails.

    Example::

        EmbeddingFallback(Target("azure/text-embedding-3-small/k-77c1~e2", gate=gate),
                          model="text-embedding-3-small", dimensions=None,
                          embed_many=other_region.embed_documents)

    A fallback must give the same vectors as the primary: :class:`EmbeddingService`
    refuses one whose ``model`` or ``dimensions`` differ (vectors of two models live in
    two spaces; mixing them in one index answers searches wrongly).
    """

    target: Target
    model: str
    dimensions: int | None
    embed_many: EmbedMany
    aembed_many: AEmbedMany | None = None
    embed_query: EmbedOne | None = None
    aembed_query: AEmbedOne | None = None


@dataclass(frozen=True, slots=True)
class _Provider:
    """One target of a provider call: the primary or a fallback, with its calls and gate."""

    target: Target | None
    gate: Any
    embed_many: EmbedMany
    aembed_many: AEmbedMany | None
    embed_query: EmbedOne | None
    aembed_query: AEmbedOne | None


R = TypeVar("R")
A = TypeVar("A")
AdmitNow = Callable[..., Any]  # AdmissionGate.admit_now: a ticket, or None (use acquire)
Leave = Callable[..., None]  # AdmissionGate.leave(ticket, error=...)


@runtime_checkable
class EmbeddingStore(Protocol):
    """Per-text vector storage the service looks up in one batch per call.

    The cache package's embeddings namespace is the production implementation; any object
    with these methods works (tests use a real diskcache directory). ``get_many`` returns
    one entry per key, ``None`` for a miss. Vectors come back exactly as stored (rounded to
    ``dtype``).
    """

    @property
    def dtype(self) -> str:
        """``"float32"`` or ``"float64"``: how vectors are stored."""
        ...

    def embedding_key(
        self, provider: str, model: str, dimensions: int | None, role: str, text: str
    ) -> str:
        """The cache key of one text for one model identity and role."""
        ...

    def get_many(self, keys: Sequence[str]) -> list[Vector | None]:
        """Vectors for ``keys``, ``None`` where missing."""
        ...

    def set_many(self, items: Mapping[str, Vector], *, ttl: float | None = None) -> None:
        """Store vectors; ``ttl`` in seconds (``None``: the store's default)."""
        ...

    async def aget_many(self, keys: Sequence[str]) -> list[Vector | None]:
        """Async twin of :meth:`get_many`; must not block the event loop."""
        ...

    async def aset_many(self, items: Mapping[str, Vector], *, ttl: float | None = None) -> None:
        """Async twin of :meth:`set_many`; must not block the event loop."""
        ...


class CacheEmbeddingStore:
    """The cache package's embeddings namespace seen as an :class:`EmbeddingStore`.

    Example::

        store = CacheEmbeddingStore()                 # the process-wide CacheManager
        service = EmbeddingService(embed, provider="openai", model="m", symmetric=True,
                                   store=store)

    Keys come from :func:`rag_perf_plugins.cache.embedding_key` (provider, model,
    dimensions, role, text); vectors are stored as the manager's ``cache_vector_dtype``
    (raw little-endian float32 by default), looked up with one ``get_vectors`` call and
    written with one ``set_vectors`` call. Failures are absorbed and counted by the manager.

    Args:
        cache: The manager; ``None`` means :func:`~rag_perf_plugins.cache.get_cache_manager`.
        namespace: Cache namespace (``"embeddings"``), clearable and versioned on its own.
        model: Tag written with each entry, for ``CacheManager.purge_model``.
    """

    __slots__ = ("_keyers", "cache", "model", "namespace")

    def __init__(
        self,
        cache: CacheManager | None = None,
        *,
        namespace: str = "embeddings",
        model: str | None = None,
    ) -> None:
        self.cache = cache if cache is not None else get_cache_manager()
        self.namespace = namespace
        self.model = model
        self._keyers: dict[tuple[str, str, int | None, str], EmbeddingKeyer] = {}

    @property
    def dtype(self) -> str:
        """How the manager stores vectors (``cache_vector_dtype``)."""
        return self.cache.config.cache_vector_dtype

    def embedding_key(
        self, provider: str, model: str, dimensions: int | None, role: str, text: str
    ) -> str:
        """:func:`rag_perf_plugins.cache.embedding_key` of one text.

        The fixed fields are hashed once per (provider, model, dimensions, role): an
        :class:`~rag_perf_plugins.cache.EmbeddingKeyer` each (same keys, ~1 us a text).
        """
        return self.keyer(provider, model, dimensions, role).key(text)

    def keyer(self, provider: str, model: str, dimensions: int | None, role: str) -> EmbeddingKeyer:
        """The :class:`~rag_perf_plugins.cache.EmbeddingKeyer` of one identity and role."""
        keyer = self._keyers.get((provider, model, dimensions, role))
        if keyer is None:
            if len(self._keyers) >= 64:  # identities change rarely; never grow unbounded
                self._keyers.clear()
            keyer = self._keyers[(provider, model, dimensions, role)] = EmbeddingKeyer(
                provider=provider, model=model, dimensions=dimensions, role=cast(Role, role)
            )
        return keyer

    def get_many(self, keys: Sequence[str]) -> list[Vector | None]:
        """One batched read; ``None`` where missing."""
        found = self.cache.get_vectors(keys, namespace=self.namespace)
        return [found.get(k) for k in keys]

    def memory_vectors(self, keys: Sequence[str]) -> list[Vector] | None:
        """All of ``keys`` from the manager's memory tier (new lists, in order), or ``None``.

        No I/O (see :meth:`CacheManager.memory_vectors`); the service's hit path.
        """
        return self.cache.memory_vectors(keys, namespace=self.namespace)

    def set_many(
        self, items: Mapping[str, Vector], *, ttl: float | None = None, rounded: bool = False
    ) -> None:
        """Store vectors (``ttl`` seconds; ``None``: the manager's ``cache_ttl``).

        ``rounded=True``: the vectors are already rounded to :attr:`dtype` (the service
        passes it), so the manager does not round them a second time.
        """
        self.cache.set_vectors(
            items, ttl, namespace=self.namespace, model=self.model, rounded=rounded, keep=rounded
        )

    async def aget_many(self, keys: Sequence[str]) -> list[Vector | None]:
        """Async :meth:`get_many`; disk I/O runs on the manager's executor."""
        found = await self.cache.aget_vectors(keys, namespace=self.namespace)
        return [found.get(k) for k in keys]

    async def aset_many(
        self, items: Mapping[str, Vector], *, ttl: float | None = None, rounded: bool = False
    ) -> None:
        """Async :meth:`set_many` (same ``rounded`` flag)."""
        await self.cache.aset_vectors(
            items, ttl, namespace=self.namespace, model=self.model, rounded=rounded, keep=rounded
        )

    def __repr__(self) -> str:
        return f"<CacheEmbeddingStore namespace={self.namespace!r} dtype={self.dtype}>"


def default_embedding_store(config: PerformanceConfig) -> EmbeddingStore | None:
    """The embeddings namespace of :func:`cache_manager_for` ``(config)``; ``None`` if off.

    Example: ``EmbeddingService(..., store=default_embedding_store(config))``. This is the
    store the framework wrappers use when the caller passes none.
    """
    if not config.enable_caching:
        return None
    return CacheEmbeddingStore(cache_manager_for(config))


@dataclass(frozen=True, slots=True)
class EmbeddingIdentity:
    """Everything besides the text that decides a vector: part of every cache key.

    Example: ``EmbeddingIdentity("openai", "text-embedding-3-small", 512)``.
    """

    provider: str
    model: str
    dimensions: int | None


@dataclass(slots=True)
class _Plan:
    """Pure bookkeeping of one call: positions -> keys, distinct keys -> texts."""

    keys: list[str]
    texts: dict[str, str]

    def assemble(self, vectors: Mapping[str, Vector]) -> list[Vector]:
        # Each position gets its own list: callers may mutate what they receive.
        return [list(vectors[k]) for k in self.keys]


class EmbeddingService(ProviderCalls):
    """Cached, coalesced, batched, admitted and tracked embedding calls; sync and async.

    Example::

        service = EmbeddingService(
            embed_many=lambda texts: [[float(len(t))] for t in texts],
            provider="local", model="length", dimensions=1, symmetric=True,
        )
        service.embed_documents(["ab", "abc"])      # [[2.0], [3.0]]

    Args:
        embed_many: ``list[str] -> vectors``, one provider request per call (documents).
        aembed_many: Async twin of ``embed_many``; without it the async path runs
            ``embed_many`` in a worker thread, still batched, never on the event loop.
        embed_query: ``str -> vector`` for queries of an asymmetric model (query prefix,
            ``input_type``); defaults to ``embed_many([text])[0]``.
        aembed_query: Async twin of ``embed_query``.
        embed_queries: ``list[str] -> vectors`` for queries of an asymmetric model, one
            model call per list (e.g. a local model's query prompt over a batch). With it,
            distinct queries from concurrent callers share batches of up to ``batch_size``
            (async callers: run in a worker thread), like documents; without it each
            distinct query is its own call. Not used with fallbacks (queries go one by one).
        provider: Provider name, part of every key (e.g. ``"openai"``).
        model: Model name, part of every key.
        dimensions: Output dimensions, part of every key (``None``: the model's default).
        symmetric: ``True`` when queries are embedded exactly like documents; then distinct
            queries from different callers share provider batches and query/document
            vectors of one text are still cached under separate roles.
        config: Batch size, wait, token cap, provider profile, cache TTL and switches;
            ``None``: ``PerformanceConfig.load()``.
        store: Per-text vector store, or ``None`` for no caching.
        gate: Admission gate for provider calls, or ``None``.
        retry: Retry policy for provider calls, or ``None`` (one attempt).
        tracker: Statistics sink; ``None``: the process tracker when metrics are on;
            ``NullTracker()``: none.
        batching: ``False`` sends each caller's misses on their own (in ``batch_size``
            chunks) instead of through the micro-batcher.
        operation: Prefix of the tracker operation names (``<operation>.document`` ...).
        clock: Time source in seconds, for latency statistics.

    Raises:
        TypeError: a provider callable is not callable, or an async twin is not async.
        ValueError: ``provider`` or ``model`` is empty, or ``dimensions`` is not positive.

    Not done here: the service never retries on its own; without ``retry`` a provider
    error reaches the caller (and every follower of the failed texts) at once.
    """

    __slots__ = (
        "_abatchers",
        "_aembed_many",
        "_aembed_query",
        "_aqbatchers",
        "_at_once",
        "_batcher",
        "_breakers",
        "_budgeted",
        "_clock",
        "_embed_many",
        "_embed_queries",
        "_embed_query",
        "_fallbacks",
        "_flights",
        "_gate",
        "_gate_tokens",
        "_key_fns",
        "_listeners",
        "_op_names",
        "_plain_dtype",
        "_prerounded",
        "_prices",
        "_primary",
        "_qbatcher",
        "_rate_memo",
        "_retry",
        "_store",
        "_store_failed",
        "_tracker",
        "batching",
        "config",
        "identity",
        "operation",
        "provider_calls",
        "symmetric",
    )

    @checked_kwargs
    def __init__(
        self,
        embed_many: EmbedMany,
        *,
        provider: str,
        model: str,
        dimensions: int | None = None,
        symmetric: bool,
        aembed_many: AEmbedMany | None = None,
        embed_query: EmbedOne | None = None,
        aembed_query: AEmbedOne | None = None,
        embed_queries: EmbedMany | None = None,
        config: PerformanceConfig | None = None,
        store: EmbeddingStore | None = None,
        gate: AdmissionGateLike | None = None,
        retry: RetryPolicyLike | None = None,
        tracker: PerformanceTracker | None = None,
        batching: bool = True,
        operation: str = "embedding",
        clock: Clock = monotonic,
        fallbacks: Sequence[EmbeddingFallback] = (),
        target: Target | None = None,
        breakers: Breakers | None = None,
    ) -> None:
        for name, fn in (
            ("embed_many", embed_many), ("embed_query", embed_query),
            ("embed_queries", embed_queries),
        ):  # fmt: skip
            if fn is not None and not callable(fn):
                msg = f"{name} must be callable, got {fn!r}"
                raise TypeError(msg)
        for name, afn in (("aembed_many", aembed_many), ("aembed_query", aembed_query)):
            if afn is not None and not asyncio.iscoroutinefunction(afn):
                msg = f"{name} must be an async function, got {afn!r}"
                raise TypeError(msg)
        if not provider or not isinstance(provider, str):
            msg = f"provider must be a non-empty str, got {provider!r}"
            raise ValueError(msg)
        if not model or not isinstance(model, str):
            msg = f"model must be a non-empty str, got {model!r}"
            raise ValueError(msg)
        if dimensions is not None and (
            isinstance(dimensions, bool) or not isinstance(dimensions, int) or dimensions < 1
        ):
            msg = f"dimensions must be an int >= 1 or None, got {dimensions!r}"
            raise ValueError(msg)
        for fallback in fallbacks:
            if fallback.model != model or fallback.dimensions != dimensions:
                msg = (
                    f"fallbacks: {fallback.target.name} embeds with model {fallback.model!r}, "
                    f"dimensions {fallback.dimensions!r}; an embedding fallback must use the "
                    f"primary's model {model!r} and dimensions {dimensions!r} (another "
                    "model's vectors live in another space and would answer searches wrongly)"
                )
                raise ValueError(msg)
        self.config = resolve_config(config)
        self.identity = EmbeddingIdentity(provider, model, dimensions)
        self.symmetric = bool(symmetric)
        self.batching = bool(batching)
        self.operation = operation
        self._op_names = (operation, f"{operation}.query", f"{operation}.document")
        self._embed_many = embed_many
        self._aembed_many = aembed_many
        self._embed_query = embed_query
        self._aembed_query = aembed_query
        self._embed_queries = embed_queries
        self._store = store if self.config.enable_caching else None
        self._store_failed = False
        # The service rounds vectors to the store's dtype already: the cache package's store
        # is told so and skips its own rounding (a second pass over every vector).
        self._prerounded = isinstance(self._store, CacheEmbeddingStore)
        # Without a store, vectors are still rounded (caching on or off returns the same
        # numbers); the dtype is read once here, not on every provider call.
        self._plain_dtype = self.config.cache_vector_dtype
        self._gate = gate
        # The primary target's calls and gate, made once (they never change).
        self._primary = _Provider(None, gate, embed_many, aembed_many, embed_query, aembed_query)
        # Estimating tokens for the gate only matters under a token budget.
        self._gate_tokens = counts_tokens(gate)
        self._budgeted = getattr(gate, "dollar_budgets", None) is not None
        # What a success's rate-limit headers are shown to (see gate_listener), found once.
        self._listeners = listeners_of(gate)
        # AdmissionGate's path for a caller it can admit at once, and its end (see _guarded).
        self._at_once: tuple[AdmitNow, Leave] | None = _at_once_of(gate)
        self._retry = retry
        self._tracker = resolve_tracker(tracker, self.config)
        self._prices = price_table(self.config)
        self._rate_memo: tuple[int, str, float | None] | None = None
        self._key_fns: dict[str, tuple[EmbeddingIdentity, Callable[[str], str]]] = {}
        self._clock = clock
        self._flights: SingleFlight[Vector] = SingleFlight()
        self._batcher: BatchProcessor[str, Vector] | None = None
        self._qbatcher: BatchProcessor[str, Vector] | None = None  # the query lane
        # AsyncBatchProcessor is bound to one event loop; keep one per loop, dropped with it.
        self._abatchers: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, AsyncBatchProcessor[str, Vector]
        ] = weakref.WeakKeyDictionary()
        self._aqbatchers: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, AsyncBatchProcessor[str, Vector]
        ] = weakref.WeakKeyDictionary()
        self.provider_calls = 0
        primary = target if target is not None else _default_target(gate, provider, model)
        self._fallbacks: tuple[_Provider, ...] = ()
        enabled = self.config.breaker_enabled
        if fallbacks or enabled is True:
            self._fallbacks = (
                _Provider(primary, gate, embed_many, aembed_many, embed_query, aembed_query),
                *(
                    _Provider(
                        f.target, f.target.gate, f.embed_many, f.aembed_many, f.embed_query,
                        f.aembed_query,
                    )
                    for f in fallbacks
                ),
            )  # fmt: skip
        self._breakers = breakers

    # --- public API -----------------------------------------------------------------
    def embed_documents(self, texts: Sequence[str]) -> list[Vector]:
        """Vectors of ``texts`` as documents, in order (blocks this thread only)."""
        checked = _check_texts(texts)
        if len(checked) == 1 and self._store is None:
            return [self._embed_one(checked[0], "document")]
        return self._embed(checked, "document")

    def embed_query(self, text: str) -> Vector:
        """Vector of one query text."""
        if self._store is None:
            return self._embed_one(_check_text(text), "query")
        checked = _check_text(text)
        found = self._kept_one(checked, "query")
        return found if found is not None else self._embed([checked], "query")[0]

    async def aembed_documents(self, texts: Sequence[str]) -> list[Vector]:
        """Async twin of :meth:`embed_documents`; never blocks the event loop.

        With ``async_enabled: false`` it runs :meth:`embed_documents` in a worker thread.
        """
        if not self.config.async_enabled:
            return await run_blocking(self.embed_documents, texts)
        return await self._aembed(_check_texts(texts), "document")

    async def aembed_query(self, text: str) -> Vector:
        """Async twin of :meth:`embed_query` (same ``async_enabled`` rule)."""
        if not self.config.async_enabled:
            return await run_blocking(self.embed_query, text)
        checked = _check_text(text)
        found = self._kept_one(checked, "query") if self._store is not None else None
        return found if found is not None else (await self._aembed([checked], "query"))[0]

    def close(self) -> None:
        """Send what the sync batcher holds and refuse nothing afterwards (idempotent)."""
        for batcher in (self._batcher, self._qbatcher):
            if batcher is not None:
                batcher.close()
        self._batcher = self._qbatcher = None

    async def aclose(self) -> None:
        """Flush this loop's async batcher; other loops' batchers go with their loops."""
        loop = asyncio.get_running_loop()
        for batchers in (self._abatchers, self._aqbatchers):
            batcher = batchers.pop(loop, None)
            if batcher is not None:
                await batcher.aclose()
        self.close()

    @property
    def store(self) -> EmbeddingStore | None:
        """The per-text vector store, or ``None`` when nothing is cached."""
        return self._store

    @property
    def plain_floats(self) -> bool:
        """Whether every vector this service returns is a new ``list`` of Python ``float``.

        Example: ``if service.plain_floats: event = Event.model_construct(vectors=...)``.
        True without a store or with the cache package's store: misses are rounded by
        :func:`~rag_perf_plugins.cache.serialize.round_vectors` and hits are decoded by the
        cache, both giving Python floats. False with another :class:`EmbeddingStore`, whose
        hits come back as it stored them. The adapters use it to skip re-validating floats
        (LlamaIndex's events) that are already exactly what validation would produce.
        """
        return self._store is None or self._prerounded

    def __repr__(self) -> str:
        ident = self.identity
        return (
            f"<EmbeddingService {ident.provider}/{ident.model} dims={ident.dimensions} "
            f"[in flight: {len(self._flights)}, provider calls: {self.provider_calls} | "
            f"symmetric={self.symmetric}, batching={self.batching}, "
            f"cached={self._store is not None}]>"
        )

    # --- the shared, I/O-free core ----------------------------------------------------
    def _key_of(self, role: Role) -> Callable[[str], str] | None:
        """The store's text -> key function for this identity and role, or ``None``.

        Ours hashes the identity's fields once for all the texts; ``None`` for a store
        without a keyer (it is asked per text, see :meth:`_plan`).
        """
        ident = self.identity
        known = self._key_fns.get(role)
        if known is not None and known[0] is ident:  # kept until the identity changes
            return known[1]
        keyer = getattr(self._store, "keyer", None)
        if keyer is None:
            return None
        key_of: Callable[[str], str] = keyer(
            ident.provider, ident.model, ident.dimensions, role
        ).key
        self._key_fns[role] = (ident, key_of)
        return key_of

    def _plan(self, texts: list[str], role: Role) -> _Plan:
        keys: list[str] = []
        distinct: dict[str, str] = {}
        key_of = self._key_of(role)
        if key_of is not None:
            for text in texts:
                key = key_of(text)
                keys.append(key)
                distinct.setdefault(key, text)
            return _Plan(keys, distinct)
        ident, store = self.identity, self._store
        for text in texts:
            if store is not None:
                key = store.embedding_key(ident.provider, ident.model, ident.dimensions, role, text)
            else:
                # Without a store the key only serves single-flight inside this service,
                # whose identity is fixed: role and text are enough.
                key = f"{role}\x00{text}"
            keys.append(key)
            distinct.setdefault(key, text)
        return _Plan(keys, distinct)

    def _batched(self, role: Role) -> bool:
        return self.batching and (role == "document" or self.symmetric or self._query_lane())

    def _query_lane(self) -> bool:
        """Asymmetric queries batched through ``embed_queries`` (not with fallbacks)."""
        return self._embed_queries is not None and not self.symmetric and not self._fallbacks

    def _dtype(self) -> str:
        store = self._store
        return store.dtype if store is not None else self._plain_dtype

    def _chunks(self, texts: list[str]) -> list[list[str]]:
        """Provider requests for texts sent without the micro-batcher: the same limits."""
        config = self.config
        max_items, max_tokens = PROFILES[config.provider_profile].limits(
            config.batch_size, config.batch_max_tokens
        )
        return split_batches(texts, max_items=max_items, max_tokens=max_tokens)

    def _record(
        self,
        role: Role,
        started: float,
        *,
        plan: _Plan,
        hits: int,
        sent: Mapping[str, str],
        error: bool,
    ) -> None:
        span_tracer = spans.tracer()
        if not self._tracker.enabled and span_tracer is None:
            return
        # Hits and texts coalesced onto another caller's request cost us no tokens. One
        # estimate per distinct text (the gate estimates again only under a token budget).
        tokens_in = saved = 0
        for key, text in plan.texts.items():
            if key in sent:
                tokens_in += estimate_tokens(text)
            else:
                saved += estimate_tokens(text)
        counters: dict[str, int] = {}
        if hits:
            counters["cache.hits"] = hits
        if sent and self._store is not None:
            counters["cache.misses"] = len(sent)
        coalesced = len(plan.texts) - hits - len(sent)
        if coalesced > 0:
            counters["coalesced"] = coalesced
        cache_hit = None if self._store is None else not sent
        self._record_call(
            span_tracer, role, started, tokens_in, saved, cache_hit, len(plan.keys), error,
            counters,
        )  # fmt: skip

    def _record_one(
        self, role: Role, started: float, text: str, *, sent: bool, error: bool
    ) -> None:
        """:meth:`_record` of a one-text call without a store (see :meth:`_embed_one`)."""
        span_tracer = spans.tracer()
        if not self._tracker.enabled and span_tracer is None:
            return
        tokens = estimate_tokens(text)
        used, spared = (tokens, 0) if sent else (0, tokens)
        counters = _NO_COUNTERS if sent else _COALESCED_ONE
        self._record_call(span_tracer, role, started, used, spared, None, 1, error, counters)

    def _record_call(
        self,
        span_tracer: Any,
        role: Role,
        started: float,
        tokens_in: int,
        saved: int,
        cache_hit: bool | None,
        texts: int,
        error: bool,
        counters: Mapping[str, int],
    ) -> None:
        """The one tracker record (and span) of a call of ``texts`` texts, with its counters.

        ``span_tracer``: ``spans.tracer()`` as the caller found it (``None``: no span);
        ``tokens_in``: estimated tokens sent to the provider; ``saved``: estimated tokens a
        hit or a coalesced text did not send; ``counters``: the operation's named counters
        to add to (``cache.hits``, ``cache.misses``, ``coalesced``).
        """
        tracker = self._tracker
        latency = self._clock() - started
        costs = self._costs(0 if error else tokens_in, saved)
        if span_tracer is not None:
            self._span(span_tracer, latency, tokens_in, saved, cache_hit, texts, error, costs)
        if not tracker.enabled:
            return
        # The tracker's names of this operation's roles, made once per operation name (an
        # f-string per call made a new string for the tracker to hash on every record).
        names = self._op_names
        if names[0] is not self.operation:
            op = self.operation
            names = self._op_names = (op, f"{op}.query", f"{op}.document")
        tracker.record(
            names[1] if role == "query" else names[2],
            latency,
            error=error,
            tokens_in=tokens_in,
            cache_hit=cache_hit,
            batch_size=texts,
            tokens_saved=saved,
            cost_usd=costs[0],
            cost_saved_usd=costs[1],
            cost_unknown=costs[2],
            model=self.identity.model,
            counters=counters,
        )

    def _costs(self, tokens_in: int, saved: int) -> tuple[float, float, bool]:
        """USD spent on ``tokens_in`` and saved on ``saved`` tokens; whether unknown."""
        if not tokens_in and not saved:
            return 0.0, 0.0, False
        rate = self._rate()
        if rate is None:
            return 0.0, 0.0, True
        return tokens_in * rate / 1e6, saved * rate / 1e6, False

    def _rate(self) -> float | None:
        """The model's embedding price in USD per 1,000,000 tokens; ``None``: unknown.

        Looked up once per model and price registration (see
        :func:`~rag_perf_plugins.cost.prices.registered_generation`), not per call; an
        unknown price is warned about once per model, as the price table does.
        """
        memo = self._rate_memo
        model = self.identity.model
        generation = registered_generation()
        if memo is not None and memo[0] == generation and memo[1] == model:
            return memo[2]
        price = self._prices.get(model)
        rate = None if price is None else price.embedding
        if rate is None:
            self._prices.embedding_cost(model, 0)  # the one warning per model
        self._rate_memo = (generation, model, rate)
        return rate

    def _span(
        self,
        tracer: Any,
        latency: float,
        tokens_in: int,
        saved: int,
        cache_hit: bool | None,
        texts: int,
        error: bool,
        costs: tuple[float, float, bool],
    ) -> None:
        """One OpenTelemetry span of a call (see :mod:`rag_perf_plugins.tracking.spans`)."""
        attributes: dict[str, Any] = {
            "gen_ai.provider.name": spans.provider_name(self.identity.provider),
            "gen_ai.usage.input_tokens": tokens_in,
            "rag_perf.tokens_saved": saved,
            "rag_perf.batch_size": texts,
        }
        if costs[2]:
            attributes["rag_perf.cost.unknown"] = True
        else:
            attributes["rag_perf.cost_usd"] = costs[0]
            attributes["rag_perf.cost_saved_usd"] = costs[1]
        if cache_hit is not None:
            attributes["rag_perf.cache.hit"] = cache_hit
            if cache_hit:
                attributes["rag_perf.cache.hit_kind"] = "exact"
                attributes["gen_ai.usage.cache_read.input_tokens"] = 0
        spans.emit(tracer, "embeddings", self.identity.model, latency, attributes, error=error)

    def _spend(self, texts: list[str], gate: Any = None) -> dict[str, Any]:
        """The gate's dollar-budget arguments for a provider request (none without budgets).

        Embedding answers carry no usage the frameworks pass on, so the estimate (the
        texts' estimated tokens at the model's embedding price) is also what is charged.
        ``gate``: a fallback target's gate (``None``: this service's); a fallback embeds
        with the same model, so at the same price.
        """
        budgeted = (
            self._budgeted if gate is None else getattr(gate, "dollar_budgets", None) is not None
        )
        if not budgeted:
            return {}
        model = self.identity.model
        rate = self._rate()
        if rate is None:
            return {"cost_usd": None, "model": model}
        tokens = sum(estimate_tokens(t) for t in texts)
        return {"cost_usd": tokens * rate / 1e6, "model": model}

    def _tokens(self, texts: list[str]) -> int:
        """Estimated tokens of a provider request for the gate; 0 without a token budget."""
        return sum(estimate_tokens(t) for t in texts) if self._gate_tokens else 0

    def _store_error(self, exc: Exception) -> None:
        self._tracker.incr("cache.errors", operation=f"{self.operation}.store")
        if not self._store_failed:
            self._store_failed = True
            logger.warning(
                "embedding cache failed (%s); calls go on uncached while it fails",
                describe_error(exc),
            )

    # --- sync shell -----------------------------------------------------------------
    def _embed_one(self, text: str, role: Role) -> Vector:
        """:meth:`_embed` of one text when there is no store: the same steps, less bookkeeping.

        The common uncached call (``embed_query``, a one-text ``embed_documents``) needs no
        per-call plan or key tables: one single-flight entry (an identical text already in
        flight is waited for, not sent again), the provider call (through the batcher,
        gate and retry as configured), and the same tracker record as :meth:`_embed`.
        """
        started = self._clock()
        key = f"{role}\x00{text}"
        flights = self._flights
        claimed = flights.claim_one(key, blocking=True)
        led = isinstance(claimed, Flight)
        try:
            if isinstance(claimed, Flight):
                batched = self._batched(role)
                try:
                    if batched:
                        vector = self._compute([text], role)[0]
                    elif role == "document" or self.symmetric:
                        vector = self._provider_batch([text])[0]
                    else:
                        vector = self._provider_query(text)
                except BaseException as exc:
                    flights.settle_one(key, claimed, None, exc)
                    raise
                flights.settle_one(key, claimed, vector, None)
                # Unbatched, the rounded list is this call's own; once settled without a
                # follower (none can come: the key is released), nobody else holds it.
                shared = batched or claimed.future is not None
            else:
                vector = claimed.result()
                shared = True
        except BaseException:
            self._record_one(role, started, text, sent=led, error=True)
            raise
        self._record_one(role, started, text, sent=led, error=False)
        # A copy, as _Plan.assemble gives, of a list that followers (or a batch) share.
        return list(vector) if shared else vector

    def _kept(self, plan: _Plan) -> list[Vector] | None:
        """Every vector of ``plan`` from the store's memory tier, by position; else ``None``.

        The hit path: no single-flight claim (a stored vector needs no provider call, so
        there is nothing to coalesce), no thread hop, no gate, no retry. ``None`` when a
        text is not there (or the store has no memory tier): the caller takes the full
        path, which looks everything up again.
        """
        store = self._store
        peek = getattr(store, "memory_vectors", None)
        if peek is None:
            return None
        texts = plan.texts
        found: list[Vector] | None = peek(list(texts))
        if found is None:
            return None
        if len(plan.keys) == len(texts):  # no repeated text: already one new list each
            return found
        return plan.assemble(dict(zip(texts, found, strict=True)))

    def _kept_one(self, text: str, role: Role) -> Vector | None:
        """:meth:`_kept` of a one-text call, recorded as its hit; ``None``: nothing recorded.

        The hit path of ``embed_query``: one key, one memory-tier read, no plan built; the
        record is :meth:`_record`'s for one text found in the store.
        """
        key_of = self._key_of(role)
        peek = getattr(self._store, "memory_vectors", None)
        if key_of is None or peek is None:
            return None
        started = self._clock()
        found: list[Vector] | None = peek([key_of(text)])
        if found is None:
            return None
        span_tracer = spans.tracer()
        if self._tracker.enabled or span_tracer is not None:
            self._record_call(
                span_tracer, role, started, 0, estimate_tokens(text), True, 1, False, _HIT_ONE
            )
        return found[0]

    def _embed(self, texts: list[str], role: Role) -> list[Vector]:
        started = self._clock()
        plan = self._plan(texts, role)
        kept = self._kept(plan)
        if kept is not None:
            self._record(role, started, plan=plan, hits=len(plan.texts), sent={}, error=False)
            return kept
        flights = self._flights
        # Claim before looking up: a text whose flight just ended is already stored, so a
        # caller that claims it afterwards finds it in the store instead of sending it again.
        lead, follow = flights.claim(plan.texts, blocking=True)
        hits = 0
        sent: dict[str, str] = {}
        cached = self._store is not None
        try:
            try:
                if cached:
                    results = self._lookup(list(lead))
                    hits = len(results)
                    sent = {k: plan.texts[k] for k in lead if k not in results}
                else:  # nothing to look up or save: every claimed text is sent
                    results = {}
                    sent = plan.texts if not follow else {k: plan.texts[k] for k in lead}
                if sent:
                    computed = self._compute(list(sent.values()), role)
                    results.update(zip(sent, computed, strict=True))
            except BaseException as exc:
                flights.settle(lead, None, exc, release=True)
                raise
            # Uncached, the flights end now; cached, they end after the save (see above).
            flights.settle(lead, results, None, release=not cached)
            if cached:
                try:
                    self._save({k: results[k] for k in sent})
                finally:
                    flights.release(lead)
            for key, future in follow.items():
                results[key] = future.result()
        except BaseException:
            self._record(role, started, plan=plan, hits=hits, sent=sent, error=True)
            raise
        self._record(role, started, plan=plan, hits=hits, sent=sent, error=False)
        return plan.assemble(results)

    # unasync: generated from _alookup
    def _lookup(self, keys: list[str]) -> dict[str, Vector]:
        store = self._store
        if store is None or not keys or not current_control().read:
            return {}
        try:
            values = store.get_many(keys)
        except Exception as exc:  # degrade: the call goes on uncached
            self._store_error(exc)
            return {}
        return {k: v for k, v in zip(keys, values, strict=True) if v is not None}

    # unasync: generated from _asave
    def _save(self, results: Mapping[str, Vector]) -> None:
        store = self._store
        control = current_control()
        if store is None or not results or not control.write:
            return
        try:
            ttl = control.ttl or self.config.cache_ttl
            if self._prerounded:
                cast(CacheEmbeddingStore, store).set_many(results, ttl=ttl, rounded=True)
            else:
                store.set_many(results, ttl=ttl)
        except Exception as exc:
            self._store_error(exc)

    def _compute(self, texts: list[str], role: Role) -> list[Vector]:
        if self._batched(role) and role == "query" and not self.symmetric:
            if self._qbatcher is None:
                self._qbatcher = BatchProcessor.from_config(
                    self.config,
                    self._provider_queries,
                    operation=f"{self.operation}.batch",
                    tracker=self._tracker,
                    clock=self._clock,
                )
            return self._qbatcher.submit_many(texts)
        if self._batched(role):
            if self._batcher is None:
                self._batcher = BatchProcessor.from_config(
                    self.config,
                    self._provider_batch,
                    operation=f"{self.operation}.batch",
                    tracker=self._tracker,
                    clock=self._clock,
                )
            return self._batcher.submit_many(texts)
        if role == "document" or self.symmetric:
            return [v for chunk in self._chunks(texts) for v in self._provider_batch(chunk)]
        return [self._provider_query(text) for text in texts]

    def _provider_batch(self, texts: list[str]) -> list[Vector]:
        if self._fallbacks:

            def on(p: _Provider) -> Callable[[], Sequence[Sequence[float]]]:
                def call() -> Sequence[Sequence[float]]:
                    self.provider_calls += 1
                    return p.embed_many(texts)

                return call

            vectors = self._chained(on, texts)
        else:
            vectors = self._guarded(self._primary.embed_many, texts, texts)
        _check_count(vectors, texts)
        return round_vectors(vectors, self._dtype())

    def _provider_queries(self, texts: list[str]) -> list[Vector]:
        embed_queries = self._embed_queries
        assert embed_queries is not None  # only the query lane calls this
        vectors = self._guarded(embed_queries, texts, texts)
        _check_count(vectors, texts)
        return round_vectors(vectors, self._dtype())

    def _provider_query(self, text: str) -> Vector:
        if self._fallbacks:

            def on(p: _Provider) -> Callable[[], Sequence[Sequence[float]]]:
                def call() -> Sequence[Sequence[float]]:
                    self.provider_calls += 1
                    if p.embed_query is not None:
                        return [p.embed_query(text)]
                    return p.embed_many([text])

                return call

            vectors = self._chained(on, [text])
        elif self._primary.embed_query is not None:
            vectors = self._guarded(self._query_as_batch, text, [text])
        else:
            vectors = self._guarded(self._primary.embed_many, [text], [text])
        _check_count(vectors, [text])
        return round_vectors(vectors, self._dtype())[0]

    def _query_as_batch(self, text: str) -> Sequence[Sequence[float]]:
        """The primary's ``embed_query(text)`` as a batch of one vector."""
        embed_query = self._primary.embed_query
        assert embed_query is not None  # _provider_query checked
        return [embed_query(text)]

    # --- fallbacks: the chain of targets (blocking and async twins, kept by hand) ------
    def _chain_breakers(self) -> Breakers:
        if self._breakers is None:
            self._breakers = breakers_for(self.config)
        return self._breakers

    def _chained(self, on: Callable[[_Provider], Callable[[], R]], texts: list[str]) -> R:
        """``on(target)()`` on the first target that answers (see ``LLMService``'s chain).

        Every target failed (after the retry policy): ``ProviderUnavailable`` that is also
        the last error's class. A call that waited at a target's gate while its breaker
        opened goes on unsent.
        """
        breakers = self._chain_breakers()
        passed = _Pass()

        def attempt() -> R:
            refused: list[tuple[str, Admission]] = []
            last: Exception | None = None
            passed.targets.clear()
            for p in self._fallbacks:
                name = p.target.name if p.target is not None else "primary"
                admission = breakers.admit(name)
                if not admission.allowed:
                    refused.append((name, admission))
                    breakers.failover(name, "open")
                    passed.targets[name] = (admission.state, admission.retry_in, None)
                    continue
                send = self._sender(on(p), p, name, admission, texts, breakers)
                timeout = self._probe_timeout(admission)
                try:
                    if timeout is None:
                        value = send()
                    else:
                        value = run_probe(send, name, timeout=timeout, breakers=breakers)
                except OpenedMeanwhile as opened:
                    refused.append((name, Admission(False, False, opened.state, opened.retry_in)))
                    breakers.failover(name, "open")
                    passed.targets[name] = (opened.state, opened.retry_in, None)
                    continue
                except Exception as exc:
                    moved = breakers.record(
                        name, outcome_of(exc), probe=admission.probe, since=admission.at
                    )
                    passed.failed(name, admission, moved, exc)
                    reason = failover_reason(exc)
                    if reason is None:
                        raise
                    breakers.failover(name, reason)
                    last = exc
                    continue
                breakers.record(name, "success", probe=admission.probe, since=admission.at)
                return value
            if last is not None:
                passed.error = last
                raise last
            raise _unavailable(refused)

        retry = self._retry
        try:
            return retry.call(attempt) if retry is not None else attempt()
        except Exception as exc:
            if exc is not passed.error:
                raise
            raise passed.unavailable(exc) from exc

    async def _achained(
        self,
        on: Callable[[_Provider], Callable[[], Awaitable[Sequence[Sequence[float]]]]],
        texts: list[str],
    ) -> Sequence[Sequence[float]]:
        """Async twin of :meth:`_chained`."""
        breakers = self._chain_breakers()
        passed = _Pass()

        async def attempt() -> Sequence[Sequence[float]]:
            refused: list[tuple[str, Admission]] = []
            last: Exception | None = None
            passed.targets.clear()
            for p in self._fallbacks:
                name = p.target.name if p.target is not None else "primary"
                admission = await breakers.aadmit(name)
                if not admission.allowed:
                    refused.append((name, admission))
                    breakers.failover(name, "open")
                    passed.targets[name] = (admission.state, admission.retry_in, None)
                    continue
                asend = self._asender(on(p), p, name, admission, texts, breakers)
                timeout = self._probe_timeout(admission)
                try:
                    if timeout is None:
                        value = await asend()
                    else:
                        value = await arun_probe(asend, name, timeout=timeout, breakers=breakers)
                except OpenedMeanwhile as opened:
                    refused.append((name, Admission(False, False, opened.state, opened.retry_in)))
                    breakers.failover(name, "open")
                    passed.targets[name] = (opened.state, opened.retry_in, None)
                    continue
                except Exception as exc:
                    moved = await breakers.arecord(
                        name, outcome_of(exc), probe=admission.probe, since=admission.at
                    )
                    passed.failed(name, admission, moved, exc)
                    reason = failover_reason(exc)
                    if reason is None:
                        raise
                    breakers.failover(name, reason)
                    last = exc
                    continue
                await breakers.arecord(name, "success", probe=admission.probe, since=admission.at)
                return value
            if last is not None:
                passed.error = last
                raise last
            raise _unavailable(refused)

        retry = self._retry
        try:
            return await retry.acall(attempt) if retry is not None else await attempt()
        except Exception as exc:
            if exc is not passed.error:
                raise
            raise passed.unavailable(exc) from exc

    def _probe_timeout(self, admission: Admission) -> float | None:
        """Seconds a probe may take (``breaker_probe_timeout``); ``None``: not a probe, no bound."""
        return self.config.breaker_probe_timeout if admission.probe else None

    def _sender(
        self,
        call: Callable[[], R],
        p: _Provider,
        name: str,
        admission: Admission,
        texts: list[str],
        breakers: Breakers,
    ) -> Callable[[], R]:
        """``call`` through ``p``'s gate: what one target of :meth:`_chained` sends.

        A call that waited at the gate while the breaker opened raises ``OpenedMeanwhile``
        (unsent).
        """
        gate = p.gate
        if gate is None:
            return call

        def send() -> R:
            with gate.acquire(tokens=self._tokens(texts), **self._spend(texts, gate)) as ticket:
                if _waited(ticket, admission):
                    found, retry_in = breakers.peek(name)
                    if found != "closed":
                        raise OpenedMeanwhile(found, retry_in)
                try:
                    with gate_listener(gate):
                        return call()
                except Exception as exc:
                    observe_failure(gate, exc)
                    raise

        return send

    def _asender(
        self,
        call: Callable[[], Awaitable[Sequence[Sequence[float]]]],
        p: _Provider,
        name: str,
        admission: Admission,
        texts: list[str],
        breakers: Breakers,
    ) -> Callable[[], Awaitable[Sequence[Sequence[float]]]]:
        """Async twin of :meth:`_sender`."""
        gate = p.gate
        if gate is None:
            return call

        async def send() -> Sequence[Sequence[float]]:
            async with gate.aacquire(
                tokens=self._tokens(texts), **self._spend(texts, gate)
            ) as ticket:
                if _waited(ticket, admission):
                    found, retry_in = await breakers.apeek(name)
                    if found != "closed":
                        raise OpenedMeanwhile(found, retry_in)
                try:
                    with gate_listener(gate):
                        return await call()
                except Exception as exc:
                    await aobserve_failure(gate, exc)
                    raise

        return send

    def _guarded(self, send: Callable[[A], R], arg: A, texts: list[str]) -> R:
        """``send(arg)``, the primary's request for ``texts``, through the gate and the retry.

        Without fallbacks this is the whole provider path: every attempt is admitted by
        the gate (at once when the gate can, see ``AdmissionGate.admit_now``), counted in
        ``provider_calls``, and heard by the gate (:meth:`_sent`).
        """
        gate, retry = self._gate, self._retry
        if gate is None:

            def bare() -> R:
                self.provider_calls += 1
                return send(arg)

            return retry.call(bare) if retry is not None else bare()

        tokens = self._tokens(texts) if self._gate_tokens else 0
        spend = self._spend(texts) if self._budgeted else _NO_SPEND
        at_once = self._at_once

        def admitted() -> R:
            if at_once is None or (ticket := at_once[0](tokens=tokens)) is None:
                with gate.acquire(tokens=tokens, **spend):
                    return self._sent(gate, send, arg)
            error = True
            try:
                value = self._sent(gate, send, arg)
                error = False
                return value
            finally:
                at_once[1](ticket, error=error)

        return retry.call(admitted) if retry is not None else admitted()

    def _sent(self, gate: Any, send: Callable[[A], R], arg: A) -> R:
        """One admitted request: counted, heard by ``gate``, a failure observed by it.

        A success's rate-limit headers are shown to the gate (what
        :func:`~rag_perf_plugins.services.llm.gate_listener` sets up, found once per
        service); a failure's 429 with Retry-After pauses every caller.
        """
        listeners = self._listeners
        token = None if listeners is None else listen(listeners)
        try:
            self.provider_calls += 1
            return send(arg)
        except Exception as exc:
            observe_failure(gate, exc)
            raise
        finally:
            if token is not None:
                unlisten(token)

    # --- async shell ----------------------------------------------------------------
    async def _aembed(self, texts: list[str], role: Role) -> list[Vector]:
        started = self._clock()
        plan = self._plan(texts, role)
        kept = self._kept(plan)
        if kept is not None:
            self._record(role, started, plan=plan, hits=len(plan.texts), sent={}, error=False)
            return kept
        lead, follow = self._flights.claim(plan.texts, blocking=False)
        found: dict[str, Vector] = {}
        counts: dict[str, Any] = {"hits": 0, "sent": {}}
        try:
            if lead:
                # The leader's work runs in its own task: if this caller is cancelled, the
                # followers waiting on these texts still get their vectors.
                work = asyncio.ensure_future(self._alead(plan, lead, role, counts))
                found.update(await asyncio.shield(work))
            for key, flight in follow.items():
                # shield: a cancelled follower must not cancel the shared flight.
                found[key] = await asyncio.shield(asyncio.wrap_future(flight))
        except BaseException:
            self._record(role, started, plan=plan, error=True, **counts)
            raise
        self._record(role, started, plan=plan, error=False, **counts)
        return plan.assemble(found)

    async def _alead(
        self,
        plan: _Plan,
        lead: dict[str, Flight[Vector]],
        role: Role,
        counts: dict[str, Any],
    ) -> dict[str, Vector]:
        try:
            try:
                found = await self._alookup(list(lead))
                sent = {k: plan.texts[k] for k in lead if k not in found}
                counts["hits"], counts["sent"] = len(found), sent
                results = dict(found)
                if sent:
                    computed = await self._acompute(list(sent.values()), role)
                    results.update(zip(sent, computed, strict=True))
            except BaseException as exc:
                self._flights.settle(lead, None, exc)
                raise
            self._flights.settle(lead, results, None)
            await self._asave({k: results[k] for k in sent})
            return results
        finally:
            self._flights.release(lead)

    async def _alookup(self, keys: list[str]) -> dict[str, Vector]:
        store = self._store
        if store is None or not keys or not current_control().read:
            return {}
        try:
            values = await store.aget_many(keys)
        except Exception as exc:  # degrade: the call goes on uncached
            self._store_error(exc)
            return {}
        return {k: v for k, v in zip(keys, values, strict=True) if v is not None}

    async def _asave(self, results: Mapping[str, Vector]) -> None:
        store = self._store
        control = current_control()
        if store is None or not results or not control.write:
            return
        try:
            ttl = control.ttl or self.config.cache_ttl
            if self._prerounded:
                await cast(CacheEmbeddingStore, store).aset_many(results, ttl=ttl, rounded=True)
            else:
                await store.aset_many(results, ttl=ttl)
        except Exception as exc:
            self._store_error(exc)

    async def _acompute(self, texts: list[str], role: Role) -> list[Vector]:
        if self._batched(role) and role == "query" and not self.symmetric:
            loop = asyncio.get_running_loop()
            qbatcher = self._aqbatchers.get(loop)
            if qbatcher is None:
                qbatcher = AsyncBatchProcessor.from_config(
                    self.config,
                    self._aprovider_queries,
                    operation=f"{self.operation}.batch",
                    tracker=self._tracker,
                    clock=self._clock,
                )
                self._aqbatchers[loop] = qbatcher
            return await qbatcher.submit_many(texts)
        if self._batched(role):
            loop = asyncio.get_running_loop()
            batcher = self._abatchers.get(loop)
            if batcher is None:
                batcher = AsyncBatchProcessor.from_config(
                    self.config,
                    self._aprovider_batch,
                    operation=f"{self.operation}.batch",
                    tracker=self._tracker,
                    clock=self._clock,
                )
                self._abatchers[loop] = batcher
            return await batcher.submit_many(texts)
        if role == "document" or self.symmetric:
            out: list[Vector] = []
            for chunk in self._chunks(texts):
                out.extend(await self._aprovider_batch(chunk))
            return out
        return list(await asyncio.gather(*(self._aprovider_query(t) for t in texts)))

    async def _aprovider_batch(self, texts: list[str]) -> list[Vector]:
        def on(p: _Provider) -> Callable[[], Awaitable[Sequence[Sequence[float]]]]:
            async def call() -> Sequence[Sequence[float]]:
                self.provider_calls += 1
                if p.aembed_many is not None:
                    return await p.aembed_many(texts)
                # A sync-only provider runs in a worker thread: the loop keeps serving.
                return await in_thread(p.embed_many, texts)

            return call

        if self._fallbacks:
            vectors = await self._achained(on, texts)
        else:
            vectors = await self._aguarded(on(self._primary), texts)
        _check_count(vectors, texts)
        return round_vectors(vectors, self._dtype())

    async def _aprovider_queries(self, texts: list[str]) -> list[Vector]:
        embed_queries = self._embed_queries
        assert embed_queries is not None  # only the query lane calls this

        async def call() -> Sequence[Sequence[float]]:
            self.provider_calls += 1
            # A sync model (a local one is CPU-bound) runs in a worker: the loop keeps serving.
            return await in_thread(embed_queries, texts)

        vectors = await self._aguarded(call, texts)
        _check_count(vectors, texts)
        return round_vectors(vectors, self._dtype())

    async def _aprovider_query(self, text: str) -> Vector:
        def on(p: _Provider) -> Callable[[], Awaitable[Sequence[Sequence[float]]]]:
            async def call() -> Sequence[Sequence[float]]:
                self.provider_calls += 1
                if p.aembed_query is not None:
                    return [await p.aembed_query(text)]
                if p.embed_query is not None:
                    return [await in_thread(p.embed_query, text)]
                if p.aembed_many is not None:
                    return await p.aembed_many([text])
                return await in_thread(p.embed_many, [text])

            return call

        if self._fallbacks:
            vectors = await self._achained(on, [text])
        else:
            vectors = await self._aguarded(on(self._primary), [text])
        _check_count(vectors, [text])
        return round_vectors(vectors, self._dtype())[0]

    async def _aguarded(
        self, call: Callable[[], Awaitable[Sequence[Sequence[float]]]], texts: list[str]
    ) -> Sequence[Sequence[float]]:
        gate, retry = self._gate, self._retry

        tokens = self._tokens(texts) if self._gate_tokens else 0
        spend = self._spend(texts) if self._budgeted else _NO_SPEND
        listeners = self._listeners
        at_once = self._at_once

        async def sent() -> Sequence[Sequence[float]]:
            # A success's rate-limit headers feed the gate (gate_listener, inlined).
            token = None if listeners is None else listen(listeners)
            try:
                return await call()
            except Exception as exc:
                await aobserve_failure(gate, exc)  # a 429's Retry-After pauses everyone
                raise
            finally:
                if token is not None:
                    unlisten(token)

        async def admitted() -> Sequence[Sequence[float]]:
            if gate is None:
                return await call()
            # As in _guarded: admitted at once without the acquire block when the gate can.
            if at_once is None or (ticket := at_once[0](tokens=tokens)) is None:
                async with gate.aacquire(tokens=tokens, **spend):
                    return await sent()
            error = True
            try:
                value = await sent()
                error = False
                return value
            finally:
                at_once[1](ticket, error=error)

        return await retry.acall(admitted) if retry is not None else await admitted()


def _at_once_of(gate: object) -> tuple[AdmitNow, Leave] | None:
    """``gate``'s ``(admit_now, leave)`` when its admission is AdmissionGate's own; else None.

    A subclass that overrides ``acquire`` or ``aacquire`` (to record, or to add a policy)
    is always asked through them: the at-once path would skip what it adds.
    """
    if not isinstance(gate, AdmissionGate):
        return None
    cls = type(gate)
    if cls.acquire is AdmissionGate.acquire and cls.aacquire is AdmissionGate.aacquire:
        return gate.admit_now, gate.leave
    return None


def _check_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        msg = "texts must be a list of str, got a single str (use embed_query for one text)"
        raise TypeError(msg)
    out = list(texts)
    for i, text in enumerate(out):
        if not isinstance(text, str):
            msg = f"texts[{i}] must be a str, got {type(text).__name__}"
            raise TypeError(msg)
    return out


def _check_text(text: str) -> str:
    if not isinstance(text, str):
        msg = f"text must be a str, got {type(text).__name__}"
        raise TypeError(msg)
    return text


def _check_count(vectors: Sequence[Sequence[float]], texts: list[str]) -> None:
    if len(vectors) != len(texts):
        msg = f"the provider returned {len(vectors)} vectors for {len(texts)} texts"
        raise ValueError(msg)


def _default_target(gate: Any, provider: str, model: str) -> Target:
    key = getattr(gate, "key", None)
    digest = hashlib.blake2b(provider.encode(), digest_size=3).hexdigest()
    return Target(f"{key if isinstance(key, str) and key else model}~{digest}", gate=gate)


class _Pass:
    """One pass of an embedding chain: each target's (state, retry_in, failure note)."""

    __slots__ = ("error", "targets")

    def __init__(self) -> None:
        self.targets: dict[str, tuple[str, float, str | None]] = {}
        self.error: BaseException | None = None  # raised when every target failed

    def failed(
        self, name: str, admission: Admission, moved: Transition | None, exc: Exception
    ) -> None:
        state = "open" if moved is not None else admission.state
        retry_in = moved.cooldown_s if moved is not None else 0.0
        self.targets[name] = (state, retry_in, failed_note(exc))

    def unavailable(self, exc: BaseException) -> ProviderUnavailable:
        targets = [(name, found[0], found[1]) for name, found in self.targets.items()]
        errors = {name: found[2] for name, found in self.targets.items() if found[2]}
        return ProviderUnavailable.after_failures(targets, errors, exc)


# A wait at the gate after which the breaker is asked again before sending (seconds).
_RECHECK_AFTER_S = 0.001


def _waited(ticket: Any, admission: Admission) -> bool:
    """Whether a non-probe call waited at its gate long enough to ask its breaker again."""
    wait = getattr(ticket, "queue_wait_s", None)
    return not admission.probe and isinstance(wait, float | int) and wait > _RECHECK_AFTER_S


def _unavailable(refused: list[tuple[str, Admission]]) -> ProviderUnavailable:
    return ProviderUnavailable([(name, a.state, a.retry_in) for name, a in refused])
