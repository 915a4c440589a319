"""PerfChatModel.invoke answers a hit nobody listens to directly: the same answer, counted once.

The direct answer skips LangChain's run managers; these tests put it beside the general
path (forced by attaching a callback handler) on the same cached entry, through the real
ChatOpenAI and the simulator, and check that every switch that changes what LangChain does
sends the call down the general path.
"""

from __future__ import annotations

import re
from typing import Any
from uuid import UUID

import pytest
from langchain_core.caches import InMemoryCache
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.globals import set_llm_cache
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
from langchain_core.rate_limiters import InMemoryRateLimiter
from langchain_core.runnables import RunnableConfig
from langchain_core.tracers.context import collect_runs
from langchain_openai import ChatOpenAI
from rag_perf_plugins.langchain import PerfChatModel, pooled_chat_openai

from rag_perf_plugins.cache import CacheManager
from rag_perf_plugins.cache.control import CacheControl
from rag_perf_plugins.config import PerformanceConfig
from rag_perf_plugins.services.llm import LLMService
from rag_perf_plugins.simulator import Simulator
from rag_perf_plugins.tracking import PerformanceTracker

QUESTION = "What is retrieval-augmented generation?"
RUN_ID = re.compile(r"^lc_run--[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}-0$")


class Recorder(BaseCallbackHandler):
    """Records the run events LangChain fires."""

    def __init__(self) -> None:
        self.events: list[str] = []

    def on_chat_model_start(self, *args: Any, **kwargs: Any) -> None:
        self.events.append("start")

    def on_llm_end(self, *args: Any, run_id: UUID, **kwargs: Any) -> None:
        self.events.append("end")


def chat_requests(sim: Simulator) -> int:
    by_endpoint: dict[str, int] = sim.stats()["requests_by_endpoint"]
    return sum(n for path, n in by_endpoint.items() if path.endswith("/chat/completions"))


def openai(sim: Simulator, **options: Any) -> ChatOpenAI:
    params: dict[str, Any] = {"model": "gpt-4o-mini", "api_key": "sk-test", "temperature": 0.0}
    return pooled_chat_openai(base_url=sim.base_url, **{**params, **options})


@pytest.fixture(params=["memory", "memory+disk", "memory+redis"])
def config(request: pytest.FixtureRequest, tmp_path: Any) -> PerformanceConfig:
    if request.param == "memory+redis":
        return PerformanceConfig(
            cache_dir=str(tmp_path / "cache"),
            redis_url=request.getfixturevalue("redis_url"),
            redis_position="instead-of-disk",
        )
    return PerformanceConfig(
        cache_dir=str(tmp_path / "cache"), cache_disk_enabled=request.param == "memory+disk"
    )


def _same(a: AIMessage, b: AIMessage) -> None:
    assert type(a) is type(b)
    assert a.content == b.content
    assert a.additional_kwargs == b.additional_kwargs
    assert a.response_metadata == b.response_metadata
    assert a.usage_metadata == b.usage_metadata
    assert a.tool_calls == b.tool_calls and a.invalid_tool_calls == b.invalid_tool_calls
    assert RUN_ID.match(a.id or "") and RUN_ID.match(b.id or "") and a.id != b.id


@pytest.mark.parametrize("asynchronous", [False, True])
async def test_a_quiet_hit_is_the_general_paths_answer_counted_the_same(
    simulator: Simulator, config: PerformanceConfig, asynchronous: bool
) -> None:
    tracker = PerformanceTracker()
    llm = PerfChatModel(openai(simulator), config, tracker=tracker)
    messages = [SystemMessage("Answer briefly."), HumanMessage(QUESTION)]

    async def invoke(**kw: Any) -> AIMessage:
        return await llm.ainvoke(messages, **kw) if asynchronous else llm.invoke(messages, **kw)

    first = await invoke()
    recorder = Recorder()
    loud = await invoke(config={"callbacks": [recorder]})
    quiet = await invoke()
    again = await invoke()
    assert chat_requests(simulator) == 1
    assert recorder.events == ["start", "end"]  # the general path, with its run
    _same(quiet, loud)
    _same(again, quiet)
    assert quiet.response_metadata["cache_hit"] is True
    assert first.content == quiet.content
    # A fresh object each time: changing one answer changes no later one.
    quiet.response_metadata["edited"] = True
    assert "edited" not in (await invoke()).response_metadata
    stats = tracker.get_metrics("llm.chat")
    assert stats["count"] == 5 and stats["cache_hits"] == 4 and stats["cache_misses"] == 1
    assert stats["counters"].get("cache.misses") == 1  # a quiet miss counted nothing


def test_the_same_answer_as_the_unwrapped_model(
    simulator: Simulator, config: PerformanceConfig
) -> None:
    plain = openai(simulator).invoke(QUESTION)
    llm = PerfChatModel(openai(simulator), config)
    llm.invoke(QUESTION)
    quiet = llm.invoke(QUESTION)
    assert quiet.content == plain.content
    ours = {k for k in quiet.response_metadata if k not in ("cache_hit", "cache_hit_kind")}
    assert ours <= set(plain.response_metadata)


def test_every_switch_langchain_reads_takes_the_general_path(
    simulator: Simulator, config: PerformanceConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    llm = PerfChatModel(openai(simulator), config, tracker=PerformanceTracker())
    llm.invoke(QUESTION)
    seen: list[Any] = []
    original = LLMService.cached

    def spy(self: LLMService, *args: Any, **kwargs: Any) -> Any:
        seen.append(args)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(LLMService, "cached", spy)
    general: list[dict[str, Any]] = [
        {"config": {"callbacks": [Recorder()]}},
        {"config": {"run_id": UUID(int=7)}},
        {"stop": ["."]},
        {"max_tokens": 64},
    ]
    for kwargs in general:
        llm.invoke(QUESTION, **kwargs)
    assert seen == []
    for field, value in (
        ("verbose", True),
        ("rate_limiter", InMemoryRateLimiter(requests_per_second=1000)),
        ("output_version", "v1"),
    ):
        copy = llm.model_copy(update={field: value})
        copy.invoke(QUESTION)
    assert seen == []
    llm.invoke(QUESTION)
    assert len(seen) == 1


def test_rag_perf_metadata_applies_to_quiet_calls(
    simulator: Simulator, config: PerformanceConfig
) -> None:
    llm = PerfChatModel(openai(simulator), config)
    llm.invoke(QUESTION)
    assert chat_requests(simulator) == 1
    bypass = llm.invoke(QUESTION, config={"metadata": {"rag_perf": {"cache": "bypass"}}})
    assert "cache_hit" not in bypass.response_metadata
    assert chat_requests(simulator) == 2
    tenant_a: RunnableConfig = {"metadata": {"rag_perf": {"cache_scope": "tenant-a"}}}
    tenant_b: RunnableConfig = {"metadata": {"rag_perf": {"cache_scope": "tenant-b"}}}
    llm.invoke(QUESTION, config=tenant_a)
    assert llm.invoke(QUESTION, config=tenant_a).response_metadata["cache_hit"] is True
    assert "cache_hit" not in llm.invoke(QUESTION, config=tenant_b).response_metadata
    assert chat_requests(simulator) == 4
    with pytest.raises(ValueError, match="mode"):
        llm.invoke(QUESTION, config={"metadata": {"rag_perf": {"cache": "sometimes"}}})


def test_a_generation_info_and_llm_output_are_dressed_as_langchain_does(tmp_path: Any) -> None:
    class Fake(GenericFakeChatModel):
        def _generate(self, *args: Any, **kwargs: Any) -> Any:
            result = super()._generate(*args, **kwargs)
            result.generations[0].generation_info = {"finish_reason": "stop", "logprobs": None}
            result.llm_output = {"model_name": "fake-1", "system_fingerprint": "fp"}
            return result

    config = PerformanceConfig(cache_dir=str(tmp_path))
    llm = PerfChatModel(
        Fake(messages=iter([AIMessage("an answer")] * 3)),
        config,
        cache_manager=CacheManager(config),
    )
    first = llm.invoke(QUESTION)
    loud = llm.invoke(QUESTION, config={"callbacks": [Recorder()]})
    quiet = llm.invoke(QUESTION)
    assert quiet.response_metadata == loud.response_metadata
    assert quiet.response_metadata["finish_reason"] == first.response_metadata["finish_reason"]
    assert quiet.response_metadata["model_name"] == "fake-1"


def _unreadable_entry_run(simulator: Simulator, tmp_path: Any, *, loud: bool) -> dict[str, Any]:
    """One call meeting an unreadable cached answer; the cache's and tracker's counts."""
    config = PerformanceConfig(cache_dir=str(tmp_path))
    cache = CacheManager(config)
    tracker = PerformanceTracker()
    llm = PerfChatModel(openai(simulator), config, cache_manager=cache, tracker=tracker)
    request = llm._request([HumanMessage(QUESTION)], None)
    key = llm.service._key(request, False, CacheControl())
    assert key is not None
    # A result entry of the right shape whose answer LangChain cannot rebuild.
    unreadable = {"kind": "result", "data": {"generations": "?"}, "usage": [1, 2]}
    cache.set(key, unreadable, namespace="llm")
    answer = llm.invoke(QUESTION, config={"callbacks": [Recorder()]} if loud else None)
    assert "cache_hit" not in answer.response_metadata  # the provider answered
    stats = cache.get_stats()
    metrics = tracker.get_metrics("llm.chat")
    cache.close()
    return {
        "hits": stats["hits"],
        "misses": stats["misses"],
        "errors": metrics["counters"].get("cache.errors"),
        "llm": (metrics["count"], metrics["cache_hits"], metrics["cache_misses"]),
    }


def test_an_unreadable_entry_is_counted_as_the_general_path_counts_it(
    simulator: Simulator, tmp_path: Any
) -> None:
    loud = _unreadable_entry_run(simulator, tmp_path / "loud", loud=True)
    quiet = _unreadable_entry_run(simulator, tmp_path / "quiet", loud=False)
    assert loud["errors"] and loud["llm"] == (1, 0, 1)
    assert quiet == loud  # the quiet try before the general path counts no cache hit


def test_langchains_own_cache_switched_on_takes_the_general_path(
    simulator: Simulator, config: PerformanceConfig
) -> None:
    tracker = PerformanceTracker()
    llm = PerfChatModel(openai(simulator), config, tracker=tracker)
    first = llm.invoke(QUESTION)
    assert llm.invoke(QUESTION).response_metadata["cache_hit"] is True
    llm.cache = True  # LangChain's cache asked for after construction, none configured
    with pytest.raises(ValueError, match="no cache found"):
        llm.invoke(QUESTION)  # as BaseChatModel raises, hit or not
    set_llm_cache(InMemoryCache())
    try:
        llm.invoke(QUESTION)  # our hit, which LangChain's cache stores
        calls = tracker.get_metrics("llm.chat")["count"]
        seen = llm.invoke(QUESTION)
        assert seen.content == first.content
        assert tracker.get_metrics("llm.chat")["count"] == calls  # LangChain's cache answered
    finally:
        set_llm_cache(None)


def test_a_configure_hook_outside_the_call_takes_the_general_path(
    simulator: Simulator, config: PerformanceConfig
) -> None:
    llm = PerfChatModel(openai(simulator), config)
    llm.invoke(QUESTION)
    # collect_runs registers its handler through a configure hook, as LangSmith's
    # tracing_context / LANGSMITH_TRACING do: CallbackManager.configure finds it.
    with collect_runs() as collector:
        hit = llm.invoke(QUESTION)
    assert hit.response_metadata["cache_hit"] is True
    assert len(collector.traced_runs) == 1  # the run was traced: the general path ran
    assert hit.id == f"lc_run--{collector.traced_runs[0].id}-0"
