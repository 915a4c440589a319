"""Every cache hit is a new object: two hits differ in identity and ids, a mutated hit
never changes the next one (LangChain and LlamaIndex; chat answers and vectors).

The hit paths keep decoded vectors in the memory tier and skip per-call work; these tests
pin that nothing a caller does to what it got reaches the cache. Real parts: the
simulator behind the real ChatOpenAI / OpenAIEmbeddings / LlamaIndex OpenAI classes, real
cache directories.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from langchain_core.language_models import GenericFakeChatModel
from langchain_core.messages import AIMessage
from llama_index.core.llms import ChatMessage
from rag_perf_plugins.langchain import (
    PerfChatModel,
    PerfEmbeddings,
    pooled_chat_openai,
    pooled_openai_embeddings,
)
from rag_perf_plugins.llama_index import PerfEmbedding, pooled_openai_llm, wrap_llm

from rag_perf_plugins.config import PerformanceConfig
from rag_perf_plugins.simulator import Simulator
from rag_perf_plugins.tracking import PerformanceTracker
from tests.integrations.llama_index.li_models import CountingEmbedding

QUESTION = "What is retrieval-augmented generation?"


def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@pytest.fixture
def config(cache_dir: Path) -> PerformanceConfig:
    return PerformanceConfig(cache_dir=str(cache_dir), enable_metrics=False)


# --- LangChain chat -----------------------------------------------------------------------
def test_lc_chat_hits_get_their_own_ids_and_objects(
    simulator: Simulator, config: PerformanceConfig
) -> None:
    inner = pooled_chat_openai(
        model="gpt-4o-mini", base_url=simulator.base_url, api_key="sk-test", temperature=0.0
    )
    llm = PerfChatModel(inner, config)
    llm.invoke(QUESTION)
    first, second = llm.invoke(QUESTION), llm.invoke(QUESTION)
    assert first.response_metadata["cache_hit"] is True
    assert first.id and second.id and first.id != second.id
    assert first is not second
    assert first.response_metadata is not second.response_metadata
    first.response_metadata["edited"] = True
    first.additional_kwargs["edited"] = True
    third = llm.invoke(QUESTION)
    assert "edited" not in third.response_metadata
    assert "edited" not in third.additional_kwargs
    assert third.content == second.content


def test_lc_chat_mutated_tool_calls_do_not_reach_the_next_hit(
    simulator: Simulator, config: PerformanceConfig
) -> None:
    inner = pooled_chat_openai(
        model="gpt-4o-mini", base_url=simulator.base_url, api_key="sk-test", temperature=0.0
    )
    llm = PerfChatModel(inner, config).bind_tools([add], tool_choice="any")
    llm.invoke("What is 2 + 3?")
    hit = llm.invoke("What is 2 + 3?")
    assert isinstance(hit, AIMessage) and hit.tool_calls
    expected = [dict(call, args=dict(call["args"])) for call in hit.tool_calls]
    hit.tool_calls[0]["args"]["a"] = 999
    hit.tool_calls.append({"name": "add", "args": {}, "id": "x", "type": "tool_call"})
    again = llm.invoke("What is 2 + 3?")
    assert isinstance(again, AIMessage)
    assert [dict(call, args=dict(call["args"])) for call in again.tool_calls] == expected


async def test_lc_chat_async_hits_are_fresh(
    simulator: Simulator, config: PerformanceConfig
) -> None:
    inner = pooled_chat_openai(
        model="gpt-4o-mini", base_url=simulator.base_url, api_key="sk-test", temperature=0.0
    )
    llm = PerfChatModel(inner, config)
    await llm.ainvoke(QUESTION)
    first = await llm.ainvoke(QUESTION)
    first.response_metadata["edited"] = True
    second = await llm.ainvoke(QUESTION)
    assert first.id != second.id
    assert "edited" not in second.response_metadata


def test_lc_chat_a_stored_message_id_is_not_replayed(config: PerformanceConfig) -> None:
    # A model that sets its own message id (as some providers do): the hit is a new message
    # of its run, with LangChain's id for that run, not the earlier answer's.
    class Fixed(GenericFakeChatModel):
        def _generate(self, *args: Any, **kwargs: Any) -> Any:
            self.messages = iter([AIMessage("forty-two", id="answer-1")])
            return super()._generate(*args, **kwargs)

    llm = PerfChatModel(Fixed(messages=iter([])), config)
    miss = llm.invoke(QUESTION)
    hits = [llm.invoke(QUESTION), llm.invoke(QUESTION)]
    assert miss.id == "answer-1"
    assert all(h.response_metadata["cache_hit"] is True for h in hits)
    assert hits[0].id != hits[1].id and "answer-1" not in (hits[0].id, hits[1].id)


# --- LangChain embeddings -----------------------------------------------------------------
def test_lc_embedding_hits_are_new_lists(simulator: Simulator, cache_dir: Path) -> None:
    inner = pooled_openai_embeddings(
        model="text-embedding-3-small", base_url=simulator.base_url, api_key="sk-test"
    )
    config = PerformanceConfig(cache_dir=str(cache_dir), enable_metrics=False)
    embeddings = PerfEmbeddings(inner, config)
    cold = embeddings.embed_query(QUESTION)
    warm = embeddings.embed_query(QUESTION)
    assert warm == cold  # float32 cold == warm, through the memory tier's kept copy
    warm[0] = 123.0
    warm.append(1.0)
    assert embeddings.embed_query(QUESTION) == cold
    docs = embeddings.embed_documents(["a", "b", "a"])
    assert docs[0] == docs[2] and docs[0] is not docs[2]
    docs[0][0] = 7.0
    assert embeddings.embed_documents(["a"])[0] == docs[2]


async def test_lc_async_embedding_hits_are_new_lists(simulator: Simulator, cache_dir: Path) -> None:
    inner = pooled_openai_embeddings(
        model="text-embedding-3-small", base_url=simulator.base_url, api_key="sk-test"
    )
    config = PerformanceConfig(cache_dir=str(cache_dir), enable_metrics=False)
    embeddings = PerfEmbeddings(inner, config)
    cold = await embeddings.aembed_query(QUESTION)
    warm = await embeddings.aembed_query(QUESTION)
    warm[0] = 123.0
    assert await embeddings.aembed_query(QUESTION) == cold


def test_lc_embedding_hit_is_one_tracker_record_with_no_provider_call(
    simulator: Simulator, cache_dir: Path
) -> None:
    inner = pooled_openai_embeddings(
        model="text-embedding-3-small", base_url=simulator.base_url, api_key="sk-test"
    )
    config = PerformanceConfig(cache_dir=str(cache_dir), enable_metrics=False)
    tracker = PerformanceTracker()
    embeddings = PerfEmbeddings(inner, config, batching=False, tracker=tracker)
    embeddings.embed_query(QUESTION)
    calls = embeddings.service.provider_calls
    embeddings.embed_query(QUESTION)
    assert embeddings.service.provider_calls == calls
    stats = tracker.get_metrics("embedding.query")
    assert stats["count"] == 2 and stats["cache_hits"] == 1


# --- LlamaIndex ---------------------------------------------------------------------------
def test_li_chat_hits_are_fresh(simulator: Simulator, config: PerformanceConfig) -> None:
    llm = wrap_llm(
        pooled_openai_llm(api_base=simulator.base_url, api_key="sk-test", config=config),
        config=config,
    )
    messages = [ChatMessage(role="user", content=QUESTION)]
    llm.chat(messages)
    first, second = llm.chat(messages), llm.chat(messages)
    assert first is not second and first.message is not second.message
    first.message.additional_kwargs["edited"] = True
    first.message.content = "changed"
    if isinstance(first.raw, dict):
        first.raw["edited"] = True
    third = llm.chat(messages)
    assert "edited" not in third.message.additional_kwargs
    assert third.message.content == second.message.content
    assert not (isinstance(third.raw, dict) and "edited" in third.raw)


def test_li_embedding_hits_are_new_lists(cache_dir: Path) -> None:
    config = PerformanceConfig(cache_dir=str(cache_dir), enable_metrics=False)
    model = PerfEmbedding(CountingEmbedding(model_name="counting-8", dim=8), config)
    cold = model.get_query_embedding(QUESTION)
    warm = model.get_query_embedding(QUESTION)
    assert warm == cold
    warm[0] = 123.0
    assert model.get_query_embedding(QUESTION) == cold
    batch = model.get_text_embedding_batch(["x", "y", "x"])
    batch[0][0] = 5.0
    assert model.get_text_embedding_batch(["x"])[0] == batch[2]
    assert batch[0] is not batch[2]
