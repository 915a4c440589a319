"""`rag-perf stats FILE`: renders a tracker export; --prometheus re-emits it as text."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from rag_perf_plugins._clock import FakeClock
from rag_perf_plugins.cli import main
from rag_perf_plugins.tracking import PerformanceTracker


def _export(path: Path, clock: FakeClock) -> Path:
    tracker = PerformanceTracker(clock=clock)
    for i in range(20):
        clock.advance(0.1)
        tracker.record("retrieve", 0.004 * (i + 1), cache_hit=i % 2 == 0, tokens_saved=3)
    tracker.record("llm.chat", 0.8, tokens_in=900, tokens_out=120, ttft_s=0.2, error=True)
    tracker.incr("cache.errors", 2)
    tracker.incr("coalesced", operation="retrieve")
    path.write_text(json.dumps(tracker.to_dict()))
    return path


def test_stats_table(
    tmp_path: Path, fake_clock: FakeClock, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _export(tmp_path / "stats.json", fake_clock)
    assert main(["stats", str(path)]) == 0
    out = capsys.readouterr().out
    assert "retrieve" in out and "llm.chat" in out
    assert "900/120" in out  # tokens in/out
    assert "50.0" in out  # retrieve cache hit rate, percent
    assert "e+" not in out and "e-0" not in out  # fixed-point, never exponents
    assert "miss" in out and "queue" in out and "ms" in out  # units in the headers
    assert "cache.errors" in out and "retrieve: coalesced" in out
    assert "RSS" in out


def test_stats_prometheus(
    tmp_path: Path, fake_clock: FakeClock, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _export(tmp_path / "stats.json", fake_clock)
    assert main(["stats", str(path), "--prometheus"]) == 0
    families = {f.name: f for f in text_string_to_metric_families(capsys.readouterr().out)}
    errors = {
        s.labels["operation"]: s.value
        for s in families["rag_perf_errors"].samples
        if s.name.endswith("_total")
    }
    assert errors == {"llm.chat": 1, "retrieve": 0}


def test_stats_rejects_missing_and_foreign_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["stats", str(tmp_path / "nope.json")]) == 2
    assert "cannot read" in capsys.readouterr().err
    other = tmp_path / "results.json"
    other.write_text(json.dumps({"meta": {}, "results": []}))
    assert main(["stats", str(other)]) == 2
    assert "not a tracker export" in capsys.readouterr().err
