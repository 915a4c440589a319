"""Rate-limit headers of *successful* answers feed the gate on the LlamaIndex wrappers.

The twin of tests/integrations/langchain/test_lc_success_headers.py over LlamaIndex's real
``Anthropic``, ``AzureOpenAI`` and ``AzureOpenAIEmbedding`` (pooled factories): the
simulator allows one request of burst (``rpm=60``), so the first answer says the budget
is spent; the gate pauses on it and the second call waits for the reset instead of
drawing a 429 (``retry_max_attempts=1``: a 429 would be an error).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from llama_index.core.llms import ChatMessage
from rag_perf_plugins.llama_index import (
    PerfEmbedding,
    pooled_anthropic_llm,
    pooled_azure_openai_embedding,
    pooled_azure_openai_llm,
    wrap_llm,
)

from rag_perf_plugins.admission import get_scope_gate
from rag_perf_plugins.config import PerformanceConfig
from rag_perf_plugins.simulator import Simulator
from rag_perf_plugins.simulator.testing import SimulatorFactory
from tests.integrations.provider_sim import API_VERSION, headers_config, root


def setup(tmp_path: Path) -> tuple[PerformanceConfig, str]:
    return headers_config(tmp_path, "li-success-headers")


def llm(kind: str, sim: Simulator, config: PerformanceConfig) -> Any:
    if kind == "anthropic":
        inner: Any = pooled_anthropic_llm(
            base_url=root(sim), config=config, api_key="sk-ant-test", max_tokens=256
        )
    else:
        inner = pooled_azure_openai_llm(
            engine="chat",
            azure_endpoint=root(sim),
            api_version=API_VERSION,
            api_key="az-test",
            config=config,
        )
    return wrap_llm(inner, config)


@pytest.mark.parametrize("kind", ["anthropic", "azure"])
@pytest.mark.parametrize("mode", ["chat", "stream_chat", "astream_chat"])
def test_spent_budget_on_a_success_pauses_the_gate_and_the_next_call_waits(
    simulator_factory: SimulatorFactory, tmp_path: Path, kind: str, mode: str
) -> None:
    sim = simulator_factory(rpm=60, burst_seconds=1.0)
    config, scope = setup(tmp_path)
    wrapped = llm(kind, sim, config)
    gate = get_scope_gate(scope, config=config)

    def call(question: str) -> str:
        messages = [ChatMessage(role="user", content=question)]
        if mode == "chat":
            return str(wrapped.chat(messages).message.content)
        if mode == "stream_chat":
            return "".join(r.delta or "" for r in wrapped.stream_chat(messages))

        async def run() -> str:
            return "".join([r.delta or "" async for r in await wrapped.astream_chat(messages)])

        return asyncio.run(run())

    assert call("What is the capital of France?")
    stats = gate.stats()
    assert stats["pauses"] == 1 and stats["paused_for_s"] > 0
    assert call("What is the capital of Germany?")  # waited for the reset: no 429
    assert sim.stats()["rate_limited_total"] == 0
    assert sim.stats()["requests_total"] == 2


def test_azure_embedding_success_headers_pause_the_gate(
    simulator_factory: SimulatorFactory, tmp_path: Path
) -> None:
    sim = simulator_factory(rpm=60, burst_seconds=1.0)
    config, scope = setup(tmp_path)
    inner = pooled_azure_openai_embedding(
        azure_deployment="embed",
        azure_endpoint=root(sim),
        api_version=API_VERSION,
        api_key="az-test",
        config=config,
    )
    embedding = PerfEmbedding(inner, config)
    embedding.get_text_embedding("first")
    assert get_scope_gate(scope, config=config).stats()["pauses"] == 1
    embedding.get_text_embedding("second")
    assert sim.stats()["rate_limited_total"] == 0
