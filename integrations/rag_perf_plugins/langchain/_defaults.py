"""The core components a LangChain wrapper uses when the caller passes none.

One place decides them, so every wrapper in this package gets the same gate for the same
(provider, model, API key) and the same retry settings.
"""

from __future__ import annotations

from typing import Any

from rag_perf_plugins.admission import AdmissionGate, RetryPolicy, get_gate
from rag_perf_plugins.config import PerformanceConfig
from rag_perf_plugins.services.embeddings import EmbeddingStore, default_embedding_store

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
    """The core cache's embeddings namespace for ``config``, or ``None`` when caching is off.

    Decided by :func:`rag_perf_plugins.services.embeddings.cache_manager_for`, as for the
    LlamaIndex wrappers: a ``config`` with cache settings of its own (``cache_dir``, sizes,
    TTL, dtype, Redis) gets a manager for them, shared by equal configs; one that sets none
    uses the process-wide manager (``PerformanceConfig.load()``: file and environment).
    """
    return default_embedding_store(config)
