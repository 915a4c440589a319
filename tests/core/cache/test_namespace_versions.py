"""A namespace bump invalidates its entries in every tier combination, memory-only included."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from rag_perf_plugins.cache import CacheManager
from rag_perf_plugins.config import PerformanceConfig

# name -> config overrides; "redis" combinations get redis_url and a private prefix.
COMBINATIONS: dict[str, dict[str, Any]] = {
    "memory-only": {"cache_disk_enabled": False},
    "disk-only": {"cache_size": 0},
    "memory+disk": {},
    "memory+redis": {"cache_disk_enabled": False, "redis_position": "instead-of-disk"},
    "memory+disk+redis": {"redis_position": "after-disk"},
    "redis-only": {"cache_size": 0, "redis_position": "instead-of-disk"},
}


def _manager(name: str, tmp_path: Path, request: pytest.FixtureRequest) -> CacheManager:
    overrides = dict(COMBINATIONS[name])
    if "redis" in name:
        overrides["redis_url"] = request.getfixturevalue("redis_url")
        overrides["cache_namespace_prefix"] = f"nsv-{tmp_path.name}"
    config = PerformanceConfig(cache_dir=str(tmp_path / "c"), enable_metrics=False, **overrides)
    return CacheManager(config, tracker=None)


@pytest.mark.parametrize("name", list(COMBINATIONS))
def test_bump_advances_and_invalidates(
    name: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    cache = _manager(name, tmp_path, request)
    try:
        assert cache.namespace_version("retrieval") == 1
        cache.set("q", "v1", namespace="retrieval")
        assert cache.get("q", namespace="retrieval") == "v1"
        assert cache.bump_namespace("retrieval") == 2
        assert cache.namespace_version("retrieval") == 2
        assert cache.get("q", namespace="retrieval") is None
        cache.set("q", "v2", namespace="retrieval")
        assert cache.get("q", namespace="retrieval") == "v2"
        assert cache.bump_namespace("retrieval") == 3
        assert cache.namespace_version("retrieval") == 3
        assert cache.get("q", namespace="retrieval") is None  # v2 was written before the bump
        # Other namespaces keep their version.
        assert cache.namespace_version("llm") == 1
    finally:
        cache.close()


@pytest.mark.parametrize("name", list(COMBINATIONS))
async def test_bump_advances_on_the_async_path(
    name: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    cache = _manager(name, tmp_path, request)
    try:
        await cache.aset("q", "v1", namespace="retrieval")
        assert await cache.aget("q", namespace="retrieval") == "v1"
        cache.bump_namespace("retrieval")
        assert await cache.aget("q", namespace="retrieval") is None
        await cache.aset("q", "v2", namespace="retrieval")
        cache.bump_namespace("retrieval")
        assert await cache.aget("q", namespace="retrieval") is None
    finally:
        cache.close()
