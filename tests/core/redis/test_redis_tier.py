"""The Redis cache tier against the real Redis: contract, TTL, prefixes, manager wiring."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import textwrap
import threading
import uuid
from pathlib import Path

import pytest
import redis

from rag_perf_plugins._clock import FakeClock
from rag_perf_plugins.cache import CacheManager, DiskTier, MemoryTier, Tier
from rag_perf_plugins.cache.redis_tier import RedisTier
from rag_perf_plugins.cache.serialize import encode
from rag_perf_plugins.config import PerformanceConfig
from rag_perf_plugins.redis.client import CircuitBreaker, RedisUnavailable, redact_url

pytestmark = pytest.mark.redis


def _prefix() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"


def _dead_url() -> str:
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"redis://127.0.0.1:{port}/0"


def _config(url: str | None, prefix: str, **kw: object) -> PerformanceConfig:
    base: dict[str, object] = {
        "redis_url": url,
        "cache_namespace_prefix": prefix,
        "redis_position": "instead-of-disk",
        "cache_disk_enabled": False,
        "enable_metrics": False,
    }
    base.update(kw)
    return PerformanceConfig(**base)  # type: ignore[arg-type]


def test_tier_contract(redis_url: str) -> None:
    tier = RedisTier(redis_url, prefix=_prefix())
    try:
        assert isinstance(tier, Tier) and tier.blocking
        blob = encode({"a": 1}, created_at=100.0, expires_at=160.0)
        tier.set_many({"x:1": blob, "x:2": blob, "y:1": blob}, tag="model-a")
        tier.set_many({"y:2": blob}, tag="model-b")
        assert tier.get_many(["x:1", "nope", "y:2"]) == {"x:1": blob, "y:2": blob}
        assert tier.get_many([]) == {}
        assert tier.delete_many(["x:1", "nope"]) == 1
        assert tier.clear("x:") == 1  # only x:2 is left under x:
        assert tier.purge_tag("model-a") == 1  # x:1, x:2 are gone already; y:1 remains
        stats = tier.scan_stats()  # this prefix, exactly (stats() scans nothing)
        assert stats["items"] == 1 and stats["bytes"] == len(blob)
        assert stats["state"] == "closed" and stats["trips"] == 0
        server = tier.stats()  # the whole database, without a scan
        assert server["items"] >= 1 and server["bytes"] > len(blob)
        assert tier.clear() == 1
        assert tier.get_many(["y:2"]) == {}
    finally:
        tier.close()


def test_get_many_batches_past_one_mget(redis_url: str) -> None:
    tier = RedisTier(redis_url, prefix=_prefix())
    try:
        blobs = {f"k{i}": encode(i, created_at=0.0, expires_at=None) for i in range(1234)}
        tier.set_many(blobs)
        keys = [f"k{i}" for i in range(0, 1300)]  # 66 absent
        assert tier.get_many(keys) == blobs
    finally:
        tier.close()


def test_redis_expires_entries_after_their_envelope_lifetime(redis_url: str) -> None:
    prefix = _prefix()
    tier = RedisTier(redis_url, prefix=prefix)
    client = redis.Redis.from_url(redis_url)
    try:
        # The lifetime comes from the envelope (60 s), whatever clock wrote it.
        tier.set_many({"a": encode(1, created_at=5_000.0, expires_at=5_060.0)})
        tier.set_many({"never": encode(1, created_at=0.0, expires_at=None)})
        tier.set_many({"raw": b"not an envelope"}, ttl=7.0)  # falls back to the ttl hint
        assert 59_000 < client.pttl(f"{prefix}:c:{{a}}") <= 60_000
        assert client.pttl(f"{prefix}:c:{{never}}") == -1
        assert 6_000 < client.pttl(f"{prefix}:c:{{raw}}") <= 7_000
    finally:
        client.close()
        tier.close()


def test_manager_ttl_is_enforced_by_redis_and_by_the_envelope(
    redis_url: str, fake_clock: FakeClock
) -> None:
    prefix = _prefix()
    config = _config(redis_url, prefix, cache_size=0)
    with CacheManager(config, clock=fake_clock) as cache:
        cache.set("k", "v", ttl=30.0)
        client = redis.Redis.from_url(redis_url)
        try:
            (key,) = client.keys(f"{prefix}:c:*k}}")
            assert 29_000 < client.pttl(key) <= 30_000  # Redis drops it by itself
        finally:
            client.close()
        assert cache.get("k") == "v"
        fake_clock.advance(31.0)
        assert cache.get("k") is None  # the envelope says expired before Redis does


def test_two_prefixes_on_one_redis_never_share_entries(redis_url: str) -> None:
    a, b = _prefix(), _prefix()
    with (
        CacheManager(_config(redis_url, a, cache_size=0)) as app_a,
        CacheManager(_config(redis_url, b, cache_size=0)) as app_b,
    ):
        app_a.set("same-key", "from a")
        app_a.set_vectors({"v": [0.5, 0.25]}, model="m")
        assert app_b.get("same-key") is None
        assert app_b.get_vectors(["v"]) == {}
        app_b.set("same-key", "from b")
        assert app_a.get("same-key") == "from a"
        assert app_b.get("same-key") == "from b"
        app_b.clear()
        assert app_a.get("same-key") == "from a"
        app_b.bump_namespace("default")  # a namespace bump stays inside its prefix too
        assert app_a.namespace_version("default") == 1
        assert app_b.namespace_version("default") == 2


def test_config_places_the_redis_tier(redis_url: str, tmp_path: Path) -> None:
    positions = {
        "before-disk": ["memory", "redis", "disk"],
        "after-disk": ["memory", "disk", "redis"],
        "instead-of-disk": ["memory", "redis"],
    }
    for position, names in positions.items():
        config = PerformanceConfig(
            redis_url=redis_url,
            redis_position=position,  # type: ignore[arg-type]
            cache_dir=str(tmp_path / position),
            enable_metrics=False,
        )
        with CacheManager(config) as cache:
            assert [t.name for t in cache.tiers] == names
            assert not (position == "instead-of-disk" and (tmp_path / position).exists())
            tier = cache.tiers[names.index("redis")]
            assert isinstance(tier, RedisTier)
            assert tier.prefix == "rag-perf" and tier.timeout == config.redis_timeout
    with CacheManager(PerformanceConfig(cache_dir=str(tmp_path / "none"))) as cache:
        assert not any(isinstance(t, RedisTier) for t in cache.tiers)


def test_a_hit_in_redis_is_promoted_into_memory(redis_url: str) -> None:
    prefix = _prefix()
    with CacheManager(_config(redis_url, prefix)) as writer:
        writer.set("k", {"answer": 42})
    with CacheManager(_config(redis_url, prefix)) as reader:
        assert isinstance(reader.tiers[0], MemoryTier)
        assert reader.get("k") == {"answer": 42}
        assert reader.get("k") == {"answer": 42}
        hits = reader.get_stats()["namespaces"]["default"]["hits"]
        assert hits == {"redis": 1, "memory": 1}


def test_async_reads_go_through_the_manager_pool(redis_url: str) -> None:
    prefix = _prefix()

    async def main() -> None:
        with CacheManager(_config(redis_url, prefix, cache_size=0)) as cache:
            await cache.aset_vectors({"a": [1.0, 2.0], "b": [3.0]}, model="m")
            assert await cache.aget_vectors(["a", "b", "c"]) == {"a": [1.0, 2.0], "b": [3.0]}

    asyncio.run(main())


def test_a_foreign_value_in_redis_reads_as_a_miss(redis_url: str) -> None:
    prefix = _prefix()
    with CacheManager(_config(redis_url, prefix, cache_size=0)) as cache:
        cache.set("k", "v")
        client = redis.Redis.from_url(redis_url)
        try:
            (key,) = client.keys(f"{prefix}:c:*k}}")
            import pickle

            client.set(key, pickle.dumps({"evil": True}))  # never unpickled
        finally:
            client.close()
        assert cache.get("k") is None
        assert cache.get_stats()["errors_by_kind"].get("corrupt") == 1


def test_value_cached_in_one_process_is_a_hit_in_another_without_disk(
    redis_url: str, tmp_path: Path
) -> None:
    prefix = _prefix()
    code = textwrap.dedent(
        f"""
        from rag_perf_plugins.cache import CacheManager
        from rag_perf_plugins.config import PerformanceConfig
        config = PerformanceConfig(redis_url={redis_url!r}, cache_namespace_prefix={prefix!r},
                                   cache_disk_enabled=False, redis_position="instead-of-disk",
                                   cache_dir={str(tmp_path / "unused")!r}, enable_metrics=False)
        with CacheManager(config) as cache:
            assert [t.name for t in cache.tiers] == ["memory", "redis"], cache.tiers
            cache.set("answer", {{"text": "forty-two"}}, namespace="llm", model="gpt-x")
            cache.set_vectors({{"doc-1": [0.1, 0.2, 0.3]}}, model="emb")
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    assert not (tmp_path / "unused").exists()  # no disk tier anywhere
    with CacheManager(_config(redis_url, prefix)) as cache:
        assert cache.get("answer", namespace="llm") == {"text": "forty-two"}
        assert cache.get_vectors(["doc-1"]) == {"doc-1": pytest.approx([0.1, 0.2, 0.3], rel=1e-6)}
        stats = cache.get_stats()
        assert stats["tiers"]["redis"]["hits"] == 2 and stats["misses"] == 0


def test_circuit_breaker_opens_probes_and_closes(fake_clock: FakeClock) -> None:
    breaker = CircuitBreaker(retry_interval=2.0, clock=fake_clock)
    assert breaker.allow() and breaker.state == "closed"
    assert breaker.failure() is True
    assert breaker.failure() is False  # still one trip
    assert not breaker.allow()
    fake_clock.advance(2.0)
    assert breaker.allow()  # the probe
    assert not breaker.allow()  # only one probe at a time
    assert breaker.failure() is False
    fake_clock.advance(1.0)
    assert not breaker.allow()
    fake_clock.advance(1.0)
    assert breaker.allow()
    assert breaker.success() is True and breaker.state == "closed"
    assert (breaker.trips, breaker.recoveries) == (1, 1)
    with pytest.raises(ValueError, match="retry_interval"):
        CircuitBreaker(retry_interval=0)


def test_unreachable_redis_degrades_to_local_tiers_with_one_warning(
    fake_clock: FakeClock, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    tier = RedisTier(_dead_url(), prefix="p", timeout=0.2, retry_interval=5.0, clock=fake_clock)
    disk = DiskTier(tmp_path / "disk")
    config = PerformanceConfig(enable_metrics=False, cache_size=0)
    with (
        caplog.at_level(logging.WARNING, logger="rag_perf_plugins"),
        CacheManager(config, tiers=[tier, disk]) as cache,
    ):
        for i in range(20):
            cache.set(f"k{i}", i)
            assert cache.get(f"k{i}") == i  # served by the disk tier
        stats = cache.get_stats()
    redis_stats = stats["tiers"]["redis"]
    assert redis_stats["state"] == "open" and redis_stats["trips"] == 1
    assert redis_stats["redis_errors"] == 1  # one network attempt; the rest skipped
    assert redis_stats["skipped"] >= 40
    assert stats["tiers"]["disk"]["hits"] == 20
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "redis" in warnings[0].getMessage()


def test_invalidations_are_not_skipped_silently(fake_clock: FakeClock) -> None:
    tier = RedisTier(_dead_url(), prefix="p", timeout=0.2, clock=fake_clock)
    with pytest.raises(RedisUnavailable):
        tier.get_many(["a"])  # trips the breaker
    assert tier.get_many(["a"]) == {}  # skipped: a miss
    tier.set_many({"a": b"x"})  # skipped
    with pytest.raises(RedisUnavailable, match="not applied"):
        tier.delete_many(["a"])
    with pytest.raises(RedisUnavailable, match="not applied"):
        tier.clear()
    with pytest.raises(RedisUnavailable, match="not applied"):
        tier.purge_tag("m")
    assert not tier.ping()


def test_bad_arguments_are_refused_early(redis_url: str) -> None:
    with pytest.raises(ValueError, match="prefix"):
        RedisTier(redis_url, prefix="")
    with pytest.raises(ValueError, match="timeout"):
        RedisTier(redis_url, timeout=0)
    with pytest.raises(ValueError, match="redis_url"):
        RedisTier.from_config(PerformanceConfig())
    assert redact_url("redis://user:secret@h:6379/0") == "redis://user:***@h:6379/0"
    assert redact_url("redis://h:6379/0") == "redis://h:6379/0"


def test_more_threads_than_connections_wait_instead_of_tripping(redis_url: str) -> None:
    tier = RedisTier(redis_url, prefix=_prefix(), max_connections=2, timeout=2.0)
    blob = encode(1, created_at=0.0, expires_at=None)
    tier.set_many({"a": blob})
    errors: list[BaseException] = []

    def read() -> None:
        for _ in range(25):
            try:
                assert tier.get_many(["a"]) == {"a": blob}
            except BaseException as exc:
                errors.append(exc)

    threads = [threading.Thread(target=read) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    tier.close()
    assert errors == [] and tier.breaker.trips == 0
