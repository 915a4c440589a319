"""Per-call cache control from LangChain ``config`` metadata, mapped onto the core's.

Example::

    chain.invoke(question, config={"metadata": {"rag_perf": {"cache": "refresh", "ttl": 60}}})

    with cache_control("bypass"):          # works for every wrapper, runnable or not
        embeddings.embed_query(question)

Modes (see :mod:`rag_perf_plugins.cache.control`): ``"bypass"`` (neither read nor write),
``"refresh"`` (recompute and overwrite), ``"no-store"`` (read, but do not write a miss);
``ttl`` in seconds applies to entries written by the call. ``"semantic": True`` opts the
call in to the semantic LLM cache; ``"cache_scope": "tenant-42"`` partitions the LLM cache
by tenant or user (as :func:`~rag_perf_plugins.cache.cache_scope` does).

LangChain hands ``config`` only to runnables; our runnable wrappers (the vector store's
retriever, the chat model) read it with :func:`control_from_config` and apply it for the
call with :func:`applied`. ``Embeddings`` and ``BaseCache`` never see ``config``: use
:func:`cache_control` around the call for them.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from rag_perf_plugins.cache import CacheControl, cache_control, parse_control
from rag_perf_plugins.cache.control import applied as _applied

__all__ = [
    "METADATA_KEY",
    "applied",
    "cache_control",
    "control_from_config",
    "control_from_metadata",
    "scope_from_metadata",
]

METADATA_KEY = "rag_perf"


def control_from_metadata(metadata: Mapping[str, Any] | None) -> CacheControl | None:
    """The control in ``metadata["rag_perf"]``, or ``None`` when absent.

    Example: ``control_from_metadata({"rag_perf": {"cache": "bypass"}}).mode == "bypass"``.

    Raises:
        ValueError: an unknown option, mode or a bad ttl (named in the message).
    """
    if not metadata or METADATA_KEY not in metadata:
        return None
    options = metadata[METADATA_KEY]
    if isinstance(options, str):
        return parse_control(options)
    if not isinstance(options, Mapping):
        msg = (
            f'metadata["{METADATA_KEY}"] must be a mapping like {{"cache": "bypass", '
            f'"ttl": 60}} or a mode string, got {type(options).__name__}'
        )
        raise ValueError(msg)
    unknown = set(options) - {"cache", "ttl", "cost_scope", "semantic", "cache_scope"}
    if unknown:
        msg = (
            f'metadata["{METADATA_KEY}"]: unknown option(s) {sorted(unknown)}; allowed: '
            "cache, ttl, cost_scope, semantic, cache_scope"
        )
        raise ValueError(msg)
    return parse_control(
        {
            "mode": options.get("cache", "default"),
            "ttl": options.get("ttl"),
            "semantic": options.get("semantic"),
            "scope": options.get("cache_scope"),
        }
    )


def scope_from_metadata(metadata: Mapping[str, Any] | None) -> str | None:
    """The tenant in ``metadata["rag_perf"]["cost_scope"]`` (dollar budgets), or ``None``.

    Example: ``config={"metadata": {"rag_perf": {"cost_scope": "tenant-42"}}}``.

    Raises:
        ValueError: the scope is not a non-empty string.
    """
    options = metadata.get(METADATA_KEY) if metadata else None
    if not isinstance(options, Mapping) or options.get("cost_scope") is None:
        return None
    scope = options["cost_scope"]
    if not isinstance(scope, str) or not scope:
        msg = f'metadata["{METADATA_KEY}"]["cost_scope"] must be a non-empty string, got {scope!r}'
        raise ValueError(msg)
    return scope


def control_from_config(config: Mapping[str, Any] | None) -> CacheControl | None:
    """The control in a LangChain ``RunnableConfig``'s metadata, or ``None``."""
    if not config:
        return None
    return control_from_metadata(config.get("metadata"))


@contextmanager
def applied(control: CacheControl | None) -> Iterator[None]:
    """Apply ``control`` (from :func:`control_from_config`) to cache calls in the block."""
    with _applied(control):
        yield
