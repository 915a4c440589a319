"""PerfChatModel sends the simulator the same request bodies as the ChatOpenAI it wraps.

invoke / ainvoke / stream / astream, tools (bind_tools, tool_choice) and structured output
(json_schema, function_calling, json_mode): the bodies the provider receives (read by an
httpx event hook on the real OpenAI SDK clients) and the answers must be equal wrapped and
unwrapped; the second identical call sends nothing.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from langchain_core.messages import AIMessage
from langchain_openai import ChatOpenAI
from pydantic import BaseModel
from rag_perf_plugins.langchain import PerfChatModel

from rag_perf_plugins.config import PerformanceConfig
from rag_perf_plugins.simulator import Simulator

QUESTION = "Name a city in France and its population."


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
) -> AsyncIterator[Callable[[], ChatOpenAI]]:
    clients: list[Any] = []

    def record(request: httpx.Request) -> None:
        if request.url.path.endswith("/chat/completions"):
            bodies.append(json.loads(request.content))

    async def arecord(request: httpx.Request) -> None:
        record(request)

    def build() -> ChatOpenAI:
        sync = httpx.Client(event_hooks={"request": [record]})
        aio = httpx.AsyncClient(event_hooks={"request": [arecord]})
        clients.extend([sync, aio])
        return ChatOpenAI(
            model="gpt-4o-mini", base_url=simulator.base_url, api_key="sk-test",
            max_retries=0, temperature=0.0, http_client=sync, http_async_client=aio,
        )  # fmt: skip

    yield build
    for client in clients:
        if isinstance(client, httpx.Client):
            client.close()
        else:
            await client.aclose()


def _plain(value: Any) -> Any:
    if isinstance(value, AIMessage):
        return (value.content, value.additional_kwargs.get("tool_calls"), value.tool_calls)
    if isinstance(value, BaseModel):
        return value.model_dump()
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


async def _run(llm: Any, how: str) -> Any:
    if how == "invoke":
        return llm.invoke(QUESTION)
    if how == "ainvoke":
        return await llm.ainvoke(QUESTION)
    if how == "stream":
        return "".join(str(c.content) for c in llm.stream(QUESTION))
    if how == "astream":
        return "".join([str(c.content) async for c in llm.astream(QUESTION)])
    if how == "bind_tools":
        return llm.bind_tools([add], tool_choice="add").invoke("What is 2 + 3?")
    if how.startswith("structured:"):
        method = how.split(":", 1)[1]
        schema: Any = City if method != "json_mode" else City.model_json_schema()
        return await llm.with_structured_output(schema, method=method).ainvoke(QUESTION)
    raise ValueError(how)


HOWS = [
    "invoke",
    "ainvoke",
    "stream",
    "astream",
    "bind_tools",
    "structured:json_schema",
    "structured:function_calling",
    "structured:json_mode",
]


@pytest.mark.parametrize("how", HOWS)
async def test_the_provider_receives_the_same_request(
    how: str, make: Callable[[], ChatOpenAI], bodies: list[dict[str, Any]], tmp_path: Path
) -> None:
    plain = _plain(await _run(make(), how))
    unwrapped = list(bodies)
    bodies.clear()
    config = PerformanceConfig(cache_dir=str(tmp_path / "cache"), enable_metrics=False)
    wrapped_llm = PerfChatModel(make(), config)
    assert _plain(await _run(wrapped_llm, how)) == plain
    assert bodies == unwrapped and len(unwrapped) == 1
    bodies.clear()
    assert _plain(await _run(wrapped_llm, how)) == plain
    assert bodies == []
