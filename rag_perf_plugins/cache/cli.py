"""``rag-perf cache info|clear|verify [DIR]``: inspect and repair a cache directory.

Example::

    rag-perf cache info                      # the configured directory (RAG_PERF_CACHE_DIR, ...)
    rag-perf cache info --config perf.yaml   # the directory that file configures
    rag-perf cache clear /var/cache/app --namespace llm
    rag-perf cache clear --model text-embedding-3-small
    rag-perf cache verify --delete           # report (and drop) rows that do not read back

``verify`` reads every row without unpickling anything: a row that is not one of our
envelopes (planted pickle, torn file, foreign schema) is reported, never loaded. Exit
status: 0 when every row reads back, 1 when some do not (after ``--delete`` too, so
scripts notice), 2 for a missing directory.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path
from typing import Any

from ..config import PerformanceConfig
from .manager import default_cache_dir
from .serialize import SCHEMA_VERSION, CorruptEntry, decode
from .tiers import DiskTier

__all__ = ["cache_directory", "register"]


def cache_directory(config: PerformanceConfig) -> Path:
    """The disk tier's directory for ``config``: ``cache_dir``, else the user's cache dir."""
    return Path(config.cache_dir) if config.cache_dir else default_cache_dir()


def _open(args: argparse.Namespace) -> DiskTier | None:
    config = PerformanceConfig.load(args.config)
    path = Path(args.directory) if args.directory else cache_directory(config)
    if not path.is_dir():
        print(f"no cache directory at {path}")
        return None
    shards = sum(1 for p in path.iterdir() if p.is_dir() and p.name.isdigit()) or (
        config.cache_shards
    )
    return DiskTier(path, shards=shards, timeout=max(config.cache_disk_timeout, 5.0))


def _namespace_of(key: Any) -> tuple[str, str]:
    if not isinstance(key, str):
        return "(foreign)", "-"
    if key.startswith("__ns__:"):
        return "(versions)", "-"
    parts = key.split(":", 2)
    return (parts[0], parts[1]) if len(parts) == 3 else ("(foreign)", "-")


def _info(args: argparse.Namespace) -> int:
    tier = _open(args)
    if tier is None:
        return 2
    entries: dict[tuple[str, str], int] = defaultdict(int)
    payload: dict[tuple[str, str], int] = defaultdict(int)
    schemas: dict[str, int] = defaultdict(int)
    partitions: dict[tuple[str, str], int] = defaultdict(int)  # (version, partition): entries
    for shard, key, _raw, mode, filename, value, _tag in tier.iter_rows():
        slot = _namespace_of(key)
        entries[slot] += 1
        if slot[0] == "semantic":
            partitions[(slot[1], str(key).split(":", 2)[2].rsplit(":", 1)[0])] += 1
        try:
            blob = tier.read_row(shard, mode, filename, value)
            payload[slot] += len(blob)
            schemas[f"v{blob[3]}" if len(blob) > 3 and blob[:3] == b"RPC" else "unreadable"] += 1
        except (CorruptEntry, OSError):
            schemas["unreadable"] += 1
    stats = tier.stats()
    print(f"directory: {stats['directory']}")
    print(f"shards: {stats['shards']}  entries: {stats['items']}  bytes on disk: {stats['bytes']}")
    print(f"entry schemas: {dict(schemas) or '{}'} (this version reads v{SCHEMA_VERSION})")
    print(f"{'namespace':<16}{'version':>8}{'entries':>10}{'payload bytes':>16}")
    for (ns, version), n in sorted(entries.items()):
        print(f"{ns:<16}{version:>8}{n:>10}{payload[(ns, version)]:>16}")
    if partitions:
        latest = max(partitions, key=lambda vp: int(vp[0]) if vp[0].isdigit() else 0)[0]
        sizes = [n for (v, _), n in partitions.items() if v == latest]
        print(
            f"semantic index (version {latest}): {len(sizes)} partitions, {sum(sizes)} "
            f"prompts, largest partition {max(sizes)} (older versions: "
            f"{sum(n for (v, _), n in partitions.items() if v != latest)} prompts, unread)"
        )
    tier.close()
    return 0


def _clear(args: argparse.Namespace) -> int:
    tier = _open(args)
    if tier is None:
        return 2
    if args.model:
        removed = tier.purge_tag(args.model)
        what = f"model {args.model!r}"
    elif args.namespace:
        removed = tier.clear(args.namespace + ":")
        what = f"namespace {args.namespace!r}"
    else:
        removed = tier.clear()
        what = "everything"
    print(f"removed {removed} entries ({what}) from {tier.directory}")
    tier.close()
    return 0


def _verify(args: argparse.Namespace) -> int:
    tier = _open(args)
    if tier is None:
        return 2
    good = 0
    bad: list[tuple[Any, str]] = []
    for shard, key, raw, mode, filename, value, _tag in tier.iter_rows():
        try:
            if not raw:
                raise CorruptEntry("pickled key (never loaded)")
            decode(tier.read_row(shard, mode, filename, value))
            good += 1
        except (CorruptEntry, OSError) as exc:
            bad.append((key if raw else f"<pickled key, {len(key)} bytes>", str(exc)))
            if args.delete and raw:
                tier.delete_row(shard, key)
    for key, reason in bad:
        print(f"CORRUPT {key!r}: {reason}")
    action = " (deleted)" if args.delete and bad else ""
    print(f"{good} entries read back, {len(bad)} corrupt{action} in {tier.directory}")
    tier.close()
    return 1 if bad else 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``rag-perf cache`` with ``info``, ``clear`` and ``verify``."""
    parser = subparsers.add_parser("cache", help="inspect, clear or verify the disk cache")
    sub = parser.add_subparsers(dest="cache_command", required=True)
    for name, func, text in (
        ("info", _info, "entries, bytes and schema versions per namespace; the semantic index"),
        ("clear", _clear, "delete everything, one namespace or one model's entries"),
        ("verify", _verify, "read every entry back and report corrupt ones"),
    ):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument(
            "directory", nargs="?", help="cache directory (default: the configured one)"
        )
        cmd.add_argument(
            "--config",
            metavar="FILE",
            help="a YAML config file (default: RAG_PERF_CONFIG, else ./rag-perf.yaml)",
        )
        cmd.set_defaults(func=func)
        if name == "clear":
            group = cmd.add_mutually_exclusive_group()
            group.add_argument("--namespace", help="only this namespace (llm, embeddings, ...)")
            group.add_argument("--model", help="only entries stored for this model")
        if name == "verify":
            cmd.add_argument("--delete", action="store_true", help="delete corrupt entries")
