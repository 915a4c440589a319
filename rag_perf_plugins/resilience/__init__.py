"""Provider outages: circuit breakers per target and fallback chains (framework-free).

Example::

    from rag_perf_plugins.resilience import BreakerSettings, breakers_for

    breakers = breakers_for(config)     # one per process; in Redis when redis_url is set
    if breakers.admit("openai/gpt-4o-mini/k-3f9a").allowed:
        ...

Modules: :mod:`.breaker` (the pure state machine), :mod:`.store` (the store seam and the
local store), :mod:`.redis_store` (the store shared through Redis; the ``redis`` extra),
:mod:`.breakers` (logs, statistics, the process-wide registry), :mod:`.chain` (targets
of a fallback chain), :mod:`.probe` (half-open probes bounded in time). The LLM and
embedding services (:mod:`rag_perf_plugins.services`) run the chains; see
docs/components/resilience.md.
"""

from __future__ import annotations

from .breaker import Admission, BreakerCore, BreakerSettings, Transition
from .breakers import Breakers, breakers_for, live_breakers, outcome_of
from .chain import Target
from .store import BreakerStore, LocalBreakerStore

__all__ = [
    "Admission",
    "BreakerCore",
    "BreakerSettings",
    "BreakerStore",
    "Breakers",
    "LocalBreakerStore",
    "Target",
    "Transition",
    "breakers_for",
    "live_breakers",
    "outcome_of",
]
