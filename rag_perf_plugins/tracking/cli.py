"""The tables of ``rag-perf stats``: a tracker export (a file or an endpoint) as text.

Example::

    from rich.console import Console
    render(tracker.to_dict(), Console())

Numbers are fixed-point with their unit in the column header (milliseconds, calls per
second, tokens, percent), never in exponent notation. The command itself is
:mod:`rag_perf_plugins.metrics.stats_cli`. Does not: merge several exports.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .tracker import STATS_SCHEMA

__all__ = ["dollars", "fixed", "load_export", "milliseconds", "render"]


def fixed(x: Any, *, digits: int | None = None) -> str:
    """Fixed-point with thousands separators: ``1780.4`` → ``1,780``; ``—`` for None/NaN.

    Without ``digits``, the decimals follow the size (3 significant digits, at least 0 and
    at most 3 decimals): ``0.0543`` → ``0.054``, ``17.84`` → ``17.8``, ``1780`` → ``1,780``.
    """
    if x is None or (isinstance(x, float) and x != x):
        return "—"
    v = float(x)
    if digits is None:
        size = abs(v)
        digits = 0 if size >= 100 else 1 if size >= 10 else 2 if size >= 1 else 3
    return f"{v:,.{digits}f}"


def milliseconds(seconds: Any) -> str:
    """Seconds shown as fixed-point milliseconds (``0.0123`` → ``12.3``)."""
    return "—" if seconds is None else fixed(float(seconds) * 1000.0)


def dollars(usd: Any) -> str:
    """US dollars in fixed point, to the hundredth of a cent: ``0.01234`` → ``$0.0123``."""
    return "—" if usd is None else f"${float(usd):,.4f}"


def _int(x: Any) -> str:
    return "—" if x is None else f"{int(x):,}"


def _render_costs(stats: dict[str, Any], console: Any) -> None:
    """Dollars spent, saved and unknown, per operation and per model (only where any)."""
    from rich.table import Table

    def has_cost(entry: dict[str, Any]) -> bool:
        keys = ("cost_usd", "cost_saved_usd", "cost_unknown_calls")
        return any(entry.get(k) for k in keys)

    sections = (
        ("operation", stats.get("operations") or {}),
        ("model", stats.get("models") or {}),
    )
    for kind, entries in sections:
        rows = [(name, e) for name, e in sorted(entries.items()) if has_cost(e)]
        if not rows:
            continue
        table = Table(title=f"cost per {kind} (USD, at the price table's prices)")
        for column in (kind, "$ spent", "$ saved", "unknown-cost calls"):
            table.add_column(column, justify="left" if column == kind else "right")
        for name, entry in rows:
            table.add_row(
                name,
                dollars(entry.get("cost_usd")),
                dollars(entry.get("cost_saved_usd")),
                _int(entry.get("cost_unknown_calls", 0)),
            )
        console.print(table)


def load_export(path: Path) -> dict[str, Any]:
    """A tracker export read from ``path``.

    Raises:
        ValueError: the file cannot be read, is not JSON, or is not a tracker export (the
            message names the file and what was found).
    """
    try:
        stats = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        msg = f"cannot read {path}: {exc}"
        raise ValueError(msg) from exc
    if not isinstance(stats, dict) or stats.get("schema") != STATS_SCHEMA:
        found = stats.get("schema") if isinstance(stats, dict) else type(stats).__name__
        msg = f"{path} is not a tracker export (schema {STATS_SCHEMA!r} expected, found {found!r})"
        raise ValueError(msg)
    return stats


COLUMNS = (
    "operation", "calls", "errors", "hit %", "p50 ms", "p95 ms", "miss p95 ms", "hit p95 ms",
    "p99 ms", "calls/s", "tokens in/out", "tokens saved", "queue p95 ms", "retries",
    "batch mean", "ttft p50 ms", "abandoned",
)  # fmt: skip
"""The operations table's columns; units in the header."""


def render(stats: dict[str, Any], console: Any) -> None:
    """Print per-operation, counter and process tables for a stats export."""
    from rich.table import Table

    window = stats.get("window_s")
    where = stats.get("source") or (f"window {fixed(window)} s" if window else "export")
    worker = stats.get("worker")
    title = f"operations ({where}{'' if worker is None else f', worker {worker}'})"
    table = Table(title=title)
    for column in COLUMNS:
        if column == "operation":
            table.add_column(column, no_wrap=True)
        else:
            table.add_column(column, justify="right")
    for name, op in sorted(stats.get("operations", {}).items()):
        hit_rate = op.get("cache_hit_rate")
        table.add_row(
            name,
            _int(op["count"]),
            _int(op["errors"]),
            "—" if hit_rate is None else fixed(hit_rate * 100.0, digits=1),
            milliseconds(op.get("latency_p50_s")),
            milliseconds(op.get("latency_p95_s")),
            milliseconds(op.get("latency_miss_p95_s")),
            milliseconds(op.get("latency_hit_p95_s")),
            milliseconds(op.get("latency_p99_s")),
            fixed(op.get("throughput_per_s")),
            f"{_int(op.get('tokens_in', 0))}/{_int(op.get('tokens_out', 0))}",
            _int(op.get("tokens_saved")),
            milliseconds(op.get("queue_wait_p95_s")),
            _int(op.get("retries")),
            fixed(op.get("batch_size_mean")),
            milliseconds(op.get("ttft_p50_s")),
            _int(op.get("streams_abandoned")),
        )
    console.print(table)
    _render_costs(stats, console)
    counters: dict[str, int] = dict(stats.get("counters", {}))
    for name, op in stats.get("operations", {}).items():
        for counter, n in op.get("counters", {}).items():
            counters[f"{name}: {counter}"] = n
    if counters:
        ctable = Table(title="counters")
        ctable.add_column("counter")
        ctable.add_column("count", justify="right")
        for counter, n in sorted(counters.items()):
            ctable.add_row(counter, _int(n))
        console.print(ctable)
    process = stats.get("process") or {}
    if "rss_bytes" in process:
        cpu = process.get("cpu_seconds")
        if cpu is None and "cpu_user_s" in process:
            cpu = process["cpu_user_s"] + process.get("cpu_system_s", 0.0)
        line = f"process: RSS {fixed(process['rss_bytes'] / 2**20, digits=1)} MiB"
        if cpu is not None:
            line += f", CPU {fixed(cpu, digits=2)} s"
        if "cpu_percent" in process:
            line += f" ({fixed(process['cpu_percent'], digits=0)} % recently)"
        if "pid" in process:
            line = line.replace("process:", f"process {process['pid']}:")
        if stats.get("exported_at"):
            line += f"; exported {stats['exported_at']}"
        console.print(line)
