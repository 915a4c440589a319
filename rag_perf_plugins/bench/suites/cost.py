"""Cost benchmarks: what the dollar ledger adds to a call.

Run with ``rag-perf bench --only cost`` (the budget-accuracy comparison with LiteLLM is in
``bench/peers/cost_litellm.py``, same category).

- ``cost_ledger_added_us``: an uncached ``LLMService.generate`` (no gate, no cache, an
  in-process provider answering at once with its usage) for a priced model, against the
  same call path without the ledger (no price lookup, no cost, no per-model counters), in
  interleaved batches of the same run; thread CPU time per call, p50 of the batches.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

from ...config import PerformanceConfig
from ...services.llm import LLMRequest, LLMService, Usage, _Call
from ...tracking import PerformanceTracker
from ..registry import BenchContext, Result, Target, benchmark

BATCH = 200  # calls per timed batch


class _Codec:
    def encode(self, value: dict[str, Any]) -> Any:
        return value

    def decode(self, data: Any) -> dict[str, Any]:
        return dict(data)

    def usage(self, value: dict[str, Any]) -> Usage | None:
        return Usage(900, 120, cached_in=512)


class _NoLedger(LLMService):
    """The same call path with the ledger taken out: no request kept, so no cost, no model."""

    __slots__ = ()

    def _begin(self, *args: Any, **kwargs: Any) -> _Call:
        call = super()._begin(*args, **kwargs)
        call.request = None
        return call


def _batch_us(fn: Callable[[], object]) -> float:
    start = time.thread_time()
    for _ in range(BATCH):
        fn()
    return (time.thread_time() - start) / BATCH * 1e6


@benchmark("cost", "dollar ledger: added cost per LLM call vs the call path without it")
def ledger_overhead(ctx: BenchContext) -> Iterator[Result]:
    """p50 thread-CPU µs per uncached generate, with and without the ledger, interleaved."""
    rounds = ctx.scale(150, quick=15)
    config = PerformanceConfig(enable_caching=False, enable_metrics=True)
    answer = {"text": "ok"}
    request = LLMRequest(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    codec = _Codec()
    with_ledger = LLMService(config=config, tracker=PerformanceTracker())
    without = _NoLedger(config=config, tracker=PerformanceTracker())

    def priced() -> object:
        return with_ledger.generate(request, lambda: answer, codec)

    def plain() -> object:
        return without.generate(request, lambda: answer, codec)

    ctx.progress(f"{rounds} interleaved batches of {BATCH} calls, with and without the ledger")
    samples: list[list[float]] = [[], []]
    _batch_us(priced), _batch_us(plain)  # warm-up: operation state, price lookups cached
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(rounds):
            samples[0].append(_batch_us(priced))
            samples[1].append(_batch_us(plain))
    finally:
        if gc_was_enabled:
            gc.enable()
    priced_us, plain_us = statistics.median(samples[0]), statistics.median(samples[1])
    spent = with_ledger.tracker.cost_by_model()["gpt-4o-mini"]["cost_usd"]
    yield Result.compare(
        "cost_ledger_call_us",
        priced_us,
        "µs/call",
        baseline=("the same call path without the ledger", plain_us),
        better="lower",
        notes=f"thread CPU, p50 of {rounds} batches of {BATCH}; ${spent:.4f} counted",
    )
    yield Result.compare(
        "cost_ledger_added_us",
        priced_us - plain_us,
        "µs/call",
        better="lower",
        target=Target.value_at_most(5.0),
        notes="p50(with ledger) - p50(without): price lookup, cost, per-model counters",
    )
