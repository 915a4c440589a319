"""``rag-perf top URL``: a live terminal view of a running process's ``/metrics``.

Example::

    rag-perf top http://127.0.0.1:9464/metrics            # refreshes every second; Ctrl-C
    rag-perf top http://127.0.0.1:9464/metrics --count 5 --interval 0.5

Per operation: calls, calls per second and errors per second (from the change since the
previous refresh; the first frame shows the tracker's own window rate), cache hit rate,
p95 overall / on misses / on hits, queue-wait p95; and the admission gates' queues. Needs
the ``metrics`` extra (prometheus-client parses the endpoint). Exits 0 on Ctrl-C or after
``--count`` refreshes, 2 when the endpoint cannot be read at the first refresh (later
failures are shown in the view and retried).
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from ..tracking.cli import fixed, milliseconds
from .scrape import read_endpoint

__all__ = ["frame", "register"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``top`` subcommand to ``rag-perf``."""
    parser = subparsers.add_parser("top", help="live view of a running process's /metrics")
    parser.add_argument("url", metavar="URL", help="http(s)://HOST:PORT/metrics")
    parser.add_argument(
        "--interval", type=float, default=1.0, metavar="SECONDS", help="refresh period (1 s)"
    )
    parser.add_argument(
        "--count", type=int, default=0, metavar="N", help="stop after N refreshes (0: never)"
    )
    parser.set_defaults(func=_run)


def frame(
    stats: dict[str, Any],
    previous: dict[str, Any] | None,
    elapsed_s: float,
    *,
    error: str | None = None,
) -> Any:
    """One screen: a rich ``Table`` of ``stats``, rates from the change since ``previous``."""
    from rich.table import Table

    worker = stats.get("worker")
    title = f"rag-perf top  {stats.get('source', '')}" + (
        "" if worker is None else f"  worker {worker}"
    )
    caption = error or f"refreshed {time.strftime('%H:%M:%S')}; Ctrl-C quits"
    table = Table(title=title, caption=caption)
    for column in (
        "operation", "calls", "calls/s", "errors/s", "hit %", "p95 ms", "miss p95 ms",
        "hit p95 ms", "queue p95 ms",
    ):  # fmt: skip
        table.add_column(column, justify="left" if column == "operation" else "right")
    before = (previous or {}).get("operations", {})
    for name, op in stats.get("operations", {}).items():
        old = before.get(name)
        if old is not None and elapsed_s > 0:
            rate = (op["count"] - old["count"]) / elapsed_s
            errors = (op["errors"] - old["errors"]) / elapsed_s
        else:
            rate, errors = op.get("throughput_per_s"), None
        hit_rate = op.get("cache_hit_rate")
        table.add_row(
            name,
            f"{op['count']:,}",
            fixed(rate),
            fixed(errors),
            "—" if hit_rate is None else fixed(hit_rate * 100.0, digits=1),
            milliseconds(op.get("latency_p95_s")),
            milliseconds(op.get("latency_miss_p95_s")),
            milliseconds(op.get("latency_hit_p95_s")),
            milliseconds(op.get("queue_wait_p95_s")),
        )
    gates = (stats.get("process") or {}).get("gates") or {}
    for gate, figures in sorted(gates.items()):
        table.add_row(
            f"gate {gate}",
            "",
            "",
            "",
            "",
            "",
            "",
            "",
            f"{figures.get('queued', 0)} queued, {figures.get('in_flight', 0)} in flight",
        )
    return table


def _run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.live import Live

    if args.interval <= 0:
        print(f"rag-perf top: --interval must be > 0 seconds, got {args.interval}", file=sys.stderr)
        return 2
    try:
        stats = read_endpoint(args.url)
    except OSError as exc:
        print(f"rag-perf top: {exc}", file=sys.stderr)
        return 2
    console = Console(width=max(140, Console().width))
    previous: dict[str, Any] | None = None
    taken = time.monotonic()
    shown = 0
    try:
        with Live(frame(stats, None, 0.0), console=console, auto_refresh=False) as live:
            shown = 1
            while not args.count or shown < args.count:
                time.sleep(args.interval)
                error = None
                try:
                    fresh = read_endpoint(args.url)
                except OSError as exc:
                    error = f"{exc}; retrying"
                    live.update(frame(stats, previous, 0.0, error=error), refresh=True)
                    continue
                now = time.monotonic()
                previous, stats = stats, fresh
                live.update(frame(stats, previous, now - taken), refresh=True)
                taken = now
                shown += 1
    except KeyboardInterrupt:
        pass
    return 0
