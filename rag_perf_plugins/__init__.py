"""Performance plugins for RAG pipelines: pooling, caching, throttling, batching, tracking.

Example::

    from rag_perf_plugins import PerformanceConfig

    config = PerformanceConfig.from_preset("high-throughput")

The LangChain and LlamaIndex adapters live in ``rag_perf_plugins.langchain`` and
``rag_perf_plugins.llama_index`` (install the ``langchain`` / ``llama-index`` extras).
Importing this package never imports either framework.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from .admission import AdmissionGate, RetryPolicy, get_gate
from .batching import AsyncBatchProcessor, BatchProcessor
from .cache import (
    CacheManager,
    cache_control,
    cache_scope,
    cached,
    explain_key,
    get_cache_manager,
    set_cache_manager,
)
from .config import PerformanceConfig
from .cost import cost_scope, price_table, register_price
from .engine import AsyncRAGEngine, QueryResult, RAGEngine, process_queries_concurrently
from .errors import (
    BudgetExceeded,
    CacheError,
    ConfigError,
    DeadlineExceeded,
    Overloaded,
    PoolError,
    PoolTimeout,
    ProviderError,
    RagPerfError,
    RetryBudgetExhausted,
)
from .pool import AsyncConnectionPool, ConnectionPool, ConnectionPoolConfig, PoolStats
from .pool.http import (
    aclose_http_clients,
    close_http_clients,
    get_async_http_client,
    get_http_client,
    http_pool_stats,
)
from .services.embeddings import CacheEmbeddingStore, EmbeddingService
from .services.llm import LLMRequest, LLMService
from .tracking import (
    PerformanceTracker,
    get_performance_tracker,
    set_performance_tracker,
    track,
    track_performance,
)

# The integrations/ source root holds rag_perf_plugins.langchain and .llama_index; in an
# editable install or a checkout it is a second directory of this package (STYLE.md §4).
__path__ = __import__("pkgutil").extend_path(__path__, __name__)

try:
    __version__ = version("rag-perf-plugins")
except PackageNotFoundError:  # pragma: no cover - running from a checkout without install
    __version__ = "0+unknown"

__all__ = [
    # config
    "PerformanceConfig",
    # pooled clients
    "AsyncConnectionPool",
    "ConnectionPool",
    "ConnectionPoolConfig",
    "PoolStats",
    "aclose_http_clients",
    "close_http_clients",
    "get_async_http_client",
    "get_http_client",
    "http_pool_stats",
    # cache
    "CacheManager",
    "cache_control",
    "cache_scope",
    "cached",
    "explain_key",
    "get_cache_manager",
    "set_cache_manager",
    # admission, retry, batching
    "AdmissionGate",
    "get_gate",
    "RetryPolicy",
    "AsyncBatchProcessor",
    "BatchProcessor",
    # services and engine
    "CacheEmbeddingStore",
    "EmbeddingService",
    "LLMRequest",
    "LLMService",
    "AsyncRAGEngine",
    "QueryResult",
    "RAGEngine",
    "process_queries_concurrently",
    # statistics
    "PerformanceTracker",
    "get_performance_tracker",
    "set_performance_tracker",
    "track",
    "track_performance",
    # cost
    "cost_scope",
    "price_table",
    "register_price",
    # errors
    "BudgetExceeded",
    "CacheError",
    "ConfigError",
    "DeadlineExceeded",
    "Overloaded",
    "PoolError",
    "PoolTimeout",
    "ProviderError",
    "RagPerfError",
    "RetryBudgetExhausted",
    # meta
    "__version__",
]
