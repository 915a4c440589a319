"""Several worker processes share one rate limit and one cache through Redis.

Run it with ``python examples/shared_limits_redis.py`` (Redis at 127.0.0.1:6379, or set
``RAG_PERF_REDIS_URL``). It starts the bundled provider simulator with a limit of 600
requests per minute unless ``RAG_PERF_BASE_URL`` points at a running OpenAI-compatible
provider.

Three worker processes (think: three uvicorn workers behind one API key) each embed 40
texts, four threads at a time, drawn from the same 60 texts. Every process builds its
components from one config::

    PerformanceConfig(redis_url=..., shared_rate_limit=True, requests_per_minute=600,
                      worker_count=3, redis_position="instead-of-disk", ...)

so each process's admission gate reserves from one budget kept in Redis (an atomic Lua
script keyed by provider, model and an API-key fingerprint), and each process's cache
reads and writes one Redis tier: a text embedded by one worker is a cache hit in the
others (two workers missing the same text at the same moment both call the provider:
there is no cross-process single-flight). Had each worker kept its own 600 RPM budget,
together they would send up to three times the limit and collect 429s. If Redis goes
away, each worker falls back to 600 / 3 RPM on its own and the cache to its memory tier
(``limiter_fallback``, ``worker_count``).

The simulator's bucket holds two seconds of budget and the gates' one second, so a
request admitted on time but delayed on a busy machine still fits; the rate is the same.
On a starved machine a request can still leave more than a second after its admission
and meet a 429: the ``RetryPolicy`` retries it after ``Retry-After``, and the pause that
429 sets on the key holds in every process (it is kept in Redis).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import openai

from rag_perf_plugins import CacheManager, PerformanceConfig
from rag_perf_plugins.admission import RetryPolicy, get_gate
from rag_perf_plugins.admission.redis_store import shared_budget_store
from rag_perf_plugins.pool.http import openai_client
from rag_perf_plugins.redis.client import describe_error, redact_url
from rag_perf_plugins.simulator import Simulator

RPM = 600
WORKERS = 3
CALLS_PER_WORKER = 40
TEXTS = [f"passage {i} about shared rate limits" for i in range(60)]
MODEL = "text-embedding-3-small"
API_KEY = os.environ.get("OPENAI_API_KEY", "sk-example-not-a-real-key")


def make_config(redis_url: str, prefix: str) -> PerformanceConfig:
    """The one config every worker process builds its gate and cache from."""
    return PerformanceConfig(
        redis_url=redis_url,
        cache_namespace_prefix=prefix,  # one prefix per application or tenant
        shared_rate_limit=True,
        requests_per_minute=RPM,
        worker_count=WORKERS,
        redis_position="instead-of-disk",
        cache_disk_enabled=False,
        max_concurrent_requests=4,
        enable_metrics=False,
    )


def worker(index: int, base_url: str, redis_url: str, prefix: str, ready: Any, out: Any) -> None:
    """One worker process; reports its counts, or its error, on ``out``."""
    try:
        out.put(work(index, base_url, redis_url, prefix, ready))
    except BaseException as exc:
        out.put({"index": index, "error": describe_error(exc)})


def work(index: int, base_url: str, redis_url: str, prefix: str, ready: Any) -> dict[str, Any]:
    """40 cached, gated embedding calls from four threads."""
    config = make_config(redis_url, prefix)
    gate = get_gate("openai", MODEL, API_KEY, config=config)  # the budget lives in Redis
    cache = CacheManager(config)
    client = openai_client(base_url=base_url, api_key=API_KEY, config=config)
    policy = RetryPolicy(config)  # the single retry owner (the SDK's retries are off)
    counts = {"provider": 0, "rate_limited": 0, "failed": 0}
    lock = threading.Lock()

    def count(what: str) -> None:
        with lock:
            counts[what] += 1

    def embed(text: str) -> list[float]:
        def send() -> Any:
            count("provider")
            return client.embeddings.create(model=MODEL, input=[text])

        # The gate runs inside each attempt; a 429 pauses the key for every process (the
        # pause is kept in Redis too) and is retried after its Retry-After.
        reply = policy.call(send, gate=gate, tokens=8)
        return list(reply.data[0].embedding)

    def call(n: int) -> None:
        text = TEXTS[(n * 7 + index * 13) % len(TEXTS)]
        try:
            cache.get_or_compute(text, lambda: embed(text), namespace="embeddings", model=MODEL)
        except openai.RateLimitError:
            count("rate_limited")
        except Exception:
            count("failed")

    def warm_up(_: int) -> None:
        with gate.acquire(tokens=2):  # a provider request like any other
            client.embeddings.create(model=MODEL, input=["warm-up"])

    with ThreadPoolExecutor(4) as pool:
        # A cold process spends its first second importing and connecting: a request
        # admitted on time but sent a second late arrives bunched with later ones. Warm
        # every thread once (12 requests in all fit the provider's burst), wait until every
        # worker is warm, then go.
        list(pool.map(warm_up, range(4)))
        ready.wait(timeout=120)
        list(pool.map(call, range(CALLS_PER_WORKER)))
    stats = cache.get_stats()
    cache.close()
    return {
        "index": index,
        **counts,
        "redis_hits": stats["tiers"].get("redis", {}).get("hits", 0),
        "retries": policy.stats()["retries"],
        "store": shared_budget_store(config).stats(),  # the store the gate uses
    }


@contextlib.contextmanager
def provider() -> Iterator[tuple[str, Simulator | None]]:
    """The provider's base URL: RAG_PERF_BASE_URL, else a simulator started here."""
    url = os.environ.get("RAG_PERF_BASE_URL")
    if url:
        yield url, None
        return
    with Simulator(rpm=RPM, burst_seconds=2.0, latency_ms=20.0).in_thread() as sim:
        yield sim.base_url, sim


def main() -> None:
    redis_url = os.environ.get("RAG_PERF_REDIS_URL") or "redis://127.0.0.1:6379/0"
    prefix = f"example-{uuid.uuid4().hex[:8]}"
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    ready = ctx.Barrier(WORKERS)
    with provider() as (base_url, sim):
        print(f"provider {base_url}, redis {redact_url(redis_url)}, key prefix {prefix!r}")
        print(f"{WORKERS} processes share one budget of {RPM} requests/minute\n")
        start = time.perf_counter()
        procs = [
            ctx.Process(target=worker, args=(i, base_url, redis_url, prefix, ready, out))
            for i in range(WORKERS)
        ]
        for p in procs:
            p.start()
        results = sorted((out.get(timeout=300) for _ in procs), key=lambda r: r["index"])
        for p in procs:
            p.join()
        failed_workers = [r for r in results if "error" in r]
        if failed_workers:
            raise SystemExit(f"worker {failed_workers[0]['index']}: {failed_workers[0]['error']}")
        elapsed = time.perf_counter() - start
        sim_stats = sim.stats() if sim is not None else None
    for r in results:
        print(
            f"worker {r['index']}: {CALLS_PER_WORKER} calls, {r['provider']} provider "
            f"requests, {r['redis_hits']} cache hits through Redis, {r['retries']} retried, "
            f"{r['rate_limited']} rate-limited, {r['failed']} failed; budget calls answered "
            f"by Redis {r['store']['redis_calls']}, by the fallback {r['store']['fallback_calls']}"
        )
    provider_calls = sum(r["provider"] for r in results)
    limited = sum(r["rate_limited"] for r in results)
    failed = sum(r["failed"] for r in results)
    print(
        f"\n{provider_calls} provider requests (plus {4 * WORKERS} warm-ups) for "
        f"{len(TEXTS)} distinct texts, {elapsed:.1f} s with process start-up"
    )
    if sim_stats is not None:
        print(
            f"the simulator saw {sim_stats['requests_total']} requests and sent "
            f"{sim_stats['rate_limited_total']} 429s"
        )
    with CacheManager(make_config(redis_url, prefix)) as cache:
        cache.clear()  # leave nothing behind in a shared Redis
    total = WORKERS * CALLS_PER_WORKER
    print(f"{total - limited - failed}/{total} calls answered, {limited} rate-limited")


if __name__ == "__main__":
    main()
