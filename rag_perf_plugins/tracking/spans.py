"""OpenTelemetry spans for LLM and embedding calls, with the GenAI semantic conventions.

Example::

    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    llm.invoke("What is RAG?")        # a PerfChatModel: one span "chat gpt-4o-mini"
    exporter.get_finished_spans()[0].attributes["rag_perf.cache.hit"]

The LLM and embedding services emit one span per call when OpenTelemetry is installed
*and* a real tracer provider is set (the API's default proxy provider counts as none):
otherwise :func:`tracer` returns ``None`` and a call costs one attribute check, with no
OpenTelemetry import and no span object. The span is a child of the span current when
the call ends (your request's span), of kind ``CLIENT``, named
``"{gen_ai.operation.name} {gen_ai.request.model}"``, and spans the call's wall time.

Attributes (GenAI semantic conventions, then ours under ``rag_perf.*``):

=========================================  ==================================================
``gen_ai.operation.name``                  ``chat`` or ``embeddings``
``gen_ai.provider.name``                   the provider part of the service's provider id
``gen_ai.request.model``                   the model asked for
``gen_ai.usage.input_tokens``              tokens sent (provider usage; estimated for
                                           embeddings); 0 on a cache hit
``gen_ai.usage.output_tokens``             tokens received (chat); 0 on a cache hit
``gen_ai.usage.cache_read.input_tokens``   0 on a cache hit (nothing was read from the
                                           provider); absent on a miss (not reported to us)
``rag_perf.cache.hit``                     bool, when the cache was consulted; the same as
                                           the answer's ``cache_hit`` metadata
``rag_perf.cache.hit_kind``                ``exact`` on a hit (the key is the whole request)
``rag_perf.tokens_saved``                  input + output tokens a hit or a coalesced call
                                           did not spend
``rag_perf.coalesced``                     true when the answer came from another caller's
                                           identical request in flight
``rag_perf.queue_wait_s``                  seconds waited at the admission gate
``rag_perf.retries``                       attempts after the first
``rag_perf.ttft_s``                        streams: seconds to the first chunk
``rag_perf.stream.abandoned``              streams: closed by the consumer before the end
``rag_perf.cost_usd``                      USD the provider call cost (price table); 0 on a hit
``rag_perf.cost_saved_usd``                USD a hit or coalesced call did not spend
``rag_perf.cost.unknown``                  true (instead of the two above) when the cost is
                                           unknown: no price for the model, or no usage
``rag_perf.batch_size``                    embeddings: texts in the call
``rag_perf.fallback.target``               the fallback target that answered (its breaker
                                           name); absent when the primary model answered
=========================================  ==================================================

An error sets the span status to ``ERROR`` with ``error.type``. Does not: record prompts,
answers or vectors (no payloads in spans), or start a span before the call ends (the span
is created with the call's start time when it is recorded, so provider HTTP spans made
during the call are its siblings, not its children).
"""

from __future__ import annotations

import os
import time
from typing import Any

__all__ = ["emit", "provider_name", "tracer"]

_SCOPE = "rag_perf_plugins"


class _Tracing:
    """The tracer of the current global provider, found again only when it changes."""

    __slots__ = ("available", "from_env", "get_provider", "inert", "module", "provider", "tracer")

    def __init__(self) -> None:
        self.provider: Any = None
        self.tracer: Any = None
        try:
            from opentelemetry import trace
            from opentelemetry.trace import NoOpTracerProvider, ProxyTracerProvider
        except ImportError:
            self.available = False
            self.get_provider: Any = None
            self.inert: tuple[type, ...] = ()
            self.module: Any = None
            self.from_env = False
            return
        self.available = True
        # OpenTelemetry loads a provider named by this variable at its first
        # get_tracer_provider(); read once, as OpenTelemetry's other variables are.
        self.from_env = "OTEL_PYTHON_TRACER_PROVIDER" in os.environ
        self.get_provider = trace.get_tracer_provider
        self.inert = (NoOpTracerProvider, ProxyTracerProvider)
        self.module = trace

    def current(self) -> Any:
        # Once a provider is set it is the module's global; reading it skips
        # get_tracer_provider's environment lookup (~1 us on every call of every service).
        provider = getattr(self.module, "_TRACER_PROVIDER", None)
        if provider is None:
            if not self.from_env:  # no provider set: the proxy, which emits nothing
                return None
            provider = self.get_provider()
        if provider is not self.provider:
            self.provider = provider
            self.tracer = (
                None
                if isinstance(provider, self.inert)
                else provider.get_tracer(_SCOPE, _version(), schema_url=None)
            )
        return self.tracer


def _version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("rag-perf-plugins")
    except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return None


_TRACING: _Tracing | None = None


def tracer() -> Any:
    """The tracer to emit spans with, or ``None`` (no OpenTelemetry, or no provider set).

    Example: ``t = tracer(); if t is not None: emit(t, ...)``. Looks OpenTelemetry up once
    per process; afterwards it reads the global tracer provider (a set provider is
    picked up at the next call).
    """
    global _TRACING
    tracing = _TRACING
    if tracing is None:
        tracing = _TRACING = _Tracing()
    if not tracing.available:
        return None
    return tracing.current()


_KNOWN = (
    "azure", "openai", "anthropic", "cohere", "mistral", "vertex", "gemini", "bedrock",
    "ollama", "groq", "voyage", "huggingface", "deepseek", "together", "fireworks",
)  # fmt: skip


def provider_name(provider: str | None) -> str:
    """``gen_ai.provider.name`` of a service provider id, e.g. ``openai``.

    The adapters' ids name the framework class (``langchain/langchain_openai.chat_models
    .base.ChatOpenAI/…``): the first well-known provider named in the id's first two
    parts wins; else the part before the first ``/``. Never the rest: it may be a base
    URL, which may hold credentials and is never put in a span.
    """
    if not provider:
        return "unknown"
    head = "/".join(provider.split("/", 2)[:2]).lower()
    for name in _KNOWN:
        if name in head:
            return name
    return provider.split("/", 1)[0]


def emit(
    tracer: Any,
    operation_name: str,
    model: str,
    duration_s: float,
    attributes: dict[str, Any],
    *,
    error: bool = False,
) -> None:
    """Emit one finished ``CLIENT`` span that ended now and lasted ``duration_s`` seconds.

    Example: ``emit(t, "chat", "gpt-4o-mini", 0.42, {"gen_ai.usage.input_tokens": 9})``.
    ``gen_ai.operation.name`` and ``gen_ai.request.model`` are added to ``attributes``.
    """
    from opentelemetry.trace import SpanKind, Status, StatusCode

    end = time.time_ns()
    start = end - max(0, int(duration_s * 1e9))
    attributes["gen_ai.operation.name"] = operation_name
    attributes["gen_ai.request.model"] = model
    span = tracer.start_span(
        f"{operation_name} {model}", kind=SpanKind.CLIENT, start_time=start, attributes=attributes
    )
    if error:
        span.set_attribute("error.type", "_OTHER")
        span.set_status(Status(StatusCode.ERROR))
    span.end(end_time=end)
