"""Seed-target and scalability benchmarks: workloads, counts and result shapes.

No wall-clock assertions: the tests check what the benchmarks count (computed answers,
cache hits by tier, provider calls, entries present) and the rows they yield.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from rag_perf_plugins.bench import suites
from rag_perf_plugins.bench.registry import BenchContext
from rag_perf_plugins.bench.runner import build_document, collect_meta, validate_document
from rag_perf_plugins.bench.suites import scalability, seed
from rag_perf_plugins.config import PerformanceConfig
from rag_perf_plugins.simulator import Simulator
from rag_perf_plugins.simulator.testing import SimulatorFactory

SEED_NAMES = (
    "cache_hit_rate",
    "connection_reuse_rate",
    "p95_latency_ms",
    "async_speedup",
    "memory_overhead_per_cached_item_bytes",
)


def _ctx(tmp_path: Path) -> BenchContext:
    return BenchContext(config=PerformanceConfig(), quick=True, workdir=tmp_path)


# --- workload helpers -----------------------------------------------------------------------
def test_zipf_draw_is_seeded_in_range_and_skewed() -> None:
    draws = seed.zipf_draw(5_000, 100)
    assert draws == seed.zipf_draw(5_000, 100)
    assert draws != seed.zipf_draw(5_000, 100, seed=99)
    assert min(draws) >= 0 and max(draws) < 100
    counts = [draws.count(i) for i in range(3)]
    assert counts[0] > counts[1] > counts[2]  # rank 0 is the most popular
    assert seed.zipf_draw(50, 7, s=0.0) != [0] * 50  # s=0 is uniform, not degenerate


@pytest.mark.parametrize(("n", "k", "s"), [(0, 5, 1.0), (5, 0, 1.0), (5, 5, -0.5)])
def test_zipf_draw_rejects_bad_arguments(n: int, k: int, s: float) -> None:
    with pytest.raises(ValueError, match="must be"):
        seed.zipf_draw(n, k, s=s)


def test_percentile_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert seed.percentile(values, 0.95) == 95.0
    assert seed.percentile(values, 0.5) == 50.0
    assert seed.percentile([3.0, 1.0, 2.0], 1.0) == 3.0
    assert seed.percentile([7.0], 0.95) == 7.0
    assert seed.percentile([], 0.95) != seed.percentile([], 0.95)  # nan


# --- cache_hit_rate -------------------------------------------------------------------------
def test_hit_rate_with_disk_misses_only_first_lookups(tmp_path: Path) -> None:
    draws = [0, 1, 2, 0, 1, 2, 0, 3]
    config = PerformanceConfig(cache_dir=str(tmp_path / "c"), cache_size=1, enable_metrics=False)
    out = seed.simulate_hit_rate(config, draws)
    assert out["computed"] == 4  # one per distinct query
    assert out["hit_rate"] == pytest.approx(1 - 4 / 8)
    assert out["hits_by_tier"].get("disk", 0) >= 3  # the memory tier holds one item only


def test_hit_rate_memory_tier_alone_loses_evicted_queries() -> None:
    config = PerformanceConfig(cache_disk_enabled=False, cache_size=1, enable_metrics=False)
    out = seed.simulate_hit_rate(config, [0, 1, 0, 1, 1])
    assert out["computed"] == 4  # 0 and 1 evict each other; only the last repeat hits
    assert out["hits_by_tier"] == {"memory": 1}


def test_cache_hit_rate_benchmark_reaches_the_ideal(tmp_path: Path) -> None:
    [row] = list(seed.cache_hit_rate(_ctx(tmp_path)))
    assert row.name == "cache_hit_rate"
    extra = row.extra
    # Disk holds the whole working set: only each query's first lookup misses.
    assert extra["computed"] == extra["distinct_drawn"]
    assert row.value == pytest.approx(extra["ideal_1_minus_distinct_over_n"])
    assert extra["memory_tier_items"] < extra["distinct_drawn"]
    assert row.baseline_value is not None and row.baseline_value < row.value
    assert row.passed is (row.value > 0.80)
    assert not (tmp_path / "seed-hit-rate").exists()
    row.category = "seed"
    doc = build_document([row], meta=collect_meta(PerformanceConfig(), quick=True))
    assert validate_document(doc) == []


# --- p95_latency_ms -------------------------------------------------------------------------
def test_latency_phases_through_engine_and_cache(simulator: Simulator, tmp_path: Path) -> None:
    questions = ["What is rate limiting?", "What is response caching?"]
    queries = questions * 3
    phases = asyncio.run(
        seed.run_latency_phases(simulator.base_url, queries, tmp_path / "c", concurrency=2)
    )
    assert len(phases.bare) == len(phases.cold) == len(phases.warm) == len(queries)
    assert all(phases.warm_cached)  # the second pass is all answered from the cache
    assert phases.cold_cached.count(False) == len(questions)  # one computation per question
    assert 1 <= phases.embedding_provider_calls <= len(questions)
    computed = [t for t in phases.cold_timings if "generate_s" in t]
    assert len(computed) == len(questions)
    # Corpus index (1) + warm-up (2) + bare (6) embeddings, and the engine's own calls.
    endpoints = simulator.stats()["requests_by_endpoint"]
    assert endpoints["/v1/embeddings"] == 1 + 2 + 6 + phases.embedding_provider_calls
    assert endpoints["/v1/chat/completions"] == 2 + 6 + len(questions)


def test_rag_client_reports_http_errors(simulator_factory: SimulatorFactory) -> None:
    sim = simulator_factory(error_rate=1.0)

    async def call() -> None:
        client = seed.RagClient(sim.base_url)
        try:
            await client.achat("q", ["p"])
        finally:
            await client.aclose()

    with pytest.raises(RuntimeError, match="HTTP 5"):
        asyncio.run(call())


# --- scalability ----------------------------------------------------------------------------
def test_growth_exponent() -> None:
    assert scalability.growth_exponent([1e3, 1e4, 1e5], [5.0, 5.0, 5.0]) == pytest.approx(0.0)
    assert scalability.growth_exponent([1e3, 1e4], [1.0, 10.0]) == pytest.approx(1.0)
    assert scalability.growth_exponent([1e3, 1e5], [2.0, 4.0]) == pytest.approx(0.1505, abs=1e-3)
    with pytest.raises(ValueError, match="two or more"):
        scalability.growth_exponent([1e3], [1.0])
    with pytest.raises(ValueError, match="positive"):
        scalability.growth_exponent([0.0, 1.0], [1.0, 1.0])


def test_median_batch_us_calls_each_argument_of_whole_batches() -> None:
    seen: list[int] = []
    us = scalability.median_batch_us(seen.append, range(25), batch=10)
    assert seen == list(range(20))  # two whole batches; the 5 left over are not timed
    assert us >= 0.0
    with pytest.raises(ValueError, match="at least one batch"):
        scalability.median_batch_us(seen.append, range(3), batch=10)


def test_disk_growth_curve_small(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scalability, "QUICK_SIZES", (200, 600))
    rows = list(scalability.disk_cache_growth(_ctx(tmp_path)))
    assert [r.name for r in rows] == ["disk_cache_get_us", "disk_cache_set_us"]
    points = rows[0].extra["points"]
    assert [p["entries"] for p in points] == [200, 600]
    assert all(p["get_us"] > 0 and p["set_us"] > 0 for p in points)
    curve = rows[0].extra["curve"]
    assert curve["x"] == [200.0, 600.0] and set(curve["series"]) == {"get", "set"}
    assert "curve" not in rows[1].extra  # drawn once
    assert rows[1].baseline_value == points[0]["set_us"]
    assert not (tmp_path / "scalability-disk").exists()


# --- the five seed names --------------------------------------------------------------------
def test_each_seed_name_is_emitted_by_exactly_one_suite() -> None:
    sources = {p.name: p.read_text() for p in Path(suites.__file__).parent.glob("*.py")}
    for name in SEED_NAMES:
        owners = [f for f, text in sources.items() if re.search(rf'"{name}",\n', text)]
        assert len(owners) == 1, (name, owners)
