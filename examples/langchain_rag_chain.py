"""A LangChain RAG chain whose components are wrapped by rag_perf_plugins.

Run it with ``python examples/langchain_rag_chain.py``. It starts the bundled provider
simulator unless ``RAG_PERF_BASE_URL`` points at a running OpenAI-compatible provider, and
keeps its cache in a temporary directory.

Wrapped: the embedding model (``PerfEmbeddings``: cache, batching, gate, retries), the
vector store (``PerfVectorStore``: cached searches until the next write) and the chat
model (``PerfChatModel``: cache, single-flight, gate, retries); ``PerfCallbackHandler``
records every run in the tracker. The framework classes are the real ``langchain-openai``
ones, built on the shared pooled HTTP clients by ``pooled_*`` factories.
"""

from __future__ import annotations

import os
import tempfile

from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.vectorstores import InMemoryVectorStore
from rag_perf_plugins.langchain import (
    PerfCallbackHandler,
    PerfChatModel,
    PerfEmbeddings,
    PerfVectorStore,
    pooled_chat_openai,
    pooled_openai_embeddings,
)

from rag_perf_plugins import (
    CacheManager,
    PerformanceConfig,
    get_performance_tracker,
    http_pool_stats,
    set_cache_manager,
)
from rag_perf_plugins.simulator import provider_url

TEXTS = [
    "Connection pooling reuses HTTP connections to the provider instead of opening one per call.",
    "The cache keeps LLM answers and embeddings on disk, without pickle, with a TTL per entry.",
    "The admission gate keeps requests per minute under the provider's limit, so no 429s.",
    "Micro-batching merges concurrent embedding requests into one provider call.",
]


def main() -> None:
    with tempfile.TemporaryDirectory() as cache_dir, provider_url(latency_ms=20.0, seed=1) as url:
        config = PerformanceConfig(cache_dir=cache_dir)
        set_cache_manager(CacheManager(config))
        key = os.environ.get("OPENAI_API_KEY", "sk-example")
        embeddings = PerfEmbeddings(
            pooled_openai_embeddings(model="text-embedding-3-small", base_url=url, api_key=key),
            config,
        )
        store = PerfVectorStore(InMemoryVectorStore(embeddings), config)
        store.add_texts(TEXTS)
        llm = PerfChatModel(
            pooled_chat_openai(model="gpt-4o-mini", base_url=url, api_key=key, temperature=0),
            config,
        )
        prompt = ChatPromptTemplate.from_messages(
            [("system", "Answer from the context.\n\n{context}"), ("user", "Question: {question}")]
        )
        chain = prompt | llm | StrOutputParser()
        handler = PerfCallbackHandler()
        question = "How are 429 errors avoided?"
        for attempt in ("first", "second"):
            before = provider_requests()
            docs = store.similarity_search(question, k=2)
            context = "\n\n".join(d.page_content for d in docs)
            answer = chain.invoke(
                {"context": context, "question": question}, config={"callbacks": [handler]}
            )
            print(f"{attempt} answer: {answer}")
            print(f"  provider requests for it: {provider_requests() - before}")
        chat = get_performance_tracker().get_operation_stats("langchain.chat_model")
        print(f"chat model runs recorded by PerfCallbackHandler: {chat.count}")
        set_cache_manager(None)


def provider_requests() -> int:
    """Requests sent through the shared pooled clients so far (every client, every loop)."""
    return sum(stats.requests for stats in http_pool_stats().values())


if __name__ == "__main__":
    main()
