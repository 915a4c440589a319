"""Fixtures: a Redis Cluster (3 masters, 3 replicas) and a Sentinel set on loopback ports.

``redis_cluster`` runs :class:`~rag_perf_plugins.bench.redis_servers.ClusterSet` on
127.0.0.1:7100-7105; ``redis_sentinel`` runs
:class:`~rag_perf_plugins.bench.redis_servers.SentinelSet` (master 7200, replica 7201,
sentinels 27200-27202, master name ``rag-perf-ha``). Function-scoped: a test may kill a
master and the next test gets a fresh set; every process is killed at teardown (by the pid
started there). A taken port or a missing binary fails the test (never skips), naming it.
The ports move with ``RAG_PERF_TEST_CLUSTER_PORT`` (first of six) and
``RAG_PERF_TEST_SENTINEL_PORT`` (the master's; sentinels are 20000 above).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from rag_perf_plugins.bench.redis_servers import ClusterSet, SentinelSet, ServerSetError

CLUSTER_BASE = int(os.environ.get("RAG_PERF_TEST_CLUSTER_PORT", "7100"))
SENTINEL_BASE = int(os.environ.get("RAG_PERF_TEST_SENTINEL_PORT", "7200"))


@pytest.fixture
def redis_cluster(tmp_path: Path) -> Iterator[ClusterSet]:
    """A running 3-master, 3-replica Redis Cluster; every node killed at teardown."""
    cluster = ClusterSet(tmp_path / "cluster", base_port=CLUSTER_BASE)
    try:
        with cluster.started():
            yield cluster
    except ServerSetError as exc:
        pytest.fail(f"Redis Cluster fixture: {exc}")


@pytest.fixture
def redis_sentinel(tmp_path: Path) -> Iterator[SentinelSet]:
    """A running master, replica and three sentinels; all killed at teardown."""
    sentinel = SentinelSet(tmp_path / "sentinel", base_port=SENTINEL_BASE)
    try:
        with sentinel.started():
            yield sentinel
    except ServerSetError as exc:
        pytest.fail(f"Redis Sentinel fixture: {exc}")
