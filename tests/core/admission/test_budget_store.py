"""The pure GCRA bookkeeping of LocalBudgetStore: numbers in, waits out, no clock, no sleeping."""

from __future__ import annotations

from typing import Any

import pytest

from rag_perf_plugins.admission import (
    LocalBudgetStore,
    RateLimits,
    key_fingerprint,
    parse_reset,
)

RPM_60 = RateLimits(requests_per_minute=60, burst_seconds=1.0)  # one per second, burst 1


def reserve(store: LocalBudgetStore, limits: RateLimits, now: float, **amounts: int) -> float:
    amounts.setdefault("requests", 1)
    amounts.setdefault("tokens", 0)
    return store.try_reserve(
        "k", limits, requests=amounts["requests"], tokens=amounts["tokens"], now=now, max_wait=1e9
    )


def test_reservations_are_scheduled_one_interval_apart_after_the_burst() -> None:
    store = LocalBudgetStore()
    limits = RateLimits(requests_per_minute=600, burst_seconds=1.0)  # 10/s, burst of 10
    waits = [reserve(store, limits, 0.0) for _ in range(15)]
    assert waits[:10] == [0.0] * 10
    assert waits[10:] == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5])


def test_a_fresh_key_never_releases_a_whole_minute() -> None:
    store = LocalBudgetStore()
    limits = RateLimits(requests_per_minute=6000, burst_seconds=2.0)
    immediate = sum(reserve(store, limits, 0.0) == 0.0 for _ in range(6000))
    assert immediate == 200  # 2 seconds' worth, not 6000


def test_a_limit_slower_than_the_burst_still_admits_one_request() -> None:
    store = LocalBudgetStore()
    limits = RateLimits(requests_per_minute=10, burst_seconds=1.0)  # one per 6 s
    assert reserve(store, limits, 0.0) == 0.0
    assert reserve(store, limits, 0.0) == pytest.approx(6.0)


def test_a_request_larger_than_the_burst_waits_for_an_empty_bucket_then_leaves_debt() -> None:
    store = LocalBudgetStore()
    limits = RateLimits(tokens_per_minute=6000, burst_seconds=1.0)  # 100 tokens/s, burst 100
    assert reserve(store, limits, 0.0, tokens=50) == 0.0
    # 500 tokens > the whole burst: aiolimiter refuses it; we wait until the bucket is empty.
    assert reserve(store, limits, 0.0, tokens=500) == pytest.approx(0.5)
    # ... and the next caller waits behind the debt, in arrival order (FIFO).
    assert reserve(store, limits, 0.0, tokens=1) == pytest.approx(0.5 + 5.0 - 1.0 + 0.01)


def test_fifo_small_requests_do_not_overtake_a_large_one() -> None:
    store = LocalBudgetStore()
    limits = RateLimits(tokens_per_minute=6000, burst_seconds=1.0)
    reserve(store, limits, 0.0, tokens=100)  # empties the burst
    big = reserve(store, limits, 0.0, tokens=90)
    small = reserve(store, limits, 0.0, tokens=1)
    assert small > big  # aiolimiter would wake the 1-token waiter first


def test_refused_reservation_debits_nothing() -> None:
    store = LocalBudgetStore()
    assert store.try_reserve("k", RPM_60, requests=1, tokens=0, now=0.0, max_wait=0.0) == 0.0
    assert store.try_reserve("k", RPM_60, requests=1, tokens=0, now=0.0, max_wait=0.5) == 1.0
    assert store.try_reserve("k", RPM_60, requests=1, tokens=0, now=0.0, max_wait=0.5) == 1.0
    assert store.peek("k", RPM_60, requests=1, tokens=0, now=0.0) == 1.0


def test_refund_and_debit_move_the_token_budget() -> None:
    store = LocalBudgetStore()
    limits = RateLimits(tokens_per_minute=600, burst_seconds=1.0)  # 10 tokens/s, burst 10
    assert reserve(store, limits, 0.0, tokens=10) == 0.0
    assert store.peek("k", limits, requests=0, tokens=8, now=0.0) == pytest.approx(0.8)
    store.adjust("k", limits, requests=0, tokens=-8, now=0.0)  # actual usage was 2
    assert store.peek("k", limits, requests=0, tokens=8, now=0.0) == 0.0
    store.adjust(
        "k", limits, requests=0, tokens=+20, now=0.0
    )  # 20 more than reserved: 22 in the bucket
    assert store.peek("k", limits, requests=0, tokens=8, now=0.0) == pytest.approx(2.0)


def test_a_refund_on_an_idle_bucket_gives_no_credit() -> None:
    store = LocalBudgetStore()
    limits = RateLimits(tokens_per_minute=600, burst_seconds=1.0)
    reserve(store, limits, 0.0, tokens=10)
    store.adjust("k", limits, requests=0, tokens=-10_000, now=100.0)
    waits = [reserve(store, limits, 100.0, tokens=10) for _ in range(2)]
    assert waits == [0.0, pytest.approx(1.0)]  # one burst, not 1,000 tokens of credit


def test_pause_stops_everyone_then_resumes_at_the_rate_without_a_burst() -> None:
    store = LocalBudgetStore()
    limits = RateLimits(requests_per_minute=600, burst_seconds=1.0)
    store.pause("k", limits, seconds=2.0, now=0.0)
    assert store.paused_for("k", now=0.5) == pytest.approx(1.5)
    waits = [reserve(store, limits, 0.0) for _ in range(3)]
    assert waits == pytest.approx([2.0, 2.1, 2.2])
    assert store.paused_for("other", now=0.0) == 0.0


def test_pause_without_limits_still_holds_everyone() -> None:
    store = LocalBudgetStore()
    unlimited = RateLimits()
    store.pause("k", unlimited, seconds=3.0, now=10.0)
    assert reserve(store, unlimited, 10.0) == pytest.approx(3.0)
    assert reserve(store, unlimited, 13.0) == 0.0


def test_clamp_follows_the_providers_remaining_budget() -> None:
    store = LocalBudgetStore()
    limits = RateLimits(requests_per_minute=600, burst_seconds=1.0)
    store.clamp("k", limits, requests=2, tokens=None, now=0.0)
    waits = [reserve(store, limits, 0.0) for _ in range(4)]
    assert waits == pytest.approx([0.0, 0.0, 0.1, 0.2])


async def _scenario(store: LocalBudgetStore, twin: bool) -> list[float]:
    """Every protocol method once or more, through the blocking methods or their twins."""

    async def call(name: str, *args: Any, **kwargs: Any) -> Any:
        if twin:
            return await getattr(store, "a" + name)(*args, **kwargs)
        return getattr(store, name)(*args, **kwargs)

    limits = RateLimits(requests_per_minute=60, tokens_per_minute=600, burst_seconds=1.0)
    out = [
        await call("try_reserve", "k", limits, requests=1, tokens=5, now=0.0, max_wait=1.5)
        for _ in range(3)
    ]
    await call("adjust", "k", limits, requests=-1, tokens=-5, now=0.0)
    await call("pause", "k", limits, seconds=2.0, now=0.0)
    await call("clamp", "c", limits, requests=0, tokens=None, now=0.0)
    out.append(await call("peek", "k", limits, requests=1, tokens=0, now=0.0))
    out.append(await call("paused_for", "k", now=0.5))
    out.append(await call("peek", "c", limits, requests=1, tokens=0, now=0.0))
    return out


async def test_async_twins_give_the_same_answers() -> None:
    blocking = await _scenario(LocalBudgetStore(), twin=False)
    assert await _scenario(LocalBudgetStore(), twin=True) == blocking
    # 2.0 refused (over 1.5 s) and not debited; the pause holds k until 2.0; c has none left.
    assert blocking == pytest.approx([0.0, 1.0, 2.0, 2.0, 1.5, 1.0])


def test_unlimited_limits_never_wait() -> None:
    store = LocalBudgetStore()
    assert all(reserve(store, RateLimits(), 0.0, tokens=10**9) == 0.0 for _ in range(100))


def test_unlimited_callers_on_a_key_change_nothing_for_limited_ones() -> None:
    limits = RateLimits(requests_per_minute=600, burst_seconds=0.2)  # 10/s, burst of 2
    stores = LocalBudgetStore(), LocalBudgetStore()
    waits: list[list[float]] = [[], []]
    for i, store in enumerate(stores):
        store.pause("k", limits, seconds=1.0, now=0.0)
        for step in range(6):
            now = step * 0.3
            if i:  # the same key through a gate without limits, between every limited call
                waits[i].append(reserve(store, RateLimits(), now))
            waits[i].append(reserve(store, limits, now))
    assert waits[1][1::2] == waits[0]
    assert waits[1][::2] == pytest.approx([1.0, 0.7, 0.4, 0.1, 0.0, 0.0])


def test_rate_limits_validate_their_arguments() -> None:
    with pytest.raises(ValueError, match="requests_per_minute"):
        RateLimits(requests_per_minute=0)
    with pytest.raises(ValueError, match="burst_seconds"):
        RateLimits(burst_seconds=0)


def test_key_fingerprint_is_short_stable_and_hides_the_key() -> None:
    key = "sk-live-abcdefghijklmnopqrstuvwxyz0123456789"
    fp = key_fingerprint(key)
    assert fp == key_fingerprint(key) and fp.startswith("k-") and len(fp) == 14
    assert "abcdef" not in fp and key_fingerprint("sk-other") != fp
    assert key_fingerprint(None) == key_fingerprint("") == "nokey"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("20ms", 0.02), ("1.5s", 1.5), ("6m0s", 360.0), ("1h2m3s", 3723.0), ("2", 2.0)],
)
def test_parse_reset_reads_openai_durations(text: str, seconds: float) -> None:
    assert parse_reset(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "soon", "5x", "1s garbage"])
def test_parse_reset_refuses_malformed_values(text: str) -> None:
    assert parse_reset(text) is None
