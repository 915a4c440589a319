"""Benchmarks of the admission gate: achieved rate against the configured RPM, and its CPU.

Example::

    rag-perf bench --only admission

``measure_rate`` drives a limiter with many tasks that all want to go at once and counts
admissions over a steady window (after the initial burst): the achieved rate as a fraction
of the configured one, and the process CPU time over wall time while it runs. The peer
module ``bench/peers/admission_langchain.py`` runs the same measurement on LangChain's
``InMemoryRateLimiter`` side by side. Nothing here calls a provider.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass

from ...admission import AdmissionGate, LocalBudgetStore
from ...tracking import NULL_TRACKER
from ..registry import BenchContext, Result, Target, benchmark

__all__ = ["RateMeasurement", "measure_rate"]

BENCH_RPM = 6000  # 100 requests/s: high enough that polling limiters show their ceiling
BENCH_TASKS = 50


@dataclass(frozen=True)
class RateMeasurement:
    """Admissions over a steady window, as a fraction of the target, and CPU over wall."""

    fraction: float
    achieved_per_s: float
    cpu_fraction: float
    admitted: int


def measure_rate(
    make_acquire: Callable[[], Callable[[], Awaitable[object]]],
    *,
    per_second: float,
    warmup_s: float,
    window_s: float,
    tasks: int = BENCH_TASKS,
) -> RateMeasurement:
    """Run ``tasks`` tasks acquiring as fast as allowed; count admissions in the window.

    ``make_acquire`` is called inside the event loop and returns the coroutine function to
    await per admission (so limiters bound to a loop are made on the right one).
    """

    async def main() -> RateMeasurement:
        acquire = make_acquire()
        stamps: list[float] = []
        stop = time.perf_counter() + warmup_s + window_s

        async def worker() -> None:
            while time.perf_counter() < stop:
                await acquire()
                stamps.append(time.perf_counter())

        start = time.perf_counter()
        runners = [asyncio.create_task(worker()) for _ in range(tasks)]
        await asyncio.sleep(warmup_s)
        cpu_window_start, wall_window_start = time.process_time(), time.perf_counter()
        await asyncio.sleep(window_s)
        cpu = time.process_time() - cpu_window_start
        wall = time.perf_counter() - wall_window_start
        for runner in runners:
            runner.cancel()
        await asyncio.gather(*runners, return_exceptions=True)
        begin, end = start + warmup_s, start + warmup_s + window_s
        admitted = sum(1 for s in stamps if begin <= s < end)
        achieved = admitted / window_s
        return RateMeasurement(achieved / per_second, achieved, cpu / wall, admitted)

    return asyncio.run(main())


def measure_gate(*, rpm: int, warmup_s: float, window_s: float) -> RateMeasurement:
    """:func:`measure_rate` on our :class:`AdmissionGate` at ``rpm`` (1 s of burst)."""

    def make() -> Callable[[], Awaitable[object]]:
        gate = AdmissionGate(
            key="bench-rate",
            store=LocalBudgetStore(),
            requests_per_minute=rpm,
            rate_burst_seconds=1.0,
            max_queue=10_000,
            tracker=NULL_TRACKER,
        )

        async def acquire() -> object:
            async with gate.aacquire() as ticket:
                return ticket

        return acquire

    return measure_rate(make, per_second=rpm / 60.0, warmup_s=warmup_s, window_s=window_s)


@benchmark("admission", "achieved rate vs configured RPM, and the gate's CPU")
def gate_rate(ctx: BenchContext) -> Iterator[Result]:
    """Our gate at 6,000 RPM, 50 eager tasks: steady-window rate and CPU use."""
    window = float(ctx.scale(10, quick=2))
    warmup = 1.0 if ctx.quick else 1.5
    ctx.progress(f"admission: gate at {BENCH_RPM} rpm for {window:g} s")
    ours = measure_gate(rpm=BENCH_RPM, warmup_s=warmup, window_s=window)
    yield Result.compare(
        "admission_rate_fraction_of_rpm",
        ours.fraction,
        "fraction",
        better="higher",
        target=Target.value_at_least(0.98),
        notes=f"{BENCH_RPM} rpm, {BENCH_TASKS} tasks, steady {window:g} s window after burst",
        achieved_per_s=ours.achieved_per_s,
        admitted=ours.admitted,
    )
    yield Result.compare(
        "admission_gate_cpu_fraction",
        ours.cpu_fraction,
        "cpu s / wall s",
        better="lower",
        notes="process CPU time over wall time while the gate paces 50 tasks",
    )
