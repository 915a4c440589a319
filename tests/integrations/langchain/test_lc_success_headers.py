"""Rate-limit headers of *successful* answers feed the gate on the wrapper paths.

Against the simulator with one request of burst (``rpm=60``, ``burst_seconds=1``): the
first answer says the request budget is spent (remaining 0, reset about a second ahead).
The wrapper's gate pauses on it, so the second call waits for the reset instead of being
refused with a 429 (``retry_max_attempts=1``: a 429 would be an error). The real
ChatAnthropic / AzureChatOpenAI / ChatOpenAI classes talk through the pooled factories.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from langchain_anthropic import ChatAnthropic
from rag_perf_plugins.langchain import (
    PerfChatModel,
    PerfEmbeddings,
    pooled_azure_chat_openai,
    pooled_azure_openai_embeddings,
    pooled_chat_anthropic,
    pooled_chat_openai,
)

from rag_perf_plugins.admission import get_scope_gate
from rag_perf_plugins.config import PerformanceConfig
from rag_perf_plugins.simulator import Simulator
from rag_perf_plugins.simulator.testing import SimulatorFactory
from tests.integrations.provider_sim import API_VERSION, CLAUDE, headers_config, root


def setup(tmp_path: Path) -> tuple[PerformanceConfig, str]:
    return headers_config(tmp_path, "success-headers")


def model(kind: str, sim: Simulator, config: PerformanceConfig) -> Any:
    if kind == "anthropic":
        return pooled_chat_anthropic(
            base_url=root(sim), config=config, model=CLAUDE, api_key="sk-ant-test"
        )
    if kind == "azure":
        return pooled_azure_chat_openai(
            azure_endpoint=root(sim),
            config=config,
            azure_deployment="chat",
            api_version=API_VERSION,
            api_key="az-test",
        )
    return pooled_chat_openai(
        base_url=sim.base_url, config=config, model="gpt-4o-mini", api_key="sk-test"
    )


@pytest.mark.parametrize("kind", ["anthropic", "azure", "openai"])
@pytest.mark.parametrize("mode", ["invoke", "ainvoke", "stream", "astream"])
def test_spent_budget_on_a_success_pauses_the_gate_and_the_next_call_waits(
    simulator_factory: SimulatorFactory, tmp_path: Path, kind: str, mode: str
) -> None:
    sim = simulator_factory(rpm=60, burst_seconds=1.0)
    config, scope = setup(tmp_path)
    chat = PerfChatModel(model(kind, sim, config), config)
    gate = get_scope_gate(scope, config=config)

    def call(question: str) -> str:
        if mode == "invoke":
            return str(chat.invoke(question).content)
        if mode == "stream":
            return "".join(str(c.content) for c in chat.stream(question))

        async def run() -> str:
            if mode == "ainvoke":
                return str((await chat.ainvoke(question)).content)
            return "".join([str(c.content) async for c in chat.astream(question)])

        return asyncio.run(run())

    assert call("What is the capital of France?")
    stats = gate.stats()
    assert stats["pauses"] == 1  # remaining 0 with a reset ahead, read from a success
    assert stats["paused_for_s"] > 0
    assert call("What is the capital of Germany?")  # waited for the reset: no 429
    assert sim.stats()["rate_limited_total"] == 0
    assert sim.stats()["requests_total"] == 2


def test_azure_embeddings_success_headers_pause_the_gate(
    simulator_factory: SimulatorFactory, tmp_path: Path
) -> None:
    sim = simulator_factory(rpm=60, burst_seconds=1.0)
    config, scope = setup(tmp_path)
    inner = pooled_azure_openai_embeddings(
        azure_endpoint=root(sim),
        config=config,
        azure_deployment="embed",
        api_version=API_VERSION,
        api_key="az-test",
    )
    embeddings = PerfEmbeddings(inner, config, batching=False)
    embeddings.embed_query("first")
    assert get_scope_gate(scope, config=config).stats()["pauses"] == 1
    embeddings.embed_query("second")
    assert asyncio.run(embeddings.aembed_query("third"))
    assert sim.stats()["rate_limited_total"] == 0


def test_azure_minus_one_does_not_pause(
    simulator_factory: SimulatorFactory, tmp_path: Path
) -> None:
    sim = simulator_factory()  # no limit: Azure sends remaining -1, reset 0
    config, scope = setup(tmp_path)
    chat = PerfChatModel(model("azure", sim, config), config)
    for _ in range(3):
        chat.invoke("What is the capital of France?")
    stats = get_scope_gate(scope, config=config).stats()
    assert stats["pauses"] == 0 and stats["paused_for_s"] == 0


def test_a_budget_left_does_not_pause(simulator_factory: SimulatorFactory, tmp_path: Path) -> None:
    sim = simulator_factory(rpm=6000, burst_seconds=1.0)  # 100 requests of burst
    config, scope = setup(tmp_path)
    chat = PerfChatModel(model("anthropic", sim, config), config)
    chat.invoke("What is the capital of France?")
    assert get_scope_gate(scope, config=config).stats()["pauses"] == 0


def test_an_unpooled_sdk_client_is_not_observed(
    simulator_factory: SimulatorFactory, tmp_path: Path
) -> None:
    sim = simulator_factory(rpm=60, burst_seconds=1.0)
    config, scope = setup(tmp_path)
    plain = ChatAnthropic(model=CLAUDE, api_key="sk-ant-test", base_url=root(sim), max_retries=0)
    chat = PerfChatModel(plain, config)
    assert chat.invoke("What is the capital of France?").content
    stats = get_scope_gate(scope, config=config).stats()
    assert stats["admitted"] == 1 and stats["pauses"] == 0  # its headers are not seen
