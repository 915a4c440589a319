"""What a wrapper, service or the engine uses when the caller passes nothing: decided here.

Example::

    from rag_perf_plugins.services.defaults import (
        default_cache, default_embedding_store, default_gate, default_retry, resolve_config,
    )

    config = resolve_config(None)                 # PerformanceConfig.load(): file, env, defaults
    gate = default_gate(config, provider="openai", model="gpt-4o-mini", api_key=key)
    retry = default_retry(config)
    store = default_embedding_store(config)       # None when enable_caching is off

One rule for both frameworks (the LangChain and LlamaIndex adapters call only these):

- **config**: the one passed, else :meth:`PerformanceConfig.load` (the file named by
  ``RAG_PERF_CONFIG``, else ``./rag-perf.yaml``; then ``RAG_PERF_*`` variables; then
  defaults). See :func:`rag_perf_plugins.config.resolve_config`.
- **cache**: :func:`rag_perf_plugins.cache.cache_manager_for` of that config, so its
  ``cache_dir``, ``redis_url`` and ``cache_namespace_prefix`` apply; ``None`` when
  ``enable_caching`` is off.
- **gate**: the process-wide gate of (provider, model, API-key fingerprint) built from that
  config; a key whose gate already exists with other limits gets a private gate with this
  config, so two wrappers with different limits never silently share the first one's.
- **retry**: a :class:`~rag_perf_plugins.admission.RetryPolicy` of that config (the one
  retry owner: the pooled factories turn SDK retries off).
- **tracker**: :func:`rag_perf_plugins.tracking.resolve_tracker`.
"""

from __future__ import annotations

import hashlib
from typing import Any

from ..admission import AdmissionGate, RetryPolicy, get_gate
from ..cache import CacheManager, cache_manager_for
from ..config import PerformanceConfig, resolve_config
from ..errors import ConfigError
from ..resilience import Target
from .embeddings import CacheEmbeddingStore

__all__ = [
    "api_key_of",
    "default_cache",
    "default_embedding_store",
    "default_gate",
    "default_retry",
    "default_target",
    "resolve_config",
]

# Attributes that hold an API key in the model classes of both frameworks.
_API_KEY_FIELDS = ("openai_api_key", "anthropic_api_key", "api_key")


def api_key_of(model: Any) -> str | None:
    """The API key of a framework model (a str or a pydantic ``SecretStr``), if it has one.

    Example: ``api_key_of(ChatOpenAI(api_key="sk-..."))`` is ``"sk-..."``. Only used to
    fingerprint the gate's key (:func:`rag_perf_plugins.admission.key_fingerprint`); it is
    never stored or printed.
    """
    for name in _API_KEY_FIELDS:
        value = getattr(model, name, None)
        if value is None:
            continue
        secret = getattr(value, "get_secret_value", None)
        key = secret() if callable(secret) else value
        if isinstance(key, str) and key:
            return key
    return None


def default_cache(config: PerformanceConfig) -> CacheManager | None:
    """The cache manager for ``config``'s cache settings; ``None`` when caching is off."""
    if not config.enable_caching:
        return None
    return cache_manager_for(config)


def default_embedding_store(config: PerformanceConfig) -> CacheEmbeddingStore | None:
    """The embeddings namespace of :func:`default_cache`; ``None`` when caching is off.

    Example: ``EmbeddingService(..., store=default_embedding_store(config))``.
    """
    cache = default_cache(config)
    return None if cache is None else CacheEmbeddingStore(cache)


def default_gate(
    config: PerformanceConfig, *, provider: str, model: str, api_key: str | None = None
) -> AdmissionGate:
    """The process-wide gate of (provider, model, API-key fingerprint), built from ``config``.

    Example: ``default_gate(config, provider="openai", model="gpt-4o-mini", api_key=key)``.

    When that key's gate already exists with another config, a private gate with this
    config is made instead, so a wrapper's limits are never silently another's.
    """
    try:
        return get_gate(provider, model, api_key, config=config)
    except ConfigError:
        return AdmissionGate(config, key=f"{provider}/{model}/private")


def default_retry(config: PerformanceConfig) -> RetryPolicy:
    """A retry policy from ``config``: the single retry owner (SDK retries must be off)."""
    return RetryPolicy(config)


def default_target(gate: Any, provider: str, model: str) -> Target:
    """The breaker target of a model: its gate's key plus a fingerprint of its endpoint.

    Example: ``default_target(gate, "langchain/...ChatOpenAI/1f2e", "gpt-4o-mini")`` is
    ``Target("openai/gpt-4o-mini/k-3f9a0c1b22de~9c41d2", gate=gate)``. ``provider`` is the
    adapter's provider id (class and endpoint): two deployments of one model at two URLs
    get two breakers and two rate-limit scopes; the same model, endpoint and key share one.
    """
    key = getattr(gate, "key", None)
    base = key if isinstance(key, str) and key else model  # the provider id may hold a URL
    endpoint = hashlib.blake2b(provider.encode(), digest_size=3).hexdigest()
    return Target(f"{base}~{endpoint}", gate=gate)
