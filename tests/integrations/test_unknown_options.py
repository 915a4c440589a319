"""Every wrapper constructor refuses a misspelt option, naming it and the close matches."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from langchain_core.embeddings import DeterministicFakeEmbedding
from langchain_core.language_models import FakeListChatModel
from langchain_core.vectorstores import InMemoryVectorStore
from llama_index.core.embeddings import MockEmbedding
from llama_index.core.llms import MockLLM
from llama_index.core.vector_stores import SimpleVectorStore
from rag_perf_plugins.llama_index.instrumentation import PerfEventHandler, PerfSpanHandler

from rag_perf_plugins import (
    AsyncConnectionPool,
    AsyncRAGEngine,
    BatchProcessor,
    CacheManager,
    ConnectionPool,
    EmbeddingService,
    LLMService,
    PerformanceConfig,
    PerformanceTracker,
    RAGEngine,
)
from rag_perf_plugins import langchain as lc
from rag_perf_plugins import llama_index as li
from rag_perf_plugins.services.search import SearchCache


def _bad(name: str, value: Any) -> dict[str, Any]:
    """A keyword the constructor does not take (mypy would catch it written out)."""
    return {name: value}


def _config(tmp_path: Path) -> PerformanceConfig:
    return PerformanceConfig(cache_dir=str(tmp_path / "c"), enable_metrics=False)


async def _aretrieve(query: str, top_k: int) -> list[str]:
    return []


async def _agenerate(query: str, passages: Any) -> str:
    return ""


# (what, a constructor call with a misspelt keyword, the keyword, a name it must suggest)
CASES: list[tuple[str, Callable[[Path], object], str, str]] = [
    # LangChain
    (
        "PerfChatModel",
        lambda t: lc.PerfChatModel(
            FakeListChatModel(responses=["x"]), _config(t), **_bad("trackr", None)
        ),
        "trackr",
        "tracker",
    ),
    (
        "PerfChatModel (a BaseChatModel field misspelt)",
        lambda t: lc.PerfChatModel(
            FakeListChatModel(responses=["x"]), _config(t), **_bad("tagz", ["a"])
        ),
        "tagz",
        "tags",
    ),
    (
        "PerfEmbeddings",
        lambda t: lc.PerfEmbeddings(
            DeterministicFakeEmbedding(size=4), _config(t), **_bad("batchng", False)
        ),
        "batchng",
        "batching",
    ),
    (
        "PerfVectorStore (LangChain)",
        lambda t: lc.PerfVectorStore(
            InMemoryVectorStore(DeterministicFakeEmbedding(size=4)),
            _config(t),
            **_bad("nmae", "kb"),
        ),
        "nmae",
        "name",
    ),
    (
        "PerfLLMCache",
        lambda t: lc.PerfLLMCache(config=_config(t), **_bad("tll", 5.0)),
        "tll",
        "ttl",
    ),
    (
        "PerfRateLimiter",
        lambda t: lc.PerfRateLimiter(requests_per_second=5, **_bad("burst_second", 1.0)),
        "burst_second",
        "burst_seconds",
    ),
    (
        "PerfCallbackHandler",
        lambda t: lc.PerfCallbackHandler(**_bad("trackr", None)),
        "trackr",
        "tracker",
    ),
    # LlamaIndex
    (
        "PerfEmbedding",
        lambda t: li.PerfEmbedding(
            MockEmbedding(embed_dim=4), _config(t), **_bad("symetric", True)
        ),
        "symetric",
        "symmetric",
    ),
    ("PerfLLM", lambda t: li.PerfLLM(MockLLM(), _config(t), **_bad("cach", None)), "cach", "cache"),
    (
        "wrap_llm",
        lambda t: li.wrap_llm(MockLLM(), _config(t), **_bad("retyr", None)),
        "retyr",
        "retry",
    ),
    (
        "PerfVectorStore (LlamaIndex)",
        lambda t: li.PerfVectorStore(SimpleVectorStore(), _config(t), **_bad("ttl_s", 5.0)),
        "ttl_s",
        "ttl",
    ),
    ("PerfSpanHandler", lambda t: PerfSpanHandler(**_bad("prefx", "x")), "prefx", "prefix"),
    (
        "PerfEventHandler",
        lambda t: PerfEventHandler(**_bad("span", PerfSpanHandler())),
        "span",
        "spans",
    ),
    # the core
    (
        "EmbeddingService",
        lambda t: EmbeddingService(
            lambda x: [[1.0]] * len(x),
            provider="p",
            model="m",
            symmetric=True,
            **_bad("dimension", 1),
        ),
        "dimension",
        "dimensions",
    ),
    (
        "LLMService",
        lambda t: LLMService(config=_config(t), **_bad("namespce", "llm")),
        "namespce",
        "namespace",
    ),
    ("SearchCache", lambda t: SearchCache(_config(t), **_bad("nam", "kb")), "nam", "name"),
    ("CacheManager", lambda t: CacheManager(_config(t), **_bad("tier", [])), "tier", "tiers"),
    (
        "AsyncRAGEngine",
        lambda t: AsyncRAGEngine(
            _config(t), retriever=_aretrieve, generator=_agenerate, **_bad("topk", 3)
        ),
        "topk",
        "top_k",
    ),
    (
        "RAGEngine",
        lambda t: RAGEngine(
            _config(t), retriever=lambda q, k: [], generator=lambda q, p: "", **_bad("engine", 1)
        ),
        "engine",
        "engine_id",
    ),
    (
        "BatchProcessor",
        lambda t: BatchProcessor(10, 0.01, lambda items: items, **_bad("max_batch_token", 5)),
        "max_batch_token",
        "max_batch_tokens",
    ),
    (
        "ConnectionPool",
        lambda t: ConnectionPool(object, **_bad("valdate", bool)),
        "valdate",
        "validate",
    ),
    (
        "AsyncConnectionPool",
        lambda t: AsyncConnectionPool(_async_factory, **_bad("broken", ())),
        "broken",
        "broken_on",
    ),
    (
        "PerformanceTracker",
        lambda t: PerformanceTracker(**_bad("window", 5.0)),
        "window",
        "window_s",
    ),
]

# The pooled factories: their classes would take a misspelt option (LangChain moves it into
# model_kwargs with a warning and sends it to the provider; LlamaIndex's OpenAI passes it on).
_AZ: dict[str, Any] = {
    "azure_endpoint": "http://127.0.0.1:9",
    "api_version": "2024-10-21",
    "api_key": "k",
}
FACTORIES: list[tuple[str, Callable[[Path], object], str, str]] = [
    (
        "pooled_chat_openai",
        lambda t: lc.pooled_chat_openai(api_key="k", config=_config(t), **_bad("temprature", 0)),
        "temprature",
        "temperature",
    ),
    (
        "pooled_openai_embeddings",
        lambda t: lc.pooled_openai_embeddings(
            api_key="k", config=_config(t), **_bad("dimensons", 8)
        ),
        "dimensons",
        "dimensions",
    ),
    (
        "pooled_chat_anthropic",
        lambda t: lc.pooled_chat_anthropic(
            model="claude-sonnet-4-5", api_key="k", config=_config(t), **_bad("top_kk", 5)
        ),
        "top_kk",
        "top_k",
    ),
    (
        "pooled_azure_chat_openai",
        lambda t: lc.pooled_azure_chat_openai(
            config=_config(t), **_AZ, **_bad("azure_deploymnet", "chat")
        ),
        "azure_deploymnet",
        "azure_deployment",
    ),
    (
        "pooled_azure_openai_embeddings",
        lambda t: lc.pooled_azure_openai_embeddings(
            config=_config(t), **_AZ, **_bad("azure_deploymnet", "embed")
        ),
        "azure_deploymnet",
        "azure_deployment",
    ),
    (
        "pooled_openai_llm",
        lambda t: li.pooled_openai_llm(api_key="k", config=_config(t), **_bad("max_token", 9)),
        "max_token",
        "max_tokens",
    ),
    (
        "pooled_openai_embedding",
        lambda t: li.pooled_openai_embedding(
            api_key="k", config=_config(t), **_bad("embed_batch", 9)
        ),
        "embed_batch",
        "embed_batch_size",
    ),
    (
        "pooled_anthropic_llm",
        lambda t: li.pooled_anthropic_llm(
            api_key="k", config=_config(t), **_bad("thinking", {"type": "enabled"})
        ),
        "thinking",
        "thinking_dict",
    ),
    (
        "pooled_azure_openai_llm",
        lambda t: li.pooled_azure_openai_llm(
            engine="chat", config=_config(t), **_AZ, **_bad("max_token", 9)
        ),
        "max_token",
        "max_tokens",
    ),
    (
        "pooled_azure_openai_embedding",
        lambda t: li.pooled_azure_openai_embedding(
            azure_deployment="embed", config=_config(t), **_AZ, **_bad("embed_batch", 9)
        ),
        "embed_batch",
        "embed_batch_size",
    ),
]
CASES += FACTORIES


def test_the_factories_still_take_every_field_of_their_class(tmp_path: Path) -> None:
    # Aliases and field names both pass: model / model_name, api_key, stop / stop_sequences.
    chat = lc.pooled_chat_anthropic(
        model_name="claude-sonnet-4-5", anthropic_api_key="k", stop=["x"], config=_config(tmp_path)
    )
    assert chat.model == "claude-sonnet-4-5" and chat.stop_sequences == ["x"]
    azure = lc.pooled_azure_chat_openai(
        config=_config(tmp_path), **_AZ, deployment_name="chat", model_kwargs={}
    )
    assert azure.deployment_name == "chat" and azure.model_kwargs == {}
    llm = li.pooled_anthropic_llm(
        api_key="k", config=_config(tmp_path), thinking_dict={"type": "enabled"}, cache_idx=1
    )
    assert llm.cache_idx == 1


async def _async_factory() -> object:
    return object()


@pytest.mark.parametrize(("what", "build", "wrong", "suggested"), CASES, ids=[c[0] for c in CASES])
def test_an_unknown_option_is_refused_by_name(
    tmp_path: Path, what: str, build: Callable[[Path], object], wrong: str, suggested: str
) -> None:
    with pytest.raises(TypeError) as info:
        build(tmp_path)
    message = str(info.value)
    assert f"unexpected keyword argument {wrong!r}" in message, message
    assert f"did you mean {suggested!r}" in message or repr(suggested) in message, message


def test_wrap_llm_refuses_options_for_a_model_it_already_wrapped(tmp_path: Path) -> None:
    wrapped = li.wrap_llm(MockLLM(), _config(tmp_path))
    assert li.wrap_llm(wrapped) is wrapped  # nothing asked: the same wrapper
    with pytest.raises(ValueError, match="already a PerfLLM, so config, tracker would be ignored"):
        li.wrap_llm(wrapped, _config(tmp_path), tracker=PerformanceTracker())
    asyncio.run(asyncio.sleep(0))
