"""The seed's API: ``AsyncRAGEngine`` and ``process_queries_concurrently``.

Run it with ``python examples/async_engine.py``. It starts the bundled provider simulator
unless ``RAG_PERF_BASE_URL`` points at a running OpenAI-compatible provider, and keeps its
cache in a temporary directory.

The engine takes two async callables, a retriever and a generator, and adds the
query-result cache (identical queries in flight run once), an admission gate, retries,
degradation under overload, and statistics. Here the generator calls the provider with
the OpenAI SDK on a pooled client (``async_openai_client``), retrieval is a keyword match
over a few passages, and 40 questions (8 distinct) run 10 at a time.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from collections.abc import Sequence

from rag_perf_plugins import (
    AsyncRAGEngine,
    CacheManager,
    PerformanceConfig,
    get_performance_tracker,
    process_queries_concurrently,
    set_cache_manager,
)
from rag_perf_plugins.pool.http import async_openai_client
from rag_perf_plugins.simulator import provider_url

PASSAGES = [
    "Machine learning fits models to data so they can predict new cases.",
    "Retrieval-augmented generation retrieves passages and asks an LLM to answer from them.",
    "A connection pool keeps connections open so each request skips the TCP handshake.",
    "A cache returns stored answers for repeated questions without calling the provider.",
]
QUESTIONS = [
    "What is machine learning?",
    "What is retrieval-augmented generation?",
    "Why use a connection pool?",
    "What does a cache return?",
    "How does machine learning predict?",
    "What does RAG retrieve?",
    "What does a pool keep open?",
    "Why cache answers?",
]


async def run(url: str, config: PerformanceConfig) -> None:
    client = async_openai_client(base_url=url, api_key=os.environ.get("OPENAI_API_KEY", "sk-x"))

    async def retriever(query: str, top_k: int) -> list[str]:
        words = set(query.lower().replace("?", "").split())
        ranked = sorted(PASSAGES, key=lambda p: -len(words & set(p.lower().split())))
        return ranked[:top_k]

    async def generator(query: str, passages: Sequence[str]) -> str:
        context = "\n\n".join(passages)
        reply = await client.chat.completions.create(
            model="gpt-4o-mini",
            temperature=0,
            messages=[
                {"role": "system", "content": f"Answer from the context.\n\n{context}"},
                {"role": "user", "content": f"Question: {query}"},
            ],
        )
        return reply.choices[0].message.content or ""

    async with AsyncRAGEngine(config, retriever=retriever, generator=generator, top_k=1) as engine:
        result = await engine.query("What is machine learning?")
        print(f"one query: {result.answer!r} (cached: {result.cached})")
        queries = [QUESTIONS[i % len(QUESTIONS)] for i in range(40)]
        started = time.perf_counter()
        results = await process_queries_concurrently(engine, queries, max_concurrent=10)
        elapsed = time.perf_counter() - started
        answered = sum(1 for r in results if r.ok)
        cached = sum(1 for r in results if r.ok and r.cached)
        print(f"{answered}/{len(queries)} answered in {elapsed:.2f} s, {cached} from the cache")
        print(f"engine stats: {engine.stats}")
    stats = get_performance_tracker().get_operation_stats("rag.query")
    p50, p95 = stats.latency_p50_s * 1000, stats.latency_p95_s * 1000
    print(f"rag.query p50 {p50:.1f} ms, p95 {p95:.1f} ms")


def main() -> None:
    with tempfile.TemporaryDirectory() as cache_dir, provider_url(latency_ms=50.0, seed=1) as url:
        config = PerformanceConfig(cache_dir=cache_dir, max_concurrent_requests=10)
        set_cache_manager(CacheManager(config))
        try:
            asyncio.run(run(url, config))
        finally:
            set_cache_manager(None)


if __name__ == "__main__":
    main()
