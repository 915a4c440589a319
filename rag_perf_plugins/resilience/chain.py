"""The targets of a fallback chain: who answers, under which breaker and rate-limit scope.

Example::

    primary = Target("openai/gpt-4o-mini/k-3f9a~e1", gate=get_gate("openai", "gpt-4o-mini", key))
    fallback = Target("azure/gpt-4o-mini/k-77c1~e2", gate=azure_gate)

A target's ``name`` keys its circuit breaker (provider, model, API-key fingerprint and
endpoint; never a credential); ``scope`` is its rate-limit scope: after a 429 from one
target, the chain skips later targets of the same scope (they share the exhausted budget).
The chain itself runs in :class:`rag_perf_plugins.services.llm.LLMService`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .breaker import State

__all__ = ["OpenedMeanwhile", "ProbeStillRunning", "Target", "failed_note"]


class OpenedMeanwhile(Exception):
    """A call's target's breaker opened while the call waited at its gate: fail over, unsent.

    Example: ``raise OpenedMeanwhile("open", 4.2)`` inside the gate; the chain catches it
    and moves to the next target (``failovers{reason="open"}``).
    """

    def __init__(self, state: State, retry_in: float) -> None:
        super().__init__(f"the breaker is {state} (retry in {retry_in:.1f} s)")
        self.state: State = state
        self.retry_in = retry_in


class ProbeStillRunning(TimeoutError):
    """A probe was not sent: an earlier probe of its target, abandoned, is still waiting.

    Example: ``raise ProbeStillRunning("openai/m/k-1~e1", 30.0)`` before a blocking probe
    starts; the chain counts it as a timeout of the target (its breaker opens again, for
    the next cool-down) and moves the call to the next target
    (``failovers{reason="probe_running"}``). See :func:`~.probe.run_probe`.
    """

    def __init__(self, target: str, timeout: float) -> None:
        super().__init__(
            f"probe of {target} not sent: an earlier probe, abandoned after {timeout:g} s "
            "(breaker_probe_timeout), still waits for its answer in a worker thread"
        )
        self.target = target


def failed_note(exc: BaseException) -> str:
    """``"Type: message"`` of a target's failure, on one line of at most ~120 characters.

    Example: ``failed_note(ProviderError("bad gateway"))`` is ``"ProviderError: bad gateway"``.
    """
    text = " ".join(str(exc).split())
    if len(text) > 120:
        text = text[:117] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@dataclass(frozen=True, slots=True)
class Target:
    """One model deployment a call may go to.

    Attributes:
        name: Breaker key, shown in logs, metrics and ``ProviderUnavailable``.
        gate: Its admission gate (``aacquire``/``acquire``), or ``None``.
        scope: Rate-limit scope; ``None`` means ``name``.
    """

    name: str
    gate: Any = None
    scope: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            msg = f"name must be a non-empty str, got {self.name!r}"
            raise ValueError(msg)

    @property
    def limit_scope(self) -> str:
        """``scope``, or ``name`` when none was given."""
        return self.scope if self.scope is not None else self.name
