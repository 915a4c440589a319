"""The single-flight contract, run through every way of calling SingleFlight.

:class:`~rag_perf_plugins.cache.singleflight.SingleFlight` has one table and four callers:
threads through :meth:`do`, tasks through :meth:`ado`, and the batch API (``claim`` then
``settle``) from a thread (``blocking=True``) or from a task (``blocking=False``), which is
how the embedding service uses it. ``TestSingleFlightContract`` runs one suite over the
four; ``TestMixedCallers`` checks that they share computations with each other (a thread
and a task asking for one key run it once), that a cancelled async leader does not cancel
its followers, and that blocking code on the leader's own event loop computes instead of
deadlocking. ``TestBatchClaims`` covers what only the batch API offers.

Every count is exact: ``computed`` (leaders) and ``coalesced`` (callers that waited on
another's computation) are read after each scenario. Computations are held at a gate
until every caller has joined (read from those counters), so no caller can arrive after
the leader finished; nothing here depends on timing.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from rag_perf_plugins.cache import SingleFlight

MODES = ["thread", "task", "batch-thread", "batch-task"]


class Boom(RuntimeError):
    """The computation's own error."""


class Work:
    """A computation held at a gate until :meth:`open`; counts its runs."""

    def __init__(self, value: str, *, fail: bool = False) -> None:
        self.value = value
        self.fail = fail
        self.runs = 0
        self.finished = 0
        self._thread_gate = threading.Event()
        self._task_gate = asyncio.Event()  # made, awaited and set on the test's loop

    def open(self) -> None:
        self._thread_gate.set()
        self._task_gate.set()

    def _outcome(self) -> str:
        self.finished += 1
        if self.fail:
            raise Boom(f"{self.value} failed")
        return self.value

    def sync(self) -> str:
        self.runs += 1
        if not self._thread_gate.wait(10.0):
            raise AssertionError("the gate never opened")
        return self._outcome()

    async def asyncly(self) -> str:
        self.runs += 1
        await self._task_gate.wait()
        return self._outcome()


class Callers:
    """Starts callers of one :class:`SingleFlight` in each mode; cleans up after a test."""

    def __init__(self) -> None:
        self.flight: SingleFlight[str] = SingleFlight()
        self.works: list[Work] = []
        self.threads: list[threading.Thread] = []

    def work(self, value: str, *, fail: bool = False) -> Work:
        work = Work(value, fail=fail)
        self.works.append(work)
        return work

    def _in_thread(self, fn: Callable[[], str]) -> asyncio.Future[str]:
        result: concurrent.futures.Future[str] = concurrent.futures.Future()

        def run() -> None:
            try:
                result.set_result(fn())
            except BaseException as exc:  # handed to the awaiting test
                result.set_exception(exc)

        thread = threading.Thread(target=run, daemon=True)
        self.threads.append(thread)
        thread.start()
        return asyncio.wrap_future(result)

    def start(self, mode: str, key: str, work: Work) -> asyncio.Future[str]:
        """One caller asking for ``key``, computing ``work`` if it leads."""
        flight = self.flight
        if mode == "thread":
            return self._in_thread(lambda: flight.do(key, work.sync))
        if mode == "task":
            return asyncio.ensure_future(flight.ado(key, work.asyncly))
        if mode == "batch-thread":

            def blocking_batch() -> str:
                lead, follow = flight.claim([key], blocking=True)
                if key in follow:
                    return follow[key].result()
                try:
                    value = work.sync()
                except BaseException as exc:
                    flight.settle(lead, None, exc, release=True)
                    raise
                flight.settle(lead, {key: value}, None, release=True)
                return value

            return self._in_thread(blocking_batch)
        assert mode == "batch-task", mode

        async def async_batch() -> str:
            lead, follow = flight.claim([key], blocking=False)
            if key in follow:
                return await asyncio.wrap_future(follow[key])
            try:
                value = await work.asyncly()
            except BaseException as exc:
                flight.settle(lead, None, exc, release=True)
                raise
            flight.settle(lead, {key: value}, None, release=True)
            return value

        return asyncio.ensure_future(async_batch())

    async def joined(self, callers: int) -> None:
        """Until ``callers`` callers have led or joined a flight (threads run meanwhile)."""
        await until(lambda: self.flight.computed + self.flight.coalesced >= callers)

    def counts(self) -> tuple[int, int]:
        return self.flight.computed, self.flight.coalesced

    async def close(self) -> None:
        for work in self.works:
            work.open()
        for thread in self.threads:
            await asyncio.to_thread(thread.join, 10.0)
            assert not thread.is_alive()


async def until(predicate: Callable[[], bool]) -> None:
    # A synchronisation with other threads and tasks: loop turns first, then short naps
    # so that threads get the GIL; never an assertion about time.
    deadline = time.monotonic() + 10.0
    turns = 0
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("callers never reached the expected state")
        turns += 1
        await asyncio.sleep(0 if turns < 200 else 0.001)


@pytest.fixture
async def callers() -> AsyncIterator[Callers]:
    made = Callers()
    try:
        yield made
    finally:
        await made.close()


async def outcomes(handles: list[asyncio.Future[str]]) -> list[Any]:
    return list(await asyncio.gather(*handles, return_exceptions=True))


@pytest.mark.parametrize("mode", MODES)
class TestSingleFlightContract:
    """What every way of calling :class:`SingleFlight` does on its own."""

    async def test_concurrent_callers_compute_once(self, callers: Callers, mode: str) -> None:
        work = callers.work("v")
        handles = [callers.start(mode, "k", work) for _ in range(8)]
        await callers.joined(8)
        assert len(callers.flight) == 1
        work.open()
        assert await outcomes(handles) == ["v"] * 8
        assert (work.runs, work.finished) == (1, 1)
        assert callers.counts() == (1, 7)
        assert len(callers.flight) == 0

    async def test_keys_are_independent(self, callers: Callers, mode: str) -> None:
        a, b = callers.work("a"), callers.work("b")
        handles = [callers.start(mode, key, work) for key, work in [("a", a), ("b", b)] * 4]
        await callers.joined(8)
        assert len(callers.flight) == 2
        a.open()
        b.open()
        assert await outcomes(handles) == ["a", "b"] * 4
        assert (a.runs, b.runs) == (1, 1)
        assert callers.counts() == (2, 6)

    async def test_errors_reach_current_waiters_and_are_not_remembered(
        self, callers: Callers, mode: str
    ) -> None:
        failing = callers.work("first", fail=True)
        handles = [callers.start(mode, "k", failing) for _ in range(5)]
        await callers.joined(5)
        failing.open()
        errors = await outcomes(handles)
        assert all(isinstance(e, Boom) and str(e) == "first failed" for e in errors), errors
        assert failing.runs == 1 and callers.counts() == (1, 4)
        # Not remembered: the next caller computes again, and succeeds.
        working = callers.work("second")
        working.open()
        assert await callers.start(mode, "k", working) == "second"
        assert callers.counts() == (2, 4) and len(callers.flight) == 0

    async def test_a_settled_key_is_forgotten(self, callers: Callers, mode: str) -> None:
        for n in range(3):
            work = callers.work(f"v{n}")
            work.open()
            assert await callers.start(mode, "k", work) == f"v{n}"
        assert callers.counts() == (3, 0)
        assert len(callers.flight) == 0


class TestMixedCallers:
    """Callers of different kinds share one table."""

    @pytest.mark.parametrize("leader", MODES)
    @pytest.mark.parametrize("follower", MODES)
    async def test_any_two_kinds_share_one_computation(
        self, callers: Callers, leader: str, follower: str
    ) -> None:
        first, other = callers.work("leader's"), callers.work("never run")
        lead = callers.start(leader, "k", first)
        await until(lambda: first.runs == 1)
        follows = [callers.start(follower, "k", other) for _ in range(3)]
        await callers.joined(4)
        first.open()
        assert await outcomes([lead, *follows]) == ["leader's"] * 4
        assert (first.runs, other.runs) == (1, 0)
        assert callers.counts() == (1, 3)

    @pytest.mark.parametrize("follower", MODES)
    async def test_a_cancelled_async_leader_does_not_cancel_followers(
        self, callers: Callers, follower: str
    ) -> None:
        work = callers.work("v")
        leader = callers.start("task", "k", work)
        await until(lambda: work.runs == 1)
        follows = [callers.start(follower, "k", work) for _ in range(3)]
        await callers.joined(4)
        leader.cancel()
        await until(leader.done)
        assert leader.cancelled()
        work.open()
        assert await outcomes(follows) == ["v"] * 3
        assert (work.runs, work.finished) == (1, 1)
        assert callers.counts() == (1, 3)

    async def test_the_computation_finishes_when_every_task_leaves(self, callers: Callers) -> None:
        work = callers.work("v")
        handles = [callers.start("task", "k", work) for _ in range(3)]
        await callers.joined(3)
        for handle in handles:
            handle.cancel()
        await until(lambda: all(h.done() for h in handles))
        assert len(callers.flight) == 1  # still computing, for nobody
        work.open()
        await until(lambda: work.finished == 1)
        await until(lambda: len(callers.flight) == 0)
        again = callers.work("w")
        again.open()
        assert await callers.start("task", "k", again) == "w"
        assert callers.counts() == (2, 2)

    @pytest.mark.parametrize("leader", ["task", "batch-task"])
    async def test_blocking_code_on_the_leaders_loop_computes_instead_of_deadlocking(
        self, callers: Callers, leader: str
    ) -> None:
        flight = callers.flight
        work = callers.work("async")
        lead = callers.start(leader, "k", work)
        await until(lambda: work.runs == 1)
        # Sync code called from a coroutine of the leader's own loop: waiting would block
        # the loop the leader needs, forever. It computes on its own (and counts as such).
        assert flight.do("k", lambda: "sync") == "sync"
        private, follow = flight.claim(["k"], blocking=True)
        assert list(private) == ["k"] and follow == {}
        flight.settle(private, {"k": "private"}, None, release=True)
        # The shared flight is untouched: a task still joins it; so does another thread.
        other = callers.work("never run")
        task = callers.start("task", "k", other)
        thread = callers.start("thread", "k", other)
        await callers.joined(5)
        work.open()
        assert await outcomes([lead, task, thread]) == ["async"] * 3
        assert other.runs == 0
        assert callers.counts() == (3, 2)


class TestBatchClaims:
    """What only the batch API offers: many keys per claim, and settling without release."""

    def test_overlapping_claims_lead_and_follow_per_key(self) -> None:
        flight: SingleFlight[str] = SingleFlight()
        lead1, follow1 = flight.claim(["a", "b"], blocking=True)
        lead2, follow2 = flight.claim(["b", "c"], blocking=True)
        assert (sorted(lead1), follow1) == (["a", "b"], {})
        assert (sorted(lead2), sorted(follow2)) == (["c"], ["b"])
        assert flight.computed == 3 and flight.coalesced == 1
        flight.settle(lead1, {"a": "A", "b": "B"}, None, release=True)
        assert follow2["b"].result(timeout=0) == "B"
        flight.settle(lead2, {"c": "C"}, None, release=True)
        assert len(flight) == 0

    async def test_a_key_missing_from_the_results_fails_its_waiters(self) -> None:
        flight: SingleFlight[str] = SingleFlight()
        lead, _ = flight.claim(["a", "b"], blocking=False)
        _, follow = flight.claim(["a", "b"], blocking=False)
        flight.settle(lead, {"a": "A"}, None, release=True)
        assert await asyncio.wrap_future(follow["a"]) == "A"
        with pytest.raises(RuntimeError, match="no value computed for 'b'"):
            await asyncio.wrap_future(follow["b"])

    def test_settle_without_release_keeps_serving_the_value(self) -> None:
        flight: SingleFlight[str] = SingleFlight()
        lead, _ = flight.claim(["k"], blocking=True)
        flight.settle(lead, {"k": "v"}, None)  # stored elsewhere next, then released
        late_lead, late = flight.claim(["k"], blocking=True)
        assert late_lead == {} and late["k"].result(timeout=0) == "v"
        flight.release(lead)
        fresh, follow = flight.claim(["k"], blocking=True)
        assert list(fresh) == ["k"] and follow == {}
        flight.settle(fresh, None, Boom("down"), release=True)
        assert (flight.computed, flight.coalesced, len(flight)) == (2, 1, 0)
