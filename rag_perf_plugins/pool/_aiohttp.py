"""The aiohttp backend of the loop-routing transport (``http_transport: aiohttp``).

Example::

    config = PerformanceConfig(http_transport="aiohttp")   # pip install 'rag-perf-plugins[aiohttp]'
    client = get_async_http_client(url, config=config)     # still an httpx.AsyncClient
    ChatOpenAI(base_url=url, http_async_client=client, max_retries=0)

httpx's own async pool (httpcore over anyio) spends several times more CPU per request
than aiohttp under concurrency (``rag-perf bench --only pool`` measures both beside a
bare ``aiohttp.ClientSession``). This module keeps the ``httpx.AsyncClient`` interface that
the OpenAI SDK, LangChain and LlamaIndex take, and moves the wire work to one
``aiohttp.ClientSession`` per event loop through ``httpx_aiohttp.AiohttpTransport``, the
transport the OpenAI SDK's own ``DefaultAioHttpClient`` uses. Only this module imports
aiohttp (import-linter names it as the core's one exception), and only when the backend
is chosen: the core installs no aiohttp.

What stays the same as the httpx backend: at most ``connection_pool_size`` connections
per client and event loop, idle ones kept ``keepalive_expiry`` seconds (none kept without
pooling), ``connection_timeout`` seconds to get a connection, ``request_deadline`` seconds
per read, no environment proxies, and the same statistics (connections are counted when
aiohttp opens them). Requests wait for a free connection first come, first served (see
:meth:`AiohttpPool._acquire`: aiohttp's own limit is not fair), at most the ``pool``
timeout, then ``httpx.PoolTimeout``. Differences: aiohttp
re-sends an *idempotent* request (GET, HEAD, ...) once when a kept-alive connection turns
out closed by the server; POST requests, which every provider call is, are never re-sent.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport

__all__ = ["AiohttpPool"]


class AiohttpPool(AiohttpTransport):
    """One event loop's ``aiohttp.ClientSession``, as an ``httpx`` async transport.

    Example: ``pool = AiohttpPool(limits=httpx.Limits(max_connections=20), opened=counter)``
    inside a running loop, then ``await pool.handle_async_request(request)``.

    Args:
        limits: ``max_connections`` (connections at once; ``None``: no limit),
            ``max_keepalive_connections`` (0: a new connection per request) and
            ``keepalive_expiry`` (seconds an idle connection is kept).
        opened: Called once for every TCP connection aiohttp opens.
        proxy: Proxy URL for every request, or ``None``.
        verify: TLS verification, as for ``httpx.AsyncHTTPTransport``.

    Must be made inside the event loop that will use it (the session belongs to it).
    """

    def __init__(
        self,
        *,
        limits: httpx.Limits,
        opened: Callable[[], None],
        proxy: str | None = None,
        verify: bool = True,
    ) -> None:
        keep_alive = limits.max_keepalive_connections != 0
        connection_options: dict[str, Any] = (
            {"keepalive_timeout": limits.keepalive_expiry} if keep_alive else {"force_close": True}
        )
        self._limit = limits.max_connections or 0
        self._slots = _FifoSlots(self._limit) if self._limit else None
        self._connector = aiohttp.TCPConnector(
            limit=self._limit,
            limit_per_host=0,
            ssl=httpx.create_ssl_context(verify=verify, trust_env=False),
            **connection_options,
        )

        async def count(*_: object) -> None:
            opened()

        trace = aiohttp.TraceConfig()
        trace.on_connection_create_end.append(count)
        session = aiohttp.ClientSession(
            connector=self._connector, trace_configs=[trace], trust_env=False
        )
        super().__init__(
            limits=limits,
            verify=verify,
            trust_env=False,
            proxy=None if proxy is None else httpx.Proxy(proxy),
            client=session,
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` on this loop's session, after a free slot in arrival order.

        Raises:
            httpx.PoolTimeout: no slot became free within the request's ``pool`` timeout.
            httpx.TransportError: the class httpx's own transport raises for the same
                failure (see :func:`_as_httpx`).
        """
        release = await self._acquire(request)
        try:
            response = await super().handle_async_request(request)
        except httpx.TransportError as exc:
            release()
            raise _as_httpx(exc, request) from exc.__cause__
        except BaseException:
            release()
            raise
        assert isinstance(response.stream, httpx.AsyncByteStream)
        response.stream = _MappedStream(response.stream, request, release)
        return response

    async def _acquire(self, request: httpx.Request) -> Callable[[], None]:
        """A request slot, held until the response body is closed; returns its release.

        aiohttp's own connection limit is not first come, first served: a task that has
        just released a connection takes it again before the waiter it woke, and under
        sustained load one request can wait past any timeout (seen: 30 s at pool size 10
        with 50 tasks). The slots hand a freed connection to the longest waiter, as
        httpcore's pool does, so aiohttp's limit never makes anyone wait.
        """
        slots = self._slots
        if slots is None:
            return _nothing
        timeout = request.extensions.get("timeout", {}).get("pool")
        try:
            await slots.acquire(timeout)
        except TimeoutError:
            msg = f"no connection free within the pool timeout ({timeout} s)"
            raise httpx.PoolTimeout(msg, request=request) from None
        return slots.release

    def counts(self) -> tuple[int, int]:
        """``(active, idle)`` connections of this loop's session.

        Reads aiohttp's connector state (``_acquired``, ``_conns``: no public API has it);
        tests/core/pool/test_aiohttp_transport.py fails if aiohttp renames them.
        """
        connector = self._connector
        idle = sum(len(conns) for conns in connector._conns.values())
        return len(connector._acquired), idle


class _MappedStream(httpx.AsyncByteStream):
    """A response body whose read errors carry httpx's classes; frees its slot when closed."""

    __slots__ = ("_inner", "_release", "_request")

    def __init__(
        self, inner: httpx.AsyncByteStream, request: httpx.Request, release: Callable[[], None]
    ) -> None:
        self._inner = inner
        self._request = request
        self._release: Callable[[], None] | None = release

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._inner:
                yield chunk
        except httpx.TransportError as exc:
            raise _as_httpx(exc, self._request) from exc.__cause__

    async def aclose(self) -> None:
        try:
            await self._inner.aclose()
        finally:
            release, self._release = self._release, None
            if release is not None:  # a second close frees nothing more
                release()


class _FifoSlots:
    """``n`` slots handed out first come, first served (one event loop).

    Example: ``await slots.acquire(timeout=5.0)`` ... ``slots.release()``. A released slot
    goes straight to the longest waiter, so a newcomer never overtakes it.
    """

    __slots__ = ("_free", "_waiters")

    def __init__(self, n: int) -> None:
        self._free = n
        self._waiters: deque[asyncio.Future[None]] = deque()

    async def acquire(self, timeout: float | None) -> None:
        """Take a slot, waiting at most ``timeout`` seconds (``None``: no limit).

        Raises:
            TimeoutError: none was handed over in time.
        """
        if self._free and not self._waiters:
            self._free -= 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await asyncio.wait_for(waiter, timeout)
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.release()  # handed over just as we gave up: pass it on
            else:
                waiter.cancel()
            raise

    def release(self) -> None:
        """Give the slot to the longest waiter, or back to the free ones."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._free += 1


def _nothing() -> None:
    return None


def _as_httpx(exc: httpx.TransportError, request: httpx.Request) -> httpx.TransportError:
    """The error httpx's own transport raises for the aiohttp failure behind ``exc``.

    httpx_aiohttp maps by class order, which turns a refused connection and a server that
    closes without answering into ``ConnectTimeout`` (the OpenAI SDK then says "timed
    out"), and a cut-off body into ``ReadError``. Callers (our retry policy, the SDK's
    error classes) see the same failure as on the httpx backend::

        refused or unreachable        -> ConnectError
        closed before/while answering -> RemoteProtocolError
        connecting took too long      -> ConnectTimeout
    """
    cause = exc.__cause__
    kind: type[httpx.TransportError] | None = None
    if isinstance(cause, aiohttp.ConnectionTimeoutError):
        kind = httpx.ConnectTimeout
    elif isinstance(cause, (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError)):
        kind = httpx.RemoteProtocolError
    elif isinstance(cause, aiohttp.ClientProxyConnectionError):
        kind = httpx.ProxyError
    elif isinstance(cause, aiohttp.ClientConnectorError):
        kind = httpx.ConnectError
    if kind is None or type(exc) is kind:
        return exc
    return kind(str(exc), request=request)
