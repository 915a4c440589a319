"""Where breaker state lives: this process (:class:`LocalBreakerStore`) or Redis.

Example::

    store = LocalBreakerStore()
    admission = store.admit("openai/gpt-4o-mini/k-3f9a", settings, now=time.monotonic())
    store.record("openai/gpt-4o-mini/k-3f9a", settings, "failure", probe=False, now=...)
    await store.aadmit(...)              # the async twins (no I/O here: plain calls)

A store keeps one :class:`~.breaker.BreakerCore` per target name. The Redis store
(:mod:`.redis_store`) implements the same protocol with the same rules in one Lua script,
so every process using the Redis shares each target's breaker.
"""

from __future__ import annotations

import threading
from typing import Protocol

from .breaker import Admission, BreakerCore, BreakerSettings, Outcome, State, Transition

__all__ = ["BreakerStore", "LocalBreakerStore"]


class BreakerStore(Protocol):
    """The seam between the breakers and their state (local or shared)."""

    def admit(self, target: str, settings: BreakerSettings, now: float) -> Admission:
        """May a call go to ``target`` now (see :meth:`BreakerCore.admit`)."""
        ...

    async def aadmit(self, target: str, settings: BreakerSettings, now: float) -> Admission:
        """Async twin of :meth:`admit`."""
        ...

    def record(
        self,
        target: str,
        settings: BreakerSettings,
        outcome: Outcome,
        probe: bool,
        now: float,
        since: float | None = None,
        rand: float = 0.0,
    ) -> Transition | None:
        """Count one outcome of ``target``; the transition it caused.

        ``since``: when the call was admitted; ``rand``: the cool-down's jitter draw in
        [0, 1) (see :meth:`BreakerCore.record`).
        """
        ...

    async def arecord(
        self,
        target: str,
        settings: BreakerSettings,
        outcome: Outcome,
        probe: bool,
        now: float,
        since: float | None = None,
        rand: float = 0.0,
    ) -> Transition | None:
        """Async twin of :meth:`record`."""
        ...

    def peek(self, target: str, settings: BreakerSettings, now: float) -> tuple[State, float]:
        """``(state, retry_in seconds)`` of ``target`` without changing it."""
        ...

    async def apeek(
        self, target: str, settings: BreakerSettings, now: float
    ) -> tuple[State, float]:
        """Async twin of :meth:`peek`."""
        ...


class LocalBreakerStore:
    """Breakers of this process only, in memory; thread-safe.

    Example: ``LocalBreakerStore().admit("openai/m/k-1", BreakerSettings(), now=0.0)``.
    """

    __slots__ = ("_cores", "_lock")

    def __init__(self) -> None:
        self._cores: dict[str, BreakerCore] = {}
        self._lock = threading.Lock()

    def _core(self, target: str) -> BreakerCore:
        core = self._cores.get(target)
        if core is None:
            core = self._cores.setdefault(target, BreakerCore())
        return core

    def admit(self, target: str, settings: BreakerSettings, now: float) -> Admission:
        """May a call go to ``target`` now."""
        with self._lock:
            return self._core(target).admit(settings, now)

    async def aadmit(self, target: str, settings: BreakerSettings, now: float) -> Admission:
        """Async twin of :meth:`admit` (no I/O: the same call)."""
        return self.admit(target, settings, now)

    def record(
        self,
        target: str,
        settings: BreakerSettings,
        outcome: Outcome,
        probe: bool,
        now: float,
        since: float | None = None,
        rand: float = 0.0,
    ) -> Transition | None:
        """Count one outcome of ``target``."""
        with self._lock:
            core = self._core(target)
            return core.record(settings, outcome, probe=probe, now=now, since=since, rand=rand)

    async def arecord(
        self,
        target: str,
        settings: BreakerSettings,
        outcome: Outcome,
        probe: bool,
        now: float,
        since: float | None = None,
        rand: float = 0.0,
    ) -> Transition | None:
        """Async twin of :meth:`record` (no I/O: the same call)."""
        return self.record(target, settings, outcome, probe, now, since, rand)

    def peek(self, target: str, settings: BreakerSettings, now: float) -> tuple[State, float]:
        """``(state, retry_in)`` of ``target``; an unknown target is closed."""
        with self._lock:
            core = self._cores.get(target)
            if core is None:
                return "closed", 0.0
            state = core.state
            if state == "open" and now >= core.open_until:
                state = "half_open"  # what the next admit will find
            return state, core.retry_in(settings, now)

    async def apeek(
        self, target: str, settings: BreakerSettings, now: float
    ) -> tuple[State, float]:
        """Async twin of :meth:`peek` (no I/O: the same call)."""
        return self.peek(target, settings, now)

    def __repr__(self) -> str:
        return f"<LocalBreakerStore [targets: {len(self._cores)}]>"
