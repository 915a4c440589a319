"""Shared, pooled httpx clients per origin, safe across event loops, with real pool stats.

Framework classes (LangChain ``ChatOpenAI``, LlamaIndex ``OpenAI``) build their SDK client
once and keep it. If that client's connections belong to the event loop of the first
``asyncio.run()``, the second run fails with "Event loop is closed", and the SDK may then
silently re-send the request. The async clients here route every request to a connection
pool owned by the *running* loop (:class:`LoopRoutingTransport`), and close a loop's pool
while that loop shuts down::

    from rag_perf_plugins.pool.http import async_openai_client, get_async_http_client

    client = get_async_http_client("http://127.0.0.1:8000/v1")     # one per origin
    llm = ChatOpenAI(base_url=url, http_async_client=client, max_retries=0)
    asyncio.run(llm.ainvoke("hi"))
    asyncio.run(llm.ainvoke("hi again"))       # a new loop: a new pool, no error

    sdk = async_openai_client(base_url=url, api_key="...")   # openai.AsyncOpenAI on it
    http_pool_stats()      # {"async http://127.0.0.1:8000": HttpPoolStats(...), ...}

Limits come from :class:`~rag_perf_plugins.config.PerformanceConfig`: at most
``connection_pool_size`` connections per client *and event loop*, idle ones kept for
``keepalive_expiry`` seconds, ``connection_timeout`` seconds to connect and to wait for a
free connection, ``request_deadline`` seconds for the rest of a request. With
``enable_connection_pooling=False`` every ``get_*`` call returns a fresh, unshared client
without keep-alive (the baseline: one connection per request), which the caller closes.

What the adapters pass to the SDK clients: LangChain ``ChatOpenAI``/``OpenAIEmbeddings``
take ``http_client=get_http_client(url)``, ``http_async_client=get_async_http_client(url)``
and ``max_retries=0``; LlamaIndex ``OpenAI``/``OpenAIEmbedding`` take ``http_client=`` and
``async_http_client=`` and ``max_retries=0``. Retries stay off in the SDK because our
retry policy is the single retry owner (SDK retries multiply 429 storms).

Shared clients belong to the registry: their ``close()``/``aclose()`` (also called by
``OpenAI.close()`` and ``async with AsyncOpenAI(...)``) do nothing, so one user cannot
close a client that others hold. :func:`close_http_clients` / :func:`aclose_http_clients`
close them for real.

Limitations: a loop closed *without* ``shutdown_asyncgens()`` (``asyncio.run``,
``asyncio.Runner`` and pytest-asyncio all call it; a bare ``loop.close()`` does not) has
its pool dropped on the next request from another loop, unclosed, and its sockets are
left to the garbage collector. Proxies come only from ``proxy=``; environment proxy
variables are not read (``trust_env=False``), so every request goes through the counted
pools. HTTP/2 is not enabled.
"""

from __future__ import annotations

import atexit
import contextlib
import contextvars
import logging
import threading
import weakref
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import httpx

from .._loops import PerLoop
from .._secrets import redact_url
from ..config import HttpTransport, PerformanceConfig, resolve_config

if TYPE_CHECKING:  # openai and aiohttp are not core dependencies: imported lazily
    import openai

    from ._aiohttp import AiohttpPool

__all__ = [
    "HttpClientRegistry",
    "HttpPoolStats",
    "LoopRoutingTransport",
    "aclose_http_clients",
    "async_openai_client",
    "close_http_clients",
    "get_async_http_client",
    "get_http_client",
    "http_limits",
    "http_pool_stats",
    "http_timeout",
    "listen",
    "openai_client",
    "response_listener",
    "unlisten",
]


# --- a listener for successful answers -------------------------------------------------
SyncListener = Callable[[int, Mapping[str, str]], None]
AsyncListener = Callable[[int, Mapping[str, str]], Awaitable[None]]
Listeners = tuple[SyncListener | None, AsyncListener | None]
_listener: contextvars.ContextVar[Listeners | None] = contextvars.ContextVar(
    "rag_perf_response_listener", default=None
)


def response_listener(
    sync: SyncListener | None, async_: AsyncListener | None = None
) -> contextlib.AbstractContextManager[None]:
    """Show the status and headers of successful answers to a listener, in this context.

    Example (what the services do around a provider call, with an admission gate)::

        with response_listener(gate.observe_response, gate.aobserve_response):
            llm.invoke("hi")        # its rate-limit headers pause or cap the gate

    Every answer with a status below 400 that a shared client of this module (pooled or
    not, sync or async, both async backends) receives while the block runs, in this
    thread or task, calls ``sync(status, headers)`` (sync clients) or
    ``await async_(status, headers)`` (async clients; ``sync`` when ``async_`` is
    ``None``). A stream's headers arrive when it is opened, so keep the block open while
    its first chunk is read. Failed answers (400 and above) are not shown: the retry
    policy observes those. SDK clients on other httpx clients are not seen. An error the
    listener raises is logged and dropped; the answer is returned as usual.
    """
    return _Listening((sync, async_))


def listen(listeners: Listeners) -> contextvars.Token[Listeners | None]:
    """:func:`response_listener`'s block without a block object: until :func:`unlisten`.

    Example (the hot path of a provider call through a gate, built once per service)::

        listeners = (gate.observe_response, gate.aobserve_response)
        token = listen(listeners)
        try:
            vectors = embed(texts)
        finally:
            unlisten(token)

    The same effect as ``with response_listener(*listeners):``, about a microsecond
    cheaper per call: no object is made.
    """
    return _listener.set(listeners)


def unlisten(token: contextvars.Token[Listeners | None]) -> None:
    """End what :func:`listen` began: restore the listeners it replaced (same context)."""
    _listener.reset(token)


class _Listening:
    """The block of :func:`response_listener`: sets the listeners, and restores them after.

    A class, not a generator context manager: every provider call through a gate opens
    one, and this costs about a microsecond less. One block may be opened again, even
    inside itself: each exit restores what its own enter replaced (a stack of tokens).
    """

    __slots__ = ("_listeners", "_tokens")

    def __init__(self, listeners: Listeners) -> None:
        self._listeners = listeners
        self._tokens: list[contextvars.Token[Any]] = []

    def __enter__(self) -> None:
        self._tokens.append(_listener.set(self._listeners))

    def __exit__(self, *exc_info: object) -> None:
        if self._tokens:
            _listener.reset(self._tokens.pop())


def _notify(response: httpx.Response) -> None:
    listener = _listener.get()
    if listener is None or response.status_code >= 400 or listener[0] is None:
        return
    try:
        listener[0](response.status_code, response.headers)
    except Exception:
        logging.getLogger(__name__).warning("response listener failed", exc_info=True)


async def _anotify(response: httpx.Response) -> None:
    listener = _listener.get()
    if listener is None or response.status_code >= 400:
        return
    sync, async_ = listener
    try:
        if async_ is not None:
            await async_(response.status_code, response.headers)
        elif sync is not None:
            sync(response.status_code, response.headers)
    except Exception:
        logging.getLogger(__name__).warning("response listener failed", exc_info=True)


# --- settings from the config --------------------------------------------------------
def http_limits(config: PerformanceConfig) -> httpx.Limits:
    """``httpx.Limits`` for one pool: ``connection_pool_size`` and ``keepalive_expiry``.

    Example: ``http_limits(PerformanceConfig(connection_pool_size=5)).max_connections == 5``.
    Without pooling (``enable_connection_pooling=False``) no connection is kept alive.
    """
    size = config.connection_pool_size
    keep = size if config.enable_connection_pooling else 0
    return httpx.Limits(
        max_connections=size,
        max_keepalive_connections=keep,
        keepalive_expiry=config.keepalive_expiry,
    )


def http_timeout(config: PerformanceConfig) -> httpx.Timeout:
    """``httpx.Timeout`` from the config, in seconds.

    ``connection_timeout`` to connect and to wait for a pooled connection;
    ``request_deadline`` (``None``: no limit) to read and to write.

    Example: ``http_timeout(PerformanceConfig(connection_timeout=5.0)).connect == 5.0``.
    """
    return httpx.Timeout(
        config.request_deadline,
        connect=config.connection_timeout,
        pool=config.connection_timeout,
    )


def _origin(base_url: str) -> str:
    url = httpx.URL(base_url)
    if url.scheme not in ("http", "https") or not url.host:
        msg = f"base_url must be an absolute http(s) URL, got {redact_url(base_url)!r}"
        raise ValueError(msg)
    port = url.port or (443 if url.scheme == "https" else 80)
    return f"{url.scheme}://{url.host}:{port}"


# --- statistics ----------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class HttpPoolStats:
    """A snapshot of one shared client's connection pools (all its event loops together).

    Attributes:
        requests: Requests that got a response (status line and headers).
        connections_opened: TCP connections opened, counted from the network streams
            httpcore hands back with each response.
        reuse_ratio: ``1 - connections_opened / requests`` (0.0 before any request): the
            share of requests that did not open a connection. The seed's
            "connection reuse rate" target (> 70 %) is on this number.
        active: Connections carrying a request right now.
        idle: Connections kept alive, waiting for a request.
        pool_timeouts: Requests that gave up waiting for a free connection
            (``httpx.PoolTimeout``).
        errors: Requests that failed with any other transport error.
        loops: Event loops with a live pool (always 1 for a sync client).
    """

    requests: int
    connections_opened: int
    reuse_ratio: float
    active: int
    idle: int
    pool_timeouts: int
    errors: int
    loops: int

    def as_dict(self) -> dict[str, Any]:
        """The snapshot as a plain dict."""
        return {name: getattr(self, name) for name in self.__slots__}


class _Meter:
    """Counters shared by every pool of one client. Increments come from many threads."""

    __slots__ = ("_lock", "_streams", "errors", "opened", "pool_timeouts", "requests")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # One network stream per TCP connection: a stream not seen before is a new one.
        self._streams: weakref.WeakSet[object] = weakref.WeakSet()
        self.requests = self.opened = self.pool_timeouts = self.errors = 0

    def served(self, response: httpx.Response) -> None:
        stream = response.extensions.get("network_stream")
        with self._lock:
            self.requests += 1
            if stream is not None and stream not in self._streams:
                self._streams.add(stream)
                self.opened += 1

    def count_opened(self) -> None:
        """One TCP connection opened (the aiohttp backend reports them as they open)."""
        with self._lock:
            self.opened += 1

    def failed(self, exc: BaseException) -> None:
        with self._lock:
            if isinstance(exc, httpx.PoolTimeout):
                self.pool_timeouts += 1
            else:
                self.errors += 1

    def snapshot(self, pools: list[tuple[int, int]]) -> HttpPoolStats:
        """Counters plus ``(active, idle)`` connections of each event loop's pool."""
        active = sum(counts[0] for counts in pools)
        idle = sum(counts[1] for counts in pools)
        with self._lock:
            requests, opened = self.requests, self.opened
            return HttpPoolStats(
                requests=requests,
                connections_opened=opened,
                reuse_ratio=max(0.0, 1.0 - opened / requests) if requests else 0.0,
                active=active,
                idle=idle,
                pool_timeouts=self.pool_timeouts,
                errors=self.errors,
                loops=len(pools),
            )


def _httpcore_pool(transport: httpx.HTTPTransport | httpx.AsyncHTTPTransport) -> Any:
    # httpx keeps its httpcore pool in `_pool`; `connections` on it is public httpcore
    # API. tests/core/pool/test_http_registry.py fails if httpx renames the attribute.
    return transport._pool


def _counts(transport: Any) -> tuple[int, int]:
    """``(active, idle)`` connections of one pool, httpx (httpcore) or aiohttp."""
    if not isinstance(transport, (httpx.HTTPTransport, httpx.AsyncHTTPTransport)):
        counts: tuple[int, int] = transport.counts()  # the aiohttp backend's AiohttpPool
        return counts
    active = idle = 0
    for conn in _httpcore_pool(transport).connections:
        if conn.is_closed():
            continue
        if conn.is_idle():
            idle += 1
        else:
            active += 1
    return active, idle


# --- the sync transport --------------------------------------------------------------
class _GatedStream(httpx.SyncByteStream):
    """A response body that frees its request slot when closed (once)."""

    __slots__ = ("_inner", "_release")

    def __init__(self, inner: httpx.SyncByteStream, release: Callable[[], None]) -> None:
        self._inner = inner
        self._release: Callable[[], None] | None = release

    def __iter__(self) -> Iterator[bytes]:
        yield from self._inner

    def close(self) -> None:
        try:
            self._inner.close()
        finally:
            release, self._release = self._release, None
            if release is not None:
                release()


class _CountingTransport(httpx.BaseTransport):
    """``httpx.HTTPTransport`` plus the meter; at most ``max_connections`` requests inside.

    Why the gate: httpcore 1.0.9's sync pool, shared by more threads than connections,
    can close a connection it has already handed to a queued request (encode/httpcore
    #1110); 16 threads on 4 connections saw ``ReadError: [Errno 9] Bad file descriptor``
    on about 2 % of requests here. Queueing in front of httpcore, with a slot held until
    the response body is closed, means httpcore never queues, and the race cannot occur.
    The wait is bounded by the request's ``pool`` timeout, as httpcore's own would be.
    """

    def __init__(self, meter: _Meter, *, limits: httpx.Limits, **options: Any) -> None:
        self._meter = meter
        self._inner = httpx.HTTPTransport(limits=limits, **options)
        slots = limits.max_connections
        self._slots = threading.BoundedSemaphore(slots) if slots else None

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        release = self._acquire(request)
        try:
            response = self._inner.handle_request(request)
        except httpx.TransportError as exc:
            release()
            self._meter.failed(exc)
            raise
        except BaseException:
            release()
            raise
        self._meter.served(response)
        assert isinstance(response.stream, httpx.SyncByteStream)
        response.stream = _GatedStream(response.stream, release)
        return response

    def close(self) -> None:
        self._inner.close()

    def stats(self) -> HttpPoolStats:
        return self._meter.snapshot([_counts(self._inner)])

    def _acquire(self, request: httpx.Request) -> Callable[[], None]:
        slots = self._slots
        if slots is None:
            return lambda: None
        timeout = request.extensions.get("timeout", {}).get("pool")
        if not slots.acquire(timeout=timeout):
            exc = httpx.PoolTimeout(f"no connection free within the pool timeout ({timeout} s)")
            self._meter.failed(exc)
            raise exc
        return slots.release


# --- the async, loop-routing transport -----------------------------------------------
class LoopRoutingTransport(httpx.AsyncBaseTransport):
    """An async transport that sends each request through the running loop's own pool.

    Each event loop that uses it gets its own ``httpx.AsyncHTTPTransport`` (its own
    httpcore pool, at most ``limits.max_connections`` connections). A loop's pool is
    closed while the loop shuts down: at first use we start a tiny async generator on
    that loop, and ``loop.shutdown_asyncgens()`` (run by ``asyncio.run`` before it closes
    the loop) finalises it, which closes the pool's connections on their own loop::

        transport = LoopRoutingTransport(limits=httpx.Limits(max_connections=20))
        client = httpx.AsyncClient(transport=transport)
        asyncio.run(client.get(url))        # pool 1, closed when this run ends
        asyncio.run(client.get(url))        # pool 2
        transport.stats().connections_opened      # 2

    Args:
        limits: Connection limits of each loop's pool.
        proxy: Proxy URL for every request, or ``None``.
        verify: TLS verification, as for ``httpx.AsyncHTTPTransport``.
        backend: ``"httpx"`` (httpcore pools) or ``"aiohttp"`` (one ``aiohttp.ClientSession``
            per loop, the ``aiohttp`` extra: see :mod:`rag_perf_plugins.pool._aiohttp`).

    Raises:
        ValueError: ``backend`` is neither ``"httpx"`` nor ``"aiohttp"``.
        ImportError: ``backend="aiohttp"`` without the ``aiohttp`` extra installed.

    Not done: moving connections between loops (impossible: a socket's transport
    belongs to one loop); retries (``retries=0``: a failed request is never re-sent).
    """

    def __init__(
        self,
        *,
        limits: httpx.Limits,
        proxy: str | None = None,
        verify: bool = True,
        backend: HttpTransport = "httpx",
    ) -> None:
        self._options: dict[str, Any] = {
            "limits": limits,
            "proxy": proxy,
            "verify": verify,
            "trust_env": False,
            "retries": 0,
        }
        if backend not in ("httpx", "aiohttp"):
            msg = f"backend={backend!r}: allowed: 'httpx', 'aiohttp' (the http_transport key)"
            raise ValueError(msg)
        self._meter = _Meter()
        self.backend = backend
        make: Callable[[], httpx.AsyncBaseTransport]
        if backend == "aiohttp":
            pool_class = _aiohttp_pool_class()
            meter = self._meter

            def make() -> httpx.AsyncBaseTransport:
                return pool_class(
                    limits=limits, opened=meter.count_opened, proxy=proxy, verify=verify
                )
        else:

            def make() -> httpx.AsyncBaseTransport:
                return httpx.AsyncHTTPTransport(**self._options)

        # One pool per event loop, closed while that loop shuts down.
        self._pools: PerLoop[httpx.AsyncBaseTransport] = PerLoop(make, _close_transport)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` through the running loop's pool."""
        pool = self._pools.current()
        if pool is None:
            pool = await self._pools.open()
        try:
            response = await pool.handle_async_request(request)
        except httpx.TransportError as exc:
            self._meter.failed(exc)
            raise
        self._meter.served(response)
        return response

    async def aclose(self) -> None:
        """Close the running loop's pool now; other loops' pools close with their loops.

        A pool of a loop running in another thread is closed on that loop; one of a loop
        that is already closed is dropped.
        """
        await self._pools.aclose()

    def close_from_sync(self, timeout: float = 5.0) -> None:
        """Close every loop's pool from code with no running loop (e.g. at exit).

        Pools of loops running in other threads are closed on those loops (waiting up to
        ``timeout`` seconds each); pools of closed loops are dropped. A pool of a loop
        that is neither running nor closed is closed when that loop shuts down.
        """
        self._pools.close_from_sync(timeout)

    def stats(self) -> HttpPoolStats:
        """Requests, connections opened, reuse ratio, active/idle connections, timeouts."""
        return self._meter.snapshot([_counts(t) for t in self._pools.resources()])

    def __repr__(self) -> str:
        stats = self.stats()
        return (
            f"<LoopRoutingTransport [loops: {stats.loops}, active: {stats.active}, "
            f"idle: {stats.idle} | requests: {stats.requests}, "
            f"opened: {stats.connections_opened}]>"
        )


async def _close_transport(transport: httpx.AsyncBaseTransport) -> None:
    await transport.aclose()


def _aiohttp_pool_class() -> type[AiohttpPool]:
    """The aiohttp backend's pool class, imported only when that backend is chosen."""
    try:
        from ._aiohttp import AiohttpPool
    except ImportError as exc:
        msg = (
            "http_transport='aiohttp' needs aiohttp and httpx-aiohttp: "
            "pip install 'rag-perf-plugins[aiohttp]' (or set http_transport='httpx')"
        )
        raise ImportError(msg) from exc
    return AiohttpPool


# --- shared clients ------------------------------------------------------------------
class _SharedClient(httpx.Client):
    """A registry-owned client: ``close()`` and ``with`` leave it open for other users."""

    def close(self) -> None:
        """Does nothing: the registry closes shared clients (``close_http_clients()``)."""

    def __enter__(self) -> _SharedClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        return None

    def _close_for_real(self) -> None:
        super().close()


class _SharedAsyncClient(httpx.AsyncClient):
    """A registry-owned async client: ``aclose()`` and ``async with`` leave it open."""

    async def aclose(self) -> None:
        """Does nothing: the registry closes shared clients (``aclose_http_clients()``)."""

    async def __aenter__(self) -> _SharedAsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        return None

    async def _aclose_for_real(self) -> None:
        await super().aclose()


# (kind, origin, proxy, (max connections, keep-alive connections, expiry), timeouts)
Key = tuple[str, str, str | None, tuple[int | None, int | None, float | None], str]
E = TypeVar("E")


class HttpClientRegistry:
    """Shared httpx clients, one per (sync or async, origin, proxy, limits, timeouts).

    Most code uses the process-wide registry through :func:`get_http_client` and
    :func:`get_async_http_client`; a registry of your own keeps clients apart (tests)::

        registry = HttpClientRegistry()
        client = registry.get_async_client("http://127.0.0.1:8000/v1")
        assert registry.get_async_client("http://127.0.0.1:8000/v2") is client  # same origin
        registry.stats()           # {"async http://127.0.0.1:8000": HttpPoolStats(...)}
        await registry.aclose()

    Thread-safe. Clients are created lazily, never evicted, and closed by
    :meth:`close` / :meth:`aclose`.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sync: dict[Key, tuple[_SharedClient, _CountingTransport]] = {}
        self._async: dict[Key, tuple[_SharedAsyncClient, LoopRoutingTransport]] = {}

    def get_client(
        self, base_url: str, *, config: PerformanceConfig | None = None, proxy: str | None = None
    ) -> httpx.Client:
        """The shared ``httpx.Client`` for ``base_url``'s origin (fresh without pooling).

        Raises:
            ValueError: ``base_url`` is not an absolute http(s) URL.
        """
        config, key = self._pooled("sync", base_url, config, proxy)
        if key is None:
            return httpx.Client(**_unpooled(config, proxy), event_hooks=_SYNC_HOOKS)
        return self._entry(self._sync, key, lambda: _new_sync_entry(config, proxy))[0]

    def get_async_client(
        self, base_url: str, *, config: PerformanceConfig | None = None, proxy: str | None = None
    ) -> httpx.AsyncClient:
        """The shared, loop-safe ``httpx.AsyncClient`` for ``base_url``'s origin.

        Without pooling: a fresh ``httpx.AsyncClient`` (no keep-alive) that the caller
        must close. ``http_transport: aiohttp`` puts aiohttp under the same interface
        (a separate shared client per origin).

        Raises:
            ValueError: ``base_url`` is not an absolute http(s) URL.
            ImportError: ``http_transport: aiohttp`` without the ``aiohttp`` extra.
        """
        config = resolve_config(config)
        aiohttp = config.http_transport == "aiohttp"
        config, key = self._pooled("async-aiohttp" if aiohttp else "async", base_url, config, proxy)
        if key is None and aiohttp:  # a client of its own, no keep-alive, on aiohttp
            limits = http_limits(config)
            transport = LoopRoutingTransport(limits=limits, proxy=proxy, backend="aiohttp")
            return httpx.AsyncClient(
                transport=transport, timeout=http_timeout(config), event_hooks=_ASYNC_HOOKS
            )
        if key is None:
            return httpx.AsyncClient(**_unpooled(config, proxy), event_hooks=_ASYNC_HOOKS)
        return self._entry(self._async, key, lambda: _new_async_entry(config, proxy))[0]

    def stats(self) -> dict[str, HttpPoolStats]:
        """Pool statistics per shared client, keyed ``"<sync|async> <origin>"``.

        Clients of the same origin with different proxies or limits add a suffix (the
        proxy URL with its password masked). Origins never carry credentials.
        """
        with self._lock:
            transports: list[tuple[Key, _CountingTransport | LoopRoutingTransport]] = [
                *((key, entry[1]) for key, entry in self._sync.items()),
                *((key, entry[1]) for key, entry in self._async.items()),
            ]
        result: dict[str, HttpPoolStats] = {}
        for key, transport in transports:
            name = f"{key[0]} {key[1]}"
            if name in result:
                proxy = None if key[2] is None else redact_url(key[2])
                name = f"{name} (proxy={proxy}, limits={key[3]}, timeout={key[4]})"
            result[name] = transport.stats()
        return result

    def close(self) -> None:
        """Close every shared client from sync code.

        Async clients' pools close as :meth:`LoopRoutingTransport.close_from_sync` says.
        """
        sync_entries, async_entries = self._take_all()
        for client, _ in sync_entries:
            client._close_for_real()
        for _client, transport in async_entries:
            transport.close_from_sync()

    async def aclose(self) -> None:
        """Close every shared client; async pools of the running loop close now."""
        sync_entries, async_entries = self._take_all()
        for client, _ in sync_entries:
            client._close_for_real()
        for async_client, _transport in async_entries:
            await async_client._aclose_for_real()

    def __repr__(self) -> str:
        return f"<HttpClientRegistry [sync: {len(self._sync)}, async: {len(self._async)}]>"

    # --- shared by the sync and async twins (no I/O) ----------------------------------
    def _pooled(
        self, kind: str, base_url: str, config: PerformanceConfig | None, proxy: str | None
    ) -> tuple[PerformanceConfig, Key | None]:
        """The config in effect and the shared client's key; ``None`` without pooling.

        The key is computed either way, so a bad ``base_url`` is refused either way.
        """
        config = resolve_config(config)
        key = self._key(kind, base_url, config, proxy)
        return config, key if config.enable_connection_pooling else None

    def _entry(self, table: dict[Key, E], key: Key, new: Callable[[], E]) -> E:
        """``table[key]``, made by ``new()`` under the lock the first time."""
        with self._lock:
            entry = table.get(key)
            if entry is None:
                entry = table[key] = new()
            return entry

    def _take_all(
        self,
    ) -> tuple[
        list[tuple[_SharedClient, _CountingTransport]],
        list[tuple[_SharedAsyncClient, LoopRoutingTransport]],
    ]:
        """Empty the registry; returns what it held, for the caller to close."""
        with self._lock:
            sync_entries, async_entries = list(self._sync.values()), list(self._async.values())
            self._sync.clear()
            self._async.clear()
        return sync_entries, async_entries

    @staticmethod
    def _key(kind: str, base_url: str, config: PerformanceConfig, proxy: str | None) -> Key:
        limits = http_limits(config)
        return (
            kind,
            _origin(base_url),
            proxy,
            (limits.max_connections, limits.max_keepalive_connections, limits.keepalive_expiry),
            repr(http_timeout(config)),
        )


_SYNC_HOOKS: dict[str, list[Callable[..., Any]]] = {"response": [_notify]}
_ASYNC_HOOKS: dict[str, list[Callable[..., Any]]] = {"response": [_anotify]}


def _unpooled(config: PerformanceConfig, proxy: str | None) -> dict[str, Any]:
    # Options of a fresh, unshared client (pooling off): no keep-alive, the caller closes it.
    return {"limits": http_limits(config), "timeout": http_timeout(config), "proxy": proxy}


def _new_sync_entry(
    config: PerformanceConfig, proxy: str | None
) -> tuple[_SharedClient, _CountingTransport]:
    transport = _CountingTransport(
        _Meter(), limits=http_limits(config), proxy=proxy, trust_env=False
    )
    client = _SharedClient(
        transport=transport, timeout=http_timeout(config), trust_env=False, event_hooks=_SYNC_HOOKS
    )
    return client, transport


def _new_async_entry(
    config: PerformanceConfig, proxy: str | None
) -> tuple[_SharedAsyncClient, LoopRoutingTransport]:
    transport = LoopRoutingTransport(
        limits=http_limits(config), proxy=proxy, backend=config.http_transport
    )
    client = _SharedAsyncClient(
        transport=transport,
        timeout=http_timeout(config),
        trust_env=False,
        event_hooks=_ASYNC_HOOKS,
    )
    return client, transport


_registry = HttpClientRegistry()


def _close_at_exit() -> None:
    # Keep-alive sockets of the process-wide clients are closed, not left to the garbage
    # collector at interpreter exit (which warns "unclosed socket" and skips the goodbye).
    try:
        _registry.close()
    except Exception:  # pragma: no cover - best effort while the interpreter stops
        logging.getLogger(__name__).debug("closing the shared HTTP clients failed", exc_info=True)


atexit.register(_close_at_exit)


def get_http_client(
    base_url: str, *, config: PerformanceConfig | None = None, proxy: str | None = None
) -> httpx.Client:
    """The process-wide shared ``httpx.Client`` for ``base_url``'s origin.

    Example: ``OpenAI(base_url=url, http_client=get_http_client(url), max_retries=0)``.
    With ``enable_connection_pooling=False``: a fresh client the caller closes.
    """
    return _registry.get_client(base_url, config=config, proxy=proxy)


def get_async_http_client(
    base_url: str, *, config: PerformanceConfig | None = None, proxy: str | None = None
) -> httpx.AsyncClient:
    """The process-wide shared, loop-safe ``httpx.AsyncClient`` for ``base_url``'s origin.

    Example: ``ChatOpenAI(base_url=url, http_async_client=get_async_http_client(url))``.
    Usable from any event loop in any thread; each loop gets its own pool.
    """
    return _registry.get_async_client(base_url, config=config, proxy=proxy)


def http_pool_stats() -> dict[str, HttpPoolStats]:
    """Statistics of the process-wide registry's clients (see :meth:`HttpClientRegistry.stats`)."""
    return _registry.stats()


def close_http_clients() -> None:
    """Close the process-wide registry's clients from sync code; later calls make new ones."""
    _registry.close()


async def aclose_http_clients() -> None:
    """Close the process-wide registry's clients from async code."""
    await _registry.aclose()


# --- OpenAI SDK clients on the shared pools ---------------------------------------------
def openai_client(
    *,
    base_url: str,
    api_key: str | None = None,
    config: PerformanceConfig | None = None,
    proxy: str | None = None,
    **options: Any,
) -> openai.OpenAI:
    """An ``openai.OpenAI`` on the shared pooled client, with SDK retries off.

    Example: ``openai_client(base_url=sim.base_url, api_key="sk-...").embeddings.create(...)``.
    ``options`` go to ``openai.OpenAI`` (``organization=``, ``default_headers=``, ...).
    Needs the ``openai`` package (not a core dependency).
    """
    import openai

    config = _sdk_defaults(config, options)
    http_client = get_http_client(base_url, config=config, proxy=proxy)
    return openai.OpenAI(base_url=base_url, api_key=api_key, http_client=http_client, **options)


def async_openai_client(
    *,
    base_url: str,
    api_key: str | None = None,
    config: PerformanceConfig | None = None,
    proxy: str | None = None,
    **options: Any,
) -> openai.AsyncOpenAI:
    """An ``openai.AsyncOpenAI`` on the shared loop-safe client, with SDK retries off.

    Example: ``await async_openai_client(base_url=url, api_key=key).chat.completions.create(...)``;
    the same object works across ``asyncio.run()`` calls and threads.
    """
    import openai

    config = _sdk_defaults(config, options)
    http_client = get_async_http_client(base_url, config=config, proxy=proxy)
    return openai.AsyncOpenAI(
        base_url=base_url, api_key=api_key, http_client=http_client, **options
    )


def _sdk_defaults(config: PerformanceConfig | None, options: dict[str, Any]) -> PerformanceConfig:
    # SDK retries off (our retry policy is the single retry owner); the config's timeouts.
    config = resolve_config(config)
    options.setdefault("max_retries", 0)
    options.setdefault("timeout", http_timeout(config))
    return config
