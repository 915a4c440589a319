"""Throughput of the provider simulator at zero latency: it must never be the bottleneck.

Run with ``rag-perf bench --only simulator`` (``--quick`` for a short run). The simulator
runs in thread mode in this process; the load comes from a separate process
(:func:`~rag_perf_plugins.simulator.loadgen.run_load`: 32 keep-alive connections, one
request at a time on each) so client and server do not share a GIL. Two kinds of small
request are measured: one short text embedded (base64, as the openai SDK asks for) and one
short chat completion (non-streaming), each cycling through 4096 distinct bodies so the
simulator's caches cannot flatter the figure. The baseline, measured side by side in the same run
with the same load generator, is a bare aiohttp low-level server answering a fixed JSON
body: the ceiling of the stack the simulator is built on, so ``ratio`` is the share of
that ceiling the simulator keeps (higher is better, 1.0 is the ceiling).

Each run also checks the simulator's own count against the load generator's (every
answered request must be counted) and reports both in ``extra``, with the server's CPU
time per request: on a machine busy with other work the rate drops, the CPU cost does not,
and ``requests_per_s_on_one_free_core`` (1 / CPU per request) is what one idle core gives.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
from aiohttp import web

from ...simulator import Simulator
from ...simulator.loadgen import run_load
from ..registry import BenchContext, Result, Target, benchmark

__all__ = ["TARGET_RPS", "bare_aiohttp_server"]

TARGET_RPS = 2000.0
CONCURRENCY = 32
WARMUP_S = 0.5  # run_load's default warm-up

DISTINCT = 4096  # distinct bodies per case: more than the embedding cache holds (2048)


def _bodies(case: str) -> list[dict[str, Any]]:
    # Distinct short requests, so the simulator's caches do not flatter the figure.
    if case == "embeddings":
        return [
            {
                "model": "text-embedding-3-small",
                "input": f"short text number {i} about topic {i % 97}",
                "encoding_format": "base64",
            }
            for i in range(DISTINCT)
        ]
    return [
        {
            "model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": f"What is retrieval case {i}?"}],
        }
        for i in range(DISTINCT)
    ]


_PATHS = {"embeddings": "/embeddings", "chat": "/chat/completions"}


@contextlib.contextmanager
def bare_aiohttp_server() -> Iterator[str]:
    """A minimal aiohttp low-level server in a thread, answering ``{"ok":true}`` to anything.

    Example::

        with bare_aiohttp_server() as url:
            run_load(url + "/x", {}, seconds=1.0)
    """
    ready = threading.Event()
    port: list[int] = []
    control: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []

    async def handler(request: web.BaseRequest) -> web.Response:
        await request.read()
        return web.Response(body=b'{"ok":true}', content_type="application/json")

    async def serve() -> None:
        stop = asyncio.Event()
        control.append((asyncio.get_running_loop(), stop))
        runner = web.ServerRunner(web.Server(handler, access_log=None), shutdown_timeout=0.25)
        await runner.setup()
        try:
            await web.TCPSite(runner, "127.0.0.1", 0).start()
            port.append(int(runner.addresses[0][1]))
            ready.set()
            await stop.wait()
        finally:
            await runner.cleanup()

    thread = threading.Thread(target=asyncio.run, args=(serve(),), daemon=True)
    thread.start()
    try:
        if not ready.wait(30.0):
            raise RuntimeError("the bare aiohttp server did not start")
        yield f"http://127.0.0.1:{port[0]}"
    finally:
        if control:
            loop, stop = control[0]
            loop.call_soon_threadsafe(stop.set)
        thread.join(30.0)


@benchmark("simulator", "requests per second at zero latency (embeddings, chat)")
def simulator_throughput(ctx: BenchContext) -> Iterator[Result]:
    """Small requests per second the simulator answers, against a bare aiohttp server."""
    seconds = 5.0 if not ctx.quick else 0.6
    ctx.progress("bare aiohttp server (baseline)")
    with bare_aiohttp_server() as url:
        cpu = time.process_time()
        bare = run_load(url + "/x", _bodies("chat"), seconds=seconds, concurrency=CONCURRENCY)
        bare_cpu_us = _cpu_us_per_request(time.process_time() - cpu, bare)
    for name, path in _PATHS.items():
        ctx.progress(f"simulator: {name}")
        bodies = _bodies(name)
        with Simulator().in_thread() as sim:
            # One request first: the embedding table is built once per process (~0.2 s).
            httpx.post(sim.base_url + path, json=bodies[-1], timeout=30.0).raise_for_status()
            sim.reset_stats()
            cpu = time.process_time()
            load = run_load(sim.base_url + path, bodies, seconds=seconds, concurrency=CONCURRENCY)
            cpu_us = _cpu_us_per_request(time.process_time() - cpu, load)
            counted = sim.stats()["requests_total"]
        yield Result.compare(
            f"simulator_{name}_requests_per_s",
            load["requests_per_s"],
            "req/s",
            baseline=("bare aiohttp server, fixed JSON", bare["requests_per_s"]),
            better="higher",
            target=Target.value_at_least(TARGET_RPS),
            notes=(
                f"{CONCURRENCY} keep-alive connections from a separate process, latency 0; "
                "the simulator counted every request the client saw answered"
                if counted >= load["requests"] + load["errors"]
                else "WARNING: the simulator counted fewer requests than were answered"
            ),
            requests=load["requests"],
            errors=load["errors"],
            simulator_requests_total=counted,
            seconds=load["elapsed_s"],
            # CPU of this process (the server thread; the main thread waits) per request
            # answered, warm-up included: robust to a busy machine, unlike the rate.
            server_cpu_us_per_request=cpu_us,
            bare_server_cpu_us_per_request=bare_cpu_us,
            requests_per_s_on_one_free_core=1e6 / cpu_us if cpu_us else None,
        )


def _cpu_us_per_request(cpu_s: float, load: dict[str, float]) -> float:
    # The load process also answered warm-up requests: count them at the measured rate.
    answered = load["requests"] + load["errors"]
    total = answered * (1.0 + WARMUP_S / load["elapsed_s"]) if answered else 0.0
    return cpu_s / total * 1e6 if total else 0.0
