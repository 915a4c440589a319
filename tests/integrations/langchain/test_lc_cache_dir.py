"""PerfEmbeddings honours its config's cache settings, like LlamaIndex's PerfEmbedding."""

from __future__ import annotations

from pathlib import Path

from langchain_core.embeddings import DeterministicFakeEmbedding
from rag_perf_plugins.langchain import PerfEmbeddings

from rag_perf_plugins.cache import get_cache_manager
from rag_perf_plugins.config import PerformanceConfig
from rag_perf_plugins.services.embeddings import CacheEmbeddingStore
from rag_perf_plugins.tracking import PerformanceTracker


def _store(wrapper: PerfEmbeddings) -> CacheEmbeddingStore:
    store = wrapper.service._store
    assert isinstance(store, CacheEmbeddingStore)
    return store


def test_config_cache_dir_gets_its_own_manager(tmp_path: Path) -> None:
    inner = DeterministicFakeEmbedding(size=4)
    config = PerformanceConfig(cache_dir=str(tmp_path / "mine"), enable_metrics=False)
    first = PerfEmbeddings(inner, config, tracker=PerformanceTracker(), batching=False)
    assert _store(first).cache is not get_cache_manager()
    assert _store(first).cache.config.cache_dir == str(tmp_path / "mine")
    vectors = first.embed_documents(["alpha", "beta"])
    assert any((tmp_path / "mine").iterdir())  # the disk tier lives in the config's directory

    second = PerfEmbeddings(inner, config, tracker=PerformanceTracker(), batching=False)
    assert _store(second).cache is _store(first).cache
    assert second.embed_documents(["beta", "alpha"]) == [vectors[1], vectors[0]]
    assert second.service.provider_calls == 0


def test_no_cache_settings_means_the_process_cache() -> None:
    wrapper = PerfEmbeddings(DeterministicFakeEmbedding(size=4), tracker=PerformanceTracker())
    assert _store(wrapper).cache is get_cache_manager()
