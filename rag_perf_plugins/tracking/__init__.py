"""Per-operation statistics: the tracker, its decorator and context manager, exporters.

Example::

    from rag_perf_plugins.tracking import get_performance_tracker, track, track_performance

    @track_performance("embed")
    def embed(texts: list[str]) -> list[list[float]]: ...

    with track("retrieve") as call:
        call.cache_hit = True

    get_performance_tracker().get_operation_stats("embed").latency_p95_s
"""

from __future__ import annotations

from .call import TrackedCall
from .decorators import track, track_performance
from .exporters import OTelExporter
from .histogram import LogHistogram
from .tracker import (
    NULL_TRACKER,
    STATS_SCHEMA,
    NullTracker,
    OperationStats,
    PerformanceTracker,
    get_performance_tracker,
    resolve_tracker,
    set_performance_tracker,
)

__all__ = [
    # tracker
    "PerformanceTracker",
    "NullTracker",
    "NULL_TRACKER",
    "OperationStats",
    "resolve_tracker",
    "get_performance_tracker",
    "set_performance_tracker",
    "STATS_SCHEMA",
    # recording helpers
    "TrackedCall",
    "track",
    "track_performance",
    # histograms and exporters
    "LogHistogram",
    "OTelExporter",
]
