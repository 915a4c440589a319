"""The semantic cache behind wrap_llm: LlamaIndex's real OpenAI LLM and OpenAIEmbedding.

Both talk to the simulator over HTTP; the query vectors go through PerfEmbedding's
EmbeddingService (cached, batched). Off by default, the wrapper answers exactly as the
inner model does.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from llama_index.core.llms import ChatMessage
from rag_perf_plugins.llama_index import (
    PerfEmbedding,
    pooled_openai_embedding,
    pooled_openai_llm,
    wrap_llm,
)

from rag_perf_plugins.cache import CacheManager, cache_scope
from rag_perf_plugins.cache.semantic import SemanticCache
from rag_perf_plugins.config import PerformanceConfig
from rag_perf_plugins.simulator import Simulator

ASKED = "How do I reset my account password?"
PARAPHRASE = "how do I reset my account password, please?"


def chat_requests(sim: Simulator) -> int:
    by_endpoint: dict[str, int] = sim.stats()["requests_by_endpoint"]
    return sum(n for path, n in by_endpoint.items() if path.endswith("/chat/completions"))


def _llm(sim: Simulator, config: PerformanceConfig, **options: Any) -> Any:
    manager = CacheManager(config)
    embedding = PerfEmbedding(
        pooled_openai_embedding(
            api_base=sim.base_url, api_key="sk-test", model="text-embedding-3-small"
        ),
        config,
    )
    semantic = SemanticCache(embedding.service, config=config, cache=manager, model="sim-3-small")
    inner = pooled_openai_llm(
        api_base=sim.base_url, api_key="sk-test", model="gpt-4o-mini", temperature=0.0, **options
    )
    return wrap_llm(inner, config, cache=manager, semantic=semantic)


@pytest.fixture
def config(tmp_path: Path) -> PerformanceConfig:
    return PerformanceConfig(
        cache_dir=str(tmp_path / "cache"),
        cache_shards=1,
        semantic_cache=True,
        semantic_threshold=0.8,
        version_check_interval=0.0,
    )


def test_chat_and_complete_mark_semantic_hits(
    simulator: Simulator, config: PerformanceConfig
) -> None:
    llm = _llm(simulator, config)
    first = llm.chat([ChatMessage(role="user", content=ASKED)])
    assert first.additional_kwargs["cache_hit"] is False
    assert first.additional_kwargs["cache_hit_kind"] is None
    second = llm.chat([ChatMessage(role="user", content=PARAPHRASE)])
    extra = second.additional_kwargs
    assert extra["cache_hit"] is True and extra["cache_hit_kind"] == "semantic"
    assert extra["cache_matched_prompt"] == ASKED
    assert 0.8 <= extra["cache_similarity"] <= 1.0
    assert second.message.content == first.message.content
    exact = llm.chat([ChatMessage(role="user", content=ASKED)])
    assert exact.additional_kwargs["cache_hit_kind"] == "exact"
    assert chat_requests(simulator) == 1
    # complete() is its own partition (another call kind), with the same marks
    done = llm.complete(ASKED)
    again = llm.complete(PARAPHRASE)
    assert again.additional_kwargs["cache_hit_kind"] == "semantic"
    assert again.text == done.text
    assert chat_requests(simulator) == 2


def test_per_call_kwarg_tenants_and_guards(simulator: Simulator, tmp_path: Path) -> None:
    config = PerformanceConfig(
        cache_dir=str(tmp_path / "cache"), cache_shards=1, semantic_threshold=0.8
    )
    llm = _llm(simulator, config)
    on = {"rag_perf_cache": {"semantic": True}}
    llm.chat([ChatMessage(role="user", content=ASKED)], **on)
    off = llm.chat([ChatMessage(role="user", content=PARAPHRASE)])  # not opted in
    assert off.additional_kwargs["cache_hit"] is False
    hit = llm.chat(
        [ChatMessage(role="user", content="please, how do I reset my account password?")], **on
    )
    assert hit.additional_kwargs["cache_hit_kind"] == "semantic"
    negated = llm.chat(
        [ChatMessage(role="user", content="How do I not reset my account password?")], **on
    )
    assert negated.additional_kwargs["cache_hit"] is False  # the negation guard
    with cache_scope("tenant-b"):
        other = llm.chat([ChatMessage(role="user", content=ASKED)], **on)
        assert other.additional_kwargs["cache_hit"] is False
    assert chat_requests(simulator) == 4


def test_async_semantic_hit(simulator: Simulator, config: PerformanceConfig) -> None:
    llm = _llm(simulator, config)

    async def run() -> tuple[Any, Any]:
        first = await llm.achat([ChatMessage(role="user", content=ASKED)])
        return first, await llm.achat([ChatMessage(role="user", content=PARAPHRASE)])

    first, second = asyncio.run(run())
    assert second.additional_kwargs["cache_hit_kind"] == "semantic"
    assert second.message.content == first.message.content
    assert chat_requests(simulator) == 1


def test_off_by_default_the_wrapper_answers_as_the_inner_model(
    simulator: Simulator, tmp_path: Path
) -> None:
    config = PerformanceConfig(cache_dir=str(tmp_path / "cache"), cache_shards=1)
    llm = _llm(simulator, config)
    inner = pooled_openai_llm(
        api_base=simulator.base_url, api_key="sk-test", model="gpt-4o-mini", temperature=0.0
    )
    for text in (ASKED, PARAPHRASE):
        wrapped = llm.chat([ChatMessage(role="user", content=text)])
        plain = inner.chat([ChatMessage(role="user", content=text)])
        assert wrapped.message.content == plain.message.content


def test_scoped_and_unscoped_calls_never_share_exact_entries_on_any_path(
    simulator: Simulator, tmp_path: Path
) -> None:
    """cache_scope (context or rag_perf_cache) joins the exact key of chat, achat, streams."""
    config = PerformanceConfig(cache_dir=str(tmp_path / "cache"), cache_shards=1)
    llm = _llm(simulator, config)
    scoped = {"rag_perf_cache": {"scope": "tenant-a"}}

    def chat(text: str, **kw: Any) -> Any:
        return llm.chat([ChatMessage(role="user", content=text)], **kw).additional_kwargs

    def stream(text: str, **kw: Any) -> Any:
        gen = llm.stream_chat([ChatMessage(role="user", content=text)], **kw)
        return [r.additional_kwargs.get("cache_hit") for r in gen][-1]

    async def astream(text: str, **kw: Any) -> Any:
        gen = await llm.astream_chat([ChatMessage(role="user", content=text)], **kw)
        return [r.additional_kwargs.get("cache_hit") async for r in gen][-1]

    async def achat(text: str, **kw: Any) -> Any:
        answer = await llm.achat([ChatMessage(role="user", content=text)], **kw)
        return answer.additional_kwargs["cache_hit"]

    assert chat("one")["cache_hit"] is False
    assert chat("one", **scoped)["cache_hit"] is False
    with cache_scope("tenant-a"):
        assert chat("one")["cache_hit"] is True  # tenant-a's own entry
    assert chat("one")["cache_hit"] is True
    assert stream("two") is not True
    assert stream("two", **scoped) is not True
    assert stream("two", **scoped) is True
    assert asyncio.run(achat("three", **scoped)) is False
    assert asyncio.run(achat("three")) is False
    assert asyncio.run(astream("four")) is not True
    with cache_scope("tenant-a"):
        assert asyncio.run(astream("four")) is not True
        assert asyncio.run(astream("four")) is True
    assert chat_requests(simulator) == 2 + 2 + 2 + 2


def test_a_misspelt_index_argument_names_its_close_match() -> None:
    from llama_index.core.vector_stores import SimpleVectorStore
    from rag_perf_plugins.llama_index import VectorStoreSemanticIndex

    with pytest.raises(TypeError, match=r"'fetches'.*did you mean 'fetch'"):
        VectorStoreSemanticIndex(SimpleVectorStore(), fetches=4)  # type: ignore[call-arg]
