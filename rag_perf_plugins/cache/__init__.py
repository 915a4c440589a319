"""The persistent cache: memory and diskcache tiers, safe envelope, complete keys, single-flight.

Example::

    from rag_perf_plugins.cache import cache_control, cached, embedding_key, get_cache_manager

    cache = get_cache_manager()
    key = embedding_key(provider="openai", model="text-embedding-3-small",
                        dimensions=384, role="document", text=chunk)
    vectors = cache.get_vectors([key]) or cache.set_vectors({key: embed(chunk)}, model=...)

See :mod:`.manager` (the API), :mod:`.tiers` (the tier seam), :mod:`.serialize` (stored
form, no pickle), :mod:`.keys`, :mod:`.control`, :mod:`.singleflight`, :mod:`.decorator`.
"""

from __future__ import annotations

from .control import CacheControl, cache_control, cache_scope, current_control, parse_control
from .decorator import cached
from .keys import (
    KEY_VERSION,
    NON_OUTPUT_PARAMS,
    EmbeddingKeyer,
    KeyExplanation,
    assert_key_complete,
    assert_key_ignores,
    canonical_json,
    embedding_fields,
    embedding_key,
    explain_key,
    is_sampled,
    llm_fields,
    llm_key,
    llm_key_from_tail,
    llm_key_tail,
    make_key,
    query_key,
    retrieval_key,
)
from .manager import NAMESPACES, CacheManager, default_cache_dir
from .registry import (
    cache_manager_for,
    get_cache_manager,
    installed_cache_manager,
    set_cache_manager,
)
from .serialize import SCHEMA_VERSION, CorruptEntry, SafeDisk, round_vector
from .singleflight import SingleFlight
from .tiers import DiskTier, MemoryTier, Tier

__all__ = [
    # manager
    "CacheManager",
    "cache_manager_for",
    "get_cache_manager",
    "installed_cache_manager",
    "set_cache_manager",
    "default_cache_dir",
    "NAMESPACES",
    # per-call control and decorator
    "cache_control",
    "cache_scope",
    "current_control",
    "parse_control",
    "CacheControl",
    "cached",
    # keys
    "KEY_VERSION",
    "NON_OUTPUT_PARAMS",
    "KeyExplanation",
    "canonical_json",
    "make_key",
    "explain_key",
    "embedding_fields",
    "embedding_key",
    "EmbeddingKeyer",
    "llm_fields",
    "llm_key",
    "llm_key_tail",
    "llm_key_from_tail",
    "retrieval_key",
    "query_key",
    "is_sampled",
    "assert_key_complete",
    "assert_key_ignores",
    # storage
    "Tier",
    "MemoryTier",
    "DiskTier",
    "SafeDisk",
    "SCHEMA_VERSION",
    "CorruptEntry",
    "round_vector",
    "SingleFlight",
]
