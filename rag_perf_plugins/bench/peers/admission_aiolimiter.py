"""Admission side by side with aiolimiter's ``AsyncLimiter``: rate, mixed sizes, oversize.

Example::

    rag-perf bench --only admission

aiolimiter is the obvious off-the-shelf async rate limiter, and the gate's budget once used
it (see the module docstring of :mod:`rag_perf_plugins.admission.gate` for why it no longer
does). Three comparisons, each measured in the same run:

* Rate: ``AsyncLimiter(100, 1.0)`` (100 per second with a burst of one second, the same
  rate and burst as the gate at 6,000 RPM with ``rate_burst_seconds=1.0``; the gate holds
  back 0.05 s of that burst) and our gate, asked by the same 50 eager tasks
  (:func:`~rag_perf_plugins.bench.suites.admission.measure_rate`): achieved fraction of
  the rate over a steady window, and process CPU per admission.
* Mixed sizes under a token budget (TPM): the same 50 eager tasks; each request is 100
  tokens, one in ten is 800 (8x), drawn from a seeded generator per task so both limiters
  see the same sequence. aiolimiter spends tokens with ``acquire(amount)``; the gate with
  ``acquire(tokens=...)``. Reported: p95 queue wait (seconds) of the big and of the small
  requests, and tokens admitted as a fraction of the budget. aiolimiter keeps its waiters
  in a heap ordered by amount and wakes the smallest first, so under steady demand a big
  request waits until no smaller one is queued; the gate is FIFO.
* A request above the whole burst (2 s of budget): ``AsyncLimiter.acquire`` raises
  ``ValueError``; the gate admits it and leaves the bucket in debt, which later requests
  wait out.

aiolimiter is imported inside the functions only (it ships in the ``bench`` extra).
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from ..._clock import monotonic
from ...admission import AdmissionGate, LocalBudgetStore
from ...tracking import NULL_TRACKER
from ..registry import BenchContext, Result, benchmark
from ..suites.admission import BENCH_RPM, BENCH_TASKS, measure_gate, measure_rate

__all__ = ["MixedMeasurement", "OversizeOutcome", "measure_mixed", "oversize"]

SMALL_TOKENS = 100
BIG_TOKENS = 800  # 8x a small request
BIG_SHARE = 0.1
# 400 requests/s at the mean size (170 tokens): enough big requests for a p95 in a short window.
MIXED_TOKENS_PER_S = 68_000
_AIOLIMITER = "aiolimiter AsyncLimiter"

AcquireTokens = Callable[[int], Awaitable[object]]


@dataclass(frozen=True)
class MixedMeasurement:
    """Queue waits (seconds) of small and big requests under one token budget.

    A request still waiting when the window ends counts with its age so far (a lower bound).
    """

    small_waits: tuple[float, ...]
    big_waits: tuple[float, ...]
    big_waiting_at_end: int
    token_fraction: float

    def p95(self, big: bool) -> float:
        """The 95th percentile wait of the big (or small) requests, seconds."""
        return _percentile(self.big_waits if big else self.small_waits, 0.95)

    def p50(self, big: bool) -> float:
        """The median wait of the big (or small) requests, seconds."""
        return _percentile(self.big_waits if big else self.small_waits, 0.50)


def _percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


def measure_mixed(
    make_acquire: Callable[[], AcquireTokens],
    *,
    tokens_per_s: float,
    warmup_s: float,
    window_s: float,
    tasks: int = BENCH_TASKS,
    seed: int = 0,
) -> MixedMeasurement:
    """Run ``tasks`` eager tasks asking for 100 or 800 tokens; record every queue wait.

    ``make_acquire`` is called inside the event loop and returns the coroutine function
    awaited per request with its token count. Waits of requests admitted in the window,
    plus the ages of those still waiting when it ends, make up the sample.
    """

    async def main() -> MixedMeasurement:
        acquire = make_acquire()
        admitted: list[tuple[float, float, int]] = []  # (asked, admitted, tokens)
        waiting: dict[int, tuple[float, int]] = {}  # task -> (asked, tokens)
        stop = time.perf_counter() + warmup_s + window_s

        async def worker(index: int) -> None:
            rng = random.Random(seed * 10_007 + index)
            while time.perf_counter() < stop:
                tokens = BIG_TOKENS if rng.random() < BIG_SHARE else SMALL_TOKENS
                asked = time.perf_counter()
                waiting[index] = (asked, tokens)
                await acquire(tokens)
                del waiting[index]
                admitted.append((asked, time.perf_counter(), tokens))

        runners = [asyncio.create_task(worker(i)) for i in range(tasks)]
        await asyncio.sleep(warmup_s)
        begin = time.perf_counter()
        await asyncio.sleep(window_s)
        end = time.perf_counter()
        still_waiting = list(waiting.values())
        for runner in runners:
            runner.cancel()
        await asyncio.gather(*runners, return_exceptions=True)
        small: list[float] = []
        big: list[float] = []
        tokens_in_window = 0
        for asked, at, tokens in admitted:
            if begin <= at < end:
                (big if tokens == BIG_TOKENS else small).append(at - asked)
                tokens_in_window += tokens
        for asked, tokens in still_waiting:
            (big if tokens == BIG_TOKENS else small).append(end - asked)
        return MixedMeasurement(
            tuple(small),
            tuple(big),
            sum(1 for _, tokens in still_waiting if tokens == BIG_TOKENS),
            tokens_in_window / (end - begin) / tokens_per_s,
        )

    return asyncio.run(main())


def _gate(tokens_per_s: float, store: LocalBudgetStore | None = None) -> AdmissionGate:
    return AdmissionGate(
        key="bench-aiolimiter",
        store=store if store is not None else LocalBudgetStore(),
        tokens_per_minute=round(tokens_per_s * 60),
        rate_burst_seconds=1.0,
        max_queue=10_000,
        tracker=NULL_TRACKER,
    )


def _gate_tokens(tokens_per_s: float) -> Callable[[], AcquireTokens]:
    def make() -> AcquireTokens:
        gate = _gate(tokens_per_s)

        async def acquire(tokens: int) -> object:
            async with gate.aacquire(tokens=tokens) as ticket:
                return ticket

        return acquire

    return make


def _aiolimiter_tokens(tokens_per_s: float) -> Callable[[], AcquireTokens]:
    from aiolimiter import AsyncLimiter

    def make() -> AcquireTokens:
        return AsyncLimiter(tokens_per_s, 1.0).acquire

    return make


@dataclass(frozen=True)
class OversizeOutcome:
    """What each limiter did with one request of 2 s of budget (burst: 1 s)."""

    ours_admitted: bool
    ours_next_wait_s: float
    theirs_error: str | None


def oversize(*, tokens_per_s: float = MIXED_TOKENS_PER_S) -> OversizeOutcome:
    """Ask a fresh limiter of each kind for ``2 * tokens_per_s`` tokens at once.

    ``ours_next_wait_s`` is how long a following small request would wait for the debt
    (read from the budget store, not slept).
    """
    from aiolimiter import AsyncLimiter

    amount = round(2 * tokens_per_s)

    async def main() -> OversizeOutcome:
        theirs_error = None
        try:
            await AsyncLimiter(tokens_per_s, 1.0).acquire(amount)
        except ValueError as exc:
            theirs_error = f"ValueError: {exc}"
        store = LocalBudgetStore()
        gate = _gate(tokens_per_s, store)
        async with gate.aacquire(tokens=amount, timeout=0.5):
            pass
        # The debt, read from the gate's bucket rather than slept through.
        wait = store.peek(gate.key, gate.limits, requests=0, tokens=SMALL_TOKENS, now=monotonic())
        return OversizeOutcome(True, wait, theirs_error)

    return asyncio.run(main())


@benchmark("admission", "rate limiter: AdmissionGate vs aiolimiter AsyncLimiter")
def rate_vs_aiolimiter(ctx: BenchContext) -> Iterator[Result]:
    """Same rate and tasks: achieved fraction of the rate and CPU per admission."""
    from aiolimiter import AsyncLimiter

    per_second = BENCH_RPM / 60.0
    # Quick: the initial burst is gone within milliseconds (50 eager tasks), so a short
    # warm-up suffices; 0.75 s is 75 admissions, a 1.3 % step in the fraction.
    window = 10.0 if not ctx.quick else 0.75
    warmup = 1.0 if not ctx.quick else 0.25
    name = f"{_AIOLIMITER}({per_second:g}, 1 s)"
    ctx.progress(f"admission: AsyncLimiter at {BENCH_RPM} rpm for {window:g} s")

    def make_aiolimiter() -> Callable[[], Awaitable[object]]:
        return AsyncLimiter(per_second, 1.0).acquire

    theirs = measure_rate(make_aiolimiter, per_second=per_second, warmup_s=warmup, window_s=window)
    ctx.progress(f"admission: AdmissionGate at {BENCH_RPM} rpm for {window:g} s")
    ours = measure_gate(rpm=BENCH_RPM, warmup_s=warmup, window_s=window)
    yield Result.compare(
        "admission_vs_aiolimiter_rate_fraction",
        ours.fraction,
        "fraction of rpm",
        baseline=(name, theirs.fraction),
        better="higher",
        notes=f"{BENCH_RPM} rpm asked, {BENCH_TASKS} eager tasks, steady {window:g} s window",
        ours_per_s=ours.achieved_per_s,
        theirs_per_s=theirs.achieved_per_s,
    )
    yield Result.compare(
        "admission_vs_aiolimiter_cpu_ms_per_admission",
        1000.0 * ours.cpu_fraction / ours.achieved_per_s,
        "cpu ms/admission",
        baseline=(name, 1000.0 * theirs.cpu_fraction / theirs.achieved_per_s),
        better="lower",
        notes=(
            "process CPU per request let through; aiolimiter keeps one loop timer, the gate "
            "a shared (thread-safe) budget and a sleep per waiter"
        ),
    )


@benchmark("admission", "token budget, mixed sizes: AdmissionGate vs aiolimiter acquire(n)")
def mixed_sizes_vs_aiolimiter(ctx: BenchContext) -> Iterator[Result]:
    """p95 wait of 8x requests and of small ones under one TPM budget; oversize requests."""
    window = 10.0 if not ctx.quick else 0.6
    warmup = 1.0 if not ctx.quick else 0.25
    tps = MIXED_TOKENS_PER_S
    name = f"{_AIOLIMITER}({tps:,}, 1 s).acquire(n)"
    ctx.progress(f"admission: mixed sizes, AsyncLimiter at {tps:,} tokens/s for {window:g} s")
    theirs = measure_mixed(
        _aiolimiter_tokens(tps), tokens_per_s=tps, warmup_s=warmup, window_s=window
    )
    ctx.progress(f"admission: mixed sizes, AdmissionGate at {tps:,} tokens/s for {window:g} s")
    ours = measure_mixed(_gate_tokens(tps), tokens_per_s=tps, warmup_s=warmup, window_s=window)
    workload = (
        f"{BENCH_TASKS} eager tasks, {SMALL_TOKENS}-token requests and {BIG_SHARE:.0%} of "
        f"{BIG_TOKENS} (seeded, same for both), {tps * 60:,} TPM with 1 s of burst, steady "
        f"{window:g} s window; requests still waiting at its end count with their age so far"
    )
    counts: dict[str, Any] = {
        "ours_big": len(ours.big_waits),
        "theirs_big": len(theirs.big_waits),
        "ours_small": len(ours.small_waits),
        "theirs_small": len(theirs.small_waits),
        "ours_big_waiting_at_end": ours.big_waiting_at_end,
        "theirs_big_waiting_at_end": theirs.big_waiting_at_end,
    }
    yield Result.compare(
        "admission_vs_aiolimiter_big_request_p95_wait_s",
        ours.p95(big=True),
        "s",
        baseline=(name, theirs.p95(big=True)),
        better="lower",
        notes=(
            f"p95 queue wait of the {BIG_TOKENS}-token requests; {workload}. aiolimiter wakes "
            "the smallest waiter first, so big requests pile up (see *_big_waiting_at_end) "
            "and its figure is bounded by the run's length"
        ),
        ours_p50_s=ours.p50(big=True),
        theirs_p50_s=theirs.p50(big=True),
        **counts,
    )
    yield Result.compare(
        "admission_vs_aiolimiter_small_request_p95_wait_s",
        ours.p95(big=False),
        "s",
        baseline=(name, theirs.p95(big=False)),
        better="lower",
        notes=(
            f"p95 queue wait of the {SMALL_TOKENS}-token requests, same run. aiolimiter "
            "wins here: small requests pass the queued big ones; the gate is FIFO, so with "
            f"{BENCH_TASKS} eager tasks every request waits for the queue ahead of it"
        ),
        ours_p50_s=ours.p50(big=False),
        theirs_p50_s=theirs.p50(big=False),
    )
    yield Result.compare(
        "admission_vs_aiolimiter_mixed_token_fraction",
        ours.token_fraction,
        "fraction of tpm",
        baseline=(name, theirs.token_fraction),
        better="higher",
        notes="tokens admitted in the window over the budget, same run",
    )
    ctx.progress("admission: one request of 2 s of budget")
    outcome = oversize(tokens_per_s=tps)
    yield Result.compare(
        "admission_vs_aiolimiter_oversize_admitted",
        1.0 if outcome.ours_admitted else 0.0,
        "admitted (1) / refused (0)",
        baseline=(name, 0.0 if outcome.theirs_error else 1.0),
        better="higher",
        notes=(
            f"one request of {2 * tps:,} tokens, twice the 1 s burst: the gate admits it and "
            "the bucket's debt delays the next requests; aiolimiter raises"
        ),
        theirs_error=outcome.theirs_error,
        ours_next_small_request_wait_s=outcome.ours_next_wait_s,
    )
