"""Which cache manager a component uses: the process-wide one, or one per cache settings.

Example::

    from rag_perf_plugins.cache import cache_manager_for, get_cache_manager

    get_cache_manager()                                   # built from PerformanceConfig.load()
    cache_manager_for(PerformanceConfig(cache_dir="/srv/cache"))   # shared by equal settings

Every wrapper of both frameworks, the services and the engine get their manager here (by
way of :mod:`rag_perf_plugins.services.defaults`), so a config's ``cache_dir``,
``redis_url`` and ``cache_namespace_prefix`` apply to all of them alike.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from typing import Any

from ..config import PerformanceConfig
from .manager import CacheManager

__all__ = [
    "cache_manager_for",
    "get_cache_manager",
    "installed_cache_manager",
    "set_cache_manager",
]


_DEFAULT: CacheManager | None = None


_DEFAULT_LOCK = threading.Lock()


def get_cache_manager() -> CacheManager:
    """The process-wide manager, built on first use from ``PerformanceConfig.load()``.

    ``RAG_PERF_CACHE_DIR`` (or ``cache_dir`` in the config) moves the disk tier. Replace it
    with :func:`set_cache_manager`.
    """
    global _DEFAULT
    manager = _DEFAULT
    if manager is None:
        with _DEFAULT_LOCK:
            if _DEFAULT is None:
                _DEFAULT = CacheManager(PerformanceConfig.load())
            manager = _DEFAULT
    return manager


def installed_cache_manager() -> CacheManager | None:
    """The process-wide manager if it was built or installed already, else ``None``.

    Unlike :func:`get_cache_manager` this never builds one (nor its directory).
    """
    return _DEFAULT


def set_cache_manager(manager: CacheManager | None) -> CacheManager | None:
    """Install ``manager`` process-wide (``None``: rebuild on next use); returns the old one."""
    global _DEFAULT
    with _DEFAULT_LOCK:
        old, _DEFAULT = _DEFAULT, manager
    return old


# The config keys a CacheManager is built from: tiers, sizes, directory, Redis, dtype, TTL.
_CACHE_KEYS: tuple[str, ...] = (
    "enable_caching",
    *(
        f.name
        for f in dataclasses.fields(PerformanceConfig)
        if f.name.startswith(("cache_", "redis_"))
    ),
)


_managers: dict[tuple[Any, ...], CacheManager] = {}


_managers_lock = threading.Lock()


def _cache_settings(config: PerformanceConfig) -> tuple[Any, ...]:
    return tuple(getattr(config, key) for key in _CACHE_KEYS)


_DEFAULT_CACHE_SETTINGS = _cache_settings(PerformanceConfig())


def cache_manager_for(config: PerformanceConfig) -> CacheManager:
    """The cache manager a framework wrapper built with ``config`` uses; one per settings.

    Example: ``cache_manager_for(PerformanceConfig(cache_dir="/tmp/c")).get_stats()``.

    - ``config``'s cache keys (every ``cache_*``/``redis_*`` key and ``enable_caching``)
      are all at their defaults, or equal those of the process-wide manager: the
      process-wide :func:`~rag_perf_plugins.cache.get_cache_manager` (built from
      ``PerformanceConfig.load()``, so file and environment settings apply).
    - Otherwise (its own ``cache_dir``, sizes, TTL, dtype, tiers): a manager of its own,
      shared by every wrapper whose cache keys are equal, so the wrapper's settings are
      honoured and two wrappers on one directory share one manager.

    A config that spells out the default values is not told apart from one that sets
    nothing: both get the process-wide manager. Both the LangChain and the LlamaIndex
    wrappers call this. Managers made here live until
    the process ends (they hold open SQLite connections; close them with ``close()``).
    """
    settings = _cache_settings(config)
    if settings == _DEFAULT_CACHE_SETTINGS:
        return get_cache_manager()
    # Compared without building the process-wide manager: a wrapper with a cache of its
    # own must not create the default directory as a side effect.
    installed = installed_cache_manager()
    default_config = installed.config if installed is not None else PerformanceConfig.load()
    if settings == _cache_settings(default_config):
        return get_cache_manager()
    with _managers_lock:
        own = _managers.get(settings)
        if own is None:
            own = _managers[settings] = CacheManager(config)
        return own


def _after_fork_in_child() -> None:
    global _DEFAULT_LOCK, _managers_lock
    _DEFAULT_LOCK = threading.Lock()
    _managers_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
