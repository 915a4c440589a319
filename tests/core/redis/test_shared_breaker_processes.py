"""Four spawned processes share the dead primary's circuit breaker through Redis.

The simulator runs in this process (thread mode); the workers are spawn children, each
with a ``PerfChatModel`` over the real ``ChatOpenAI`` (primary down, one fallback), calling
in a loop for 3 s (see ``run_shared_breaker``). Counted: what the dead primary received.
"""

from __future__ import annotations

import math
from collections.abc import Callable

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


def _run(sim: Simulator, redis_url: str | None) -> tuple[int, int]:
    marks: list[int] = []

    def outage() -> None:  # after the workers' warm-up calls
        marks.append(_primary_requests(sim))
        sim.add_outage(model=PRIMARY, duration_s=3600.0)

    run = run_shared_breaker(
        sim.base_url, redis_url, processes=PROCESSES, duration_s=DURATION_S, before_start=outage
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
    # What one process sends a dead primary: the calls that trip its breaker (min_calls),
    # then one probe per cool-down. Four processes sharing one breaker add at most the
    # calls already in flight when it opened (one per other process).
    cooldown, min_calls = BREAKER["breaker_cooldown"], BREAKER["breaker_min_calls"]
    one_process = min_calls + math.ceil(DURATION_S / cooldown) + 1
    assert shared <= one_process + PROCESSES - 1, (shared, ok)
    # The control (it can fail): the same four processes with a breaker each.
    local, _ = _run(simulator_factory(), None)
    print(f"dead primary received {shared} requests (shared breaker), {local} (local)")
    assert local > 2 * shared, (local, shared)
