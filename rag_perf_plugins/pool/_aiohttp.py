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
aiohttp opens them). Differences: waiting for a free connection and connecting share one
timeout in aiohttp (a timeout while every connection is busy is raised and counted as
``httpx.PoolTimeout``, other connect timeouts as ``httpx.ConnectTimeout``); aiohttp
re-sends an *idempotent* request (GET, HEAD, ...) once when a kept-alive connection turns
out closed by the server; POST requests, which every provider call is, are never re-sent.
"""

from __future__ import annotations

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
        """Send ``request`` on this loop's session.

        Raises:
            httpx.TransportError: the class httpx's own transport raises for the same
                failure (see :func:`_as_httpx`).
        """
        all_busy = bool(self._limit) and len(self._connector._acquired) >= self._limit
        try:
            response = await super().handle_async_request(request)
        except httpx.TransportError as exc:
            raise _as_httpx(exc, request, all_busy=all_busy) from exc.__cause__
        assert isinstance(response.stream, httpx.AsyncByteStream)
        response.stream = _MappedStream(response.stream, request)
        return response

    def counts(self) -> tuple[int, int]:
        """``(active, idle)`` connections of this loop's session.

        Reads aiohttp's connector state (``_acquired``, ``_conns``: no public API has it);
        tests/core/pool/test_aiohttp_transport.py fails if aiohttp renames them.
        """
        connector = self._connector
        idle = sum(len(conns) for conns in connector._conns.values())
        return len(connector._acquired), idle


class _MappedStream(httpx.AsyncByteStream):
    """A response body whose read errors carry httpx's own classes."""

    __slots__ = ("_inner", "_request")

    def __init__(self, inner: httpx.AsyncByteStream, request: httpx.Request) -> None:
        self._inner = inner
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._inner:
                yield chunk
        except httpx.TransportError as exc:
            raise _as_httpx(exc, self._request, all_busy=False) from exc.__cause__

    async def aclose(self) -> None:
        await self._inner.aclose()


def _as_httpx(
    exc: httpx.TransportError, request: httpx.Request, *, all_busy: bool
) -> httpx.TransportError:
    """The error httpx's own transport raises for the aiohttp failure behind ``exc``.

    httpx_aiohttp maps by class order, which turns a refused connection and a server that
    closes without answering into ``ConnectTimeout`` (the OpenAI SDK then says "timed
    out"), and a cut-off body into ``ReadError``. Callers (our retry policy, the SDK's
    error classes) see the same failure as on the httpx backend::

        refused or unreachable        -> ConnectError
        closed before/while answering -> RemoteProtocolError
        no free connection in time    -> PoolTimeout (every connection busy), else ConnectTimeout
    """
    cause = exc.__cause__
    kind: type[httpx.TransportError] | None = None
    if isinstance(cause, aiohttp.ConnectionTimeoutError):
        kind = httpx.PoolTimeout if all_busy else httpx.ConnectTimeout
    elif isinstance(cause, (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError)):
        kind = httpx.RemoteProtocolError
    elif isinstance(cause, aiohttp.ClientProxyConnectionError):
        kind = httpx.ProxyError
    elif isinstance(cause, aiohttp.ClientConnectorError):
        kind = httpx.ConnectError
    if kind is None or type(exc) is kind:
        return exc
    return kind(str(exc), request=request)
