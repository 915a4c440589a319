"""Fixtures for the LangChain adapter tests: a real on-disk vector store and OpenAI clients."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import diskcache
import numpy as np
import pytest
from langchain_openai import OpenAIEmbeddings
from rag_perf_plugins.langchain import pooled_openai_embeddings

from rag_perf_plugins.cache import set_cache_manager
from rag_perf_plugins.pool.http import close_http_clients
from rag_perf_plugins.simulator import Simulator


class DiskVectorStore:
    """Per-text vectors in a real diskcache directory, raw little-endian float32.

    Stands in for the cache package's embeddings namespace (not built yet) behind the
    ``EmbeddingStore`` protocol; it is real storage, not a mock.
    """

    dtype = "float32"

    def __init__(self, path: Path) -> None:
        self.cache = diskcache.Cache(str(path))
        self.lookups = 0

    def embedding_key(
        self, provider: str, model: str, dimensions: int | None, role: str, text: str
    ) -> str:
        raw = "\x00".join([provider, model, str(dimensions), role, text])
        return hashlib.blake2b(raw.encode(), digest_size=16).hexdigest()

    def get_many(self, keys: Sequence[str]) -> list[list[float] | None]:
        self.lookups += 1
        out: list[list[float] | None] = []
        for key in keys:
            raw = self.cache.get(key)
            out.append(None if raw is None else np.frombuffer(raw, "<f4").tolist())
        return out

    def set_many(self, items: Mapping[str, list[float]], *, ttl: float | None = None) -> None:
        for key, vec in items.items():
            self.cache.set(key, np.asarray(vec, "<f4").tobytes(), expire=ttl)

    async def aget_many(self, keys: Sequence[str]) -> list[list[float] | None]:
        return await asyncio.to_thread(self.get_many, keys)

    async def aset_many(
        self, items: Mapping[str, list[float]], *, ttl: float | None = None
    ) -> None:
        await asyncio.to_thread(self.set_many, items, ttl=ttl)


@pytest.fixture(autouse=True)
def _fresh_process_state() -> Iterator[None]:
    """Each test gets its own process-wide cache (in its tmp dir) and pooled clients."""
    previous = set_cache_manager(None)
    yield
    manager = set_cache_manager(previous)
    if manager is not None:
        manager.close()
    close_http_clients()


@pytest.fixture
def vector_store(tmp_path: Path) -> Iterator[DiskVectorStore]:
    """A fresh on-disk per-text vector store."""
    store = DiskVectorStore(tmp_path / "vectors")
    yield store
    store.cache.close()


def _openai_embeddings(sim: Simulator, **options: Any) -> OpenAIEmbeddings:
    """LangChain's real OpenAIEmbeddings on the pooled clients, pointed at the simulator."""
    params: dict[str, Any] = {"model": "text-embedding-3-small", "api_key": "sk-test", **options}
    return pooled_openai_embeddings(base_url=sim.base_url, **params)


def _embedding_requests(sim: Simulator) -> int:
    """Requests the simulator saw on /v1/embeddings."""
    by_endpoint: dict[str, int] = sim.stats()["requests_by_endpoint"]
    return sum(n for path, n in by_endpoint.items() if path.endswith("/embeddings"))


MakeEmbeddings = Callable[..., OpenAIEmbeddings]
CountRequests = Callable[[Simulator], int]


@pytest.fixture
def openai_embeddings() -> MakeEmbeddings:
    """``openai_embeddings(sim, **options)``: a real OpenAIEmbeddings on the simulator."""
    return _openai_embeddings


@pytest.fixture
def embedding_requests() -> CountRequests:
    """``embedding_requests(sim)``: requests the simulator saw on /v1/embeddings."""
    return _embedding_requests
