"""Serve the tracker's statistics at ``/metrics`` for Prometheus, and read them back.

Run it with ``python examples/prometheus_metrics.py``. It starts the bundled provider
simulator unless ``RAG_PERF_BASE_URL`` points at a running OpenAI-compatible provider.

Calls to the provider are timed with ``track(...)`` (latency histogram, tokens from the
answer's usage, a cache result per call), ``start_metrics_server`` serves the process
tracker on loopback in the Prometheus format (``prometheus_client`` writes it; the
``metrics`` extra), and the example scrapes it once, as Prometheus or ``rag-perf stats
URL`` would. In a multi-worker server, call ``start_metrics_server(BASE, workers=N)`` in
each worker (see docs/components/metrics.md). For spans, see
``rag_perf_plugins.tracking.spans``.
"""

from __future__ import annotations

import os

import httpx
from prometheus_client.parser import text_string_to_metric_families

from rag_perf_plugins import get_performance_tracker, track
from rag_perf_plugins.metrics import read_endpoint, start_metrics_server
from rag_perf_plugins.pool.http import openai_client
from rag_perf_plugins.simulator import provider_url


def main() -> None:
    with provider_url(latency_ms=10.0, jitter_ms=10.0, seed=1) as url:
        client = openai_client(base_url=url, api_key=os.environ.get("OPENAI_API_KEY", "sk-x"))
        for i in range(20):
            with track("example.chat") as call:
                reply = client.chat.completions.create(
                    model="gpt-4o-mini",
                    messages=[{"role": "user", "content": f"Question {i}: what is RAG?"}],
                )
                call.cache_hit = False  # no cache here: every call reached the provider
                if reply.usage is not None:
                    call.tokens_in = reply.usage.prompt_tokens
                    call.tokens_out = reply.usage.completion_tokens
    # Port 0 is not allowed (a scraper needs a known port): find a free one near 9464.
    server = start_metrics_server(19464, workers=50, worker="0")
    try:
        text = httpx.get(server.url).text
        stats = read_endpoint(server.url)
    finally:
        server.close()
    families = {family.name for family in text_string_to_metric_families(text)}
    print(f"scraped {server.url}: {len(text.splitlines())} lines, {len(families)} families")
    for line in text.splitlines():
        if 'operation="example.chat"' in line and line.startswith("rag_perf_calls_total"):
            print("  " + line)
    chat = stats["operations"]["example.chat"]
    print(f"  miss p95 {chat['latency_miss_p95_s'] * 1000:.1f} ms over {chat['count']} calls")
    assert get_performance_tracker().get_operation_stats("example.chat").count == 20


if __name__ == "__main__":
    main()
