"""The aiolimiter peer comparison: what it measures, and aiolimiter staying out of the core."""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from rag_perf_plugins.bench.peers import admission_aiolimiter as peer
from rag_perf_plugins.bench.registry import BenchContext, Benchmark, Result
from rag_perf_plugins.bench.runner import build_document, collect_meta, run, validate_document
from rag_perf_plugins.config import PerformanceConfig


def test_an_oversize_request_is_refused_by_aiolimiter_and_admitted_in_debt_by_the_gate() -> None:
    outcome = peer.oversize(tokens_per_s=1_000)
    assert outcome.theirs_error is not None and outcome.theirs_error.startswith("ValueError")
    assert outcome.ours_admitted
    # 2,000 tokens against 950 tokens of burst (1 s less the 0.05 s jitter allowance): the
    # bucket owes 1.05 s, and a 100-token request waits that plus its own 0.1 s, less the
    # moments between the admission and the reading.
    assert 0.5 < outcome.ours_next_wait_s <= 1.15 + 1e-6


def test_mixed_measurement_sorts_waits_by_size_and_counts_the_ones_left_waiting() -> None:
    mixed = peer.MixedMeasurement((0.1, 0.2, 0.3), (5.0,), 1, 1.0)
    assert mixed.p95(big=True) == 5.0 and mixed.p95(big=False) == 0.3
    assert mixed.p50(big=False) == 0.2
    assert math.isnan(peer.MixedMeasurement((), (), 0, 0.0).p95(big=True))


@pytest.mark.slow
def test_quick_run_yields_every_figure_with_aiolimiter_named_as_the_baseline(
    tmp_path: Path,
) -> None:
    ctx = BenchContext(PerformanceConfig(), quick=True, workdir=tmp_path)
    results: list[Result] = run(
        [
            Benchmark("admission", "rate", peer.rate_vs_aiolimiter),
            Benchmark("admission", "mixed", peer.mixed_sizes_vs_aiolimiter),
        ],
        ctx,
    )
    assert [r.name for r in results] == [
        "admission_vs_aiolimiter_rate_fraction",
        "admission_vs_aiolimiter_cpu_ms_per_admission",
        "admission_vs_aiolimiter_big_request_p95_wait_s",
        "admission_vs_aiolimiter_small_request_p95_wait_s",
        "admission_vs_aiolimiter_mixed_token_fraction",
        "admission_vs_aiolimiter_oversize_admitted",
    ]
    for r in results:
        assert r.error is None and math.isfinite(r.value)
        assert r.baseline_name is not None and r.baseline_name.startswith("aiolimiter AsyncLimiter")
    big = results[2].extra
    assert big["ours_big"] > 0 and big["theirs_big"] > 0 and big["ours_small"] > 0
    assert (results[-1].value, results[-1].baseline_value) == (1.0, 0.0)
    doc = build_document(results, meta=collect_meta(PerformanceConfig(), quick=True))
    assert validate_document(doc) == []


def test_no_core_module_imports_aiolimiter() -> None:
    # aiolimiter is in the bench extra only; every core module must import without it.
    code = textwrap.dedent(
        """
        import importlib, pkgutil, sys
        sys.modules["aiolimiter"] = None      # as if the bench extra were not installed
        import rag_perf_plugins
        skip = {"rag_perf_plugins.langchain", "rag_perf_plugins.llama_index",
                "rag_perf_plugins.bench.peers"}
        todo = [("rag_perf_plugins.", rag_perf_plugins.__path__)]
        while todo:
            prefix, path = todo.pop()
            for info in pkgutil.iter_modules(path, prefix):
                if info.name not in skip:
                    module = importlib.import_module(info.name)
                    if info.ispkg:
                        todo.append((info.name + ".", module.__path__))
        print("ok")
        """
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert out.stdout.strip() == "ok"
