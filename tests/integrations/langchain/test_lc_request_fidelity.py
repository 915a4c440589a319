"""PerfChatModel sends the simulator the same request bodies as the ChatOpenAI it wraps.

Every public method that reaches the provider — invoke / ainvoke / stream / astream,
batch / abatch (and their as_completed forms), generate / agenerate (and the _prompt
forms), transform / atransform, stream_events / astream_events / astream_log, tools
(bind_tools, tool_choice) and structured output (json_schema, function_calling,
json_mode): the bodies the provider receives (read by an httpx event hook on the real
OpenAI SDK clients) and the answers must be equal wrapped and unwrapped; the second
identical call sends nothing. ``test_every_public_method_is_classified`` enumerates the
public methods so a new one cannot be left out silently.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.outputs import LLMResult
from langchain_core.prompt_values import StringPromptValue
from langchain_openai import ChatOpenAI
from pydantic import BaseModel
from rag_perf_plugins.langchain import PerfChatModel

from rag_perf_plugins.config import PerformanceConfig
from rag_perf_plugins.simulator import Simulator

QUESTION = "Name a city in France and its population."
OTHER = "Name a city in Italy and its population."


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
    if isinstance(value, LLMResult):
        # token_usage is the miss's own (a hit reports none: it cost nothing); it is
        # compared on the miss in the test.
        output = {k: v for k, v in (value.llm_output or {}).items() if k != "token_usage"}
        return ([[g.text for g in gens] for gens in value.generations], output)
    if isinstance(value, BaseModel):
        return value.model_dump()
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _streamed(events: list[dict[str, Any]]) -> str:
    return "".join(
        str(e["data"]["chunk"].content) for e in events if e["event"] == "on_chat_model_stream"
    )


async def _run(llm: Any, how: str) -> Any:
    if how == "invoke":
        return llm.invoke(QUESTION)
    if how == "ainvoke":
        return await llm.ainvoke(QUESTION)
    if how == "stream":
        return "".join(str(c.content) for c in llm.stream(QUESTION))
    if how == "astream":
        return "".join([str(c.content) async for c in llm.astream(QUESTION)])
    if how == "batch":
        return llm.batch([QUESTION, OTHER])
    if how == "abatch":
        return await llm.abatch([QUESTION, OTHER])
    if how == "batch_as_completed":
        return sorted((i, str(m.content)) for i, m in llm.batch_as_completed([QUESTION, OTHER]))
    if how == "abatch_as_completed":
        done = [(i, str(m.content)) async for i, m in llm.abatch_as_completed([QUESTION, OTHER])]
        return sorted(done)
    if how == "generate":
        return llm.generate([[HumanMessage(QUESTION)], [HumanMessage(OTHER)]])
    if how == "agenerate":
        return await llm.agenerate([[HumanMessage(QUESTION)], [HumanMessage(OTHER)]])
    if how == "generate_prompt":
        return llm.generate_prompt([StringPromptValue(text=QUESTION)])
    if how == "agenerate_prompt":
        return await llm.agenerate_prompt([StringPromptValue(text=QUESTION)])
    if how == "transform":
        return "".join(str(c.content) for c in llm.transform(iter([QUESTION])))
    if how == "atransform":

        async def one() -> AsyncIterator[str]:
            yield QUESTION

        return "".join([str(c.content) async for c in llm.atransform(one())])
    if how == "stream_events":  # sync stream_events is v3 only
        return str(llm.stream_events(QUESTION, version="v3").output.content)
    if how == "astream_events":
        return _streamed([e async for e in llm.astream_events(QUESTION, version="v2")])
    if how == "astream_log":
        logs = [p async for p in llm.astream_log(QUESTION, diff=False)]
        return str(logs[-1].state["final_output"].content)
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
    "batch",
    "abatch",
    "batch_as_completed",
    "abatch_as_completed",
    "generate",
    "agenerate",
    "generate_prompt",
    "agenerate_prompt",
    "transform",
    "atransform",
    "stream_events",
    "astream_events",
    "astream_log",
    "bind_tools",
    "structured:json_schema",
    "structured:function_calling",
    "structured:json_mode",
]


# langchain-openai's generate() sums usage across results and warns on the SDK's None
# token-detail fields (unwrapped exactly as wrapped).
@pytest.mark.filterwarnings("ignore:Unexpected type for token usage:UserWarning")
@pytest.mark.filterwarnings("ignore:astream_log is deprecated")
@pytest.mark.filterwarnings("ignore::langchain_core._api.beta_decorator.LangChainBetaWarning")
@pytest.mark.parametrize("how", HOWS)
async def test_the_provider_receives_the_same_request(
    how: str, make: Callable[[], ChatOpenAI], bodies: list[dict[str, Any]], tmp_path: Path
) -> None:
    raw = await _run(make(), how)
    plain = _plain(raw)
    unwrapped = list(bodies)
    bodies.clear()
    config = PerformanceConfig(cache_dir=str(tmp_path / "cache"), enable_metrics=False)
    wrapped_llm = PerfChatModel(make(), config)
    wrapped_raw = await _run(wrapped_llm, how)
    assert _plain(wrapped_raw) == plain
    if isinstance(raw, LLMResult):  # generate's llm_output, token usage included
        assert wrapped_raw.llm_output == raw.llm_output
    # batch/generate send two requests, possibly in either order (worker threads/tasks).
    assert _sorted(bodies) == _sorted(unwrapped) and len(unwrapped) == _REQUESTS.get(how, 1)
    bodies.clear()
    assert _plain(await _run(wrapped_llm, how)) == plain
    assert bodies == []


_REQUESTS = {h: 2 for h in ("batch", "abatch", "batch_as_completed", "abatch_as_completed")}
_REQUESTS |= {"generate": 2, "agenerate": 2}


def _sorted(found: list[dict[str, Any]]) -> list[str]:
    return sorted(json.dumps(b, sort_keys=True) for b in found)


# Public methods of PerfChatModel that never reach the provider themselves: they build
# runnables (whose calls go through invoke/stream, covered above), describe the model, or
# count tokens locally.
NO_REQUEST = {
    "as_tool": "builds a tool whose calls go through invoke",
    "asdict": "serialises the model's fields",
    "assign": "builds a runnable; calls go through invoke",
    "bind": "builds a runnable; calls go through invoke",
    "config_schema": "describes the config",
    "configurable_alternatives": "builds a runnable; calls go through invoke",
    "configurable_fields": "builds a runnable; calls go through invoke",
    "get_config_jsonschema": "describes the config",
    "get_graph": "describes the runnable",
    "get_input_jsonschema": "describes the input",
    "get_input_schema": "describes the input",
    "get_lc_namespace": "serialisation namespace",
    "get_name": "the runnable's name",
    "get_num_tokens": "counts tokens locally",
    "get_num_tokens_from_messages": "counts tokens locally",
    "get_output_jsonschema": "describes the output",
    "get_output_schema": "describes the output",
    "get_prompts": "returns prompts of a chain; none here",
    "get_token_ids": "tokenises locally",
    "is_lc_serializable": "serialisation flag",
    "lc_id": "serialisation id",
    "map": "builds a runnable; calls go through batch",
    "pick": "builds a runnable; calls go through invoke",
    "pipe": "builds a runnable; calls go through invoke",
    "set_verbose": "validator for the verbose field",
    "to_json": "serialises the model",
    "to_json_not_implemented": "serialises the model",
    "with_alisteners": "builds a runnable; calls go through invoke",
    "with_config": "builds a runnable; calls go through invoke",
    "with_fallbacks": "builds a runnable; calls go through invoke",
    "with_listeners": "builds a runnable; calls go through invoke",
    "with_retry": "builds a runnable; calls go through invoke",
    "with_types": "builds a runnable; calls go through invoke",
}


def _public_methods(cls: type) -> set[str]:
    return {
        name
        for name in dir(cls)
        if not name.startswith("_")
        and name not in dir(BaseModel)
        and callable(getattr(cls, name, None))
    }


def test_every_public_method_is_classified() -> None:
    """A public method added by LangChain (or by us) must join HOWS or NO_REQUEST."""
    covered = {how.split(":", 1)[0].replace("structured", "with_structured_output") for how in HOWS}
    found = _public_methods(PerfChatModel) | _public_methods(BaseChatModel)
    assert found - covered - set(NO_REQUEST) == set()
    assert (covered | set(NO_REQUEST)) - found == set()
