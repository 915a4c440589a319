"""Anthropic and Azure OpenAI: storms of 529s and 429s, and one budget for two models.

Run with ``rag-perf bench --only providers``. LangChain is imported inside each function.

- Anthropic 529 storm: the simulator answers a share of ``/v1/messages`` requests with 529
  overloaded and 429 (both with a short ``Retry-After``). The real ``ChatAnthropic`` with
  the SDK's own retries (``max_retries=2``, its default) is the baseline;
  ``PerfChatModel(pooled_chat_anthropic(...))`` (SDK retries off, our retry policy with
  6 attempts and a retry budget of 1.0 retry per call: the defaults, 4 and 0.2, turn a
  storm this heavy into fast failures by design) is ours. The rows say what each side
  spends in requests for the success it gets, not a like-for-like attempt count. Rows:
  the share of logical calls that succeed, and the provider requests per logical call.
- Azure 429 storm: the same with ``AzureChatOpenAI`` and injected 429s.
- Shared scope: two Azure deployments (chat and embeddings) under one account-wide
  simulator limit of 1,200 requests/minute, each wrapper allowed 1,140; with one
  ``rate_limit_scope`` (ours) or each on its own budget (the baseline): 429s received.

Caching is off in every row (each call is new), so the figures are the retry and
admission paths only.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ...config import PerformanceConfig
from ...simulator import Simulator, SimulatorOptions
from ..registry import BenchContext, Result, Target, benchmark

API_VERSION = "2024-10-21"
CLAUDE = "claude-sonnet-4-5"


@dataclass(frozen=True)
class Storm:
    """Logical calls made, how many succeeded, and the provider requests they took."""

    calls: int
    succeeded: int
    requests: int

    @property
    def success(self) -> float:
        """Share of logical calls that succeeded."""
        return self.succeeded / self.calls

    @property
    def per_call(self) -> float:
        """Provider requests per logical call (every attempt counts)."""
        return self.requests / self.calls


def _config(cache_dir: str, **changes: Any) -> PerformanceConfig:
    return PerformanceConfig(
        cache_dir=cache_dir, enable_caching=False, enable_metrics=False, **changes
    )


STORM_RETRY: dict[str, Any] = {
    "retry_max_attempts": 6,
    "retry_budget_ratio": 1.0,
    "retry_initial_backoff": 0.01,
}


def _storm(sim: Simulator, model: Any, calls: int) -> Storm:
    from langchain_core.messages import HumanMessage

    before = sim.stats()["requests_total"]
    succeeded = 0
    for i in range(calls):
        try:
            model.invoke([HumanMessage(f"Question {i}: what does the context say?")])
        except Exception:  # a failed logical call is what is counted
            continue
        succeeded += 1
    return Storm(calls, succeeded, int(sim.stats()["requests_total"] - before))


def _storm_rows(prefix: str, what: str, ours: Storm, sdk: Storm, notes: str) -> Iterator[Result]:
    yield Result.compare(
        f"{prefix}_success_fraction",
        ours.success,
        "fraction of calls",
        baseline=(f"{what} with SDK retries (max_retries=2)", sdk.success),
        better="higher",
        target=Target.value_at_least(1.0),
        notes=notes,
        calls=ours.calls,
    )
    yield Result.compare(
        f"{prefix}_requests_per_call",
        ours.per_call,
        "requests / call",
        baseline=(f"{what} with SDK retries (max_retries=2)", sdk.per_call),
        better="lower",
        notes=notes + "; every attempt counts, failed calls included",
        calls=ours.calls,
    )


@benchmark("providers", "Anthropic 529/429 storm: PerfChatModel vs ChatAnthropic's SDK retries")
def anthropic_storm(ctx: BenchContext) -> Iterator[Result]:
    """Requests per call and success with 30 % 529 and 15 % 429 answers."""
    from langchain_anthropic import ChatAnthropic

    from rag_perf_plugins.langchain import PerfChatModel, pooled_chat_anthropic

    calls = ctx.scale(60, quick=20)
    options = SimulatorOptions(overload_rate=0.3, rate_limit_rate=0.15, retry_after_s=0.01, seed=9)
    ctx.progress(f"providers: Anthropic storm, {calls} calls each")
    with tempfile.TemporaryDirectory() as cache_dir:
        config = _config(cache_dir, **STORM_RETRY)
        with Simulator(options).in_thread() as sim:
            url = sim.base_url.removesuffix("/v1")
            sdk = ChatAnthropic(model=CLAUDE, base_url=url, api_key="sk-ant", max_retries=2)
            baseline = _storm(sim, sdk, calls)
        with Simulator(options).in_thread() as sim:
            url = sim.base_url.removesuffix("/v1")
            inner = pooled_chat_anthropic(
                model=CLAUDE, base_url=url, api_key="sk-ant", config=config
            )
            ours = _storm(sim, PerfChatModel(inner, config), calls)
    notes = (
        f"{calls} sequential calls, 30 % 529 + 15 % 429 (Retry-After 10 ms), seed 9; "
        "ours: 6 attempts, retry budget 1.0"
    )
    yield from _storm_rows("providers_anthropic_529_storm", "ChatAnthropic", ours, baseline, notes)


@benchmark("providers", "Azure OpenAI 429 storm: PerfChatModel vs AzureChatOpenAI's SDK retries")
def azure_storm(ctx: BenchContext) -> Iterator[Result]:
    """Requests per call and success with 35 % 429 answers."""
    from langchain_openai import AzureChatOpenAI

    from rag_perf_plugins.langchain import PerfChatModel, pooled_azure_chat_openai

    calls = ctx.scale(60, quick=20)
    options = SimulatorOptions(rate_limit_rate=0.35, retry_after_s=0.01, seed=2)
    ctx.progress(f"providers: Azure storm, {calls} calls each")
    common = {"azure_deployment": "chat", "api_version": API_VERSION, "api_key": "az"}
    with tempfile.TemporaryDirectory() as cache_dir:
        config = _config(cache_dir, **STORM_RETRY)
        with Simulator(options).in_thread() as sim:
            url = sim.base_url.removesuffix("/v1")
            sdk = AzureChatOpenAI(azure_endpoint=url, max_retries=2, **common)
            baseline = _storm(sim, sdk, calls)
        with Simulator(options).in_thread() as sim:
            url = sim.base_url.removesuffix("/v1")
            inner = pooled_azure_chat_openai(azure_endpoint=url, config=config, **common)
            ours = _storm(sim, PerfChatModel(inner, config), calls)
    notes = (
        f"{calls} sequential calls, 35 % 429 (Retry-After 10 ms), seed 2; "
        "ours: 6 attempts, retry budget 1.0"
    )
    yield from _storm_rows("providers_azure_429_storm", "AzureChatOpenAI", ours, baseline, notes)


def _two_models(scope: str | None, calls: int, cache_dir: str) -> int:
    """429s two Azure deployments get under one 1,200 rpm account limit."""
    from langchain_core.messages import HumanMessage

    from rag_perf_plugins.langchain import (
        PerfChatModel,
        PerfEmbeddings,
        pooled_azure_chat_openai,
        pooled_azure_openai_embeddings,
    )

    config = _config(
        cache_dir,
        requests_per_minute=1140,
        rate_burst_seconds=0.5,
        rate_limit_scope=scope,
        retry_max_attempts=1,
    )
    tag = scope or "own"
    common: dict[str, Any] = {"api_version": API_VERSION, "api_key": "az", "config": config}
    with Simulator(rpm=1200, burst_seconds=1.0, limit_scope="account").in_thread() as sim:
        url = sim.base_url.removesuffix("/v1")
        chat = PerfChatModel(
            pooled_azure_chat_openai(azure_endpoint=url, azure_deployment=f"chat-{tag}", **common),
            config,
        )
        embeddings = PerfEmbeddings(
            pooled_azure_openai_embeddings(
                azure_endpoint=url, azure_deployment=f"embed-{tag}", **common
            ),
            config,
            batching=False,
        )

        async def run() -> None:
            jobs: list[Any] = []
            for i in range(calls):
                jobs.append(chat.ainvoke([HumanMessage(f"Question {i}?")]))
                jobs.append(embeddings.aembed_query(f"text {i}"))
            await asyncio.gather(*jobs, return_exceptions=True)

        asyncio.run(run())
        return int(sim.stats()["rate_limited_total"])


@benchmark("providers", "two models, one account-wide limit: a shared rate_limit_scope")
def shared_scope(ctx: BenchContext) -> Iterator[Result]:
    """429s received by a chat and an embedding model at 95 % of one account-wide limit."""
    calls = ctx.scale(50, quick=25)
    ctx.progress(f"providers: shared scope, {2 * calls} requests each way")
    with tempfile.TemporaryDirectory() as cache_dir:
        baseline = _two_models(None, calls, cache_dir)
        ours = _two_models("bench-account", calls, cache_dir)
    yield Result.compare(
        "providers_shared_scope_429s",
        ours,
        "429s",
        baseline=("each model on its own budget", baseline),
        better="lower",
        target=Target.value_at_most(0),
        notes=(
            f"{2 * calls} concurrent requests (chat + embeddings, two Azure deployments), "
            "simulator 1,200 rpm account-wide, each config 1,140 rpm, 0.5 s burst"
        ),
    )
