"""LangChain adapters: wrap Embeddings, chat models and VectorStores with rag_perf_plugins.

Example::

    from rag_perf_plugins.langchain import PerfEmbeddings

Install with ``pip install 'rag-perf-plugins[langchain]'``.
"""

from __future__ import annotations

try:
    import langchain_core  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised by the boundary test
    msg = "rag_perf_plugins.langchain needs LangChain: pip install 'rag-perf-plugins[langchain]'"
    raise ImportError(msg) from exc

from .caches import PerfLLMCache
from .callbacks import PerfCallbackHandler, install_callback_handler, uninstall_callback_handler
from .chat_models import PerfChatModel
from .control import cache_control, control_from_config
from .embeddings import PerfEmbeddings
from .factories import (
    pooled_azure_chat_openai,
    pooled_azure_openai_embeddings,
    pooled_chat_anthropic,
    pooled_chat_openai,
    pooled_openai_embeddings,
)
from .rate_limiters import PerfRateLimiter
from .semantic_index import VectorStoreSemanticIndex
from .vectorstores import PerfVectorStore

__all__ = [
    "VectorStoreSemanticIndex",
    # wrappers
    "PerfChatModel",
    "PerfEmbeddings",
    "PerfLLMCache",
    "PerfRateLimiter",
    "PerfVectorStore",
    # statistics
    "PerfCallbackHandler",
    "install_callback_handler",
    "uninstall_callback_handler",
    # per-call control
    "cache_control",
    "control_from_config",
    # factories
    "pooled_azure_chat_openai",
    "pooled_azure_openai_embeddings",
    "pooled_chat_anthropic",
    "pooled_chat_openai",
    "pooled_openai_embeddings",
]
