"""A real LCEL RAG chain (retriever | prompt | chat model | parser) wrapped and unwrapped.

Everything is real: ``OpenAIEmbeddings`` and ``ChatOpenAI`` on the pooled clients, over HTTP
to the simulator, LangChain's ``InMemoryVectorStore`` and retriever, our disk cache.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from langchain_core.documents import Document
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import Runnable, RunnablePassthrough
from langchain_core.vectorstores import InMemoryVectorStore
from rag_perf_plugins.langchain import (
    PerfCallbackHandler,
    PerfChatModel,
    PerfEmbeddings,
    PerfVectorStore,
    pooled_chat_openai,
    pooled_openai_embeddings,
)

from rag_perf_plugins.simulator import Simulator
from rag_perf_plugins.tracking import PerformanceTracker

TEXTS = [
    "Connection pooling reuses HTTP connections to the provider instead of opening one per call.",
    "The cache keeps LLM answers and embeddings on disk, without pickle, with a TTL per entry.",
    "The admission gate keeps requests per minute under the provider's limit, so no 429s.",
    "Micro-batching merges concurrent embedding requests into one provider call.",
    "Single-flight makes identical concurrent misses wait for one provider call.",
]
QUESTIONS = [
    "How are 429 errors avoided?",
    "What does the cache store?",
    "Why pool connections?",
]
PROMPT = ChatPromptTemplate.from_messages(
    [("system", "Answer from the context.\n\n{context}"), ("user", "Question: {question}")]
)


def provider_requests(sim: Simulator) -> int:
    by_endpoint: dict[str, int] = sim.stats()["requests_by_endpoint"]
    return sum(by_endpoint.values())


def _format(docs: list[Document]) -> str:
    return "\n\n".join(d.page_content for d in docs)


def build_chain(
    sim: Simulator, *, wrapped: bool, tracker: PerformanceTracker
) -> Runnable[Any, str]:
    embeddings: Any = pooled_openai_embeddings(
        model="text-embedding-3-small", base_url=sim.base_url, api_key="sk-test"
    )
    llm: Any = pooled_chat_openai(
        model="gpt-4o-mini",
        base_url=sim.base_url,
        api_key="sk-test",
        temperature=0,
        stream_usage=True,
    )
    store: Any
    if wrapped:
        embeddings = PerfEmbeddings(embeddings, tracker=tracker)
        store = PerfVectorStore(InMemoryVectorStore(embeddings), tracker=tracker)
        llm = PerfChatModel(llm, tracker=tracker)
    else:
        store = InMemoryVectorStore(embeddings)
    store.add_texts(TEXTS)
    retriever = store.as_retriever(search_kwargs={"k": 2})
    chain: Runnable[Any, str] = (
        {"context": retriever | _format, "question": RunnablePassthrough()}
        | PROMPT
        | llm
        | StrOutputParser()
    )
    return chain


@pytest.fixture
def tracker() -> PerformanceTracker:
    return PerformanceTracker()


@pytest.fixture
def chains(
    simulator: Simulator, tracker: PerformanceTracker
) -> Iterator[tuple[Runnable[Any, str], Runnable[Any, str]]]:
    yield (
        build_chain(simulator, wrapped=False, tracker=tracker),
        build_chain(simulator, wrapped=True, tracker=tracker),
    )


def test_same_answers_and_a_second_run_makes_no_provider_calls(
    simulator: Simulator,
    chains: tuple[Runnable[Any, str], Runnable[Any, str]],
    tracker: PerformanceTracker,
) -> None:
    plain, wrapped = chains
    expected = [plain.invoke(q) for q in QUESTIONS]
    # The simulator answers from the retrieved context: retrieval found the right texts.
    assert "admission gate" in expected[0] and "cache" in expected[1]
    handler = PerfCallbackHandler(tracker)
    first = wrapped.batch(QUESTIONS, config={"callbacks": [handler]})
    assert first == expected
    before = provider_requests(simulator)
    second = wrapped.batch(QUESTIONS, config={"callbacks": [handler]})
    assert second == expected
    assert provider_requests(simulator) == before  # zero provider calls

    # Every stage is in the stats: embedding (PerfEmbeddings), retrieval (the retriever run
    # and PerfVectorStore), the chat model (callback and service), the chain.
    ops = tracker.get_metrics()
    ops = ops.get("operations", ops)
    for name in (
        "embedding.query",
        "langchain.retriever",
        "langchain.chat_model",
        "llm.chat",
        "langchain.chain",
    ):
        assert name in ops, f"{name} missing from {sorted(ops)}"
    chat = tracker.get_metrics("langchain.chat_model")
    assert chat["count"] == 2 * len(QUESTIONS)
    assert chat["cache_hits"] == len(QUESTIONS)  # seen through response_metadata["cache_hit"]
    assert tracker.get_metrics("llm.chat")["cache_hits"] == len(QUESTIONS)
    assert handler.open_runs == 0


async def test_astream_replays_chunk_by_chunk_with_zero_provider_calls(
    simulator: Simulator, chains: tuple[Runnable[Any, str], Runnable[Any, str]]
) -> None:
    plain, wrapped = chains
    question = QUESTIONS[0]
    expected = await plain.ainvoke(question)
    live = [chunk async for chunk in wrapped.astream(question)]
    before = provider_requests(simulator)
    replay = [chunk async for chunk in wrapped.astream(question)]
    assert provider_requests(simulator) == before
    assert replay == live and len(replay) > 3  # chunk by chunk, not one block
    assert "".join(replay) == expected


async def test_concurrent_abatch_of_repeated_questions(
    simulator: Simulator, chains: tuple[Runnable[Any, str], Runnable[Any, str]]
) -> None:
    _, wrapped = chains
    before = provider_requests(simulator)
    answers = await wrapped.abatch(QUESTIONS * 4, config={"max_concurrency": 8})
    assert answers[: len(QUESTIONS)] * 4 == answers
    # One chat call per distinct question at most (coalesced or cached), plus embeddings.
    chat_calls = sum(
        n
        for path, n in simulator.stats()["requests_by_endpoint"].items()
        if path.endswith("/chat/completions")
    )
    assert chat_calls == len(QUESTIONS)
    assert provider_requests(simulator) - before <= 2 * len(QUESTIONS)
