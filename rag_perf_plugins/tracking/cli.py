"""``rag-perf stats FILE``: show an exported tracker JSON as a table.

Example::

    # in the application: Path("stats.json").write_text(json.dumps(tracker.to_dict()))
    rag-perf stats stats.json
    rag-perf stats stats.json --prometheus      # the same data as Prometheus text

The file is what ``PerformanceTracker.to_dict()`` returns (schema ``rag-perf-stats/1``).
Times are shown in milliseconds. Does not: merge several files or watch a live process.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from .tracker import STATS_SCHEMA

__all__ = ["register", "render"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``stats`` subcommand to ``rag-perf``."""
    parser = subparsers.add_parser("stats", help="show an exported tracker stats JSON file")
    parser.add_argument("file", metavar="FILE", help="JSON written from tracker.to_dict()")
    parser.add_argument(
        "--prometheus", action="store_true", help="print Prometheus text instead of a table"
    )
    parser.set_defaults(func=_run)


def _ms(seconds: Any) -> str:
    return "—" if seconds is None else f"{seconds * 1000:.3g}"


def _num(x: Any, fmt: str = "{:,}") -> str:
    return "—" if x is None else fmt.format(x)


def render(stats: dict[str, Any], console: Any) -> None:
    """Print per-operation, counter and process tables for a stats export."""
    from rich.table import Table

    table = Table(title=f"operations (window {stats.get('window_s', '?')} s)")
    columns = (
        "operation", "count", "err", "p50 ms", "p95 ms", "p99 ms", "max ms", "/s",
        "tok in/out", "hit", "saved", "queue p95", "retry", "batch", "ttft p50", "aband.",
    )  # fmt: skip
    for column in columns:
        if column == "operation":
            table.add_column(column, no_wrap=True)
        else:
            table.add_column(column, justify="right")
    for name, op in sorted(stats.get("operations", {}).items()):
        hit_rate = op.get("cache_hit_rate")
        table.add_row(
            name,
            _num(op["count"]),
            _num(op["errors"]),
            _ms(op.get("latency_p50_s")),
            _ms(op.get("latency_p95_s")),
            _ms(op.get("latency_p99_s")),
            _ms(op.get("latency_max_s")),
            _num(op.get("throughput_per_s"), "{:.3g}"),
            f"{op['tokens_in']:,}/{op['tokens_out']:,}",
            "—" if hit_rate is None else f"{hit_rate:.0%}",
            _num(op.get("tokens_saved")),
            _ms(op.get("queue_wait_p95_s")),
            _num(op.get("retries")),
            _num(op.get("batch_size_mean"), "{:.3g}"),
            _ms(op.get("ttft_p50_s")),
            _num(op.get("streams_abandoned")),
        )
    console.print(table)
    counters: dict[str, int] = dict(stats.get("counters", {}))
    for name, op in stats.get("operations", {}).items():
        for counter, n in op.get("counters", {}).items():
            counters[f"{name}: {counter}"] = n
    if counters:
        ctable = Table(title="counters")
        ctable.add_column("counter")
        ctable.add_column("value", justify="right")
        for counter, n in sorted(counters.items()):
            ctable.add_row(counter, f"{n:,}")
        console.print(ctable)
    process = stats.get("process") or {}
    if process:
        console.print(
            f"process {process.get('pid')}: RSS {process.get('rss_bytes', 0) / 2**20:.1f} MiB, "
            f"CPU {process.get('cpu_user_s', 0):.2f} s user + "
            f"{process.get('cpu_system_s', 0):.2f} s system, "
            f"{process.get('cpu_percent', 0):.0f}% recently; "
            f"exported {stats.get('exported_at', '?')}"
        )


def _run(args: argparse.Namespace) -> int:
    import sys

    from rich.console import Console

    path = Path(args.file)
    try:
        stats = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        print(f"rag-perf stats: cannot read {path}: {exc}", file=sys.stderr)
        return 2
    if not isinstance(stats, dict) or stats.get("schema") != STATS_SCHEMA:
        found = stats.get("schema") if isinstance(stats, dict) else type(stats).__name__
        print(
            f"rag-perf stats: {path} is not a tracker export (schema {STATS_SCHEMA!r} "
            f"expected, found {found!r})",
            file=sys.stderr,
        )
        return 2
    if args.prometheus:
        from .exporters import to_prometheus

        sys.stdout.write(to_prometheus(stats))
        return 0
    render(stats, Console(width=max(160, Console().width)))
    return 0
