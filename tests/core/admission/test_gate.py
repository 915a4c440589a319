"""AdmissionGate: slots, budget, FIFO, bounded queue, pauses, deadlines, loops and threads."""

from __future__ import annotations

import asyncio
import gc
import sys
import threading
from typing import Any

import pytest

from rag_perf_plugins._clock import FakeClock
from rag_perf_plugins.admission import AdmissionGate, LocalBudgetStore, Ticket, get_gate
from rag_perf_plugins.config import PerformanceConfig
from rag_perf_plugins.errors import ConfigError, DeadlineExceeded, Overloaded
from rag_perf_plugins.tracking import NULL_TRACKER, PerformanceTracker


class ManualSleep:
    """An async sleep that records how long it was asked to wait and returns when released.

    With a clock, a released sleep moves it forward by the time asked (like a real sleep).
    """

    def __init__(self, clock: FakeClock | None = None) -> None:
        self.requests: list[float] = []
        self.release = asyncio.Event()
        self.clock = clock

    async def __call__(self, seconds: float) -> None:
        self.requests.append(seconds)
        await self.release.wait()
        if self.clock is not None:
            self.clock.advance(seconds)


def make_gate(clock: FakeClock, **options: Any) -> AdmissionGate:
    options.setdefault("tracker", NULL_TRACKER)
    options.setdefault("jitter_allowance", 0.0)  # exact burst arithmetic in these tests
    return AdmissionGate(
        key="test", store=LocalBudgetStore(), clock=clock, sleep=clock.sleep,
        async_sleep=clock.asleep, **options,
    )  # fmt: skip


def test_burst_then_paced_at_the_configured_rate(fake_clock: FakeClock) -> None:
    gate = make_gate(fake_clock, requests_per_minute=600, rate_burst_seconds=1.0)
    start = fake_clock()
    for _ in range(20):
        with gate.acquire():
            pass
    assert fake_clock.slept == pytest.approx([0.1] * 10)  # 10 in the burst, then 10/s
    assert fake_clock() - start == pytest.approx(1.0)
    stats = gate.stats()
    assert stats["admitted"] == 20 and stats["queue_wait_p95_s"] == pytest.approx(0.1)
    assert stats["queue_wait_p50_s"] == 0.0 and stats["in_flight"] == 0


async def test_async_twin_schedules_the_same_way(fake_clock: FakeClock) -> None:
    gate = make_gate(fake_clock, requests_per_minute=600, rate_burst_seconds=1.0)
    for _ in range(20):
        async with gate.aacquire() as ticket:
            assert ticket.tokens == 0
    assert fake_clock.slept == pytest.approx([0.1] * 10)


async def _reconcile(ticket: Ticket, tokens: int, path: str) -> None:
    if path == "sync":
        ticket.reconcile(tokens)
    else:
        await ticket.areconcile(tokens)


@pytest.mark.parametrize("path", ["sync", "async"])
async def test_token_budget_reconcile_refunds_and_debits(fake_clock: FakeClock, path: str) -> None:
    gate = make_gate(fake_clock, tokens_per_minute=600, rate_burst_seconds=1.0)  # 10 tokens/s
    async with gate.aacquire(tokens=10) as ticket:
        await _reconcile(ticket, 2, path)  # the call used 2 of the 10 reserved
        assert ticket.tokens == 2
    async with gate.aacquire(tokens=8):
        pass
    assert fake_clock.slept == []  # the refund paid for it
    async with gate.aacquire(tokens=1) as ticket:
        fake_clock.slept.clear()
        await _reconcile(ticket, 21, path)  # 20 more than reserved: the budget is in debt
    async with gate.aacquire(tokens=1):
        pass
    assert fake_clock.slept == pytest.approx([2.1])


async def test_fifo_a_large_token_request_is_not_starved() -> None:
    # Real clock, manual sleeps: admission order is exactly arrival order.
    clock = FakeClock()
    sleeper = ManualSleep()
    gate = AdmissionGate(
        key="fifo", store=LocalBudgetStore(), clock=clock, async_sleep=sleeper,
        tokens_per_minute=6000, rate_burst_seconds=1.0, tracker=NULL_TRACKER, jitter_allowance=0.0,
    )  # fmt: skip
    order: list[str] = []

    async def call(name: str, tokens: int) -> None:
        async with gate.aacquire(tokens=tokens):
            order.append(name)

    async with gate.aacquire(tokens=100):  # empties the 100-token burst
        pass
    tasks = [asyncio.create_task(call("big", 500))]
    await asyncio.sleep(0)
    tasks += [asyncio.create_task(call(f"small{i}", 1)) for i in range(5)]
    for _ in range(3):
        await asyncio.sleep(0)
    # Each caller was told its exact turn: the big one (500 tokens, more than the whole
    # burst) when the bucket is empty, the small ones behind its debt.
    assert sleeper.requests[0] == pytest.approx(1.0)
    assert sleeper.requests[1] == pytest.approx(1.0 + 5.0 - 1.0 + 0.01)
    assert all(later > sleeper.requests[0] for later in sleeper.requests[1:])
    sleeper.release.set()
    await asyncio.gather(*tasks)
    assert order == ["big", "small0", "small1", "small2", "small3", "small4"]


async def test_in_flight_cap_is_fifo_across_tasks() -> None:
    gate = AdmissionGate(key="cap", store=LocalBudgetStore(), max_concurrent_requests=2,
                         tracker=NULL_TRACKER)  # fmt: skip
    inside = 0
    peak = 0
    order: list[int] = []
    release = asyncio.Event()

    async def call(i: int) -> None:
        nonlocal inside, peak
        async with gate.aacquire():
            inside += 1
            peak = max(peak, inside)
            order.append(i)
            await release.wait()
            inside -= 1

    tasks = [asyncio.create_task(call(i)) for i in range(10)]
    await asyncio.sleep(0.01)
    assert gate.stats()["queued_now"] == 8 and gate.stats()["in_flight"] == 2
    assert "in flight: 2/2, queued: 8/1000" in repr(gate)
    release.set()
    await asyncio.gather(*tasks)
    assert peak == 2 and order == list(range(10))
    assert gate.stats()["in_flight"] == 0 and gate.stats()["queued_now"] == 0


async def test_past_max_queue_overloaded_is_raised_without_waiting() -> None:
    clock = FakeClock()
    sleeper = ManualSleep()
    gate = AdmissionGate(
        key="q", store=LocalBudgetStore(), clock=clock, async_sleep=sleeper,
        requests_per_minute=60, rate_burst_seconds=1.0, max_queue=2, tracker=NULL_TRACKER,
    )  # fmt: skip

    async def call() -> None:
        async with gate.aacquire():
            pass

    tasks = [asyncio.create_task(call()) for _ in range(3)]  # 1 admitted, 2 queued
    for _ in range(3):
        await asyncio.sleep(0)
    assert gate.stats()["queued_now"] == 2
    asked = len(sleeper.requests)
    with pytest.raises(Overloaded, match="max_queue"):
        async with gate.aacquire():
            pass
    assert len(sleeper.requests) == asked and clock() == 0.0  # refused before any wait
    assert gate.stats()["rejected_by_reason"]["queue_full"] == 1
    sleeper.release.set()
    await asyncio.gather(*tasks)


def test_expected_wait_past_max_queue_wait_is_refused_at_once(fake_clock: FakeClock) -> None:
    gate = make_gate(fake_clock, requests_per_minute=60, max_queue_wait=5.0)
    gate.pause(10.0)
    with pytest.raises(Overloaded, match="max_queue_wait"), gate.acquire():
        pass
    assert fake_clock.slept == []
    assert gate.stats()["rejected_by_reason"]["wait_too_long"] == 1


def test_memory_stays_bounded_under_100k_rejections(fake_clock: FakeClock) -> None:
    gate = make_gate(fake_clock, requests_per_minute=60, max_queue=0)
    with gate.acquire():
        pass  # the bucket is now empty; max_queue=0 means nobody may wait
    # Allocated blocks (every live Python object counts): cheap enough to watch 100,000
    # calls, unlike tracemalloc; nothing per rejected call may stay behind.
    gc.collect()
    before = sys.getallocatedblocks()
    for _ in range(100_000):
        try:
            with gate.acquire():
                pass
        except Overloaded:
            pass
    gc.collect()
    grown = sys.getallocatedblocks() - before
    assert gate.stats()["rejected"] == 100_000
    assert fake_clock.slept == []
    assert grown < 500, f"{grown} blocks kept after 100,000 rejections"


def test_deadline_shorter_than_the_budget_wait_fails_at_once(fake_clock: FakeClock) -> None:
    gate = make_gate(fake_clock, requests_per_minute=60)
    with gate.acquire():
        pass
    start = fake_clock()
    with pytest.raises(DeadlineExceeded), gate.acquire(timeout=0.5):
        pass
    assert fake_clock() == start and fake_clock.slept == []
    assert gate.stats()["rejected_by_reason"]["deadline"] == 1


async def test_deadline_passing_while_queued_for_a_slot_is_on_time(fake_clock: FakeClock) -> None:
    gate = make_gate(fake_clock, max_concurrent_requests=1)
    async with gate.aacquire():  # holds the only slot
        start = fake_clock()
        with pytest.raises(DeadlineExceeded):
            async with gate.aacquire(timeout=2.5):
                pass
        assert fake_clock() - start == pytest.approx(2.5)  # raised exactly at the deadline
        assert gate.stats()["queued_now"] == 0
    async with gate.aacquire():  # the slot is free again, nothing leaked
        pass
    assert gate.stats()["admitted"] == 2


def test_sync_slot_wait_times_out_with_overloaded() -> None:
    gate = AdmissionGate(key="s", store=LocalBudgetStore(), max_concurrent_requests=1,
                         max_queue_wait=0.05, tracker=NULL_TRACKER)  # fmt: skip
    with gate.acquire():
        with pytest.raises(Overloaded), gate.acquire():
            pass
        assert gate.stats()["queued_now"] == 0
    with gate.acquire():
        pass


async def test_cancelled_waiters_give_back_their_place_and_budget() -> None:
    clock = FakeClock()
    sleeper = ManualSleep()
    store = LocalBudgetStore()
    gate = AdmissionGate(
        key="c", store=store, clock=clock, async_sleep=sleeper, requests_per_minute=60,
        max_concurrent_requests=2, tracker=NULL_TRACKER,
    )  # fmt: skip
    async with gate.aacquire():
        pass
    budget_waiter = asyncio.create_task(gate.aacquire().__aenter__())
    await asyncio.sleep(0)
    assert sleeper.requests == [1.0] and gate.stats()["queued_now"] == 1
    budget_waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await budget_waiter
    assert gate.stats() | {} and gate.stats()["queued_now"] == 0
    assert gate.stats()["in_flight"] == 0
    # Its reserved request came back: the next caller waits 1 s, not 2 s.
    assert store.peek("c", gate.limits, requests=1, tokens=0, now=0.0) == pytest.approx(1.0)


async def test_pause_covers_callers_already_scheduled() -> None:
    clock = FakeClock()
    sleeper = ManualSleep(clock)
    gate = AdmissionGate(
        key="p", store=LocalBudgetStore(), clock=clock, async_sleep=sleeper,
        requests_per_minute=600, rate_burst_seconds=0.1, tracker=NULL_TRACKER,
    )  # fmt: skip
    async with gate.aacquire():
        pass
    waiting = asyncio.create_task(gate.aacquire().__aenter__())
    await asyncio.sleep(0)
    assert sleeper.requests == [pytest.approx(0.1)]
    gate.observe_response(429, {"Retry-After": "3"})
    sleeper.release.set()
    ticket = await waiting
    # It woke at 0.1 s inside the 3 s pause, gave its place back and waited behind it.
    assert sleeper.requests[1] == pytest.approx(2.9)
    assert clock() == pytest.approx(3.0)
    assert gate.stats()["pauses"] == 1
    ticket._gate._leave(ticket, False)


def _observe(gate: AdmissionGate, path: str, status: int, headers: dict[str, str]) -> None:
    if path == "sync":
        gate.observe_response(status, headers)
    else:
        asyncio.run(gate.aobserve_response(status, headers))


@pytest.mark.parametrize("path", ["sync", "async"])
def test_observe_response_follows_remaining_headers(fake_clock: FakeClock, path: str) -> None:
    gate = make_gate(fake_clock, requests_per_minute=600, tokens_per_minute=60_000)
    _observe(
        gate, path, 200,
        {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "1.5s"},
    )  # fmt: skip
    assert gate.stats()["paused_for_s"] == pytest.approx(1.5)
    fake_clock.advance(1.5 + 1.0)
    _observe(gate, path, 200, {"x-ratelimit-remaining-tokens": "100"})
    with gate.acquire(tokens=100):
        pass
    with gate.acquire(tokens=100):
        pass
    assert fake_clock.slept == pytest.approx([0.1])  # only 100 were left; the next 100 wait
    _observe(gate, path, 200, {"x-ratelimit-remaining-tokens": "many"})  # ignored
    _observe(gate, path, 429, {})  # no Retry-After: nothing to pause for
    assert gate.stats()["paused_for_s"] == 0.0


@pytest.mark.parametrize("path", ["sync", "async"])
def test_pause_is_capped_by_retry_after_cap(fake_clock: FakeClock, path: str) -> None:
    gate = make_gate(fake_clock, retry_after_cap=5.0)
    _observe(gate, path, 429, {"retry-after": "3600"})
    assert gate.stats()["paused_for_s"] == pytest.approx(5.0)
    assert gate.stats()["pauses"] == 1


def test_one_budget_shared_by_threads_and_event_loops() -> None:
    # 3 event loops in 3 threads plus 1 plain thread, one gate: the admission times, all
    # together, respect one budget of 60,000/min (1 per ms, burst 5).
    gate = AdmissionGate(key="shared", store=LocalBudgetStore(), requests_per_minute=60_000,
                         rate_burst_seconds=0.005, tracker=NULL_TRACKER)  # fmt: skip
    admitted: list[float] = []
    lock = threading.Lock()

    async def loop_main() -> None:
        async def one() -> None:
            async with gate.aacquire() as ticket:
                with lock:
                    admitted.append(ticket.admitted_at)

        await asyncio.gather(*(one() for _ in range(50)))

    def sync_main() -> None:
        for _ in range(50):
            with gate.acquire() as ticket, lock:
                admitted.append(ticket.admitted_at)

    threads = [threading.Thread(target=asyncio.run, args=(loop_main(),)) for _ in range(3)]
    threads.append(threading.Thread(target=sync_main))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(admitted) == 200
    admitted.sort()
    # Nobody was let through early: the k-th admission (0-based) came no sooner than the
    # budget allows, burst of 5 then one per millisecond, counted from the first one.
    # (Late is possible: a busy thread wakes late. 0.1 ms of slack for timer rounding.)
    for k, at in enumerate(admitted):
        assert at >= admitted[0] + (k + 1 - 5) * 0.001 - 0.0001
    assert gate.stats()["admitted"] == 200


def test_in_flight_cap_holds_across_event_loops() -> None:
    gate = AdmissionGate(key="cap-loops", store=LocalBudgetStore(), max_concurrent_requests=3,
                         tracker=NULL_TRACKER)  # fmt: skip
    inside = 0
    peak = 0
    lock = threading.Lock()

    async def loop_main() -> None:
        async def one() -> None:
            nonlocal inside, peak
            async with gate.aacquire():
                with lock:
                    inside += 1
                    peak = max(peak, inside)
                await asyncio.sleep(0.002)
                with lock:
                    inside -= 1

        await asyncio.gather(*(one() for _ in range(20)))

    threads = [threading.Thread(target=asyncio.run, args=(loop_main(),)) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert peak == 3
    assert gate.stats()["admitted"] == 60 and gate.stats()["in_flight"] == 0


def test_queue_time_goes_to_the_tracker_apart_from_call_latency(fake_clock: FakeClock) -> None:
    tracker = PerformanceTracker(clock=fake_clock)
    gate = AdmissionGate(
        key="t", store=LocalBudgetStore(), clock=fake_clock, sleep=fake_clock.sleep,
        requests_per_minute=60, tracker=tracker, operation="llm.admission",
    )  # fmt: skip
    for _ in range(5):  # after the first, each waits 0.8 s for the budget, then holds 0.2 s
        with gate.acquire():
            fake_clock.advance(0.2)
    stats = tracker.get_operation_stats("llm.admission")
    assert stats.count == 5
    assert stats.latency_p95_s == pytest.approx(0.2, rel=0.01)
    assert stats.queue_wait_p95_s == pytest.approx(0.8, rel=0.01)


def test_bad_arguments_are_named(fake_clock: FakeClock) -> None:
    gate = make_gate(fake_clock)
    with pytest.raises(ValueError, match="tokens must be an integer >= 0"):
        gate.acquire(tokens=-1)
    with pytest.raises(ValueError, match="tokens"):
        gate.aacquire(tokens=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timeout"):
        gate.acquire(timeout=-1.0)
    with pytest.raises(ValueError, match="key"):
        AdmissionGate(key="")
    with pytest.raises(ConfigError, match="requests_per_minute"):
        AdmissionGate(requests_per_minute=0)
    with pytest.raises(ConfigError, match="did you mean max_queue"):
        AdmissionGate(max_queu=3)


def test_get_gate_is_one_gate_per_provider_model_and_key() -> None:
    config = PerformanceConfig(requests_per_minute=1234)
    a = get_gate("openai", "gpt-x-test", "sk-secret-one", config=config)
    assert get_gate("openai", "gpt-x-test", "sk-secret-one") is a
    assert get_gate("openai", "gpt-x-test", "sk-secret-two") is not a
    assert get_gate("openai", "gpt-y-test", "sk-secret-one") is not a
    assert "sk-secret" not in a.key and a.key.startswith("openai/gpt-x-test/k-")
    with pytest.raises(ConfigError, match="another config"):
        get_gate("openai", "gpt-x-test", "sk-secret-one", config=config.replace(max_queue=1))
    with pytest.raises(ValueError, match="provider and model"):
        get_gate("", "m")


def test_jitter_allowance_holds_back_burst_but_keeps_the_rate(fake_clock: FakeClock) -> None:
    gate = make_gate(
        fake_clock, requests_per_minute=600, rate_burst_seconds=1.0, jitter_allowance=0.3
    )
    for _ in range(27):
        with gate.acquire():
            pass
    assert len(fake_clock.slept) == 20  # a burst of 7, not 10 ...
    assert fake_clock.slept[1:] == pytest.approx([0.1] * 19)  # ... then exactly 10/s
    assert gate.limits.burst_seconds == pytest.approx(0.7)
    assert AdmissionGate(rate_burst_seconds=0.04).limits.burst_seconds == pytest.approx(0.02)
    with pytest.raises(ValueError, match="jitter_allowance"):
        AdmissionGate(jitter_allowance=-1.0)


# --- a gate without a rate budget: admitted at once, unless paused or full ------------
@pytest.mark.parametrize("path", ["sync", "async"])
def test_gate_without_rate_limits_still_waits_out_a_pause(fake_clock: FakeClock, path: str) -> None:
    tracker = PerformanceTracker(clock=fake_clock)
    gate = make_gate(fake_clock, tracker=tracker, operation="open.admission")
    assert gate.limits.requests_per_minute is None and gate.limits.tokens_per_minute is None

    def once() -> None:
        if path == "sync":
            with gate.acquire():
                pass
        else:

            async def run() -> None:
                async with gate.aacquire():
                    pass

            asyncio.run(run())

    once()  # not paused: no wait at all
    assert fake_clock.slept == []
    _observe(gate, path, 429, {"retry-after": "2"})
    once()  # the pause holds every caller, with or without a rate budget
    assert fake_clock.slept == [pytest.approx(2.0)]
    once()
    stats = gate.stats()
    assert stats["admitted"] == 3
    assert stats["pauses"] == 1
    assert stats["queue_wait_p95_s"] == pytest.approx(2.0)  # the paused caller's wait
    assert stats["queue_wait_p50_s"] == 0.0  # the others were admitted at once
    assert tracker.get_operation_stats("open.admission").count == 3


async def test_gate_without_rate_limits_queues_for_a_slot() -> None:
    gate = AdmissionGate(
        key="open-slots", store=LocalBudgetStore(), max_concurrent_requests=1,
        tracker=NULL_TRACKER,
    )  # fmt: skip
    first = gate.aacquire()
    await first.__aenter__()
    waiting = asyncio.create_task(gate.aacquire().__aenter__())
    await asyncio.sleep(0.01)
    assert not waiting.done()  # the one slot is held: queued, not admitted at once
    assert gate.stats()["queued_now"] == 1
    await first.__aexit__(None, None, None)
    ticket = await waiting
    assert gate.stats()["admitted"] == 2
    gate._leave(ticket, False)


def test_bool_tokens_are_refused_on_the_fast_path(fake_clock: FakeClock) -> None:
    gate = make_gate(fake_clock)
    with pytest.raises(ValueError, match="tokens must be an integer"):
        gate.acquire(tokens=True)
    with pytest.raises(ValueError, match="timeout"):
        gate.aacquire(timeout=float("nan"))


def test_admit_now_only_where_acquire_would_admit_at_once(fake_clock: FakeClock) -> None:
    assert make_gate(fake_clock, requests_per_minute=600).admit_now() is None  # a budget
    assert make_gate(fake_clock, budget_usd_per_minute=1.0).admit_now() is None  # dollars
    gate = make_gate(fake_clock, max_concurrent_requests=1)
    ticket = gate.admit_now(tokens=5)
    assert ticket is not None and ticket.tokens == 5 and ticket.queue_wait_s == 0.0
    assert gate.admit_now() is None  # the one slot is held
    gate.leave(ticket, error=False)
    gate.pause(2.0)
    assert gate.admit_now() is None  # paused: acquire waits it out
    fake_clock.advance(2.0)
    again = gate.admit_now()
    assert again is not None
    gate.leave(again, error=True)
    assert gate.stats()["in_flight"] == 0 and gate.stats()["admitted"] == 2
    with pytest.raises(ValueError, match="tokens"):
        gate.admit_now(tokens=-1)
