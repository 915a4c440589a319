"""Admission: the gate (in-flight cap, RPM/TPM budgets, FIFO, bounded queue), budgets, retries.

Example::

    from rag_perf_plugins.admission import RetryPolicy, get_gate

    gate = get_gate("openai", "gpt-4o-mini", api_key)          # one per (provider, model, key)
    async with gate.aacquire(tokens=300) as ticket:              # async
        reply = await client.chat.completions.create(...)
        await ticket.areconcile(reply.usage.total_tokens)
    with gate.aacquire(tokens=300):                               # blocking twin
        ...
    RetryPolicy(config).call(lambda: client.embeddings.create(...))   # the one retry owner

Modules: :mod:`.gate` (the gate and its ticket), :mod:`.budget` (rate limits, the budget
store seam, GCRA arithmetic), :mod:`.headers` (``Retry-After`` and ``x-ratelimit-*``),
:mod:`.retry` (classification, back-off, retry budget), :mod:`.registry` (one gate per
key), :mod:`.redis_store` (the budget shared through Redis; the ``redis`` extra).
"""

from __future__ import annotations

from .budget import BudgetStore, LocalBudgetStore, RateLimits
from .gate import AdmissionGate, Ticket
from .headers import parse_reset, parse_retry_after
from .registry import budget_model, get_gate, get_scope_gate, key_fingerprint
from .retry import Failure, RetryBudget, RetryPolicy, classify

__all__ = [
    # the gate
    "AdmissionGate",
    "Ticket",
    "budget_model",
    "get_gate",
    "get_scope_gate",
    "key_fingerprint",
    # budgets
    "BudgetStore",
    "LocalBudgetStore",
    "RateLimits",
    # retries
    "Failure",
    "RetryBudget",
    "RetryPolicy",
    "classify",
    # provider headers
    "parse_reset",
    "parse_retry_after",
]
