"""Dollars over the real framework clients and the simulator, at prices written here.

The ledger (the tracker's ``cost_usd`` per model) must equal the literal prices below
applied to the simulator's own token counters (prompt, cached, completion, reasoning,
embedding, per model) over 1,000 mixed calls of both frameworks: chat, streams, async
calls, reasoning-model calls and embeddings, half of them cache hits. Saved dollars must
equal the cost of the answers the hits replayed; an unknown model is unknown, warned once.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import HumanMessage, SystemMessage
from llama_index.core.llms import ChatMessage
from rag_perf_plugins.langchain import (
    PerfChatModel,
    PerfEmbeddings,
    pooled_chat_openai,
    pooled_openai_embeddings,
)
from rag_perf_plugins.llama_index import (
    PerfEmbedding,
    pooled_openai_embedding,
    pooled_openai_llm,
    wrap_llm,
)

from rag_perf_plugins.config import PerformanceConfig
from rag_perf_plugins.cost import prices
from rag_perf_plugins.simulator import Simulator
from rag_perf_plugins.tracking import PerformanceTracker

# USD per 1,000,000 tokens, written here on purpose (not read from the shipped table);
# every rate differs from the shipped one, so a price read from the wrong table shows.
PRICES: dict[str, dict[str, float]] = {
    "gpt-4o-mini": {"input": 0.41, "cached_input": 0.13, "output": 1.67},
    "o3-mini": {"input": 1.09, "cached_input": 0.57, "output": 4.43, "reasoning": 9.71},
    "text-embedding-3-small": {"embedding": 0.037},
}
# A long shared system prompt (over 1,024 tokens), so the simulator's prompt cache reports
# cached input tokens from the second question on.
SYSTEM = " ".join(f"Rule {i}: answer briefly and cite the context passage." for i in range(140))


def price_file(tmp_path: Path) -> str:
    entries = {m: {**p, "as_of": "2026-12-01", "source": "this test"} for m, p in PRICES.items()}
    path = tmp_path / "prices.json"
    path.write_text(json.dumps({"schema": "rag-perf-prices/1", "models": entries}))
    return str(path)


def expected_cost(model: str, counters: dict[str, int]) -> float:
    """The literal prices applied to the simulator's counters of one model (USD)."""
    p = PRICES[model]
    plain_in = counters["prompt"] - counters["cached"]
    plain_out = counters["completion"] - counters["reasoning"]
    return (
        plain_in * p.get("input", 0.0)
        + counters["cached"] * p.get("cached_input", p.get("input", 0.0))
        + plain_out * p.get("output", 0.0)
        + counters["reasoning"] * p.get("reasoning", p.get("output", 0.0))
        + counters["embedding"] * p.get("embedding", 0.0)
    ) / 1e6


def usage_cost(model: str, usage: dict[str, Any]) -> float:
    """The literal prices applied to one answer's usage as LangChain reports it (USD)."""
    p = PRICES[model]
    cached = int((usage.get("input_token_details") or {}).get("cache_read", 0) or 0)
    reasoning = int((usage.get("output_token_details") or {}).get("reasoning", 0) or 0)
    return (
        float(
            (usage["input_tokens"] - cached) * p["input"]
            + cached * p["cached_input"]
            + (usage["output_tokens"] - reasoning) * p["output"]
            + reasoning * p.get("reasoning", p["output"])
        )
        / 1e6
    )


@pytest.fixture(autouse=True)
def _fresh_warnings() -> None:
    prices._WARNED.clear()


async def test_ledger_matches_literal_prices_over_1000_mixed_calls(
    simulator: Simulator, tmp_path: Path
) -> None:
    config = PerformanceConfig(
        cache_dir=str(tmp_path / "cache"), price_table_path=price_file(tmp_path)
    )
    tracker = PerformanceTracker()
    url = simulator.base_url
    lc = PerfChatModel(
        pooled_chat_openai(model="gpt-4o-mini", base_url=url, api_key="sk-test", temperature=0),
        config,
        tracker=tracker,
    )
    lc_reasoning = PerfChatModel(
        pooled_chat_openai(model="o3-mini", base_url=url, api_key="sk-test", temperature=0),
        config,
        tracker=tracker,
    )
    li = wrap_llm(
        pooled_openai_llm(model="gpt-4o-mini", api_base=url, api_key="sk-test"),
        config,
        tracker=tracker,
    )
    lc_emb = PerfEmbeddings(
        pooled_openai_embeddings(model="text-embedding-3-small", base_url=url, api_key="sk-test"),
        config,
        tracker=tracker,
    )
    li_emb = PerfEmbedding(
        pooled_openai_embedding(model="text-embedding-3-small", api_base=url, api_key="sk-test"),
        config,
        tracker=tracker,
    )

    calls = 0
    replayed = 0.0  # the cost of every answer a hit replays, from the miss's own usage
    for i in range(150):  # LangChain invoke: 150 questions, each asked twice
        messages = [SystemMessage(SYSTEM), HumanMessage(f"Question: what is rule {i}?")]
        miss = lc.invoke(messages)
        hit = lc.invoke(messages)
        assert hit.response_metadata.get("cache_hit") is True
        assert miss.usage_metadata is not None
        replayed += usage_cost("gpt-4o-mini", dict(miss.usage_metadata))
        calls += 2
    for i in range(50):  # LangChain streams: usage from the final chunk
        messages = [SystemMessage(SYSTEM), HumanMessage(f"Question: stream {i}?")]
        chunks = list(lc.stream(messages))
        usage = next(c.usage_metadata for c in chunks if c.usage_metadata)
        replays = list(lc.stream(messages))
        assert replays[0].response_metadata.get("cache_hit") is True
        replayed += usage_cost("gpt-4o-mini", dict(usage))
        calls += 2
    for i in range(50):  # a reasoning model, async
        messages = [HumanMessage(f"Question: think about {i}?")]
        miss = await lc_reasoning.ainvoke(messages)
        await lc_reasoning.ainvoke(messages)
        assert miss.usage_metadata is not None
        assert miss.usage_metadata["output_token_details"]["reasoning"] > 0
        replayed += usage_cost("o3-mini", dict(miss.usage_metadata))
        calls += 2
    for i in range(100):  # LlamaIndex chat
        chat = [
            ChatMessage(role="system", content=SYSTEM),
            ChatMessage(role="user", content=f"Question: index {i}?"),
        ]
        li_miss = li.chat(chat)
        li.chat(chat)
        body: Any = li_miss.raw  # the OpenAI SDK's ChatCompletion, as the provider sent it
        answer = body.usage
        cached = answer.prompt_tokens_details.cached_tokens
        replayed += usage_cost(
            "gpt-4o-mini",
            {
                "input_tokens": answer.prompt_tokens,
                "output_tokens": answer.completion_tokens,
                "input_token_details": {"cache_read": cached},
            },
        )
        calls += 2
    for i in range(50):  # LlamaIndex streams
        chat = [
            ChatMessage(role="system", content=SYSTEM),
            ChatMessage(role="user", content=f"Question: flow {i}?"),
        ]
        assert list(li.stream_chat(chat))
        assert list(li.stream_chat(chat))
        calls += 2
    for i in range(50):  # embeddings: LangChain documents, each batch twice
        lc_emb.embed_documents([f"passage {i} alpha", f"passage {i} beta", f"passage {i} gamma"])
        lc_emb.embed_documents([f"passage {i} alpha", f"passage {i} beta", f"passage {i} gamma"])
        calls += 2
    for i in range(50):  # embeddings: LlamaIndex queries, each twice
        li_emb.get_query_embedding(f"query number {i}")
        li_emb.get_query_embedding(f"query number {i}")
        calls += 2
    assert calls == 1000

    counters = simulator.stats()["tokens_by_model"]
    assert counters["gpt-4o-mini"]["cached"] > 0  # the prompt cache was exercised
    assert counters["o3-mini"]["reasoning"] > 0
    ledger = tracker.cost_by_model()
    for model in PRICES:
        assert ledger[model]["cost_usd"] == pytest.approx(
            expected_cost(model, counters[model]), abs=1e-12
        )
        assert ledger[model]["cost_unknown_calls"] == 0
    total = sum(e["cost_usd"] for e in ledger.values())
    want = sum(expected_cost(m, counters[m]) for m in PRICES)
    assert round(total, 2) == round(want, 2) and abs(total - want) < 1e-9

    # Saved: every answer was asked exactly twice, so each hit replayed an answer whose
    # miss spent exactly what the hit saved, per operation (LangChain's llm.chat and
    # llm.chat.stream, LlamaIndex's llm and llm.stream); and the answers whose usage we
    # read directly above add up to what the LangChain and LlamaIndex chat hits saved.
    chat_ops = [op for op in tracker.operations if op.startswith("llm")]
    assert len(chat_ops) == 4
    for op in chat_ops:
        stats = tracker.get_operation_stats(op)
        assert (
            stats.cost_saved_usd == pytest.approx(stats.cost_usd, abs=1e-12) and stats.cost_usd > 0
        )
    read_directly = ("llm.chat", "llm")
    saved_read = sum(tracker.get_operation_stats(op).cost_saved_usd for op in read_directly)
    stream_saved = tracker.get_operation_stats("llm.chat.stream").cost_saved_usd
    assert replayed == pytest.approx(saved_read + stream_saved, abs=1e-12)
    emb_ops = [op for op in tracker.operations if op.startswith("embedding")]
    spent_emb = sum(tracker.get_operation_stats(op).cost_usd for op in emb_ops)
    saved_emb = sum(tracker.get_operation_stats(op).cost_saved_usd for op in emb_ops)
    assert saved_emb == pytest.approx(spent_emb, abs=1e-12)


def test_hits_saved_exactly_the_replayed_answers_cost(simulator: Simulator, tmp_path: Path) -> None:
    config = PerformanceConfig(
        cache_dir=str(tmp_path / "cache"), price_table_path=price_file(tmp_path)
    )
    tracker = PerformanceTracker()
    lc = PerfChatModel(
        pooled_chat_openai(
            model="gpt-4o-mini", base_url=simulator.base_url, api_key="sk-test", temperature=0
        ),
        config,
        tracker=tracker,
    )
    replayed = 0.0
    for i in range(20):
        messages = [SystemMessage(SYSTEM), HumanMessage(f"Question: rule {i}?")]
        miss = lc.invoke(messages)
        assert miss.usage_metadata is not None
        for _ in range(i % 3):  # 0, 1 or 2 hits of this answer
            hit = lc.invoke(messages)
            assert hit.usage_metadata is not None and hit.usage_metadata["input_tokens"] == 0
            replayed += usage_cost("gpt-4o-mini", dict(miss.usage_metadata))
    stats = tracker.get_operation_stats("llm.chat")
    assert stats.cost_saved_usd == pytest.approx(replayed, abs=1e-15)
    assert stats.cost_saved_usd > 0


def test_unknown_model_is_unknown_and_warned_once(
    simulator: Simulator, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = PerformanceConfig(
        cache_dir=str(tmp_path / "cache"), price_table_path=price_file(tmp_path)
    )
    tracker = PerformanceTracker()
    lc = PerfChatModel(
        pooled_chat_openai(
            model="sim-unpriced-1", base_url=simulator.base_url, api_key="sk-test", temperature=0
        ),
        config,
        tracker=tracker,
    )
    with caplog.at_level(logging.WARNING, logger="rag_perf_plugins.cost"):
        for i in range(3):
            lc.invoke(f"question {i}")
        lc.invoke("question 0")  # a hit of an unknown-price answer: unknown too, not $0
    stats = tracker.get_operation_stats("llm.chat")
    assert stats.cost_unknown_calls == 4 and stats.cost_usd == 0.0 and stats.cost_saved_usd == 0.0
    assert tracker.cost_by_model()["sim-unpriced-1"]["cost_unknown_calls"] == 4
    warnings = [r for r in caplog.records if "sim-unpriced-1" in r.getMessage()]
    assert len(warnings) == 1 and "cost unknown" in warnings[0].getMessage()
