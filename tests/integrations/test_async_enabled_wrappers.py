"""async_enabled: false makes the wrappers' async methods run their blocking path in a worker."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from llama_index.core.llms import CompletionResponse, CustomLLM, LLMMetadata
from llama_index.core.llms.callbacks import llm_completion_callback
from rag_perf_plugins.langchain import PerfChatModel
from rag_perf_plugins.llama_index import wrap_llm

from rag_perf_plugins.config import PerformanceConfig

CALLS: list[tuple[str, int]] = []


class RecordingChat(BaseChatModel):
    """A chat model that notes which of its paths ran, and on which thread."""

    @property
    def _llm_type(self) -> str:
        return "recording"

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        CALLS.append(("sync", threading.get_ident()))
        return ChatResult(generations=[ChatGeneration(message=AIMessage("hello"))])

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        CALLS.append(("async", threading.get_ident()))
        return ChatResult(generations=[ChatGeneration(message=AIMessage("hello"))])

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        CALLS.append(("sync stream", threading.get_ident()))
        for word in ("hel", "lo"):
            yield ChatGenerationChunk(message=AIMessageChunk(content=word))

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        CALLS.append(("async stream", threading.get_ident()))
        for word in ("hel", "lo"):
            yield ChatGenerationChunk(message=AIMessageChunk(content=word))


class RecordingLLM(CustomLLM):
    """A LlamaIndex LLM with distinct sync and async completion paths."""

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(model_name="recording")

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        CALLS.append(("sync", threading.get_ident()))
        return CompletionResponse(text="hello")

    @llm_completion_callback()
    async def acomplete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponse:
        CALLS.append(("async", threading.get_ident()))
        return CompletionResponse(text="hello")

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> Any:
        raise NotImplementedError


@pytest.mark.parametrize("enabled", [True, False])
async def test_langchain_chat_model(tmp_path: Path, enabled: bool) -> None:
    CALLS.clear()
    config = PerformanceConfig(
        cache_dir=str(tmp_path / "c"), enable_caching=False, async_enabled=enabled
    )
    llm = PerfChatModel(RecordingChat(), config)
    assert (await llm.ainvoke("hi")).content == "hello"
    assert "".join([str(c.content) async for c in llm.astream("hi")]) == "hello"
    kinds = [kind for kind, _ in CALLS]
    assert kinds == (["async", "async stream"] if enabled else ["sync", "sync stream"])
    if not enabled:
        assert threading.get_ident() not in {thread for _, thread in CALLS}


@pytest.mark.parametrize("enabled", [True, False])
async def test_llama_index_llm(tmp_path: Path, enabled: bool) -> None:
    CALLS.clear()
    config = PerformanceConfig(
        cache_dir=str(tmp_path / "c"), enable_caching=False, async_enabled=enabled
    )
    llm = wrap_llm(RecordingLLM(), config)
    assert (await llm.acomplete("hi")).text == "hello"
    assert [kind for kind, _ in CALLS] == (["async"] if enabled else ["sync"])
    if not enabled:
        assert CALLS[0][1] != threading.get_ident()
    await asyncio.sleep(0)
