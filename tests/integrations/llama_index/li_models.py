"""Inner LlamaIndex embedding models that count what reaches them, for the adapter tests."""

from __future__ import annotations

import hashlib
import threading

from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.bridge.pydantic import PrivateAttr


def vector_of(text: str, dim: int, salt: str = "") -> list[float]:
    """A deterministic vector of ``dim`` floats for ``text`` (not float32-exact on purpose)."""
    digest = hashlib.sha256((salt + text).encode()).digest()
    return [((digest[i % len(digest)] + i) % 251) / 251.0 + 1e-9 for i in range(dim)]


class CountingEmbedding(BaseEmbedding):
    """A sync-and-async model with a batch method; counts calls per private method.

    ``query_prefix`` makes it asymmetric (queries embedded differently from texts).
    """

    dim: int = 8
    query_prefix: str = ""
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)
    _calls: dict[str, int] = PrivateAttr(default_factory=dict)
    _threads: set[int] = PrivateAttr(default_factory=set)

    @classmethod
    def class_name(cls) -> str:
        return "CountingEmbedding"

    def _count(self, name: str) -> None:
        with self._lock:
            self._calls[name] = self._calls.get(name, 0) + 1
            self._threads.add(threading.get_ident())

    @property
    def calls(self) -> dict[str, int]:
        return dict(self._calls)

    @property
    def total_calls(self) -> int:
        return sum(self._calls.values())

    @property
    def threads(self) -> set[int]:
        return set(self._threads)

    def _get_query_embedding(self, query: str) -> list[float]:
        self._count("_get_query_embedding")
        return vector_of(self.query_prefix + query, self.dim, self.model_name)

    async def _aget_query_embedding(self, query: str) -> list[float]:
        self._count("_aget_query_embedding")
        return vector_of(self.query_prefix + query, self.dim, self.model_name)

    def _get_text_embedding(self, text: str) -> list[float]:
        self._count("_get_text_embedding")
        return vector_of(text, self.dim, self.model_name)

    def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        self._count("_get_text_embeddings")
        return [vector_of(t, self.dim, self.model_name) for t in texts]

    async def _aget_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        self._count("_aget_text_embeddings")
        return [vector_of(t, self.dim, self.model_name) for t in texts]


class SyncOnlyEmbedding(CountingEmbedding):
    """Implements only sync methods (LlamaIndex's async defaults call them on the loop)."""

    @classmethod
    def class_name(cls) -> str:
        return "SyncOnlyEmbedding"

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return self._get_query_embedding(query)

    # Undo the native async batch of the parent: back to LlamaIndex's default.
    _aget_text_embeddings = BaseEmbedding._aget_text_embeddings
