"""wrap_llm(OpenAI) sends the simulator the same request bodies as the unwrapped model.

Structured output, tool calling and plain calls, sync, async and streaming: the bodies the
provider receives (read by an httpx event hook on the real OpenAI SDK client) must be equal
wrapped and unwrapped, and so must the answers.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from llama_index.core.prompts import PromptTemplate
from llama_index.core.tools import FunctionTool
from llama_index.llms.openai import OpenAI
from pydantic import BaseModel
from rag_perf_plugins.llama_index import wrap_llm

from rag_perf_plugins.config import PerformanceConfig
from rag_perf_plugins.simulator import Simulator

PROMPT = PromptTemplate("Name a city in {country} and its population.")


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
        if request.url.path.endswith("/chat/completions"):
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
    raise ValueError(how)


HOWS = [
    "structured_predict",
    "astructured_predict",
    "stream_structured_predict",
    "astream_structured_predict",
    "predict_and_call",
    "chat_with_tools",
    "predict",
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
