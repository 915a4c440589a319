"""Admission and retries side by side with LangChain's and the OpenAI SDK's built-ins.

Example::

    rag-perf bench --only admission

Two comparisons, each measured in the same run:

* Rate: our :class:`~rag_perf_plugins.admission.gate.AdmissionGate` and LangChain's
  ``InMemoryRateLimiter`` (its defaults: ``check_every_n_seconds=0.1``,
  ``max_bucket_size=1``) asked for the same 6,000 RPM by 50 eager tasks: achieved rate as
  a fraction of the RPM over a steady window, and process CPU over wall time.
* Retries under a 429 storm from the simulator (a seeded share of calls answered 429 with
  ``Retry-After``): provider requests per logical call and calls that succeeded, for our
  :class:`~rag_perf_plugins.admission.retry.RetryPolicy` (SDK retries off) and for the OpenAI SDK's
  default retries (``max_retries=2``) stacked under LangChain's ``Runnable.with_retry()``
  (its defaults: 3 attempts, exponential jitter from 1 s). At 20 % (the acceptance figure)
  and at 80 % (an overloaded provider, where retry amplification shows).

LangChain and the SDK are imported inside the functions only.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from ...admission import RetryPolicy
from ..registry import BenchContext, Result, Target, benchmark
from ..suites.admission import BENCH_RPM, BENCH_TASKS, measure_gate, measure_rate

__all__ = ["StormResult", "storm_ours", "storm_sdk_under_with_retry"]

_MODEL = "text-embedding-3-small"


@benchmark("admission", "rate limiter: AdmissionGate vs LangChain InMemoryRateLimiter")
def rate_vs_langchain(ctx: BenchContext) -> Iterator[Result]:
    """Same RPM, same tasks: achieved fraction of the RPM and CPU, ours vs LangChain's."""
    from langchain_core.rate_limiters import InMemoryRateLimiter

    window = float(ctx.scale(10, quick=2))
    warmup = 1.0 if ctx.quick else 1.5
    per_second = BENCH_RPM / 60.0
    ctx.progress(f"admission: InMemoryRateLimiter at {BENCH_RPM} rpm for {window:g} s")

    def make_langchain() -> Callable[[], Awaitable[object]]:
        limiter = InMemoryRateLimiter(requests_per_second=per_second)
        return limiter.aacquire

    theirs = measure_rate(make_langchain, per_second=per_second, warmup_s=warmup, window_s=window)
    ctx.progress(f"admission: AdmissionGate at {BENCH_RPM} rpm for {window:g} s")
    ours = measure_gate(rpm=BENCH_RPM, warmup_s=warmup, window_s=window)
    yield Result.compare(
        "admission_vs_langchain_rate_fraction",
        ours.fraction,
        "fraction of rpm",
        baseline=("langchain InMemoryRateLimiter (defaults)", theirs.fraction),
        better="higher",
        target=Target.value_at_least(0.98),
        notes=f"{BENCH_RPM} rpm asked, {BENCH_TASKS} tasks, steady {window:g} s window",
        ours_per_s=ours.achieved_per_s,
        theirs_per_s=theirs.achieved_per_s,
    )
    yield Result.compare(
        "admission_vs_langchain_cpu_fraction",
        ours.cpu_fraction,
        "cpu s / wall s",
        baseline=("langchain InMemoryRateLimiter (defaults)", theirs.cpu_fraction),
        better="lower",
        notes="process CPU over wall time while pacing; theirs polls every 0.1 s",
    )
    yield Result.compare(
        "admission_vs_langchain_cpu_ms_per_admission",
        1000.0 * ours.cpu_fraction / ours.achieved_per_s,
        "cpu ms/admission",
        baseline=(
            "langchain InMemoryRateLimiter (defaults)",
            1000.0 * theirs.cpu_fraction / theirs.achieved_per_s,
        ),
        better="lower",
        notes="process CPU per request let through (the whole process, event loop included)",
    )


@dataclass(frozen=True)
class StormResult:
    """What the simulator saw for ``calls`` logical calls under a 429 storm."""

    calls: int
    succeeded: int
    provider_requests: int
    rate_limited: int

    @property
    def requests_per_call(self) -> float:
        """Provider requests per logical call."""
        return self.provider_requests / self.calls


async def _gather_bounded(jobs: Sequence[Callable[[], Awaitable[Any]]], concurrency: int) -> int:
    """Run the jobs with at most ``concurrency`` at once; returns how many succeeded."""
    semaphore = asyncio.Semaphore(concurrency)
    succeeded = 0

    async def run(job: Callable[[], Awaitable[Any]]) -> None:
        nonlocal succeeded
        async with semaphore:
            try:
                await job()
            except Exception:
                return
            succeeded += 1

    await asyncio.gather(*(run(job) for job in jobs))
    return succeeded


def storm_ours(
    *, rate_limit_rate: float, calls: int, concurrency: int = 20, seed: int = 0
) -> StormResult:
    """Our RetryPolicy (4 attempts, retry budget 0.5 of calls) over the SDK, its retries off."""
    import openai

    from ...simulator import Simulator

    with Simulator(
        rate_limit_rate=rate_limit_rate, retry_after_s=0.02, seed=seed
    ).in_thread() as sim:
        policy = RetryPolicy(
            retry_max_attempts=4,
            retry_budget_ratio=0.5,
            retry_initial_backoff=0.02, retry_max_backoff=0.2, rng=random.Random(seed),
            tracker=None,
        )  # fmt: skip

        async def main() -> int:
            client = openai.AsyncOpenAI(base_url=sim.base_url, api_key="sk-bench", max_retries=0)
            async with client:
                jobs = [
                    lambda: policy.acall(
                        lambda: client.embeddings.create(model=_MODEL, input=["storm"])
                    )
                    for _ in range(calls)
                ]
                return await _gather_bounded(jobs, concurrency)

        succeeded = asyncio.run(main())
        seen = sim.stats()
    return StormResult(calls, succeeded, seen["requests_total"], seen["rate_limited_total"])


def storm_sdk_under_with_retry(
    *, rate_limit_rate: float, calls: int, concurrency: int = 20, seed: int = 0
) -> StormResult:
    """The OpenAI SDK's default retries (max_retries=2) under LangChain ``with_retry()``."""
    import openai
    from langchain_core.runnables import RunnableLambda

    from ...simulator import Simulator

    with Simulator(
        rate_limit_rate=rate_limit_rate, retry_after_s=0.02, seed=seed
    ).in_thread() as sim:

        async def main() -> int:
            client = openai.AsyncOpenAI(base_url=sim.base_url, api_key="sk-bench")  # 2 retries

            async def embed(text: str) -> Any:
                return await client.embeddings.create(model=_MODEL, input=[text])

            chain = RunnableLambda(embed).with_retry()  # LangChain's defaults
            async with client:
                jobs = [lambda: chain.ainvoke("storm") for _ in range(calls)]
                return await _gather_bounded(jobs, concurrency)

        succeeded = asyncio.run(main())
        seen = sim.stats()
    return StormResult(calls, succeeded, seen["requests_total"], seen["rate_limited_total"])


@benchmark("admission", "429 storm: RetryPolicy vs OpenAI SDK retries under with_retry")
def storm_vs_sdk_and_langchain(ctx: BenchContext) -> Iterator[Result]:
    """Provider requests per logical call under a 20 % and an 80 % 429 storm."""
    calls = ctx.scale(400, quick=40)
    for share in (0.2, 0.8):
        ctx.progress(f"admission: {share:.0%} 429 storm, {calls} calls, ours")
        ours = storm_ours(rate_limit_rate=share, calls=calls)
        ctx.progress(f"admission: {share:.0%} 429 storm, {calls} calls, SDK x with_retry")
        theirs = storm_sdk_under_with_retry(rate_limit_rate=share, calls=calls)
        yield Result.compare(
            f"retry_storm_{round(share * 100)}pct_requests_per_call",
            ours.requests_per_call,
            "requests/call",
            baseline=(
                "openai max_retries=2 under langchain with_retry()",
                theirs.requests_per_call,
            ),
            better="lower",
            target=Target.value_at_most(1.5) if share <= 0.2 else None,
            notes=(
                f"{calls} calls, 20 at a time; ours: 4 attempts, retry budget 0.5 of calls per "
                "60 s (+10 floor), SDK retries off"
            ),
            ours_succeeded=ours.succeeded,
            theirs_succeeded=theirs.succeeded,
            ours_429s=ours.rate_limited,
            theirs_429s=theirs.rate_limited,
        )
        yield Result.compare(
            f"retry_storm_{round(share * 100)}pct_success_fraction",
            ours.succeeded / calls,
            "fraction",
            baseline=(
                "openai max_retries=2 under langchain with_retry()",
                theirs.succeeded / calls,
            ),
            better="higher",
            notes="calls that returned an answer (the rest failed fast on the retry budget)",
        )
