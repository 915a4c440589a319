"""The core components a LangChain wrapper uses when the caller passes none.

One place decides them, so every wrapper in this package gets the same gate for the same
(provider, model, API key) and the same retry settings.
"""

from __future__ import annotations

from typing import Any

from rag_perf_plugins.admission import AdmissionGate, get_gate
from rag_perf_plugins.cache import get_cache_manager
from rag_perf_plugins.config import PerformanceConfig
from rag_perf_plugins.embedding_service import CacheEmbeddingStore, EmbeddingStore
from rag_perf_plugins.retry import RetryPolicy

__all__ = ["api_key_of", "default_gate", "default_retry", "default_store"]


def api_key_of(inner: Any) -> str | None:
    """The API key of a LangChain OpenAI-style model (``SecretStr`` or str), if any."""
    for name in ("openai_api_key", "api_key"):
        value = getattr(inner, name, None)
        if value is None:
            continue
        secret = getattr(value, "get_secret_value", None)
        return str(secret() if callable(secret) else value)
    return None


def default_gate(inner: Any, provider: str, model: str, config: PerformanceConfig) -> AdmissionGate:
    """The process-wide gate of (provider, model, API-key fingerprint) for ``inner``.

    A gate whose key already exists with another config is not shared: a private gate with
    this config is made instead, so two wrappers with different limits never fight.
    """
    try:
        return get_gate(provider, model, api_key_of(inner), config=config)
    except ValueError:
        return AdmissionGate(config, key=f"{provider}/{model}/private")


def default_retry(config: PerformanceConfig) -> RetryPolicy:
    """A retry policy from ``config`` (the single retry owner; SDK retries must be off)."""
    return RetryPolicy(config)


def default_store(config: PerformanceConfig) -> EmbeddingStore | None:
    """The process-wide cache's embeddings namespace, or ``None`` when caching is off.

    The process-wide :class:`~rag_perf_plugins.cache.CacheManager` is built from
    ``PerformanceConfig.load()`` (file/env), not from the wrapper's ``config``: pass
    ``store=CacheEmbeddingStore(CacheManager(config))`` for a cache with other settings.
    """
    if not config.enable_caching:
        return None
    return CacheEmbeddingStore(get_cache_manager())
