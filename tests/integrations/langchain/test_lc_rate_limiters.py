"""PerfRateLimiter: reaches the configured rate without polling (fake clock, no sleeping)."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from langchain_core.language_models import FakeListChatModel
from rag_perf_plugins.langchain import PerfRateLimiter

from rag_perf_plugins._clock import FakeClock
from rag_perf_plugins.admission import AdmissionGate
from rag_perf_plugins.config import PerformanceConfig


def _gate(clock: FakeClock, rps: float, burst_s: float = 0.1) -> AdmissionGate:
    config = PerformanceConfig(
        requests_per_minute=round(rps * 60),
        rate_burst_seconds=burst_s,
        max_concurrent_requests=1_000_000,
        enable_metrics=False,
    )
    return AdmissionGate(
        # A key of its own: budgets live in a process-wide store, keyed by name.
        config,
        key=f"test-limiter-{uuid.uuid4()}",
        clock=clock,
        sleep=clock.sleep,
        async_sleep=clock.asleep,
    )


async def test_async_acquires_reach_the_rate_without_polling(fake_clock: FakeClock) -> None:
    limiter = PerfRateLimiter(gate=_gate(fake_clock, rps=50))
    start = fake_clock()

    async def worker() -> None:
        for _ in range(10):
            assert await limiter.aacquire()

    await asyncio.gather(*(worker() for _ in range(20)))
    elapsed = fake_clock() - start
    # 200 grants at 50/s with a 0.1 s burst take (200 - 5) / 50 = 3.9 s: the rate is met,
    # not capped at 10/s as LangChain's InMemoryRateLimiter is.
    assert 3.5 <= elapsed <= 4.1
    assert len(fake_clock.slept) <= 200  # at most one wait per grant: no polling


def test_sync_acquires_reach_the_rate(fake_clock: FakeClock) -> None:
    limiter = PerfRateLimiter(gate=_gate(fake_clock, rps=100))
    start = fake_clock()
    for _ in range(101):
        assert limiter.acquire()
    assert 0.9 <= fake_clock() - start <= 1.05


def test_non_blocking_acquire_says_no_instead_of_waiting(fake_clock: FakeClock) -> None:
    limiter = PerfRateLimiter(gate=_gate(fake_clock, rps=1, burst_s=1.0))
    assert limiter.acquire(blocking=False)
    assert not limiter.acquire(blocking=False)
    assert fake_clock.slept == []
    fake_clock.advance(1.0)
    assert limiter.acquire(blocking=False)


def test_chat_model_uses_it() -> None:
    limiter = PerfRateLimiter(requests_per_second=1000)
    model = FakeListChatModel(responses=["ok"], rate_limiter=limiter)
    assert model.invoke("hi").content == "ok"
    assert limiter.gate.stats()["admitted"] == 1


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="requests_per_second must be > 0"):
        PerfRateLimiter(requests_per_second=0)
    with pytest.raises(ValueError, match="either gate= or requests_per_second="):
        PerfRateLimiter(5, gate=AdmissionGate(PerformanceConfig(enable_metrics=False)))
    assert PerfRateLimiter(requests_per_second=2.5).requests_per_second == 2.5
