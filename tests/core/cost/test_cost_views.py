"""Where dollars show: the tracker (per operation and per model), its export, rag-perf stats,
the Prometheus text (and its scrape back), and the LLM service's spans."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families

from rag_perf_plugins.cli import main
from rag_perf_plugins.config import PerformanceConfig
from rag_perf_plugins.metrics import to_prometheus
from rag_perf_plugins.metrics.scrape import parse_metrics
from rag_perf_plugins.services.llm import LLMRequest, LLMService, Usage
from rag_perf_plugins.tracking import PerformanceTracker, spans


def recorded() -> PerformanceTracker:
    tracker = PerformanceTracker()
    tracker.record("llm.chat", 0.5, tokens_in=900, cost_usd=0.25, model="gpt-4o-mini")
    tracker.record("llm.chat", 0.01, cache_hit=True, cost_saved_usd=0.25, model="gpt-4o-mini")
    tracker.record("llm.chat", 0.4, cost_unknown=True, model="mystery")
    tracker.record("retrieve", 0.01)
    return tracker


def test_tracker_keeps_dollars_per_operation_and_per_model() -> None:
    tracker = recorded()
    chat = tracker.get_operation_stats("llm.chat")
    assert (chat.cost_usd, chat.cost_saved_usd, chat.cost_unknown_calls) == (0.25, 0.25, 1)
    assert tracker.cost_by_model() == {
        "gpt-4o-mini": {
            "calls": 2,
            "cost_usd": 0.25,
            "cost_saved_usd": 0.25,
            "cost_unknown_calls": 0,
        },
        "mystery": {"calls": 1, "cost_usd": 0.0, "cost_saved_usd": 0.0, "cost_unknown_calls": 1},
    }
    export = tracker.to_dict()
    assert export["models"]["mystery"]["cost_unknown_calls"] == 1
    assert export["operations"]["llm.chat"]["cost_saved_usd"] == 0.25
    tracker.reset()
    assert tracker.cost_by_model() == {}


def test_cost_by_model_sums_a_model_over_its_operations() -> None:
    tracker = recorded()
    tracker.record("embedding.query", 0.01, tokens_in=10, cost_usd=0.5, model="gpt-4o-mini")
    tracker.record("embedding.query", 0.01, cost_unknown=True, model="mystery")
    assert tracker.cost_by_model() == {
        "gpt-4o-mini": {
            "calls": 3,
            "cost_usd": 0.75,
            "cost_saved_usd": 0.25,
            "cost_unknown_calls": 0,
        },
        "mystery": {"calls": 2, "cost_usd": 0.0, "cost_saved_usd": 0.0, "cost_unknown_calls": 2},
    }
    assert all(isinstance(v["calls"], int) for v in tracker.cost_by_model().values())


def test_stats_prints_cost_tables(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "stats.json"
    path.write_text(json.dumps(recorded().to_dict()))
    assert main(["stats", str(path)]) == 0
    out = capsys.readouterr().out
    assert "cost per operation" in out and "cost per model" in out
    assert "$0.2500" in out and "mystery" in out
    assert "retrieve" not in out.split("cost per operation")[1]  # no dollars, no row


def test_prometheus_counters_and_their_scrape() -> None:
    text = to_prometheus(recorded())
    families = {f.name: f for f in text_string_to_metric_families(text)}
    spent = {s.labels["operation"]: s.value for s in families["rag_perf_cost_usd"].samples}
    assert spent["llm.chat"] == 0.25
    saved = families["rag_perf_cost_saved_usd"].samples
    assert {s.labels["operation"]: s.value for s in saved}["llm.chat"] == 0.25
    unknown = families["rag_perf_cost_unknown_calls"].samples
    assert {s.labels["operation"]: s.value for s in unknown}["llm.chat"] == 1
    per_model = {
        (s.labels["model"], s.labels["kind"]): s.value
        for s in families["rag_perf_model_cost_usd"].samples
    }
    assert per_model[("gpt-4o-mini", "spent")] == per_model[("gpt-4o-mini", "saved")] == 0.25
    unknown_models = families["rag_perf_model_cost_unknown_calls"].samples
    assert {s.labels["model"]: s.value for s in unknown_models}["mystery"] == 1
    back = parse_metrics(text)["operations"]["llm.chat"]
    assert (back["cost_usd"], back["cost_saved_usd"], back["cost_unknown_calls"]) == (0.25, 0.25, 1)


class Codec:
    def encode(self, value: dict[str, Any]) -> Any:
        return value

    def decode(self, data: Any) -> dict[str, Any]:
        return {**data, "cache_hit": True}

    def usage(self, value: dict[str, Any]) -> Usage | None:
        return Usage(2000, 100, cached_in=1024, reasoning=40)


def test_llm_spans_carry_cost_and_saved(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("test")
    monkeypatch.setattr(spans, "tracer", lambda: tracer)
    service = LLMService(
        config=PerformanceConfig(cache_dir=str(tmp_path)), tracker=PerformanceTracker()
    )
    request = LLMRequest(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    service.generate(request, lambda: {"text": "a"}, Codec())
    service.generate(request, lambda: {"text": "a"}, Codec())
    miss, hit = (dict(s.attributes or {}) for s in memory.get_finished_spans())
    # gpt-4o-mini (shipped table): 976 input at 0.15, 1,024 cached at 0.075, 100 out at 0.60
    want = (976 * 0.15 + 1024 * 0.075 + 100 * 0.6) / 1e6
    assert miss["rag_perf.cost_usd"] == pytest.approx(want) and miss["rag_perf.cost_saved_usd"] == 0
    assert hit["rag_perf.cost_usd"] == 0 and hit["rag_perf.cost_saved_usd"] == pytest.approx(want)
    provider.shutdown()


def test_model_labels_fold_past_fifty() -> None:
    tracker = PerformanceTracker()
    for i in range(60):
        tracker.record("llm", 0.01, cost_usd=0.01, model=f"model-{i:02d}")
    families = {f.name: f for f in text_string_to_metric_families(to_prometheus(tracker))}
    spent = {
        s.labels["model"]: s.value
        for s in families["rag_perf_model_cost_usd"].samples
        if s.labels["kind"] == "spent"
    }
    assert len(spent) == 51 and spent["_other"] == pytest.approx(0.10)
    assert sum(spent.values()) == pytest.approx(0.60)
