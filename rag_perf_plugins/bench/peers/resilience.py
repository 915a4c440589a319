"""Resilience: one provider outage through our fallback chain, LangChain's and LiteLLM's.

Example::

    rag-perf bench --only resilience --quick

The same scenario, three times, each on a fresh simulator in this process (20 ms per
answer): chat calls start on a fixed schedule (``RATE`` per second, open loop, so every
approach makes the same calls on the same timeline) for ``healthy + outage + after``
seconds; the primary model (``gpt-4o-mini``) answers 503 to everything during the outage
and recovers after it; a fallback model (``gpt-4o``) stays healthy. Compared:

- **ours**: ``PerfChatModel(ChatOpenAI(primary), fallbacks=[ChatOpenAI(fallback)])``
  (SDK retries off, our retry policy and circuit breaker at its defaults: opens at the
  first answer that says "down" (``breaker_down_failures=1``: a 503 here), or at ``TRIP``
  other failures in a row; one probe per cool-down, each cool-down after a failed probe
  twice the last (``breaker_cooldown_growth=2``, plus up to 10 % jitter));
- **LangChain**: ``ChatOpenAI(primary).with_fallbacks([ChatOpenAI(fallback)])`` over the
  OpenAI SDK's own retries (``max_retries=2``, its default);
- **LiteLLM**: ``Router`` with the two deployments, ``fallbacks`` and its cooldowns
  (``allowed_fails=TRIP - 1``: cooled down at the ``TRIP``-th failure of the minute;
  ``cooldown_time`` equal to our cool-down), in-process, no proxy.

Measured per approach: the fraction of calls that succeeded, the p95 latency of calls
started during the outage (and, for ours, over the healthy p95 before it), the requests
the dead primary received during the outage (the simulator counts them: first attempts,
retries and probes alike; in total, per call, and split at one cool-down into the outage),
and the seconds from the end of the outage to the first call answered by the primary again.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ..registry import BenchContext, Result, Target, benchmark

__all__ = ["OutageRun", "run_outage"]

PRIMARY, FALLBACK = "gpt-4o-mini", "gpt-4o"
RATE = 50.0  # calls started per second, whatever the answers take
LATENCY_MS = 20.0
TRIP = 4  # failures that stop the calls to the primary, ours and LiteLLM's alike

# A call: returns the model that answered.
Call = Callable[[str], Awaitable[str]]


@dataclass
class OutageRun:
    """What one approach did through the outage (seconds; counts)."""

    approach: str
    calls: int = 0
    ok: int = 0
    healthy_latencies: list[float] = field(default_factory=list)
    outage_latencies: list[float] = field(default_factory=list)
    primary_during_outage: int = 0
    primary_first_cooldown: int = 0
    back_to_primary_s: float = math.nan

    @property
    def success(self) -> float:
        """Fraction of calls that succeeded."""
        return self.ok / self.calls if self.calls else math.nan

    @property
    def primary_share(self) -> float:
        """Requests the dead primary received per call made during the outage."""
        n = len(self.outage_latencies)
        return self.primary_during_outage / n if n else math.nan

    @property
    def primary_after_first_cooldown(self) -> int:
        """Dead-primary requests after the first cool-down of the outage: re-entries, probes."""
        return self.primary_during_outage - self.primary_first_cooldown

    @property
    def healthy_p95_s(self) -> float:
        """p95 latency of calls started before the outage."""
        return _p95(self.healthy_latencies)

    @property
    def outage_p95_s(self) -> float:
        """p95 latency of calls started during the outage."""
        return _p95(self.outage_latencies)


def _p95(values: list[float]) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)]


async def run_outage(
    name: str,
    make_call: Callable[[str], Call],
    *,
    healthy_s: float,
    outage_s: float,
    after_s: float,
    cooldown_s: float,
    rate: float = RATE,
) -> OutageRun:
    """Send the same paced calls through one outage of the primary on a fresh simulator.

    ``make_call(base_url)`` builds the approach's call for that simulator. Calls start on
    a fixed schedule (``rate`` per second, open loop: a slow answer does not delay the next
    call), so every approach makes the same calls on the same outage timeline and its
    dead-primary requests compare both in total and per call. The primary's request count
    is also read one cool-down (``cooldown_s``) into the outage: what came before is the
    price of detecting the outage, what came after the price of watching for its end.
    """
    from ...simulator import Simulator

    run = OutageRun(name)
    threaded = Simulator(latency_ms=LATENCY_MS).in_thread()
    sim = threaded.start()
    try:
        call = make_call(sim.base_url)
        await call("warm-up")  # connections and imports before the clock starts
        start = time.monotonic()
        outage_at, outage_end = start + healthy_s, start + healthy_s + outage_s
        stop_at = outage_end + after_s
        sim.add_outage(model=PRIMARY, start_s=sim.elapsed() + healthy_s, duration_s=outage_s)
        marks: list[int] = []

        def primary_requests() -> int:
            return int(sim.stats()["requests_by_model"].get(PRIMARY, 0))

        async def mark(at: float) -> None:
            await asyncio.sleep(max(0.0, at - time.monotonic()))
            marks.append(primary_requests())

        returned: list[float] = []

        async def one(n: int, due: float) -> None:
            began = time.monotonic()
            try:
                model = await call(f"question {n} {uuid.uuid4().hex[:6]}")
            except Exception:
                ok = False
                model = ""
            else:
                ok = True
            latency = time.monotonic() - began
            run.calls += 1
            run.ok += ok
            if due < outage_at:
                run.healthy_latencies.append(latency)
            elif due < outage_end:
                run.outage_latencies.append(latency)
            elif ok and model.startswith(PRIMARY):
                returned.append(due - outage_end)

        async def schedule() -> None:
            calls: list[asyncio.Task[None]] = []
            n = 0
            while (due := start + n / rate) < stop_at:
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                calls.append(asyncio.ensure_future(one(n, due)))
                n += 1
            await asyncio.gather(*calls)

        first = outage_at + min(cooldown_s, outage_s)
        await asyncio.gather(mark(outage_at), mark(first), mark(outage_end), schedule())
        marks.sort()
        run.primary_first_cooldown = marks[1] - marks[0]
        run.primary_during_outage = marks[2] - marks[0]
        run.back_to_primary_s = min(returned) if returned else math.inf
    finally:
        threaded.stop()
    return run


def _ours(cooldown: float) -> Callable[[str], Call]:
    def make(base_url: str) -> Call:
        from rag_perf_plugins.langchain import PerfChatModel, pooled_chat_openai

        from ...config import PerformanceConfig

        config = PerformanceConfig(
            enable_caching=False,
            enable_metrics=False,
            breaker_min_calls=4,
            breaker_consecutive_failures=TRIP,  # LiteLLM's threshold, for other failures
            breaker_cooldown=cooldown,  # the first one; then growth and jitter: the defaults
            breaker_window=2.0 * cooldown,
            retry_initial_backoff=0.05,
        )

        def model(name: str) -> Any:
            key = f"sk-bench-{uuid.uuid4().hex[:8]}"  # a fresh gate and breaker per run
            return pooled_chat_openai(base_url=base_url, model=name, api_key=key, temperature=0)

        llm = PerfChatModel(model(PRIMARY), config, fallbacks=[model(FALLBACK)])

        async def call(question: str) -> str:
            answer = await llm.ainvoke(question)
            return str(answer.response_metadata.get("model_name", ""))

        return call

    return make


def _langchain(base_url: str) -> Call:
    from langchain_openai import ChatOpenAI

    def model(name: str) -> Any:
        # The SDK's default retries (2, with its back-off): what with_fallbacks sits on.
        return ChatOpenAI(base_url=base_url, model=name, api_key="sk-bench", temperature=0)

    chain = model(PRIMARY).with_fallbacks([model(FALLBACK)])

    async def call(question: str) -> str:
        answer = await chain.ainvoke(question)
        return str(answer.response_metadata.get("model_name", ""))

    return call


def _litellm(cooldown: float) -> Callable[[str], Call]:
    def make(base_url: str) -> Call:
        os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no network at import
        import litellm
        from litellm.router import Router

        litellm.telemetry = False
        litellm.suppress_debug_info = True

        def deployment(group: str, name: str) -> dict[str, Any]:
            return {
                "model_name": group,
                "litellm_params": {
                    "model": f"openai/{name}",
                    "api_base": base_url,
                    "api_key": "sk-bench",
                },
            }

        router = Router(
            model_list=[deployment("primary", PRIMARY), deployment("fallback", FALLBACK)],
            fallbacks=[{"primary": ["fallback"]}],
            allowed_fails=TRIP - 1,  # cools a deployment down at more than this: TRIP
            cooldown_time=cooldown,
        )

        async def call(question: str) -> str:
            answer: Any = await router.acompletion(
                model="primary", messages=[{"role": "user", "content": question}], temperature=0
            )
            return str(answer.model or "")

        return call

    return make


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 1) if math.isfinite(seconds) else seconds


@benchmark("resilience", "one outage of the primary: our chain vs LangChain and LiteLLM")
def outage(ctx: BenchContext) -> Iterator[Result]:
    """Success, dead-primary requests, p95 during the outage, time back to the primary."""
    healthy_s, outage_s, after_s = (0.4, 1.2, 0.6) if ctx.quick else (3.0, 10.0, 5.0)
    cooldown = 0.5 if ctx.quick else 2.0
    runs: dict[str, OutageRun] = {}
    plan: list[tuple[str, Callable[[str], Call]]] = [
        ("ours", _ours(cooldown)),
        ("langchain", _langchain),
        ("litellm", _litellm(cooldown)),
    ]
    for name, make in plan:
        ctx.progress(f"{name}: {outage_s:g} s outage")
        runs[name] = asyncio.run(
            run_outage(
                name,
                make,
                healthy_s=healthy_s,
                outage_s=outage_s,
                after_s=after_s,
                cooldown_s=cooldown,
            )
        )
    ours, lc, lite = runs["ours"], runs["langchain"], runs["litellm"]
    extra = {
        name: {
            "calls": r.calls,
            "success": round(r.success, 4),
            "primary_during_outage": r.primary_during_outage,
            "primary_first_cooldown": r.primary_first_cooldown,
            "primary_after_first_cooldown": r.primary_after_first_cooldown,
            "outage_calls": len(r.outage_latencies),
            "outage_p95_ms": _ms(r.outage_p95_s),
            "healthy_p95_ms": _ms(r.healthy_p95_s),
            "back_to_primary_s": round(r.back_to_primary_s, 3),
        }
        for name, r in runs.items()
    }
    note = (
        f"{RATE:g} calls/s paced (same calls for all), {outage_s:g} s outage, "
        f"breaker cool-down {cooldown:g} s"
    )
    yield Result.compare(
        "resilience_success_fraction",
        ours.success,
        "fraction",
        baseline=("langchain_with_fallbacks", lc.success),
        better="higher",
        target=Target.value_at_least(1.0),
        notes=note,
        runs=extra,
    )
    # Every approach starts the same calls on the same timeline, so the total and the
    # per-call figure give the same ratio; both are shown. "Requests to the dead primary":
    # the HTTP requests for the primary model the simulator received between the start and
    # the end of the outage (first attempts, retries and probes alike).
    best = min((lc, lite), key=lambda r: (r.primary_during_outage, r.primary_share))
    counts = (
        f"{len(ours.outage_latencies)} calls started during the outage by each; the dead "
        f"primary received (in the first cool-down + after it) ours "
        f"{ours.primary_first_cooldown}+{ours.primary_after_first_cooldown}, LangChain "
        f"{lc.primary_first_cooldown}+{lc.primary_after_first_cooldown}, LiteLLM "
        f"{lite.primary_first_cooldown}+{lite.primary_after_first_cooldown}"
    )
    yield Result.compare(
        "resilience_dead_primary_requests",
        float(ours.primary_during_outage),
        "requests",
        baseline=(f"best_peer_{best.approach}", float(best.primary_during_outage)),
        better="lower",
        target=Target.ratio_at_least(10.0),
        notes=counts,
    )
    yield Result.compare(
        "resilience_dead_primary_requests_per_call",
        ours.primary_share,
        "requests/call",
        baseline=(f"best_peer_{best.approach}", best.primary_share),
        better="lower",
        target=Target.ratio_at_least(10.0),
        notes=counts,
    )
    yield Result.compare(
        "resilience_outage_p95_over_healthy",
        ours.outage_p95_s / ours.healthy_p95_s if ours.healthy_p95_s else math.nan,
        "ratio",
        better="lower",
        target=Target.value_at_most(1.5),
        notes=f"ours: p95 {_ms(ours.outage_p95_s)} ms in the outage, "
        f"{_ms(ours.healthy_p95_s)} ms before",
    )
    yield Result.compare(
        "resilience_outage_p95_ms",
        _ms(ours.outage_p95_s),
        "ms",
        baseline=("langchain_with_fallbacks", _ms(lc.outage_p95_s)),
        notes=f"LiteLLM {_ms(lite.outage_p95_s)} ms",
    )
    yield Result.compare(
        "resilience_back_to_primary_s",
        ours.back_to_primary_s,
        "s",
        baseline=("litellm_router", lite.back_to_primary_s),
        notes=f"LangChain {round(lc.back_to_primary_s, 3)} s (no state: at once)",
    )
