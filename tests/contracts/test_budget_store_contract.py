"""The budget store contract, run against LocalBudgetStore and RedisBudgetStore, both twins.

One suite (``TestBudgetStoreContract``) checks the GCRA semantics the
:class:`~rag_perf_plugins.admission.budget.BudgetStore` protocol and ``admission/budget.py``
promise, through public methods only, on every store and through both the blocking
methods and their ``a``-prefixed async twins:

- a fresh key starts with a full burst (``burst_seconds`` of budget), never a minute's;
- reservations are scheduled first come, first served, and each learns its exact wait;
- a reservation past ``max_wait`` is refused and debits nothing; ``peek`` never debits;
- ``adjust`` debits (positive) and refunds (negative);
- a request larger than the burst waits for an empty bucket and leaves a debt;
- ``pause`` holds every request back and resumes at the rate, without a burst;
- ``clamp`` lets at most the provider's remaining budget leave now, and never loosens.

Time: the local store takes ``now`` from the caller, so it is driven by a ``FakeClock``
and its answers are exact. The Redis store reads Redis ``TIME`` and ignores ``now``, so
real time passes between its calls and makes its waits shorter than the exact ones, by at
most the time that passed (GCRA is monotone in time): each Redis answer must lie between
the exact answer less the real time elapsed since the test's first call, and the exact
answer plus :data:`ROUNDING`. On a quiet machine that is a window of a millisecond or
two; on a loaded one it widens by exactly the delay, so the suite never flakes and never
accepts an answer that no timing could explain. Where time does not matter, both are
exact (a fresh key's first reservation waits exactly 0.0). :meth:`Budget.advance` moves
the fake clock, or waits for real on Redis (the only sleep here, a few hundredths of a
second).

To add a store, add a case to ``STORES`` and build it in the ``budget`` fixture.
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import pytest

from rag_perf_plugins._clock import FakeClock
from rag_perf_plugins.admission import LocalBudgetStore, RateLimits
from rag_perf_plugins.admission.budget import BudgetStore

# Redis stores times rounded to microseconds, so an answer may exceed the exact one by that.
ROUNDING = 1e-5
# Slack on the elapsed real time: Redis TIME and our monotonic clock are two clocks.
CLOCKS = 1e-3


@dataclass(frozen=True)
class Near:
    """Equal to a wait within ``[expected - below, expected + above]`` (seconds)."""

    expected: float
    below: float
    above: float

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, (int, float)):
            return NotImplemented
        return self.expected - self.below <= other <= self.expected + self.above

    def __hash__(self) -> int:
        return hash(self.expected)

    def __repr__(self) -> str:
        return f"{self.expected:g} (-{self.below:g}/+{self.above:g})"


class Budget:
    """One store through one twin (blocking or async), with the suite's notion of time.

    Every method awaits: the async twin is awaited, the blocking method is called inline.
    """

    def __init__(self, store: BudgetStore, *, twin: str, exact: bool) -> None:
        self.store = store
        self.twin = twin
        self.exact = exact
        self.clock = FakeClock(start=1000.0)
        self.key = f"contract/{uuid.uuid4().hex[:12]}"
        # Real time of the test's first call, and the time advance() let pass since.
        self.started: float | None = None
        self.advanced = 0.0

    def _now(self) -> float:
        """The ``now`` argument of the next call; notes when the first call was made."""
        if self.started is None:
            self.started = time.monotonic()
        return self.clock()

    # --- answers --------------------------------------------------------------------------
    def near(self, expected: float) -> Near:
        """What a wait of exactly ``expected`` seconds looks like from this store."""
        if self.exact:
            return Near(expected, 1e-9, 1e-9)  # float sums of intervals drift by ulps
        assert self.started is not None, "near() describes the answer of a call made"
        # Redis saw this much more time pass than the exact answers assume.
        elapsed = time.monotonic() - self.started - self.advanced
        return Near(expected, max(0.0, elapsed) + CLOCKS, ROUNDING)

    def all_near(self, expected: Sequence[float]) -> list[Near]:
        return [self.near(e) for e in expected]

    async def advance(self, seconds: float) -> None:
        """Let ``seconds`` pass: on the fake clock, or for real where Redis keeps time."""
        self.advanced += seconds
        if self.exact:
            self.clock.advance(seconds)
        else:
            await asyncio.sleep(seconds)

    # --- the protocol, through the chosen twin --------------------------------------------
    async def reserve(
        self,
        limits: RateLimits,
        *,
        requests: int = 1,
        tokens: int = 0,
        max_wait: float = math.inf,
        key: str | None = None,
    ) -> float:
        args: dict[str, Any] = {
            "requests": requests,
            "tokens": tokens,
            "now": self._now(),
            "max_wait": max_wait,
        }
        if self.twin == "async":
            return await self.store.atry_reserve(key or self.key, limits, **args)
        return self.store.try_reserve(key or self.key, limits, **args)

    async def reserve_many(
        self, limits: RateLimits, n: int, *, requests: int = 1, tokens: int = 0
    ) -> list[float]:
        return [await self.reserve(limits, requests=requests, tokens=tokens) for _ in range(n)]

    async def peek(self, limits: RateLimits, *, requests: int = 1, tokens: int = 0) -> float:
        args: dict[str, Any] = {"requests": requests, "tokens": tokens, "now": self._now()}
        if self.twin == "async":
            return await self.store.apeek(self.key, limits, **args)
        return self.store.peek(self.key, limits, **args)

    async def adjust(self, limits: RateLimits, *, requests: int = 0, tokens: int = 0) -> None:
        args: dict[str, Any] = {"requests": requests, "tokens": tokens, "now": self._now()}
        if self.twin == "async":
            await self.store.aadjust(self.key, limits, **args)
        else:
            self.store.adjust(self.key, limits, **args)

    async def pause(self, limits: RateLimits, seconds: float) -> None:
        if self.twin == "async":
            await self.store.apause(self.key, limits, seconds=seconds, now=self._now())
        else:
            self.store.pause(self.key, limits, seconds=seconds, now=self._now())

    async def paused_for(self, key: str | None = None) -> float:
        if self.twin == "async":
            return await self.store.apaused_for(key or self.key, now=self._now())
        return self.store.paused_for(key or self.key, now=self._now())

    async def clamp(
        self, limits: RateLimits, *, requests: int | None = None, tokens: int | None = None
    ) -> None:
        args: dict[str, Any] = {"requests": requests, "tokens": tokens, "now": self._now()}
        if self.twin == "async":
            await self.store.aclamp(self.key, limits, **args)
        else:
            self.store.clamp(self.key, limits, **args)


STORES = [
    pytest.param(("local", "sync"), id="local-sync"),
    pytest.param(("local", "async"), id="local-async"),
    pytest.param(("redis", "sync"), id="redis-sync", marks=pytest.mark.redis),
    pytest.param(("redis", "async"), id="redis-async", marks=pytest.mark.redis),
]


@pytest.fixture(params=STORES)
async def budget(request: pytest.FixtureRequest) -> AsyncIterator[Budget]:
    kind, twin = request.param
    if kind == "local":
        yield Budget(LocalBudgetStore(), twin=twin, exact=True)
        return
    from rag_perf_plugins.admission.redis_store import RedisBudgetStore

    url: str = request.getfixturevalue("redis_url")
    store = RedisBudgetStore(url, prefix="contract", timeout=2.0, fallback="fail-closed")
    try:
        yield Budget(store, twin=twin, exact=False)
        # Every answer above came from Redis, none from the local fallback.
        stats = store.stats()
        assert stats["fallback_calls"] == 0 and stats["redis_errors"] == 0, stats
        assert stats["redis_calls"] > 0
    finally:
        await store.aclose()
        store.close()


RPM_600 = RateLimits(requests_per_minute=600, burst_seconds=1.0)  # 0.1 s apart, burst of 10
RPM_60 = RateLimits(requests_per_minute=60, burst_seconds=1.0)  # 1 s apart, burst of 1
TPM_6000 = RateLimits(tokens_per_minute=6000, burst_seconds=1.0)  # 100 tokens/s, burst 100
TPM_600 = RateLimits(tokens_per_minute=600, burst_seconds=1.0)  # 10 tokens/s, burst 10


class TestBudgetStoreContract:
    """What every :class:`BudgetStore` answers, through either twin."""

    # --- a fresh key -------------------------------------------------------------------
    async def test_a_fresh_key_waits_exactly_nothing(self, budget: Budget) -> None:
        # Exact on every store: no time has to pass for this answer.
        assert await budget.reserve(RPM_600) == 0.0
        other = budget.key + "-other"
        assert await budget.reserve(TPM_6000, requests=0, tokens=100, key=other) == 0.0
        assert await budget.peek(RPM_60, requests=0, tokens=0) == 0.0
        assert await budget.paused_for("never-seen") == 0.0

    async def test_unlimited_never_waits(self, budget: Budget) -> None:
        unlimited = RateLimits()
        waits = await budget.reserve_many(unlimited, 50, requests=5, tokens=10_000)
        assert waits == [0.0] * 50

    async def test_a_fresh_key_has_one_burst_not_a_minute(self, budget: Budget) -> None:
        waits = await budget.reserve_many(RPM_600, 15)
        assert waits == budget.all_near([0.0] * 10 + [0.1, 0.2, 0.3, 0.4, 0.5])

    async def test_burst_seconds_sizes_the_burst(self, budget: Budget) -> None:
        limits = RateLimits(requests_per_minute=600, burst_seconds=2.0)  # burst of 20
        waits = await budget.reserve_many(limits, 21)
        assert waits == budget.all_near([0.0] * 20 + [0.1])

    async def test_a_limit_slower_than_the_burst_admits_one(self, budget: Budget) -> None:
        limits = RateLimits(requests_per_minute=10, burst_seconds=1.0)  # one per 6 s
        assert await budget.reserve_many(limits, 3) == budget.all_near([0.0, 6.0, 12.0])

    # --- FIFO and max_wait ---------------------------------------------------------------
    async def test_fifo_each_reservation_learns_its_exact_wait(self, budget: Budget) -> None:
        # 100 tokens empty the burst; a big request then a small one: the small one is
        # scheduled after the big one, never before it.
        assert await budget.reserve(TPM_6000, requests=0, tokens=100) == 0.0
        big = await budget.reserve(TPM_6000, requests=0, tokens=90)
        small = await budget.reserve(TPM_6000, requests=0, tokens=1)
        assert big == budget.near(0.9)
        assert small == budget.near(0.91)

    async def test_a_refused_reservation_debits_nothing(self, budget: Budget) -> None:
        limits = RateLimits(requests_per_minute=6, burst_seconds=1.0)  # one per 10 s
        assert await budget.reserve(limits, max_wait=0.0) == 0.0
        assert await budget.reserve(limits, max_wait=5.0) == budget.near(10.0)  # refused
        assert await budget.reserve(limits, max_wait=5.0) == budget.near(10.0)  # still 10 s
        assert await budget.peek(limits) == budget.near(10.0)
        assert await budget.reserve(limits, max_wait=60.0) == budget.near(10.0)  # taken
        assert await budget.peek(limits) == budget.near(20.0)

    async def test_peek_debits_nothing(self, budget: Budget) -> None:
        for _ in range(20):
            assert await budget.peek(RPM_60) == 0.0
        assert await budget.reserve(RPM_60) == 0.0
        assert await budget.peek(RPM_60) == budget.near(1.0)

    async def test_the_slower_dimension_decides(self, budget: Budget) -> None:
        limits = RateLimits(requests_per_minute=60, tokens_per_minute=6000, burst_seconds=1.0)
        assert await budget.reserve(limits, requests=1, tokens=10) == 0.0
        # Requests are the bottleneck (1 s), though 90 tokens are left.
        assert await budget.peek(limits, requests=1, tokens=10) == budget.near(1.0)
        # Tokens are: 300 tokens are past the burst and wait for an empty bucket, 0.1 s on.
        assert await budget.peek(limits, requests=0, tokens=300) == budget.near(0.1)
        assert await budget.peek(limits, requests=1, tokens=300) == budget.near(1.0)

    async def test_keys_are_independent(self, budget: Budget) -> None:
        await budget.reserve_many(RPM_60, 3)
        assert await budget.reserve(RPM_60, key=budget.key + "-b") == 0.0
        assert await budget.peek(RPM_60) == budget.near(3.0)

    async def test_time_refills_the_bucket(self, budget: Budget) -> None:
        limits = RateLimits(requests_per_minute=3000, burst_seconds=0.1)  # 0.02 s, burst 5
        assert await budget.reserve_many(limits, 5) == [0.0] * 5
        assert await budget.peek(limits) == budget.near(0.02)
        await budget.advance(0.05)  # two intervals and a half: two requests' worth
        assert await budget.reserve_many(limits, 2) == [0.0, 0.0]
        # The third waits for the rest of its interval: 0.01 s, less the real time spent.
        assert await budget.peek(limits) == budget.near(0.01)

    # --- over-burst, debits and refunds --------------------------------------------------
    async def test_over_the_burst_waits_for_an_empty_bucket_and_leaves_debt(
        self, budget: Budget
    ) -> None:
        assert await budget.reserve(TPM_6000, requests=0, tokens=50) == 0.0
        # 500 tokens > the whole burst of 100: admitted once the bucket is empty (0.5 s) ...
        assert await budget.reserve(TPM_6000, requests=0, tokens=500) == budget.near(0.5)
        # ... leaving 5 s of debt that the next caller waits behind.
        assert await budget.reserve(TPM_6000, requests=0, tokens=1) == budget.near(4.51)

    async def test_over_the_burst_on_a_fresh_key_is_admitted_at_once(self, budget: Budget) -> None:
        assert await budget.reserve(TPM_6000, requests=0, tokens=300) == 0.0
        assert await budget.peek(TPM_6000, requests=0, tokens=1) == budget.near(2.01)

    async def test_refunds_and_debits_move_the_budget(self, budget: Budget) -> None:
        assert await budget.reserve(TPM_600, requests=0, tokens=10) == 0.0
        assert await budget.peek(TPM_600, requests=0, tokens=8) == budget.near(0.8)
        await budget.adjust(TPM_600, tokens=-5)  # the call used 5 tokens fewer
        assert await budget.peek(TPM_600, requests=0, tokens=8) == budget.near(0.3)
        await budget.adjust(TPM_600, tokens=5)  # ... or more
        assert await budget.peek(TPM_600, requests=0, tokens=8) == budget.near(0.8)

    async def test_a_refund_of_requests(self, budget: Budget) -> None:
        assert await budget.reserve(RPM_60) == 0.0
        assert await budget.peek(RPM_60) == budget.near(1.0)
        await budget.adjust(RPM_60, requests=-1)
        assert await budget.peek(RPM_60) == 0.0

    async def test_a_debit_on_an_idle_key_starts_now(self, budget: Budget) -> None:
        # An idle bucket holds no credit beyond its burst: a debit counts from now.
        await budget.adjust(TPM_600, tokens=15)
        assert await budget.peek(TPM_600, requests=0, tokens=10) == budget.near(1.5)

    # --- pause -------------------------------------------------------------------------
    async def test_pause_holds_everything_then_resumes_at_the_rate(self, budget: Budget) -> None:
        limits = RateLimits(requests_per_minute=60, burst_seconds=3.0)  # burst of 3
        await budget.pause(limits, 2.0)
        assert await budget.paused_for() == budget.near(2.0)
        # One request when the pause ends, the next one interval later: no burst.
        assert await budget.reserve_many(limits, 3) == budget.all_near([2.0, 3.0, 4.0])

    async def test_pause_without_limits_still_pauses(self, budget: Budget) -> None:
        await budget.pause(RateLimits(), 1.5)
        assert await budget.reserve(RateLimits(), requests=1, tokens=1) == budget.near(1.5)

    async def test_a_shorter_pause_does_not_shorten_a_longer_one(self, budget: Budget) -> None:
        await budget.pause(RPM_600, 5.0)
        await budget.pause(RPM_600, 1.0)
        assert await budget.paused_for() == budget.near(5.0)
        assert await budget.paused_for(budget.key + "-other") == 0.0

    async def test_a_pause_ends(self, budget: Budget) -> None:
        await budget.pause(RPM_600, 0.03)
        await budget.advance(0.04)
        assert await budget.paused_for() == 0.0
        assert await budget.reserve(RPM_600) == 0.0
        # At the rate from the pause's end, without a burst: one interval after it.
        assert await budget.reserve(RPM_600) == budget.near(0.03 + 0.1 - 0.04)

    # --- clamp -------------------------------------------------------------------------
    async def test_clamp_lets_at_most_the_remaining_requests_leave(self, budget: Budget) -> None:
        await budget.clamp(RPM_600, requests=2)
        assert await budget.reserve_many(RPM_600, 4) == budget.all_near([0.0, 0.0, 0.1, 0.2])

    async def test_clamp_to_nothing(self, budget: Budget) -> None:
        await budget.clamp(RPM_600, requests=0)
        assert await budget.reserve(RPM_600) == budget.near(0.1)
        await budget.clamp(TPM_6000, tokens=-3)  # a negative remaining reads as none left
        assert await budget.peek(TPM_6000, requests=0, tokens=1) == budget.near(0.01)

    async def test_clamp_of_tokens(self, budget: Budget) -> None:
        await budget.clamp(TPM_6000, tokens=30)
        assert await budget.reserve(TPM_6000, requests=0, tokens=30) == 0.0
        assert await budget.reserve(TPM_6000, requests=0, tokens=1) == budget.near(0.01)

    async def test_clamp_never_loosens(self, budget: Budget) -> None:
        assert await budget.reserve_many(RPM_600, 8) == [0.0] * 8  # 2 of the burst left
        await budget.clamp(RPM_600, requests=5)  # the provider says 5: we know better
        await budget.clamp(RPM_600)  # no header: nothing changes
        assert await budget.reserve_many(RPM_600, 3) == budget.all_near([0.0, 0.0, 0.1])

    async def test_clamp_of_an_unlimited_dimension_does_nothing(self, budget: Budget) -> None:
        await budget.clamp(RPM_600, tokens=0)  # no token limit configured
        assert await budget.reserve(RPM_600, tokens=1000) == 0.0
