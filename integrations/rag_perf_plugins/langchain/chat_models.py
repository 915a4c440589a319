"""PerfChatModel: a LangChain chat model that runs every call through our LLM service.

All the work (complete keys, cache policy and per-call control, single-flight, admission
gate, retry, stream record/replay, statistics) is done by
:class:`rag_perf_plugins.services.llm.LLMService`; this class only translates LangChain's
hooks (``_generate``/``_agenerate``/``_stream``/``_astream``) into service calls and
LangChain's types into plain data and back::

    from rag_perf_plugins.langchain import PerfChatModel, pooled_chat_openai

    llm = PerfChatModel(pooled_chat_openai(model="gpt-4o-mini", base_url=url))
    chain = prompt | llm | StrOutputParser()
    chain.invoke({"question": "What is RAG?"})      # miss: one provider call, stored
    chain.invoke({"question": "What is RAG?"})      # hit: no provider call
    for token in chain.stream({"question": "What is RAG?"}):   # recorded once, then replayed
        print(token, end="")

How it sits in LangChain:

- LangChain's own cache is off for the wrapper and for its copy of the inner model
  (``cache=False``), so a global ``set_llm_cache(...)`` never caches the same answer twice.
- A hit is an ``AIMessage`` with ``response_metadata["cache_hit"] = True`` and zero
  ``usage_metadata`` (``token_usage`` in ``llm_output`` zeroed too), so LangChain's usage
  callbacks do not count its tokens again; the tracker records the tokens it saved.
- A replayed stream goes through ``BaseChatModel.stream``/``astream`` like a live one, so
  ``on_llm_new_token`` and the stream events fire for every replayed chunk.
- ``bind_tools`` and ``with_structured_output`` are built by the inner model (its tool
  conversion, its structured output methods) and then re-pointed at the wrapper, so tools,
  tool choice and response format go through our path and into the key.
- ``_llm_type``, ``_identifying_params``, ``_get_ls_params``, ``_get_invocation_params``
  and ``to_json`` are the inner model's: traces and LangSmith show the real model.
  ``to_json`` and ``_identifying_params`` (traced and stored) come with credentials masked
  (:func:`rag_perf_plugins._secrets.redact_data`: ``default_headers={"Authorization": ...}``,
  a password in ``base_url``), and the repr names the inner model without its fields.

Per-call control: ``with cache_control("bypass"):`` around a call, or
``config={"metadata": {"rag_perf": {"cache": "refresh", "ttl": 60}}}`` (see
:mod:`rag_perf_plugins.langchain.control`).

Not done here: the inner model's ``rate_limiter`` (LangChain applies it in ``invoke``, which
the wrapper does not call; use our gate), and LangChain serialization of the wrapper itself
(``is_lc_serializable()`` is ``False``; ``to_json`` gives the inner model).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import inspect
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from typing import Any, Final, cast

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    BaseMessageChunk,
    messages_from_dict,
)
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import (
    Runnable,
    RunnableBinding,
    RunnableConfig,
    RunnableParallel,
    RunnableSequence,
    ensure_config,
)
from pydantic import BaseModel, ConfigDict, PrivateAttr
from typing_extensions import override

from rag_perf_plugins._secrets import redact_data
from rag_perf_plugins._signature import checked_kwargs
from rag_perf_plugins.cache import CacheControl, CacheManager, llm_key_tail
from rag_perf_plugins.cache.semantic import SemanticCache, SemanticMatch
from rag_perf_plugins.config import PerformanceConfig, resolve_config
from rag_perf_plugins.resilience import Breakers, Target
from rag_perf_plugins.services.defaults import (
    api_key_of,
    default_gate,
    default_retry,
    default_target,
)
from rag_perf_plugins.services.identity import IdentityGuard, ModelIdentity, model_identity
from rag_perf_plugins.services.llm import Fallback, LLMRequest, LLMService, Usage
from rag_perf_plugins.services.protocols import AdmissionGateLike, RetryPolicyLike
from rag_perf_plugins.tracking import PerformanceTracker

from .callbacks import cache_listener
from .control import control_from_metadata, scope_from_metadata

__all__ = ["PerfChatModel", "plain", "request_of"]

# Message fields that do not reach the provider: ids differ per run, metadata and usage
# describe an earlier answer. Everything else (content, tool calls, names) is in the key.
_MESSAGE_NOISE = ("id", "response_metadata", "usage_metadata")
_NOISE_FIELDS: Final[set[str]] = set(_MESSAGE_NOISE)  # never changed


def plain(value: Any) -> Any:
    """``value`` as plain data for keys and storage: pydantic models and classes turned to dicts.

    Example: ``plain({"schema": MyModel})`` gives ``{"schema": {"pydantic": "MyModel",
    "json_schema": {...}}}``. Other objects are left as they are (the key function then
    refuses them and the call goes uncached).
    """
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, type) and issubclass(value, BaseModel):
        return {"pydantic": value.__qualname__, "json_schema": value.model_json_schema()}
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    return value


def _message_key(message: BaseMessage) -> dict[str, Any]:
    # message_to_dict's data without the noise fields (left out of the dump, not dropped
    # after it: the same dict, a little cheaper on every call).
    body = message.model_dump(exclude=_NOISE_FIELDS)
    return {"type": message.type, "data": plain(body)}


def _provider_of(inner: BaseChatModel, found: ModelIdentity | None = None) -> str:
    """The inner model's whole identity: qualified class and a digest of its settings.

    Every non-default public field counts but credentials, clients, timeouts, retries,
    callbacks and LangChain's cache switch (``services.identity.model_identity``): two
    endpoints, or two settings nobody listed, never share entries.
    """
    found = found if found is not None else model_identity(inner)
    return f"langchain/{found.cls}/{found.fingerprint()}"


def request_of(
    inner: BaseChatModel,
    messages: Sequence[BaseMessage],
    stop: list[str] | None,
    *,
    provider: str | None = None,
    base_params: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> LLMRequest:
    """The effective request of one call of ``inner``: model, every parameter, messages, tools.

    Example: ``request_of(ChatOpenAI(model="m"), [HumanMessage("hi")], None,
    temperature=0.5).key()``. Parameters come from ``inner._get_invocation_params`` (the
    model's defaults plus the call's keyword arguments, ``bind_tools`` output included);
    timeouts, retries and credentials are left out by the key function. ``provider`` and
    ``base_params`` (the model's parameters for a call without ``stop`` or keyword
    arguments) may be passed precomputed; they are the same for every call of one model.
    """
    if base_params is not None and stop is None and not kwargs:
        params = dict(base_params)
    else:
        params = dict(inner._get_invocation_params(stop=stop, **kwargs))
    params.pop("_type", None)
    params.pop("ls_structured_output_format", None)  # a tracing hint; the schema is elsewhere
    tools = params.pop("tools", None)
    tool_choice = params.pop("tool_choice", None)
    response_format = params.pop("response_format", None)
    seed = params.pop("seed", None)
    model = params.get("model") or params.get("model_name") or type(inner).__name__
    return LLMRequest(
        model=str(model),
        provider=provider if provider is not None else _provider_of(inner),
        messages=[_message_key(m) for m in messages],
        params=plain(params),
        tools=plain(tools),
        tool_choice=plain(tool_choice),
        response_format=plain(response_format),
        seed=seed if isinstance(seed, int) and not isinstance(seed, bool) else None,
    )


def _usage_of(message: BaseMessage) -> Usage | None:
    usage = getattr(message, "usage_metadata", None)
    if not usage:
        return None
    details_in = usage.get("input_token_details") or {}
    details_out = usage.get("output_token_details") or {}
    return Usage(
        int(usage.get("input_tokens", 0) or 0),
        int(usage.get("output_tokens", 0) or 0),
        cached_in=int(details_in.get("cache_read", 0) or 0),
        reasoning=int(details_out.get("reasoning", 0) or 0),
        cache_write=int(details_in.get("cache_creation", 0) or 0),
    )


def _openai_usage(token_usage: Mapping[str, Any]) -> Usage:
    """An OpenAI ``usage`` object (``llm_output["token_usage"]``) as a :class:`Usage`."""
    details_in = token_usage.get("prompt_tokens_details") or {}
    details_out = token_usage.get("completion_tokens_details") or {}
    return Usage(
        int(token_usage.get("prompt_tokens", 0) or 0),
        int(token_usage.get("completion_tokens", 0) or 0),
        cached_in=int(details_in.get("cached_tokens", 0) or 0)
        if isinstance(details_in, dict)
        else 0,
        reasoning=(
            int(details_out.get("reasoning_tokens", 0) or 0) if isinstance(details_out, dict) else 0
        ),
    )


_ZERO_USAGE: Final = {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0}


def _dump_message(message: BaseMessage) -> dict[str, Any]:
    """``message_to_dict`` without the fields left at their defaults (smaller, faster to load)."""
    return {"type": message.type, "data": plain(message.model_dump(exclude_defaults=True))}


def _load_hit(stored: Mapping[str, Any]) -> BaseMessage:
    """The stored message, marked as a hit (``cache_hit``, zero usage) as it is built.

    An ``AIMessageChunk`` (every replayed chunk) is built directly; other types go through
    LangChain's ``messages_from_dict``, which only builds LangChain's message classes.
    """
    data = dict(stored["data"])
    data["response_metadata"] = {
        **(data.get("response_metadata") or {}),
        "cache_hit": True,
        "cache_hit_kind": "exact",
    }
    if data.get("usage_metadata") is not None:
        data["usage_metadata"] = dict(_ZERO_USAGE)
    if stored["type"] == "AIMessageChunk":
        return AIMessageChunk(**data)  # replayed chunks keep their ids, as live ones carry
    # A whole answer's id was the earlier run's message's: a hit is a new message of this
    # run and gets this run's id from LangChain, so two hits never share one (LangGraph's
    # message reducers replace a message by id).
    data.pop("id", None)
    if stored["type"] == "ai":  # what messages_from_dict builds for it, without the dispatch
        return AIMessage(**data)
    return messages_from_dict([{"type": stored["type"], "data": data}])[0]


class _ResultCodec:
    """ChatResult <-> plain data with LangChain's own message serializers (no pickle)."""

    def encode(self, value: ChatResult) -> Any:
        return {
            "generations": [
                {"message": _dump_message(g.message), "info": plain(g.generation_info)}
                for g in value.generations
            ],
            "llm_output": plain(value.llm_output),
        }

    def decode(self, data: Any) -> ChatResult:
        generations = []
        for item in data["generations"]:
            message = _load_hit(item["message"])
            generations.append(ChatGeneration(message=message, generation_info=item["info"]))
        llm_output = data.get("llm_output")
        if isinstance(llm_output, dict) and "token_usage" in llm_output:
            llm_output = {**llm_output, "token_usage": {}}
        return ChatResult(generations=generations, llm_output=llm_output)

    def decode_semantic(self, data: Any, match: SemanticMatch) -> ChatResult:
        """A semantic hit: :meth:`decode`, with the match in ``response_metadata``."""
        result = self.decode(data)
        for generation in result.generations:
            generation.message.response_metadata.update(
                cache_hit_kind="semantic",
                cache_similarity=match.similarity,
                cache_matched_prompt=match.prompt,
            )
        return result

    def usage(self, value: ChatResult) -> Usage | None:
        total: Usage | None = None
        for generation in value.generations:
            found = _usage_of(generation.message)
            if found is not None:
                total = found if total is None else total.plus(found)
        if total is None and isinstance(value.llm_output, dict):
            token_usage = value.llm_output.get("token_usage") or {}
            if isinstance(token_usage, dict) and token_usage:
                total = _openai_usage(token_usage)
        return total


class _ChunkCodec:
    """ChatGenerationChunk <-> plain data; replayed chunks are marked as hits."""

    def encode(self, chunk: ChatGenerationChunk) -> Any:
        return {"message": _dump_message(chunk.message), "info": plain(chunk.generation_info)}

    def decode(self, data: Any) -> ChatGenerationChunk:
        message = _load_hit(data["message"])
        if not isinstance(message, BaseMessageChunk):
            msg = f"a stored stream chunk decoded to {type(message).__name__}, not a chunk"
            raise TypeError(msg)
        return ChatGenerationChunk(message=message, generation_info=data["info"])

    def usage(self, chunks: Sequence[ChatGenerationChunk]) -> Usage | None:
        total: Usage | None = None
        for found in (_usage_of(c.message) for c in chunks):
            if found is not None:
                total = found if total is None else total.plus(found)
        return total


def _field_names(cls: type[BaseModel] | None) -> list[str]:
    """The ``BaseChatModel`` fields a ``PerfChatModel`` passes on (``callbacks``, ``tags``...)."""
    return list(cls.model_fields) if cls is not None else []


_RESULTS = _ResultCodec()
_CHUNKS = _ChunkCodec()

# The response_metadata key naming the fallback target that answered (absent when the
# primary model answered, so a wrapped primary answers exactly as the unwrapped one).
FALLBACK_TARGET: Final = "fallback_target"


class _Alternative:
    """One fallback model: its private copy, identity, parameters and breaker target."""

    __slots__ = ("base_params", "inner", "provider", "target")

    def __init__(self, inner: BaseChatModel, config: PerformanceConfig) -> None:
        if not isinstance(inner, BaseChatModel):
            msg = f"fallbacks must be LangChain BaseChatModels, got {type(inner).__name__}"
            raise TypeError(msg)
        self.inner = inner.model_copy(update={"cache": False})
        self.provider = _provider_of(self.inner)
        self.base_params = dict(self.inner._get_invocation_params(stop=None))
        self.target = _target_of(self.inner, self.provider, config)


def _target_of(inner: BaseChatModel, provider_id: str, config: PerformanceConfig) -> Target:
    ls = inner._get_ls_params()
    provider = str(ls.get("ls_provider") or type(inner).__name__)
    model = str(ls.get("ls_model_name") or type(inner).__name__)
    gate = default_gate(config, provider=provider, model=model, api_key=api_key_of(inner))
    return default_target(gate, provider_id, model)


def _mark(messages: Sequence[BaseMessage], target: str | None) -> None:
    if target is not None:
        for message in messages:
            message.response_metadata[FALLBACK_TARGET] = target


class PerfChatModel(BaseChatModel):
    """Wrap any LangChain chat model with our cache, single-flight, gate, retry and stats.

    Example::

        llm = PerfChatModel(pooled_chat_openai(model="gpt-4o-mini", base_url=url))
        llm.invoke("What is RAG?").response_metadata.get("cache_hit")   # None, then True
        llm.bind_tools([get_weather]).invoke("Weather in Paris?").tool_calls

    Args:
        inner: The chat model that really calls the provider. A copy with ``cache=False``
            is kept; turn its own retries off (``max_retries=0``, as
            ``pooled_chat_openai`` does) or they stack under ours.
        config: Cache switches and TTL (seconds), ``cache_skip_sampled``, limits and retry
            settings; ``None`` means ``PerformanceConfig.load()`` (file, environment, defaults).
        cache_manager: Where answers are stored; ``None``: the manager for ``config``'s
            cache settings (directory, tiers, Redis).
        gate: Admission gate for provider calls; ``None`` builds the shared one of
            (provider, model, API key) from ``config``.
        retry: Retry policy for provider calls; ``None`` builds one from ``config``.
        tracker: Statistics sink; defaults to the process tracker. Calls record as
            ``operation`` (``llm.chat``) and streams as ``llm.chat.stream``.
        fallbacks: Chat models to try in order when ``inner`` fails (429, 5xx, timeouts)
            or its circuit breaker is open (see :class:`~rag_perf_plugins.services.llm.
            LLMService`). An answer from one carries
            ``response_metadata["fallback_target"]``; streams fall back only before their
            first chunk. Each gets its own gate (its provider, model and key).
        breakers: The circuit breakers; ``None``: the process-wide ones of ``config``
            (in Redis, shared by every process, when ``redis_url`` is set).
        semantic: A :class:`~rag_perf_plugins.cache.semantic.SemanticCache` for opted-in
            calls (``semantic_cache: true`` or ``cache_control(semantic=True)``); a semantic
            hit has ``response_metadata`` ``cache_hit_kind="semantic"``,
            ``cache_similarity`` (cosine) and ``cache_matched_prompt``.
        **kwargs: Other ``BaseChatModel`` fields (``callbacks``, ``tags``, ``metadata``).

    Raises:
        ValueError: ``cache`` was passed (LangChain's cache is always off here).
    """

    inner: BaseChatModel
    model_config = ConfigDict(arbitrary_types_allowed=True)

    _service: LLMService = PrivateAttr()
    _provider: str = PrivateAttr()
    _guard: IdentityGuard = PrivateAttr()
    _base_params: dict[str, Any] = PrivateAttr()
    _base_request: LLMRequest = PrivateAttr()
    _ls_params: dict[str, Any] = PrivateAttr()
    _model: str = PrivateAttr()
    _fallbacks: list[_Alternative] = PrivateAttr(default_factory=list)

    @checked_kwargs(extra=_field_names)
    def __init__(
        self,
        inner: BaseChatModel,
        config: PerformanceConfig | None = None,
        *,
        cache_manager: CacheManager | None = None,
        gate: AdmissionGateLike | None = None,
        retry: RetryPolicyLike | None = None,
        tracker: PerformanceTracker | None = None,
        operation: str = "llm.chat",
        fallbacks: Sequence[BaseChatModel] = (),
        breakers: Breakers | None = None,
        semantic: SemanticCache | None = None,
        **kwargs: Any,
    ) -> None:
        if not isinstance(inner, BaseChatModel):
            msg = f"inner must be a LangChain BaseChatModel, got {type(inner).__name__}"
            raise TypeError(msg)
        if kwargs.get("cache") not in (None, False):
            msg = "PerfChatModel does its own caching; LangChain's cache is always off for it"
            raise ValueError(msg)
        kwargs["cache"] = False
        for name in ("output_version", "profile", "disable_streaming"):
            value = getattr(inner, name, None)
            if value is not None and name not in kwargs:
                kwargs[name] = value
        super().__init__(inner=inner.model_copy(update={"cache": False}), **kwargs)
        config = resolve_config(config)
        # Computed once, and again when a field of the inner copy changes (a dict it shares
        # with the caller's model, or ``llm.inner.temperature = ...``): IdentityGuard.
        self._guard = IdentityGuard(self.inner)
        self._settings(self._guard.identity)
        ls = self.inner._get_ls_params()
        provider = str(ls.get("ls_provider") or type(inner).__name__)
        model = str(ls.get("ls_model_name") or type(inner).__name__)
        self._model = model
        if gate is None:
            gate = default_gate(config, provider=provider, model=model, api_key=api_key_of(inner))
        self._fallbacks = [_Alternative(m, config) for m in fallbacks]
        self._service = LLMService(
            config=config,
            cache=cache_manager,
            gate=gate,
            retry=retry if retry is not None else default_retry(config),
            tracker=tracker,
            operation=operation,
            target=default_target(gate, self._provider, model),
            breakers=breakers,
            semantic=semantic,
        )

    @property
    def service(self) -> LLMService:
        """The core service every call goes through (``service.provider_calls``...)."""
        return self._service

    # --- what traces and the standard tests read: the inner model's ------------------
    @property
    @override
    def _llm_type(self) -> str:
        return self.inner._llm_type

    @property
    @override
    def _identifying_params(self) -> dict[str, Any]:
        return dict(redact_data(self.inner._identifying_params))

    @override
    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> Any:
        if stop is None and not kwargs:
            # Every call's tracing metadata: kept while the inner model's fields stay as
            # they were (the inner's own method costs ~7 us, pydantic hasattr misses).
            self._refresh()
            return dict(_private(self)["_ls_params"])
        return self.inner._get_ls_params(stop=stop, **kwargs)

    @override
    def _get_invocation_params(
        self, stop: list[str] | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        return self.inner._get_invocation_params(stop=stop, **kwargs)

    @override
    def _combine_llm_outputs(self, llm_outputs: list[dict[str, Any] | None]) -> dict[str, Any]:
        # generate()/agenerate() merge the per-prompt llm_output with this: the inner
        # model's own rule (ChatOpenAI sums token usage, keeps model_name and
        # system_fingerprint), not BaseChatModel's empty dict.
        return self.inner._combine_llm_outputs(llm_outputs)

    @override
    def to_json(self) -> Any:
        # LangChain already turns declared secrets (openai_api_key) into references; headers
        # and URLs are plain fields, so mask what they hold before a tracer stores it.
        return redact_data(self.inner.to_json())

    # --- tools and structured output: built by the inner, pointed at the wrapper -------
    @override
    def bind_tools(
        self,
        tools: Sequence[Any],
        *,
        tool_choice: Any = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Bind tools formatted by the inner model's ``bind_tools`` to this wrapper.

        Example: ``llm.bind_tools([add], tool_choice="any").invoke("2 + 3?").tool_calls``.
        Tools and tool choice become call arguments of the wrapper, so they are part of
        every key.
        """
        if tool_choice is not None:
            kwargs["tool_choice"] = tool_choice
        bound = self.inner.bind_tools(tools, **kwargs)
        if not isinstance(bound, RunnableBinding) or bound.bound is not self.inner:
            msg = f"{type(self.inner).__name__}.bind_tools did not return a binding of itself"
            raise NotImplementedError(msg)
        return self.bind(**bound.kwargs)

    @override
    def with_structured_output(
        self,
        schema: dict[str, Any] | type,
        *,
        include_raw: bool = False,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, dict[str, Any] | BaseModel]:
        """The inner model's structured output runnable, with the model step replaced by us.

        Example: ``llm.with_structured_output(Answer, method="json_schema").invoke(q)``.
        Every method the inner model supports works (``function_calling``, ``json_mode``,
        ``json_schema`` for ``ChatOpenAI``); its parsers are kept as they are.
        """
        built = self.inner.with_structured_output(schema, include_raw=include_raw, **kwargs)
        replaced: list[bool] = []
        rebuilt: Runnable[LanguageModelInput, dict[str, Any] | BaseModel]
        rebuilt = _repoint(built, self.inner, self, replaced)
        if not replaced:
            msg = f"{type(self.inner).__name__}.with_structured_output has no model step to wrap"
            raise NotImplementedError(msg)
        return rebuilt

    # --- invoke: a memory-tier hit before LangChain's per-call machinery ---------------
    @override
    def invoke(
        self,
        input: LanguageModelInput,
        config: RunnableConfig | None = None,
        *,
        stop: list[str] | None = None,
        **kwargs: Any,
    ) -> AIMessage:
        """``BaseChatModel.invoke``; a hit of a call nobody listens to is answered directly.

        When the call has no callback handler (none passed, none on the model, no tracing:
        what ``CallbackManager.configure`` finds), no ``stop`` or keyword arguments, no
        ``run_id``, and LangChain would call ``_generate`` (no LangChain cache or rate
        limiter on the wrapper, no streaming, ``output_version`` not ``"v1"``), an answer
        in the memory tier is returned as LangChain would return it (message id
        ``lc_run--<run id>-0``, the same response metadata), without the run managers,
        the invocation parameters and the result objects nobody reads (~40 us of a ~90 us
        hit). Anything else, a miss included, takes ``BaseChatModel.invoke``.
        """
        if stop is None and not kwargs:
            message = _quiet_hit(self, input, config)
            if message is not None:
                return message
        return super().invoke(input, config, stop=stop, **kwargs)

    @override
    async def ainvoke(
        self,
        input: LanguageModelInput,
        config: RunnableConfig | None = None,
        *,
        stop: list[str] | None = None,
        **kwargs: Any,
    ) -> AIMessage:
        """``BaseChatModel.ainvoke``, with :meth:`invoke`'s direct answer to a quiet hit."""
        if stop is None and not kwargs:
            message = _quiet_hit(self, input, config, async_api=True)
            if message is not None:
                return message
        return await super().ainvoke(input, config, stop=stop, **kwargs)

    # --- streams: the call's metadata reaches the hooks ---------------------------------
    @override
    def stream(
        self,
        input: LanguageModelInput,
        config: RunnableConfig | None = None,
        *,
        stop: list[str] | None = None,
        **kwargs: Any,
    ) -> Iterator[AIMessageChunk]:
        """``BaseChatModel.stream``, with the ``rag_perf`` metadata applied as on ``invoke``."""
        metadata = ensure_config(config).get("metadata")
        return _with_metadata(super().stream(input, config, stop=stop, **kwargs), metadata)

    @override
    def astream(
        self,
        input: LanguageModelInput,
        config: RunnableConfig | None = None,
        *,
        stop: list[str] | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[AIMessageChunk]:
        """``BaseChatModel.astream``, with the ``rag_perf`` metadata applied as on ``ainvoke``."""
        metadata = ensure_config(config).get("metadata")
        return _awith_metadata(super().astream(input, config, stop=stop, **kwargs), metadata)

    # --- the four hooks: one service call each ----------------------------------------
    def _settings(self, identity: ModelIdentity) -> None:
        """What every call without ``stop`` or keyword arguments shares, from the inner model.

        The provider id, the invocation and LangSmith parameters, and the request without
        messages with its key's fixed text (``cache.keys.llm_key_tail``), so a call only
        serializes and hashes its messages. Recomputed when the inner model changes.
        """
        self._provider = _provider_of(self.inner, identity)
        self._base_params = dict(self.inner._get_invocation_params(stop=None))
        self._ls_params = dict(self.inner._get_ls_params())
        base = request_of(
            self.inner, [], None, provider=self._provider, base_params=self._base_params
        )
        try:
            tail: str | None = llm_key_tail(
                model=base.model,
                provider=base.provider,
                params=base.params,
                tools=base.tools,
                tool_choice=base.tool_choice,
                response_format=base.response_format,
                seed=base.seed,
            )
        except TypeError:  # a parameter no key can hold: the service leaves the call uncached
            tail = None
        self._base_request = dataclasses.replace(base, key_tail=tail)

    def _refresh(self) -> None:
        found = _private(self)["_guard"].changed()
        if found is not None:
            self._settings(found)

    def _request(self, messages: list[BaseMessage], stop: list[str] | None, **kw: Any) -> Any:
        self._refresh()
        if stop is None and not kw:
            base = _private(self)["_base_request"]
            return LLMRequest(
                model=base.model,
                messages=[_message_key(m) for m in messages],
                provider=base.provider,
                params=base.params,
                tools=base.tools,
                tool_choice=base.tool_choice,
                response_format=base.response_format,
                seed=base.seed,
                output_limit=base.output_limit,
                key_tail=base.key_tail,
            )
        return request_of(
            self.inner,
            messages,
            stop,
            provider=self._provider,
            base_params=self._base_params,
            **kw,
        )

    @override
    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        request = self._request(messages, stop, **kwargs)
        answered: list[str] = []
        ran: list[bool] = []  # the inner model ran (a hit never calls it: nothing to settle)

        def call() -> ChatResult:
            ran.append(True)
            return self.inner._generate(messages, stop=stop, run_manager=run_manager, **kwargs)

        def alternative(alt: _Alternative) -> Fallback:
            def call() -> ChatResult:
                return alt.inner._generate(messages, stop=stop, run_manager=run_manager, **kwargs)

            return Fallback(alt.target, self._alt_request(alt, messages, stop, kwargs), call)

        try:
            result = _service_of(self).generate(
                request,
                call,
                _RESULTS,
                control=_control(run_manager),
                cost_scope=_scope(run_manager),
                on_cache=cache_listener(run_manager),
                fallbacks=[alternative(alt) for alt in _private(self)["_fallbacks"]],
                on_target=answered.append,
            )
        finally:
            if ran:
                _private(self)["_guard"].settle()
        _mark([g.message for g in result.generations], answered[-1] if answered else None)
        return result

    @override
    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        request = self._request(messages, stop, **kwargs)
        answered: list[str] = []
        ran: list[bool] = []

        async def call() -> ChatResult:
            ran.append(True)
            return await self.inner._agenerate(
                messages, stop=stop, run_manager=run_manager, **kwargs
            )

        def blocking() -> ChatResult:  # with async_enabled off, run in a worker thread
            ran.append(True)
            return self.inner._generate(messages, stop=stop, **kwargs)

        def alternatives(asynchronous: bool) -> list[Fallback]:
            out = []
            for alt in self._fallbacks:
                model = alt.inner

                async def acall(model: BaseChatModel = model) -> ChatResult:
                    return await model._agenerate(
                        messages, stop=stop, run_manager=run_manager, **kwargs
                    )

                def bcall(model: BaseChatModel = model) -> ChatResult:
                    return model._generate(messages, stop=stop, **kwargs)

                fallback_request = self._alt_request(alt, messages, stop, kwargs)
                out.append(Fallback(alt.target, fallback_request, acall if asynchronous else bcall))
            return out

        try:
            result = await _service_of(self).agenerate(
                request,
                call,
                _RESULTS,
                control=_control(run_manager),
                cost_scope=_scope(run_manager),
                blocking=blocking,
                on_cache=cache_listener(run_manager),
                fallbacks=alternatives(True) if _private(self)["_fallbacks"] else (),
                blocking_fallbacks=alternatives(False) if _private(self)["_fallbacks"] else (),
                on_target=answered.append,
            )
        finally:
            if ran:
                _private(self)["_guard"].settle()
        _mark([g.message for g in result.generations], answered[-1] if answered else None)
        return result

    @override
    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        # BaseChatModel.stream fires on_llm_new_token for every chunk we yield, live or
        # replayed; the inner model gets no run manager, or live tokens would fire twice.
        request = self._request(messages, stop, **kwargs)
        answered: list[str] = []
        ran: list[bool] = []

        def open_stream() -> Iterator[ChatGenerationChunk]:
            ran.append(True)
            return self.inner._stream(messages, stop=stop, **kwargs)

        stream = _service_of(self).stream(
            request,
            open_stream,
            _CHUNKS,
            control=_control(run_manager),
            cost_scope=_scope(run_manager),
            on_cache=cache_listener(run_manager),
            fallbacks=self._stream_fallbacks(messages, stop, kwargs, asynchronous=False),
            on_target=answered.append,
        )
        try:
            with contextlib.closing(stream):
                for chunk in stream:
                    _mark([chunk.message], answered[-1] if answered else None)
                    yield chunk
        finally:
            if ran:
                _private(self)["_guard"].settle()

    @override
    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        request = self._request(messages, stop, **kwargs)
        ran: list[bool] = []

        def open_stream() -> AsyncIterator[ChatGenerationChunk]:
            ran.append(True)
            return self.inner._astream(messages, stop=stop, **kwargs)

        def blocking() -> Iterator[ChatGenerationChunk]:
            ran.append(True)
            return self.inner._stream(messages, stop=stop, **kwargs)

        answered: list[str] = []
        stream = _service_of(self).astream(
            request,
            open_stream,
            _CHUNKS,
            control=_control(run_manager),
            cost_scope=_scope(run_manager),
            blocking=blocking,
            on_cache=cache_listener(run_manager),
            fallbacks=self._stream_fallbacks(messages, stop, kwargs, asynchronous=True),
            blocking_fallbacks=self._stream_fallbacks(messages, stop, kwargs, asynchronous=False),
            on_target=answered.append,
        )
        try:
            async with contextlib.aclosing(stream):
                async for chunk in stream:
                    _mark([chunk.message], answered[-1] if answered else None)
                    yield chunk
        finally:
            if ran:
                _private(self)["_guard"].settle()

    def _alt_request(
        self,
        alt: _Alternative,
        messages: list[BaseMessage],
        stop: list[str] | None,
        kwargs: dict[str, Any],
    ) -> LLMRequest:
        return request_of(
            alt.inner,
            messages,
            stop,
            provider=alt.provider,
            base_params=alt.base_params,
            **kwargs,
        )

    def _stream_fallbacks(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None,
        kwargs: dict[str, Any],
        *,
        asynchronous: bool,
    ) -> list[Fallback]:
        out = []
        for alt in self._fallbacks:
            model = alt.inner

            def aopen(model: BaseChatModel = model) -> AsyncIterator[ChatGenerationChunk]:
                return model._astream(messages, stop=stop, **kwargs)

            def bopen(model: BaseChatModel = model) -> Iterator[ChatGenerationChunk]:
                return model._stream(messages, stop=stop, **kwargs)

            request = self._alt_request(alt, messages, stop, kwargs)
            out.append(Fallback(alt.target, request, aopen if asynchronous else bopen))
        return out

    def __repr__(self) -> str:
        # Not the inner model's pydantic repr: it prints every field, default_headers and a
        # base_url with its password included.
        return f"PerfChatModel({type(self.inner).__name__} {self._model}, {self._service!r})"

    @override
    def __repr_args__(self) -> Any:
        # What pydantic's str(), rich and devtools print: the inner model by class name only.
        for name, value in super().__repr_args__():
            yield (name, type(value).__name__) if name == "inner" else (name, value)


# BaseChatModel._generate_with_cache asks inspect.signature(self._generate) at every call
# whether it takes run_manager (~10 us of a ~100 us hit); a function's __signature__ is
# what inspect returns first, so the answer is read once here. The same signature.
PerfChatModel._generate.__signature__ = inspect.signature(PerfChatModel._generate)  # type: ignore[attr-defined]
PerfChatModel._agenerate.__signature__ = inspect.signature(PerfChatModel._agenerate)  # type: ignore[attr-defined]


try:  # LangChain's own steps of a call's answer, for the direct hit (else: no shortcut)
    from langchain_core.callbacks import CallbackManager
    from langchain_core.globals import get_llm_cache
    from langchain_core.language_models._utils import _normalize_messages
    from langchain_core.language_models.chat_models import _gen_info_and_msg_metadata
    from langchain_core.utils.utils import LC_ID_PREFIX
    from langchain_core.utils.uuid import uuid7

    _QUIET_HITS = True
except ImportError:  # pragma: no cover - another langchain-core layout
    _QUIET_HITS = False


def _quiet_hit(
    model: PerfChatModel,
    input: LanguageModelInput,
    config: RunnableConfig | None,
    *,
    async_api: bool = False,
) -> AIMessage | None:
    """The answer ``invoke`` would return, if it is a memory-tier hit nobody listens to.

    ``None`` whenever ``BaseChatModel.invoke`` would do more than call ``_generate`` and
    dress its result (see :meth:`PerfChatModel.invoke`), and on a miss: nothing is
    recorded then, and the caller takes the general path.
    """
    if not _QUIET_HITS:
        return None
    cfg = ensure_config(config)
    if _has_handlers(cfg.get("callbacks")) or _has_handlers(model.callbacks) or model.verbose:
        return None  # the usual loud call, refused before configure() (~10 us) runs twice
    cache = model.cache  # LangChain checks (or, without one, raises) unless it is False
    if (
        cfg.get("run_id") is not None
        or (cache is not False and (cache is not None or get_llm_cache() is not None))
        or model.rate_limiter is not None
        or model.output_version == "v1"
        or model._should_stream(async_api=async_api)
    ):
        return None
    manager = CallbackManager.configure(
        cfg.get("callbacks"),
        model.callbacks,
        model.verbose,
        cfg.get("tags"),
        model.tags,
        cfg.get("metadata"),
        model.metadata,
    )
    if manager.handlers:
        return None
    try:  # a bad rag_perf option raises from the general path, with its run's callbacks
        control = control_from_metadata(manager.metadata)
        scope = scope_from_metadata(manager.metadata)
    except ValueError:
        return None
    messages = _normalize_messages(model._convert_input(input).to_messages())
    answered: list[str] = []
    result = _service_of(model).cached(
        model._request(messages, None),
        _RESULTS,
        control=control,
        cost_scope=scope,
        on_target=answered.append,
    )
    if result is None:
        return None
    _mark([g.message for g in result.generations], answered[-1] if answered else None)
    # What BaseChatModel._generate_with_cache does to an answer of _generate.
    run_id = uuid7()
    for idx, generation in enumerate(result.generations):
        if generation.message.id is None:
            generation.message.id = f"{LC_ID_PREFIX}-{run_id}-{idx}"
        generation.message.response_metadata = _gen_info_and_msg_metadata(generation)
    if len(result.generations) == 1 and result.llm_output is not None:
        first = result.generations[0].message
        first.response_metadata = {**result.llm_output, **first.response_metadata}
    return cast("AIMessage", result.generations[0].message)


def _has_handlers(callbacks: Any) -> bool:
    """Callbacks as LangChain accepts them (a list, a manager or None) hold a handler."""
    if callbacks is None:
        return False
    if isinstance(callbacks, list):
        return bool(callbacks)
    return bool(getattr(callbacks, "handlers", True))


def _private(model: PerfChatModel) -> dict[str, Any]:
    """The model's private attributes, read directly.

    pydantic's ``__getattr__`` costs ~1.5 us an attribute, several times on every call.
    """
    return cast("dict[str, Any]", model.__pydantic_private__)


def _service_of(model: PerfChatModel) -> LLMService:
    """``model._service``, read the fast way (see :func:`_private`)."""
    service: LLMService = _private(model)["_service"]
    return service


# LangChain's BaseChatModel.stream/astream call _stream/_astream without the run manager, so
# the call's metadata (rag_perf cache mode, ttl, semantic, cache_scope, cost_scope) would
# never reach a stream: stream/astream put it here while the stream opens (its first chunk),
# and the hooks read it when they get no run manager.
_STREAM_METADATA: contextvars.ContextVar[Mapping[str, Any] | None] = contextvars.ContextVar(
    "rag_perf_stream_metadata", default=None
)


def _metadata(run_manager: Any) -> Mapping[str, Any] | None:
    if run_manager is None:
        return _STREAM_METADATA.get()
    return getattr(run_manager, "metadata", None)


def _control(run_manager: Any) -> CacheControl | None:
    return control_from_metadata(_metadata(run_manager))


def _scope(run_manager: Any) -> str | None:
    return scope_from_metadata(_metadata(run_manager))


def _with_metadata(
    chunks: Iterator[AIMessageChunk], metadata: Mapping[str, Any] | None
) -> Iterator[AIMessageChunk]:
    """``chunks`` with ``metadata`` visible to :meth:`PerfChatModel._stream` as it opens."""
    with contextlib.closing(chunks):  # type: ignore[type-var]  # a generator: closed with us
        token = _STREAM_METADATA.set(metadata)
        try:
            first = next(chunks, None)
        finally:
            _STREAM_METADATA.reset(token)
        if first is None:
            return
        yield first
        yield from chunks


async def _awith_metadata(
    chunks: AsyncIterator[AIMessageChunk], metadata: Mapping[str, Any] | None
) -> AsyncIterator[AIMessageChunk]:
    """Async :func:`_with_metadata`."""
    async with contextlib.aclosing(chunks):  # type: ignore[type-var]  # closed with us
        token = _STREAM_METADATA.set(metadata)
        try:
            first = await anext(chunks, None)
        finally:
            _STREAM_METADATA.reset(token)
        if first is None:
            return
        yield first
        async for chunk in chunks:
            yield chunk


def _repoint(runnable: Any, old: BaseChatModel, new: BaseChatModel, replaced: list[bool]) -> Any:
    """A copy of ``runnable`` where ``old`` (bound or not) is replaced by ``new``."""
    if runnable is old:
        replaced.append(True)
        return new
    if isinstance(runnable, RunnableBinding):
        inner = _repoint(runnable.bound, old, new, replaced)
        if inner is runnable.bound:
            return runnable
        return runnable.model_copy(update={"bound": inner})
    if isinstance(runnable, RunnableSequence):
        steps = [_repoint(s, old, new, replaced) for s in runnable.steps]
        return RunnableSequence(*steps, name=runnable.name)
    if isinstance(runnable, RunnableParallel):
        return RunnableParallel(
            {k: _repoint(v, old, new, replaced) for k, v in runnable.steps__.items()}
        )
    return runnable
