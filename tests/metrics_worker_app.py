"""An ASGI app for the multi-worker metrics test (uvicorn --workers 4 tests.metrics_worker_app:app).

Each worker, at start-up (the ASGI lifespan), calls ``start_metrics_server(BASE, workers=4)``
with ``BASE`` from ``METRICS_WORKERS_TEST_BASE``: the first free port of the range is its
own, its offset its ``worker`` label. Every request is tracked as ``app.request``.
"""

from __future__ import annotations

import os
from typing import Any

from rag_perf_plugins import track
from rag_perf_plugins.metrics import MetricsServer, start_metrics_server

_server: list[MetricsServer] = []


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                base = int(os.environ["METRICS_WORKERS_TEST_BASE"])
                _server.append(start_metrics_server(base, workers=4))
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                for server in _server:
                    server.close()
                await send({"type": "lifespan.shutdown.complete"})
                return
    with track("app.request") as call:
        call.cache_hit = scope["path"].endswith("/hit")
        body = f"pid {os.getpid()}\n".encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain")]})  # fmt: skip
        await send({"type": "http.response.body", "body": body})
