"""Dollar budgets through the real framework clients: refused calls never reach the
simulator; the tenant comes from cost_scope, LangChain metadata or a LlamaIndex keyword;
four processes share one $1.00/min budget through Redis without passing it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import HumanMessage
from llama_index.core.llms import ChatMessage
from rag_perf_plugins.langchain import (
    PerfChatModel,
    PerfEmbeddings,
    pooled_chat_openai,
    pooled_openai_embeddings,
)
from rag_perf_plugins.llama_index import pooled_openai_llm, wrap_llm

from rag_perf_plugins.admission import AdmissionGate
from rag_perf_plugins.admission.spend import LocalSpendStore
from rag_perf_plugins.config import PerformanceConfig
from rag_perf_plugins.cost import cost_scope
from rag_perf_plugins.errors import BudgetExceeded
from rag_perf_plugins.simulator import Simulator
from rag_perf_plugins.tracking import NULL_TRACKER

WORKER = Path(__file__).resolve().parent / "budget_worker.py"
# USD per 1,000,000 tokens, written here: a token costs a quarter of a tenth of a cent.
RATE = 250.0
PRICE = {"input": RATE, "output": RATE, "as_of": "2026-12-01", "source": "this test"}


def price_file(tmp_path: Path) -> str:
    path = tmp_path / "prices.json"
    path.write_text(json.dumps({"models": {"gpt-4o-mini": PRICE}}))
    return str(path)


def chat_requests(sim: Simulator) -> int:
    return int(sim.stats()["requests_by_endpoint"].get("/v1/chat/completions", 0))


def spent(sim: Simulator) -> float:
    counters = sim.stats()["tokens_by_model"].get("gpt-4o-mini")
    if counters is None:
        return 0.0
    tokens_in, tokens_out = int(counters["prompt"]), int(counters["completion"])
    return (tokens_in + tokens_out) * RATE / 1e6


def test_refused_calls_never_reach_the_provider_and_scopes_come_from_each_framework(
    simulator: Simulator, tmp_path: Path
) -> None:
    config = PerformanceConfig(
        enable_caching=False,
        price_table_path=price_file(tmp_path),
        budget_usd_per_minute=0.1,
        budget_scopes="tenant",
    )
    gate = AdmissionGate(
        config, key="sim/gpt-4o-mini/k-test", tracker=NULL_TRACKER, spend_store=LocalSpendStore()
    )
    lc = PerfChatModel(
        pooled_chat_openai(
            model="gpt-4o-mini",
            base_url=simulator.base_url,
            api_key="sk-test",
            temperature=0,
            max_tokens=40,
        ),
        config,
        gate=gate,
    )
    admitted = refused = 0
    with cost_scope("tenant-a"):
        for i in range(20):
            try:
                lc.invoke([HumanMessage(f"Question: how much is {i}?")])
                admitted += 1
            except BudgetExceeded as exc:
                refused += 1
                assert exc.scope == "tenant:tenant-a" and exc.window == "minute"
    assert admitted and refused and admitted + refused == 20
    assert chat_requests(simulator) == admitted  # no refused call reached the simulator
    assert spent(simulator) <= 0.1
    # Another tenant through LangChain's config metadata: its own budget.
    answer = lc.invoke(
        [HumanMessage("Question: and now?")],
        config={"metadata": {"rag_perf": {"cost_scope": "tenant-b"}}},
    )
    assert answer.content and chat_requests(simulator) == admitted + 1
    # LlamaIndex: the cost_scope keyword; tenant-a is still over, tenant-c is not.
    li = wrap_llm(
        pooled_openai_llm(
            model="gpt-4o-mini", api_base=simulator.base_url, api_key="sk-test", max_tokens=40
        ),
        config,
        gate=gate,
    )
    with pytest.raises(BudgetExceeded):
        li.chat([ChatMessage(role="user", content="Question: one more?")], cost_scope="tenant-a")
    li.chat([ChatMessage(role="user", content="Question: one more?")], cost_scope="tenant-c")
    assert chat_requests(simulator) == admitted + 2


def test_embedding_calls_count_against_the_budget_too(simulator: Simulator, tmp_path: Path) -> None:
    path = tmp_path / "prices.json"
    entry = {"embedding": 20_000.0, "as_of": "2026-12-01", "source": "this test"}
    path.write_text(json.dumps({"models": {"text-embedding-3-small": entry}}))
    config = PerformanceConfig(
        enable_caching=False,
        price_table_path=str(path),
        budget_usd_per_minute=0.2,
        budget_scopes="tenant",
    )
    gate = AdmissionGate(
        config, key="sim/emb/k", tracker=NULL_TRACKER, spend_store=LocalSpendStore()
    )
    emb = PerfEmbeddings(
        pooled_openai_embeddings(
            model="text-embedding-3-small", base_url=simulator.base_url, api_key="sk-test"
        ),
        config,
        gate=gate,
        batching=False,
    )
    sent = refused = 0
    with cost_scope("tenant-e"):
        for i in range(10):  # about 3 tokens, $0.06, each
            try:
                emb.embed_query(f"passage number {i}")
                sent += 1
            except BudgetExceeded as exc:
                refused += 1
                assert exc.scope == "tenant:tenant-e"
    requests = int(simulator.stats()["requests_by_endpoint"].get("/v1/embeddings", 0))
    assert sent and refused and requests == sent
    tokens = simulator.stats()["tokens_by_model"]["text-embedding-3-small"]["embedding"]
    assert tokens * 20_000.0 / 1e6 <= 0.2


def test_four_processes_share_one_dollar_a_minute_through_redis(
    simulator: Simulator, redis_url: str, tmp_path: Path
) -> None:
    prices = price_file(tmp_path)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            [str(WORKER.parents[2]), str(WORKER.parents[2] / "integrations")]
        ),
    }
    workers = [
        subprocess.Popen(
            [sys.executable, str(WORKER), simulator.base_url, redis_url, prices, str(seed)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for seed in range(4)
    ]
    reports: list[dict[str, Any]] = []
    for worker in workers:
        out, err = worker.communicate(timeout=120)
        assert worker.returncode == 0, err
        reports.append(json.loads(out.strip().splitlines()[-1]))
    admitted = sum(r["admitted"] for r in reports)
    refused = sum(r["refused"] for r in reports)
    assert sum(r["other_errors"] for r in reports) == 0
    assert admitted + refused == sum(r["calls"] for r in reports) and refused > 0 and admitted > 0
    assert chat_requests(simulator) == admitted  # every refused call stopped before the provider
    largest_estimate = max(r["largest_estimate_usd"] for r in reports)
    total = spent(simulator)  # one window: the workers' clock is pinned to one minute
    print(f"4 processes: {admitted} admitted, {refused} refused, ${total:.4f} spent of $1.00")
    assert total <= 1.00 + largest_estimate
    assert total <= 1.00  # estimates bound the actual cost, so the limit itself holds
    assert total > 0.5  # and the budget was used, not refused from the start
