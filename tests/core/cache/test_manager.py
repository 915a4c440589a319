"""CacheManager on real directories: TTL, tiers, envelope safety, degradation, namespaces."""

from __future__ import annotations

import logging
import os
import pickle
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import diskcache
import pytest

from rag_perf_plugins._clock import FakeClock
from rag_perf_plugins.cache import (
    CacheManager,
    DiskTier,
    MemoryTier,
    cache_control,
    get_cache_manager,
    set_cache_manager,
)
from rag_perf_plugins.cache.serialize import decode, encode
from rag_perf_plugins.config import PerformanceConfig
from rag_perf_plugins.errors import CacheError


def make(cache_dir: Path, clock: Any = None, **overrides: Any) -> CacheManager:
    config = PerformanceConfig(cache_dir=str(cache_dir), **overrides)
    if clock is None:
        return CacheManager(config, tracker=None)
    return CacheManager(config, clock=clock)


@pytest.fixture
def cache(cache_dir: Path, fake_clock: FakeClock) -> Any:
    manager = make(cache_dir, fake_clock)
    yield manager
    manager.close()


def disk(manager: CacheManager) -> DiskTier:
    tier = manager.tiers[-1]
    assert isinstance(tier, DiskTier)
    return tier


def test_set_get_roundtrip_and_default(cache: CacheManager) -> None:
    cache.set("k", {"answer": "42", "sources": ["a", "b"], "score": 0.5})
    assert cache.get("k") == {"answer": "42", "sources": ["a", "b"], "score": 0.5}
    assert cache.get("missing", "dflt") == "dflt"
    assert cache.delete("k") is True
    assert cache.get("k") is None


def test_ttl_uses_injected_clock(cache: CacheManager, fake_clock: FakeClock) -> None:
    cache.set("short", "v", ttl=10.0)
    cache.set("default", "v")  # cache_ttl = 3600 s
    cache.set("forever", "v", ttl=float("inf"))
    fake_clock.advance(9.9)
    assert cache.get("short") == "v"
    fake_clock.advance(0.2)
    assert cache.get("short") is None
    assert cache.get("default") == "v"
    fake_clock.advance(3600.0)
    assert cache.get("default") is None
    assert cache.get("forever") == "v"
    with pytest.raises(ValueError, match="ttl must be > 0"):
        cache.set("bad", "v", ttl=0)


def test_value_persists_across_processes(cache_dir: Path) -> None:
    writer = make(cache_dir)
    writer.set("shared", [1, "two", {"three": 3.0}], namespace="query")
    writer.close()
    code = (
        "from rag_perf_plugins.cache import CacheManager\n"
        "from rag_perf_plugins.config import PerformanceConfig\n"
        f"m = CacheManager(PerformanceConfig(cache_dir={str(cache_dir)!r}))\n"
        "print(repr(m.get('shared', namespace='query')))\n"
        "m.set('back', 'from child')\n"
        "m.close()\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[1, 'two', {'three': 3.0}]"
    reader = make(cache_dir)
    assert reader.get("back") == "from child"
    reader.close()


def test_directory_is_owner_only(cache_dir: Path) -> None:
    manager = make(cache_dir)
    assert stat.S_IMODE(os.stat(cache_dir).st_mode) == 0o700
    manager.close()


def test_default_manager_honours_env_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAG_PERF_CACHE_DIR", str(tmp_path / "env-cache"))
    old = set_cache_manager(None)
    try:
        manager = get_cache_manager()
        assert get_cache_manager() is manager
        assert disk(manager).directory == str(tmp_path / "env-cache")
        manager.set("k", 1)
        manager.close()
    finally:
        set_cache_manager(old)


def test_memory_hit_then_disk_promotion(cache_dir: Path, fake_clock: FakeClock) -> None:
    first = make(cache_dir, fake_clock)
    first.set("k", "v")
    assert first.get("k") == "v"
    assert first.get_stats()["tiers"]["memory"]["hits"] == 1
    first.close()
    second = make(cache_dir, fake_clock)  # empty memory tier, same directory
    assert second.get("k") == "v"  # from disk, promoted
    assert second.get("k") == "v"  # from memory
    stats = second.get_stats()
    assert stats["namespaces"]["default"]["hits"] == {"disk": 1, "memory": 1}
    assert stats["tiers"]["memory"]["items"] == 1
    second.close()


def test_memory_tier_evicts_by_bytes_and_items() -> None:
    tier = MemoryTier(max_items=100, max_bytes=10 * (1000 + 1 + MemoryTier.ENTRY_OVERHEAD))
    tier.set_many({str(i): b"x" * 1000 for i in range(10)})
    tier.get_many(["0"])  # 0 becomes most recently used
    tier.set_many({"a": b"x" * 1000})
    assert tier.evictions == 1
    assert set(tier.get_many(["0", "1", "a"])) == {"0", "a"}  # "1" was least recent
    small = MemoryTier(max_items=3, max_bytes=10**6)
    small.set_many({str(i): b"v" for i in range(5)})
    assert len(small) == 3 and small.evictions == 2


def test_disk_tier_evicts_by_bytes(tmp_path: Path) -> None:
    tier = DiskTier(tmp_path / "d", shards=1, timeout=1.0, size_limit=1_000_000)
    blob = b"y" * 40_000  # above diskcache's 32 KiB inline limit: stored as files
    for i in range(60):
        tier.set_many({f"k{i:02d}": blob})
    stats = tier.stats()
    assert stats["evictions"] > 0
    assert stats["items"] + stats["evictions"] == 60
    # diskcache culls up to 10 entries per write once over the limit, so the volume stays
    # within the limit plus one write's worth.
    assert stats["bytes"] <= 1_000_000 + 40_000
    assert "k59" in tier.get_many(["k59"])
    assert "k00" not in tier.get_many(["k00"])  # least recently stored went first
    tier.close()


def test_corrupt_entry_is_a_counted_miss(cache: CacheManager) -> None:
    cache.set("k", "v")
    skey = "default:1:k"
    for tier in cache.tiers:
        tier.set_many({skey: b"RPC\x01garbage"})
    assert cache.get("k", "miss") == "miss"
    stats = cache.get_stats()
    assert stats["errors_by_kind"] == {"corrupt": 2}  # both tiers' copies, then deleted
    assert cache.get("k", "miss") == "miss"
    assert disk(cache).get_many([skey]) == {}


def test_planted_pickle_is_never_loaded(cache_dir: Path, tmp_path: Path) -> None:
    manager = make(cache_dir, cache_size=0)  # disk only
    manager.set("k", "v")
    tier = disk(manager)
    skey = "default:1:k"
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self) -> tuple[Any, ...]:
            return (os.mkdir, (str(marker),))

    (index,) = tier._by_shard([skey])
    db = Path(tier.directory) / f"{index:03d}" / "cache.db"
    with sqlite3.connect(db) as con:
        con.execute(
            "UPDATE Cache SET mode = 4, value = ? WHERE key = ?",
            (sqlite3.Binary(pickle.dumps(Evil())), skey),
        )
        con.execute(
            "INSERT INTO Cache (key, raw, store_time, expire_time, access_time, access_count,"
            " tag, size, mode, filename, value) VALUES (?, 0, 0, NULL, 0, 0, NULL, 0, 4, NULL, ?)",
            (sqlite3.Binary(pickle.dumps("default:1:other")), sqlite3.Binary(pickle.dumps(Evil()))),
        )
    con.close()
    # diskcache's own API on this directory refuses too (SafeDisk), instead of unpickling.
    shard = tier._shards[index]
    with pytest.raises(ValueError, match="refusing a row in mode 4"):
        shard.get(skey)
    with pytest.raises(ValueError, match="refusing a pickled key"):
        list(shard.iterkeys())
    assert manager.get("k", "miss") == "miss"
    assert manager.get("other", "miss") == "miss"
    assert manager.get_stats()["errors_by_kind"] == {"corrupt": 1}  # then deleted
    assert manager.get("k", "miss") == "miss"
    assert manager.get_stats()["errors_by_kind"] == {"corrupt": 1}
    assert not marker.exists()
    manager.close()


def test_failing_disk_degrades_with_one_warning(
    cache: CacheManager, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def full(*_args: Any, **_kwargs: Any) -> Any:
        raise sqlite3.OperationalError("database or disk is full")

    # The storage boundary: the row write inside diskcache's SQLite transaction.
    monkeypatch.setattr(diskcache.Cache, "_row_insert", full)
    monkeypatch.setattr(diskcache.Cache, "_row_update", full)
    with caplog.at_level(logging.WARNING, logger="rag_perf_plugins.cache"):
        cache.set("a", 1)
        cache.set("b", 2)
        assert cache.get_or_compute("c", lambda: 3) == 3
    assert cache.get("a") == 1  # the memory tier still works
    stats = cache.get_stats()
    assert stats["errors_by_kind"] == {"full": 3}
    assert stats["tiers"]["disk"]["errors"] == 3
    warnings = [r for r in caplog.records if r.name == "rag_perf_plugins.cache"]
    assert len(warnings) == 1 and "disk" in warnings[0].getMessage()

    def locked(*_args: Any, **_kwargs: Any) -> Any:
        raise diskcache.Timeout

    monkeypatch.setattr(DiskTier, "get_many", locked)
    monkeypatch.setattr(DiskTier, "set_many", locked)
    assert cache.get("zzz", "miss") == "miss"
    assert cache.get_stats()["errors_by_kind"] == {"full": 3, "timeout": 1}


def test_unwritable_directory_runs_memory_only(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    manager = make(blocker / "cache")
    assert [t.name for t in manager.tiers] == ["memory"]
    manager.set("k", "v")
    assert manager.get("k") == "v"
    assert manager.get_stats()["errors"] == 1
    manager.close()


def test_unserializable_value(cache: CacheManager) -> None:
    with pytest.raises(CacheError, match="cannot store a value of type object"):
        cache.set("k", object())
    assert cache.get_or_compute("k", object) is not None  # computed, returned, not stored
    assert cache.get_stats()["errors_by_kind"] == {"unserializable": 1}


def test_namespaces_clear_bump_and_purge_model(cache_dir: Path, fake_clock: FakeClock) -> None:
    cache = make(cache_dir, fake_clock)
    cache.set("k", "llm-a", namespace="llm", model="a")
    cache.set("k", "llm-b", namespace="llm", model="b")  # same key: overwritten
    cache.set("e", [1.0], namespace="embeddings", model="a")
    cache.set("q", "query", namespace="query")
    assert cache.get("k", namespace="llm") == "llm-b"
    assert cache.get("k", namespace="query") is None
    assert cache.purge_model("a") == 2  # memory + disk copy of "e"
    assert cache.get("e", namespace="embeddings") is None
    assert cache.clear("llm") == 2
    assert cache.get("k", namespace="llm") is None
    assert cache.get("q", namespace="query") == "query"
    assert cache.bump_namespace("query") == 2
    assert cache.get("q", namespace="query") is None
    cache.close()
    other = make(cache_dir, fake_clock)  # a new process sees the bumped version
    assert other.namespace_version("query") == 2
    other.set("q", "new", namespace="query")
    assert other.get("q", namespace="query") == "new"
    with pytest.raises(ValueError, match="namespace must be"):
        other.get("k", namespace="bad:name")
    other.close()


def test_cache_control_modes(cache: CacheManager) -> None:
    calls: list[int] = []

    def compute() -> int:
        calls.append(1)
        return len(calls)

    assert cache.get_or_compute("k", compute) == 1
    assert cache.get_or_compute("k", compute) == 1
    with cache_control("bypass"):
        assert cache.get_or_compute("k", compute) == 2
        assert cache.get("k") is None
    with cache_control("refresh", ttl=5.0):
        assert cache.get_or_compute("k", compute) == 3
    assert cache.get("k") == 3
    with cache_control("no-store"):
        assert cache.get_or_compute("n", compute) == 4
        assert cache.get_or_compute("k", compute) == 3
    assert cache.get("n") is None
    assert cache.get_stats()["namespaces"]["default"]["bypassed"] == 1
    with pytest.raises(ValueError, match="mode must be one of"), cache_control("sometimes"):  # type: ignore[arg-type]
        pass


def test_vectors_are_float32_and_identical_cold_and_warm(cache_dir: Path) -> None:
    manager = make(cache_dir, cache_size=0)
    raw = [0.1, 0.2, 1 / 3]
    cold = manager.set_vectors({"v": raw}, model="m")["v"]
    warm = manager.get_vectors(["v"])["v"]
    assert cold == warm != raw
    tier = disk(manager)
    blob = tier.get_many(["embeddings:1:v"])["embeddings:1:v"]
    assert len(blob) == 22 + 3 * 4  # header + raw little-endian float32
    assert decode(blob).kind == "float32"
    manager.close()
    f64 = make(cache_dir, cache_vector_dtype="float64", cache_size=0)
    assert f64.set_vectors({"w": raw})["w"] == raw == f64.get_vectors(["w"])["w"]
    f64.close()


def test_get_many_is_batched_and_counts(cache_dir: Path) -> None:
    manager = make(cache_dir, cache_size=0)
    manager.set_many({f"k{i}": i for i in range(200)}, namespace="retrieval")
    tier = disk(manager)
    queries: list[str] = []
    for shard in tier._shards:
        shard._con.set_trace_callback(queries.append)
    found = manager.get_many([f"k{i}" for i in range(250)], namespace="retrieval")
    assert found == {f"k{i}": i for i in range(200)}
    selects = [q for q in queries if q.startswith("SELECT key, mode")]
    assert len(selects) <= len(tier._shards)  # one query per shard, not one per key
    stats = manager.get_stats()["namespaces"]["retrieval"]
    assert stats["hits"] == {"disk": 200} and stats["misses"] == 50 and stats["sets"] == 200
    manager.close()


def test_disabled_cache_stores_nothing(cache_dir: Path) -> None:
    manager = make(cache_dir, enable_caching=False)
    manager.set("k", "v")
    assert manager.get("k") is None
    assert manager.get_or_compute("k", lambda: 5) == 5
    manager.close()


def test_stats_feed_the_tracker(cache_dir: Path) -> None:
    from rag_perf_plugins.tracking import PerformanceTracker

    tracker = PerformanceTracker()
    manager = CacheManager(PerformanceConfig(cache_dir=str(cache_dir)), tracker=tracker)
    manager.set("k", 1)
    manager.get("k")
    manager.get("nope")
    counters = tracker.get_metrics()["counters"]
    assert counters["cache.hits"] == 1
    assert counters["cache.misses"] == 1
    assert counters["cache.sets"] == 1
    assert "hits=1" in repr(manager)
    manager.close()


def test_envelope_refuses_foreign_schema() -> None:
    blob = bytearray(encode("x", created_at=0.0, expires_at=None))
    blob[3] = 99
    with pytest.raises(ValueError, match="schema 99"):
        decode(bytes(blob))


def test_purge_model_also_drops_copies_promoted_without_a_tag(cache_dir: Path) -> None:
    writer = make(cache_dir)
    writer.set("k", "old answer", namespace="llm", model="m")
    reader = make(cache_dir)
    assert reader.get("k", namespace="llm") == "old answer"  # promoted into reader's memory
    assert reader.purge_model("m") >= 1
    assert reader.get("k", namespace="llm") is None  # not served from the memory tier
    writer.close()
    reader.close()
