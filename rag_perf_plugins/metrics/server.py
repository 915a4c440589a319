"""Serve the tracker at ``/metrics``: a thread of its own, or an ASGI app to mount.

Example::

    from rag_perf_plugins.metrics import metrics_app, start_metrics_server

    server = start_metrics_server(9464)              # http://127.0.0.1:9464/metrics
    server = start_metrics_server(9464, workers=4)   # one port per worker: 9464..9467
    app.mount("/metrics", metrics_app())             # or inside your ASGI app (Starlette...)
    server.close()

**Many worker processes** (``uvicorn --workers 4``, gunicorn): each worker has its own
tracker, so one ``/metrics`` path answered by whichever worker takes the request makes
counters jump between scrapes. Call ``start_metrics_server(BASE, workers=N)`` in each
worker (at start-up, e.g. in the ASGI lifespan): the first free port of ``BASE .. BASE+N-1``
is bound, and ``worker="<port - BASE>"`` labels every sample, so Prometheus scrapes N
targets and ``sum by (operation) (rate(rag_perf_calls_total[1m]))`` adds them up.
prometheus_client's multiprocess mode is not used: it does not support custom collectors.

Does not: authenticate scrapers (bind to loopback, the default, or put it behind your
proxy), or survive a fork (start it in each worker after the fork).
"""

from __future__ import annotations

import errno
import threading
from collections.abc import Mapping
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest, make_asgi_app, start_http_server

from ..tracking.tracker import PerformanceTracker
from .collector import TrackerCollector

__all__ = [
    "MetricsServer",
    "metrics_app",
    "metrics_registry",
    "start_metrics_server",
    "to_prometheus",
]


def metrics_registry(
    tracker: PerformanceTracker | None = None, *, worker: str | None = None
) -> CollectorRegistry:
    """A fresh ``CollectorRegistry`` holding one :class:`TrackerCollector`.

    Example: ``generate_latest(metrics_registry()).decode()`` is the ``/metrics`` text.
    Not the global ``prometheus_client.REGISTRY``: your own metrics stay where they are
    (register the collector there yourself to serve both on one path).
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(TrackerCollector(tracker, worker=worker))
    return registry


def to_prometheus(
    source: PerformanceTracker | Mapping[str, Any] | None = None, *, worker: str | None = None
) -> str:
    """The ``/metrics`` text of a tracker (``None``: the process-wide one) or of an export.

    Example: ``to_prometheus()``, or ``to_prometheus(json.load(f))`` for a file written
    from ``tracker.to_dict()`` (then only the tracker's families: no gates or pools).
    """
    registry = CollectorRegistry(auto_describe=False)
    if source is None or isinstance(source, PerformanceTracker):
        registry.register(TrackerCollector(source, worker=worker))
    else:
        stats = source
        registry.register(TrackerCollector(source=lambda: stats, worker=worker))
    return generate_latest(registry).decode("utf-8")


def metrics_app(tracker: PerformanceTracker | None = None, *, worker: str | None = None) -> Any:
    """An ASGI app answering every GET with the tracker in the Prometheus format.

    Example: ``app.mount("/metrics", metrics_app())`` (Starlette, FastAPI) or serve it
    alone with ``uvicorn module:app``. ``tracker``: ``None`` reads the process-wide one at
    each scrape. Gzip when the scraper asks for it.
    """
    return make_asgi_app(registry=metrics_registry(tracker, worker=worker))


class MetricsServer:
    """A running ``/metrics`` HTTP server (a daemon thread): :func:`start_metrics_server`'s.

    Example: ``server = start_metrics_server(9464); server.url; server.close()``.

    Attributes:
        port: The port bound (with ``workers`` > 1, the first free one of the range).
        worker: The ``worker`` label value, or ``None``.
        url: ``http://ADDR:PORT/metrics``.
    """

    __slots__ = ("_server", "_thread", "addr", "port", "worker")

    def __init__(
        self, server: Any, thread: threading.Thread, addr: str, port: int, worker: str | None
    ) -> None:
        self._server = server
        self._thread = thread
        self.addr = addr
        self.port = port
        self.worker = worker

    @property
    def url(self) -> str:
        """Where Prometheus (or ``rag-perf stats URL`` / ``rag-perf top URL``) reads."""
        host = f"[{self.addr}]" if ":" in self.addr else self.addr
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        """Stop serving and free the port (idempotent)."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5.0)

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        running = "serving" if self._thread.is_alive() else "closed"
        return f"<MetricsServer {self.url} [{running}, worker: {self.worker}]>"


def start_metrics_server(
    port: int,
    addr: str = "127.0.0.1",
    *,
    workers: int = 1,
    worker: str | None = None,
    tracker: PerformanceTracker | None = None,
) -> MetricsServer:
    """Serve ``/metrics`` from a daemon thread on ``addr:port``; returns the server.

    Example::

        start_metrics_server(9464)                    # one process
        start_metrics_server(9464, workers=4)         # in each of 4 workers: 9464..9467

    Args:
        port: The port (with ``workers`` > 1, the first of ``workers`` consecutive ports).
        addr: The address to bind; loopback by default (the endpoint has no auth).
        workers: How many worker processes share the port range. The first free port is
            taken and its offset becomes the ``worker`` label; with 1, no label.
        worker: The ``worker`` label value, overriding the offset (e.g. your own worker
            index; keep it to a small fixed set: a PID would grow the series at each restart).
        tracker: The tracker to serve; ``None``: the process-wide one.

    Raises:
        ValueError: ``workers`` < 1 or a port outside 1..65535.
        OSError: every port of the range is taken (the message names the range).
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        msg = f"workers must be an int >= 1, got {workers!r}"
        raise ValueError(msg)
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port <= 65536 - workers:
        msg = f"port must be an int in 1..{65536 - workers} for {workers} worker(s), got {port!r}"
        raise ValueError(msg)
    last: OSError | None = None
    for offset in range(workers):
        label = worker if worker is not None else (str(offset) if workers > 1 else None)
        registry = metrics_registry(tracker, worker=label)
        try:
            server, thread = start_http_server(port + offset, addr=addr, registry=registry)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            last = exc
            continue
        return MetricsServer(server, thread, addr, port + offset, label)
    span = str(port) if workers == 1 else f"{port}..{port + workers - 1}"
    msg = f"start_metrics_server: every port of {addr}:{span} is in use ({last})"
    raise OSError(errno.EADDRINUSE, msg)
