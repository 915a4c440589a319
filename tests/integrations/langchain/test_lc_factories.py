"""pooled_chat_openai / pooled_openai_embeddings: pooled clients, retries off, usage on streams.

Real ``ChatOpenAI`` against the simulator, which answers ``stream_options.include_usage``
with a final usage chunk.
"""

from __future__ import annotations

from typing import Any

from langchain_core.messages import AIMessageChunk
from langchain_openai import ChatOpenAI
from rag_perf_plugins.langchain import PerfChatModel, pooled_chat_openai

from rag_perf_plugins.simulator import Simulator
from rag_perf_plugins.tracking import PerformanceTracker

QUESTION = "What is retrieval-augmented generation?"


def chat(sim: Simulator, **options: Any) -> ChatOpenAI:
    return pooled_chat_openai(
        base_url=sim.base_url, model="gpt-4o-mini", api_key="sk-test", **options
    )


def merge(chunks: list[Any]) -> AIMessageChunk:
    full: AIMessageChunk = chunks[0]
    for chunk in chunks[1:]:
        full = full + chunk
    return full


def sim_tokens(sim: Simulator) -> tuple[int, int]:
    stats = sim.stats()
    return stats["prompt_tokens_total"], stats["completion_tokens_total"]


def test_stream_usage_is_on_by_default_and_the_caller_can_turn_it_off(
    simulator: Simulator,
) -> None:
    assert chat(simulator).stream_usage is True
    assert chat(simulator, stream_usage=False).stream_usage is False
    # ChatOpenAI alone leaves it off once given a base_url or its own clients.
    assert ChatOpenAI(base_url=simulator.base_url, api_key="sk-test").stream_usage is None


def test_a_streamed_answer_carries_the_providers_usage(simulator: Simulator) -> None:
    full = merge(list(chat(simulator).stream(QUESTION)))
    prompt, completion = sim_tokens(simulator)
    assert prompt > 0 and completion > 0
    assert full.usage_metadata is not None
    assert (full.usage_metadata["input_tokens"], full.usage_metadata["output_tokens"]) == (
        prompt,
        completion,
    )


async def test_an_async_streamed_answer_carries_the_providers_usage(
    simulator: Simulator,
) -> None:
    full = merge([chunk async for chunk in chat(simulator).astream(QUESTION)])
    assert full.usage_metadata is not None
    assert full.usage_metadata["total_tokens"] == sum(sim_tokens(simulator))


def test_stream_usage_false_sends_no_stream_options(simulator: Simulator) -> None:
    full = merge(list(chat(simulator, stream_usage=False).stream(QUESTION)))
    assert full.usage_metadata is None
    assert simulator.stats()["streams_total"] == 1


def test_the_tracker_counts_a_streamed_answers_tokens(simulator: Simulator) -> None:
    tracker = PerformanceTracker()
    llm = PerfChatModel(chat(simulator), tracker=tracker)
    assert len(list(llm.stream(QUESTION))) > 1
    stats = tracker.get_metrics("llm.chat.stream")
    assert (stats["tokens_in"], stats["tokens_out"]) == sim_tokens(simulator)
