"""The process-wide gate of each (provider, model, API-key fingerprint).

Example::

    gate = get_gate("openai", "gpt-4o-mini", os.environ["OPENAI_API_KEY"], config=config)
    key_fingerprint("sk-...")        # "k-3f9a0c1b22de": never the key itself

Providers limit per model and per key, so one gate per (provider, model, key) shares one
budget across every wrapper, thread and event loop of the process that calls that model.
"""

from __future__ import annotations

import hashlib
import threading

from ..config import PerformanceConfig
from ..errors import ConfigError
from .budget import BudgetStore
from .gate import AdmissionGate

__all__ = ["get_gate", "key_fingerprint", "live_gates"]


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
