"""wrap_llm(OpenAI) sends the simulator the same request bodies as the unwrapped model.

Every public method that reaches the provider — chat / complete (sync, async, streaming),
predict (sync, async, streaming), structured output, as_structured_llm, tool calling
(chat_with_tools and its async/streaming forms, predict_and_call sync and async): the
bodies the provider receives (read by an httpx event hook on the real OpenAI SDK client)
must be equal wrapped and unwrapped, and so must the answers.
``test_every_public_method_is_classified`` enumerates the public methods so a new one
cannot be left out silently.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from llama_index.core.base.llms.types import ChatMessage
from llama_index.core.llms.function_calling import FunctionCallingLLM
from llama_index.core.prompts import PromptTemplate
from llama_index.core.tools import FunctionTool
from llama_index.llms.openai import OpenAI
from pydantic import BaseModel
from rag_perf_plugins.llama_index import wrap_llm
from rag_perf_plugins.llama_index.llms import PerfFunctionCallingLLM

from rag_perf_plugins.config import PerformanceConfig
from rag_perf_plugins.simulator import Simulator

PROMPT = PromptTemplate("Name a city in {country} and its population.")
TEXT = "Name a city in France and its population."
MESSAGES = [ChatMessage(role="user", content=TEXT)]
ADD = "What is 2 + 3?"


class City(BaseModel):
    name: str
    population: int


def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@pytest.fixture
def bodies() -> list[dict[str, Any]]:
    return []


@pytest.fixture
async def make(
    simulator: Simulator, bodies: list[dict[str, Any]]
) -> AsyncIterator[Callable[[], OpenAI]]:
    clients: list[Any] = []

    def record(request: httpx.Request) -> None:
        if request.url.path.endswith("/completions"):
            bodies.append(json.loads(request.content))

    async def arecord(request: httpx.Request) -> None:
        record(request)

    def build() -> OpenAI:
        sync = httpx.Client(event_hooks={"request": [record]})
        aio = httpx.AsyncClient(event_hooks={"request": [arecord]})
        clients.extend([sync, aio])
        return OpenAI(
            model="gpt-4o-mini", api_base=simulator.base_url, api_key="sk-test", max_retries=0,
            http_client=sync, async_http_client=aio,
        )  # fmt: skip

    yield build
    for client in clients:
        if isinstance(client, httpx.Client):
            client.close()
        else:
            await client.aclose()


def _config(tmp_path: Path) -> PerformanceConfig:
    return PerformanceConfig(cache_dir=str(tmp_path / "cache"), enable_metrics=False)


async def _run(llm: Any, how: str) -> Any:
    if how == "structured_predict":
        return llm.structured_predict(City, PROMPT, country="France")
    if how == "astructured_predict":
        return await llm.astructured_predict(City, PROMPT, country="France")
    if how == "stream_structured_predict":
        return list(llm.stream_structured_predict(City, PROMPT, country="France"))[-1]
    if how == "astream_structured_predict":
        last = None
        async for item in await llm.astream_structured_predict(City, PROMPT, country="France"):
            last = item
        return last
    if how == "predict_and_call":
        tool = FunctionTool.from_defaults(fn=add)
        return str(llm.predict_and_call([tool], "What is 2 + 3?"))
    if how == "chat_with_tools":
        tool = FunctionTool.from_defaults(fn=add)
        response = await llm.achat_with_tools([tool], "What is 2 + 3?", tool_required=True)
        return str(response.message.additional_kwargs.get("tool_calls"))
    if how == "predict":
        return llm.predict(PROMPT, country="France")
    if how == "apredict":
        return await llm.apredict(PROMPT, country="France")
    if how == "stream":
        return "".join(llm.stream(PROMPT, country="France"))
    if how == "astream":
        return "".join([t async for t in await llm.astream(PROMPT, country="France")])
    if how == "complete":
        return llm.complete(TEXT).text
    if how == "acomplete":
        return (await llm.acomplete(TEXT)).text
    if how == "stream_complete":
        return [(r.text, r.delta) for r in llm.stream_complete(TEXT)]
    if how == "astream_complete":
        return [(r.text, r.delta) async for r in await llm.astream_complete(TEXT)]
    if how == "chat":
        return str(llm.chat(MESSAGES).message.content)
    if how == "achat":
        return str((await llm.achat(MESSAGES)).message.content)
    if how == "stream_chat":
        return [(r.message.content, r.delta) for r in llm.stream_chat(MESSAGES)]
    if how == "astream_chat":
        return [(r.message.content, r.delta) async for r in await llm.astream_chat(MESSAGES)]
    if how == "as_structured_llm":
        return llm.as_structured_llm(City).chat(MESSAGES).raw.model_dump()
    if how == "sync_chat_with_tools":
        tool = FunctionTool.from_defaults(fn=add)
        response = llm.chat_with_tools([tool], ADD, tool_required=True)
        return str(response.message.additional_kwargs.get("tool_calls"))
    if how == "stream_chat_with_tools":
        tool = FunctionTool.from_defaults(fn=add)
        last = list(llm.stream_chat_with_tools([tool], ADD, tool_required=True))[-1]
        return str(last.message.additional_kwargs.get("tool_calls"))
    if how == "astream_chat_with_tools":
        tool = FunctionTool.from_defaults(fn=add)
        gen = await llm.astream_chat_with_tools([tool], ADD, tool_required=True)
        items = [r async for r in gen]
        return str(items[-1].message.additional_kwargs.get("tool_calls"))
    if how == "apredict_and_call":
        tool = FunctionTool.from_defaults(fn=add)
        return str(await llm.apredict_and_call([tool], ADD))
    raise ValueError(how)


HOWS = [
    "structured_predict",
    "astructured_predict",
    "stream_structured_predict",
    "astream_structured_predict",
    "predict_and_call",
    "chat_with_tools",
    "predict",
    "apredict",
    "stream",
    "astream",
    "complete",
    "acomplete",
    "stream_complete",
    "astream_complete",
    "chat",
    "achat",
    "stream_chat",
    "astream_chat",
    "as_structured_llm",
    "sync_chat_with_tools",
    "stream_chat_with_tools",
    "astream_chat_with_tools",
    "apredict_and_call",
]


def _comparable(body: dict[str, Any]) -> dict[str, Any]:
    return body


@pytest.mark.parametrize("how", HOWS)
async def test_the_provider_receives_the_same_request(
    how: str, make: Callable[[], OpenAI], bodies: list[dict[str, Any]], tmp_path: Path
) -> None:
    plain = await _run(make(), how)
    unwrapped = [_comparable(b) for b in bodies]
    bodies.clear()
    wrapped_llm = wrap_llm(make(), _config(tmp_path))
    wrapped = await _run(wrapped_llm, how)
    assert [_comparable(b) for b in bodies] == unwrapped
    assert wrapped == plain
    if how.endswith("structured_predict"):
        assert unwrapped[0]["response_format"]["type"] == "json_schema"
        assert unwrapped[0]["response_format"]["json_schema"]["strict"] is True
        assert "tools" not in unwrapped[0]
    # The second identical call is answered from the cache: no request.
    bodies.clear()
    again = await _run(wrapped_llm, how)
    assert again == plain and bodies == []


# Public methods of the wrapper that never reach the provider themselves.
NO_REQUEST = {
    "check_callback_manager": "pydantic validator",
    "check_prompts": "pydantic validator",
    "class_name": "the class's name",
    "convert_chat_messages": "converts messages locally",
    "custom_model_dump": "serialises the model",
    "from_dict": "builds a model from a dict",
    "from_json": "builds a model from JSON",
    "get_tool_calls_from_response": "parses a response already received",
    "set_completion_to_prompt": "pydantic validator",
    "set_messages_to_prompt": "pydantic validator",
    "to_dict": "serialises the model",
    "to_json": "serialises the model",
    "to_payload": "serialises the model",
}
# HOWS entries whose name differs from the method they call.
_METHOD = {"chat_with_tools": "achat_with_tools", "sync_chat_with_tools": "chat_with_tools"}


def _public_methods(cls: type) -> set[str]:
    return {
        name
        for name in dir(cls)
        if not name.startswith("_")
        and name not in dir(BaseModel)
        and callable(getattr(cls, name, None))
    }


def test_every_public_method_is_classified() -> None:
    """A public method added by LlamaIndex (or by us) must join HOWS or NO_REQUEST."""
    covered = {_METHOD.get(how, how) for how in HOWS}
    found = _public_methods(PerfFunctionCallingLLM) | _public_methods(FunctionCallingLLM)
    assert found - covered - set(NO_REQUEST) == set()
    assert (covered | set(NO_REQUEST)) - found == set()
