"""PerfChatModel(fallbacks=...) over the real ChatOpenAI and the simulator with outages.

The simulator and the breakers share one ``FakeClock``: the outage lasts 10 simulated
seconds and the test moves the clock a quarter second per call, so the counts are exact
and nothing sleeps.
"""

from __future__ import annotations

import asyncio
import json
import pickle
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from langchain_core.messages import AIMessageChunk
from langchain_openai import ChatOpenAI
from rag_perf_plugins.langchain import PerfChatModel, pooled_chat_openai
from rag_perf_plugins.langchain.chat_models import FALLBACK_TARGET

from rag_perf_plugins._clock import FakeClock
from rag_perf_plugins.config import PerformanceConfig
from rag_perf_plugins.errors import ProviderUnavailable
from rag_perf_plugins.resilience import Breakers, BreakerSettings, LocalBreakerStore
from rag_perf_plugins.simulator import Simulator
from rag_perf_plugins.simulator.testing import SimulatorFactory

PRIMARY, FALLBACK = "gpt-4o-mini", "gpt-4o"
CONFIG = PerformanceConfig(
    enable_caching=False,
    breaker_min_calls=4,
    breaker_failure_ratio=0.5,
    breaker_cooldown=2.0,
    breaker_probes=1,
    retry_initial_backoff=0.0,
)


def openai(sim: Simulator, model: str = PRIMARY, **options: Any) -> ChatOpenAI:
    # A fresh key per model: gates are process-wide per (provider, model, key), and a pause
    # left by another test's Retry-After must not reach this one.
    key = options.pop("api_key", f"sk-test-{uuid.uuid4().hex[:8]}")
    return pooled_chat_openai(
        base_url=sim.base_url, model=model, api_key=key, temperature=0.0, **options
    )


def by_model(sim: Simulator) -> dict[str, int]:
    counts: dict[str, int] = sim.stats()["requests_by_model"]
    return counts


def chain(sim: Simulator, clock: FakeClock, config: PerformanceConfig = CONFIG) -> PerfChatModel:
    # No jitter draw (rand 0): cool-downs are exact, the counts below too.
    settings = BreakerSettings.from_config(config)
    breakers = Breakers(settings, LocalBreakerStore(), clock=clock, rand=lambda: 0.0)
    return PerfChatModel(openai(sim), config, fallbacks=[openai(sim, FALLBACK)], breakers=breakers)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(start=1000.0)


def test_primary_down_for_10_s_every_call_succeeds_and_traffic_returns(
    simulator_factory: SimulatorFactory, clock: FakeClock
) -> None:
    sim = simulator_factory(clock=clock)
    sim.add_outage(model=PRIMARY, duration_s=10.0)
    llm = chain(sim, clock)
    answered: list[str | None] = []
    primary_during_outage = 0
    for i in range(80):  # 20 simulated seconds, a call every 0.25 s
        before = by_model(sim).get(PRIMARY, 0)
        message = llm.invoke(f"question {i}")
        assert message.content  # every call succeeds
        answered.append(message.response_metadata.get(FALLBACK_TARGET))
        if sim.elapsed() < 10.0:
            primary_during_outage += by_model(sim).get(PRIMARY, 0) - before
        clock.advance(0.25)
    # While the primary is down it gets the first 503 (breaker_down_failures=1), then one
    # probe per cool-down, each cool-down twice the last: probes at 2 s and 6 s (the next
    # is due at 14 s, after the outage). Three requests in all.
    assert primary_during_outage == 3
    assert sim.stats()["faults_by_kind"]["outage"] == primary_during_outage
    assert all(t is not None for t in answered[:40])  # the outage: the fallback answers
    # Back to the primary at the probe due 14 s in: 4 s after the recovery (the price of
    # the growing cool-down), and the primary answers everything from then on.
    back = next(i for i, t in enumerate(answered) if i >= 40 and t is None)
    assert back * 0.25 == 14.0
    assert all(t is None for t in answered[back:])
    stats = llm.service.breakers().stats()
    primary = next(name for name in stats if "gpt-4o-mini" in name)
    assert stats[primary]["state"] == "closed"
    assert stats[primary]["transitions"]["opened"] == 1
    assert stats[primary]["transitions"]["reopened"] >= 1  # failed probes
    assert stats[primary]["transitions"]["closed"] == 1
    assert stats[primary]["failovers"]["open"] > 0
    assert stats[primary]["failovers"]["server_error"] > 0


def test_a_fallback_answers_as_the_unwrapped_fallback_model(
    simulator_factory: SimulatorFactory, clock: FakeClock
) -> None:
    sim = simulator_factory(clock=clock)
    sim.add_outage(model=PRIMARY, duration_s=100.0)
    llm = chain(sim, clock)
    for question in ("What is RAG?", "Why cache embeddings?"):
        wrapped = llm.invoke(question)
        plain = openai(sim, FALLBACK).invoke(question)
        assert wrapped.content == plain.content
        assert wrapped.response_metadata[FALLBACK_TARGET].startswith("openai/gpt-4o/")
        assert wrapped.response_metadata["model_name"] == plain.response_metadata["model_name"]


def test_a_primary_answer_carries_no_fallback_mark(
    simulator_factory: SimulatorFactory, clock: FakeClock
) -> None:
    sim = simulator_factory(clock=clock)
    llm = chain(sim, clock)
    wrapped = llm.invoke("What is RAG?")
    plain = openai(sim).invoke("What is RAG?")
    assert FALLBACK_TARGET not in wrapped.response_metadata
    assert wrapped.content == plain.content
    assert by_model(sim) == {PRIMARY: 2}


async def test_async_calls_fail_over_too(
    simulator_factory: SimulatorFactory, clock: FakeClock
) -> None:
    sim = simulator_factory(clock=clock)
    sim.add_outage(model=PRIMARY, duration_s=100.0)
    llm = chain(sim, clock)
    answers = await asyncio.gather(*(llm.ainvoke(f"q{i}") for i in range(8)))
    assert all(a.response_metadata.get(FALLBACK_TARGET) for a in answers)
    assert by_model(sim)[FALLBACK] == 8


def test_a_stream_falls_back_before_its_first_chunk(
    simulator_factory: SimulatorFactory, clock: FakeClock
) -> None:
    sim = simulator_factory(clock=clock)
    sim.add_outage(model=PRIMARY, duration_s=100.0)
    llm = chain(sim, clock)
    chunks = list(llm.stream("What is RAG?"))
    text = "".join(str(c.content) for c in chunks)
    assert text == "".join(str(c.content) for c in openai(sim, FALLBACK).stream("What is RAG?"))
    # Every chunk we pass on is marked (LangChain appends an empty closing chunk of its own).
    ours = [c for c in chunks if getattr(c, "chunk_position", None) != "last"]
    assert ours
    assert all(c.response_metadata.get(FALLBACK_TARGET) for c in ours)


def test_a_mid_stream_failure_is_not_retried_on_another_model(
    simulator_factory: SimulatorFactory, clock: FakeClock
) -> None:
    broken = simulator_factory(truncate_rate=1.0, latency_per_token_ms=0.0)
    healthy = simulator_factory()
    config = CONFIG
    breakers = Breakers(BreakerSettings.from_config(config), LocalBreakerStore(), clock=clock)
    llm = PerfChatModel(
        openai(broken), config, fallbacks=[openai(healthy, FALLBACK)], breakers=breakers
    )
    received: list[AIMessageChunk] = []
    with pytest.raises(Exception) as caught:
        for chunk in llm.stream("Tell me about retrieval-augmented generation in detail."):
            received.append(chunk)
    assert received  # the first chunks reached the caller...
    assert not isinstance(caught.value, ProviderUnavailable)
    assert healthy.stats()["requests_total"] == 0  # ...so no other model was asked
    # ...but the primary's breaker heard it: a dropped connection means "down".
    stats = breakers.stats()
    primary = next(name for name in stats if "gpt-4o-mini" in name)
    assert stats[primary]["state"] == "open"
    assert stats[primary]["transitions"] == {"opened": 1}
    assert broken.stats()["requests_total"] == 1
    # The next call goes to the fallback at once.
    again = llm.invoke("q")
    assert again.response_metadata[FALLBACK_TARGET]
    assert broken.stats()["requests_total"] == 1


def test_all_targets_down_respects_the_deadline_and_names_them(
    simulator_factory: SimulatorFactory, clock: FakeClock
) -> None:
    sim = simulator_factory(clock=clock)
    sim.add_outage(duration_s=1000.0)  # every model
    config = CONFIG.replace(breaker_min_calls=2, breaker_cooldown=30.0, request_deadline=5.0)
    llm = chain(sim, clock, config)
    for _ in range(2):  # trip both breakers
        with pytest.raises(Exception):  # noqa: B017 - the provider's 503
            llm.invoke("q")
    sent = sim.stats()["requests_total"]
    with pytest.raises(ProviderUnavailable) as caught:
        llm.invoke("q")
    assert sim.stats()["requests_total"] == sent  # refused without a request
    message = str(caught.value)
    assert "openai/gpt-4o-mini/" in message
    assert "openai/gpt-4o/" in message
    assert message.count("open (retry in 30.0 s)") == 2
    assert caught.value.retry_in == pytest.approx(30.0)


def test_a_429_fails_over_at_once_without_waiting_for_retry_after(
    simulator_factory: SimulatorFactory, clock: FakeClock
) -> None:
    sim = simulator_factory(clock=clock)
    sim.add_outage(model=PRIMARY, duration_s=100.0, status=429, retry_after_s=30.0)
    llm = chain(sim, clock, CONFIG.replace(request_deadline=10.0))
    first = llm.invoke("q1")
    assert first.response_metadata[FALLBACK_TARGET]
    # The primary's gate is paused for 30 s by the Retry-After: the next call skips it at
    # once instead of waiting (a longer wait than the deadline is never waited).
    before = by_model(sim)[PRIMARY]
    second = llm.invoke("q2")
    assert second.response_metadata[FALLBACK_TARGET]
    assert by_model(sim)[PRIMARY] == before
    stats = llm.service.breakers().stats()
    primary = next(name for name in stats if "gpt-4o-mini" in name)
    assert stats[primary]["failovers"]["rate_limited"] == 1
    assert stats[primary]["failovers"]["paused"] >= 1


def test_a_client_error_is_not_failed_over(
    simulator_factory: SimulatorFactory, clock: FakeClock
) -> None:
    sim = simulator_factory(clock=clock)
    llm = chain(sim, clock)
    with pytest.raises(Exception) as caught:
        llm.invoke("q", max_tokens=-5)
    assert getattr(caught.value, "status_code", None) == 400
    assert by_model(sim) == {PRIMARY: 1}


def test_cache_fallback_answers(simulator_factory: SimulatorFactory, clock: FakeClock) -> None:
    sim = simulator_factory(clock=clock)
    sim.add_outage(model=PRIMARY, duration_s=5.0)
    for allowed in (False, True):
        config = CONFIG.replace(
            enable_caching=True, cache_fallback_answers=allowed, cache_disk_enabled=False
        )
        llm = chain(sim, clock, config)
        question = f"cached? {allowed}"
        assert llm.invoke(question).response_metadata[FALLBACK_TARGET]
        clock.advance(10.0)  # the primary is back
        again = llm.invoke(question)
        if allowed:  # the fallback's answer, from the cache, still marked
            assert again.response_metadata["cache_hit"] is True
            assert again.response_metadata[FALLBACK_TARGET]
        else:  # the primary answers for itself
            assert FALLBACK_TARGET not in again.response_metadata
            assert again.response_metadata.get("cache_hit") is None
        sim.add_outage(model=PRIMARY, duration_s=5.0)  # down again for the next round


def test_statistics_in_prometheus_and_the_span_of_a_fallback_answer(
    simulator_factory: SimulatorFactory, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from rag_perf_plugins.metrics import to_prometheus
    from rag_perf_plugins.tracking import PerformanceTracker, spans

    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("test")
    monkeypatch.setattr(spans, "tracer", lambda: tracer)
    sim = simulator_factory(clock=clock)
    sim.add_outage(model=PRIMARY, duration_s=100.0)
    llm = chain(sim, clock)
    for i in range(6):
        llm.invoke(f"q{i}")
    finished = memory.get_finished_spans()
    assert len(finished) == 6
    for span in finished:
        assert span.attributes is not None
        assert str(span.attributes["rag_perf.fallback.target"]).startswith("openai/gpt-4o/")
    text = to_prometheus(PerformanceTracker())
    primary = next(n for n in llm.service.breakers().stats() if "gpt-4o-mini" in n)
    assert f'rag_perf_breaker_state{{target="{primary}"}} 2.0' in text
    assert f'rag_perf_breaker_transitions_total{{target="{primary}",to="opened"}} 1.0' in text
    assert f'rag_perf_failovers_total{{reason="open",target="{primary}"}} 5.0' in text
    assert f'rag_perf_target_calls_total{{target="{primary}"}} 1.0' in text  # then open
    provider.shutdown()


# --- embeddings: only the same model and dimensions ----------------------------------------
def embeddings(sim: Simulator, **options: Any) -> Any:
    from rag_perf_plugins.langchain import pooled_openai_embeddings

    params: dict[str, Any] = {
        "model": "text-embedding-3-small",
        "api_key": f"sk-{uuid.uuid4().hex[:8]}",
    }
    params.update(options)
    return pooled_openai_embeddings(
        base_url=sim.base_url, check_embedding_ctx_length=False, **params
    )


def test_an_embedding_fallback_of_another_model_or_size_is_refused(
    simulator_factory: SimulatorFactory,
) -> None:
    from rag_perf_plugins.langchain import PerfEmbeddings

    sim = simulator_factory()
    with pytest.raises(ValueError, match="must use the primary's model 'text-embedding-3-small'"):
        PerfEmbeddings(
            embeddings(sim), CONFIG, fallbacks=[embeddings(sim, model="text-embedding-3-large")]
        )
    with pytest.raises(ValueError, match="dimensions 256"):
        PerfEmbeddings(embeddings(sim), CONFIG, fallbacks=[embeddings(sim, dimensions=256)])


@pytest.mark.parametrize("asynchronous", [False, True])
async def test_an_embedding_fallback_gives_the_same_vectors(
    simulator_factory: SimulatorFactory, clock: FakeClock, asynchronous: bool
) -> None:
    from rag_perf_plugins.langchain import PerfEmbeddings

    down, other_region = simulator_factory(clock=clock), simulator_factory()
    down.add_outage(duration_s=100.0)
    breakers = Breakers(BreakerSettings.from_config(CONFIG), LocalBreakerStore(), clock=clock)
    wrapped = PerfEmbeddings(
        embeddings(down), CONFIG, fallbacks=[embeddings(other_region)], breakers=breakers
    )
    texts = [f"passage {i}" for i in range(12)]
    if asynchronous:
        got = await wrapped.aembed_documents(texts)
        query = await wrapped.aembed_query("tide pools")
    else:
        got = wrapped.embed_documents(texts)
        query = wrapped.embed_query("tide pools")
    plain = embeddings(other_region)
    assert got == [list(v) for v in np.asarray(plain.embed_documents(texts), dtype=np.float32)]
    assert query == list(np.asarray(plain.embed_query("tide pools"), dtype=np.float32))
    assert down.stats()["faults_by_kind"]["outage"] >= 1


@pytest.mark.parametrize("asynchronous", [False, True])
async def test_every_embedding_target_failing_raises_provider_unavailable_still_the_sdk_error(
    simulator_factory: SimulatorFactory, clock: FakeClock, asynchronous: bool
) -> None:
    import openai as sdk
    from rag_perf_plugins.langchain import PerfEmbeddings

    down, other_region = simulator_factory(clock=clock), simulator_factory(clock=clock)
    down.add_outage(duration_s=100.0)
    other_region.add_outage(duration_s=100.0)
    breakers = Breakers(BreakerSettings.from_config(CONFIG), LocalBreakerStore(), clock=clock)
    config = CONFIG.replace(retry_max_attempts=1)
    wrapped = PerfEmbeddings(
        embeddings(down), config, fallbacks=[embeddings(other_region)], breakers=breakers
    )
    with pytest.raises(ProviderUnavailable) as caught:
        if asynchronous:
            await wrapped.aembed_documents(["tide pools"])
        else:
            wrapped.embed_documents(["tide pools"])
    error = caught.value
    assert isinstance(error, sdk.InternalServerError)  # what code without us catches
    assert error.status_code == 503
    assert isinstance(error.__cause__, sdk.InternalServerError)
    message = str(error)
    assert message.startswith("no provider can take the call: ")
    assert message.count(" open (failed: InternalServerError: ") == 2  # each 503 opened it
    assert message.endswith("(every target failed)")


# --- embeddings: a probe that hangs is bounded by breaker_probe_timeout --------------------
class Hang:
    """A simulator ``sleep`` that, once ``on``, holds every answer until ``release()``.

    ``hold_s`` (real seconds) ends a hold anyway, so an unbounded probe gets its answer
    late instead of never: the tests then see the primary answer, and fail, not hang.
    """

    def __init__(self, hold_s: float) -> None:
        self.on = False
        self.hold_s = hold_s
        self.held = 0  # answers held so far
        self._released = threading.Event()

    def release(self) -> None:
        self._released.set()

    async def sleep(self, seconds: float) -> None:
        if not self.on:
            await asyncio.sleep(seconds)
            return
        self.held += 1
        await asyncio.to_thread(self._released.wait, self.hold_s)


def embedding_chain(
    down: Simulator, other_region: Simulator, clock: FakeClock, probe_timeout: float
) -> tuple[Any, Breakers]:
    from rag_perf_plugins.langchain import PerfEmbeddings

    config = CONFIG.replace(breaker_probe_timeout=probe_timeout, retry_max_attempts=1)
    settings = BreakerSettings.from_config(config)
    breakers = Breakers(settings, LocalBreakerStore(), clock=clock, rand=lambda: 0.0)
    wrapped = PerfEmbeddings(
        embeddings(down), config, fallbacks=[embeddings(other_region)], breakers=breakers
    )
    return wrapped, breakers


async def embed(wrapped: Any, text: str, asynchronous: bool) -> list[float]:
    if asynchronous:
        vectors: list[list[float]] = await wrapped.aembed_documents([text])
    else:
        vectors = wrapped.embed_documents([text])
    return vectors[0]


def embedding_requests(sim: Simulator) -> int:
    return by_model(sim).get("text-embedding-3-small", 0)


@pytest.mark.parametrize("asynchronous", [False, True])
async def test_a_hanging_embedding_probe_is_abandoned_and_the_fallback_answers(
    simulator_factory: SimulatorFactory, clock: FakeClock, asynchronous: bool
) -> None:
    hang = Hang(hold_s=3.0)
    down = simulator_factory(clock=clock, sleep=hang.sleep, latency_ms=1.0)
    other_region = simulator_factory()
    down.add_outage(duration_s=1.0)  # a 503 first: the breaker opens
    wrapped, breakers = embedding_chain(down, other_region, clock, probe_timeout=0.2)
    plain = embeddings(other_region)
    try:
        first = await embed(wrapped, "tide pools", asynchronous)
        clock.advance(CONFIG.breaker_cooldown)  # the outage is over, the next call probes
        hang.on = True  # ...a primary that takes the request and does not answer
        second = await embed(wrapped, "kelp forests", asynchronous)
        third = await embed(wrapped, "sea otters", asynchronous)  # open again: fallback
    finally:
        hang.release()
    assert hang.held == 1
    assert embedding_requests(down) == 2  # the 503, then the probe (abandoned at 0.2 s)
    assert embedding_requests(other_region) == 3  # every call answered by the fallback
    for text, got in (("tide pools", first), ("kelp forests", second), ("sea otters", third)):
        assert got == list(np.asarray(plain.embed_query(text), dtype=np.float32))
    primary = next(iter(breakers.stats()))
    stats = breakers.stats()[primary]
    assert stats["failovers"] == {"server_error": 1, "timeout": 1, "open": 1}
    assert stats["transitions"] == {"opened": 1, "half_open": 1, "reopened": 1}
    assert breakers.peek(primary) == ("open", 2 * CONFIG.breaker_cooldown)  # grown, not closed


def wait_until(done: Any, seconds: float = 10.0) -> bool:
    """Poll ``done()`` for up to ``seconds`` (a bound on waiting, not a timing assertion)."""
    for _ in range(int(seconds / 0.01)):
        if done():
            return True
        threading.Event().wait(0.01)
    return bool(done())


@pytest.mark.parametrize("kind", ["chat", "embeddings"])
def test_one_abandoned_blocking_probe_per_target_the_next_is_not_sent(
    simulator_factory: SimulatorFactory, clock: FakeClock, kind: str
) -> None:
    from rag_perf_plugins.metrics import to_prometheus
    from rag_perf_plugins.tracking import PerformanceTracker

    hang = Hang(hold_s=30.0)
    down = simulator_factory(clock=clock, sleep=hang.sleep, latency_ms=1.0)
    other_region = simulator_factory()
    down.add_outage(duration_s=1.0)  # a 503 first: the breaker opens
    if kind == "chat":
        config = CONFIG.replace(breaker_probe_timeout=0.2, retry_max_attempts=1)
        settings = BreakerSettings.from_config(config)
        breakers = Breakers(settings, LocalBreakerStore(), clock=clock, rand=lambda: 0.0)
        llm = PerfChatModel(
            openai(down), config, fallbacks=[openai(other_region, FALLBACK)], breakers=breakers
        )

        def call(text: str) -> None:
            assert llm.invoke(text).content
    else:
        wrapped, breakers = embedding_chain(down, other_region, clock, probe_timeout=0.2)

        def call(text: str) -> None:
            assert len(wrapped.embed_documents([text])) == 1

    def sent(sim: Simulator) -> int:
        return sum(by_model(sim).values())

    cooldown = CONFIG.breaker_cooldown
    try:
        call("one")  # the 503: open for 2 s
        clock.advance(cooldown)
        hang.on = True
        call("two")  # the probe hangs: abandoned at 0.2 s, its thread still waits
        primary = next(iter(breakers.stats()))
        assert (sent(down), hang.held) == (2, 1)
        assert breakers.stats()[primary]["probes_late"] == 1
        clock.advance(2 * cooldown)  # open again for 4 s; now the next probe is due
        call("three")  # not sent: the abandoned probe still runs
        assert (sent(down), hang.held) == (2, 1)
        assert breakers.peek(primary) == ("open", 4 * cooldown)  # counted as a failed probe
    finally:
        hang.release()
    assert wait_until(lambda: breakers.stats()[primary]["probes_late"] == 0)
    hang.on = False
    clock.advance(4 * cooldown)
    call("four")  # the next probe goes, the primary answers: closed
    assert sent(down) == 3
    assert sent(other_region) == 3
    stats = breakers.stats()[primary]
    assert stats["failovers"] == {"server_error": 1, "timeout": 1, "probe_running": 1}
    assert stats["transitions"] == {"opened": 1, "half_open": 3, "reopened": 2, "closed": 1}
    assert (stats["probes_abandoned"], stats["probes_late"], stats["state"]) == (1, 0, "closed")
    text = to_prometheus(PerformanceTracker())
    assert f'rag_perf_breaker_probes_abandoned_total{{target="{primary}"}} 1.0' in text
    assert f'rag_perf_breaker_probes_late{{target="{primary}"}} 0.0' in text
    assert f'rag_perf_failovers_total{{reason="probe_running",target="{primary}"}} 1.0' in text


def sync_only_embeddings(sim: Simulator, http_client: Any) -> Any:
    """The real OpenAIEmbeddings without its async client: async calls run in a thread."""
    from langchain_core.embeddings import Embeddings
    from langchain_openai import OpenAIEmbeddings

    class SyncOnly(OpenAIEmbeddings):
        pass

    for name in ("aembed_documents", "aembed_query"):  # LangChain's defaults: no async client
        setattr(SyncOnly, name, getattr(Embeddings, name))
    params: dict[str, Any] = {
        "base_url": sim.base_url,
        "model": "text-embedding-3-small",
        "api_key": f"sk-{uuid.uuid4().hex[:8]}",
        "check_embedding_ctx_length": False,
        "max_retries": 0,  # the SDK does not retry the 503: the chain sees it
        "http_client": http_client,  # closed by the test
    }
    return SyncOnly(**params)


@pytest.fixture
def http_client() -> Iterator[Any]:
    import httpx

    with httpx.Client() as client:
        yield client


async def test_an_async_probe_thread_left_at_the_bound_is_counted_and_bounded(
    simulator_factory: SimulatorFactory, clock: FakeClock, http_client: Any
) -> None:
    from rag_perf_plugins.langchain import PerfEmbeddings

    hang = Hang(hold_s=30.0)
    down = simulator_factory(clock=clock, sleep=hang.sleep, latency_ms=1.0)
    other_region = simulator_factory()
    down.add_outage(duration_s=1.0)  # a 503 first: the breaker opens
    config = CONFIG.replace(breaker_probe_timeout=0.2, retry_max_attempts=1)
    settings = BreakerSettings.from_config(config)
    breakers = Breakers(settings, LocalBreakerStore(), clock=clock, rand=lambda: 0.0)
    inner = sync_only_embeddings(down, http_client)
    wrapped = PerfEmbeddings(inner, config, fallbacks=[embeddings(other_region)], breakers=breakers)

    async def call(text: str) -> None:
        assert len(await wrapped.aembed_documents([text])) == 1

    cooldown = CONFIG.breaker_cooldown
    try:
        await call("one")  # the 503: open for 2 s
        clock.advance(cooldown)
        hang.on = True
        await call("two")  # the probe's thread hangs: the probe is left at 0.2 s
        primary = next(iter(breakers.stats()))
        assert (embedding_requests(down), hang.held) == (2, 1)
        assert breakers.stats()[primary]["probes_late"] == 1  # its thread still waits
        clock.advance(2 * cooldown)  # open again for 4 s; now the next probe is due
        await call("three")  # not sent: the left thread still runs
        assert (embedding_requests(down), hang.held) == (2, 1)
        assert breakers.peek(primary) == ("open", 4 * cooldown)  # counted as a failed probe
    finally:
        hang.release()
    assert await asyncio.to_thread(
        wait_until, lambda: breakers.stats()[primary]["probes_late"] == 0
    )
    hang.on = False
    clock.advance(4 * cooldown)
    await call("four")  # the next probe goes, the primary answers: closed
    assert embedding_requests(down) == 3
    assert embedding_requests(other_region) == 3
    stats = breakers.stats()[primary]
    assert stats["failovers"] == {"server_error": 1, "timeout": 1, "probe_running": 1}
    assert (stats["probes_abandoned"], stats["probes_late"], stats["state"]) == (1, 0, "closed")


# --- a blocking probe left past its bound acts no more for its caller ----------------------
def late_probe_chain(
    down: Simulator, other_region: Simulator, clock: FakeClock, **options: Any
) -> tuple[PerfChatModel, Breakers, Any]:
    """A blocking chat chain whose probes are bounded at 0.2 s; ``options``: the primary's."""
    from rag_perf_plugins.tracking import PerformanceTracker

    config = CONFIG.replace(breaker_probe_timeout=0.2, retry_max_attempts=1)
    settings = BreakerSettings.from_config(config)
    breakers = Breakers(settings, LocalBreakerStore(), clock=clock, rand=lambda: 0.0)
    tracker = PerformanceTracker()
    fallbacks = [openai(other_region, FALLBACK, timeout=5.0)]
    llm = PerfChatModel(
        openai(down, **options), config, fallbacks=fallbacks, breakers=breakers, tracker=tracker
    )
    return llm, breakers, tracker


def test_a_late_probe_failure_is_not_taken_for_the_next_probe(
    simulator_factory: SimulatorFactory, clock: FakeClock
) -> None:
    hang = Hang(hold_s=30.0)
    down = simulator_factory(clock=clock, sleep=hang.sleep, latency_ms=1.0)
    other_region = simulator_factory()
    down.add_outage(duration_s=1.0)  # a 503 first: the breaker opens
    # The primary's own request timeout (2 s: after the next probe is admitted) ends the
    # abandoned probe with a failure.
    llm, breakers, _ = late_probe_chain(down, other_region, clock, timeout=2.0)
    cooldown = CONFIG.breaker_cooldown
    try:
        assert llm.invoke("one").content  # the 503: open for 2 s
        clock.advance(cooldown)
        hang.on = True
        assert llm.invoke("two").content  # the probe hangs: abandoned at 0.2 s, open for 4 s
        primary = next(iter(breakers.stats()))
        clock.advance(2 * cooldown)
        probe = breakers.admit(primary)  # another caller's probe is now in flight
        assert (probe.allowed, probe.probe) == (True, True)
        # The abandoned probe's request times out (a failure): it is not that probe's.
        assert wait_until(lambda: breakers.stats()[primary]["probes_late"] == 0)
    finally:
        hang.release()
    assert hang.held == 1
    assert breakers.peek(primary)[0] == "half_open"  # still waiting for the probe in flight
    breakers.record(primary, "success", probe=True, since=probe.at)
    stats = breakers.stats()[primary]
    assert stats["transitions"] == {"opened": 1, "half_open": 2, "reopened": 1, "closed": 1}
    assert (stats["probes_abandoned"], stats["state"]) == (1, "closed")


def test_a_late_probe_answer_is_never_the_calls(
    simulator_factory: SimulatorFactory, clock: FakeClock
) -> None:
    hang, held_fallback = Hang(hold_s=30.0), Hang(hold_s=30.0)
    down = simulator_factory(clock=clock, sleep=hang.sleep, latency_ms=1.0)
    other_region = simulator_factory(sleep=held_fallback.sleep, latency_ms=1.0)
    down.add_outage(duration_s=1.0)  # a 503 first: the breaker opens
    llm, breakers, tracker = late_probe_chain(down, other_region, clock)
    assert llm.invoke("one").content  # the 503, then the fallback answers
    first = tracker.get_metrics("llm.chat")
    assert (first["tokens_in"], first["tokens_out"]) == sim_tokens(other_region)
    clock.advance(CONFIG.breaker_cooldown)
    hang.on = held_fallback.on = True
    failed: list[BaseException] = []

    def ask() -> None:
        try:
            llm.invoke("two")
        except Exception as exc:
            failed.append(exc)

    asking = threading.Thread(target=ask)
    try:
        asking.start()  # the probe hangs; abandoned at 0.2 s, the call goes to the fallback
        assert wait_until(lambda: held_fallback.held == 1)  # ... which holds its answer
        hang.release()  # now the primary answers the abandoned probe, late
        primary = next(iter(breakers.stats()))
        assert wait_until(lambda: breakers.stats()[primary]["probes_late"] == 0)
    finally:
        hang.release()
        asking.join(10.0)  # the fallback's own 5 s timeout ends the call: it fails
        held_fallback.release()
    assert len(failed) == 1 and isinstance(failed[0], ProviderUnavailable)
    assert sim_tokens(down)[1] > 0  # the late answer came, with its tokens...
    second = tracker.get_metrics("llm.chat")
    assert (second["count"], second["errors"]) == (2, 1)
    # ...and the failed call did not record them as its own: no tokens, no cost.
    assert (second["tokens_in"], second["tokens_out"]) == (first["tokens_in"], first["tokens_out"])
    assert first["cost_usd"] > 0.0
    assert second["cost_usd"] == first["cost_usd"]
    stats = breakers.stats()[primary]
    assert stats["transitions"] == {"opened": 1, "half_open": 1, "reopened": 1}
    assert stats["failovers"] == {"server_error": 1, "timeout": 1}


def sim_tokens(sim: Simulator) -> tuple[int, int]:
    stats = sim.stats()
    return stats["prompt_tokens_total"], stats["completion_tokens_total"]


# --- ProviderUnavailable crosses process boundaries (pickle) ------------------------------
READ_PICKLE = """
import json, pickle, sys
import openai
from rag_perf_plugins.errors import ProviderUnavailable
error = pickle.loads(sys.stdin.buffer.read())
print(json.dumps({
    "message": str(error),
    "targets": error.targets,
    "retry_in": error.retry_in,
    "errors": error.errors,
    "unavailable": isinstance(error, ProviderUnavailable),
    "sdk_error": isinstance(error, openai.InternalServerError),
    "status_code": getattr(error, "status_code", None),
}))
"""


def read_in_another_process(blob: bytes) -> dict[str, Any]:
    """What a fresh interpreter (a process pool's worker, a Celery client) unpickles."""
    done = subprocess.run(
        [sys.executable, "-c", READ_PICKLE], input=blob, capture_output=True, check=True
    )
    found: dict[str, Any] = json.loads(done.stdout)
    return found


def same_error(error: ProviderUnavailable, read: dict[str, Any]) -> None:
    assert read["message"] == str(error)
    assert [tuple(t) for t in read["targets"]] == error.targets
    assert (read["retry_in"], read["errors"]) == (error.retry_in, error.errors)
    assert read["unavailable"]


def test_provider_unavailable_pickles_plain_and_mixed_with_the_sdk_error(
    simulator_factory: SimulatorFactory, clock: FakeClock
) -> None:
    import openai as sdk

    down, other_region = simulator_factory(clock=clock), simulator_factory(clock=clock)
    down.add_outage(duration_s=100.0)
    other_region.add_outage(duration_s=100.0)
    wrapped, _ = embedding_chain(down, other_region, clock, probe_timeout=30.0)
    with pytest.raises(ProviderUnavailable) as every_target_failed:
        wrapped.embed_documents(["tide pools"])
    with pytest.raises(ProviderUnavailable) as every_breaker_open:
        wrapped.embed_documents(["kelp forests"])
    mixed, plain = every_target_failed.value, every_breaker_open.value
    assert isinstance(mixed.__cause__, sdk.InternalServerError)  # the simulator's real 503
    assert isinstance(mixed, sdk.InternalServerError)
    assert not isinstance(plain, sdk.APIError)
    assert mixed.errors and not plain.errors  # failures named, then open states

    for error in (mixed, plain):
        back = pickle.loads(pickle.dumps(error))
        assert type(back) is type(error)
        assert (str(back), back.targets, back.retry_in) == (
            str(error),
            error.targets,
            error.retry_in,
        )
        assert back.errors == error.errors
        same_error(error, read_in_another_process(pickle.dumps(error)))
    back = pickle.loads(pickle.dumps(mixed))
    assert isinstance(back, sdk.InternalServerError)
    assert (back.status_code, back.body) == (503, mixed.body)
    assert back.response.status_code == 503
    read = read_in_another_process(pickle.dumps(mixed))
    assert (read["sdk_error"], read["status_code"]) == (True, 503)
    read = read_in_another_process(pickle.dumps(plain))
    assert (read["sdk_error"], read["status_code"]) == (False, None)
