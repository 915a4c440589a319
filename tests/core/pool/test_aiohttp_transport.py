"""``http_transport: aiohttp``: the same shared clients, pools and counts, carried by aiohttp.

Against the simulator through the official openai client, and against a recording HTTP
server that keeps every request's bytes: the provider receives the same requests whichever
backend carries them, and the two fail the same way on the same faults. LangChain's
``ChatOpenAI`` on both backends: tests/integrations/langchain/test_lc_aiohttp_transport.py.
"""

from __future__ import annotations

import asyncio
import gc
import json
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import httpx
import openai
import pytest

from rag_perf_plugins.config import HttpTransport, PerformanceConfig
from rag_perf_plugins.pool._aiohttp import AiohttpPool, _FifoSlots
from rag_perf_plugins.pool.http import (
    HttpPoolStats,
    LoopRoutingTransport,
    async_openai_client,
    close_http_clients,
    get_async_http_client,
    http_limits,
    http_pool_stats,
)
from rag_perf_plugins.simulator import Simulator

SimulatorFactory = Callable[..., Simulator]
AIOHTTP = PerformanceConfig(http_transport="aiohttp")
MODEL = "text-embedding-3-small"


@pytest.fixture(autouse=True)
def _fresh_registry() -> Iterator[None]:
    close_http_clients()
    yield
    close_http_clients()


@pytest.fixture
def sim(simulator_factory: SimulatorFactory) -> Simulator:
    return simulator_factory(embedding_dim=8)


def stats(base_url: str, backend: HttpTransport = "aiohttp") -> HttpPoolStats:
    kind = "async" if backend == "httpx" else "async-aiohttp"
    return http_pool_stats()[f"{kind} {base_url.removesuffix('/v1')}"]


def sdk(base_url: str, config: PerformanceConfig = AIOHTTP) -> openai.AsyncOpenAI:
    return async_openai_client(base_url=base_url, api_key="sk-test", config=config)


def test_a_separate_shared_client_per_backend() -> None:
    url = "http://127.0.0.1:8000/v1"
    on_aiohttp = get_async_http_client(url, config=AIOHTTP)
    assert isinstance(on_aiohttp, httpx.AsyncClient)
    assert get_async_http_client(url + "/x", config=AIOHTTP) is on_aiohttp
    assert get_async_http_client(url) is not on_aiohttp
    transport: Any = on_aiohttp._transport
    assert transport.backend == "aiohttp"


def test_many_tasks_stay_within_the_pool_and_are_counted(sim: Simulator) -> None:
    client = sdk(sim.base_url, AIOHTTP.replace(connection_pool_size=5))

    async def main() -> None:
        counter = iter(range(600))

        async def worker() -> None:
            for i in counter:
                response = await client.embeddings.create(model=MODEL, input=f"t{i}", dimensions=8)
                assert len(response.data[0].embedding) == 8

        await asyncio.gather(*(worker() for _ in range(20)))

    asyncio.run(main())
    server, ours = sim.stats(), stats(sim.base_url)
    assert server["requests_total"] == ours.requests == 600, "every request sent once"
    assert ours.connections_opened == server["connections_opened"] <= 5
    assert (ours.pool_timeouts, ours.errors, ours.loops) == (0, 0, 0)


def test_the_same_client_across_two_asyncio_runs(sim: Simulator) -> None:
    client = sdk(sim.base_url)

    async def one() -> int:
        return len((await client.embeddings.create(model=MODEL, input="hello")).data)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert asyncio.run(one()) == 1
        assert asyncio.run(one()) == 1  # a new loop gets its own session
        gc.collect()
    assert [w for w in caught if issubclass(w.category, ResourceWarning)] == []
    assert sim.stats()["connections_opened"] == 2
    assert stats(sim.base_url).loops == 0, "each loop's session closed with its loop"


async def test_active_and_idle_connections_and_the_pool_timeout(
    simulator_factory: SimulatorFactory,
) -> None:
    # aiohttp frees a connection as soon as a body has fully arrived (read or not), so the
    # held request is one still waiting for its answer (0.5 s of simulated latency).
    sim = simulator_factory(embedding_dim=8, latency_ms=500.0)
    client = get_async_http_client(
        sim.base_url, config=AIOHTTP.replace(connection_pool_size=1, connection_timeout=0.05)
    )
    body = {"model": MODEL, "input": "held"}
    held = asyncio.create_task(client.post(sim.base_url + "/embeddings", json=body))
    while stats(sim.base_url).active == 0:  # noqa: ASYNC110 - polling a counter
        await asyncio.sleep(0.005)
    assert (stats(sim.base_url).active, stats(sim.base_url).idle) == (1, 0)
    with pytest.raises(httpx.PoolTimeout):
        await client.post(sim.base_url + "/embeddings", json=body)
    (await held).raise_for_status()
    counted = stats(sim.base_url)
    assert (counted.pool_timeouts, counted.requests, counted.active, counted.idle) == (1, 1, 0, 1)
    assert sim.stats()["requests_total"] == 1, "the timed-out request never reached the server"


async def test_a_closed_port_is_a_connect_error_and_counted() -> None:
    transport = LoopRoutingTransport(limits=http_limits(AIOHTTP), backend="aiohttp")
    with pytest.raises(httpx.ConnectError):
        await transport.handle_async_request(httpx.Request("GET", "http://127.0.0.1:9/"))
    assert transport.stats().errors == 1
    await transport.aclose()


@pytest.mark.parametrize(
    "fault",
    [{"drop_rate": 0.5}, {"truncate_rate": 0.5}, {"slow_rate": 0.5, "slow_ms": 2000.0}],
    ids=["dropped", "truncated", "slow"],
)
def test_failures_raise_what_the_httpx_backend_raises(
    simulator_factory: SimulatorFactory, fault: dict[str, float]
) -> None:
    """The same seeded faults, request by request: the same outcome on both backends."""

    def outcomes(backend: HttpTransport) -> list[str]:
        sim = simulator_factory(embedding_dim=8, seed=7, **fault)
        config = PerformanceConfig(http_transport=backend, request_deadline=0.5)
        client = get_async_http_client(sim.base_url, config=config)

        async def main() -> list[str]:
            seen = []
            for i in range(16):
                try:
                    response = await client.post(
                        sim.base_url + "/embeddings", json={"model": MODEL, "input": f"t{i}"}
                    )
                    seen.append(str(response.status_code))
                except httpx.TransportError as exc:
                    seen.append(type(exc).__name__)
            return seen

        return asyncio.run(main())

    on_httpx = outcomes("httpx")
    assert len(set(on_httpx)) == 2, "some requests fail, some succeed"
    assert outcomes("aiohttp") == on_httpx


def test_without_keep_alive_every_request_opens_a_connection(sim: Simulator) -> None:
    client = get_async_http_client(sim.base_url, config=AIOHTTP.replace(keepalive_expiry=1e-6))
    client_off = get_async_http_client(
        sim.base_url, config=AIOHTTP.replace(enable_connection_pooling=False)
    )

    async def main() -> None:
        for _ in range(3):
            (await client.get(sim.base_url + "/models")).raise_for_status()
            await asyncio.sleep(0.01)
        for _ in range(3):
            (await client_off.get(sim.base_url + "/models")).raise_for_status()
        await client_off.aclose()

    asyncio.run(main())
    assert sim.stats()["connections_opened"] == 6


def test_no_silent_resend_when_the_server_drops_connections(
    simulator_factory: SimulatorFactory,
) -> None:
    sim = simulator_factory(embedding_dim=8, drop_rate=0.3, seed=7)
    client = sdk(sim.base_url, AIOHTTP.replace(connection_pool_size=5))

    async def main() -> int:
        failed = 0
        for i in range(60):
            try:
                await client.embeddings.create(model=MODEL, input=f"t{i}")
            except openai.APIConnectionError:
                failed += 1
        return failed

    failed = asyncio.run(main())
    assert 0 < failed < 60
    assert sim.stats()["requests_total"] == 60, "a POST is never re-sent"
    ours = stats(sim.base_url)
    assert ours.errors == failed and ours.requests == 60 - failed


# --- the provider receives the same requests, and the answers are the same ---------------
class _Recorder(BaseHTTPRequestHandler):
    """Keeps each request's method, path, headers and body; answers a fixed completion."""

    seen: ClassVar[list[tuple[str, str, dict[str, str], bytes]]] = []
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        self.seen.append((self.command, self.path, dict(self.headers.items()), body))
        answer = json.dumps(
            {
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "created": 1,
                "model": "gpt-4o-mini",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "recorded"},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
            }
        ).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args: object) -> None:
        return None


@pytest.fixture
def recorder() -> Iterator[str]:
    _Recorder.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_the_provider_receives_the_same_bytes_from_both_backends(recorder: str) -> None:
    async def ask(backend: HttpTransport) -> str:
        client = sdk(recorder, PerformanceConfig(http_transport=backend))
        answer = await client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "héllo ✓"}],
            temperature=0.2,
            max_tokens=7,
        )
        return answer.choices[0].message.content or ""

    assert asyncio.run(ask("httpx")) == asyncio.run(ask("aiohttp")) == "recorded"
    (via_httpx, via_aiohttp) = _Recorder.seen
    assert via_httpx[:2] == via_aiohttp[:2] == ("POST", "/v1/chat/completions")
    assert via_httpx[3] == via_aiohttp[3], "the same body, byte for byte"

    def comparable(headers: dict[str, str]) -> dict[str, str]:
        # The SDK's per-request id and retry count differ per call, by design.
        varying = {"x-stainless-retry-count", "x-stainless-read-timeout"}
        return {k.lower(): v for k, v in headers.items() if k.lower() not in varying}

    assert comparable(via_httpx[2]) == comparable(via_aiohttp[2])


# --- the extra, and aiohttp's internals we read ------------------------------------------
def test_a_missing_extra_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "httpx_aiohttp", None)
    monkeypatch.delitem(sys.modules, "rag_perf_plugins.pool._aiohttp")
    with pytest.raises(ImportError, match=r"rag-perf-plugins\[aiohttp\]"):
        get_async_http_client("http://127.0.0.1:8000/v1", config=AIOHTTP)


async def test_aiohttp_keeps_its_connector_state_where_we_read_it() -> None:
    # AiohttpPool.counts() reads the connector's private `_acquired` and `_conns`.
    counted: list[int] = []
    pool = AiohttpPool(limits=http_limits(AIOHTTP), opened=lambda: counted.append(1))
    assert pool.counts() == (0, 0)
    assert isinstance(pool._connector._acquired, set)
    assert isinstance(pool._connector._conns, dict)
    await pool.aclose()


# --- first come, first served -------------------------------------------------------------
async def test_a_freed_slot_goes_to_the_longest_waiter_not_a_newcomer() -> None:
    slots = _FifoSlots(1)
    await slots.acquire(None)
    served: list[int] = []

    async def take(i: int) -> None:
        await slots.acquire(5.0)
        served.append(i)

    waiting = [asyncio.create_task(take(i)) for i in range(3)]
    await asyncio.sleep(0)  # all three are queued
    slots.release()
    newcomer = asyncio.create_task(take(99))  # what aiohttp's own limit lets overtake
    await asyncio.sleep(0.01)
    assert served == [0]
    for _ in range(3):
        slots.release()
        await asyncio.sleep(0.01)
    assert served == [0, 1, 2, 99]
    await asyncio.gather(*waiting, newcomer)


async def test_a_waiter_that_gives_up_does_not_keep_or_lose_a_slot() -> None:
    slots = _FifoSlots(1)
    await slots.acquire(None)
    with pytest.raises(TimeoutError):
        await slots.acquire(0.01)
    slots.release()  # nobody waits any more: the slot is free again
    await asyncio.wait_for(slots.acquire(None), 1.0)
    cancelled = asyncio.create_task(slots.acquire(None))
    await asyncio.sleep(0)
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    slots.release()
    await asyncio.wait_for(slots.acquire(None), 1.0)


def test_an_unknown_backend_is_refused_with_the_allowed_ones() -> None:
    with pytest.raises(ValueError, match=r"backend='curl': allowed: 'httpx', 'aiohttp'"):
        LoopRoutingTransport(limits=http_limits(AIOHTTP), backend="curl")  # type: ignore[arg-type]
