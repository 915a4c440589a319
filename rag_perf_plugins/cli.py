"""The ``rag-perf`` command.

Example::

    rag-perf config show --preset low-latency
    rag-perf simulate --port 8600 --latency-ms 50
    rag-perf bench --quick --output results.json

Each subcommand lives beside the code it drives and registers itself through a
``register(subparsers)`` function; this module only dispatches, and imports a subcommand's
module only when that subcommand runs or help is asked for.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from .config import PerformanceConfig
from .errors import ConfigError

__all__ = ["main"]

# subcommand -> module providing register(subparsers); one line per subcommand.
COMMANDS: dict[str, str] = {
    "bench": "rag_perf_plugins.bench.cli",
    "stats": "rag_perf_plugins.tracking.cli",
    "cache": "rag_perf_plugins.cache.cli",
    "simulate": "rag_perf_plugins.simulator.cli",
}


def _config_show(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from .cache.cli import cache_directory

    config = PerformanceConfig.load(args.config, preset=args.preset)
    table = Table(title="Effective PerformanceConfig")
    for column in ("key", "value", "unit", "source"):
        table.add_column(column, overflow="fold")  # long paths and URLs wrap, never cut
    shown_values = config.redacted()
    for spec in PerformanceConfig.fields():
        value = shown_values[spec.name]
        source = config.source_of(spec.name)
        if spec.name == "cache_dir" and value is None:
            # The directory actually used, not "null".
            value = str(cache_directory(config))
            source += " (the user's cache directory)"
        shown = "null" if value is None else repr(value) if isinstance(value, str) else str(value)
        table.add_row(spec.name, shown, spec.unit or "", source)
    Console(width=max(120, Console().width)).print(table)
    return 0


def _config_reference(args: argparse.Namespace) -> int:
    from .config import reference_markdown

    print(reference_markdown(), end="")
    return 0


def _register_config(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("config", help="show the effective configuration")
    sub = parser.add_subparsers(dest="config_command", required=True)
    show = sub.add_parser("show", help="print every key, its value and where it came from")
    show.add_argument("--preset", help="start from a preset (high-throughput, low-latency, ...)")
    show.add_argument("--config", metavar="FILE", help="a YAML config file")
    show.set_defaults(func=_config_show)
    ref = sub.add_parser("reference", help="print the Markdown reference of every key")
    ref.set_defaults(func=_config_reference)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser, with every available subcommand registered."""
    parser = argparse.ArgumentParser(prog="rag-perf", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True)
    _register_config(subparsers)
    for module_name in COMMANDS.values():
        module = importlib.import_module(module_name)
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``rag-perf``; returns the exit status (2 for bad usage or config)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    # The command as typed, for records such as the bench results' meta.argv.
    args.command_line = ["rag-perf", *(sys.argv[1:] if argv is None else argv)]
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"rag-perf: config error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
