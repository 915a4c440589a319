"""Pool benchmarks: HTTP connection reuse, and the cost of borrowing from the generic pools.

Run with ``rag-perf bench --only pool`` (``--quick`` for a short run). The simulator runs
in its own process (no shared GIL) and counts the TCP connections it accepts.

- ``connection_reuse_rate``: requests from 50 concurrent tasks through the registry's
  shared async client (:func:`~rag_perf_plugins.pool.http.get_async_http_client`), next to a
  client per request (what ``enable_connection_pooling=False`` gives) in the same run.
  Reuse rate = ``1 - connections opened / requests``, both counted by the simulator: the
  share of requests that did not open a TCP connection. The seed's target is above 0.70;
  ours is at least 0.99. Throughput of both is reported too.
- ``pooled_http_requests_per_s_vs_aiohttp`` / ``pooled_http_aiohttp_backend_requests_per_s``:
  the shared ``httpx.AsyncClient`` with ``http_transport`` httpx and aiohttp, next to a bare
  ``aiohttp.ClientSession`` with the same connection limit in the same run;
  ``sdk_embeddings_per_s_aiohttp_vs_httpx``: ``openai.AsyncOpenAI`` on each backend.
- ``pool_acquire_release_us`` / ``async_pool_acquire_release_us``: one borrow and return
  of a TCP socket to the simulator through :class:`~rag_perf_plugins.pool.ConnectionPool`
  (and :class:`~rag_perf_plugins.pool.AsyncConnectionPool`), next to connecting and
  closing a socket per use. ``pool_overhead_us`` is the bare bookkeeping cost of one
  borrow and return of a trivial object, uncontended.
"""

from __future__ import annotations

import asyncio
import socket
import statistics
import time
from collections.abc import Awaitable, Callable, Iterator

import aiohttp
import httpx

from ...config import HttpTransport
from ...pool import AsyncConnectionPool, ConnectionPool, ConnectionPoolConfig
from ...pool.http import HttpClientRegistry
from ..registry import BenchContext, Result, Target, benchmark
from .concurrency import simulator_process

TASKS = 50


class _Control:
    """Reads and resets the simulator's counters, one new connection per call.

    A kept-alive control connection would expire during a long run and reopen uncounted
    by us; a new connection per call is exact: the reset's connection is zeroed with the
    counters, and the stats call's own connection is the one subtracted in :meth:`stats`.
    """

    def __init__(self, base_url: str) -> None:
        self._origin = base_url.removesuffix("/v1")

    def reset(self) -> None:
        httpx.post(self._origin + "/stats/reset", timeout=10.0).raise_for_status()

    def stats(self) -> dict[str, int]:
        response = httpx.get(self._origin + "/stats", timeout=10.0)
        response.raise_for_status()
        stats: dict[str, int] = response.json()
        stats["connections_opened"] -= 1  # this call's own connection
        return stats


async def _drive(
    get_client: Callable[[], httpx.AsyncClient], url: str, n: int, *, own: bool
) -> float:
    """``n`` GETs from ``TASKS`` tasks; returns the elapsed seconds."""
    counter = iter(range(n))

    async def worker() -> None:
        for _ in counter:
            client = get_client()
            try:
                (await client.get(url)).raise_for_status()
            finally:
                if own:
                    await client.aclose()

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(TASKS)))
    return time.perf_counter() - start


@benchmark("pool", "HTTP connection reuse: shared loop-safe client vs a client per request")
def connection_reuse(ctx: BenchContext) -> Iterator[Result]:
    """Reuse rate and throughput, with the client-per-call baseline in the same run."""
    requests = ctx.scale(10_000, quick=2_000)  # reuse can reach 1 - 20/2000 = 0.99
    # Quick: 60 (a new connection per request, ~6-9/s on a loaded box).
    baseline_requests = ctx.scale(500, quick=60)
    config = ctx.config.replace(enable_connection_pooling=True)
    unpooled = config.replace(enable_connection_pooling=False)
    with simulator_process() as base_url:
        url = base_url + "/models"
        registry = HttpClientRegistry()

        def shared() -> httpx.AsyncClient:
            return registry.get_async_client(base_url, config=config)

        def fresh() -> httpx.AsyncClient:
            return registry.get_async_client(base_url, config=unpooled)

        control = _Control(base_url)
        control.reset()
        ours_s = asyncio.run(_drive(shared, url, requests, own=False))
        ours = control.stats()
        # The client's own view: connections it saw opened, failed requests.
        (client_view,) = registry.stats().values()
        registry.close()
        control.reset()
        base_s = asyncio.run(_drive(fresh, url, baseline_requests, own=True))
        base = control.stats()

    def reuse(stats: dict[str, int]) -> float:
        total = stats["requests_total"]
        return 1.0 - stats["connections_opened"] / total if total else 0.0

    pool_size = config.connection_pool_size
    yield Result.compare(
        "connection_reuse_rate",
        reuse(ours),
        "ratio",
        baseline=("httpx.AsyncClient per request", reuse(base)),
        better="higher",
        target=Target.value_at_least(0.99),
        notes=(
            f"1 - opened/requests as counted by the simulator: {ours['requests_total']:,} "
            f"requests from {TASKS} tasks opened {ours['connections_opened']} connections "
            f"(connection_pool_size={pool_size}); seed target > 0.70"
        ),
        requests=ours["requests_total"],
        connections_opened=ours["connections_opened"],
        client_connections_opened=client_view.connections_opened,
        client_errors=client_view.errors,
        baseline_requests=base["requests_total"],
        baseline_connections_opened=base["connections_opened"],
    )
    yield Result.compare(
        "pooled_http_requests_per_s",
        requests / ours_s,
        "requests/s",
        baseline=("httpx.AsyncClient per request", baseline_requests / base_s),
        better="higher",
        notes=f"GET /v1/models from {TASKS} tasks, simulator in its own process",
    )


@benchmark(
    "pool", "HTTP requests per second: the shared client on httpx and on aiohttp vs bare aiohttp"
)
def http_backends(ctx: BenchContext) -> Iterator[Result]:
    """Requests/s from 50 tasks at pool size 20: ours on each backend, bare aiohttp, the SDK."""
    requests = ctx.scale(10_000, quick=1_000)  # quick: ~4 s in all on a loaded 2-core box
    sdk_requests = ctx.scale(3_000, quick=300)
    config = ctx.config.replace(enable_connection_pooling=True, connection_pool_size=20)
    with simulator_process() as base_url:
        url = base_url + "/models"
        control = _Control(base_url)

        async def bare() -> float:
            connector = aiohttp.TCPConnector(limit=config.connection_pool_size)
            async with aiohttp.ClientSession(connector=connector) as session:

                async def get() -> None:
                    async with session.get(url) as response:
                        response.raise_for_status()
                        await response.read()

                return await _per_second(get, requests)

        def ours(backend: HttpTransport) -> tuple[float, dict[str, int]]:
            registry = HttpClientRegistry()
            client = registry.get_async_client(
                base_url, config=config.replace(http_transport=backend)
            )

            async def get() -> None:
                (await client.get(url)).raise_for_status()

            control.reset()
            rate = asyncio.run(_per_second(get, requests))
            registry.close()
            return rate, control.stats()

        def sdk(backend: HttpTransport) -> float:
            import openai  # the SDK comes with the langchain and llama-index extras

            registry = HttpClientRegistry()
            http = registry.get_async_client(
                base_url, config=config.replace(http_transport=backend)
            )
            client = openai.AsyncOpenAI(
                base_url=base_url, api_key="sk-bench", http_client=http, max_retries=0
            )

            async def embed() -> None:
                await client.embeddings.create(model="text-embedding-3-small", input="pool")

            rate = asyncio.run(_per_second(embed, sdk_requests))
            registry.close()
            return rate

        bare_rps = asyncio.run(bare())
        httpx_rps, httpx_stats = ours("httpx")
        aiohttp_rps, aiohttp_stats = ours("aiohttp")
        sdk_httpx, sdk_aiohttp = sdk("httpx"), sdk("aiohttp")

    bare_name = f"bare aiohttp.ClientSession (limit={config.connection_pool_size})"
    for name, rate, stats, backend in (
        ("pooled_http_requests_per_s_vs_aiohttp", httpx_rps, httpx_stats, "httpx"),
        ("pooled_http_aiohttp_backend_requests_per_s", aiohttp_rps, aiohttp_stats, "aiohttp"),
    ):
        yield Result.compare(
            name,
            rate,
            "requests/s",
            baseline=(bare_name, bare_rps),
            better="higher",
            notes=(
                f"GET /v1/models from {TASKS} tasks through the shared httpx.AsyncClient, "
                f"http_transport={backend}; {stats['connections_opened']} connections for "
                f"{stats['requests_total']:,} requests"
            ),
            requests=stats["requests_total"],
            connections_opened=stats["connections_opened"],
        )
    yield Result.compare(
        "sdk_embeddings_per_s_aiohttp_vs_httpx",
        sdk_aiohttp,
        "requests/s",
        baseline=("the same AsyncOpenAI on http_transport=httpx", sdk_httpx),
        better="higher",
        target=Target.ratio_at_least(1.5),
        notes=f"openai.AsyncOpenAI embeddings.create from {TASKS} tasks, pool size 20",
    )


async def _per_second(call: Callable[[], Awaitable[None]], n: int) -> float:
    """``n`` calls of ``call`` from ``TASKS`` tasks; returns calls per second."""
    counter = iter(range(n))

    async def worker() -> None:
        for _ in counter:
            await call()

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(TASKS)))
    return n / (time.perf_counter() - start)


def _median_us(run: Callable[[], None], *, rounds: int, per_round: int) -> float:
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(per_round):
            run()
        samples.append((time.perf_counter() - start) / per_round * 1e6)
    return statistics.median(samples)


async def _amedian_us(run: Callable[[], object], *, rounds: int, per_round: int) -> float:
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(per_round):
            await run()  # type: ignore[misc]
        samples.append((time.perf_counter() - start) / per_round * 1e6)
    return statistics.median(samples)


@benchmark("pool", "generic pools: borrow and return vs connect per use")
def acquire_release(ctx: BenchContext) -> Iterator[Result]:
    """µs per borrow+return of a pooled TCP socket, next to connect+close per use."""
    rounds = ctx.scale(15, quick=5)
    per_round = ctx.scale(400, quick=100)
    config = ConnectionPoolConfig(max_connections=4)
    with simulator_process() as base_url:
        address = (httpx.URL(base_url).host, httpx.URL(base_url).port or 80)

        def connect() -> socket.socket:
            return socket.create_connection(address, timeout=10.0)

        pool = ConnectionPool(connect, config)

        def pooled() -> None:
            with pool.connection():
                pass

        def per_use() -> None:
            connect().close()

        pooled_us = _median_us(pooled, rounds=rounds, per_round=per_round)
        per_use_us = _median_us(per_use, rounds=rounds, per_round=per_round)
        pool.close()

        async def async_figures() -> tuple[float, float]:
            async def open_stream() -> asyncio.StreamWriter:
                _, writer = await asyncio.open_connection(*address)
                return writer

            async def close_stream(writer: asyncio.StreamWriter) -> None:
                writer.close()
                await writer.wait_closed()

            apool: AsyncConnectionPool[asyncio.StreamWriter] = AsyncConnectionPool(
                open_stream, config, close=close_stream
            )

            async def apooled() -> None:
                async with apool.connection():
                    pass

            async def aper_use() -> None:
                await close_stream(await open_stream())

            ours = await _amedian_us(apooled, rounds=rounds, per_round=per_round)
            theirs = await _amedian_us(aper_use, rounds=rounds, per_round=per_round)
            await apool.aclose()
            return ours, theirs

        apooled_us, aper_use_us = asyncio.run(async_figures())

    yield Result.compare(
        "pool_acquire_release_us",
        pooled_us,
        "µs/use",
        baseline=("socket connect + close per use", per_use_us),
        better="lower",
        target=Target.ratio_at_least(2.0),
        notes="ConnectionPool, `with pool.connection()`, TCP socket to the simulator",
    )
    yield Result.compare(
        "async_pool_acquire_release_us",
        apooled_us,
        "µs/use",
        baseline=("asyncio.open_connection + close per use", aper_use_us),
        better="lower",
        target=Target.ratio_at_least(2.0),
        notes="AsyncConnectionPool, `async with pool.connection()`, asyncio stream",
    )

    trivial = ConnectionPool(object, ConnectionPoolConfig(max_connections=4))

    def bare() -> None:
        trivial.return_connection(trivial.get_connection())

    bare_us = _median_us(bare, rounds=rounds, per_round=per_round * 10)
    trivial.close()

    async def abare_us() -> float:
        apool: AsyncConnectionPool[object] = AsyncConnectionPool(
            object, ConnectionPoolConfig(max_connections=4)
        )

        async def once() -> None:
            await apool.return_connection(await apool.get_connection())

        value = await _amedian_us(once, rounds=rounds, per_round=per_round * 10)
        await apool.aclose()
        return value

    yield Result.compare(
        "pool_overhead_us",
        bare_us,
        "µs/use",
        better="lower",
        notes="bookkeeping only: get_connection + return_connection of a trivial object",
        async_us=asyncio.run(abare_us()),
    )


__all__ = ["acquire_release", "connection_reuse"]
