"""Single-flight through the manager: 100 threads and 100 tasks compute once."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from rag_perf_plugins.cache import CacheManager, SingleFlight
from rag_perf_plugins.config import PerformanceConfig


@pytest.fixture
def cache(cache_dir: Path) -> CacheManager:
    return CacheManager(PerformanceConfig(cache_dir=str(cache_dir)), tracker=None)


def _wait_for(predicate: object, what: str) -> None:
    # Waits for other threads to reach a state; a count, not a timing assertion.
    deadline = time.monotonic() + 30.0
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.001)


async def _until(predicate: Callable[[], bool]) -> None:
    # Lets the other tasks run until they reach a state; counts loop turns, not time.
    for _ in range(100_000):
        if predicate():
            return
        await asyncio.sleep(0)
    raise AssertionError("tasks never reached the expected state")


def test_hundred_threads_compute_once(cache: CacheManager) -> None:
    release = threading.Event()
    calls: list[int] = []
    results: list[object] = []

    def compute() -> dict[str, int]:
        calls.append(1)
        release.wait()
        return {"value": 7}

    def worker() -> None:
        results.append(cache.get_or_compute("k", compute, namespace="llm"))

    threads = [threading.Thread(target=worker) for _ in range(100)]
    for t in threads:
        t.start()
    # Every thread either waits on the leader or has already read the leader's result.
    _wait_for(lambda: cache._flight.coalesced + len(calls) >= 100, "100 callers to join")
    release.set()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert results == [{"value": 7}] * 100
    assert cache.get("k", namespace="llm") == {"value": 7}
    cache.close()


async def test_hundred_tasks_compute_once(cache: CacheManager) -> None:
    release = asyncio.Event()
    calls: list[int] = []

    async def compute() -> list[float]:
        calls.append(1)
        await release.wait()
        return [1.5, 2.5]

    tasks = [asyncio.create_task(cache.aget_or_compute("k", compute)) for _ in range(100)]
    await _until(lambda: cache._flight.coalesced >= 99)
    release.set()
    assert await asyncio.gather(*tasks) == [[1.5, 2.5]] * 100
    assert calls == [1]
    assert await cache.aget("k") == [1.5, 2.5]
    await cache.aclose()


async def test_leader_cancellation_does_not_cancel_followers() -> None:
    flight: SingleFlight[Any] = SingleFlight()
    release = asyncio.Event()
    calls: list[int] = []

    async def compute() -> str:
        calls.append(1)
        await release.wait()
        return "done"

    leader = asyncio.create_task(flight.ado("k", compute))
    await asyncio.sleep(0)
    followers = [asyncio.create_task(flight.ado("k", compute)) for _ in range(5)]
    await asyncio.sleep(0)
    leader.cancel()
    await asyncio.sleep(0)
    release.set()
    assert await asyncio.gather(*followers) == ["done"] * 5
    assert leader.cancelled()
    assert calls == [1]


async def test_errors_reach_current_waiters_and_are_not_cached(cache: CacheManager) -> None:
    release = asyncio.Event()
    attempts: list[int] = []

    async def failing() -> str:
        attempts.append(1)
        await release.wait()
        raise RuntimeError("provider down")

    tasks = [asyncio.create_task(cache.aget_or_compute("k", failing)) for _ in range(10)]
    await _until(lambda: cache._flight.coalesced >= 9)
    release.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in results)
    assert attempts == [1]

    async def working() -> str:
        return "ok"

    assert await cache.aget_or_compute("k", working) == "ok"  # the error was not cached
    await cache.aclose()


def test_thread_errors_reach_waiters() -> None:
    flight: SingleFlight[Any] = SingleFlight()
    release = threading.Event()
    errors: list[BaseException] = []

    def failing() -> int:
        release.wait()
        raise ValueError("boom")

    def worker() -> None:
        try:
            flight.do("k", failing)
        except ValueError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(10)]
    for t in threads:
        t.start()
    _wait_for(lambda: flight.coalesced >= 9, "9 followers")
    release.set()
    for t in threads:
        t.join()
    assert len(errors) == 10 and flight.computed == 1
    assert flight.do("k", lambda: 3) == 3


async def test_a_thread_and_a_task_share_one_computation() -> None:
    flight: SingleFlight[Any] = SingleFlight()
    release = threading.Event()
    calls: list[str] = []

    def compute() -> str:
        calls.append("thread")
        release.wait()
        return "value"

    async def acompute() -> str:
        calls.append("task")
        return "other"

    loop = asyncio.get_running_loop()
    thread_result = loop.run_in_executor(None, flight.do, "k", compute)
    await _until(lambda: calls == ["thread"])
    task = asyncio.create_task(flight.ado("k", acompute))
    await _until(lambda: flight.coalesced == 1)
    release.set()
    assert await task == "value" and await thread_result == "value"
    assert calls == ["thread"] and flight.computed == 1


async def test_blocking_code_on_the_leaders_loop_computes_instead_of_deadlocking() -> None:
    flight: SingleFlight[Any] = SingleFlight()
    release = asyncio.Event()

    async def slow() -> str:
        await release.wait()
        return "async"

    leader = asyncio.create_task(flight.ado("k", slow))
    await _until(lambda: flight.computed == 1)
    # Sync code called from a coroutine of the same loop: waiting for the leader would
    # block the loop the leader needs, forever. It computes on its own instead.
    assert flight.do("k", lambda: "sync") == "sync"
    lead, follow = flight.claim(["k"], blocking=True)
    assert list(lead) == ["k"] and not follow
    release.set()
    assert await leader == "async"
    assert flight.computed == 3 and flight.coalesced == 0


async def test_a_caller_whose_miss_was_read_before_the_leader_stored_does_not_compute_again(
    cache_dir: Path,
) -> None:
    """The window between a lookup and a claim: the leader stored and released meanwhile."""
    import threading as th

    from rag_perf_plugins.cache import DiskTier, MemoryTier

    class SlowDisk(DiskTier):
        block_next = False
        entered = th.Event()
        release = th.Event()

        def get_many(self, keys: Any) -> dict[str, bytes]:
            found = super().get_many(keys)  # read now (a miss) ...
            if SlowDisk.block_next:
                SlowDisk.block_next = False
                SlowDisk.entered.set()
                SlowDisk.release.wait(10)  # ... and answer only after the leader is done
            return found

    config = PerformanceConfig(cache_dir=str(cache_dir))
    manager = CacheManager(
        config, tiers=[MemoryTier(max_items=100, max_bytes=2**20), SlowDisk(cache_dir)]
    )
    leader_go = asyncio.Event()
    calls: list[str] = []

    async def first() -> str:
        calls.append("first")
        await leader_go.wait()
        return "answer"

    async def second() -> str:
        calls.append("second")
        return "another answer"

    leader = asyncio.create_task(manager.aget_or_compute("k", first))
    await _until(lambda: calls == ["first"])
    SlowDisk.block_next = True
    late = asyncio.create_task(manager.aget_or_compute("k", second))
    await asyncio.get_running_loop().run_in_executor(None, SlowDisk.entered.wait, 10)
    leader_go.set()
    assert await leader == "answer"  # stored, and its flight released
    SlowDisk.release.set()
    assert await late == "answer"  # read again after claiming: no second computation
    assert calls == ["first"]
    await manager.aclose()
