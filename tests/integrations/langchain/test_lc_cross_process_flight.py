"""Cross-process single-flight: identical misses in several processes make one provider call.

Each worker is a ``multiprocessing`` spawn child with its own ``PerfChatModel`` (LangChain,
langchain-openai's ``ChatOpenAI`` over HTTP to the simulator running in this process) and
its own ``CacheManager`` on one Redis (``cross_process_lease``). The simulator counts what
the provider really received.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import queue
import signal
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
import redis

from rag_perf_plugins.simulator import Simulator

pytestmark = pytest.mark.redis

SimulatorFactory = Callable[..., Simulator]
QUESTION = "What is the capital of the shared cache?"
LEASE_S = 1.0


def _config(redis_url: str, prefix: str, lease: float) -> Any:
    from rag_perf_plugins.config import PerformanceConfig

    return PerformanceConfig(
        redis_url=redis_url,
        redis_position="instead-of-disk",
        cache_namespace_prefix=prefix,
        cross_process_lease=lease,
        enable_metrics=False,
    )


def _ask(spec: dict[str, Any], out: Any) -> None:
    """One worker: ``callers`` concurrent identical questions at ``start_at`` (wall time)."""
    from langchain_core.messages import HumanMessage
    from rag_perf_plugins.langchain import PerfChatModel
    from rag_perf_plugins.langchain.factories import pooled_chat_openai

    from rag_perf_plugins.cache import CacheManager

    config = _config(spec["redis_url"], spec["prefix"], spec["lease"])
    inner = pooled_chat_openai(
        base_url=spec["base_url"], model="gpt-4o-mini", api_key="sk-flight", temperature=0.0,
        config=config,
    )  # fmt: skip
    cache = CacheManager(config)
    llm = PerfChatModel(inner, config, cache_manager=cache)

    async def main() -> list[str]:
        await asyncio.sleep(max(0.0, spec["start_at"] - time.time()))
        answers = await asyncio.gather(
            *(llm.ainvoke([HumanMessage(QUESTION)]) for _ in range(spec["callers"]))
        )
        return [str(a.content) for a in answers]

    answers = asyncio.run(main())
    flight = cache.get_stats()["single_flight"]
    out.put({"answers": answers, "done_at": time.time(), "flight": flight})


def _spawn(specs: list[dict[str, Any]]) -> tuple[list[Any], Any]:
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_ask, args=(spec, out)) for spec in specs]
    for proc in procs:
        proc.start()
    return procs, out


def _collect(procs: list[Any], out: Any, n: int) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    deadline = time.time() + 90
    while len(results) < n and time.time() < deadline:
        try:
            results.append(out.get(timeout=0.5))
        except queue.Empty:
            alive = [p for p in procs if p.exitcode is None or p.exitcode == 0]
            if len(alive) < n:
                break  # a worker failed: its traceback is on stderr
    for proc in procs:
        proc.join(timeout=30)
    assert len(results) == n, [p.exitcode for p in procs]
    return results


def _chat_calls(sim: Simulator) -> int:
    by_endpoint: dict[str, int] = sim.stats()["requests_by_endpoint"]
    return by_endpoint.get("/v1/chat/completions", 0)


def _spec(
    sim: Simulator, redis_url: str, prefix: str, start_at: float, **more: Any
) -> dict[str, Any]:
    return {
        "base_url": sim.base_url, "redis_url": redis_url, "prefix": prefix, "lease": LEASE_S,
        "start_at": start_at, "callers": 25, **more,
    }  # fmt: skip


def _delete_prefix(redis_url: str, prefix: str) -> None:
    client = redis.Redis.from_url(redis_url)
    try:
        for key in client.scan_iter(match=f"{prefix}:*", count=1000):
            client.delete(key)
    finally:
        client.close()


def test_four_processes_one_hundred_identical_misses_make_one_provider_call(
    simulator_factory: SimulatorFactory, redis_url: str
) -> None:
    # 1.5 s per answer: every process's miss is in flight while the leader's call runs.
    sim = simulator_factory(latency_ms=1500.0)
    prefix = f"xp-{uuid.uuid4().hex[:8]}"
    start_at = time.time() + 6.0  # after the four children imported LangChain
    try:
        procs, out = _spawn([_spec(sim, redis_url, prefix, start_at) for _ in range(4)])
        results = _collect(procs, out, 4)
    finally:
        _delete_prefix(redis_url, prefix)
    answers = [a for r in results for a in r["answers"]]
    assert len(answers) == 100 and len(set(answers)) == 1
    assert _chat_calls(sim) == 1
    led = sum(r["flight"]["cross_process_led"] for r in results)
    followed = sum(r["flight"]["cross_process_followed"] for r in results)
    # A process that started late on a loaded machine finds the answer stored (a hit).
    assert led == 1 and 1 <= followed <= 3, results


def test_control_without_the_lease_each_process_calls_the_provider(
    simulator_factory: SimulatorFactory, redis_url: str
) -> None:
    # The control of the test above (it can fail): the local single-flight alone makes one
    # call per process (a process that started over 1.5 s late finds the answer stored).
    sim = simulator_factory(latency_ms=1500.0)
    prefix = f"xp-{uuid.uuid4().hex[:8]}"
    start_at = time.time() + 6.0
    try:
        specs = [_spec(sim, redis_url, prefix, start_at, lease=0.0) for _ in range(4)]
        procs, out = _spawn(specs)
        results = _collect(procs, out, 4)
    finally:
        _delete_prefix(redis_url, prefix)
    assert len({a for r in results for a in r["answers"]}) == 1
    assert _chat_calls(sim) >= 2


def test_a_killed_leader_lets_a_follower_finish_within_the_bound(
    simulator_factory: SimulatorFactory, redis_url: str
) -> None:
    latency_s = 1.5
    sim = simulator_factory(latency_ms=latency_s * 1000)
    prefix = f"xp-{uuid.uuid4().hex[:8]}"
    now = time.time()
    leader_spec = _spec(sim, redis_url, prefix, now + 6.0, callers=1)
    follower_specs = [_spec(sim, redis_url, prefix, now + 6.5) for _ in range(3)]
    client = redis.Redis.from_url(redis_url)
    try:
        procs, out = _spawn([leader_spec, *follower_specs])
        leader = procs[0]
        # Wait for the leader's lease and its provider call in flight, let the followers
        # start waiting on it, then kill the leader (SIGKILL: no release, no cleanup).
        deadline = time.time() + 60
        while time.time() < deadline and not (
            list(client.scan_iter(match=f"{prefix}:l:*")) and sim.stats()["inflight"] == 1
        ):
            time.sleep(0.02)
        assert time.time() < deadline, "the leader never took its lease and called"
        time.sleep(max(0.3, now + 6.8 - time.time()))
        assert sim.stats()["inflight"] == 1  # the leader's call, the followers wait
        assert leader.pid is not None
        os.kill(leader.pid, signal.SIGKILL)
        killed_at = time.time()
        results = _collect(procs[1:], out, 3)
        leader.join(timeout=30)
    finally:
        client.close()
        _delete_prefix(redis_url, prefix)
    answers = [a for r in results for a in r["answers"]]
    assert len(answers) == 75 and len(set(answers)) == 1
    # One follower then led: one more call. The simulator goes on answering the dead
    # leader's request after its socket closed (it is counted when it finished), and the
    # lease can lapse before that answer ends, so the simulator may see the dead leader's
    # request and the new leader's at once (2); never more, since only one follower led.
    assert _chat_calls(sim) in (1, 2) and sim.stats()["peak_inflight"] <= 2
    assert sum(r["flight"]["cross_process_led"] for r in results) == 1
    # The bound: the lease lapses within LEASE_S, then one provider call; 2 s of slack for
    # polling and a loaded machine.
    finished = max(r["done_at"] for r in results) - killed_at
    assert finished <= LEASE_S + latency_s + 2.0, finished
