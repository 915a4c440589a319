"""What operators look at, over the real ChatOpenAI/OpenAIEmbeddings and the simulator:
spans with GenAI attributes, one count per logical operation, the /metrics endpoint, its
bounded labels, the Grafana dashboard's queries, rag-perf stats URL and rag-perf top URL."""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_openai import ChatOpenAI, OpenAIEmbeddings
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families
from rag_perf_plugins.langchain import (
    PerfCallbackHandler,
    PerfChatModel,
    PerfEmbeddings,
    pooled_chat_openai,
)

from rag_perf_plugins.cli import main
from rag_perf_plugins.metrics import (
    METRICS,
    OTHER,
    TrackerCollector,
    start_metrics_server,
    to_prometheus,
)
from rag_perf_plugins.simulator import Simulator
from rag_perf_plugins.tracking import PerformanceTracker, spans

MakeEmbeddings = Callable[..., OpenAIEmbeddings]
QUESTION = "What is retrieval-augmented generation?"


def openai(sim: Simulator) -> ChatOpenAI:
    return pooled_chat_openai(
        base_url=sim.base_url, model="gpt-4o-mini", api_key="sk-test", temperature=0.0
    )


DASHBOARD = Path(__file__).resolve().parents[3] / "docs" / "grafana" / "rag-perf-plugins.json"


@pytest.fixture
def exporter(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemorySpanExporter]:
    """An SDK provider with the in-memory exporter, as the services' tracer."""
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("test")
    monkeypatch.setattr(spans, "tracer", lambda: tracer)
    yield memory
    provider.shutdown()


def test_llm_spans_carry_genai_and_cache_attributes(
    simulator: Simulator, exporter: InMemorySpanExporter
) -> None:
    llm = PerfChatModel(openai(simulator), tracker=PerformanceTracker())
    miss = llm.invoke(QUESTION)
    hit = llm.invoke(QUESTION)
    assert hit.response_metadata["cache_hit"] is True and "cache_hit" not in miss.response_metadata
    first, second = exporter.get_finished_spans()
    assert first.name == second.name == "chat gpt-4o-mini"
    a, b = dict(first.attributes or {}), dict(second.attributes or {})
    assert a["gen_ai.operation.name"] == "chat" and a["gen_ai.request.model"] == "gpt-4o-mini"
    assert a["gen_ai.provider.name"] == "openai"  # the base URL never goes in a span
    assert not any("127.0.0.1" in str(v) for v in a.values())
    assert a["rag_perf.cache.hit"] is False and "rag_perf.cache.hit_kind" not in a
    assert miss.usage_metadata is not None
    assert a["gen_ai.usage.input_tokens"] == miss.usage_metadata["input_tokens"] > 0
    assert a["gen_ai.usage.output_tokens"] == miss.usage_metadata["output_tokens"] > 0
    assert b["rag_perf.cache.hit"] is True and b["rag_perf.cache.hit_kind"] == "exact"
    assert b["gen_ai.usage.input_tokens"] == b["gen_ai.usage.output_tokens"] == 0
    assert b["gen_ai.usage.cache_read.input_tokens"] == 0
    assert int(str(b["rag_perf.tokens_saved"])) > 0 and b["rag_perf.retries"] == 0
    assert first.end_time is not None and first.start_time is not None
    assert first.end_time >= first.start_time


def test_embedding_spans(
    simulator: Simulator, openai_embeddings: MakeEmbeddings, exporter: InMemorySpanExporter
) -> None:
    emb = PerfEmbeddings(openai_embeddings(simulator), tracker=PerformanceTracker())
    texts = ["span one", "span two", "span three"]
    emb.embed_documents(texts)
    emb.embed_documents(texts)
    cold, warm = exporter.get_finished_spans()
    assert cold.name.startswith("embeddings ")
    a, b = dict(cold.attributes or {}), dict(warm.attributes or {})
    assert a["gen_ai.operation.name"] == "embeddings" and a["rag_perf.batch_size"] == 3
    assert a["rag_perf.cache.hit"] is False and int(str(a["gen_ai.usage.input_tokens"])) > 0
    assert b["rag_perf.cache.hit"] is True and b["gen_ai.usage.input_tokens"] == 0


def test_no_tracer_without_a_provider_set() -> None:
    # The API's default proxy provider means "nobody listens": no span objects at all.
    assert spans.tracer() is None


def test_each_logical_operation_counted_once_with_hits_and_misses(simulator: Simulator) -> None:
    tracker = PerformanceTracker()
    handler = PerfCallbackHandler(tracker)
    llm = PerfChatModel(openai(simulator), tracker=tracker)
    chain = ChatPromptTemplate.from_template("Answer: {q}") | llm | StrOutputParser()
    questions = ["what is rag?", "what is a vector?", "what is rag?", "what is rag?"]
    for q in questions:
        chain.invoke({"q": q}, config={"callbacks": [handler]})
    runs = tracker.get_operation_stats("langchain.chain")
    assert runs.count == len(questions)  # not prompt + model + parser + the sequence
    chat = tracker.get_operation_stats("langchain.chat_model")
    assert (chat.count, chat.cache_hits, chat.cache_misses) == (4, 2, 2)
    service = tracker.get_operation_stats("llm.chat")
    assert (service.cache_hits, service.cache_misses) == (2, 2)
    # Hit and miss latencies are kept apart; the miss p95 is the expensive one.
    assert service.latency_miss_p95_s > service.latency_hit_p95_s > 0


# Circuit breakers are process-wide and outlive the tests that made them (they go when
# collected): their labels are bounded (50 targets) but not this test's to hold still.
_PROCESS_WIDE = ("rag_perf_breaker_", "rag_perf_target_", "rag_perf_failovers")


def _labels(text: str) -> dict[str, set[str]]:
    seen: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        if family.name.startswith(_PROCESS_WIDE):
            continue
        for sample in family.samples:
            for label, value in sample.labels.items():
                if label not in ("le", "quantile"):
                    seen.setdefault(label, set()).add(value)
    return seen


def test_label_values_do_not_grow_with_input(
    simulator: Simulator, openai_embeddings: MakeEmbeddings
) -> None:
    tracker = PerformanceTracker()
    llm = PerfChatModel(openai(simulator), tracker=tracker)
    emb = PerfEmbeddings(openai_embeddings(simulator), tracker=tracker)
    handler = PerfCallbackHandler(tracker)

    def traffic(tag: str, n: int) -> None:
        for i in range(n):
            llm.invoke(f"{tag} question {i}?", config={"callbacks": [handler]})
            emb.embed_documents([f"{tag} text {i}", f"{tag} other {i}"])
            emb.embed_query(f"{tag} query {i}")

    traffic("first", 5)
    before = _labels(to_prometheus(tracker))
    traffic("second", 20)  # other prompts, texts, queries: no new label value
    after = _labels(to_prometheus(tracker))
    assert after == before
    # model: the models called (bounded, 50 then _other); kind: spent or saved.
    assert set(after) <= {"operation", "cache", "direction", "event", "gate", "client",
                          "state", "reason", "tier", "model", "kind"}  # fmt: skip


def test_operation_names_past_the_bound_fold_into_other() -> None:
    tracker = PerformanceTracker()
    for i in range(30):
        tracker.record(f"op{i:02d}", 0.01, cache_hit=i % 2 == 0, tokens_in=1)
    registry_text = to_prometheus_with(TrackerCollector(tracker, max_operations=10))
    operations = _labels(registry_text)["operation"]
    assert len(operations) == 11 and OTHER in operations
    calls = {
        s.labels["operation"]: s.value
        for f in text_string_to_metric_families(registry_text)
        if f.name == "rag_perf_calls"
        for s in f.samples
        if s.name.endswith("_total") and s.labels["cache"] == "hit"
    }
    assert sum(calls.values()) == 15  # nothing lost in the fold


def to_prometheus_with(collector: TrackerCollector) -> str:
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return generate_latest(registry).decode()


def _free_ports(n: int) -> int:
    """The first of ``n`` consecutive free loopback ports."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = int(s.getsockname()[1])
        if base + n > 65535:
            continue
        try:
            held = []
            for port in range(base, base + n):
                sock = socket.socket()
                held.append(sock)
                sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            for sock in held:
                sock.close()
        return base
    raise RuntimeError("no free port range")


@pytest.fixture
def served(simulator: Simulator) -> Iterator[tuple[str, PerformanceTracker]]:
    tracker = PerformanceTracker()
    llm = PerfChatModel(openai(simulator), tracker=tracker)
    llm.invoke(QUESTION)
    llm.invoke(QUESTION)
    server = start_metrics_server(_free_ports(1), tracker=tracker)
    try:
        yield server.url, tracker
    finally:
        server.close()


def test_endpoint_serves_the_documented_names_and_the_dashboard_uses_only_them(
    served: tuple[str, PerformanceTracker],
) -> None:
    url, _tracker = served
    response = httpx.get(url)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    served_names = set()
    for family in families.values():
        served_names |= {s.name for s in family.samples}
    # Every family served is documented (METRICS), with its documented labels.
    for family in families.values():
        declared = family.name + ("_total" if family.type == "counter" else "")
        assert declared in METRICS, family.name
        allowed = set(METRICS[declared][1]) | {"le", "quantile"}
        assert all(set(s.labels) <= allowed for s in family.samples), family.name
    calls = {
        s.labels["cache"]: s.value
        for s in families["rag_perf_calls"].samples
        if s.labels["operation"] == "llm.chat" and s.name.endswith("_total")
    }
    assert calls == {"hit": 1.0, "miss": 1.0, "none": 0.0}
    # Every metric a dashboard query names is one the endpoint serves (or documents, for
    # families that appear only once their component exists: gates, breakers...).
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert len(exprs) >= 15
    named = {m for e in exprs for m in re.findall(r"\b((?:rag_perf|process)_[a-z_]+)\b", e)}
    documented = set(METRICS)
    for metric_name, (kind, *_rest) in METRICS.items():
        if kind == "histogram":
            documented |= {f"{metric_name}_{part}" for part in ("bucket", "count", "sum")}
    assert named and named <= documented, named - documented
    assert {m for m in named if m.startswith("rag_perf_calls")} <= served_names
    assert "rag_perf_operation_duration_seconds_bucket" in served_names


def test_stats_and_top_read_a_live_endpoint(
    served: tuple[str, PerformanceTracker], capsys: pytest.CaptureFixture[str]
) -> None:
    url, _tracker = served
    assert main(["stats", url]) == 0
    out = capsys.readouterr().out
    assert "llm.chat" in out and "50.0" in out  # one hit of two, in percent
    assert "e+" not in out
    assert main(["top", url, "--count", "2", "--interval", "0.05"]) == 0
    shown = capsys.readouterr().out
    assert "llm.chat" in shown and "rag-perf top" in shown
    assert main(["top", "http://127.0.0.1:1/metrics", "--count", "1"]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_worker_label_and_port_range(served: tuple[str, PerformanceTracker]) -> None:
    base = _free_ports(3)
    servers = [start_metrics_server(base, workers=3) for _ in range(3)]
    try:
        assert [s.port for s in servers] == [base, base + 1, base + 2]
        assert [s.worker for s in servers] == ["0", "1", "2"]
        for s in servers:
            workers = _labels(httpx.get(s.url).text).get("worker")
            assert workers == {s.worker}
        with pytest.raises(OSError, match=f"{base}..{base + 2} is in use"):
            start_metrics_server(base, workers=3)
    finally:
        for s in servers:
            s.close()


def test_metrics_app_is_asgi(served: tuple[str, PerformanceTracker]) -> None:
    import asyncio

    from rag_perf_plugins.metrics import metrics_app

    _url, tracker = served

    async def get() -> Any:
        transport = httpx.ASGITransport(app=metrics_app(tracker, worker="7"))
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            return await client.get("/metrics")

    response = asyncio.run(get())
    assert response.status_code == 200
    assert 'operation="llm.chat",worker="7"' in response.text


def test_the_metrics_page_lists_every_metric() -> None:
    page = (DASHBOARD.parents[1] / "components" / "metrics.md").read_text()
    listed = set(re.findall(r"^\| `([a-z_]+)` \| (?:counter|gauge|histogram|summary) ", page, re.M))
    assert listed == set(METRICS)
