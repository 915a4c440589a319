"""EmbeddingService: one batched lookup, single-flight, micro-batching, rounding, degradation."""

from __future__ import annotations

import asyncio
import hashlib
import math
import threading
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import diskcache
import numpy as np
import pytest

from rag_perf_plugins.cache import CacheManager, cache_control
from rag_perf_plugins.cache.control import CacheMode
from rag_perf_plugins.cache.serialize import round_vectors
from rag_perf_plugins.config import PerformanceConfig
from rag_perf_plugins.services.embeddings import (
    CacheEmbeddingStore,
    EmbeddingService,
    EmbeddingStore,
)
from rag_perf_plugins.tracking import PerformanceTracker


class DiskStore:
    """A real diskcache directory holding raw little-endian float32 vectors."""

    dtype = "float32"

    def __init__(self, path: Path) -> None:
        self.cache = diskcache.Cache(str(path))
        self.get_many_calls = 0
        self.fail = False

    def embedding_key(
        self, provider: str, model: str, dimensions: int | None, role: str, text: str
    ) -> str:
        raw = "\x00".join([provider, model, str(dimensions), role, text])
        return hashlib.blake2b(raw.encode(), digest_size=16).hexdigest()

    def get_many(self, keys: Sequence[str]) -> list[list[float] | None]:
        self.get_many_calls += 1
        if self.fail:
            raise OSError("disk on fire")
        out: list[list[float] | None] = []
        for key in keys:
            raw = self.cache.get(key)
            out.append(None if raw is None else np.frombuffer(raw, "<f4").tolist())
        return out

    def set_many(self, items: Mapping[str, list[float]], *, ttl: float | None = None) -> None:
        if self.fail:
            raise OSError("disk on fire")
        for key, vec in items.items():
            self.cache.set(key, np.asarray(vec, "<f4").tobytes(), expire=ttl)

    async def aget_many(self, keys: Sequence[str]) -> list[list[float] | None]:
        return await asyncio.to_thread(self.get_many, keys)

    async def aset_many(
        self, items: Mapping[str, list[float]], *, ttl: float | None = None
    ) -> None:
        await asyncio.to_thread(self.set_many, items, ttl=ttl)

    def close(self) -> None:
        self.cache.close()


class Provider:
    """A counting provider: the vector of a text is derived from its bytes."""

    def __init__(self, dim: int = 8) -> None:
        self.dim = dim
        self.calls: list[list[str]] = []
        self.query_calls: list[str] = []
        self.lock = threading.Lock()

    def vec(self, text: str) -> list[float]:
        digest = hashlib.sha256(text.encode()).digest()
        return [b / 255.0 + 0.1 for b in digest[: self.dim]]

    def embed_many(self, texts: list[str]) -> list[list[float]]:
        with self.lock:
            self.calls.append(list(texts))
        return [self.vec(t) for t in texts]

    async def aembed_many(self, texts: list[str]) -> list[list[float]]:
        await asyncio.sleep(0.001)
        return self.embed_many(texts)

    def embed_query(self, text: str) -> list[float]:
        with self.lock:
            self.query_calls.append(text)
        return self.vec("query: " + text)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[DiskStore]:
    s = DiskStore(tmp_path / "vectors")
    yield s
    s.close()


def make(
    provider: Provider,
    *,
    store: EmbeddingStore | None = None,
    symmetric: bool = True,
    asynchronous: bool = True,
    tracker: PerformanceTracker | None = None,
    **config: object,
) -> EmbeddingService:
    cfg = PerformanceConfig(**{"batch_size": 10, "max_wait_time": 0.020, **config})  # type: ignore[arg-type]
    return EmbeddingService(
        provider.embed_many,
        aembed_many=provider.aembed_many if asynchronous else None,
        embed_query=None if symmetric else provider.embed_query,
        provider="test",
        model="m",
        dimensions=provider.dim,
        symmetric=symmetric,
        config=cfg,
        store=store,
        tracker=tracker or PerformanceTracker(),
    )


def test_cold_and_warm_return_identical_rounded_vectors(store: DiskStore) -> None:
    provider = Provider()
    service = make(provider, store=store)
    cold = service.embed_documents(["a", "b", "a"])
    warm = service.embed_documents(["a", "b", "a"])
    assert cold == warm
    assert cold[0] == round_vectors([provider.vec("a")], "float32")[0]
    assert cold[0] != provider.vec("a")  # float64 input really was rounded
    assert provider.calls == [["a", "b"]]  # duplicates in one call are sent once
    assert store.get_many_calls == 2  # one batched lookup per call


def test_warm_call_in_a_new_service_makes_no_provider_call(store: DiskStore) -> None:
    provider = Provider()
    make(provider, store=store).embed_documents(["x", "y"])
    again = make(provider, store=store)
    again.embed_documents(["y", "x"])
    assert len(provider.calls) == 1 and again.provider_calls == 0


def test_roles_models_and_dimensions_never_share_vectors(store: DiskStore) -> None:
    provider = Provider()
    service = make(provider, store=store, symmetric=False)
    service.embed_documents(["t"])
    service.embed_query("t")
    assert provider.calls == [["t"]] and provider.query_calls == ["t"]
    other = EmbeddingService(
        provider.embed_many,
        provider="test",
        model="m2",
        dimensions=8,
        symmetric=True,
        store=store,
        tracker=PerformanceTracker(),
    )
    other.embed_documents(["t"])
    smaller = EmbeddingService(
        provider.embed_many,
        provider="test",
        model="m",
        dimensions=4,
        symmetric=True,
        store=store,
        tracker=PerformanceTracker(),
    )
    smaller.embed_documents(["t"])
    assert len(provider.calls) == 3


async def test_distinct_concurrent_queries_are_batched_when_symmetric() -> None:
    provider = Provider()
    service = make(provider, batch_size=20)
    vectors = await asyncio.gather(*(service.aembed_query(f"q{i}") for i in range(100)))
    assert len(provider.calls) <= math.ceil(100 / 20) + 1
    assert vectors[7] == round_vectors([provider.vec("q7")], "float32")[0]
    await service.aclose()


async def test_asymmetric_queries_coalesce_only_when_identical() -> None:
    provider = Provider()
    service = make(provider, symmetric=False)
    same = await asyncio.gather(*(service.aembed_query("same") for _ in range(100)))
    assert provider.query_calls == ["same"] and provider.calls == []
    assert all(v == same[0] for v in same)
    await asyncio.gather(*(service.aembed_query(f"q{i}") for i in range(5)))
    assert len(provider.query_calls) == 6


def _query_lane(provider: Provider, batches: list[list[str]], **config: object) -> EmbeddingService:
    def embed_queries(texts: list[str]) -> list[list[float]]:
        with provider.lock:
            batches.append(list(texts))
        return [provider.embed_query(t) for t in texts]

    cfg = PerformanceConfig(**{"batch_size": 16, "max_wait_time": 0.020, **config})  # type: ignore[arg-type]
    return EmbeddingService(
        provider.embed_many, embed_query=provider.embed_query, embed_queries=embed_queries,
        provider="test", model="m", dimensions=provider.dim, symmetric=False, config=cfg,
        tracker=PerformanceTracker(),
    )  # fmt: skip


async def test_asymmetric_queries_share_batches_through_embed_queries() -> None:
    """With embed_queries, distinct concurrent queries go in batches of up to batch_size."""
    provider, batches = Provider(), list[list[str]]()
    service = _query_lane(provider, batches)
    vectors = await asyncio.gather(*(service.aembed_query(f"q{i}") for i in range(64)))
    assert sum(len(b) for b in batches) == 64 and max(len(b) for b in batches) <= 16
    assert len(batches) == service.provider_calls <= 6
    assert provider.calls == []  # never embedded as documents
    lone = Provider()
    assert vectors[7] == round_vectors([lone.embed_query("q7")], "float32")[0]
    await service.aclose()


def test_asymmetric_queries_share_batches_from_threads() -> None:
    provider, batches = Provider(), list[list[str]]()
    service = _query_lane(provider, batches, max_wait_time=0.050)
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda i: service.embed_query(f"q{i}"), range(64)))
    assert sum(len(b) for b in batches) == 64 and len(batches) < 64
    assert max(len(b) for b in batches) <= 16
    service.close()


async def test_identical_concurrent_queries_make_one_call() -> None:
    provider = Provider()
    service = make(provider)
    await asyncio.gather(*(service.aembed_query("hello") for _ in range(100)))
    assert provider.calls == [["hello"]]
    await service.aclose()


def test_threads_share_batches_and_flights(store: DiskStore) -> None:
    provider = Provider()
    service = make(provider, store=store, batch_size=50, max_wait_time=0.050)
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda i: service.embed_query(f"q{i % 40}"), range(200)))
    sent = [t for call in provider.calls for t in call]
    assert len(sent) == len(set(sent)) == 40  # every distinct text sent exactly once
    service.close()


async def test_sync_only_provider_runs_off_the_loop_and_batched() -> None:
    provider = Provider()
    loop_thread = threading.get_ident()
    threads: list[int] = []
    original = provider.embed_many

    def embed_many(texts: list[str]) -> list[list[float]]:
        threads.append(threading.get_ident())
        return original(texts)

    provider.embed_many = embed_many  # type: ignore[method-assign]
    service = make(provider, asynchronous=False, batch_size=50)
    await asyncio.gather(*(service.aembed_documents([f"d{i}"]) for i in range(200)))
    assert len(provider.calls) <= 5
    assert loop_thread not in threads
    await service.aclose()


async def test_errors_reach_followers_and_are_not_cached(store: DiskStore) -> None:
    provider = Provider()
    boom = [True]

    async def flaky(texts: list[str]) -> list[list[float]]:
        await asyncio.sleep(0.005)
        if boom[0]:
            raise ConnectionError("provider down")
        return provider.embed_many(texts)

    service = EmbeddingService(
        provider.embed_many,
        aembed_many=flaky,
        provider="t",
        model="m",
        symmetric=True,
        store=store,
        tracker=PerformanceTracker(),
    )
    results = await asyncio.gather(
        *(service.aembed_query("x") for _ in range(5)), return_exceptions=True
    )
    assert all(isinstance(r, ConnectionError) for r in results)
    boom[0] = False
    assert await service.aembed_query("x") == round_vectors([provider.vec("x")], "float32")[0]
    await service.aclose()


async def test_cancelled_leader_does_not_strand_followers() -> None:
    provider = Provider()
    service = make(provider)
    leader = asyncio.create_task(service.aembed_query("z"))
    await asyncio.sleep(0)
    follower = asyncio.create_task(service.aembed_query("z"))
    await asyncio.sleep(0)
    leader.cancel()
    assert await follower == round_vectors([provider.vec("z")], "float32")[0]
    assert provider.calls == [["z"]]
    await service.aclose()


def test_failing_store_degrades_counts_and_warns_once(
    store: DiskStore, caplog: pytest.LogCaptureFixture
) -> None:
    provider = Provider()
    tracker = PerformanceTracker()
    service = make(provider, store=store, tracker=tracker)
    store.fail = True
    assert service.embed_documents(["a"]) == service.embed_documents(["a"])
    warnings = [r for r in caplog.records if "embedding cache failed" in r.getMessage()]
    assert len(warnings) == 1
    assert tracker.get_operation_stats("embedding.store").counters["cache.errors"] == 4


def test_stats_per_call(store: DiskStore) -> None:
    provider = Provider()
    tracker = PerformanceTracker()
    service = make(provider, store=store, tracker=tracker)
    service.embed_documents(["a", "b"])
    service.embed_documents(["a", "b"])
    stats = tracker.get_operation_stats("embedding.document")
    assert stats.count == 2 and stats.cache_hits == 1 and stats.cache_misses == 1
    assert stats.tokens_saved > 0 and stats.tokens_in > 0


def test_bad_arguments_are_named() -> None:
    provider = Provider()
    with pytest.raises(ValueError, match="model must be"):
        EmbeddingService(provider.embed_many, provider="p", model="", symmetric=True)
    with pytest.raises(ValueError, match="dimensions must be"):
        EmbeddingService(provider.embed_many, provider="p", model="m", dimensions=0, symmetric=True)
    with pytest.raises(TypeError, match="aembed_many must be an async function"):
        EmbeddingService(
            provider.embed_many,
            aembed_many=provider.embed_many,  # type: ignore[arg-type]
            provider="p",
            model="m",
            symmetric=True,
        )
    service = make(provider)
    with pytest.raises(TypeError, match="single str"):
        service.embed_documents("abc")
    with pytest.raises(ValueError, match="returned 1 vectors for 2 texts"):
        EmbeddingService(
            lambda texts: [[1.0]],
            provider="p",
            model="m",
            symmetric=True,
            batching=False,
            tracker=PerformanceTracker(),
        ).embed_documents(["a", "b"])


def test_repr_shows_live_state() -> None:
    service = make(Provider())
    service.embed_documents(["a"])
    assert "provider calls: 1" in repr(service) and "test/m" in repr(service)


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[CacheManager]:
    cache = CacheManager(PerformanceConfig(cache_dir=str(tmp_path / "cm"), enable_metrics=False))
    yield cache
    cache.close()


def test_cache_manager_store_cold_equals_warm_across_managers(
    manager: CacheManager, tmp_path: Path
) -> None:
    provider = Provider()
    cold = make(provider, store=CacheEmbeddingStore(manager)).embed_documents(["p", "q"])
    fresh = CacheManager(PerformanceConfig(cache_dir=str(tmp_path / "cm"), cache_size=0))
    try:
        warm_service = make(provider, store=CacheEmbeddingStore(fresh))
        assert warm_service.embed_documents(["q", "p"]) == [cold[1], cold[0]]
        assert warm_service.provider_calls == 0
    finally:
        fresh.close()


async def test_cache_manager_store_async_path(manager: CacheManager) -> None:
    provider = Provider()
    service = make(provider, store=CacheEmbeddingStore(manager))
    cold = await service.aembed_documents(["r"])
    assert await service.aembed_documents(["r"]) == cold
    assert service.provider_calls == 1
    await service.aclose()


@pytest.mark.parametrize(
    ("mode", "calls_after_second", "stored"),
    [("bypass", 2, False), ("refresh", 2, True), ("no-store", 1, False)],
)
def test_cache_control_modes(
    store: DiskStore, mode: CacheMode, calls_after_second: int, stored: bool
) -> None:
    provider = Provider()
    service = make(provider, store=store)
    if mode == "no-store":
        with cache_control(mode):
            service.embed_documents(["new"])  # a miss computed but not written
        assert len(provider.calls) == 1
        service.embed_documents(["new"])
        assert len(provider.calls) == 2
        service.embed_documents(["warm"])
        with cache_control(mode):
            service.embed_documents(["warm"])  # read still allowed
        assert len(provider.calls) == 3
        return
    service.embed_documents(["x"])
    with cache_control(mode):
        service.embed_documents(["x"])
    assert len(provider.calls) == calls_after_second
    key = store.embedding_key("test", "m", 8, "document", "y")
    with cache_control(mode):
        service.embed_documents(["y"])
    assert (store.get_many([key])[0] is not None) is stored
