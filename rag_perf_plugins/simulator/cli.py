"""``rag-perf simulate``: run the provider simulator in the foreground.

Example::

    rag-perf simulate --port 8600 --latency-ms 50 --rpm 600 --error-rate 0.02
    # simulator listening on http://127.0.0.1:8600/v1 (Ctrl-C to stop)

Every :class:`~rag_perf_plugins.simulator.SimulatorOptions` field is a flag (``rpm`` is
``--rpm``, ``latency_ms`` is ``--latency-ms``; ``--rpm none`` means no limit). It prints
the base URL, then, with ``--stats-every S``, one line of counters every S seconds, and the
final counters as JSON when stopped (Ctrl-C or SIGTERM).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import signal
import sys
from collections.abc import Callable
from typing import Any

from .options import OPTION_DOCS, SimulatorOptions
from .outage import Outage
from .server import Simulator

__all__ = ["register"]


def _optional(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        return None if text.lower() in ("none", "off", "unlimited") else parse(text)

    convert.__name__ = parse.__name__  # argparse names the type in its error messages
    return convert


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``simulate`` subcommand to ``rag-perf``."""
    parser = subparsers.add_parser(
        "simulate",
        help="run the OpenAI-compatible provider simulator in the foreground",
        description=__doc__.splitlines()[0] if __doc__ else None,
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8600, help="TCP port (0 picks a free one)")
    parser.add_argument(
        "--stats-every",
        type=float,
        default=0.0,
        metavar="S",
        help="print the counters every S seconds (0: only at exit)",
    )
    defaults = SimulatorOptions()
    parser.add_argument(
        "--outage",
        dest="outages",
        type=Outage.parse,
        action="append",
        default=[],
        metavar="SPEC",
        help=f"{OPTION_DOCS['outages']}; start and duration in seconds since the start",
    )
    for field in dataclasses.fields(SimulatorOptions):
        if field.name == "outages":
            continue
        default = getattr(defaults, field.name)
        if field.name in ("rpm", "tpm"):
            kind: Callable[[str], Any] = _optional(float)
        elif field.name == "max_concurrency":
            kind = _optional(int)
        elif isinstance(default, int):
            kind = int
        else:
            kind = float
        parser.add_argument(
            "--" + field.name.replace("_", "-"),
            dest=field.name,
            type=kind,
            default=default,
            help=f"{OPTION_DOCS[field.name]} (default: {default})",
        )
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    try:
        values = {n: getattr(args, n) for n in SimulatorOptions.names()}
        values["outages"] = tuple(values["outages"])
        options = SimulatorOptions(**values)
        simulator = Simulator(options, host=args.host, port=args.port)
    except ValueError as exc:
        print(f"rag-perf simulate: {exc}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_serve(simulator, stats_every=args.stats_every))
    except OSError as exc:  # the port is taken, or the host is not ours
        print(
            f"rag-perf simulate: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr
        )
        return 1


async def _serve(simulator: Simulator, *, stats_every: float) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)
    async with simulator:
        print(f"simulator listening on {simulator.base_url} (Ctrl-C to stop)", flush=True)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError, asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=stats_every or None)
            if stats_every and not stop.is_set():
                print(repr(simulator), flush=True)
        print(json.dumps(simulator.stats()), flush=True)
    return 0
