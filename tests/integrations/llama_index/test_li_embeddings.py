"""PerfEmbedding: the LlamaIndex face of the core EmbeddingService."""

from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.embeddings import MockEmbedding
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events import BaseEvent
from llama_index.core.instrumentation.events.embedding import EmbeddingStartEvent
from llama_index.embeddings.openai import OpenAIEmbedding  # type: ignore[import-untyped, unused-ignore]
from llama_index_instrumentation import get_dispatcher
from rag_perf_plugins.llama_index import PerfEmbedding
from rag_perf_plugins.llama_index.embeddings import inner_identity

from rag_perf_plugins.config import PerformanceConfig
from tests.integrations.llama_index.li_models import (
    CountingEmbedding,
    SyncOnlyEmbedding,
    vector_of,
)

NO_CACHE = PerformanceConfig(enable_caching=False, enable_metrics=False)


class _StartCounter(BaseEventHandler):
    starts: int = 0

    @classmethod
    def class_name(cls) -> str:
        return "_StartCounter"

    def handle(self, event: BaseEvent, **kwargs: Any) -> None:
        if isinstance(event, EmbeddingStartEvent):
            self.starts += 1


@pytest.fixture
def start_events() -> Iterator[_StartCounter]:
    root = get_dispatcher()
    handler = _StartCounter()
    root.add_event_handler(handler)
    try:
        yield handler
    finally:
        root.event_handlers.remove(handler)


def test_rejects_what_it_cannot_wrap(counting: CountingEmbedding) -> None:
    with pytest.raises(TypeError, match="inner must be a LlamaIndex BaseEmbedding"):
        PerfEmbedding(object(), NO_CACHE)  # type: ignore[arg-type]
    wrapped = PerfEmbedding(counting, NO_CACHE)
    with pytest.raises(TypeError, match="already a PerfEmbedding"):
        PerfEmbedding(wrapped, NO_CACHE)
    with pytest.raises(TypeError, match="config must be a PerformanceConfig"):
        PerfEmbedding(counting, {"batch_size": 3})  # type: ignore[arg-type]


def test_is_a_base_embedding_that_does_not_cap_our_batcher(counting: CountingEmbedding) -> None:
    wrapped = PerfEmbedding(counting, NO_CACHE)
    assert isinstance(wrapped, BaseEmbedding)
    assert wrapped.embed_batch_size == 2048  # LlamaIndex's pre-chunking no longer caps us
    assert wrapped.num_workers is None
    assert wrapped.model_name == "counting-8"
    assert "CountingEmbedding/counting-8" in repr(wrapped)
    assert "provider calls: 0" in repr(wrapped)


def test_to_dict_is_stable_names_the_inner_model_and_hides_secrets() -> None:
    def build(**kw: Any) -> PerfEmbedding:
        inner = OpenAIEmbedding(
            model="text-embedding-3-small",
            api_key=kw.pop("api_key", "sk-secret-1"),
            api_base="http://127.0.0.1:9/v1",
            **kw,
        )
        return PerfEmbedding(inner, NO_CACHE)

    one = build().to_dict()
    assert one == build(api_key="sk-other", timeout=5.0, max_retries=0).to_dict()
    assert one == build().to_dict()
    assert one["class_name"] == "PerfEmbedding"
    assert one["inner"]["class_name"] == "OpenAIEmbedding"
    assert one["inner"]["model_name"] == "text-embedding-3-small"
    assert "sk-secret-1" not in repr(one)
    assert one != build(dimensions=256).to_dict()
    # The JSON form LlamaIndex hashes into IngestionCache keys is the same in every process.
    assert build().to_json() == build().to_json()


def test_identity_tells_models_apart() -> None:
    assert inner_identity(MockEmbedding(embed_dim=4)) != inner_identity(MockEmbedding(embed_dim=8))
    assert inner_identity(MockEmbedding(embed_dim=4)) == inner_identity(MockEmbedding(embed_dim=4))


def test_delegates_to_private_methods_so_events_are_not_doubled(
    counting: CountingEmbedding, start_events: _StartCounter
) -> None:
    wrapped = PerfEmbedding(counting, NO_CACHE)
    wrapped.get_query_embedding("q")
    wrapped.get_text_embedding("t")
    wrapped.get_text_embedding_batch(["a", "b", "c"])
    # One start event per public call: the inner model's public methods never ran.
    assert start_events.starts == 3
    assert counting.calls == {"_get_query_embedding": 1, "_get_text_embeddings": 2}


async def test_async_paths_delegate_to_native_async(counting: CountingEmbedding) -> None:
    wrapped = PerfEmbedding(counting, NO_CACHE, symmetric=True)
    vectors = await wrapped.aget_text_embedding_batch([f"t{i}" for i in range(30)])
    assert vectors[3] == pytest.approx(vector_of("t3", 8, "counting-8"), rel=1e-6)
    assert set(counting.calls) == {"_aget_text_embeddings"}


async def test_sync_only_inner_keeps_batching_off_the_event_loop() -> None:
    inner = SyncOnlyEmbedding(model_name="sync-only", dim=8)
    config = NO_CACHE.replace(batch_size=20)
    wrapped = PerfEmbedding(inner, config)
    texts = [f"text {i}" for i in range(200)]
    loop_thread = threading.get_ident()
    vectors = await wrapped.aget_text_embedding_batch(texts)
    assert len(vectors) == 200
    # LlamaIndex alone: 200 single calls on the loop. Here: 10 batches, in worker threads.
    assert inner.calls == {"_get_text_embeddings": math.ceil(200 / 20)}
    assert loop_thread not in inner.threads


def test_asymmetric_inner_embeds_queries_with_its_query_method() -> None:
    inner = CountingEmbedding(model_name="asym", dim=8, query_prefix="query: ")
    wrapped = PerfEmbedding(inner, NO_CACHE)  # unknown model: treated as asymmetric
    vector = wrapped.get_query_embedding("hello")
    assert vector == pytest.approx(vector_of("query: hello", 8, "asym"), rel=1e-6)
    assert inner.calls == {"_get_query_embedding": 1}


async def test_concurrent_identical_queries_make_one_call() -> None:
    inner = CountingEmbedding(model_name="asym", dim=8, query_prefix="query: ")
    wrapped = PerfEmbedding(inner, NO_CACHE)
    results = await asyncio.gather(*(wrapped.aget_query_embedding("same") for _ in range(100)))
    assert inner.total_calls == 1
    assert all(r == results[0] for r in results)


def test_no_second_span_around_the_inner_call(counting: CountingEmbedding) -> None:
    # LlamaIndex's mixin spans every implementation of an abstract method; the inner model's
    # already has one, so the wrapper's own implementations must stay plain functions.
    for name in ("_get_query_embedding", "_aget_query_embedding", "_get_text_embedding"):
        assert not hasattr(PerfEmbedding.__dict__[name], "__wrapped__"), name
    assert hasattr(type(counting).__dict__["_get_query_embedding"], "__wrapped__")


def test_calls_use_the_current_private_service_and_inner(counting: CountingEmbedding) -> None:
    # The per-call methods read the private dict directly (not through pydantic's
    # __getattr__); they must still see what `model._x = ...` assigned.
    wrapped = PerfEmbedding(counting, NO_CACHE)
    replacement = PerfEmbedding(MockEmbedding(embed_dim=3), NO_CACHE).service
    wrapped._service = replacement
    assert wrapped.get_query_embedding("q") == [0.5, 0.5, 0.5]
    assert replacement.provider_calls == 1 and counting.calls == {}
    assert wrapped.to_payload()["inner_class_name"] == counting.class_name()


def test_a_wrapper_without_its_service_raises_attribute_error(
    counting: CountingEmbedding,
) -> None:
    wrapped = PerfEmbedding(counting, NO_CACHE)
    private = wrapped.__pydantic_private__
    assert private is not None
    del private["_service"]  # as pickle leaves it: no service
    with pytest.raises(AttributeError, match="_service"):
        wrapped.get_query_embedding("q")
