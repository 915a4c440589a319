"""What the services need from their collaborators, and the views both services expose.

Example::

    service.gate        # the AdmissionGateLike of provider calls, or None
    service.retry       # the RetryPolicyLike, or None
    service.tracker     # where calls are recorded (a NullTracker when metrics are off)

Structural types (``Protocol``): the core's :class:`~rag_perf_plugins.admission.AdmissionGate`
and :class:`~rag_perf_plugins.admission.RetryPolicy` satisfy them, and so does anything
with the same methods (tests pass recording gates).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from typing import Any, Protocol, TypeVar

from ..tracking import PerformanceTracker

__all__ = ["AdmissionGateLike", "ProviderCalls", "RetryPolicyLike"]

R = TypeVar("R")


class AdmissionGateLike(Protocol):
    """What the service needs from the admission gate: a slot per provider call.

    ``tokens`` is the estimated input tokens of the request.
    """

    def aacquire(self, *, tokens: int = 0) -> AbstractAsyncContextManager[Any]:
        """Async context manager holding one admission for the call."""
        ...

    def acquire(self, *, tokens: int = 0) -> AbstractContextManager[Any]:
        """Blocking twin of :meth:`aacquire`, for threads."""
        ...


class RetryPolicyLike(Protocol):
    """What the service needs from the retry policy: run a call, retrying as it sees fit."""

    def call(self, fn: Callable[[], R]) -> R:
        """Run ``fn`` (blocking), retrying retryable errors."""
        ...

    async def acall(self, fn: Callable[[], Awaitable[R]]) -> R:
        """Await ``fn()``, retrying retryable errors."""
        ...


class ProviderCalls:
    """The collaborators of a service's provider calls, read-only (a mixin of both services).

    Subclasses set ``_gate``, ``_retry`` and ``_tracker`` (in their ``__slots__``).
    """

    __slots__ = ()

    _gate: AdmissionGateLike | None
    _retry: RetryPolicyLike | None
    _tracker: PerformanceTracker

    @property
    def gate(self) -> AdmissionGateLike | None:
        """The admission gate of provider calls, or ``None``."""
        return self._gate

    @property
    def retry(self) -> RetryPolicyLike | None:
        """The retry policy of provider calls, or ``None``."""
        return self._retry

    @property
    def tracker(self) -> PerformanceTracker:
        """Where calls are recorded (a ``NullTracker`` when metrics are off)."""
        return self._tracker
