"""The end-to-end demo behind ``make demo``: one RAG workload, cold, warm and unwrapped.

Run it with ``python examples/demo.py`` (``--report PATH`` to choose where the JSON goes).

What it does, in order:

1. Starts the bundled provider simulator in a background thread. Its latency model: every
   answer waits 40 ms plus seeded uniform jitter in [0, 20) ms, plus 0.3 ms per generated
   chat token and 0.01 ms per embedded input token; it allows 1,500 requests per minute
   (a token bucket holding one second of budget) and answers 429 with ``Retry-After``
   beyond that.
2. Indexes this project's own ``docs/`` pages and ``README.md`` twice: with LangChain
   (``OpenAIEmbeddings`` + ``InMemoryVectorStore`` + ``ChatOpenAI``) and with LlamaIndex
   (``OpenAIEmbedding`` + ``VectorStoreIndex`` + the ``OpenAI`` LLM), the real framework
   classes pointed at the simulator, built on our pooled HTTP clients and wrapped with our
   components (cache, batching, admission gate, retries, statistics).
3. Asks a few hundred questions about the docs, drawn with repeats from a fixed list (a
   seeded Zipf-like draw), first one at a time and then 16 at a time, once against an
   empty cache ("cold") and once again ("warm"). The cache lives in a fresh temporary
   directory, removed at the end, so cold is really cold.
4. Runs part of the same workload through the plain, unwrapped LangChain classes (the
   baseline), prints three sample answers with their sources and one table, and writes
   the figures as JSON (default ``.demo/demo-report.json``).

Figures come from two independent places: latency percentiles from our
``PerformanceTracker`` (one record per question, timed here), and provider calls, tokens,
connections and 429s from the simulator's own counters, reset between phases.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_REPORT = ROOT / ".demo" / "demo-report.json"
API_KEY = "sk-demo-not-a-real-key"
CHAT_MODEL = "gpt-4o-mini"
EMBED_MODEL = "text-embedding-3-small"
# Shortened vectors (a v3-model option): the in-memory stores compare every chunk per query.
EMBED_DIMS = 256

# The simulated provider (milliseconds, requests per minute); see the module docstring.
SIMULATOR: dict[str, Any] = {
    "latency_ms": 40.0,
    "jitter_ms": 20.0,
    "latency_per_token_ms": 0.3,
    "embedding_latency_per_token_ms": 0.01,
    "rpm": 1500,
    "burst_seconds": 1.0,
    "seed": 7,
}
# Our gates: chat and embeddings each get 600 requests/minute, together below the
# provider's 1,500, so the wrapped pipelines never see a 429.
GATE_RPM = 600

QUESTIONS = [
    "How do I run the demo?",
    "What does make test run?",
    "How do I install the LangChain adapters?",
    "What is a PerformanceConfig preset?",
    "Which environment variables configure the library?",
    "What does the cache store on disk and is pickle used?",
    "How is a cache key built for an embedding?",
    "What happens when the cache directory is corrupt or full?",
    "How do I bypass the cache for one call?",
    "How does the admission gate limit requests per minute?",
    "What is the Overloaded error?",
    "Who retries a failed provider call and is Retry-After honoured?",
    "What is the retry budget?",
    "How does the batcher merge embedding requests?",
    "What is max_wait_time in the batch processor?",
    "How do pooled HTTP clients work across event loops?",
    "What does connection reuse rate mean?",
    "How do I read p95 latency from the tracker?",
    "How do I export metrics to Prometheus?",
    "What does the simulator count?",
    "How do I start the provider simulator?",
    "What does AsyncRAGEngine do on overload?",
    "How does process_queries_concurrently order results?",
    "How do I share rate limits across processes with Redis?",
    "How do I wrap Settings.embed_model in LlamaIndex?",
    "What does PerfVectorStore cache and when is it invalidated?",
    "How do I diagnose high latency?",
    "How do I diagnose low throughput?",
    "What does rag-perf cache verify report?",
    "Which benchmark categories does rag-perf bench run?",
]
SEQUENTIAL = 40  # questions asked one at a time, then the rest CONCURRENCY at a time
CONCURRENCY = 16


def draw_questions(n: int, *, seed: int) -> list[str]:
    """``n`` questions with repeats: question i is drawn with weight 1 / (i + 1) (Zipf-like)."""
    rng = random.Random(seed)
    weights = [1.0 / (i + 1) for i in range(len(QUESTIONS))]
    return rng.choices(QUESTIONS, weights=weights, k=n)


def load_pages() -> list[tuple[str, str]]:
    """(relative path, text) of every Markdown page in ``docs/`` and ``README.md``."""
    paths = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    return [(str(p.relative_to(ROOT)), p.read_text(encoding="utf-8")) for p in paths if p.is_file()]


# --- measuring a phase ------------------------------------------------------------------


@dataclass
class Phase:
    """The figures of one run of the workload."""

    pipeline: str
    name: str
    questions: int = 0
    failed: int = 0
    seconds: float = 0.0
    p50_ms: float | None = None  # asked one at a time
    p95_ms: float | None = None
    concurrent_p50_ms: float | None = None  # CONCURRENCY at a time: includes queueing
    concurrent_p95_ms: float | None = None
    concurrent_qps: float | None = None
    provider: dict[str, Any] = field(default_factory=dict)
    samples: list[dict[str, Any]] = field(default_factory=list)

    @property
    def chat_calls(self) -> int:
        return int(self.provider.get("requests_by_endpoint", {}).get("/v1/chat/completions", 0))

    @property
    def hit_rate(self) -> float | None:
        """Questions answered without a chat call to the provider (0 for the baseline)."""
        if not self.questions:
            return None
        return max(0.0, 1.0 - self.chat_calls / self.questions)

    def as_dict(self) -> dict[str, Any]:
        return {
            "pipeline": self.pipeline,
            "phase": self.name,
            "questions": self.questions,
            "failed": self.failed,
            "seconds": round(self.seconds, 3),
            "latency_p50_ms": self.p50_ms,
            "latency_p95_ms": self.p95_ms,
            "concurrent_latency_p50_ms": self.concurrent_p50_ms,
            "concurrent_latency_p95_ms": self.concurrent_p95_ms,
            "concurrent_questions_per_s": self.concurrent_qps,
            "llm_cache_hit_rate": self.hit_rate,
            "provider_requests": self.provider.get("requests_total", 0),
            "provider_chat_calls": self.chat_calls,
            "provider_tokens": self.provider.get("tokens_total", 0),
            "provider_usd": dollars(self.provider),
            "connections_opened": self.provider.get("connections_opened", 0),
            "connection_reuse_rate": reuse_rate(self.provider),
            "rate_limited_429": self.provider.get("rate_limited_total", 0),
            "samples": self.samples,
        }


def dollars(provider: dict[str, Any]) -> float | None:
    """What the simulator's token counters would cost at the shipped prices (USD).

    Priced per model from the simulator's own counts (prompt, cached, completion,
    reasoning, embedding tokens), so wrapped and unwrapped runs are priced alike; ``None``
    when a model has no price.
    """
    from rag_perf_plugins.cost import price_table

    table, total = price_table(), 0.0
    for model, n in provider.get("tokens_by_model", {}).items():
        price = table.get(model)
        if price is None:
            return None
        if n["embedding"]:
            total += price.embedding_cost(n["embedding"]) or 0.0
        if n["prompt"] or n["completion"]:
            cost = price.chat_cost(
                n["prompt"], n["completion"], cached_in=n["cached"], reasoning=n["reasoning"]
            )
            if cost is None:
                return None
            total += cost
    return total


def reuse_rate(provider: dict[str, Any]) -> float | None:
    """Requests that did not open a TCP connection, as the simulator counted them."""
    requests = int(provider.get("requests_total", 0))
    if not requests:
        return None
    return max(0.0, 1.0 - int(provider.get("connections_opened", 0)) / requests)


Ask = Callable[[str], Awaitable[tuple[str, list[str]]]]
AskSync = Callable[[str], tuple[str, list[str]]]


def run_phase(
    pipeline: str, name: str, questions: Sequence[str], ask_sync: AskSync, ask: Ask, sim: Any
) -> Phase:
    """Ask ``questions``: the first ``SEQUENTIAL`` one at a time, the rest concurrently."""
    from rag_perf_plugins import PerformanceTracker

    tracker = PerformanceTracker()
    operation = f"demo.{pipeline}.{name}"
    phase = Phase(pipeline, name, questions=len(questions))
    sim.reset_stats()
    started = time.perf_counter()
    answers: dict[str, tuple[str, list[str]]] = {}
    for q in questions[:SEQUENTIAL]:
        try:
            with tracker.track(f"{operation}.sequential"):
                answers.setdefault(q, ask_sync(q))
        except Exception:
            phase.failed += 1

    async def concurrent() -> None:
        gate = asyncio.Semaphore(CONCURRENCY)

        async def one(q: str) -> None:
            async with gate:
                try:
                    with tracker.track(f"{operation}.concurrent"):
                        answers.setdefault(q, await ask(q))
                except Exception:
                    phase.failed += 1

        await asyncio.gather(*(one(q) for q in questions[SEQUENTIAL:]))

    concurrent_started = time.perf_counter()
    asyncio.run(concurrent())
    concurrent_s = time.perf_counter() - concurrent_started
    phase.seconds = time.perf_counter() - started
    phase.provider = sim.stats()
    seq = tracker.get_operation_stats(f"{operation}.sequential")
    if seq.count:
        phase.p50_ms = round(seq.latency_p50_s * 1000, 1)
        phase.p95_ms = round(seq.latency_p95_s * 1000, 1)
    conc = tracker.get_operation_stats(f"{operation}.concurrent")
    if conc.count:
        phase.concurrent_p50_ms = round(conc.latency_p50_s * 1000, 1)
        phase.concurrent_p95_ms = round(conc.latency_p95_s * 1000, 1)
        phase.concurrent_qps = round(conc.count / concurrent_s, 1)
    for q in QUESTIONS[:3]:
        if q in answers:
            answer, sources = answers[q]
            phase.samples.append({"question": q, "answer": answer, "sources": sources})
    return phase


def context_prompt(question: str, passages: Iterable[str]) -> str:
    """The prompt both pipelines send: passages separated by blank lines, then the question."""
    context = "\n\n".join(p.strip() for p in passages)
    return f"Answer from the context.\n\nContext:\n\n{context}\n\nQuestion: {question}"


# --- the LangChain pipeline -------------------------------------------------------------


def langchain_chunks() -> list[Any]:
    from langchain_core.documents import Document
    from langchain_text_splitters import RecursiveCharacterTextSplitter

    splitter = RecursiveCharacterTextSplitter(chunk_size=900, chunk_overlap=100)
    docs = [Document(page_content=text, metadata={"source": path}) for path, text in load_pages()]
    return splitter.split_documents(docs)


def langchain_pipeline(base_url: str, config: Any, *, wrapped: bool) -> tuple[AskSync, Ask, str]:
    """Build the LangChain RAG chain; returns (ask_sync, ask, description)."""
    from langchain_core.documents import Document
    from langchain_core.prompts import ChatPromptTemplate
    from langchain_core.vectorstores import InMemoryVectorStore
    from langchain_openai import ChatOpenAI, OpenAIEmbeddings
    from pydantic import SecretStr
    from rag_perf_plugins.langchain import (
        PerfChatModel,
        PerfEmbeddings,
        PerfVectorStore,
        pooled_chat_openai,
        pooled_openai_embeddings,
    )

    llm: Any
    if wrapped:
        inner = pooled_openai_embeddings(
            model=EMBED_MODEL,
            dimensions=EMBED_DIMS,
            base_url=base_url,
            api_key=API_KEY,
            config=config,
        )
        embeddings: Any = PerfEmbeddings(inner, config.replace(requests_per_minute=GATE_RPM))
        store: Any = PerfVectorStore(InMemoryVectorStore(embeddings), config)
        # The chat model's own gate: GATE_RPM requests/minute, tokens reconciled per answer.
        llm = PerfChatModel(
            pooled_chat_openai(
                model=CHAT_MODEL, base_url=base_url, api_key=API_KEY, temperature=0, config=config
            ),
            config.replace(requests_per_minute=GATE_RPM),
        )
        description = "PerfEmbeddings, PerfVectorStore, PerfChatModel over pooled OpenAI classes"
    else:
        embeddings = OpenAIEmbeddings(
            model=EMBED_MODEL,
            dimensions=EMBED_DIMS,
            openai_api_base=base_url,
            openai_api_key=SecretStr(API_KEY),
            check_embedding_ctx_length=False,
        )
        store = InMemoryVectorStore(embeddings)
        llm = ChatOpenAI(
            model=CHAT_MODEL, base_url=base_url, api_key=API_KEY, temperature=0, cache=False
        )
        description = "plain OpenAIEmbeddings, InMemoryVectorStore, ChatOpenAI (SDK retries on)"
    store.add_documents(langchain_chunks())
    retriever = store.as_retriever(search_kwargs={"k": 3})
    prompt = ChatPromptTemplate.from_messages(
        [
            ("system", "Answer from the context.\n\nContext:\n\n{context}"),
            ("user", "Question: {question}"),
        ]
    )

    # Retrieval, then prompt | llm. (A RunnableParallel around the retriever would start a
    # thread pool on every sync invoke: several ms per question of LangChain overhead.)
    chain = prompt | llm

    def fmt(docs: list[Document]) -> str:
        return "\n\n".join(d.page_content for d in docs)

    def sources(docs: list[Document]) -> list[str]:
        return [str(d.metadata.get("source")) for d in docs]

    def ask_sync(q: str) -> tuple[str, list[str]]:
        docs = retriever.invoke(q)
        answer = chain.invoke({"context": fmt(docs), "question": q})
        return str(answer.content), sources(docs)

    async def ask(q: str) -> tuple[str, list[str]]:
        docs = await retriever.ainvoke(q)
        answer = await chain.ainvoke({"context": fmt(docs), "question": q})
        return str(answer.content), sources(docs)

    return ask_sync, ask, description


# --- the LlamaIndex pipeline ------------------------------------------------------------


def llama_index_pipeline(base_url: str, config: Any) -> tuple[AskSync, Ask, str]:
    """A VectorStoreIndex retriever and the LLM, both wrapped through ``configure_settings()``."""
    from llama_index.core import Settings, VectorStoreIndex
    from llama_index.core.node_parser import SentenceSplitter
    from llama_index.core.schema import Document
    from rag_perf_plugins.llama_index import (
        configure_settings,
        pooled_openai_embedding,
        pooled_openai_llm,
        wrap_llm,
    )

    Settings.embed_model = pooled_openai_embedding(
        model=EMBED_MODEL, dimensions=EMBED_DIMS, api_base=base_url, api_key=API_KEY, config=config
    )
    Settings.llm = pooled_openai_llm(
        model=CHAT_MODEL, api_base=base_url, api_key=API_KEY, config=config
    )
    gated = config.replace(requests_per_minute=GATE_RPM)
    configure_settings(gated)  # Settings.embed_model -> PerfEmbedding, Settings.llm -> PerfLLM
    llm = wrap_llm(Settings.llm)  # already a PerfLLM (with the gated config): returned as is
    # Word-based token counts: LlamaIndex's default tokenizer downloads tiktoken's files.
    splitter = SentenceSplitter(chunk_size=200, chunk_overlap=20, tokenizer=str.split)
    documents = [Document(text=text, metadata={"source": path}) for path, text in load_pages()]
    index = VectorStoreIndex(splitter.get_nodes_from_documents(documents))
    retriever = index.as_retriever(similarity_top_k=3)

    def texts_and_sources(nodes: Sequence[Any]) -> tuple[list[str], list[str]]:
        return [n.get_content() for n in nodes], [str(n.metadata.get("source")) for n in nodes]

    def ask_sync(q: str) -> tuple[str, list[str]]:
        texts, sources = texts_and_sources(retriever.retrieve(q))
        return str(llm.complete(context_prompt(q, texts)).text), sources

    async def ask(q: str) -> tuple[str, list[str]]:
        texts, sources = texts_and_sources(await retriever.aretrieve(q))
        reply = await llm.acomplete(context_prompt(q, texts))
        return str(reply.text), sources

    description = (
        "configure_settings() over pooled_openai_embedding and pooled_openai_llm "
        "(PerfEmbedding, PerfLLM), VectorStoreIndex retriever"
    )
    return ask_sync, ask, description


# --- output -----------------------------------------------------------------------------


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{x:.1%}"


def _ms(x: float | None) -> str:
    return "—" if x is None else f"{x:,.1f}"


def _usd(x: float | None) -> str:
    return "unknown" if x is None else f"${x:,.4f}"


def _per_1000(p: Phase) -> float | None:
    spent = dollars(p.provider)
    return None if spent is None or not p.questions else spent / p.questions * 1000


def print_table(console: Console, phases: list[Phase], baseline_tokens_per_q: float | None) -> None:
    """One column per phase, one row per figure."""
    table = Table(title="Cold vs warm vs unwrapped: the same simulator and question list")
    table.add_column("", no_wrap=True)
    for p in phases:
        short = {"langchain": "LC", "llama_index": "LI"}[p.pipeline]
        table.add_column(f"{short} {'bare' if p.name == 'unwrapped' else p.name}", justify="right")

    def saved(p: Phase) -> str:
        if baseline_tokens_per_q is None or p.name == "unwrapped":
            return "—"
        spent = p.provider.get("tokens_total", 0)
        return f"{max(0, round(baseline_tokens_per_q * p.questions) - spent):,}"

    rows: list[tuple[str, Callable[[Phase], str]]] = [
        ("questions (failed)", lambda p: f"{p.questions} ({p.failed})"),
        ("p50 ms, one at a time", lambda p: _ms(p.p50_ms)),
        ("p95 ms, one at a time", lambda p: _ms(p.p95_ms)),
        (f"questions/s, {CONCURRENCY} at once", lambda p: _ms(p.concurrent_qps)),
        (f"p95 ms, {CONCURRENCY} at once", lambda p: _ms(p.concurrent_p95_ms)),
        ("LLM cache hit rate", lambda p: _pct(p.hit_rate)),
        ("provider calls", lambda p: f"{p.provider.get('requests_total', 0):,}"),
        ("provider tokens", lambda p: f"{p.provider.get('tokens_total', 0):,}"),
        ("tokens saved*", saved),
        ("$ spent**", lambda p: _usd(dollars(p.provider))),
        ("$ per 1k questions**", lambda p: _usd(_per_1000(p))),
        ("TCP connections", lambda p: str(p.provider.get("connections_opened", 0))),
        ("connection reuse", lambda p: _pct(reuse_rate(p.provider))),
        ("429s seen", lambda p: str(p.provider.get("rate_limited_total", 0))),
    ]
    for label, cell in rows:
        table.add_row(label, *(cell(p) for p in phases))
    console.print(table)
    console.print(
        "LC: LangChain, LI: LlamaIndex, bare: unwrapped. * tokens saved: the bare run's provider "
        "tokens per question times this phase's questions, minus this phase's provider "
        "tokens. LLM cache hit rate: questions answered without a chat call to the "
        "provider. Calls, tokens, connections and 429s are the simulator's own counters; "
        "latencies are per question, end to end (with "
        f"{CONCURRENCY} in flight on 2 cores they include waiting for the CPU). ** the "
        "simulator's tokens per model at the shipped prices (rag-perf prices)."
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--report", type=Path, default=DEFAULT_REPORT, help="JSON report path")
    parser.add_argument("--questions", type=int, default=240, help="questions per phase")
    parser.add_argument("--baseline-questions", type=int, default=80, help="unwrapped run")
    args = parser.parse_args(argv)
    # Framework notices (e.g. LangChain beta warnings) are not what the demo is about.
    warnings.simplefilter("ignore")
    os.environ.setdefault("OPENAI_API_KEY", API_KEY)

    from rag_perf_plugins import CacheManager, PerformanceConfig, __version__, set_cache_manager
    from rag_perf_plugins.simulator import Simulator

    console = Console()
    console.rule(f"rag-perf-plugins {__version__}: demo")
    started = time.perf_counter()
    cache_dir = Path(tempfile.mkdtemp(prefix="rag-perf-demo-"))
    config = PerformanceConfig.load(cache_dir=str(cache_dir), batch_size=64)
    set_cache_manager(CacheManager(config))
    phases: list[Phase] = []
    descriptions: dict[str, str] = {}
    try:
        with Simulator(**SIMULATOR).in_thread() as sim:
            console.print(
                f"Simulator at {sim.base_url}: 40 ms + [0, 20) ms jitter + 0.3 ms/token, "
                f"{SIMULATOR['rpm']} requests/min. Cache: {cache_dir} (fresh)."
            )
            cold_qs = draw_questions(args.questions, seed=1)
            warm_qs = draw_questions(args.questions, seed=2)
            sim.reset_stats()
            lc_sync, lc_ask, descriptions["langchain"] = langchain_pipeline(
                sim.base_url, config, wrapped=True
            )
            console.print(
                f"LangChain indexed {len(langchain_chunks())} chunks "
                f"({sim.stats()['requests_total']} embedding requests)."
            )
            phases.append(run_phase("langchain", "cold", cold_qs, lc_sync, lc_ask, sim))
            phases.append(run_phase("langchain", "warm", warm_qs, lc_sync, lc_ask, sim))
            sim.reset_stats()
            li_sync, li_ask, descriptions["llama_index"] = llama_index_pipeline(
                sim.base_url, config
            )
            console.print(
                f"LlamaIndex indexed the same pages "
                f"({sim.stats()['requests_total']} embedding requests)."
            )
            phases.append(run_phase("llama_index", "cold", cold_qs, li_sync, li_ask, sim))
            phases.append(run_phase("llama_index", "warm", warm_qs, li_sync, li_ask, sim))
            sim.reset_stats()
            base_sync, base_ask, descriptions["unwrapped"] = langchain_pipeline(
                sim.base_url, config, wrapped=False
            )
            phases.append(
                run_phase(
                    "langchain", "unwrapped", cold_qs[: args.baseline_questions],
                    base_sync, base_ask, sim,
                )
            )  # fmt: skip
    finally:
        set_cache_manager(None)
        shutil.rmtree(cache_dir, ignore_errors=True)

    for name, text in descriptions.items():
        console.print(f"[bold]{name}[/bold]: {text}")
    console.rule("Three sample answers (LangChain, warm)")
    for sample in phases[1].samples[:3]:
        console.print(f"[bold]Q:[/bold] {escape(sample['question'])}")
        console.print(f"[bold]A:[/bold] {escape(sample['answer'][:300])}")
        console.print(f"   sources: {escape(', '.join(sample['sources']))}")
    baseline = phases[-1]
    per_q = (
        baseline.provider.get("tokens_total", 0) / baseline.questions
        if baseline.questions
        else None
    )
    print_table(console, phases, per_q)
    lc_cold, lc_warm, lc_base = phases[0], phases[1], phases[-1]
    spent = [_per_1000(p) for p in (lc_cold, lc_warm, lc_base)]
    if None not in spent:
        console.print(
            "Dollars per 1,000 questions, LangChain: "
            f"cold {_usd(spent[0])}, warm {_usd(spent[1])}, unwrapped {_usd(spent[2])}."
        )
    if lc_warm.p95_ms and lc_base.p95_ms:
        p50 = (lc_base.p50_ms or 0.0) / max(lc_warm.p50_ms or 0.0, 0.1)
        p95 = lc_base.p95_ms / max(lc_warm.p95_ms, 0.1)
        console.print(
            f"Speed-up, LangChain warm vs unwrapped, one question at a time: p50 {p50:,.0f}x, "
            f"p95 {p95:,.0f}x."
        )
    elapsed = time.perf_counter() - started
    report = {
        "schema": "rag-perf-demo/1",
        "version": __version__,
        "simulator": SIMULATOR,
        "pipelines": descriptions,
        "phases": [p.as_dict() for p in phases],
        "elapsed_s": round(elapsed, 2),
    }
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(json.dumps(report, indent=2))
    warm_ok = all(
        (p.hit_rate or 0) > 0.8 and not p.provider.get("rate_limited_total") and not p.failed
        for p in phases
        if p.name == "warm"
    )
    console.print(f"Finished in {elapsed:.1f} s. JSON report: {args.report}")
    console.print(f"warm runs: hit rate above 80% and zero 429s: {'yes' if warm_ok else 'NO'}")
    return 0 if warm_ok else 1


if __name__ == "__main__":
    sys.exit(main())
