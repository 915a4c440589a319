"""wrap_llm(inner, fallbacks=[...]) over the real LlamaIndex OpenAI and a simulator outage."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from llama_index.core.llms import ChatMessage
from llama_index.llms.openai import OpenAI
from rag_perf_plugins.llama_index import pooled_openai_llm, wrap_llm
from rag_perf_plugins.llama_index.llms import FALLBACK_TARGET

from rag_perf_plugins._clock import FakeClock
from rag_perf_plugins.config import PerformanceConfig
from rag_perf_plugins.resilience import Breakers, BreakerSettings, LocalBreakerStore
from rag_perf_plugins.simulator import Simulator
from rag_perf_plugins.simulator.testing import SimulatorFactory

PRIMARY, FALLBACK = "gpt-4o-mini", "gpt-4o"
CONFIG = PerformanceConfig(
    enable_caching=False,
    enable_metrics=False,
    breaker_min_calls=4,
    breaker_cooldown=2.0,
    retry_initial_backoff=0.0,
)
MESSAGES = [ChatMessage(role="user", content="Tell me about tide pools.")]


def openai(sim: Simulator, model: str = PRIMARY) -> OpenAI:
    key = f"sk-test-{uuid.uuid4().hex[:8]}"  # a gate of its own (gates are per key)
    return pooled_openai_llm(api_base=sim.base_url, api_key=key, model=model, config=CONFIG)


def wrapped(sim: Simulator, clock: FakeClock) -> Any:
    settings = BreakerSettings.from_config(CONFIG)
    breakers = Breakers(settings, LocalBreakerStore(), clock=clock, rand=lambda: 0.0)
    return wrap_llm(openai(sim), CONFIG, fallbacks=[openai(sim, FALLBACK)], breakers=breakers)


def by_model(sim: Simulator) -> dict[str, int]:
    counts: dict[str, int] = sim.stats()["requests_by_model"]
    return counts


def test_primary_down_for_10_s_every_chat_succeeds_and_traffic_returns(
    simulator_factory: SimulatorFactory,
) -> None:
    clock = FakeClock(start=50.0)
    sim = simulator_factory(clock=clock)
    sim.add_outage(model=PRIMARY, duration_s=10.0)
    llm = wrapped(sim, clock)
    targets = []
    for i in range(80):
        response = llm.chat([ChatMessage(role="user", content=f"question {i}")])
        assert response.message.content
        targets.append(response.additional_kwargs.get(FALLBACK_TARGET))
        clock.advance(0.25)
    # The first 503 opens the breaker; probes at 2 s and 6 s (cool-downs 2, 4, 8 s).
    assert sim.stats()["faults_by_kind"]["outage"] == 3
    assert all(t is not None for t in targets[:40])  # the outage's calls: the fallback's
    assert all(t is None for t in targets[56:])  # the probe 14 s in finds it back


@pytest.mark.parametrize("call", ["chat", "achat", "complete", "stream_chat", "astream_chat"])
async def test_every_call_falls_back_and_answers_as_the_fallback_model(
    simulator_factory: SimulatorFactory, call: str
) -> None:
    clock = FakeClock()
    sim = simulator_factory(clock=clock)
    sim.add_outage(model=PRIMARY, duration_s=100.0)
    llm, plain = wrapped(sim, clock), openai(sim, FALLBACK)
    if call == "chat":
        got, want = llm.chat(MESSAGES), plain.chat(MESSAGES)
        text, expected = got.message.content, want.message.content
    elif call == "achat":
        got, want = await llm.achat(MESSAGES), await plain.achat(MESSAGES)
        text, expected = got.message.content, want.message.content
    elif call == "complete":
        got, want = llm.complete("Tide pools?"), plain.complete("Tide pools?")
        text, expected = got.text, want.text
    elif call == "stream_chat":
        chunks = list(llm.stream_chat(MESSAGES))
        got, text = chunks[-1], chunks[-1].message.content
        expected = list(plain.stream_chat(MESSAGES))[-1].message.content
    else:
        chunks = [c async for c in await llm.astream_chat(MESSAGES)]
        got, text = chunks[-1], chunks[-1].message.content
        expected = [c async for c in await plain.astream_chat(MESSAGES)][-1].message.content
    assert text == expected
    assert got.additional_kwargs[FALLBACK_TARGET].startswith("llama_index/openai_llm/gpt-4o/")
