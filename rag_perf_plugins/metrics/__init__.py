"""The metrics endpoint: the tracker in the Prometheus format (the ``[metrics]`` extra).

Example::

    from rag_perf_plugins.metrics import metrics_app, start_metrics_server

    start_metrics_server(9464)             # http://127.0.0.1:9464/metrics, a daemon thread
    app.mount("/metrics", metrics_app())   # or mounted in your ASGI app
    to_prometheus()                        # the same text, as a str

Names, labels and units: :data:`~rag_perf_plugins.metrics.collector.METRICS` and
docs/components/metrics.md. The names are loaded on first use, so the ``rag-perf stats``
command (this package's ``stats_cli``) works without the extra; using any of them needs
``prometheus-client`` (``pip install 'rag-perf-plugins[metrics]'``; without it the
ImportError says so).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .collector import BUCKETS_S, METRICS, OTHER, TrackerCollector
    from .scrape import parse_metrics, read_endpoint
    from .server import (
        MetricsServer,
        metrics_app,
        metrics_registry,
        start_metrics_server,
        to_prometheus,
    )

__all__ = [
    "start_metrics_server",
    "metrics_app",
    "metrics_registry",
    "to_prometheus",
    "MetricsServer",
    "TrackerCollector",
    "METRICS",
    "BUCKETS_S",
    "OTHER",
    "read_endpoint",
    "parse_metrics",
]

_WHERE = {
    "BUCKETS_S": ".collector",
    "METRICS": ".collector",
    "OTHER": ".collector",
    "TrackerCollector": ".collector",
    "parse_metrics": ".scrape",
    "read_endpoint": ".scrape",
    "MetricsServer": ".server",
    "metrics_app": ".server",
    "metrics_registry": ".server",
    "start_metrics_server": ".server",
    "to_prometheus": ".server",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        msg = f"module {__name__!r} has no attribute {name!r}"
        raise AttributeError(msg)
    return getattr(importlib.import_module(module, __name__), name)
