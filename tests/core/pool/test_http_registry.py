"""The HTTP client registry against the simulator, through the official openai client.

Connections are counted by the simulator (TCP connections it accepted), requests by both
sides, so a silent re-send or a pool that grows past its limit shows as a count mismatch.
"""

from __future__ import annotations

import asyncio
import gc
import subprocess
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from rag_perf_plugins.config import HttpTransport, PerformanceConfig
from rag_perf_plugins.pool.http import (
    HttpClientRegistry,
    LoopRoutingTransport,
    _httpcore_pool,
    async_openai_client,
    close_http_clients,
    get_async_http_client,
    get_http_client,
    http_limits,
    http_pool_stats,
    http_timeout,
    openai_client,
)
from rag_perf_plugins.simulator import Simulator

SimulatorFactory = Callable[..., Simulator]
MODEL = "text-embedding-3-small"


@pytest.fixture(autouse=True)
def _fresh_registry() -> Iterator[None]:
    close_http_clients()
    yield
    close_http_clients()


@pytest.fixture
def sim(simulator_factory: SimulatorFactory) -> Simulator:
    return simulator_factory(embedding_dim=8)


def sdk(sim: Simulator, config: PerformanceConfig) -> openai.AsyncOpenAI:
    return async_openai_client(base_url=sim.base_url, api_key="sk-test", config=config)


async def embed_many(client: openai.AsyncOpenAI, n: int, *, tasks: int) -> None:
    """``n`` embedding requests from ``tasks`` concurrent workers."""
    counter = iter(range(n))

    async def worker() -> None:
        for i in counter:
            response = await client.embeddings.create(model=MODEL, input=f"text {i}", dimensions=8)
            assert len(response.data[0].embedding) == 8

    await asyncio.gather(*(worker() for _ in range(tasks)))


@pytest.mark.slow  # 10,000 real HTTP round trips through the SDK: 100-180 s on a busy 2-core box
@pytest.mark.timeout(900)
@pytest.mark.parametrize("backend", ["httpx", "aiohttp"])
def test_ten_thousand_requests_from_fifty_tasks_stay_within_the_pool(
    sim: Simulator, backend: HttpTransport
) -> None:
    config = PerformanceConfig(connection_pool_size=10, http_transport=backend)
    client = sdk(sim, config)
    asyncio.run(embed_many(client, 10_000, tasks=50))
    server = sim.stats()
    kind = "async" if backend == "httpx" else "async-aiohttp"
    ours = http_pool_stats()[f"{kind} {sim.base_url.removesuffix('/v1')}"]
    assert server["requests_total"] == 10_000, "every request sent once, none re-sent"
    assert server["connections_opened"] <= 10
    assert ours.requests == 10_000
    assert ours.connections_opened == server["connections_opened"]
    assert ours.reuse_ratio >= 0.999
    assert (ours.pool_timeouts, ours.errors) == (0, 0)
    assert ours.loops == 0, "the loop's pool was closed when asyncio.run() ended"


def test_same_client_across_two_asyncio_runs(sim: Simulator) -> None:
    client = sdk(sim, PerformanceConfig())

    async def one() -> int:
        response = await client.embeddings.create(model=MODEL, input="hello")
        return len(response.data)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert asyncio.run(one()) == 1
        assert asyncio.run(one()) == 1  # a new loop: "Event loop is closed" without routing
        gc.collect()
    assert [w for w in caught if issubclass(w.category, ResourceWarning)] == []
    server = sim.stats()
    assert server["requests_total"] == 2
    assert server["connections_opened"] == 2, "one connection per loop; none survives its loop"
    assert http_pool_stats()[f"async {sim.base_url.removesuffix('/v1')}"].loops == 0


def test_loops_in_two_threads_at_once(sim: Simulator) -> None:
    config = PerformanceConfig(connection_pool_size=4)
    client = sdk(sim, config)
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def run() -> None:
        async def main() -> None:
            barrier.wait()  # both loops are live at the same time
            await embed_many(client, 300, tasks=10)

        try:
            asyncio.run(main())
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    server = sim.stats()
    assert server["requests_total"] == 600
    assert server["connections_opened"] <= 8, "each loop's pool holds at most 4"


async def test_stats_show_idle_connections_of_the_running_loop(sim: Simulator) -> None:
    config = PerformanceConfig(connection_pool_size=3)
    client = sdk(sim, config)
    await embed_many(client, 30, tasks=3)
    stats = http_pool_stats()[f"async {sim.base_url.removesuffix('/v1')}"]
    assert stats.loops == 1 and stats.active == 0
    assert stats.idle == stats.connections_opened == sim.stats()["connections_opened"] <= 3
    assert "loops: 1" in repr(client._client._transport)


def test_no_silent_resend_when_the_server_drops_connections(
    simulator_factory: SimulatorFactory,
) -> None:
    sim = simulator_factory(embedding_dim=8, drop_rate=0.3, seed=7)
    client = sdk(sim, PerformanceConfig(connection_pool_size=5))

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
    assert sim.stats()["requests_total"] == 60, "SDK and transport retries are off"
    ours = http_pool_stats()[f"async {sim.base_url.removesuffix('/v1')}"]
    assert ours.errors == failed and ours.requests == 60 - failed


def test_sync_client_shared_by_sixteen_threads(sim: Simulator) -> None:
    config = PerformanceConfig(connection_pool_size=4)
    client = openai_client(base_url=sim.base_url, api_key="sk-test", config=config)
    assert client.max_retries == 0

    def work() -> None:
        for _ in range(25):
            client.embeddings.create(model=MODEL, input="x")

    threads = [threading.Thread(target=work) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    server = sim.stats()
    assert server["requests_total"] == 400
    assert server["connections_opened"] <= 4
    assert http_pool_stats()[f"sync {sim.base_url.removesuffix('/v1')}"].requests == 400


def test_one_client_per_origin_and_settings() -> None:
    a = get_async_http_client("http://127.0.0.1:8000/v1")
    assert get_async_http_client("http://127.0.0.1:8000/v2") is a
    assert get_async_http_client("http://127.0.0.1:8001/v1") is not a
    assert get_async_http_client("http://127.0.0.1:8000/v1", proxy="http://proxy:3128") is not a
    small = PerformanceConfig(connection_pool_size=2)
    assert get_async_http_client("http://127.0.0.1:8000/v1", config=small) is not a
    assert get_http_client("http://127.0.0.1:8000") is get_http_client("http://127.0.0.1:8000/x")
    with pytest.raises(ValueError, match="base_url must be an absolute http"):
        get_http_client("127.0.0.1:8000")


def test_limits_and_timeouts_come_from_the_config() -> None:
    config = PerformanceConfig(
        connection_pool_size=7, keepalive_expiry=12.0, connection_timeout=3.0
    )
    limits = http_limits(config)
    assert (limits.max_connections, limits.max_keepalive_connections) == (7, 7)
    assert limits.keepalive_expiry == 12.0
    timeout = http_timeout(config)
    assert (timeout.connect, timeout.pool, timeout.read) == (3.0, 3.0, config.request_deadline)
    # The limits reach httpcore's pool, per loop.
    transport = LoopRoutingTransport(limits=limits)

    async def check() -> None:
        await transport.handle_async_request(httpx.Request("GET", "http://127.0.0.1:9/"))

    with pytest.raises(httpx.ConnectError):
        asyncio.run(check())
    assert transport.stats().errors == 1


def test_httpx_keeps_its_httpcore_pool_where_we_read_it() -> None:
    # http.py reads httpx's private `_pool`; this fails first if httpx moves it.
    transport = httpx.HTTPTransport()
    assert isinstance(_httpcore_pool(transport).connections, list)
    transport.close()


def test_without_pooling_every_call_gets_a_fresh_client(sim: Simulator) -> None:
    config = PerformanceConfig(enable_connection_pooling=False)
    first = get_http_client(sim.base_url, config=config)
    second = get_http_client(sim.base_url, config=config)
    assert first is not second
    for _ in range(3):
        first.get(sim.base_url + "/models").raise_for_status()
    first.close()
    second.close()
    assert sim.stats()["connections_opened"] == 3, "no keep-alive: one connection per request"


async def test_shared_clients_survive_a_user_closing_them(sim: Simulator) -> None:
    shared = get_async_http_client(sim.base_url)
    async with openai.AsyncOpenAI(
        base_url=sim.base_url, api_key="sk-test", http_client=shared, max_retries=0
    ) as user_client:
        await user_client.models.list()
    await shared.aclose()  # a no-op for shared clients
    assert not shared.is_closed
    response = await shared.get(sim.base_url + "/models")
    assert response.status_code == 200


async def test_registry_aclose_closes_the_running_loops_pool(sim: Simulator) -> None:
    registry = HttpClientRegistry()
    client: Any = registry.get_async_client(sim.base_url)
    (await client.get(sim.base_url + "/models")).raise_for_status()
    transport = client._transport
    assert transport.stats().idle == 1
    await registry.aclose()
    assert transport.stats().loops == 0
    assert client.is_closed
    assert repr(registry) == "<HttpClientRegistry [sync: 0, async: 0]>"


def test_sync_pool_timeout_is_raised_and_counted(sim: Simulator) -> None:
    config = PerformanceConfig(connection_pool_size=1, connection_timeout=0.05)
    client = get_http_client(sim.base_url, config=config)
    with client.stream("GET", sim.base_url + "/models") as held:
        assert held.status_code == 200
        with pytest.raises(httpx.PoolTimeout):
            client.get(sim.base_url + "/models")
        held.read()  # an unread body would cost the connection
    client.get(sim.base_url + "/models").raise_for_status()  # the slot came back on close
    stats = http_pool_stats()[f"sync {sim.base_url.removesuffix('/v1')}"]
    assert (stats.pool_timeouts, stats.requests, stats.connections_opened) == (1, 2, 1)


async def test_async_pool_timeout_is_raised_and_counted(sim: Simulator) -> None:
    config = PerformanceConfig(connection_pool_size=1, connection_timeout=0.05)
    client = get_async_http_client(sim.base_url, config=config)
    async with client.stream("GET", sim.base_url + "/models") as held:
        assert held.status_code == 200
        stats = http_pool_stats()[f"async {sim.base_url.removesuffix('/v1')}"]
        assert (stats.active, stats.idle) == (1, 0)
        with pytest.raises(httpx.PoolTimeout):
            await client.get(sim.base_url + "/models")
        await held.aread()
    stats = http_pool_stats()[f"async {sim.base_url.removesuffix('/v1')}"]
    assert (stats.pool_timeouts, stats.requests, stats.active, stats.idle) == (1, 1, 0, 1)


def test_shared_clients_are_closed_at_interpreter_exit(tmp_path: Path) -> None:
    """No "unclosed socket" from the process-wide clients when a script just ends."""
    script = tmp_path / "script.py"
    script.write_text(
        "from rag_perf_plugins.pool.http import openai_client\n"
        "from rag_perf_plugins.simulator import Simulator\n"
        "sim = Simulator().in_thread().start()\n"
        "client = openai_client(base_url=sim.base_url, api_key='sk-test')\n"
        "assert client.models.list().data\n"
        "print('requested')\n"
    )
    done = subprocess.run(
        [sys.executable, "-W", "default::ResourceWarning", str(script)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "requested"
    assert "unclosed" not in done.stderr


def test_response_listeners_nest_and_are_restored(sim: Simulator) -> None:
    from rag_perf_plugins.pool.http import response_listener

    heard: list[tuple[str, int]] = []
    client = openai_client(base_url=sim.base_url, api_key="sk-test")

    def embed() -> None:
        client.embeddings.create(model=MODEL, input=["hello"])

    embed()  # no listener: nobody hears it
    outer = response_listener(lambda status, _: heard.append(("outer", status)))
    with outer:
        embed()
        with response_listener(lambda status, _: heard.append(("inner", status))):
            embed()
        embed()  # the outer listener is back
    embed()
    with outer:  # the same block object may be opened again once closed
        embed()
    assert heard == [("outer", 200), ("inner", 200), ("outer", 200), ("outer", 200)]


def test_a_response_listener_block_opened_inside_itself_restores_each_level() -> None:
    # Re-entered while open (a block kept and reused by a recursive call), each exit restores
    # what its own enter replaced: nothing keeps listening after the outermost block.
    from rag_perf_plugins.pool import http

    def hear(status: int, headers: Any) -> None:
        del status, headers

    block = http.response_listener(hear)
    assert http._listener.get() is None
    with block:
        with block:
            assert http._listener.get() == (hear, None)
        assert http._listener.get() == (hear, None)
    assert http._listener.get() is None
