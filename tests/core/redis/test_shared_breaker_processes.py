"""Four spawned processes share the dead primary's circuit breaker through Redis.

The simulator runs in this process (thread mode); the workers are spawn children, each
with a ``PerfChatModel`` over the real ``ChatOpenAI`` (primary down, one fallback), calling
in a loop for 3 s (see ``run_shared_breaker``). Counted: what the dead primary received.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest

from rag_perf_plugins.bench.peers.resilience_processes import (
    BREAKER,
    PRIMARY,
    run_shared_breaker,
)
from rag_perf_plugins.simulator import Simulator

pytestmark = pytest.mark.redis

SimulatorFactory = Callable[..., Simulator]
DURATION_S = 3.0
PROCESSES = 4


def _primary_requests(sim: Simulator) -> int:
    return int(sim.stats()["requests_by_model"].get(PRIMARY, 0))


def _run(
    sim: Simulator, redis_url: str | None, breaker: dict[str, Any] | None = None
) -> tuple[int, int]:
    marks: list[int] = []

    def outage() -> None:  # after the workers' warm-up calls
        marks.append(_primary_requests(sim))
        sim.add_outage(model=PRIMARY, duration_s=3600.0)

    run = run_shared_breaker(
        sim.base_url,
        redis_url,
        processes=PROCESSES,
        duration_s=DURATION_S,
        before_start=outage,
        breaker=breaker,
    )
    assert run.errors == 0, run  # every call was answered (by the fallback)
    assert run.ok > 0
    if redis_url is not None:
        assert run.fallback_calls == 0, run  # every breaker decision came from Redis
    return _primary_requests(sim) - marks[0], run.ok


def test_four_processes_send_the_dead_primary_no_more_than_one_process_would(
    simulator_factory: SimulatorFactory, redis_url: str
) -> None:
    shared, ok = _run(simulator_factory(), redis_url)
    # What one process sends a dead primary: the calls that trip its breaker (the first
    # 503, at most min_calls), then one probe per cool-down. Four processes sharing one
    # breaker add at most the calls already in flight when it opened (one per other
    # process).
    cooldown, min_calls = BREAKER["breaker_cooldown"], BREAKER["breaker_min_calls"]
    one_process = min_calls + math.ceil(DURATION_S / cooldown) + 1
    assert shared <= one_process + PROCESSES - 1, (shared, ok)
    # The control (it can fail): the same four processes with a breaker each.
    local, _ = _run(simulator_factory(), None)
    print(f"dead primary received {shared} requests (shared breaker), {local} (local)")
    assert local > 2 * shared, (local, shared)


def test_a_cooldown_that_grows_after_failed_probes_is_shared_by_four_processes(
    simulator_factory: SimulatorFactory, redis_url: str
) -> None:
    # Cool-downs of 0.5, 1, 2 s (growth 2, no jitter): in 3 s one process sends the dead
    # primary its first 503 and two probes (at 0.5 s and 1.5 s; the next is at 3.5 s).
    # Four processes sharing the breaker send no more, plus the calls in flight when it
    # opened; with the fixed 0.5 s cool-down they would send one probe per 0.5 s.
    grow = {"breaker_cooldown_growth": 2.0, "breaker_cooldown_max": 60.0}
    shared, ok = _run(simulator_factory(), redis_url, grow)
    print(f"dead primary received {shared} requests (shared, growing cool-down)")
    assert shared <= 1 + 2 + PROCESSES - 1, (shared, ok)
    fixed = 1 + math.ceil(DURATION_S / BREAKER["breaker_cooldown"])
    assert shared < fixed, (shared, fixed)
