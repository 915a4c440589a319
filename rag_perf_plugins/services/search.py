"""The one search-cache path both vector-store wrappers call: keys, write version, timing.

Example::

    searches = SearchCache(config, name="kb-prod")
    docs = searches.search(
        "similarity_search",
        {"query": "what is rag?", "k": 4, "filters": None, "params": {}},
        run=lambda: inner.similarity_search("what is rag?", k=4),
        dump=docs_to_data, load=docs_from_data,
    )
    searches.write("add", lambda: inner.add_texts(texts))   # delegate, then bump the version
    await searches.asearch(...)                              # the async twin

LangChain's and LlamaIndex's ``PerfVectorStore`` turn their framework's call into an
operation name and the fields that decide its result, plus the inner store's call and a
codec; everything else is here:

- **Key**: :func:`rag_perf_plugins.cache.retrieval_key` of the store's ``name``, its write
  version, the operation and every field (query text or a hash of the float32 query
  vector, ``k``, filters, every other search parameter). A field that cannot be keyed (an
  arbitrary object) makes that call uncached, counted as ``cache.unkeyable``.
- **Write version**: a namespace of its own in the cache (``vs.<hash of name>``), bumped
  by every write through :meth:`SearchCache.write` (also when the write fails: a failed
  batch may be half written) and by :meth:`SearchCache.invalidate`. It is read from the
  shared tier at most every ``version_check_interval`` seconds, so a write through any
  wrapper with the same ``name`` on the same storage, in any process, is seen within it
  (at once in the writing process, by every manager on that storage). The async path
  reads it off the event loop.
- **Entries** live in the ``retrieval`` namespace for ``ttl`` seconds
  (``config.retrieval_ttl``, 60 s by default, when not given), whatever the cache
  manager's own default: that bounds how long a write that bypassed every wrapper (another
  process writing to the same table) stays unseen.
- **Timing**: every search and write is recorded as ``vectorstore.<operation>`` (searches
  with their cache hit or miss).

Not done here: writes that bypass the wrapper (straight to the inner store or its
database) are seen only when an entry expires; identical concurrent misses each search.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import threading
import uuid
import weakref
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Final, TypeVar

from .._clock import Clock, monotonic
from .._secrets import redact_url
from .._signature import checked_kwargs
from ..cache import CacheManager, cache_manager_for, retrieval_key
from ..config import PerformanceConfig, resolve_config
from ..errors import CacheError
from ..tracking import PerformanceTracker, resolve_tracker

__all__ = ["NAMESPACE", "SearchCache", "SearchCacheViews", "object_identity", "store_identity"]

NAMESPACE: Final = "retrieval"
R = TypeVar("R")
_MISSING: Final[Any] = object()


_COLLECTION_ATTRS = ("collection_name", "_collection_name", "table_name", "index_name")
_PATH_ATTRS = ("_persist_directory", "persist_directory", "persist_dir", "path")
_URL_ATTRS = ("connection_string", "_connection_string", "url")


def _text(value: Any) -> str | None:
    return str(value) if isinstance(value, str) and value else None


def _client_location(client: Any) -> str | None:
    """Where a store client's data lives: a directory, a server, or ``None`` (in memory)."""
    if client is None:
        return None
    settings = getattr(client, "get_settings", None)
    if callable(settings):  # Chroma
        try:
            found = settings()
        except Exception:
            return None
        if getattr(found, "is_persistent", False) and _text(found.persist_directory):
            return "dir:" + os.path.abspath(str(found.persist_directory))
        host = _text(getattr(found, "chroma_server_host", None))
        port = getattr(found, "chroma_server_http_port", None)
        return f"chroma://{host}:{port}" if host else None
    options = getattr(client, "_init_options", None)
    if isinstance(options, Mapping):  # Qdrant
        if _text(options.get("path")):
            return "dir:" + os.path.abspath(str(options["path"]))
        for name in ("url", "host"):
            if _text(options.get(name)):
                return f"qdrant://{options[name]}:{options.get('port')}"
        location = _text(options.get("location"))
        return None if location in (None, ":memory:") else f"qdrant://{location}"
    return None


def _location(store: Any) -> str | None:
    for name in _PATH_ATTRS:
        path = _text(getattr(store, name, None))
        if path:
            return "dir:" + os.path.abspath(path)
    for name in _URL_ATTRS:
        url = _text(getattr(store, name, None))
        if url and ":memory:" not in url:
            return redact_url(url)
    engine = getattr(store, "_engine", None) or getattr(store, "_async_engine", None)
    url = getattr(engine, "url", None)
    if url is not None:  # SQLAlchemy: a URL object; rendered without its password
        render = getattr(url, "render_as_string", None)
        return redact_url(render(hide_password=True) if callable(render) else str(url))
    for name in ("client", "_client", "_aclient"):
        found = _client_location(getattr(store, name, None))
        if found:
            return found
    collection = getattr(store, "_collection", None)
    return _client_location(getattr(collection, "_client", None))


def store_identity(store: Any) -> str | None:
    """A name for the data ``store`` holds: class, location and collection; ``None`` if none.

    Example: ``store_identity(Chroma("docs", persist_directory="/srv/chroma"))`` is
    ``'langchain_chroma.vectorstores.Chroma:dir:/srv/chroma/docs'``; a PGVector store gives
    its server URL (password masked) and collection; FAISS or any in-memory store gives
    ``None`` (its data lives in this object only).

    Both ``PerfVectorStore`` wrappers take it as their default ``name``, so two wrappers
    over the same collection (in this process or another, on the same cache storage)
    invalidate each other's searches without being named. Read from the store's public
    and well-known private attributes (collection or table name, persist directory,
    connection URL, client options); a store it does not recognise gets a random name.
    """
    collection = None
    for name in _COLLECTION_ATTRS:
        collection = _text(getattr(store, name, None))
        if collection:
            break
    if collection is None:
        collection = _text(getattr(getattr(store, "_collection", None), "name", None))
    schema = _text(getattr(store, "schema_name", None))
    if collection and schema:
        collection = f"{schema}.{collection}"
    location = _location(store) if collection else None
    if collection is None or location is None:
        return None
    cls = type(store)
    return f"{cls.__module__}.{cls.__qualname__}:{location}/{collection}"


# id(store) -> (a weak reference to it, its name). Keyed by id, not by the object: pydantic
# stores (LlamaIndex's) are unhashable. The weak reference's callback drops the entry when
# the store dies, before its address can be reused, and a lookup checks the referent.
_OBJECT_NAMES: dict[int, tuple[weakref.ReferenceType[Any], str]] = {}
_OBJECT_NAMES_LOCK = threading.RLock()  # a callback may run inside it (GC)


# Writes through any wrapper of an in-memory store, per object name, in this process: part
# of the key, so wrappers of one object on different cache storages (which share no write
# version) still never serve an answer from before a write. An in-memory store is written
# in this process only, so this counter sees every write.
_OBJECT_WRITES: dict[str, int] = {}
_OBJECT_NAME = re.compile(r"/mem-[0-9a-f]{32}\Z")


def _forget_object(key: int) -> Callable[[weakref.ReferenceType[Any]], None]:
    def forget(ref: weakref.ReferenceType[Any]) -> None:
        with _OBJECT_NAMES_LOCK:
            if key in _OBJECT_NAMES and _OBJECT_NAMES[key][0] is ref:
                _OBJECT_WRITES.pop(_OBJECT_NAMES.pop(key)[1], None)

    return forget


def object_identity(store: Any) -> str | None:
    """A name for an in-memory store object, the same for every wrapper of that object.

    Example: ``object_identity(faiss_store)`` is ``'FAISS/mem-3f2a...'``, twice the same.

    For a store :func:`store_identity` cannot name (FAISS, an in-memory Chroma or
    Qdrant): two wrappers over one such object share this name, so a write through one
    invalidates the other's searches. The name lives as long as the object and is unique
    to it (never reused by a later object at the same address); ``None`` when the object
    cannot be weakly referenced (the wrapper then takes a random name of its own).
    """
    key = id(store)
    with _OBJECT_NAMES_LOCK:
        found = _OBJECT_NAMES.get(key)
        if found is not None and found[0]() is store:
            return found[1]
        try:
            ref = weakref.ref(store, _forget_object(key))
        except TypeError:  # not weakly referenceable
            return None
        name = f"{type(store).__name__}/mem-{uuid.uuid4().hex}"
        _OBJECT_NAMES[key] = (ref, name)
    return name


class SearchCache:
    """Cached searches of one vector store, invalidated by its writes; sync and async.

    Example: ``SearchCache(config, name="kb-prod").search(op, fields, run, dump, load)``.

    Args:
        config: ``enable_caching``, ``retrieval_ttl`` (seconds), ``version_check_interval``
            (seconds), the cache's directory/tiers/Redis and ``enable_metrics``; ``None``
            means ``PerformanceConfig.load()``.
        name: The store's identity in keys and in the write version. Wrappers of the same
            data with the same name invalidate each other's searches. ``None``:
            ``default_name`` when given, else a fresh random name (this wrapper never
            shares entries or invalidation).
        default_name: The name when ``name`` is ``None`` (the wrappers pass
            :func:`store_identity` of the inner store), or ``None`` for a random one.
        random_prefix: Prefix of the random name (e.g. the inner store's class).
        cache: The cache manager; ``None``: the one for ``config``'s cache settings.
        ttl: Seconds a cached search lives; ``None``: ``config.retrieval_ttl``.
        tracker: Statistics sink; ``None``: the process tracker when metrics are on.
        clock: Seconds, monotonic, for the timings.

    Raises:
        ValueError: ``name`` is empty or ``ttl`` is not > 0.
    """

    __slots__ = (
        "_clock",
        "_entry_ttl",
        "_object",
        "_tracker",
        "cache",
        "config",
        "enabled",
        "name",
        "ttl",
    )

    @checked_kwargs
    def __init__(
        self,
        config: PerformanceConfig | None = None,
        *,
        name: str | None = None,
        default_name: str | None = None,
        random_prefix: str = "store",
        cache: CacheManager | None = None,
        ttl: float | None = None,
        tracker: PerformanceTracker | None = None,
        clock: Clock = monotonic,
    ) -> None:
        if ttl is not None and not ttl > 0:
            msg = f"ttl must be > 0 seconds or None, got {ttl!r}"
            raise ValueError(msg)
        if name is not None and (not isinstance(name, str) or not name):
            msg = f"name must be a non-empty str or None, got {name!r}"
            raise ValueError(msg)
        self.config = resolve_config(config)
        self.cache = cache if cache is not None else cache_manager_for(self.config)
        self.name = (
            name
            if name is not None
            else default_name
            if default_name
            else f"{random_prefix}/{uuid.uuid4().hex}"
        )
        self._object = _OBJECT_NAME.search(self.name) is not None
        self.ttl = ttl
        retrieval_ttl = self.config.retrieval_ttl
        self._entry_ttl = (
            ttl if ttl is not None else math.inf if retrieval_ttl is None else retrieval_ttl
        )
        self.enabled = self.config.enable_caching and self.cache.enabled
        self._tracker = resolve_tracker(tracker, self.config)
        self._clock = clock

    @property
    def version_namespace(self) -> str:
        """The cache namespace holding this store's write version (``vs.<hash>``)."""
        return "vs." + hashlib.blake2b(self.name.encode(), digest_size=10).hexdigest()

    @property
    def version(self) -> int:
        """The store's write version (re-read after ``version_check_interval`` seconds)."""
        return self.cache.namespace_version(self.version_namespace)

    async def aversion(self) -> int:
        """Async :attr:`version`: a read of the shared tier runs off the event loop."""
        return await self.cache.anamespace_version(self.version_namespace)

    def invalidate(self) -> int:
        """Bump the write version, as every write does; returns the new version."""
        self._count_write()
        return self.cache.bump_namespace(self.version_namespace)

    async def ainvalidate(self) -> int:
        """Async :meth:`invalidate`."""
        self._count_write()
        return await self.cache.abump_namespace(self.version_namespace)

    def _count_write(self) -> None:
        if self._object:
            with _OBJECT_NAMES_LOCK:
                _OBJECT_WRITES[self.name] = _OBJECT_WRITES.get(self.name, 0) + 1

    # --- the shared, I/O-free core --------------------------------------------------
    def _key(self, operation: str, fields: Mapping[str, Any] | None, version: int) -> str | None:
        if fields is None:  # the adapter could not turn the call into plain fields
            self._tracker.incr("cache.unkeyable", operation=f"vectorstore.{operation}")
            return None
        params = dict(fields)
        if self._object:
            params["writes_in_process"] = _OBJECT_WRITES.get(self.name, 0)
        try:
            return retrieval_key(
                store=self.name,
                query=params.pop("query", ""),
                k=params.pop("k", 0),
                filters=params.pop("filters", None),
                store_version=version,
                operation=operation,
                **params,
            )
        except (CacheError, TypeError, ValueError):
            self._tracker.incr("cache.unkeyable", operation=f"vectorstore.{operation}")
            return None

    def _record(self, operation: str, started: float, hit: bool | None, error: bool) -> None:
        self._tracker.record(
            f"vectorstore.{operation}", self._clock() - started, cache_hit=hit, error=error
        )

    def _dumped(self, operation: str, result: Any, dump: Callable[[Any], Any]) -> Any:
        try:
            return dump(result)
        except (TypeError, ValueError, AttributeError):
            self._unstorable(operation)
            return _MISSING

    def _unstorable(self, operation: str) -> None:
        self._tracker.incr("cache.unstorable", operation=f"vectorstore.{operation}")

    def _loaded(self, data: Any, load: Callable[[Any], R]) -> Any:
        try:
            return load(data)
        except (KeyError, TypeError, ValueError, IndexError, AttributeError):
            return _MISSING  # an entry we cannot read is a miss, never an error

    # --- sync shell -----------------------------------------------------------------
    # unasync: generated from asearch
    def search(
        self,
        operation: str,
        fields: Mapping[str, Any] | None,
        run: Callable[[], R],
        dump: Callable[[R], Any],
        load: Callable[[Any], R],
    ) -> R:
        """``run()``'s result for these fields, from the cache when this version has it.

        ``fields`` holds what decides the result (``query``, ``k``, ``filters`` and any
        other parameter, plain data); ``None`` says the call cannot be keyed: it runs
        uncached and is counted as ``cache.unkeyable``.
        """
        started = self._clock()
        key = self._key(operation, fields, self.version) if self.enabled else None
        if key is not None:
            data = self.cache.get(key, _MISSING, namespace=NAMESPACE)
            if data is not _MISSING:
                found = self._loaded(data, load)
                if found is not _MISSING:
                    self._record(operation, started, True, False)
                    return found  # type: ignore[no-any-return]
        try:
            result = run()
        except BaseException:
            self._record(operation, started, None if key is None else False, True)
            raise
        if key is not None:
            payload = self._dumped(operation, result, dump)
            if payload is not _MISSING:
                try:
                    self.cache.set(key, payload, self._entry_ttl, namespace=NAMESPACE)
                except CacheError:  # metadata msgpack cannot store: this answer stays uncached
                    self._unstorable(operation)
        self._record(operation, started, None if key is None else False, False)
        return result

    # unasync: generated from awrite
    def write(self, operation: str, run: Callable[[], R]) -> R:
        """Delegate a write to the inner store, then bump the version (even if it failed)."""
        started = self._clock()
        error = True
        try:
            result = run()
            error = False
            return result
        finally:
            self.invalidate()
            self._record(operation, started, None, error)

    # --- async shell ----------------------------------------------------------------
    async def asearch(
        self,
        operation: str,
        fields: Mapping[str, Any] | None,
        run: Callable[[], Awaitable[R]],
        dump: Callable[[R], Any],
        load: Callable[[Any], R],
    ) -> R:
        """Async :meth:`search`: the version and the cache are read off the event loop."""
        started = self._clock()
        key = self._key(operation, fields, await self.aversion()) if self.enabled else None
        if key is not None:
            data = await self.cache.aget(key, _MISSING, namespace=NAMESPACE)
            if data is not _MISSING:
                found = self._loaded(data, load)
                if found is not _MISSING:
                    self._record(operation, started, True, False)
                    return found  # type: ignore[no-any-return]
        try:
            result = await run()
        except BaseException:
            self._record(operation, started, None if key is None else False, True)
            raise
        if key is not None:
            payload = self._dumped(operation, result, dump)
            if payload is not _MISSING:
                try:
                    await self.cache.aset(key, payload, self._entry_ttl, namespace=NAMESPACE)
                except CacheError:  # metadata msgpack cannot store: this answer stays uncached
                    self._unstorable(operation)
        self._record(operation, started, None if key is None else False, False)
        return result

    async def awrite(self, operation: str, run: Callable[[], Awaitable[R]]) -> R:
        """Async :meth:`write`."""
        started = self._clock()
        error = True
        try:
            result = await run()
            error = False
            return result
        finally:
            await self.ainvalidate()
            self._record(operation, started, None, error)

    def __repr__(self) -> str:
        return f"<SearchCache name={self.name!r} enabled={self.enabled} ttl={self._entry_ttl:g}>"


class SearchCacheViews:
    """What both ``PerfVectorStore`` wrappers show of their :class:`SearchCache` (a mixin).

    Example: ``store.version``, ``store.invalidate()``, ``store.name``, ``store.cache``.
    The class that mixes it in sets ``_searches``, its :class:`SearchCache`.
    """

    __slots__ = ()

    if TYPE_CHECKING:
        _searches: SearchCache

    @property
    def searches(self) -> SearchCache:
        """The search cache doing the work (the same class behind both frameworks)."""
        return self._searches

    @property
    def config(self) -> PerformanceConfig:
        """The config the wrapper was built with."""
        return self.searches.config

    @property
    def cache(self) -> CacheManager:
        """The cache manager holding the searches and the write version."""
        return self.searches.cache

    @property
    def name(self) -> str:
        """The store's identity in keys and in the shared write version."""
        return self.searches.name

    @property
    def ttl(self) -> float | None:
        """The ``ttl=`` argument in seconds (``None``: ``config.retrieval_ttl``)."""
        return self.searches.ttl

    @property
    def version(self) -> int:
        """The store's write version (re-read after ``version_check_interval`` seconds)."""
        return self.searches.version

    def invalidate(self) -> int:
        """Bump the write version (as every write does); returns the new version."""
        return self.searches.invalidate()

    async def ainvalidate(self) -> int:
        """Async :meth:`invalidate`."""
        return await self.searches.ainvalidate()
