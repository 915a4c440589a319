"""Four uvicorn workers, four /metrics ports, one worker label each; counters add up.

Also: with OpenTelemetry absent, no span work (a subprocess where it cannot be imported).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[2]


def _free_range(n: int) -> int:
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = int(s.getsockname()[1])
        socks = []
        try:
            for port in range(base, base + n):
                sock = socket.socket()
                socks.append(sock)
                sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
        return base
    raise RuntimeError("no free port range")


def _calls(text: str) -> tuple[set[str], float, float]:
    workers: set[str] = set()
    hits = misses = 0.0
    for family in text_string_to_metric_families(text):
        if family.name != "rag_perf_calls":
            continue
        for s in family.samples:
            if s.labels.get("operation") != "app.request" or not s.name.endswith("_total"):
                continue
            workers.add(s.labels["worker"])
            if s.labels["cache"] == "hit":
                hits += s.value
            elif s.labels["cache"] == "miss":
                misses += s.value
    return workers, hits, misses


def test_four_uvicorn_workers_serve_four_labelled_endpoints() -> None:
    app_port, base = _free_range(1), _free_range(4)
    env = {**os.environ, "METRICS_WORKERS_TEST_BASE": str(base), "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "uvicorn", "tests.metrics_worker_app:app", "--workers",
               "4", "--port", str(app_port), "--log-level", "warning"]  # fmt: skip
    proc = subprocess.Popen(command, cwd=ROOT, env=env, start_new_session=True)
    try:
        urls = [f"http://127.0.0.1:{base + i}/metrics" for i in range(4)]
        deadline = time.monotonic() + 60
        ready: set[str] = set()
        while len(ready) < 4 and time.monotonic() < deadline:
            assert proc.poll() is None, "uvicorn exited"
            for url in urls:
                try:
                    if httpx.get(url, timeout=1).status_code == 200:
                        ready.add(url)
                except httpx.HTTPError:
                    pass
            time.sleep(0.2)
        assert len(ready) == 4, f"metrics ports up: {sorted(ready)}"
        app = f"http://127.0.0.1:{app_port}"
        for i in range(40):  # a new connection each: the kernel spreads them over workers
            assert httpx.get(f"{app}/{'hit' if i % 4 == 0 else 'miss'}", timeout=10).is_success
        seen: list[set[str]] = []
        hits = misses = 0.0
        for url in urls:
            workers, h, m = _calls(httpx.get(url, timeout=5).text)
            seen.append(workers)
            hits, misses = hits + h, misses + m
        # Each port answers for one worker, each with its own label; nothing counted twice.
        labels = [next(iter(w)) for w in seen if w]
        assert len(labels) == len(set(labels))
        assert set(labels) <= {"0", "1", "2", "3"}
        assert (hits, misses) == (10, 30)
        assert all(len(w) <= 1 for w in seen)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_no_span_work_without_opentelemetry() -> None:
    code = """
import sys
sys.modules["opentelemetry"] = None  # as if not installed
from rag_perf_plugins.config import PerformanceConfig
from rag_perf_plugins.services.llm import LLMRequest, LLMService, Usage
from rag_perf_plugins.tracking import PerformanceTracker, spans

class Codec:
    def encode(self, value): return value
    def decode(self, data): return data
    def usage(self, value): return Usage(3, 4)

service = LLMService(config=PerformanceConfig(enable_caching=False), tracker=PerformanceTracker())
request = LLMRequest(model="m", messages=[{"role": "user", "content": "hi"}])
assert service.generate(request, lambda: "answer", Codec()) == "answer"
assert spans.tracer() is None
loaded = [m for m in sys.modules if m.startswith("opentelemetry.")]
print("ok", loaded)
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok []"
