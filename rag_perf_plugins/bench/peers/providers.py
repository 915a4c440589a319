"""Anthropic and Azure OpenAI: storms of 529s and 429s, and one budget for two models.

Run with ``rag-perf bench --only providers``. LangChain is imported inside each function.

- Anthropic 529 storm: the simulator answers a share of ``/v1/messages`` requests with 529
  overloaded and 429 (both with a short ``Retry-After``), drawn from one seed, so both
  sides meet the same sequence of answers. Two pairs of rows:

  - like for like (``..._success_fraction``, ``..._requests_per_call``): the same number of
    attempts on both sides. The baseline is the real ``ChatAnthropic`` with the SDK's own
    retries at ``max_retries=5``; ours is ``PerfChatModel(pooled_chat_anthropic(...))``
    (SDK retries off) with ``retry_max_attempts=6`` and a retry budget that cannot bind
    (``retry_budget_ratio=5``: at most 5 retries per call, as the SDK). What differs is
    only how each side waits and what it retries.
  - out of the box (``..._defaults_*``): each side at its defaults. The SDK's
    ``max_retries=2`` (3 attempts) against ours: ``retry_max_attempts=4`` and a retry
    budget of 0.2 retries per call, which by design turns a storm this heavy into fast
    failures instead of multiplied load. Not like for like: a lower success here is the
    budget doing its job.

  Rows: the share of logical calls that succeed, and the provider requests per logical
  call (every attempt counts, failed calls included).
- Azure 429 storm: the same with ``AzureChatOpenAI`` and injected 429s.
- Shared scope: two Azure deployments (chat and embeddings) under one account-wide
  simulator limit of 1,200 requests/minute, each wrapper allowed 1,140; with one
  ``rate_limit_scope`` (ours) or each on its own budget (the baseline): 429s received.

Caching is off in every row (each call is new), so the figures are the retry and
admission paths only. Rate-limit headers of successful answers feed the gate as well
(``anthropic-ratelimit-*``, Azure's ``x-ratelimit-*``); the simulators here have no RPM
limit, so they never pause it.
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


# Like for like with an SDK at max_retries=5: 6 attempts, and a budget that cannot bind.
SAME_ATTEMPTS = 6
STORM_RETRY: dict[str, Any] = {
    "retry_max_attempts": SAME_ATTEMPTS,
    "retry_budget_ratio": float(SAME_ATTEMPTS - 1),
    "retry_initial_backoff": 0.01,
}
# Out of the box: our default attempts and budget (the back-off is shortened, as the
# simulator's Retry-After is 10 ms; it changes the run time, not the attempt counts).
DEFAULT_RETRY: dict[str, Any] = {"retry_initial_backoff": 0.01}
SDK_DEFAULT_RETRIES = 2  # anthropic and openai SDKs


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


def _storm_rows(
    prefix: str, baseline: str, ours: Storm, sdk: Storm, notes: str, *, target: bool
) -> Iterator[Result]:
    yield Result.compare(
        f"{prefix}_success_fraction",
        ours.success,
        "fraction of calls",
        baseline=(baseline, sdk.success),
        better="higher",
        target=Target.value_at_least(1.0) if target else None,
        notes=notes,
        calls=ours.calls,
    )
    yield Result.compare(
        f"{prefix}_requests_per_call",
        ours.per_call,
        "requests / call",
        baseline=(baseline, sdk.per_call),
        better="lower",
        notes=notes + "; every attempt counts, failed calls included",
        calls=ours.calls,
    )


def _both_storms(
    ctx: BenchContext,
    options: SimulatorOptions,
    calls: int,
    sdk_model: Any,
    ours_model: Any,
) -> tuple[Storm, Storm, Storm, Storm]:
    """The four storms: SDK and ours like for like, then SDK and ours at their defaults.

    Each runs on a fresh simulator of the same seed: every side meets the same sequence of
    answers.
    """
    runs: list[Storm] = []
    with tempfile.TemporaryDirectory() as cache_dir:
        for retries, ours_retry in ((SAME_ATTEMPTS - 1, STORM_RETRY), (SDK_DEFAULT_RETRIES, None)):
            with Simulator(options).in_thread() as sim:
                runs.append(
                    _storm(sim, sdk_model(sim.base_url.removesuffix("/v1"), retries), calls)
                )
            config = _config(cache_dir, **(ours_retry or DEFAULT_RETRY))
            with Simulator(options).in_thread() as sim:
                model = ours_model(sim.base_url.removesuffix("/v1"), config)
                runs.append(_storm(sim, model, calls))
    ctx.progress(f"providers: {len(runs)} storms of {calls} calls")
    return runs[0], runs[1], runs[2], runs[3]


def _storm_results(
    prefix: str, what: str, runs: tuple[Storm, Storm, Storm, Storm], workload: str
) -> Iterator[Result]:
    sdk_same, ours_same, sdk_default, ours_default = runs
    yield from _storm_rows(
        prefix,
        f"{what}, SDK retries max_retries={SAME_ATTEMPTS - 1}",
        ours_same,
        sdk_same,
        f"{workload}; like for like: {SAME_ATTEMPTS} attempts each "
        f"(ours: retry_max_attempts={SAME_ATTEMPTS}, retry budget that cannot bind)",
        target=True,
    )
    yield from _storm_rows(
        f"{prefix}_defaults",
        f"{what}, SDK default max_retries={SDK_DEFAULT_RETRIES}",
        ours_default,
        sdk_default,
        f"{workload}; out of the box, not like for like: ours at its defaults "
        "(4 attempts, retry budget 0.2 retries per call: fails fast in a storm by design), "
        f"the SDK at its default ({SDK_DEFAULT_RETRIES + 1} attempts)",
        target=False,
    )


@benchmark("providers", "Anthropic 529/429 storm: PerfChatModel vs ChatAnthropic's SDK retries")
def anthropic_storm(ctx: BenchContext) -> Iterator[Result]:
    """Requests per call and success with 30 % 529 and 15 % 429 answers."""
    from langchain_anthropic import ChatAnthropic

    from rag_perf_plugins.langchain import PerfChatModel, pooled_chat_anthropic

    calls = ctx.scale(60, quick=12)
    options = SimulatorOptions(overload_rate=0.3, rate_limit_rate=0.15, retry_after_s=0.01, seed=9)
    ctx.progress(f"providers: Anthropic storm, {calls} calls each")

    def sdk(url: str, retries: int) -> Any:
        return ChatAnthropic(model=CLAUDE, base_url=url, api_key="sk-ant", max_retries=retries)

    def ours(url: str, config: PerformanceConfig) -> Any:
        inner = pooled_chat_anthropic(model=CLAUDE, base_url=url, api_key="sk-ant", config=config)
        return PerfChatModel(inner, config)

    runs = _both_storms(ctx, options, calls, sdk, ours)
    workload = f"{calls} sequential calls, 30 % 529 + 15 % 429 (Retry-After 10 ms), seed 9"
    yield from _storm_results("providers_anthropic_529_storm", "ChatAnthropic", runs, workload)


@benchmark("providers", "Azure OpenAI 429 storm: PerfChatModel vs AzureChatOpenAI's SDK retries")
def azure_storm(ctx: BenchContext) -> Iterator[Result]:
    """Requests per call and success with 35 % 429 answers."""
    from langchain_openai import AzureChatOpenAI

    from rag_perf_plugins.langchain import PerfChatModel, pooled_azure_chat_openai

    calls = ctx.scale(60, quick=12)
    options = SimulatorOptions(rate_limit_rate=0.35, retry_after_s=0.01, seed=2)
    ctx.progress(f"providers: Azure storm, {calls} calls each")
    common = {"azure_deployment": "chat", "api_version": API_VERSION, "api_key": "az"}

    def sdk(url: str, retries: int) -> Any:
        return AzureChatOpenAI(azure_endpoint=url, max_retries=retries, **common)

    def ours(url: str, config: PerformanceConfig) -> Any:
        inner = pooled_azure_chat_openai(azure_endpoint=url, config=config, **common)
        return PerfChatModel(inner, config)

    runs = _both_storms(ctx, options, calls, sdk, ours)
    workload = f"{calls} sequential calls, 35 % 429 (Retry-After 10 ms), seed 2"
    yield from _storm_results("providers_azure_429_storm", "AzureChatOpenAI", runs, workload)


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
    calls = ctx.scale(50, quick=20)
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
