"""RetryPolicy with aiohttp clients: ``ClientResponseError`` carries ``.status`` and ``.headers``.

Real aiohttp against the bundled simulator (injected 429s and 5xx) and against a small
aiohttp web server that answers a scripted 429 + Retry-After, 503, then 200.
"""

from __future__ import annotations

import random
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from rag_perf_plugins._clock import FakeClock
from rag_perf_plugins.admission import AdmissionGate, LocalBudgetStore, RetryPolicy, classify
from rag_perf_plugins.simulator import Simulator
from rag_perf_plugins.simulator.testing import SimulatorFactory
from rag_perf_plugins.tracking import NULL_TRACKER

BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


class MaxJitter(random.Random):
    """Jitter that always picks the top of the range, so back-offs are exact."""

    def uniform(self, a: float, b: float) -> float:
        return b


async def post_chat(session: aiohttp.ClientSession, base_url: str) -> dict[str, Any]:
    async with session.post(f"{base_url}/chat/completions", json=BODY) as reply:
        reply.raise_for_status()
        result: dict[str, Any] = await reply.json()
        return result


async def raised_by(base_url: str, path: str = "/chat/completions") -> aiohttp.ClientResponseError:
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientResponseError) as info:
            async with session.post(f"{base_url}{path}", json=BODY) as reply:
                reply.raise_for_status()
    return info.value


# --- classify on errors raised by aiohttp itself -------------------------------------------
async def test_a_simulator_429_is_rate_limited_with_its_retry_after(
    simulator_factory: SimulatorFactory,
) -> None:
    sim = simulator_factory(rate_limit_rate=1.0, retry_after_s=2.5)
    exc = await raised_by(sim.base_url)
    failure = classify(exc)
    assert (failure.retryable, failure.kind, failure.status) == (True, "rate_limited", 429)
    assert failure.retry_after == 2.5
    assert failure.headers is not None and failure.headers["Retry-After"] == "2.5"


async def test_a_simulator_5xx_is_a_retryable_server_error(
    simulator_factory: SimulatorFactory,
) -> None:
    sim = simulator_factory(error_rate=1.0, seed=3)
    exc = await raised_by(sim.base_url)
    failure = classify(exc)
    assert exc.status in (500, 503)
    assert (failure.retryable, failure.kind, failure.status) == (True, "server_error", exc.status)


async def test_a_simulator_404_is_a_client_error(simulator: Simulator) -> None:
    exc = await raised_by(simulator.base_url, "/no/such/route")
    failure = classify(exc)
    assert (failure.retryable, failure.kind, failure.status) == (False, "client_error", 404)


def test_a_status_that_is_not_an_http_status_is_ignored() -> None:
    info = aiohttp.RequestInfo(URL("http://127.0.0.1:1/"), "GET", CIMultiDictProxy(CIMultiDict()))
    assert not classify(aiohttp.ClientResponseError(info, ())).retryable  # status 0: none given

    class Odd(Exception):
        def __init__(self, status: object) -> None:
            self.status = status

    for status in (True, 1, 429.0, "429", 1000):
        assert classify(Odd(status)).kind == "not_retryable"
    assert classify(Odd(503)).kind == "server_error"  # any exception with an HTTP .status


def test_classify_does_not_import_aiohttp() -> None:
    code = "import sys, rag_perf_plugins.admission.retry; print('aiohttp' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert out.stdout.strip() == "False"


# --- the policy around an aiohttp call ----------------------------------------------------
@pytest.fixture
async def scripted_server() -> AsyncIterator[tuple[str, list[int]]]:
    """Answers 429 (Retry-After: 2), then 503, then 200; yields (base URL, statuses sent)."""
    statuses = [429, 503]
    sent: list[int] = []

    async def chat(request: web.Request) -> web.Response:
        status = statuses.pop(0) if statuses else 200
        sent.append(status)
        headers = {"Retry-After": "2"} if status == 429 else {}
        return web.json_response({"status": status}, status=status, headers=headers)

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}/v1", sent
    await runner.cleanup()


async def test_policy_retries_aiohttp_429_and_503_honouring_retry_after(
    scripted_server: tuple[str, list[int]], fake_clock: FakeClock
) -> None:
    base_url, sent = scripted_server
    gate = AdmissionGate(
        key="g", store=LocalBudgetStore(), clock=fake_clock, sleep=fake_clock.sleep,
        async_sleep=fake_clock.asleep, requests_per_minute=6000, tracker=NULL_TRACKER,
    )  # fmt: skip
    policy = RetryPolicy(
        clock=fake_clock, sleep=fake_clock.sleep, async_sleep=fake_clock.asleep,
        rng=MaxJitter(), tracker=None, retry_initial_backoff=0.5,
    )  # fmt: skip
    async with aiohttp.ClientSession() as session:
        result = await policy.acall(lambda: post_chat(session, base_url), gate=gate)
    assert result == {"status": 200}
    assert sent == [429, 503, 200]
    # The gate paused for the 429's Retry-After (2 s) before the second attempt; the policy's
    # back-offs were max(jitter 0.5, 2 - already waited) and 0.5 * 2.
    assert gate.stats()["pauses"] == 1 and gate.stats()["admitted"] == 3
    assert fake_clock() - 1000.0 >= 2.0
    stats = policy.stats()
    assert (stats["attempts"], stats["retries"], stats["succeeded"]) == (3, 2, 1)
