"""Read a running process's ``/metrics`` back into the tracker's export shape.

Example::

    stats = read_endpoint("http://127.0.0.1:9464/metrics")
    stats["operations"]["llm.chat"]["latency_miss_p95_s"]

What ``rag-perf stats URL`` and ``rag-perf top URL`` show. The result has the keys of
``PerformanceTracker.to_dict(histograms=False)`` that the endpoint carries (percentiles
from ``rag_perf_operation_latency_seconds``, totals from the counters), plus ``source``
(the URL) and ``worker`` (the label, or ``None``).

Does not: merge several workers' endpoints (read each URL), or report the sliding-window
throughput of a worker that serves none (``rag_perf_throughput_per_second``).
"""

from __future__ import annotations

import math
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from ..tracking.tracker import STATS_SCHEMA

__all__ = ["parse_metrics", "read_endpoint"]

_COUNTERS = {
    "rag_perf_errors": "errors",
    "rag_perf_tokens_saved": "tokens_saved",
    "rag_perf_retries": "retries",
    "rag_perf_streams_abandoned": "streams_abandoned",
    "rag_perf_batches": "batches",
    "rag_perf_batch_items": "batch_items",
    "rag_perf_cost_unknown_calls": "cost_unknown_calls",
}
_DOLLARS = {"rag_perf_cost_usd": "cost_usd", "rag_perf_cost_saved_usd": "cost_saved_usd"}


def read_endpoint(url: str, *, timeout: float = 5.0) -> dict[str, Any]:
    """GET ``url`` (a ``/metrics`` endpoint) and :func:`parse_metrics` it.

    Raises:
        OSError: the endpoint cannot be reached or answers an error status (the message
            names the URL, with any password in it masked).
    """
    import httpx

    from .._secrets import redact_url

    try:
        response = httpx.get(url, timeout=timeout)
        response.raise_for_status()
    except httpx.HTTPError as exc:
        msg = f"cannot read {redact_url(url)}: {exc}"
        raise OSError(msg) from exc
    stats = parse_metrics(response.text)
    stats["source"] = redact_url(url)
    return stats


def _op(ops: dict[str, dict[str, Any]], name: str) -> dict[str, Any]:
    op = ops.get(name)
    if op is None:
        op = ops[name] = {
            "count": 0,
            "errors": 0,
            "cache_hits": 0,
            "cache_misses": 0,
            "tokens_in": 0,
            "tokens_out": 0,
            "tokens_saved": 0,
            "retries": 0,
            "streams_abandoned": 0,
            "batches": 0,
            "batch_items": 0,
            "cost_usd": 0.0,
            "cost_saved_usd": 0.0,
            "cost_unknown_calls": 0,
            "throughput_per_s": None,
            "counters": {},
        }
    return op


def parse_metrics(text: str) -> dict[str, Any]:
    """The tracker-export view of Prometheus text served by :class:`TrackerCollector`.

    Example: ``parse_metrics(generate_latest(metrics_registry()).decode())``.
    """
    ops: dict[str, dict[str, Any]] = {}
    counters: dict[str, int] = {}
    process: dict[str, Any] = {}
    worker: str | None = None
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels, value = sample.labels, sample.value
            worker = labels.get("worker", worker)
            name = labels.get("operation")
            if family.name == "rag_perf_calls" and sample.name.endswith("_total"):
                op = _op(ops, name or "")
                op["count"] += int(value)
                if labels.get("cache") == "hit":
                    op["cache_hits"] = int(value)
                elif labels.get("cache") == "miss":
                    op["cache_misses"] = int(value)
            elif family.name in _COUNTERS and sample.name.endswith("_total"):
                _op(ops, name or "")[_COUNTERS[family.name]] = int(value)
            elif family.name in _DOLLARS and sample.name.endswith("_total"):
                _op(ops, name or "")[_DOLLARS[family.name]] = value
            elif family.name == "rag_perf_tokens" and sample.name.endswith("_total"):
                key = "tokens_in" if labels.get("direction") == "input" else "tokens_out"
                _op(ops, name or "")[key] = int(value)
            elif family.name == "rag_perf_throughput_per_second":
                _op(ops, name or "")["throughput_per_s"] = value
            elif family.name == "rag_perf_operation_latency_seconds" and "quantile" in labels:
                cache = labels.get("cache", "all")
                prefix = "latency" if cache == "all" else f"latency_{cache}"
                q = {"0.5": "p50", "0.95": "p95", "0.99": "p99"}.get(labels["quantile"])
                if q is not None:
                    _op(ops, name or "")[f"{prefix}_{q}_s"] = value
            elif family.name == "rag_perf_queue_wait_seconds" and "quantile" in labels:
                q = {"0.5": "p50", "0.95": "p95"}.get(labels["quantile"])
                if q is not None:
                    _op(ops, name or "")[f"queue_wait_{q}_s"] = value
            elif family.name == "rag_perf_time_to_first_chunk_seconds" and "quantile" in labels:
                q = {"0.5": "p50", "0.95": "p95"}.get(labels["quantile"])
                if q is not None:
                    _op(ops, name or "")[f"ttft_{q}_s"] = value
            elif family.name == "rag_perf_events" and sample.name.endswith("_total"):
                event = labels.get("event", "")
                if name:
                    _op(ops, name)["counters"][event] = int(value)
                else:
                    counters[event] = int(value)
            elif family.name == "process_resident_memory_bytes":
                process["rss_bytes"] = int(value)
            elif family.name == "process_cpu_seconds" and sample.name.endswith("_total"):
                process["cpu_seconds"] = value
            elif sample.name in ("rag_perf_gate_queued", "rag_perf_gate_in_flight"):
                gates = process.setdefault("gates", {})
                gate = gates.setdefault(labels.get("gate", ""), {})
                gate[sample.name.removeprefix("rag_perf_gate_")] = int(value)
    for op in ops.values():
        looked_up = op["cache_hits"] + op["cache_misses"]
        op["cache_hit_rate"] = op["cache_hits"] / looked_up if looked_up else None
        op["success_rate"] = (op["count"] - op["errors"]) / op["count"] if op["count"] else None
        batches = op.pop("batches")
        items = op.pop("batch_items")
        op["batches"] = batches
        op["batch_size_mean"] = items / batches if batches else None
        for key, v in list(op.items()):
            if isinstance(v, float) and math.isnan(v):
                op[key] = None
    return {
        "schema": STATS_SCHEMA,
        "worker": worker,
        "operations": dict(sorted(ops.items())),
        "counters": counters,
        "process": process,
    }
