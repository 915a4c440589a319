"""LLMService's chain without a framework: one retry budget and deadline, what fails over."""

from __future__ import annotations

import asyncio

import pytest

from rag_perf_plugins._clock import FakeClock
from rag_perf_plugins.admission import RetryPolicy
from rag_perf_plugins.config import PerformanceConfig
from rag_perf_plugins.errors import ProviderError, RagPerfError
from rag_perf_plugins.resilience import Breakers, BreakerSettings, LocalBreakerStore, Target
from rag_perf_plugins.services import LLMRequest, LLMService, Usage
from rag_perf_plugins.services.llm import Fallback
from rag_perf_plugins.tracking import NullTracker

# The ratio and failures-in-a-row rules only: a 503 does not open a breaker at once here.
CONFIG = PerformanceConfig(
    enable_caching=False,
    enable_metrics=False,
    breaker_min_calls=50,
    breaker_down_failures=None,
)
QUESTION = [{"role": "user", "content": "q"}]


class Codec:
    def encode(self, value: str) -> str:
        return value

    def decode(self, data: str) -> str:
        return data

    def usage(self, value: str) -> Usage | None:
        return None


class BudgetExceeded(RagPerfError):
    """A tenant's spending limit (stands in for the cost issue's error)."""


def service(retry: RetryPolicy | None = None, target: Target | None = None) -> LLMService:
    breakers = Breakers(BreakerSettings.from_config(CONFIG), LocalBreakerStore(), clock=FakeClock())
    return LLMService(
        config=CONFIG, retry=retry, breakers=breakers, tracker=NullTracker(), target=target
    )


def fallback(answer: object, sent: list[str]) -> Fallback:
    def call() -> str:
        sent.append("fallback")
        if isinstance(answer, BaseException):
            raise answer
        return str(answer)

    return Fallback(Target("fb"), LLMRequest(model="fb", provider="p", messages=QUESTION), call)


def test_one_retry_budget_and_attempt_count_for_the_whole_chain() -> None:
    clock = FakeClock()
    retry = RetryPolicy(
        CONFIG, clock=clock, sleep=clock.sleep, retry_max_attempts=3, tracker=NullTracker()
    )
    sent: list[str] = []

    def primary() -> str:
        sent.append("primary")
        raise ProviderError("down", status_code=503)

    llm = service(retry)
    request = LLMRequest(model="m", provider="p", messages=QUESTION)
    with pytest.raises(ProviderError):
        llm.generate(
            request,
            primary,
            Codec(),
            fallbacks=[fallback(ProviderError("x", status_code=500), sent)],
        )
    # Three passes over the chain (the policy's three attempts), never more.
    assert sent == ["primary", "fallback"] * 3
    stats = retry.stats()
    assert (stats["calls"], stats["retries"]) == (1, 2)
    assert len(clock.slept) == 2  # back-off between passes, none between targets


@pytest.mark.parametrize(
    "error", [ProviderError("bad request", status_code=400), BudgetExceeded("tenant over budget")]
)
def test_client_errors_and_budgets_are_never_failed_over(error: Exception) -> None:
    sent: list[str] = []

    def primary() -> str:
        raise error

    llm = service()
    request = LLMRequest(model="m", provider="p", messages=QUESTION)
    with pytest.raises(type(error)):
        llm.generate(request, primary, Codec(), fallbacks=[fallback("ok", sent)])
    assert sent == []


def test_async_chain_answers_from_the_fallback_and_says_so() -> None:
    sent: list[str] = []
    told: list[str] = []

    async def primary() -> str:
        raise ProviderError("throttled", status_code=429)

    async def fb() -> str:
        sent.append("fallback")
        return "from fallback"

    llm = service()
    request = LLMRequest(model="m", provider="p", messages=QUESTION)
    other = Fallback(Target("fb"), LLMRequest(model="fb", provider="p", messages=QUESTION), fb)
    answer = asyncio.run(
        llm.agenerate(request, primary, Codec(), fallbacks=[other], on_target=told.append)
    )
    assert (answer, sent, told) == ("from fallback", ["fallback"], ["fb"])


def test_a_429_skips_targets_of_the_same_rate_limit_scope() -> None:
    sent: list[str] = []

    def primary() -> str:
        sent.append("primary")
        raise ProviderError("throttled", status_code=429)

    def same_scope() -> str:
        sent.append("same scope")
        return "no"

    scope = "openai/m/k-1"
    llm = service(target=Target("primary", scope=scope))
    request = LLMRequest(model="m", provider="p", messages=QUESTION)
    chain = [
        Fallback(Target("twin", scope=scope), request, same_scope),
        fallback("other scope", sent),
    ]
    assert llm.generate(request, primary, Codec(), fallbacks=chain) == "other scope"
    assert sent == ["primary", "fallback"]


def test_an_answer_in_flight_when_the_outage_began_does_not_hold_the_breaker_closed() -> None:
    clock = FakeClock()
    settings = BreakerSettings(min_calls=50, cooldown=5.0, consecutive=3, down_failures=None)
    breakers = Breakers(settings, LocalBreakerStore(), clock=clock)
    llm = LLMService(
        config=CONFIG, breakers=breakers, tracker=NullTracker(), target=Target("primary")
    )
    request = LLMRequest(model="m", provider="p", messages=QUESTION)
    sent: list[str] = []

    async def fb() -> str:
        return "from fallback"

    other = Fallback(Target("fb"), LLMRequest(model="fb", provider="p", messages=QUESTION), fb)

    async def scenario() -> None:
        release = asyncio.Event()

        async def slow_ok() -> str:  # sent before the outage, answers after two failures
            sent.append("slow")
            await release.wait()
            return "late answer"

        async def down() -> str:
            sent.append("down")
            raise ProviderError("unavailable", status_code=503)

        in_flight = asyncio.ensure_future(
            llm.agenerate(request, slow_ok, Codec(), fallbacks=[other])
        )
        await asyncio.sleep(0)
        clock.advance(0.01)
        for _ in range(2):
            assert await llm.agenerate(request, down, Codec(), fallbacks=[other]) == (
                "from fallback"
            )
            clock.advance(0.01)
        release.set()
        assert await in_flight == "late answer"  # a success, but older than the failures
        assert breakers.peek("primary")[0] == "closed"
        await llm.agenerate(request, down, Codec(), fallbacks=[other])  # third in a row
        assert breakers.peek("primary")[0] == "open"
        assert await llm.agenerate(request, down, Codec(), fallbacks=[other]) == ("from fallback")

    asyncio.run(scenario())
    assert sent == ["slow", "down", "down", "down"]  # the open breaker kept the 4th call away
