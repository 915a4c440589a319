"""One of the four processes of the shared dollar-budget test (test_cost_budgets.py).

Usage: ``python budget_worker.py BASE_URL REDIS_URL PRICE_FILE SEED``. Sends 25 chat calls
of varied size (prompt length and ``max_tokens``), 5 at a time, through a PerfChatModel
whose gate keeps a $1.00/minute budget in Redis, with its wall clock pinned to one minute
so every worker counts in the same window. Prints one JSON line: calls, admitted, refused,
other errors and the largest estimate it made (USD).
"""

from __future__ import annotations

import asyncio
import json
import random
import sys

from langchain_core.messages import HumanMessage
from rag_perf_plugins.langchain import PerfChatModel, pooled_chat_openai

from rag_perf_plugins.admission import AdmissionGate
from rag_perf_plugins.config import PerformanceConfig
from rag_perf_plugins.cost import price_table
from rag_perf_plugins.errors import BudgetExceeded
from rag_perf_plugins.services.llm import LLMRequest
from rag_perf_plugins.tracking import NULL_TRACKER

CALLS, AT_ONCE = 25, 5
MINUTE = 1_800_000_000.0  # the pinned wall clock: one budget window for every worker


async def main(base_url: str, redis_url: str, prices: str, seed: int) -> dict[str, object]:
    config = PerformanceConfig(
        enable_caching=False,
        redis_url=redis_url,
        price_table_path=prices,
        budget_usd_per_minute=1.0,
        budget_scopes="key",
        cache_namespace_prefix="budget-test",
    )
    gate = AdmissionGate(
        config, key="sim/gpt-4o-mini/shared", tracker=NULL_TRACKER, wall_clock=lambda: MINUTE
    )
    llm = PerfChatModel(
        pooled_chat_openai(model="gpt-4o-mini", base_url=base_url, api_key="sk-t", temperature=0),
        config,
        gate=gate,
        tracker=NULL_TRACKER,
    )
    rng = random.Random(seed)
    price = price_table(config).get("gpt-4o-mini")
    assert price is not None and price.input is not None and price.output is not None
    dearest = max(price.input, price.output)
    counts = {"calls": 0, "admitted": 0, "refused": 0, "other_errors": 0}
    largest = 0.0
    limit = asyncio.Semaphore(AT_ONCE)

    async def one(i: int) -> None:
        nonlocal largest
        words = " ".join(f"w{seed}x{i}y{k}" for k in range(rng.randint(5, 120)))
        max_tokens = rng.randint(10, 200)
        text = f"Question: {words}?"
        request = LLMRequest(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": text}],
            params={"max_tokens": max_tokens},
        )
        largest = max(largest, request.estimated_tokens() * dearest / 1e6)
        async with limit:
            counts["calls"] += 1
            try:
                await llm.ainvoke([HumanMessage(text)], max_tokens=max_tokens)
                counts["admitted"] += 1
            except BudgetExceeded:
                counts["refused"] += 1
            except Exception as exc:  # reported, and the test fails on it
                counts["other_errors"] += 1
                print(f"error: {exc!r}", file=sys.stderr)

    await asyncio.gather(*(one(i) for i in range(CALLS)))
    return {**counts, "largest_estimate_usd": largest}


if __name__ == "__main__":
    url, redis_url, prices, seed = sys.argv[1:5]
    print(json.dumps(asyncio.run(main(url, redis_url, prices, int(seed)))))
