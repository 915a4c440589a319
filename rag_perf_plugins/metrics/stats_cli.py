"""``rag-perf stats FILE|URL``: a tracker export or a live ``/metrics`` endpoint as tables.

Example::

    rag-perf stats stats.json                           # written from tracker.to_dict()
    rag-perf stats http://127.0.0.1:9464/metrics        # a running process (metrics extra)
    rag-perf stats stats.json --prometheus              # the export as Prometheus text

Times are fixed-point milliseconds with the unit in the header; ``miss p95 ms`` beside
``p95 ms`` is what a cache miss costs (the overall p95 mixes in cheap hits).
Reading a URL or ``--prometheus`` needs ``prometheus-client`` (the ``metrics`` extra).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..tracking.cli import load_export, render

__all__ = ["register"]

_HINT = "needs the metrics extra: pip install 'rag-perf-plugins[metrics]'"


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``stats`` subcommand to ``rag-perf``."""
    parser = subparsers.add_parser(
        "stats", help="show a tracker export (FILE) or a running process's /metrics (URL)"
    )
    parser.add_argument(
        "source",
        metavar="FILE|URL",
        help="JSON written from tracker.to_dict(), or http(s)://HOST:PORT/metrics",
    )
    parser.add_argument(
        "--prometheus", action="store_true", help="print Prometheus text instead of tables"
    )
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from rich.console import Console

    source: str = args.source
    is_url = source.startswith(("http://", "https://"))
    try:
        if is_url:
            from .scrape import read_endpoint

            stats = read_endpoint(source)
        else:
            stats = load_export(Path(source))
        if args.prometheus:
            from .server import to_prometheus

            text = to_prometheus(stats) if not is_url else None
    except ImportError:
        print(f"rag-perf stats: reading a URL or --prometheus {_HINT}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as exc:
        print(f"rag-perf stats: {exc}", file=sys.stderr)
        return 2
    if args.prometheus:
        if text is None:
            print("rag-perf stats: --prometheus takes a FILE (a URL already serves it)",
                  file=sys.stderr)  # fmt: skip
            return 2
        sys.stdout.write(text)
        return 0
    render(stats, Console(width=max(180, Console().width)))
    return 0
