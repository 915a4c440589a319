"""LlamaIndex adapters: wrap BaseEmbedding, LLMs and vector stores with rag_perf_plugins.

Example::

    from rag_perf_plugins.llama_index import configure_settings

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

__all__: list[str] = []
