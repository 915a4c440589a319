"""PerfLLMCache: LangChain's standard cache suites, persistence, and the invoke hit path."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from langchain_core.caches import BaseCache
from langchain_core.language_models import FakeListChatModel
from langchain_core.messages import AIMessage
from langchain_core.outputs import ChatGeneration, Generation
from langchain_tests.integration_tests import AsyncCacheTestSuite, SyncCacheTestSuite
from rag_perf_plugins.langchain import PerfLLMCache

from rag_perf_plugins.cache import CacheManager, cache_control
from rag_perf_plugins.config import PerformanceConfig


def _manager(path: Path, **options: Any) -> CacheManager:
    # One shard: opening eight SQLite files per test is most of the suite's time.
    config = PerformanceConfig(cache_dir=str(path), cache_shards=1, enable_metrics=False, **options)
    return CacheManager(config)


class TestPerfLLMCacheSync(SyncCacheTestSuite):
    @pytest.fixture
    def cache(self, tmp_path: Path) -> Iterator[BaseCache]:
        manager = _manager(tmp_path / "llm")
        yield PerfLLMCache(manager)
        manager.close()


class TestPerfLLMCacheAsync(AsyncCacheTestSuite):
    @pytest.fixture
    async def cache(self, tmp_path: Path) -> AsyncIterator[BaseCache]:
        manager = _manager(tmp_path / "llm")
        yield PerfLLMCache(manager)
        await manager.aclose()


def test_entries_survive_a_new_manager_with_the_memory_tier_off(tmp_path: Path) -> None:
    first = _manager(tmp_path / "llm")
    message = AIMessage(
        content="cached answer",
        usage_metadata={"input_tokens": 3, "output_tokens": 2, "total_tokens": 5},
    )
    PerfLLMCache(first).update("prompt", "llm", [ChatGeneration(message=message)])
    first.close()
    second = _manager(tmp_path / "llm", cache_size=0)
    try:
        found = PerfLLMCache(second, memory_items=0).lookup("prompt", "llm")
        assert found is not None and found[0].text == "cached answer"
        assert isinstance(found[0], ChatGeneration)
        assert isinstance(found[0].message, AIMessage)
        assert found[0].message.usage_metadata == message.usage_metadata
        assert PerfLLMCache(second).lookup("prompt", "other llm") is None
    finally:
        second.close()


def test_invoke_hits_without_calling_the_model(tmp_path: Path) -> None:
    manager = _manager(tmp_path / "llm")
    cache = PerfLLMCache(manager)
    model = FakeListChatModel(responses=["first", "second"], cache=cache)
    assert model.invoke("hi").content == "first"
    assert model.invoke("hi").content == "first"  # the second response was never used
    assert model.invoke("another").content == "second"
    manager.close()


async def test_async_invoke_hits(tmp_path: Path) -> None:
    manager = _manager(tmp_path / "llm")
    model = FakeListChatModel(responses=["a", "b"], cache=PerfLLMCache(manager))
    assert (await model.ainvoke("q")).content == "a"
    assert (await model.ainvoke("q")).content == "a"
    await manager.aclose()


def test_cache_control_bypass_and_no_store(tmp_path: Path) -> None:
    manager = _manager(tmp_path / "llm")
    cache = PerfLLMCache(manager)
    with cache_control("no-store"):
        cache.update("p", "l", [Generation(text="x")])
    assert cache.lookup("p", "l") is None
    cache.update("p", "l", [Generation(text="y")])
    with cache_control("bypass"):
        assert cache.lookup("p", "l") is None
    assert cache.lookup("p", "l") == [Generation(text="y")]
    manager.close()


def test_ttl_expires_decoded_entries(tmp_path: Path) -> None:
    now = [1000.0]
    manager = CacheManager(
        PerformanceConfig(cache_dir=str(tmp_path / "llm"), cache_shards=1, enable_metrics=False),
        clock=lambda: now[0],
    )
    cache = PerfLLMCache(manager, ttl=10.0, clock=lambda: now[0])
    cache.update("p", "l", [Generation(text="z")])
    assert cache.lookup("p", "l") is not None
    now[0] += 11.0
    assert cache.lookup("p", "l") is None
    manager.close()


def test_bad_ttl_is_named(tmp_path: Path) -> None:
    manager = _manager(tmp_path / "llm")
    with pytest.raises(ValueError, match="ttl must be > 0"):
        PerfLLMCache(manager, ttl=0)
    manager.close()
