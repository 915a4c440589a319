"""Rate limits and seeded faults of the simulator: pure bookkeeping, no I/O, no sleeping.

Example::

    bucket = TokenBucket(rate_per_minute=60, burst_seconds=1.0, clock=clock)
    bucket.try_take(1.0)          # 0.0: admitted
    bucket.try_take(1.0)          # 1.0: refused, enough budget in 1.0 s
    clock.advance(1.0)
    bucket.try_take(1.0)          # 0.0

    faults = FaultDice(options)
    faults.roll()                 # Roll(drop=False, rate_limit=False, error=0, slow=False, ...)

Both are called only from the simulator's event-loop thread; neither locks.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from .._clock import Clock
from .options import SimulatorOptions

__all__ = ["FaultDice", "Roll", "TokenBucket", "format_reset"]


class TokenBucket:
    """A continuously refilled token bucket: ``rate_per_minute``, ``burst_seconds`` of budget.

    Example::

        rpm = TokenBucket(rate_per_minute=600, burst_seconds=1.0)   # 10 per second, hold 10
        wait_s = rpm.try_take(1.0)    # 0.0 when admitted, else seconds until it would be

    Starts full. A request costing more than the whole capacity is admitted when the bucket
    is full and leaves it in debt, so huge requests are slow rather than impossible and the
    long-run rate stays exact. Not thread-safe (the simulator uses it from one loop).
    """

    __slots__ = ("_clock", "_level", "_stamp", "capacity", "rate_per_s")

    def __init__(self, *, rate_per_minute: float, burst_seconds: float, clock: Clock) -> None:
        self.rate_per_s = rate_per_minute / 60.0
        # At least one unit, or a 30 RPM bucket with 1 s of burst could never admit anything.
        self.capacity = max(1.0, self.rate_per_s * burst_seconds)
        self._clock = clock
        self._level = self.capacity
        self._stamp = clock()

    def _refill(self) -> float:
        now = self._clock()
        elapsed = now - self._stamp
        if elapsed > 0:
            self._level = min(self.capacity, self._level + elapsed * self.rate_per_s)
            self._stamp = now
        return self._level

    def wait_for(self, cost: float) -> float:
        """Seconds until ``cost`` would be admitted (0.0 when it would be now); takes nothing."""
        level = self._refill()
        need = min(cost, self.capacity)
        if level >= need:
            return 0.0
        return (need - level) / self.rate_per_s

    def take(self, cost: float) -> None:
        """Take ``cost`` unconditionally (the level may go negative: debt)."""
        self._refill()
        self._level -= cost

    def try_take(self, cost: float) -> float:
        """Take ``cost`` if admitted and return 0.0; else take nothing and return the wait (s)."""
        wait = self.wait_for(cost)
        if wait == 0.0:
            self._level -= cost
        return wait

    def remaining(self) -> int:
        """Whole units available now (never negative)."""
        return max(0, math.floor(self._refill()))

    def reset_after(self) -> float:
        """Seconds until the bucket is full again."""
        return max(0.0, (self.capacity - self._refill()) / self.rate_per_s)

    def __repr__(self) -> str:
        return (
            f"<TokenBucket level={self._refill():.1f}/{self.capacity:g} "
            f"rate={self.rate_per_s * 60.0:g}/min>"
        )


def format_reset(seconds: float) -> str:
    """A duration the way OpenAI writes ``x-ratelimit-reset-*``: ``120ms``, ``1.5s``, ``6m0s``."""
    if seconds < 1.0:
        return f"{math.ceil(seconds * 1000)}ms"
    if seconds < 60.0:
        return f"{round(seconds, 3):g}s"
    minutes, rest = divmod(seconds, 60.0)
    return f"{int(minutes)}m{round(rest, 3):g}s"


@dataclass(frozen=True, slots=True)
class Roll:
    """The seeded fault decisions for one request.

    ``error`` is 0 (no error), 500 or 503; ``jitter_s`` is the jitter in seconds.
    """

    drop: bool
    rate_limit: bool
    error: int
    slow: bool
    truncate: bool
    jitter_s: float
    sample: int
    overload: bool = False


class FaultDice:
    """Draws every random decision of a request from one generator seeded with ``seed``.

    Example::

        dice = FaultDice(SimulatorOptions(error_rate=0.5, seed=3))
        [dice.roll().error for _ in range(4)]     # the same list on every run

    Each roll draws the same number of values whatever the outcomes, so the sequence of
    decisions depends only on the seed and the order in which requests arrive (with
    concurrent clients that order is the server's arrival order).
    """

    __slots__ = ("_options", "_random", "_zero")

    def __init__(self, options: SimulatorOptions) -> None:
        self._options = options
        self._random = random.Random(options.seed)
        o = options
        self._zero = not (
            o.drop_rate
            or o.rate_limit_rate
            or o.error_rate
            or o.slow_rate
            or o.truncate_rate
            or o.overload_rate
        ) and not (o.jitter_ms)

    def roll(self) -> Roll:
        """The decisions for the next request."""
        o = self._options
        r = self._random.random
        if self._zero:
            # Still advance the generator, so sampled answers differ between requests.
            return Roll(False, False, 0, False, False, 0.0, self._random.getrandbits(32))
        drop = r() < o.drop_rate
        rate_limit = r() < o.rate_limit_rate
        error_draw, kind_draw = r(), r()
        error = 0 if error_draw >= o.error_rate else (503 if kind_draw < 0.5 else 500)
        slow = r() < o.slow_rate
        truncate = r() < o.truncate_rate
        jitter_s = r() * o.jitter_ms / 1000.0
        sample = self._random.getrandbits(32)
        # Drawn last and only when asked for, so seeded runs without it keep their sequence.
        overload = bool(o.overload_rate) and r() < o.overload_rate
        return Roll(drop, rate_limit, error, slow, truncate, jitter_s, sample, overload)
