"""Many processes on one directory, a writer killed mid-write, and fork()."""

from __future__ import annotations

import hashlib
import multiprocessing as mp
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from rag_perf_plugins.cache import CacheManager
from rag_perf_plugins.config import PerformanceConfig

STRESS_SECONDS = 10.0
PROCESSES = 8


def _value(key: str, writer: int, n: int) -> dict[str, Any]:
    body = [f"{key}-{writer}-{i}" for i in range(n)]
    digest = hashlib.blake2b(repr((key, writer, body)).encode(), digest_size=8).hexdigest()
    return {"key": key, "writer": writer, "body": body, "digest": digest}


def _torn(key: str, value: Any) -> bool:
    if not isinstance(value, dict) or value.get("key") != key:
        return True
    expected = _value(key, value["writer"], len(value["body"]))
    return value != expected


def _stress(directory: str, seconds: float, writer: int, out: Any) -> None:
    # Disk only (cache_size=0), so every read and write goes through SQLite.
    config = PerformanceConfig(cache_dir=directory, cache_size=0, cache_disk_timeout=1.0)
    manager = CacheManager(config, tracker=None)
    rng = random.Random(writer)
    ops = torn = exceptions = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        key = f"k{rng.randrange(64)}"
        try:
            if rng.random() < 0.5:
                manager.set(key, _value(key, writer, rng.choice((1, 50, 3000))), namespace="query")
            else:
                many = [f"k{rng.randrange(64)}" for _ in range(8)]
                for k, v in manager.get_many(many, namespace="query").items():
                    torn += _torn(k, v)
        except Exception:
            exceptions += 1
        ops += 1
    out.put((ops, torn, exceptions, manager.get_stats()["errors"]))
    manager.close()


def test_eight_processes_mixed_get_set(cache_dir: Path) -> None:
    """8 processes x 10 s of mixed get/set on one directory; some values use files."""
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [
        ctx.Process(target=_stress, args=(str(cache_dir), STRESS_SECONDS, i, out))
        for i in range(PROCESSES)
    ]
    for p in procs:
        p.start()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    out.close()
    out.join_thread()
    ops = sum(r[0] for r in results)
    assert ops > PROCESSES * 10
    assert [r[1] for r in results] == [0] * PROCESSES, "torn values"
    assert [r[2] for r in results] == [0] * PROCESSES, "exceptions"
    assert [r[3] for r in results] == [0] * PROCESSES, "cache error counters"


WRITER = """
import sys
from rag_perf_plugins.cache import CacheManager
from rag_perf_plugins.config import PerformanceConfig
m = CacheManager(PerformanceConfig(cache_dir=sys.argv[1], cache_size=0), tracker=None)
i = 0
print("ready", flush=True)
while True:
    m.set_many({f"k{i % 50}-{j}": "x" * (40_000 + j) for j in range(4)}, namespace="query")
    i += 1
"""


def test_sigkill_mid_write_leaves_a_usable_cache(cache_dir: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(cache_dir)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(0.5)  # let it be in the middle of writing; not a timing assertion
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    manager = CacheManager(PerformanceConfig(cache_dir=str(cache_dir), cache_size=0))
    found = manager.get_many([f"k{i}-{j}" for i in range(50) for j in range(4)], namespace="query")
    assert found, "the writer stored nothing before it was killed"
    assert all(v == "x" * (40_000 + int(k.split("-")[1])) for k, v in found.items())
    manager.set("after", "still works")
    assert manager.get("after") == "still works"
    assert manager.get_stats()["errors"] == 0
    manager.close()


def _child(manager: CacheManager, out: Any) -> None:
    got = manager.get("parent")
    manager.set("child", os.getpid())
    out.put((got, manager.get("child")))
    manager.close()


def test_fork_child_reopens(cache_dir: Path) -> None:
    manager = CacheManager(PerformanceConfig(cache_dir=str(cache_dir)), tracker=None)
    manager.set("parent", "hello")
    ctx = mp.get_context("fork")
    out = ctx.Queue()
    proc = ctx.Process(target=_child, args=(manager, out))
    proc.start()
    got, child_pid = out.get(timeout=60)
    proc.join(timeout=60)
    out.close()
    out.join_thread()
    assert proc.exitcode == 0
    assert got == "hello" and child_pid == proc.pid
    manager.tiers[0].clear()  # drop the memory tier: read the child's write from disk
    assert manager.get("child") == proc.pid
    manager.close()
