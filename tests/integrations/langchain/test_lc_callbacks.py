"""PerfCallbackHandler: every run kind, tokens, TTFT, errors, inline dispatch, global install."""

from __future__ import annotations

import threading
from typing import Any
from uuid import UUID

import pytest
from langchain_core.embeddings import DeterministicFakeEmbedding
from langchain_core.language_models import FakeListChatModel
from langchain_core.runnables import Runnable, RunnableLambda
from langchain_core.tools import tool
from langchain_core.vectorstores import InMemoryVectorStore
from rag_perf_plugins.langchain import (
    PerfCallbackHandler,
    install_callback_handler,
    uninstall_callback_handler,
)

from rag_perf_plugins._clock import FakeClock
from rag_perf_plugins.tracking import PerformanceTracker


@pytest.fixture
def tracker() -> PerformanceTracker:
    return PerformanceTracker()


def test_chat_model_and_chain_runs(tracker: PerformanceTracker) -> None:
    handler = PerfCallbackHandler(tracker)

    def ask(question: str) -> str:
        return f"question: {question}"

    chain: Runnable[str, Any] = RunnableLambda(ask) | FakeListChatModel(responses=["a"])
    chain.invoke("hi", config={"callbacks": [handler]})
    assert tracker.get_operation_stats("langchain.chat_model").count == 1
    assert tracker.get_operation_stats("langchain.chain").count >= 1
    assert handler.open_runs == 0


def test_stream_records_time_to_first_token() -> None:
    clock = FakeClock()
    tracker = PerformanceTracker()
    handler = PerfCallbackHandler(tracker, clock=clock)
    model = FakeListChatModel(responses=["hello world"])
    for _ in model.stream("hi", config={"callbacks": [handler]}):
        clock.advance(0.01)
    assert tracker.get_operation_stats("langchain.chat_model").count == 1
    ttft = tracker.histograms("langchain.chat_model")["ttft"]
    latency = tracker.histograms("langchain.chat_model")["latency"]
    assert ttft.count == 1 and ttft.max < latency.max  # first token before the end


def test_errors_are_counted(tracker: PerformanceTracker) -> None:
    def boom(_: str) -> str:
        raise RuntimeError("no")

    handler = PerfCallbackHandler(tracker)
    with pytest.raises(RuntimeError):
        RunnableLambda(boom).invoke("x", config={"callbacks": [handler]})
    assert tracker.get_operation_stats("langchain.chain").errors == 1


def test_retriever_and_tool_runs(tracker: PerformanceTracker) -> None:
    handler = PerfCallbackHandler(tracker)
    store = InMemoryVectorStore(DeterministicFakeEmbedding(size=4))
    store.add_texts(["a", "b"])
    store.as_retriever(search_kwargs={"k": 1}).invoke("a", config={"callbacks": [handler]})

    @tool
    def double(x: int) -> int:
        """Double x."""
        return 2 * x

    double.invoke({"x": 2}, config={"callbacks": [handler]})
    assert tracker.get_operation_stats("langchain.retriever").count == 1
    assert tracker.get_operation_stats("langchain.tool").count == 1


async def test_async_runs_are_handled_inline_on_the_loop_thread(
    tracker: PerformanceTracker,
) -> None:
    seen: list[int] = []

    class Spy(PerfCallbackHandler):
        def on_chat_model_start(self, *args: Any, run_id: UUID, **kwargs: Any) -> None:
            seen.append(threading.get_ident())
            super().on_chat_model_start(*args, run_id=run_id, **kwargs)

    await FakeListChatModel(responses=["a"]).ainvoke("hi", config={"callbacks": [Spy(tracker)]})
    assert seen == [threading.get_ident()]  # no hop to the default thread pool
    assert tracker.get_operation_stats("langchain.chat_model").count == 1


def test_global_install_and_uninstall(tracker: PerformanceTracker) -> None:
    model = FakeListChatModel(responses=["a"])
    install_callback_handler(PerfCallbackHandler(tracker))
    try:
        model.invoke("hi")
        worker = threading.Thread(target=model.invoke, args=("from a thread",))
        worker.start()
        worker.join()
    finally:
        uninstall_callback_handler()
    model.invoke("not recorded")
    assert tracker.get_operation_stats("langchain.chat_model").count == 2
