"""Every script in examples/ runs offline, exits 0 and prints what it set out to show."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

# script -> a line fragment its output must contain (what the example shows).
EXPECTED = {
    "langchain_rag_chain.py": "provider requests for it: 0",
    "llama_index_settings.py": "answer from the cache: True",
    "async_engine.py": "40/40 answered",
    "pool_and_cached.py": "@cached: 5 calls, 2 computed",
    "prometheus_metrics.py": (
        'rag_perf_calls_total{cache="miss",operation="example.chat",worker="0"} 20.0'
    ),
}
# Scripts owned elsewhere that need more than a plain run (Redis), checked by their owners.
OTHERS = {"demo.py", "shared_limits_redis.py"}


def _run(script: str, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAG_PERF_")}
    return subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )


def test_every_example_is_listed() -> None:
    scripts = {p.name for p in EXAMPLES.glob("*.py") if not p.name.startswith("_")}
    assert scripts - OTHERS == set(EXPECTED)


@pytest.mark.parametrize("script", sorted(EXPECTED))
def test_example_runs(script: str) -> None:
    done = _run(script, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert EXPECTED[script] in done.stdout, done.stdout[-3000:]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_demo_runs_warm_hits_and_no_429s(tmp_path: Path) -> None:
    report = tmp_path / "demo.json"
    done = _run("demo.py", "--report", str(report), timeout=280)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"JSON report: {report}" in done.stdout.replace("\n", "")
    data = json.loads(report.read_text())
    warm = [p for p in data["phases"] if p["phase"] == "warm"]
    assert {p["pipeline"] for p in warm} == {"langchain", "llama_index"}
    for phase in warm:
        assert phase["llm_cache_hit_rate"] > 0.8
        assert phase["rate_limited_429"] == 0
        assert phase["failed"] == 0
        assert phase["provider_requests"] * 5 < phase["questions"]
    cold = [p for p in data["phases"] if p["phase"] == "cold"]
    assert all(p["rate_limited_429"] == 0 for p in cold)
