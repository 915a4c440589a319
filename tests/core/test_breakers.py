"""Breakers: transitions logged once, Redis down falls back to a local breaker, errors."""

from __future__ import annotations

import logging
import pickle
import threading

import httpx
import pytest

from rag_perf_plugins._clock import FakeClock
from rag_perf_plugins.config import PerformanceConfig
from rag_perf_plugins.errors import ConfigError, Overloaded, ProviderError, ProviderUnavailable
from rag_perf_plugins.resilience import (
    Breakers,
    BreakerSettings,
    LocalBreakerStore,
    breakers_for,
    outcome_of,
)
from rag_perf_plugins.resilience.redis_store import RedisBreakerStore, breaker_key
from rag_perf_plugins.tracking import PerformanceTracker

DEAD_REDIS = "redis://127.0.0.1:1/0"  # nothing listens on port 1: refused at once
SETTINGS = BreakerSettings(min_calls=2, cooldown=1.0)


def test_outcomes() -> None:
    assert outcome_of(None) == "success"
    # "down": the kinds that say the target is down (breaker_down_failures of them trip it)
    for status in (502, 503, 504, 529):
        assert outcome_of(ProviderError("x", status_code=status)) == "down"
    assert outcome_of(httpx.ConnectError("refused")) == "down"
    assert outcome_of(httpx.ReadTimeout("slow")) == "down"
    assert outcome_of(TimeoutError("probe took too long")) == "down"
    assert outcome_of(ProviderError("x", status_code=500)) == "failure"
    assert outcome_of(ProviderError("x", status_code=429)) == "failure"
    assert outcome_of(ProviderError("x", status_code=400)) == "neutral"
    assert outcome_of(Overloaded("queue full")) == "neutral"
    assert outcome_of(ValueError("bad input")) == "neutral"


def test_settings_refuse_bad_values_naming_them() -> None:
    with pytest.raises(ValueError, match="failure_ratio must be in"):
        BreakerSettings(failure_ratio=0.0)
    with pytest.raises(ValueError, match="probes must be an integer >= 1"):
        BreakerSettings(probes=0)
    with pytest.raises(ConfigError, match="breaker_cooldown"):
        PerformanceConfig(breaker_cooldown=0.0)


def test_transitions_log_one_line_each_and_count(caplog: pytest.LogCaptureFixture) -> None:
    clock, tracker = FakeClock(), PerformanceTracker()
    breakers = Breakers(
        SETTINGS, LocalBreakerStore(), clock=clock, tracker=tracker, rand=lambda: 0.0
    )
    caplog.set_level(logging.INFO, logger="rag_perf_plugins.resilience")
    for _ in range(10):
        if breakers.admit("t").allowed:
            breakers.record("t", "failure", probe=False)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1  # ten failed calls, one line
    assert "circuit breaker of t opened" in warnings[0].getMessage()
    clock.advance(1.0)
    probe = breakers.admit("t")
    breakers.record("t", "success", probe=probe.probe)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "closed after 1.0 s" in warnings[-1].getMessage()
    assert tracker.counters() == {"breaker.opened": 1, "breaker.closed": 1}
    stats = breakers.stats()["t"]
    assert stats["calls"] == 3  # two that tripped it, one probe
    assert stats["open_s"] == pytest.approx(1.0)
    assert stats["transitions"] == {"opened": 1, "half_open": 1, "closed": 1}


def test_redis_down_falls_back_to_a_local_breaker_warned_once_and_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = RedisBreakerStore(DEAD_REDIS, prefix="down")
    breakers = Breakers(SETTINGS, store, clock=FakeClock())
    caplog.set_level(logging.INFO, logger="rag_perf_plugins.redis")
    for _ in range(3):
        if breakers.admit("t").allowed:
            breakers.record("t", "failure", probe=False)
    assert breakers.peek("t")[0] == "open"  # the local breaker works on its own
    assert store.stats()["fallback_calls"] >= 3
    assert store.stats()["redis_calls"] == 0
    outage_warnings = [
        r for r in caplog.records if r.levelno == logging.WARNING and "redis at" in r.getMessage()
    ]
    assert len(outage_warnings) == 1
    assert ":1/0" in outage_warnings[0].getMessage()
    store.close()


async def test_redis_down_async_twins_fall_back_too() -> None:
    store = RedisBreakerStore(DEAD_REDIS, prefix="down")
    admission = await store.aadmit("t", SETTINGS, 0.0)
    assert admission.allowed
    assert await store.arecord("t", SETTINGS, "success", False, 0.0) is None
    assert store.stats()["fallback_calls"] == 2
    store.close()


def test_breakers_for_is_one_per_settings_and_redis() -> None:
    a = breakers_for(PerformanceConfig(breaker_cooldown=3.0))
    assert breakers_for(PerformanceConfig(breaker_cooldown=3.0)) is a
    assert breakers_for(PerformanceConfig(breaker_cooldown=4.0)) is not a
    shared = breakers_for(PerformanceConfig(breaker_cooldown=3.0, redis_url=DEAD_REDIS))
    assert isinstance(shared.store, RedisBreakerStore)
    assert isinstance(a.store, LocalBreakerStore)


def test_the_redis_key_holds_the_prefix_and_target() -> None:
    assert breaker_key("app", "openai/m/k-1~e") == "app:cb:{openai/m/k-1~e}"


def test_an_unrebuildable_provider_class_unpickles_as_a_plain_provider_unavailable() -> None:
    class LocalError(Exception):  # its name cannot be imported where the pickle is read
        def __init__(self, message: str, *, status_code: int) -> None:
            super().__init__(message)
            self.status_code = status_code

    last = LocalError("bad gateway", status_code=502)
    last.lock = threading.Lock()  # type: ignore[attr-defined]  # an attribute pickle refuses
    targets = [("a/m/k-1~e", "open", 5.0), ("b/m/k-2~f", "closed", 0.0)]
    errors = {"a/m/k-1~e": "LocalError: bad gateway", "b/m/k-2~f": "LocalError: bad gateway"}
    error = ProviderUnavailable.after_failures(targets, errors, last)
    assert isinstance(error, LocalError)
    back = pickle.loads(pickle.dumps(error))
    assert type(back) is ProviderUnavailable  # degraded, not failed
    assert (str(back), back.targets, back.errors) == (str(error), targets, errors)
    assert back.retry_in == error.retry_in == 0.0
    assert back.status_code == 502  # type: ignore[attr-defined]  # the error's attributes
    assert not hasattr(back, "lock")  # left out, the rest still travels


def test_provider_unavailable_names_each_target_and_state() -> None:
    error = ProviderUnavailable([("a/m/k-1~e", "open", 3.21), ("b/m/k-2~f", "half_open", 1.0)])
    assert str(error) == (
        "no provider can take the call: a/m/k-1~e open (retry in 3.2 s); "
        "b/m/k-2~f half_open (probe in flight, retry in 1.0 s)"
    )
    assert error.retry_in == 1.0


def test_a_blocking_probe_past_its_bound_is_counted_until_it_ends_and_blocks_the_next() -> None:
    from rag_perf_plugins.resilience.chain import ProbeStillRunning
    from rag_perf_plugins.resilience.probe import run_probe

    breakers = Breakers(SETTINGS, LocalBreakerStore(), clock=FakeClock())
    release = threading.Event()
    calls: list[str] = []
    discarded: list[str] = []

    def hang() -> str:
        calls.append("sent")
        release.wait(30.0)
        return "late answer"

    with pytest.raises(TimeoutError, match=r"probe of t took longer than 0\.05 s"):
        run_probe(hang, "t", timeout=0.05, breakers=breakers, discard=discarded.append)
    assert breakers.late_probes("t") == 1
    with pytest.raises(ProbeStillRunning, match="probe of t not sent"):
        run_probe(hang, "t", timeout=0.05, breakers=breakers)
    assert calls == ["sent"]  # the second was never started
    assert run_probe(lambda: "other", "u", timeout=0.05, breakers=breakers) == "other"
    release.set()
    for _ in range(1000):  # a bound on waiting for the worker, not a timing assertion
        if breakers.late_probes("t") == 0:
            break
        threading.Event().wait(0.01)
    assert discarded == ["late answer"]  # the late answer went to discard, not a caller
    assert run_probe(hang, "t", timeout=5.0, breakers=breakers) == "late answer"
    stats = breakers.stats()["t"]
    assert (stats["probes_abandoned"], stats["probes_late"]) == (1, 0)
