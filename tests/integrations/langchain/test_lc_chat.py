"""PerfChatModel over the real ChatOpenAI and the simulator: hits, streams, tools, must-miss."""

from __future__ import annotations

import asyncio
from typing import Any, Literal
from uuid import UUID

import pytest
from langchain_core.caches import InMemoryCache
from langchain_core.callbacks import BaseCallbackHandler, UsageMetadataCallbackHandler
from langchain_core.globals import set_llm_cache
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage
from langchain_openai import ChatOpenAI
from pydantic import BaseModel
from rag_perf_plugins.langchain import PerfChatModel, pooled_chat_openai

from rag_perf_plugins.config import PerformanceConfig
from rag_perf_plugins.simulator import Simulator
from rag_perf_plugins.tracking import PerformanceTracker

QUESTION = "What is retrieval-augmented generation?"


def chat_requests(sim: Simulator) -> int:
    by_endpoint: dict[str, int] = sim.stats()["requests_by_endpoint"]
    return sum(n for path, n in by_endpoint.items() if path.endswith("/chat/completions"))


def openai(sim: Simulator, **options: Any) -> ChatOpenAI:
    base_url = options.pop("base_url", sim.base_url)
    params: dict[str, Any] = {
        "model": "gpt-4o-mini",
        "api_key": "sk-test",
        "temperature": 0.0,
        "stream_usage": True,
        **options,
    }
    return pooled_chat_openai(base_url=base_url, **params)


@pytest.fixture
def tracker() -> PerformanceTracker:
    return PerformanceTracker()


@pytest.fixture
def llm(simulator: Simulator, tracker: PerformanceTracker) -> PerfChatModel:
    return PerfChatModel(openai(simulator), tracker=tracker)


class TokenCounter(BaseCallbackHandler):
    """Counts on_llm_new_token per run."""

    def __init__(self) -> None:
        self.tokens: list[Any] = []

    def on_llm_new_token(self, token: Any, *, run_id: UUID, **kwargs: Any) -> None:
        self.tokens.append(token)


def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def multiply(a: int, b: int) -> int:
    """Multiply two integers."""
    return a * b


class Answer(BaseModel):
    """An answer with a confidence."""

    text: str
    confidence: int


# --- hits ---------------------------------------------------------------------------------
def test_second_invoke_is_a_marked_hit_with_zero_usage(
    simulator: Simulator, llm: PerfChatModel, tracker: PerformanceTracker
) -> None:
    usage = UsageMetadataCallbackHandler()
    first = llm.invoke(QUESTION, config={"callbacks": [usage]})
    second = llm.invoke(QUESTION, config={"callbacks": [usage]})
    assert chat_requests(simulator) == 1
    assert second.content == first.content
    assert "cache_hit" not in first.response_metadata
    assert second.response_metadata["cache_hit"] is True
    assert second.usage_metadata == {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0}
    assert first.usage_metadata is not None and first.usage_metadata["total_tokens"] > 0
    # LangChain's own usage callback counted the provider's tokens once.
    assert (
        usage.usage_metadata["gpt-4o-mini"]["total_tokens"]
        == (first.usage_metadata["total_tokens"])
    )
    stats = tracker.get_metrics("llm.chat")
    assert stats["cache_hits"] == 1
    assert stats["tokens_saved"] == first.usage_metadata["total_tokens"]


async def test_ainvoke_shares_entries_with_invoke(simulator: Simulator, llm: PerfChatModel) -> None:
    first = llm.invoke(QUESTION)
    second = await llm.ainvoke(QUESTION)
    assert second.content == first.content and second.response_metadata["cache_hit"] is True
    assert chat_requests(simulator) == 1


def test_same_answer_as_unwrapped(simulator: Simulator, llm: PerfChatModel) -> None:
    plain = openai(simulator).invoke(QUESTION)
    assert llm.invoke(QUESTION).content == plain.content
    assert llm.invoke(QUESTION).content == plain.content


def test_global_llm_cache_is_not_used(simulator: Simulator, llm: PerfChatModel) -> None:
    global_cache = InMemoryCache()
    set_llm_cache(global_cache)
    try:
        llm.invoke(QUESTION)
        llm.invoke(QUESTION)
        assert global_cache._cache == {}  # never cached twice
        assert llm.cache is False and llm.inner.cache is False
    finally:
        set_llm_cache(None)
    assert chat_requests(simulator) == 1


def test_identical_concurrent_calls_coalesce(simulator: Simulator, llm: PerfChatModel) -> None:
    answers = llm.batch([QUESTION] * 6, config={"max_concurrency": 6})
    assert len({a.content for a in answers}) == 1
    assert chat_requests(simulator) == 1


async def test_identical_concurrent_ainvokes_coalesce(
    simulator: Simulator, llm: PerfChatModel, tracker: PerformanceTracker
) -> None:
    answers = await asyncio.gather(*(llm.ainvoke(QUESTION) for _ in range(6)))
    assert len({a.content for a in answers}) == 1
    assert chat_requests(simulator) == 1
    stats = tracker.get_metrics("llm.chat")
    assert stats["count"] == 6
    assert stats["counters"].get("coalesced", 0) + stats["cache_hits"] == 5


def test_skip_sampled_calls(simulator: Simulator, tracker: PerformanceTracker) -> None:
    config = PerformanceConfig(cache_skip_sampled=True)
    sampled = PerfChatModel(openai(simulator, temperature=0.7), config, tracker=tracker)
    seeded = PerfChatModel(openai(simulator, temperature=0.7, seed=5), config, tracker=tracker)
    for _ in range(2):
        sampled.invoke(QUESTION)
    assert chat_requests(simulator) == 2
    for _ in range(2):
        seeded.invoke(QUESTION)
    assert chat_requests(simulator) == 3


def test_metadata_control_bypasses(simulator: Simulator, llm: PerfChatModel) -> None:
    llm.invoke(QUESTION)
    bypassed = llm.invoke(QUESTION, config={"metadata": {"rag_perf": {"cache": "bypass"}}})
    assert "cache_hit" not in bypassed.response_metadata
    assert chat_requests(simulator) == 2


# --- streams ------------------------------------------------------------------------------
def test_stream_is_recorded_and_replayed_with_callbacks(
    simulator: Simulator, llm: PerfChatModel, tracker: PerformanceTracker
) -> None:
    live_tokens, replay_tokens = TokenCounter(), TokenCounter()
    live = list(llm.stream(QUESTION, config={"callbacks": [live_tokens]}))
    replay = list(llm.stream(QUESTION, config={"callbacks": [replay_tokens]}))
    assert chat_requests(simulator) == 1
    assert [c.content for c in replay] == [c.content for c in live]
    assert len(live) > 3
    assert replay_tokens.tokens == live_tokens.tokens  # on_llm_new_token fired per chunk
    full_live, full_replay = _merge(live), _merge(replay)
    assert full_replay.response_metadata["cache_hit"] is True
    assert full_replay.response_metadata["finish_reason"] == "stop"
    assert full_live.usage_metadata is not None and full_live.usage_metadata["input_tokens"] > 0
    assert full_replay.usage_metadata == {
        "input_tokens": 0,
        "output_tokens": 0,
        "total_tokens": 0,
    }
    stats = tracker.get_metrics("llm.chat.stream")
    assert stats["count"] == 2 and stats["cache_hits"] == 1
    assert stats["tokens_saved"] == full_live.usage_metadata["total_tokens"]
    assert tracker.histograms("llm.chat.stream")["ttft"].count == 2
    # the entry is where test_stream_cut_off_midway_is_not_stored looks for it
    key = llm.service.cache_key(_request(llm), stream=True)
    assert llm.service.cache is not None and key is not None
    assert llm.service.cache.get(key, namespace="llm")["kind"] == "stream"


async def test_astream_replays_chunk_by_chunk(simulator: Simulator, llm: PerfChatModel) -> None:
    live = [c async for c in llm.astream(QUESTION)]
    replay = [c async for c in llm.astream(QUESTION)]
    assert chat_requests(simulator) == 1
    assert [c.content for c in replay] == [c.content for c in live]
    assert all(c.response_metadata.get("cache_hit") for c in replay if c.content)


async def test_stream_events_fire_on_replay(simulator: Simulator, llm: PerfChatModel) -> None:
    async def stream_events() -> list[str]:
        return [
            e["data"]["chunk"].content
            async for e in llm.astream_events(QUESTION, version="v2")
            if e["event"] == "on_chat_model_stream"
        ]

    live, replay = await stream_events(), await stream_events()
    assert replay == live and len(live) > 3
    assert chat_requests(simulator) == 1


def test_abandoned_stream_is_not_stored(simulator: Simulator, llm: PerfChatModel) -> None:
    for chunk in llm.stream(QUESTION):
        assert chunk.content is not None
        break
    complete = list(llm.stream(QUESTION))
    assert "cache_hit" not in _merge(complete).response_metadata
    assert chat_requests(simulator) == 2
    assert _merge(list(llm.stream(QUESTION))).response_metadata["cache_hit"] is True
    assert chat_requests(simulator) == 2


def test_stream_cut_off_midway_is_not_stored(
    simulator_factory: Any, tracker: PerformanceTracker
) -> None:
    sim = simulator_factory(truncate_rate=1.0)
    llm = PerfChatModel(openai(sim), tracker=tracker, retry=_no_retry())
    received: list[Any] = []
    with pytest.raises(Exception):  # noqa: B017 - the transport's error, whatever its class
        for chunk in llm.stream(QUESTION):
            received.append(chunk)
    assert received  # it failed midway, after chunks were passed on
    assert tracker.get_metrics("llm.chat.stream")["errors"] == 1
    assert llm.service.cache is not None
    key = llm.service.cache_key(_request(llm), stream=True)
    assert key is not None and llm.service.cache.get(key, namespace="llm") is None


# --- tools and structured output ----------------------------------------------------------
def test_tool_calls_match_unwrapped_and_hit(simulator: Simulator, llm: PerfChatModel) -> None:
    question = "What is 2 + 3?"
    plain = openai(simulator).bind_tools([add], tool_choice="any").invoke(question)
    wrapped = llm.bind_tools([add], tool_choice="any")
    first, second = wrapped.invoke(question), wrapped.invoke(question)
    assert isinstance(first, AIMessage) and isinstance(second, AIMessage)
    assert [(c["name"], c["args"]) for c in first.tool_calls] == [
        (c["name"], c["args"]) for c in plain.tool_calls
    ]
    assert second.tool_calls == first.tool_calls and second.response_metadata["cache_hit"]
    assert chat_requests(simulator) == 2  # the unwrapped call and one miss


def test_streamed_tool_call_replays(simulator: Simulator, llm: PerfChatModel) -> None:
    wrapped = llm.bind_tools([add], tool_choice="any")
    live = _merge(list(wrapped.stream("What is 2 + 3?")))
    replay = _merge(list(wrapped.stream("What is 2 + 3?")))
    assert live.tool_calls and replay.tool_calls == live.tool_calls
    assert chat_requests(simulator) == 1


@pytest.mark.parametrize("method", ["json_schema", "function_calling"])
def test_structured_output(
    simulator: Simulator, llm: PerfChatModel, method: Literal["json_schema", "function_calling"]
) -> None:
    plain = openai(simulator).with_structured_output(Answer, method=method).invoke(QUESTION)
    wrapped = llm.with_structured_output(Answer, method=method)
    assert wrapped.invoke(QUESTION) == plain
    assert wrapped.invoke(QUESTION) == plain
    assert chat_requests(simulator) == 2


def test_structured_output_include_raw(simulator: Simulator, llm: PerfChatModel) -> None:
    wrapped = llm.with_structured_output(Answer, include_raw=True)
    first, second = wrapped.invoke(QUESTION), wrapped.invoke(QUESTION)
    assert isinstance(first, dict) and isinstance(second, dict)
    assert first["parsed"] == second["parsed"]
    assert second["raw"].response_metadata["cache_hit"] is True
    assert chat_requests(simulator) == 1


# --- must-miss ----------------------------------------------------------------------------
def _variants(sim: Simulator, tracker: PerformanceTracker) -> dict[str, Any]:
    base = PerfChatModel(openai(sim), tracker=tracker)
    return {
        "model": PerfChatModel(openai(sim, model="gpt-4o"), tracker=tracker),
        "temperature": PerfChatModel(openai(sim, temperature=0.5), tracker=tracker),
        "temperature per call": base.bind(temperature=0.7),
        "max tokens": PerfChatModel(openai(sim, max_tokens=7), tracker=tracker),
        "tool list": base.bind_tools([add]),
        "other tool list": base.bind_tools([add, multiply]),
        "tool choice": base.bind_tools([add], tool_choice="required"),
        "response format": base.bind(response_format={"type": "json_object"}),
        "seed": base.bind(seed=11),
        "endpoint": PerfChatModel(
            openai(sim, base_url=sim.base_url.replace("127.0.0.1", "localhost")),
            tracker=tracker,
        ),
    }


def test_must_miss(simulator: Simulator, tracker: PerformanceTracker) -> None:
    base = PerfChatModel(openai(simulator), tracker=tracker)
    base.invoke(QUESTION)
    variants = _variants(simulator, tracker)
    for name, variant in variants.items():
        before = chat_requests(simulator)
        answer = variant.invoke(QUESTION)
        assert "cache_hit" not in answer.response_metadata, name
        assert chat_requests(simulator) == before + 1, name
    # each variant, asked again, hits its own entry
    for name, variant in variants.items():
        assert variant.invoke(QUESTION).response_metadata.get("cache_hit") is True, name


def test_timeout_and_retries_do_not_change_the_key(
    simulator: Simulator, tracker: PerformanceTracker
) -> None:
    PerfChatModel(openai(simulator, timeout=60), tracker=tracker).invoke(QUESTION)
    other = PerfChatModel(openai(simulator, timeout=5), tracker=tracker)
    assert other.invoke(QUESTION).response_metadata["cache_hit"] is True
    assert chat_requests(simulator) == 1


def test_history_ids_do_not_change_the_key(simulator: Simulator, llm: PerfChatModel) -> None:
    def history(run: str) -> list[Any]:
        return [
            HumanMessage("hi"),
            AIMessage("hello", id=f"lc_run-{run}", response_metadata={"run": run}),
            HumanMessage(QUESTION),
        ]

    llm.invoke(history("a"))
    assert llm.invoke(history("b")).response_metadata["cache_hit"] is True
    assert chat_requests(simulator) == 1


# --- delegation and arguments -------------------------------------------------------------
def test_delegates_identity_to_inner(llm: PerfChatModel) -> None:
    assert llm._llm_type == llm.inner._llm_type == "openai-chat"
    assert llm._get_ls_params()["ls_provider"] == "openai"
    assert llm._get_ls_params(model="x")["ls_model_name"] == "x"
    assert llm._identifying_params == llm.inner._identifying_params
    assert llm.to_json() == llm.inner.to_json()


def test_bad_arguments(simulator: Simulator) -> None:
    with pytest.raises(ValueError, match="does its own caching"):
        PerfChatModel(openai(simulator), cache=True)
    with pytest.raises(TypeError, match="BaseChatModel"):
        PerfChatModel("gpt-4o-mini")  # type: ignore[arg-type]


# --- helpers ------------------------------------------------------------------------------
def _merge(chunks: list[Any]) -> AIMessageChunk:
    full: AIMessageChunk = chunks[0]
    for chunk in chunks[1:]:
        full = full + chunk
    return full


def _no_retry() -> Any:
    from rag_perf_plugins.admission import RetryPolicy
    from rag_perf_plugins.config import PerformanceConfig

    return RetryPolicy(PerformanceConfig(retry_max_attempts=1))


def _request(llm: PerfChatModel) -> Any:
    from rag_perf_plugins.langchain.chat_models import request_of

    inner: BaseChatModel = llm.inner
    return request_of(inner, [HumanMessage(QUESTION)], None, stream_options=None)
