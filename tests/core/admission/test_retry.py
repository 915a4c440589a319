"""RetryPolicy: what is retried, how long it waits, the retry budget and the deadline."""

from __future__ import annotations

import asyncio
import email.utils
import logging
import random
from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest

from rag_perf_plugins._clock import FakeClock
from rag_perf_plugins.admission import (
    AdmissionGate,
    LocalBudgetStore,
    RetryBudget,
    RetryPolicy,
    classify,
    parse_retry_after,
)
from rag_perf_plugins.errors import DeadlineExceeded, Overloaded, ProviderError
from rag_perf_plugins.tracking import NULL_TRACKER

REQUEST = httpx.Request("POST", "http://127.0.0.1:1/v1/chat/completions")


def response(status: int, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(status, headers=headers or {}, request=REQUEST)


def openai_error(status: int, headers: dict[str, str] | None = None) -> openai.APIStatusError:
    classes: dict[int, type[openai.APIStatusError]] = {
        400: openai.BadRequestError,
        401: openai.AuthenticationError,
        403: openai.PermissionDeniedError,
        404: openai.NotFoundError,
        422: openai.UnprocessableEntityError,
        429: openai.RateLimitError,
        500: openai.InternalServerError,
    }
    cls = classes.get(status, openai.APIStatusError)
    return cls(f"status {status}", response=response(status, headers), body=None)


class Scripted:
    """A provider call that raises the scripted errors in order, then returns "ok"."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"

    async def acall(self) -> str:
        return self()


class MaxJitter(random.Random):
    """Jitter that always picks the top of the range, so back-offs are exact."""

    def uniform(self, a: float, b: float) -> float:
        return b


def make_policy(clock: FakeClock, **options: Any) -> RetryPolicy:
    options.setdefault("budget_floor", 10)
    return RetryPolicy(
        clock=clock, sleep=clock.sleep, async_sleep=clock.asleep, rng=MaxJitter(), tracker=None,
        **options,
    )  # fmt: skip


Runner = Callable[..., Any]


@pytest.fixture(params=["sync", "async"])
def run(request: pytest.FixtureRequest) -> Runner:
    """Run a Scripted call through policy.call or policy.acall: both twins, same asserts."""

    def runner(policy: RetryPolicy, script: Scripted, **kwargs: Any) -> Any:
        if request.param == "sync":
            return policy.call(script, **kwargs)

        async def main() -> Any:
            return await policy.acall(script.acall, **kwargs)

        return asyncio.run(main())

    return runner


# --- classification -----------------------------------------------------------------------
@pytest.mark.parametrize("status", [429, 500, 502, 503, 504, 408])
def test_retryable_statuses_from_openai_httpx_and_our_provider_error(status: int) -> None:
    assert classify(openai_error(status)).retryable
    err = httpx.HTTPStatusError("x", request=REQUEST, response=response(status))
    assert classify(err).retryable
    assert classify(ProviderError("x", status_code=status)).retryable


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
def test_client_errors_are_never_retried(status: int) -> None:
    assert classify(openai_error(status)).kind == "client_error"
    err = httpx.HTTPStatusError("x", request=REQUEST, response=response(status))
    assert not classify(err).retryable


@pytest.mark.parametrize(
    "exc",
    [
        httpx.ConnectTimeout("x"),
        httpx.ReadTimeout("x"),
        httpx.ConnectError("x"),
        httpx.RemoteProtocolError("x"),
        openai.APITimeoutError(request=REQUEST),
        openai.APIConnectionError(request=REQUEST),
        ConnectionResetError(),
        TimeoutError(),
    ],
)
def test_timeouts_and_connection_errors_are_retried(exc: Exception) -> None:
    assert classify(exc).retryable


@pytest.mark.parametrize(
    "exc",
    [
        ValueError("bad input"),
        KeyError("k"),
        Overloaded("queue full"),
        DeadlineExceeded("late"),
        httpx.UnsupportedProtocol("ftp://"),
        asyncio.CancelledError(),
    ],
)
def test_validation_errors_and_our_own_refusals_are_not_retried(exc: BaseException) -> None:
    assert not classify(exc).retryable


def test_classify_reads_retry_after_from_the_response() -> None:
    failure = classify(openai_error(429, {"retry-after": "2"}))
    assert (failure.kind, failure.status, failure.retry_after) == ("rate_limited", 429, 2.0)
    assert classify(ProviderError("x", status_code=503, retry_after=4.0)).retry_after == 4.0


def test_parse_retry_after_forms() -> None:
    assert parse_retry_after({"Retry-After": "3"}) == 3.0
    assert parse_retry_after({"retry-after": "0.25"}) == 0.25
    assert parse_retry_after({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    date = email.utils.formatdate(1_000_030.0, usegmt=True)
    assert parse_retry_after({"retry-after": date}, wall_clock=lambda: 1_000_000.0) == 30.0
    assert parse_retry_after({"retry-after": date}, wall_clock=lambda: 2_000_000.0) == 0.0
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({}) is None and parse_retry_after(None) is None


# --- the policy ---------------------------------------------------------------------------
def test_retries_a_429_honouring_retry_after(run: Runner, fake_clock: FakeClock) -> None:
    policy = make_policy(fake_clock, retry_initial_backoff=0.5)
    script = Scripted(openai_error(429, {"retry-after": "2"}), openai_error(503))
    assert run(policy, script) == "ok"
    assert script.calls == 3
    assert fake_clock.slept[:2] == [2.0, 1.0]  # max(jitter 0.5, Retry-After 2), then 0.5 * 2
    stats = policy.stats()
    assert stats["retries"] == 2 and stats["attempts"] == 3 and stats["succeeded"] == 1
    assert stats["attempts_per_call"] == 3.0 and stats["attempts_histogram"] == {3: 1}


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
def test_client_errors_fail_after_one_attempt(
    run: Runner, fake_clock: FakeClock, status: int
) -> None:
    policy = make_policy(fake_clock)
    script = Scripted(openai_error(status))
    with pytest.raises(openai.APIStatusError) as info:
        run(policy, script)
    assert info.value.status_code == status
    assert script.calls == 1 and fake_clock.slept == []


def test_full_jitter_exponential_backoff_capped(fake_clock: FakeClock) -> None:
    policy = make_policy(
        fake_clock, retry_max_attempts=6, retry_initial_backoff=0.5, retry_max_backoff=3.0
    )
    script = Scripted(*(httpx.ConnectError("down") for _ in range(5)))
    assert policy.call(script) == "ok"
    assert fake_clock.slept == [0.5, 1.0, 2.0, 3.0, 3.0]


def test_jitter_is_drawn_from_zero_to_the_ceiling(fake_clock: FakeClock) -> None:
    policy = RetryPolicy(
        clock=fake_clock, sleep=fake_clock.sleep, rng=random.Random(7), tracker=None,
        retry_max_attempts=6, retry_initial_backoff=1.0, retry_max_backoff=100.0,
    )  # fmt: skip
    policy.call(Scripted(*(TimeoutError() for _ in range(5))))
    ceilings = [1.0, 2.0, 4.0, 8.0, 16.0]
    assert all(0.0 <= s <= c for s, c in zip(fake_clock.slept, ceilings, strict=True))
    assert len(set(fake_clock.slept)) == 5  # jittered, not fixed


def test_max_attempts_then_the_original_error(run: Runner, fake_clock: FakeClock) -> None:
    policy = make_policy(fake_clock, retry_max_attempts=3)
    last = openai_error(500)
    script = Scripted(openai_error(500), openai_error(500), last, openai_error(500))
    with pytest.raises(openai.InternalServerError) as info:
        run(policy, script)
    assert info.value is last and script.calls == 3
    assert policy.stats()["failed"] == 1


def test_retry_after_above_the_cap_fails_at_once(run: Runner, fake_clock: FakeClock) -> None:
    policy = make_policy(fake_clock, retry_after_cap=10.0)
    script = Scripted(openai_error(429, {"retry-after": "120"}))
    with pytest.raises(openai.RateLimitError):
        run(policy, script)
    assert script.calls == 1 and fake_clock.slept == []
    assert policy.stats()["retry_after_too_long"] == 1


def test_retry_budget_turns_a_storm_into_fast_failures(fake_clock: FakeClock) -> None:
    policy = make_policy(fake_clock, retry_budget_ratio=0.1, retry_max_attempts=4, budget_floor=0)
    provider_calls = 0
    for _ in range(100):
        script = Scripted(*(openai_error(429) for _ in range(10)))
        with pytest.raises(openai.RateLimitError):
            policy.call(script)
        provider_calls += script.calls
    stats = policy.stats()
    # Without the budget: 400 provider calls. With it: one retry per 10 calls begun, and
    # every call ends fast on an exhausted budget with the provider's own error.
    assert stats["retries"] == 10 and provider_calls == 110
    assert stats["budget_exhausted"] == 100


def test_an_exhausted_budget_is_warned_once_per_window(
    fake_clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    policy = make_policy(fake_clock, retry_budget_ratio=0.0, retry_budget_window=60.0)
    caplog.set_level(logging.WARNING, logger="rag_perf_plugins.admission.retry")
    for _ in range(50):
        with pytest.raises(openai.APIStatusError):
            policy.call(Scripted(openai_error(503)))
    assert len(caplog.records) == 1  # fifty fast failures, one line
    assert "retry budget exhausted" in caplog.records[0].getMessage()
    fake_clock.advance(61.0)
    with pytest.raises(openai.APIStatusError):
        policy.call(Scripted(openai_error(503)))
    assert len(caplog.records) == 2  # the next window says it again


def test_retry_budget_zero_forbids_retries(fake_clock: FakeClock) -> None:
    policy = make_policy(fake_clock, retry_budget_ratio=0.0)
    script = Scripted(openai_error(503))
    with pytest.raises(openai.APIStatusError):
        policy.call(script)
    assert script.calls == 1 and policy.stats()["budget_exhausted"] == 1


def test_retry_budget_window_slides() -> None:
    budget = RetryBudget(ratio=0.5, window=10.0, floor=0)
    for _ in range(4):
        budget.record_call(0.0)
    assert [budget.try_spend(0.0) for _ in range(3)] == [True, True, False]
    assert not budget.try_spend(9.0)  # the calls still count, so do the retries
    assert not budget.try_spend(10.5)  # calls and retries aged out together: 0 <= 0
    budget.record_call(10.5)
    budget.record_call(10.5)
    assert budget.try_spend(10.5) and not budget.try_spend(10.5)
    assert "calls: 2, retries: 1" in repr(budget)
    with pytest.raises(ValueError, match="ratio"):
        RetryBudget(ratio=-1, window=1.0)
    with pytest.raises(ValueError, match="window"):
        RetryBudget(ratio=1, window=0.0)


def test_budget_floor_lets_a_quiet_clients_first_failure_retry(fake_clock: FakeClock) -> None:
    policy = make_policy(fake_clock, retry_budget_ratio=0.1, budget_floor=2)
    assert policy.call(Scripted(openai_error(503))) == "ok"


def test_deadline_passing_during_back_off_raises_on_time(
    run: Runner, fake_clock: FakeClock
) -> None:
    policy = make_policy(fake_clock, request_deadline=5.0)
    start = fake_clock()
    original = openai_error(429, {"retry-after": "3"})
    script = Scripted(openai_error(429, {"retry-after": "3"}), original)
    with pytest.raises(DeadlineExceeded) as info:
        run(policy, script)
    # Attempt 2 failed at 3 s; another 3 s back-off would end at 6 s > 5 s: raised then,
    # not after sleeping into the deadline.
    assert fake_clock() - start == pytest.approx(3.0)
    assert info.value.__cause__ is original and script.calls == 2
    assert policy.stats()["deadline_exceeded"] == 1


def test_deadline_covers_the_wait_in_the_gate(fake_clock: FakeClock) -> None:
    gate = AdmissionGate(
        key="d", store=LocalBudgetStore(), clock=fake_clock, sleep=fake_clock.sleep,
        tracker=NULL_TRACKER,
    )  # fmt: skip
    policy = make_policy(fake_clock)
    gate.pause(30.0)
    script = Scripted()
    with pytest.raises(DeadlineExceeded):
        policy.call(script, gate=gate, deadline=10.0)
    assert script.calls == 0 and fake_clock.slept == []
    assert policy.stats()["deadline_exceeded"] == 1


async def test_an_async_attempt_running_past_the_deadline_is_cancelled() -> None:
    policy = RetryPolicy(tracker=None, request_deadline=0.05)
    cancelled = asyncio.Event()

    async def hang() -> str:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "never"

    with pytest.raises(DeadlineExceeded):
        await policy.acall(hang)
    assert cancelled.is_set()


async def test_cancellation_is_never_retried(fake_clock: FakeClock) -> None:
    policy = make_policy(fake_clock)
    calls = 0

    async def cancelled() -> str:
        nonlocal calls
        calls += 1
        raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        await policy.acall(cancelled)
    assert calls == 1


def test_429_through_the_gate_pauses_everyone_and_usage_reconciles(
    run: Runner, fake_clock: FakeClock
) -> None:
    store = LocalBudgetStore()
    gate = AdmissionGate(
        key="g", store=store, clock=fake_clock, sleep=fake_clock.sleep,
        async_sleep=fake_clock.asleep, tokens_per_minute=6000, tracker=NULL_TRACKER,
    )  # fmt: skip
    policy = make_policy(fake_clock)
    script = Scripted(openai_error(429, {"retry-after": "2"}))
    assert run(policy, script, gate=gate, tokens=50, usage=lambda r: 10) == "ok"
    assert gate.stats()["pauses"] == 1 and gate.stats()["admitted"] == 2
    # 100 tokens/s: after the 2 s pause the second attempt reserved 50 tokens (0.5 s of
    # budget) and was reconciled to 10 (0.1 s), so 100 more tokens wait 0.1 s, not 0.5 s.
    assert fake_clock() - 1000.0 == pytest.approx(2.0)
    wait = store.peek("g", gate.limits, requests=0, tokens=100, now=fake_clock())
    assert wait == pytest.approx(0.1)


def test_bad_deadline_is_named(fake_clock: FakeClock) -> None:
    with pytest.raises(ValueError, match="deadline must be > 0"):
        make_policy(fake_clock).call(Scripted(), deadline=0.0)


def test_repr_shows_live_counts(fake_clock: FakeClock) -> None:
    policy = make_policy(fake_clock)
    policy.call(Scripted(TimeoutError()))
    assert "calls: 1, retries: 1" in repr(policy)


def test_first_attempt_is_counted_as_every_attempt_is(run: Runner, fake_clock: FakeClock) -> None:
    # policy.call runs a first attempt without a gate outside its retry loop: the counts
    # must be the loop's, for successes, a client error and a retried failure alike.
    policy = make_policy(fake_clock)
    for _ in range(3):
        assert run(policy, Scripted()) == "ok"
    with pytest.raises(openai.BadRequestError):
        run(policy, Scripted(openai_error(400)))
    assert run(policy, Scripted(openai_error(503))) == "ok"
    stats = policy.stats()
    assert (stats["calls"], stats["succeeded"], stats["failed"]) == (5, 4, 1)
    assert stats["attempts"] == 3 + 1 + 2 and stats["retries"] == 1
    assert stats["attempts_histogram"] == {1: 4, 2: 1}
    with pytest.raises(ValueError, match="deadline must be > 0"):
        run(policy, Scripted(), deadline=0.0)


class Ticking:
    """A clock that moves 1 s every time it is read: a deadline passes between two reads."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


@pytest.mark.parametrize("asynchronous", [False, True])
def test_no_attempt_is_sent_once_the_deadline_has_passed(asynchronous: bool) -> None:
    # The first attempt too: time can pass between the call's start and its first attempt.
    sent: list[int] = []
    policy = RetryPolicy(clock=Ticking(), sleep=lambda _s: None, tracker=NULL_TRACKER)

    async def attempt() -> None:
        sent.append(1)

    with pytest.raises(DeadlineExceeded):
        if asynchronous:
            asyncio.run(policy.acall(attempt, deadline=0.5))
        else:
            policy.call(lambda: sent.append(1), deadline=0.5)
    stats = policy.stats()
    assert sent == []
    assert (stats["deadline_exceeded"], stats["failed"], stats["succeeded"]) == (1, 1, 0)
