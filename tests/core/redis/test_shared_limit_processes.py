"""Four spawned processes share one RPM budget through Redis against the simulator.

The simulator runs in thread mode in this process with the same RPM as the gates (its
bucket holds 2 s of budget, the gates' 1 s: the difference absorbs scheduling jitter
between admission and arrival on a loaded machine; the rate is the same). The workers
are ``multiprocessing`` spawn children (see ``run_shared_budget``), 8 tasks each.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from rag_perf_plugins.bench.suites.scaleout import SIM_BURST_S, run_shared_budget
from rag_perf_plugins.simulator import Simulator

pytestmark = pytest.mark.redis

SimulatorFactory = Callable[..., Simulator]
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
