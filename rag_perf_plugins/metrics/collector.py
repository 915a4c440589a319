"""A ``prometheus_client`` collector over the tracker and the live gates, pools and breakers.

Example::

    from prometheus_client import CollectorRegistry, generate_latest
    from rag_perf_plugins.metrics import TrackerCollector

    registry = CollectorRegistry()
    registry.register(TrackerCollector(worker="0"))
    print(generate_latest(registry).decode())

Every scrape reads one snapshot of the tracker (``tracker.to_dict()``) and, for a live
process, the admission gates (``get_gate``), the shared HTTP clients' pools, the
process-wide cache manager and the Redis circuit breakers. ``prometheus_client`` writes the
exposition format; nothing here formats text. The metric names, their labels and units are
listed in :data:`METRICS` (and in docs/components/metrics.md, which a test keeps equal).

Labels are bounded by construction, never by the traffic: ``operation`` takes the
tracker's operation names (set by code, not by input: services, adapters, decorators), and
past ``max_operations`` distinct names the rest are folded into ``operation="_other"``
(their counts summed, their histograms merged); ``event`` is folded the same way past
``max_events``; ``gate`` is provider/model (the API-key fingerprint is summed over, so a
per-user key cannot add series); ``client`` is a shared HTTP client's origin; ``cache``,
``direction``, ``tier``, ``state``, ``reason`` and ``quantile`` have fixed value sets. The
``worker`` label is constant per collector (see :func:`start_metrics_server`).

Does not: keep state between scrapes besides which names were seen first (so a name keeps
its own series once it has one), or expose per-request, per-user or per-prompt labels.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Final

from .._secrets import redact_url

try:
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
        Metric,
    )
    from prometheus_client.registry import Collector
except ImportError as exc:
    msg = "the metrics endpoint needs prometheus-client: pip install 'rag-perf-plugins[metrics]'"
    raise ImportError(msg) from exc

from ..tracking.histogram import LogHistogram
from ..tracking.tracker import PerformanceTracker, get_performance_tracker

__all__ = ["BUCKETS_S", "METRICS", "OTHER", "TrackerCollector"]

OTHER: Final = "_other"
"""The label value that names/events past the bound are folded into."""

BUCKETS_S: Final = (
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
    0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
"""Upper bounds (seconds) of ``rag_perf_operation_duration_seconds``: 10 µs (a memory hit)
to 60 s (a long generation). The tracker's own histograms are finer (±0.5 %); these are
cut from them at each scrape."""

_QUANTILES: Final = (0.5, 0.95, 0.99)
_REASONS: Final = ("queue_full", "wait_too_long", "deadline")  # admission.gate.Rejection

# name: (type, labels besides worker, unit, help). The served names; the docs table and the
# Grafana dashboard test read this.
METRICS: Final[dict[str, tuple[str, tuple[str, ...], str, str]]] = {
    "rag_perf_calls_total": (
        "counter", ("operation", "cache"), "calls",
        "Finished calls per operation, by cache result (hit, miss, none: no cache lookup).",
    ),
    "rag_perf_errors_total": (
        "counter", ("operation",), "calls", "Calls that raised or failed.",
    ),
    "rag_perf_operation_duration_seconds": (
        "histogram", ("operation", "cache"), "seconds",
        "Call latency by cache result (hit, miss, none), for histogram_quantile across workers.",
    ),
    "rag_perf_operation_latency_seconds": (
        "summary", ("operation", "cache"), "seconds",
        "Latency quantiles of this worker (±0.5 %): cache=all, hit or miss (miss-only p95 is "
        "what a miss costs).",
    ),
    "rag_perf_tokens_total": (
        "counter", ("operation", "direction"), "tokens",
        "Tokens sent (input) and received (output) by provider calls.",
    ),
    "rag_perf_tokens_saved_total": (
        "counter", ("operation",), "tokens",
        "Tokens not spent: answered from the cache or by another caller's identical request.",
    ),
    "rag_perf_cost_usd_total": (
        "counter", ("operation",), "USD",
        "Dollars spent by provider calls at the price table's prices (known prices only).",
    ),
    "rag_perf_cost_saved_usd_total": (
        "counter", ("operation",), "USD",
        "Dollars not spent: the cost of the answers cache hits and coalesced calls replayed.",
    ),
    "rag_perf_cost_unknown_calls_total": (
        "counter", ("operation",), "calls",
        "Calls whose cost is unknown (no price for the model, or no usage reported).",
    ),
    "rag_perf_model_cost_usd_total": (
        "counter", ("model", "kind"), "USD",
        "Dollars per model: kind=spent by provider calls, kind=saved by hits and coalesced calls.",
    ),
    "rag_perf_model_cost_unknown_calls_total": (
        "counter", ("model",), "calls", "Calls of the model whose cost is unknown.",
    ),
    "rag_perf_queue_wait_seconds": (
        "summary", ("operation",), "seconds",
        "Time spent waiting for admission (gate) or a batch, quantiles of this worker.",
    ),
    "rag_perf_time_to_first_chunk_seconds": (
        "summary", ("operation",), "seconds", "Time to the first chunk of streams.",
    ),
    "rag_perf_retries_total": (
        "counter", ("operation",), "attempts", "Attempts after the first (the retry policy).",
    ),
    "rag_perf_batches_total": (
        "counter", ("operation",), "batches", "Calls that carried a batch size.",
    ),
    "rag_perf_batch_items_total": (
        "counter", ("operation",), "items", "Items in those batches (mean = items / batches).",
    ),
    "rag_perf_streams_abandoned_total": (
        "counter", ("operation",), "streams", "Streams closed by the consumer before their end.",
    ),
    "rag_perf_throughput_per_second": (
        "gauge", ("operation",), "calls/s", "Calls per second over the tracker's window.",
    ),
    "rag_perf_events_total": (
        "counter", ("operation", "event"), "events",
        "Named counters (tracker.incr): cache.hits/misses per text, coalesced, retry.*, "
        "admission.rejected...; operation is empty for process-wide ones.",
    ),
    "rag_perf_gate_in_flight": (
        "gauge", ("gate",), "requests", "Requests holding an admission slot now.",
    ),
    "rag_perf_gate_queued": (
        "gauge", ("gate",), "requests", "Requests waiting for admission now.",
    ),
    "rag_perf_gate_admitted_total": (
        "counter", ("gate",), "requests", "Requests admitted by the gate.",
    ),
    "rag_perf_gate_rejected_total": (
        "counter", ("gate", "reason"), "requests",
        "Requests refused: queue_full (Overloaded), wait_too_long (past max_wait), deadline.",
    ),
    "rag_perf_gate_pauses_total": (
        "counter", ("gate",), "pauses",
        "Pauses of every caller of a gate: a 429 with Retry-After, or a budget header at 0.",
    ),
    "rag_perf_gate_paused_seconds": (
        "gauge", ("gate",), "seconds", "Seconds left in the current pause (0 when none).",
    ),
    "rag_perf_http_requests_total": (
        "counter", ("client",), "requests", "Requests through a shared HTTP client.",
    ),
    "rag_perf_http_connections_opened_total": (
        "counter", ("client",), "connections", "TCP connections opened by a shared client.",
    ),
    "rag_perf_http_connections": (
        "gauge", ("client", "state"), "connections", "Pooled connections, active or idle.",
    ),
    "rag_perf_http_pool_timeouts_total": (
        "counter", ("client",), "requests", "Requests that gave up waiting for a connection.",
    ),
    "rag_perf_cache_entries": (
        "gauge", ("tier",), "entries", "Entries in a tier of the process-wide cache.",
    ),
    "rag_perf_cache_bytes": (
        "gauge", ("tier",), "bytes", "Bytes held by a tier of the process-wide cache.",
    ),
    "rag_perf_cache_evictions_total": (
        "counter", ("tier",), "entries", "Entries evicted from a tier to stay in its bound.",
    ),
    "rag_perf_cache_errors_total": (
        "counter", (), "errors", "Cache operations that failed and were served uncached.",
    ),
    "rag_perf_redis_breaker_open": (
        "gauge", (), "breakers", "Redis circuit breakers open now (Redis calls skipped).",
    ),
    "rag_perf_redis_breaker_trips_total": (
        "counter", (), "trips", "Times a Redis circuit breaker opened.",
    ),
    "rag_perf_breaker_state": (
        "gauge", ("target",), "state",
        "Circuit breaker of a provider target: 0 closed, 1 half-open, 2 open.",
    ),
    "rag_perf_breaker_transitions_total": (
        "counter", ("target", "to"), "transitions",
        "Breaker transitions seen by this process: opened, reopened, half_open, closed.",
    ),
    "rag_perf_breaker_open_seconds_total": (
        "counter", ("target",), "seconds", "Time a breaker was not closed, summed as it closes.",
    ),
    "rag_perf_breaker_probes_abandoned_total": (
        "counter", ("target",), "probes",
        "Blocking half-open probes left running in a worker thread past breaker_probe_timeout.",
    ),
    "rag_perf_breaker_probes_late": (
        "gauge", ("target",), "probes",
        "Abandoned blocking probes still running now (at most breaker_probes per target).",
    ),
    "rag_perf_target_calls_total": (
        "counter", ("target",), "calls", "Calls a breaker let through to a target.",
    ),
    "rag_perf_failovers_total": (
        "counter", ("target", "reason"), "calls",
        "Calls moved past a target: open, rate_limited, server_error, timeout, connection, "
        "gate, paused, same_rate_limit_scope, probe_running.",
    ),
    "process_resident_memory_bytes": (
        "gauge", (), "bytes", "Resident memory size of this process.",
    ),
    "process_cpu_seconds_total": (
        "counter", (), "seconds", "User and system CPU time of this process.",
    ),
}  # fmt: skip


_STATE_VALUE = {"closed": 0.0, "half_open": 1.0, "open": 2.0}


class _Op:
    """One operation's figures in a scrape (or several folded into ``_other``)."""

    __slots__ = ("figures", "histograms", "throughput")

    def __init__(self, entry: Mapping[str, Any]) -> None:
        self.figures: dict[str, float] = {
            k: float(entry.get(k) or 0)
            for k in (
                "count", "errors", "cache_hits", "cache_misses", "tokens_in", "tokens_out",
                "tokens_saved", "retries", "streams_abandoned", "cost_usd", "cost_saved_usd",
                "cost_unknown_calls",
            )
        }  # fmt: skip
        self.throughput = float(entry.get("throughput_per_s") or 0.0)
        raw = entry.get("histograms") or {}
        self.histograms: dict[str, LogHistogram] = {
            name: LogHistogram.from_dict(data) for name, data in raw.items() if data
        }

    def merge(self, other: _Op) -> None:
        for k, v in other.figures.items():
            self.figures[k] += v
        self.throughput += other.throughput
        for name, h in other.histograms.items():
            mine = self.histograms.get(name)
            if mine is None:
                self.histograms[name] = h
            else:
                mine.merge(h)

    def hist(self, name: str) -> LogHistogram:
        return self.histograms.get(name) or LogHistogram()


class _Bound:
    """First ``limit`` distinct values keep their own series; later ones become ``_other``."""

    __slots__ = ("limit", "seen")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.seen: dict[str, None] = {}

    def __call__(self, value: str) -> str:
        if value in self.seen:
            return value
        if len(self.seen) < self.limit:
            self.seen[value] = None
            return value
        return OTHER


def _buckets(h: LogHistogram) -> list[tuple[str, float]]:
    """Cumulative counts at :data:`BUCKETS_S` (and +Inf) from a fine log histogram."""
    counts = [(h._gamma**index, n) for index, n in h._buckets()]
    out: list[tuple[str, float]] = []
    cumulative, i = float(h.zero_count), 0
    for bound in BUCKETS_S:
        while i < len(counts) and counts[i][0] <= bound * (1.0 + 1e-12):
            cumulative += counts[i][1]
            i += 1
        out.append((_le(bound), cumulative))
    out.append(("+Inf", float(h.count)))
    return out


def _le(bound: float) -> str:
    return f"{bound:.6f}".rstrip("0").rstrip(".") if bound < 1 else f"{bound:.1f}"


def _summary(
    name: str, help_text: str, labels: list[str]
) -> tuple[Metric, Callable[[list[str], LogHistogram], None]]:
    metric = Metric(name, help_text, "summary")

    def add(values: list[str], h: LogHistogram) -> None:
        base = dict(zip(labels, values, strict=True))
        if h.count:
            for q in _QUANTILES:
                metric.add_sample(name, {**base, "quantile": str(q)}, h.quantile(q))
        metric.add_sample(name + "_count", base, float(h.count))
        metric.add_sample(name + "_sum", base, h.sum if h.count else 0.0)

    return metric, add


class TrackerCollector(Collector):
    """A custom ``prometheus_client`` collector: the tracker and the live components.

    Example::

        registry = CollectorRegistry()
        registry.register(TrackerCollector(tracker, worker="2"))

    Args:
        tracker: The tracker to read; ``None``: the process-wide one, looked up at each
            scrape (so ``set_performance_tracker`` applies).
        worker: Value of the ``worker`` label on every sample (``None``: no such label).
            Each worker of a multi-process server serves its own port with its own value.
        source: Instead of a tracker, a function returning a stats export
            (``tracker.to_dict()``, e.g. read from a file); gates, pools and breakers are
            then not read (they are not in the file).
        max_operations: Distinct ``operation`` values before the rest fold into ``_other``.
        max_events: Distinct ``event`` values before the rest fold into ``_other``.

    Does not: cache a scrape (each one takes a fresh snapshot; a tracker with 100
    operations takes a few milliseconds).
    """

    def __init__(
        self,
        tracker: PerformanceTracker | None = None,
        *,
        worker: str | None = None,
        source: Callable[[], Mapping[str, Any]] | None = None,
        max_operations: int = 200,
        max_events: int = 200,
    ) -> None:
        if tracker is not None and source is not None:
            msg = "give a tracker or a source, not both"
            raise ValueError(msg)
        for name, value in (("max_operations", max_operations), ("max_events", max_events)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                msg = f"{name} must be an int >= 1, got {value!r}"
                raise ValueError(msg)
        self._tracker = tracker
        self._source = source
        self.worker = None if worker is None else str(worker)
        self._operations = _Bound(max_operations)
        self._events = _Bound(max_events)
        self._gates = _Bound(50)
        self._models = _Bound(50)
        self._clients = _Bound(50)
        self._targets = _Bound(50)

    @property
    def live(self) -> bool:
        """Whether gates, pools, cache tiers and breakers of this process are read too."""
        return self._source is None

    def _stats(self) -> Mapping[str, Any]:
        if self._source is not None:
            return self._source()
        tracker = self._tracker if self._tracker is not None else get_performance_tracker()
        return tracker.to_dict(histograms=True)

    def describe(self) -> list[Metric]:
        """Nothing: the registry then calls :meth:`collect` only when scraped."""
        return []

    def collect(self) -> Iterator[Metric]:
        """One scrape: every family of :data:`METRICS` that has samples."""
        stats = self._stats()
        extra = [] if self.worker is None else ["worker"]
        extra_values = [] if self.worker is None else [self.worker]
        families: dict[str, Any] = {}

        def family(name: str) -> Any:
            fam = families.get(name)
            if fam is None:
                kind, labels, _unit, help_text = METRICS[name]
                names = [*labels, *extra]
                if kind == "counter":
                    fam = CounterMetricFamily(name.removesuffix("_total"), help_text, labels=names)
                elif kind == "gauge":
                    fam = GaugeMetricFamily(name, help_text, labels=names)
                elif kind == "histogram":
                    fam = HistogramMetricFamily(name, help_text, labels=names)
                else:
                    fam = _summary(name, help_text, names)
                families[name] = fam
            return fam

        def add(name: str, values: Iterable[str], value: float) -> None:
            family(name).add_metric([*values, *extra_values], value)

        ops: dict[str, _Op] = {}
        for name, entry in sorted((stats.get("operations") or {}).items()):
            folded = self._operations(name)
            op = _Op(entry)
            if folded in ops:
                ops[folded].merge(op)
            else:
                ops[folded] = op
        for name, op in ops.items():
            f = op.figures
            hits, misses = f["cache_hits"], f["cache_misses"]
            add("rag_perf_calls_total", [name, "hit"], hits)
            add("rag_perf_calls_total", [name, "miss"], misses)
            add("rag_perf_calls_total", [name, "none"], max(0.0, f["count"] - hits - misses))
            add("rag_perf_errors_total", [name], f["errors"])
            latency = op.hist("latency")
            by_cache = {"hit": op.hist("latency_hit"), "miss": op.hist("latency_miss")}
            # "none": the calls that reported no cache result (all less hits less misses).
            none_count = max(0, latency.count - by_cache["hit"].count - by_cache["miss"].count)
            none = _difference(latency, by_cache["hit"], by_cache["miss"]) if none_count else None
            for cache, h in (*by_cache.items(), ("none", none)):
                if h is None or not h.count:
                    continue
                family("rag_perf_operation_duration_seconds").add_metric(
                    [name, cache, *extra_values], _buckets(h), h.sum
                )
            _metric, summary = family("rag_perf_operation_latency_seconds")
            summary([name, "all", *extra_values], latency)
            for cache, h in by_cache.items():
                if h.count:
                    summary([name, cache, *extra_values], h)
            add("rag_perf_tokens_total", [name, "input"], f["tokens_in"])
            add("rag_perf_tokens_total", [name, "output"], f["tokens_out"])
            add("rag_perf_tokens_saved_total", [name], f["tokens_saved"])
            add("rag_perf_cost_usd_total", [name], f["cost_usd"])
            add("rag_perf_cost_saved_usd_total", [name], f["cost_saved_usd"])
            add("rag_perf_cost_unknown_calls_total", [name], f["cost_unknown_calls"])
            add("rag_perf_retries_total", [name], f["retries"])
            add("rag_perf_streams_abandoned_total", [name], f["streams_abandoned"])
            add("rag_perf_throughput_per_second", [name], op.throughput)
            queue = op.hist("queue_wait")
            if queue.count:
                family("rag_perf_queue_wait_seconds")[1]([name, *extra_values], queue)
            ttft = op.hist("ttft")
            if ttft.count:
                family("rag_perf_time_to_first_chunk_seconds")[1]([name, *extra_values], ttft)
            batch = op.hist("batch_size")
            if batch.count:
                add("rag_perf_batches_total", [name], float(batch.count))
                add("rag_perf_batch_items_total", [name], batch.sum)
        models: dict[str, list[float]] = {}
        for model, entry in sorted((stats.get("models") or {}).items()):
            sums = models.setdefault(self._models(model), [0.0, 0.0, 0.0])
            sums[0] += float(entry.get("cost_usd") or 0.0)
            sums[1] += float(entry.get("cost_saved_usd") or 0.0)
            sums[2] += float(entry.get("cost_unknown_calls") or 0)
        for model, (spent, saved, unknown) in models.items():
            add("rag_perf_model_cost_usd_total", [model, "spent"], spent)
            add("rag_perf_model_cost_usd_total", [model, "saved"], saved)
            add("rag_perf_model_cost_unknown_calls_total", [model], unknown)
        events: dict[tuple[str, str], float] = {}
        for name, entry in (stats.get("operations") or {}).items():
            for event, n in (entry.get("counters") or {}).items():
                key = (self._operations(name), self._events(event))
                events[key] = events.get(key, 0.0) + n
        for event, n in (stats.get("counters") or {}).items():
            key = ("", self._events(event))
            events[key] = events.get(key, 0.0) + n
        for (operation, event), n in sorted(events.items()):
            add("rag_perf_events_total", [operation, event], n)
        if self.live:
            self._live(add)
        process = stats.get("process") or {}
        if "rss_bytes" in process:
            add("process_resident_memory_bytes", [], float(process["rss_bytes"]))
        if "cpu_user_s" in process:
            cpu = float(process["cpu_user_s"]) + float(process.get("cpu_system_s") or 0.0)
            add("process_cpu_seconds_total", [], cpu)
        for name in METRICS:
            fam = families.get(name)
            if fam is not None:
                yield fam[0] if isinstance(fam, tuple) else fam

    def _live(self, add: Callable[[str, Iterable[str], float], None]) -> None:
        """Gates, HTTP pools, the process-wide cache and Redis breakers, read now."""
        from ..admission.registry import live_gates

        gates: dict[str, dict[str, float]] = {}
        for gate in live_gates():
            snapshot = gate.stats()
            # provider/model/fingerprint -> provider/model: per-key gates are summed.
            label = self._gates(redact_url(gate.key.rsplit("/", 1)[0]))
            totals = gates.setdefault(label, {})
            for field in ("in_flight", "queued_now", "admitted", "pauses", "paused_for_s"):
                totals[field] = totals.get(field, 0.0) + float(snapshot.get(field) or 0)
            for reason, n in (snapshot.get("rejected_by_reason") or {}).items():
                totals[f"r:{reason}"] = totals.get(f"r:{reason}", 0.0) + n
        for label, totals in sorted(gates.items()):
            add("rag_perf_gate_in_flight", [label], totals["in_flight"])
            add("rag_perf_gate_queued", [label], totals["queued_now"])
            add("rag_perf_gate_admitted_total", [label], totals["admitted"])
            add("rag_perf_gate_pauses_total", [label], totals["pauses"])
            add("rag_perf_gate_paused_seconds", [label], totals["paused_for_s"])
            for reason in _REASONS:
                add("rag_perf_gate_rejected_total", [label, reason], totals.get(f"r:{reason}", 0))
        http = sys.modules.get("rag_perf_plugins.pool.http")
        if http is not None:
            for client, pool in sorted(http.http_pool_stats().items()):
                label = self._clients(client)
                add("rag_perf_http_requests_total", [label], float(pool.requests))
                add("rag_perf_http_connections_opened_total", [label], pool.connections_opened)
                add("rag_perf_http_connections", [label, "active"], float(pool.active))
                add("rag_perf_http_connections", [label, "idle"], float(pool.idle))
                add("rag_perf_http_pool_timeouts_total", [label], float(pool.pool_timeouts))
        from ..cache.registry import installed_cache_manager

        manager = installed_cache_manager()
        if manager is not None:
            cache = manager.get_stats()
            for tier, figures in sorted((cache.get("tiers") or {}).items()):
                add("rag_perf_cache_entries", [tier], float(figures.get("items") or 0))
                add("rag_perf_cache_bytes", [tier], float(figures.get("bytes") or 0))
                add("rag_perf_cache_evictions_total", [tier], float(figures.get("evictions") or 0))
            add("rag_perf_cache_errors_total", [], float(cache.get("errors") or 0))
        client = sys.modules.get("rag_perf_plugins.redis.client")
        breakers = client.live_breakers() if client is not None else []
        add("rag_perf_redis_breaker_open", [], float(sum(b.state == "open" for b in breakers)))
        add("rag_perf_redis_breaker_trips_total", [], float(sum(b.trips for b in breakers)))
        resilience = sys.modules.get("rag_perf_plugins.resilience.breakers")
        # Summed per label: one target may have breakers of several settings, and targets
        # past the label bound fold into one.
        sums: dict[tuple[str, tuple[str, ...]], float] = {}
        states: dict[str, float] = {}
        for board in resilience.live_breakers() if resilience is not None else []:
            for name, figures in board.stats().items():
                label = self._targets(redact_url(name))
                states[label] = max(states.get(label, 0.0), _STATE_VALUE[figures["state"]])
                rows: list[tuple[str, tuple[str, ...], float]] = [
                    ("rag_perf_breaker_open_seconds_total", (label,), figures["open_s"]),
                    ("rag_perf_target_calls_total", (label,), figures["calls"]),
                    (
                        "rag_perf_breaker_probes_abandoned_total",
                        (label,),
                        figures["probes_abandoned"],
                    ),
                    ("rag_perf_breaker_probes_late", (label,), figures["probes_late"]),
                ]
                rows += [
                    ("rag_perf_breaker_transitions_total", (label, to), n)
                    for to, n in figures["transitions"].items()
                ]
                rows += [
                    ("rag_perf_failovers_total", (label, reason), n)
                    for reason, n in figures["failovers"].items()
                ]
                for metric, labels, n in rows:
                    sums[(metric, labels)] = sums.get((metric, labels), 0.0) + float(n)
        for label, value in sorted(states.items()):
            add("rag_perf_breaker_state", [label], value)
        for (metric, labels), n in sorted(sums.items()):
            add(metric, list(labels), n)

    def __repr__(self) -> str:
        source = "file" if self._source is not None else "live"
        return f"<TrackerCollector [{source}, worker: {self.worker}]>"


def _difference(total: LogHistogram, *parts: LogHistogram) -> LogHistogram:
    """``total`` less ``parts`` bucket by bucket (the calls that reported no cache result)."""
    left = LogHistogram(relative_accuracy=total.relative_accuracy)
    counts = dict(total._buckets())
    zero = total.zero_count
    spent = 0.0
    for part in parts:
        for index, n in part._buckets():
            counts[index] = counts.get(index, 0) - n
        zero -= part.zero_count
        spent += part.sum
    for index, n in sorted(counts.items()):
        if n > 0:
            left._count_new(index, n)
    left.zero_count = max(0, zero)
    left.count = left.zero_count + sum(n for n in counts.values() if n > 0)
    left.sum = max(0.0, total.sum - spent)
    left.min, left.max = total.min, total.max
    if not math.isfinite(left.min):
        left.min = math.inf
    return left
