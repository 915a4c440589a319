"""Export the tracker's statistics as Prometheus text and serve them at ``/metrics``.

Run it with ``python examples/prometheus_metrics.py``. It starts the bundled provider
simulator unless ``RAG_PERF_BASE_URL`` points at a running OpenAI-compatible provider.

Calls to the provider are timed with ``track(...)`` (latency histogram, tokens
from the answer's usage), ``PerformanceTracker.to_prometheus()`` renders every operation
in the Prometheus text format, and a small standard-library HTTP server on loopback serves
it at ``/metrics`` for a scraper. The example scrapes it once and checks that
``prometheus_client``'s own parser reads it. For OpenTelemetry, see
``rag_perf_plugins.tracking.OTelExporter``.
"""

from __future__ import annotations

import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
from prometheus_client.parser import text_string_to_metric_families

from rag_perf_plugins import get_performance_tracker, track
from rag_perf_plugins.pool.http import openai_client
from rag_perf_plugins.simulator import provider_url


class MetricsHandler(BaseHTTPRequestHandler):
    """GET /metrics: the process tracker in Prometheus text format (version 0.0.4)."""

    def do_GET(self) -> None:
        if self.path != "/metrics":
            self.send_error(404)
            return
        body = get_performance_tracker().to_prometheus().encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass


def main() -> None:
    with provider_url(latency_ms=10.0, jitter_ms=10.0, seed=1) as url:
        client = openai_client(base_url=url, api_key=os.environ.get("OPENAI_API_KEY", "sk-x"))
        for i in range(20):
            with track("example.chat") as call:
                reply = client.chat.completions.create(
                    model="gpt-4o-mini",
                    messages=[{"role": "user", "content": f"Question {i}: what is RAG?"}],
                )
                if reply.usage is not None:
                    call.tokens_in = reply.usage.prompt_tokens
                    call.tokens_out = reply.usage.completion_tokens
    server = ThreadingHTTPServer(("127.0.0.1", 0), MetricsHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        metrics_url = f"http://127.0.0.1:{server.server_address[1]}/metrics"
        text = httpx.get(metrics_url).text
    finally:
        server.shutdown()
        server.server_close()
    families = {family.name for family in text_string_to_metric_families(text)}
    print(f"scraped {metrics_url}: {len(text.splitlines())} lines, {len(families)} metric families")
    for line in text.splitlines():
        if 'example.chat"' in line and ("_count" in line or "token" in line):
            print("  " + line)


if __name__ == "__main__":
    main()
