"""Dollar-budget accuracy, side by side in one run: our admission gate vs LiteLLM's BudgetManager.

Run with ``rag-perf bench --only cost``. LiteLLM is imported inside the function (with its
model cost map read from the package, never fetched), so loading this module imports
nothing of it.

The same workload on both sides, against the simulator: calls of varied size (prompt of 5
to 120 words, ``max_tokens`` 10 to 200), 10 in flight at once, under one budget of $0.20
at $250 per million input or output tokens (the same price registered in both). What was
really spent is read from the simulator's token counters; the row is the overspend as a
fraction of the limit (0 is exact). Ours reserves each call's estimate before it leaves
and reconciles it after; LiteLLM's documented pattern checks ``get_current_cost <=
get_total_budget`` before the call and adds the cost after it, so calls in flight all see
the same spent amount.
"""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import Iterator
from typing import Any

from ...config import PerformanceConfig
from ..registry import BenchContext, Result, Target, benchmark

LIMIT_USD = 0.20
RATE = 250.0  # USD per 1,000,000 tokens, input and output
AT_ONCE = 10


def _workload(calls: int) -> list[tuple[str, int]]:
    rng = random.Random(7)
    out = []
    for i in range(calls):
        words = " ".join(f"w{i}y{k}" for k in range(rng.randint(5, 120)))
        out.append((f"Question: {words}?", rng.randint(10, 200)))
    return out


def _spent(stats: dict[str, Any]) -> float:
    counters = stats["tokens_by_model"].get("gpt-4o-mini") or {"prompt": 0, "completion": 0}
    return (int(counters["prompt"]) + int(counters["completion"])) * RATE / 1e6


async def _ours(base_url: str, workload: list[tuple[str, int]], prices: str) -> tuple[int, int]:
    import openai

    from ...admission import AdmissionGate
    from ...admission.spend import LocalSpendStore
    from ...errors import BudgetExceeded
    from ...services.llm import LLMRequest, LLMService, Usage
    from ...tracking import NULL_TRACKER

    config = PerformanceConfig(
        enable_caching=False,
        enable_metrics=False,
        price_table_path=prices,
        budget_usd_per_minute=LIMIT_USD,
        budget_scopes="key",
    )
    minute = 1_800_000_000.0
    gate = AdmissionGate(
        config,
        key="bench/gpt-4o-mini/ours",
        tracker=NULL_TRACKER,
        spend_store=LocalSpendStore(),
        wall_clock=lambda: minute,
    )
    service = LLMService(config=config, gate=gate, tracker=NULL_TRACKER)
    client = openai.AsyncOpenAI(base_url=base_url, api_key="sk-bench", max_retries=0)

    class Codec:
        def encode(self, value: Any) -> Any:
            return None

        def decode(self, data: Any) -> Any:
            return data

        def usage(self, value: Any) -> Usage | None:
            u = value.usage
            return None if u is None else Usage(u.prompt_tokens, u.completion_tokens)

    limit = asyncio.Semaphore(AT_ONCE)
    counts = [0, 0]

    async def one(text: str, max_tokens: int) -> None:
        messages = [{"role": "user", "content": text}]
        request = LLMRequest(
            model="gpt-4o-mini", messages=messages, params={"max_tokens": max_tokens}
        )
        async with limit:
            try:
                await service.agenerate(
                    request,
                    lambda: client.chat.completions.create(
                        model="gpt-4o-mini",
                        messages=messages,  # type: ignore[arg-type]
                        max_tokens=max_tokens,
                    ),
                    Codec(),
                )
                counts[0] += 1
            except BudgetExceeded:
                counts[1] += 1

    await asyncio.gather(*(one(t, m) for t, m in workload))
    await client.close()
    return counts[0], counts[1]


async def _litellm(base_url: str, workload: list[tuple[str, int]], workdir: str) -> tuple[int, int]:
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # never fetch the cost map
    import litellm

    budget_manager: Any = getattr(litellm, "BudgetManager")  # noqa: B009 (not re-exported)

    litellm.register_model(
        {
            "gpt-4o-mini": {
                "input_cost_per_token": RATE / 1e6,
                "output_cost_per_token": RATE / 1e6,
                "litellm_provider": "openai",
                "mode": "chat",
            }
        }
    )
    here = os.getcwd()
    os.chdir(workdir)  # the local BudgetManager reads and writes user_cost.json here
    try:
        manager: Any = budget_manager(project_name="rag-perf-bench", client_type="local")
        manager.create_budget(total_budget=LIMIT_USD, user="bench", duration="daily")
        limit = asyncio.Semaphore(AT_ONCE)
        counts = [0, 0]

        async def one(text: str, max_tokens: int) -> None:
            async with limit:
                if manager.get_current_cost(user="bench") > manager.get_total_budget("bench"):
                    counts[1] += 1
                    return
                response = await litellm.acompletion(
                    model="openai/gpt-4o-mini",
                    messages=[{"role": "user", "content": text}],
                    max_tokens=max_tokens,
                    api_base=base_url,
                    api_key="sk-bench",
                    num_retries=0,
                )
                manager.update_cost(completion_obj=response, user="bench")
                counts[0] += 1

        await asyncio.gather(*(one(t, m) for t, m in workload))
    finally:
        os.chdir(here)
    return counts[0], counts[1]


@benchmark("cost", "dollar budget accuracy: overspend of our gate vs LiteLLM's BudgetManager")
def budget_accuracy(ctx: BenchContext) -> Iterator[Result]:
    """Overspend as a fraction of the limit, same workload, same simulator, same prices."""
    import json

    from ...simulator import Simulator

    calls = ctx.scale(120, quick=24)
    workload = _workload(calls)
    prices = ctx.workdir / "cost-prices.json"
    entry = {"input": RATE, "output": RATE, "as_of": "2026-12-01", "source": "bench"}
    prices.write_text(json.dumps({"models": {"gpt-4o-mini": entry}}))
    with Simulator().in_thread() as sim:
        ctx.progress(f"ours: {calls} calls, {AT_ONCE} in flight, ${LIMIT_USD:.2f} budget")
        ours_ok, ours_refused = asyncio.run(_ours(sim.base_url, workload, str(prices)))
        ours_spent = _spent(sim.stats())
        sim.reset_stats()
        ctx.progress("LiteLLM BudgetManager: the same workload")
        lite_ok, lite_refused = asyncio.run(_litellm(sim.base_url, workload, str(ctx.workdir)))
        lite_spent = _spent(sim.stats())
    ours_over = max(0.0, ours_spent - LIMIT_USD) / LIMIT_USD
    lite_over = max(0.0, lite_spent - LIMIT_USD) / LIMIT_USD
    yield Result.compare(
        "cost_budget_overspend_fraction",
        ours_over,
        "fraction of limit",
        baseline=("LiteLLM BudgetManager, same workload", lite_over),
        better="lower",
        target=Target.value_at_most(0.0),
        notes=(
            f"${LIMIT_USD:.2f} budget, {calls} calls, {AT_ONCE} in flight: ours spent "
            f"${ours_spent:.4f} ({ours_ok} sent, {ours_refused} refused), LiteLLM "
            f"${lite_spent:.4f} ({lite_ok} sent, {lite_refused} refused)"
        ),
        ours_spent_usd=ours_spent,
        litellm_spent_usd=lite_spent,
    )
