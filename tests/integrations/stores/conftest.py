"""Real vector stores for both frameworks: FAISS, Chroma, Qdrant (local) and pgvector.

The PostgreSQL server is the ``pgserver`` wheel's PostgreSQL 16 with pgvector, started
once per session on loopback (rag_perf_plugins.bench.postgres.LocalPostgres). A test that
needs it fails, never skips, when it cannot start.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from rag_perf_plugins.bench.postgres import LocalPostgres
from rag_perf_plugins.cache import CacheManager
from rag_perf_plugins.config import PerformanceConfig

# Chroma's telemetry would try the network: off for every client of the session.
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

STORES = ("faiss", "chroma", "qdrant", "pgvector")
DIM = 16
# The cache configurations every differential test runs with. "redis": memory + the Redis
# tier instead of disk, store write versions read on every call, and a second manager over
# the same Redis (another process: its own memory tier) whose wrapper must answer as well.
CACHES: dict[str, dict[str, Any]] = {
    "disk": {"cache_shards": 1},
    "memory": {"cache_disk_enabled": False},
    "redis": {"redis_position": "instead-of-disk", "version_check_interval": 0.0},
}


def cache_managers(
    request: pytest.FixtureRequest, tmp_path: Path, cache: str
) -> tuple[CacheManager, CacheManager | None]:
    """The wrapper's manager for configuration ``cache``, and for "redis" a second process's.

    Example::

        manager, peer = cache_managers(request, tmp_path, "redis")
    """
    settings = dict(CACHES[cache])
    if cache == "redis":
        settings["redis_url"] = request.getfixturevalue("redis_url")

    def one(name: str) -> CacheManager:
        return CacheManager(
            PerformanceConfig(cache_dir=str(tmp_path / name), enable_metrics=False, **settings)
        )

    return one("cache"), (one("peer-cache") if cache == "redis" else None)


@pytest.fixture(scope="session")
def postgres() -> Iterator[LocalPostgres]:
    """A PostgreSQL 16 + pgvector server on 127.0.0.1 for the whole session."""
    with LocalPostgres() as server:
        yield server


def lc_store(
    kind: str,
    embeddings: Any,
    tmp_path: Path,
    postgres: LocalPostgres | None,
    *,
    async_mode: bool = False,
    collection: str | None = None,
    dim: int = DIM,
) -> Any:
    """An empty LangChain store of ``kind`` over ``embeddings`` (``dim`` dimensions)."""
    name = collection or f"c{uuid.uuid4().hex[:12]}"
    if kind == "faiss":
        import faiss
        from langchain_community.docstore.in_memory import InMemoryDocstore
        from langchain_community.vectorstores import FAISS

        return FAISS(
            embedding_function=embeddings,
            index=faiss.IndexFlatL2(dim),
            docstore=InMemoryDocstore(),
            index_to_docstore_id={},
        )
    if kind == "chroma":
        import chromadb
        from langchain_chroma import Chroma

        client = chromadb.PersistentClient(
            path=str(tmp_path / "chroma"),
            settings=chromadb.config.Settings(anonymized_telemetry=False),
        )
        return Chroma(collection_name=name, embedding_function=embeddings, client=client)
    if kind == "qdrant":
        from langchain_qdrant import QdrantVectorStore
        from qdrant_client import QdrantClient, models

        qdrant = QdrantClient(path=str(tmp_path / "qdrant"))
        qdrant.create_collection(
            name, vectors_config=models.VectorParams(size=dim, distance=models.Distance.COSINE)
        )
        return QdrantVectorStore(qdrant, name, embedding=embeddings)
    if kind == "pgvector":
        from langchain_postgres import PGVector

        assert postgres is not None
        # One table holds every collection, and langchain-postgres maps it once per process
        # with the first store's embedding_length: no length (any dimension), and a
        # database per dimension so the table's rows never mix dimensions.
        database = postgres.database(f"dim{dim}")
        return PGVector(
            embeddings,
            connection=postgres.url("psycopg", database),
            collection_name=name,
            async_mode=async_mode,
        )
    raise ValueError(kind)


def close_lc_store(kind: str, inner: Any) -> None:
    """Close what the store opened: Qdrant's local files, PGVector's connection pools."""
    if kind == "qdrant":
        inner.client.close()
    if kind == "pgvector" and inner._engine is not None:
        # PGVector's ids are unique across collections: drop this one's rows for the next test.
        inner.delete_collection()
        inner._engine.dispose()


async def aclose_lc_store(kind: str, inner: Any) -> None:
    """:func:`close_lc_store` for a store built with ``async_mode=True``."""
    close_lc_store(kind, inner)
    if kind == "pgvector" and inner._async_engine is not None:
        await inner.adelete_collection()
        await inner._async_engine.dispose()


def lc_filter(kind: str, tag: str) -> Any:
    """A metadata filter ``tag == tag`` in the store's own filter language."""
    if kind == "qdrant":
        from qdrant_client import models

        return models.Filter(
            must=[models.FieldCondition(key="metadata.tag", match=models.MatchValue(value=tag))]
        )
    if kind == "pgvector":
        return {"tag": {"$eq": tag}}
    return {"tag": tag}


MakeStore = Callable[..., Any]


def li_store(
    kind: str, tmp_path: Path, postgres: LocalPostgres | None, *, collection: str | None = None,
    dim: int = DIM, asynchronous: bool = False,
) -> Any:  # fmt: skip
    """An empty LlamaIndex store of ``kind`` (``dim`` dimensions)."""
    name = collection or f"c{uuid.uuid4().hex[:12]}"
    if kind == "faiss":
        import faiss
        from llama_index.vector_stores.faiss import FaissVectorStore

        return FaissVectorStore(faiss_index=faiss.IndexFlatL2(dim))
    if kind == "chroma":
        import chromadb
        from llama_index.vector_stores.chroma import ChromaVectorStore

        client = chromadb.PersistentClient(
            path=str(tmp_path / "li-chroma"),
            settings=chromadb.config.Settings(anonymized_telemetry=False),
        )
        return ChromaVectorStore(chroma_collection=client.get_or_create_collection(name))
    if kind == "qdrant":
        from llama_index.vector_stores.qdrant import QdrantVectorStore
        from qdrant_client import AsyncQdrantClient, QdrantClient

        path = str(tmp_path / "li-qdrant")
        if asynchronous:  # local Qdrant locks its directory: one client, sync or async
            return QdrantVectorStore(name, aclient=AsyncQdrantClient(path=path))
        return QdrantVectorStore(name, client=QdrantClient(path=path))
    if kind == "pgvector":
        from llama_index.vector_stores.postgres import PGVectorStore

        assert postgres is not None
        return PGVectorStore.from_params(
            host="127.0.0.1", port=str(postgres.port), database="postgres", user="postgres",
            password="", table_name=name, embed_dim=dim,
        )  # fmt: skip
    raise ValueError(kind)


async def aclose_li_store(kind: str, inner: Any) -> None:
    """Close what a LlamaIndex store opened (Qdrant's local files, PG's engines)."""
    if kind == "qdrant":
        if inner._client is not None:
            inner._client.close()
        if inner._aclient is not None:
            await inner._aclient.close()
    if kind == "pgvector":
        await inner.close()
