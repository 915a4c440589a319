"""SearchCache: the one search-cache core of both vector-store wrappers."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from rag_perf_plugins._clock import FakeClock
from rag_perf_plugins.cache import CacheManager, DiskTier, MemoryTier
from rag_perf_plugins.config import PerformanceConfig
from rag_perf_plugins.services.search import SearchCache
from rag_perf_plugins.tracking import PerformanceTracker

FIELDS = {"query": "what is rag?", "k": 2, "filters": None}


class Store:
    """A tiny real 'store': a list of texts; a search returns the texts containing a word."""

    def __init__(self) -> None:
        self.texts: list[str] = ["rag pairs retrieval with generation", "bananas are yellow"]
        self.searches = 0

    def search(self, word: str) -> list[str]:
        self.searches += 1
        return [t for t in self.texts if word in t]


def _search(cache: SearchCache, store: Store, word: str = "rag") -> list[str]:
    return cache.search(
        "similarity_search", {**FIELDS, "query": word}, lambda: store.search(word), list, list
    )


def _config(directory: Path, **overrides: Any) -> PerformanceConfig:
    return PerformanceConfig(cache_dir=str(directory), enable_metrics=False, **overrides)


def test_hits_skip_the_store_and_writes_invalidate(tmp_path: Path) -> None:
    cache = SearchCache(_config(tmp_path / "c"), name="kb", tracker=PerformanceTracker())
    store = Store()
    assert _search(cache, store) == _search(cache, store) == [store.texts[0]]
    assert store.searches == 1
    cache.write("add", lambda: store.texts.append("rag again"))
    assert _search(cache, store) == [store.texts[0], "rag again"]
    assert store.searches == 2

    def half_written() -> None:
        store.texts.append("rag half")
        raise RuntimeError("the database failed half way")

    with pytest.raises(RuntimeError):
        cache.write("add", half_written)
    assert "rag half" in _search(cache, store)  # a failed write still bumps the version
    cache.cache.close()


def test_two_wrappers_with_different_ttls_see_each_others_writes(tmp_path: Path) -> None:
    directory = tmp_path / "c"
    short = SearchCache(_config(directory, cache_ttl=10.0), name="kb")
    long = SearchCache(_config(directory, cache_ttl=20.0), name="kb")
    assert short.cache is not long.cache  # different cache settings, different managers
    store = Store()
    _search(short, store)
    assert _search(short, store) == _search(long, store)
    assert store.searches == 1  # the directory is shared: one entry serves both
    long.write("add", lambda: store.texts.append("rag too"))
    assert _search(short, store) == [store.texts[0], "rag too"]  # and so is the version
    assert store.searches == 2
    short.cache.close()
    long.cache.close()


@pytest.mark.parametrize("memory_only", [False, True])
def test_memory_only_and_disk_managers_each_keep_one_version(
    tmp_path: Path, memory_only: bool
) -> None:
    config = _config(tmp_path / "c", cache_disk_enabled=not memory_only)
    one = SearchCache(config, name="kb", cache=CacheManager(config))
    two = SearchCache(config, name="kb", cache=CacheManager(config))
    store = Store()
    _search(one, store)
    two.invalidate()
    _search(one, store)
    assert store.searches == 2


WRITER = textwrap.dedent(
    """
    import sys
    from rag_perf_plugins.config import PerformanceConfig
    from rag_perf_plugins.services.search import SearchCache
    SearchCache(PerformanceConfig(cache_dir=sys.argv[1]), name="kb").invalidate()
    """
)


@pytest.mark.parametrize(("interval", "seen"), [(0.0, True), (3600.0, False)])
def test_version_check_interval_bounds_how_long_another_process_is_unseen(
    tmp_path: Path, interval: float, seen: bool
) -> None:
    directory = tmp_path / "c"
    cache = SearchCache(_config(directory, version_check_interval=interval), name="kb")
    store = Store()
    _search(cache, store)
    subprocess.run([sys.executable, "-c", WRITER, str(directory)], check=True)
    _search(cache, store)
    assert store.searches == (2 if seen else 1)
    cache.cache.close()


class RecordingDisk(DiskTier):
    """A real disk tier that notes which threads read the write version."""

    version_threads: set[int]

    def get_many(self, keys: Sequence[str]) -> dict[str, bytes]:
        if any(k.startswith("__ns__:") for k in keys):
            self.version_threads.add(threading.get_ident())
        return super().get_many(keys)


async def test_async_searches_read_the_version_off_the_event_loop(tmp_path: Path) -> None:
    disk = RecordingDisk(tmp_path / "c")
    disk.version_threads = set()
    config = _config(tmp_path / "c", version_check_interval=0.0)
    manager = CacheManager(config, tiers=[MemoryTier(max_items=100, max_bytes=2**20), disk])
    cache = SearchCache(config, name="kb", cache=manager)
    store = Store()

    async def run() -> list[str]:
        async def call() -> list[str]:
            return store.search("rag")

        return await cache.asearch("similarity_search", FIELDS, call, list, list)

    assert await run() == await run()
    assert store.searches == 1
    assert disk.version_threads  # the version was read from the shared tier ...
    assert threading.get_ident() not in disk.version_threads  # ... never on the loop
    await cache.ainvalidate()
    await run()
    assert store.searches == 2
    manager.close()


def test_entries_live_the_wrappers_ttl(tmp_path: Path, fake_clock: FakeClock) -> None:
    manager = CacheManager(_config(tmp_path / "c", cache_ttl=3600.0), clock=fake_clock)
    cache = SearchCache(_config(tmp_path / "c", retrieval_ttl=5.0), name="kb", cache=manager)
    store = Store()
    _search(cache, store)
    fake_clock.advance(4.0)
    _search(cache, store)
    assert store.searches == 1
    fake_clock.advance(2.0)
    _search(cache, store)
    assert store.searches == 2
    manager.close()


def test_unkeyable_and_unreadable_calls_go_to_the_store(tmp_path: Path) -> None:
    tracker = PerformanceTracker()
    cache = SearchCache(_config(tmp_path / "c"), name="kb", tracker=tracker)
    store = Store()

    def search() -> list[str]:
        return store.search("rag")

    def same(value: Any) -> Any:
        return value

    for _ in range(2):
        cache.search("q", None, search, same, same)
        cache.search("q", {**FIELDS, "filters": object()}, search, same, same)
    assert store.searches == 4
    assert tracker.get_operation_stats("vectorstore.q").counters["cache.unkeyable"] == 4

    def broken_load(data: Any) -> list[str]:
        raise KeyError("c")

    cache.search("q", FIELDS, lambda: store.search("rag"), list, broken_load)
    cache.search("q", FIELDS, lambda: store.search("rag"), list, broken_load)
    assert store.searches == 6  # an entry that does not load is a miss, not an error
    asyncio.run(cache.ainvalidate())
    cache.cache.close()


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="ttl must be > 0"):
        SearchCache(_config(tmp_path / "c"), ttl=0)
    with pytest.raises(ValueError, match="name must be a non-empty str"):
        SearchCache(_config(tmp_path / "c"), name="")
    with pytest.raises(TypeError, match="config must be a PerformanceConfig"):
        SearchCache({"cache_ttl": 5})  # type: ignore[arg-type]
