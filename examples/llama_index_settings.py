"""LlamaIndex: wrap ``Settings.embed_model`` once, and every index built after uses our core.

Run it with ``python examples/llama_index_settings.py``. It starts the bundled provider
simulator unless ``RAG_PERF_BASE_URL`` points at a running OpenAI-compatible provider, and
keeps its cache in a temporary directory.

``configure_settings()`` replaces ``Settings.embed_model`` by a ``PerfEmbedding`` and
``Settings.llm`` by a ``PerfLLM`` around them (cache, batching, admission gate, retries,
statistics); ``restore_settings()`` puts the originals back. Call it before building
indexes: LlamaIndex copies the models into each index when it is built. The inner models
are LlamaIndex's real ``OpenAIEmbedding`` and ``OpenAI`` on our pooled HTTP clients
(``pooled_openai_embedding``, ``pooled_openai_llm``).
"""

from __future__ import annotations

import os
import tempfile

from llama_index.core import Settings, VectorStoreIndex
from llama_index.core.schema import Document
from rag_perf_plugins.llama_index import (
    PerfEmbedding,
    PerfLLM,
    configure_settings,
    pooled_openai_embedding,
    pooled_openai_llm,
    restore_settings,
)

from rag_perf_plugins import CacheManager, PerformanceConfig, http_pool_stats, set_cache_manager
from rag_perf_plugins.simulator import provider_url

TEXTS = [
    "Connection pooling reuses HTTP connections to the provider.",
    "The cache keeps embeddings on disk as float32, without pickle.",
    "The admission gate keeps requests per minute under the provider's limit.",
]


def provider_requests() -> int:
    """Requests sent through the shared pooled clients so far."""
    return sum(stats.requests for stats in http_pool_stats().values())


def main() -> None:
    with tempfile.TemporaryDirectory() as cache_dir, provider_url(latency_ms=20.0, seed=1) as url:
        config = PerformanceConfig(cache_dir=cache_dir)
        set_cache_manager(CacheManager(config))
        key = os.environ.get("OPENAI_API_KEY", "sk-example")
        Settings.embed_model = pooled_openai_embedding(api_base=url, api_key=key, config=config)
        Settings.llm = pooled_openai_llm(api_base=url, api_key=key, config=config)
        state = configure_settings(config)
        wrapped = isinstance(Settings.embed_model, PerfEmbedding)
        print(f"Settings.embed_model is a PerfEmbedding: {wrapped}")
        print(f"Settings.llm is a PerfLLM: {isinstance(Settings.llm, PerfLLM)}")
        try:
            for attempt in ("first", "second"):
                before = provider_requests()
                index = VectorStoreIndex.from_documents([Document(text=t) for t in TEXTS])
                nodes = index.as_retriever(similarity_top_k=1).retrieve("How are 429s avoided?")
                print(f"{attempt} build + query: top passage {nodes[0].get_content()!r}")
                reply = Settings.llm.complete(f"{nodes[0].get_content()}\n\nQuestion: why?")
                print(f"  answer from the cache: {reply.additional_kwargs.get('cache_hit')}")
                print(f"  provider requests: {provider_requests() - before}")
        finally:
            restored = restore_settings()
            set_cache_manager(None)
        original = type(state.original_embed_model).__name__
        print(f"restored the original model: {restored} (it was {original})")


if __name__ == "__main__":
    main()
