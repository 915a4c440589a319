"""Run registered benchmarks and build the results document (schema ``rag-perf-bench/1``).

Example::

    benchmarks, import_errors = load_benchmarks()
    chosen = select(benchmarks, only=["tracker"])
    results = run(chosen, BenchContext(config, quick=True, workdir=tmp))
    document = build_document(results, meta=collect_meta(config, quick=True))
    assert validate_document(document) == []

The schema is documented in ``docs/benchmarks.md`` and checked by
:func:`validate_document` (plain Python, no JSON-Schema dependency). A benchmark that raises
becomes one error row (``value`` null, ``passed`` false, ``error`` set) and the run goes on.
Does not: time anything itself (each benchmark measures and reports its own figures), or
run benchmarks in parallel (they would disturb each other's timings).
"""

from __future__ import annotations

import importlib
import math
import os
import pkgutil
import platform
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from .._secrets import describe_error, redact_text
from ..config import PerformanceConfig
from .registry import BENCHMARKS, BenchContext, Benchmark, Result

__all__ = [
    "BENCH_SCHEMA",
    "UnknownCategoryError",
    "build_document",
    "collect_meta",
    "compare_documents",
    "load_benchmarks",
    "render_markdown",
    "run",
    "select",
    "validate_document",
]

BENCH_SCHEMA = "rag-perf-bench/1"
SUITE_PACKAGES = ("rag_perf_plugins.bench.suites", "rag_perf_plugins.bench.peers")
# Versions recorded in meta: what the figures depend on.
_VERSIONED = (
    "rag-perf-plugins",
    "numpy",
    "httpx",
    "aiohttp",
    "diskcache",
    "aiolimiter",
    "redis",
    "openai",
    "langchain-core",
    "langchain-openai",
    "langchain-classic",
    "langchain-community",
    "llama-index-core",
    "psutil",
)


class UnknownCategoryError(ValueError):
    """``--only`` named a category no benchmark registered."""


def load_benchmarks(
    packages: Sequence[str] = SUITE_PACKAGES,
) -> tuple[list[Benchmark], list[tuple[str, str]]]:
    """Import every suite module so it registers; returns (registry, import failures).

    A module that fails to import is reported as ``(module, error)`` instead of stopping
    the run: one broken suite must not hide every other figure.
    """
    failures: list[tuple[str, str]] = []
    for package_name in packages:
        package = importlib.import_module(package_name)
        for info in pkgutil.iter_modules(package.__path__, package_name + "."):
            try:
                importlib.import_module(info.name)
            except Exception as exc:
                failures.append((info.name, describe_error(exc)))
    return list(BENCHMARKS), failures


def categories(benchmarks: Iterable[Benchmark]) -> list[str]:
    """Registered category names, sorted, without duplicates."""
    return sorted({b.category for b in benchmarks})


def select(benchmarks: Sequence[Benchmark], only: Sequence[str] | None) -> list[Benchmark]:
    """The benchmarks in ``only`` (all when empty), in registration order.

    Raises:
        UnknownCategoryError: a name in ``only`` is not a registered category (the
            message lists the ones that are).
    """
    if not only:
        return list(benchmarks)
    known = categories(benchmarks)
    unknown = [name for name in only if name not in known]
    if unknown:
        msg = (
            f"unknown benchmark categor{'y' if len(unknown) == 1 else 'ies'} "
            f"{', '.join(repr(u) for u in unknown)}; available: {', '.join(known) or '(none)'}"
        )
        raise UnknownCategoryError(msg)
    wanted = set(only)
    return [b for b in benchmarks if b.category in wanted]


def run(
    benchmarks: Sequence[Benchmark],
    ctx: BenchContext,
    *,
    on_start: Callable[[Benchmark], None] | None = None,
    on_result: Callable[[Result], None] | None = None,
) -> list[Result]:
    """Run each benchmark in turn; an exception becomes an error row and the run goes on.

    ``KeyboardInterrupt`` is not caught: Ctrl-C stops the run. An error row's text has
    URL credentials masked (a Redis URL quoted by an exception must not reach the report).
    """
    results: list[Result] = []
    for bench in benchmarks:
        if on_start is not None:
            on_start(bench)
        try:
            for result in bench.fn(ctx):
                result.category = result.category or bench.category
                results.append(result)
                if on_result is not None:
                    on_result(result)
        except Exception as exc:
            notes = "".join(traceback.format_exception_only(type(exc), exc)).strip()
            row = Result(
                name=bench.title,
                value=math.nan,
                unit="",
                category=bench.category,
                notes=redact_text(notes)[-500:],
                error=describe_error(exc),
            )
            results.append(row)
            if on_result is not None:
                on_result(row)
    return results


def _version(dist: str) -> str | None:
    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def _git_commit() -> str | None:
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return None
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def collect_meta(
    config: PerformanceConfig,
    *,
    quick: bool,
    only: Sequence[str] = (),
    preset: str | None = None,
    config_file: str | None = None,
    started_at: datetime | None = None,
    argv: Sequence[str] | None = None,
) -> dict[str, Any]:
    """The ``meta`` object: versions, Python, CPU count, config and when the run started.

    ``argv`` is the command that made the run (default ``sys.argv``). The config and the
    command are recorded with credentials masked (:meth:`PerformanceConfig.redacted`): a
    results file is shared and committed.
    """
    started = started_at or datetime.now(timezone.utc)
    return {
        "schema": BENCH_SCHEMA,
        "started_at": started.isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "versions": {dist: _version(dist) for dist in _VERSIONED},
        "git_commit": _git_commit(),
        "quick": quick,
        "only": list(only),
        "preset": preset,
        "config_file": config_file,
        "config": config.redacted(),
        "argv": [redact_text(arg) for arg in (sys.argv if argv is None else argv)],
        "loadavg_start": _load_average(),
    }


def _load_average() -> list[float] | None:
    """1, 5 and 15 minute load averages (runnable processes), or None where unsupported."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def build_document(
    results: Sequence[Result],
    *,
    meta: Mapping[str, Any],
    started: float | None = None,
) -> dict[str, Any]:
    """``{"meta": {...}, "results": [...]}`` with totals and the finish time added to meta."""
    rows = [r.to_json() for r in results]
    full_meta = dict(meta)
    full_meta["finished_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    if started is not None:
        full_meta["duration_s"] = round(time.monotonic() - started, 3)
    full_meta["loadavg_end"] = _load_average()
    full_meta["totals"] = {
        "results": len(rows),
        "passed": sum(1 for r in rows if r["passed"] is True),
        "failed": sum(1 for r in rows if r["passed"] is False and r["error"] is None),
        "errors": sum(1 for r in rows if r["error"] is not None),
    }
    return {"meta": full_meta, "results": rows}


# --- schema -------------------------------------------------------------------------------
_META_REQUIRED: dict[str, tuple[type, ...]] = {
    "schema": (str,),
    "started_at": (str,),
    "python": (str,),
    "cpu_count": (int, type(None)),
    "versions": (dict,),
    "config": (dict,),
    "quick": (bool,),
}
_RESULT_REQUIRED: dict[str, tuple[type, ...]] = {
    "category": (str,),
    "name": (str,),
    "value": (int, float, type(None)),
    "unit": (str,),
    "baseline": (dict, type(None)),
    "ratio": (int, float, type(None)),
    "target": (str, type(None)),
    "passed": (bool, type(None)),
}
_RESULT_OPTIONAL: dict[str, tuple[type, ...]] = {
    "better": (str,),
    "notes": (str,),
    "extra": (dict,),
    "error": (str, type(None)),
}


def _check(
    where: str,
    obj: Mapping[str, Any],
    required: Mapping[str, tuple[type, ...]],
    optional: Mapping[str, tuple[type, ...]],
    problems: list[str],
) -> None:
    for key, types in (*required.items(), *optional.items()):
        if key not in obj:
            if key in required:
                problems.append(f"{where}: missing {key!r}")
            continue
        value = obj[key]
        # bool is an int in Python; only accept it where bool is listed.
        if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
            allowed = " or ".join("null" if t is type(None) else t.__name__ for t in types)
            problems.append(f"{where}.{key}: expected {allowed}, got {type(value).__name__}")


def validate_document(doc: Any) -> list[str]:
    """Problems with a results document against schema ``rag-perf-bench/1`` (empty: valid)."""
    problems: list[str] = []
    if not isinstance(doc, dict):
        return [f"document: expected an object, got {type(doc).__name__}"]
    for key in ("meta", "results"):
        if key not in doc:
            problems.append(f"document: missing {key!r}")
    meta, results = doc.get("meta"), doc.get("results")
    if isinstance(meta, dict):
        _check("meta", meta, _META_REQUIRED, {}, problems)
        if meta.get("schema") not in (None, BENCH_SCHEMA):
            problems.append(f"meta.schema: expected {BENCH_SCHEMA!r}, got {meta['schema']!r}")
    elif meta is not None:
        problems.append("meta: expected an object")
    if not isinstance(results, list):
        if results is not None:
            problems.append("results: expected an array")
        return problems
    for i, row in enumerate(results):
        where = f"results[{i}]"
        if not isinstance(row, dict):
            problems.append(f"{where}: expected an object")
            continue
        _check(where, row, _RESULT_REQUIRED, _RESULT_OPTIONAL, problems)
        baseline = row.get("baseline")
        if isinstance(baseline, dict):
            _check(
                f"{where}.baseline",
                baseline,
                {"name": (str,), "value": (int, float, type(None))},
                {},
                problems,
            )
        elif row.get("ratio") is not None:
            problems.append(f"{where}.ratio: set without a baseline (ratios are same-run only)")
        if row.get("better") not in (None, "lower", "higher"):
            problems.append(f"{where}.better: expected 'lower' or 'higher'")
        if row.get("error") is not None and row.get("passed") is not False:
            problems.append(f"{where}.passed: an error row must have passed=false")
        if row.get("target") is None and row.get("passed") is True:
            problems.append(f"{where}.passed: true without a target")
    return problems


# --- comparison with an earlier run -------------------------------------------------------
def compare_documents(
    new: Mapping[str, Any], old: Mapping[str, Any]
) -> dict[tuple[str, str], dict[str, Any]]:
    """For each (category, name) in both runs: old value, new value and oriented change.

    ``change`` is the relative change of ``value`` (new/old - 1); ``improved`` orients it
    with the row's ``better`` (a lower latency is an improvement). Rows missing or null in
    either run are left out.
    """
    old_rows = {(r["category"], r["name"]): r for r in old.get("results", [])}
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for row in new.get("results", []):
        key = (row["category"], row["name"])
        before = old_rows.get(key)
        if before is None or before.get("value") in (None, 0) or row.get("value") is None:
            continue
        change = row["value"] / before["value"] - 1.0
        better = row.get("better", "lower")
        improved = change < 0 if better == "lower" else change > 0
        out[key] = {
            "old": before["value"],
            "new": row["value"],
            "change": change,
            "improved": improved if change != 0 else None,
        }
    return out


# --- Markdown -----------------------------------------------------------------------------
def _md_number(x: Any) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "—"
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return str(x)
    return f"{x:.3g}" if abs(x) < 1000 else f"{x:,.0f}"


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(document: Mapping[str, Any]) -> str:
    """A results document as Markdown: one line on the run, the table, seconds per category.

    Example: ``Path("results.md").write_text(render_markdown(json.loads(...)))``; this is
    what ``rag-perf bench --markdown FILE`` writes (and ``--render OLD.json`` re-renders).
    Values keep three significant figures; ``—`` marks an absent value, baseline or target.
    """
    meta = document.get("meta", {})
    totals = meta.get("totals", {})
    argv = meta.get("argv") or []
    command = " ".join(["rag-perf", *argv[1:]]) if argv else "rag-perf bench"
    load = meta.get("loadavg_start")
    load_end = meta.get("loadavg_end")
    commit = (meta.get("git_commit") or "")[:7] or "unknown"
    parts = [
        f"Run: `{command}` at {meta.get('started_at', '?')}, commit `{commit}`, "
        f"{meta.get('cpu_count', '?')} CPUs, Python {meta.get('python', '?')}, "
        f"{_md_number(meta.get('duration_s'))} s"
    ]
    if load:
        end = f", {load_end[0]:.2f} at the end" if load_end else ""
        parts.append(f"load average {load[0]:.2f} at the start{end}")
    parts.append(
        f"{totals.get('results', 0)} results: {totals.get('passed', 0)} passed, "
        f"{totals.get('failed', 0)} failed, {totals.get('errors', 0)} errors."
    )
    lines = ["; ".join(parts), ""]
    lines.append(
        "| category | name | measured | unit | baseline (same run) | ratio | target | result |"
    )
    lines.append("| --- | --- | ---: | --- | --- | ---: | --- | --- |")
    for row in document.get("results", []):
        baseline = row.get("baseline")
        base = (
            "—"
            if not baseline
            else f"{_md_cell(str(baseline.get('name')))}: {_md_number(baseline.get('value'))}"
        )
        if row.get("error"):
            verdict = f"ERROR: {_md_cell(str(row['error']))}"
        else:
            verdict = {True: "PASS", False: "FAIL", None: "—"}[row.get("passed")]
        lines.append(
            f"| {row.get('category')} | `{row.get('name')}` | {_md_number(row.get('value'))} "
            f"| {_md_cell(str(row.get('unit', '')))} | {base} | {_md_number(row.get('ratio'))} "
            f"| {row.get('target') or '—'} | {verdict} |"
        )
    seconds: dict[str, float] = {}
    for timing in meta.get("benchmark_seconds") or []:
        seconds[timing["category"]] = seconds.get(timing["category"], 0.0) + timing["seconds"]
    if seconds:
        lines.append("")
        lines.append(
            "Seconds by category: "
            + ", ".join(f"{name} {secs:.1f}" for name, secs in sorted(seconds.items()))
            + "."
        )
    return "\n".join(lines) + "\n"
