"""AsyncRAGEngine / RAGEngine: one RAG query with cache, admission, retries and degradation.

The engine does not know how to retrieve or generate; it takes two callables and wraps
policy around them::

    async def retriever(query: str, top_k: int) -> list[Passage]: ...
    async def generator(query: str, passages: Sequence[Passage]) -> str: ...

    async with AsyncRAGEngine(config, retriever=retriever, generator=generator) as engine:
        result = await engine.query("What is machine learning?")
        result.answer, result.sources, result.cached, result.stale, result.timings
        results = await process_queries_concurrently(engine, queries, max_concurrent=10)

**The component protocol** (the LangChain and LlamaIndex adapters provide these):

- ``retriever(query: str, top_k: int) -> Sequence[passage]``: the ``top_k`` best passages
  for ``query``, best first. A passage is any object; the engine only stores and returns it.
- ``generator(query: str, passages: Sequence[passage]) -> answer``: the answer (usually a
  ``str``) to ``query`` from ``passages``.
- :class:`AsyncRAGEngine` needs both to be coroutine functions; :class:`RAGEngine` needs both
  to be plain (blocking) functions. Both may raise; see "Degradation" for what happens then.

**One query** goes: validate, then look up the query-result cache (identical queries in
flight are computed once: the cache's single-flight); on a miss, take an admission-gate
slot, call the retriever and the generator (each under the retry policy), store the answer
and return a :class:`QueryResult`. Every query is recorded in the tracker as ``rag.query``.

**Degradation** (config keys ``degrade_*``, every step off by default: a RAG service must
not change its answers under load unless asked to), under overload, meaning more queries in
the engine than ``max_concurrent_requests``, or when the provider fails:

1. shed: a query whose ``priority`` is below ``degrade_shed_below_priority`` is refused
   with :class:`~rag_perf_plugins.errors.Overloaded` (or answered stale, see 3);
2. top_k: retrieval asks for ``top_k * degrade_top_k_factor`` passages (at least 1; the
   default factor 1.0 asks for ``top_k``);
3. stale: when the call fails with an overload or provider error and
   ``degrade_serve_stale`` is on, an expired cached answer is served, marked ``stale=True``.

Each step is counted in :attr:`AsyncRAGEngine.stats` and in the tracker
(``rag.degrade.shed``, ``rag.degrade.top_k``, ``rag.degrade.stale``).

Stale answers (with ``degrade_serve_stale`` on): each computed answer is stored twice,
fresh under ``cache_ttl`` and as a stale copy that lives ``stale_ttl`` seconds longer; the
stale copy is read only when the fresh path fails. Cached answers and passages must be
msgpack/JSON structures (strings, numbers, lists, dicts); pass
``encode_sources``/``decode_sources`` for richer passages, otherwise the cache counts an
"unserializable" fault and the answer simply goes uncached.

``request_deadline`` covers the gate wait and both steps; the retry policy enforces it
inside attempts, and without one it is checked between steps. Keep one retry owner: when
the components already retry (the adapters' provider calls do), pass ``retry=False``.

Not done here: streaming answers, reranking, and model fallback.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import math
import threading
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar, cast

from ._clock import Clock, monotonic
from ._signature import checked_kwargs
from .admission import AdmissionGate
from .admission.gate import counts_tokens
from .config import PerformanceConfig, resolve_config
from .errors import (
    DeadlineExceeded,
    Overloaded,
    ProviderError,
    RetryBudgetExhausted,
)
from .services.defaults import default_cache, default_retry
from .tokens import estimate_tokens
from .tracking import PerformanceTracker, resolve_tracker

__all__ = [
    "AsyncRAGEngine",
    "EngineStats",
    "QueryResult",
    "RAGEngine",
    "is_provider_failure",
    "process_queries_concurrently",
    "SupportsQuery",
]

T = TypeVar("T")
R = TypeVar("R")
R_co = TypeVar("R_co", covariant=True)
RetT = TypeVar("RetT", bound=Callable[..., Any])
GenT = TypeVar("GenT", bound=Callable[..., Any])

AsyncRetriever = Callable[[str, int], Awaitable[Sequence[Any]]]
AsyncGenerator = Callable[[str, Sequence[Any]], Awaitable[Any]]
SyncRetriever = Callable[[str, int], Sequence[Any]]
SyncGenerator = Callable[[str, Sequence[Any]], Any]
SourceCodec = Callable[[Sequence[Any]], Sequence[Any]]

# Version of the query-result cache key and payload; bump when either changes shape.
_KEY_VERSION = 1
_NAMESPACE = "query"


# --- what the engine needs from its collaborators -------------------------------------


class QueryCache(Protocol):
    """The query-result cache: single-flight compute plus plain get/set, sync and async.

    :class:`rag_perf_plugins.cache.CacheManager` is the production implementation; the
    engine uses its ``query`` namespace. Values are msgpack/JSON structures.
    """

    def get(self, key: str, default: Any = None, *, namespace: str = ...) -> Any:
        """The stored value or ``default``."""
        ...

    def set(self, key: str, value: Any, ttl: float | None = None, *, namespace: str = ...) -> None:
        """Store ``value`` for ``ttl`` seconds."""
        ...

    async def aget(self, key: str, default: Any = None, *, namespace: str = ...) -> Any:
        """Async twin of :meth:`get`."""
        ...

    async def aset(
        self, key: str, value: Any, ttl: float | None = None, *, namespace: str = ...
    ) -> None:
        """Async twin of :meth:`set`."""
        ...

    def get_or_compute(
        self, key: str, fn: Callable[[], T], ttl: float | None = None, *, namespace: str = ...
    ) -> T:
        """The cached value, or ``fn()`` run once for all concurrent callers, stored."""
        ...

    async def aget_or_compute(
        self,
        key: str,
        fn: Callable[[], Awaitable[T]],
        ttl: float | None = None,
        *,
        namespace: str = ...,
    ) -> T:
        """Async twin of :meth:`get_or_compute`."""
        ...


class Gate(Protocol):
    """An admission gate: a slot (and rate budget) per query; may raise ``Overloaded``."""

    def aacquire(
        self, *, tokens: int = 0, timeout: float | None = None
    ) -> contextlib.AbstractAsyncContextManager[Any]:
        """``async with gate.aacquire(tokens=n):`` holds one admission."""
        ...

    def acquire(
        self, *, tokens: int = 0, timeout: float | None = None
    ) -> contextlib.AbstractContextManager[Any]:
        """Blocking twin of :meth:`aacquire`."""
        ...


class Retry(Protocol):
    """A retry policy: run a call, retrying what it considers retryable."""

    def call(self, fn: Callable[[], R], *, deadline: float | None = None) -> R:
        """Run ``fn`` (blocking) with retries, within ``deadline`` seconds."""
        ...

    async def acall(self, fn: Callable[[], Awaitable[R]], *, deadline: float | None = None) -> R:
        """Await ``fn()`` with retries, within ``deadline`` seconds."""
        ...


def is_provider_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is an overload or provider failure (so a stale answer may be served).

    Example: ``is_provider_failure(Overloaded("queue full"))`` is true,
    ``is_provider_failure(TypeError("bug"))`` is false. True for our overload, deadline,
    retry-budget and provider errors, timeouts and connection errors; an exception carrying
    an HTTP ``status_code`` (ours and the SDKs') qualifies only for 408, 429 and 5xx.
    Programming errors and client errors (400, 401, 404, ...) are never masked.
    """
    status = getattr(exc, "status_code", None)
    if isinstance(status, int):
        # A provider that answered: only timeouts, rate limits and server errors qualify
        # (a 400/401/404 is the caller's problem and a stale answer would hide it).
        return status in (408, 429) or status >= 500
    if isinstance(
        exc,
        (
            Overloaded,
            DeadlineExceeded,
            RetryBudgetExhausted,
            ProviderError,
            TimeoutError,
            ConnectionError,
        ),
    ):
        return True
    # httpx / aiohttp / SDK transport errors, matched by name so the core needs no SDK.
    names = {cls.__name__ for cls in type(exc).__mro__}
    return bool(
        names
        & {
            "APIConnectionError",
            "APITimeoutError",
            "RateLimitError",
            "InternalServerError",
            "TransportError",
            "ClientError",
        }
    )


# --- results and stats -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class QueryResult:
    """The outcome of one query.

    Example::

        result = await engine.query("What is RAG?")
        if result.ok:
            print(result.answer, len(result.sources), result.timings["total_s"])
        else:
            print("failed:", result.error)     # only from process_queries_concurrently

    Attributes:
        query: The query as asked.
        answer: The generator's answer (``None`` when ``error`` is set).
        sources: The passages the answer was generated from.
        cached: The answer came from the cache or from an identical query in flight.
        stale: The answer is an expired cached one, served because the call failed.
        top_k: Passages asked of the retriever (after degradation).
        degraded: The degradation steps applied: ``"top_k"``, ``"stale"``.
        timings: Seconds: ``total_s``, and when computed ``retrieve_s``, ``generate_s``,
            ``queue_s`` (waiting for the admission gate).
        error: The exception, when the query failed (set by
            :func:`process_queries_concurrently`, never by ``query``).
    """

    query: str
    answer: Any = None
    sources: tuple[Any, ...] = ()
    cached: bool = False
    stale: bool = False
    top_k: int = 0
    degraded: tuple[str, ...] = ()
    timings: dict[str, float] = field(default_factory=dict)
    error: BaseException | None = None

    @property
    def ok(self) -> bool:
        """Whether the query was answered (``error`` is ``None``)."""
        return self.error is None

    @classmethod
    def failed(cls, query: str, error: BaseException) -> QueryResult:
        """A result carrying ``error`` in place of an answer."""
        return cls(query=query, error=error)

    def raise_for_error(self) -> QueryResult:
        """Raise :attr:`error` when set; else return ``self``."""
        if self.error is not None:
            raise self.error
        return self


class EngineStats:
    """Counters of one engine; :meth:`as_dict` for a snapshot.

    Example: ``engine.stats.as_dict()["stale_served"]``.
    """

    __slots__ = (
        "active",
        "answered",
        "cache_hits",
        "errors",
        "peak_active",
        "queries",
        "shed",
        "stale_served",
        "top_k_reduced",
    )

    def __init__(self) -> None:
        self.queries = 0
        self.answered = 0
        self.errors = 0
        self.cache_hits = 0
        self.stale_served = 0
        self.top_k_reduced = 0
        self.shed = 0
        self.active = 0
        self.peak_active = 0

    def as_dict(self) -> dict[str, int]:
        """Plain counts."""
        return {name: getattr(self, name) for name in self.__slots__}

    def __repr__(self) -> str:
        return (
            f"<EngineStats queries={self.queries} active={self.active} "
            f"cache_hits={self.cache_hits} stale={self.stale_served} "
            f"top_k_reduced={self.top_k_reduced} shed={self.shed} errors={self.errors}>"
        )


# --- the pure core shared by both engines ----------------------------------------------


class _Plan:
    """One query's decisions, made up front by the core."""

    __slots__ = (
        "deadline_at",
        "degraded",
        "key",
        "priority",
        "query",
        "requested_top_k",
        "shed",
        "stale_keys",
        "started",
        "top_k",
    )

    def __init__(self, query: str, requested_top_k: int, priority: int, started: float) -> None:
        self.query = query
        self.requested_top_k = requested_top_k
        self.top_k = requested_top_k
        self.priority = priority
        self.started = started
        self.shed = False
        self.degraded: list[str] = []
        self.deadline_at: float | None = None
        self.key = ""
        self.stale_keys: list[str] = []


class _EngineCore:
    """Validation, degradation decisions, keys, payloads and stats; no I/O, no waiting."""

    __slots__ = (
        "_clock",
        "closed",
        "config",
        "default_top_k",
        "engine_id",
        "fresh_ttl",
        "stale_ttl",
        "stats",
        "tracker",
    )

    def __init__(
        self,
        config: PerformanceConfig,
        *,
        top_k: int,
        engine_id: str,
        stale_ttl: float,
        tracker: PerformanceTracker,
        clock: Clock,
    ) -> None:
        _check_options(top_k, stale_ttl)
        self.config = config
        self.default_top_k = top_k
        self.engine_id = engine_id
        self.fresh_ttl = config.cache_ttl
        # The stale copy outlives the fresh entry by stale_ttl; None (no expiry) stays None.
        self.stale_ttl = None if config.cache_ttl is None else config.cache_ttl + stale_ttl
        self.tracker = tracker
        self._clock = clock
        self.stats = EngineStats()
        self.closed = False

    def begin(self, query: str, top_k: int | None, priority: int) -> _Plan:
        """Validate, count the query in, and decide shedding and top_k."""
        if self.closed:
            msg = "the engine is closed; build a new one"
            raise RuntimeError(msg)
        if not isinstance(query, str) or not query.strip():
            msg = f"query must be a non-empty str, got {query!r}"
            raise ValueError(msg)
        if top_k is None:
            top_k = self.default_top_k
        elif isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            msg = f"top_k must be an int >= 1 (passages) or None, got {top_k!r}"
            raise ValueError(msg)
        if isinstance(priority, bool) or not isinstance(priority, int):
            msg = f"priority must be an int (higher is more important), got {priority!r}"
            raise ValueError(msg)
        stats = self.stats
        stats.queries += 1
        stats.active += 1
        stats.peak_active = max(stats.peak_active, stats.active)
        now = self._clock()
        plan = _Plan(query, top_k, priority, now)
        if self.config.request_deadline is not None:
            plan.deadline_at = now + self.config.request_deadline
        overloaded = stats.active > self.config.max_concurrent_requests
        shed_below = self.config.degrade_shed_below_priority
        if overloaded and shed_below is not None and priority < shed_below:
            plan.shed = True
        elif overloaded and self.config.degrade_top_k_factor < 1.0:
            reduced = max(1, math.floor(top_k * self.config.degrade_top_k_factor))
            if reduced < top_k:
                plan.top_k = reduced
                plan.degraded.append("top_k")
                stats.top_k_reduced += 1
                self._incr("rag.degrade.top_k")
        return plan

    def with_keys(self, plan: _Plan) -> _Plan:
        """Fill in the cache keys (only engines with a cache pay for hashing)."""
        plan.key = self.key(plan.query, plan.top_k)
        plan.stale_keys = [
            self.stale_key(plan.query, k) for k in dict.fromkeys((plan.requested_top_k, plan.top_k))
        ]
        return plan

    def key(self, query: str, top_k: int) -> str:
        """The query-result cache key: engine identity, query and top_k, hashed."""
        canonical = json.dumps(
            {"v": _KEY_VERSION, "engine": self.engine_id, "query": query, "top_k": top_k},
            sort_keys=True,
            ensure_ascii=False,
        )
        digest = hashlib.blake2b(canonical.encode("utf-8"), digest_size=20).hexdigest()
        return f"rag-query:v{_KEY_VERSION}:{digest}"

    def stale_key(self, query: str, top_k: int) -> str:
        """Where the stale copy of an answer lives."""
        return "stale:" + self.key(query, top_k)

    def remaining(self, plan: _Plan) -> float | None:
        """Seconds left before the query's deadline (``None``: no deadline)."""
        if plan.deadline_at is None:
            return None
        left = plan.deadline_at - self._clock()
        if left <= 0:
            msg = f"query deadline of {self.config.request_deadline:g} s passed"
            raise DeadlineExceeded(msg)
        return left

    def overloaded_error(self, plan: _Plan) -> Overloaded:
        """The error of a shed query."""
        self.stats.shed += 1
        self._incr("rag.degrade.shed")
        msg = (
            f"shed: {self.stats.active} queries active (max_concurrent_requests="
            f"{self.config.max_concurrent_requests}) and priority {plan.priority} is below "
            f"degrade_shed_below_priority={self.config.degrade_shed_below_priority}"
        )
        return Overloaded(msg)

    def can_serve_stale(self, exc: BaseException) -> bool:
        """Whether ``exc`` allows a stale answer."""
        return self.config.degrade_serve_stale and is_provider_failure(exc)

    @staticmethod
    def pack(answer: Any, sources: Sequence[Any], timings: dict[str, float]) -> dict[str, Any]:
        """The cached payload of a computed answer."""
        return {"answer": answer, "sources": list(sources), "timings": timings}

    def result(
        self, plan: _Plan, payload: Any, *, cached: bool, stale: bool = False
    ) -> QueryResult:
        """Turn a payload into a result and count it."""
        if not isinstance(payload, dict) or "answer" not in payload:
            msg = f"cached query payload has an unexpected shape: {type(payload).__name__}"
            raise TypeError(msg)
        timings = {} if cached else dict(payload.get("timings") or {})
        timings["total_s"] = max(0.0, self._clock() - plan.started)
        degraded = list(plan.degraded)
        if stale:
            degraded.append("stale")
            self.stats.stale_served += 1
            self._incr("rag.degrade.stale")
        if cached and not stale:
            self.stats.cache_hits += 1
        self.stats.answered += 1
        return QueryResult(
            query=plan.query,
            answer=payload["answer"],
            sources=tuple(payload.get("sources") or ()),
            cached=cached or stale,
            stale=stale,
            top_k=plan.top_k,
            degraded=tuple(degraded),
            timings=timings,
        )

    def end(self, plan: _Plan, result: QueryResult | None, error: BaseException | None) -> None:
        """Count the query out and record it in the tracker."""
        self.stats.active -= 1
        if error is not None:
            self.stats.errors += 1
        if self.tracker.enabled:
            self.tracker.record(
                "rag.query",
                max(0.0, self._clock() - plan.started),
                error=error is not None,
                cache_hit=None if result is None else result.cached,
                queue_wait_s=None if result is None else result.timings.get("queue_s"),
            )

    def _incr(self, counter: str) -> None:
        self.tracker.incr(counter, operation="rag.query")


def _check_options(top_k: int, stale_ttl: float) -> None:
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        msg = f"top_k must be an int >= 1 (passages), got {top_k!r}"
        raise ValueError(msg)
    if not isinstance(stale_ttl, (int, float)) or stale_ttl < 0:
        msg = f"stale_ttl must be a number of seconds >= 0, got {stale_ttl!r}"
        raise ValueError(msg)


def _engine_id(retriever: Callable[..., Any], generator: Callable[..., Any]) -> str:
    def name(fn: Callable[..., Any]) -> str:
        target = getattr(fn, "__func__", fn)
        module = getattr(target, "__module__", None) or type(fn).__module__
        qualname = getattr(target, "__qualname__", None) or type(fn).__qualname__
        return f"{module}.{qualname}"

    return f"{name(retriever)}|{name(generator)}"


def _default_cache(config: PerformanceConfig) -> QueryCache | None:
    return cast(QueryCache | None, default_cache(config))


def _default_gate(config: PerformanceConfig) -> Gate:
    # The engine's own gate: one per engine, bounding whole queries (retrieval plus
    # generation), apart from the provider gates of the wrappers it may call.
    return cast(Gate, AdmissionGate(config, key="rag-engine", operation="rag.admission"))


def _default_retry(config: PerformanceConfig) -> Retry | None:
    if config.retry_max_attempts <= 1:
        return None
    return cast(Retry, default_retry(config))


def _resolve(
    config: PerformanceConfig | None,
    cache: QueryCache | bool | None,
    gate: Gate | bool | None,
    retry: Retry | bool | None,
    tracker: PerformanceTracker | None,
) -> tuple[PerformanceConfig, QueryCache | None, Gate | None, Retry | None, PerformanceTracker]:
    """Resolve the collaborator arguments shared by both engines (True means "the default")."""
    config = resolve_config(config)
    resolved_cache = _default_cache(config) if cache is True else cache or None
    resolved_gate = _default_gate(config) if gate is True else gate or None
    resolved_retry = _default_retry(config) if retry is True else retry or None
    resolved_tracker = resolve_tracker(tracker, config)
    return config, resolved_cache, resolved_gate, resolved_retry, resolved_tracker


def _encoded(payload: dict[str, Any], encode: SourceCodec | None) -> dict[str, Any]:
    if encode is None:
        return payload
    return {**payload, "sources": list(encode(payload["sources"]))}


def _decoded(payload: Any, decode: SourceCodec | None) -> Any:
    if decode is None or not isinstance(payload, dict):
        return payload
    return {**payload, "sources": list(decode(payload.get("sources") or []))}


class _EngineShell(Generic[RetT, GenT]):
    """What both engines share: the constructor and its checks, the counters and the repr.

    An engine supplies ``_check_component``, which refuses a retriever or generator of
    the wrong kind (blocking for the async engine, coroutine function for the blocking one).
    """

    @checked_kwargs
    def __init__(
        self,
        config: PerformanceConfig | None = None,
        *,
        retriever: RetT,
        generator: GenT,
        cache: QueryCache | bool | None = True,
        gate: Gate | bool | None = True,
        retry: Retry | bool | None = True,
        tracker: PerformanceTracker | None = None,
        top_k: int = 4,
        engine_id: str | None = None,
        stale_ttl: float = 86_400.0,
        encode_sources: SourceCodec | None = None,
        decode_sources: SourceCodec | None = None,
        clock: Clock = monotonic,
    ) -> None:
        for name, fn in (("retriever", retriever), ("generator", generator)):
            self._check_component(name, fn)
        _check_options(top_k, stale_ttl)
        config, self._cache, self._gate, self._retry, tracker_ = _resolve(
            config, cache, gate, retry, tracker
        )
        # A gate without a token budget admits the same whatever the tokens: no estimate.
        self._gate_tokens = counts_tokens(self._gate)
        self.config = config
        self._retriever = retriever
        self._generator = generator
        self._encode = encode_sources
        self._decode = decode_sources
        self._core = _EngineCore(
            config,
            top_k=top_k,
            engine_id=engine_id or _engine_id(retriever, generator),
            stale_ttl=stale_ttl,
            tracker=tracker_,
            clock=clock,
        )
        self._clock = clock
        # async_enabled: false runs queries one at a time (see query()).
        self._query_lock = threading.Lock()
        self._serial_lock: tuple[asyncio.AbstractEventLoop, asyncio.Lock] | None = None

    @staticmethod
    def _check_component(name: str, fn: object) -> None:
        raise NotImplementedError

    @property
    def stats(self) -> EngineStats:
        """Live counters: queries, cache hits, stale served, top_k reduced, shed, errors."""
        return self._core.stats

    def __repr__(self) -> str:
        s = self._core.stats
        return (
            f"<{type(self).__name__} [active: {s.active}, queries: {s.queries}, cache hits: "
            f"{s.cache_hits}, stale: {s.stale_served}, shed: {s.shed} | "
            f"max_concurrent_requests={self.config.max_concurrent_requests}, "
            f"top_k={self._core.default_top_k}]>"
        )


class AsyncRAGEngine(_EngineShell[AsyncRetriever, AsyncGenerator]):
    """Async RAG engine: ``await engine.query(q)`` with cache, gate, retry, tracker, degradation.

    Example::

        async with AsyncRAGEngine(config, retriever=aretrieve, generator=agenerate) as engine:
            result = await engine.query("What is machine learning?", top_k=5, priority=1)
            print(result.answer, result.cached, result.timings["total_s"])

    See the module docstring for the retriever/generator protocol and the degradation steps.

    Args:
        config: Settings (``enable_caching``, ``cache_ttl``, ``max_concurrent_requests``,
            ``request_deadline``, ``retry_*``, ``degrade_*``, ``enable_metrics``); defaults
            to ``PerformanceConfig.load()``.
        retriever: ``async (query, top_k) -> passages``.
        generator: ``async (query, passages) -> answer``.
        cache: The query-result cache; ``True`` (default) uses the cache manager for
            ``config``'s cache settings when ``enable_caching`` (see
            :mod:`rag_perf_plugins.services.defaults`); ``False`` or ``None``: no cache.
        gate: An admission gate held for each computed query; ``True`` (default) builds
            one from ``config`` (key ``"rag-engine"``); ``False``/``None``: no gate.
        retry: A retry policy run around the retriever and around the generator; ``True``
            (default) builds one from ``config``; ``False``/``None``: no retries. Pass
            ``False`` when the components already retry (keep one retry owner).
        tracker: Where queries are recorded; ``None`` (default): the process tracker
            when ``enable_metrics`` is on; ``NullTracker()``: none.
        top_k: Passages per query when ``query`` is not given one.
        engine_id: Identity of the pipeline in cache keys. Defaults to the qualified names
            of the retriever and generator; **set it** (e.g. index name, model, prompt
            version) when two pipelines share those names, or their answers would mix.
        stale_ttl: Seconds an expired answer stays servable as stale.
        encode_sources / decode_sources: Turn passages into cacheable values (JSON/msgpack
            structures) and back; identity by default.
        clock: Seconds, monotonic; used for timings and the deadline.

    Raises:
        ValueError / TypeError: an option is invalid (named in the message).
    """

    @staticmethod
    def _check_component(name: str, fn: object) -> None:
        if not _is_async_callable(fn):
            msg = (
                f"{name} must be an async callable (coroutine function); "
                f"got {fn!r}. Use RAGEngine for blocking components."
            )
            raise TypeError(msg)

    async def __aenter__(self) -> AsyncRAGEngine:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Refuse new queries. The process-wide cache and tracker stay open (shared)."""
        self._core.closed = True

    async def query(
        self, query: str, *, top_k: int | None = None, priority: int = 0
    ) -> QueryResult:
        """Answer ``query``; see the module docstring for the steps.

        Args:
            query: The question.
            top_k: Passages to retrieve; defaults to the engine's ``top_k``.
            priority: Higher is more important; under overload, queries below
                ``degrade_shed_below_priority`` are shed.

        Raises:
            Overloaded: shed, or the gate's queue is full, and no stale answer exists.
            DeadlineExceeded: ``request_deadline`` passed, and no stale answer exists.
            Exception: whatever the retriever or generator raised (after retries).
        """
        if not self.config.async_enabled:  # one query at a time (async_enabled: false)
            async with self._serial():
                return await self._query(query, top_k, priority)
        return await self._query(query, top_k, priority)

    def _serial(self) -> asyncio.Lock:
        """The lock that runs queries one at a time, made on (and for) the running loop."""
        loop = asyncio.get_running_loop()
        held = self._serial_lock
        if held is None or held[0] is not loop:
            held = self._serial_lock = (loop, asyncio.Lock())
        return held[1]

    async def _query(self, query: str, top_k: int | None, priority: int) -> QueryResult:
        # Kept inline in both engines (a mirror that differs only in the awaits): the same
        # bookkeeping as a context manager on the core cost about 0.2 us per query.
        core = self._core
        plan = core.begin(query, top_k, priority)
        result: QueryResult | None = None
        error: BaseException | None = None
        try:
            if plan.shed:
                result = await self._fallback(plan, core.overloaded_error(plan))
            else:
                try:
                    result = await self._answer(plan)
                except Exception as exc:
                    result = await self._fallback(plan, exc)
            return result
        except BaseException as exc:
            error = exc
            raise
        finally:
            core.end(plan, result, error)

    async def _answer(self, plan: _Plan) -> QueryResult:
        if self._cache is None:
            return self._core.result(plan, await self._compute(plan), cached=False)
        self._core.with_keys(plan)
        computed = False

        async def compute() -> dict[str, Any]:
            nonlocal computed
            computed = True
            payload = await self._compute(plan)
            stored = _encoded(payload, self._encode)
            if self._core.config.degrade_serve_stale:
                await self._cache_set(plan.stale_keys[-1], stored, self._core.stale_ttl)
            return stored

        payload = await self._cache.aget_or_compute(
            plan.key, compute, self._core.fresh_ttl, namespace=_NAMESPACE
        )
        return self._core.result(plan, _decoded(payload, self._decode), cached=not computed)

    async def _compute(self, plan: _Plan) -> dict[str, Any]:
        core = self._core
        timings: dict[str, float] = {}
        t0 = self._clock()
        async with self._admission(plan):
            t1 = self._clock()
            timings["queue_s"] = t1 - t0
            passages = await self._call(plan, lambda: self._retriever(plan.query, plan.top_k))
            t2 = self._clock()
            timings["retrieve_s"] = t2 - t1
            answer = await self._call(plan, lambda: self._generator(plan.query, passages))
            timings["generate_s"] = self._clock() - t2
        return core.pack(answer, passages, timings)

    def _admission(self, plan: _Plan) -> contextlib.AbstractAsyncContextManager[Any]:
        if self._gate is None:
            return contextlib.nullcontext()
        tokens = estimate_tokens(plan.query) if self._gate_tokens else 0
        return self._gate.aacquire(tokens=tokens, timeout=self._core.remaining(plan))

    async def _call(self, plan: _Plan, fn: Callable[[], Awaitable[T]]) -> T:
        # The retry policy enforces the deadline inside attempts; without one, the deadline
        # is checked between steps (no per-step timer task: it cost more than the step).
        remaining = self._core.remaining(plan)
        if self._retry is None:
            return await fn()
        return await self._retry.acall(fn, deadline=remaining)

    async def _fallback(self, plan: _Plan, exc: Exception) -> QueryResult:
        if self._cache is not None and self._core.can_serve_stale(exc):
            for key in self._core.with_keys(plan).stale_keys:
                payload = await self._cache_get(key)
                if payload is not None:
                    return self._core.result(
                        plan, _decoded(payload, self._decode), cached=True, stale=True
                    )
        raise exc

    async def _cache_get(self, key: str) -> Any:
        assert self._cache is not None
        try:
            return await self._cache.aget(key, namespace=_NAMESPACE)
        except Exception:  # the cache degrades on its own; a stale read is best effort
            return None

    async def _cache_set(self, key: str, value: Any, ttl: float | None) -> None:
        assert self._cache is not None
        with contextlib.suppress(Exception):  # best effort, like _cache_get
            await self._cache.aset(key, value, ttl, namespace=_NAMESPACE)


class RAGEngine(_EngineShell[SyncRetriever, SyncGenerator]):
    """The blocking twin of :class:`AsyncRAGEngine` (same core, same options).

    Example::

        with RAGEngine(config, retriever=retrieve, generator=generate) as engine:
            result = engine.query("What is machine learning?")

    ``retriever`` and ``generator`` are plain functions. Thread-safe for the cache, gate and
    retry; the engine's own counters are approximate under heavy threading (plain ints).
    It exists mainly for the seed's async-versus-sync comparison.
    """

    @staticmethod
    def _check_component(name: str, fn: object) -> None:
        if not callable(fn) or _is_async_callable(fn):
            msg = (
                f"{name} must be a plain (blocking) callable; got {fn!r}. "
                "Use AsyncRAGEngine for coroutine functions."
            )
            raise TypeError(msg)

    def __enter__(self) -> RAGEngine:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Refuse new queries."""
        self._core.closed = True

    def query(self, query: str, *, top_k: int | None = None, priority: int = 0) -> QueryResult:
        """Answer ``query`` (blocking); as :meth:`AsyncRAGEngine.query`."""
        if not self.config.async_enabled:  # one query at a time (async_enabled: false)
            with self._query_lock:
                return self._query(query, top_k, priority)
        return self._query(query, top_k, priority)

    # unasync: generated from _query
    def _query(self, query: str, top_k: int | None, priority: int) -> QueryResult:
        # Kept inline in both engines (a mirror that differs only in the awaits): the same
        # bookkeeping as a context manager on the core cost about 0.2 us per query.
        core = self._core
        plan = core.begin(query, top_k, priority)
        result: QueryResult | None = None
        error: BaseException | None = None
        try:
            if plan.shed:
                result = self._fallback(plan, core.overloaded_error(plan))
            else:
                try:
                    result = self._answer(plan)
                except Exception as exc:
                    result = self._fallback(plan, exc)
            return result
        except BaseException as exc:
            error = exc
            raise
        finally:
            core.end(plan, result, error)

    def _answer(self, plan: _Plan) -> QueryResult:
        if self._cache is None:
            return self._core.result(plan, self._compute(plan), cached=False)
        self._core.with_keys(plan)
        computed = False

        def compute() -> dict[str, Any]:
            nonlocal computed
            computed = True
            stored = _encoded(self._compute(plan), self._encode)
            if self._core.config.degrade_serve_stale:
                with contextlib.suppress(Exception):
                    assert self._cache is not None
                    self._cache.set(
                        plan.stale_keys[-1], stored, self._core.stale_ttl, namespace=_NAMESPACE
                    )
            return stored

        payload = self._cache.get_or_compute(
            plan.key, compute, self._core.fresh_ttl, namespace=_NAMESPACE
        )
        return self._core.result(plan, _decoded(payload, self._decode), cached=not computed)

    def _compute(self, plan: _Plan) -> dict[str, Any]:
        core = self._core
        timings: dict[str, float] = {}
        t0 = self._clock()
        gate = (
            contextlib.nullcontext()
            if self._gate is None
            else self._gate.acquire(
                tokens=estimate_tokens(plan.query) if self._gate_tokens else 0,
                timeout=core.remaining(plan),
            )
        )
        with gate:
            t1 = self._clock()
            timings["queue_s"] = t1 - t0
            passages = self._call(plan, lambda: self._retriever(plan.query, plan.top_k))
            t2 = self._clock()
            timings["retrieve_s"] = t2 - t1
            answer = self._call(plan, lambda: self._generator(plan.query, passages))
            timings["generate_s"] = self._clock() - t2
        return core.pack(answer, passages, timings)

    def _call(self, plan: _Plan, fn: Callable[[], T]) -> T:
        # A blocking call cannot be interrupted at the deadline; it is checked between steps.
        remaining = self._core.remaining(plan)
        return fn() if self._retry is None else self._retry.call(fn, deadline=remaining)

    def _fallback(self, plan: _Plan, exc: Exception) -> QueryResult:
        if self._cache is not None and self._core.can_serve_stale(exc):
            for key in self._core.with_keys(plan).stale_keys:
                try:
                    payload = self._cache.get(key, namespace=_NAMESPACE)
                except Exception:
                    payload = None
                if payload is not None:
                    return self._core.result(
                        plan, _decoded(payload, self._decode), cached=True, stale=True
                    )
        raise exc


def _is_async_callable(fn: Any) -> bool:
    import inspect

    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004 - an object whose __call__ is async
    )


# --- many queries -----------------------------------------------------------------------

# Placeholder of a slot no worker reached; only visible if this function is cancelled.
_NOT_RUN = asyncio.CancelledError("query was not run")


class SupportsQuery(Protocol[R_co]):
    """Anything with ``async def query(q) -> result``."""

    def query(self, query: str, /) -> Awaitable[R_co]:
        """Answer one query."""
        ...


async def process_queries_concurrently(
    engine: SupportsQuery[R], queries: Iterable[str], max_concurrent: int = 10
) -> list[R | QueryResult]:
    """Run ``engine.query(q)`` for every query, at most ``max_concurrent`` at a time.

    Example::

        results = await process_queries_concurrently(engine, queries, max_concurrent=10)
        answers = [r.answer for r in results if r.ok]
        failures = [(i, r.error) for i, r in enumerate(results) if not r.ok]

    Results come back in input order, one per query. A query that raises is captured in its
    own slot as ``QueryResult.failed(query, exc)`` (``ok`` false, ``error`` set); it never
    stops the others and is never raised from here. ``engine`` is any object with an async
    ``query(q)`` method; its successful results are returned as they are.

    ``max_concurrent`` workers pull queries in order, so at most that many are in flight
    and no task is created per query. Cancelling this call cancels the queries in flight.
    An engine whose config has ``async_enabled: false`` gets one worker: one query at a time.

    Raises:
        ValueError: ``max_concurrent`` is not an int >= 1.
        TypeError: ``engine`` has no callable ``query``.
    """
    if (
        isinstance(max_concurrent, bool)
        or not isinstance(max_concurrent, int)
        or max_concurrent < 1
    ):
        msg = f"max_concurrent must be an int >= 1 (queries in flight), got {max_concurrent!r}"
        raise ValueError(msg)
    config = getattr(engine, "config", None)
    if isinstance(config, PerformanceConfig) and not config.async_enabled:
        max_concurrent = 1  # async_enabled: false runs one query at a time
    query_fn = getattr(engine, "query", None)
    if not callable(query_fn):
        msg = f"engine must have an async query(q) method; {type(engine).__name__} has none"
        raise TypeError(msg)
    items = list(queries)
    results: list[R | QueryResult] = [QueryResult.failed("", _NOT_RUN)] * len(items)
    next_index = iter(range(len(items)))

    async def worker() -> None:
        for i in next_index:  # shared iterator: each index is taken by exactly one worker
            try:
                results[i] = await query_fn(items[i])
            except Exception as exc:
                results[i] = QueryResult.failed(str(items[i]), exc)

    workers = [asyncio.ensure_future(worker()) for _ in range(min(max_concurrent, len(items)))]
    try:
        await asyncio.gather(*workers)
    except BaseException:
        for w in workers:
            w.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        raise
    return results
