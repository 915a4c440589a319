"""LLMService's chain without a framework: one retry budget and deadline, what fails over."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import pytest

from rag_perf_plugins._clock import FakeClock
from rag_perf_plugins.admission import AdmissionGate, RetryPolicy
from rag_perf_plugins.admission.spend import LocalSpendStore
from rag_perf_plugins.config import PerformanceConfig
from rag_perf_plugins.errors import ProviderError, ProviderUnavailable, RagPerfError
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


# --- after the gate, probes, every target failing, the dollars of a fallback's stream ------
def _down_breakers(config: PerformanceConfig, clock: FakeClock | None = None) -> Breakers:
    settings = BreakerSettings.from_config(config)
    return Breakers(settings, LocalBreakerStore(), clock=clock or FakeClock(), rand=lambda: 0.0)


def test_a_caller_waiting_at_the_gate_when_the_breaker_opens_fails_over_unsent() -> None:
    config = CONFIG.replace(max_concurrent_requests=1, breaker_down_failures=1)
    gate = AdmissionGate(config, key="p/m/k-gate", tracker=NullTracker())
    breakers = _down_breakers(config)
    llm = LLMService(
        config=config,
        gate=gate,
        breakers=breakers,
        tracker=NullTracker(),
        target=Target("primary", gate=gate),
    )
    sent: list[str] = []

    async def fb() -> str:
        sent.append("fallback")
        return "from fallback"

    other = Fallback(Target("fb"), LLMRequest(model="fb", provider="p", messages=QUESTION), fb)

    async def scenario() -> None:
        release = asyncio.Event()

        async def primary() -> str:
            sent.append("primary")
            await release.wait()
            raise ProviderError("unavailable", status_code=503)

        def ask(n: int) -> asyncio.Future[str]:
            request = LLMRequest(
                model="m", provider="p", messages=[{"role": "user", "content": f"q{n}"}]
            )
            return asyncio.ensure_future(
                llm.agenerate(request, primary, Codec(), fallbacks=[other])
            )

        first = ask(1)
        await asyncio.sleep(0.01)  # the first holds the gate's only slot
        second = ask(2)
        await asyncio.sleep(0.02)  # the second waits at the gate
        release.set()  # the first gets its 503: the breaker opens
        assert await first == "from fallback"
        assert await second == "from fallback"

    asyncio.run(scenario())
    # The second caller was admitted by the gate after the breaker opened: it asked the
    # breaker again and went to the fallback without sending to the dead primary.
    assert sent == ["primary", "fallback", "fallback"]
    assert breakers.stats()["primary"]["failovers"] == {"server_error": 1, "open": 1}
    assert llm.provider_calls == 3  # the first's primary and fallback, the second's fallback
    assert gate.stats()["in_flight"] == 0


def test_a_thread_waiting_at_the_gate_when_the_breaker_opens_fails_over_unsent() -> None:
    config = CONFIG.replace(max_concurrent_requests=1, breaker_down_failures=1)
    gate = AdmissionGate(config, key="p/m/k-gate-sync", tracker=NullTracker())
    breakers = _down_breakers(config)
    llm = LLMService(
        config=config,
        gate=gate,
        breakers=breakers,
        tracker=NullTracker(),
        target=Target("primary", gate=gate),
    )
    sent: list[str] = []
    holding, release = threading.Event(), threading.Event()

    def primary() -> str:
        sent.append("primary")
        holding.set()
        release.wait(5.0)
        raise ProviderError("unavailable", status_code=503)

    def fb() -> str:
        sent.append("fallback")
        return "from fallback"

    other = Fallback(Target("fb"), LLMRequest(model="fb", provider="p", messages=QUESTION), fb)
    answers: list[str] = []

    def ask(n: int) -> None:
        request = LLMRequest(
            model="m", provider="p", messages=[{"role": "user", "content": f"q{n}"}]
        )
        answers.append(llm.generate(request, primary, Codec(), fallbacks=[other]))

    first = threading.Thread(target=ask, args=(1,))
    first.start()
    assert holding.wait(5.0)  # the first holds the gate's only slot
    second = threading.Thread(target=ask, args=(2,))
    second.start()
    time.sleep(0.05)  # the second waits at the gate
    release.set()  # the 503: the breaker opens before the slot is handed over
    first.join(5.0)
    second.join(5.0)
    assert answers == ["from fallback", "from fallback"]
    assert sent == ["primary", "fallback", "fallback"]
    assert breakers.stats()["primary"]["failovers"] == {"server_error": 1, "open": 1}


@pytest.mark.parametrize("asynchronous", [False, True])
def test_a_hanging_probe_is_bounded_and_the_call_fails_over(asynchronous: bool) -> None:
    config = CONFIG.replace(breaker_down_failures=1, breaker_probe_timeout=0.05)
    clock = FakeClock()
    breakers = _down_breakers(config, clock)
    llm = LLMService(config=config, breakers=breakers, tracker=NullTracker(), target=Target("p"))
    request = LLMRequest(model="m", provider="p", messages=QUESTION)
    unblock = threading.Event()
    calls: list[str] = []

    def hang() -> str:
        calls.append("primary")
        if len(calls) == 1:
            raise ProviderError("unavailable", status_code=503)
        unblock.wait(5.0)  # a target that accepts the request and never answers
        return "late primary"

    async def ahang() -> str:
        calls.append("primary")
        if len(calls) == 1:
            raise ProviderError("unavailable", status_code=503)
        await asyncio.sleep(5.0)
        return "late primary"

    def fb_sync() -> str:
        return "from fallback"

    async def fb_async() -> str:
        return "from fallback"

    fb_request = LLMRequest(model="fb", provider="p", messages=QUESTION)
    try:
        for _ in range(2):
            started = time.monotonic()
            if asynchronous:
                other = Fallback(Target("fb"), fb_request, fb_async)
                answer = asyncio.run(llm.agenerate(request, ahang, Codec(), fallbacks=[other]))
            else:
                other = Fallback(Target("fb"), fb_request, fb_sync)
                answer = llm.generate(request, hang, Codec(), fallbacks=[other])
            assert answer == "from fallback"
            assert time.monotonic() - started < 2.0  # never the hanging target's 5 s
            clock.advance(config.breaker_cooldown)  # the next call is the probe
    finally:
        unblock.set()
    assert calls == ["primary", "primary"]  # the 503, then the probe (bounded at 0.05 s)
    stats = breakers.stats()["p"]
    assert stats["failovers"] == {"server_error": 1, "timeout": 1}
    assert stats["transitions"] == {"opened": 1, "half_open": 1, "reopened": 1}
    state, retry_in = breakers.peek("p")
    assert (state, retry_in) == ("open", 5.0)  # grown to 10 s, 5 s ago


@pytest.mark.parametrize("stream", [False, True])
def test_every_target_failing_raises_provider_unavailable_still_the_provider_error(
    stream: bool,
) -> None:
    llm = service()
    request = LLMRequest(model="m", provider="p", messages=QUESTION)
    last = ProviderError("bad gateway", status_code=502)

    def primary() -> Any:
        raise ProviderError("internal error", status_code=500)

    def fb() -> Any:
        raise last

    other = Fallback(Target("fb"), LLMRequest(model="fb", provider="p", messages=QUESTION), fb)
    with pytest.raises(ProviderUnavailable) as caught:
        if stream:
            list(llm.stream(request, primary, ChunkText(), fallbacks=[other]))
        else:
            llm.generate(request, primary, Codec(), fallbacks=[other])
    error = caught.value
    # Still the last provider's error for code that catches it, chained from it.
    assert isinstance(error, ProviderError)
    assert error.status_code == 502
    assert error.__cause__ is last
    primary_name = llm._primary_target(request).name
    assert str(error) == (
        f"no provider can take the call: {primary_name} closed (failed: ProviderError: "
        "internal error); fb closed (failed: ProviderError: bad gateway) (every target failed)"
    )
    assert set(error.errors) == {primary_name, "fb"}


class ChunkText:
    """Chunks are strings; every answer reports 1,000 tokens in and 500 out."""

    def encode(self, chunk: str) -> str:
        return chunk

    def decode(self, data: str) -> str:
        return data

    def usage(self, chunks: Sequence[str]) -> Usage | None:
        return Usage(tokens_in=1_000, tokens_out=500)


@pytest.mark.parametrize("asynchronous", [False, True])
def test_a_streamed_fallback_answer_reconciles_the_fallbacks_dollar_budget(
    asynchronous: bool,
) -> None:
    # The primary's gate has no dollar budget, the fallback's has one: the fallback's
    # reservation (its estimate) must become the fallback model's actual cost.
    spend = LocalSpendStore()
    plain = CONFIG.replace(breaker_enabled=True)
    budgeted = plain.replace(budget_usd_per_minute=5.0, budget_scopes="key")
    primary_gate = AdmissionGate(plain, key="openai/gpt-4o-mini/k-1", tracker=NullTracker())
    fallback_gate = AdmissionGate(
        budgeted, key="openai/gpt-4o/k-2", tracker=NullTracker(), spend_store=spend
    )
    llm = LLMService(
        config=plain,
        gate=primary_gate,
        breakers=_down_breakers(plain),
        tracker=NullTracker(),
        target=Target("primary", gate=primary_gate),
    )
    question = [{"role": "user", "content": "What is RAG?"}]
    request = LLMRequest(model="gpt-4o-mini", provider="p", messages=question)
    fb_request = LLMRequest(
        model="gpt-4o", provider="p", messages=question, params={"max_tokens": 2_000}
    )

    def down() -> Iterator[str]:
        raise ProviderError("unavailable", status_code=503)

    def fb() -> Iterator[str]:
        yield from ("Retrieval", "-augmented", " generation")

    async def adown() -> AsyncIterator[str]:
        raise ProviderError("unavailable", status_code=503)
        yield ""  # an async generator

    async def afb() -> AsyncIterator[str]:
        for chunk in ("Retrieval", "-augmented", " generation"):
            yield chunk

    told: list[str] = []
    if asynchronous:

        async def run() -> list[str]:
            other = Fallback(Target("fb", gate=fallback_gate), fb_request, afb)
            chunks = llm.astream(
                request, adown, ChunkText(), fallbacks=[other], on_target=told.append
            )
            return [c async for c in chunks]

        text = asyncio.run(run())
    else:
        other = Fallback(Target("fb", gate=fallback_gate), fb_request, fb)
        text = list(
            llm.stream(request, down, ChunkText(), fallbacks=[other], on_target=told.append)
        )
    assert "".join(text) == "Retrieval-augmented generation"
    assert told == ["fb"]
    # gpt-4o: $2.50 per million in, $10 per million out: 1,000 in + 500 out = $0.0075.
    # (The estimate reserved before the call was 2,000 output tokens: over $0.02.)
    spent = spend.spent("key:openai/gpt-4o/k-2|minute", window_s=60, now=time.time())
    assert spent == 7_500  # micro-dollars
