"""Exporters: Prometheus text exposition and OpenTelemetry metrics.

Example::

    text = get_performance_tracker().to_prometheus()      # serve at /metrics

    from opentelemetry.sdk.metrics import MeterProvider
    exporter = OTelExporter(tracker, meter_provider=MeterProvider(metric_readers=[reader]))
    ...
    exporter.close()

Names follow the OpenTelemetry GenAI semantic conventions where one exists:
``gen_ai.client.operation.duration`` (s), ``gen_ai.client.token.usage`` ({token}, with
``gen_ai.token.type`` = input/output) and ``gen_ai.client.operation.time_to_first_chunk``
(s), keyed by ``gen_ai.operation.name`` (our operation name). What the conventions lack
(cache hits/misses, tokens saved, queue wait, retries, batch sizes, abandoned streams,
named counters) is under ``rag_perf.*``; process RSS/CPU use Prometheus' standard
``process_*`` names. In Prometheus text, dots become underscores and units/``_total``
suffixes are appended, as the OTel-to-Prometheus mapping does.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Protocol

__all__ = ["OTelExporter", "to_prometheus"]

_OP = "gen_ai_operation_name"


class StatsSource(Protocol):
    """What :class:`OTelExporter` reads: a :class:`~.tracker.PerformanceTracker`."""

    @property
    def operations(self) -> list[str]:
        """Operation names recorded so far."""
        ...

    def get_operation_stats(self, operation: str) -> Any:
        """A snapshot of one operation."""
        ...

    def process_stats(self) -> dict[str, Any]:
        """Process CPU and RSS."""
        ...

    def add_sink(self, sink: Callable[..., None]) -> None:
        """Also send every recorded call to ``sink``."""
        ...

    def remove_sink(self, sink: Callable[..., None]) -> None:
        """Stop sending calls to ``sink``."""
        ...

    def has_sink(self, sink: Callable[..., None]) -> bool:
        """Whether ``sink`` is attached."""
        ...


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: Mapping[str, str]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items()) + "}"


def _num(value: Any) -> str:
    if value is None:
        return "NaN"
    x = float(value)
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "+Inf" if x > 0 else "-Inf"
    return repr(x) if not x.is_integer() else str(int(x)) if abs(x) < 1e15 else repr(x)


class _Family:
    __slots__ = ("help", "kind", "name", "samples")

    def __init__(self, name: str, kind: str, help_text: str) -> None:
        self.name, self.kind, self.help = name, kind, help_text
        self.samples: list[tuple[str, dict[str, str], Any]] = []

    def add(self, suffix: str, labels: dict[str, str], value: Any) -> None:
        self.samples.append((self.name + suffix, labels, value))

    def lines(self) -> Iterator[str]:
        if not self.samples:
            return
        yield f"# HELP {self.name} {_escape(self.help)}"
        yield f"# TYPE {self.name} {self.kind}"
        for sample_name, labels, value in self.samples:
            yield f"{sample_name}{_labels(labels)} {_num(value)}"


def to_prometheus(stats: Mapping[str, Any]) -> str:
    """Render a tracker export (``tracker.to_dict()``) as Prometheus text format 0.0.4.

    Latency, queue wait and TTFT are summaries (quantiles 0.5/0.95/0.99 where known, with
    ``_count``/``_sum`` for latency); totals are counters; throughput and hit rates are
    gauges. Does not: emit histogram buckets (our buckets are finer than Prometheus' fixed
    ``le`` layout would keep), or timestamps.
    """
    duration = _Family(
        "gen_ai_client_operation_duration_seconds", "summary", "Duration of tracked operations."
    )
    errors = _Family("rag_perf_operation_errors_total", "counter", "Calls that raised or failed.")
    tokens = _Family("gen_ai_client_token_usage_total", "counter", "Tokens sent and received.")
    ttft = _Family(
        "gen_ai_client_operation_time_to_first_chunk_seconds",
        "summary",
        "Time to the first chunk of streamed responses.",
    )
    throughput = _Family(
        "rag_perf_operation_throughput_per_second",
        "gauge",
        "Calls per second over the sliding window.",
    )
    cache = _Family("rag_perf_cache_lookups_total", "counter", "Cache lookups by result.")
    saved = _Family(
        "rag_perf_tokens_saved_total", "counter", "Provider tokens not spent thanks to caching."
    )
    queue = _Family(
        "rag_perf_queue_wait_seconds", "summary", "Time spent waiting for admission or a batch."
    )
    retries = _Family("rag_perf_retries_total", "counter", "Extra attempts after the first.")
    batches = _Family("rag_perf_batches_total", "counter", "Calls that sent a batch.")
    batch_mean = _Family("rag_perf_batch_size_mean", "gauge", "Mean items per batch.")
    abandoned = _Family(
        "rag_perf_streams_abandoned_total", "counter", "Streams closed before their end."
    )
    op_counters = _Family(
        "rag_perf_events_total", "counter", "Named event counters (tracker.incr)."
    )
    rss = _Family("process_resident_memory_bytes", "gauge", "Resident memory size in bytes.")
    cpu = _Family("process_cpu_seconds_total", "counter", "User and system CPU time in seconds.")

    for name, op in sorted(stats.get("operations", {}).items()):
        lab = {_OP: name}
        for q, key in ((0.5, "latency_p50_s"), (0.95, "latency_p95_s"), (0.99, "latency_p99_s")):
            if op.get(key) is not None:
                duration.add("", {**lab, "quantile": str(q)}, op[key])
        duration.add("_count", lab, op["count"])
        mean = op.get("latency_mean_s")
        duration.add("_sum", lab, 0.0 if mean is None else mean * op["count"])
        errors.add("", lab, op["errors"])
        tokens.add("", {**lab, "gen_ai_token_type": "input"}, op["tokens_in"])
        tokens.add("", {**lab, "gen_ai_token_type": "output"}, op["tokens_out"])
        for q, key in ((0.5, "ttft_p50_s"), (0.95, "ttft_p95_s")):
            if op.get(key) is not None:
                ttft.add("", {**lab, "quantile": str(q)}, op[key])
        throughput.add("", lab, op["throughput_per_s"])
        cache.add("", {**lab, "result": "hit"}, op["cache_hits"])
        cache.add("", {**lab, "result": "miss"}, op["cache_misses"])
        saved.add("", lab, op["tokens_saved"])
        for q, key in ((0.5, "queue_wait_p50_s"), (0.95, "queue_wait_p95_s")):
            if op.get(key) is not None:
                queue.add("", {**lab, "quantile": str(q)}, op[key])
        retries.add("", lab, op["retries"])
        batches.add("", lab, op["batches"])
        if op.get("batch_size_mean") is not None:
            batch_mean.add("", lab, op["batch_size_mean"])
        abandoned.add("", lab, op["streams_abandoned"])
        for counter, n in sorted(op.get("counters", {}).items()):
            op_counters.add("", {"event": counter, **lab}, n)
    for counter, n in sorted(stats.get("counters", {}).items()):
        op_counters.add("", {"event": counter}, n)
    process = stats.get("process") or {}
    if "rss_bytes" in process:
        rss.add("", {}, process["rss_bytes"])
    if "cpu_user_s" in process:
        cpu.add("", {}, process["cpu_user_s"] + process["cpu_system_s"])

    families: Iterable[_Family] = (
        duration, errors, tokens, ttft, throughput, cache, saved, queue, retries, batches,
        batch_mean, abandoned, op_counters, rss, cpu,
    )  # fmt: skip
    lines = [line for family in families for line in family.lines()]
    return "\n".join(lines) + "\n" if lines else ""


class OTelExporter:
    """Feed a tracker's calls into OpenTelemetry metrics (needs the ``otel`` extra).

    Example::

        exporter = OTelExporter(get_performance_tracker())   # global MeterProvider
        ...
        exporter.close()                                      # detach from the tracker

    From the moment it is attached, each recorded call also goes to the histograms
    ``gen_ai.client.operation.duration`` and ``gen_ai.client.token.usage`` and (streams)
    ``gen_ai.client.operation.time_to_first_chunk``; cache lookups, tokens saved, retries,
    abandoned streams and errors are observable counters read from the tracker at each
    collection, and ``process.memory.usage`` / ``process.cpu.time`` observe this process.

    Does not: replay calls recorded before it was attached into the histograms (the
    observable counters do include them), or install a MeterProvider for you.
    """

    __slots__ = ("_duration", "_meter", "_sink", "_tokens", "_tracker", "_ttft")

    def __init__(self, tracker: StatsSource, *, meter_provider: Any = None) -> None:
        try:
            from opentelemetry import metrics
        except ImportError as exc:  # pragma: no cover - exercised only without the extra
            msg = "OTelExporter needs OpenTelemetry: pip install 'rag-perf-plugins[otel]'"
            raise ImportError(msg) from exc
        from opentelemetry.metrics import CallbackOptions, Observation

        provider = meter_provider if meter_provider is not None else metrics.get_meter_provider()
        self._tracker = tracker
        self._meter = meter = provider.get_meter("rag_perf_plugins")
        self._duration = meter.create_histogram(
            "gen_ai.client.operation.duration", unit="s", description="Duration of operations."
        )
        self._tokens = meter.create_histogram(
            "gen_ai.client.token.usage", unit="{token}", description="Tokens used per call."
        )
        self._ttft = meter.create_histogram(
            "gen_ai.client.operation.time_to_first_chunk",
            unit="s",
            description="Time to the first chunk of a stream.",
        )

        def per_op(*keys: str, **extra: str) -> Any:
            def callback(_options: CallbackOptions) -> Iterable[Observation]:
                for name in tracker.operations:
                    stats = tracker.get_operation_stats(name)
                    total = sum(getattr(stats, k) for k in keys)
                    yield Observation(total, {"gen_ai.operation.name": name, **extra})

            return callback

        def cache_cb(_options: CallbackOptions) -> Iterable[Observation]:
            for name in tracker.operations:
                stats = tracker.get_operation_stats(name)
                attrs = {"gen_ai.operation.name": name}
                yield Observation(stats.cache_hits, {**attrs, "rag_perf.cache.result": "hit"})
                yield Observation(stats.cache_misses, {**attrs, "rag_perf.cache.result": "miss"})

        def rss_cb(_options: CallbackOptions) -> Iterable[Observation]:
            yield Observation(tracker.process_stats()["rss_bytes"])

        def cpu_cb(_options: CallbackOptions) -> Iterable[Observation]:
            process = tracker.process_stats()
            yield Observation(process["cpu_user_s"], {"cpu.mode": "user"})
            yield Observation(process["cpu_system_s"], {"cpu.mode": "system"})

        meter.create_observable_counter("rag_perf.cache.lookups", [cache_cb], unit="{lookup}")
        meter.create_observable_counter(
            "rag_perf.tokens.saved", [per_op("tokens_saved")], unit="{token}"
        )
        meter.create_observable_counter("rag_perf.retries", [per_op("retries")], unit="{retry}")
        meter.create_observable_counter("rag_perf.errors", [per_op("errors")], unit="{call}")
        meter.create_observable_counter(
            "rag_perf.streams.abandoned", [per_op("streams_abandoned")], unit="{stream}"
        )
        meter.create_observable_up_down_counter("process.memory.usage", [rss_cb], unit="By")
        meter.create_observable_counter("process.cpu.time", [cpu_cb], unit="s")

        duration, tokens, ttft = self._duration, self._tokens, self._ttft

        def sink(
            operation: str,
            latency_s: float,
            error: bool,
            tokens_in: int,
            tokens_out: int,
            ttft_s: float | None,
        ) -> None:
            attrs: dict[str, str] = {"gen_ai.operation.name": operation}
            if error:
                attrs["error.type"] = "_OTHER"
            duration.record(latency_s, attrs)
            if tokens_in:
                tokens.record(
                    tokens_in, {"gen_ai.operation.name": operation, "gen_ai.token.type": "input"}
                )
            if tokens_out:
                tokens.record(
                    tokens_out, {"gen_ai.operation.name": operation, "gen_ai.token.type": "output"}
                )
            if ttft_s is not None:
                ttft.record(ttft_s, {"gen_ai.operation.name": operation})

        self._sink = sink
        tracker.add_sink(sink)

    def close(self) -> None:
        """Stop forwarding calls (observable instruments stay registered with the meter)."""
        self._tracker.remove_sink(self._sink)

    def __repr__(self) -> str:
        attached = self._tracker.has_sink(self._sink)
        return f"<OTelExporter [{'attached' if attached else 'closed'}] {self._tracker!r}>"
