"""LangChain's standard vector-store suite over each real store, wrapped and unwrapped.

Each store runs the suite twice: unwrapped (the control) and inside ``PerfVectorStore``
with a disk cache. Tests the store itself does not pass are listed in ``KNOWN`` and
expected to fail (strictly) in both runs, so the wrapped run passes exactly what the
unwrapped one passes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from langchain_core.vectorstores import VectorStore
from langchain_tests.integration_tests import VectorStoreIntegrationTests
from langchain_tests.integration_tests.vectorstores import EMBEDDING_SIZE
from rag_perf_plugins.langchain import PerfVectorStore

from rag_perf_plugins.bench.postgres import LocalPostgres
from rag_perf_plugins.cache import CacheManager
from rag_perf_plugins.config import PerformanceConfig

from .conftest import aclose_lc_store, close_lc_store, lc_store

# Standard tests a store fails on its own (same failure wrapped and unwrapped).
_FAISS = "FAISS raises on an id it already holds and on deleting a missing id"
_QDRANT = "Qdrant takes UUIDs or integers as ids; the suite uses '1', '2', ..."
KNOWN: dict[str, dict[str, str]] = {
    "faiss": {
        "test_add_documents_by_id_with_mutation": _FAISS,
        "test_add_documents_by_id_with_mutation_async": _FAISS,
        "test_add_documents_with_ids_is_idempotent": _FAISS,
        "test_add_documents_with_ids_is_idempotent_async": _FAISS,
        "test_delete_missing_content": _FAISS,
        "test_delete_missing_content_async": _FAISS,
    },
    "qdrant": {
        "test_add_documents": _QDRANT,
        "test_add_documents_async": _QDRANT,
        "test_add_documents_by_id_with_mutation": _QDRANT,
        "test_add_documents_by_id_with_mutation_async": _QDRANT,
        "test_add_documents_documents": _QDRANT,
        "test_add_documents_documents_async": _QDRANT,
        "test_add_documents_with_existing_ids": _QDRANT,
        "test_add_documents_with_existing_ids_async": _QDRANT,
        "test_add_documents_with_ids_is_idempotent": _QDRANT,
        "test_add_documents_with_ids_is_idempotent_async": _QDRANT,
        "test_deleting_bulk_documents": _QDRANT,
        "test_deleting_bulk_documents_async": _QDRANT,
        "test_deleting_documents": _QDRANT,
        "test_deleting_documents_async": _QDRANT,
        "test_get_by_ids": _QDRANT,
        "test_get_by_ids_async": _QDRANT,
    },
}


def _known(request: pytest.FixtureRequest, kind: str) -> None:
    reason = KNOWN.get(kind, {}).get(request.node.originalname)
    if reason:  # it runs, and must fail (strict), in both runs
        request.node.add_marker(pytest.mark.xfail(reason=reason, strict=True))


class _Base(VectorStoreIntegrationTests):
    kind = ""
    wrapped = False
    async_mode = False

    @pytest.fixture(autouse=True)
    def _mark_known(self, request: pytest.FixtureRequest) -> None:
        _known(request, self.kind)

    def _build(self, tmp_path: Path, postgres: LocalPostgres) -> tuple[Any, Any, Any]:
        inner = lc_store(
            self.kind, self.get_embeddings(), tmp_path, postgres,
            async_mode=self.async_mode, dim=EMBEDDING_SIZE,
        )  # fmt: skip
        if not self.wrapped:
            return inner, inner, None
        cache = CacheManager(PerformanceConfig(cache_dir=str(tmp_path / "cache"), cache_shards=1))
        return PerfVectorStore(inner, cache=cache), inner, cache


class _Sync(_Base):
    @pytest.fixture
    def vectorstore(self, tmp_path: Path, postgres: LocalPostgres) -> Iterator[VectorStore]:
        store, inner, cache = self._build(tmp_path, postgres)
        yield store
        if cache is not None:
            cache.close()
        close_lc_store(self.kind, inner)


class _Async(_Base):
    async_mode = True

    @property
    def has_sync(self) -> bool:
        return False

    @pytest.fixture
    async def vectorstore(
        self, tmp_path: Path, postgres: LocalPostgres
    ) -> AsyncIterator[VectorStore]:
        store, inner, cache = self._build(tmp_path, postgres)
        yield store
        if cache is not None:
            cache.close()
        await aclose_lc_store(self.kind, inner)


class _PgSync(_Sync):
    @property
    def has_async(self) -> bool:  # a PGVector built for sync use has no async methods
        return False


class TestFaiss(_Sync):
    kind = "faiss"


class TestFaissWrapped(TestFaiss):
    wrapped = True


class TestChroma(_Sync):
    kind = "chroma"


class TestChromaWrapped(TestChroma):
    wrapped = True


class TestQdrant(_Sync):
    kind = "qdrant"


class TestQdrantWrapped(TestQdrant):
    wrapped = True


class TestPgvector(_PgSync):
    kind = "pgvector"


class TestPgvectorWrapped(TestPgvector):
    wrapped = True


class TestPgvectorAsync(_Async):
    kind = "pgvector"


class TestPgvectorAsyncWrapped(TestPgvectorAsync):
    wrapped = True
