"""Scale-out benchmarks: N processes sharing one rate budget and one cache through Redis.

Example::

    rag-perf bench --only scaleout --quick

``run_shared_budget`` starts N worker processes (``multiprocessing`` spawn), each with its
own :class:`~rag_perf_plugins.admission.gate.AdmissionGate` (8 tasks, aiohttp) in front of a
:class:`~rag_perf_plugins.admission.redis_store.RedisBudgetStore`, all sending embedding requests
to one simulator whose RPM limit is the same budget. It counts, from the clients' side,
the answers that completed inside a steady window (after the first burst), the 429s, and
the latencies. The baseline, measured in the same run, is the same N processes each with a
process-local budget at the full rate: what several uvicorn workers do without Redis.

``run_cross_process_hits`` writes vectors from one process through a
:class:`~rag_perf_plugins.cache.CacheManager` with the Redis tier and the disk tier off,
then reads them from a second, fresh process; the baseline is the same pair without Redis.

Needs Redis (``redis_url`` of the bench config, else ``redis://127.0.0.1:6379/0``); every
key it writes is under a fresh prefix and deleted afterwards. Not measured here: several
hosts (one host stands in for many), or Redis over a real network (loopback only).
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from ..._secrets import describe_error, redact_url
from ...admission import AdmissionGate, LocalBudgetStore, key_fingerprint
from ...config import PerformanceConfig
from ...errors import Overloaded
from ...tracking import NULL_TRACKER
from ..registry import BenchContext, Result, Target, benchmark

__all__ = [
    "CrossProcessHits",
    "SharedBudgetRun",
    "delete_prefix",
    "run_cross_process_hits",
    "run_shared_budget",
]

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
MODEL = "text-embedding-3-small"
API_KEY = "sk-scaleout-bench"
TASKS_PER_PROCESS = 8
# The gate's burst is 1 s of budget and the simulator's 2 s: the second absorbs up to a
# second of scheduling jitter between admission and arrival on a loaded 2-core machine.
GATE_BURST_S = 1.0
SIM_BURST_S = 2.0


@dataclass(frozen=True)
class SharedBudgetRun:
    """What N processes achieved against one budget, seen by the clients.

    Attributes:
        processes: Worker processes.
        shared: True when the budget was kept in Redis, False for process-local budgets.
        ok: Answers 200 over the whole run; ``rate_limited``: answers 429;
            ``rejected``: callers the gate refused (``Overloaded``); ``errors``: others.
        in_window: Answers 200 completed inside the steady window.
        window_s: Length of the steady window, seconds.
        limit_per_s: The budget, requests per second.
        throughput_per_s: ``in_window / window_s``.
        fraction: ``throughput_per_s / limit_per_s``.
        p95_total_s: p95 of queue wait plus call, seconds; ``p95_call_s``: call alone.
        redis_calls: Store calls Redis answered; ``fallback_calls``: store calls served
            by the fallback while Redis was slow or away (all processes).
        p95_reserve_s: p95 of one budget reservation (the store's round trip), seconds.
        trips: Breakers opened (all processes); ``recoveries``: breakers closed again.
        answered_at: Wall times of the answers with their status, for windows after an
            event (a killed master).
    """

    processes: int
    shared: bool
    ok: int
    rate_limited: int
    rejected: int
    errors: int
    in_window: int
    window_s: float
    limit_per_s: float
    throughput_per_s: float
    fraction: float
    p95_total_s: float | None
    p95_call_s: float | None
    redis_calls: int
    fallback_calls: int
    p95_reserve_s: float | None = None
    trips: int = 0
    recoveries: int = 0
    answered_at: tuple[tuple[float, int], ...] = ()

    def sent_between(self, start: float, end: float) -> tuple[int, int]:
        """(answers 200, answers 429) that arrived between two wall times."""
        inside = [s for t, s in self.answered_at if start <= t < end]
        return sum(1 for s in inside if s == 200), sum(1 for s in inside if s == 429)


class _TimedStore:
    """A budget store whose reservations are timed (seconds each); everything else passes."""

    def __init__(self, store: Any) -> None:
        self._store = store
        self.times: list[float] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def atry_reserve(self, *args: Any, **kwargs: Any) -> float:
        t0 = time.perf_counter()
        try:
            return float(await self._store.atry_reserve(*args, **kwargs))
        finally:
            self.times.append(time.perf_counter() - t0)


def _p95(values: list[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]


async def _budget_main(spec: dict[str, Any], start_at: float) -> dict[str, Any]:
    import aiohttp

    config = PerformanceConfig(
        redis_url=spec["redis_url"],
        **(spec.get("redis") or {}),
        shared_rate_limit=spec["shared"],
        cache_namespace_prefix=spec["prefix"],
        requests_per_minute=spec["rpm"],
        rate_burst_seconds=GATE_BURST_S,
        max_concurrent_requests=spec["tasks"],
        worker_count=spec["processes"],
        enable_metrics=False,
    )
    store: Any
    if spec["shared"]:
        from ...admission.redis_store import shared_budget_store

        store = _TimedStore(shared_budget_store(config))
    else:
        store = _TimedStore(LocalBudgetStore())
    key = f"simulator/{MODEL}/{key_fingerprint(API_KEY)}"
    gate = AdmissionGate(config, key=key, store=store, tracker=NULL_TRACKER)
    url = spec["base_url"] + "/embeddings"
    body = {"model": MODEL, "input": ["scale-out"]}
    stop_at = start_at + spec["duration_s"]
    records: list[tuple[float, int, float, float]] = []
    rejected = 0
    connector = aiohttp.TCPConnector(limit=spec["tasks"])
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.sleep(max(0.0, start_at - time.time()))

        async def task() -> None:
            nonlocal rejected
            while time.time() < stop_at:
                t0 = time.perf_counter()
                try:
                    async with gate.aacquire(tokens=0):
                        t1 = time.perf_counter()
                        async with session.post(url, json=body) as response:
                            await response.read()
                            status = response.status
                            await gate.aobserve_response(status, response.headers)
                except Overloaded:
                    rejected += 1
                    await asyncio.sleep(0.05)
                    continue
                t2 = time.perf_counter()
                records.append((time.time(), status, t2 - t0, t2 - t1))

        await asyncio.gather(*(task() for _ in range(spec["tasks"])))
    stats = store.stats() if hasattr(store._store, "stats") else {}
    return {
        "records": records,
        "rejected": rejected,
        "reserve_s": store.times,
        **{
            name: int(stats.get(name, 0))
            for name in ("redis_calls", "fallback_calls", "trips", "recoveries")
        },
    }


def _budget_worker(spec: dict[str, Any], ready: Any, go: Any, start_at: Any, out: Any) -> None:
    try:
        # Import everything before saying ready, so the start is not spent importing.
        import aiohttp  # noqa: F401

        from ...admission import redis_store  # noqa: F401

        ready.put(os.getpid())
        go.wait()
        out.put(asyncio.run(_budget_main(spec, start_at.value)))
    except BaseException as exc:  # reported to the parent, which raises
        out.put({"error": describe_error(exc)})


def run_shared_budget(
    base_url: str,
    redis_url: str,
    *,
    processes: int,
    rpm: int,
    duration_s: float,
    warmup_s: float,
    shared: bool = True,
    prefix: str | None = None,
    tasks: int = TASKS_PER_PROCESS,
    redis: Mapping[str, Any] | None = None,
    during: Callable[[float], None] | None = None,
) -> SharedBudgetRun:
    """Run ``processes`` spawned workers for ``duration_s`` seconds against ``base_url``.

    Workers start together (after all have imported and connected) and count answers
    completed between ``warmup_s`` and ``duration_s`` after the start. With ``shared`` the
    budget is a fresh key under ``prefix`` (default: a new random prefix) in Redis.
    ``redis``: more config keys of the workers (``redis_mode``, ``redis_sentinels``...).
    ``during(start_at)``: runs in a thread of this process while the workers run (it may
    kill a Redis master at a chosen moment); ``start_at`` is the wall time of the start.
    """
    if processes < 1:
        msg = f"processes must be >= 1, got {processes}"
        raise ValueError(msg)
    if not 0 <= warmup_s < duration_s:
        msg = f"need 0 <= warmup_s < duration_s (seconds), got {warmup_s}, {duration_s}"
        raise ValueError(msg)
    ctx = multiprocessing.get_context("spawn")
    ready, out = ctx.Queue(), ctx.Queue()
    go = ctx.Event()
    start_value = ctx.Value("d", 0.0)
    spec = {
        "base_url": base_url,
        "redis_url": redis_url if shared else None,
        "shared": shared,
        "prefix": prefix or f"bench-{uuid.uuid4().hex[:12]}",
        "rpm": rpm,
        "tasks": tasks,
        "processes": processes,
        "duration_s": duration_s,
        "redis": dict(redis or {}),
    }
    workers = [
        ctx.Process(target=_budget_worker, args=(spec, ready, go, start_value, out))
        for _ in range(processes)
    ]
    for w in workers:
        w.start()
    try:
        for _ in workers:
            ready.get(timeout=120)
        start_at = time.time() + 1.0  # time for every child to reach its event loop
        start_value.value = start_at
        go.set()
        event = None
        if during is not None:
            event = threading.Thread(target=during, args=(start_at,), daemon=True)
            event.start()
        results = [out.get(timeout=duration_s + 120) for _ in workers]
        if event is not None:
            event.join(timeout=60)
    finally:
        for w in workers:
            w.join(timeout=30)
            if w.is_alive():
                w.kill()
                w.join()
    failed = [r["error"] for r in results if "error" in r]
    if failed:
        msg = f"{len(failed)} worker(s) failed, first: {failed[0]}"
        raise RuntimeError(msg)
    records = [rec for r in results for rec in r["records"]]
    window_start, window_end = start_at + warmup_s, start_at + duration_s
    in_window = sum(1 for t, s, _, _ in records if s == 200 and window_start <= t < window_end)
    window_s = duration_s - warmup_s
    limit_per_s = rpm / 60.0
    throughput = in_window / window_s
    ok_records = [r for r in records if r[1] == 200]
    return SharedBudgetRun(
        processes=processes,
        shared=shared,
        ok=len(ok_records),
        rate_limited=sum(1 for r in records if r[1] == 429),
        rejected=sum(int(r["rejected"]) for r in results),
        errors=sum(1 for r in records if r[1] not in (200, 429)),
        in_window=in_window,
        window_s=window_s,
        limit_per_s=limit_per_s,
        throughput_per_s=throughput,
        fraction=throughput / limit_per_s,
        p95_total_s=_p95([r[2] for r in ok_records]),
        p95_call_s=_p95([r[3] for r in ok_records]),
        redis_calls=sum(int(r["redis_calls"]) for r in results),
        fallback_calls=sum(int(r["fallback_calls"]) for r in results),
        p95_reserve_s=_p95([t for r in results for t in r["reserve_s"]]),
        trips=sum(int(r["trips"]) for r in results),
        recoveries=sum(int(r["recoveries"]) for r in results),
        answered_at=tuple(sorted((t, s) for t, s, _, _ in records)),
    )


@dataclass(frozen=True)
class CrossProcessHits:
    """Hits a fresh process found for keys another process wrote (disk tier off).

    Attributes:
        written: Keys the writer stored; ``hits``: keys the reader found.
        hit_rate: ``hits / written``.
        read_us_per_key: Reader's time per key of one batched ``get_vectors``, microseconds.
    """

    written: int
    hits: int
    hit_rate: float
    read_us_per_key: float


def _cache_role(
    role: str, redis_url: str | None, prefix: str, n: int, dim: int, out: Any,
    redis: Mapping[str, Any],
) -> None:  # fmt: skip
    try:
        from ...cache import CacheManager

        config = PerformanceConfig(
            redis_url=redis_url,
            **redis,
            redis_position="instead-of-disk",
            cache_disk_enabled=False,
            cache_namespace_prefix=prefix,
            enable_metrics=False,
        )
        keys = [f"vector-{i}" for i in range(n)]
        with CacheManager(config) as cache:
            if role == "write":
                cache.set_vectors({k: [i / n] * dim for i, k in enumerate(keys)}, model=MODEL)
                out.put({"written": n})
                return
            t0 = time.perf_counter()
            found = cache.get_vectors(keys)
            elapsed = time.perf_counter() - t0
            out.put({"hits": len(found), "seconds": elapsed})
    except BaseException as exc:  # reported to the parent, which raises
        out.put({"error": describe_error(exc)})


def _in_child(
    role: str, redis_url: str | None, prefix: str, n: int, dim: int, redis: Mapping[str, Any]
) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    args = (role, redis_url, prefix, n, dim, out, dict(redis))
    proc = ctx.Process(target=_cache_role, args=args)
    proc.start()
    try:
        result: dict[str, Any] = out.get(timeout=120)
    finally:
        proc.join(timeout=30)
        if proc.is_alive():
            proc.kill()
            proc.join()
    if "error" in result:
        msg = f"cache {role} process failed: {result['error']}"
        raise RuntimeError(msg)
    return result


def run_cross_process_hits(
    redis_url: str | None,
    *,
    n: int,
    dim: int = 384,
    prefix: str | None = None,
    redis: Mapping[str, Any] | None = None,
) -> CrossProcessHits:
    """Write ``n`` vectors of ``dim`` floats in one process, read them in another.

    ``redis_url=None`` runs the baseline: memory tier only, nothing shared. ``redis``: more
    config keys (``redis_mode``, ``redis_sentinels``, ``redis_master_name``).
    """
    prefix = prefix or f"bench-{uuid.uuid4().hex[:12]}"
    extra = dict(redis or {})
    written = int(_in_child("write", redis_url, prefix, n, dim, extra)["written"])
    read = _in_child("read", redis_url, prefix, n, dim, extra)
    hits = int(read["hits"])
    return CrossProcessHits(written, hits, hits / written, read["seconds"] / n * 1e6)


def delete_prefix(redis_url: str, prefix: str, redis: Mapping[str, Any] | None = None) -> int:
    """Delete every key under ``prefix:`` (what a run left behind); returns how many.

    ``redis``: ``redis_mode`` and friends, when ``redis_url`` is a cluster or sentinel URL.
    """
    from ...redis.client import RedisTarget

    config = PerformanceConfig(redis_url=redis_url, **(redis or {}))
    client = RedisTarget.from_config(config).client(timeout=5.0)
    try:
        keys = list(client.scan_iter(match=prefix + ":*", count=1000))
        return int(client.delete(*keys)) if keys else 0
    finally:
        client.close()


def _redis_url(ctx: BenchContext) -> str:
    from ...redis.client import make_redis_client

    url = ctx.config.redis_url or DEFAULT_REDIS_URL
    client = make_redis_client(url, timeout=1.0)
    try:
        client.ping()
    except Exception as exc:
        msg = f"scaleout benchmarks need Redis at {redact_url(url)} ({describe_error(exc)})"
        raise RuntimeError(msg) from exc
    finally:
        client.close()
    return url


def _ms(seconds: float | None) -> float:
    return float("nan") if seconds is None else round(seconds * 1000, 2)


@benchmark("scaleout", "1, 2 and 4 processes sharing one RPM budget through Redis (simulator)")
def shared_budget(ctx: BenchContext) -> Iterator[Result]:
    """Throughput, p95 and 429s of N processes sharing one budget; local budgets as baseline."""
    from .concurrency import simulator_process  # not imported by the spawned workers

    url = _redis_url(ctx)
    rpm = 3000
    duration = float(ctx.scale(20, quick=3))  # quick: ~16 s for the two runs with spawns
    warmup = 1.0 if ctx.quick else 2.0
    # --quick keeps the point that matters (4 processes, one budget) and its baseline.
    plan = ((4, True), (4, False)) if ctx.quick else ((1, True), (2, True), (4, True), (4, False))
    runs: list[SharedBudgetRun] = []
    with simulator_process(rpm=rpm, burst_seconds=SIM_BURST_S, latency_ms=20.0) as base_url:
        for processes, shared in plan:
            prefix = f"bench-{uuid.uuid4().hex[:12]}"
            ctx.progress(f"{processes} process(es), {'Redis' if shared else 'local'} budget")
            try:
                runs.append(
                    run_shared_budget(
                        base_url,
                        url,
                        processes=processes,
                        rpm=rpm,
                        duration_s=duration,
                        warmup_s=warmup,
                        shared=shared,
                        prefix=prefix,
                    )
                )
            finally:
                delete_prefix(url, prefix)
            if (processes, shared) != plan[-1]:
                time.sleep(SIM_BURST_S + 0.5)  # let the simulator's bucket fill up again
    baseline = runs[-1]
    for run in runs[:-1]:
        row: dict[str, Any] = {
            "processes": run.processes,
            "throughput_per_s": round(run.throughput_per_s, 2),
            "fraction_of_limit": round(run.fraction, 4),
            "p95_total_ms": _ms(run.p95_total_s),
            "p95_call_ms": _ms(run.p95_call_s),
            "ok": run.ok,
            "rate_limited": run.rate_limited,
            "rejected": run.rejected,
            "redis_calls": run.redis_calls,
            "fallback_calls": run.fallback_calls,
        }
        yield Result.compare(
            f"scaleout_shared_fraction_{run.processes}p",
            run.fraction,
            "ratio",
            better="higher",
            target=Target.value_at_least(0.95),
            notes=(
                f"{run.processes} process(es) x {TASKS_PER_PROCESS} tasks, one {rpm:g} RPM "
                f"budget in Redis: {run.throughput_per_s:.1f}/s of {run.limit_per_s:.1f}/s "
                f"over {run.window_s:g} s"
            ),
            **row,
        )
        yield Result.compare(
            f"scaleout_shared_429s_{run.processes}p",
            run.rate_limited,
            "responses",
            baseline=(f"{baseline.processes} processes, local budgets", baseline.rate_limited),
            better="lower",
            target=Target.value_at_most(0),
            notes="429s from a simulator set to the same RPM",
            **row,
        )
        yield Result.compare(
            f"scaleout_shared_p95_ms_{run.processes}p",
            _ms(run.p95_total_s),
            "ms",
            better="lower",
            notes=(
                f"queue wait + call (20 ms simulated latency); call alone "
                f"{_ms(run.p95_call_s)} ms. Closed loop: waits grow with callers per budget"
            ),
            **row,
        )
    yield Result.compare(
        "scaleout_local_budgets_429s_4p",
        baseline.rate_limited,
        "responses",
        better="lower",
        notes=(
            f"baseline: 4 processes each with a process-local {rpm:g} RPM gate: "
            f"{baseline.throughput_per_s:.1f}/s completed, {baseline.rate_limited} 429s, "
            f"p95 {_ms(baseline.p95_total_s)} ms"
        ),
        ok=baseline.ok,
        throughput_per_s=round(baseline.throughput_per_s, 2),
    )


@benchmark("scaleout", "cross-process cache hit rate through Redis (disk tier off)")
def cross_process_hits(ctx: BenchContext) -> Iterator[Result]:
    """Hit rate of a fresh process on vectors another process wrote, with and without Redis."""
    url = _redis_url(ctx)
    n = ctx.scale(5000, quick=1000)
    prefix = f"bench-{uuid.uuid4().hex[:12]}"
    try:
        ours = run_cross_process_hits(url, n=n, prefix=prefix)
    finally:
        delete_prefix(url, prefix)
    local = run_cross_process_hits(None, n=n)
    yield Result.compare(
        "scaleout_cross_process_hit_rate",
        ours.hit_rate,
        "ratio",
        baseline=("memory tier only (no shared tier)", local.hit_rate),
        better="higher",
        target=Target.value_at_least(0.99),
        notes=(
            f"{n} 384-d vectors written by one process, read by a fresh one in one "
            f"get_vectors call: {ours.read_us_per_key:.1f} µs per key through Redis"
        ),
        hits=ours.hits,
        written=ours.written,
        read_us_per_key=round(ours.read_us_per_key, 2),
    )


HA_RPM = 1200  # 20 requests/s: a failover's seconds stay countable


def _ha_ports() -> tuple[int, int]:
    return (
        int(os.environ.get("RAG_PERF_HA_CLUSTER_PORT", "7100")),
        int(os.environ.get("RAG_PERF_HA_SENTINEL_PORT", "7200")),
    )


def _failover_run(
    base_url: str, url: str, keys: Mapping[str, Any], lose: Callable[[str], None], *, quick: bool
) -> SharedBudgetRun:
    """4 processes on one budget; ``lose(budget key)`` runs 3 s in (kills a master)."""
    prefix = f"bench-{uuid.uuid4().hex[:12]}"
    from ...redis.keys import RedisKeys

    budget_key = RedisKeys(prefix).budget(f"simulator/{MODEL}/{key_fingerprint(API_KEY)}")

    def during(start_at: float) -> None:
        time.sleep(max(0.0, start_at + 3.0 - time.time()))
        lose(budget_key)

    try:
        return run_shared_budget(
            base_url, url, processes=4, rpm=HA_RPM, duration_s=10.0 if quick else 14.0,
            warmup_s=1.5, prefix=prefix, redis=keys, during=during,
        )  # fmt: skip
    finally:
        delete_prefix(url, prefix, keys)


@benchmark("scaleout", "Redis standalone, Cluster and Sentinel: one budget, hits, a failover")
def redis_modes(ctx: BenchContext) -> Iterator[Result]:
    """Per Redis mode: budget fraction, reservation p95, hit rate, failover over-admission.

    With 4 processes on one budget: the fraction of the limit achieved and the p95 of one
    reservation; the cross-process hit rate; and the requests over-admitted (429s at the
    simulator) when the master is lost mid-run.

    Starts its own servers on loopback (a standalone ``redis-server``, a 3+3 Cluster on
    ports 7100-7105, a Sentinel set on 7200-7201 and 27200-27202; moved with
    ``RAG_PERF_HA_CLUSTER_PORT`` / ``RAG_PERF_HA_SENTINEL_PORT``). Full runs only: the
    servers and three 10 s runs per mode do not fit ``--quick``'s 3 s per row.
    """
    if ctx.quick:
        ctx.progress("redis modes: full runs only (11 redis-server processes, ~100 s)")
        return
    import tempfile
    from pathlib import Path

    from ..redis_servers import MASTER_NAME, ClusterSet, SentinelSet, _Servers
    from .concurrency import simulator_process

    cluster_port, sentinel_port = _ha_ports()
    standalone_port = sentinel_port + 1  # never at the same time as the Sentinel set
    runs: dict[str, tuple[SharedBudgetRun, CrossProcessHits, SharedBudgetRun]] = {}
    with (
        tempfile.TemporaryDirectory(dir=ctx.workdir) as tmp,
        simulator_process(rpm=HA_RPM, burst_seconds=SIM_BURST_S, latency_ms=20.0) as base_url,
    ):
        for mode in ("standalone", "cluster", "sentinel"):
            ctx.progress(f"redis modes: {mode}")
            servers: Any
            keys: dict[str, Any] = {"redis_mode": mode}
            if mode == "standalone":
                servers = _Servers(Path(tmp) / mode)
                servers.start(standalone_port)
                url = f"redis://127.0.0.1:{standalone_port}/0"
                time.sleep(0.5)  # the server binds its port

                def lose(key: str, s: Any = servers) -> None:
                    s.kill(standalone_port)  # and back, empty, 5 s later
                    time.sleep(5.0)
                    s.start(standalone_port)

                context: Any = contextlib.nullcontext(servers)
            elif mode == "cluster":
                servers = ClusterSet(Path(tmp) / mode, base_port=cluster_port)
                url = servers.url
                context = servers.started()

                def lose(key: str, s: Any = servers) -> None:
                    s.kill_master(key)
            else:
                servers = SentinelSet(Path(tmp) / mode, base_port=sentinel_port)
                url = servers.url
                keys |= {"redis_sentinels": servers.sentinels, "redis_master_name": MASTER_NAME}
                context = servers.started()

                def lose(key: str, s: Any = servers) -> None:
                    s.kill_master()

            try:
                with context:
                    prefix = f"bench-{uuid.uuid4().hex[:12]}"
                    try:
                        steady = run_shared_budget(
                            base_url, url, processes=4, rpm=HA_RPM, duration_s=8.0,
                            warmup_s=1.5, prefix=prefix, redis=keys,
                        )  # fmt: skip
                        hits = run_cross_process_hits(url, n=1000, prefix=prefix, redis=keys)
                    finally:
                        delete_prefix(url, prefix, keys)
                    time.sleep(SIM_BURST_S + 0.5)  # the simulator's bucket fills up again
                    failover = _failover_run(base_url, url, keys, lose, quick=False)
                    time.sleep(SIM_BURST_S + 0.5)
            finally:
                if mode == "standalone":
                    servers.stop()
            runs[mode] = (steady, hits, failover)
    base_steady, base_hits, _ = runs["standalone"]
    for mode, (steady, hits, failover) in runs.items():
        row: dict[str, Any] = {
            "mode": mode,
            "fraction_of_limit": round(steady.fraction, 4),
            "p95_reserve_ms": _ms(steady.p95_reserve_s),
            "rate_limited": steady.rate_limited,
            "hit_rate": round(hits.hit_rate, 4),
            "failover_429s": failover.rate_limited,
            "failover_errors": failover.errors + failover.rejected,
            "failover_trips": failover.trips,
            "failover_recoveries": failover.recoveries,
        }
        yield Result.compare(
            f"scaleout_{mode}_fraction_4p",
            steady.fraction,
            "ratio",
            better="higher",
            target=Target.value_at_least(0.95),
            notes=f"4 processes x {TASKS_PER_PROCESS} tasks, one {HA_RPM} RPM budget in {mode} "
            f"Redis: {steady.throughput_per_s:.1f}/s of {steady.limit_per_s:.1f}/s",
            **row,
        )
        yield Result.compare(
            f"scaleout_{mode}_reserve_p95_ms_4p",
            _ms(steady.p95_reserve_s),
            "ms",
            baseline=None
            if mode == "standalone"
            else ("standalone Redis", _ms(base_steady.p95_reserve_s)),
            better="lower",
            notes="one budget reservation (a Lua script call) as 4 processes see it",
            **row,
        )
        yield Result.compare(
            f"scaleout_{mode}_cross_process_hit_rate",
            hits.hit_rate,
            "ratio",
            baseline=None if mode == "standalone" else ("standalone Redis", base_hits.hit_rate),
            better="higher",
            target=Target.value_at_least(0.99),
            notes=f"1000 vectors written by one process, read by a fresh one ({mode})",
            **row,
        )
        lost = (
            "Redis killed 3 s in, back empty 5 s later"
            if mode == "standalone"
            else "the budget key's master SIGKILLed 3 s in"
        )
        yield Result.compare(
            f"scaleout_{mode}_failover_over_admitted",
            failover.rate_limited,
            "requests",
            better="lower",
            target=Target.value_at_most(8),
            notes=f"429s at a simulator with the same RPM, 4 processes: {lost}; bound: one "
            f"request per process per switch; {failover.errors + failover.rejected} failed calls",
            **row,
        )
