"""Which writes a cached search sees: the staleness rule of docs/components/vector-stores.md.

- A write through any wrapper of the same store (same default name: the inner store's
  class, location and collection) is seen at once in this process.
- A write that bypasses every wrapper (another process writing to the same table through
  an unwrapped store) is seen when the entry expires (``ttl=``, else ``retrieval_ttl``,
  60 s by default) or after ``invalidate()``.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import uuid
from pathlib import Path
from typing import Any

import pytest
from langchain_core.embeddings import DeterministicFakeEmbedding
from rag_perf_plugins.langchain import PerfVectorStore
from rag_perf_plugins.llama_index import PerfVectorStore as LlamaPerfVectorStore

from rag_perf_plugins._clock import FakeClock
from rag_perf_plugins.bench.postgres import LocalPostgres
from rag_perf_plugins.cache import CacheManager
from rag_perf_plugins.config import PerformanceConfig

from .conftest import DIM, close_lc_store, lc_store


def _manager(tmp_path: Path, clock: FakeClock | None = None) -> CacheManager:
    config = PerformanceConfig(cache_dir=str(tmp_path / "cache"), cache_shards=1)
    return CacheManager(config, clock=clock) if clock else CacheManager(config)


def _ids(n: int) -> list[str]:
    # PGVector's ids are unique across its collections: fresh ones for every test.
    return [str(uuid.uuid4()) for _ in range(n)]


def _texts(docs: list[Any]) -> list[str]:
    return sorted(d.page_content for d in docs)


@pytest.mark.parametrize("kind", ["chroma", "qdrant", "pgvector"])
def test_default_named_wrappers_of_one_store_invalidate_each_other(
    kind: str, tmp_path: Path, postgres: LocalPostgres
) -> None:
    embeddings = DeterministicFakeEmbedding(size=DIM)
    manager = _manager(tmp_path)
    first_inner = lc_store(kind, embeddings, tmp_path, postgres, collection="shared-docs")
    first = PerfVectorStore(first_inner, cache=manager)
    first.add_texts(["apples are red"], ids=_ids(1))
    if kind == "qdrant":  # local Qdrant locks its directory: one client per path
        second_inner = type(first_inner)(first_inner.client, "shared-docs", embedding=embeddings)
    else:
        second_inner = lc_store(kind, embeddings, tmp_path, postgres, collection="shared-docs")
    second = PerfVectorStore(second_inner, cache=manager)
    assert first.name == second.name and "shared-docs" in first.name
    assert _texts(first.similarity_search("fruit", k=5)) == ["apples are red"]
    second.add_texts(["bananas are yellow"], ids=_ids(1))
    assert _texts(first.similarity_search("fruit", k=5)) == [
        "apples are red",
        "bananas are yellow",
    ]
    manager.close()
    close_lc_store(kind, first_inner)
    if kind == "pgvector":
        close_lc_store(kind, second_inner)


def test_stores_without_a_location_get_a_name_of_their_own(tmp_path: Path) -> None:
    embeddings = DeterministicFakeEmbedding(size=DIM)
    manager = _manager(tmp_path)
    one = PerfVectorStore(lc_store("faiss", embeddings, tmp_path, None), cache=manager)
    two = PerfVectorStore(lc_store("faiss", embeddings, tmp_path, None), cache=manager)
    assert one.name != two.name and one.name.startswith("FAISS/mem-")
    manager.close()


def test_wrappers_of_one_in_memory_store_share_its_name_and_see_its_writes(
    tmp_path: Path,
) -> None:
    """Two wrappers over one FAISS object, each on its own cache storage (no shared write
    version): a write through one is seen by the other's next search, never a stale hit."""
    embeddings = DeterministicFakeEmbedding(size=DIM)
    inner = lc_store("faiss", embeddings, tmp_path, None)
    first = PerfVectorStore(inner, cache=_manager(tmp_path / "a"))
    second = PerfVectorStore(inner, cache=_manager(tmp_path / "b"))
    assert first.name == second.name and "/mem-" in first.name
    first.add_texts(["apples are red"], ids=_ids(1))
    assert _texts(second.similarity_search("fruit", k=5)) == ["apples are red"]
    assert _texts(second.similarity_search("fruit", k=5)) == ["apples are red"]  # a hit
    first.add_texts(["bananas are yellow"], ids=_ids(1))
    assert _texts(second.similarity_search("fruit", k=5)) == [
        "apples are red",
        "bananas are yellow",
    ]
    first.cache.close()
    second.cache.close()


def test_llama_index_in_memory_store_names_follow_the_object(tmp_path: Path) -> None:
    """LlamaIndex's stores are pydantic models (unhashable): still one name per object."""
    import gc

    from .conftest import li_store

    inner = li_store("faiss", tmp_path, None)
    one, two = LlamaPerfVectorStore(inner), LlamaPerfVectorStore(inner)
    other = LlamaPerfVectorStore(li_store("faiss", tmp_path, None))
    assert one.name == two.name != other.name and one.name.startswith("FaissVectorStore/mem-")
    name = one.name
    del one, two, inner
    gc.collect()
    again = LlamaPerfVectorStore(li_store("faiss", tmp_path, None))
    assert again.name != name  # a later object never takes a dead one's name


def test_llama_index_default_names_follow_the_store(
    tmp_path: Path, postgres: LocalPostgres
) -> None:
    from llama_index.vector_stores.postgres import PGVectorStore

    def build() -> Any:
        return PGVectorStore.from_params(
            host="127.0.0.1", port=str(postgres.port), database="postgres", user="postgres",
            table_name="li_shared", embed_dim=DIM,
        )  # fmt: skip

    one, two = LlamaPerfVectorStore(build()), LlamaPerfVectorStore(build())
    assert one.name == two.name and one.name.endswith("/public.li_shared")


WRITER = textwrap.dedent(
    """
    import sys
    from langchain_core.embeddings import DeterministicFakeEmbedding
    from langchain_postgres import PGVector

    store = PGVector(DeterministicFakeEmbedding(size=int(sys.argv[3])), connection=sys.argv[1],
                     collection_name=sys.argv[2])
    store.add_texts([sys.argv[4]], ids=[sys.argv[5]])
    store._engine.dispose()
    """
)


def test_a_writer_that_bypasses_the_wrapper_is_seen_after_ttl_or_invalidate(
    tmp_path: Path, postgres: LocalPostgres
) -> None:
    clock = FakeClock(start=1000.0)
    manager = _manager(tmp_path, clock)
    embeddings = DeterministicFakeEmbedding(size=DIM)
    inner = lc_store("pgvector", embeddings, tmp_path, postgres, collection="bypassed")
    store = PerfVectorStore(inner, cache=manager, ttl=30.0)
    store.add_texts(["apples are red"], ids=_ids(1))
    assert _texts(store.similarity_search("fruit", k=5)) == ["apples are red"]

    url = postgres.url("psycopg", postgres.database(f"dim{DIM}"))
    writer = [sys.executable, "-c", WRITER, url, "bypassed", str(DIM)]
    subprocess.run([*writer, "cherries are dark", *_ids(1)], check=True)
    fresh = ["apples are red", "cherries are dark"]
    assert _texts(inner.similarity_search("fruit", k=5)) == fresh
    # Not seen yet: the cached search lives its ttl (the documented staleness bound).
    clock.advance(29.0)
    assert _texts(store.similarity_search("fruit", k=5)) == ["apples are red"]
    clock.advance(2.0)
    assert _texts(store.similarity_search("fruit", k=5)) == fresh

    # invalidate() makes the next search go to the store at once.
    subprocess.run([*writer, "dates are sweet", *_ids(1)], check=True)
    assert len(store.similarity_search("fruit", k=5)) == 2
    store.invalidate()
    assert len(store.similarity_search("fruit", k=5)) == 3
    manager.close()
    close_lc_store("pgvector", inner)
