"""RedisBudgetStore against the real Redis: the gate's GCRA arithmetic, shared, with fallbacks.

Waits are computed on Redis's clock, which moves while the test runs: they are compared
with a tolerance of a few tens of milliseconds, never measured against wall time.
"""

from __future__ import annotations

import asyncio
import logging
import math
import socket
import uuid

import pytest
import redis

from rag_perf_plugins._clock import FakeClock
from rag_perf_plugins.admission import (
    AdmissionGate,
    LocalBudgetStore,
    RateLimits,
    key_fingerprint,
)
from rag_perf_plugins.admission.redis_store import RedisBudgetStore, shared_budget_store
from rag_perf_plugins.config import PerformanceConfig
from rag_perf_plugins.errors import ConfigError, Overloaded
from rag_perf_plugins.tracking import NULL_TRACKER

pytestmark = pytest.mark.redis

TOL = 0.05  # seconds of Redis time that may pass between two calls on a loaded machine
ONE_PER_S = RateLimits(requests_per_minute=60, burst_seconds=1.0)


def _dead_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"redis://127.0.0.1:{port}/0"


@pytest.fixture
def store(redis_url: str) -> RedisBudgetStore:
    return RedisBudgetStore(redis_url, prefix=f"t-{uuid.uuid4().hex[:10]}")


def reserve(store: RedisBudgetStore, limits: RateLimits, *, r: int = 1, t: int = 0,
            max_wait: float = 60.0) -> float:  # fmt: skip
    return store.try_reserve("k", limits, requests=r, tokens=t, now=0.0, max_wait=max_wait)


def test_requests_are_spaced_by_the_interval_after_the_burst(store: RedisBudgetStore) -> None:
    waits = [reserve(store, ONE_PER_S) for _ in range(4)]
    assert waits[0] == 0.0
    for i, wait in enumerate(waits[1:], start=1):
        assert i - TOL < wait <= i


def test_tokens_are_a_second_bucket(store: RedisBudgetStore) -> None:
    limits = RateLimits(tokens_per_minute=600, burst_seconds=1.0)  # 10 tokens/s, burst 10
    local = LocalBudgetStore()
    expected = [
        local.try_reserve("k", limits, requests=1, tokens=t, now=0.0, max_wait=60)
        for t in (10, 5, 30, 1)
    ]
    # A request larger than the burst waits for an empty bucket, then leaves it in debt.
    assert expected == pytest.approx([0.0, 0.5, 1.5, 3.6])
    for t, want in zip((10, 5, 30, 1), expected, strict=True):
        assert want - TOL < reserve(store, limits, r=1, t=t) <= want


def test_a_refused_reservation_debits_nothing(store: RedisBudgetStore) -> None:
    reserve(store, ONE_PER_S)
    wait = reserve(store, ONE_PER_S, max_wait=0.5)
    assert wait > 0.5
    assert 1.0 - TOL < store.peek("k", ONE_PER_S, requests=1, tokens=0, now=0.0) <= 1.0


def test_refund_pause_and_clamp(store: RedisBudgetStore) -> None:
    reserve(store, ONE_PER_S)
    reserve(store, ONE_PER_S)  # the next would wait 2 s
    store.adjust("k", ONE_PER_S, requests=-1, tokens=0, now=0.0)
    assert 1.0 - TOL < store.peek("k", ONE_PER_S, requests=1, tokens=0, now=0.0) <= 1.0
    store.pause("k", ONE_PER_S, seconds=5.0, now=0.0)
    assert 5.0 - TOL < store.paused_for("k", now=0.0) <= 5.0
    assert 5.0 - TOL < store.peek("k", ONE_PER_S, requests=1, tokens=0, now=0.0) <= 5.0
    other = RateLimits(requests_per_minute=600, burst_seconds=1.0)  # 10/s, burst 10
    store.clamp("c", other, requests=2, tokens=None, now=0.0)  # the provider has 2 left
    waits = [
        store.try_reserve("c", other, requests=1, tokens=0, now=0.0, max_wait=9) for _ in "123"
    ]
    assert waits[:2] == [0.0, 0.0] and 0.1 - TOL < waits[2] <= 0.1


def test_two_clients_share_one_budget(redis_url: str) -> None:
    prefix = f"t-{uuid.uuid4().hex[:10]}"
    a = RedisBudgetStore(redis_url, prefix=prefix)
    b = RedisBudgetStore(redis_url, prefix=prefix)
    other_app = RedisBudgetStore(redis_url, prefix=prefix + "-other")
    assert reserve(a, ONE_PER_S) == 0.0
    assert 1.0 - TOL < reserve(b, ONE_PER_S) <= 1.0
    assert reserve(other_app, ONE_PER_S) == 0.0  # another prefix, another budget
    assert a.stats()["redis_calls"] == 1 and a.stats()["fallback_calls"] == 0


def test_a_flushed_redis_starts_a_full_bucket_and_reloads_the_script(
    store: RedisBudgetStore, redis_url: str
) -> None:
    reserve(store, ONE_PER_S)
    client = redis.Redis.from_url(redis_url)
    try:
        client.script_flush()
        client.delete(store.keys.budget("k"))
    finally:
        client.close()
    assert reserve(store, ONE_PER_S) == 0.0
    assert store.stats()["redis_errors"] == 0


def test_state_keys_carry_a_fingerprint_and_expire(redis_url: str) -> None:
    prefix = f"t-{uuid.uuid4().hex[:10]}"
    config = PerformanceConfig(
        redis_url=redis_url, shared_rate_limit=True, cache_namespace_prefix=prefix,
        requests_per_minute=60, enable_metrics=False,
    )  # fmt: skip
    secret = "sk-live-do-not-store-me"
    gate = AdmissionGate(
        config, key=f"openai/m/{key_fingerprint(secret)}", store=shared_budget_store(config)
    )
    with gate.acquire():
        pass
    client = redis.Redis.from_url(redis_url)
    try:
        keys = [k.decode() if isinstance(k, bytes) else k for k in client.keys(f"{prefix}:*")]
        assert keys == [f"{prefix}:rl:{{openai/m/{key_fingerprint(secret)}}}"]
        assert secret not in keys[0]
        assert 0 < client.pttl(keys[0]) <= 62_000  # an idle bucket vanishes by itself
    finally:
        client.close()
    assert shared_budget_store(config) is shared_budget_store(config)


def test_local_share_fallback_uses_budget_over_worker_count(
    fake_clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    store = RedisBudgetStore(_dead_url(), worker_count=4, timeout=0.2, clock=fake_clock)
    with caplog.at_level(logging.INFO, logger="rag_perf_plugins"):
        # 60 RPM over 4 workers: 15 RPM here, one request per 4 s; the share starts empty
        # (the other workers may have spent the shared bucket's burst): no burst at a switch.
        waits = [
            store.try_reserve("k", ONE_PER_S, requests=1, tokens=0, now=100.0, max_wait=60)
            for _ in range(3)
        ]
    assert waits == [4.0, 8.0, 12.0]
    stats = store.stats()
    assert stats["local_starts"] == 1
    assert stats["state"] == "open" and stats["trips"] == 1
    assert stats["redis_errors"] == 1 and stats["fallback_calls"] == 3
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "1/4" in warnings[0].getMessage()


def test_fail_closed_fallback_refuses_callers(fake_clock: FakeClock) -> None:
    store = RedisBudgetStore(_dead_url(), fallback="fail-closed", timeout=0.2, clock=fake_clock)
    assert math.isinf(store.try_reserve("k", ONE_PER_S, requests=1, tokens=0, now=0, max_wait=9))
    gate = AdmissionGate(key="k", store=store, requests_per_minute=60, tracker=NULL_TRACKER)
    with pytest.raises(Overloaded), gate.acquire():
        pass

    async def use() -> None:
        async with gate.aacquire():
            pass

    with pytest.raises(Overloaded):
        asyncio.run(use())
    assert gate.stats()["in_flight"] == 0  # a refusal hands its slot back


def test_bad_arguments_are_refused_early(redis_url: str) -> None:
    with pytest.raises(ValueError, match="fallback"):
        RedisBudgetStore(redis_url, fallback="open")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="worker_count"):
        RedisBudgetStore(redis_url, worker_count=0)
    with pytest.raises(ValueError, match="redis_url"):
        shared_budget_store(PerformanceConfig())


def test_the_gate_uses_the_shared_store_when_the_config_asks(redis_url: str) -> None:
    prefix = f"t-{uuid.uuid4().hex[:10]}"
    config = PerformanceConfig(
        redis_url=redis_url, shared_rate_limit=True, cache_namespace_prefix=prefix,
        requests_per_minute=60, worker_count=3, enable_metrics=False,
    )  # fmt: skip
    one = AdmissionGate(config, key="openai/m/nokey", tracker=NULL_TRACKER)
    two = AdmissionGate(config, key="openai/m/nokey", tracker=NULL_TRACKER)  # another "process"
    assert isinstance(one._store, RedisBudgetStore) and one._store.worker_count == 3
    with one.acquire():
        pass
    assert 1.0 - TOL < two._store.peek("openai/m/nokey", two.limits, requests=1, tokens=0,
                                       now=0.0) <= 1.0  # fmt: skip
    local = AdmissionGate(PerformanceConfig(redis_url=redis_url), key="x", tracker=NULL_TRACKER)
    assert isinstance(local._store, LocalBudgetStore)  # shared_rate_limit is off
    with pytest.raises(ConfigError, match="redis_url"):
        AdmissionGate(PerformanceConfig(shared_rate_limit=True), key="x")
