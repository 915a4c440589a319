"""wrap_llm over LlamaIndex's real Anthropic and AzureOpenAI, PerfEmbedding over Azure.

Against the simulator's Anthropic and Azure routes: the same answers and request bodies
wrapped and unwrapped, no request when warm, streams replayed, the fields that change an
answer in the key, Anthropic's usage (prompt-cache tokens included) counted, and a 529/429
storm absorbed by the retry policy.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from llama_index.core.llms import ChatMessage
from rag_perf_plugins.llama_index import (
    PerfEmbedding,
    pooled_anthropic_llm,
    pooled_azure_openai_embedding,
    pooled_azure_openai_llm,
    wrap_llm,
)

from rag_perf_plugins.cache import set_cache_manager
from rag_perf_plugins.config import PerformanceConfig
from rag_perf_plugins.cost import price_table
from rag_perf_plugins.pool.http import close_http_clients
from rag_perf_plugins.simulator import Simulator
from rag_perf_plugins.simulator.testing import SimulatorFactory
from rag_perf_plugins.tracking import PerformanceTracker
from tests.integrations.provider_sim import (
    API_VERSION,
    CLAUDE,
    CONTEXT,
    provider_config,
    recorded_bodies,
    requests,
    root,
)
from tests.integrations.seen_gate import SeenGate


def ask(question: str = "What is the capital of France?") -> list[ChatMessage]:
    return [ChatMessage(role="system", content=CONTEXT), ChatMessage(role="user", content=question)]


@pytest.fixture(autouse=True)
def _fresh_process_state() -> Iterator[None]:
    previous = set_cache_manager(None)
    yield
    manager = set_cache_manager(previous)
    if manager is not None:
        manager.close()
    close_http_clients()


@pytest.fixture
def config(tmp_path: Path) -> PerformanceConfig:
    return provider_config(tmp_path)


def claude(sim: Simulator, config: PerformanceConfig, **options: Any) -> Any:
    options = {"model": CLAUDE, "api_key": "sk-ant-test", "max_tokens": 256, **options}
    return pooled_anthropic_llm(base_url=root(sim), config=config, **options)


def azure_llm(sim: Simulator, config: PerformanceConfig, **options: Any) -> Any:
    options = {"engine": "chat", "api_version": API_VERSION, "api_key": "az-test", **options}
    return pooled_azure_openai_llm(azure_endpoint=root(sim), config=config, **options)


@pytest.fixture
def bodies(simulator: Simulator, config: PerformanceConfig) -> Iterator[list[Any]]:
    """The JSON bodies the provider receives through the shared (sync) client."""
    with recorded_bodies(simulator, config) as recorded:
        yield recorded


def test_anthropic_same_answer_and_body_wrapped_warm_free_usage_counted(
    simulator: Simulator, config: PerformanceConfig, bodies: list[Any]
) -> None:
    tracker = PerformanceTracker()
    plain = claude(simulator, config)
    wrapped = wrap_llm(claude(simulator, config), config, tracker=tracker)
    expected = plain.chat(ask())
    cold = wrapped.chat(ask())
    assert bodies[0] == bodies[1] and cold.message.content == expected.message.content
    assert "Paris" in str(cold.message.content)
    before = requests(simulator)
    warm = wrapped.chat(ask())
    assert requests(simulator) == before and warm.additional_kwargs["cache_hit"] is True
    assert warm.message.content == expected.message.content
    usage = cold.raw["usage"] if isinstance(cold.raw, dict) else cold.raw.usage
    tokens_in = usage.input_tokens + usage.cache_read_input_tokens
    tokens_in += usage.cache_creation_input_tokens
    assert tracker.get_operation_stats("llm").tokens_in == tokens_in > 0


def test_anthropic_stream_recorded_then_replayed_and_async(
    simulator: Simulator, config: PerformanceConfig
) -> None:
    plain = claude(simulator, config)
    wrapped = wrap_llm(claude(simulator, config), config)
    expected = plain.chat(ask()).message.content
    cold = [r.delta for r in wrapped.stream_chat(ask())]
    before = requests(simulator)
    warm = [r.delta for r in wrapped.stream_chat(ask())]
    answer = asyncio.run(wrapped.achat(ask(f"{ask()[1].content} (async)")))
    assert requests(simulator) == before + 1  # only the new async question
    assert cold == warm and "".join(d or "" for d in warm) == expected
    assert "Paris" in str(answer.message.content)


def _delta_usage(chunks: list[Any]) -> dict[str, int]:
    """The usage of the stream's ``message_delta`` event (Anthropic's cumulative counts)."""
    (usage,) = [c.raw["usage"] for c in chunks if c.raw.get("type") == "message_delta"]
    return {k: v for k, v in usage.model_dump().items() if isinstance(v, int)}


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_anthropic_stream_usage_reaches_tracker_cost_and_reconcile(
    simulator: Simulator, config: PerformanceConfig, mode: str
) -> None:
    # The unwrapped stream writes the prompt cache (cache_idx=1 marks the question), so the
    # wrapped one reads it: input, prompt-cache and output tokens, from message_delta.
    list(claude(simulator, config, cache_idx=1).stream_chat(ask()))
    tracker = PerformanceTracker()
    gate = SeenGate(config, key="test/claude-stream")
    inner = claude(simulator, config, cache_idx=1)
    wrapped = wrap_llm(inner, config, tracker=tracker, gate=gate)
    if mode == "sync":
        chunks = list(wrapped.stream_chat(ask()))
    else:

        async def collect() -> list[Any]:
            return [c async for c in await wrapped.astream_chat(ask())]

        chunks = asyncio.run(collect())
    usage = _delta_usage(chunks)
    assert usage["cache_read_input_tokens"] > 0 and usage["output_tokens"] > 0
    tokens_in = sum(usage[k] for k in ("input_tokens", "cache_read_input_tokens"))
    tokens_in += usage["cache_creation_input_tokens"]
    stats = tracker.get_operation_stats("llm.stream")
    assert (stats.tokens_in, stats.tokens_out) == (tokens_in, usage["output_tokens"])
    assert [t.tokens for t in gate.tickets] == [tokens_in + usage["output_tokens"]]
    cost = price_table().chat_cost(
        CLAUDE,
        tokens_in,
        usage["output_tokens"],
        cached_in=usage["cache_read_input_tokens"],
        cache_write=usage["cache_creation_input_tokens"],
    )
    assert cost is not None and stats.cost_unknown_calls == 0
    assert stats.cost_usd == pytest.approx(cost)
    # A completion stream goes through the same chunks.
    list(wrapped.stream_complete("What is the capital of Germany?"))
    assert tracker.get_operation_stats("llm.stream").tokens_out > usage["output_tokens"]


@pytest.mark.parametrize(
    "change",
    [
        {"max_tokens": 64},
        {"system_prompt": "Answer briefly."},
        {"thinking_dict": {"type": "enabled", "budget_tokens": 1024}, "max_tokens": 2048},
        {"additional_kwargs": {"top_k": 5}},
        {"additional_kwargs": {"stop_sequences": ["\n\n"]}},
        {"model": "claude-sonnet-4-5"},
    ],
    ids=lambda change: str(change)[:40],
)
def test_anthropic_fields_that_change_the_answer_are_in_the_key(
    simulator: Simulator, config: PerformanceConfig, change: dict[str, Any]
) -> None:
    wrap_llm(claude(simulator, config), config).chat(ask())
    before = requests(simulator)
    wrap_llm(claude(simulator, config, **change), config).chat(ask())
    assert requests(simulator) == before + 1


def test_anthropic_529_and_429_storm_every_call_succeeds(
    simulator_factory: SimulatorFactory, config: PerformanceConfig
) -> None:
    sim = simulator_factory(overload_rate=0.15, rate_limit_rate=0.1, retry_after_s=0.01, seed=7)
    storm = config.replace(retry_max_attempts=6, retry_budget_ratio=0.5)
    wrapped = wrap_llm(claude(sim, storm), storm)
    answers = [wrapped.chat(ask(f"Question {i}: the capital?")) for i in range(30)]
    assert all("capital" in str(a.message.content) for a in answers)
    assert sim.stats()["responses_by_status"].get("529", 0) > 0
    retry = wrapped.service.retry.stats()  # type: ignore[union-attr]
    assert retry["failed"] == 0 and retry["succeeded"] == 30


def test_azure_llm_same_answer_and_body_wrapped_and_key_fields(
    simulator: Simulator, config: PerformanceConfig, bodies: list[Any]
) -> None:
    plain = azure_llm(simulator, config)
    wrapped = wrap_llm(azure_llm(simulator, config), config)
    expected = plain.chat(ask())
    cold = wrapped.chat(ask())
    assert bodies[0] == bodies[1] and cold.message.content == expected.message.content
    before = requests(simulator)
    assert wrapped.chat(ask()).additional_kwargs["cache_hit"] is True
    assert requests(simulator) == before
    for change in ({"engine": "chat-2"}, {"api_version": "2024-06-01"}):
        wrap_llm(azure_llm(simulator, config, **change), config).chat(ask())
    assert requests(simulator) == before + 2  # each a different request


def test_azure_embedding_same_vectors_and_body_wrapped(
    simulator: Simulator, config: PerformanceConfig, bodies: list[Any]
) -> None:
    texts = ["Paris is the capital of France.", "Berlin is the capital of Germany."]

    def inner() -> Any:
        return pooled_azure_openai_embedding(
            azure_deployment="embed",
            azure_endpoint=root(simulator),
            api_version=API_VERSION,
            api_key="az-test",
            config=config,
        )

    plain = inner().get_text_embedding_batch(texts)
    wrapped = PerfEmbedding(inner(), config)
    cold = wrapped.get_text_embedding_batch(texts)
    before = requests(simulator)
    warm = wrapped.get_text_embedding_batch(texts)
    assert requests(simulator) == before and bodies[0] == bodies[1]
    expected = np.asarray(plain, dtype=np.float32)
    np.testing.assert_array_equal(np.asarray(cold), expected)
    np.testing.assert_array_equal(np.asarray(warm), expected)


def test_azure_llm_stream_replayed_and_429_storm_absorbed(
    simulator_factory: SimulatorFactory, config: PerformanceConfig
) -> None:
    sim = simulator_factory(rate_limit_rate=0.25, retry_after_s=0.01, seed=11)
    storm = config.replace(retry_max_attempts=6, retry_budget_ratio=0.6)
    wrapped = wrap_llm(azure_llm(sim, storm), storm)
    answers = [wrapped.chat(ask(f"Question {i}?")) for i in range(20)]
    assert len(answers) == 20 and sim.stats()["rate_limited_total"] > 0
    retry = wrapped.service.retry.stats()  # type: ignore[union-attr]
    assert retry["failed"] == 0 and retry["succeeded"] == 20
    cold = [r.delta for r in wrapped.stream_chat(ask("Streamed?"))]
    before = requests(sim)
    warm = [r.delta for r in wrapped.stream_chat(ask("Streamed?"))]
    assert requests(sim) == before and cold == warm and len(warm) > 2


@pytest.mark.parametrize(
    "change", [{"api_version": "2024-06-01"}, {"azure_deployment": "embed-2"}], ids=str
)
def test_azure_embedding_deployment_and_api_version_are_in_the_key(
    simulator: Simulator, config: PerformanceConfig, change: dict[str, Any]
) -> None:
    def inner(**override: Any) -> Any:
        options = {"azure_deployment": "embed", "api_version": API_VERSION, **override}
        return pooled_azure_openai_embedding(
            azure_endpoint=root(simulator), api_key="az-test", config=config, **options
        )

    PerfEmbedding(inner(), config).get_text_embedding("Paris")
    before = requests(simulator)
    PerfEmbedding(inner(**change), config).get_text_embedding("Paris")
    assert requests(simulator) == before + 1
