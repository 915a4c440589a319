"""Four spawned processes share one RPM budget through Redis against the simulator.

The simulator runs in thread mode in this process with the same RPM as the gates (its
bucket holds 2 s of budget, the gates' 1 s: the difference absorbs scheduling jitter
between admission and arrival on a loaded machine; the rate is the same). The workers
are ``multiprocessing`` spawn children (see ``run_shared_budget``), 8 tasks each.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import pytest

from rag_perf_plugins.bench.suites.scaleout import SIM_BURST_S, run_shared_budget
from rag_perf_plugins.simulator import Simulator

pytestmark = pytest.mark.redis

SimulatorFactory = Callable[..., Simulator]
RedisServer = Any  # the fixture's class lives in this directory's conftest.py
RPM = 1200  # 20 requests/s in total: 150 requests in the 7.5 s window


def test_four_processes_reach_the_limit_together_with_zero_429s(
    simulator_factory: SimulatorFactory, redis_url: str
) -> None:
    sim = simulator_factory(rpm=RPM, burst_seconds=SIM_BURST_S)
    run = run_shared_budget(
        sim.base_url, redis_url, processes=4, rpm=RPM, duration_s=9.0, warmup_s=1.5
    )
    stats = sim.stats()
    assert stats["rate_limited_total"] == 0, (run, stats)
    assert run.rate_limited == 0 and run.errors == 0 and run.rejected == 0, run
    # The budget was Redis's: a slow moment on a loaded machine may trip a breaker for a
    # couple of seconds (then each process uses its quarter), but not for most calls.
    assert run.redis_calls > 4 * run.fallback_calls, run
    assert stats["requests_by_endpoint"]["/v1/embeddings"] == run.ok
    assert run.fraction >= 0.95, run
    # Nobody went over: the window holds at most the rate plus one gate burst.
    assert run.in_window <= RPM / 60 * (run.window_s + 1.0), run


def test_control_the_same_processes_with_local_budgets_get_429s(
    simulator_factory: SimulatorFactory, redis_url: str
) -> None:
    # The control for the test above (it can fail): four process-local budgets at the full
    # rate send about four times the limit.
    sim = simulator_factory(rpm=RPM, burst_seconds=SIM_BURST_S)
    run = run_shared_budget(
        sim.base_url, redis_url, processes=4, rpm=RPM, duration_s=2.0, warmup_s=0.5, shared=False
    )
    assert sim.stats()["rate_limited_total"] > 0
    assert run.rate_limited > 0


# A standalone Redis this test may kill: the Sentinel fixture's replica port (the two never
# run at once), moved with RAG_PERF_TEST_SENTINEL_PORT like the fixture's.
SWITCH_PORT = int(os.environ.get("RAG_PERF_TEST_SENTINEL_PORT", "7200")) + 1


def test_both_budget_switches_stay_within_the_documented_bound(
    simulator_factory: SimulatorFactory, redis_server_on: Callable[[int], RedisServer]
) -> None:
    # The measurement: 4 processes x 8 tasks on one 600 RPM budget, Redis killed
    # (3 s in) and back empty (8 s in). Before the fix: 27 and 40 429s in the 5 s after
    # each switch (2.5-4 s of extra budget). The bound (admission/redis_store.py): at most
    # one request per process over the rate at each switch.
    rpm = 600
    server = redis_server_on(SWITCH_PORT).start()
    sim = simulator_factory(rpm=rpm, burst_seconds=SIM_BURST_S)
    marks: dict[str, float] = {}

    def outage(start_at: float) -> None:
        time.sleep(max(0.0, start_at + 3.0 - time.time()))
        server.stop()
        marks["killed"] = time.time()
        time.sleep(max(0.0, start_at + 8.0 - time.time()))
        server.start()  # same port, empty (as after a restart without persistence)
        marks["back"] = time.time()

    try:
        run = run_shared_budget(
            sim.base_url, server.url, processes=4, rpm=rpm, duration_s=13.0, warmup_s=1.0,
            during=outage,
        )  # fmt: skip
    finally:
        server.stop()
    assert set(marks) == {"killed", "back"}
    assert run.errors == 0 and run.rejected == 0, run
    after_kill = run.sent_between(marks["killed"], marks["killed"] + 5.0)
    after_return = run.sent_between(marks["back"], marks["back"] + 5.0)
    # Both switches happened in every process: local shares, then Redis again.
    assert run.trips >= 4 and run.recoveries >= 4, run
    assert sim.stats()["rate_limited_total"] == run.rate_limited
    assert run.rate_limited <= 2 * 4, (run.rate_limited, after_kill, after_return)
    # And the budget was used, not starved: 10/s in every second on a quiet machine; at
    # least 80% after the outage began and 60% after Redis came back under a full test
    # run's load (36 of 50 seen: a loaded worker's probe misses the aligned moment).
    assert after_kill[0] >= 0.8 * rpm / 60 * 5.0, after_kill
    assert after_return[0] >= 0.6 * rpm / 60 * 5.0, after_return
