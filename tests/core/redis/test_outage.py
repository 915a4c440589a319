"""A private redis-server goes away mid-run and comes back: calls succeed throughout.

The breakers run on a ``FakeClock``: "Redis is back" is noticed when the test advances
the clock by the retry interval, not after sleeping.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import httpx
import pytest
import redis

from rag_perf_plugins._clock import FakeClock
from rag_perf_plugins.admission import AdmissionGate
from rag_perf_plugins.admission.redis_store import RedisBudgetStore
from rag_perf_plugins.cache import CacheManager, DiskTier
from rag_perf_plugins.cache.redis_tier import RedisTier
from rag_perf_plugins.config import PerformanceConfig
from rag_perf_plugins.redis.client import make_redis_client
from rag_perf_plugins.simulator import Simulator

RedisServer = Any  # the fixture's class lives in this directory's conftest.py

pytestmark = pytest.mark.redis

MODEL = "text-embedding-3-small"
RETRY_S = 1.0


class App:
    """One process's cached, gated embedding call over the private Redis."""

    def __init__(self, url: str, base_url: str, clock: FakeClock) -> None:
        self.tier = RedisTier(url, prefix="app", timeout=0.25, retry_interval=RETRY_S, clock=clock)
        self.store = RedisBudgetStore(
            url, prefix="app", timeout=0.25, worker_count=2, retry_interval=RETRY_S, clock=clock
        )
        config = PerformanceConfig(
            requests_per_minute=60_000, max_concurrent_requests=8, cache_size=0,
            enable_metrics=False,
        )  # fmt: skip
        self.cache = CacheManager(config, tiers=[self.tier])
        self.gate = AdmissionGate(config, key=f"sim/{MODEL}/nokey", store=self.store)
        self.http = httpx.Client(base_url=base_url)
        self.provider_calls = 0

    def _embed(self, text: str) -> list[float]:
        with self.gate.acquire(tokens=1):
            self.provider_calls += 1
            response = self.http.post("/embeddings", json={"model": MODEL, "input": [text]})
            response.raise_for_status()
            vector: list[float] = response.json()["data"][0]["embedding"]
            return vector

    def call(self, i: int) -> list[float]:
        text = f"text-{i % 10}"
        return self.cache.get_or_compute(
            text, lambda: self._embed(text), namespace="embeddings", model=MODEL
        )

    async def acall(self, i: int) -> list[float]:
        text = f"text-{i % 10}"

        async def embed() -> list[float]:
            async with self.gate.aacquire(tokens=1), httpx.AsyncClient() as client:
                self.provider_calls += 1
                url = str(self.http.base_url).rstrip("/") + "/embeddings"
                response = await client.post(url, json={"model": MODEL, "input": [text]})
                response.raise_for_status()
                vector: list[float] = response.json()["data"][0]["embedding"]
                return vector

        return await self.cache.aget_or_compute(text, embed, namespace="embeddings", model=MODEL)

    def redis_hits(self) -> int:
        hits: int = self.cache.get_stats()["tiers"]["redis"]["hits"]
        return hits

    def close(self) -> None:
        self.http.close()
        self.cache.close()
        self.store.close()


def test_redis_going_away_mid_run_degrades_and_recovers(
    redis_server: RedisServer, simulator: Simulator, fake_clock: FakeClock
) -> None:
    app = App(redis_server.url, simulator.base_url, fake_clock)
    try:
        first: dict[int, list[float]] = {}
        for i in range(30):  # Redis up: 10 misses, then hits through Redis
            first.setdefault(i % 10, app.call(i))
        assert app.provider_calls == 10 and app.redis_hits() == 20
        up_calls = app.store.stats()["redis_calls"]
        assert up_calls >= 10 and app.store.stats()["fallback_calls"] == 0

        for i in range(30, 90):  # Redis dies in the middle of this run
            if i == 45:
                redis_server.stop()
            assert app.call(i) == first[i % 10]  # every call succeeds, same answer
        results = asyncio.run(_gather(app, range(90, 100)))
        assert results == [first[i % 10] for i in range(90, 100)]

        store, tier = app.store.stats(), app.tier.stats()
        assert store["state"] == "open" and store["trips"] == 1 and store["fallback_calls"] > 0
        assert store["redis_calls"] == up_calls  # calls 30-44 were cache hits
        assert tier["state"] == "open" and tier["trips"] == 1 and tier["skipped"] > 0
        assert app.cache.get_stats()["errors"] >= 1  # counted by the manager
        hits_while_down = app.redis_hits()
        assert hits_while_down == 20 + 15

        redis_server.start()  # same port, empty (as after a flush)
        fake_clock.advance(RETRY_S)
        calls_before = app.provider_calls
        for i in range(100, 130):
            assert app.call(i) == first[i % 10]
        store, tier = app.store.stats(), app.tier.stats()
        assert store["state"] == "closed" and store["recoveries"] == 1
        assert store["redis_calls"] >= up_calls + 10  # the shared budget is used again
        assert tier["state"] == "closed" and tier["recoveries"] == 1
        assert app.provider_calls == calls_before + 10  # refilled Redis once per text...
        assert app.redis_hits() == hits_while_down + 20  # ...then hits through Redis again
        assert app.tier.scan_stats()["items"] == 10  # the ten vectors are back in the new Redis
    finally:
        app.close()


async def _gather(app: App, indexes: range) -> list[list[float]]:
    return [await app.acall(i) for i in indexes]


def test_slow_redis_times_out_and_the_call_uses_the_disk_tier(
    redis_server: RedisServer, fake_clock: FakeClock, tmp_path: Any
) -> None:
    tier = RedisTier(redis_server.url, prefix="slow", timeout=0.2, clock=fake_clock)
    config = PerformanceConfig(cache_size=0, enable_metrics=False)
    with CacheManager(config, tiers=[tier, DiskTier(tmp_path / "disk")]) as cache:
        cache.set("k", "v")
        blocker = redis.Redis.from_url(redis_server.url)
        sleeper = threading.Thread(target=blocker.execute_command, args=("DEBUG", "SLEEP", "1"))
        sleeper.start()
        try:
            _wait_until_blocked(redis_server)
            assert cache.get("k") == "v"  # Redis did not answer in 0.2 s: disk did
        finally:
            sleeper.join()
            blocker.close()
        stats = cache.get_stats()
    assert stats["tiers"]["redis"]["trips"] == 1 and stats["tiers"]["disk"]["hits"] == 1


def _wait_until_blocked(server: RedisServer) -> None:
    """Return once the server stops answering (DEBUG SLEEP has started)."""
    probe = make_redis_client(server.url, timeout=0.05)  # no retries to hide a timeout
    give_up = time.monotonic() + 5.0  # waiting for another process; nothing to fake
    try:
        while time.monotonic() < give_up:
            try:
                probe.ping()
            except redis.TimeoutError:
                return
    finally:
        probe.close()
    pytest.fail("DEBUG SLEEP never blocked the server")


def test_aligned_breakers_probe_on_multiples_of_the_interval() -> None:
    from rag_perf_plugins._clock import FakeClock
    from rag_perf_plugins.redis.client import CircuitBreaker

    # Two processes that failed 0.3 s apart, and one whose probe failed just after a
    # boundary: all three probe again at the same moment (t=104).
    clocks = [FakeClock(start=101.9), FakeClock(start=102.2), FakeClock(start=102.01)]
    breakers = [CircuitBreaker(retry_interval=2.0, clock=c, aligned=True) for c in clocks]
    for breaker in breakers:
        assert breaker.failure()
    for clock, breaker in zip(clocks, breakers, strict=True):
        clock.advance(103.99 - clock())
        assert not breaker.allow()
        clock.advance(0.01)
        assert breaker.allow()
