"""Dollar budgets in the admission gate: reserve, refuse at once, reconcile, scopes, windows,
the local and Redis spend stores, and Redis outages (fail closed, or a share per worker)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from rag_perf_plugins.admission import AdmissionGate
from rag_perf_plugins.admission.redis_store import RedisBudgetStore
from rag_perf_plugins.admission.spend import LocalSpendStore
from rag_perf_plugins.config import PerformanceConfig
from rag_perf_plugins.cost import cost_scope
from rag_perf_plugins.errors import BudgetExceeded, ConfigError
from rag_perf_plugins.tracking import NULL_TRACKER

T0 = 1_800_000_000.0  # a wall-clock time at the start of a minute (divisible by 60)


class Wall:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def gate(wall: Wall, store: Any = None, key: str = "p/m/k", **options: Any) -> AdmissionGate:
    config = PerformanceConfig(**options)
    return AdmissionGate(
        config,
        key=key,
        tracker=NULL_TRACKER,
        spend_store=store if store is not None else LocalSpendStore(),
        wall_clock=wall,
    )


def test_past_the_limit_is_refused_at_once_naming_scope_limit_window_spent_and_free_time() -> None:
    wall = Wall(T0 + 15.0)
    g = gate(wall, budget_usd_per_minute=1.0, budget_scopes="key")
    for _ in range(2):
        with g.acquire(cost_usd=0.4):
            pass
    with pytest.raises(BudgetExceeded) as info, g.acquire(cost_usd=0.4):
        pytest.fail("admitted past the budget")
    exc = info.value
    assert exc.scope == "key:p/m/k" and exc.limit_usd == 1.0 and exc.window == "minute"
    assert exc.spent_usd == pytest.approx(0.8) and exc.asked_usd == pytest.approx(0.4)
    assert exc.frees_in_s == pytest.approx(45.0)
    assert "key:p/m/k" in str(exc) and "per minute" in str(exc) and "frees in 45.0 s" in str(exc)
    assert g.stats()["admitted"] == 2  # the refused call never took a slot
    with g.acquire(cost_usd=0.2):  # what fits is still admitted
        pass
    wall.now = T0 + 60.0  # the next minute starts over
    with g.acquire(cost_usd=0.9):
        pass


def test_reconcile_moves_the_reservation_to_the_actual_cost() -> None:
    wall, store = Wall(), LocalSpendStore()
    g = gate(wall, store, budget_usd_per_minute=1.0, budget_scopes="key")
    with g.acquire(cost_usd=0.9) as ticket:
        ticket.reconcile_cost(0.1)  # the answer was short
        ticket.reconcile_cost(0.5)  # only the first reconcile counts
    assert store.spent("key:p/m/k|minute", window_s=60, now=wall.now) == 100_000
    with g.acquire(cost_usd=0.9):
        pass  # fits: 0.1 + 0.9


def test_a_failed_call_gives_its_reservation_back_a_finished_unreconciled_one_keeps_it() -> None:
    wall, store = Wall(), LocalSpendStore()
    g = gate(wall, store, budget_usd_per_minute=1.0, budget_scopes="key")
    with pytest.raises(ConnectionError), g.acquire(cost_usd=0.7):
        raise ConnectionError("reset")
    assert store.spent("key:p/m/k|minute", window_s=60, now=wall.now) == 0
    with g.acquire(cost_usd=0.7):
        pass  # no usage reported: the estimate stays charged
    assert store.spent("key:p/m/k|minute", window_s=60, now=wall.now) == 700_000


def test_tenant_scope_follows_cost_scope_and_key_scope_counts_every_tenant() -> None:
    wall = Wall()
    g = gate(wall, budget_usd_per_minute=1.0, budget_scopes="tenant,key")
    with cost_scope("a"), g.acquire(cost_usd=0.6):
        pass
    with cost_scope("b"), pytest.raises(BudgetExceeded) as info, g.acquire(cost_usd=0.6):
        pass
    assert info.value.scope == "key:p/m/k"  # b's own budget had room; the key's did not
    t = gate(wall, budget_usd_per_minute=1.0, budget_scopes="tenant")
    with cost_scope("a"), t.acquire(cost_usd=0.6):
        pass
    with cost_scope("b"), t.acquire(cost_usd=0.6):
        pass  # another tenant, its own dollar
    with pytest.raises(BudgetExceeded) as refused, t.acquire(cost_usd=0.6, tenant="a"):
        pass
    assert refused.value.scope == "tenant:a"
    with t.acquire(cost_usd=5.0):
        pass  # no tenant set: the tenant scope does not apply


def test_model_scope_and_several_windows() -> None:
    wall = Wall()
    store = LocalSpendStore()
    a = gate(
        wall,
        store,
        key="p/m/k1",
        budget_usd_per_hour=1.0,
        budget_usd_per_minute=0.5,
        budget_scopes="model",
    )
    b = gate(
        wall,
        store,
        key="p/m/k2",
        budget_usd_per_hour=1.0,
        budget_usd_per_minute=0.5,
        budget_scopes="model",
    )
    with a.acquire(cost_usd=0.4, model="m"):
        pass
    with pytest.raises(BudgetExceeded) as info, b.acquire(cost_usd=0.4, model="m"):
        pass  # another API key, the same model: the minute's $0.50 is shared
    assert info.value.scope == "model:m" and info.value.window == "minute"
    wall.now += 60
    with b.acquire(cost_usd=0.4, model="m"):
        pass
    wall.now += 60
    with pytest.raises(BudgetExceeded) as hourly, a.acquire(cost_usd=0.4, model="m"):
        pass
    assert hourly.value.window == "hour" and hourly.value.frees_in_s == pytest.approx(3600 - 120)


async def test_async_twin_and_cancellation_give_the_reservation_back() -> None:
    wall, store = Wall(), LocalSpendStore()
    g = gate(wall, store, budget_usd_per_minute=1.0, budget_scopes="key", max_concurrent_requests=1)
    async with g.aacquire(cost_usd=0.5) as ticket:
        await ticket.areconcile_cost(0.25)
        waiting = asyncio.ensure_future(g.aacquire(cost_usd=0.5).__aenter__())
        await asyncio.sleep(0.01)  # it reserved its dollars and waits for the slot
        assert store.spent("key:p/m/k|minute", window_s=60, now=wall.now) == 750_000
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
    assert store.spent("key:p/m/k|minute", window_s=60, now=wall.now) == 250_000
    with pytest.raises(BudgetExceeded):
        async with g.aacquire(cost_usd=0.8):
            pass


def test_unknown_cost_is_refused_while_a_budget_applies_and_no_budget_means_no_check() -> None:
    wall = Wall()
    g = gate(wall, budget_usd_per_day=10.0, budget_scopes="key")
    unknown = pytest.raises(BudgetExceeded, match="price of 'mystery' is unknown")
    with unknown as info, g.acquire(cost_usd=None, model="mystery"):
        pass
    assert info.value.unknown_model == "mystery" and info.value.window == "day"
    free = gate(wall)
    assert free.dollar_budgets is None
    with free.acquire(cost_usd=None):
        pass


def test_budget_scopes_are_checked() -> None:
    with pytest.raises(ConfigError, match="budget_scopes") as info:
        PerformanceConfig(budget_scopes="tenant,team")
    assert "'team' is not a budget scope" in str(info.value)
    with pytest.raises(ConfigError, match="budget_usd_per_minute"):
        PerformanceConfig(budget_usd_per_minute=0)


def test_redis_store_shares_dollars_between_stores(redis_url: str) -> None:
    one = RedisBudgetStore(redis_url, prefix="t-usd")
    two = RedisBudgetStore(redis_url, prefix="t-usd")
    wall = Wall()
    a = gate(wall, one, budget_usd_per_minute=1.0, budget_scopes="key")
    b = gate(wall, two, budget_usd_per_minute=1.0, budget_scopes="key")
    with a.acquire(cost_usd=0.6) as ticket:
        ticket.reconcile_cost(0.3)
    with b.acquire(cost_usd=0.7):
        pass
    with pytest.raises(BudgetExceeded) as info, a.acquire(cost_usd=0.01):
        pass
    assert info.value.spent_usd == pytest.approx(1.0)
    assert one.stats()["redis_calls"] > 0 and one.stats()["fallback_calls"] == 0
    one.close()
    two.close()


async def test_redis_store_async_twins(redis_url: str) -> None:
    store = RedisBudgetStore(redis_url, prefix="t-usd-async")
    g = gate(Wall(), store, budget_usd_per_minute=1.0, budget_scopes="key")
    async with g.aacquire(cost_usd=0.8) as ticket:
        await ticket.areconcile_cost(0.5)
    async with g.aacquire(cost_usd=0.5):
        pass
    with pytest.raises(BudgetExceeded):
        async with g.aacquire(cost_usd=0.01):
            pass
    store.close()


def test_redis_down_fails_closed_with_one_worker_and_shares_with_several(
    caplog: pytest.LogCaptureFixture,
) -> None:
    down = "redis://127.0.0.1:1/0"  # nothing listens on port 1
    lonely = RedisBudgetStore(down, timeout=0.05, worker_count=1)
    g = gate(Wall(), lonely, budget_usd_per_minute=1.0, budget_scopes="key")
    with pytest.raises(BudgetExceeded, match="unreachable") as info, g.acquire(cost_usd=0.01):
        pass
    assert info.value.unavailable
    shared = RedisBudgetStore(down, timeout=0.05, worker_count=4)
    h = gate(Wall(), shared, budget_usd_per_minute=1.0, budget_scopes="key")
    with h.acquire(cost_usd=0.2):
        pass  # within this process's share: $0.25
    with pytest.raises(BudgetExceeded) as share, h.acquire(cost_usd=0.1):
        pass
    assert share.value.limit_usd == 1.0 and share.value.spent_usd == pytest.approx(0.2)
    assert shared.stats()["fallback_calls"] >= 2
