"""``rag-perf prices [MODEL]``: the prices the components would use.

Example::

    rag-perf prices                          # every model: shipped table + price_table_path
    rag-perf prices gpt-4o-mini-2024-07-18   # one model (resolved as a call would be)
    rag-perf prices --config perf.yaml --json

Prices are USD per 1,000,000 tokens. A blank cell is a price the entry does not set: cached
input and cache writes default to the input price, reasoning to the output price. Exit
status: 0, or 1 when MODEL has no price (its calls would be counted as cost unknown).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from ..config import PerformanceConfig
from .prices import Price, price_table

__all__ = ["register"]

_COLUMNS = (
    ("input", "input"),
    ("cached_input", "cached in"),
    ("cache_write", "cache write"),
    ("output", "output"),
    ("reasoning", "reasoning"),
    ("embedding", "embedding"),
    ("max_output_tokens", "max out (tokens)"),
)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:g}"


def _run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    table = price_table(PerformanceConfig.load(args.config))
    if args.model:
        found = table.get(args.model)
        if found is None:
            print(
                f"no price for {args.model!r}: its calls are counted as cost unknown "
                "(add it with register_price() or a price file named by price_table_path)"
            )
            return 1
        entries: list[Price] = [found]
    else:
        entries = [p for p in (table.get(m) for m in table.models()) if p is not None]
    if args.json:
        print(json.dumps({p.model: p.to_dict() for p in entries}, indent=2))
        return 0
    out = Table(title="prices (USD per 1,000,000 tokens)")
    out.add_column("model", no_wrap=True)
    for _, header in _COLUMNS:
        out.add_column(header, justify="right")
    out.add_column("as of")
    out.add_column("source", no_wrap=True)
    for p in entries:
        out.add_row(p.model, *(_cell(getattr(p, name)) for name, _ in _COLUMNS), p.as_of, p.source)
    Console(width=max(200, Console().width)).print(out)
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``prices`` to the ``rag-perf`` command."""
    parser = subparsers.add_parser("prices", help="list the known model prices")
    parser.add_argument("model", nargs="?", help="one model (dated names resolve as in calls)")
    parser.add_argument("--config", help="a config file (its price_table_path is used)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(func=_run)
