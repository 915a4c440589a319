"""PerfChatModel over the real ChatAnthropic and AzureChatOpenAI, PerfEmbeddings over Azure.

Against the simulator's Anthropic and Azure routes: the same answers and request bodies
wrapped and unwrapped, no request when warm, streams replayed, every field that changes
an answer in the key, 529/429 storms absorbed by the retry policy, and one shared budget
(``rate_limit_scope``) for two models under one account-wide limit.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from langchain_core.messages import BaseMessage, HumanMessage, SystemMessage
from langchain_core.tools import tool
from rag_perf_plugins.langchain import (
    PerfChatModel,
    PerfEmbeddings,
    pooled_azure_chat_openai,
    pooled_azure_openai_embeddings,
    pooled_chat_anthropic,
)

from rag_perf_plugins.config import PerformanceConfig
from rag_perf_plugins.cost import price_table
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


def ask(question: str = "What is the capital of France?") -> list[BaseMessage]:
    system = [{"type": "text", "text": CONTEXT, "cache_control": {"type": "ephemeral"}}]
    return [SystemMessage(content=system), HumanMessage(question)]  # type: ignore[arg-type]


@pytest.fixture
def config(tmp_path: Path) -> PerformanceConfig:
    return provider_config(tmp_path)


def claude(sim: Simulator, config: PerformanceConfig, **options: Any) -> Any:
    options = {"model": CLAUDE, "api_key": "sk-ant-test", "temperature": 0.0, **options}
    return pooled_chat_anthropic(base_url=root(sim), config=config, **options)


def azure_chat(sim: Simulator, config: PerformanceConfig, **options: Any) -> Any:
    options = {
        "azure_deployment": "chat",
        "api_version": API_VERSION,
        "api_key": "az-test",
        "temperature": 0.0,
        **options,
    }
    return pooled_azure_chat_openai(azure_endpoint=root(sim), config=config, **options)


def azure_embeddings(sim: Simulator, config: PerformanceConfig, **options: Any) -> Any:
    options = {
        "azure_deployment": "embed",
        "api_version": API_VERSION,
        "api_key": "az-test",
        **options,
    }
    return pooled_azure_openai_embeddings(azure_endpoint=root(sim), config=config, **options)


@pytest.fixture
def bodies(simulator: Simulator, config: PerformanceConfig) -> Iterator[list[Any]]:
    """The JSON bodies the provider receives through the shared (sync) client."""
    with recorded_bodies(simulator, config) as recorded:
        yield recorded


@tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"Sunny in {city}"


# --- Anthropic -------------------------------------------------------------------------


def test_anthropic_same_answer_and_body_wrapped_and_warm_is_free(
    simulator: Simulator, config: PerformanceConfig, bodies: list[Any]
) -> None:
    plain = claude(simulator, config)
    wrapped = PerfChatModel(claude(simulator, config), config)
    expected = plain.invoke(ask())
    cold = wrapped.invoke(ask())
    assert bodies[0] == bodies[1]  # the provider sees the same request
    assert cold.content == expected.content and "Paris" in str(cold.content)
    assert cold.response_metadata.get("cache_hit") is None
    details = cold.usage_metadata["input_token_details"]  # type: ignore[index]
    assert details["cache_read"] > 0  # the unwrapped call wrote the prompt cache
    before = requests(simulator)
    warm = wrapped.invoke(ask())
    assert requests(simulator) == before
    assert warm.content == expected.content and warm.response_metadata["cache_hit"] is True
    assert warm.usage_metadata["input_tokens"] == 0  # type: ignore[index]


def test_anthropic_stream_is_recorded_then_replayed(
    simulator: Simulator, config: PerformanceConfig
) -> None:
    plain = claude(simulator, config)
    wrapped = PerfChatModel(claude(simulator, config), config)
    expected = "".join(str(c.content) for c in plain.stream(ask()))
    cold = [str(c.content) for c in wrapped.stream(ask())]
    before = requests(simulator)
    warm = [str(c.content) for c in wrapped.stream(ask())]
    assert requests(simulator) == before
    assert "".join(cold) == "".join(warm) == expected and len(warm) > 3


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_anthropic_stream_usage_reaches_tracker_cost_and_reconcile(
    simulator: Simulator, config: PerformanceConfig, mode: str
) -> None:
    # The unwrapped stream writes the prompt cache, so the wrapped one reads it.
    # langchain-anthropic reads a stream's usage from message_delta alone (cumulative).
    first, *rest = claude(simulator, config).stream(ask())
    expected = sum(rest, start=first)
    tracker = PerformanceTracker()
    gate = SeenGate(config, key="test/claude-lc-stream")
    wrapped = PerfChatModel(claude(simulator, config), config, tracker=tracker, gate=gate)
    if mode == "sync":
        chunks = list(wrapped.stream(ask()))
    else:

        async def collect() -> list[Any]:
            return [c async for c in wrapped.astream(ask())]

        chunks = asyncio.run(collect())
    usage = sum(chunks[1:], start=chunks[0]).usage_metadata
    assert usage is not None and expected.usage_metadata is not None
    read = usage["input_token_details"]["cache_read"]
    written = expected.usage_metadata["input_token_details"]["cache_creation"]
    assert read > 0 and written == read  # what the unwrapped stream wrote, this one read
    stats = tracker.get_operation_stats("llm.chat.stream")
    assert (stats.tokens_in, stats.tokens_out) == (usage["input_tokens"], usage["output_tokens"])
    assert [t.tokens for t in gate.tickets] == [usage["total_tokens"]]
    cost = price_table().chat_cost(
        CLAUDE, usage["input_tokens"], usage["output_tokens"], cached_in=read
    )
    assert cost is not None and stats.cost_unknown_calls == 0
    assert stats.cost_usd == pytest.approx(cost)


def test_anthropic_tool_use_wrapped_equals_unwrapped(
    simulator: Simulator, config: PerformanceConfig, bodies: list[Any]
) -> None:
    plain = claude(simulator, config).bind_tools([get_weather], tool_choice="get_weather")
    wrapped = PerfChatModel(claude(simulator, config), config).bind_tools(
        [get_weather], tool_choice="get_weather"
    )
    expected = plain.invoke("What is the weather in Paris?")
    cold = wrapped.invoke("What is the weather in Paris?")
    warm = wrapped.invoke("What is the weather in Paris?")
    assert bodies[0] == bodies[1] and len(bodies) == 2
    assert cold.tool_calls == expected.tool_calls == warm.tool_calls
    assert cold.tool_calls[0]["name"] == "get_weather"


@pytest.mark.parametrize(
    "change",
    [
        {"max_tokens": 64},
        {"top_k": 5},
        {"top_p": 0.5},
        {"stop_sequences": ["\n\n"]},
        {"thinking": {"type": "enabled", "budget_tokens": 1024}, "max_tokens": 2048},
        {"model": "claude-sonnet-4-5"},
    ],
    ids=lambda change: next(iter(change)),
)
def test_anthropic_fields_that_change_the_answer_are_in_the_key(
    simulator: Simulator, config: PerformanceConfig, change: dict[str, Any]
) -> None:
    base = PerfChatModel(claude(simulator, config), config)
    base.invoke(ask())
    if "thinking" in change:
        change = {**change, "temperature": 1.0}
    other = PerfChatModel(claude(simulator, config, **change), config)
    before = requests(simulator)
    other.invoke(ask())
    assert requests(simulator) == before + 1  # a different request: a miss


def test_anthropic_timeout_is_not_in_the_key(
    simulator: Simulator, config: PerformanceConfig
) -> None:
    PerfChatModel(claude(simulator, config), config).invoke(ask())
    before = requests(simulator)
    slow = PerfChatModel(claude(simulator, config, default_request_timeout=600.0), config)
    assert slow.invoke(ask()).response_metadata["cache_hit"] is True
    assert requests(simulator) == before


def test_anthropic_system_blocks_are_in_the_key(
    simulator: Simulator, config: PerformanceConfig
) -> None:
    wrapped = PerfChatModel(claude(simulator, config), config)
    wrapped.invoke(ask())
    uncached_block = [SystemMessage(content=CONTEXT), ask()[1]]
    before = requests(simulator)
    wrapped.invoke(uncached_block)
    assert requests(simulator) == before + 1


def test_anthropic_529_and_429_storm_every_call_succeeds(
    simulator_factory: SimulatorFactory, config: PerformanceConfig
) -> None:
    sim = simulator_factory(overload_rate=0.15, rate_limit_rate=0.1, retry_after_s=0.01, seed=5)
    storm = config.replace(retry_max_attempts=6, retry_budget_ratio=0.5)
    wrapped = PerfChatModel(claude(sim, storm), storm)
    answers = [wrapped.invoke(ask(f"Question {i}: what is the capital?")) for i in range(30)]
    assert all("capital" in str(a.content) for a in answers)
    stats = sim.stats()
    assert stats["responses_by_status"].get("529", 0) > 0
    assert stats["rate_limited_total"] > 0
    retry = wrapped.service.retry.stats()  # type: ignore[union-attr]
    assert retry["failed"] == 0 and retry["succeeded"] == 30


# --- Azure OpenAI ----------------------------------------------------------------------


def test_azure_chat_same_answer_and_body_wrapped_warm_and_stream(
    simulator: Simulator, config: PerformanceConfig, bodies: list[Any]
) -> None:
    plain = azure_chat(simulator, config)
    wrapped = PerfChatModel(azure_chat(simulator, config), config)
    expected = plain.invoke(ask())
    cold = wrapped.invoke(ask())
    assert bodies[0] == bodies[1] and cold.content == expected.content
    before = requests(simulator)
    assert wrapped.invoke(ask()).response_metadata["cache_hit"] is True
    streamed = [str(c.content) for c in wrapped.stream(ask())]
    replayed = [str(c.content) for c in wrapped.stream(ask())]
    assert requests(simulator) == before + 1  # only the first stream
    assert streamed == replayed and "".join(replayed) == expected.content


@pytest.mark.parametrize(
    "change", [{"api_version": "2024-06-01"}, {"azure_deployment": "chat-2"}], ids=str
)
def test_azure_deployment_and_api_version_are_in_the_key(
    simulator: Simulator, config: PerformanceConfig, change: dict[str, Any]
) -> None:
    PerfChatModel(azure_chat(simulator, config), config).invoke(ask())
    before = requests(simulator)
    PerfChatModel(azure_chat(simulator, config, **change), config).invoke(ask())
    assert requests(simulator) == before + 1


def test_azure_embeddings_same_vectors_and_body_wrapped(
    simulator: Simulator, config: PerformanceConfig, bodies: list[Any]
) -> None:
    texts = ["Paris is the capital of France.", "Berlin is the capital of Germany."]
    plain = azure_embeddings(simulator, config).embed_documents(texts)
    wrapped = PerfEmbeddings(azure_embeddings(simulator, config), config)
    cold = wrapped.embed_documents(texts)
    before = requests(simulator)
    warm = wrapped.embed_documents(texts)
    assert requests(simulator) == before
    assert bodies[0] == bodies[1]
    expected = np.asarray(plain, dtype=np.float32)  # the cache keeps float32, cold and warm
    np.testing.assert_array_equal(np.asarray(cold), expected)
    np.testing.assert_array_equal(np.asarray(warm), expected)


@pytest.mark.parametrize(
    "change", [{"api_version": "2024-06-01"}, {"azure_deployment": "embed-2"}], ids=str
)
def test_azure_embeddings_deployment_and_api_version_are_in_the_key(
    simulator: Simulator, config: PerformanceConfig, change: dict[str, Any]
) -> None:
    PerfEmbeddings(azure_embeddings(simulator, config), config).embed_query("Paris")
    before = requests(simulator)
    PerfEmbeddings(azure_embeddings(simulator, config, **change), config).embed_query("Paris")
    assert requests(simulator) == before + 1


def test_azure_429_storm_every_call_succeeds(
    simulator_factory: SimulatorFactory, config: PerformanceConfig
) -> None:
    sim = simulator_factory(rate_limit_rate=0.25, retry_after_s=0.01, seed=11)
    storm = config.replace(retry_max_attempts=6, retry_budget_ratio=0.6)
    wrapped = PerfChatModel(azure_chat(sim, storm), storm)
    answers = [wrapped.invoke(ask(f"Question {i}?")) for i in range(30)]
    assert len(answers) == 30 and sim.stats()["rate_limited_total"] > 0
    retry = wrapped.service.retry.stats()  # type: ignore[union-attr]
    assert retry["failed"] == 0 and retry["succeeded"] == 30


# --- one budget for two models ---------------------------------------------------------


async def _chat_and_embed(chat: PerfChatModel, embeddings: PerfEmbeddings, n: int) -> None:
    calls: list[Any] = []
    for i in range(n):
        calls.append(chat.ainvoke(ask(f"Question {i}?")))
        calls.append(embeddings.aembed_query(f"text {i}"))
    await asyncio.gather(*calls)


@pytest.mark.parametrize(
    ("scope", "rpm", "expect_429s"), [("acme", 900, False), (None, 1140, True)]
)
def test_two_models_under_one_account_limit_share_a_scope(
    simulator_factory: SimulatorFactory,
    tmp_path: Path,
    scope: str | None,
    rpm: int,
    expect_429s: bool,
) -> None:
    # One account-wide limit of 1,200 requests/minute at the simulator. With one scope
    # both wrappers draw from one budget of 900 (75 %: a loaded machine delays and bunches
    # what the gate admitted on time, and 95 % drew a 429 under load now and then);
    # without, each has its own 1,140 (95 %) and together they send nearly twice the
    # limit. The gate's burst (half a second) is below the simulator's (one second): the
    # first requests, admitted at once, can reach the simulator late (new connections)
    # and bunched with later ones.
    sim = simulator_factory(rpm=1200, burst_seconds=1.0, limit_scope="account")
    config = PerformanceConfig(
        cache_dir=str(tmp_path / "cache"),
        enable_caching=False,
        enable_metrics=False,
        requests_per_minute=rpm,
        rate_burst_seconds=0.5,
        rate_limit_scope=scope,
        retry_max_attempts=1,
    )
    chat = PerfChatModel(azure_chat(sim, config, azure_deployment=f"chat-{scope}"), config)
    embeddings = PerfEmbeddings(
        azure_embeddings(sim, config, azure_deployment=f"embed-{scope}"), config, batching=False
    )
    if expect_429s:
        with pytest.raises(Exception, match=r"429|[Rr]ate limit"):
            asyncio.run(_chat_and_embed(chat, embeddings, 25))
        assert sim.stats()["rate_limited_total"] > 0
    else:
        asyncio.run(_chat_and_embed(chat, embeddings, 25))
        assert sim.stats()["rate_limited_total"] == 0
        assert sim.stats()["requests_total"] == 50
