"""Breakers: the circuit breakers of every target, their store, logs and statistics.

Example::

    breakers = breakers_for(config)           # process-wide; shared through Redis if set
    admission = breakers.admit("openai/gpt-4o-mini/k-3f9a")
    breakers.record("openai/gpt-4o-mini/k-3f9a", outcome_of(exc), probe=admission.probe)
    breakers.stats()["openai/gpt-4o-mini/k-3f9a"]["state"]       # "open"

One :class:`Breakers` per (store, settings): :func:`breakers_for` gives every component
built from equal settings the same object, so a provider's breaker is one per process
(one per Redis when ``redis_url`` is set: then the state is the Redis store's, shared by
every process). A breaker that opens or closes logs one warning line (once per transition,
not per call) and counts it in the tracker (``breaker.opened``, ``breaker.closed``).
"""

from __future__ import annotations

import logging
import random
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import replace
from typing import Any, Final

from .._clock import Clock
from ..admission.retry import classify
from ..config import PerformanceConfig
from ..errors import Overloaded
from ..tracking.tracker import PerformanceTracker, get_performance_tracker
from .breaker import Admission, BreakerSettings, Outcome, State, Transition
from .chain import ProbeStillRunning
from .store import BreakerStore, LocalBreakerStore

__all__ = ["Breakers", "breakers_for", "failover_reason", "live_breakers", "outcome_of"]

log = logging.getLogger("rag_perf_plugins.resilience")


# Answers that say the target is down, not busy or wrong for one request: the gateway's
# and the server's "unavailable", and Anthropic's 529 "overloaded".
_DOWN_STATUS: Final = frozenset({502, 503, 504, 529})
_DOWN_KINDS: Final = frozenset({"timeout", "connection", "overloaded"})


def outcome_of(exc: BaseException | None) -> Outcome:
    """How a call's end counts for its breaker: ``success``, ``failure``, ``down``, ``neutral``.

    Example: ``outcome_of(openai.RateLimitError(...))`` is ``"failure"``, a 503 is
    ``"down"``. Down (a failure that says the target is down; ``breaker_down_failures``
    of them in a row open the breaker): refused or dropped connections, timeouts, 502,
    503, 504 and 529 answers. Other failures: 429s, other 5xx and 408 answers. Neutral:
    4xx client errors, our own refusals (``Overloaded``...), cancellation. ``None`` is a
    success.
    """
    if exc is None:
        return "success"
    if isinstance(exc, Overloaded):
        return "neutral"
    failure = classify(exc)
    if not failure.retryable:
        return "neutral"
    if failure.kind in _DOWN_KINDS or failure.status in _DOWN_STATUS:
        return "down"
    return "failure"


def failover_reason(exc: BaseException) -> str | None:
    """Why ``exc`` moves a call to the next target, or ``None`` when it reaches the caller.

    Example: ``failover_reason(openai.RateLimitError(...))`` is ``"rate_limited"``. A full
    or slow gate (``Overloaded``) is ``"gate"``; 429s, 5xx, timeouts and connection
    errors are their kind (a probe not sent while an abandoned one still runs:
    ``"probe_running"``); other 4xx and our own refusals (a spent budget, a deadline) are
    ``None``: another target would not change them.
    """
    if isinstance(exc, Overloaded):
        return "gate"
    if isinstance(exc, ProbeStillRunning):
        return "probe_running"
    failure = classify(exc)
    return failure.kind if failure.retryable else None


class _TargetStats:
    __slots__ = ("calls", "failovers", "open_s", "probes_abandoned", "probes_late", "transitions")

    def __init__(self) -> None:
        self.calls = 0
        self.open_s = 0.0
        self.transitions: dict[str, int] = {}
        self.failovers: dict[str, int] = {}
        self.probes_abandoned = 0  # blocking probes left running past breaker_probe_timeout
        self.probes_late = 0  # ... of which still running now


class Breakers:
    """The breakers of every target seen by this process, over one store.

    Example::

        breakers = Breakers(BreakerSettings(cooldown=2.0), LocalBreakerStore(), clock=fake)
        breakers.admit("t").allowed            # True while closed

    Args:
        settings: When breakers open, for how long, how many probes.
        store: Local or Redis state.
        clock: Seconds for the store's ``now`` (monotonic for a local store; wall-clock
            for Redis, shared between hosts).
        tracker: Where transitions are counted; ``None``: the process tracker.
        rand: Draws of [0, 1) for the cool-down's jitter (``random.random``).
    """

    __slots__ = (
        "__weakref__",
        "_clock",
        "_lock",
        "_rand",
        "_stats",
        "_tracker",
        "settings",
        "store",
    )

    def __init__(
        self,
        settings: BreakerSettings,
        store: BreakerStore,
        *,
        clock: Clock = time.monotonic,
        tracker: PerformanceTracker | None = None,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.settings = settings
        self.store = store
        self._clock = clock
        self._rand = rand
        self._tracker = tracker  # None: the process tracker at each count
        self._lock = threading.Lock()
        self._stats: dict[str, _TargetStats] = {}
        _LIVE.add(self)

    # --- decisions ----------------------------------------------------------------------
    def admit(self, target: str) -> Admission:
        """May a call go to ``target`` now (``at``: the store time of the decision)."""
        now = self._clock()
        admission = replace(self.store.admit(target, self.settings, now), at=now)
        self._admitted(target, admission)
        return admission

    async def aadmit(self, target: str) -> Admission:
        """Async twin of :meth:`admit`."""
        now = self._clock()
        admission = replace(await self.store.aadmit(target, self.settings, now), at=now)
        self._admitted(target, admission)
        return admission

    def record(
        self, target: str, outcome: Outcome, *, probe: bool, since: float | None = None
    ) -> Transition | None:
        """Count ``outcome`` of a call to ``target``; logs and counts a transition.

        ``since``: the call's ``Admission.at`` (a success of a call admitted before the
        last failure does not end a run of failures).
        """
        now = self._clock()
        transition = self.store.record(
            target, self.settings, outcome, probe, now, since, self._rand()
        )
        self._transitioned(target, transition)
        return transition

    async def arecord(
        self, target: str, outcome: Outcome, *, probe: bool, since: float | None = None
    ) -> Transition | None:
        """Async twin of :meth:`record`."""
        now = self._clock()
        transition = await self.store.arecord(
            target, self.settings, outcome, probe, now, since, self._rand()
        )
        self._transitioned(target, transition)
        return transition

    def peek(self, target: str) -> tuple[State, float]:
        """``(state, retry_in seconds)`` of ``target``, unchanged."""
        return self.store.peek(target, self.settings, self._clock())

    async def apeek(self, target: str) -> tuple[State, float]:
        """Async twin of :meth:`peek`."""
        return await self.store.apeek(target, self.settings, self._clock())

    def failover(self, target: str, reason: str) -> None:
        """Count a call that left ``target`` for the next one, for ``reason``."""
        with self._lock:
            stats = self._target(target)
            stats.failovers[reason] = stats.failovers.get(reason, 0) + 1
        (self._tracker or get_performance_tracker()).incr(f"fallback.failover.{reason}")

    # --- blocking probes left running (see resilience.probe.run_probe) --------------------
    def late_probes(self, target: str) -> int:
        """Blocking probes of ``target`` abandoned past their bound and still running."""
        with self._lock:
            stats = self._stats.get(target)
            return 0 if stats is None else stats.probes_late

    def probe_abandoned(self, target: str) -> None:
        """Count a blocking probe of ``target`` left running past its bound."""
        with self._lock:
            stats = self._target(target)
            stats.probes_abandoned += 1
            stats.probes_late += 1
        (self._tracker or get_performance_tracker()).incr("breaker.probes_abandoned")

    def late_probe_ended(self, target: str) -> None:
        """An abandoned probe of ``target`` ended (answered, failed or timed out at last)."""
        with self._lock:
            stats = self._target(target)
            stats.probes_late = max(0, stats.probes_late - 1)

    # --- statistics ---------------------------------------------------------------------
    def stats(self) -> dict[str, dict[str, Any]]:
        """Per target seen here: its state and counters.

        Keys: ``state``, ``retry_in_s``, ``calls`` (sent to it),
        ``transitions`` (``opened``/``closed``/``half_open`` counts, seen by this process),
        ``open_s`` (seconds not closed, summed at each close), ``failovers`` by reason,
        ``probes_abandoned`` (blocking probes left running past ``breaker_probe_timeout``)
        and ``probes_late`` (of those, still running now: at most ``breaker_probes``).
        """
        with self._lock:
            names = list(self._stats)
        out: dict[str, dict[str, Any]] = {}
        for name in names:
            state, retry_in = self.peek(name)
            with self._lock:
                s = self._stats[name]
                out[name] = {
                    "state": state,
                    "retry_in_s": retry_in,
                    "calls": s.calls,
                    "transitions": dict(s.transitions),
                    "open_s": s.open_s,
                    "failovers": dict(s.failovers),
                    "probes_abandoned": s.probes_abandoned,
                    "probes_late": s.probes_late,
                }
        return out

    def __repr__(self) -> str:
        return f"<Breakers [targets: {len(self._stats)}] store={self.store!r} {self.settings}>"

    # --- bookkeeping --------------------------------------------------------------------
    def _target(self, target: str) -> _TargetStats:
        stats = self._stats.get(target)
        if stats is None:
            stats = self._stats[target] = _TargetStats()
        return stats

    def _admitted(self, target: str, admission: Admission) -> None:
        with self._lock:
            stats = self._target(target)
            if admission.allowed:
                stats.calls += 1
            if admission.transition:
                stats.transitions[admission.transition] = (
                    stats.transitions.get(admission.transition, 0) + 1
                )

    def _transitioned(self, target: str, transition: Transition | None) -> None:
        if transition is None:
            return
        with self._lock:
            stats = self._target(target)
            stats.transitions[transition.kind] = stats.transitions.get(transition.kind, 0) + 1
            stats.open_s += transition.open_s
        (self._tracker or get_performance_tracker()).incr(f"breaker.{transition.kind}")
        if transition.kind == "reopened":  # a failed probe: once per cool-down, not a warning
            log.info(
                "circuit breaker of %s: the probe failed; open again for %.3g s",
                target,
                transition.cooldown_s,
            )
        elif transition.kind == "opened":
            log.warning(
                "circuit breaker of %s opened: calls go elsewhere or fail fast for %.3g s, "
                "then %d probe call(s)",
                target,
                transition.cooldown_s,
                self.settings.probes,
            )
        else:
            log.warning(
                "circuit breaker of %s closed after %.1f s: the target answers again",
                target,
                transition.open_s,
            )


_LIVE: weakref.WeakSet[Breakers] = weakref.WeakSet()
_SHARED: dict[tuple[Any, ...], Breakers] = {}
_SHARED_LOCK = threading.Lock()


def live_breakers() -> list[Breakers]:
    """Every :class:`Breakers` still in use in this process (the metrics endpoint reads them)."""
    return list(_LIVE)


def breakers_for(
    config: PerformanceConfig, *, store_factory: Callable[[], BreakerStore] | None = None
) -> Breakers:
    """The process-wide :class:`Breakers` of ``config``'s breaker settings and Redis.

    Example: ``breakers_for(PerformanceConfig(breaker_cooldown=2.0))``. With ``redis_url``
    set, the state lives in Redis (:class:`~.redis_store.RedisBreakerStore`, wall-clock
    time) and is shared by every process using that Redis and prefix; otherwise in this
    process (monotonic time).
    """
    settings = BreakerSettings.from_config(config)
    shared = (config.redis_url, config.cache_namespace_prefix) if config.redis_url else None
    key = (settings, shared)
    with _SHARED_LOCK:
        found = _SHARED.get(key)
        if found is not None:
            return found
        if store_factory is not None:
            store: BreakerStore = store_factory()
            clock: Clock = time.monotonic
        elif shared is not None:
            from .redis_store import RedisBreakerStore  # the redis extra, only when asked

            store, clock = RedisBreakerStore.from_config(config), time.time
        else:
            store, clock = LocalBreakerStore(), time.monotonic
        made = _SHARED[key] = Breakers(settings, store, clock=clock)
        return made
