"""PGVector over a psycopg pool we pass: the server opens at most the pool's size.

Connections opened are the change in ``pg_stat_database.sessions`` of a database used only
by the test, over 1,000 uncached searches from 16 tasks (or threads), through
``PerfVectorStore`` over LangChain's ``PGVector`` and LlamaIndex's ``PGVectorStore`` built
on :func:`pooled_engine` / :func:`async_pooled_engine`. The control (an engine without a
pool) shows the measure sees every connection.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from langchain_core.embeddings import DeterministicFakeEmbedding
from psycopg_pool import AsyncConnectionPool, ConnectionPool
from rag_perf_plugins.langchain import PerfVectorStore

from rag_perf_plugins.bench.postgres import LocalPostgres
from rag_perf_plugins.cache import cache_control
from rag_perf_plugins.config import PerformanceConfig
from rag_perf_plugins.errors import ConfigError
from rag_perf_plugins.pool.postgres import async_pooled_engine, pooled_engine

SEARCHES = 1000
TASKS = 16
POOL = 4
DIM = 8


def _dsn(pg: LocalPostgres, database: str) -> str:
    return pg.url(database=database)


def _settled(pg: LocalPostgres, database: str, before: int) -> int:
    """Sessions opened since ``before``, once the server's statistics stop changing."""
    last, since = -1, time.monotonic()
    while True:
        now = pg.sessions(database) - before
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since > 1.0:
            return now
        time.sleep(0.1)


def _config(tmp_path: Path) -> PerformanceConfig:
    return PerformanceConfig(cache_dir=str(tmp_path / "cache"), enable_metrics=False)


def _texts() -> list[str]:
    return [f"chunk {i} about topic {i % 7}" for i in range(50)]


def test_a_pool_without_close_returns_is_refused(postgres: LocalPostgres) -> None:
    pool = ConnectionPool(_dsn(postgres, "postgres"), min_size=1, max_size=1, open=False)
    with pytest.raises(ConfigError, match="close_returns"):
        pooled_engine(pool)


def test_lc_sync_threads_open_at_most_the_pool(postgres: LocalPostgres, tmp_path: Path) -> None:
    from langchain_postgres import PGVector

    database = postgres.database("pooled_sync")
    before = postgres.sessions(database)
    pool = ConnectionPool(_dsn(postgres, database), min_size=1, max_size=POOL,
                          close_returns=True, open=True)  # fmt: skip
    try:
        inner = PGVector(
            DeterministicFakeEmbedding(size=DIM), connection=pooled_engine(pool),
            collection_name=f"c{uuid.uuid4().hex[:8]}",
        )  # fmt: skip
        inner.add_texts(_texts())
        store = PerfVectorStore(inner, _config(tmp_path))
        expected = inner.similarity_search("q7", k=3)
        counter = iter(range(SEARCHES))
        lock = threading.Lock()
        found: list[Any] = []

        def worker() -> None:
            while True:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                with cache_control("bypass"):  # every search reaches the database
                    result = store.similarity_search(f"q{i % 10}", k=3)
                if i % 10 == 7:
                    found.append(result)

        threads = [threading.Thread(target=worker) for _ in range(TASKS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(found) == SEARCHES // 10 and all(r == expected for r in found)
        inner.delete_collection()
    finally:
        pool.close()
    opened = _settled(postgres, database, before)
    assert 1 <= opened <= POOL


async def test_lc_async_tasks_open_at_most_the_pool(
    postgres: LocalPostgres, tmp_path: Path
) -> None:
    from langchain_postgres import PGVector

    database = postgres.database("pooled_async")
    before = postgres.sessions(database)
    pool = AsyncConnectionPool(_dsn(postgres, database), min_size=1, max_size=POOL,
                               close_returns=True, open=False)  # fmt: skip
    await pool.open()
    try:
        inner = PGVector(
            DeterministicFakeEmbedding(size=DIM), connection=async_pooled_engine(pool),
            collection_name=f"c{uuid.uuid4().hex[:8]}", async_mode=True,
        )  # fmt: skip
        await inner.aadd_texts(_texts())
        store = PerfVectorStore(inner, _config(tmp_path))
        expected = await inner.asimilarity_search("q7", k=3)
        queue = iter(range(SEARCHES))

        async def worker() -> list[Any]:
            seen = []
            for i in queue:  # shared iterator: the tasks split the searches
                with cache_control("bypass"):
                    result = await store.asimilarity_search(f"q{i % 10}", k=3)
                if i % 10 == 7:
                    seen.append(result)
            return seen

        parts = await asyncio.gather(*(worker() for _ in range(TASKS)))
        found = [r for part in parts for r in part]
        assert len(found) == SEARCHES // 10 and all(r == expected for r in found)
        await inner.adelete_collection()
    finally:
        await pool.close()
    opened = _settled(postgres, database, before)
    assert 1 <= opened <= POOL


async def test_li_async_tasks_open_at_most_the_pool(
    postgres: LocalPostgres, tmp_path: Path
) -> None:
    from llama_index.core.schema import BaseNode, TextNode
    from llama_index.core.vector_stores.types import VectorStoreQuery
    from llama_index.vector_stores.postgres import PGVectorStore
    from rag_perf_plugins.llama_index import PerfVectorStore as LIPerfVectorStore

    database = postgres.database("pooled_li")
    before = postgres.sessions(database)
    sync_pool = ConnectionPool(_dsn(postgres, database), min_size=1, max_size=1,
                               close_returns=True, open=True)  # fmt: skip
    pool = AsyncConnectionPool(_dsn(postgres, database), min_size=1, max_size=POOL,
                               close_returns=True, open=False)  # fmt: skip
    await pool.open()
    try:
        inner = PGVectorStore(
            engine=pooled_engine(sync_pool), async_engine=async_pooled_engine(pool),
            table_name=f"t{uuid.uuid4().hex[:8]}", embed_dim=DIM,
        )  # fmt: skip
        nodes: list[BaseNode] = [
            TextNode(
                text=t, id_=str(uuid.uuid4()), embedding=[float((i * j) % 5) for j in range(DIM)]
            )
            for i, t in enumerate(_texts())
        ]
        await inner.async_add(nodes)
        store = LIPerfVectorStore(inner, _config(tmp_path))
        query = VectorStoreQuery(query_embedding=[1.0] * DIM, similarity_top_k=3)
        expected = await inner.aquery(query)
        queue = iter(range(SEARCHES))

        async def worker() -> int:
            same = 0
            for _ in queue:
                with cache_control("bypass"):
                    result = await store.aquery(query)
                same += result.ids == expected.ids
            return same

        assert sum(await asyncio.gather(*(worker() for _ in range(TASKS)))) == SEARCHES
        await inner.close()  # disposes both engines; the pools stay open
    finally:
        await pool.close()
        sync_pool.close()
    opened = _settled(postgres, database, before)
    assert 1 <= opened <= POOL + 1  # the async pool, and the sync pool of one (table setup)


def test_the_measure_sees_every_connection(postgres: LocalPostgres) -> None:
    """The control: without a pool, 20 searches' worth of connections are all counted."""
    import psycopg

    database = postgres.database("pooled_control")
    before = postgres.sessions(database)
    for _ in range(20):
        with psycopg.connect(_dsn(postgres, database)) as conn:
            conn.execute("SELECT 1")
    assert _settled(postgres, database, before) == 20
