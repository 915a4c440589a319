"""wrap_llm / PerfLLM / PerfFunctionCallingLLM against the simulator (real LlamaIndex OpenAI)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from llama_index.core.llms import ChatMessage, MockLLM
from llama_index.core.tools import FunctionTool
from llama_index.llms.openai import OpenAI
from rag_perf_plugins.llama_index import (
    PerfFunctionCallingLLM,
    PerfLLM,
    install_instrumentation,
    pooled_openai_llm,
    wrap_llm,
)

from rag_perf_plugins.cache import cache_control
from rag_perf_plugins.config import PerformanceConfig
from rag_perf_plugins.simulator import Simulator
from rag_perf_plugins.tracking import PerformanceTracker

CHAT = "/v1/chat/completions"
MESSAGES = [ChatMessage(role="user", content="Tell me about tide pools.")]


def chat_requests(sim: Simulator) -> int:
    return int(sim.stats()["requests_by_endpoint"].get(CHAT, 0))


@pytest.fixture
def config(cache_dir: Path) -> PerformanceConfig:
    return PerformanceConfig(cache_dir=str(cache_dir), enable_metrics=False)


@pytest.fixture
def make(simulator: Simulator, config: PerformanceConfig) -> Iterator[Callable[..., OpenAI]]:
    made: list[OpenAI] = []

    def build(**kw: Any) -> OpenAI:
        llm = pooled_openai_llm(api_base=simulator.base_url, api_key="sk-test", config=config, **kw)
        made.append(llm)
        return llm

    yield build


def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def multiply(a: int, b: int) -> int:
    """Multiply two integers."""
    return a * b


def test_wrap_llm_keeps_function_calling_and_metadata(
    make: Callable[..., OpenAI], config: PerformanceConfig
) -> None:
    inner = make()
    llm = wrap_llm(inner, config)
    assert isinstance(llm, PerfFunctionCallingLLM)
    assert llm.metadata == inner.metadata
    assert llm.metadata.is_function_calling_model
    assert wrap_llm(llm) is llm
    plain = wrap_llm(MockLLM(), config)
    assert type(plain) is PerfLLM
    with pytest.raises(TypeError):
        PerfLLM(llm)
    with pytest.raises(TypeError):
        PerfLLM(object())  # type: ignore[arg-type]
    assert inner.max_retries == 0
    with pytest.raises(ValueError, match="max_retries"):
        pooled_openai_llm(max_retries=2)


def test_second_chat_and_complete_are_hits_with_zero_tokens(
    simulator: Simulator, make: Callable[..., OpenAI], config: PerformanceConfig
) -> None:
    tracker = PerformanceTracker()
    inner = make()
    llm = wrap_llm(inner, config, tracker=tracker)
    plain = inner.chat(MESSAGES)
    cold = llm.chat(MESSAGES)
    assert cold.message.content == plain.message.content
    assert cold.additional_kwargs["cache_hit"] is False
    assert cold.additional_kwargs["prompt_tokens"] > 0
    simulator.reset_stats()
    warm = llm.chat(MESSAGES)
    assert chat_requests(simulator) == 0
    assert warm.message.content == plain.message.content
    assert warm.additional_kwargs["cache_hit"] is True
    assert warm.additional_kwargs["prompt_tokens"] == 0
    assert warm.additional_kwargs["completion_tokens"] == 0
    assert warm.raw is None
    first = llm.complete("What is a river delta?")
    assert llm.complete("What is a river delta?").text == first.text
    assert chat_requests(simulator) == 1
    stats = tracker.get_operation_stats("llm")  # chat and complete
    assert (stats.cache_hits, stats.cache_misses) == (2, 2)
    assert stats.tokens_saved > 0
    assert stats.tokens_in == (
        cold.additional_kwargs["prompt_tokens"] + first.additional_kwargs["prompt_tokens"]
    )


def test_async_twins_share_the_entries(
    simulator: Simulator, make: Callable[..., OpenAI], config: PerformanceConfig
) -> None:
    llm = wrap_llm(make(), config)
    sync = llm.chat(MESSAGES)

    async def run() -> tuple[Any, Any]:
        return await llm.achat(MESSAGES), await llm.acomplete("hello there")

    simulator.reset_stats()
    achat, _ = asyncio.run(run())
    assert achat.message.content == sync.message.content
    assert chat_requests(simulator) == 1  # the acomplete miss only
    asyncio.run(run())
    assert chat_requests(simulator) == 1


def test_stream_chat_is_recorded_and_replayed(
    simulator: Simulator, make: Callable[..., OpenAI], config: PerformanceConfig
) -> None:
    tracker = PerformanceTracker()
    llm = wrap_llm(make(), config, tracker=tracker)
    live = list(llm.stream_chat(MESSAGES))
    assert len(live) > 1
    simulator.reset_stats()
    replay = list(llm.stream_chat(MESSAGES))
    assert chat_requests(simulator) == 0
    assert [c.delta for c in replay] == [c.delta for c in live]
    assert replay[-1].message.content == live[-1].message.content
    assert replay[-1].additional_kwargs["cache_hit"] is True

    async def arun() -> list[Any]:
        return [c async for c in await llm.astream_chat(MESSAGES)]

    areplay = asyncio.run(arun())
    assert chat_requests(simulator) == 0
    assert "".join(c.delta or "" for c in areplay) == live[-1].message.content
    stats = tracker.get_operation_stats("llm.stream")
    assert (stats.cache_hits, stats.cache_misses) == (2, 1)
    assert stats.ttft_p50_s >= 0


def test_streamed_answers_count_their_tokens(
    simulator: Simulator, make: Callable[..., OpenAI], config: PerformanceConfig
) -> None:
    tracker = PerformanceTracker()
    inner = make()
    assert inner.additional_kwargs["stream_options"] == {"include_usage": True}
    live = list(wrap_llm(inner, config, tracker=tracker).stream_chat(MESSAGES))
    usage = live[-1].additional_kwargs
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0
    stats = tracker.get_operation_stats("llm.stream")
    assert (stats.tokens_in, stats.tokens_out) == (
        usage["prompt_tokens"],
        usage["completion_tokens"],
    )
    # Not a part of the key: the same model without it hits the recorded stream.
    simulator.reset_stats()
    plain = make(additional_kwargs={"stream_options": None})
    assert "stream_options" not in plain.additional_kwargs
    replay = list(wrap_llm(plain, config).stream_chat(MESSAGES))
    assert chat_requests(simulator) == 0
    assert replay[-1].message.content == live[-1].message.content
    # A non-streaming call drops stream_options (LlamaIndex) and is answered normally.
    assert make().chat(MESSAGES).message.content


def test_astream_complete_then_stream_complete_replays(
    simulator: Simulator, make: Callable[..., OpenAI], config: PerformanceConfig
) -> None:
    llm = wrap_llm(make(), config)

    async def arun() -> list[Any]:
        return [c async for c in await llm.astream_complete("Explain bread baking.")]

    live = asyncio.run(arun())
    simulator.reset_stats()
    replay = list(llm.stream_complete("Explain bread baking."))
    assert chat_requests(simulator) == 0
    assert replay[-1].text == live[-1].text
    assert [c.delta for c in replay] == [c.delta for c in live]


def test_an_abandoned_stream_is_not_stored(
    simulator: Simulator, make: Callable[..., OpenAI], config: PerformanceConfig
) -> None:
    tracker = PerformanceTracker()
    llm = wrap_llm(make(), config, tracker=tracker)
    stream = llm.stream_chat(MESSAGES)
    next(stream)
    stream.close()
    assert tracker.get_operation_stats("llm.stream").streams_abandoned == 1
    simulator.reset_stats()
    assert len(list(llm.stream_chat(MESSAGES))) > 1
    assert chat_requests(simulator) == 1


@pytest.mark.parametrize(
    ("change", "call_kwargs"),
    [
        ({"model": "gpt-4o"}, {}),
        ({"temperature": 0.7}, {}),
        ({}, {"temperature": 0.3}),
        ({"max_tokens": 7}, {}),
    ],
)
def test_another_model_or_sampling_never_hits(
    simulator: Simulator,
    make: Callable[..., OpenAI],
    config: PerformanceConfig,
    change: dict[str, Any],
    call_kwargs: dict[str, Any],
) -> None:
    wrap_llm(make(), config).chat(MESSAGES)
    simulator.reset_stats()
    wrap_llm(make(**change), config).chat(MESSAGES, **call_kwargs)
    assert chat_requests(simulator) == 1


def test_another_tool_list_never_hits(
    simulator: Simulator, make: Callable[..., OpenAI], config: PerformanceConfig
) -> None:
    llm = wrap_llm(make(), config)
    assert isinstance(llm, PerfFunctionCallingLLM)
    add_tool = FunctionTool.from_defaults(fn=add)
    mul_tool = FunctionTool.from_defaults(fn=multiply)
    llm.chat_with_tools([add_tool], user_msg="What is 2 + 3?")
    simulator.reset_stats()
    llm.chat_with_tools([add_tool], user_msg="What is 2 + 3?")
    assert chat_requests(simulator) == 0
    llm.chat_with_tools([mul_tool], user_msg="What is 2 + 3?")
    llm.chat_with_tools([add_tool, mul_tool], user_msg="What is 2 + 3?")
    llm.chat_with_tools([add_tool], user_msg="What is 2 + 3?", tool_required=True)
    assert chat_requests(simulator) == 3


def test_predict_and_call_works_through_the_wrapper_and_is_cached(
    simulator: Simulator, make: Callable[..., OpenAI], config: PerformanceConfig
) -> None:
    inner = make()
    llm = wrap_llm(inner, config)
    tools = [FunctionTool.from_defaults(fn=add)]
    expected = inner.predict_and_call(tools, "What is 2 + 3?")
    got = llm.predict_and_call(tools, "What is 2 + 3?")
    assert got.response == expected.response
    assert got.sources[0].tool_name == "add"
    simulator.reset_stats()
    again = llm.predict_and_call(tools, "What is 2 + 3?")
    assert again.response == expected.response
    assert chat_requests(simulator) == 0  # the tool call came from the cache


def test_a_miss_is_recorded_once(
    simulator: Simulator, make: Callable[..., OpenAI], config: PerformanceConfig
) -> None:
    tracker = PerformanceTracker()
    handle = install_instrumentation(tracker)
    try:
        llm = wrap_llm(make(), config, tracker=tracker)
        llm.chat(MESSAGES)
        llm.chat(MESSAGES)
    finally:
        handle.uninstall()
    assert chat_requests(simulator) == 1
    service = tracker.get_operation_stats("llm")
    spans = tracker.get_operation_stats("llama_index.llm")
    assert service.count == spans.count == 2
    assert (spans.cache_hits, spans.cache_misses) == (1, 1)
    assert spans.tokens_in == service.tokens_in > 0


def test_cache_control_keyword_and_context(
    simulator: Simulator, make: Callable[..., OpenAI], config: PerformanceConfig
) -> None:
    llm = wrap_llm(make(), config)
    llm.chat(MESSAGES)
    simulator.reset_stats()
    bypassed = llm.chat(MESSAGES, rag_perf_cache="bypass")
    assert bypassed.additional_kwargs["cache_hit"] is False
    with cache_control("refresh"):
        llm.chat(MESSAGES)
    assert chat_requests(simulator) == 2
    llm.chat(MESSAGES)
    assert chat_requests(simulator) == 2


def test_provider_errors_are_retried_by_our_policy(
    simulator_factory: Callable[..., Simulator], cache_dir: Path
) -> None:
    sim = simulator_factory(error_rate=0.5, seed=3)
    config = PerformanceConfig(
        cache_dir=str(cache_dir),
        enable_metrics=False,
        retry_max_attempts=10,
        retry_initial_backoff=0.001,
        retry_max_backoff=0.005,
    )
    llm = wrap_llm(
        pooled_openai_llm(api_base=sim.base_url, api_key="sk-test", config=config), config
    )
    answers = [llm.complete(f"question {i}").text for i in range(6)]
    assert all(answers)
    assert sim.stats()["requests_total"] > 6  # some attempts failed and were retried


def test_the_function_calling_wrapper_refuses_a_plain_llm() -> None:
    from llama_index.core.llms import MockLLM
    from rag_perf_plugins.llama_index import PerfFunctionCallingLLM

    with pytest.raises(
        TypeError, match="inner must be a LlamaIndex FunctionCallingLLM, got MockLLM"
    ):
        PerfFunctionCallingLLM(MockLLM())  # type: ignore[arg-type]
