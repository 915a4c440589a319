"""Seed-target results that no other suite emits: ``cache_hit_rate`` and ``p95_latency_ms``.

Run with ``rag-perf bench --only seed`` (add ``--quick`` for a short run). The other three
seed targets come from their own categories and are not repeated here:
``connection_reuse_rate`` (``pool``), ``async_speedup`` (``async``) and
``memory_overhead_per_cached_item_bytes`` (``cache``). The workloads are defined in
``docs/benchmarks.md`` ("Seed targets"):

- ``cache_hit_rate``: N lookups drawn from K distinct queries with a seeded Zipf law
  (exponent :data:`ZIPF_S`) through ``CacheManager.get_or_compute`` on a real temporary
  directory, with the memory tier holding a tenth of K (smaller than the working set) and
  the disk tier on. The ideal, where only each query's first lookup misses, is reported
  beside it (``1 - K/N`` and ``1 - distinct drawn/N``); the same draw through the memory
  tier alone, same size, is the same-run baseline.
- ``p95_latency_ms`` (cold cache) and ``p95_latency_ms_warm``: a RAG workload of Zipf-drawn
  questions, 16 at a time, against the simulator in its own process with the demo's latency
  model (:data:`SIMULATOR`). Each query embeds the question through
  :class:`~rag_perf_plugins.services.embeddings.EmbeddingService` (cached, batched, over HTTP
  ``/embeddings``), retrieves the nearest passages from an in-memory matrix (numpy dot
  products) and asks ``/chat/completions``, all inside
  :class:`~rag_perf_plugins.engine.AsyncRAGEngine` with a :class:`CacheManager` in a fresh
  directory. The baseline is the same calls made directly (no engine, no cache) on the
  same connections.

Latency is wall time per query measured around each call (``time.perf_counter``), so it
includes queueing in the client. Not done: a real provider's network, rate limits (the
simulator has none here) or tail faults; see the docs for what the figures mean.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

from ...cache import CacheManager, query_key
from ...config import PerformanceConfig
from ...engine import AsyncRAGEngine, QueryResult, process_queries_concurrently
from ...services.embeddings import CacheEmbeddingStore, EmbeddingService
from ..registry import BenchContext, Result, Target, benchmark
from .concurrency import CORPUS, simulator_process

__all__ = [
    "SIMULATOR",
    "ZIPF_S",
    "LatencyPhases",
    "RagClient",
    "percentile",
    "run_latency_phases",
    "simulate_hit_rate",
    "zipf_draw",
]

ZIPF_S = 1.0
"""Exponent of the Zipf law of query popularity: rank r is drawn with weight ``1 / r**s``."""

SIMULATOR: dict[str, Any] = {
    "latency_ms": 40.0,
    "jitter_ms": 20.0,
    "latency_per_token_ms": 0.3,
    "embedding_latency_per_token_ms": 0.01,
    "seed": 7,
}
"""The demo's latency model (ms): 40 + uniform [0, 20) + 0.3/answer token + 0.01/input token.

No rate limit: the figure is latency, not admission (see ``admission`` for that).
"""

EMBED_MODEL = "text-embedding-3-small"
EMBED_DIMENSIONS = 256
CHAT_MODEL = "gpt-4o-mini"
MAX_ANSWER_TOKENS = 64
CONCURRENCY = 16
TOP_K = 4

_TOPICS = (
    "connection pooling",
    "response caching",
    "rate limiting",
    "embedding batching",
    "retry policies",
    "vector search",
    "prompt templates",
    "latency percentiles",
    "token budgets",
    "event loops",
)
_ASPECTS = ("what it is", "when to use it", "how to configure it", "how to measure it")


def _corpus() -> list[str]:
    passages = list(CORPUS)
    for topic in _TOPICS:
        for aspect in _ASPECTS:
            passages.append(
                f"About {topic}, {aspect}: the guide explains {topic} with an example and "
                f"lists the settings that matter for {aspect.split()[-1]}."
            )
    return passages


def _questions() -> list[str]:
    return [f"For {topic}, {aspect}?" for topic in _TOPICS for aspect in _ASPECTS]


def zipf_draw(n: int, k: int, *, s: float = ZIPF_S, seed: int = 15) -> list[int]:
    """``n`` ranks in ``[0, k)`` drawn with weight ``1 / (rank + 1) ** s``, seeded.

    Example: ``zipf_draw(10, 3)`` is ten ints in {0, 1, 2}, mostly 0.

    Raises:
        ValueError: ``n`` or ``k`` is below 1, or ``s`` is negative.
    """
    if n < 1 or k < 1:
        msg = f"n and k must be at least 1, got n={n}, k={k}"
        raise ValueError(msg)
    if s < 0:
        msg = f"s must be >= 0, got {s}"
        raise ValueError(msg)
    weights = 1.0 / np.arange(1, k + 1, dtype=np.float64) ** s
    rng = np.random.default_rng(seed)
    return [int(i) for i in rng.choice(k, size=n, p=weights / weights.sum())]


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-quantile (0..1) by the nearest-rank method; ``nan`` for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(np.ceil(q * len(ordered))) - 1))]


def simulate_hit_rate(
    config: PerformanceConfig, draws: Sequence[int], *, payload_bytes: int = 200
) -> dict[str, Any]:
    """Run ``draws`` through ``CacheManager.get_or_compute`` (namespace ``query``).

    Example: ``simulate_hit_rate(PerformanceConfig(cache_dir=d, cache_size=10), [0, 1, 0])``
    has ``hit_rate`` 1/3.

    Each draw ``i`` looks up the key of query ``i``; a miss computes a ``payload_bytes``
    answer and stores it. Returns ``hit_rate`` (1 - computed / lookups), the manager's
    hits per tier, lookups and computes. The manager is closed before returning.
    """
    manager = CacheManager(config)
    computed = 0
    payload = "a" * payload_bytes

    def compute() -> str:
        nonlocal computed
        computed += 1
        return payload

    try:
        for i in draws:
            key = query_key(pipeline="seed-zipf", query=f"question {i}")
            manager.get_or_compute(key, compute, namespace="query")
        stats = manager.get_stats()
    finally:
        manager.close()
    ns = stats["namespaces"].get("query", {"hits": {}})
    return {
        "hit_rate": 1.0 - computed / len(draws),
        "lookups": len(draws),
        "computed": computed,
        "hits_by_tier": dict(ns["hits"]),
    }


@benchmark("seed", "cache_hit_rate: seeded Zipf workload, memory tier smaller than the set")
def cache_hit_rate(ctx: BenchContext) -> Iterator[Result]:
    """Hit rate of a Zipf workload through memory + disk tiers vs the memory tier alone."""
    n = ctx.scale(20_000, quick=3_000)
    k = ctx.scale(2_000, quick=300)
    memory_items = k // 10
    draws = zipf_draw(n, k)
    distinct = len(set(draws))
    directory = ctx.workdir / "seed-hit-rate"
    shutil.rmtree(directory, ignore_errors=True)
    ctx.progress(f"{n} lookups over {k} queries, memory tier {memory_items} items + disk")
    common: dict[str, Any] = {"cache_size": memory_items, "enable_metrics": False}
    ours = simulate_hit_rate(
        PerformanceConfig(cache_dir=str(directory), cache_disk_enabled=True, **common), draws
    )
    memory_only = simulate_hit_rate(PerformanceConfig(cache_disk_enabled=False, **common), draws)
    shutil.rmtree(directory, ignore_errors=True)
    yield Result.compare(
        "cache_hit_rate",
        ours["hit_rate"],
        "ratio",
        baseline=(f"memory tier alone ({memory_items} items)", memory_only["hit_rate"]),
        better="higher",
        target=Target.value_above(0.80),
        notes=(
            f"{n:,} lookups, Zipf s={ZIPF_S:g} over {k:,} queries ({distinct:,} drawn); "
            f"memory tier {memory_items:,} items + disk tier; ideal 1-K/N = {1 - k / n:.3f}, "
            f"1-distinct/N = {1 - distinct / n:.3f}"
        ),
        ideal_1_minus_k_over_n=1 - k / n,
        ideal_1_minus_distinct_over_n=1 - distinct / n,
        lookups=n,
        distinct_queries=k,
        distinct_drawn=distinct,
        memory_tier_items=memory_items,
        zipf_s=ZIPF_S,
        hits_by_tier=ours["hits_by_tier"],
        computed=ours["computed"],
    )


class RagClient:
    """Embeddings and chat completions over one aiohttp session (keep-alive connections).

    Example::

        client = RagClient(base_url)
        vectors = await client.aembed(["a", "b"])
        answer = await client.achat("q?", ["passage"])
        await client.aclose()

    Raises ``RuntimeError`` on an HTTP error answer (no retries here; the engine and the
    embedding service own retries when used).
    """

    def __init__(self, base_url: str, *, max_connections: int = 64) -> None:
        self.base_url = base_url.rstrip("/")
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._max_connections),
                timeout=aiohttp.ClientTimeout(total=30.0),
            )
        return self._session

    async def _post(self, path: str, body: dict[str, Any]) -> Any:
        async with self._client().post(f"{self.base_url}{path}", json=body) as response:
            if response.status >= 400:
                text = await response.text()
                msg = f"{path} answered HTTP {response.status}: {text[:200]}"
                raise RuntimeError(msg)
            return await response.json()

    async def aembed(self, texts: list[str]) -> list[list[float]]:
        """One ``/embeddings`` request; vectors in input order."""
        data = await self._post(
            "/embeddings",
            {"model": EMBED_MODEL, "input": texts, "dimensions": EMBED_DIMENSIONS},
        )
        rows = sorted(data["data"], key=lambda row: row["index"])
        return [row["embedding"] for row in rows]

    async def achat(self, query: str, passages: Sequence[str]) -> str:
        """One ``/chat/completions`` request with the passages as context."""
        data = await self._post(
            "/chat/completions",
            {
                "model": CHAT_MODEL,
                "temperature": 0,
                "max_tokens": MAX_ANSWER_TOKENS,
                "messages": [
                    {"role": "system", "content": "Answer from:\n\n" + "\n\n".join(passages)},
                    {"role": "user", "content": query},
                ],
            },
        )
        return str(data["choices"][0]["message"]["content"])

    async def aclose(self) -> None:
        """Close the session."""
        if self._session is not None:
            await self._session.close()
            self._session = None


class _Index:
    """Passages and their unit vectors; ``search`` is one matrix-vector product."""

    def __init__(self, passages: list[str], vectors: Sequence[Sequence[float]]) -> None:
        matrix = np.asarray(vectors, dtype=np.float32)
        self.passages = passages
        self.matrix = matrix / np.linalg.norm(matrix, axis=1, keepdims=True)

    def search(self, vector: Sequence[float], top_k: int) -> list[str]:
        scores = self.matrix @ np.asarray(vector, dtype=np.float32)
        best = np.argsort(-scores)[:top_k]
        return [self.passages[int(i)] for i in best]


async def _timed_run(
    ask: Callable[[str], Awaitable[Any]],
    queries: list[str],
    concurrency: int,
    timings: list[dict[str, float]] | None = None,
) -> tuple[list[float], list[bool]]:
    """Per-query wall latencies (s) and ``cached`` flags, ``concurrency`` at a time.

    ``timings`` (when given) receives the engine's ``QueryResult.timings`` of each query.
    """
    latencies: list[float] = []
    cached: list[bool] = []

    class Timed:
        async def query(self, q: str) -> Any:
            t0 = time.perf_counter()
            out = await ask(q)
            latencies.append(time.perf_counter() - t0)
            cached.append(bool(getattr(out, "cached", False)))
            if timings is not None and isinstance(out, QueryResult):
                timings.append(dict(out.timings))
            return out

    results = await process_queries_concurrently(Timed(), queries, max_concurrent=concurrency)
    failed = [r for r in results if isinstance(r, QueryResult) and not r.ok]
    if failed:
        msg = f"{len(failed)} queries failed, first: {failed[0].error!r}"
        raise RuntimeError(msg)
    return latencies, cached


@dataclass
class LatencyPhases:
    """What :func:`run_latency_phases` measured: seconds per query, in completion order."""

    bare: list[float]
    cold: list[float]
    warm: list[float]
    cold_cached: list[bool]
    warm_cached: list[bool]
    embedding_provider_calls: int
    cold_timings: list[dict[str, float]]


async def run_latency_phases(
    base_url: str, queries: list[str], cache_dir: Path, *, concurrency: int = CONCURRENCY
) -> LatencyPhases:
    """Run ``queries`` bare, then through the engine on an empty cache, then again (warm).

    Example: ``asyncio.run(run_latency_phases(sim.base_url, ["q?"] * 4, tmp))``.

    ``cache_dir`` should be empty (a cold start). The bare run uses the same client and
    connections, with no engine, no cache and no embedding service.
    """
    client = RagClient(base_url)
    passages = _corpus()
    config = PerformanceConfig(
        cache_dir=str(cache_dir),
        cache_ttl=None,
        max_concurrent_requests=4 * concurrency,
        max_wait_time=0.002,
    )
    manager = CacheManager(config)
    service = EmbeddingService(
        _no_sync_embedding,
        aembed_many=client.aembed,
        provider="simulator",
        model=EMBED_MODEL,
        dimensions=EMBED_DIMENSIONS,
        symmetric=True,
        config=config,
        store=CacheEmbeddingStore(manager, model=EMBED_MODEL),
    )
    try:
        index = _Index(passages, await client.aembed(passages))

        async def bare(q: str) -> QueryResult:
            vector = (await client.aembed([q]))[0]
            found = index.search(vector, TOP_K)
            return QueryResult(q, answer=await client.achat(q, found), sources=tuple(found))

        async def retrieve(q: str, top_k: int) -> list[str]:
            return index.search(await service.aembed_query(q), top_k)

        async with AsyncRAGEngine(
            config,
            retriever=retrieve,
            generator=client.achat,
            cache=manager,
            top_k=TOP_K,
            engine_id="seed-rag-v1",
        ) as engine:
            # Open the connections first, so no phase pays for connects.
            await _timed_run(bare, [f"warm-up {i}" for i in range(concurrency)], concurrency)
            bare_s, _ = await _timed_run(bare, queries, concurrency)
            cold_timings: list[dict[str, float]] = []
            cold_s, cold_cached = await _timed_run(engine.query, queries, concurrency, cold_timings)
            warm_s, warm_cached = await _timed_run(engine.query, queries, concurrency)
    finally:
        await service.aclose()
        await client.aclose()
        manager.close()
    return LatencyPhases(
        bare_s, cold_s, warm_s, cold_cached, warm_cached, service.provider_calls, cold_timings
    )


def _stage_means(phases: LatencyPhases) -> dict[str, float]:
    """Mean ms per engine stage (``retrieve_s``, ``generate_s``, ...) of computed queries."""
    computed = [t for t in phases.cold_timings if "generate_s" in t]
    if not computed:
        return {}
    names = sorted({k for t in computed for k in t})
    return {
        k.removesuffix("_s"): round(1000 * sum(t.get(k, 0.0) for t in computed) / len(computed), 2)
        for k in names
    }


def _no_sync_embedding(texts: list[str]) -> list[list[float]]:
    msg = "this benchmark embeds on the async path only"
    raise RuntimeError(msg)


@benchmark("seed", "p95_latency_ms: RAG queries through our services (simulator), cold and warm")
def p95_latency(ctx: BenchContext) -> Iterator[Result]:
    """p95 of embed → retrieve → chat through AsyncRAGEngine, cold and warm cache."""
    n = ctx.scale(600, quick=160)
    questions = _questions()
    queries = [questions[i] for i in zipf_draw(n, len(questions), seed=16)]
    distinct = len(set(queries))
    cache_dir = ctx.workdir / "seed-latency-cache"
    shutil.rmtree(cache_dir, ignore_errors=True)
    with simulator_process(**SIMULATOR) as base_url:
        ctx.progress(f"{n} queries ({distinct} distinct), {CONCURRENCY} at a time")
        phases = asyncio.run(run_latency_phases(base_url, queries, cache_dir))
    shutil.rmtree(cache_dir, ignore_errors=True)
    ms = {
        "bare": [v * 1000 for v in phases.bare],
        "cold": [v * 1000 for v in phases.cold],
        "warm": [v * 1000 for v in phases.warm],
        "cold_computed": [
            v * 1000 for v, hit in zip(phases.cold, phases.cold_cached, strict=True) if not hit
        ],
    }
    p95 = {name: percentile(values, 0.95) for name, values in ms.items()}
    p50 = {name: percentile(values, 0.50) for name, values in ms.items()}
    model = (
        "simulator latency 40 ms + uniform [0, 20) ms + 0.3 ms/answer token "
        f"(max {MAX_ANSWER_TOKENS}) + 0.01 ms/embedded token, per request"
    )
    summary = {
        f"{name}_{q}_ms": round(values[name], 2)
        for q, values in (("p50", p50), ("p95", p95))
        for name in ms
    }
    yield Result.compare(
        "p95_latency_ms",
        p95["cold"],
        "ms",
        baseline=("same calls, no engine or cache", p95["bare"]),
        better="lower",
        target=Target.value_below(500.0),
        notes=(
            f"cold cache: {n} Zipf-drawn queries ({distinct} distinct), {CONCURRENCY} at a "
            f"time; embed query + retrieve + chat; {model}"
        ),
        queries=n,
        distinct=distinct,
        concurrency=CONCURRENCY,
        cold_answers_from_cache=sum(phases.cold_cached),
        warm_answers_from_cache=sum(phases.warm_cached),
        embedding_provider_calls=phases.embedding_provider_calls,
        cold_computed_mean_stage_ms=_stage_means(phases),
        **summary,
    )
    yield Result.compare(
        "p95_latency_ms_warm",
        p95["warm"],
        "ms",
        baseline=("same engine, cold cache", p95["cold"]),
        better="lower",
        target=Target.value_below(500.0),
        notes=(
            f"the same {n} queries again on the same engine: {sum(phases.warm_cached)} of "
            f"{n} answers from the query cache"
        ),
        **summary,
    )
