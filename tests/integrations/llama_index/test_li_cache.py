"""PerfEmbedding's per-text cache: keys, persistence, roles, control, gate on every path."""

from __future__ import annotations

from pathlib import Path

import pytest
from llama_index.core.schema import TextNode
from rag_perf_plugins.llama_index import PerfEmbedding

from rag_perf_plugins.admission import AdmissionGate
from rag_perf_plugins.cache.control import cache_control
from rag_perf_plugins.config import PerformanceConfig
from tests.integrations.llama_index.li_models import CountingEmbedding, vector_of


@pytest.fixture
def config(cache_dir: Path) -> PerformanceConfig:
    return PerformanceConfig(cache_dir=str(cache_dir), enable_metrics=False)


def test_cold_and_warm_vectors_are_identical_and_persist(config: PerformanceConfig) -> None:
    inner = CountingEmbedding(model_name="m", dim=8)
    cold = PerfEmbedding(inner, config).get_text_embedding_batch(["a", "b", "a"])
    assert inner.total_calls == 1
    # A new wrapper (as in a new process) over the same directory: no provider call.
    fresh_inner = CountingEmbedding(model_name="m", dim=8)
    warm = PerfEmbedding(fresh_inner, config).get_text_embedding_batch(["a", "b", "a"])
    assert fresh_inner.total_calls == 0
    assert warm == cold  # exactly equal: the miss path is rounded like the store
    assert cold[0] == pytest.approx(vector_of("a", 8, "m"), rel=1e-6)


def test_two_models_sharing_one_directory_never_swap_vectors(config: PerformanceConfig) -> None:
    small = CountingEmbedding(model_name="model-a", dim=4)
    large = CountingEmbedding(model_name="model-b", dim=8)
    a = PerfEmbedding(small, config).get_text_embedding("shared text")
    b = PerfEmbedding(large, config).get_text_embedding("shared text")
    assert len(a) == 4 and len(b) == 8
    assert small.total_calls == 1 and large.total_calls == 1


@pytest.mark.parametrize(
    ("first", "second"),
    [
        pytest.param({"model_name": "m1"}, {"model_name": "m2"}, id="model"),
        pytest.param({"dim": 8}, {"dim": 16}, id="dimensions"),
        pytest.param({"query_prefix": ""}, {"query_prefix": "q: "}, id="query-prefix"),
    ],
)
def test_must_miss_on_model_identity(
    config: PerformanceConfig, first: dict[str, object], second: dict[str, object]
) -> None:
    one = CountingEmbedding(**{"model_name": "m", "dim": 8, **first})
    two = CountingEmbedding(**{"model_name": "m", "dim": 8, **second})
    PerfEmbedding(one, config).get_text_embedding("same text")
    PerfEmbedding(two, config).get_text_embedding("same text")
    assert two.total_calls == 1


def test_must_miss_on_role(config: PerformanceConfig) -> None:
    inner = CountingEmbedding(model_name="m", dim=8)
    wrapped = PerfEmbedding(inner, config, symmetric=True)
    wrapped.get_text_embedding("hello")
    wrapped.get_query_embedding("hello")  # LlamaIndex's own cache would serve the text vector
    assert inner.total_calls == 2
    wrapped.get_query_embedding("hello")
    assert inner.total_calls == 2


def test_cache_control_bypass_refresh_and_the_llamaindex_keyword(
    config: PerformanceConfig,
) -> None:
    inner = CountingEmbedding(model_name="m", dim=8)
    wrapped = PerfEmbedding(inner, config)
    wrapped.get_text_embedding_batch(["x"])
    assert inner.total_calls == 1
    with cache_control("bypass"):
        wrapped.get_text_embedding_batch(["x"])
    assert inner.total_calls == 2
    wrapped.get_text_embedding_batch(["x"], rag_perf_cache="refresh")
    assert inner.total_calls == 3
    # Through LlamaIndex's node transform: kwargs pass down to get_text_embedding_batch.
    wrapped([TextNode(text="x")], rag_perf_cache={"mode": "bypass"})
    assert inner.total_calls == 4
    wrapped([TextNode(text="x")])
    assert inner.total_calls == 4
    with pytest.raises(ValueError, match="mode must be one of"):
        wrapped.get_text_embedding_batch(["x"], rag_perf_cache="sometimes")


async def test_async_cached_path_is_gated_and_hits_are_not(config: PerformanceConfig) -> None:
    gate = AdmissionGate(config, key="test/li/gate")
    inner = CountingEmbedding(model_name="m", dim=8)
    wrapped = PerfEmbedding(inner, config, gate=gate)
    await wrapped.aget_text_embedding_batch(["a", "b", "c"])
    await wrapped.aget_query_embedding("q")
    assert gate.stats()["admitted"] == 2  # one per real provider call
    await wrapped.aget_text_embedding_batch(["a", "b", "c"])
    await wrapped.aget_query_embedding("q")
    assert gate.stats()["admitted"] == 2  # hits never take a slot
    assert inner.total_calls == 2
