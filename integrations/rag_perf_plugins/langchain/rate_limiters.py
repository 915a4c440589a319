"""PerfRateLimiter: LangChain's ``rate_limiter=`` backed by our admission gate.

Example::

    limiter = PerfRateLimiter(requests_per_second=50)
    llm = ChatOpenAI(model="gpt-4o-mini", rate_limiter=limiter)

LangChain's ``InMemoryRateLimiter`` polls a token bucket every ``check_every_n_seconds``
(0.1 s) with a bucket of one, so it never passes 10 requests/s whatever it is asked, and
polling faster burns CPU. This limiter waits exactly as long as the budget needs (a
scheduled sleep, no polling), first come first served, on the
:class:`~rag_perf_plugins.admission.gate.AdmissionGate`'s request budget, so it reaches the
configured rate. Gates with the same key share one budget in the process.

Not done here: tokens. LangChain asks a rate limiter for one request and nothing else, so
only the request rate is limited; token budgets need the gate itself (``PerfEmbeddings`` /
the chat wrapper use it with token estimates). The gate's in-flight cap does not apply
either: LangChain's limiter is asked before the call and never told when it ends.
"""

from __future__ import annotations

import uuid
from typing import Any

from langchain_core.rate_limiters import BaseRateLimiter
from typing_extensions import override

from rag_perf_plugins._signature import checked_kwargs
from rag_perf_plugins.admission import AdmissionGate
from rag_perf_plugins.config import PerformanceConfig, resolve_config
from rag_perf_plugins.errors import DeadlineExceeded, Overloaded

__all__ = ["PerfRateLimiter"]


class PerfRateLimiter(BaseRateLimiter):
    """A request-rate limiter for LangChain chat models, without polling.

    Example: ``PerfRateLimiter(requests_per_second=20, burst_seconds=0.5)``.

    Args:
        requests_per_second: The rate to reach, requests per second (> 0).
        burst_seconds: Largest burst, in seconds of budget (``rps * burst_seconds``
            requests may leave at once after an idle period); default from ``config``.
        config: Queue bounds (``max_queue``, ``max_queue_wait``); its rate keys are
            replaced by ``requests_per_second``.
        key: Budget key; limiters with the same key share one budget (``None``: a key
            of its own, so two limiters never share by accident).
        gate: Use this gate as is (``requests_per_second`` must then be ``None``).

    Raises:
        ValueError: a bad rate or burst, or both ``gate`` and ``requests_per_second``.

    ``acquire(blocking=True)`` raises :class:`~rag_perf_plugins.errors.Overloaded` when the
    queue is full or the wait would pass ``max_queue_wait``; ``blocking=False`` returns
    ``False`` instead of waiting.
    """

    @checked_kwargs
    def __init__(
        self,
        requests_per_second: float | None = None,
        *,
        burst_seconds: float | None = None,
        config: PerformanceConfig | None = None,
        key: str | None = None,
        gate: AdmissionGate | None = None,
    ) -> None:
        if gate is not None:
            if requests_per_second is not None:
                msg = "pass either gate= or requests_per_second=, not both"
                raise ValueError(msg)
            self.gate = gate
            return
        if requests_per_second is None or not requests_per_second > 0:
            msg = f"requests_per_second must be > 0, got {requests_per_second!r}"
            raise ValueError(msg)
        config = resolve_config(config)
        rpm = max(1, round(requests_per_second * 60))
        overrides: dict[str, Any] = {
            "requests_per_minute": rpm,
            "tokens_per_minute": None,
            # LangChain never tells the limiter when a call ends: no in-flight cap.
            "max_concurrent_requests": 1_000_000,
        }
        if burst_seconds is not None:
            overrides["rate_burst_seconds"] = burst_seconds
        key = key if key is not None else f"langchain-rate-limiter/{uuid.uuid4().hex[:12]}"
        self.gate = AdmissionGate(config, key=key, operation="langchain.rate_limiter", **overrides)

    @property
    def requests_per_second(self) -> float | None:
        """The configured rate, requests per second."""
        rpm = self.gate.limits.requests_per_minute
        return None if rpm is None else rpm / 60.0

    @override
    def acquire(self, *, blocking: bool = True) -> bool:
        try:
            with self.gate.acquire(timeout=None if blocking else 0.0):
                return True
        except (DeadlineExceeded, Overloaded):
            if blocking:
                raise
            return False

    @override
    async def aacquire(self, *, blocking: bool = True) -> bool:
        try:
            async with self.gate.aacquire(timeout=None if blocking else 0.0):
                return True
        except (DeadlineExceeded, Overloaded):
            if blocking:
                raise
            return False

    def __repr__(self) -> str:
        return f"<PerfRateLimiter rps={self.requests_per_second} {self.gate!r}>"
