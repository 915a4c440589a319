"""The breaker store contract, run against LocalBreakerStore and RedisBreakerStore, both twins.

Both stores take ``now`` from the caller, so a ``FakeClock`` drives them and every answer
is exact: the Lua script in Redis must decide exactly as :class:`BreakerCore` does.

- closed until ``min_calls`` outcomes are in the window and failures reach the ratio, or
  ``consecutive`` failures in a row (a success of a call admitted before the last failure
  does not end the run);
- neutral outcomes (4xx) are not counted; old buckets leave the window;
- open refuses with the exact time left; the cool-down ends in half-open with ``probes``
  probe slots; all probes succeeding closes it, a failing probe opens it again;
- "down" failures (503, refused, timeout) open it after ``down_failures`` in a row;
- each failed probe lengthens the next cool-down (``cooldown_growth``, capped at
  ``cooldown_max``, plus ``cooldown_jitter`` of the caller's draw); a close starts over;
- a later opening never shortens a cool-down (``max``);
- a probe that never reports expires after one cool-down;
- ``peek`` changes nothing.

To add a store, add a case to ``STORES`` and build it in the ``store`` fixture.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from rag_perf_plugins._clock import FakeClock
from rag_perf_plugins.resilience import Admission, BreakerSettings, LocalBreakerStore, Transition
from rag_perf_plugins.resilience.breaker import Outcome, State
from rag_perf_plugins.resilience.store import BreakerStore

SETTINGS = BreakerSettings(failure_ratio=0.5, min_calls=4, window=10.0, cooldown=5.0, probes=2)


class Board:
    """One store through one twin, one target, one fake clock."""

    def __init__(self, store: BreakerStore, twin: str, clock: FakeClock) -> None:
        self.store, self.twin, self.clock = store, twin, clock
        self.target = f"openai/m/k-{uuid.uuid4().hex[:8]}"

    async def admit(self, settings: BreakerSettings = SETTINGS) -> Admission:
        if self.twin == "async":
            return await self.store.aadmit(self.target, settings, self.clock())
        return self.store.admit(self.target, settings, self.clock())

    async def record(
        self,
        outcome: Outcome,
        probe: bool = False,
        settings: BreakerSettings = SETTINGS,
        since: float | None = None,
        rand: float = 0.0,
    ) -> Transition | None:
        now = self.clock()
        if self.twin == "async":
            return await self.store.arecord(self.target, settings, outcome, probe, now, since, rand)
        return self.store.record(self.target, settings, outcome, probe, now, since, rand)

    def peek(self) -> tuple[State, float]:
        return self.store.peek(self.target, SETTINGS, self.clock())

    async def trip(self) -> None:
        for _ in range(4):
            await self.record("failure")
        assert self.peek()[0] == "open"


STORES = ["local", "redis"]


@pytest.fixture(params=[(s, t) for s in STORES for t in ("blocking", "async")], ids=str)
def board(request: pytest.FixtureRequest) -> Iterator[Board]:
    kind, twin = request.param
    clock = FakeClock(start=1000.0)
    store: Any
    if kind == "local":
        store = LocalBreakerStore()
        yield Board(store, twin, clock)
        return
    from rag_perf_plugins.resilience.redis_store import RedisBreakerStore

    url = request.getfixturevalue("redis_url")
    store = RedisBreakerStore(url, prefix=f"contract-{uuid.uuid4().hex[:6]}")
    yield Board(store, twin, clock)
    assert store.stats()["fallback_calls"] == 0  # every answer came from Redis
    store.close()


async def test_closed_until_min_calls_and_ratio(board: Board) -> None:
    assert await board.admit() == Admission(True, False, "closed")
    assert await board.record("failure") is None
    assert await board.record("success") is None
    assert await board.record("failure") is None  # 2 of 3: below min_calls
    assert board.peek() == ("closed", 0.0)
    assert await board.record("failure") == Transition("opened", 0.0, 5.0)  # 3 of 4 >= 0.5
    assert board.peek() == ("open", 5.0)


async def test_below_ratio_stays_closed(board: Board) -> None:
    for outcome in ("success", "success", "success", "failure", "success", "failure"):
        assert await board.record(outcome) is None
    assert board.peek()[0] == "closed"  # 2 of 6 < 0.5


async def test_neutral_outcomes_do_not_count(board: Board) -> None:
    for _ in range(10):
        await board.record("neutral")
    for _ in range(3):
        assert await board.record("failure") is None  # 3 outcomes: below min_calls
    assert board.peek()[0] == "closed"


async def test_failures_in_a_row_open_it_before_the_ratio_does(board: Board) -> None:
    busy = BreakerSettings(min_calls=4, window=10.0, cooldown=5.0, consecutive=3)
    for _ in range(20):
        await board.record("success", settings=busy)
    await board.record("failure", settings=busy)
    await board.record("failure", settings=busy)
    await board.record("success", settings=busy)  # a success resets the run
    await board.record("failure", settings=busy)
    assert await board.record("failure", settings=busy) is None
    assert await board.record("failure", settings=busy) == Transition("opened", 0.0, 5.0)


async def test_a_success_admitted_before_the_last_failure_does_not_end_the_run(
    board: Board,
) -> None:
    busy = BreakerSettings(min_calls=4, window=10.0, cooldown=5.0, consecutive=3)
    for _ in range(20):
        await board.record("success", settings=busy)
    sent_early = board.clock()  # a call in flight when the outage began
    board.clock.advance(0.01)
    await board.record("failure", settings=busy)
    board.clock.advance(0.01)
    await board.record("failure", settings=busy)
    assert await board.record("success", settings=busy, since=sent_early) is None  # old news
    board.clock.advance(0.01)
    opened = await board.record("failure", settings=busy)
    assert opened == Transition("opened", 0.0, 5.0)  # 3 in a row
    assert board.peek()[0] == "open"


async def test_a_success_admitted_after_the_last_failure_ends_the_run(board: Board) -> None:
    busy = BreakerSettings(min_calls=4, window=10.0, cooldown=5.0, consecutive=3)
    for _ in range(20):
        await board.record("success", settings=busy)
    await board.record("failure", settings=busy)
    await board.record("failure", settings=busy)
    board.clock.advance(0.01)
    assert await board.record("success", settings=busy, since=board.clock()) is None
    assert await board.record("failure", settings=busy) is None  # the run began again
    assert board.peek()[0] == "closed"


async def test_old_outcomes_leave_the_window(board: Board) -> None:
    for _ in range(3):
        await board.record("failure")
    board.clock.advance(11.0)  # past the 10 s window
    assert await board.record("failure") is None
    assert board.peek()[0] == "closed"


async def test_open_refuses_with_the_time_left(board: Board) -> None:
    await board.trip()
    board.clock.advance(2.0)
    refused = await board.admit()
    assert (refused.allowed, refused.state) == (False, "open")
    assert refused.retry_in == pytest.approx(3.0, abs=1e-5)


async def test_half_open_lets_probes_through_then_closes(board: Board) -> None:
    await board.trip()
    board.clock.advance(5.0)
    first = await board.admit()
    assert (first.allowed, first.probe, first.state, first.transition) == (
        True,
        True,
        "half_open",
        "half_open",
    )
    second = await board.admit()
    assert (second.allowed, second.probe, second.transition) == (True, True, None)
    third = await board.admit()
    assert (third.allowed, third.state) == (False, "half_open")  # 2 probes out: no more
    assert third.retry_in == pytest.approx(5.0, abs=1e-5)
    assert await board.record("success", probe=True) is None
    board.clock.advance(1.5)
    closed = await board.record("success", probe=True)
    assert closed is not None
    assert closed.kind == "closed"
    assert closed.open_s == pytest.approx(6.5, abs=1e-5)  # opened at 1000, closed at 1006.5
    assert board.peek() == ("closed", 0.0)
    assert (await board.admit()).probe is False


async def test_a_failing_probe_opens_it_again(board: Board) -> None:
    await board.trip()
    board.clock.advance(5.0)
    probe = await board.admit()
    assert probe.probe
    reopened = await board.record("failure", probe=True)
    assert reopened is not None
    assert reopened.kind == "reopened"
    assert reopened.cooldown_s == pytest.approx(10.0, abs=1e-5)  # grown: 5 s x 2
    state, retry_in = board.peek()
    assert state == "open"
    assert retry_in == pytest.approx(10.0, abs=1e-5)


async def test_a_neutral_probe_frees_its_slot(board: Board) -> None:
    await board.trip()
    board.clock.advance(5.0)
    await board.admit()
    await board.admit()
    assert not (await board.admit()).allowed
    await board.record("neutral", probe=True)
    assert (await board.admit()).probe


async def test_a_cooldown_is_never_shortened(board: Board) -> None:
    await board.trip()  # open until 1005
    long = BreakerSettings(failure_ratio=0.5, min_calls=4, window=10.0, cooldown=30.0, probes=2)
    board.clock.advance(5.0)
    assert (await board.admit(long)).probe  # half-open now
    reopened = await board.record("failure", probe=True, settings=long)
    assert reopened is not None
    assert reopened.kind == "reopened"  # 30 s x 2, capped at cooldown_max (30 s)
    # Until 1035; a writer with a 5 s cool-down must not shorten it.
    assert (await board.admit()).probe is False
    await board.admit()
    state, retry_in = board.peek()
    assert state == "open"
    assert retry_in == pytest.approx(30.0, abs=1e-5)


async def test_a_lost_probe_expires_after_one_cooldown(board: Board) -> None:
    await board.trip()
    board.clock.advance(5.0)
    await board.admit()
    await board.admit()  # both probes out, never reported (their process died)
    board.clock.advance(4.9)
    assert not (await board.admit()).allowed
    board.clock.advance(0.2)
    assert (await board.admit()).probe


async def test_late_outcomes_of_calls_admitted_before_opening_are_ignored(board: Board) -> None:
    await board.trip()
    for _ in range(5):
        assert await board.record("success") is None  # not a probe: old news
    assert board.peek()[0] == "open"


async def test_peek_changes_nothing(board: Board) -> None:
    await board.trip()
    board.clock.advance(6.0)
    assert board.peek() == ("half_open", 0.0)  # what the next admit will find
    assert board.peek() == ("half_open", 0.0)
    assert (await board.admit()).transition == "half_open"


async def test_down_failures_in_a_row_open_it_at_once(board: Board) -> None:
    for _ in range(20):
        await board.record("success")
    opened = await board.record("down")  # down_failures=1 (the default): the first one
    assert opened == Transition("opened", 0.0, 5.0)
    assert board.peek() == ("open", 5.0)


async def test_down_failures_count_apart_from_other_failures(board: Board) -> None:
    two = BreakerSettings(min_calls=50, window=10.0, cooldown=5.0, consecutive=10, down_failures=2)
    for _ in range(20):
        await board.record("success", settings=two)
    assert await board.record("down", settings=two) is None
    await board.record("success", settings=two)  # a success ends the run
    assert await board.record("down", settings=two) is None
    assert await board.record("failure", settings=two) is None  # a 429: not "down"
    opened = await board.record("down", settings=two)
    assert opened is not None
    assert opened.kind == "opened"  # the second down in a row since the success
    no_down = BreakerSettings(min_calls=50, consecutive=3, down_failures=None)
    board.target += "-none"
    for _ in range(2):
        assert await board.record("down", settings=no_down) is None  # counts as a failure
    assert await board.record("down", settings=no_down) is not None  # the third in a row


async def test_each_failed_probe_lengthens_the_cooldown_up_to_the_cap_then_a_close_resets(
    board: Board,
) -> None:
    grow = BreakerSettings(min_calls=4, cooldown=1.0, cooldown_growth=3.0, cooldown_max=5.0)
    assert await board.record("down", settings=grow) == Transition("opened", 0.0, 1.0)
    seen = []
    for _ in range(3):
        board.clock.advance(board.peek()[1])
        assert (await board.admit(grow)).probe
        reopened = await board.record("failure", probe=True, settings=grow)
        assert reopened is not None
        seen.append(round(reopened.cooldown_s, 6))
    assert seen == [3.0, 5.0, 5.0]  # 1 x 3, then capped at 5
    board.clock.advance(5.0)
    assert (await board.admit(grow)).probe
    closed = await board.record("success", probe=True, settings=grow)
    assert closed is not None
    assert closed.kind == "closed"
    again = await board.record("down", settings=grow)
    assert again == Transition("opened", 0.0, 1.0)  # a close starts the growth over


async def test_jitter_lengthens_a_cooldown_by_the_callers_draw(board: Board) -> None:
    jittery = BreakerSettings(cooldown=2.0, cooldown_jitter=0.5)
    opened = await board.record("down", settings=jittery, rand=1.0)
    assert opened is not None
    assert opened.cooldown_s == pytest.approx(3.0, abs=1e-5)  # 2 s + 50 % of it
    assert board.peek()[1] == pytest.approx(3.0, abs=1e-5)


async def test_a_grown_cooldown_is_not_shortened_by_a_writer_without_growth(board: Board) -> None:
    grow = BreakerSettings(cooldown=5.0, cooldown_growth=4.0, cooldown_max=60.0, probes=2)
    flat = BreakerSettings(cooldown=5.0, cooldown_growth=1.0, probes=2)
    await board.record("down", settings=grow)
    board.clock.advance(5.0)
    assert (await board.admit(grow)).probe
    assert (await board.admit(flat)).probe  # a second process's probe, flat settings
    await board.record("failure", probe=True, settings=grow)  # open for 20 s
    assert await board.record("failure", probe=True, settings=flat) is None  # already open
    assert board.peek()[1] == pytest.approx(20.0, abs=1e-5)
