"""PerfEmbedding: a LlamaIndex ``BaseEmbedding`` that runs every call through our core.

All the work (per-text cache with one batched lookup, single-flight, micro-batching across
concurrent callers, admission gate and retry for real provider calls, statistics) is done by
:class:`rag_perf_plugins.services.embeddings.EmbeddingService`; this module only translates
LlamaIndex's calls into service calls and back::

    from llama_index.embeddings.openai import OpenAIEmbedding
    from rag_perf_plugins.llama_index import PerfEmbedding

    embed_model = PerfEmbedding(OpenAIEmbedding(model="text-embedding-3-small", max_retries=0))
    index = VectorStoreIndex.from_documents(documents, embed_model=embed_model)

What it fixes in LlamaIndex's own ``embeddings_cache`` / ``rate_limiter`` / batching:

- keys carry the model identity (class, model name, dimensions and the other fields that
  change vectors) and the role (query or text), where LlamaIndex keys by text alone;
- one batched cache lookup per call instead of one per text;
- cache hits never take an admission slot, and the async paths are gated like the sync ones;
- concurrent ``aget_query_embedding`` calls coalesce (identical ones always; distinct ones
  share provider batches when the inner model embeds queries like texts);
- a sync-only inner model keeps its batching on the async path and never blocks the loop.

It calls the inner model's private ``_get_*`` / ``_aget_*`` methods, so LlamaIndex emits one
set of embedding events and spans per call (the wrapper's), not two.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, cast

from llama_index_instrumentation import get_dispatcher
from llama_index_instrumentation.dispatcher import Dispatcher

from llama_index.core.async_utils import run_jobs
from llama_index.core.base.embeddings.base import BaseEmbedding, Embedding
from llama_index.core.bridge.pydantic import PrivateAttr
from llama_index.core.callbacks.schema import CBEventType, EventPayload
from llama_index.core.instrumentation.event_handlers import NullEventHandler
from llama_index.core.instrumentation.events.embedding import (
    EmbeddingEndEvent,
    EmbeddingStartEvent,
)
from llama_index.core.utils import get_tqdm_iterable
from rag_perf_plugins._signature import checked_kwargs
from rag_perf_plugins.cache.control import applied, parse_control
from rag_perf_plugins.config import PerformanceConfig, resolve_config
from rag_perf_plugins.services.defaults import (
    api_key_of,
    default_embedding_store,
    default_gate,
    default_retry,
    deployment_of,
)
from rag_perf_plugins.services.embeddings import (
    EmbeddingIdentity,
    EmbeddingService,
    EmbeddingStore,
)
from rag_perf_plugins.services.identity import IdentityGuard, ModelIdentity, model_identity
from rag_perf_plugins.services.protocols import AdmissionGateLike, RetryPolicyLike

__all__ = ["CACHE_KWARG", "PerfEmbedding", "inner_identity"]

# The LlamaIndex keyword argument carrying a per-call cache control ("bypass", "refresh",
# "no-store", or {"mode": ..., "ttl": seconds}); see rag_perf_plugins.cache.control.
CACHE_KWARG = "rag_perf_cache"

# LlamaIndex pre-chunks texts by embed_batch_size before calling _get_text_embeddings; the
# largest value it allows, so the service's micro-batcher decides the provider batches.
_LLAMA_MAX_BATCH = 2048

# Fields of a LlamaIndex embedding model that do not change its vectors, besides the core's
# deny-list (rag_perf_plugins.services.identity.NON_IDENTITY_FIELDS): left out of the
# identity (and of to_dict(), which is part of IngestionCache keys), so a new API key,
# timeout or retry count neither invalidates caches nor leaks a secret into a key or a log.
_NON_IDENTITY_FIELDS = frozenset({"api_key"})

# The dispatcher of LlamaIndex's BaseEmbedding module: our batch calls open their span and
# send their events through it, exactly as BaseEmbedding's own would (same handlers see them).
_dispatcher = get_dispatcher(BaseEmbedding.__module__)


def inner_identity(model: BaseEmbedding) -> dict[str, Any]:
    """The identity of ``model``: what decides its vectors, as a JSON-safe, stable dict.

    Example::

        inner_identity(OpenAIEmbedding(model="text-embedding-3-large", api_key="sk-..."))
        # {'class': 'llama_index.embeddings.openai.base.OpenAIEmbedding',
        #  'class_name': 'OpenAIEmbedding', 'model_name': 'text-embedding-3-large'}

    The rule of :func:`rag_perf_plugins.services.identity.model_identity`: the qualified
    class (a subclass never shares its parent's entries, though LlamaIndex's
    ``class_name()`` is inherited) and every public field not at its class default, but
    credentials, clients, timeouts, retries, callbacks and batch sizes. Credentials nested
    deeper (``additional_kwargs``, a password in ``api_base``) are masked.
    """
    return _identity_dict(model_identity(model, deny=_NON_IDENTITY_FIELDS), model)


def _identity_dict(found: ModelIdentity, model: BaseEmbedding) -> dict[str, Any]:
    return {**found.fields, "class": found.cls, "class_name": model.class_name()}


def _dimensions(model: BaseEmbedding) -> int | None:
    for name in ("dimensions", "embed_dim"):
        value = getattr(model, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def _is_symmetric(model: BaseEmbedding) -> bool:
    """Whether ``model`` embeds a query exactly as it embeds a text (safe to batch together).

    Known for OpenAIEmbedding (same engine for both roles) and LlamaIndex's MockEmbedding;
    any other model is treated as asymmetric: only identical queries are coalesced.
    """
    query_engine = getattr(model, "_query_engine", None)
    if query_engine is not None:
        return bool(query_engine == getattr(model, "_text_engine", None))
    return model.class_name() == "MockEmbedding"


def _overrides(model: BaseEmbedding, name: str) -> bool:
    return getattr(type(model), name) is not getattr(BaseEmbedding, name)


def _listening(dispatcher: Dispatcher) -> bool:
    """Whether ``dispatcher.event(e)`` would reach a handler that does something.

    Example: ``_listening(_dispatcher)`` is False in a process that registered no event
    handler (LlamaIndex's root dispatcher only holds a ``NullEventHandler``). The same walk
    as ``Dispatcher.event``: this dispatcher, then its parents while ``propagate`` is set.
    True for a ``Dispatcher`` subclass or a patched ``event``, whose effect we cannot know.
    """
    node: Dispatcher | None = dispatcher
    while node is not None:
        if type(node) is not Dispatcher or "event" in node.__dict__:
            return True
        if any(type(h) is not NullEventHandler for h in node.event_handlers):
            return True
        node = node.parent if node.propagate else None
    return False


def _start_event(model_dict: dict[str, Any]) -> None:
    """LlamaIndex's ``EmbeddingStartEvent`` of a batch, when anyone handles events."""
    if _listening(_dispatcher):
        _dispatcher.event(EmbeddingStartEvent(model_dict=model_dict))


def _end_event(chunks: list[str], embeddings: list[Embedding], *, plain: bool) -> None:
    """LlamaIndex's ``EmbeddingEndEvent`` of a batch, when anyone handles events.

    Example: ``_end_event(["a"], [[0.25, 0.5]], plain=True)``. Validated, the event holds
    new lists with the same ``str`` and ``float`` objects; ``plain`` (the vectors are lists
    of Python floats, the texts are ``str``) builds exactly that without checking each of
    the floats again (pydantic's validation costs about 2 list copies a vector). Not built
    at all when no handler would see it: nothing could observe it.
    """
    if not _listening(_dispatcher):
        return
    if plain and all(type(t) is str for t in chunks):
        event = EmbeddingEndEvent.model_construct(
            chunks=list(chunks), embeddings=[list(v) for v in embeddings]
        )
    else:
        event = EmbeddingEndEvent(chunks=chunks, embeddings=embeddings)
    _dispatcher.event(event)


def _plain(model: PerfEmbedding) -> bool:
    """Whether ``model``'s batch vectors are all new lists of Python floats.

    True when its own ``_get_text_embeddings`` / ``_aget_text_embeddings`` (the service)
    answer, no LlamaIndex ``embeddings_cache`` sits in front, and the service vouches
    (:attr:`EmbeddingService.plain_floats`).
    """
    cls = type(model)
    if (
        cls._get_text_embeddings is not PerfEmbedding._get_text_embeddings
        or cls._aget_text_embeddings is not PerfEmbedding._aget_text_embeddings
        or model.embeddings_cache
    ):
        return False
    try:
        return _service_of(model).plain_floats
    except AttributeError:  # no service (unpickled): the call itself raises, as before
        return False


def _unspanned(name: str) -> Callable[..., Any]:
    """``BaseEmbedding.<name>`` without LlamaIndex's span decorator (its plain body)."""
    method = BaseEmbedding.__dict__[name]
    return cast("Callable[..., Any]", getattr(method, "__wrapped__", method))


_Sync = Callable[[BaseEmbedding, str], Embedding]
_Async = Callable[[BaseEmbedding, str], Coroutine[Any, Any, Embedding]]
_BASE_QUERY = cast(_Sync, _unspanned("get_query_embedding"))
_BASE_AQUERY = cast(_Async, _unspanned("aget_query_embedding"))
_BASE_TEXT = cast(_Sync, _unspanned("get_text_embedding"))
_BASE_ATEXT = cast(_Async, _unspanned("aget_text_embedding"))


def _quiet(model: BaseEmbedding, text: str, embed: Callable[[str], Embedding]) -> Embedding:
    """BaseEmbedding's one-text call without its instrumentation events (nobody listens).

    Example: ``_quiet(model, "q", model._get_query_embedding)``. The callback event with
    LlamaIndex's payloads and the rate limiter stay; only the start and end events, which
    no handler would receive, are not built. Without an ``embeddings_cache`` only.
    """
    model_dict = model.to_payload()
    with model.callback_manager.event(
        CBEventType.EMBEDDING, payload={EventPayload.SERIALIZED: model_dict}
    ) as event:
        if model.rate_limiter is not None:
            model.rate_limiter.acquire()
        vector = embed(text)
        event.on_end(payload={EventPayload.CHUNKS: [text], EventPayload.EMBEDDINGS: [vector]})
    return vector


async def _aquiet(
    model: BaseEmbedding, text: str, embed: Callable[[str], Coroutine[Any, Any, Embedding]]
) -> Embedding:
    """Async twin of :func:`_quiet`."""
    model_dict = model.to_payload()
    with model.callback_manager.event(
        CBEventType.EMBEDDING, payload={EventPayload.SERIALIZED: model_dict}
    ) as event:
        if model.rate_limiter is not None:
            await model.rate_limiter.async_acquire()
        vector = await embed(text)
        event.on_end(payload={EventPayload.CHUNKS: [text], EventPayload.EMBEDDINGS: [vector]})
    return vector


async def _gathered(
    jobs: list[Coroutine[Any, Any, list[Embedding]]], show_progress: bool, workers: int | None
) -> list[list[Embedding]]:
    """LlamaIndex's way of awaiting a batch's chunks: jobs, a progress bar, or a gather."""
    if not jobs:
        return []
    if workers and workers > 1:
        found: list[list[Embedding]] = await run_jobs(
            jobs, show_progress=show_progress, workers=workers, desc="Generating embeddings"
        )
        return found
    if show_progress:
        try:
            from tqdm.asyncio import tqdm_asyncio  # type: ignore[import-untyped, unused-ignore]
        except ImportError:
            pass
        else:
            progress: list[list[Embedding]] = await tqdm_asyncio.gather(
                *jobs, total=len(jobs), desc="Generating embeddings"
            )
            return progress
    return list(await asyncio.gather(*jobs))


class PerfEmbedding(BaseEmbedding):
    """A ``BaseEmbedding`` that caches, coalesces, batches, gates and tracks its inner model.

    Example::

        embed_model = PerfEmbedding(
            OpenAIEmbedding(api_base="http://127.0.0.1:8600/v1", max_retries=0),
            PerformanceConfig(batch_size=64, cache_dir="/tmp/rag-cache"),
        )
        await asyncio.gather(*(embed_model.aget_query_embedding("what is rag?")
                               for _ in range(100)))      # one provider request

    Per-call cache control goes through the core's ``cache_control(...)`` context manager
    (every method), or the ``rag_perf_cache="bypass"`` / ``{"mode": "refresh", "ttl": 60}``
    keyword of ``get_text_embedding_batch`` / ``aget_text_embedding_batch``, which LlamaIndex
    passes through from ``embed_model(nodes, ...)`` and ``IngestionPipeline.run(...)``.

    Args:
        inner: The embedding model that makes the provider calls. Build it with
            ``max_retries=0`` (or use :func:`pooled_openai_embedding`): our retry policy is
            the only retry owner. Its own ``embeddings_cache`` and ``rate_limiter`` are
            bypassed (we call its private methods).
        config: Batch size and wait (milliseconds), token caps, cache switches and TTL
            (seconds), concurrency and rate limits; ``None`` means
            ``PerformanceConfig.load()`` (environment and defaults).
        store: Per-text vector store; ``None`` builds the core cache's embedding store from
            ``config`` (no cache when ``enable_caching`` is off).
        gate: Admission gate for provider calls; ``None`` builds the core's gate for this
            model from ``config``.
        retry: Retry policy for provider calls; ``None`` builds the core's from ``config``.
        symmetric: Whether queries are embedded exactly like texts, so distinct queries may
            share a provider batch; ``None`` decides from the inner model (OpenAI: yes;
            unknown models: no, only identical queries coalesce).
        batching: ``False`` turns the cross-caller micro-batcher off.
        tracker: Statistics sink; ``None`` means the process tracker when metrics are on.

    Raises:
        TypeError: ``inner`` is not a LlamaIndex ``BaseEmbedding``, or is a ``PerfEmbedding``.

    Not done: ``from_dict()`` cannot rebuild the inner model (it holds clients); pickling for
    ``IngestionPipeline.run(num_workers=...)`` sends the wrapper without its service. The
    ``embed_batch_size`` of the wrapper is 2048 on purpose; provider batches come from
    ``config.batch_size`` and the token cap. ``num_workers`` is left unset: in-flight calls
    are bounded by the admission gate, not by LlamaIndex's worker count.
    """

    _inner: BaseEmbedding = PrivateAttr()
    _service: EmbeddingService = PrivateAttr()
    _config: PerformanceConfig = PrivateAttr()
    _identity: dict[str, Any] = PrivateAttr()
    _guard: IdentityGuard = PrivateAttr()

    @checked_kwargs
    def __init__(
        self,
        inner: BaseEmbedding,
        config: PerformanceConfig | None = None,
        *,
        store: EmbeddingStore | None = None,
        gate: AdmissionGateLike | None = None,
        retry: RetryPolicyLike | None = None,
        symmetric: bool | None = None,
        batching: bool = True,
        tracker: Any = None,
    ) -> None:
        if isinstance(inner, PerfEmbedding):
            msg = "inner is already a PerfEmbedding; wrap the model it wraps (inner.inner)"
            raise TypeError(msg)
        if not isinstance(inner, BaseEmbedding):
            msg = f"inner must be a LlamaIndex BaseEmbedding, got {type(inner).__name__}"
            raise TypeError(msg)
        config = resolve_config(config)
        super().__init__(
            model_name=inner.model_name,
            embed_batch_size=_LLAMA_MAX_BATCH,
            num_workers=None,
            callback_manager=inner.callback_manager,
        )
        guard = IdentityGuard(inner, deny=_NON_IDENTITY_FIELDS)
        identity = _identity_dict(guard.identity, inner)
        self._inner = inner
        self._config = config
        self._identity = identity
        self._guard = guard
        self._service = _build_service(
            inner,
            identity,
            config,
            store=store,
            gate=gate,
            retry=retry,
            symmetric=_is_symmetric(inner) if symmetric is None else symmetric,
            batching=batching,
            tracker=tracker,
        )

    # --- what LlamaIndex asks of a BaseEmbedding -------------------------------------
    @classmethod
    def class_name(cls) -> str:
        """Stable serialization name."""
        return "PerfEmbedding"

    def to_dict(self, **kwargs: Any) -> dict[str, Any]:
        """A stable dict naming the wrapper and the inner model's identity.

        LlamaIndex's ``IngestionCache`` hashes this into its keys, so it holds what decides
        the vectors (the inner model's identity) and nothing that changes between runs or
        processes (our config, clients, API keys).
        """
        return {
            "class_name": self.class_name(),
            "model_name": self.model_name,
            "inner": dict(self._identity),
        }

    def to_payload(self) -> dict[str, Any]:
        """Non-sensitive description for LlamaIndex's events (no vectors, no secrets)."""
        payload = super().to_payload()
        payload["inner_class_name"] = _inner_of(self).class_name()
        return payload

    # The per-call methods read the service with _service_of(self), not self._service:
    # pydantic resolves self._x in a Python __getattr__, about 1.7 us per read here.
    def _get_query_embedding(self, query: str) -> Embedding:
        return _checked(self).embed_query(query)

    async def _aget_query_embedding(self, query: str) -> Embedding:
        return await _checked(self).aembed_query(query)

    def _get_text_embedding(self, text: str) -> Embedding:
        return _checked(self).embed_documents([text])[0]

    async def _aget_text_embedding(self, text: str) -> Embedding:
        return (await _checked(self).aembed_documents([text]))[0]

    def _get_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        return _checked(self).embed_documents(texts)

    async def _aget_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        return await _checked(self).aembed_documents(texts)

    # The one-text public calls: LlamaIndex's own bodies (BaseEmbedding's, without their
    # span: ours is the span) whenever an event handler listens or its embeddings_cache is
    # set; otherwise the same steps without building the two events nobody would receive
    # (pydantic validates each float of the end event: ~10 us for 384 floats).
    @_dispatcher.span
    def get_query_embedding(self, query: str) -> Embedding:
        """LlamaIndex's ``get_query_embedding``: same span, events and callback payloads."""
        if self.embeddings_cache or _listening(_dispatcher):
            return _BASE_QUERY(self, query)
        return _quiet(self, query, self._get_query_embedding)

    @_dispatcher.span
    async def aget_query_embedding(self, query: str) -> Embedding:
        """Async twin of :meth:`get_query_embedding`."""
        if self.embeddings_cache or _listening(_dispatcher):
            return await _BASE_AQUERY(self, query)
        return await _aquiet(self, query, self._aget_query_embedding)

    @_dispatcher.span
    def get_text_embedding(self, text: str) -> Embedding:
        """LlamaIndex's ``get_text_embedding``: same span, events and callback payloads."""
        if self.embeddings_cache or _listening(_dispatcher):
            return _BASE_TEXT(self, text)
        return _quiet(self, text, self._get_text_embedding)

    @_dispatcher.span
    async def aget_text_embedding(self, text: str) -> Embedding:
        """Async twin of :meth:`get_text_embedding`."""
        if self.embeddings_cache or _listening(_dispatcher):
            return await _BASE_ATEXT(self, text)
        return await _aquiet(self, text, self._aget_text_embedding)

    @_dispatcher.span
    def get_text_embedding_batch(
        self, texts: list[str], show_progress: bool = False, **kwargs: Any
    ) -> list[Embedding]:
        """LlamaIndex's batch call, plus ``rag_perf_cache="bypass"`` (or ``{"mode", "ttl"}``).

        ``IngestionPipeline.run(rag_perf_cache=...)`` and ``embed_model(nodes, ...)`` pass
        their keyword arguments down to here; the control applies to this call only.

        The steps, spans, events and callback payloads of LlamaIndex's own
        ``BaseEmbedding.get_text_embedding_batch`` (one span, then per ``embed_batch_size``
        chunk a start event, a ``CBEventType.EMBEDDING`` callback event and an end event),
        except that an end event is built from vectors already known to be lists of Python
        floats without validating each float again, and events nobody handles are not built
        (see :func:`_end_event`).
        """
        with applied(parse_control(kwargs.pop(CACHE_KWARG, None))):
            result: list[Embedding] = []
            model_dict = self.to_payload()
            plain = _plain(self)
            size = self.embed_batch_size
            last = len(texts) - 1
            chunk: list[str] = []
            for i, text in enumerate(
                get_tqdm_iterable(texts, show_progress, "Generating embeddings")
            ):
                chunk.append(text)
                if i != last and len(chunk) != size:
                    continue
                _start_event(model_dict)
                with self.callback_manager.event(
                    CBEventType.EMBEDDING, payload={EventPayload.SERIALIZED: model_dict}
                ) as event:
                    if self.rate_limiter is not None:
                        self.rate_limiter.acquire()
                    if not self.embeddings_cache:
                        embeddings = self._get_text_embeddings(chunk)
                    else:
                        embeddings = self._get_text_embeddings_cached(chunk)
                    result.extend(embeddings)
                    event.on_end(
                        payload={EventPayload.CHUNKS: chunk, EventPayload.EMBEDDINGS: embeddings}
                    )
                _end_event(chunk, embeddings, plain=plain)
                chunk = []
            return result

    @_dispatcher.span
    async def aget_text_embedding_batch(
        self, texts: list[str], show_progress: bool = False, **kwargs: Any
    ) -> list[Embedding]:
        """Async twin of :meth:`get_text_embedding_batch`, same ``rag_perf_cache`` keyword.

        LlamaIndex's own steps too: every chunk's start event and callback start first, the
        chunks gathered (``num_workers`` jobs, or a progress bar), then each chunk's end
        event and callback end, in order.
        """
        with applied(parse_control(kwargs.pop(CACHE_KWARG, None))):
            model_dict = self.to_payload()
            plain = _plain(self)
            size = self.embed_batch_size
            last = len(texts) - 1
            chunk: list[str] = []
            jobs: list[Coroutine[Any, Any, list[Embedding]]] = []
            started: list[tuple[str, list[str]]] = []
            for i, text in enumerate(texts):
                chunk.append(text)
                if i != last and len(chunk) != size:
                    continue
                _start_event(model_dict)
                event_id = self.callback_manager.on_event_start(
                    CBEventType.EMBEDDING, payload={EventPayload.SERIALIZED: model_dict}
                )
                started.append((event_id, chunk))
                if not self.embeddings_cache:
                    jobs.append(self._aget_text_embeddings_rate_limited(chunk))
                else:
                    jobs.append(self._aget_text_embeddings_cached(chunk))
                chunk = []
            nested = await _gathered(jobs, show_progress, self.num_workers)
            result = [vector for embeddings in nested for vector in embeddings]
            for (event_id, batch), embeddings in zip(started, nested, strict=False):
                _end_event(batch, embeddings, plain=plain)
                self.callback_manager.on_event_end(
                    CBEventType.EMBEDDING,
                    payload={EventPayload.CHUNKS: batch, EventPayload.EMBEDDINGS: embeddings},
                    event_id=event_id,
                )
            return result

    # --- ours -------------------------------------------------------------------------
    @property
    def inner(self) -> BaseEmbedding:
        """The wrapped model."""
        return self._inner

    @property
    def config(self) -> PerformanceConfig:
        """The config the wrapper was built with."""
        return self._config

    @property
    def service(self) -> EmbeddingService:
        """The core service doing the work (its ``provider_calls`` counts real requests)."""
        return self._service

    def close(self) -> None:
        """Flush the sync micro-batcher (idempotent)."""
        self._service.close()

    async def aclose(self) -> None:
        """Flush this event loop's micro-batcher, then the sync one."""
        await self._service.aclose()

    def __repr__(self) -> str:
        return f"<PerfEmbedding {self._inner.class_name()}/{self.model_name} {self._service!r}>"

    __str__ = __repr__


# LlamaIndex's DispatcherSpanMixin wraps every implementation of an abstract method in a
# span. The inner model's implementations already get one for the real call, so ours would
# be a second span per call (and a signature bind, about 20 µs): take the plain functions back.
for _name in ("_get_query_embedding", "_aget_query_embedding", "_get_text_embedding"):
    _method = PerfEmbedding.__dict__[_name]
    setattr(PerfEmbedding, _name, getattr(_method, "__wrapped__", _method))
del _name, _method


def _private(model: PerfEmbedding, name: str) -> Any:
    """``model.<name>`` for a private attribute, read from pydantic's private dict directly.

    Example: ``_private(embed_model, "_service")`` is ``embed_model._service``, without
    pydantic's ``__getattr__`` (about 1.7 us per read on this class, more than the rest of
    the wrapper's own work). ``AttributeError`` when it is missing, as ``model._service``
    would raise (a wrapper sent through pickle arrives without its service).
    """
    try:
        return cast("dict[str, Any]", model.__pydantic_private__)[name]
    except (KeyError, TypeError):
        msg = f"{type(model).__name__!r} object has no attribute {name!r}"
        raise AttributeError(msg) from None


def _checked(model: PerfEmbedding) -> EmbeddingService:
    """The service, re-keyed first when a field of the inner model changed since wrapping."""
    service = _service_of(model)
    guard: IdentityGuard = _private(model, "_guard")
    found = guard.changed()
    if found is not None:
        inner = _inner_of(model)
        identity = _identity_dict(found, inner)
        model.__pydantic_private__["_identity"] = identity  # type: ignore[index]
        service.identity = EmbeddingIdentity(
            _provider(inner, identity), inner.model_name or "unknown", _dimensions(inner)
        )
    return service


def _service_of(model: PerfEmbedding) -> EmbeddingService:
    """``model._service``, read the fast way (see :func:`_private`)."""
    service: EmbeddingService = _private(model, "_service")
    return service


def _inner_of(model: PerfEmbedding) -> BaseEmbedding:
    """``model._inner``, read the fast way (see :func:`_private`)."""
    inner: BaseEmbedding = _private(model, "_inner")
    return inner


def _provider(inner: BaseEmbedding, identity: dict[str, Any]) -> str:
    """The provider part of every key: class name and a digest of the whole identity."""
    text = json.dumps(identity, sort_keys=True, separators=(",", ":"))
    digest = hashlib.blake2b(text.encode(), digest_size=8).hexdigest()
    return f"llama_index/{inner.class_name()}/{digest}"


def _query_batch(inner: BaseEmbedding) -> Callable[[list[str]], list[list[float]]] | None:
    """``embed_queries`` for models that embed many queries in one call, else ``None``.

    Example: ``_query_batch(HuggingFaceEmbedding(...))(["q1", "q2"])`` equals each query's
    ``_get_query_embedding`` in one ``encode`` call. Known: llama-index-embeddings-huggingface's
    ``HuggingFaceEmbedding`` (its query is ``_embed([query], prompt_name="query")[0]``),
    unless a subclass overrides ``_get_query_embedding``.
    """
    owner = next(
        (
            cls
            for cls in type(inner).__mro__
            if cls.__name__ == "HuggingFaceEmbedding"
            and cls.__module__.startswith("llama_index.embeddings.huggingface")
        ),
        None,
    )
    defines = next(c for c in type(inner).__mro__ if "_get_query_embedding" in vars(c))
    if owner is None or defines is not owner:  # a subclass with its own query rule: one by one
        return None
    model: Any = inner

    def embed_queries(texts: list[str]) -> list[list[float]]:
        return cast("list[list[float]]", model._embed(list(texts), prompt_name="query"))

    return embed_queries


def _build_service(
    inner: BaseEmbedding,
    identity: dict[str, Any],
    config: PerformanceConfig,
    *,
    store: EmbeddingStore | None,
    gate: AdmissionGateLike | None,
    retry: RetryPolicyLike | None,
    symmetric: bool,
    batching: bool,
    tracker: Any,
) -> EmbeddingService:
    """Translate the inner model's private methods into the service's provider callables."""

    def embed_many(texts: list[str]) -> Sequence[Sequence[float]]:
        return inner._get_text_embeddings(texts)

    async def aembed_native(texts: list[str]) -> Sequence[Sequence[float]]:
        return await inner._aget_text_embeddings(texts)

    def embed_query(text: str) -> Sequence[float]:
        return inner._get_query_embedding(text)

    async def aembed_query(text: str) -> Sequence[float]:
        return await inner._aget_query_embedding(text)

    # A model with a native async batch (or native async single calls and no sync batch)
    # is awaited; a sync-only one (LlamaIndex's default async methods just call the sync
    # ones on the loop) is left to the service, which runs its sync batch in a thread.
    native_async = _overrides(inner, "_aget_text_embeddings") or (
        _overrides(inner, "_aget_text_embedding") and not _overrides(inner, "_get_text_embeddings")
    )
    provider = _provider(inner, identity)
    model = inner.model_name or "unknown"
    return EmbeddingService(
        embed_many,
        aembed_many=aembed_native if native_async else None,
        embed_query=None if symmetric else embed_query,
        aembed_query=None if symmetric else aembed_query,
        embed_queries=None if symmetric else _query_batch(inner),
        provider=provider,
        model=model,
        dimensions=_dimensions(inner),
        symmetric=symmetric,
        config=config,
        store=store if store is not None else default_embedding_store(config),
        gate=gate
        if gate is not None
        else default_gate(
            config,
            provider=provider,
            model=deployment_of(inner) or model,
            api_key=api_key_of(inner),
        ),
        retry=retry if retry is not None else default_retry(config),
        tracker=tracker,
        batching=batching,
    )
