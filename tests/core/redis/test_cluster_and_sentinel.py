"""The Redis acceptance on a Redis Cluster and on a Sentinel set, and a master lost mid-run.

Each test runs twice: on the ``redis_cluster`` fixture (3 masters, 3 replicas) and on
``redis_sentinel`` (master, replica, 3 sentinels), both started on loopback by
``tests/ha_redis.py``. The workers are spawned processes with their own config
(``redis_mode``, ``redis_sentinels``, ``redis_master_name``), as uvicorn workers are.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from rag_perf_plugins.admission import key_fingerprint
from rag_perf_plugins.bench.redis_servers import MASTER_NAME, ClusterSet, SentinelSet
from rag_perf_plugins.bench.suites.scaleout import (
    API_KEY,
    MODEL,
    SIM_BURST_S,
    delete_prefix,
    run_cross_process_hits,
    run_shared_budget,
)
from rag_perf_plugins.cache.redis_tier import RedisTier
from rag_perf_plugins.cache.serialize import encode
from rag_perf_plugins.config import PerformanceConfig
from rag_perf_plugins.redis.client import RedisTarget
from rag_perf_plugins.redis.keys import RedisKeys
from rag_perf_plugins.simulator import Simulator

pytestmark = pytest.mark.redis

SimulatorFactory = Callable[..., Simulator]
RPM = 1200  # 20 requests/s in total


@dataclass
class HA:
    """One HA set as the tests use it: URL, config keys, and how to lose its master."""

    mode: str
    url: str
    keys: dict[str, Any]
    servers: ClusterSet | SentinelSet

    def config(self, **more: Any) -> PerformanceConfig:
        return PerformanceConfig(redis_url=self.url, **self.keys, **more)

    def kill_master_of(self, key: str) -> int:
        if isinstance(self.servers, ClusterSet):
            return self.servers.kill_master(key)
        return self.servers.kill_master()

    def wait_recovered(self, old: int) -> None:
        if isinstance(self.servers, ClusterSet):
            self.servers.wait_ok()
        else:
            self.servers.wait_promoted(old)


@pytest.fixture(params=["cluster", "sentinel"])
def ha(request: pytest.FixtureRequest) -> HA:
    if request.param == "cluster":
        cluster: ClusterSet = request.getfixturevalue("redis_cluster")
        return HA("cluster", cluster.url, {"redis_mode": "cluster"}, cluster)
    sentinel: SentinelSet = request.getfixturevalue("redis_sentinel")
    keys = {
        "redis_mode": "sentinel",
        "redis_sentinels": sentinel.sentinels,
        "redis_master_name": MASTER_NAME,
    }
    return HA("sentinel", sentinel.url, keys, sentinel)


def test_cache_hits_across_processes_and_prefixes_kept_apart(ha: HA) -> None:
    run = run_cross_process_hits(ha.url, n=300, dim=16, redis=ha.keys)
    assert run.hits == run.written == 300
    target = RedisTarget.from_config(ha.config())
    blob = encode("answer", created_at=0.0, expires_at=None)
    a = RedisTier(target, prefix="tenant-a", timeout=1.0)
    b = RedisTier(target, prefix="tenant-b", timeout=1.0)
    try:
        a.set_many({f"k{i}": blob for i in range(50)})  # 50 keys over many slots
        assert len(a.get_many([f"k{i}" for i in range(50)])) == 50
        assert b.get_many([f"k{i}" for i in range(50)]) == {}
        assert a.scan_stats()["items"] == 50 and b.scan_stats()["items"] == 0
        assert a.delete_many([f"k{i}" for i in range(10)]) == 10  # DEL split per slot
        assert a.clear() == 40
    finally:
        a.close()
        b.close()


def test_four_processes_share_one_limit_with_zero_429s(
    ha: HA, simulator_factory: SimulatorFactory
) -> None:
    sim = simulator_factory(rpm=RPM, burst_seconds=SIM_BURST_S)
    prefix = f"ha-{uuid.uuid4().hex[:8]}"
    try:
        run = run_shared_budget(
            sim.base_url, ha.url, processes=4, rpm=RPM, duration_s=9.0, warmup_s=1.5,
            prefix=prefix, redis=ha.keys,
        )  # fmt: skip
    finally:
        delete_prefix(ha.url, prefix, ha.keys)
    assert sim.stats()["rate_limited_total"] == 0, run
    assert run.rate_limited == 0 and run.errors == 0 and run.rejected == 0, run
    assert run.redis_calls > 4 * run.fallback_calls, run
    assert run.fraction >= 0.95, run


def test_a_master_lost_mid_run_degrades_counts_recovers_within_the_bound(
    ha: HA, simulator_factory: SimulatorFactory
) -> None:
    sim = simulator_factory(rpm=RPM, burst_seconds=SIM_BURST_S)
    prefix = f"ha-{uuid.uuid4().hex[:8]}"
    budget_key = RedisKeys(prefix).budget(f"simulator/{MODEL}/{key_fingerprint(API_KEY)}")
    killed: list[tuple[float, int]] = []

    def lose_the_master(start_at: float) -> None:
        time.sleep(max(0.0, start_at + 3.0 - time.time()))
        killed.append((time.time(), ha.kill_master_of(budget_key)))

    try:
        run = run_shared_budget(
            sim.base_url, ha.url, processes=4, rpm=RPM, duration_s=14.0, warmup_s=1.5,
            prefix=prefix, redis=ha.keys, during=lose_the_master,
        )  # fmt: skip
        assert killed, "the master was not killed"
        ha.wait_recovered(killed[0][1])
    finally:
        delete_prefix(ha.url, prefix, ha.keys)
    # Every call succeeded: admitted by the local shares while the master was away.
    assert run.errors == 0 and run.rejected == 0, run
    assert run.ok > 0
    # The degradation and the recovery are counted (every process saw both).
    assert run.trips >= 4 and run.recoveries >= 4, run
    assert run.fallback_calls > 0 and run.redis_calls > 0, run
    # The documented bound: at most one request per process over the rate at each of
    # the two switches (to the local shares, back to Redis).
    assert sim.stats()["rate_limited_total"] == run.rate_limited
    assert run.rate_limited <= 2 * 4, run
