"""Shared ``httpx2`` clients, for SDKs built on httpx2 rather than httpx (the Anthropic SDK).

Example::

    from rag_perf_plugins.pool._httpx2 import get_async_httpx2_client, get_httpx2_client

    client = anthropic.Anthropic(base_url=url, max_retries=0,
                                 http_client=get_httpx2_client(url, config=config))
    aclient = anthropic.AsyncAnthropic(base_url=url, max_retries=0,
                                       http_client=get_async_httpx2_client(url, config=config))

The Anthropic SDK (2.x) takes only ``httpx2`` clients, so the registry's ``httpx`` clients
(:mod:`rag_perf_plugins.pool.http`) cannot serve it. These are its counterparts with the
same settings: one client per origin and pool settings for the whole process, at most
``connection_pool_size`` connections, ``keepalive_expiry`` seconds of keep-alive,
``connection_timeout`` seconds to connect or wait for a connection, ``request_deadline``
seconds to read and write. The async client routes each request to a transport owned by
the running event loop (:class:`rag_perf_plugins._loops.PerLoop`), closed when that loop
shuts down, so a model that keeps one SDK client works across ``asyncio.run()`` calls.

Imported only by the adapters' Anthropic factories (it needs ``httpx2``, which the
Anthropic SDK brings); not by ``import rag_perf_plugins``. Not done: the registry's
statistics and the aiohttp backend (``http_transport``) for these clients.
"""

from __future__ import annotations

import threading
from typing import Any
from urllib.parse import urlsplit

import httpx2

from .._loops import PerLoop
from ..config import PerformanceConfig, resolve_config

__all__ = ["get_async_httpx2_client", "get_httpx2_client"]


def _origin(base_url: str) -> str:
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        msg = f"base_url must be an absolute http(s) URL, got {base_url!r}"
        raise ValueError(msg)
    return f"{parts.scheme}://{parts.netloc}"


def _settings(config: PerformanceConfig) -> tuple[Any, ...]:
    return (
        config.connection_pool_size,
        config.keepalive_expiry,
        config.connection_timeout,
        config.request_deadline,
    )


def _limits(config: PerformanceConfig) -> httpx2.Limits:
    return httpx2.Limits(
        max_connections=config.connection_pool_size,
        max_keepalive_connections=config.connection_pool_size,
        keepalive_expiry=config.keepalive_expiry,
    )


def _timeout(config: PerformanceConfig) -> httpx2.Timeout:
    return httpx2.Timeout(
        config.request_deadline, connect=config.connection_timeout, pool=config.connection_timeout
    )


class _LoopRoutingTransport(httpx2.AsyncBaseTransport):
    """Sends each request through the running loop's own ``AsyncHTTPTransport``."""

    def __init__(self, config: PerformanceConfig) -> None:
        limits = _limits(config)
        self._transports: PerLoop[httpx2.AsyncHTTPTransport] = PerLoop(
            make=lambda: httpx2.AsyncHTTPTransport(limits=limits),
            close=lambda transport: transport.aclose(),
        )

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        transport = await self._transports.get()
        return await transport.handle_async_request(request)

    async def aclose(self) -> None:
        # Shared by every model of the process: each loop's transport closes with its loop.
        return None


_LOCK = threading.Lock()
_SYNC: dict[tuple[Any, ...], httpx2.Client] = {}
_ASYNC: dict[tuple[Any, ...], httpx2.AsyncClient] = {}


def get_httpx2_client(base_url: str, *, config: PerformanceConfig | None = None) -> httpx2.Client:
    """The process-wide ``httpx2.Client`` for ``base_url``'s origin and ``config``'s pool.

    Raises:
        ValueError: ``base_url`` is not an absolute http(s) URL.
    """
    config = resolve_config(config)
    key = (_origin(base_url), *_settings(config))
    with _LOCK:
        client = _SYNC.get(key)
        if client is None or client.is_closed:
            client = _SYNC[key] = httpx2.Client(limits=_limits(config), timeout=_timeout(config))
        return client


def get_async_httpx2_client(
    base_url: str, *, config: PerformanceConfig | None = None
) -> httpx2.AsyncClient:
    """The process-wide, loop-safe ``httpx2.AsyncClient`` for ``base_url``'s origin.

    Raises:
        ValueError: ``base_url`` is not an absolute http(s) URL.
    """
    config = resolve_config(config)
    key = (_origin(base_url), *_settings(config))
    with _LOCK:
        client = _ASYNC.get(key)
        if client is None or client.is_closed:
            client = _ASYNC[key] = httpx2.AsyncClient(
                transport=_LoopRoutingTransport(config), timeout=_timeout(config)
            )
        return client
