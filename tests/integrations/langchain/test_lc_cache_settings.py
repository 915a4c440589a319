"""LangChain wrappers store where their config says: ``cache_dir`` and ``redis_url`` apply."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
import redis
from langchain_core.embeddings import DeterministicFakeEmbedding
from langchain_core.globals import set_llm_cache
from langchain_core.language_models import FakeListChatModel
from langchain_core.vectorstores import InMemoryVectorStore
from rag_perf_plugins.langchain import PerfChatModel, PerfLLMCache, PerfVectorStore

from rag_perf_plugins.cache import CacheManager, DiskTier
from rag_perf_plugins.config import PerformanceConfig


def _disk_items(directory: Path) -> int:
    """Entries stored in the disk tier at ``directory`` (a fresh tier, nothing cached)."""
    tier = DiskTier(directory)
    try:
        return int(tier.stats()["items"])
    finally:
        tier.close()


def _chat() -> FakeListChatModel:
    return FakeListChatModel(responses=["one", "two", "three"])


def _search_store(config: PerformanceConfig) -> PerfVectorStore:
    inner = InMemoryVectorStore(DeterministicFakeEmbedding(size=8))
    inner.add_texts(["apples are red", "bananas are yellow"])
    return PerfVectorStore(inner, config, name=f"kb-{uuid.uuid4().hex[:6]}")


def test_chat_model_writes_to_the_configured_directory(tmp_path: Path) -> None:
    directory = tmp_path / "chat-cache"
    llm = PerfChatModel(_chat(), PerformanceConfig(cache_dir=str(directory)))
    assert llm.invoke("hi").content == "one"
    assert llm.invoke("hi").content == "one"  # a hit
    assert directory.is_dir() and _disk_items(directory) >= 1
    assert not (tmp_path / "default-cache").exists()  # RAG_PERF_CACHE_DIR of the test


def test_vector_store_writes_to_the_configured_directory(tmp_path: Path) -> None:
    directory = tmp_path / "search-cache"
    store = _search_store(PerformanceConfig(cache_dir=str(directory)))
    first = store.similarity_search("red", k=1)
    assert store.similarity_search("red", k=1) == first
    assert directory.is_dir() and _disk_items(directory) >= 1
    assert not (tmp_path / "default-cache").exists()


def test_llm_cache_writes_to_the_configured_directory(tmp_path: Path) -> None:
    directory = tmp_path / "llm-cache"
    cache = PerfLLMCache(config=PerformanceConfig(cache_dir=str(directory), cache_ttl=5.0))
    set_llm_cache(cache)
    try:
        model = _chat()
        assert model.invoke("hi").content == "one"
        assert model.invoke("hi").content == "one"  # a hit from PerfLLMCache
    finally:
        set_llm_cache(None)
    assert cache.cache.config.cache_dir == str(directory)
    assert directory.is_dir() and _disk_items(directory) >= 1
    assert not (tmp_path / "default-cache").exists()


def _redis_keys(url: str, prefix: str) -> list[bytes]:
    client = redis.Redis.from_url(url)
    try:
        return list(client.scan_iter(match=f"{prefix}*"))
    finally:
        client.close()


@pytest.mark.redis
@pytest.mark.parametrize("wrapper", ["chat", "search", "llm_cache"])
def test_wrappers_reach_the_configured_redis(redis_url: str, tmp_path: Path, wrapper: str) -> None:
    prefix = f"lc-{uuid.uuid4().hex[:8]}"
    config = PerformanceConfig(
        cache_dir=str(tmp_path / "d"), redis_url=redis_url, cache_namespace_prefix=prefix
    )
    use: dict[str, Any] = {
        "chat": lambda: PerfChatModel(_chat(), config).invoke("hi"),
        "search": lambda: _search_store(config).similarity_search("red", k=1),
    }
    if wrapper == "llm_cache":
        set_llm_cache(PerfLLMCache(config=config))
        try:
            _chat().invoke("hi")
        finally:
            set_llm_cache(None)
    else:
        use[wrapper]()
    assert _redis_keys(redis_url, prefix), f"{wrapper}: nothing stored in Redis"


def test_an_explicit_manager_still_wins(tmp_path: Path) -> None:
    manager = CacheManager(PerformanceConfig(cache_dir=str(tmp_path / "explicit")))
    llm = PerfChatModel(
        _chat(), PerformanceConfig(cache_dir=str(tmp_path / "ignored")), cache_manager=manager
    )
    llm.invoke("hi")
    assert llm.service.cache is manager
    assert not (tmp_path / "ignored").exists()
    manager.close()
