"""The one LLM request path that every framework adapter calls (framework-free).

LangChain's ``PerfChatModel`` and LlamaIndex's ``PerfLLM`` both turn their framework's call
into an :class:`LLMRequest` (plain, JSON-able data) plus a provider callable, and hand them to
:class:`LLMService`; nothing about keys, caching, single-flight, admission, retries, stream
record/replay or statistics lives in the adapters::

    service = LLMService(config=PerformanceConfig(), gate=gate, retry=retry)
    request = LLMRequest(
        model="gpt-4o-mini",
        provider="openai/http://127.0.0.1:8000/v1",
        messages=[{"role": "user", "content": "What is RAG?"}],
        params={"temperature": 0.0, "max_tokens": 256},
    )
    answer = service.generate(request, lambda: client_call(), codec)          # blocking
    answer = await service.agenerate(request, async_client_call, codec)       # async
    for chunk in service.stream(request, lambda: client_stream(), chunk_codec):
        print(chunk)

One non-streamed call (:meth:`LLMService.generate` / :meth:`LLMService.agenerate`):

1. Key: :func:`rag_perf_plugins.cache.llm_key` of model, provider, messages, every
   parameter except those that do not change the answer (timeouts, retries, credentials,
   ``stream``), tools, tool choice, response format and seed.
2. Policy: every call is cached while ``enable_caching`` is on, except sampled calls
   (temperature above 0, or unset, and no seed) when ``cache_skip_sampled`` is on. The
   per-call :func:`~rag_perf_plugins.cache.cache_control` mode (bypass, refresh, no-store,
   ttl) applies.
3. Lookup in the ``llm`` namespace of the :class:`~rag_perf_plugins.cache.CacheManager`. A
   hit returns ``codec.decode(payload)``: the adapter marks it as a hit there and reports
   zero usage; the tracker records the tokens it saved.
4. A miss goes through single-flight: identical requests in flight at the same time make
   one provider call; the others get ``codec.decode`` of the leader's payload (and count as
   ``coalesced``). Errors reach every waiter and are never stored.
5. The provider call passes the admission gate (estimated tokens: the prompt's string
   content plus ``max_tokens``; reconciled with the actual usage afterwards) and the retry
   policy. Hits never touch either.
6. The payload (``codec.encode(result)``) is stored with its usage; the call is recorded in
   the tracker (latency, tokens in/out, cache hit, tokens saved, queue wait, retries).

A streamed call (:meth:`LLMService.stream` / :meth:`LLMService.astream`) is cached under
its own key (the request key plus a stream marker), as the list of its chunks:

- Miss: chunks are passed on as they arrive (a tee: each is encoded, then yielded; no
  waiting for the end). Only a stream that completed is stored, with its usage (the
  codec reads usage and finish reason from the chunks). A stream abandoned by its consumer
  or ending in an error is not stored (recorded as ``abandoned`` / ``error``). The gate slot
  is held until the stream ends; the retry policy covers opening the stream up to its first
  chunk (after a chunk has been yielded a failure cannot be retried without duplicating
  output, so it reaches the consumer).
- Hit: the stored chunks are replayed as a stream; the time to the first replayed chunk is
  recorded as the call's TTFT (``ttft_s``, with ``cache_hit=True``).

Payloads and chunks are framework-neutral, JSON/msgpack-able structures produced by the
adapter's codec with the framework's own serializers; nothing is pickled.

Not done here: identical *streamed* misses in flight at once are not coalesced (each
streams from the provider; the last to complete writes the entry); a streamed entry does
not answer a non-streamed call or the reverse; converting framework types (the codecs'
job); choosing the gate and retry policy (the adapter passes them or ``None``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import hashlib
import logging
import sys
import time
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Generator,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass, field
from typing import Any, Final, Protocol, TypeVar

from .._clock import Clock, monotonic
from .._secrets import describe_error
from .._signature import checked_kwargs
from .._threads import iterate_blocking, run_blocking
from ..admission.retry import (
    aobserve_failure,
    areconcile_ticket,
    observe_failure,
    reconcile_ticket,
)
from ..cache import (
    CacheManager,
    KeyExplanation,
    SingleFlight,
    cache_manager_for,
    current_control,
    explain_key,
    is_sampled,
    llm_fields,
    llm_key_from_tail,
    make_key,
)
from ..cache.control import CacheControl, applied
from ..cache.semantic import Probe, SemanticCache, SemanticMatch, scope_digest
from ..config import PerformanceConfig, resolve_config
from ..cost import current_cost_scope, price_table
from ..errors import ProviderUnavailable
from ..pool.http import Listeners, response_listener
from ..resilience import Admission, Breakers, Target, breakers_for, outcome_of
from ..resilience.breaker import Transition
from ..resilience.breakers import failover_reason
from ..resilience.chain import OpenedMeanwhile, failed_note
from ..resilience.probe import ProbeWatch, arun_probe, run_probe
from ..tokens import estimate_tokens
from ..tracking import PerformanceTracker, resolve_tracker, spans
from .protocols import AdmissionGateLike, ProviderCalls, RetryPolicyLike

__all__ = [
    "ChunkCodec",
    "Fallback",
    "LLMRequest",
    "LLMService",
    "ResultCodec",
    "Usage",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")
C = TypeVar("C")
V = TypeVar("V")
R = TypeVar("R")

NAMESPACE: Final = "llm"
_STREAM_SUFFIX: Final = ":stream"
_END: Final[Any] = object()
_UNSTORED: Final[Any] = object()
# The output limit assumed for a dollar-budget estimate when neither the request nor the
# price table gives one (tokens).
_DEFAULT_MAX_OUTPUT: Final = 16_384


@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens of one provider answer: ``Usage(tokens_in=812, tokens_out=64)``.

    ``cached_in`` (input tokens read from the provider's prompt cache), ``cache_write``
    (input tokens written to it, Anthropic) and ``reasoning`` (output tokens spent on
    reasoning) are parts of ``tokens_in`` / ``tokens_out``, priced at their own rates.
    """

    tokens_in: int = 0
    tokens_out: int = 0
    cached_in: int = 0
    reasoning: int = 0
    cache_write: int = 0

    def plus(self, other: Usage) -> Usage:
        """The sum of two usages (the generations of one answer)."""
        return Usage(
            self.tokens_in + other.tokens_in,
            self.tokens_out + other.tokens_out,
            self.cached_in + other.cached_in,
            self.reasoning + other.reasoning,
            self.cache_write + other.cache_write,
        )

    def as_list(self) -> list[int]:
        """The stored form: ``[in, out, cached_in, reasoning, cache_write]``."""
        return [self.tokens_in, self.tokens_out, self.cached_in, self.reasoning, self.cache_write]

    @property
    def total(self) -> int:
        """``tokens_in + tokens_out``."""
        return self.tokens_in + self.tokens_out


class ResultCodec(Protocol[T]):
    """How an adapter turns its framework's complete answer into stored data and back.

    ``encode`` must return plain data (dict, list, str, int, float, bool, None) that the
    cache can store without pickle; ``decode`` is called only for answers that did not
    come from this call's own provider request (cache hits and coalesced followers), so it
    is where the adapter marks the hit and reports zero usage. ``usage`` reads the tokens
    of a live answer (``None`` when unknown).
    """

    def encode(self, value: T) -> Any:
        """Plain data for ``value``."""
        ...

    def decode(self, data: Any) -> T:
        """The framework answer for stored ``data``, marked as a cache hit."""
        ...

    def usage(self, value: T) -> Usage | None:
        """Tokens the provider billed for ``value``."""
        ...


class ChunkCodec(Protocol[C]):
    """The stream twin of :class:`ResultCodec`: one chunk at a time.

    ``decode`` is called for replayed chunks only (mark them there); ``usage`` gets the
    complete list of live chunks once the stream ended (usage usually rides on the last).
    """

    def encode(self, chunk: C) -> Any:
        """Plain data for one chunk."""
        ...

    def decode(self, data: Any) -> C:
        """A replayed chunk, marked as a cache hit."""
        ...

    def usage(self, chunks: Sequence[C]) -> Usage | None:
        """Tokens billed for the whole stream."""
        ...


@dataclass(frozen=True, slots=True)
class LLMRequest:
    """The effective request of one LLM call, as plain data: everything that decides the answer.

    Example::

        LLMRequest(model="gpt-4o-mini", provider="openai/https://api.openai.com/v1",
                   messages=[{"role": "user", "content": "hi"}],
                   params={"temperature": 0.0, "max_tokens": 64, "timeout": 30},
                   tools=[{"type": "function", "function": {...}}], tool_choice="auto")

    ``params`` holds every sampling and output parameter after the model's defaults; names
    in :data:`rag_perf_plugins.cache.NON_OUTPUT_PARAMS` (timeouts, retries, credentials)
    are left out of the key. Messages, tools and formats must be plain data: the key
    function refuses objects.
    """

    model: str
    messages: Any
    provider: str | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    tools: Any = None
    tool_choice: Any = None
    response_format: Any = None
    seed: int | None = None
    # The output limit when ``params`` does not carry it (an adapter whose model holds it
    # in its identity); used for dollar-budget estimates only, never part of the key.
    output_limit: int | None = None
    # The canonical text of every field but ``messages`` (``cache.keys.llm_key_tail`` of
    # the same model, provider, params, tools, tool choice, response format and seed), when
    # an adapter keeps it for a model's fixed parameters; ``key()`` then hashes the
    # messages only. Never compared, never shown.
    key_tail: str | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model:
            msg = f"model must be a non-empty str, got {self.model!r}"
            raise ValueError(msg)

    def _fields(self) -> tuple[dict[str, Any], tuple[str, ...]]:
        return llm_fields(
            model=self.model,
            messages=self.messages,
            provider=self.provider,
            params=self.params,
            tools=self.tools,
            tool_choice=self.tool_choice,
            response_format=self.response_format,
            seed=self.seed,
        )

    def key(self) -> str:
        """The cache key of a non-streamed call (``llm:v1:<hex>``): :func:`llm_key`'s."""
        if self.key_tail is not None:
            return llm_key_from_tail(self.messages, self.key_tail)
        return make_key("llm", self._fields()[0])

    def explain(self) -> KeyExplanation:
        """What went into :meth:`key`, and which parameters were left out."""
        fields, excluded = self._fields()
        return explain_key("llm", fields, excluded=excluded)

    def policy_params(self) -> dict[str, Any]:
        """The parameters the caching policy looks at (temperature, seed)."""
        params = dict(self.params)
        if self.seed is not None:
            params["seed"] = self.seed
        return params

    def estimated_tokens(self) -> int:
        """Estimated tokens of the call: string content of the prompt plus ``max_tokens``.

        Every string in ``messages`` and ``tools`` counts (roles and names included, a
        small over-estimate), plus 3 framing tokens per message; the gate reconciles the
        estimate with the provider's usage afterwards.
        """
        return self.estimated_input_tokens() + (self.max_output_tokens() or 0)

    def estimated_input_tokens(self) -> int:
        """Estimated prompt tokens (see :meth:`estimated_tokens`)."""
        total = 3
        messages = self.messages if isinstance(self.messages, list | tuple) else [self.messages]
        for message in messages:
            total += 3 + _string_tokens(message)
        if self.tools:
            total += _string_tokens(self.tools)
        return total

    def max_output_tokens(self) -> int | None:
        """The request's output limit (``max_tokens`` or its newer names), or ``None``."""
        for name in ("max_tokens", "max_completion_tokens", "max_output_tokens"):
            value = self.params.get(name)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
        return self.output_limit


@dataclass(frozen=True, slots=True)
class Fallback:
    """One target of a call's fallback chain: where it goes, what it asks, how to call it.

    Example::

        Fallback(Target("azure/gpt-4o-mini/k-77c1~e2", gate=azure_gate),
                 request=LLMRequest(model="gpt-4o-mini", ...), call=lambda: azure_call())

    ``request`` is the effective request of *that* model (its key caches its answers);
    ``call`` makes one request (or, for streams, opens one stream) to it.
    """

    target: Target
    request: LLMRequest
    call: Callable[[], Any]


def _string_tokens(value: Any) -> int:
    if isinstance(value, str):
        return estimate_tokens(value)
    if isinstance(value, Mapping):
        return sum(_string_tokens(v) for v in value.values())
    if isinstance(value, list | tuple):
        return sum(_string_tokens(v) for v in value)
    return 0


@dataclass(slots=True)
class _Call:
    """Bookkeeping of one call, filled by the shells, read by :meth:`LLMService._record`."""

    started: float
    key: str | None
    control: CacheControl
    cache_hit: bool | None = None
    coalesced: bool = False
    usage: Usage | None = None
    saved: int = 0
    saved_usage: Usage | None = None  # the replayed answer's usage (hits, coalesced calls)
    queue_wait: float | None = None
    attempts: int = 0
    ttft: float | None = None
    abandoned: bool = False
    led: bool = False  # this caller led its single-flight (made the provider call)
    request: LLMRequest | None = None  # for the span: model and provider
    on_cache: Callable[[bool], None] | None = None  # told the cache result at the end
    chain: list[Fallback] | None = None  # the targets in order (primary first), or None
    answered_by: str | None = None  # a fallback target that answered (None: the primary)
    answered_request: LLMRequest | None = None  # that fallback's request (its cache key)
    on_target: Callable[[str], None] | None = None  # told a fallback answered, at once
    scope: str | None = None  # the tenant charged (dollar budgets)
    answered_gate: Any = None  # that fallback's gate (dollar reconcile of its answer)
    admission: Admission | None = None  # the breaker's decision for the answering target
    target_name: str | None = None  # the answering target of a chain (mid-stream failures)
    # The breaker's latest decision per target of this call (a probe still running in a
    # worker thread past its bound must not be taken for the next target's call).
    admissions: dict[str, Admission] = field(default_factory=dict)
    # This pass's outcome per target: name -> (state, retry_in, how it failed or None).
    passed: dict[str, tuple[str, float, str | None]] = field(default_factory=dict)
    chain_error: BaseException | None = None  # raised when every target of a pass failed
    # A failure the breaker already heard inside the gate, and the transition it caused.
    heard: tuple[BaseException, Transition | None] | None = None
    probe: Probe | None = None  # the semantic cache's view of the request (opted in)
    semantic: SemanticMatch | None = None  # the prompt whose answer this semantic hit is
    # A blocking probe's own copy of the call's state: whether its caller left it (late).
    watch: ProbeWatch | None = None


# A wait at the gate after which the breaker is asked again before sending (seconds).
_RECHECK_AFTER_S: Final = 0.001


@dataclass(slots=True)
class _Tee:
    """A live stream's chunks: kept for its usage, encoded for the cache (``None``: not stored)."""

    live: list[Any] = field(default_factory=list)
    recorded: list[Any] | None = field(default_factory=list)


def gate_listener(gate: Any) -> contextlib.AbstractContextManager[None]:
    """Feed the rate-limit headers of successful answers to ``gate`` while the block runs.

    Example: ``with gate_listener(gate): answer = llm.invoke("hi")`` — an answer through
    the shared clients of :mod:`rag_perf_plugins.pool.http` whose
    ``anthropic-ratelimit-requests-remaining`` is 0 pauses ``gate`` until the reset
    (seconds from the header). Failed answers are observed by the retry path instead.
    A gate without ``observe_response`` / ``aobserve_response`` (or ``None``): no effect.
    """
    listeners = listeners_of(gate)
    if listeners is None:
        return contextlib.nullcontext()
    return response_listener(*listeners)


def listeners_of(gate: Any) -> Listeners | None:
    """``gate``'s ``(observe_response, aobserve_response)``; ``None``: it has neither.

    Example: ``listeners = listeners_of(gate)``, once, then ``listen(listeners)`` around
    each provider call: what :func:`gate_listener` opens, without its per-call lookups.
    """
    sync = getattr(gate, "observe_response", None)
    async_ = getattr(gate, "aobserve_response", None)
    if sync is None and async_ is None:
        return None
    return sync, async_


class _Miss:
    """The type of :data:`_MISS`: no usable cache entry."""


_MISS: Final = _Miss()


class LLMService(ProviderCalls):
    """Cached, coalesced, admitted, retried and tracked LLM calls and streams; sync and async.

    Example::

        service = LLMService(config=PerformanceConfig(cache_ttl=3600.0))
        request = LLMRequest(model="m", messages=[{"role": "user", "content": "hi"}],
                             params={"temperature": 0.0})
        text = service.generate(request, lambda: call_provider(), codec)

    Args:
        config: ``enable_caching``, ``cache_skip_sampled``, ``cache_ttl`` (seconds),
            ``enable_metrics``; ``None``: ``PerformanceConfig.load()``.
        cache: The cache manager; ``None`` uses the one for ``config``'s cache settings
            (:func:`~rag_perf_plugins.services.embeddings.cache_manager_for`; when caching is on).
        gate: Admission gate for provider calls (``aacquire``/``acquire`` with
            ``tokens=``; a ticket with ``reconcile``/``queue_wait_s`` is used when present),
            or ``None``.
        retry: Retry policy for provider calls (``call``/``acall``), or ``None`` (one
            attempt). Turn the provider SDK's own retries off, or they stack.
        tracker: Statistics sink; ``None``: the process tracker when metrics are on;
            ``NullTracker()``: none.
        operation: Tracker operation name of non-streamed calls; streams record as
            ``<operation>.stream``.
        namespace: Cache namespace of the entries (``"llm"``).
        clock: Seconds, monotonic, for latency and TTFT statistics.
        target: The primary model's :class:`~rag_perf_plugins.resilience.Target` (breaker
            name, rate-limit scope); ``None``: named from the gate's key, else from the
            request's provider and model.
        breakers: The circuit breakers; ``None``: ``breakers_for(config)`` (shared through
            Redis when ``redis_url`` is set), used when ``breaker_enabled`` is true, or
            is null and a call has fallbacks.
        semantic: The :class:`~rag_perf_plugins.cache.semantic.SemanticCache` consulted
            after an exact miss of a non-streamed call whose semantic switch is on
            (``semantic_cache``, or ``cache_control(semantic=True)``); required when
            ``semantic_cache`` is true.

    Fallbacks (``fallbacks=[Fallback(...), ...]`` on every call method): the call goes to
    the first target whose breaker admits it; a 429, a 5xx, a timeout, a refused
    connection, a full gate or a paused one (a provider's ``Retry-After``, when a later
    target exists) moves it to the next target at once, with no back-off; after a 429,
    targets of the same rate-limit scope are skipped. Other errors (4xx, our own refusals
    such as a spent budget) reach the caller and are never failed over. When every target
    failed, the retry policy backs off and tries the chain again: one retry budget and one
    deadline for the whole chain. When every breaker is open, the call waits for the
    earliest probe if that fits the deadline, else raises
    :class:`~rag_perf_plugins.errors.ProviderUnavailable` naming each target and its state.
    A stream falls back only before its first chunk. A fallback's answer is cached under
    its own request's key, and under the primary's key only with
    ``cache_fallback_answers``; ``on_target`` is told the fallback's name.

    Raises:
        ValueError: ``operation`` is empty.

    Does not: convert framework types, retry a stream after its first chunk, or coalesce
    concurrent identical streams (see the module docstring).
    """

    __slots__ = (
        "_breakers",
        "_budgeted",
        "_cache",
        "_clock",
        "_flight",
        "_gate",
        "_prices",
        "_retry",
        "_semantic",
        "_target",
        "_tracker",
        "config",
        "namespace",
        "operation",
        "provider_calls",
    )

    @checked_kwargs
    def __init__(
        self,
        *,
        config: PerformanceConfig | None = None,
        cache: CacheManager | None = None,
        gate: AdmissionGateLike | None = None,
        retry: RetryPolicyLike | None = None,
        tracker: PerformanceTracker | None = None,
        operation: str = "llm",
        namespace: str = NAMESPACE,
        clock: Clock = monotonic,
        target: Target | None = None,
        breakers: Breakers | None = None,
        semantic: SemanticCache | None = None,
    ) -> None:
        if not isinstance(operation, str) or not operation:
            msg = f"operation must be a non-empty str, got {operation!r}"
            raise ValueError(msg)
        self.config = resolve_config(config)
        if semantic is None and self.config.semantic_cache:
            msg = (
                "semantic_cache is true but no semantic cache was given: pass "
                "semantic=SemanticCache(embeddings) (it needs an embedding model), or set "
                "semantic_cache: false"
            )
            raise ValueError(msg)
        self._semantic = semantic
        if cache is None and self.config.enable_caching:
            cache = cache_manager_for(self.config)
        self._cache = cache if self.config.enable_caching else None
        self._gate = gate
        self._retry = retry
        self._tracker = resolve_tracker(tracker, self.config)
        self._prices = price_table(self.config)
        # Dollar budgets need the call's estimated cost; only a gate that has some gets it.
        self._budgeted = getattr(gate, "dollar_budgets", None) is not None
        self.operation = operation
        self.namespace = namespace
        self._clock = clock
        self._flight: SingleFlight[Any] = SingleFlight()
        self.provider_calls = 0
        self._target = target
        self._breakers = breakers

    @property
    def cache(self) -> CacheManager | None:
        """The cache manager in use, or ``None`` when caching is off."""
        return self._cache

    def cache_key(self, request: LLMRequest, *, stream: bool = False) -> str | None:
        """The key a call would use, or ``None`` when it would not be cached (policy, control).

        Example: ``service.cache_key(request)`` is ``None`` for a sampled request with
        ``cache_skip_sampled=True``, or inside ``cache_control("bypass")``.
        """
        return self._key(request, stream, current_control())

    def __repr__(self) -> str:
        return (
            f"<LLMService [provider calls: {self.provider_calls} | "
            f"cached={self._cache is not None}, gate={self._gate is not None}, "
            f"retry={self._retry is not None}]>"
        )

    # --- the shared, I/O-free core ----------------------------------------------------
    def _key(self, request: LLMRequest, stream: bool, control: CacheControl) -> str | None:
        cache = self._cache
        if cache is None or control.mode == "bypass":
            return None
        # The policy is this service's config (the manager may be a shared one with another).
        if not cache.enabled or (
            self.config.cache_skip_sampled and is_sampled(request.policy_params())
        ):
            return None
        try:
            key = request.key()
        except TypeError as exc:
            # An object in the request cannot be hashed into a complete key: uncached, not
            # an error for the caller (a wrong key would be worse than none).
            logger.debug("LLM request not cached: %s", describe_error(exc))
            return None
        if control.scope is not None:  # cache_scope(...): entries of one tenant/user only
            key = f"{key}:scope:{scope_digest(control.scope)}"
        return key + _STREAM_SUFFIX if stream else key

    def _begin(
        self,
        request: LLMRequest,
        stream: bool,
        control: CacheControl | None,
        on_cache: Callable[[bool], None] | None = None,
        scope: str | None = None,
        fallbacks: Sequence[Fallback] = (),
        on_target: Callable[[str], None] | None = None,
        call_fn: Callable[[], Any] | None = None,
    ) -> _Call:
        control = control if control is not None else current_control()
        call = _Call(self._clock(), self._key(request, stream, control), control)
        call.request = request
        call.on_cache = on_cache
        call.on_target = on_target
        enabled = self.config.breaker_enabled
        if call_fn is not None and (enabled is True or (enabled is None and fallbacks)):
            primary = Fallback(self._primary_target(request), request, call_fn)
            call.chain = [primary, *fallbacks]
        call.scope = scope if scope is not None else current_cost_scope()
        return call

    # --- fallback chains: the shared, I/O-free parts ----------------------------------
    def _primary_target(self, request: LLMRequest) -> Target:
        if self._target is not None:
            return self._target
        key = getattr(self._gate, "key", None)
        if not isinstance(key, str) or not key:
            # The provider id may hold a URL: a digest of it goes into names and logs.
            digest = hashlib.blake2b(str(request.provider).encode(), digest_size=3).hexdigest()
            key = f"{request.model}~{digest}"
        return Target(key, gate=self._gate)

    def breakers(self) -> Breakers:
        """The circuit breakers of this service's chains: ``breakers_for(config)`` unless given."""
        if self._breakers is None:
            self._breakers = breakers_for(self.config)
        return self._breakers

    def _deadline_at(self, call: _Call) -> float | None:
        seconds = self.config.request_deadline
        return None if seconds is None else call.started + seconds

    def _fail_over(
        self, alt: Fallback, exc: Exception, limited: set[str], breakers: Breakers
    ) -> bool:
        """True when ``exc`` from ``alt`` moves the call to the next target (counted)."""
        reason = failover_reason(exc)  # Overloaded: "gate", its queue is full or too slow
        if reason is None:
            return False
        if reason == "rate_limited":
            limited.add(alt.target.limit_scope)
        breakers.failover(alt.target.name, reason)
        self._tracker.incr("fallback.failovers", operation=self.operation)
        return True

    def _unavailable(
        self, refused: list[tuple[Fallback, Admission]], deadline_at: float | None
    ) -> float:
        """Every target was refused by its breaker: seconds to wait, or raise."""
        wait = max(0.001, min(a.retry_in for _, a in refused))
        if deadline_at is None or self._clock() + wait < deadline_at:
            return wait
        states = [(alt.target.name, a.state, a.retry_in) for alt, a in refused]
        raise ProviderUnavailable(states, reason="the earliest probe is past the deadline")

    def _all_failed(self, state: _Call, exc: BaseException) -> BaseException:
        """The error for the caller: ``ProviderUnavailable`` when every target failed.

        Only for the error of a pass in which no target answered (``state.chain_error``);
        any other error goes through unchanged. The result is also a ``type(exc)`` (see
        :meth:`~rag_perf_plugins.errors.ProviderUnavailable.after_failures`).
        """
        if exc is not state.chain_error or state.chain is None or not state.passed:
            return exc
        targets, errors = [], {}
        for alt in state.chain:
            name = alt.target.name
            found = state.passed.get(name)
            if found is None:
                continue
            targets.append((name, found[0], found[1]))
            if found[2] is not None:
                errors[name] = found[2]
        return ProviderUnavailable.after_failures(targets, errors, exc)

    def _probe_timeout(self, admission: Admission) -> float | None:
        """Seconds a probe may take (``breaker_probe_timeout``); ``None``: not a probe, no bound."""
        return self.config.breaker_probe_timeout if admission.probe else None

    @staticmethod
    def _recheck_needed(ticket: Any, alt: Fallback, state: _Call) -> bool:
        """Whether the call waited at its gate long enough to ask its breaker again."""
        admission = state.admissions.get(alt.target.name)
        if admission is None or admission.probe:
            return False
        wait = getattr(ticket, "queue_wait_s", None)
        return isinstance(wait, float | int) and wait > _RECHECK_AFTER_S

    def _recheck(self, ticket: Any, alt: Fallback, state: _Call) -> None:
        """After a wait at the gate: fail over (unsent) if the breaker opened meanwhile."""
        if self._recheck_needed(ticket, alt, state):
            found, retry_in = self.breakers().peek(alt.target.name)
            if found != "closed":
                raise OpenedMeanwhile(found, retry_in)

    async def _arecheck(self, ticket: Any, alt: Fallback, state: _Call) -> None:
        """Async twin of :meth:`_recheck`."""
        if self._recheck_needed(ticket, alt, state):
            found, retry_in = await self.breakers().apeek(alt.target.name)
            if found != "closed":
                raise OpenedMeanwhile(found, retry_in)

    def _bounded(
        self,
        one: Callable[[Fallback, _Call], R],
        alt: Fallback,
        admission: Admission,
        discard: Callable[[R], None] | None,
        state: _Call,
    ) -> R:
        """``one(alt, state)``; a probe is bounded by ``breaker_probe_timeout`` (``TimeoutError``).

        The blocking probe runs in a worker thread (with this context) on its own copy of
        ``state``, taken back when it ends in time. Past the bound the caller fails over
        and the worker is on its own: its late answer is dropped (``discard``: how to close
        it, e.g. an opened stream), never returned, cached or counted as the call's (usage,
        cost, gate wait); its late failure is not told to the breaker (the bound already
        counted the probe as a timeout; a later probe's outcome must not be taken for it).
        Its gate ticket is still reconciled with its own usage. While such a worker of the
        target still runs, the next probe is not sent (``ProbeStillRunning``). See
        :func:`~rag_perf_plugins.resilience.probe.run_probe`.
        """
        timeout = self._probe_timeout(admission)
        if timeout is None:
            return one(alt, state)
        own = dataclasses.replace(state, admissions=dict(state.admissions), watch=ProbeWatch())
        try:
            return run_probe(
                lambda: one(alt, own),
                alt.target.name,
                timeout=timeout,
                breakers=self.breakers(),
                discard=discard,
                watch=own.watch,
            )
        finally:
            _taken_back(state, own)

    async def _abounded(
        self,
        one: Callable[[Fallback, _Call], Awaitable[R]],
        alt: Fallback,
        admission: Admission,
        discard: Callable[[R], None] | None,
        state: _Call,
    ) -> R:
        """Async twin of :meth:`_bounded`: a probe past the bound is cancelled (no late work)."""
        timeout = self._probe_timeout(admission)
        if timeout is None:
            return await one(alt, state)
        return await arun_probe(lambda: one(alt, state), alt.target.name, timeout=timeout)

    def _stream_broke(self, exc: BaseException, state: _Call) -> None:
        """A stream of a chain failed after its first chunk: its target's breaker hears it."""
        if not isinstance(exc, Exception):
            return  # abandoned or cancelled: says nothing about the provider
        if state.chain is not None and state.target_name is not None and state.admission:
            self.breakers().record(
                state.target_name, outcome_of(exc), probe=False, since=state.admission.at
            )

    def _heard(self, exc: Exception, alt: Fallback, state: _Call) -> None:
        """Tell the target's breaker of a failure before its gate slot is freed.

        A caller waiting at the gate gets the slot next and asks the breaker again
        (:meth:`_recheck`): it must find the breaker already open. The chain reads
        ``state.heard`` instead of recording the failure a second time.
        """
        admission = state.admissions.get(alt.target.name)
        if state.chain is None or admission is None:
            return
        watch = state.watch
        with contextlib.nullcontext(True) if watch is None else watch.in_time() as in_time:
            if in_time:  # not a probe its caller left (the bound counted it as a timeout)
                moved = self.breakers().record(
                    alt.target.name, outcome_of(exc), probe=admission.probe, since=admission.at
                )
                state.heard = (exc, moved)

    async def _aheard(self, exc: Exception, alt: Fallback, state: _Call) -> None:
        """Async twin of :meth:`_heard`."""
        admission = state.admissions.get(alt.target.name)
        if state.chain is not None and admission is not None:
            moved = await self.breakers().arecord(
                alt.target.name, outcome_of(exc), probe=admission.probe, since=admission.at
            )
            state.heard = (exc, moved)

    async def _astream_broke(self, exc: BaseException, state: _Call) -> None:
        """Async twin of :meth:`_stream_broke`."""
        if not isinstance(exc, Exception):
            return  # abandoned or cancelled: says nothing about the provider
        if state.chain is not None and state.target_name is not None and state.admission:
            await self.breakers().arecord(
                state.target_name, outcome_of(exc), probe=False, since=state.admission.at
            )

    def _answered_by(self, call: _Call, alt: Fallback, index: int) -> None:
        if index == 0:
            return
        call.answered_by = alt.target.name
        call.answered_request = alt.request
        call.answered_gate = alt.target.gate
        if call.on_target is not None:
            call.on_target(alt.target.name)

    def _answer_keys(
        self, key: str, call: _Call, stream: bool
    ) -> list[tuple[str, str, str | None]]:
        """Where an answer is stored: ``(key, model, target)`` entries."""
        request = call.request
        model = request.model if request is not None else "unknown"
        if call.answered_by is None:
            return [(key, model, None)]
        keys: list[tuple[str, str, str | None]] = []
        fallback = call.answered_request
        if fallback is not None:
            own = self._key(fallback, stream, call.control)
            if own is not None:
                keys.append((own, fallback.model, None))
        if self.config.cache_fallback_answers:
            keys.append((key, model, call.answered_by))
        return keys

    @staticmethod
    def _entry(
        kind: str, data: Any, usage: Usage | None, target: str | None = None
    ) -> dict[str, Any]:
        entry = {"kind": kind, "data": data, "usage": (usage or Usage()).as_list()}
        if target is not None:
            entry["target"] = target  # a fallback's answer stored for the primary
        return entry

    @staticmethod
    def _read_entry(kind: str, entry: Any) -> tuple[Any, Usage] | None:
        if not isinstance(entry, dict) or entry.get("kind") != kind or "data" not in entry:
            return None
        raw = entry.get("usage")
        if not isinstance(raw, list) or len(raw) not in (2, 5):  # older entries: 2 counts
            return None
        for n in raw:  # ints, never bools (a loop: the generator cost ~1 us per hit)
            if type(n) is not int and (isinstance(n, bool) or not isinstance(n, int)):
                return None
        if kind == "stream" and not isinstance(entry["data"], list):
            return None
        return entry["data"], Usage(*raw)

    def _ttl(self, call: _Call) -> float | None:
        return call.control.ttl or self.config.cache_ttl

    def _encode(self, codec: ResultCodec[T], value: T) -> Any:
        try:
            return codec.encode(value)
        except Exception as exc:
            self._store_error(exc)
            return _UNSTORED

    def _tee(self, codec: ChunkCodec[C], chunk: C, recorded: list[Any] | None) -> list[Any] | None:
        if recorded is None:
            return None
        try:
            recorded.append(codec.encode(chunk))
        except Exception as exc:  # the consumer still gets every chunk; nothing is stored
            self._store_error(exc)
            return None
        return recorded

    def _store_error(self, exc: Exception) -> None:
        self._tracker.incr("cache.errors", operation=self.operation)
        logger.warning("LLM answer not stored (%s); the call goes on uncached", describe_error(exc))

    def _corrupt(self, exc: Exception) -> None:
        self._tracker.incr("cache.errors", operation=self.operation)
        logger.warning("unreadable LLM cache entry (%s); calling the provider", describe_error(exc))

    def _record(self, operation: str, call: _Call, *, error: bool) -> None:
        if call.on_cache is not None and call.cache_hit is not None:
            call.on_cache(call.cache_hit)
        usage = call.usage if call.cache_hit is not True and not call.coalesced else None
        cost, saved, unknown = self._costs(call, usage, error)
        span_tracer = spans.tracer()
        if span_tracer is not None:
            self._span(span_tracer, call, usage, (cost, saved, unknown), error=error)
        tracker = self._tracker
        if not tracker.enabled:
            return
        tracker.record(
            operation,
            self._clock() - call.started,
            error=error,
            tokens_in=usage.tokens_in if usage else 0,
            tokens_out=usage.tokens_out if usage else 0,
            cache_hit=call.cache_hit,
            queue_wait_s=call.queue_wait,
            retries=max(0, call.attempts - 1),
            tokens_saved=call.saved,
            ttft_s=call.ttft,
            abandoned=call.abandoned,
            cost_usd=cost,
            cost_saved_usd=saved,
            cost_unknown=unknown,
            model=call.request.model if call.request is not None else None,
        )
        if call.cache_hit is True:
            if call.semantic is None:
                tracker.incr("cache.hits", operation=operation)
            else:  # counted apart from exact hits
                tracker.incr("cache.semantic_hits", operation=operation)
                match = call.semantic
                tracker.record_semantic_hit(operation, match.similarity, match.prompt)
        elif call.cache_hit is False:
            tracker.incr("cache.misses", operation=operation)
        if call.coalesced:
            tracker.incr("coalesced", operation=operation)
        probe = call.probe
        if probe is not None and probe.refused:  # semantic candidates the guards refused
            for rule, n in probe.refused.items():
                tracker.incr(f"cache.semantic_refused.{rule}", n, operation=operation)

    def _costs(self, call: _Call, usage: Usage | None, error: bool) -> tuple[float, float, bool]:
        """USD spent and saved by ``call``, and whether its cost is unknown.

        Spent: the provider's usage of this call at the model's prices. Saved: the stored
        usage of the answer a hit (or a coalesced call) replays, at the same prices. A
        model without a price, or a completed provider call that reported no usage, is
        unknown (never $0). A failed call spent nothing we can see. A fallback's answer is
        priced as the fallback model's.
        """
        request = call.answered_request or call.request
        if request is None:
            return 0.0, 0.0, False
        if usage is None and call.saved_usage is None:
            unknown = not error and call.attempts > 0 and call.cache_hit is not True
            return 0.0, 0.0, unknown and not call.coalesced
        u = usage if usage is not None else call.saved_usage
        assert u is not None
        cost = self._prices.chat_cost(
            request.model,
            u.tokens_in,
            u.tokens_out,
            cached_in=u.cached_in,
            reasoning=u.reasoning,
            cache_write=u.cache_write,
        )
        if cost is None:
            return 0.0, 0.0, True
        return (cost, 0.0, False) if usage is not None else (0.0, cost, False)

    def _span(
        self,
        tracer: Any,
        call: _Call,
        usage: Usage | None,
        costs: tuple[float, float, bool],
        *,
        error: bool,
    ) -> None:
        """One OpenTelemetry span of this call (see :mod:`rag_perf_plugins.tracking.spans`)."""
        request = call.request
        attributes: dict[str, Any] = {
            "gen_ai.provider.name": spans.provider_name(request.provider if request else None),
            "gen_ai.usage.input_tokens": usage.tokens_in if usage else 0,
            "gen_ai.usage.output_tokens": usage.tokens_out if usage else 0,
            "rag_perf.retries": max(0, call.attempts - 1),
            "rag_perf.coalesced": call.coalesced,
            "rag_perf.tokens_saved": call.saved,
        }
        if costs[2]:
            attributes["rag_perf.cost.unknown"] = True
        else:
            attributes["rag_perf.cost_usd"] = costs[0]
            attributes["rag_perf.cost_saved_usd"] = costs[1]
        if call.cache_hit is not None:
            attributes["rag_perf.cache.hit"] = call.cache_hit
            if call.cache_hit:
                match = call.semantic
                attributes["rag_perf.cache.hit_kind"] = "exact" if match is None else "semantic"
                if match is not None:
                    attributes["rag_perf.cache.similarity"] = match.similarity
                attributes["gen_ai.usage.cache_read.input_tokens"] = 0
        if call.queue_wait is not None:
            attributes["rag_perf.queue_wait_s"] = call.queue_wait
        if call.ttft is not None:
            attributes["rag_perf.ttft_s"] = call.ttft
        if call.abandoned:
            attributes["rag_perf.stream.abandoned"] = True
        if call.answered_by is not None:
            attributes["rag_perf.fallback.target"] = call.answered_by
        model = request.model if request else "unknown"
        spans.emit(tracer, "chat", model, self._clock() - call.started, attributes, error=error)

    def _admitted(self, ticket: Any, call: _Call) -> None:
        """One provider request goes out now (behind ``ticket`` when a gate gave one)."""
        if ticket is not None:
            wait = getattr(ticket, "queue_wait_s", None)
            if isinstance(wait, float | int):
                call.queue_wait = (call.queue_wait or 0.0) + float(wait)
        self.provider_calls += 1

    def _answered(self, codec: ResultCodec[T], value: T, ticket: Any, call: _Call) -> T:
        """The provider's answer: its usage read and reconciled with the gate's estimate."""
        call.usage = codec.usage(value)
        if ticket is not None:
            reconcile_ticket(ticket, self._total(call.usage))
            self._reconcile_cost(ticket, call)
        return value

    @staticmethod
    def _total(usage: Usage | None) -> int | None:
        return None if usage is None else usage.total

    def _spend(self, request: LLMRequest, call: _Call, gate: Any = None) -> dict[str, Any]:
        """The gate's dollar-budget arguments for ``request`` (none when it has no budgets).

        The estimate is the most the call can cost: its estimated input tokens at the
        input price and its output limit (``max_tokens``, else the model's
        ``max_output_tokens`` in the price table, else 16,384) at the dearer of the output
        and reasoning prices. ``None`` when the model has no price (the gate refuses it).
        ``gate``: a fallback target's gate (``None``: this service's).
        """
        if not self._has_budgets(gate):
            return {}
        price = self._prices.get(request.model)
        if price is None or price.input is None or price.output is None:
            self._prices.chat_cost(request.model, 0, 0)  # the one warning per model
            return {"cost_usd": None, "model": request.model, "tenant": call.scope}
        out = request.max_output_tokens() or price.max_output_tokens or _DEFAULT_MAX_OUTPUT
        dear_reasoning = price.reasoning is not None and price.reasoning > price.output
        cost = price.chat_cost(
            request.estimated_input_tokens(), out, reasoning=out if dear_reasoning else 0
        )
        return {"cost_usd": cost, "model": request.model, "tenant": call.scope}

    def _has_budgets(self, gate: Any) -> bool:
        if gate is None:
            return self._budgeted
        return getattr(gate, "dollar_budgets", None) is not None

    def _actual_cost(
        self, call: _Call, request: LLMRequest | None = None, gate: Any = None
    ) -> float | None:
        """What the provider call of ``call`` cost (USD), for the gate; ``None``: unknown.

        ``request`` and ``gate``: a fallback target's (``None``: the answering request and
        this service's gate).
        """
        usage = call.usage
        request = request or call.answered_request or call.request
        if not self._has_budgets(gate) or usage is None or request is None:
            return None
        return self._prices.chat_cost(
            request.model,
            usage.tokens_in,
            usage.tokens_out,
            cached_in=usage.cached_in,
            reasoning=usage.reasoning,
            cache_write=usage.cache_write,
        )

    def _reconcile_cost(
        self, ticket: Any, call: _Call, request: LLMRequest | None = None, gate: Any = None
    ) -> None:
        cost = self._actual_cost(call, request, gate)
        if cost is not None and ticket is not None:
            ticket.reconcile_cost(cost)

    async def _areconcile_cost(
        self, ticket: Any, call: _Call, request: LLMRequest | None = None, gate: Any = None
    ) -> None:
        cost = self._actual_cost(call, request, gate)
        if cost is not None and ticket is not None:
            await ticket.areconcile_cost(cost)

    # --- the semantic cache: after an exact miss only -----------------------------------
    def _probe(self, request: LLMRequest, call: _Call) -> Probe | None:
        """The semantic cache's view of ``request`` when this call opted in, else ``None``."""
        semantic = self._semantic
        if semantic is None:
            return None
        wanted = call.control.semantic
        if not (self.config.semantic_cache if wanted is None else wanted):
            return None
        try:
            return semantic.probe(request, call.control.scope, semantic.version())
        except TypeError as exc:  # an object in the request: no complete partition
            logger.debug("LLM request not cached semantically: %s", describe_error(exc))
            return None

    async def _aprobe(self, request: LLMRequest, call: _Call) -> Probe | None:
        """Async :meth:`_probe` (the namespace version may be read off the loop)."""
        semantic = self._semantic
        if semantic is None:
            return None
        wanted = call.control.semantic
        if not (self.config.semantic_cache if wanted is None else wanted):
            return None
        try:
            return semantic.probe(request, call.control.scope, await semantic.aversion())
        except TypeError as exc:
            logger.debug("LLM request not cached semantically: %s", describe_error(exc))
            return None

    def _semantic_hit(
        self, match: SemanticMatch | None, entry: Any, codec: ResultCodec[T], call: _Call
    ) -> T | _Miss:
        """The answer stored under ``match``'s key, decoded as a semantic hit, or a miss."""
        if match is None:
            return _MISS
        decode_semantic = getattr(codec, "decode_semantic", None)
        decode: Callable[[Any], T] = (
            functools.partial(decode_semantic, match=match)
            if callable(decode_semantic)
            else codec.decode
        )
        hit = self._hit("result", entry, decode, call)
        if not isinstance(hit, _Miss):
            call.semantic = match
        return hit

    def _hit(
        self,
        kind: str,
        entry: Any,
        decode: Callable[[Any], V],
        call: _Call,
        *,
        count_corrupt: bool = True,
    ) -> V | _Miss:
        """``decode`` of a stored ``kind`` entry, counted as a hit; :data:`_MISS` when none.

        An entry of the wrong shape is a miss; one that ``decode`` refuses is counted as
        corrupt (unless ``count_corrupt`` is false: :meth:`cached`) and is a miss too.
        """
        found = self._read_entry(kind, entry)
        if found is None:
            return _MISS
        try:
            value = decode(found[0])
        except Exception as exc:
            if count_corrupt:
                self._corrupt(exc)
            return _MISS
        call.cache_hit, call.saved, call.saved_usage = True, found[1].total, found[1]
        target = entry.get("target")
        if isinstance(target, str):
            call.answered_by = target
            if call.on_target is not None:
                call.on_target(target)
        return value

    @staticmethod
    def _followed(
        codec: ResultCodec[T],
        call: _Call,
        value: T,
        data: Any,
        usage: Usage | None,
        target: str | None = None,
    ) -> T:
        """What a caller returns from the flight: its own answer, or the leader's (decoded)."""
        if call.led or call.cache_hit or data is _UNSTORED:
            return value
        if target is not None and call.answered_by is None:
            call.answered_by = target
            if call.on_target is not None:
                call.on_target(target)
        # A follower of another caller's request: billed nothing, saved what the leader paid.
        call.coalesced, call.saved = True, usage.total if usage is not None else 0
        call.saved_usage = usage
        return codec.decode(data)

    def _passed(self, codec: ChunkCodec[C], chunk: C, call: _Call, tee: _Tee) -> C:
        """One live chunk on its way to the consumer: TTFT, teed for the cache, kept."""
        if call.ttft is None:
            call.ttft = self._clock() - call.started
        tee.recorded = self._tee(codec, chunk, tee.recorded)
        tee.live.append(chunk)
        return chunk

    def _ended(self, codec: ChunkCodec[C], tee: _Tee, ticket: Any, call: _Call) -> list[Any] | None:
        """A live stream ran to its end: its usage, reconciled; the chunks to store, if any."""
        call.usage = codec.usage(tee.live)
        reconcile_ticket(ticket, self._total(call.usage))
        self._reconcile_cost(ticket, call, call.answered_request, call.answered_gate)
        return tee.recorded if call.control.write else None

    @staticmethod
    def _broke(exc: BaseException, call: _Call) -> tuple[Any, Any, Any]:
        """An exception left a stream: how to close the provider stream behind it.

        ``GeneratorExit`` is the consumer abandoning the stream (``call.abandoned``; the
        provider stream closes as if it ended, and it is not an error); anything else
        closes it with the error.
        """
        if isinstance(exc, GeneratorExit):
            call.abandoned = True
            return None, None, None
        return type(exc), exc, exc.__traceback__

    # --- storing: sync and async shells -----------------------------------------------
    def _put(
        self,
        cache: CacheManager,
        key: str,
        kind: str,
        data: Any,
        call: _Call,
        model: str,
        target: str | None = None,
    ) -> None:
        entry, ttl = self._entry(kind, data, call.usage, target), self._ttl(call)
        try:
            with applied(call.control):
                cache.set(key, entry, ttl, namespace=self.namespace, model=model)
        except Exception as exc:  # an unstorable value: the call goes on uncached
            self._store_error(exc)

    async def _aput(
        self,
        cache: CacheManager,
        key: str,
        kind: str,
        data: Any,
        call: _Call,
        model: str,
        target: str | None = None,
    ) -> None:
        entry, ttl = self._entry(kind, data, call.usage, target), self._ttl(call)
        try:
            with applied(call.control):
                await cache.aset(key, entry, ttl, namespace=self.namespace, model=model)
        except Exception as exc:  # an unstorable value: the call goes on uncached
            self._store_error(exc)

    # --- the memory-tier hit alone ----------------------------------------------------
    def cached(
        self,
        request: LLMRequest,
        codec: ResultCodec[T],
        *,
        control: CacheControl | None = None,
        cost_scope: str | None = None,
        on_target: Callable[[str], None] | None = None,
    ) -> T | None:
        """The exact cache's answer to ``request`` if the memory tier holds it, else ``None``.

        Example: ``service.cached(request, codec) or service.generate(request, call, codec)``.
        A hit is decoded and recorded exactly as :meth:`generate` records one (tracker,
        costs saved, span, ``on_target`` for an answer a fallback gave); ``None`` records
        and counts nothing, not even a corrupt entry, so the caller's general path after it
        counts everything once. No I/O, no gate, no thread hop: callable from a coroutine.
        Adapters use it to answer a hit before their framework's per-call machinery.
        """
        cache = self._cache
        if cache is None:
            return None
        state = self._begin(request, False, control, None, cost_scope, (), on_target)
        if state.key is None or not state.control.read:
            return None
        decoded: list[T] = []

        def accept(entry: Any) -> bool:  # counted by the cache only when it is a usable hit
            hit = self._hit("result", entry, codec.decode, state, count_corrupt=False)
            if isinstance(hit, _Miss):
                return False
            decoded.append(hit)
            return True

        with applied(state.control):
            cache.peek(state.key, namespace=self.namespace, accept=accept)
        if not decoded:
            return None
        self._record(self.operation, state, error=False)
        return decoded[0]

    # --- non-streamed calls: sync shell -----------------------------------------------
    def generate(
        self,
        request: LLMRequest,
        call: Callable[[], T],
        codec: ResultCodec[T],
        *,
        control: CacheControl | None = None,
        on_cache: Callable[[bool], None] | None = None,
        cost_scope: str | None = None,
        fallbacks: Sequence[Fallback] = (),
        on_target: Callable[[str], None] | None = None,
    ) -> T:
        """The answer to ``request``: from the cache, another caller's flight, or ``call()``.

        ``call`` makes exactly one provider request (no retries of its own); it runs behind
        the gate and inside the retry policy, in this thread. ``control`` (bypass, refresh,
        no-store, ttl) applies to this call only; ``None``: the
        :func:`~rag_perf_plugins.cache.cache_control` in effect. The same keyword exists on
        :meth:`agenerate`, :meth:`stream` and :meth:`astream` (for streams it is read when
        iteration starts and applied to the cache operations only, never to the consumer).

        ``on_cache`` (all four methods): called once with ``True`` (hit) or ``False`` (miss,
        coalesced onto another caller's request included) when the call ends, if the cache
        was consulted; adapters pass it to tell a framework run what happened.

        ``cost_scope`` (all four methods): the tenant or user the call is charged to in the
        dollar budgets; ``None``: the :func:`~rag_perf_plugins.cost.cost_scope` in effect.

        ``fallbacks`` (all four methods): other targets to try in order (see the class
        docstring); ``on_target``: called with a fallback target's name when it answered.
        """
        state = self._begin(
            request, False, control, on_cache, cost_scope, fallbacks, on_target, call
        )
        op = self.operation
        try:
            value = self._generate(request, call, codec, state)
        except BaseException:
            self._record(op, state, error=True)
            raise
        self._record(op, state, error=False)
        return value

    # unasync: generated from _agenerate
    def _generate(
        self,
        request: LLMRequest,
        call: Callable[[], T],
        codec: ResultCodec[T],
        state: _Call,
    ) -> T:
        key, cache = state.key, self._cache
        if key is None or cache is None:
            return self._provider(request, call, codec, state)
        if state.control.read:
            with applied(state.control):
                entry = cache.get(key, namespace=self.namespace)
            hit = self._hit("result", entry, codec.decode, state)
            if not isinstance(hit, _Miss):
                return hit
        state.cache_hit = False
        semantic = self._semantic
        probe = state.probe = None if semantic is None else self._probe(request, state)
        if semantic is not None and probe is not None and state.control.read:
            # An exact miss: the semantic lookup (embedding once; reused when storing).
            with applied(state.control):
                match = semantic.lookup(probe)
            if match is not None:
                with applied(state.control):
                    entry = cache.get(match.key, namespace=self.namespace)
                hit = self._semantic_hit(match, entry, codec, state)
                if not isinstance(hit, _Miss):
                    return hit

        def reread() -> tuple[T, Any, Usage | None, str | None] | None:
            with applied(state.control):
                entry = cache.get(key, namespace=self.namespace)
            found = self._read_entry("result", entry)
            late = self._hit("result", entry, codec.decode, state)
            if found is not None and not isinstance(late, _Miss):
                return late, found[0], found[1], state.answered_by
            return None

        def lead() -> tuple[T, Any, Usage | None, str | None]:
            if state.control.read:
                # Another leader may have stored the answer between our lookup and our
                # claim (its flight had just ended): read again before calling the provider.
                stored = reread()
                if stored is not None:
                    return stored
            # Identical misses in other processes wait for one of them (cross_process_lease).
            flight = cache.shared_flight(key, namespace=self.namespace, enabled=state.control.read)
            with flight as leads:
                if not leads:  # another process called the provider and stored the answer
                    stored = reread()
                    if stored is not None:
                        return stored
                state.led = True
                value = self._provider(request, call, codec, state)
                data = self._encode(codec, value)
                if data is not _UNSTORED and state.control.write and not state.cache_hit:
                    for where, model, target in self._answer_keys(key, state, False):
                        self._put(cache, where, "result", data, state, model, target)
                    if semantic is not None and probe is not None and state.answered_by is None:
                        with applied(state.control):
                            semantic.store(probe, key, self._ttl(state))
                return value, data, state.usage, state.answered_by

        return self._followed(codec, state, *self._flight.do(key, lead))

    # unasync: generated from _aprovider
    def _provider(
        self,
        request: LLMRequest,
        call: Callable[[], T],
        codec: ResultCodec[T],
        state: _Call,
    ) -> T:
        gate, retry = self._gate, self._retry
        chain = state.chain
        if chain is not None:

            def one(alt: Fallback, own: _Call) -> T:
                return self._attempt(alt, codec, own)

            def looked_up(alt: Fallback) -> T | _Miss:
                return self._lookup_fallback(alt, codec, state)

            def run_chain() -> T:
                return self._chain(chain, one, looked_up, state)

            try:
                return retry.call(run_chain) if retry is not None else run_chain()
            except Exception as exc:
                failed = self._all_failed(state, exc)
                if failed is exc:
                    raise
                raise failed from exc
        tokens = request.estimated_tokens() if gate is not None else 0
        spend = self._spend(request, state)

        def attempt() -> T:
            state.attempts += 1
            if gate is None:
                self.provider_calls += 1
                return self._answered(codec, call(), None, state)
            with gate.acquire(tokens=tokens, **spend) as ticket:
                self._admitted(ticket, state)
                try:
                    with gate_listener(gate):  # a success's rate-limit headers feed the gate
                        answer = call()
                except Exception as exc:
                    observe_failure(gate, exc)  # a 429's Retry-After pauses everyone
                    raise
                value = self._answered(codec, answer, None, state)
                reconcile_ticket(ticket, self._total(state.usage))
                self._reconcile_cost(ticket, state)
                return value

        return retry.call(attempt) if retry is not None else attempt()

    # --- non-streamed calls: async shell ----------------------------------------------
    async def agenerate(
        self,
        request: LLMRequest,
        call: Callable[[], Awaitable[T]],
        codec: ResultCodec[T],
        *,
        control: CacheControl | None = None,
        blocking: Callable[[], T] | None = None,
        on_cache: Callable[[bool], None] | None = None,
        cost_scope: str | None = None,
        fallbacks: Sequence[Fallback] = (),
        on_target: Callable[[str], None] | None = None,
        blocking_fallbacks: Sequence[Fallback] = (),
    ) -> T:
        """Async twin of :meth:`generate`; never blocks the event loop (cache I/O included).

        A cancelled caller stops waiting; the provider call it led goes on for the callers
        coalesced onto it and is stored when it completes.

        ``blocking``: the blocking twin of ``call``. With ``async_enabled: false`` in the
        config, the call runs :meth:`generate` with it in a worker thread instead, with
        ``blocking_fallbacks`` (the fallbacks with blocking calls).
        """
        if blocking is not None and not self.config.async_enabled:
            return await run_blocking(
                self.generate,
                request,
                blocking,
                codec,
                control=control,
                on_cache=on_cache,
                cost_scope=cost_scope if cost_scope is not None else current_cost_scope(),
                fallbacks=blocking_fallbacks,
                on_target=on_target,
            )
        state = self._begin(
            request, False, control, on_cache, cost_scope, fallbacks, on_target, call
        )
        op = self.operation
        try:
            value = await self._agenerate(request, call, codec, state)
        except BaseException:
            self._record(op, state, error=True)
            raise
        self._record(op, state, error=False)
        return value

    async def _agenerate(
        self,
        request: LLMRequest,
        call: Callable[[], Awaitable[T]],
        codec: ResultCodec[T],
        state: _Call,
    ) -> T:
        key, cache = state.key, self._cache
        if key is None or cache is None:
            return await self._aprovider(request, call, codec, state)
        if state.control.read:
            with applied(state.control):
                entry = await cache.aget(key, namespace=self.namespace)
            hit = self._hit("result", entry, codec.decode, state)
            if not isinstance(hit, _Miss):
                return hit
        state.cache_hit = False
        semantic = self._semantic
        probe = state.probe = None if semantic is None else await self._aprobe(request, state)
        if semantic is not None and probe is not None and state.control.read:
            # An exact miss: the semantic lookup (embedding once; reused when storing).
            with applied(state.control):
                match = await semantic.alookup(probe)
            if match is not None:
                with applied(state.control):
                    entry = await cache.aget(match.key, namespace=self.namespace)
                hit = self._semantic_hit(match, entry, codec, state)
                if not isinstance(hit, _Miss):
                    return hit

        async def reread() -> tuple[T, Any, Usage | None, str | None] | None:
            with applied(state.control):
                entry = await cache.aget(key, namespace=self.namespace)
            found = self._read_entry("result", entry)
            late = self._hit("result", entry, codec.decode, state)
            if found is not None and not isinstance(late, _Miss):
                return late, found[0], found[1], state.answered_by
            return None

        async def lead() -> tuple[T, Any, Usage | None, str | None]:
            if state.control.read:
                # Another leader may have stored the answer between our lookup and our
                # claim (its flight had just ended): read again before calling the provider.
                stored = await reread()
                if stored is not None:
                    return stored
            # Identical misses in other processes wait for one of them (cross_process_lease).
            flight = cache.ashared_flight(key, namespace=self.namespace, enabled=state.control.read)
            async with flight as leads:
                if not leads:  # another process called the provider and stored the answer
                    stored = await reread()
                    if stored is not None:
                        return stored
                state.led = True
                value = await self._aprovider(request, call, codec, state)
                data = self._encode(codec, value)
                if data is not _UNSTORED and state.control.write and not state.cache_hit:
                    for where, model, target in self._answer_keys(key, state, False):
                        await self._aput(cache, where, "result", data, state, model, target)
                    if semantic is not None and probe is not None and state.answered_by is None:
                        with applied(state.control):
                            await semantic.astore(probe, key, self._ttl(state))
                return value, data, state.usage, state.answered_by

        return self._followed(codec, state, *await self._flight.ado(key, lead))

    async def _aprovider(
        self,
        request: LLMRequest,
        call: Callable[[], Awaitable[T]],
        codec: ResultCodec[T],
        state: _Call,
    ) -> T:
        gate, retry = self._gate, self._retry
        chain = state.chain
        if chain is not None:

            async def one(alt: Fallback, own: _Call) -> T:
                return await self._aattempt(alt, codec, own)

            async def looked_up(alt: Fallback) -> T | _Miss:
                return await self._alookup_fallback(alt, codec, state)

            async def run_chain() -> T:
                return await self._achain(chain, one, looked_up, state)

            try:
                return await retry.acall(run_chain) if retry is not None else await run_chain()
            except Exception as exc:
                failed = self._all_failed(state, exc)
                if failed is exc:
                    raise
                raise failed from exc
        tokens = request.estimated_tokens() if gate is not None else 0
        spend = self._spend(request, state)

        async def attempt() -> T:
            state.attempts += 1
            if gate is None:
                self.provider_calls += 1
                return self._answered(codec, await call(), None, state)
            async with gate.aacquire(tokens=tokens, **spend) as ticket:
                self._admitted(ticket, state)
                try:
                    with gate_listener(gate):  # a success's rate-limit headers feed the gate
                        answer = await call()
                except Exception as exc:
                    await aobserve_failure(gate, exc)  # a 429's Retry-After pauses everyone
                    raise
                value = self._answered(codec, answer, None, state)
                await areconcile_ticket(ticket, self._total(state.usage))
                await self._areconcile_cost(ticket, state)
                return value

        return await retry.acall(attempt) if retry is not None else await attempt()

    # --- fallback chains: generated blocking twins -------------------------------------
    # unasync: generated from _achain
    def _chain(
        self,
        chain: list[Fallback],
        one: Callable[[Fallback, _Call], R],
        looked_up: Callable[[Fallback], R | _Miss] | None,
        state: _Call,
        discard: Callable[[R], None] | None = None,
    ) -> R:
        breakers = self.breakers()
        deadline_at = self._deadline_at(state)
        while True:
            limited: set[str] = set()
            refused: list[tuple[Fallback, Admission]] = []
            last: Exception | None = None
            passed = state.passed
            passed.clear()
            for index, alt in enumerate(chain):
                if index > 0 and looked_up is not None:
                    found = looked_up(alt)
                    if not isinstance(found, _Miss):
                        return found
                target = alt.target
                if target.limit_scope in limited:
                    breakers.failover(target.name, "same_rate_limit_scope")
                    passed[target.name] = ("skipped", 0.0, "its rate-limit scope answered 429")
                    continue
                if index < len(chain) - 1 and _paused(target.gate):
                    breakers.failover(target.name, "paused")
                    passed[target.name] = ("paused", 0.0, "paused by a Retry-After")
                    continue
                admission = breakers.admit(target.name)
                if not admission.allowed:
                    refused.append((alt, admission))
                    breakers.failover(target.name, "open")
                    passed[target.name] = (admission.state, admission.retry_in, None)
                    continue
                state.admissions[target.name] = admission
                try:
                    value = self._bounded(one, alt, admission, discard, state)
                except OpenedMeanwhile as opened:
                    state.attempts -= 1  # nothing was sent
                    refused.append((alt, Admission(False, False, opened.state, opened.retry_in)))
                    breakers.failover(target.name, "open")
                    passed[target.name] = (opened.state, opened.retry_in, None)
                    continue
                except Exception as exc:
                    heard, state.heard = state.heard, None
                    if heard is not None and heard[0] is exc:
                        moved = heard[1]  # heard inside the gate, before its slot was freed
                    else:
                        moved = breakers.record(
                            target.name, outcome_of(exc), probe=admission.probe, since=admission.at
                        )
                    now_state = "open" if moved is not None else admission.state
                    retry_in = moved.cooldown_s if moved is not None else 0.0
                    passed[target.name] = (now_state, retry_in, failed_note(exc))
                    if not self._fail_over(alt, exc, limited, breakers):
                        raise
                    last = exc
                    continue
                breakers.record(target.name, "success", probe=admission.probe, since=admission.at)
                state.admission, state.target_name = admission, target.name
                self._answered_by(state, alt, index)
                return value
            if last is not None:
                state.chain_error = last
                raise last  # the retry policy decides: back off and run the chain again, or not
            time.sleep(self._unavailable(refused, deadline_at))

    # unasync: generated from _aattempt
    def _attempt(self, alt: Fallback, codec: ResultCodec[T], state: _Call) -> T:
        state.attempts += 1
        gate = alt.target.gate
        answer: T
        if gate is None:
            self.provider_calls += 1
            answer = alt.call()
            return self._answered(codec, answer, None, state)
        tokens = alt.request.estimated_tokens()
        spend = self._spend(alt.request, state, gate)
        with gate.acquire(tokens=tokens, **spend) as ticket:
            self._recheck(ticket, alt, state)  # the breaker may have opened meanwhile
            self._admitted(ticket, state)
            try:
                with gate_listener(gate):  # a success's rate-limit headers feed the gate
                    answer = alt.call()
            except Exception as exc:
                observe_failure(gate, exc)  # a 429's Retry-After pauses this target
                self._heard(exc, alt, state)  # heard before the slot is freed
                raise
            value = self._answered(codec, answer, None, state)
            reconcile_ticket(ticket, self._total(state.usage))
            self._reconcile_cost(ticket, state, alt.request, gate)
            return value

    # unasync: generated from _alookup_fallback
    def _lookup_fallback(self, alt: Fallback, codec: ResultCodec[T], state: _Call) -> T | _Miss:
        cache = self._cache
        if cache is None or not state.control.read:
            return _MISS
        key = self._key(alt.request, False, state.control)
        if key is None:
            return _MISS
        with applied(state.control):
            entry = cache.get(key, namespace=self.namespace)
        hit = self._hit("result", entry, codec.decode, state)
        if not isinstance(hit, _Miss):
            state.answered_by, state.answered_request = alt.target.name, alt.request
            if state.on_target is not None:
                state.on_target(alt.target.name)
        return hit

    # --- fallback chains: async source of the generated blocking twins ----------------
    async def _achain(
        self,
        chain: list[Fallback],
        one: Callable[[Fallback, _Call], Awaitable[R]],
        looked_up: Callable[[Fallback], Awaitable[R | _Miss]] | None,
        state: _Call,
        discard: Callable[[R], None] | None = None,
    ) -> R:
        """One pass over the chain (again while every breaker is open, within the deadline).

        ``discard``: closes an answer that came too late (a probe past its bound).
        """
        breakers = self.breakers()
        deadline_at = self._deadline_at(state)
        while True:
            limited: set[str] = set()
            refused: list[tuple[Fallback, Admission]] = []
            last: Exception | None = None
            passed = state.passed
            passed.clear()
            for index, alt in enumerate(chain):
                if index > 0 and looked_up is not None:
                    found = await looked_up(alt)
                    if not isinstance(found, _Miss):
                        return found
                target = alt.target
                if target.limit_scope in limited:
                    breakers.failover(target.name, "same_rate_limit_scope")
                    passed[target.name] = ("skipped", 0.0, "its rate-limit scope answered 429")
                    continue
                if index < len(chain) - 1 and await _apaused(target.gate):
                    breakers.failover(target.name, "paused")
                    passed[target.name] = ("paused", 0.0, "paused by a Retry-After")
                    continue
                admission = await breakers.aadmit(target.name)
                if not admission.allowed:
                    refused.append((alt, admission))
                    breakers.failover(target.name, "open")
                    passed[target.name] = (admission.state, admission.retry_in, None)
                    continue
                state.admissions[target.name] = admission
                try:
                    value = await self._abounded(one, alt, admission, discard, state)
                except OpenedMeanwhile as opened:
                    state.attempts -= 1  # nothing was sent
                    refused.append((alt, Admission(False, False, opened.state, opened.retry_in)))
                    breakers.failover(target.name, "open")
                    passed[target.name] = (opened.state, opened.retry_in, None)
                    continue
                except Exception as exc:
                    heard, state.heard = state.heard, None
                    if heard is not None and heard[0] is exc:
                        moved = heard[1]  # heard inside the gate, before its slot was freed
                    else:
                        moved = await breakers.arecord(
                            target.name, outcome_of(exc), probe=admission.probe, since=admission.at
                        )
                    now_state = "open" if moved is not None else admission.state
                    retry_in = moved.cooldown_s if moved is not None else 0.0
                    passed[target.name] = (now_state, retry_in, failed_note(exc))
                    if not self._fail_over(alt, exc, limited, breakers):
                        raise
                    last = exc
                    continue
                await breakers.arecord(
                    target.name, "success", probe=admission.probe, since=admission.at
                )
                state.admission, state.target_name = admission, target.name
                self._answered_by(state, alt, index)
                return value
            if last is not None:
                state.chain_error = last
                raise last  # the retry policy decides: back off and run the chain again, or not
            await asyncio.sleep(self._unavailable(refused, deadline_at))

    async def _aattempt(self, alt: Fallback, codec: ResultCodec[T], state: _Call) -> T:
        """One provider request to ``alt``'s target, behind its gate."""
        state.attempts += 1
        gate = alt.target.gate
        answer: T
        if gate is None:
            self.provider_calls += 1
            answer = await alt.call()
            return self._answered(codec, answer, None, state)
        tokens = alt.request.estimated_tokens()
        spend = self._spend(alt.request, state, gate)
        async with gate.aacquire(tokens=tokens, **spend) as ticket:
            await self._arecheck(ticket, alt, state)  # the breaker may have opened meanwhile
            self._admitted(ticket, state)
            try:
                with gate_listener(gate):  # a success's rate-limit headers feed the gate
                    answer = await alt.call()
            except Exception as exc:
                await aobserve_failure(gate, exc)  # a 429's Retry-After pauses this target
                await self._aheard(exc, alt, state)  # heard before the slot is freed
                raise
            value = self._answered(codec, answer, None, state)
            await areconcile_ticket(ticket, self._total(state.usage))
            await self._areconcile_cost(ticket, state, alt.request, gate)
            return value

    async def _alookup_fallback(
        self, alt: Fallback, codec: ResultCodec[T], state: _Call
    ) -> T | _Miss:
        """A fallback's own cached answer (the primary failed or is open), or a miss."""
        cache = self._cache
        if cache is None or not state.control.read:
            return _MISS
        key = self._key(alt.request, False, state.control)
        if key is None:
            return _MISS
        with applied(state.control):
            entry = await cache.aget(key, namespace=self.namespace)
        hit = self._hit("result", entry, codec.decode, state)
        if not isinstance(hit, _Miss):
            state.answered_by, state.answered_request = alt.target.name, alt.request
            if state.on_target is not None:
                state.on_target(alt.target.name)
        return hit

    # --- streams: sync shell ----------------------------------------------------------
    def stream(
        self,
        request: LLMRequest,
        open_stream: Callable[[], Iterator[C]],
        codec: ChunkCodec[C],
        *,
        control: CacheControl | None = None,
        on_cache: Callable[[bool], None] | None = None,
        cost_scope: str | None = None,
        fallbacks: Sequence[Fallback] = (),
        on_target: Callable[[str], None] | None = None,
    ) -> Generator[C, None, None]:
        """Chunks of the answer: replayed from the cache, or teed from ``open_stream()``.

        ``open_stream`` starts one provider stream (no retries of its own). Close the
        returned generator (or stop iterating and drop it) to abandon the stream: the
        provider stream is closed and nothing is stored.

        With ``fallbacks``, opening the stream (up to its first chunk) fails over; once a
        chunk was passed on, an error reaches the consumer (never a second model's text).
        """
        state = self._begin(
            request, True, control, on_cache, cost_scope, fallbacks, on_target, open_stream
        )
        op = f"{self.operation}.stream"
        key, cache = state.key, self._cache
        if key is not None and cache is not None and state.control.read:
            with applied(state.control):
                entry = cache.get(key, namespace=self.namespace)
            hit = self._hit("stream", entry, functools.partial(_first_decoded, codec), state)
            if not isinstance(hit, _Miss):
                yield from self._replay(*hit, codec, state, op)
                return
        if key is not None:
            state.cache_hit = False
        stack, ticket, chunks_in, chunk = self._open(request, open_stream, state, op)
        tee = _Tee()
        try:
            while chunk is not _END:
                yield self._passed(codec, chunk, state, tee)
                chunk = next(chunks_in, _END)
        except BaseException as exc:
            self._stream_broke(exc, state)  # counts against its breaker; never failed over
            stack.__exit__(*self._broke(exc, state))
            self._record(op, state, error=not state.abandoned)
            raise
        chunks = self._ended(codec, tee, ticket, state)
        stack.__exit__(None, None, None)
        if chunks is not None and key is not None and cache is not None:
            for where, model, target in self._answer_keys(key, state, True):
                self._put(cache, where, "stream", chunks, state, model, target)
        self._record(op, state, error=False)

    def _replay(
        self, first: Any, rest: Sequence[Any], codec: ChunkCodec[C], state: _Call, op: str
    ) -> Generator[C, None, None]:
        try:
            if first is not _END:
                state.ttft = self._clock() - state.started
                yield first
                for data in rest:
                    yield codec.decode(data)
        except BaseException as exc:
            self._broke(exc, state)
            self._record(op, state, error=not state.abandoned)
            raise
        self._record(op, state, error=False)

    def _open(
        self,
        request: LLMRequest,
        open_stream: Callable[[], Iterator[C]],
        state: _Call,
        op: str,
    ) -> tuple[contextlib.ExitStack, Any, Iterator[C], Any]:
        retry, chain = self._retry, state.chain

        def one(alt: Fallback, own: _Call) -> tuple[contextlib.ExitStack, Any, Iterator[C], Any]:
            gate = alt.target.gate
            tokens = alt.request.estimated_tokens() if gate is not None else 0
            spend = self._spend(alt.request, own, gate)
            own.attempts += 1
            stack = contextlib.ExitStack()
            try:
                ticket = None
                if gate is not None:
                    ticket = stack.enter_context(gate.acquire(tokens=tokens, **spend))
                    self._recheck(ticket, alt, own)  # the breaker may have opened meanwhile
                self._admitted(ticket, own)
                with gate_listener(gate):  # the headers arrive when the stream is opened
                    chunks_in = iter(alt.call())
                    stack.callback(_close_quietly, chunks_in)
                    first = next(chunks_in, _END)
            except BaseException as exc:
                if gate is not None and isinstance(exc, Exception):
                    observe_failure(gate, exc)
                    self._heard(exc, alt, own)  # heard before the slot is freed
                stack.__exit__(*sys.exc_info())
                raise
            return stack, ticket, chunks_in, first

        def attempt() -> tuple[contextlib.ExitStack, Any, Iterator[C], Any]:
            if chain is None:
                return one(
                    Fallback(Target("primary", gate=self._gate), request, open_stream), state
                )
            return self._chain(chain, one, None, state, _close_opened)

        try:
            return retry.call(attempt) if retry is not None else attempt()
        except BaseException as exc:
            self._record(op, state, error=True)
            failed = self._all_failed(state, exc)
            if failed is exc:
                raise
            raise failed from exc

    # --- streams: async shell ---------------------------------------------------------
    async def astream(
        self,
        request: LLMRequest,
        open_stream: Callable[[], AsyncIterator[C]],
        codec: ChunkCodec[C],
        *,
        control: CacheControl | None = None,
        blocking: Callable[[], Iterator[C]] | None = None,
        on_cache: Callable[[bool], None] | None = None,
        cost_scope: str | None = None,
        fallbacks: Sequence[Fallback] = (),
        on_target: Callable[[str], None] | None = None,
        blocking_fallbacks: Sequence[Fallback] = (),
    ) -> AsyncGenerator[C, None]:
        """Async twin of :meth:`stream`; cache I/O never blocks the event loop.

        ``aclose()`` the returned generator (``async for`` + ``break`` inside
        ``contextlib.aclosing``) to abandon the stream promptly; otherwise the loop closes
        it when it is collected. Either way nothing is stored.

        ``blocking``: the blocking twin of ``open_stream``. With ``async_enabled: false``,
        the chunks come from :meth:`stream` with it, each read in a worker thread.
        """
        if blocking is not None and not self.config.async_enabled:
            scope = cost_scope if cost_scope is not None else current_cost_scope()
            threaded = iterate_blocking(
                lambda: self.stream(
                    request,
                    blocking,
                    codec,
                    control=control,
                    on_cache=on_cache,
                    cost_scope=scope,
                    fallbacks=blocking_fallbacks,
                    on_target=on_target,
                )
            )
            async with contextlib.aclosing(threaded):
                async for chunk in threaded:
                    yield chunk
            return
        state = self._begin(
            request, True, control, on_cache, cost_scope, fallbacks, on_target, open_stream
        )
        op = f"{self.operation}.stream"
        key, cache = state.key, self._cache
        if key is not None and cache is not None and state.control.read:
            with applied(state.control):
                entry = await cache.aget(key, namespace=self.namespace)
            hit = self._hit("stream", entry, functools.partial(_first_decoded, codec), state)
            if not isinstance(hit, _Miss):
                # Replaying is CPU work only: the sync replay generator serves both
                # shells; closing it (abandoned here) records the abandonment.
                with contextlib.closing(self._replay(*hit, codec, state, op)) as replay:
                    for replayed in replay:
                        yield replayed
                return
        if key is not None:
            state.cache_hit = False
        stack, ticket, chunks_in, chunk = await self._aopen(request, open_stream, state, op)
        tee = _Tee()
        try:
            while chunk is not _END:
                yield self._passed(codec, chunk, state, tee)
                chunk = await anext(chunks_in, _END)
        except BaseException as exc:
            await self._astream_broke(exc, state)  # counts against its breaker; not failed over
            await stack.__aexit__(*self._broke(exc, state))
            self._record(op, state, error=not state.abandoned)
            raise
        chunks = self._ended(codec, tee, None, state)
        await areconcile_ticket(ticket, self._total(state.usage))
        await self._areconcile_cost(ticket, state, state.answered_request, state.answered_gate)
        await stack.__aexit__(None, None, None)
        if chunks is not None and key is not None and cache is not None:
            for where, model, target in self._answer_keys(key, state, True):
                await self._aput(cache, where, "stream", chunks, state, model, target)
        self._record(op, state, error=False)

    async def _aopen(
        self,
        request: LLMRequest,
        open_stream: Callable[[], AsyncIterator[C]],
        state: _Call,
        op: str,
    ) -> tuple[contextlib.AsyncExitStack, Any, AsyncIterator[C], Any]:
        retry, chain = self._retry, state.chain

        async def one(
            alt: Fallback, own: _Call
        ) -> tuple[contextlib.AsyncExitStack, Any, AsyncIterator[C], Any]:
            gate = alt.target.gate
            tokens = alt.request.estimated_tokens() if gate is not None else 0
            spend = self._spend(alt.request, own, gate)
            own.attempts += 1
            stack = contextlib.AsyncExitStack()
            try:
                ticket = None
                if gate is not None:
                    admission = gate.aacquire(tokens=tokens, **spend)
                    ticket = await stack.enter_async_context(admission)
                    await self._arecheck(ticket, alt, own)  # opened meanwhile?
                self._admitted(ticket, own)
                with gate_listener(gate):  # the headers arrive when the stream is opened
                    chunks_in = aiter(alt.call())
                    stack.push_async_callback(_aclose_quietly, chunks_in)
                    first = await anext(chunks_in, _END)
            except BaseException as exc:
                if gate is not None and isinstance(exc, Exception):
                    await aobserve_failure(gate, exc)
                    await self._aheard(exc, alt, own)  # heard before the slot is freed
                await stack.__aexit__(*sys.exc_info())
                raise
            return stack, ticket, chunks_in, first

        async def attempt() -> tuple[contextlib.AsyncExitStack, Any, AsyncIterator[C], Any]:
            if chain is None:
                primary = Fallback(Target("primary", gate=self._gate), request, open_stream)
                return await one(primary, state)
            return await self._achain(chain, one, None, state)

        try:
            return await retry.acall(attempt) if retry is not None else await attempt()
        except BaseException as exc:
            self._record(op, state, error=True)
            failed = self._all_failed(state, exc)
            if failed is exc:
                raise
            raise failed from exc


def _first_decoded(codec: ChunkCodec[C], chunks: Sequence[Any]) -> tuple[Any, Sequence[Any]]:
    # Only the first chunk is decoded up front (a bad entry is a miss); the rest are
    # decoded as they are yielded, for a short TTFT.
    return (codec.decode(chunks[0]) if chunks else _END), chunks[1:]


def _close_opened(opened: tuple[contextlib.ExitStack, Any, Iterator[Any], Any]) -> None:
    """Close a stream opened too late (a probe past its bound): its gate slot and stream."""
    opened[0].__exit__(None, None, None)


def _close_quietly(iterator: Any) -> None:
    close = getattr(iterator, "close", None)
    if callable(close):
        close()


async def _aclose_quietly(iterator: Any) -> None:
    aclose = getattr(iterator, "aclose", None)
    if callable(aclose):
        await aclose()


async def _apaused(gate: Any) -> bool:
    """Whether ``gate`` is paused by a provider's ``Retry-After`` (gates without it: never)."""
    apaused_for = getattr(gate, "apaused_for", None)
    return callable(apaused_for) and await apaused_for() > 0


def _paused(gate: Any) -> bool:
    """Blocking :func:`_apaused`."""
    paused_for = getattr(gate, "paused_for", None)
    return callable(paused_for) and paused_for() > 0


def _taken_back(state: _Call, own: _Call) -> None:
    """Take back a blocking probe's own call state into the caller's ``state``.

    Ended in time (or never sent): all of it, as if it had run on ``state``. Left late:
    only its attempt (counted when it started, like any attempt); the rest is the late
    worker's, which may still write it.
    """
    watch = own.watch
    if watch is not None and watch.late:
        state.attempts = own.attempts
        return
    for name in _CALL_FIELDS:
        setattr(state, name, getattr(own, name))
    state.watch = None


_CALL_FIELDS: Final = tuple(f.name for f in dataclasses.fields(_Call) if f.name != "watch")
