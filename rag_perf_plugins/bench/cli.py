"""``rag-perf bench``: run the benchmark categories and report against same-run baselines.

Example::

    rag-perf bench --list
    rag-perf bench --only tracker --quick --output results.json
    rag-perf bench --preset high-throughput --compare old.json --plots plots/
    rag-perf bench --render results.json --markdown results.md --html report.html
    python -m rag_perf_plugins.bench --only cache

Exit status: 0 when every benchmark ran (targets missed are shown as FAIL but do not change
the status unless ``--strict``), 1 when a benchmark raised or (``--strict``) missed its
target, 2 for bad usage such as an unknown ``--only`` category.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..config import PerformanceConfig
from .registry import BenchContext, Benchmark, Result
from .report import render_html, write_pngs
from .runner import (
    UnknownCategoryError,
    build_document,
    categories,
    collect_meta,
    compare_documents,
    load_benchmarks,
    render_markdown,
    run,
    select,
    validate_document,
)

__all__ = ["register", "run_command"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``bench`` subcommand to ``rag-perf``."""
    parser = subparsers.add_parser(
        "bench",
        help="run benchmarks against same-run baselines",
        description=__doc__.splitlines()[0] if __doc__ else None,
    )
    add_arguments(parser)
    parser.set_defaults(func=run_command)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``rag-perf bench`` (shared with ``python -m rag_perf_plugins.bench``)."""
    parser.add_argument(
        "--only",
        action="append",
        metavar="CATEGORY",
        default=[],
        help="run only this category (repeatable); see --list",
    )
    parser.add_argument("--list", action="store_true", help="list categories and exit")
    parser.add_argument("--quick", action="store_true", help="small workloads (seconds)")
    parser.add_argument("--output", metavar="FILE", help="write the results JSON here")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--config", metavar="FILE", help="a YAML config file")
    group.add_argument("--preset", metavar="NAME", help="a config preset")
    parser.add_argument(
        "--compare", metavar="OLD_JSON", help="show the change against an earlier results file"
    )
    parser.add_argument(
        "--plots", metavar="DIR", help="write the report's charts as PNGs (one question each)"
    )
    parser.add_argument(
        "--html",
        metavar="FILE",
        help="write a self-contained HTML report: charts against same-run baselines, tables",
    )
    parser.add_argument(
        "--markdown", metavar="FILE", help="write the results as a Markdown table ('-': stdout)"
    )
    parser.add_argument(
        "--render",
        metavar="RESULTS_JSON",
        help="run nothing: show an earlier results file (--markdown/--plots/--html write them)",
    )
    parser.add_argument(
        "--no-peers",
        action="store_true",
        help="skip the peer comparisons that import LangChain/LlamaIndex",
    )
    parser.add_argument(
        "--strict", action="store_true", help="exit 1 when any target is missed (FAIL)"
    )


def _fmt(x: float | None) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    if isinstance(x, float) and math.isinf(x):
        return "∞"
    return f"{x:.4g}" if abs(x) < 1e5 else f"{x:,.0f}"


def _verdict(result: Result) -> str:
    if result.error is not None:
        return "[bold red]ERROR[/]"
    passed = result.passed
    if passed is None:
        return "—"
    return "[green]PASS[/]" if passed else "[red]FAIL[/]"


def _print_table(
    console: Any, results: list[Result], changes: dict[tuple[str, str], dict[str, Any]] | None
) -> None:
    from rich.table import Table

    table = Table(title="rag-perf bench", show_lines=False)
    for column in ("category", "name", "measured", "unit", "baseline", "ratio", "target", "result"):
        table.add_column(column, justify="right" if column in ("measured", "ratio") else "left")
    if changes is not None:
        table.add_column("vs old", justify="right")
    for r in results:
        baseline = (
            "—" if r.baseline_name is None else f"{r.baseline_name}: {_fmt(r.baseline_value)}"
        )
        ratio = r.ratio
        cells = [
            r.category,
            r.name if r.error is None else f"{r.name}\n[red]{r.error}[/]",
            _fmt(r.value),
            r.unit,
            baseline,
            "—" if ratio is None else f"{_fmt(ratio)}x",
            "—" if r.target is None else r.target.describe(),
            _verdict(r),
        ]
        if changes is not None:
            change = changes.get((r.category, r.name))
            if change is None:
                cells.append("—")
            else:
                color = {True: "green", False: "red", None: "white"}[change["improved"]]
                cells.append(f"[{color}]{change['change']:+.1%}[/]")
        table.add_row(*cells)
    console.print(table)


def run_command(args: argparse.Namespace) -> int:
    """Run ``rag-perf bench`` with parsed ``args``; returns the exit status."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    # With --markdown - stdout carries only the Markdown; the table goes to stderr.
    console = Console(width=max(140, Console().width), stderr=args.markdown == "-")
    err = Console(stderr=True)
    config = PerformanceConfig.load(args.config, preset=args.preset)
    benchmarks, import_failures = load_benchmarks(
        ("rag_perf_plugins.bench.suites",)
        if args.no_peers
        else ("rag_perf_plugins.bench.suites", "rag_perf_plugins.bench.peers")
    )
    for module, error in import_failures:
        err.print(f"[yellow]warning:[/] could not import {module}: {error}")
    if args.list:
        for name in categories(benchmarks):
            titles = [b.title for b in benchmarks if b.category == name]
            console.print(f"[bold]{name}[/]: " + "; ".join(titles))
        return 0
    if args.render:
        return _render_command(args, console, err)
    try:
        chosen = select(benchmarks, args.only)
    except UnknownCategoryError as exc:
        err.print(f"rag-perf bench: {exc}")
        return 2
    old: dict[str, Any] | None = None
    if args.compare:
        old = _read_json("--compare", args.compare, err)
        if old is None:
            return 2

    started_at = datetime.now(timezone.utc)
    started = time.monotonic()
    meta = collect_meta(
        config,
        quick=args.quick,
        only=args.only,
        preset=args.preset,
        config_file=args.config,
        started_at=started_at,
        argv=getattr(args, "command_line", None),
    )
    with tempfile.TemporaryDirectory(prefix="rag-perf-bench-") as workdir:
        with Progress(
            TextColumn("[bold]{task.fields[bench]}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TimeElapsedColumn(),
            TextColumn("{task.description}"),
            console=err,
            transient=True,
        ) as progress:
            task = progress.add_task("", total=len(chosen), bench="")

            def on_start(bench: Benchmark) -> None:
                progress.update(task, bench=f"{bench.category}: {bench.title}", description="")

            def on_result(result: Result) -> None:
                progress.update(task, description=f"{result.name} = {_fmt(result.value)}")

            ctx = BenchContext(
                config=config,
                quick=args.quick,
                workdir=Path(workdir),
                progress=lambda message: progress.update(task, description=message),
            )
            results: list[Result] = []
            timings: list[dict[str, Any]] = []
            for bench in chosen:
                began = time.monotonic()
                results.extend(run([bench], ctx, on_start=on_start, on_result=on_result))
                timings.append(
                    {
                        "category": bench.category,
                        "title": bench.title,
                        "seconds": round(time.monotonic() - began, 3),
                    }
                )
                progress.advance(task)
        # Wall seconds per benchmark: where the --quick budget goes.
        meta["benchmark_seconds"] = timings
        if not args.only:
            for module, error in import_failures:
                results.append(
                    Result(
                        name=f"import {module}",
                        value=math.nan,
                        unit="",
                        category=module.rsplit(".", 1)[-1],
                        error=error,
                    )
                )
    document = build_document(results, meta=meta, started=started)
    changes = compare_documents(document, old) if old is not None else None
    _print_table(console, results, changes)
    totals = document["meta"]["totals"]
    console.print(
        f"{totals['results']} results: {totals['passed']} passed, {totals['failed']} failed, "
        f"{totals['errors']} errors in {document['meta']['duration_s']:.1f} s"
    )
    by_category: dict[str, float] = {}
    for timing in timings:
        by_category[timing["category"]] = (
            by_category.get(timing["category"], 0.0) + timing["seconds"]
        )
    console.print(
        "seconds by category: "
        + ", ".join(f"{name} {seconds:.1f}" for name, seconds in sorted(by_category.items()))
    )
    if args.output:
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        bad: list[str] = []
        document = _finite(document, "", bad)
        if bad:  # a run is never lost to one value JSON cannot hold: named, written as null
            console.print(f"[yellow]non-finite values written as null: {', '.join(bad)}[/]")
        out.write_text(json.dumps(document, indent=2, allow_nan=False) + "\n", encoding="utf-8")
        console.print(f"wrote {out}")
    _write_extras(args, document, results, console)
    if totals["errors"]:
        return 1
    return 1 if args.strict and totals["failed"] else 0


def _finite(value: Any, path: str, bad: list[str]) -> Any:
    """``value`` with every infinite or NaN float replaced by ``None``, its path kept in ``bad``.

    Example: ``_finite({"a": [1.0, inf]}, "", bad)`` is ``{"a": [1.0, None]}``, ``bad``
    ``["a[1]"]``. JSON has no infinity; the results document is written strictly.
    """
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        bad.append(path or "<document>")
        return None
    if isinstance(value, dict):
        return {k: _finite(v, f"{path}.{k}" if path else str(k), bad) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v, f"{path}[{i}]", bad) for i, v in enumerate(value)]
    return value


def _write_extras(
    args: argparse.Namespace, document: dict[str, Any], results: list[Result], console: Any
) -> None:
    """``--markdown`` and ``--plots`` for a run or a rendered file."""
    if args.markdown:
        text = render_markdown(document)
        if args.markdown == "-":
            sys.stdout.write(text)
        else:
            out = Path(args.markdown)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(text, encoding="utf-8")
            console.print(f"wrote {out}")
    if args.plots:
        for path in write_pngs(results, Path(args.plots)):
            console.print(f"plot {path}")
    if args.html:
        out = Path(args.html)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(render_html(document), encoding="utf-8")
        console.print(f"wrote {out}")


def _read_json(option: str, path: str, err: Any) -> Any:
    """The JSON in ``path``, or ``None`` after saying on ``err`` why it cannot be read."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        err.print(f"rag-perf bench: {option} {path}: cannot read it: {exc}")
        return None


def _render_command(args: argparse.Namespace, console: Any, err: Any) -> int:
    """``--render FILE``: the table of an earlier run, and its Markdown and plots on request."""
    document = _read_json("--render", args.render, err)
    if document is None:
        return 2
    problems = validate_document(document)
    if problems:
        err.print(f"rag-perf bench: --render {args.render}: not a results file: {problems[0]}")
        return 2
    results = [Result.from_json(row) for row in document["results"]]
    _print_table(console, results, None)
    _write_extras(args, document, results, console)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m rag_perf_plugins.bench``: the same as ``rag-perf bench``."""
    from ..cli import main as rag_perf_main

    return rag_perf_main(["bench", *(sys.argv[1:] if argv is None else argv)])
