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

from .embeddings import PerfEmbeddings
from .factories import pooled_chat_openai, pooled_openai_embeddings

__all__ = [
    "PerfEmbeddings",
    "pooled_chat_openai",
    "pooled_openai_embeddings",
]
