"""Anthropic's Messages API and Azure OpenAI's routes of the simulator, through the real SDKs."""

from __future__ import annotations

import contextlib
from typing import Any

import anthropic
import openai
import pytest

from rag_perf_plugins._clock import FakeClock
from rag_perf_plugins.simulator import Simulator, SimulatorOptions
from rag_perf_plugins.simulator.testing import SimulatorFactory

CLAUDE = "claude-sonnet-4-5"
CONTEXT = "Paris is the capital of France.\n\nBerlin is the capital of Germany."
SYSTEM: list[Any] = [{"type": "text", "text": CONTEXT, "cache_control": {"type": "ephemeral"}}]
ASK: list[Any] = [{"role": "user", "content": "What is the capital of France?"}]
WEATHER: Any = {
    "name": "get_weather",
    "description": "Weather in a city.",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}


def root(sim: Simulator) -> str:
    return sim.base_url.removesuffix("/v1")


def claude(sim: Simulator) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=root(sim), api_key="sk-ant-test", max_retries=0)


def azure(sim: Simulator) -> openai.AzureOpenAI:
    return openai.AzureOpenAI(
        azure_endpoint=root(sim), api_key="az-test", api_version="2024-10-21", max_retries=0
    )


def test_messages_answer_from_the_context_with_prompt_cache_usage(
    simulator: Simulator,
) -> None:
    with claude(simulator) as c:
        first = c.messages.create(model=CLAUDE, max_tokens=200, system=SYSTEM, messages=ASK)
        second = c.messages.create(model=CLAUDE, max_tokens=200, system=SYSTEM, messages=ASK)
    assert first.content[0].type == "text"
    assert "Paris is the capital of France." in first.content[0].text
    assert first.stop_reason == "end_turn" and first.model == CLAUDE
    assert first.usage.cache_creation_input_tokens and not first.usage.cache_read_input_tokens
    assert second.usage.cache_read_input_tokens == first.usage.cache_creation_input_tokens
    assert second.usage.cache_creation_input_tokens == 0
    assert second.usage.input_tokens == first.usage.input_tokens


def test_messages_max_tokens_is_required_and_cuts(simulator: Simulator) -> None:
    with claude(simulator) as c:
        with pytest.raises(anthropic.BadRequestError) as caught:
            c.post("/v1/messages", body={"model": CLAUDE, "messages": ASK}, cast_to=object)
        assert "max_tokens" in str(caught.value)
        cut = c.messages.create(model=CLAUDE, max_tokens=2, system=SYSTEM, messages=ASK)
    assert cut.stop_reason == "max_tokens" and cut.usage.output_tokens <= 2


def test_messages_stream_and_tool_use(simulator: Simulator) -> None:
    with claude(simulator) as c:
        whole = c.messages.create(
            model=CLAUDE, max_tokens=200, system=SYSTEM, messages=ASK, extra_body={"temperature": 0}
        )
        with c.messages.stream(
            model=CLAUDE, max_tokens=200, system=SYSTEM, messages=ASK, extra_body={"temperature": 0}
        ) as stream:
            texts = list(stream.text_stream)
            streamed = stream.get_final_message()
        tool = c.messages.create(
            model=CLAUDE,
            max_tokens=200,
            messages=[{"role": "user", "content": "Weather in Paris?"}],
            tools=[WEATHER],
            tool_choice={"type": "tool", "name": "get_weather"},
        )
    assert len(texts) > 1 and "".join(texts) == whole.content[0].text  # type: ignore[union-attr]
    assert streamed.usage.output_tokens == whole.usage.output_tokens
    block = tool.content[0]
    assert tool.stop_reason == "tool_use" and block.type == "tool_use"
    assert block.name == "get_weather" and isinstance(block.input, dict)
    assert set(block.input) == {"city"}


def test_messages_529_overloaded_and_429_in_anthropic_shape(
    simulator_factory: SimulatorFactory, fake_clock: FakeClock
) -> None:
    sim = simulator_factory(overload_rate=1.0)
    with claude(sim) as c, pytest.raises(anthropic.APIStatusError) as caught:
        c.messages.create(model=CLAUDE, max_tokens=50, messages=ASK)
    assert caught.value.status_code == 529
    assert caught.value.body == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "Overloaded"},
    }
    limited = simulator_factory(rpm=60, burst_seconds=1.0, clock=fake_clock)
    with claude(limited) as c:
        ok = c.messages.with_raw_response.create(model=CLAUDE, max_tokens=50, messages=ASK)
        assert ok.headers["anthropic-ratelimit-requests-limit"] == "60"
        assert ok.headers["anthropic-ratelimit-requests-remaining"] == "0"
        assert ok.headers["anthropic-ratelimit-requests-reset"].endswith("Z")
        with pytest.raises(anthropic.RateLimitError) as limit:
            c.messages.create(model=CLAUDE, max_tokens=50, messages=ASK)
    assert limit.value.response.headers["retry-after"] == "1"
    assert limit.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]


def test_azure_routes_need_api_version_and_send_azure_headers(
    simulator_factory: SimulatorFactory,
) -> None:
    sim = simulator_factory(tpm=600_000)
    with azure(sim) as c:
        answer = c.chat.completions.with_raw_response.create(
            model="chat-deployment",
            messages=[{"role": "system", "content": CONTEXT}, *ASK],
            temperature=0,
        )
        vectors = c.embeddings.create(model="emb-deployment", input=["a", "b"])
    headers = answer.headers
    assert "Paris" in (answer.parse().choices[0].message.content or "")
    assert answer.parse().model == "chat-deployment"
    # No RPM limit set: Azure's "unknown" values; the TPM limit is reported in seconds.
    assert headers["x-ratelimit-remaining-requests"] == "-1"
    assert headers["x-ratelimit-reset-requests"] == "0"
    assert int(headers["x-ratelimit-remaining-tokens"]) > 0
    assert len(vectors.data) == 2
    bare = openai.OpenAI(base_url=root(sim) + "/openai/deployments/d", api_key="k", max_retries=0)
    with bare, pytest.raises(openai.NotFoundError) as caught:
        bare.embeddings.create(model="d", input=["a"])
    assert "api-version" in str(caught.value)
    assert sim.stats()["requests_by_endpoint"] == {
        "azure:chat/completions": 1,
        "azure:embeddings": 2,
    }


@pytest.mark.parametrize(("scope", "limited"), [("account", 1), ("model", 0)])
def test_limit_scope_account_or_per_model(
    simulator_factory: SimulatorFactory, fake_clock: FakeClock, scope: str, limited: int
) -> None:
    sim = simulator_factory(rpm=60, burst_seconds=1.0, clock=fake_clock, limit_scope=scope)
    with claude(sim) as c, azure(sim) as a:
        c.messages.create(model=CLAUDE, max_tokens=20, messages=ASK)
        with contextlib.suppress(openai.RateLimitError):
            a.embeddings.create(model="emb-deployment", input=["a"])
    assert sim.stats()["rate_limited_total"] == limited


def test_limit_scope_is_checked() -> None:
    with pytest.raises(ValueError, match="limit_scope must be one of account, model"):
        SimulatorOptions(limit_scope="key")
