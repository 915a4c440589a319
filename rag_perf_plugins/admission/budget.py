"""Rate budgets: :class:`RateLimits`, the :class:`BudgetStore` seam and the in-process store.

Example::

    store = LocalBudgetStore()
    limits = RateLimits(requests_per_minute=60)              # one per second, burst 1 s
    store.try_reserve("k", limits, requests=1, tokens=0, now=0.0, max_wait=10)   # 0.0
    store.try_reserve("k", limits, requests=1, tokens=0, now=0.0, max_wait=10)   # 1.0

The budget of a key is a GCRA ("virtual scheduling") bucket per dimension (requests,
tokens): reserving moves the bucket's theoretical arrival time forward, so a caller learns
at once the exact time it may send. The arithmetic is here, pure and I/O-free; the Redis
store (:mod:`.redis_store`) runs the same arithmetic as one Lua script. Times in seconds.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Protocol

from ..config import PerformanceConfig

__all__ = ["BudgetStore", "LocalBudgetStore", "RateLimits"]

# Waits shorter than this are rounding noise in the interval sums (seconds).
_EPSILON = 1e-9


@dataclass(frozen=True, slots=True)
class RateLimits:
    """The rate budget of one key.

    Example: ``RateLimits(requests_per_minute=600, tokens_per_minute=200_000)``.

    Attributes:
        requests_per_minute: Request budget; ``None`` means unlimited.
        tokens_per_minute: Token budget; ``None`` means unlimited.
        burst_seconds: Largest burst, as seconds of budget (at least one request's worth).
    """

    requests_per_minute: float | None = None
    tokens_per_minute: float | None = None
    burst_seconds: float = 1.0

    def __post_init__(self) -> None:
        for name in ("requests_per_minute", "tokens_per_minute"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                msg = f"{name} must be > 0 (per minute) or None, got {value!r}"
                raise ValueError(msg)
        if not self.burst_seconds > 0:
            msg = f"burst_seconds must be > 0 (seconds), got {self.burst_seconds!r}"
            raise ValueError(msg)

    @classmethod
    def from_config(cls, config: PerformanceConfig) -> RateLimits:
        """The limits in ``requests_per_minute``, ``tokens_per_minute``, ``rate_burst_seconds``."""
        return cls(config.requests_per_minute, config.tokens_per_minute, config.rate_burst_seconds)

    @property
    def unlimited(self) -> bool:
        """True when neither requests nor tokens are limited."""
        return self.requests_per_minute is None and self.tokens_per_minute is None


class BudgetStore(Protocol):
    """Where the rate budgets of keys live: this process, or Redis.

    Every method has an async twin (``a`` prefix) with the same arguments and answers;
    the gate's ``async with acquire()`` path awaits the twins, ``acquire`` calls the
    blocking methods. Every method is atomic per key and thread-safe. ``now`` is the
    caller's clock in seconds; a store with its own clock (Redis ``TIME``) may ignore it,
    which is why waits are returned as relative seconds. Amounts are requests and tokens;
    negative amounts in :meth:`adjust` refund.
    """

    def try_reserve(
        self,
        key: str,
        limits: RateLimits,
        *,
        requests: int,
        tokens: int,
        now: float,
        max_wait: float,
    ) -> float:
        """Seconds until the amounts may be sent; debited only when that is ``<= max_wait``."""
        ...

    def peek(
        self, key: str, limits: RateLimits, *, requests: int, tokens: int, now: float
    ) -> float:
        """Seconds until the amounts could be sent, debiting nothing."""
        ...

    def adjust(
        self, key: str, limits: RateLimits, *, requests: int, tokens: int, now: float
    ) -> None:
        """Debit (positive) or refund (negative) amounts, without waiting."""
        ...

    def pause(self, key: str, limits: RateLimits, *, seconds: float, now: float) -> None:
        """Send nothing on ``key`` for ``seconds``; afterwards resume at the rate, no burst."""
        ...

    def paused_for(self, key: str, *, now: float) -> float:
        """Seconds left of a pause on ``key`` (0.0 when not paused)."""
        ...

    def clamp(
        self, key: str, limits: RateLimits, *, requests: int | None, tokens: int | None, now: float
    ) -> None:
        """Let at most ``requests``/``tokens`` leave now (the provider's remaining budget)."""
        ...

    # The async twins: same arguments, same answers. The gate's async path awaits these,
    # so a store that does I/O (Redis) never blocks the event loop.
    async def atry_reserve(
        self,
        key: str,
        limits: RateLimits,
        *,
        requests: int,
        tokens: int,
        now: float,
        max_wait: float,
    ) -> float:
        """Async :meth:`try_reserve`."""
        ...

    async def apeek(
        self, key: str, limits: RateLimits, *, requests: int, tokens: int, now: float
    ) -> float:
        """Async :meth:`peek`."""
        ...

    async def aadjust(
        self, key: str, limits: RateLimits, *, requests: int, tokens: int, now: float
    ) -> None:
        """Async :meth:`adjust`."""
        ...

    async def apause(self, key: str, limits: RateLimits, *, seconds: float, now: float) -> None:
        """Async :meth:`pause`."""
        ...

    async def apaused_for(self, key: str, *, now: float) -> float:
        """Async :meth:`paused_for`."""
        ...

    async def aclamp(
        self, key: str, limits: RateLimits, *, requests: int | None, tokens: int | None, now: float
    ) -> None:
        """Async :meth:`clamp`."""
        ...


class _KeyState:
    __slots__ = ("paused_until", "tat_requests", "tat_tokens")

    def __init__(self) -> None:
        # Theoretical arrival times: the clock time at which each bucket is empty again.
        self.tat_requests = -math.inf
        self.tat_tokens = -math.inf
        self.paused_until = -math.inf


def _interval(per_minute: float | None) -> float:
    """Seconds of budget one unit costs (0.0 when unlimited)."""
    return 0.0 if per_minute is None else 60.0 / per_minute


def _grant(tat: float, amount: int, interval: float, burst_s: float, now: float) -> float:
    """Earliest time ``amount`` fits in a GCRA bucket whose theoretical arrival time is ``tat``."""
    if interval == 0.0 or amount <= 0:
        return now
    # Tolerance: the burst, but at least one unit, or a slow limit could admit nothing.
    tolerance = max(burst_s, interval)
    # A request larger than the whole burst waits for an empty bucket and leaves it in debt.
    at = tat - max(0.0, tolerance - amount * interval)
    # Sums of float intervals drift by ulps; a nanosecond of "wait" is no wait.
    return now if at - now <= _EPSILON else at


class LocalBudgetStore:
    """The in-process :class:`BudgetStore`: one GCRA bucket pair per key, behind one lock.

    Example::

        store = LocalBudgetStore()
        limits = RateLimits(requests_per_minute=60)              # one per second, burst 1 s
        store.try_reserve("k", limits, requests=1, tokens=0, now=0.0, max_wait=10)   # 0.0
        store.try_reserve("k", limits, requests=1, tokens=0, now=0.0, max_wait=10)   # 1.0

    A fresh key starts with a full burst (``burst_seconds`` of budget), never a minute's.
    Memory grows with the number of keys only. Not shared between processes.
    """

    __slots__ = ("_keys", "_lock")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._keys: dict[str, _KeyState] = {}

    def _state(self, key: str) -> _KeyState:
        state = self._keys.get(key)
        if state is None:
            state = self._keys[key] = _KeyState()
        return state

    @staticmethod
    def _when(
        state: _KeyState, limits: RateLimits, requests: int, tokens: int, now: float
    ) -> float:
        burst = limits.burst_seconds
        return max(
            now,
            state.paused_until,
            _grant(state.tat_requests, requests, _interval(limits.requests_per_minute), burst, now),
            _grant(state.tat_tokens, tokens, _interval(limits.tokens_per_minute), burst, now),
        )

    def try_reserve(
        self,
        key: str,
        limits: RateLimits,
        *,
        requests: int,
        tokens: int,
        now: float,
        max_wait: float,
    ) -> float:
        """Seconds until the amounts may be sent; debited only when that is ``<= max_wait``."""
        if limits.requests_per_minute is None and limits.tokens_per_minute is None:
            # Nothing to debit (each unit costs 0 s): only a provider's pause can hold a
            # caller back, and the buckets' arrival times need no update.
            return self.paused_for(key, now=now)
        with self._lock:
            state = self._state(key)
            at = self._when(state, limits, requests, tokens, now)
            wait = at - now
            if wait <= max_wait:
                state.tat_requests = max(state.tat_requests, at) + requests * _interval(
                    limits.requests_per_minute
                )
                state.tat_tokens = max(state.tat_tokens, at) + tokens * _interval(
                    limits.tokens_per_minute
                )
            return wait

    def peek(
        self, key: str, limits: RateLimits, *, requests: int, tokens: int, now: float
    ) -> float:
        """Seconds until the amounts could be sent, debiting nothing."""
        with self._lock:
            return self._when(self._state(key), limits, requests, tokens, now) - now

    def adjust(
        self, key: str, limits: RateLimits, *, requests: int, tokens: int, now: float
    ) -> None:
        """Debit (positive) or refund (negative) amounts, without waiting."""
        with self._lock:
            state = self._state(key)
            # A debit starts from now at the earliest (an idle bucket holds no credit); a
            # refund may take the arrival time into the past, which reads as an empty bucket.
            if requests:
                base = max(state.tat_requests, now) if requests > 0 else state.tat_requests
                state.tat_requests = base + requests * _interval(limits.requests_per_minute)
            if tokens:
                base = max(state.tat_tokens, now) if tokens > 0 else state.tat_tokens
                state.tat_tokens = base + tokens * _interval(limits.tokens_per_minute)

    def pause(self, key: str, limits: RateLimits, *, seconds: float, now: float) -> None:
        """Send nothing on ``key`` for ``seconds``; afterwards resume at the rate, no burst."""
        with self._lock:
            state = self._state(key)
            state.paused_until = max(state.paused_until, now + seconds)
            interval = _interval(limits.requests_per_minute)
            if interval:
                # A full request bucket at the end of the pause: one request then, the next
                # one interval later, instead of the whole burst at once.
                tolerance = max(limits.burst_seconds, interval)
                state.tat_requests = max(
                    state.tat_requests, state.paused_until + tolerance - interval
                )
            state.tat_tokens = max(state.tat_tokens, state.paused_until)

    def paused_for(self, key: str, *, now: float) -> float:
        """Seconds left of a pause on ``key`` (0.0 when not paused)."""
        # No lock: one dict read and one float read, each atomic (a pause only grows).
        state = self._keys.get(key)
        return 0.0 if state is None else max(0.0, state.paused_until - now)

    def clamp(
        self, key: str, limits: RateLimits, *, requests: int | None, tokens: int | None, now: float
    ) -> None:
        """Let at most ``requests``/``tokens`` leave now (the provider's remaining budget)."""
        with self._lock:
            state = self._state(key)
            for remaining, per_minute, attr in (
                (requests, limits.requests_per_minute, "tat_requests"),
                (tokens, limits.tokens_per_minute, "tat_tokens"),
            ):
                if remaining is None or per_minute is None:
                    continue
                interval = _interval(per_minute)
                tolerance = max(limits.burst_seconds, interval)
                # At most `remaining` units fit below the tolerance from now on.
                floor = now + tolerance - max(0, remaining) * interval
                setattr(state, attr, max(getattr(state, attr), floor))

    # The async twins do no I/O: the lock is held for microseconds, never across an await.
    async def atry_reserve(
        self,
        key: str,
        limits: RateLimits,
        *,
        requests: int,
        tokens: int,
        now: float,
        max_wait: float,
    ) -> float:
        """Async :meth:`try_reserve` (runs it inline: no I/O)."""
        return self.try_reserve(
            key, limits, requests=requests, tokens=tokens, now=now, max_wait=max_wait
        )

    async def apeek(
        self, key: str, limits: RateLimits, *, requests: int, tokens: int, now: float
    ) -> float:
        """Async :meth:`peek` (runs it inline: no I/O)."""
        return self.peek(key, limits, requests=requests, tokens=tokens, now=now)

    async def aadjust(
        self, key: str, limits: RateLimits, *, requests: int, tokens: int, now: float
    ) -> None:
        """Async :meth:`adjust` (runs it inline: no I/O)."""
        self.adjust(key, limits, requests=requests, tokens=tokens, now=now)

    async def apause(self, key: str, limits: RateLimits, *, seconds: float, now: float) -> None:
        """Async :meth:`pause` (runs it inline: no I/O)."""
        self.pause(key, limits, seconds=seconds, now=now)

    async def apaused_for(self, key: str, *, now: float) -> float:
        """Async :meth:`paused_for` (runs it inline: no I/O)."""
        return self.paused_for(key, now=now)

    async def aclamp(
        self, key: str, limits: RateLimits, *, requests: int | None, tokens: int | None, now: float
    ) -> None:
        """Async :meth:`clamp` (runs it inline: no I/O)."""
        self.clamp(key, limits, requests=requests, tokens=tokens, now=now)

    def __repr__(self) -> str:
        return f"<LocalBudgetStore keys={len(self._keys)}>"
