"""Instrumentation handlers: per-stage durations, tokens, hits and errors from LlamaIndex spans."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from llama_index.core import Document, VectorStoreIndex
from llama_index.core.base.llms.types import CompletionResponse
from llama_index.core.embeddings import MockEmbedding
from llama_index.core.llms import ChatMessage, CustomLLM, LLMMetadata, MockLLM
from llama_index.core.llms.callbacks import llm_completion_callback
from llama_index_instrumentation import get_dispatcher
from rag_perf_plugins.llama_index import (
    PerfEventHandler,
    PerfSpanHandler,
    install_instrumentation,
    uninstall_instrumentation,
)

from rag_perf_plugins._clock import FakeClock
from rag_perf_plugins.tracking import PerformanceTracker


@pytest.fixture
def tracker() -> Iterator[PerformanceTracker]:
    tracker = PerformanceTracker()
    handle = install_instrumentation(tracker)
    yield tracker
    handle.uninstall()


class UsageLLM(CustomLLM):
    """Reports provider usage (3 in, 2 out) like the OpenAI classes do; fails on 'boom'."""

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(model_name="usage")

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        if "boom" in prompt:
            raise RuntimeError("provider down")
        return CompletionResponse(
            text="ok", additional_kwargs={"prompt_tokens": 3, "completion_tokens": 2}
        )

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> Any:
        def gen() -> Any:
            yield CompletionResponse(text="o", delta="o")
            yield CompletionResponse(
                text="ok", delta="k", additional_kwargs={"prompt_tokens": 3, "completion_tokens": 2}
            )

        return gen()


def test_a_query_records_every_stage_once(tracker: PerformanceTracker) -> None:
    docs = [Document(text=f"document {i}") for i in range(4)]
    index = VectorStoreIndex.from_documents(docs, embed_model=MockEmbedding(embed_dim=8))
    tracker.reset()
    engine = index.as_query_engine(llm=MockLLM(max_tokens=4), similarity_top_k=2)
    assert str(engine.query("what?")).strip()
    for stage in ("query", "retrieval", "embedding", "synthesis", "llm"):
        stats = tracker.get_operation_stats(f"llama_index.{stage}")
        assert stats.count == 1, stage
        assert stats.errors == 0
        assert stats.latency_max_s > 0
    # The query's span encloses the others.
    query = tracker.get_operation_stats("llama_index.query").latency_max_s
    assert query >= tracker.get_operation_stats("llama_index.retrieval").latency_max_s
    assert tracker.get_operation_stats("llama_index.embedding").batch_size_max == 1


def test_nested_calls_of_one_stage_count_once_and_usage_is_read(
    tracker: PerformanceTracker,
) -> None:
    llm = UsageLLM()
    llm.chat([ChatMessage(role="user", content="hi")])  # chat -> complete: two LLM spans
    llm.predict(_prompt("hi"))  # predict -> chat -> complete: three
    stats = tracker.get_operation_stats("llama_index.llm")
    assert stats.count == 2
    assert (stats.tokens_in, stats.tokens_out) == (6, 4)


def test_errors_are_recorded(tracker: PerformanceTracker) -> None:
    with pytest.raises(RuntimeError):
        UsageLLM().complete("boom")
    stats = tracker.get_operation_stats("llama_index.llm")
    assert (stats.count, stats.errors) == (1, 1)


def test_a_stream_is_recorded_at_its_end_with_time_to_first_chunk() -> None:
    clock = FakeClock()
    tracker = PerformanceTracker(clock=clock)
    spans = PerfSpanHandler(tracker=tracker, clock=clock)
    dispatcher = get_dispatcher()
    dispatcher.add_span_handler(spans)
    events = PerfEventHandler(spans=spans)
    dispatcher.add_event_handler(events)
    try:
        stream = UsageLLM().stream_complete("hi")
        assert tracker.get_operation_stats("llama_index.llm").count == 0  # not yet
        clock.advance(0.5)
        next(stream)
        clock.advance(1.5)
        list(stream)
    finally:
        dispatcher.span_handlers = [h for h in dispatcher.span_handlers if h is not spans]
        dispatcher.event_handlers = [h for h in dispatcher.event_handlers if h is not events]
    stats = tracker.get_operation_stats("llama_index.llm")
    assert stats.count == 1
    assert stats.latency_max_s == pytest.approx(2.0, rel=0.01)
    assert stats.ttft_p50_s == pytest.approx(0.5, rel=0.01)
    assert (stats.tokens_in, stats.tokens_out) == (3, 2)


def test_async_paths_are_recorded(tracker: PerformanceTracker) -> None:
    async def run() -> None:
        await UsageLLM().acomplete("hi")
        await MockEmbedding(embed_dim=4).aget_text_embedding_batch(["a", "b", "c"])

    asyncio.run(run())
    assert tracker.get_operation_stats("llama_index.llm").count == 1
    embedding = tracker.get_operation_stats("llama_index.embedding")
    assert embedding.count == 1
    assert embedding.batch_size_max == 3


def test_install_is_idempotent_and_uninstall_takes_both_handlers_off() -> None:
    dispatcher = get_dispatcher()
    before = (len(dispatcher.span_handlers), len(dispatcher.event_handlers))
    tracker = PerformanceTracker()
    first = install_instrumentation(tracker)
    assert install_instrumentation(tracker) is first
    assert (len(dispatcher.span_handlers), len(dispatcher.event_handlers)) == (
        before[0] + 1,
        before[1] + 1,
    )
    other = install_instrumentation(PerformanceTracker())  # replaces the first
    assert other is not first
    assert (len(dispatcher.span_handlers), len(dispatcher.event_handlers)) == (
        before[0] + 1,
        before[1] + 1,
    )
    assert uninstall_instrumentation()
    assert not uninstall_instrumentation()
    assert (len(dispatcher.span_handlers), len(dispatcher.event_handlers)) == before
    UsageLLM().complete("hi")
    assert tracker.operations == []


def _prompt(text: str) -> Any:
    from llama_index.core.prompts import PromptTemplate

    return PromptTemplate(text)
