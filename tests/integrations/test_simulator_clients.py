"""The simulator driven by the real framework clients: langchain-openai and LlamaIndex OpenAI."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import openai
import pytest
from langchain_core.messages import AIMessageChunk, HumanMessage, SystemMessage
from langchain_core.tools import tool
from langchain_core.vectorstores import InMemoryVectorStore
from langchain_openai import ChatOpenAI, OpenAIEmbeddings
from llama_index.core import Document, VectorStoreIndex
from llama_index.core.llms import ChatMessage
from llama_index.core.tools import FunctionTool
from llama_index.embeddings.openai import OpenAIEmbedding  # type: ignore[import-untyped, unused-ignore]
from llama_index.llms.openai import OpenAI as LlamaOpenAI
from pydantic import BaseModel, Field, SecretStr

from rag_perf_plugins.simulator import Simulator
from rag_perf_plugins.simulator.testing import SimulatorFactory

TEXTS = [
    "Paris is the capital of France.",
    "Berlin is the capital of Germany.",
    "Cats are small domesticated carnivores that purr.",
    "The stock market fell sharply on Monday.",
]
PROMPT = [
    SystemMessage("Answer from the context.\n\n" + "\n\n".join(TEXTS)),
    HumanMessage("What is the capital of Germany?"),
]
GERMANY = 'Based on the context: "Berlin is the capital of Germany."'


class HttpClients:
    """The httpx clients handed to the framework classes, closed when the test ends.

    Framework classes never close the SDK clients they build; their sockets would then be
    collected unclosed (a ResourceWarning, an error here). Passing our own avoids that.
    """

    def __init__(self) -> None:
        self._sync: list[httpx.Client] = []
        self._async: list[httpx.AsyncClient] = []

    def sync(self) -> httpx.Client:
        self._sync.append(httpx.Client())
        return self._sync[-1]

    def async_(self) -> httpx.AsyncClient:
        self._async.append(httpx.AsyncClient())
        return self._async[-1]

    def close(self) -> None:
        for c in self._sync:
            c.close()

    async def aclose(self) -> None:
        for c in self._async:
            await c.aclose()


@pytest.fixture
def http() -> Iterator[HttpClients]:
    clients = HttpClients()
    yield clients
    clients.close()


@pytest.fixture
async def ahttp() -> AsyncIterator[HttpClients]:
    clients = HttpClients()
    yield clients
    await clients.aclose()
    clients.close()


def _lc_clients(http: HttpClients, aio: bool) -> dict[str, Any]:
    return {"http_async_client": http.async_()} if aio else {"http_client": http.sync()}


def lc_embeddings(
    sim: Simulator, http: HttpClients, *, aio: bool = False, **kwargs: Any
) -> OpenAIEmbeddings:
    return OpenAIEmbeddings(
        model="text-embedding-3-small",
        openai_api_base=sim.base_url,
        openai_api_key=SecretStr("sk-test"),
        check_embedding_ctx_length=False,  # tiktoken cannot download here
        max_retries=0,
        **_lc_clients(http, aio),
        **kwargs,
    )


def lc_chat(sim: Simulator, http: HttpClients, *, aio: bool = False, **kwargs: Any) -> ChatOpenAI:
    kwargs.setdefault("temperature", 0)
    return ChatOpenAI(
        model="gpt-4o-mini",
        base_url=sim.base_url,
        api_key=SecretStr("sk-test"),
        max_retries=0,
        **_lc_clients(http, aio),
        **kwargs,
    )


def _li_clients(http: HttpClients, aio: bool) -> dict[str, Any]:
    return {"async_http_client": http.async_()} if aio else {"http_client": http.sync()}


def li_llm(sim: Simulator, http: HttpClients, *, aio: bool = False, **kwargs: Any) -> LlamaOpenAI:
    kwargs.setdefault("temperature", 0.0)
    return LlamaOpenAI(
        model="gpt-4o-mini",
        api_base=sim.base_url,
        api_key="sk-test",
        max_retries=0,
        **_li_clients(http, aio),
        **kwargs,
    )


def li_embedding(sim: Simulator, http: HttpClients, *, aio: bool = False) -> OpenAIEmbedding:
    return OpenAIEmbedding(
        model="text-embedding-3-small",
        api_base=sim.base_url,
        api_key="sk-test",
        max_retries=0,
        **_li_clients(http, aio),
    )


# ---- LangChain ---------------------------------------------------------------------------


def test_langchain_from_texts_retrieves_by_shared_words(
    simulator: Simulator, http: HttpClients
) -> None:
    embeddings = lc_embeddings(simulator, http)
    store = InMemoryVectorStore.from_texts(TEXTS, embeddings)  # sync code, thread-mode server
    hits = store.similarity_search("Which city is the capital of France?", k=1)
    assert hits[0].page_content == "Paris is the capital of France."
    assert len(embeddings.embed_query("purring cats")) == 1536
    stats = simulator.stats()
    assert stats["requests_by_endpoint"] == {"/v1/embeddings": 3}  # one batch + 2 queries
    assert stats["embedding_inputs_total"] == len(TEXTS) + 2
    assert stats["connections_opened"] == 1  # the SDK's client keeps its connection


def test_langchain_embedding_dimensions(simulator: Simulator, http: HttpClients) -> None:
    assert len(lc_embeddings(simulator, http, dimensions=256).embed_query("x")) == 256


def test_langchain_chat_invoke_stream_and_usage(simulator: Simulator, http: HttpClients) -> None:
    chat = lc_chat(simulator, http, stream_usage=True)
    reply = chat.invoke(PROMPT)
    assert reply.content == GERMANY
    chunks = list(chat.stream(PROMPT))
    assert "".join(str(c.content) for c in chunks) == GERMANY
    streamed_usage = sum((c for c in chunks), AIMessageChunk(content="")).usage_metadata
    assert streamed_usage is not None and reply.usage_metadata is not None
    assert streamed_usage["total_tokens"] == reply.usage_metadata["total_tokens"]
    stats = simulator.stats()
    assert stats["streams_total"] == 1
    assert stats["tokens_total"] == 2 * reply.usage_metadata["total_tokens"]


async def test_langchain_async_chat_and_stream(simulator: Simulator, ahttp: HttpClients) -> None:
    chat = lc_chat(simulator, ahttp, aio=True)
    reply = await chat.ainvoke(PROMPT)
    parts = [str(c.content) async for c in chat.astream(PROMPT)]
    assert reply.content == "".join(parts) == GERMANY
    assert simulator.stats()["requests_total"] == 2


def test_langchain_max_tokens_and_stop(simulator: Simulator, http: HttpClients) -> None:
    short = lc_chat(simulator, http, max_tokens=3).invoke(PROMPT)
    assert short.response_metadata["finish_reason"] == "length"
    stopped = lc_chat(simulator, http).invoke(PROMPT, stop=["capital"])
    assert stopped.content == 'Based on the context: "Berlin is the '


@tool
def get_weather(city: str, days: int = 1) -> str:
    """Weather forecast for a city."""
    return f"sunny in {city} for {days} days"


def test_langchain_tool_call_and_tool_result(simulator: Simulator, http: HttpClients) -> None:
    chat = lc_chat(simulator, http).bind_tools([get_weather])
    question = HumanMessage("What is the weather in Paris?")
    reply = chat.invoke([question])
    (call,) = reply.tool_calls
    assert call["name"] == "get_weather"
    assert call["args"] == {"city": "What is the weather in Paris?", "days": 1}
    result = get_weather.invoke(call)
    final = chat.invoke([question, reply, result])
    assert final.tool_calls == []
    assert "the tool returned sunny in What is the weather in Paris? for 1 days" in str(
        final.content
    )


def test_langchain_streamed_tool_call_assembles(simulator: Simulator, http: HttpClients) -> None:
    chat = lc_chat(simulator, http).bind_tools([get_weather])
    chunks = list(chat.stream([HumanMessage("Weather in Oslo?")]))
    merged = sum(chunks[1:], chunks[0])
    assert isinstance(merged, AIMessageChunk)
    assert merged.tool_calls == [
        {
            "name": "get_weather",
            "args": {"city": "Weather in Oslo?", "days": 1},
            "id": merged.tool_calls[0]["id"],
            "type": "tool_call",
        }
    ]
    assert merged.response_metadata["finish_reason"] == "tool_calls"


class Answer(BaseModel):
    """An answer with its confidence."""

    answer: str
    confidence: float = Field(ge=0, le=1)
    sources: list[str]


def test_langchain_structured_output_json_schema_and_function_calling(
    simulator: Simulator, http: HttpClients
) -> None:
    # json_mode is left out: it answers {"answer": ...}, whatever schema the prompt describes.
    for method in ("json_schema", "function_calling"):
        structured = lc_chat(simulator, http).with_structured_output(Answer, method=method)
        value = structured.invoke(PROMPT)
        assert isinstance(value, Answer)
        assert value.confidence == 1.0 and value.sources
        if method == "json_schema":
            assert "Berlin" in value.answer


def test_langchain_429_surfaces_with_retry_after(
    simulator_factory: SimulatorFactory, http: HttpClients
) -> None:
    sim = simulator_factory(rate_limit_rate=1.0, retry_after_s=2.5)
    with pytest.raises(openai.RateLimitError) as caught:
        lc_chat(sim, http).invoke(PROMPT)
    assert caught.value.response.headers["retry-after"] == "2.5"
    with pytest.raises(openai.RateLimitError):
        lc_embeddings(sim, http).embed_query("x")
    stats = sim.stats()
    assert stats["requests_total"] == 2 and stats["rate_limited_total"] == 2


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        ("error_rate", openai.InternalServerError),
        ("drop_rate", openai.APIConnectionError),
        ("truncate_rate", openai.APIConnectionError),
    ],
)
def test_langchain_sees_each_fault(
    simulator_factory: SimulatorFactory, http: HttpClients, fault: str, error: type[Exception]
) -> None:
    sim = simulator_factory(**{fault: 1.0})
    with pytest.raises(error):
        lc_chat(sim, http).invoke(PROMPT)
    with pytest.raises(error):
        lc_embeddings(sim, http).embed_documents(TEXTS)
    assert sim.stats()["errors_injected_total"] == 2


def test_langchain_truncated_stream_raises_midway(
    simulator_factory: SimulatorFactory, http: HttpClients
) -> None:
    sim = simulator_factory(truncate_rate=1.0)
    seen: list[str] = []
    with pytest.raises(httpx.RemoteProtocolError):
        for chunk in lc_chat(sim, http).stream(PROMPT):
            seen.append(str(chunk.content))
    assert 0 < len("".join(seen)) < len(GERMANY)


# ---- LlamaIndex --------------------------------------------------------------------------


def test_llama_index_from_documents_and_query(simulator: Simulator, http: HttpClients) -> None:
    index = VectorStoreIndex.from_documents(  # sync code, thread-mode server
        [Document(text=t) for t in TEXTS], embed_model=li_embedding(simulator, http)
    )
    engine = index.as_query_engine(llm=li_llm(simulator, http), similarity_top_k=2)
    response = engine.query("Which city is the capital of Germany?")
    assert str(response) == GERMANY
    assert response.source_nodes[0].node.get_content() == "Berlin is the capital of Germany."
    stats = simulator.stats()
    assert stats["requests_by_endpoint"]["/v1/chat/completions"] == 1
    assert stats["embedding_inputs_total"] == len(TEXTS) + 1


def test_llama_index_chat_complete_and_stream(simulator: Simulator, http: HttpClients) -> None:
    llm = li_llm(simulator, http)
    messages = [
        ChatMessage(role="system", content=str(PROMPT[0].content)),
        ChatMessage(role="user", content="What is the capital of Germany?"),
    ]
    assert llm.chat(messages).message.content == GERMANY
    streamed = "".join(r.delta or "" for r in llm.stream_chat(messages))
    assert streamed == GERMANY
    completion = llm.complete("Hello there")
    assert completion.text == "This is a simulated answer to: Hello there"
    assert simulator.stats()["requests_total"] == 3


async def test_llama_index_async_paths(simulator: Simulator, ahttp: HttpClients) -> None:
    llm = li_llm(simulator, ahttp, aio=True)
    messages = [ChatMessage(role="user", content="Hello there")]
    reply = await llm.achat(messages)
    parts = [r.delta or "" async for r in await llm.astream_chat(messages)]
    assert reply.message.content == "".join(parts)
    vectors = await li_embedding(simulator, ahttp, aio=True).aget_text_embedding_batch(TEXTS)
    assert len(vectors) == len(TEXTS) and len(vectors[0]) == 1536


def test_llama_index_tool_call(simulator: Simulator, http: HttpClients) -> None:
    def multiply(a: int, b: int) -> int:
        """Multiply two integers."""
        return a * b

    llm = li_llm(simulator, http)
    response = llm.chat_with_tools([FunctionTool.from_defaults(fn=multiply)], user_msg="2 x 3?")
    (call,) = llm.get_tool_calls_from_response(response)
    assert call.tool_name == "multiply"
    assert call.tool_kwargs == {"a": 1, "b": 1}
    raw = response.message.additional_kwargs["tool_calls"][0]
    assert json.loads(raw.function.arguments) == {"a": 1, "b": 1}


def test_llama_index_429_and_errors(simulator_factory: SimulatorFactory, http: HttpClients) -> None:
    limited = simulator_factory(rate_limit_rate=1.0, retry_after_s=0.5)
    with pytest.raises(openai.RateLimitError) as caught:
        li_llm(limited, http).complete("hi")
    assert caught.value.response.headers["retry-after"] == "0.5"
    failing = simulator_factory(error_rate=1.0)
    with pytest.raises(openai.InternalServerError):
        li_embedding(failing, http).get_text_embedding("x")
    assert limited.stats()["requests_total"] == 1 and failing.stats()["requests_total"] == 1
