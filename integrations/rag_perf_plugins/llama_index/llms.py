"""PerfLLM and PerfFunctionCallingLLM: LlamaIndex LLMs whose calls go through our core.

Example::

    from rag_perf_plugins.llama_index import pooled_openai_llm, wrap_llm

    llm = wrap_llm(pooled_openai_llm(model="gpt-4o-mini", api_base="http://127.0.0.1:8600/v1"))
    llm.complete("What is RAG?")        # provider call, stored
    llm.complete("What is RAG?")        # from the cache: additional_kwargs["cache_hit"] is True
    for chunk in llm.stream_chat(messages):   # a complete stream is recorded ...
        ...                                    # ... and replayed chunk by chunk next time

``wrap_llm`` returns a :class:`PerfFunctionCallingLLM` when the inner model is a
``FunctionCallingLLM`` (so agents and ``predict_and_call`` accept it: it *is* one, with
the inner model's metadata), else a :class:`PerfLLM`.

Cached: ``chat``, ``complete``, ``stream_chat``, ``stream_complete`` and their async
twins (a sync and an async call of one kind share entries). The key holds the inner
model's identity (class, model name, temperature, max tokens, additional kwargs, API
base; never the API key, timeout or retry count), the messages or prompt, and every
per-call keyword argument (tools, tool choice, response format, ...). Hits are marked
``additional_kwargs["cache_hit"] = True`` and report zero tokens
(``prompt_tokens``/``completion_tokens``/``total_tokens`` are 0, ``raw`` is ``None``), so
token counters do not bill them; misses carry ``cache_hit = False`` and the provider's
own response. Misses go through the admission gate and our retry policy.

One call, one set of LlamaIndex events and spans: the wrapper's methods carry LlamaIndex's
instrumentation decorators, and a miss calls the inner model's *undecorated*
implementation, so neither LlamaIndex's handlers nor ours see a miss twice. (An inner
model whose ``chat`` calls its own public ``complete``, like ``CustomLLM``, still emits its
inner events; our handlers count nested LLM spans once.)

Per-call cache control: ``cache_control(...)`` around the call, or the
``rag_perf_cache="bypass"`` (or ``{"mode": ..., "ttl": s}``) keyword on any method.

``structured_predict`` and its async and streaming twins run the inner class's own method
(so the provider receives the request the unwrapped model sends), with its model calls
routed through the wrapper: they are cached there, not as a whole.

Not done: a per-call keyword that cannot be keyed (an arbitrary object)
makes that call uncached (counted as ``cache.unkeyable``). All the request-path work
is :class:`rag_perf_plugins.services.llm.LLMService`'s (the one LangChain uses too);
this module only converts LlamaIndex's calls and answers.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import inspect
import json
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Generator,
    Mapping,
    Sequence,
)
from typing import TYPE_CHECKING, Any, ClassVar, Final, TypeVar

from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ChatResponseAsyncGen,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseAsyncGen,
    CompletionResponseGen,
    LLMMetadata,
)
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.function_calling import FunctionCallingLLM
from llama_index.core.llms.llm import LLM, ToolSelection
from rag_perf_plugins._clock import Clock, monotonic
from rag_perf_plugins._signature import checked_kwargs
from rag_perf_plugins.admission import AdmissionGate, RetryPolicy
from rag_perf_plugins.cache import CacheManager, canonical_json
from rag_perf_plugins.cache.control import current_control, parse_control
from rag_perf_plugins.cache.semantic import SemanticCache, SemanticMatch
from rag_perf_plugins.config import PerformanceConfig, resolve_config
from rag_perf_plugins.resilience import Breakers
from rag_perf_plugins.services.defaults import (
    api_key_of,
    default_cache,
    default_gate,
    default_retry,
    default_target,
    deployment_of,
)
from rag_perf_plugins.services.identity import IdentityGuard, ModelIdentity, model_identity
from rag_perf_plugins.services.llm import Fallback, LLMRequest, LLMService, Usage
from rag_perf_plugins.tracking import PerformanceTracker

from .embeddings import CACHE_KWARG

COST_SCOPE_KWARG = "cost_scope"


def _output_limit(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _cost_scope(kwargs: dict[str, Any]) -> str | None:
    """A call's ``cost_scope="tenant-42"`` keyword (dollar budgets), taken out of ``kwargs``."""
    scope = kwargs.pop(COST_SCOPE_KWARG, None)
    if scope is not None and (not isinstance(scope, str) or not scope):
        msg = f"{COST_SCOPE_KWARG} must be a non-empty string, got {scope!r}"
        raise ValueError(msg)
    return scope


__all__ = ["PerfFunctionCallingLLM", "PerfLLM", "llm_identity", "wrap_llm"]

RT = TypeVar("RT", ChatResponse, CompletionResponse)

# Fields of a LlamaIndex LLM left out of its identity besides the core's deny-list
# (rag_perf_plugins.services.identity.NON_IDENTITY_FIELDS): secrets, transport, and the
# prompt-formatting callables the wrapper copies and applies itself.
_NON_IDENTITY_FIELDS = frozenset(
    {
        "api_key",
        "async_http_client",
        "messages_to_prompt",
        "completion_to_prompt",
        "output_parser",
    }
)
_ZERO_USAGE = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
# Per-call keywords that have their own LLMRequest field.
_REQUEST_FIELDS = frozenset({"tools", "tool_choice", "response_format", "seed"})
_COPIED_FIELDS = (
    "system_prompt",
    "messages_to_prompt",
    "completion_to_prompt",
    "output_parser",
    "pydantic_program_mode",
    "query_wrapper_prompt",
)


def llm_identity(llm: LLM) -> dict[str, Any]:
    """The identity of ``llm``: what decides its answers, as a JSON-safe, stable dict.

    Example: ``llm_identity(OpenAI(model="gpt-4o-mini", temperature=0))["temperature"]``.
    The rule of :func:`rag_perf_plugins.services.identity.model_identity`: the qualified
    class and every public field not at its class default, but credentials, clients,
    timeouts, retries and callbacks; credentials nested deeper (``additional_kwargs``, a
    password in ``api_base``) are masked. ``temperature`` is always present (the sampling
    policy reads it), and ``stream_options`` in ``additional_kwargs`` is left out (whether a
    stream reports usage does not change the answer).
    """
    return _llm_identity_dict(model_identity(llm, deny=_NON_IDENTITY_FIELDS), llm)


def _llm_identity_dict(found: ModelIdentity, llm: LLM) -> dict[str, Any]:
    kept: dict[str, Any] = dict(found.fields)
    extra = kept.get("additional_kwargs")
    if isinstance(extra, dict) and "stream_options" in extra:
        rest = {k: v for k, v in extra.items() if k != "stream_options"}
        if rest:
            kept["additional_kwargs"] = rest
        else:  # the class default ({}) is left out
            del kept["additional_kwargs"]
    temperature = getattr(llm, "temperature", None)
    if isinstance(temperature, (int, float)) and not isinstance(temperature, bool):
        kept.setdefault("temperature", temperature)
    kept["class"] = found.cls
    kept["class_name"] = llm.class_name()
    return kept


def _plain(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def _plain_kwargs(extra: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in extra.items() if isinstance(k, str) and _plain(v)}


def _field(obj: Any, name: str) -> Any:
    return obj.get(name) if isinstance(obj, Mapping) else getattr(obj, name, None)


def _token_details(raw: Any) -> tuple[int, int]:
    """Cached input and reasoning tokens in a raw OpenAI answer or chunk (0 when absent)."""
    usage = _field(raw, "usage") if raw is not None else None
    if usage is None:
        return 0, 0
    cached = _field(_field(usage, "prompt_tokens_details"), "cached_tokens")
    reasoning = _field(_field(usage, "completion_tokens_details"), "reasoning_tokens")
    return (
        cached if isinstance(cached, int) else 0,
        reasoning if isinstance(reasoning, int) else 0,
    )


def _usage_of(extra: dict[str, Any], raw: Any = None) -> Usage | None:
    p, c = extra.get("prompt_tokens"), extra.get("completion_tokens")
    if not isinstance(p, int) and not isinstance(c, int):
        return None
    cached, reasoning = _token_details(raw)
    return Usage(
        p if isinstance(p, int) else 0,
        c if isinstance(c, int) else 0,
        cached_in=cached,
        reasoning=reasoning,
    )


def _raw_usage(raw: Any) -> Usage | None:
    """Usage from a provider's raw answer when ``additional_kwargs`` has none (Anthropic).

    Anthropic reports ``input_tokens`` without the prompt-cache parts, so the cache reads
    and writes are added back: the tokens the prompt really had.
    """
    usage = raw.get("usage") if isinstance(raw, dict) else getattr(raw, "usage", None)
    if usage is None:
        return None
    if not isinstance(usage, dict):
        dump = getattr(usage, "model_dump", None)
        usage = dump() if callable(dump) else None
    if not isinstance(usage, dict):
        return None
    parts = ("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")
    counts = [usage.get(name) for name in parts]
    out = usage.get("output_tokens")
    if not isinstance(counts[0], int) and not isinstance(out, int):
        return None
    read, write = (c if isinstance(c, int) else 0 for c in counts[1:])
    return Usage(
        sum(c for c in counts if isinstance(c, int)),
        out if isinstance(out, int) else 0,
        cached_in=read,
        cache_write=write,
    )


def _response_usage(value: ChatResponse | CompletionResponse) -> Usage | None:
    found = _usage_of(value.additional_kwargs, value.raw)
    return found if found is not None else _raw_usage(value.raw)


def _hit_kwargs(extra: dict[str, Any]) -> dict[str, Any]:
    return {**extra, **_ZERO_USAGE, "cache_hit": True, "cache_hit_kind": "exact"}


def _semantic_kwargs(extra: dict[str, Any], match: SemanticMatch) -> None:
    extra.update(
        cache_hit_kind="semantic",
        cache_similarity=match.similarity,
        cache_matched_prompt=match.prompt,
    )


def _chunk_usage(chunk: ChatResponse | CompletionResponse) -> Usage | None:
    """Usage one stream chunk carries: OpenAI's in ``additional_kwargs``, Anthropic's in raw.

    LlamaIndex's ``Anthropic`` yields no chunk for ``message_start``; its last chunk's raw
    is the ``message_delta`` event, whose usage is cumulative (input with the prompt-cache
    reads and writes, output; LlamaIndex fills in ``input_tokens`` from ``message_start``
    when the event has none). The ``usage`` LlamaIndex keeps in the message drops the
    prompt-cache counts, so it is not read.
    """
    found = _usage_of(chunk.additional_kwargs, chunk.raw)
    return found if found is not None else _raw_usage(chunk.raw)


def _stream_usage(chunks: Sequence[ChatResponse | CompletionResponse]) -> Usage | None:
    found = [u for u in (_chunk_usage(c) for c in chunks) if u is not None]
    if not found:
        return None
    return Usage(
        max(u.tokens_in for u in found),
        max(u.tokens_out for u in found),
        cached_in=max(u.cached_in for u in found),
        reasoning=max(u.reasoning for u in found),
        cache_write=max(u.cache_write for u in found),
    )


# Provider SDK models a message's additional_kwargs may hold (OpenAI's tool calls): their
# class is stored by name and rebuilt on a hit, so a hit holds the same types as a live
# answer. Only classes under these module prefixes are ever imported.
_SDK_MODULES = ("openai.types.",)


def _sdk_types(message: ChatMessage) -> dict[str, list[str]]:
    """``{kwarg: [module:Class per item]}`` for lists of provider SDK models in the message."""
    found: dict[str, list[str]] = {}
    for name, value in message.additional_kwargs.items():
        if isinstance(value, list) and value:
            kinds = [f"{type(v).__module__}:{type(v).__qualname__}" for v in value]
            if all(k.startswith(_SDK_MODULES) for k in kinds):
                found[name] = kinds
    return found


def _rebuild_sdk_types(message: ChatMessage, kinds: dict[str, list[str]]) -> None:
    import importlib

    for name, classes in kinds.items():
        items = message.additional_kwargs.get(name)
        if not isinstance(items, list) or len(items) != len(classes):
            continue
        rebuilt = []
        for item, kind in zip(items, classes, strict=True):
            module, _, qualname = kind.partition(":")
            if not module.startswith(_SDK_MODULES):
                return
            cls = getattr(importlib.import_module(module), qualname)
            rebuilt.append(cls.model_validate(item))
        message.additional_kwargs[name] = rebuilt


class _ChatCodec:
    """A whole ``ChatResponse`` as plain data (message via LlamaIndex's own serializer)."""

    def encode(self, value: ChatResponse) -> Any:
        data = {
            "m": value.message.model_dump(mode="json"),
            "k": _plain_kwargs(value.additional_kwargs),
            "d": value.delta,
        }
        kinds = _sdk_types(value.message)
        if kinds:
            data["t"] = kinds
        return data

    def decode(self, data: Any) -> ChatResponse:
        message = ChatMessage.model_validate(data["m"])
        if data.get("t"):
            _rebuild_sdk_types(message, data["t"])
        return ChatResponse(
            message=message,
            delta=data["d"],
            additional_kwargs=_hit_kwargs(data["k"]),
        )

    def decode_semantic(self, data: Any, match: SemanticMatch) -> ChatResponse:
        response = self.decode(data)
        _semantic_kwargs(response.additional_kwargs, match)
        return response

    def usage(self, value: ChatResponse) -> Usage | None:
        return _response_usage(value)


class _CompletionCodec:
    """A whole ``CompletionResponse`` as plain data."""

    def encode(self, value: CompletionResponse) -> Any:
        return {"t": value.text, "k": _plain_kwargs(value.additional_kwargs), "d": value.delta}

    def decode(self, data: Any) -> CompletionResponse:
        return CompletionResponse(
            text=data["t"], delta=data["d"], additional_kwargs=_hit_kwargs(data["k"])
        )

    def decode_semantic(self, data: Any, match: SemanticMatch) -> CompletionResponse:
        response = self.decode(data)
        _semantic_kwargs(response.additional_kwargs, match)
        return response

    def usage(self, value: CompletionResponse) -> Usage | None:
        return _response_usage(value)


class _ChatChunkCodec:
    """Chat stream chunks: each stored as its delta plus what is not accumulated text.

    A chunk's message holds all text so far; storing it whole would make an entry grow
    with the square of the answer. The text is rebuilt from the deltas on replay (one
    codec per stream, used in order); other blocks (tool calls) are kept per chunk, and a
    chunk whose text is not the running sum of the deltas keeps its own text.
    """

    def __init__(self) -> None:
        self._sent = ""
        self._replayed = ""

    def encode(self, chunk: ChatResponse) -> Any:
        message = chunk.message.model_dump(mode="json")
        blocks = message.get("blocks") or []
        texts = [b.get("text", "") for b in blocks if b.get("block_type") == "text"]
        message["blocks"] = [b for b in blocks if b.get("block_type") != "text"]
        self._sent += chunk.delta or ""
        text = "".join(texts)
        own = None if text == self._sent else text
        data = {
            "m": message,
            "t": bool(texts),
            "x": own,
            "d": chunk.delta,
            "k": _plain_kwargs(chunk.additional_kwargs),
        }
        kinds = _sdk_types(chunk.message)  # streamed tool calls: ChoiceDeltaToolCall
        if kinds:
            data["s"] = kinds
        return data

    def decode(self, data: Any) -> ChatResponse:
        self._replayed += data["d"] or ""
        message = dict(data["m"])
        if data["t"]:
            text = self._replayed if data["x"] is None else data["x"]
            message["blocks"] = [{"block_type": "text", "text": text}, *message["blocks"]]
        rebuilt = ChatMessage.model_validate(message)
        if data.get("s"):
            _rebuild_sdk_types(rebuilt, data["s"])
        return ChatResponse(
            message=rebuilt,
            delta=data["d"],
            additional_kwargs=_hit_kwargs(data["k"]),
        )

    def usage(self, chunks: Sequence[ChatResponse]) -> Usage | None:
        return _stream_usage(chunks)


class _CompletionChunkCodec:
    """Completion stream chunks: the delta; the accumulated text is rebuilt on replay."""

    def __init__(self) -> None:
        self._sent = ""
        self._replayed = ""

    def encode(self, chunk: CompletionResponse) -> Any:
        self._sent += chunk.delta or ""
        own = None if chunk.text == self._sent else chunk.text
        return {"d": chunk.delta, "x": own, "k": _plain_kwargs(chunk.additional_kwargs)}

    def decode(self, data: Any) -> CompletionResponse:
        self._replayed += data["d"] or ""
        return CompletionResponse(
            text=self._replayed if data["x"] is None else data["x"],
            delta=data["d"],
            additional_kwargs=_hit_kwargs(data["k"]),
        )

    def usage(self, chunks: Sequence[CompletionResponse]) -> Usage | None:
        return _stream_usage(chunks)


def _undecorated(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` without LlamaIndex's span (wrapt) and ``llm_*_callback`` layers.

    The span layer exposes ``__wrapped__``; the callback layer does not (it marks the
    function it wraps with ``__wrapped__ = True``), so that function is taken from the
    wrapper's closure. A method without these layers is returned as it is.
    """
    for _ in range(8):
        nxt = getattr(fn, "__wrapped__", None)
        if callable(nxt):
            fn = nxt
            continue
        cells = getattr(fn, "__closure__", None) or ()
        inner = next(
            (
                c.cell_contents
                for c in cells
                if callable(c.cell_contents)
                and getattr(c.cell_contents, "__wrapped__", None) is True
            ),
            None,
        )
        if inner is None:
            return fn
        fn = inner
    return fn


def _set(model: Any, **attrs: Any) -> None:
    """Set plain instance attributes on a pydantic model, past its ``__setattr__``.

    They live in the instance ``__dict__``: not fields, so not validated, dumped or
    compared, and read without pydantic's ``__getattr__``.
    """
    for name, value in attrs.items():
        object.__setattr__(model, name, value)


# The additional_kwargs key naming the fallback target that answered (absent when the
# primary model answered).
FALLBACK_TARGET: Final = "fallback_target"


def _mark(r: RT, answered: Sequence[str] = ()) -> RT:
    """A live answer (the codec marked replayed ones) says it was not a hit; and who answered."""
    extra = r.additional_kwargs
    if "cache_hit" not in extra:  # a live answer (hits were marked by the codec)
        extra["cache_hit"] = False
        extra["cache_hit_kind"] = None
    if answered:
        r.additional_kwargs[FALLBACK_TARGET] = answered[-1]
    return r


def _marked_sync(
    gen: Generator[RT, None, None], answered: Sequence[str] = ()
) -> Generator[RT, None, None]:
    # closing(): abandoning this stream abandons the service's at once (nothing stored).
    with contextlib.closing(gen):
        for chunk in gen:
            yield _mark(chunk, answered)


async def _marked(
    gen: AsyncGenerator[RT, None], answered: Sequence[str] = ()
) -> AsyncGenerator[RT, None]:
    async with contextlib.aclosing(gen):
        async for chunk in gen:
            yield _mark(chunk, answered)


class _Alternative:
    """One fallback model of a :class:`PerfLLM`: its identity, request fields and target."""

    __slots__ = ("digest", "identity", "inner", "model", "provider", "raw", "target")

    def __init__(self, inner: LLM, config: PerformanceConfig) -> None:
        if not isinstance(inner, LLM) or isinstance(inner, PerfLLM):
            msg = f"fallbacks must be unwrapped LlamaIndex LLMs, got {type(inner).__name__}"
            raise TypeError(msg)
        self.inner = inner
        self.identity = llm_identity(inner)
        self.digest = hashlib.blake2b(
            canonical_json(self.identity).encode(), digest_size=16
        ).hexdigest()
        self.model = inner.metadata.model_name or "unknown"
        kind = f"llama_index/{inner.class_name()}"
        api_base = getattr(inner, "api_base", None)
        self.provider = f"{kind}/{api_base}" if isinstance(api_base, str) else kind
        gate = default_gate(
            config,
            provider=kind,
            model=deployment_of(inner) or self.model,
            api_key=api_key_of(inner),
        )
        self.target = default_target(gate, self.provider, self.model)
        self.raw: dict[str, Callable[..., Any]] = {}

    def impl(self, name: str) -> Callable[..., Any]:
        fn = self.raw.get(name)
        if fn is None:
            fn = self.raw[name] = _undecorated(getattr(type(self.inner), name))
        return fn


async def _agen(run: Callable[[], Awaitable[AsyncIterator[Any]]]) -> AsyncIterator[Any]:
    async for chunk in await run():
        yield chunk


def _messages_key(messages: Sequence[ChatMessage]) -> list[Any]:
    return [m.model_dump(mode="json") for m in messages]


class PerfLLM(LLM):
    """A LlamaIndex ``LLM`` that caches, gates, retries and tracks its inner model's calls.

    Example::

        llm = PerfLLM(OpenAI(model="gpt-4o-mini", max_retries=0), PerformanceConfig())
        Settings.llm = llm             # or pass llm= to an engine

    Prefer :func:`wrap_llm`, which keeps function calling when the inner model has it.

    Args:
        inner: The LLM that makes the provider calls. Build it with ``max_retries=0`` (or
            use :func:`pooled_openai_llm`): our retry policy is the only retry owner. Its
            own ``rate_limiter`` is bypassed.
        config: Cache switches and TTL (seconds), ``cache_skip_sampled``, concurrency and
            rate limits, retries; ``None`` means ``PerformanceConfig.load()``.
        cache: The cache manager; ``None`` uses the one shared by wrappers with an equal
            config (no cache when ``enable_caching`` is off).
        gate: Admission gate for provider calls; ``None`` builds the core's gate of
            (provider, model, API-key fingerprint).
        retry: Retry policy; ``None`` builds the core's from ``config``.
        tracker: Statistics sink (operations ``llm`` and ``llm.stream``); ``None`` means
            the process tracker when metrics are on.
        clock: Seconds, monotonic, for the statistics.
        fallbacks: LlamaIndex LLMs to try in order when ``inner`` fails (429, 5xx,
            timeouts) or its circuit breaker is open (see
            :class:`~rag_perf_plugins.services.llm.LLMService`); an answer from one carries
            ``additional_kwargs["fallback_target"]``. Streams fall back only before their
            first chunk.
        breakers: The circuit breakers; ``None``: the process-wide ones of ``config``.
        semantic: A :class:`~rag_perf_plugins.cache.semantic.SemanticCache` for opted-in
            calls (``semantic_cache: true``, ``cache_control(semantic=True)`` or
            ``rag_perf_cache={"semantic": True}``); a semantic hit has
            ``additional_kwargs`` ``cache_hit_kind="semantic"``, ``cache_similarity``
            (cosine) and ``cache_matched_prompt``.

    Raises:
        TypeError: ``inner`` is not a LlamaIndex ``LLM`` or is already a ``PerfLLM``.
    """

    # Plain instance attributes, set past pydantic's __setattr__ (see _set): a pydantic
    # private attribute is read through __getattr__, measured 40 times slower, and the
    # hit path reads several per call. Declared for type checkers only.
    # What ``inner`` must be (PerfFunctionCallingLLM narrows it).
    _inner_kind: ClassVar[type[Any]] = LLM

    if TYPE_CHECKING:
        _inner: LLM
        _config: PerformanceConfig
        _identity: dict[str, Any]
        _service: LLMService
        _model: str
        _metadata: LLMMetadata
        _identity_digest: str
        _guard: IdentityGuard
        _provider: str
        _raw: dict[str, Callable[..., Any]]
        _alternatives: list[_Alternative]

    @checked_kwargs
    def __init__(
        self,
        inner: LLM,
        config: PerformanceConfig | None = None,
        *,
        cache: CacheManager | None = None,
        gate: AdmissionGate | None = None,
        retry: RetryPolicy | None = None,
        tracker: PerformanceTracker | None = None,
        clock: Clock = monotonic,
        fallbacks: Sequence[LLM] = (),
        breakers: Breakers | None = None,
        semantic: SemanticCache | None = None,
    ) -> None:
        if isinstance(inner, PerfLLM):
            msg = "inner is already a PerfLLM; wrap the model it wraps (inner.inner)"
            raise TypeError(msg)
        kind = type(self)._inner_kind
        if not isinstance(inner, kind):
            msg = f"inner must be a LlamaIndex {kind.__name__}, got {type(inner).__name__}"
            raise TypeError(msg)
        config = resolve_config(config)
        super().__init__(
            callback_manager=inner.callback_manager,
            **{name: getattr(inner, name) for name in _COPIED_FIELDS},
        )
        guard = IdentityGuard(inner, deny=_NON_IDENTITY_FIELDS)
        identity = _llm_identity_dict(guard.identity, inner)
        # Read once: some classes compute metadata on every access (OpenAI: ~100 µs), and
        # LlamaIndex reads it for every event payload.
        metadata = inner.metadata
        model = metadata.model_name or "unknown"
        api_base = getattr(inner, "api_base", None)
        provider = f"llama_index/{inner.class_name()}"
        if gate is None:
            gate = default_gate(
                config,
                provider=provider,
                model=deployment_of(inner) or model,
                api_key=api_key_of(inner),
            )
        provider_id = f"{provider}/{api_base}" if isinstance(api_base, str) else provider
        service = LLMService(
            config=config,
            cache=cache if cache is not None else default_cache(config),
            gate=gate,
            retry=retry if retry is not None else default_retry(config),
            tracker=tracker,
            clock=clock,
            target=default_target(gate, provider_id, model),
            breakers=breakers,
            semantic=semantic,
        )
        digest = hashlib.blake2b(canonical_json(identity).encode(), digest_size=16).hexdigest()
        _set(
            self,
            _inner=inner,
            _config=config,
            _identity=identity,
            _guard=guard,
            _metadata=metadata,
            _identity_digest=digest,
            _model=model,
            _provider=provider_id,
            _service=service,
            _raw={},
            _alternatives=[_Alternative(m, config) for m in fallbacks],
        )

    # --- identity ---------------------------------------------------------------------
    @classmethod
    def class_name(cls) -> str:
        """Stable serialization name."""
        return "PerfLLM"

    @property
    def metadata(self) -> LLMMetadata:
        """The inner model's metadata (context window, model name, function calling).

        Read from the inner model when the wrapper was built; build a new wrapper after
        changing the inner model's fields.
        """
        return self._metadata

    def to_dict(self, **kwargs: Any) -> dict[str, Any]:
        """A stable dict naming the wrapper and the inner model's identity (no secrets)."""
        return {"class_name": self.class_name(), "inner": dict(self._identity)}

    @property
    def inner(self) -> LLM:
        """The wrapped model."""
        return self._inner

    @property
    def config(self) -> PerformanceConfig:
        """The config the wrapper was built with."""
        return self._config

    @property
    def provider_calls(self) -> int:
        """Provider calls (first attempts) made on misses so far."""
        return self._service.provider_calls

    @property
    def service(self) -> LLMService:
        """The core service doing the work (cache, single-flight, gate, retry, stats)."""
        return self._service

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._inner.class_name()}/{self.metadata.model_name}>"

    __str__ = __repr__

    # --- shared helpers ---------------------------------------------------------------
    def _impl(self, name: str) -> Callable[..., Any]:
        """The inner class's undecorated ``name`` (no second set of events or spans)."""
        fn = self._raw.get(name)
        if fn is None:
            fn = self._raw[name] = _undecorated(getattr(type(self._inner), name))
        return fn

    def _request(
        self, call: str, messages: Any, kwargs: dict[str, Any], alt: _Alternative | None = None
    ) -> LLMRequest:
        """The effective request: the model's identity plus this call's arguments.

        ``alt``: a fallback model's request instead of the inner model's.
        """
        if alt is None and self._guard.changed() is not None:
            self._rekey()
        identity = self._identity if alt is None else alt.identity
        params = {k: v for k, v in kwargs.items() if k not in _REQUEST_FIELDS}
        params["temperature"] = kwargs.get("temperature", identity.get("temperature"))
        # The identity goes in as a digest of its canonical form (it is fixed per wrapper):
        # normalising its ~30 fields on every call cost more than the whole cache lookup.
        digest = self._identity_digest if alt is None else alt.digest
        params["llama_index"] = {"call": call, "model": digest}
        return LLMRequest(
            model=self._model if alt is None else alt.model,
            provider=self._provider if alt is None else alt.provider,
            messages=messages,
            params=params,
            tools=kwargs.get("tools"),
            tool_choice=kwargs.get("tool_choice"),
            response_format=kwargs.get("response_format"),
            seed=kwargs.get("seed"),
            output_limit=_output_limit(kwargs.get("max_tokens", identity.get("max_tokens"))),
        )

    def _fallbacks(
        self,
        call: str,
        key_input: Any,
        kwargs: dict[str, Any],
        method: str,
        args: tuple[Any, ...],
        *,
        stream: bool = False,
    ) -> list[Fallback]:
        """The fallback models' targets, requests and calls of ``method(*args, **kwargs)``.

        ``call`` and ``key_input`` are what :meth:`_request` takes (the key's call kind and
        its messages or prompt); ``stream``: an async stream, opened as an async iterator.
        """
        out = []
        for alt in self._alternatives:
            impl, model = alt.impl(method), alt.inner

            def run(impl: Any = impl, model: LLM = model) -> Any:
                return impl(model, *args, **kwargs)

            request = self._request(call, key_input, kwargs, alt)
            if stream:
                out.append(Fallback(alt.target, request, functools.partial(_agen, run)))
            else:
                out.append(Fallback(alt.target, request, run))
        return out

    def _rekey(self) -> None:
        """Take the inner model's identity again after one of its fields changed."""
        inner = self._inner
        identity = _llm_identity_dict(self._guard.identity, inner)
        metadata = inner.metadata
        digest = hashlib.blake2b(canonical_json(identity).encode(), digest_size=16).hexdigest()
        _set(
            self,
            _identity=identity,
            _identity_digest=digest,
            _metadata=metadata,
            _model=metadata.model_name or "unknown",
        )

    # --- chat ---------------------------------------------------------------------------
    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        """Chat, from the cache when the same request was answered before."""
        scope = _cost_scope(kwargs)
        control = parse_control(kwargs.pop(CACHE_KWARG, None))
        impl, inner = self._impl("chat"), self._inner
        key = _messages_key(messages)
        answered: list[str] = []
        response: ChatResponse = self._service.generate(
            self._request("chat", key, kwargs),
            lambda: impl(inner, messages, **kwargs),
            _ChatCodec(),
            control=control,
            cost_scope=scope,
            fallbacks=self._fallbacks("chat", key, kwargs, "chat", (messages,)),
            on_target=answered.append,
        )
        return _mark(response, answered)

    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        """Async :meth:`chat`."""
        scope = _cost_scope(kwargs)
        control = parse_control(kwargs.pop(CACHE_KWARG, None))
        impl, inner = self._impl("achat"), self._inner
        sync_impl = self._impl("chat")
        key = _messages_key(messages)
        answered: list[str] = []
        response: ChatResponse = await self._service.agenerate(
            self._request("chat", key, kwargs),
            lambda: impl(inner, messages, **kwargs),
            _ChatCodec(),
            control=control,
            cost_scope=scope,
            blocking=lambda: sync_impl(inner, messages, **kwargs),
            fallbacks=self._fallbacks("chat", key, kwargs, "achat", (messages,)),
            blocking_fallbacks=self._fallbacks("chat", key, kwargs, "chat", (messages,)),
            on_target=answered.append,
        )
        return _mark(response, answered)

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        """Streamed chat: replayed chunk by chunk from the cache, or live and recorded."""
        scope = _cost_scope(kwargs)
        control = parse_control(kwargs.pop(CACHE_KWARG, None)) or current_control()
        impl, inner = self._impl("stream_chat"), self._inner
        key = _messages_key(messages)
        answered: list[str] = []
        return _marked_sync(
            self._service.stream(
                self._request("chat", key, kwargs),
                lambda: impl(inner, messages, **kwargs),
                _ChatChunkCodec(),
                control=control,
                cost_scope=scope,
                fallbacks=self._fallbacks("chat", key, kwargs, "stream_chat", (messages,)),
                on_target=answered.append,
            ),
            answered,
        )

    @llm_chat_callback()
    async def astream_chat(
        self, messages: Sequence[ChatMessage], **kwargs: Any
    ) -> ChatResponseAsyncGen:
        """Async :meth:`stream_chat`."""
        scope = _cost_scope(kwargs)
        control = parse_control(kwargs.pop(CACHE_KWARG, None)) or current_control()
        impl, inner = self._impl("astream_chat"), self._inner
        sync_impl = self._impl("stream_chat")

        async def open_stream() -> AsyncIterator[ChatResponse]:
            async for chunk in await impl(inner, messages, **kwargs):
                yield chunk

        key = _messages_key(messages)

        answered: list[str] = []
        return _marked(
            self._service.astream(
                self._request("chat", key, kwargs),
                open_stream,
                _ChatChunkCodec(),
                control=control,
                cost_scope=scope,
                blocking=lambda: sync_impl(inner, messages, **kwargs),
                fallbacks=self._fallbacks(
                    "chat", key, kwargs, "astream_chat", (messages,), stream=True
                ),
                blocking_fallbacks=self._fallbacks("chat", key, kwargs, "stream_chat", (messages,)),
                on_target=answered.append,
            ),
            answered,
        )

    # --- completion ---------------------------------------------------------------------
    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        """Completion, from the cache when the same request was answered before."""
        scope = _cost_scope(kwargs)
        control = parse_control(kwargs.pop(CACHE_KWARG, None))
        impl, inner = self._impl("complete"), self._inner
        keyed = {**kwargs, "formatted": formatted}
        answered: list[str] = []
        response: CompletionResponse = self._service.generate(
            self._request("complete", prompt, keyed),
            lambda: impl(inner, prompt, formatted, **kwargs),
            _CompletionCodec(),
            control=control,
            cost_scope=scope,
            fallbacks=self._fallbacks("complete", prompt, keyed, "complete", (prompt,)),
            on_target=answered.append,
        )
        return _mark(response, answered)

    @llm_completion_callback()
    async def acomplete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponse:
        """Async :meth:`complete`."""
        scope = _cost_scope(kwargs)
        control = parse_control(kwargs.pop(CACHE_KWARG, None))
        impl, inner = self._impl("acomplete"), self._inner
        sync_impl = self._impl("complete")
        keyed = {**kwargs, "formatted": formatted}
        answered: list[str] = []
        response: CompletionResponse = await self._service.agenerate(
            self._request("complete", prompt, keyed),
            lambda: impl(inner, prompt, formatted, **kwargs),
            _CompletionCodec(),
            control=control,
            cost_scope=scope,
            blocking=lambda: sync_impl(inner, prompt, formatted, **kwargs),
            fallbacks=self._fallbacks("complete", prompt, keyed, "acomplete", (prompt,)),
            blocking_fallbacks=self._fallbacks("complete", prompt, keyed, "complete", (prompt,)),
            on_target=answered.append,
        )
        return _mark(response, answered)

    @llm_completion_callback()
    def stream_complete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponseGen:
        """Streamed completion: replayed from the cache, or live and recorded."""
        scope = _cost_scope(kwargs)
        control = parse_control(kwargs.pop(CACHE_KWARG, None)) or current_control()
        impl, inner = self._impl("stream_complete"), self._inner
        keyed = {**kwargs, "formatted": formatted}
        answered: list[str] = []
        return _marked_sync(
            self._service.stream(
                self._request("complete", prompt, keyed),
                lambda: impl(inner, prompt, formatted, **kwargs),
                _CompletionChunkCodec(),
                control=control,
                cost_scope=scope,
                fallbacks=self._fallbacks("complete", prompt, keyed, "stream_complete", (prompt,)),
                on_target=answered.append,
            ),
            answered,
        )

    @llm_completion_callback()
    async def astream_complete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponseAsyncGen:
        """Async :meth:`stream_complete`."""
        scope = _cost_scope(kwargs)
        control = parse_control(kwargs.pop(CACHE_KWARG, None)) or current_control()
        impl, inner = self._impl("astream_complete"), self._inner
        sync_impl = self._impl("stream_complete")

        async def open_stream() -> AsyncIterator[CompletionResponse]:
            async for chunk in await impl(inner, prompt, formatted, **kwargs):
                yield chunk

        keyed = {**kwargs, "formatted": formatted}
        answered: list[str] = []
        return _marked(
            self._service.astream(
                self._request("complete", prompt, keyed),
                open_stream,
                _CompletionChunkCodec(),
                control=control,
                cost_scope=scope,
                blocking=lambda: sync_impl(inner, prompt, formatted, **kwargs),
                fallbacks=self._fallbacks(
                    "complete", prompt, keyed, "astream_complete", (prompt,), stream=True
                ),
                blocking_fallbacks=self._fallbacks(
                    "complete", prompt, keyed, "stream_complete", (prompt,)
                ),
                on_target=answered.append,
            ),
            answered,
        )

    # --- structured output: the inner class's own method, its requests through us ------
    def _through_us(self) -> LLM:
        """A copy of the inner model whose chat/complete calls are this wrapper's.

        The inner class's ``structured_predict`` and friends then build exactly the
        request the unwrapped model sends (``OpenAI``: ``response_format`` with a strict
        JSON schema, where LlamaIndex's base method would force a tool call), and every
        model call they make is cached, gated and counted here.
        """
        proxy = self._inner.model_copy()
        for name in _ROUTED:
            object.__setattr__(proxy, name, getattr(self, name))
        return proxy

    def structured_predict(
        self, output_cls: Any, prompt: Any, llm_kwargs: dict[str, Any] | None = None,
        **prompt_args: Any,
    ) -> Any:  # fmt: skip
        """The inner model's ``structured_predict``, its model calls through the cache."""
        return self._through_us().structured_predict(
            output_cls, prompt, llm_kwargs=llm_kwargs, **prompt_args
        )

    async def astructured_predict(
        self, output_cls: Any, prompt: Any, llm_kwargs: dict[str, Any] | None = None,
        **prompt_args: Any,
    ) -> Any:  # fmt: skip
        """Async :meth:`structured_predict`."""
        return await self._through_us().astructured_predict(
            output_cls, prompt, llm_kwargs=llm_kwargs, **prompt_args
        )

    def stream_structured_predict(
        self, output_cls: Any, prompt: Any, llm_kwargs: dict[str, Any] | None = None,
        **prompt_args: Any,
    ) -> Any:  # fmt: skip
        """The inner model's ``stream_structured_predict``, streamed through the cache."""
        return self._through_us().stream_structured_predict(
            output_cls, prompt, llm_kwargs=llm_kwargs, **prompt_args
        )

    async def astream_structured_predict(
        self, output_cls: Any, prompt: Any, llm_kwargs: dict[str, Any] | None = None,
        **prompt_args: Any,
    ) -> Any:  # fmt: skip
        """Async :meth:`stream_structured_predict`."""
        return await self._through_us().astream_structured_predict(
            output_cls, prompt, llm_kwargs=llm_kwargs, **prompt_args
        )


# The model calls a structured-output method of the inner class makes: routed to the wrapper.
_ROUTED = (
    "chat",
    "achat",
    "stream_chat",
    "astream_chat",
    "complete",
    "acomplete",
    "stream_complete",
    "astream_complete",
)


class PerfFunctionCallingLLM(PerfLLM, FunctionCallingLLM):
    """:class:`PerfLLM` for a ``FunctionCallingLLM``: agents and tool calling accept it.

    Example::

        llm = wrap_llm(OpenAI(model="gpt-4o-mini", max_retries=0))
        llm.predict_and_call([add_tool], "What is 2 + 3?")   # tools are part of the key

    Tool preparation and parsing are the inner model's; the chat call they lead to goes
    through the wrapper, with the tool specs and tool choice in the key.
    """

    _inner_kind: ClassVar[type[Any]] = FunctionCallingLLM

    # Only for type checkers: the pydantic plugin gives this class FunctionCallingLLM's
    # field signature otherwise. The work is PerfLLM.__init__'s.
    @checked_kwargs
    def __init__(
        self,
        inner: FunctionCallingLLM,
        config: PerformanceConfig | None = None,
        *,
        cache: CacheManager | None = None,
        gate: AdmissionGate | None = None,
        retry: RetryPolicy | None = None,
        tracker: PerformanceTracker | None = None,
        clock: Clock = monotonic,
        fallbacks: Sequence[LLM] = (),
        breakers: Breakers | None = None,
        semantic: SemanticCache | None = None,
    ) -> None:
        super().__init__(
            inner,
            config,
            cache=cache,
            gate=gate,
            retry=retry,
            tracker=tracker,
            clock=clock,
            fallbacks=fallbacks,
            breakers=breakers,
            semantic=semantic,
        )

    @classmethod
    def class_name(cls) -> str:
        """Stable serialization name."""
        return "PerfFunctionCallingLLM"

    def _inner_fc(self) -> FunctionCallingLLM:
        inner = self._inner
        assert isinstance(inner, FunctionCallingLLM)
        return inner

    def _prepare_chat_with_tools(
        self,
        tools: Sequence[Any],
        user_msg: str | ChatMessage | None = None,
        chat_history: list[ChatMessage] | None = None,
        verbose: bool = False,
        allow_parallel_tool_calls: bool = False,
        tool_required: bool = False,
        **kwargs: Any,
    ) -> dict[str, Any]:
        inner = self._inner_fc()
        params = inspect.signature(type(inner)._prepare_chat_with_tools).parameters
        if "tool_required" in params:  # older integrations lack it: LlamaIndex checks too
            kwargs["tool_required"] = tool_required
        return inner._prepare_chat_with_tools(
            tools,
            user_msg=user_msg,
            chat_history=chat_history,
            verbose=verbose,
            allow_parallel_tool_calls=allow_parallel_tool_calls,
            **kwargs,
        )

    def _validate_chat_with_tools_response(self, *args: Any, **kwargs: Any) -> ChatResponse:
        return self._inner_fc()._validate_chat_with_tools_response(*args, **kwargs)

    def get_tool_calls_from_response(self, *args: Any, **kwargs: Any) -> list[ToolSelection]:
        """The inner model's parsing of tool calls (works on cached responses too)."""
        return self._inner_fc().get_tool_calls_from_response(*args, **kwargs)


def wrap_llm(inner: LLM, config: PerformanceConfig | None = None, **options: Any) -> PerfLLM:
    """Wrap ``inner``: a :class:`PerfFunctionCallingLLM` for a ``FunctionCallingLLM``.

    Example: ``Settings.llm = wrap_llm(pooled_openai_llm(api_base=sim.base_url))``.

    A model that is already a :class:`PerfLLM` is returned as it is when nothing else is
    asked; with a ``config`` or ``options`` it raises, rather than return the wrapper and
    silently drop them. ``options`` go to the wrapper (``cache``, ``gate``, ``retry``,
    ``tracker``, ``clock``, ``fallbacks``, ``breakers``, ``semantic``); an unknown one raises
    ``TypeError`` naming it.

    Raises:
        ValueError: ``inner`` is already wrapped and ``config`` or ``options`` were given.
    """
    if isinstance(inner, PerfLLM):
        if config is not None or options:
            asked = ", ".join(["config"] * (config is not None) + sorted(options))
            msg = (
                f"wrap_llm: the model is already a {type(inner).__name__}, so {asked} would "
                "be ignored; wrap the inner model (wrapper.inner) with them instead"
            )
            raise ValueError(msg)
        return inner
    if isinstance(inner, FunctionCallingLLM):
        return PerfFunctionCallingLLM(inner, config, **options)
    return PerfLLM(inner, config, **options)
