"""The cache layer against LangChain's ``CacheBackedEmbeddings`` over ``LocalFileStore``.

Run with ``rag-perf bench --only cache``. LangChain is imported inside the function, so
loading this module never imports a framework. Both sides read from disk (our memory tier
is off), embed with LangChain's ``DeterministicFakeEmbedding`` (384-d) on a miss, and are
timed on the warm pass: per vector, including key computation and decoding.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from ...cache import CacheManager, embedding_key
from ...config import PerformanceConfig
from ..registry import BenchContext, Result, Target, benchmark

DIM = 384


def _disk_bytes(directory: Path) -> tuple[int, int]:
    """(apparent bytes, allocated bytes) of every file under ``directory``."""
    apparent = allocated = 0
    for root, _dirs, files in os.walk(directory):
        for name in files:
            st = os.stat(os.path.join(root, name))
            apparent += st.st_size
            allocated += st.st_blocks * 512
    return apparent, allocated


def _best_per_item_us(fn: Callable[[], object], n: int, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best / n * 1e6


@benchmark("cache", "warm 384-d vector hit vs CacheBackedEmbeddings over LocalFileStore")
def warm_vector_hit_vs_langchain(ctx: BenchContext) -> Iterator[Result]:
    """Warm time per vector and bytes on disk per vector, ours vs LangChain's, one run."""
    from langchain_classic.embeddings import CacheBackedEmbeddings
    from langchain_classic.storage import LocalFileStore
    from langchain_core.embeddings import DeterministicFakeEmbedding

    n = ctx.scale(2000, quick=300)
    repeats = ctx.scale(5, quick=3)
    texts = [f"chunk {i}: retrieval augmented generation notes" for i in range(n)]
    inner = DeterministicFakeEmbedding(size=DIM)

    theirs_dir = ctx.workdir / "lc-localfilestore"
    theirs = CacheBackedEmbeddings.from_bytes_store(
        inner, LocalFileStore(theirs_dir), namespace="fake-384", key_encoder="blake2b"
    )
    theirs.embed_documents(texts)  # cold: fill

    ours_dir = ctx.workdir / "ours-disk"
    config = PerformanceConfig(cache_dir=str(ours_dir), cache_size=0, enable_metrics=False)
    cache = CacheManager(config)

    def ours(batch: Sequence[str]) -> list[list[float]]:
        keys = [
            embedding_key(
                provider="fake", model="fake-384", dimensions=DIM, role="document", text=t
            )
            for t in batch
        ]
        found = cache.get_vectors(keys)
        missing = [i for i, k in enumerate(keys) if k not in found]
        if missing:
            computed = inner.embed_documents([batch[i] for i in missing])
            found.update(
                cache.set_vectors(
                    {keys[i]: v for i, v in zip(missing, computed, strict=True)}, model="fake-384"
                )
            )
        return [found[k] for k in keys]

    cold = ours(texts)
    assert ours(texts) == cold  # cold and warm vectors are identical

    ours_us = _best_per_item_us(lambda: ours(texts), n, repeats)
    theirs_us = _best_per_item_us(lambda: theirs.embed_documents(texts), n, repeats)
    yield Result.compare(
        "cache_warm_hit_us_per_vector_384d",
        ours_us,
        "us",
        baseline=("CacheBackedEmbeddings+LocalFileStore", theirs_us),
        better="lower",
        target=Target.ratio_at_least(5.0),
        notes=f"{n} texts, warm, both from disk (our memory tier off); best of {repeats}",
    )

    cache.close()  # the last connection closing checkpoints SQLite's WAL into the database
    empty_dir = ctx.workdir / "ours-empty"
    CacheManager(config.replace(cache_dir=str(empty_dir))).close()
    ours_apparent, ours_alloc = (
        a - b for a, b in zip(_disk_bytes(ours_dir), _disk_bytes(empty_dir), strict=True)
    )
    theirs_apparent, theirs_alloc = _disk_bytes(theirs_dir)
    yield Result.compare(
        "cache_bytes_on_disk_per_vector_384d",
        ours_alloc / n,
        "bytes",
        baseline=("CacheBackedEmbeddings+LocalFileStore", theirs_alloc / n),
        better="lower",
        target=Target.ratio_at_least(3.0),
        notes=(
            f"allocated bytes per vector over {n} vectors; ours is the growth of the whole "
            f"cache directory over an empty one (SQLite pages, keys, indexes, 22-byte "
            f"envelope, float32 payload); apparent bytes: ours {ours_apparent / n:.0f}, "
            f"theirs {theirs_apparent / n:.0f}"
        ),
    )
