"""The bench harness: registry, runner, JSON schema, and `rag-perf bench` end to end."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rag_perf_plugins.bench import registry
from rag_perf_plugins.bench.registry import (
    BenchContext,
    Benchmark,
    Result,
    Target,
    benchmark,
    curve,
)
from rag_perf_plugins.bench.runner import (
    BENCH_SCHEMA,
    UnknownCategoryError,
    build_document,
    collect_meta,
    compare_documents,
    run,
    select,
    validate_document,
)
from rag_perf_plugins.cli import main
from rag_perf_plugins.config import PerformanceConfig

CALLS: list[str] = []


def _fake_fast(ctx: BenchContext) -> Iterator[Result]:
    CALLS.append(f"fast quick={ctx.quick}")
    ctx.progress("measuring nothing")
    n = ctx.scale(1000, quick=10)
    yield Result.compare(
        "fake_latency_ms",
        2.0,
        "ms",
        baseline=("naive", 8.0),
        better="lower",
        target=Target.ratio_at_least(3.0),
        n=n,
    )
    yield Result.compare(
        "fake_throughput",
        50.0,
        "ops/s",
        baseline=("naive", 100.0),
        better="higher",
        target=Target.value_at_least(80.0),
        curve=curve(
            [1, 2, 4], {"ours": [10, 20, 40], "naive": [10, 12, 13]}, x_label="c", y_label="ops/s"
        ),
    )
    yield Result.compare(
        "fake_records_curve",
        1.0,
        "x",
        curve=[{"concurrency": 1, "p95_ms": 5.0}, {"concurrency": 8, "p95_ms": 9.0}],
    )


def _fake_broken(ctx: BenchContext) -> Iterator[Result]:
    yield Result.compare("fake_before_error", 1.0, "s")
    raise RuntimeError("simulated benchmark failure")


@pytest.fixture
def fake_category() -> Iterator[None]:
    added = [
        Benchmark("fakecat", "fast fake", _fake_fast),
        Benchmark("fakebroken", "broken fake", _fake_broken),
    ]
    registry.BENCHMARKS.extend(added)
    CALLS.clear()
    try:
        yield
    finally:
        for b in added:
            registry.BENCHMARKS.remove(b)


def test_bench_cli_end_to_end(
    fake_category: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "results.json"
    plots = tmp_path / "plots"
    status = main(
        ["bench", "--only", "fakecat", "--quick", "--output", str(out), "--plots", str(plots)]
    )
    assert status == 0
    assert CALLS == ["fast quick=True"]
    doc = json.loads(out.read_text())
    assert validate_document(doc) == []
    assert doc["meta"]["schema"] == BENCH_SCHEMA
    assert doc["meta"]["quick"] is True and doc["meta"]["only"] == ["fakecat"]
    assert doc["meta"]["config"]["cache_size"] == PerformanceConfig().cache_size
    assert doc["meta"]["cpu_count"] >= 1
    assert doc["meta"]["totals"] == {"results": 3, "passed": 1, "failed": 1, "errors": 0}
    latency, throughput, _ = doc["results"]
    assert latency["ratio"] == 4.0 and latency["passed"] is True
    assert latency["baseline"] == {"name": "naive", "value": 8.0}
    assert latency["category"] == "fakecat" and latency["extra"] == {"n": 10}
    assert throughput["ratio"] == 0.5 and throughput["passed"] is False
    shown = capsys.readouterr().out
    assert "fake_latency_ms" in shown and "PASS" in shown and "FAIL" in shown
    assert sorted(p.name for p in plots.iterdir()) == [
        "fakecat__fake_records_curve__latency.png",
        "fakecat__fake_throughput.png",
        "fakecat__ratios.png",
    ]
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in plots.iterdir())


def test_strict_turns_a_missed_target_into_failure(fake_category: None) -> None:
    assert main(["bench", "--only", "fakecat", "--quick", "--strict"]) == 1


def test_raising_benchmark_is_an_error_row_and_the_run_goes_on(
    fake_category: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "r.json"
    status = main(["bench", "--only", "fakebroken", "--only", "fakecat", "--output", str(out)])
    assert status == 1
    assert CALLS == ["fast quick=False"]  # ran after the broken one
    doc = json.loads(out.read_text())
    assert validate_document(doc) == []
    rows = {r["name"]: r for r in doc["results"]}
    error_row = rows["broken fake"]
    assert error_row["error"] == "RuntimeError: simulated benchmark failure"
    assert error_row["passed"] is False and error_row["value"] is None
    assert rows["fake_before_error"]["value"] == 1.0  # figures yielded before the error stay
    assert doc["meta"]["totals"]["errors"] == 1
    assert "ERROR" in capsys.readouterr().out


def test_unknown_category_is_a_clear_error(
    fake_category: None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["bench", "--only", "nosuch"]) == 2
    err = capsys.readouterr().err
    assert "unknown benchmark category 'nosuch'" in err
    assert "fakecat" in err and "tracker" in err


def test_compare_shows_change_against_an_earlier_run(
    fake_category: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old = tmp_path / "old.json"
    assert main(["bench", "--only", "fakecat", "--quick", "--output", str(old)]) == 0
    doc = json.loads(old.read_text())
    doc["results"][0]["value"] = 4.0  # the old run was twice as slow
    old.write_text(json.dumps(doc))
    capsys.readouterr()
    assert main(["bench", "--only", "fakecat", "--quick", "--compare", str(old)]) == 0
    shown = capsys.readouterr().out
    assert "vs old" in shown and "-50.0%" in shown


def test_markdown_and_render_reproduce_the_table_and_plots(
    fake_category: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, md = tmp_path / "results.json", tmp_path / "results.md"
    assert (
        main(["bench", "--only", "fakecat", "--quick", "--output", str(out), "--markdown", str(md)])
        == 0
    )
    doc = json.loads(out.read_text())
    assert len(doc["meta"]["loadavg_start"]) == 3 and len(doc["meta"]["loadavg_end"]) == 3
    text = md.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| fakecat |")]
    assert len(rows) == 3
    assert "| fakecat | `fake_latency_ms` | 2 | ms | naive: 8 | 4 | ratio >= 3 | PASS |" in rows
    assert "`fake_throughput`" in rows[1] and rows[1].endswith("| value >= 80 | FAIL |")
    assert text.startswith("Run: `rag-perf bench --only fakecat --quick")
    assert "3 results: 1 passed, 1 failed, 0 errors" in text
    assert "Seconds by category: fakecat" in text
    CALLS.clear()
    capsys.readouterr()
    # --render runs nothing, gives the same Markdown and draws the same plots.
    again, plots = tmp_path / "again.md", tmp_path / "plots"
    argv = ["bench", "--render", str(out), "--markdown", str(again), "--plots", str(plots)]
    assert main(argv) == 0
    assert CALLS == []
    assert again.read_text() == text
    assert "fake_latency_ms" in capsys.readouterr().out
    assert sorted(p.name for p in plots.iterdir()) == [
        "fakecat__fake_records_curve__latency.png",
        "fakecat__fake_throughput.png",
        "fakecat__ratios.png",
    ]
    capsys.readouterr()
    assert main(["bench", "--render", str(out), "--markdown", "-"]) == 0
    piped = capsys.readouterr()
    assert piped.out == text  # stdout holds only the Markdown; the table went to stderr
    assert "fake_latency_ms" in piped.err
    assert main(["bench", "--render", str(tmp_path / "missing.json")]) == 2
    (tmp_path / "bad.json").write_text(json.dumps({"meta": {}, "results": []}))
    assert main(["bench", "--render", str(tmp_path / "bad.json")]) == 2
    assert "not a results file" in " ".join(capsys.readouterr().err.split())


def test_target_and_result_round_trip_through_json() -> None:
    for target in (Target.value_below(500), Target.ratio_at_least(5.0), Target.value_at_most(0)):
        assert Target.parse(target.describe()) == target
    with pytest.raises(ValueError, match="not a target"):
        Target.parse("speed > 3")
    row = Result.compare(
        "x", 2.0, "ms", baseline=("b", 8.0), target=Target.ratio_at_least(3.0), n=1
    )
    row.category = "c"
    back = Result.from_json(row.to_json())
    assert back.to_json() == row.to_json()
    error_row = Result.from_json({**row.to_json(), "value": None, "error": "E: boom"})
    assert math.isnan(error_row.value) and error_row.passed is False


def test_bad_compare_file_and_bad_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["bench", "--only", "tracker", "--compare", str(tmp_path / "missing.json")]) == 2
    assert "cannot read" in capsys.readouterr().err
    assert main(["bench", "--preset", "no-such-preset"]) == 2
    assert "preset" in capsys.readouterr().err


def test_list_categories(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--list"]) == 0
    assert "tracker:" in capsys.readouterr().out


def test_python_dash_m_runs_the_same_cli() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "rag_perf_plugins.bench", "--list", "--no-peers"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert "tracker:" in out.stdout


# --- runner and schema --------------------------------------------------------------------
def test_select_and_run_without_the_cli(tmp_path: Path) -> None:
    calls: list[str] = []

    def ok(ctx: BenchContext) -> Iterator[Result]:
        calls.append("ok")
        yield Result.compare("x", 1.0, "s")

    benches = [Benchmark("a", "ok", ok), Benchmark("b", "ok again", ok)]
    assert select(benches, None) == benches
    assert select(benches, ["b"]) == benches[1:]
    with pytest.raises(UnknownCategoryError, match="available: a, b"):
        select(benches, ["c", "d"])
    ctx = BenchContext(PerformanceConfig(), quick=True, workdir=tmp_path)
    seen: list[str] = []
    results = run(benches, ctx, on_start=lambda b: seen.append(b.title))
    assert [r.category for r in results] == ["a", "b"] and seen == ["ok", "ok again"]
    doc = build_document(results, meta=collect_meta(PerformanceConfig(), quick=True))
    assert validate_document(json.loads(json.dumps(doc))) == []


def _valid_doc() -> dict[str, Any]:
    r = Result.compare("n", 2.0, "ms", baseline=("b", 4.0), target=Target.value_below(3.0))
    r.category = "c"
    return build_document([r], meta=collect_meta(PerformanceConfig(), quick=False))


@pytest.mark.parametrize(
    ("mutate", "problem"),
    [
        (lambda d: d.pop("meta"), "document: missing 'meta'"),
        (lambda d: d["meta"].pop("started_at"), "meta: missing 'started_at'"),
        (lambda d: d["meta"].update(schema="other/9"), "meta.schema"),
        (lambda d: d["results"][0].pop("unit"), "results[0]: missing 'unit'"),
        (lambda d: d["results"][0].update(value="fast"), "results[0].value: expected"),
        (lambda d: d["results"][0].update(passed=1), "results[0].passed: expected"),
        (lambda d: d["results"][0].update(baseline=None), "ratio: set without a baseline"),
        (lambda d: d["results"][0]["baseline"].pop("name"), "baseline: missing 'name'"),
        (lambda d: d["results"][0].update(better="sideways"), "better"),
        (lambda d: d["results"][0].update(error="boom"), "error row must have passed=false"),
        (lambda d: d["results"][0].update(target=None), "true without a target"),
        (lambda d: d.update(results={}), "results: expected an array"),
    ],
)
def test_schema_validation_catches_problems(mutate: Any, problem: str) -> None:
    doc = _valid_doc()
    assert validate_document(doc) == []
    mutate(doc)
    assert any(problem in p for p in validate_document(doc)), validate_document(doc)


def test_compare_documents_orients_changes() -> None:
    new = {
        "results": [
            {"category": "c", "name": "lat", "value": 5.0, "better": "lower"},
            {"category": "c", "name": "qps", "value": 5.0, "better": "higher"},
            {"category": "c", "name": "new_only", "value": 1.0, "better": "lower"},
        ]
    }
    old = {
        "results": [
            {"category": "c", "name": "lat", "value": 10.0},
            {"category": "c", "name": "qps", "value": 10.0},
        ]
    }
    changes = compare_documents(new, old)
    assert changes[("c", "lat")]["change"] == -0.5 and changes[("c", "lat")]["improved"] is True
    assert changes[("c", "qps")]["improved"] is False
    assert ("c", "new_only") not in changes


def test_result_ratio_orientation_and_non_finite_values() -> None:
    assert Result.compare("a", 2.0, "s", baseline=("b", 6.0)).ratio == 3.0
    assert Result.compare("a", 2.0, "x", baseline=("b", 6.0), better="higher").ratio == 1 / 3
    inf = Result.compare("a", 0.0, "s", baseline=("b", 1.0))
    assert inf.ratio == math.inf and inf.to_json()["ratio"] is None
    with pytest.raises(ValueError, match="3 points for 2"):
        curve([1, 2], {"s": [1, 2, 3]}, x_label="x", y_label="y")


def test_benchmark_decorator_registers_and_returns_the_function() -> None:
    before = len(registry.BENCHMARKS)

    def fn(ctx: BenchContext) -> Iterator[Result]:
        yield Result.compare("z", 1.0, "s")

    try:
        assert benchmark("tmpcat", "tmp")(fn) is fn
        assert registry.BENCHMARKS[-1] == Benchmark("tmpcat", "tmp", fn)
    finally:
        del registry.BENCHMARKS[before:]


def test_tracker_suite_quick_produces_its_figures(tmp_path: Path) -> None:
    from rag_perf_plugins.bench.suites import tracker as suite

    ctx = BenchContext(PerformanceConfig(), quick=True, workdir=tmp_path)
    results = run(
        [Benchmark("tracker", "t", suite.added_cost), Benchmark("tracker", "c", suite.cardinality)],
        ctx,
    )
    names = [r.name for r in results]
    assert names == [
        "tracked_call_us",
        "tracker_added_cost_us",
        "tracker_record_us",
        "tracker_disabled_added_cost_us",
        "tracker_cost_at_1000_names_us",
    ]
    assert all(r.error is None and math.isfinite(r.value) for r in results)
    assert results[0].baseline_name == "same function untracked"
    assert results[-1].extra["curve"]["x"] == [1.0, 10.0, 100.0, 1000.0]
    doc = build_document(results, meta=collect_meta(PerformanceConfig(), quick=True))
    assert validate_document(doc) == []


def test_docs_describe_every_result_key() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "benchmarks.md").read_text()
    assert BENCH_SCHEMA in doc
    for key in Result.compare("n", 1.0, "s").to_json():
        assert f"| `{key}` |" in doc, key


def test_non_finite_values_are_written_as_null_and_named() -> None:
    from rag_perf_plugins.bench.cli import _finite

    bad: list[str] = []
    document = {
        "results": [{"name": "r", "value": 1.5, "extra": {"a": math.inf, "b": [0.0, math.nan]}}]
    }
    assert _finite(document, "", bad) == {
        "results": [{"name": "r", "value": 1.5, "extra": {"a": None, "b": [0.0, None]}}]
    }
    assert bad == ["results[0].extra.a", "results[0].extra.b[1]"]
    json.dumps(_finite(document, "", []), allow_nan=False)
