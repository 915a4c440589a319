"""The ``rag-perf`` command.

Example::

    rag-perf config show --preset low-latency
    rag-perf simulate --port 8600 --latency-ms 50
    rag-perf bench --quick --output results.json

Each subcommand lives beside the code it drives and registers itself through a
``register(subparsers)`` function; this module only dispatches, and imports a subcommand's
module only when that subcommand runs or help is asked for.

A subcommand that needs an extra (``simulate``, ``bench``) and finds it missing is still
listed; running it prints the ``pip install`` line on stderr and exits 2, whatever the
arguments (``--help`` included), instead of a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from .config import PerformanceConfig
from .errors import ConfigError

__all__ = ["main"]


@dataclass(frozen=True)
class Command:
    """Where a subcommand lives and which extra, if any, it needs.

    ``needs`` are the top-level modules of ``extra`` that the subcommand imports; they are
    looked up (not imported) before ``module`` is imported.
    """

    module: str  # provides register(subparsers)
    extra: str | None = None
    needs: tuple[str, ...] = ()

    def missing(self) -> str | None:
        """The first module of ``needs`` that is not installed, else ``None``."""
        return next((name for name in self.needs if importlib.util.find_spec(name) is None), None)


# subcommand -> where it lives and what it needs; one line per subcommand.
COMMANDS: dict[str, Command] = {
    "bench": Command("rag_perf_plugins.bench.cli", "bench", ("aiohttp", "matplotlib")),
    "stats": Command("rag_perf_plugins.metrics.stats_cli"),
    "top": Command("rag_perf_plugins.metrics.top_cli", "metrics", ("prometheus_client",)),
    "cache": Command("rag_perf_plugins.cache.cli"),
    "prices": Command("rag_perf_plugins.cost.cli"),
    "simulate": Command("rag_perf_plugins.simulator.cli", "simulator", ("aiohttp",)),
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


def _register(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser], name: str, command: Command
) -> None:
    """Register ``name`` from its module, or as a stand-in when its extra is missing."""
    missing = command.missing()
    if missing is None:
        try:
            module = importlib.import_module(command.module)
        except ModuleNotFoundError as exc:
            # A module of the extra that ``needs`` does not list: still the extra's hint.
            missing = (exc.name or "").partition(".")[0]
            if command.extra is None or missing in ("", "rag_perf_plugins"):
                raise
        else:
            module.register(subparsers)
            return
    assert command.extra is not None  # only an extra's modules are looked up
    hint = (
        f"rag-perf {name} needs the {command.extra} extra: "
        f"pip install 'rag-perf-plugins[{command.extra}]' ({missing} is not installed)"
    )

    def refuse(args: argparse.Namespace) -> int:
        print(hint, file=sys.stderr)
        return 2

    # No options of its own, not even --help: every argument reaches refuse() unparsed.
    parser = subparsers.add_parser(
        name, help=f"needs the {command.extra} extra (not installed)", add_help=False
    )
    parser.set_defaults(func=refuse, accepts_any_arguments=True)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The argument parser: every subcommand, or only ``command`` when it names one.

    With ``command`` the other subcommands' modules stay unimported (``rag-perf config
    show`` does not import the simulator, the benchmark or aiohttp).
    """
    parser = argparse.ArgumentParser(prog="rag-perf", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True)
    only = command if command == "config" or command in COMMANDS else None
    if only in (None, "config"):
        _register_config(subparsers)
    for name, entry in COMMANDS.items():
        if only in (None, name):
            _register(subparsers, name, entry)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``rag-perf``; returns the exit status (2 for bad usage, config or a missing extra)."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    # Only the subcommand that runs is imported; help and usage errors list them all.
    parser = build_parser(arguments[0] if arguments else None)
    # parse_args() is parse_known_args() plus this check, which a stand-in skips.
    args, unknown = parser.parse_known_args(arguments)
    if unknown and not getattr(args, "accepts_any_arguments", False):
        build_parser().error(f"unrecognized arguments: {' '.join(unknown)}")  # full usage
    # The command as typed, for records such as the bench results' meta.argv.
    args.command_line = ["rag-perf", *arguments]
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"rag-perf: config error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
