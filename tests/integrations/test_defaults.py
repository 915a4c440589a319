"""One resolver of defaults: every wrapper and factory of both frameworks, built with no
config, takes the file and environment settings (gate limits and cache directory included).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from langchain_core.embeddings import DeterministicFakeEmbedding
from langchain_core.globals import set_llm_cache
from langchain_core.language_models import FakeListChatModel
from langchain_core.vectorstores import InMemoryVectorStore
from llama_index.core.embeddings import MockEmbedding
from llama_index.core.llms import MockLLM
from llama_index.core.vector_stores import SimpleVectorStore
from llama_index.core.vector_stores.types import VectorStoreQuery

from rag_perf_plugins import langchain as lc
from rag_perf_plugins import llama_index as li
from rag_perf_plugins.admission import AdmissionGate, RetryPolicy
from rag_perf_plugins.cache import CacheManager, DiskTier, set_cache_manager
from rag_perf_plugins.config import PerformanceConfig
from rag_perf_plugins.engine import AsyncRAGEngine
from rag_perf_plugins.pool.http import close_http_clients
from rag_perf_plugins.services import EmbeddingService, LLMService
from rag_perf_plugins.simulator import Simulator

SimulatorFactory = Callable[..., Simulator]


@pytest.fixture
def env_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Settings only in the environment: 2 in flight, 6,000 RPM, a cache directory, TTL 77 s."""
    directory = tmp_path / "env-cache"
    monkeypatch.setenv("RAG_PERF_MAX_CONCURRENT_REQUESTS", "2")
    monkeypatch.setenv("RAG_PERF_REQUESTS_PER_MINUTE", "6000")
    monkeypatch.setenv("RAG_PERF_CACHE_DIR", str(directory))
    monkeypatch.setenv("RAG_PERF_CACHE_TTL", "77")
    previous = set_cache_manager(None)
    yield directory
    manager = set_cache_manager(previous)
    if manager is not None:
        manager.close()
    close_http_clients()


def _stored_in(directory: Path) -> int:
    tier = DiskTier(directory)
    try:
        return int(tier.stats()["items"])
    finally:
        tier.close()


def _check_config(config: PerformanceConfig, directory: Path) -> None:
    assert config.max_concurrent_requests == 2
    assert config.requests_per_minute == 6000
    assert config.cache_dir == str(directory)
    assert config.cache_ttl == 77.0
    assert config.source_of("max_concurrent_requests") == "env RAG_PERF_MAX_CONCURRENT_REQUESTS"


def _check_gate(gate: Any) -> None:
    assert isinstance(gate, AdmissionGate)
    assert gate.config.max_concurrent_requests == 2
    assert gate.limits.requests_per_minute == 6000


def _check_cache(manager: CacheManager | None, directory: Path) -> None:
    assert manager is not None
    disks = [t for t in manager.tiers if isinstance(t, DiskTier)]
    assert [d.directory for d in disks] == [str(directory)]


# --- LangChain --------------------------------------------------------------------------


def test_lc_embeddings_take_the_environment(env_dir: Path) -> None:
    embeddings = lc.PerfEmbeddings(DeterministicFakeEmbedding(size=8))
    _check_config(embeddings.config, env_dir)
    _check_gate(embeddings.service.gate)
    assert isinstance(embeddings.service.retry, RetryPolicy)
    store = embeddings.service.store
    _check_cache(getattr(store, "cache", None), env_dir)
    embeddings.embed_documents(["a", "b"])
    assert _stored_in(env_dir) == 2


def test_lc_chat_model_takes_the_environment(env_dir: Path) -> None:
    llm = lc.PerfChatModel(FakeListChatModel(responses=["one"]))
    _check_config(llm.service.config, env_dir)
    _check_gate(llm.service.gate)
    _check_cache(llm.service.cache, env_dir)
    llm.invoke("hi")
    assert _stored_in(env_dir) == 1


def test_lc_vector_store_takes_the_environment(env_dir: Path) -> None:
    inner = InMemoryVectorStore(DeterministicFakeEmbedding(size=8))
    inner.add_texts(["apples are red"])
    store = lc.PerfVectorStore(inner)
    _check_config(store.config, env_dir)
    _check_cache(store.cache, env_dir)
    store.similarity_search("red", k=1)
    assert _stored_in(env_dir) >= 1


def test_lc_llm_cache_takes_the_environment(env_dir: Path) -> None:
    cache = lc.PerfLLMCache()
    _check_config(cache.config, env_dir)
    _check_cache(cache.cache, env_dir)
    set_llm_cache(cache)
    try:
        FakeListChatModel(responses=["one"]).invoke("hi")
    finally:
        set_llm_cache(None)
    assert _stored_in(env_dir) == 1


def test_lc_rate_limiter_takes_the_environment(
    env_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RAG_PERF_MAX_QUEUE", "9")
    limiter = lc.PerfRateLimiter(requests_per_second=5)
    assert limiter.gate.config.max_queue == 9  # its own rate replaces the budget keys
    assert limiter.gate.limits.requests_per_minute == 300


def test_lc_factories_take_the_environment(
    env_dir: Path, simulator: Simulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RAG_PERF_CONNECTION_TIMEOUT", "7.5")
    chat = lc.pooled_chat_openai(model="gpt-4o-mini", base_url=simulator.base_url, api_key="sk")
    emb = lc.pooled_openai_embeddings(base_url=simulator.base_url, api_key="sk")
    for model in (chat, emb):
        timeout = model.request_timeout
        assert getattr(timeout, "connect", None) == 7.5, timeout


async def test_lc_in_flight_cap_from_the_environment_holds(
    env_dir: Path, simulator_factory: SimulatorFactory
) -> None:
    """The issue's service: no config object, RAG_PERF_MAX_CONCURRENT_REQUESTS=2."""
    sim = simulator_factory(latency_ms=30.0)
    llm = lc.PerfChatModel(
        lc.pooled_chat_openai(model="gpt-4o-mini", base_url=sim.base_url, api_key="sk")
    )
    await asyncio.gather(*(llm.ainvoke(f"question {i}") for i in range(20)))
    stats = sim.stats()
    assert stats["requests_by_endpoint"]["/v1/chat/completions"] == 20
    assert stats["peak_inflight"] <= 2


# --- LlamaIndex -------------------------------------------------------------------------


def test_li_embedding_takes_the_environment(env_dir: Path) -> None:
    embed = li.PerfEmbedding(MockEmbedding(embed_dim=8))
    _check_config(embed.config, env_dir)
    _check_gate(embed.service.gate)
    _check_cache(getattr(embed.service.store, "cache", None), env_dir)
    embed.get_text_embedding_batch(["a", "b"])
    assert _stored_in(env_dir) == 2


def test_li_llm_takes_the_environment(env_dir: Path) -> None:
    llm = li.wrap_llm(MockLLM())
    _check_config(llm.config, env_dir)
    _check_gate(llm.service.gate)
    _check_cache(llm.service.cache, env_dir)
    llm.complete("hi")
    assert _stored_in(env_dir) == 1


def test_li_vector_store_takes_the_environment(env_dir: Path) -> None:
    store = li.PerfVectorStore(SimpleVectorStore())
    _check_cache(store.cache, env_dir)
    store.query(VectorStoreQuery(query_embedding=[0.1] * 8, similarity_top_k=1))
    assert _stored_in(env_dir) >= 1


def test_li_factories_and_settings_take_the_environment(
    env_dir: Path, simulator: Simulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    from llama_index.core import Settings

    monkeypatch.setenv("RAG_PERF_REQUEST_DEADLINE", "42")
    emb = li.pooled_openai_embedding(api_base=simulator.base_url, api_key="sk")
    llm = li.pooled_openai_llm(model="gpt-4o-mini", api_base=simulator.base_url, api_key="sk")
    assert emb.timeout == 42.0 and llm.timeout == 42.0
    Settings.embed_model, Settings.llm = emb, llm
    try:
        state = li.configure_settings()
        assert state.embed_model is not None and state.llm is not None
        _check_config(state.embed_model.config, env_dir)
        _check_config(state.llm.config, env_dir)
        _check_gate(state.llm.service.gate)
    finally:
        li.restore_settings()


async def test_li_in_flight_cap_from_the_environment_holds(
    env_dir: Path, simulator_factory: SimulatorFactory
) -> None:
    sim = simulator_factory(latency_ms=30.0)
    llm = li.wrap_llm(
        li.pooled_openai_llm(model="gpt-4o-mini", api_base=sim.base_url, api_key="sk")
    )
    await asyncio.gather(*(llm.acomplete(f"question {i}") for i in range(20)))
    stats = sim.stats()
    assert stats["requests_by_endpoint"]["/v1/chat/completions"] == 20
    assert stats["peak_inflight"] <= 2


# --- the core ---------------------------------------------------------------------------


def test_core_components_take_the_environment(env_dir: Path) -> None:
    _check_config(AdmissionGate().config, env_dir)
    _check_config(RetryPolicy().config, env_dir)
    _check_config(LLMService().config, env_dir)
    _check_cache(LLMService().cache, env_dir)
    service = EmbeddingService(lambda t: [[1.0]] * len(t), provider="p", model="m", symmetric=True)
    _check_config(service.config, env_dir)

    async def retrieve(query: str, top_k: int) -> list[str]:
        return ["p"]

    async def generate(query: str, passages: Sequence[Any]) -> str:
        return "a"

    engine = AsyncRAGEngine(retriever=retrieve, generator=generate)
    _check_config(engine.config, env_dir)


def test_a_config_file_named_by_rag_perf_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "perf.yaml"
    path.write_text("max_concurrent_requests: 3\nbatch_size: 7\n")
    monkeypatch.setenv("RAG_PERF_CONFIG", str(path))
    monkeypatch.setenv("RAG_PERF_BATCH_SIZE", "9")  # env wins over the file
    config = PerformanceConfig.load()
    assert config.max_concurrent_requests == 3 and config.batch_size == 9
    assert config.source_of("max_concurrent_requests") == f"file {path}:1"
    embeddings = lc.PerfEmbeddings(DeterministicFakeEmbedding(size=8))
    assert embeddings.config.max_concurrent_requests == 3


def test_rag_perf_yaml_in_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "rag-perf.yaml").write_text("cache_size: 123\n")
    monkeypatch.chdir(tmp_path)
    assert PerformanceConfig.load().cache_size == 123
    assert PerformanceConfig.from_env({}).cache_size == 10_000  # variables only
    monkeypatch.setenv("RAG_PERF_CONFIG", str(tmp_path / "missing.yaml"))
    with pytest.raises(ValueError, match=r"missing\.yaml: cannot read config file"):
        PerformanceConfig.load()
