"""A 429 with Retry-After reaches the admission gate from every request path, retry or not.

The services take the gate inside each attempt; the provider's answer to a failed attempt
must still pause the gate, so the other callers wait instead of collecting 429s too.
Real HTTP: the official openai client against the simulator, every request answered 429.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

import openai
import pytest

from rag_perf_plugins.admission import AdmissionGate
from rag_perf_plugins.admission.retry import (
    RetryPolicy,
    aobserve_failure,
    areconcile_ticket,
    observe_failure,
    reconcile_ticket,
)
from rag_perf_plugins.config import PerformanceConfig
from rag_perf_plugins.pool.http import async_openai_client, openai_client
from rag_perf_plugins.services.embeddings import EmbeddingService
from rag_perf_plugins.services.llm import LLMRequest, LLMService, Usage
from rag_perf_plugins.simulator import Simulator
from rag_perf_plugins.simulator.testing import SimulatorFactory
from rag_perf_plugins.tracking import PerformanceTracker

RETRY_AFTER_S = 30.0
OFF = PerformanceConfig(enable_metrics=False, enable_caching=False)


@pytest.fixture
def storm(simulator_factory: SimulatorFactory) -> Simulator:
    return simulator_factory(rate_limit_rate=1.0, retry_after_s=RETRY_AFTER_S, seed=3)


def _gate(name: str) -> AdmissionGate:
    # A fresh key: budgets and pauses are shared per key across the process's gates.
    return AdmissionGate(OFF, key=f"test/{name}/{uuid.uuid4().hex}")


def _assert_paused_once(gate: AdmissionGate) -> None:
    stats = gate.stats()
    assert stats["pauses"] == 1
    assert RETRY_AFTER_S - 5 < stats["paused_for_s"] <= RETRY_AFTER_S
    assert stats["in_flight"] == 0  # the failed attempt gave its slot back


def _clients(sim: Simulator) -> tuple[openai.OpenAI, openai.AsyncOpenAI]:
    # The shared pooled clients (SDK retries off): closed with the registry and each loop.
    return (
        openai_client(base_url=sim.base_url, api_key="sk-test"),
        async_openai_client(base_url=sim.base_url, api_key="sk-test"),
    )


def _embedding_service(
    sim: Simulator, gate: AdmissionGate, retry: RetryPolicy | None
) -> EmbeddingService:
    client, aclient = _clients(sim)

    def embed(texts: Sequence[str]) -> list[list[float]]:
        out = client.embeddings.create(model="text-embedding-3-small", input=list(texts))
        return [d.embedding for d in out.data]

    async def aembed(texts: Sequence[str]) -> list[list[float]]:
        out = await aclient.embeddings.create(model="text-embedding-3-small", input=list(texts))
        return [d.embedding for d in out.data]

    return EmbeddingService(
        embed,
        aembed_many=aembed,
        provider="sim",
        model="text-embedding-3-small",
        symmetric=True,
        config=PerformanceConfig(enable_metrics=False, enable_caching=False, batch_size=1),
        gate=gate,
        retry=retry,
        tracker=PerformanceTracker(enabled=False),
    )


@pytest.mark.parametrize("asynchronous", [False, True])
def test_embedding_429_pauses_the_gate_without_a_retry_policy(
    storm: Simulator, asynchronous: bool
) -> None:
    gate = _gate("embed")
    service = _embedding_service(storm, gate, retry=None)
    with pytest.raises(openai.RateLimitError):
        if asynchronous:
            asyncio.run(service.aembed_query("tide pools"))
        else:
            service.embed_query("tide pools")
    _assert_paused_once(gate)
    assert storm.stats()["rate_limited_total"] == 1


def test_embedding_429_with_a_long_retry_after_gives_up_but_still_pauses(
    storm: Simulator,
) -> None:
    gate = _gate("embed-retry")
    retry = RetryPolicy(PerformanceConfig(enable_metrics=False, retry_after_cap=1.0))
    service = _embedding_service(storm, gate, retry=retry)
    with pytest.raises(openai.RateLimitError):
        service.embed_documents(["a"])
    assert retry.stats()["retry_after_too_long"] == 1
    _assert_paused_once(gate)


class _Codec:
    def encode(self, value: Any) -> Any:
        return value

    def decode(self, data: Any) -> Any:
        return data

    def usage(self, value: Any) -> Usage | None:
        return None


def _request() -> LLMRequest:
    return LLMRequest(
        model="gpt-4o-mini",
        provider="sim",
        messages=[{"role": "user", "content": "what is rag?"}],
        params={"temperature": 0.0},
    )


@pytest.mark.parametrize("path", ["generate", "agenerate", "stream", "astream"])
def test_llm_429_pauses_the_gate_on_every_path(storm: Simulator, path: str) -> None:
    gate = _gate(f"llm-{path}")
    service = LLMService(config=OFF, gate=gate, tracker=PerformanceTracker(enabled=False))
    client, aclient = _clients(storm)
    req = _request()
    kwargs: dict[str, Any] = {"model": req.model, "messages": req.messages}
    with pytest.raises(openai.RateLimitError):
        if path == "generate":
            service.generate(req, lambda: client.chat.completions.create(**kwargs), _Codec())
        elif path == "agenerate":

            async def call() -> Any:
                return await aclient.chat.completions.create(**kwargs)

            asyncio.run(service.agenerate(req, call, _Codec()))
        elif path == "stream":
            list(
                service.stream(
                    req, lambda: client.chat.completions.create(stream=True, **kwargs), _Codec()
                )
            )
        else:

            async def consume() -> None:
                async def open_stream() -> Any:
                    async for chunk in await aclient.chat.completions.create(stream=True, **kwargs):
                        yield chunk

                async for _ in service.astream(req, open_stream, _Codec()):
                    pass

            asyncio.run(consume())
    _assert_paused_once(gate)


def test_observe_failure_ignores_errors_without_a_status() -> None:
    gate = _gate("no-status")
    observe_failure(gate, ConnectionError("reset"))
    asyncio.run(aobserve_failure(gate, TimeoutError()))
    observe_failure(object(), ConnectionError("no gate API at all"))
    assert gate.stats()["pauses"] == 0


def test_async_retry_and_llm_paths_use_the_gates_async_methods(storm: Simulator) -> None:
    """From async code the gate is told with aobserve_response/areconcile (no loop blocking)."""
    calls: list[str] = []

    class Ticket:
        queue_wait_s = 0.0

        def reconcile(self, actual: int) -> None:
            calls.append("reconcile")

        async def areconcile(self, actual: int) -> None:
            calls.append("areconcile")

    class Gate:
        def aacquire(self, **_: Any) -> Any:
            @contextlib.asynccontextmanager
            async def held() -> AsyncIterator[Ticket]:
                yield Ticket()

            return held()

        def acquire(self, **_: Any) -> Any:  # pragma: no cover - async test
            raise AssertionError

        def observe_response(self, status: int, headers: Any) -> None:
            calls.append("observe_response")

        async def aobserve_response(self, status: int, headers: Any) -> None:
            calls.append("aobserve_response")

    _, aclient = _clients(storm)
    retry = RetryPolicy(PerformanceConfig(enable_metrics=False, retry_max_attempts=1))

    async def main() -> None:
        with pytest.raises(openai.RateLimitError):
            await retry.acall(
                lambda: aclient.embeddings.create(model="m", input=["x"]),
                gate=Gate(),  # type: ignore[arg-type]
            )
        seven = await retry.acall(lambda: asyncio.sleep(0, 7), gate=Gate(), usage=int)  # type: ignore[arg-type]
        assert seven == 7

        class Counted(_Codec):
            def usage(self, value: Any) -> Usage | None:
                return Usage(3, 4)

        service = LLMService(config=OFF, gate=Gate(), tracker=PerformanceTracker(enabled=False))

        async def answer() -> str:
            return "ok"

        assert await service.agenerate(_request(), answer, Counted()) == "ok"

    asyncio.run(main())
    assert calls == ["aobserve_response", "areconcile", "areconcile"]


def test_reconcile_ticket_reaches_only_tickets_that_can_reconcile() -> None:
    seen: list[tuple[str, int]] = []

    class SyncOnly:
        def reconcile(self, actual: int) -> None:
            seen.append(("reconcile", actual))

    class Both(SyncOnly):
        async def areconcile(self, actual: int) -> None:
            seen.append(("areconcile", actual))

    reconcile_ticket(SyncOnly(), 5)
    reconcile_ticket(SyncOnly(), None)  # usage unknown: the estimate stands
    reconcile_ticket(object(), 5)  # not a ticket of ours: left alone
    asyncio.run(areconcile_ticket(Both(), 6))
    asyncio.run(areconcile_ticket(SyncOnly(), 7))
    asyncio.run(areconcile_ticket(Both(), None))
    assert seen == [("reconcile", 5), ("areconcile", 6), ("reconcile", 7)]
