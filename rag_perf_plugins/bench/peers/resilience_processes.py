"""N processes, one dead primary: do they share its circuit breaker through Redis?

Example::

    run = run_shared_breaker(base_url, "redis://127.0.0.1:6379/0", processes=4, duration_s=3.0)
    run.primary_requests        # what the dead primary received from all four

Each worker is a ``multiprocessing`` spawn child with a ``PerfChatModel`` over the real
``ChatOpenAI`` (primary ``gpt-4o-mini``, fallback ``gpt-4o``) calling the simulator in a
loop. With ``shared`` its breakers live in Redis under a fresh prefix (every process sees
one breaker per target); without, each process has its own. The simulator's outage and
its per-model counters are the caller's (it runs in the calling process).
"""

from __future__ import annotations

import multiprocessing
import time
import uuid
from dataclasses import dataclass
from typing import Any

from ..._secrets import describe_error

__all__ = ["BREAKER", "SharedBreakerRun", "run_shared_breaker"]

PRIMARY, FALLBACK = "gpt-4o-mini", "gpt-4o"
# Trip at the first "down" answer (or after 4 outcomes at half failed); one probe every
# 0.5 s (no growth, no jitter: the same cadence in every process, so the counts compare).
BREAKER: dict[str, Any] = {
    "breaker_min_calls": 4,
    "breaker_failure_ratio": 0.5,
    "breaker_cooldown": 0.5,
    "breaker_probes": 1,
    "breaker_window": 30.0,
    "breaker_cooldown_growth": 1.0,
    "breaker_cooldown_jitter": 0.0,
}


@dataclass(frozen=True)
class SharedBreakerRun:
    """What N workers did: calls answered, failed, and Redis use (summed over workers)."""

    processes: int
    shared: bool
    ok: int
    errors: int
    fallback_answers: int
    redis_calls: int
    fallback_calls: int


def _worker(spec: dict[str, Any], ready: Any, go: Any, start_value: Any, out: Any) -> None:
    try:
        from rag_perf_plugins.langchain import PerfChatModel, pooled_chat_openai

        from ...config import PerformanceConfig
        from ...resilience.redis_store import RedisBreakerStore

        config = PerformanceConfig(
            enable_caching=False,
            enable_metrics=False,
            redis_url=spec["redis_url"],
            cache_namespace_prefix=spec["prefix"],
            retry_max_attempts=1,
            **{**BREAKER, **spec["breaker"]},
        )

        def model(name: str) -> Any:
            return pooled_chat_openai(
                base_url=spec["base_url"], model=name, api_key="sk-breaker", temperature=0.0
            )

        llm = PerfChatModel(model(PRIMARY), config, fallbacks=[model(FALLBACK)])
        llm.invoke("warm-up")  # connect before the start (the primary is not down yet)
        ready.put(True)
        go.wait(120)
        start_at = start_value.value
        while time.time() < start_at:
            time.sleep(0.005)
        ok = errors = fell_back = 0
        i = 0
        while time.time() < start_at + spec["duration_s"]:
            i += 1
            try:
                answer = llm.invoke(f"question {i} of {spec['tag']}")
            except Exception:
                errors += 1
            else:
                ok += 1
                fell_back += "fallback_target" in answer.response_metadata
            time.sleep(0.01)
        store = llm.service.breakers().store
        stats = store.stats() if isinstance(store, RedisBreakerStore) else {}
        out.put(
            {
                "ok": ok,
                "errors": errors,
                "fell_back": fell_back,
                "redis_calls": stats.get("redis_calls", 0),
                "fallback_calls": stats.get("fallback_calls", 0),
            }
        )
    except BaseException as exc:  # reported to the parent, which raises
        ready.put(False)
        out.put({"error": describe_error(exc)})


def run_shared_breaker(
    base_url: str,
    redis_url: str | None,
    *,
    processes: int,
    duration_s: float,
    before_start: Any = None,
    breaker: dict[str, Any] | None = None,
) -> SharedBreakerRun:
    """Run ``processes`` workers for ``duration_s`` seconds; ``redis_url=None``: local breakers.

    ``before_start()`` is called once every worker is ready (warmed up) and before they
    start: schedule the outage there. ``breaker``: config keys over :data:`BREAKER`.
    """
    ctx = multiprocessing.get_context("spawn")
    ready, out = ctx.Queue(), ctx.Queue()
    go = ctx.Event()
    start_value = ctx.Value("d", 0.0)
    spec = {
        "base_url": base_url,
        "redis_url": redis_url,
        "prefix": f"bench-cb-{uuid.uuid4().hex[:12]}",
        "duration_s": duration_s,
        "tag": uuid.uuid4().hex[:6],
        "breaker": dict(breaker or {}),
    }
    workers = [
        ctx.Process(target=_worker, args=(spec, ready, go, start_value, out))
        for _ in range(processes)
    ]
    for w in workers:
        w.start()
    try:
        for _ in workers:
            ready.get(timeout=120)
        if before_start is not None:
            before_start()
        start_value.value = time.time() + 0.5
        go.set()
        results = [out.get(timeout=duration_s + 120) for _ in workers]
    finally:
        for w in workers:
            w.join(timeout=30)
            if w.is_alive():
                w.kill()
                w.join()
    failed = [r["error"] for r in results if "error" in r]
    if failed:
        msg = f"{len(failed)} worker(s) failed, first: {failed[0]}"
        raise RuntimeError(msg)
    return SharedBreakerRun(
        processes=processes,
        shared=redis_url is not None,
        ok=sum(r["ok"] for r in results),
        errors=sum(r["errors"] for r in results),
        fallback_answers=sum(r["fell_back"] for r in results),
        redis_calls=sum(r["redis_calls"] for r in results),
        fallback_calls=sum(r["fallback_calls"] for r in results),
    )
