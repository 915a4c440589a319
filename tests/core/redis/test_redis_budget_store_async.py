"""RedisBudgetStore's async twins: the event loop keeps running while Redis answers.

A private redis-server is paused with SIGSTOP, so "Redis is slow" lasts exactly until the
test sends SIGCONT: the assertions count ticks of another task and Redis calls, never time.
Budget waits are on Redis's clock and compared with a tolerance, as in the sync tests.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import threading
import time
import uuid
import warnings
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import redis

from rag_perf_plugins._clock import FakeClock
from rag_perf_plugins.admission import AdmissionGate, RateLimits
from rag_perf_plugins.admission.redis_store import RedisBudgetStore
from rag_perf_plugins.errors import Overloaded
from rag_perf_plugins.tracking import NULL_TRACKER

RedisServer = Any  # the fixture's class lives in this directory's conftest.py

pytestmark = pytest.mark.redis

TOL = 0.05  # seconds of Redis time that may pass between two calls on a loaded machine
ONE_PER_S = RateLimits(requests_per_minute=60, burst_seconds=1.0)
TICKS = 200  # loop iterations another task must get while a call waits on Redis


@contextmanager
def paused(server: RedisServer) -> Iterator[None]:
    """The server process is stopped (SIGSTOP) inside the block: no reply until it ends."""
    assert server.proc is not None
    os.kill(server.proc.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)


async def ticks_while(task: asyncio.Task[Any], ticks: int = TICKS) -> int:
    """Let the loop run ``ticks`` times; return how many of them ``task`` was still pending."""
    pending = 0
    for _ in range(ticks):
        await asyncio.sleep(0)
        pending += not task.done()
    return pending


def _store(url: str, **options: Any) -> RedisBudgetStore:
    # A generous timeout: the paused server must not be taken for an outage.
    options.setdefault("timeout", 10.0)
    return RedisBudgetStore(url, prefix=f"t-{uuid.uuid4().hex[:10]}", **options)


def _gate(store: RedisBudgetStore, **overrides: Any) -> AdmissionGate:
    config: dict[str, Any] = {"requests_per_minute": 60_000, "enable_metrics": False}
    return AdmissionGate(key="k", store=store, tracker=NULL_TRACKER, **{**config, **overrides})


def test_an_acquire_waiting_on_redis_leaves_the_loop_running(redis_server: RedisServer) -> None:
    store = _store(redis_server.url)
    gate = _gate(store)

    async def main() -> tuple[int, dict[str, Any]]:
        async with gate.aacquire():  # connects this loop's client
            pass
        with paused(redis_server):
            task = asyncio.create_task(_enter_and_leave(gate))
            pending = await ticks_while(task)
            during = store.stats()
        await task
        return pending, during

    pending, during = asyncio.run(main())
    assert pending == TICKS  # the loop ran 200 times while the reservation waited
    assert during["redis_calls"] == 1 and during["fallback_calls"] == 0
    stats = store.stats()
    assert stats["redis_calls"] == 2 and stats["redis_errors"] == 0 and stats["trips"] == 0
    assert gate.stats()["admitted"] == 2 and gate.stats()["in_flight"] == 0
    store.close()


def test_a_queued_caller_peeks_without_blocking_the_loop(redis_server: RedisServer) -> None:
    store = _store(redis_server.url)
    gate = _gate(store, max_concurrent_requests=1)

    async def main() -> int:
        holds, release = asyncio.Event(), asyncio.Event()

        async def holder() -> None:
            async with gate.aacquire():
                holds.set()
                await release.wait()

        holding = asyncio.create_task(holder())
        await holds.wait()
        with paused(redis_server):
            queued = asyncio.create_task(_enter_and_leave(gate))  # peeks, then queues
            pending = await ticks_while(queued)
        release.set()
        await asyncio.gather(holding, queued)
        return pending

    assert asyncio.run(main()) == TICKS
    # holder: reserve; queued caller: peek, then reserve once the slot is handed over.
    assert store.stats()["redis_calls"] == 3 and store.stats()["fallback_calls"] == 0
    assert gate.stats()["admitted"] == 2
    store.close()


def test_a_caller_cancelled_while_redis_is_slow_gives_its_slot_back(
    redis_server: RedisServer,
) -> None:
    store = _store(redis_server.url)
    gate = _gate(store, max_concurrent_requests=1)

    async def main() -> None:
        async with gate.aacquire():
            pass
        with paused(redis_server):
            task = asyncio.create_task(_enter_and_leave(gate))
            await ticks_while(task, 20)
            # repr, not stats(): stats() asks the store (a blocking call) for the pause.
            assert "in flight: 1/1" in repr(gate)  # holds the slot, waits on Redis
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert "in flight: 0/1" in repr(gate)
        async with gate.aacquire():  # the slot is free, the client works again
            pass

    asyncio.run(main())
    assert gate.stats()["admitted"] == 2 and store.stats()["trips"] == 0
    store.close()


async def _enter_and_leave(gate: AdmissionGate) -> None:
    async with gate.aacquire():
        pass


# --- the same answers on both paths ----------------------------------------------------
Call = Callable[..., Awaitable[Any]]


def _sync_calls(store: RedisBudgetStore) -> Call:
    async def call(name: str, *args: Any, **kwargs: Any) -> Any:
        return getattr(store, name)(*args, **kwargs)

    return call


def _async_calls(store: RedisBudgetStore) -> Call:
    async def call(name: str, *args: Any, **kwargs: Any) -> Any:
        return await getattr(store, "a" + name)(*args, **kwargs)

    return call


async def _scenario(call: Call) -> list[float]:
    """Reserve, refuse, refund, pause, clamp: every protocol method, answers in order."""
    out = []
    for max_wait in (60.0, 60.0, 0.5):
        out.append(await call("try_reserve", "k", ONE_PER_S, requests=1, tokens=0, now=0.0,
                              max_wait=max_wait))  # fmt: skip
    await call("adjust", "k", ONE_PER_S, requests=-1, tokens=0, now=0.0)
    out.append(await call("peek", "k", ONE_PER_S, requests=1, tokens=0, now=0.0))
    await call("pause", "k", ONE_PER_S, seconds=5.0, now=0.0)
    out.append(await call("paused_for", "k", now=0.0))
    out.append(await call("peek", "k", ONE_PER_S, requests=1, tokens=0, now=0.0))
    ten = RateLimits(requests_per_minute=600, burst_seconds=1.0)
    await call("clamp", "c", ten, requests=2, tokens=None, now=0.0)
    for _ in range(3):
        out.append(await call("try_reserve", "c", ten, requests=1, tokens=0, now=0.0,
                              max_wait=9.0))  # fmt: skip
    return out


EXPECTED = [0.0, 1.0, 2.0, 1.0, 5.0, 5.0, 0.0, 0.0, 0.1]  # 2.0: refused (> 0.5), not debited
# The local share of a key starts empty (no burst at a switch): one interval later each.
EXPECTED_LOCAL = [1.0, 2.0, 3.0, 2.0, 5.0, 5.0, 0.1, 0.2, 0.3]


@pytest.mark.parametrize("path", ["sync", "async"])
def test_both_paths_give_the_same_answers_from_redis(redis_url: str, path: str) -> None:
    store = _store(redis_url)
    calls = _sync_calls(store) if path == "sync" else _async_calls(store)
    answers = asyncio.run(_scenario(calls))
    for got, want in zip(answers, EXPECTED, strict=True):
        assert want - TOL < got <= want
    assert store.stats()["redis_calls"] == 12 and store.stats()["fallback_calls"] == 0
    store.close()


@pytest.mark.parametrize("path", ["sync", "async"])
def test_both_paths_give_the_same_answers_from_the_local_share(
    redis_server: RedisServer, fake_clock: FakeClock, path: str
) -> None:
    store = _store(redis_server.url, timeout=0.5, clock=fake_clock)
    redis_server.stop()
    calls = _sync_calls(store) if path == "sync" else _async_calls(store)
    assert asyncio.run(_scenario(calls)) == pytest.approx(EXPECTED_LOCAL)  # worker_count=1
    stats = store.stats()
    assert stats["trips"] == 1 and stats["redis_errors"] == 1 and stats["redis_calls"] == 0
    store.close()


def test_a_pause_from_one_path_holds_the_other(redis_url: str) -> None:
    prefix = f"t-{uuid.uuid4().hex[:10]}"
    blocking = RedisBudgetStore(redis_url, prefix=prefix)
    shared = RedisBudgetStore(redis_url, prefix=prefix)  # another process, async callers
    gate = AdmissionGate(key="k", store=shared, requests_per_minute=60, tracker=NULL_TRACKER)

    async def main() -> float:
        await gate.aobserve_response(429, {"Retry-After": "7"})
        return await shared.apaused_for("k", now=0.0)

    # Each asyncio.run opens a loop and connects its client first, which can take a good
    # part of a second of Redis time on a loaded machine: hence a one-second tolerance.
    assert 6.0 < asyncio.run(main()) <= 7.0
    assert 6.0 < blocking.paused_for("k", now=0.0) <= 7.0
    blocking.pause("p", ONE_PER_S, seconds=3.0, now=0.0)
    assert 2.0 < asyncio.run(shared.apaused_for("p", now=0.0)) <= 3.0
    assert gate.stats()["pauses"] == 1
    blocking.close()
    shared.close()


def test_areconcile_refunds_through_redis(redis_url: str) -> None:
    store = _store(redis_url)
    gate = AdmissionGate(key="k", store=store, tokens_per_minute=600, tracker=NULL_TRACKER,
                         rate_burst_seconds=1.0, jitter_allowance=0.0)  # fmt: skip

    async def main() -> float:
        async with gate.aacquire(tokens=10) as ticket:  # the whole 10-token burst
            await ticket.areconcile(4)  # 6 tokens back
        return await store.apeek("k", gate.limits, requests=0, tokens=6, now=0.0)

    assert asyncio.run(main()) == 0.0
    assert store.stats()["redis_calls"] == 3
    store.close()


# --- outages on the async path ---------------------------------------------------------
def test_async_path_falls_back_then_recovers_with_a_flushed_redis(
    redis_server: RedisServer, fake_clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    store = _store(redis_server.url, timeout=0.5, worker_count=4, retry_interval=1.0,
                   clock=fake_clock)  # fmt: skip

    async def reserve() -> float:
        return await store.atry_reserve("k", ONE_PER_S, requests=1, tokens=0, now=100.0,
                                        max_wait=60.0)  # fmt: skip

    async def run(n: int) -> list[float]:
        return [await reserve() for _ in range(n)]

    assert asyncio.run(run(1)) == [0.0]
    redis_server.stop()
    with caplog.at_level(logging.INFO, logger="rag_perf_plugins"):
        # 60 RPM over 4 workers: 15 RPM here, one request per 4 s, starting empty.
        assert asyncio.run(run(3)) == [4.0, 8.0, 12.0]
    stats = store.stats()
    assert stats["state"] == "open" and stats["trips"] == 1
    assert stats["redis_errors"] == 1 and stats["fallback_calls"] == 3
    warnings_logged = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings_logged) == 1 and "1/4" in warnings_logged[0].getMessage()

    redis_server.start()  # same port, empty: no script, no bucket (as after a FLUSHALL)
    fake_clock.advance(1.0)
    # The probe: the script is reloaded and the bucket re-seeded, not full: empty now (1 s)
    # plus the local share's reservations still to come (12 s at a quarter of the rate).
    first = asyncio.run(run(2))[0]
    assert 4.0 - TOL < first <= 4.0
    stats = store.stats()
    assert stats["reseeds"] == 1 and stats["local_starts"] == 1
    assert stats["state"] == "closed" and stats["recoveries"] == 1
    assert stats["redis_calls"] == 3 and stats["redis_errors"] == 1
    store.close()


def test_async_fail_closed_refuses_callers(redis_server: RedisServer) -> None:
    store = _store(redis_server.url, timeout=0.5, fallback="fail-closed")
    gate = _gate(store)
    redis_server.stop()

    async def main() -> None:
        for _ in range(2):  # the first finds Redis gone, the second the open breaker
            with pytest.raises(Overloaded):
                await _enter_and_leave(gate)

    asyncio.run(main())
    assert store.stats()["redis_errors"] == 1 and store.stats()["fallback_calls"] == 2
    assert gate.stats()["in_flight"] == 0 and gate.stats()["rejected"] == 2
    store.close()


# --- one client per event loop, none left behind ----------------------------------------
def _connections(url: str, settle_at: int | None = None) -> int:
    """Clients connected to the server, not counting this one.

    With ``settle_at``, ask again (up to 200 times) until the count is that: the server
    notices a closed socket on its own schedule.
    """
    client = redis.Redis.from_url(url)
    try:
        for _ in range(200):
            count = len(client.client_list()) - 1
            if settle_at is None or count == settle_at:
                break
            time.sleep(0.005)  # another process closing a socket; nothing to fake
        return count
    finally:
        client.close()


def test_each_event_loop_gets_its_own_client_closed_with_the_loop(
    redis_server: RedisServer,
) -> None:
    store = _store(redis_server.url)
    gate = _gate(store, max_concurrent_requests=8)  # no queueing: one Redis call an entry
    barrier = threading.Barrier(2)
    seen: list[int] = []

    async def use() -> None:
        await _enter_and_leave(gate)
        await asyncio.to_thread(barrier.wait)  # both loops hold a client at this point...
        seen.append(store.stats()["event_loops"])
        await asyncio.to_thread(barrier.wait)  # ...until both have looked
        await _enter_and_leave(gate)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):  # two asyncio.run in turn...
            threads = [threading.Thread(target=asyncio.run, args=(use(),)) for _ in range(2)]
            for thread in threads:  # ...each with two loops at once, in two threads
                thread.start()
            for thread in threads:
                thread.join()
            assert store.stats()["event_loops"] == 0  # closed while each loop shut down
            assert _connections(redis_server.url, settle_at=0) == 0
        gc.collect()
    assert seen == [2, 2, 2, 2]
    assert [w for w in caught if issubclass(w.category, ResourceWarning)] == []
    assert store.stats()["redis_calls"] == 8  # (gate.stats() asks Redis once more)
    assert gate.stats()["admitted"] == 8
    store.close()


def test_aclose_closes_this_loops_client_and_a_later_call_reopens_it(
    redis_server: RedisServer,
) -> None:
    store = _store(redis_server.url)

    async def main() -> list[int]:
        counts = []
        await store.apeek("k", ONE_PER_S, requests=1, tokens=0, now=0.0)
        counts.append(_connections(redis_server.url))
        await store.aclose()
        await store.aclose()  # idempotent
        counts.append(_connections(redis_server.url, settle_at=0))
        await store.apeek("k", ONE_PER_S, requests=1, tokens=0, now=0.0)
        counts.append(store.stats()["event_loops"])
        return counts

    assert asyncio.run(main()) == [1, 0, 1]
    assert store.stats()["event_loops"] == 0
    assert _connections(redis_server.url, settle_at=0) == 0
    store.close()
