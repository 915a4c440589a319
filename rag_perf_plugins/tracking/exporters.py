"""Exporter: the tracker's figures as OpenTelemetry metrics (the ``otel`` extra).

Example::

    from opentelemetry.sdk.metrics import MeterProvider
    exporter = OTelExporter(tracker, meter_provider=MeterProvider(metric_readers=[reader]))
    ...
    exporter.close()

Names follow the OpenTelemetry GenAI semantic conventions where one exists:
``gen_ai.client.operation.duration`` (s), ``gen_ai.client.token.usage`` ({token}, with
``gen_ai.token.type`` = input/output) and ``gen_ai.client.operation.time_to_first_chunk``
(s), keyed by ``gen_ai.operation.name`` (our operation name). What the conventions lack
(cache hits/misses, tokens saved, retries, abandoned streams) is under ``rag_perf.*``;
process RSS/CPU use ``process.memory.usage`` / ``process.cpu.time``. The Prometheus
endpoint is :mod:`rag_perf_plugins.metrics` (the ``metrics`` extra); spans are
:mod:`rag_perf_plugins.tracking.spans`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Protocol

__all__ = ["OTelExporter"]


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
