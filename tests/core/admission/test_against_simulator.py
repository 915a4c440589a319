"""Acceptance against the provider simulator: the counts are what the simulator saw."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import Any

import aiohttp
import openai
import pytest

from rag_perf_plugins.admission import AdmissionGate, LocalBudgetStore, RetryPolicy
from rag_perf_plugins.simulator import Simulator
from rag_perf_plugins.tracking import NULL_TRACKER

SimulatorFactory = Callable[..., Simulator]
BODY = {"model": "text-embedding-3-small", "input": ["admission gate"]}


async def flood(
    base_url: str, gate: AdmissionGate | None, *, tasks: int, requests: int
) -> list[int]:
    """``requests`` embedding calls from ``tasks`` tasks; returns the status codes seen.

    aiohttp's client rather than httpx: on these shared 2-core machines it drives the
    in-process simulator about ten times faster, so the gate, not the client, sets the pace.
    """
    statuses: list[int] = []
    url = base_url + "/embeddings"
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as session:
        per_task = requests // tasks

        async def post() -> int:
            async with session.post(url, json=BODY) as response:
                await response.read()
                if gate is not None:
                    gate.observe_response(response.status, response.headers)
                return response.status

        async def worker() -> None:
            for _ in range(per_task):
                if gate is None:
                    statuses.append(await post())
                else:
                    async with gate.aacquire(tokens=2):
                        statuses.append(await post())

        await asyncio.gather(*(worker() for _ in range(tasks)))
    return statuses


def test_gate_at_the_providers_rate_and_burst_gets_zero_429s(
    simulator_factory: SimulatorFactory,
) -> None:
    rpm, burst = 18_000, 0.2  # 300 requests/s, a burst of 60: about 10 s for 3,000
    # The provider's bucket holds 15 requests (50 ms) more than the gate's: the time a request
    # may take from its admission to being counted. A gate 0.5 % too fast over these 10 s
    # would still draw 429s. (With equal buckets, one 429 in 3,000 was seen once in a full
    # CI run, from a request delayed inside the busy interpreter.)
    sim = simulator_factory(rpm=rpm, burst_seconds=burst + 0.05)
    gate = AdmissionGate(
        key="sim-rpm", store=LocalBudgetStore(), requests_per_minute=rpm,
        rate_burst_seconds=burst, max_concurrent_requests=16, tracker=NULL_TRACKER,
    )  # fmt: skip
    # 16 in flight: the in-process simulator shares our interpreter lock and counts a
    # request when its handler runs, so requests queued inside it bunch up when it gets the
    # CPU back; with 64 in flight that bunching (up to 64 at once) outgrew the burst slack
    # and it counted 15-30 429s per run on this machine. A real provider counts at its edge.
    statuses = asyncio.run(flood(sim.base_url, gate, tasks=300, requests=3000))
    stats = sim.stats()
    assert len(statuses) == 3000 and statuses.count(200) == 3000
    assert stats["rate_limited_total"] == 0, stats
    assert stats["requests_by_endpoint"]["/v1/embeddings"] == 3000
    assert gate.stats()["admitted"] == 3000 and gate.stats()["rejected"] == 0


def test_without_the_gate_the_same_load_is_rate_limited(
    simulator_factory: SimulatorFactory,
) -> None:
    # The control for the test above: it can fail, because without a gate this load is
    # well above the provider's budget.
    sim = simulator_factory(rpm=18_000, burst_seconds=0.2)
    statuses = asyncio.run(flood(sim.base_url, None, tasks=300, requests=900))
    assert statuses.count(429) > 0 and sim.stats()["rate_limited_total"] == statuses.count(429)


@pytest.mark.parametrize("twin", ["async", "sync"])
def test_a_20_percent_429_storm_is_absorbed_within_one_and_a_half_times_the_calls(
    simulator_factory: SimulatorFactory, twin: str
) -> None:
    # retry_after_s kept small so the test takes a second, not minutes of honoured waits.
    sim = simulator_factory(rate_limit_rate=0.2, retry_after_s=0.01, seed=0)
    policy = RetryPolicy(
        retry_budget_ratio=0.5, retry_max_attempts=4, retry_initial_backoff=0.005,
        retry_max_backoff=0.02, rng=random.Random(3), tracker=None,
    )  # fmt: skip
    logical_calls = 200
    results: list[Any] = []
    if twin == "async":

        async def main() -> None:
            client = openai.AsyncOpenAI(base_url=sim.base_url, api_key="sk-test", max_retries=0)
            async with client:
                for _ in range(logical_calls):
                    reply = await policy.acall(
                        lambda: client.embeddings.create(
                            model="text-embedding-3-small", input=["storm"]
                        )
                    )
                    results.append(reply)

        asyncio.run(main())
    else:
        with openai.OpenAI(base_url=sim.base_url, api_key="sk-test", max_retries=0) as client:
            for _ in range(logical_calls):
                results.append(
                    policy.call(
                        lambda: client.embeddings.create(
                            model="text-embedding-3-small", input=["storm"]
                        )
                    )
                )
    seen = sim.stats()
    assert len(results) == logical_calls  # every call succeeded
    assert seen["rate_limited_total"] > 0.1 * logical_calls  # the storm was real
    assert seen["requests_total"] <= 1.5 * logical_calls
    stats = policy.stats()
    assert stats["succeeded"] == logical_calls and stats["failed"] == 0
    assert seen["requests_total"] == stats["attempts"] == logical_calls + stats["retries"]
