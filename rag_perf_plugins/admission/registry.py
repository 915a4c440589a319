"""The process-wide gate of each (provider, model, API-key fingerprint).

Example::

    gate = get_gate("openai", "gpt-4o-mini", os.environ["OPENAI_API_KEY"], config=config)
    key_fingerprint("sk-...")        # "k-3f9a0c1b22de": never the key itself

Providers limit per model and per key, so one gate per (provider, model, key) shares one
budget across every wrapper, thread and event loop of the process that calls that model.
"""

from __future__ import annotations

import hashlib
import re
import threading

from ..config import PerformanceConfig
from ..errors import ConfigError
from .budget import BudgetStore
from .gate import AdmissionGate

__all__ = ["budget_model", "get_gate", "get_scope_gate", "key_fingerprint", "live_gates"]


def key_fingerprint(api_key: str | None) -> str:
    """A short, stable, one-way fingerprint of an API key: ``"k-3f9a0c1b22de"``, never the key.

    ``None`` or ``""`` gives ``"nokey"``. Twelve hex digits of BLAKE2b: enough to tell keys
    apart in one process, far too few to recover the key.
    """
    if not api_key:
        return "nokey"
    return "k-" + hashlib.blake2b(api_key.encode(), digest_size=6).hexdigest()


_GATES: dict[str, AdmissionGate] = {}


_GATES_LOCK = threading.Lock()


def get_gate(
    provider: str,
    model: str,
    api_key: str | None = None,
    *,
    config: PerformanceConfig | None = None,
    store: BudgetStore | None = None,
) -> AdmissionGate:
    """The process-wide gate of (provider, model, API-key fingerprint), made on first use.

    Example: ``get_gate("openai", "text-embedding-3-small", os.environ["OPENAI_API_KEY"])``.

    The key holds a fingerprint of ``api_key`` (see :func:`key_fingerprint`), never the key.
    The first call's ``config`` and ``store`` make the gate; a later call that passes a
    different config for the same key raises :class:`~rag_perf_plugins.errors.ConfigError`
    rather than silently keep the old limits.
    """
    if not provider or not model:
        msg = f"provider and model must be non-empty strings, got {provider!r}, {model!r}"
        raise ValueError(msg)
    key = f"{provider}/{model}/{key_fingerprint(api_key)}"
    with _GATES_LOCK:
        gate = _GATES.get(key)
        if gate is None:
            gate = _GATES[key] = AdmissionGate(config, key=key, store=store)
        elif config is not None and config != gate.config:
            msg = f"get_gate({key!r}): this key's gate already exists with another config"
            raise ConfigError(msg, key="config")
        return gate


def live_gates() -> list[AdmissionGate]:
    """The process-wide gates made by :func:`get_gate` so far (the metrics endpoint's)."""
    with _GATES_LOCK:
        return list(_GATES.values())


# The config keys a gate reads: two configs equal in these make the same gate.
_GATE_FIELDS = (
    "requests_per_minute",
    "tokens_per_minute",
    "rate_burst_seconds",
    "max_concurrent_requests",
    "max_queue",
    "max_queue_wait",
    "retry_after_cap",
    "shared_rate_limit",
    "redis_url",
    "limiter_fallback",
    "worker_count",
    "cache_namespace_prefix",
    "enable_metrics",
)


def get_scope_gate(name: str, *, config: PerformanceConfig) -> AdmissionGate:
    """The process-wide gate of the shared budget ``name`` (config key ``rate_limit_scope``).

    Example: ``get_scope_gate("acme-openai", config=config)``: chat and embedding wrappers
    whose configs both say ``rate_limit_scope: acme-openai`` reserve from this one gate
    (key ``scope/acme-openai``; in Redis too with ``shared_rate_limit``).

    Configs that differ elsewhere (cache settings, retries) share it when they agree on what
    a gate reads (limits, queue, Redis store); otherwise :class:`ConfigError` names
    ``rate_limit_scope``: one budget cannot have two sets of limits.
    """
    key = f"scope/{name}"
    with _GATES_LOCK:
        gate = _GATES.get(key)
        if gate is None:
            gate = _GATES[key] = AdmissionGate(config, key=key)
            return gate
    if any(getattr(config, f) != getattr(gate.config, f) for f in _GATE_FIELDS):
        differ = [f for f in _GATE_FIELDS if getattr(config, f) != getattr(gate.config, f)]
        msg = (
            f"rate_limit_scope {name!r} is already in use with other limits "
            f"({', '.join(differ)} differ); give every config of one scope the same limits"
        )
        raise ConfigError(msg, key="rate_limit_scope")
    return gate


_DATED = re.compile(r"-(?:\d{8}|latest)$")


def budget_model(provider: str, model: str) -> str:
    """The model name a provider's rate budget is kept under: its default limit scope.

    Example: ``budget_model("anthropic", "claude-3-5-haiku-20241022")`` is
    ``"claude-3-5-haiku"``, as is ``"claude-3-5-haiku-latest"``: Anthropic limits per model
    family, so the dated and ``-latest`` names share one budget. Every other provider keeps
    the name as it is (OpenAI limits per model; for Azure the name is the deployment's,
    which is what Azure limits).
    """
    if "anthropic" in provider.lower():
        return _DATED.sub("", model)
    return model
