"""LlamaIndex adapters: wrap BaseEmbedding, LLMs and vector stores with rag_perf_plugins.

Example::

    from rag_perf_plugins.llama_index import PerfEmbedding, configure_settings, wrap_llm

    configure_settings()                      # before building indexes: wraps Settings.embed_model
                                              # and Settings.llm, installs the stage handlers
    embed_model = PerfEmbedding(inner_model)  # or wrap models you pass explicitly
    llm = wrap_llm(inner_llm)                 # PerfFunctionCallingLLM for function callers
    store = PerfVectorStore(inner_store, name="kb")

Install with ``pip install 'rag-perf-plugins[llama-index]'``.
"""

from __future__ import annotations

try:
    import llama_index.core  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised by the boundary test
    msg = (
        "rag_perf_plugins.llama_index needs LlamaIndex: pip install 'rag-perf-plugins[llama-index]'"
    )
    raise ImportError(msg) from exc

from .embeddings import PerfEmbedding
from .factories import (
    pooled_anthropic_llm,
    pooled_azure_openai_embedding,
    pooled_azure_openai_llm,
    pooled_openai_embedding,
    pooled_openai_llm,
)
from .instrumentation import (
    Instrumentation,
    PerfEventHandler,
    PerfSpanHandler,
    install_instrumentation,
    uninstall_instrumentation,
)
from .llms import PerfFunctionCallingLLM, PerfLLM, wrap_llm
from .semantic_index import VectorStoreSemanticIndex
from .settings import configure_settings, restore_settings
from .vector_stores import PerfVectorStore

__all__ = [
    "VectorStoreSemanticIndex",
    # embeddings
    "PerfEmbedding",
    # vector stores
    "PerfVectorStore",
    # LLMs
    "PerfFunctionCallingLLM",
    "PerfLLM",
    "wrap_llm",
    # factories
    "pooled_anthropic_llm",
    "pooled_azure_openai_embedding",
    "pooled_azure_openai_llm",
    "pooled_openai_embedding",
    "pooled_openai_llm",
    # instrumentation
    "Instrumentation",
    "PerfEventHandler",
    "PerfSpanHandler",
    "install_instrumentation",
    "uninstall_instrumentation",
    # global Settings
    "configure_settings",
    "restore_settings",
]
